"""The chapter's claims, as tests (the lab issue, item 8).

Each expected number is derived here, by a root finder or a closed form, never copied from a run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from descend import lab


def dfdx(x):  # f(x) = (x² − 1)² + 0.3x  →  f'(x) = 4x³ − 4x + 0.3
    return 4 * x**3 - 4 * x + 0.3


GLOBAL = brentq(dfdx, -2.0, -0.5, xtol=1e-14)  # ≈ −1.04
LOCAL = brentq(dfdx, 0.5, 2.0, xtol=1e-14)  # ≈ 0.96
HUMP = brentq(dfdx, -0.5, 0.5, xtol=1e-14)  # the local maximum between them


def test_double_well_gd_stays_in_the_local_minimum_from_x2():
    t = lab.trajectory("double_well", "gd", 500, start=2.0, lr=0.01)
    x = t.points[:, 0]
    assert round(LOCAL, 2) == 0.96
    assert abs(x[-1] - LOCAL) < 1e-6
    assert np.all(x > HUMP)  # never crossed the hump
    assert t.steps_to(1e-3) is None  # never within 1e-3 of the global minimum value


def test_double_well_momentum_reaches_the_global_minimum_from_x2():
    t = lab.trajectory("double_well", "momentum", 500, start=2.0, lr=0.01, momentum=0.9)
    x = t.points[:, 0]
    assert round(GLOBAL, 2) == -1.04
    assert abs(x[-1] - GLOBAL) < 1e-6
    assert t.final_loss == pytest.approx((GLOBAL**2 - 1) ** 2 + 0.3 * GLOBAL, abs=1e-10)
    # the same with torch's momentum SGD (equal to the chapter's rule at a constant η)
    ref = lab.trajectory("double_well", torch.optim.SGD, 500, start=2.0, lr=0.01, momentum=0.9)
    assert abs(ref.points[-1, 0] - GLOBAL) < 1e-6


def test_ill_conditioned_quadratic_momentum_needs_fewer_steps_than_gd_at_the_same_lr():
    # f = ½(x² + 50y²), κ = 50; η = 1/L = 0.02 is a stable GD step (η < 2/L)
    a, eta, x0, target = (1.0, 50.0), 0.02, (-4.0, 1.0), 1e-6
    prob = lab.quadratic(a, start=x0)
    gd = lab.trajectory(prob, "gd", 1500, lr=eta)
    mom = lab.trajectory(prob, "momentum", 1500, lr=eta, momentum=0.9)
    # GD by hand: with η = 1/50 the stiff coordinate is solved in one step; then x_t = (1 − η)^t x₀,
    # f_t = ½(1 − η)^{2t} x₀², so f_t ≤ target first at t = ⌈ln(2·target/x₀²) / (2 ln(1 − η))⌉
    t_gd = math.ceil(math.log(2 * target / x0[0] ** 2) / (2 * math.log(1 - eta)))
    assert gd.steps_to(target) == t_gd
    assert mom.steps_to(target) is not None
    assert mom.steps_to(target) < t_gd / 2


def test_badly_scaled_quadratic_adagrad_moves_both_coordinates_gd_crawls_on_one():
    # f = ½(x² + 1000y²): curvatures 1 and 1000. GD is stable only for η < 2/1000.
    a, x0, n = np.array([1.0, 1000.0]), np.array([3.0, 1.0]), 100
    prob = lab.quadratic(tuple(a), name="scaled", start=tuple(x0))
    eta_gd = 1.0 / a.max()
    gd = lab.trajectory(prob, "gd", n, lr=eta_gd)
    # GD by hand: x_n = (1 − η)^n x₀ on the flat coordinate: it keeps 90% of its distance
    assert gd.points[-1, 0] == pytest.approx((1 - eta_gd) ** n * x0[0], rel=1e-10)
    assert abs(gd.points[-1, 0]) > 0.9 * x0[0]
    assert abs(gd.points[-1, 1]) < 1e-12  # the stiff one is solved at once

    ada = lab.trajectory(prob, "adagrad", n, lr=0.5)
    # the per-coordinate step: the first is −η g/√(g² + ε), about η on *both* coordinates
    g = a * x0
    first = -0.5 * g / np.sqrt(g * g + 1e-10)
    np.testing.assert_allclose(ada.points[1] - ada.points[0], first, rtol=1e-12)
    # and after n steps both coordinates are far closer than GD got on the flat one
    assert abs(ada.points[-1, 0]) < 0.01 * x0[0]
    assert abs(ada.points[-1, 1]) < 0.01 * x0[1]
    assert ada.final_loss < 1e-3 * gd.final_loss
