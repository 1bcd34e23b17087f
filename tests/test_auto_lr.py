"""lr="auto": the estimator block (ScaleByAutoLearningRate), its guard, iterate averaging, and the contract.

Hand-computed steps, the estimate's invariants (bounded growth, the floor, the cap), the anchor θ₀
(never written after it is made, on either path), the spike clamp, recovery from non-finite
gradients, exact resume, the fused kernel against the reference, schedules, known minima, and the
averaged() swap (on by default).
"""

from __future__ import annotations

import copy
import functools
import io
import math
import re

import pytest
import torch

import descend
from descend import blocks as B
from descend.kernels import codegen, cpu

NAMES = descend.available()
MOMENTUM = ("momentum", "nesterov")


def _grads(params, gen, scale=1.0):
    for p in params:
        p.grad = scale * torch.randn(p.shape, generator=gen, dtype=p.dtype) + 0.1 * p.detach()


def _params(dtype=torch.float64, big=False):
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (3,)] + ([(2 * cpu._MIN_PER_THREAD + 123,)] if big else [])
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _run(name, steps, fast=True, dtype=torch.float64, big=False, opt_kw=None, seed=1, auto=None, record=None):
    ps = _params(dtype, big)
    kw = {"momentum": 0.9} if name in MOMENTUM else {}
    opt = descend.create(name, ps, fast=fast, **(auto or {"lr": "auto"}), **kw, **(opt_kw or {}))
    gen = torch.Generator().manual_seed(seed)
    lrs = []
    for _ in range(steps):
        _grads(ps, gen)
        if record is not None:  # the parameters before this step, its gradients, and the estimate after it
            record.append(([p.detach().clone() for p in ps], [p.grad.clone() for p in ps]))
        opt.step()
        if record is not None:
            record[-1] = (*record[-1], copy.deepcopy(opt.param_groups[0]["lr_estimate"]))
        lrs.append(opt.param_groups[0]["lr"])
    return ps, opt, lrs


def _spy_kernel(monkeypatch):
    """Record, for each call of the C kernel's group runner, how many items it left to the reference."""
    calls = []
    real = cpu.run_group

    def spy(*args, **kw):
        rest = real(*args, **kw)
        calls.append(len(rest))
        return rest

    monkeypatch.setattr(cpu, "run_group", spy)
    return calls


# ------------------------------------------------------------------------------ the rule, by hand

def _sub(a, b):
    return tuple(x - y for x, y in zip(a, b))


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _norm(a):
    return math.sqrt(_dot(a, a))


def test_gd_auto_first_steps_by_hand():
    # θ₀ = (3, 4): ‖θ₀‖ = 5; α = 1e-2, β = 0.2, ρ = 1, κ = 0.01, c = 1. Plain Python floats below.
    # GD: the direction u is the gradient g; no step here is clamped, so U = G and the cap
    # c r̄ max(‖g‖/(‖u‖ √G), 1/√U) is c r̄/√G, G = Σ‖g‖²
    alpha, beta, rho, kappa, cap = 1e-2, 0.2, 1.0, 0.01, 1.0
    theta0 = (3.0, 4.0)
    gs = [(1.0, 2.0), (2.0, -1.0), (-0.1, -0.1), (1.0, -0.5), (1.0, -0.5)]
    w = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    opt = descend.GD([w], lr=descend.auto(average=False), fast=False)
    assert [type(b).__name__ for b in opt.blocks] == ["ZeroNonfinite", "ScaleByAutoLearningRate"]
    assert opt.param_groups[0]["lr"] == 0.0

    def step(g):
        before = tuple(w.tolist())
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        return before

    def check(est, eta, **want):
        assert opt.param_groups[0]["lr"] == pytest.approx(eta, rel=1e-12)
        assert est["eta"] == pytest.approx(eta, rel=1e-12)
        assert est["U"] == est["G"]
        for k, v in want.items():
            assert est[k] == pytest.approx(v, rel=1e-12, abs=0 if v else 1e-300), k

    # step 1 only measures: θ does not move; η₂ = r₀/‖g₁‖, r₀ = α(1 + ‖θ₀‖) = 0.06
    step(gs[0])
    assert tuple(w.tolist()) == theta0
    r0 = alpha * (1 + _norm(theta0))
    assert r0 == pytest.approx(0.06, rel=1e-15)
    eta1 = r0 / _norm(gs[0])
    G = _dot(gs[0], gs[0])
    check(opt.param_groups[0]["lr_estimate"], eta1, rbar=r0, G=G, steps=1, peak=eta1, cos=0.0)

    # step 2: θ₂ = θ₀ − η g₂. θ₁ − θ₀ = 0, so cos = 0 and the hypergradient keeps η; but G = 5 + 5
    # and the cap r̄/√G = 0.06/√10 < 0.06/√5: the cap binds
    step(gs[1])
    theta2 = tuple(t - eta1 * g for t, g in zip(theta0, gs[1]))
    torch.testing.assert_close(w.detach(), torch.tensor(theta2, dtype=torch.float64), rtol=1e-15, atol=0)
    G += min(_dot(gs[1], gs[1]), 10 * G / 1)
    cap2 = cap * r0 / math.sqrt(G)
    assert cap2 < eta1  # the cap binds
    eta2 = cap2
    check(opt.param_groups[0]["lr_estimate"], eta2, rbar=r0, G=10.0, steps=2, peak=eta1, cos=0.0)

    # step 3: cos against θ₀: −⟨g₃, θ₂ − θ₀⟩ / (‖g₃‖‖θ₂ − θ₀‖) = cos(g₃, g₂) = −1/√10 < 0: η falls at ρβ;
    # G grows by only ‖g₃‖² = 0.02, so here the hypergradient binds, not the cap
    step(gs[2])
    theta3 = tuple(t - eta2 * g for t, g in zip(theta2, gs[2]))
    torch.testing.assert_close(w.detach(), torch.tensor(theta3, dtype=torch.float64), rtol=1e-15, atol=0)
    dx = _sub(theta2, theta0)
    cos3 = -_dot(gs[2], dx) / (_norm(gs[2]) * _norm(dx))
    assert cos3 == pytest.approx(-1 / math.sqrt(10), rel=1e-12)
    hyper = max(eta2 * math.exp(beta * rho * cos3), kappa * eta1)
    rbar = max(r0, _norm(dx))
    G += min(_dot(gs[2], gs[2]), 10 * G / 2)
    cap3 = cap * rbar / math.sqrt(G)
    assert hyper < cap3  # the hypergradient binds
    eta3 = hyper
    check(opt.param_groups[0]["lr_estimate"], eta3, rbar=rbar, G=10.02, steps=3, peak=eta1, cos=cos3)

    # step 4: the gradient points back along the path: cos > 0, η grows by e^{β cos}, and the cap binds
    step(gs[3])
    theta4 = tuple(t - eta3 * g for t, g in zip(theta3, gs[3]))
    torch.testing.assert_close(w.detach(), torch.tensor(theta4, dtype=torch.float64), rtol=1e-15, atol=0)
    dx = _sub(theta3, theta0)
    cos4 = -_dot(gs[3], dx) / (_norm(gs[3]) * _norm(dx))
    assert cos4 > 0.99
    hyper = eta3 * math.exp(beta * cos4)
    rbar = max(rbar, _norm(dx))
    assert rbar == r0  # θ₃ is still within r₀ of θ₀
    G += min(_dot(gs[3], gs[3]), 10 * G / 3)
    cap4 = cap * rbar / math.sqrt(G)
    assert cap4 < hyper
    eta4 = cap4
    check(opt.param_groups[0]["lr_estimate"], eta4, rbar=rbar, G=11.27, steps=4, peak=eta1, cos=cos4)

    # step 5: θ₄ is farther than r₀ from θ₀: r̄ grows to ‖θ₄ − θ₀‖ and lifts the cap above the hypergradient
    step(gs[4])
    dx = _sub(theta4, theta0)
    cos5 = -_dot(gs[4], dx) / (_norm(gs[4]) * _norm(dx))
    hyper = eta4 * math.exp(beta * cos5)
    assert _norm(dx) > r0
    rbar = _norm(dx)
    G += min(_dot(gs[4], gs[4]), 10 * G / 4)
    cap5 = cap * rbar / math.sqrt(G)
    assert hyper < cap5
    check(opt.param_groups[0]["lr_estimate"], hyper, rbar=rbar, G=12.52, steps=5, peak=eta1, cos=cos5)
    assert opt.param_groups[0]["lr_estimate"]["skipped"] == 0


def test_options_reach_the_rule():
    # init, adapt, down and cap as descend.auto's options, by hand on one coordinate: θ₀ = 2, g = 1, 1, 1, −1
    alpha, beta, rho, c = 0.5, 0.5, 0.3, 3.0
    w = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    opt = descend.GD([w], lr=descend.auto(init=alpha, adapt=beta, down=rho, cap=c, average=False), fast=False)
    for g in (1.0, 1.0, 1.0, -1.0):
        w.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    r0 = alpha * (1 + 2.0)  # step 1: η = r₀/|g| = 1.5, G = 1
    eta = min(r0, c * r0 / math.sqrt(2))  # step 2: θ has not moved: cos = 0; G = 2. θ₂ = 2 − 1.5 = 0.5
    theta2 = 2.0 - eta
    eta3 = min(eta * math.exp(beta), c * r0 / math.sqrt(3))  # step 3: θ₂ − θ₀ = −1.5, g = 1: cos = 1
    theta3 = theta2 - eta
    dist = abs(theta3 - 2.0)  # step 4: θ₃ − θ₀ = −3, g = −1: cos = −1, η falls at ρβ; r̄ = 3, G = 4
    eta4 = min(eta3 * math.exp(-rho * beta), c * max(r0, dist) / math.sqrt(4))
    assert eta3 > eta and eta4 < eta3  # the cap binds at neither step
    est = opt.param_groups[0]["lr_estimate"]
    assert est["cos"] == pytest.approx(-1.0, rel=1e-12) and est["rbar"] == pytest.approx(dist, rel=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(eta4, rel=1e-12)
    assert w.item() == pytest.approx(theta3 + eta3, rel=1e-12)


WITH_MOMENTUM = (0.1, 0.5)  # (β, c) for a rule whose direction keeps a momentum
PLAIN = (0.2, 1.0)


@pytest.mark.parametrize("make,want", [
    (lambda ps: descend.AdaGrad(ps, lr="auto"), (0.3, 1.0)),  # the rule's own (measured on the tuning table)
    (lambda ps: descend.RMSProp(ps, lr="auto"), (0.3, 1.0)),
    (lambda ps: descend.RMSProp(ps, lr="auto", momentum=0.9), WITH_MOMENTUM),  # with momentum, as Momentum
    (lambda ps: descend.create("rmsprop", ps, lr=descend.auto(scale=0.5)), (0.3, 1.0)),  # other options set
    (lambda ps: descend.AdaGrad(ps, lr=descend.auto(adapt=0.2)), PLAIN),  # the caller's wins
    (lambda ps: descend.Adam(ps, lr=descend.auto(adapt=0.2, cap=2.0)), (0.2, 2.0)),
    (lambda ps: descend.Adam(ps, lr=descend.auto(cap=2.0)), (0.1, 2.0)),  # each option on its own
    (lambda ps: descend.GD(ps, lr="auto"), PLAIN),
    (lambda ps: descend.SGD(ps, lr="auto"), PLAIN),  # torch's default: no momentum
    (lambda ps: descend.SGD(ps, lr="auto", momentum=0.9), WITH_MOMENTUM),
    (lambda ps: descend.AdaDelta(ps, lr="auto"), PLAIN),
    (lambda ps: descend.Adam(ps, lr="auto"), WITH_MOMENTUM),
    (lambda ps: descend.Adam(ps, lr="auto", betas=(0.0, 0.99)), PLAIN),  # β₁ = 0: no momentum
    (lambda ps: descend.Momentum(ps, lr="auto"), WITH_MOMENTUM),
    (lambda ps: descend.Momentum(ps, lr="auto", momentum=0.0), PLAIN),
    (lambda ps: descend.Nesterov(ps, lr="auto"), WITH_MOMENTUM),
    *[(lambda ps, n=n: descend.create(n, ps, lr="auto"), WITH_MOMENTUM) for n in ("adamw", "radam", "adamax", "lion")],
    (lambda ps: descend.NAdam(ps, lr="auto"), PLAIN),  # measured: NAdam lost 6 points on the CNN with them
    (lambda ps: descend.ChainOptimizer(ps, [B.ScaleByRss(), B.ScaleByLearningRate()], lr="auto"), PLAIN),
], ids=["adagrad", "rmsprop", "rmsprop-momentum", "rmsprop-scale", "adagrad-explicit", "adam-explicit",
        "adam-explicit-cap", "gd", "sgd", "sgd-momentum", "adadelta", "adam", "adam-beta1-0", "momentum",
        "momentum-0", "nesterov", "adamw", "radam", "adamax", "lion", "nadam", "custom-chain"])
def test_each_rule_sets_its_own_adaptation_rate_and_cap_unless_given(make, want):
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = make([w])
    g = opt.param_groups[0]
    assert (g["lr_adapt"], g["lr_cap"]) == want
    w.grad = torch.ones(3, dtype=torch.float64)
    opt.step()  # and the step runs with them
    assert (g["lr_adapt"], g["lr_cap"]) == want and g["lr_estimate"]["steps"] == 1


# ------------------------------------------------------------------------------ invariants

def _flat(ts):
    return torch.cat([t.detach().double().reshape(-1) for t in ts])


@pytest.mark.parametrize("name", ["gd", "adam", "momentum", "nesterov", "adagrad", "rmsprop"])
def test_estimate_invariants(name):
    # g_t = the gradients handed to step t; u_t = the direction the estimator received at step t, read
    # from the move itself: the chain ends [..., ScaleByAutoLearningRate, AverageIterates], so
    # θ_{t+1} − θ_t = −η_t u_t with η_t = group["lr"] before step t (> 0 from step 2 on)
    rec = []
    ps, opt, lrs = _run(name, 80, fast=False, record=rec)
    assert type(opt.blocks[-2]) is B.ScaleByAutoLearningRate and type(opt.blocks[-1]) is B.AverageIterates
    g = opt.param_groups[0]
    beta, kappa, down, c, alpha = g["lr_adapt"], g["lr_floor"], g["lr_down"], g["lr_cap"], g["lr_init"]
    thetas = [_flat(before) for before, _, _ in rec] + [_flat(ps)]
    theta0 = thetas[0]
    r0 = alpha * (1 + float(theta0.norm()))
    dist = G = 0.0  # max over the steps so far of ‖θ_i − θ₀‖, and Σ‖g‖² under the spike clamp, by hand
    caps = set()  # which of the two caps (along g, along u) was the larger, over the run
    binds = {"cap": 0, "hyper": 0}
    prev = None
    for i, (_, grads, est) in enumerate(rec):
        gv, dx = _flat(grads), thetas[i] - theta0
        g2 = float(gv @ gv)
        dist = max(dist, float(dx.norm()))
        assert est["steps"] == i + 1 and est["skipped"] == 0
        assert est["rbar"] == pytest.approx(max(r0, dist), rel=1e-12)  # r̄ = max(r₀, distance so far)
        G = g2 if i == 0 else G + min(g2, 10 * G / i)
        assert est["G"] == pytest.approx(G, rel=1e-12)  # Σ‖g‖², each step adding ≤ 10 × the mean so far
        assert -1 <= est["cos"] <= 1
        assert lrs[i] == est["eta"]  # group["lr"] shows the estimate (scale 1)
        if prev is None:
            assert est["cos"] == 0.0 and est["eta"] > 0
            prev = est
            continue
        if dist > 0:
            cos = -float(gv @ dx) / (math.sqrt(g2) * float(dx.norm()))
            assert est["cos"] == pytest.approx(cos, rel=1e-9, abs=1e-12)
        u = (thetas[i] - thetas[i + 1]) / lrs[i - 1]  # the direction of step i + 1, scaled by its rate
        u2 = float(u @ u)
        # Σ‖u‖², every term whole (its first, u₁, is not seen: θ did not move), and the cap:
        # ‖η u‖ ≤ c r̄ max(‖g‖/√G, ‖u‖/√U), DoG's step for GD or along the chain's direction
        assert est["U"] == pytest.approx(prev["U"] + u2, rel=1e-12)
        along_g, along_u = math.sqrt(g2 / (u2 * est["G"])), 1 / math.sqrt(est["U"])
        caps.add("u" if along_u > along_g * (1 + 1e-9) else "g")  # (within rounding: u is read from the move)
        bound = c * est["rbar"] * max(along_g, along_u)
        assert est["eta"] <= bound * (1 + 1e-9)  # the cap, every step
        assert est["eta"] <= prev["eta"] * math.exp(beta) * (1 + 1e-12)  # bounded growth
        # the hypergradient's part falls by at most e^{−ρβ} and stays ≥ κ × the peak; the cap may go lower
        capped = est["eta"] == pytest.approx(bound, rel=1e-9)
        assert capped or est["eta"] >= prev["eta"] * math.exp(-down * beta) * (1 - 1e-12)
        assert capped or est["eta"] >= kappa * prev["peak"] * (1 - 1e-12)
        binds["cap" if capped else "hyper"] += 1
        assert est["peak"] == max(prev["peak"], est["eta"])
        prev = est
    assert all(math.isfinite(x) and x > 0 for x in lrs)
    assert binds["hyper"] > 0  # the run moved the estimate by its hypergradient, not only by the cap
    assert binds["cap"] > 0  # ... and the cap held it at some step
    if name == "gd":  # u = g: U ≥ G (G's terms clamped, U's whole), so the gradient's cap is the larger
        assert est["U"] >= est["G"] and caps == {"g"}
    elif name == "adam":  # a normalised direction: the cap along u is the larger one, at least once
        assert "u" in caps
    # the last step's direction, independently: u = the move over the rate, against the rule for GD
    if name == "gd":
        torch.testing.assert_close((thetas[-2] - thetas[-1]) / lrs[-2], _flat(rec[-1][1]), rtol=1e-9, atol=1e-12)


def _steep_quadratic(steps, before_step=lambda w, opt: None):
    """GD with lr="auto" on 50w² from w = 1, its first step 3× too long (2/h = 0.02); yields after each step."""
    w = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = descend.GD([w], lr=descend.auto(init=3.0, floor=1e-6, average=False), fast=False)
    for _ in range(steps):
        opt.zero_grad()
        (50 * w ** 2).sum().backward()
        ctx = before_step(w, opt)
        opt.step()
        yield w, opt, ctx


def test_estimate_comes_down_when_steps_overshoot():
    # a steep quadratic: from a first step far too long the gradient flips sign, and η̂ falls
    lrs = []
    for w, opt, _ in _steep_quadratic(30):
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[-1] < lrs[0] / 3  # from 3× the stable step 2/h = 0.02 to below it
    assert all(lr < 0.02 for lr in lrs[-10:])  # and it stays there: θ contracts every step
    assert abs(w.item()) < 1e-3


def test_a_growing_gradient_halves_the_rate_in_use_at_once():
    # the same quadratic: the overshoot makes |g| grow 16× in one step (> 4× the recent mean of ‖g‖²);
    # the brake halves the rate in use at once, and the damping wears off by ×1.1 per calm step
    seen = []
    for w, opt, (g2, before) in _steep_quadratic(
            40, lambda w, opt: (float(w.grad.double() ** 2), dict(opt.param_groups[0]["lr_estimate"]))):
        est = opt.param_groups[0]["lr_estimate"]
        if before["steps"] >= 1:  # (the first step only measures)
            recent = before["E"]  # the recent mean of ‖g‖²: E ← E + 0.1(min(g², 10E) − E)
            hit = g2 > B.ScaleByAutoLearningRate.brake * recent
            want = 0.5 * before["damp"] if hit else min(1.0, 1.1 * before["damp"])
            assert est["damp"] == pytest.approx(want, rel=1e-15)
            assert est["E"] == pytest.approx(recent + 0.1 * (min(g2, 10 * recent) - recent), rel=1e-12)
            seen.append(hit)
        assert opt.param_groups[0]["lr"] == pytest.approx(est["eta"] * est["damp"], rel=1e-15)
    assert any(seen) and not all(seen) and est["damp"] == 1.0


def _spike_run(spike_at, n0=50, n1=200):
    """GD on a noisy quadratic; at step ``spike_at`` the gradient is 1e6× larger and the schedule's
    scale is 0 there, so that the spike reaches the estimate but does not move θ."""
    gen = torch.Generator().manual_seed(0)
    h = torch.linspace(0.1, 2.0, 50, dtype=torch.float64)
    w = torch.randn(50, generator=gen, dtype=torch.float64).requires_grad_()
    opt = descend.GD([w], lr=descend.auto(scale=lambda t: 0.0 if t == spike_at else 1.0, average=False),
                     fast=False)
    gen = torch.Generator().manual_seed(1)
    at = None
    for t in range(n0 + 1 + n1):
        w.grad = h * w.detach() + 0.1 * torch.randn(50, generator=gen, dtype=torch.float64)
        if t == spike_at:
            w.grad *= 1e6
            before, theta = copy.deepcopy(opt.param_groups[0]["lr_estimate"]), w.detach().clone()
        opt.step()
        if t == spike_at:
            assert torch.equal(w.detach(), theta)
            at = (before, copy.deepcopy(opt.param_groups[0]["lr_estimate"]))
    return opt.param_groups[0]["lr_estimate"], at, float((0.5 * h * w.detach() ** 2).sum())


def test_one_gradient_spike_adds_at_most_ten_times_the_mean_and_training_recovers():
    calm, _, calm_loss = _spike_run(-1)
    est, (before, after), loss = _spike_run(50)
    # the spike's ‖g‖² is ~1e12 × the mean: G (the sum of ‖g‖²) takes exactly 10 × the mean so far
    assert after["G"] - before["G"] == pytest.approx(10 * before["G"] / before["steps"], rel=1e-12)
    assert before["steps"] == 50 and after["steps"] == 51 and after["skipped"] == 0  # counted, not skipped
    assert after["G"] > before["G"]
    # 200 steps later the estimate and the loss are those of a run without the spike
    assert calm["eta"] / 1.5 < est["eta"] < calm["eta"] * 1.5
    assert loss < 2 * calm_loss



def test_a_direction_that_changes_scale_tightens_the_cap_along_it_at_once():
    # RAdam's first steps (ρ_t ≤ 5) move along the bias-corrected momentum, of the gradient's scale; its
    # rectified, normalised steps begin at step 6, ~200× longer. U takes that ‖u‖² whole: the cap along u
    # falls at once (with the spike clamp it took dozens of steps, and MNIST-1D's RAdam lost 9 points)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(200, generator=gen, dtype=torch.float64).requires_grad_()
    opt = descend.create("radam", [w], lr=descend.auto(average=False), fast=False)
    lrs, u2s, Us = [], [], []
    for _ in range(30):
        before, lr = w.detach().clone(), opt.param_groups[0]["lr"]
        w.grad = 1e-3 * (torch.randn(200, generator=gen, dtype=torch.float64) + w.detach())
        opt.step()
        lrs.append(lr)
        u2s.append(float((w.detach() - before).norm()) ** 2 / lr ** 2 if lr > 0 else math.nan)
        Us.append(opt.param_groups[0]["lr_estimate"]["U"])
    jump = max(range(2, 30), key=lambda i: u2s[i] / u2s[i - 1])
    assert jump == 5 and u2s[5] > 100 * u2s[4]  # step 6: the direction's scale jumps
    assert all(U >= u2 * (1 - 1e-9) for U, u2 in zip(Us[1:], u2s[1:]))  # U ≥ ‖u_t‖²: step along u ≤ c r̄
    assert lrs[6] < lrs[5] / 3  # the step after the jump already takes a rate cut to the new scale


# ------------------------------------------------------------------------------ the anchor

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_anchor_is_theta0_bitwise_after_many_steps(fast, dtype, monkeypatch):
    calls = _spy_kernel(monkeypatch)
    theta0 = [p.detach().clone() for p in _params(dtype, big=True)]
    ps, opt, _ = _run("adam", 15, fast=fast, dtype=dtype, big=True)
    if fast:
        assert calls and all(r == 0 for r in calls)  # the C kernel ran every parameter
        assert opt.__dict__.get("_fast_plans")  # ... and later steps ran on its plan
    else:
        assert not calls
    for p, t0 in zip(ps, theta0):
        assert not torch.equal(p.detach(), t0)  # θ moved
        assert torch.equal(opt.state[p]["anchor"], t0)  # θ₀, bitwise
    assert "prev" not in opt.state[ps[0]]
    assert opt.param_groups[0]["lr_estimate"]["steps"] == 15


def test_generated_c_source_loads_the_anchor_and_never_stores_it():
    opt = descend.Adam([torch.zeros(3, requires_grad=True)], lr="auto")
    blocks, views, maximize, scal, bufs = codegen.first_step_inputs(opt)
    src = codegen.kernel_source(blocks, views, "double", maximize, scal, bufs)
    slots = {f"s{i}_{name}": j for j, (i, name) in enumerate((i, n) for i, names in enumerate(bufs) for n in names)}
    anchor = [k for k in slots if k.endswith("_anchor")]
    others = [k for k in slots if not k.endswith("_anchor")]
    assert len(anchor) == 1 and {k.split("_", 1)[1] for k in others} == {"exp_avg", "exp_avg_sq", "avg"}
    j = slots[anchor[0]]
    assert f"T {anchor[0]} = LD(S{j}[e]);" in src  # loaded ...
    assert not re.search(rf"\bS{j}\[e\]\s*=", src)  # ... never stored
    assert re.search(rf"const M\* restrict S{j} = \(const M\*\)", src)
    for k in others:  # every other buffer is still stored
        assert f"S{slots[k]}[e] = ST({k});" in src


def test_generated_triton_source_never_stores_a_read_only_buffer():
    from descend.kernels import triton_backend as tb

    class Pull(B.Block):  # a block with a read-only buffer and no sums (Triton takes no chain with sums)
        all_buffers = ("origin",)
        read_only_buffers = ("origin",)

        def init_buffer(self, name, p, h):
            return p.detach().clone()

        def apply(self, u, p, s, c):
            return u + (p - s["origin"])

        def c_code(self, h):
            return "u = u + (p - s_origin);"

    opt = descend.ChainOptimizer([torch.zeros(3, requires_grad=True)], [Pull(), B.Trace(), B.ScaleByLearningRate()],
                                 lr=0.1, momentum=0.5)
    blocks, views, maximize, scal, bufs = codegen.first_step_inputs(opt)
    assert bufs[:2] == [("origin",), ("momentum_buffer",)]
    src = tb.kernel_source(blocks, views, torch.float32, maximize, scal, bufs)
    assert "s0_origin = tl.load(S0 + offs" in src
    assert "tl.store(S0" not in src
    assert src.count("tl.store(S1 + offs, s1_momentum_buffer") == 2  # full and partial blocks
    c_src = codegen.kernel_source(blocks, views, "float", maximize, scal, bufs)
    assert "S0[e] =" not in c_src and "S1[e] = ST(s1_momentum_buffer);" in c_src


# ------------------------------------------------------------------------------ momentum: the estimator after Trace

@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_chains_put_the_estimator_after_trace_and_step_by_hand(nesterov):
    name = "nesterov" if nesterov else "momentum"
    fixed = descend.create(name, [torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.9)
    assert [type(b).__name__ for b in fixed.blocks] == ["ScaleByLearningRate", "Trace"]  # the chapter's ṽ ← γṽ − ηg
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = descend.create(name, [w], lr=descend.auto(average=False), momentum=0.9, fast=False)
    assert [type(b).__name__ for b in opt.blocks] == ["ZeroNonfinite", "Trace", "ScaleByAutoLearningRate"]
    # v ← γv + g (v ← g first), θ ← θ − η̂ v (Nesterov: θ ← θ − η̂ (g + γv)), η̂ the estimate at that step.
    # The estimate by hand, plain floats: u is the direction the estimator receives (v, or g + γv), g the
    # gradient; G sums ‖g‖², U sums ‖u‖², and the cap is c r̄ max(‖g_t‖ / (‖u_t‖ √G), 1/√U): DoG's step
    # for GD or along u, whichever is longer
    alpha, beta, rho, kappa, c = 1e-2, 0.1, 1.0, 0.01, 0.5  # β and c: a rule with momentum's own
    g0 = opt.param_groups[0]
    assert (g0["lr_init"], g0["lr_adapt"], g0["lr_down"], g0["lr_floor"], g0["lr_cap"]) == (alpha, beta, rho, kappa, c)
    gen = torch.Generator().manual_seed(0)
    theta0 = w.detach().clone()
    v, theta = None, theta0.clone()
    eta = peak = rbar = G = U = 0.0
    binds, caps = [], set()
    for t in range(12):
        g = torch.randn(3, generator=gen, dtype=torch.float64)
        assert opt.param_groups[0]["lr"] == pytest.approx(eta, rel=1e-12, abs=0)
        w.grad = g.clone()
        opt.step()
        v = g.clone() if v is None else 0.9 * v + g
        u = (g + 0.9 * v) if nesterov else v
        dx = theta - theta0
        theta = theta - eta * u
        torch.testing.assert_close(w.detach(), theta, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(opt.state[w]["momentum_buffer"], v, rtol=1e-14, atol=1e-15)
        g2, u2, x2 = float(g @ g), float(u @ u), float(dx @ dx)
        est = opt.param_groups[0]["lr_estimate"]
        if t == 0:  # only measures: η̂ = r₀/‖u₁‖, G = ‖g₁‖²
            r0 = alpha * (1 + float(theta0.norm()))
            eta, rbar, G, U = r0 / math.sqrt(u2), r0, g2, u2
        else:
            cos = -float(g @ dx) / math.sqrt(g2 * x2) if x2 > 0 else 0.0
            hyper = max(eta * math.exp(beta * cos * (1.0 if cos > 0 else rho)), kappa * peak)
            rbar = max(rbar, math.sqrt(x2))
            G += min(g2, 10 * G / t)
            U += u2
            along_g, along_u = math.sqrt(g2 / (u2 * G)), 1 / math.sqrt(U)
            assert along_g != pytest.approx(along_u, rel=1e-3)  # ‖g‖ ≠ ‖u‖: two different caps
            caps.add(along_g > along_u)
            cap = c * rbar * max(along_g, along_u)
            binds.append(cap < hyper)
            eta = min(hyper, cap)
            assert est["cos"] == pytest.approx(cos, rel=1e-12, abs=1e-15)
        peak = max(peak, eta)
        assert est["G"] == pytest.approx(G, rel=1e-12) and est["U"] == pytest.approx(U, rel=1e-12)
        assert est["rbar"] == pytest.approx(rbar, rel=1e-12)
        assert est["eta"] == pytest.approx(eta, rel=1e-12) and est["peak"] == pytest.approx(peak, rel=1e-12)
        assert est["steps"] == t + 1
    assert any(binds) and not all(binds)  # the cap bound some steps, the hypergradient others
    assert eta > 0


# ------------------------------------------------------------------------------ robustness

@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("name", ["adam", "gd", "rmsprop"])
def test_nonfinite_gradient_is_ignored_and_training_recovers(name, fast):
    ps, opt, _ = _run(name, 5, fast=fast)
    before = copy.deepcopy(opt.param_groups[0]["lr_estimate"])
    anchors = [opt.state[p]["anchor"].clone() for p in ps]
    gen = torch.Generator().manual_seed(9)
    _grads(ps, gen)
    ps[0].grad[0, 0] = float("nan")
    ps[1].grad[1] = float("inf")
    opt.step()
    est = opt.param_groups[0]["lr_estimate"]
    assert est == {**before, "skipped": before["skipped"] + 1}  # only the count changed
    for p, a in zip(ps, anchors):
        assert torch.isfinite(p).all() and torch.equal(opt.state[p]["anchor"], a)
        assert all(torch.isfinite(t).all() for t in opt.state[p].values() if isinstance(t, torch.Tensor))
    for _ in range(5):
        _grads(ps, gen)
        opt.step()
    assert opt.param_groups[0]["lr_estimate"]["steps"] == before["steps"] + 5
    assert all(torch.isfinite(p).all() for p in ps)


# ------------------------------------------------------------------------------ resume, the kernel

@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("name", NAMES)
def test_resume_is_bitwise(name, fast):
    ps, opt, _ = _run(name, 7, fast=fast)
    saved = copy.deepcopy(opt.state_dict())
    assert all({"anchor", "avg"} <= set(st) for st in saved["state"].values())
    snap = [p.detach().clone() for p in ps]
    gen = torch.Generator().manual_seed(5)
    for _ in range(6):
        _grads(ps, gen)
        opt.step()
    qs = [s.clone().requires_grad_() for s in snap]
    kw = {"momentum": 0.9} if name in MOMENTUM else {}
    opt2 = descend.create(name, qs, lr="auto", fast=fast, **kw)
    buf = io.BytesIO()  # through torch.save, as a checkpoint goes
    torch.save(saved, buf)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf))
    gen = torch.Generator().manual_seed(5)
    for _ in range(6):
        _grads(qs, gen)
        opt2.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["anchor"], opt2.state[q]["anchor"])
        assert torch.equal(opt.state[p]["avg"], opt2.state[q]["avg"])
    assert opt.param_groups[0]["lr_estimate"] == opt2.param_groups[0]["lr_estimate"]
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


@pytest.mark.parametrize("name", NAMES)
def test_fast_equals_reference(name, monkeypatch):
    calls = _spy_kernel(monkeypatch)
    a, oa, la = _run(name, 15, fast=True, big=True)
    assert calls and all(r == 0 for r in calls)  # the kernel ran every parameter
    assert oa.__dict__.get("_fast_plans")  # ... and later steps ran on its plan
    b, ob, lb = _run(name, 15, fast=False, big=True)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert la == pytest.approx(lb, rel=1e-9)
    ea, eb = oa.param_groups[0]["lr_estimate"], ob.param_groups[0]["lr_estimate"]
    assert ea.keys() == eb.keys()
    assert [ea[k] for k in sorted(ea)] == pytest.approx([eb[k] for k in sorted(eb)], rel=1e-9, abs=1e-12)
    for p, q in zip(a, b):
        torch.testing.assert_close(oa.state[p]["avg"], ob.state[q]["avg"], rtol=1e-10, atol=1e-12)
        assert torch.equal(oa.state[p]["anchor"], ob.state[q]["anchor"])


def test_kernel_sums_do_not_depend_on_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a, oa, _ = _run("adam", 6, big=True, dtype=torch.float32)
        torch.set_num_threads(2)
        b, ob, _ = _run("adam", 6, big=True, dtype=torch.float32)
    finally:
        torch.set_num_threads(before)
    assert oa.param_groups[0]["lr_estimate"] == ob.param_groups[0]["lr_estimate"]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------ schedules, groups

def test_schedule_multiplies_the_estimate():
    from descend import schedules as S

    sched = S.cosine(1.0, 40)
    ps = _params()
    opt = descend.GD(ps, lr=descend.auto(scale=sched, average=False), fast=False)
    gen = torch.Generator().manual_seed(3)
    for t in range(30):
        g = opt.param_groups[0]
        shown = g["lr"]
        assert shown == pytest.approx(g["lr_estimate"]["eta"] * sched(t), rel=1e-12, abs=0)
        _grads(ps, gen)
        old = [p.detach().clone() for p in ps]
        grads = [p.grad.clone() for p in ps]
        opt.step()
        for p, o, gr in zip(ps, old, grads):  # GD: θ ← θ − (η̂ s_t) g
            torch.testing.assert_close(p.detach(), o - shown * gr, rtol=1e-12, atol=1e-15)
    assert 0 < sched(29) < 0.5  # the schedule did shape the steps


def test_lr_scale_per_group_and_the_estimate_per_group():
    a, b = _params()
    opt = descend.Adam([{"params": [a]}, {"params": [b], "lr_scale": 0.5}], lr="auto")
    gen = torch.Generator().manual_seed(4)
    for _ in range(5):
        _grads([a, b], gen)
        opt.step()
    g0, g1 = opt.param_groups
    assert g1["lr"] == pytest.approx(0.5 * g1["lr_estimate"]["eta"])
    assert g0["lr"] == pytest.approx(g0["lr_estimate"]["eta"])
    assert g0["lr_estimate"] != g1["lr_estimate"]  # one estimate per group
    # the first group's r₀ is α(1 + ‖a₀‖), its own parameter's norm: r̄ ≥ that
    assert g0["lr_estimate"]["rbar"] >= 1e-2 * (1 + float(opt.state[a]["anchor"].norm())) * (1 - 1e-12)


def test_torch_scheduler_writing_lr_warns_and_the_estimate_is_used():
    ps, opt, _ = _run("adam", 3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    gen = torch.Generator().manual_seed(2)
    _grads(ps, gen)
    opt.step()
    with pytest.warns(RuntimeWarning, match="lr='auto'"):
        sched.step()
        _grads(ps, gen)
        opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr_estimate"]["eta"])


def _scheduled_run(make, steps=40, **kw):
    """Adam on a small MLP; ``make(model)`` returns (optimizer, scheduler or None)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    x, y = torch.randn(128, 5), torch.randn(128, 1)
    opt, sch = make(m)
    shown = []
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()
        if sch is not None:
            sch.step()
            assert sch.get_last_lr() == [g["lr"] for g in opt.param_groups]  # what HF Trainer logs
        shown.append(opt.param_groups[0]["lr"])
    return [p.detach().clone() for p in m.parameters()], shown, opt


@pytest.mark.parametrize("fast", [True, False])
def test_schedule_lr_shapes_the_estimate_as_auto_scale_does(fast, recwarn):
    """descend's ScheduleLR, the scheduler object a training loop drives, on an lr="auto" optimizer:
    the schedule goes into lr_scale, bitwise the same run as descend.auto(scale=schedule), and
    group["lr"] / get_last_lr() show the rate in use; no warning."""
    from descend import schedules as S

    shape = S.warmup_cosine(1.0, 10, 40)
    a, shown_a, oa = _scheduled_run(lambda m: (o := descend.Adam(m.parameters(), lr="auto", fast=fast),
                                               S.ScheduleLR(o, shape)))
    b, shown_b, ob = _scheduled_run(lambda m: (descend.Adam(m.parameters(), lr=descend.auto(scale=shape), fast=fast),
                                               None))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and shown_a == shown_b
    g = oa.param_groups[0]
    assert g["lr_scale"] == shape(40) and g["lr"] == g["lr_estimate"]["eta"] * g["lr_estimate"]["damp"] * shape(40)
    assert shown_a[5] < shown_a[9]  # the warm-up shaped it
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_schedule_lr_on_auto_resumes_and_refuses_a_second_shape():
    from descend import schedules as S

    shape = S.cosine(1.0, 40)
    full, _, _ = _scheduled_run(lambda m: (o := descend.Adam(m.parameters(), lr="auto"), S.ScheduleLR(o, shape)))
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    x, y = torch.randn(128, 5), torch.randn(128, 1)
    opt = descend.Adam(m.parameters(), lr="auto")
    sch = S.ScheduleLR(opt, shape)
    for t in range(40):
        if t == 15:  # resume into fresh objects from the state dicts
            so, ss, sm = copy.deepcopy(opt.state_dict()), copy.deepcopy(sch.state_dict()), copy.deepcopy(m.state_dict())
            m.load_state_dict(sm)
            opt = descend.Adam(m.parameters(), lr="auto")
            opt.load_state_dict(so)
            sch = S.ScheduleLR(opt, S.constant(1.0))
            sch.load_state_dict(ss)
            assert opt.param_groups[0]["lr_scale"] == shape(15)
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()
        sch.step()
    assert all(torch.equal(p.detach(), q) for p, q in zip(m.parameters(), full))
    with pytest.raises(ValueError, match="lr_scale is already a descend schedule"):
        S.ScheduleLR(descend.Adam(m.parameters(), lr=descend.auto(scale=shape)), shape)


def test_schedule_lr_plateau_on_auto_halves_the_shape(recwarn):
    """observe() on a ScheduleLR of an lr="auto" optimizer: the plateau's value is the shape."""
    from descend import schedules as S

    _, _, opt = _scheduled_run(lambda m: (o := descend.Adam(m.parameters(), lr="auto"), None), steps=5)
    sch = S.ScheduleLR(opt, S.reduce_on_plateau(1.0, factor=0.5, patience=0, threshold=0.0))
    g = opt.param_groups[0]
    in_use = g["lr"]
    S.observe(sch, 1.0)
    S.observe(sch, 2.0)  # worse: halved
    assert g["lr_scale"] == 0.5 and g["lr"] == pytest.approx(0.5 * in_use, rel=1e-12)
    assert sch.get_last_lr() == [g["lr"]]
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# ------------------------------------------------------------------------------ known minima

def test_quadratic_and_rosenbrock_reached_without_tuning():
    torch.manual_seed(0)
    q = torch.randn(10, 10, dtype=torch.float64)
    a = q @ q.T / 10 + 0.1 * torch.eye(10, dtype=torch.float64)
    b = torch.randn(10, dtype=torch.float64)
    star = torch.linalg.solve(a, b)
    # the last iterate reaches the minimum; the average (γ = 0.5) restarts while the estimate still
    # doubles over the latter half of the run, so the early iterates, taken at far lower rates, leave it
    # (measured: gd 2e-4, adam 8e-3, momentum 6e-3 from θ*, |θ*|∞ = 8.9; with γ = 1 and no restart
    # 7e-3, 7e-3 and 8e-2). Momentum's estimate settles near its floor here: it takes longer
    for name, steps, lag in (("gd", 2000, 1e-3), ("adam", 2000, 3e-2), ("momentum", 4000, 3e-2)):
        w = torch.zeros(10, dtype=torch.float64, requires_grad=True)
        kw = {"momentum": 0.9} if name == "momentum" else {}
        opt = descend.create(name, [w], lr="auto", **kw)
        for _ in range(steps):
            opt.zero_grad()
            (0.5 * w @ a @ w - b @ w).backward()
            opt.step()
        assert (w.detach() - star).abs().max() < 1e-3, name
        with opt.averaged():
            assert (w.detach() - star).abs().max() < lag, name
    # measured, at the rules' own β = 0.1 and c = 0.5: 8e-10 (last) and 2e-3 (average) for momentum,
    # 0.15 and 7e-3 for adam. At β = 0.2, c = 1 (before 26 Nov): 0 and 1e-15, 6e-6 and 0.06: the
    # slower fall leaves Adam's estimate at 0.15 when the run ends, and its last iterate bounces in the
    # valley (0.026 after 8000 steps) while its average, what lr="auto" evaluates, is nearer; with
    # γ = 1 and no restart the average was 0.10 and 0.12 from (1, 1), lagging along the long valley
    for name, off, lag in (("momentum", 1e-6, 5e-3), ("adam", 0.25, 0.02)):
        last, avg = _rosenbrock(name, 4000)
        assert (last - 1).abs().max() < off and (avg - 1).abs().max() < lag, name


@functools.lru_cache(maxsize=None)
def _rosenbrock(name, steps):
    """The last iterate and the average (opt.averaged()) after ``steps`` from (−1.5, 2)."""
    xy = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
    opt = descend.create(name, [xy], lr="auto", **({"momentum": 0.9} if name in MOMENTUM else {}))
    for _ in range(steps):
        opt.zero_grad()
        ((1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2).backward()
        opt.step()
    last = xy.detach().clone()
    with opt.averaged():
        return last, xy.detach().clone()


# ------------------------------------------------------------------------------ averaging (on by default)

def test_averaged_swaps_in_the_average_and_back_bitwise():
    ps, opt, _ = _run("adam", 12, dtype=torch.float32)  # lr="auto": averaging on by default
    own = [p.detach().clone() for p in ps]
    with opt.averaged():
        for p, o in zip(ps, own):
            assert torch.equal(p, opt.state[p]["avg"])
            assert not torch.equal(p, o)
    for p, o in zip(ps, own):
        assert torch.equal(p, o)
    sd = opt.state_dict()
    assert all("avg" in st for st in sd["state"].values())
    # the average by hand: θ̄ = θ after step 1, then on every 8th step after it (9, 17, ...: the m-th
    # averaging step) θ̄ += w_m (θ − θ̄), w_m = (1 + γ)/(m + γ); with lr="auto"'s γ = 0.5,
    # w_m = 1.5/(m + 0.5) (no restart here: the gradient grows with t, the estimate does not double)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = descend.GD([w], lr="auto", fast=False)
    assert opt.param_groups[0]["avg_gamma"] == 0.5 and opt.param_groups[0]["avg_every"] == 8
    avg = None
    for t in range(1, 21):
        w.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * t
        opt.step()
        if (t - 1) % 8 == 0:
            m = (t - 1) // 8 + 1
            avg = w.detach().clone() if avg is None else avg + (w.detach() - avg) * (1.5 / (m + 0.5))
    assert not torch.equal(avg, w.detach()) and opt.param_groups[0]["lr_estimate"]["avg_from"] == 1
    torch.testing.assert_close(opt.state[w]["avg"], avg, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("fast", [True, False])
def test_eval_swaps_the_average_in_and_train_swaps_the_iterate_back_bitwise(fast):
    # the evaluation switch loops call (HF Trainer: eval() before evaluating, train() before each step)
    ps, opt, _ = _run("adam", 12, fast=fast, dtype=torch.float32, big=True)
    own = [p.detach().clone() for p in ps]
    with opt.averaged():
        avg = [p.detach().clone() for p in ps]
    assert opt.eval() is opt and opt.param_groups[0]["averaged_in"] is True
    assert all(torch.equal(p, a) for p, a in zip(ps, avg))
    assert all(torch.equal(opt.state[p]["avg"], o) for p, o in zip(ps, own))  # the iterate, kept in its place
    opt.eval()  # already in: nothing moves
    assert all(torch.equal(p, a) for p, a in zip(ps, avg))
    with opt.averaged():  # in eval mode the average is already in
        assert all(torch.equal(p, a) for p, a in zip(ps, avg))
    assert all(torch.equal(p, a) for p, a in zip(ps, avg))
    with pytest.raises(RuntimeError, match=r"Adam\.step\(\): the parameters hold the averaged weights .*opt\.train\(\)"):
        opt.step()
    assert opt.param_groups[0]["step"] == 12 and all(torch.equal(p, a) for p, a in zip(ps, avg))  # nothing changed
    assert opt.train() is opt and "averaged_in" not in opt.param_groups[0]
    assert all(torch.equal(p, o) for p, o in zip(ps, own)) and all(torch.equal(opt.state[p]["avg"], a) for p, a in zip(ps, avg))
    opt.train()
    assert all(torch.equal(p, o) for p, o in zip(ps, own))
    # the same run, evaluated in between, steps on exactly as one never evaluated
    gen = torch.Generator().manual_seed(5)
    ref_ps, ref, _ = _run("adam", 12, fast=fast, dtype=torch.float32, big=True)
    for _ in range(9):
        opt.eval()
        opt.train()
        _grads(ps, gen)
        for p, q in zip(ps, ref_ps):
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, ref_ps))
    assert all(torch.equal(opt.state[p]["avg"], ref.state[q]["avg"]) for p, q in zip(ps, ref_ps))


def test_a_checkpoint_written_in_eval_mode_resumes_exactly():
    ps, opt, _ = _run("momentum", 10)
    gen = torch.Generator().manual_seed(7)
    grads = [[torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in ps] for _ in range(6)]
    opt.eval()
    weights, saved = [p.detach().clone() for p in ps], copy.deepcopy(opt.state_dict())  # the model's and the optimizer's
    assert all(g["averaged_in"] is True for g in saved["param_groups"])
    opt.train()
    qs = [w.clone().requires_grad_() for w in weights]
    again = descend.Momentum(qs, lr="auto", momentum=0.9)
    again.load_state_dict(saved)
    again.train()  # the loop's first training step
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))
    for gs in grads:
        for o, params in ((opt, ps), (again, qs)):
            for p, g in zip(params, gs):
                p.grad = g.clone()
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))
    with opt.averaged(), again.averaged():
        assert all(torch.equal(p, q) for p, q in zip(ps, qs))


def test_eval_and_train_are_no_ops_without_an_average_and_the_mode_is_checked_on_load():
    ps = _params()
    for opt in (descend.Adam(ps, lr=1e-3), descend.Adam(ps, lr=descend.auto(average=False))):
        _grads(ps, torch.Generator().manual_seed(0))
        opt.step()
        before = [p.detach().clone() for p in ps]
        assert opt.eval() is opt and "averaged_in" not in opt.param_groups[0]
        opt.step()  # no average: nothing was swapped, stepping is fine
        assert opt.train() is opt and not all(torch.equal(p, b) for p, b in zip(ps, before))
    opt = descend.Adam(ps, lr="auto")
    with pytest.raises(ValueError, match=r"Adam\.train\(\): invalid mode='no'; expected True or False"):
        opt.train("no")
    _grads(ps, torch.Generator().manual_seed(0))
    opt.step()
    sd = opt.eval().state_dict()
    opt.train()
    fixed = descend.Adam(_params(), lr="auto")
    bad = copy.deepcopy(sd)
    bad["param_groups"][0]["averaged_in"] = "yes"
    with pytest.raises(ValueError, match=r"group 0 has averaged_in='yes'; expected True"):
        fixed.load_state_dict(bad)
    no_avg = descend.Adam(_params(), lr=descend.auto(average=False))
    with pytest.raises(ValueError, match=r"averaged_in=True; .* as this one does not"):
        no_avg.load_state_dict({"param_groups": sd["param_groups"],  # (without its record of the blocks)
                                "state": {k: {n: v for n, v in st.items() if n != "avg"} for k, st in sd["state"].items()}})
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        descend.Adam([{"params": _params(), "averaged_in": True}], lr="auto")  # the optimizer's own flag


def test_averaging_is_on_by_default_and_average_false_removes_it():
    ps = _params()
    on = descend.Adam(ps, lr="auto")
    assert type(on.blocks[-1]) is B.AverageIterates
    assert [type(b) for b in descend.Adam(ps, lr=descend.auto()).blocks] == [type(b) for b in on.blocks]
    off = descend.Adam(ps, lr=descend.auto(average=False))
    assert not any(isinstance(b, B.AverageIterates) for b in off.blocks)
    assert [type(b) for b in off.blocks] == [type(b) for b in on.blocks][:-1]
    assert "avg_gamma" in on.param_groups[0] and "avg_gamma" not in off.param_groups[0]
    assert on.param_groups[0]["avg_gamma"] == 0.5  # the default: descend.auto(avg_gamma=0.5)
    assert descend.Adam(ps, lr=descend.auto(avg_gamma=8.0)).param_groups[0]["avg_gamma"] == 8.0
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        _grads(ps, gen)
        on.step()
    with on.averaged():
        pass
    for opt in (descend.Adam(ps, lr=1e-3), off):
        with pytest.raises(RuntimeError, match="average"):
            with opt.averaged():
                pass
    assert "avg" in on.state[ps[0]]


# ------------------------------------------------------------------------------ the contract

@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_takes_auto(name):
    ps, opt, lrs = _run(name, 8)
    assert all(torch.isfinite(p).all() for p in ps)
    assert lrs[0] > 0 and opt.param_groups[0]["lr_estimate"]["steps"] == 8
    assert isinstance(opt.blocks[0], B.ZeroNonfinite) and isinstance(opt.blocks[-1], B.AverageIterates)
    assert sum(isinstance(b, B.ScaleByAutoLearningRate) for b in opt.blocks) == 1
    # drop-in: a closure's loss comes back, zero_grad clears
    loss = opt.step(lambda: torch.tensor(1.5))
    assert float(loss) == 1.5
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


@pytest.mark.parametrize("blocks,want", [
    ([B.ScaleByRms(), B.Trace(), B.ScaleByLearningRate()], ["ScaleByRms", "Trace", "ScaleByAutoLearningRate"]),
    # a Trace after the learning rate: the estimator moves after it (and before what follows the Trace)
    ([B.ScaleByRms(), B.ScaleByLearningRate(), B.Trace()], ["ScaleByRms", "Trace", "ScaleByAutoLearningRate"]),
    ([B.ScaleByLearningRate(), B.Trace(), B.AddDecayedWeights()],
     ["Trace", "ScaleByAutoLearningRate", "AddDecayedWeights"]),
], ids=["trace-first", "trace-after", "trace-then-decay"])
def test_custom_chain_gets_auto(blocks, want):
    ps = _params()
    opt = descend.ChainOptimizer(ps, blocks, lr="auto", momentum=0.5)
    assert [type(b).__name__ for b in opt.blocks] == ["ZeroNonfinite", *want, "AverageIterates"]
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        _grads(ps, gen)
        opt.step()
    assert opt.param_groups[0]["lr"] > 0


@pytest.mark.parametrize("make,match", [
    (lambda ps: descend.Adam(ps, lr="fast"), r"invalid lr='fast'.*'auto'"),
    (lambda ps: descend.Adam(ps, lr=descend.auto(floor=0.0)), r"invalid lr_floor=0.0"),
    (lambda ps: descend.Adam(ps, lr=descend.auto(adapt=2.0)), r"invalid lr_adapt=2.0"),
    (lambda ps: descend.Adam(ps, lr=descend.auto(down=0.0)), r"invalid lr_down=0.0"),
    (lambda ps: descend.Adam(ps, lr=descend.auto(init=-1.0)), r"invalid lr_init=-1.0"),
    (lambda ps: descend.Adam(ps, lr=descend.auto(cap=0)), r"invalid lr_cap=0\b"),
    (lambda ps: descend.Adam(ps, lr=descend.auto(cap=-1)), r"invalid lr_cap=-1\b"),
    (lambda ps: descend.Adam(ps, lr=descend.auto(cap=math.inf)), r"invalid lr_cap=inf"),
    (lambda ps: descend.Adam(ps, lr=descend.auto(cap=math.nan)), r"invalid lr_cap=nan"),
    (lambda ps: descend.Adam([{"params": ps, "lr_cap": 0.0}], lr="auto"), r"invalid lr_cap=0.0"),
    (lambda ps: descend.Adam([{"params": ps, "lr": 0.1}], lr="auto"), r"invalid lr=0.1 in a parameter group"),
    (lambda ps: descend.ChainOptimizer(ps, [B.ScaleByAdam()], lr="auto"), r"no ScaleByLearningRate"),
    (lambda ps: descend.Adam(ps, lr=descend.auto(average="yes")), r"invalid average='yes'"),
])
def test_bad_settings_are_value_errors(make, match):
    ps = _params()
    before = [p.detach().clone() for p in ps]
    with pytest.raises(ValueError, match=match):
        make(ps)
    assert all(torch.equal(p, b) for p, b in zip(ps, before))


def test_doubling_is_gone():
    with pytest.raises(TypeError, match="doubling"):
        descend.auto(doubling=0.5)
    ps = _params()
    opt = descend.Adam(ps, lr="auto")
    assert "lr_doubling" not in opt.param_groups[0]
    assert "doubling" not in opt.param_groups[0]["lr_estimate"]


def test_readme_auto_section_runs():
    """The python block of the README's lr="auto" section runs as written."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split('## `lr="auto"`', 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_the_brake_follows_the_recent_gradient_scale_not_the_whole_run():
    # gradients that grow 10% a step for 60 steps (‖g‖² ×1.21: the recent mean keeps up, ratio ≈ 3 < 4)
    # never brake; the mean over the whole run falls far behind (ratio ≫ 4) and must not be the measure.
    # A sudden ×3 (‖g‖² ×9) then brakes at once.
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = descend.GD([w], lr=descend.auto(average=False), fast=False)
    direction = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    for t in range(60):
        w.grad = direction * 1.1 ** t
        opt.step()
        assert opt.param_groups[0]["lr_estimate"]["damp"] == 1.0, t
    est = opt.param_groups[0]["lr_estimate"]
    assert float((direction * 1.1 ** 59).pow(2).sum()) > 4 * est["G"] / est["steps"]  # the whole run's mean would brake
    w.grad = direction * 1.1 ** 60 * 3
    opt.step()
    assert opt.param_groups[0]["lr_estimate"]["damp"] == 0.5


@pytest.mark.parametrize("name", ["gd", "adam", "momentum", "adagrad"])
def test_float32_sums_in_blocks_stay_close_to_the_float64_reference(name, monkeypatch):
    # the kernel adds float32 products in blocks of 1024 (codegen.SUMBLOCK) before float64: the
    # estimate it folds may differ from the reference's float64 sums in the last ~5 digits, no more
    calls = _spy_kernel(monkeypatch)
    a, oa, la = _run(name, 12, fast=True, big=True, dtype=torch.float32)
    assert calls and all(r == 0 for r in calls)
    b, ob, lb = _run(name, 12, fast=False, big=True, dtype=torch.float32)
    assert la == pytest.approx(lb, rel=1e-4)
    ea, eb = oa.param_groups[0]["lr_estimate"], ob.param_groups[0]["lr_estimate"]
    for k in ("eta", "rbar", "G", "E"):
        assert ea[k] == pytest.approx(eb[k], rel=1e-4), k
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------- averaging every k steps


def _avg_run(fast, every, steps=10, gamma=1.0, dtype=torch.float64):
    torch.manual_seed(0)
    ps = [torch.randn(5000, dtype=dtype, requires_grad=True), torch.randn(6, 7, dtype=dtype, requires_grad=True)]
    opt = descend.ChainOptimizer(ps, [B.ScaleByLearningRate(), B.AverageIterates()], lr=0.05, avg_gamma=gamma,
                                 avg_every=every, fast=fast)
    gen = torch.Generator().manual_seed(3)
    thetas, avgs = [], []
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
        opt.step()
        thetas.append([p.detach().clone() for p in ps])
        avgs.append([opt.state[p]["avg"].clone() for p in ps])
    return opt, thetas, avgs


@pytest.mark.parametrize("fast", [True, False])
def test_average_every_k_steps_is_the_formula(fast):
    """k = 3, γ = 1: θ̄ takes the iterates of steps 1, 4, 7, 10 with w_m = 2/(m + 1), and is left
    bitwise alone on the steps between."""
    _, thetas, avgs = _avg_run(fast, every=3)
    want = None
    for t in range(1, 11):
        if (t - 1) % 3 == 0:
            m = (t - 1) // 3 + 1
            th = thetas[t - 1]
            want = [x.clone() for x in th] if want is None else [a + (2.0 / (m + 1)) * (x - a) for a, x in zip(want, th)]
            for a, w in zip(avgs[t - 1], want):
                torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-12)
        else:
            assert all(torch.equal(a, b) for a, b in zip(avgs[t - 1], avgs[t - 2]))  # not touched


def test_average_every_step_is_unchanged_by_the_option():
    """avg_every=1 (the default) is the average of every iterate, bitwise as before the option."""
    _, thetas, avgs = _avg_run(True, every=1, gamma=8.0)
    want = [x.clone() for x in thetas[0]]
    for t in range(2, 11):
        w = 9.0 / (t + 8.0)
        want = [a + w * (x - a) for a, x in zip(want, thetas[t - 1])]
    for a, w in zip(avgs[-1], want):
        torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 0.0), (torch.float32, 0.0)])
def test_average_every_k_fast_equals_reference(dtype, tol):
    a_opt, a_th, a_avg = _avg_run(True, every=4, dtype=dtype)
    b_opt, b_th, b_avg = _avg_run(False, every=4, dtype=dtype)
    for x, y in zip(a_th + a_avg, b_th + b_avg):
        for u, v in zip(x, y):
            torch.testing.assert_close(u, v, rtol=tol, atol=tol)


def test_gated_kernel_skips_the_average_between_its_steps():
    """The generated C runs a second copy of the loop, without a load or store of θ̄, when the gate is 0."""
    opt = descend.create("gd", [torch.zeros(1, requires_grad=True)], lr=descend.auto(avg_every=4))
    blocks, views, maximize, scal, bufs = codegen.first_step_inputs(opt)
    src = codegen.kernel_source(blocks, views, "float", maximize, scal, bufs)
    i = [type(b) for b in blocks].index(B.AverageIterates)
    j = [n for k, names in enumerate(bufs) for n in names].index("avg")  # θ̄'s pointer
    full, _, reduced = src.partition(f"if (c{i}_on != 0) {{")[2].partition("} else {")
    assert f"LD(S{j}[e])" in full and f"S{j}[e] = ST(" in full
    assert f"S{j}[e]" not in reduced.split("r1_gx +=")[0] and "P[e] = ST(p + u);" in reduced


def test_average_every_k_resumes_bitwise():
    opt, _, _ = _avg_run(True, every=3, steps=5)
    sd = copy.deepcopy(opt.state_dict())
    ps = [p.detach().clone().requires_grad_() for p in opt.param_groups[0]["params"]]
    again = descend.ChainOptimizer(ps, [B.ScaleByLearningRate(), B.AverageIterates()], lr=0.05, avg_gamma=1.0,
                                   avg_every=3)
    again.load_state_dict(sd)
    gen = torch.Generator().manual_seed(9)
    grads = [[torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in ps] for _ in range(4)]
    for o, params in ((opt, opt.param_groups[0]["params"]), (again, ps)):
        for g in grads:
            for p, x in zip(params, g):
                p.grad = x.clone()
            o.step()
    for p, q in zip(opt.param_groups[0]["params"], ps):
        assert torch.equal(p, q) and torch.equal(opt.state[p]["avg"], again.state[q]["avg"])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", math.nan])
def test_bad_avg_every_is_a_clear_error(bad):
    ps = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match=r"avg_every=.*expected an integer >= 1"):
        descend.Adam(ps, lr=descend.auto(avg_every=bad))


# ------------------------------------------------------------------------------- the average restarts


def _restart_run(fast, restart=2.0, steps=120, dtype=torch.float64):
    """GD with lr="auto" from 0 on a deterministic quadratic: the estimate rises for a while (cos ≈ 1),
    then settles. Returns the optimizer and, per step, θ after it, θ̄ after it, the estimate, the marks."""
    torch.manual_seed(0)
    h = torch.linspace(0.5, 2.0, 300, dtype=dtype)
    w = torch.zeros(300, dtype=dtype, requires_grad=True)
    opt = descend.GD([w], lr=descend.auto(restart=restart, avg_every=3), fast=fast)
    rec = []
    for _ in range(steps):
        w.grad = h * (w.detach() - 1.0)
        opt.step()
        g = opt.param_groups[0]
        rec.append((w.detach().clone(), opt.state[w]["avg"].clone(), dict(g["lr_estimate"]), list(g["lr_marks"])))
    return opt, w, rec


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_average_restarts_where_the_estimate_doubled_by_hand(fast):
    _, _, rec = _restart_run(fast)
    marks, avg_from, avg, m, restarts = [], 1, None, 0, []
    for t, (theta, got_avg, est, got_marks) in enumerate(rec, start=1):
        if not marks or t >= marks[-1][0] * 2 ** 0.25:  # the estimate kept at steps 2^{1/4} apart
            marks.append([t, est["eta"]])
        assert got_marks == marks
        if (t - 1) % 3 == 0:  # an averaged step (k = 3): m counts from the restart, w = 1.5/(m + 0.5)
            m = 1 if avg is None or t >= avg_from > t - 3 else m + 1
            avg = theta.clone() if m == 1 else avg + (1.5 / (m + 0.5)) * (theta - avg)
        torch.testing.assert_close(got_avg, avg, rtol=1e-12, atol=1e-12)
        ref = [eta for step, eta in marks if 2 * step <= t]
        if t >= 4 and est["eta"] > 2.0 * ref[-1]:  # grew 2× over the latter half: restart from t + 1
            avg_from = t + 1
            restarts.append(t)
        assert est["avg_from"] == avg_from
    assert len(restarts) >= 3  # it restarted while the estimate rose


def test_average_restart_fast_equals_reference_and_inf_never_restarts():
    _, wa, a = _restart_run(True)
    _, wb, b = _restart_run(False)
    for x, y in zip(a, b):  # (the kernel adds its float64 sums in another order: the estimates agree to ~1e-15)
        torch.testing.assert_close(x[0], y[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(x[1], y[1], rtol=1e-12, atol=0)
        assert x[2]["avg_from"] == y[2]["avg_from"] and x[2]["eta"] == pytest.approx(y[2]["eta"], rel=1e-12)
        assert [s for s, _ in x[3]] == [s for s, _ in y[3]]
    _, _, never = _restart_run(True, restart=math.inf)
    assert never[-1][2]["avg_from"] == 1
    # the restarted average is nearer the end point than the one over every third iterate since step 1
    end = a[-1][0]
    assert float((a[-1][1] - end).abs().max()) < 0.1 * float((never[-1][1] - end).abs().max())


def test_average_restart_resumes_bitwise():
    opt, w, _ = _restart_run(True, steps=20)
    sd = copy.deepcopy(opt.state_dict())
    w2 = w.detach().clone().requires_grad_()
    again = descend.GD([w2], lr=descend.auto(avg_every=3))
    again.load_state_dict(sd)
    h = torch.linspace(0.5, 2.0, 300, dtype=torch.float64)
    for o, p in ((opt, w), (again, w2)):
        for _ in range(40):
            p.grad = h * (p.detach() - 1.0)
            o.step()
    assert torch.equal(w, w2) and torch.equal(opt.state[w]["avg"], again.state[w2]["avg"])
    for k in ("lr_estimate", "lr_marks"):
        assert opt.param_groups[0][k] == again.param_groups[0][k]
    assert opt.param_groups[0]["lr_estimate"]["avg_from"] > 1


@pytest.mark.parametrize("bad", [1, 0.5, -2, True, "2", math.nan])
def test_bad_restart_is_a_clear_error(bad):
    ps = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match=r"avg_restart=.*expected a number > 1, or inf"):
        descend.Adam(ps, lr=descend.auto(restart=bad))


@pytest.mark.parametrize("pinned", [False, True], ids=["group", "pinned"])
def test_pinned_estimator_and_average_fast_equals_reference(pinned):
    """A hand-built chain whose estimator and average pin their own settings: the fast path's stored
    plan used to keep a copy of the group taken when it was made, so their scalars read a stale
    estimate (θ ended 1.9 apart from the reference after 40 steps)."""
    def run(fast):
        torch.manual_seed(0)
        w = torch.randn(1000, dtype=torch.float64, requires_grad=True)
        if pinned:
            chain = [B.ScaleByAdam(), B.ScaleByAutoLearningRate(lr_adapt=0.3), B.AverageIterates(avg_every=2)]
            opt = descend.ChainOptimizer([w], chain, fast=fast, lr=0.0)
        else:
            chain = [B.ScaleByAdam(), B.ScaleByAutoLearningRate(), B.AverageIterates()]
            opt = descend.ChainOptimizer([w], chain, fast=fast, lr=0.0, lr_adapt=0.3, avg_every=2)
        for _ in range(40):
            w.grad = 2 * w.detach() + 4 * w.detach() ** 3
            opt.step()
        return w.detach(), opt.state[w]["avg"], opt.param_groups[0]
    (a, abar, ga), (b, bbar, gb) = run(True), run(False)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(abar, bbar, rtol=1e-12, atol=1e-12)
    assert ga["lr"] == pytest.approx(gb["lr"], rel=1e-12) and ga["lr"] > 0


def test_a_chain_that_pins_estimator_settings_takes_lr_auto():
    """lr="auto" on a hand-built chain whose estimator pins a setting: the pinned value is used, the
    group does not get the setting (it used to raise "unexpected hyperparameter 'lr_adapt'"), and the
    run equals the same setting given through descend.auto."""
    def run(pinned):
        torch.manual_seed(0)
        w = torch.randn(50, dtype=torch.float64, requires_grad=True)
        if pinned:
            opt = descend.ChainOptimizer([w], [B.ScaleByAdam(), B.ScaleByAutoLearningRate(lr_adapt=0.3)], lr="auto",
                                         fast=False)
        else:
            opt = descend.ChainOptimizer([w], [B.ScaleByAdam(), B.ScaleByLearningRate()],
                                         lr=descend.auto(adapt=0.3), fast=False)
        for _ in range(30):
            w.grad = 2 * w.detach() + 0.1 * torch.sin(torch.arange(50, dtype=torch.float64))
            opt.step()
        return w.detach(), opt
    a, pinned = run(True)
    b, plain = run(False)
    assert "lr_adapt" not in pinned.param_groups[0] and plain.param_groups[0]["lr_adapt"] == 0.3
    assert torch.equal(a, b) and pinned.param_groups[0]["lr"] == plain.param_groups[0]["lr"]


def test_a_fixed_rate_state_is_refused_by_lr_auto_and_nothing_changes():
    """torch.optim.Adam's state (or descend's at a fixed lr) into descend.Adam(lr="auto"): it used to
    load, and the next step failed with KeyError 'lr_estimate'. Now a ValueError before anything changes."""
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)

    def steps(o, n=3):
        for _ in range(n):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()

    auto = descend.Adam(m.parameters(), lr="auto")
    steps(auto)
    before = copy.deepcopy(auto.state_dict())
    fixed = torch.optim.Adam(m.parameters(), lr=1e-3)
    steps(fixed)
    with pytest.raises(ValueError, match=r"group 0 has no 'lr_estimate'.*at lr=0\.001.*build the optimizer with"):
        auto.load_state_dict(fixed.state_dict())
    after = auto.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert all(torch.equal(after["state"][k][n], before["state"][k][n]) for k in before["state"]
               for n in before["state"][k] if torch.is_tensor(before["state"][k][n]))
    steps(auto)  # and it still steps
