"""Property-based tests (hypothesis) over each optimizer's valid hyperparameters.

The strategies come from the blocks' own declarations (:class:`descend.Hyper` kinds), so a new
hyperparameter is covered as soon as a block declares it.
"""

import io
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from optim_db import OPTIMS, assert_bitwise, trajectory

ids = lambda o: o.name  # noqa: E731

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_unit = st.floats(0.0, 0.999)
_KIND = {
    "nonneg": st.floats(0.0, 1.0),
    "pos": st.floats(1e-12, 1.0),
    "unit": _unit,
    "closed_unit": st.floats(0.0, 1.0),
    "betas": st.tuples(_unit, _unit),
    "bool": st.booleans(),
    "count": st.integers(1, 8),
}
_BY_NAME = {"lr": st.floats(0.0, 0.5)}  # keep steps moderate: the problem is not bounded below when maximizing


def hyperparameters(info):
    """A strategy of valid keyword dicts for ``info``'s optimizer, built from its blocks' Hyper entries."""
    hypers = {}
    for b in info.cls.blocks:
        for hp in b.hyper:
            if hp.name not in b.pinned:
                hypers.setdefault(hp.name, _BY_NAME.get(hp.name, _KIND[hp.kind]))
    hypers["maximize"] = st.booleans()
    return st.fixed_dictionaries(hypers)


def _make(info, params, hp):
    try:
        return info.make(params, **hp)
    except ValueError as e:  # combinations the rule forbids (nesterov without momentum) are not examples
        assume("nesterov" not in str(e))
        raise


def _loss(params, t):
    """Bounded-gradient loss on the fixed parameters (sin/cos plus a mild quadratic)."""
    return sum((torch.sin((1 + t) * p) * torch.cos(p) + 0.05 * p * p).sum() for p in params)


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_finite_and_state_dict_round_trip_is_bitwise(info):
    """Two properties on one run: (1) parameters and state stay finite over a few steps; (2) saved after
    k steps (torch.save to memory) and loaded into a fresh optimizer over equal parameters, the
    continued runs are bitwise identical, and so are the state_dicts."""
    @SETTINGS
    @given(hyperparameters(info), st.integers(1, 3))
    def check(hp, k):
        p1 = [torch.linspace(-1.0, 1.5, 5, dtype=torch.float64).requires_grad_(),
              torch.full((2, 2), 0.7, dtype=torch.float64).requires_grad_()]
        o1 = _make(info, p1, hp)

        def step(o, ps, t):
            o.zero_grad()
            _loss(ps, t).backward()
            o.step()

        for t in range(k):
            step(o1, p1, t)
        buf = io.BytesIO()
        torch.save(o1.state_dict(), buf)
        buf.seek(0)
        p2 = [p.detach().clone().requires_grad_() for p in p1]
        o2 = _make(info, p2, {"maximize": not hp["maximize"]})  # different settings, overwritten by the load
        o2.load_state_dict(torch.load(buf))
        for t in range(k, k + 3):
            step(o1, p1, t)
            step(o2, p2, t)
        for p in p1:
            assert torch.isfinite(p).all(), (info.name, hp)
        assert_bitwise([p1], [p2], what=f"{info.name} {hp}")
        s1, s2 = o1.state_dict(), o2.state_dict()
        assert s1["param_groups"] == s2["param_groups"]
        for i in s1["state"]:
            for n, v in s1["state"][i].items():
                w = s2["state"][i][n]
                if isinstance(v, torch.Tensor):
                    assert torch.isfinite(v).all() and torch.equal(v, w), n
                else:
                    assert math.isfinite(v) and v == w, n

    check()


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_maximize_f_is_minimize_minus_f(info):
    """maximize=True on −f takes exactly the steps of minimizing f (the sign is applied exactly)."""
    @settings(SETTINGS, max_examples=10)
    @given(hyperparameters(info))
    def check(hp):
        hp = {**hp, "maximize": False}
        a = trajectory(lambda ps: _make(info, ps, hp), steps=3)

        class Negated:
            def __init__(self, ps):
                self.opt = _make(info, ps, {**hp, "maximize": True})
                self.ps = ps

            def zero_grad(self, set_to_none=True):
                self.opt.zero_grad(set_to_none=set_to_none)

            def step(self):
                for p in self.ps:
                    if p.grad is not None:
                        p.grad.neg_()  # the gradient of −f
                self.opt.step()

        b = trajectory(Negated, steps=3)
        assert_bitwise(a, b, what=f"{info.name} {hp}")

    check()
