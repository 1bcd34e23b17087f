"""Every registry entry reaches the known minimum of a quadratic and of a Rosenbrock function, from the
settings in ONE table (tests/optim_db.py: lr, steps, tolerance per optimizer)."""

import pytest
import torch

from descend.optimizers import REGISTRY
from optim_db import OPTIMS

A = torch.tensor([1.0, 4.0], dtype=torch.float64)  # curvatures: condition number 4
C = torch.tensor([1.5, -0.5], dtype=torch.float64)


def quadratic(p):
    """f(θ) = ½ Σ aᵢ (θᵢ − cᵢ)², minimum at θ* = c."""
    return 0.5 * (A * (p - C) ** 2).sum()


def rosenbrock(p):
    """f(x, y) = (1 − x)² + b (y − x²)² with b = 10 (a shallower valley than the classic b = 100, to
    keep the test fast), minimum at (1, 1)."""
    return (1 - p[0]) ** 2 + 10.0 * (p[1] - p[0] ** 2) ** 2


PROBLEMS = {
    "quadratic": (quadratic, [-1.0, 1.0], C.tolist()),
    "rosenbrock": (rosenbrock, [-1.2, 1.0], [1.0, 1.0]),
}


def test_every_registry_entry_has_a_row():
    assert sorted(o.name for o in OPTIMS) == sorted(REGISTRY)
    for o in OPTIMS:
        assert o.quadratic is not None and o.rosenbrock is not None, o.name


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("info", OPTIMS, ids=lambda o: o.name)
def test_converges(info, problem):
    f, x0, star = PROBLEMS[problem]
    setting = getattr(info, problem)
    p = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = info.make([p], **setting.hp)
    start = (p.detach() - torch.tensor(star, dtype=torch.float64)).abs().max().item()
    for _ in range(setting.steps):
        opt.zero_grad()
        f(p).backward()
        opt.step()
    err = (p.detach() - torch.tensor(star, dtype=torch.float64)).abs().max().item()
    assert err <= setting.tol, f"{info.name} on {problem}: ‖θ − θ*‖∞ = {err:.3g} > {setting.tol} after {setting.steps} steps"
    assert start > 100 * setting.tol  # the start really is far from the minimum
