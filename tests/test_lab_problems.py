"""The lab's test problems (known minima checked independently), trajectories and pictures."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, root

import descend
from descend import lab

NAMES = lab.problems()


def grad_at(prob, x):
    x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    prob.f(x).backward()
    return x.grad.numpy()


# --------------------------------------------------------------------------- problems


def test_the_issue_names_are_all_there():
    assert set(NAMES) >= {"rosenbrock", "beale", "himmelblau", "rastrigin", "ackley", "booth", "quadratic",
                          "saddle", "double_well"}


@pytest.mark.parametrize("bad", ["nope", "", "rosenbrok"])
def test_unknown_problem_lists_the_valid_names(bad):
    with pytest.raises(ValueError) as e:
        lab.problem(bad)
    assert repr(bad) in str(e.value)
    for name in NAMES:
        assert name in str(e.value)


@pytest.mark.parametrize("name", NAMES)
def test_f_is_scalar_autograd_and_vectorised(name):
    prob = lab.problem(name)
    d = prob.dim
    assert len(prob.bounds) == d and all(lo < hi for lo, hi in prob.bounds)
    assert all(len(m) == d for m in prob.minima + prob.local_minima + prob.saddles)
    x = torch.tensor(prob.start, dtype=torch.float64, requires_grad=True)
    y = prob.f(x)
    assert y.shape == ()
    y.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0  # the start is not a critical point
    # the same function on a batch laid out along the trailing axes equals the pointwise values
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(lo, hi, size=(3, 4)) for lo, hi in prob.bounds])  # (d, 3, 4)
    batch = prob.f(torch.from_numpy(pts)).numpy()
    assert batch.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert batch[i, j] == pytest.approx(float(prob.f(torch.from_numpy(pts[:, i, j]))), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_known_minima_are_critical_points_with_the_stated_value(name):
    prob = lab.problem(name)
    for m in prob.minima:
        assert float(prob(m)) == pytest.approx(prob.min_value, abs=1e-9)
        tol = 1e-3 if name == "himmelblau" else 1e-9  # Himmelblau's three irrational minima: 6 decimals
        assert np.linalg.norm(grad_at(prob, m)) < tol
    for m in prob.local_minima:
        assert np.linalg.norm(grad_at(prob, m)) < 1e-9
        assert float(prob(m)) > prob.min_value


@pytest.mark.parametrize("name", NAMES)
def test_no_grid_point_is_below_the_stated_minimum(name):
    """f* really is the least value over the plotted box (a 201-point grid per axis)."""
    prob = lab.problem(name)
    axes = [np.linspace(lo, hi, 201) for lo, hi in prob.bounds]
    grid = np.stack(np.meshgrid(*axes)) if prob.dim > 1 else axes[0][None]
    values = prob.f(torch.from_numpy(grid)).numpy()
    assert values.min() >= prob.min_value - 1e-12


def test_himmelblau_minima_match_a_root_finder_on_the_hand_gradient():
    def grad(p):  # ∂/∂x, ∂/∂y of (x² + y − 11)² + (x + y² − 7)², by hand
        x, y = p
        return [4 * x * (x * x + y - 11) + 2 * (x + y * y - 7), 2 * (x * x + y - 11) + 4 * y * (x + y * y - 7)]

    prob = lab.problem("himmelblau")
    assert len(prob.minima) == 4
    for m in prob.minima:
        sol = root(grad, m, tol=1e-14)
        assert sol.success
        assert np.allclose(sol.x, m, atol=1e-5)
        assert float(prob(sol.x)) == pytest.approx(0.0, abs=1e-20)


def test_double_well_minima_match_a_root_finder():
    prob = lab.problem("double_well")
    dfdx = lambda x: 4 * x**3 - 4 * x + 0.3  # noqa: E731  f = (x² − 1)² + 0.3x, differentiated by hand
    glob = brentq(dfdx, -2.0, -0.5, xtol=1e-15)
    loc = brentq(dfdx, 0.5, 2.0, xtol=1e-15)
    hump = brentq(dfdx, -0.5, 0.5, xtol=1e-15)
    assert prob.minima[0][0] == pytest.approx(glob, abs=1e-12)
    assert prob.local_minima[0][0] == pytest.approx(loc, abs=1e-12)
    assert round(glob, 2) == -1.04 and round(loc, 2) == 0.96
    assert prob.min_value == pytest.approx((glob**2 - 1) ** 2 + 0.3 * glob, abs=1e-14)
    for x in (glob, loc):
        assert 12 * x * x - 4 > 0  # f'' > 0: minima
    assert 12 * hump * hump - 4 < 0
    assert prob.start == (2.0,)


def test_saddle_is_a_saddle_and_the_minima_are_minima():
    prob = lab.problem("saddle")
    hess = lambda p: torch.autograd.functional.hessian(prob.f, torch.tensor(p, dtype=torch.float64))  # noqa: E731
    assert np.linalg.norm(grad_at(prob, prob.saddles[0])) == 0
    assert torch.allclose(hess(prob.saddles[0]), torch.tensor([[2.0, 0.0], [0.0, -1.0]], dtype=torch.float64))
    for m in prob.minima:  # f = x² + y⁴/4 − y²/2: Hessian diag(2, 3y² − 1) = diag(2, 2) at y = ±1
        assert torch.allclose(hess(m), torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64))
    assert prob.min_value == -0.25


def test_rosenbrock_hessian_at_the_minimum_by_hand():
    h = torch.autograd.functional.hessian(lab.problem("rosenbrock").f, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert torch.equal(h, torch.tensor([[802.0, -400.0], [-400.0, 200.0]], dtype=torch.float64))


def test_ackley_is_finite_with_zero_gradient_at_its_kink():
    prob = lab.problem("ackley")
    assert float(prob((0.0, 0.0))) == pytest.approx(0.0, abs=1e-10)
    assert np.array_equal(grad_at(prob, (0.0, 0.0)), [0.0, 0.0])


def test_quadratic_factory():
    p = lab.quadratic((2.0, 8.0), name="q", start=(1.0, -1.0))
    assert float(p((1.0, -1.0))) == 0.5 * (2.0 + 8.0)
    assert p.lr_gd == 1 / 8
    assert lab.problem("quadratic").f.scales == (1.0, 50.0)
    for bad in [(), (1.0, 0.0), (1.0, -2.0), (1.0, math.inf)]:
        with pytest.raises(ValueError, match="scales"):
            lab.quadratic(bad)
    with pytest.raises(ValueError, match="start"):
        lab.quadratic((1.0, 2.0), start=(1.0,))


def test_default_learning_rates_follow_the_step_scale_table():
    p = lab.problem("rosenbrock")
    assert p.default_hyperparameters("GD") == {"lr": p.lr_gd}
    assert p.default_hyperparameters("adam") == {"lr": p.lr_adaptive}
    assert p.default_hyperparameters("adadelta") == {}
    from descend.lab.problems import STEP_SCALE

    assert set(descend.available()) - {"adadelta"} <= set(STEP_SCALE)


# --------------------------------------------------------------------------- trajectories


def test_gd_on_a_quadratic_matches_the_closed_form():
    a, eta, x0, n = np.array([1.0, 50.0]), 0.03, np.array([-4.0, 1.0]), 40
    t = lab.trajectory("quadratic", "gd", n, lr=eta)
    assert t.points.shape == (n + 1, 2) and t.losses.shape == (n + 1,) and t.lrs.shape == (n,)
    expected = x0[None, :] * (1 - eta * a)[None, :] ** np.arange(n + 1)[:, None]  # x_t = (1 − ηa)^t x₀
    np.testing.assert_allclose(t.points, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(t.losses, 0.5 * (expected**2 * a).sum(1), rtol=1e-12)
    assert np.all(t.lrs == eta) and not t.diverged and t.label == "gd"
    # steps_to: the first t with loss ≤ tol, computed from the closed form
    tol = 5.0
    first = int(np.argmax(0.5 * (expected**2 * a).sum(1) <= tol))
    assert first > 0 and t.steps_to(tol) == first
    assert t.steps_to(1e-2) is None
    assert t.distance_to_minimum() == pytest.approx(np.linalg.norm(expected[-1]), rel=1e-12)


def test_momentum_matches_the_chapters_recursion_by_hand():
    gamma, eta, n = 0.9, 0.01, 60
    t = lab.trajectory("double_well", "momentum", n, lr=eta, momentum=gamma)
    x, v = 2.0, 0.0
    for k in range(n):
        v = gamma * v - eta * (4 * x**3 - 4 * x + 0.3)  # v ← γv − η f'(x)
        x = x + v
        assert t.points[k + 1, 0] == pytest.approx(x, rel=1e-12, abs=1e-12)


class Halving:
    """η_t = η₀ / 2^⌊t/2⌋ (picklable: a module-level class)."""

    def __call__(self, step):
        return 0.1 * 0.5 ** (step // 2)


def test_lrs_record_the_schedule_value_each_step_used():
    n = 6
    t = lab.trajectory("booth", "gd", n, lr=Halving())
    assert list(t.lrs) == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    x = np.array(lab.problem("booth").start)
    for k in range(n):  # θ ← θ − η_k ∇f(θ) with the recorded η_k
        x = x - t.lrs[k] * grad_at(lab.problem("booth"), x)
        np.testing.assert_allclose(t.points[k + 1], x, rtol=1e-12)


def test_torch_optimizer_classes_and_factories():
    ours = lab.trajectory("rosenbrock", "gd", 30, lr=1e-3)
    theirs = lab.trajectory("rosenbrock", torch.optim.SGD, 30, lr=1e-3)
    np.testing.assert_allclose(theirs.points, ours.points, rtol=1e-12)
    assert theirs.label == "SGD"
    mom = lab.trajectory("rosenbrock", functools.partial(torch.optim.SGD, momentum=0.9), 30, lr=1e-3)
    np.testing.assert_allclose(mom.points, lab.trajectory("rosenbrock", descend.Momentum, 30, lr=1e-3).points,
                               rtol=1e-10)
    lbfgs = lab.trajectory("booth", torch.optim.LBFGS, 3)  # needs a closure; solves a quadratic quickly
    assert lbfgs.losses[0] == 170.0 and lbfgs.final_loss < 1e-6


def test_a_diverging_run_stops_cleanly():
    t = lab.trajectory("rosenbrock", "gd", 100, lr=1.0)
    assert t.diverged
    assert len(t.points) < 101 and len(t.losses) == len(t.points) and len(t.lrs) == len(t.points) - 1
    assert not math.isfinite(t.losses[-1])
    assert np.all(np.isfinite(t.losses[:-1]))
    assert math.isnan(t.distance_to_minimum()) or t.distance_to_minimum() > 1e3
    assert not lab.trajectory("rosenbrock", "gd", 100, lr=1e-3).diverged


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=-1), "steps"),
    (dict(steps=1.5), "steps"),
    (dict(steps=3, start=(1.0, 2.0, 3.0)), "start"),
    (dict(steps=3, start=(1.0, math.nan)), "start"),
    (dict(steps=3, start="ab"), "start"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lab.trajectory("rosenbrock", "gd", lr=0.1, **kwargs)


def test_bad_optimizer_name_and_hyperparameter():
    with pytest.raises(ValueError) as e:
        lab.trajectory("rosenbrock", "sgdd", 3, lr=0.1)
    assert "adam" in str(e.value) and "sgdd" in str(e.value)
    with pytest.raises(ValueError, match="lr"):
        lab.trajectory("rosenbrock", "gd", 3, lr=-1.0)
    with pytest.raises(ValueError, match="unknown problem"):
        lab.trajectory("rosenbrok", "gd", 3, lr=0.1)


# --------------------------------------------------------------------------- pictures


def test_contour_paths_draws_each_path(tmp_path):
    from matplotlib.figure import Figure

    runs = [lab.trajectory("himmelblau", o, 20, lr=lr) for o, lr in [("gd", 5e-3), ("adam", 0.1)]]
    fig = lab.contour_paths("himmelblau", runs)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    drawn = [ln for ln in ax.get_lines() if ln.get_label().startswith(("gd", "adam"))]
    assert len(drawn) == 2
    np.testing.assert_array_equal(drawn[0].get_xydata(), runs[0].points)
    assert ax.get_xlim() == (-5.0, 5.0)
    fig.savefig(tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
    one_d = lab.contour_paths("double_well", [lab.trajectory("double_well", "gd", 5, lr=0.01)])
    line = [ln for ln in one_d.axes[0].get_lines() if ln.get_label().startswith("gd")][0]
    np.testing.assert_allclose(line.get_ydata(), lab.trajectory("double_well", "gd", 5, lr=0.01).losses)


def test_loss_curves_accepts_trajectories_and_named_series():
    t = lab.trajectory("saddle", "gd", 10, lr=0.05)
    fig = lab.loss_curves([t])
    (line,) = fig.axes[0].get_lines()
    np.testing.assert_allclose(line.get_ydata(), t.losses + 0.25)  # f − f*, f* = −1/4
    fig = lab.loss_curves({"a": [3.0, 2.0, 1.0], "b": ([0, 2, 4], [1.0, 0.5, 0.2], [0.8, 0.4, 0.1], [1.2, 0.6, 0.3])},
                          log=False, xlabel="epoch", ylabel="val loss")
    ax = fig.axes[0]
    assert [ln.get_label() for ln in ax.get_lines()] == ["a", "b"]
    assert list(ax.get_lines()[1].get_xdata()) == [0, 2, 4]
    assert len(ax.collections) == 1  # the band
    assert ax.get_xlabel() == "epoch" and ax.get_yscale() == "linear"


def test_race_gif_writes_an_animation(tmp_path):
    from PIL import Image

    runs = [lab.trajectory("booth", o, 30, lr=lr) for o, lr in [("gd", 0.02), ("momentum", 0.02)]]
    out = lab.race_gif("booth", runs, tmp_path / "r.gif", frames=6, fps=2, dpi=40)
    assert out.stat().st_size < 2_000_000
    with Image.open(out) as im:
        assert im.format == "GIF"
        assert im.n_frames >= 6  # PIL merges identical frames of the hold at the end
