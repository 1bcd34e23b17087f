"""Schedules: parity with torch.optim.lr_scheduler, the closed forms at their boundaries (computed by
hand here), composition, plateau, resuming through state_dict, the torch adapter, the plot and the CLI."""

from __future__ import annotations

import copy
import io
import math
import pickle
import re
import warnings

import pytest
import torch
from click.testing import CliRunner
from torch.optim import lr_scheduler as L

import descend
import descend.schedules as S
from descend.cli import main as cli_main

REL = 1e-9
N = 400  # steps of every parity run (>= 300)


def close(a: float, b: float, rel: float = REL) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=0.0)


def torch_lrs(make_scheduler, n: int, lr: float = 0.1, closed_form: bool = False) -> list[float]:
    """The lr torch's scheduler sets for optimizer steps 0 … n−1 (value after k scheduler.step() calls).

    ``closed_form`` evaluates torch's ``_get_closed_form_lr`` at every step instead of the chained one.
    """
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=lr, momentum=0.9)
    sch = make_scheduler(opt)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(n):
            if closed_form:
                sch.last_epoch = k
                out.append(float(sch._get_closed_form_lr()[0]))
            else:
                out.append(float(opt.param_groups[0]["lr"]))
                opt.step()
                sch.step()
    return out


# --------------------------------------------------------------------------- parity with torch

PARITY = [
    # id, torch scheduler on base lr 0.1, our schedule, has torch a closed form
    ("StepLR", lambda o: L.StepLR(o, step_size=30, gamma=0.5), S.step(0.1, 30, 0.5), True),
    ("MultiStepLR", lambda o: L.MultiStepLR(o, [50, 120, 120, 300], gamma=0.3),
     S.multistep(0.1, [300, 50, 120, 120], 0.3), True),
    ("ExponentialLR", lambda o: L.ExponentialLR(o, gamma=0.99), S.exponential(0.1, 0.99), True),
    ("PolynomialLR", lambda o: L.PolynomialLR(o, total_iters=350, power=2.0), S.polynomial(0.1, 350, 2.0), True),
    ("PolynomialLR-p1", lambda o: L.PolynomialLR(o, total_iters=N), S.polynomial(0.1, N), True),
    ("CosineAnnealingLR", lambda o: L.CosineAnnealingLR(o, T_max=N - 1, eta_min=1e-3),
     S.cosine(0.1, N - 1, end=1e-3), True),
    ("CosineAnnealingLR-0", lambda o: L.CosineAnnealingLR(o, T_max=N - 1), S.cosine(0.1, N - 1), True),
    ("WarmRestarts-mult2", lambda o: L.CosineAnnealingWarmRestarts(o, T_0=20, T_mult=2, eta_min=1e-3),
     S.cosine_restarts(0.1, 20, mult=2, end=1e-3), False),
    ("WarmRestarts-mult1", lambda o: L.CosineAnnealingWarmRestarts(o, T_0=37), S.cosine_restarts(0.1, 37), False),
    ("LinearLR", lambda o: L.LinearLR(o, start_factor=0.25, end_factor=0.9, total_iters=300),
     S.linear(0.025, 0.09, 300), True),
    ("LinearLR-default", lambda o: L.LinearLR(o), S.linear(0.1 / 3, 0.1, 5), True),
    ("OneCycle-cos", lambda o: L.OneCycleLR(o, max_lr=0.1, total_steps=N), S.one_cycle(0.1, N), False),
    ("OneCycle-linear", lambda o: L.OneCycleLR(o, 0.1, total_steps=N, anneal_strategy="linear"),
     S.one_cycle(0.1, N, anneal="linear"), False),
    ("OneCycle-cos-3", lambda o: L.OneCycleLR(o, 0.2, total_steps=N, pct_start=0.2987, three_phase=True,
                                              div_factor=10.0, final_div_factor=100.0),  # phases end mid-step
     S.one_cycle(0.2, N, 0.2987, div_factor=10.0, final_div_factor=100.0, three_phase=True), False),
    ("OneCycle-linear-3", lambda o: L.OneCycleLR(o, 0.1, total_steps=N, pct_start=0.37, anneal_strategy="linear",
                                                 three_phase=True),
     S.one_cycle(0.1, N, 0.37, anneal="linear", three_phase=True), False),
]


@pytest.mark.parametrize("make, sched, closed", [p[1:] for p in PARITY], ids=[p[0] for p in PARITY])
def test_parity_with_torch_schedulers(make, sched, closed):
    ours = sched.values(N)
    chained = torch_lrs(make, N)
    bad = [(k, a, b) for k, (a, b) in enumerate(zip(ours, chained)) if not close(a, b)]
    assert not bad, f"differs from torch's chained values at (step, ours, torch) {bad[:5]}"
    if closed:
        form = torch_lrs(make, N, closed_form=True)
        bad = [(k, a, b) for k, (a, b) in enumerate(zip(ours, form)) if not close(a, b)]
        assert not bad, f"differs from torch's closed form at {bad[:5]}"


@pytest.mark.parametrize("three_phase, anneal", [(False, "cos"), (True, "linear")])
def test_one_cycle_momentum_matches_torch_cycle(three_phase, anneal):
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.5)
    sch = L.OneCycleLR(opt, 0.1, total_steps=300, pct_start=0.3, anneal_strategy=anneal,
                       three_phase=three_phase, base_momentum=0.8, max_momentum=0.97)
    m = S.one_cycle(0.1, 300, 0.3, anneal=anneal, three_phase=three_phase).momentum(0.8, 0.97)
    for k in range(300):
        assert close(m(k), opt.param_groups[0]["momentum"]), k
        opt.step()
        sch.step()


# --------------------------------------------------------------------------- closed forms at their boundaries


def test_warmup_cosine_boundaries():
    s = S.warmup_cosine(peak=1.0, warmup_steps=10, total_steps=110, start=0.2, end=0.1)
    assert s(0) == 0.2                                      # first step: start
    assert close(s(5), 0.2 + 0.8 * 5 / 10)                  # half-way up
    assert s(10) == 1.0                                     # end of warm-up: peak
    assert close(s(60), 0.1 + 0.9 * 0.5)                    # cosine half-way: the mean of peak and end
    assert close(s(35), 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert close(s(110), 0.1) and close(s(500), 0.1)        # the end, and kept
    assert S.warmup_cosine(1.0, 0, 10)(0) == 1.0            # no warm-up: starts at the peak


@pytest.mark.parametrize("decay, mid", [
    ("linear", lambda peak, end: peak + (end - peak) * 0.25),
    ("cosine", lambda peak, end: end + (peak - end) * (1 + math.cos(math.pi / 4)) / 2),
    ("sqrt", lambda peak, end: end + (peak - end) * (1 - 0.5)),
])
def test_wsd_boundaries(decay, mid):
    s = S.wsd(peak=2.0, warmup_steps=10, stable_steps=30, decay_steps=40, start=0.5, end=0.1, decay=decay)
    assert s(0) == 0.5                                      # first step
    assert close(s(4), 0.5 + 1.5 * 0.4)
    assert s(10) == 2.0                                     # end of warm-up
    assert s(39) == 2.0 and s(40) == 2.0                    # end of the stable phase: the decay starts from peak
    assert close(s(50), mid(2.0, 0.1))                      # a quarter into the decay (√¼ = ½ for "sqrt")
    assert close(s(80), 0.1) and close(s(1000), 0.1)        # the end, and kept
    assert s.total_steps == 80
    assert S.wsd(1.0, 0, 0, 4)(0) == 1.0


def test_simple_closed_forms_by_hand():
    assert S.constant(0.3)(12345) == 0.3
    assert close(S.step(1.0, 10, 0.5)(9), 1.0) and close(S.step(1.0, 10, 0.5)(10), 0.5)
    assert close(S.step(1.0, 10, 0.5)(35), 0.125)
    ms = S.multistep(1.0, [5, 5, 8], 0.1)
    assert [ms(t) for t in (4, 5, 7, 8)] == pytest.approx([1.0, 0.01, 0.01, 0.001], rel=1e-12)
    assert close(S.exponential(2.0, 0.5)(3), 0.25)
    p = S.polynomial(1.0, 10, power=2.0, end=0.2)
    assert p(0) == 1.0 and close(p(5), 0.2 + 0.8 * 0.25) and p(10) == 0.2 and p(11) == 0.2
    lin = S.linear(0.1, 0.5, 4)
    assert [lin(t) for t in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.5], rel=1e-12)
    isq = S.inverse_sqrt(1.0, 4)
    assert isq(0) == 0.0 and close(isq(2), 0.5) and isq(4) == 1.0 and close(isq(16), 0.5)
    c = S.cosine(1.0, 10, end=0.5)
    assert c(0) == 1.0 and close(c(5), 0.75) and close(c(10), 0.5) and close(c(20), 0.5)
    r = S.cosine_restarts(1.0, 4, mult=2)
    # periods 4, 8, 16: restarts at steps 0, 4, 12, 28
    assert [r(t) for t in (0, 4, 12, 28)] == [1.0] * 4
    assert close(r(2), 0.5) and close(r(8), 0.5) and close(r(20), 0.5) and close(r(27), (1 + math.cos(15 * math.pi / 16)) / 2)


def test_one_cycle_boundaries():
    s = S.one_cycle(1.0, 101, pct_start=0.5, div_factor=4.0, final_div_factor=5.0)
    # phase 1 ends at 0.5·101 − 1 = 49.5: step 0 is η_max/4, the last step is η_max/20
    assert close(s(0), 0.25) and close(s(100), 0.05) and close(s(200), 0.05)
    assert close(s(49), 0.25 + 0.75 * (1 - math.cos(math.pi * 49 / 49.5)) / 2)
    m = s.momentum(0.8, 0.9)
    assert close(m(0), 0.9) and close(m(100), 0.9) and m(49) < 0.8 + 1e-4


def test_join_runs_each_schedule_from_its_own_zero():
    j = S.join([S.constant(1.0), S.linear(1.0, 0.0, 10), S.cosine(0.5, 20)], [5, 15])
    assert [j(t) for t in range(5)] == [1.0] * 5
    assert j(5) == 1.0 and close(j(10), 0.5) and close(j(14), 0.1)      # linear's steps 0, 5, 9
    assert j(15) == 0.5 and close(j(25), 0.25) and j(35) == 0.0 and j(99) == 0.0   # cosine's 0, 10, 20
    assert S.join([0.7], [])(3) == 0.7                                    # numbers are constants


# --------------------------------------------------------------------------- plateau


def plateau_values(metrics, **kw):
    s = S.reduce_on_plateau(1.0, **kw)
    return [s.observe(m) for m in metrics]


def test_plateau_scripted_by_hand():
    # patience 2: the third bad observation in a row reduces; equal is not better (threshold 0, abs)
    got = plateau_values([5, 4, 4, 4, 4, 4, 4, 3], factor=0.5, patience=2, threshold=0.0, threshold_mode="abs")
    assert got == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5]
    # a cooldown of 2 swallows the next two bad observations
    got = plateau_values([5, 4, 4, 4, 4, 4, 4, 4, 4, 4], factor=0.5, patience=2, cooldown=2, threshold=0.0)
    assert got == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25]
    # mode max, patience 0, floored at min_value
    assert plateau_values([1, 1, 1, 1], factor=0.1, patience=0, mode="max", min_value=0.05) == \
        pytest.approx([1, 0.1, 0.05, 0.05], rel=1e-12)


@pytest.mark.parametrize("kw", [
    dict(factor=0.5, patience=2, cooldown=1),
    dict(factor=0.3, patience=1, mode="max", threshold=0.05, threshold_mode="abs", min_value=0.01),
])
def test_plateau_matches_torch(kw):
    g = torch.Generator().manual_seed(0)
    metrics = (torch.rand(200, generator=g) + torch.linspace(3, 1, 200)).tolist()
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    tkw = {("min_lr" if k == "min_value" else k): v for k, v in kw.items()}
    ref = L.ReduceLROnPlateau(opt, **tkw)
    s = S.reduce_on_plateau(1.0, **kw)
    for m in metrics:
        ref.step(m)
        assert s.observe(m) == opt.param_groups[0]["lr"]
    assert s.value < 1.0  # it did reduce


def test_warmup_then_plateau_through_the_optimizer_and_resume():
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    sched = S.join([S.linear(0.0, 0.1, 3), S.reduce_on_plateau(0.1, factor=0.5, patience=1, threshold=0.0)], [3])
    opt = descend.GD([w], lr=sched)
    metrics = [1, 1, 7, 7, 7, 7, 7, 6, 6, 6, 6]  # the warm-up's low metrics must not count
    lrs = []
    for k, m in enumerate(metrics):
        lrs.append(opt.param_groups[0]["lr"])
        w.grad = torch.ones(2, dtype=torch.float64)
        opt.step()
        S.observe(opt, m)
        if k == 5:
            saved = io.BytesIO()
            torch.save(opt.state_dict(), saved)
    # observation k is made after step k (group step k+1): the plateau is in force from step 3 on, so it
    # sees metrics[2:]: 7 (best), 7 bad 1, 7 bad 2 -> 0.05, 7 bad 1, 7 bad 2 -> 0.025, 6 best, 6, 6 -> 0.0125
    expect = [0.0, 0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125]
    assert lrs == pytest.approx(expect, rel=1e-12)

    # resume from after step 5 with a fresh optimizer that knew nothing of the schedule
    w2 = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt2 = descend.GD([w2], lr=1.0)
    saved.seek(0)
    opt2.load_state_dict(torch.load(saved))  # weights_only: the schedule classes are allow-listed
    lrs2 = []
    for m in metrics[6:]:
        lrs2.append(opt2.param_groups[0]["lr"])
        w2.grad = torch.ones(2, dtype=torch.float64)
        opt2.step()
        S.observe(opt2, m)
    assert lrs2 == lrs[6:]


def test_observe_needs_a_plateau():
    w = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="no reduce_on_plateau"):
        S.observe(descend.GD([w], lr=S.constant(0.1)), 1.0)


# --------------------------------------------------------------------------- driving optimizers


def quadratic(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = a @ a.T / n + torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return A, b  # f(θ) = ½ θᵀAθ − bᵀθ, ∇f = Aθ − b


@pytest.mark.parametrize("fast", [False, True])
def test_schedule_drives_momentum_like_the_chapters_rule(fast):
    A, b = quadratic()
    sched = S.warmup_cosine(0.2, 5, 40, end=0.01)
    gamma = 0.8
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = descend.Momentum([w], lr=sched, momentum=gamma, fast=fast)
    theta = torch.zeros(4, dtype=torch.float64)
    v = torch.zeros(4, dtype=torch.float64)
    for t in range(40):
        assert opt.param_groups[0]["lr"] == sched(t)  # the group shows the value step t uses
        w.grad = A @ w.detach() - b
        opt.step()
        eta = sched(t)                                  # by hand: v ← γv − η_t g;  θ ← θ + v
        v = gamma * v - eta * (A @ theta - b)
        theta = theta + v
        torch.testing.assert_close(w.detach(), theta, rtol=1e-12, atol=1e-14)
    assert opt.param_groups[0]["step"] == 40


@pytest.mark.parametrize("name", descend.available())
def test_every_optimizer_takes_a_schedule_for_lr(name):
    """Step t with lr=sched equals step t with the number sched(t) written into the group by hand."""
    A, b = quadratic(seed=2)
    sched = S.warmup_cosine(0.05, 2, 6, start=0.01)
    w1 = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    w2 = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    o1 = descend.create(name, [w1], lr=sched)
    o2 = descend.create(name, [w2], lr=1.0)
    for t in range(6):
        assert o1.param_groups[0]["lr"] == sched(t)
        o2.param_groups[0]["lr"] = sched(t)
        for w, o in ((w1, o1), (w2, o2)):
            w.grad = A @ w.detach() - b
            o.step()
        assert torch.equal(w1.detach(), w2.detach()), t
    assert not torch.equal(w1.detach(), torch.ones(4, dtype=torch.float64))


def test_state_dict_resume_mid_run_is_exact():
    A, b = quadratic(seed=1)

    def make():
        w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
        sched = S.join([S.linear(0.0, 0.1, 4), S.cosine_restarts(0.1, 6, mult=2, end=0.01)], [4])
        return w, descend.Momentum([w], lr=sched, momentum=0.9)

    w, opt = make()
    trail, lrs = [], []
    for t in range(30):
        if t == 13:
            buf = io.BytesIO()
            torch.save({"w": w.detach().clone(), "opt": opt.state_dict()}, buf)
        lrs.append(opt.param_groups[0]["lr"])
        w.grad = A @ w.detach() - b
        opt.step()
        trail.append(w.detach().clone())

    w2 = torch.nn.Parameter(torch.full((4,), 7.0, dtype=torch.float64))
    opt2 = descend.Momentum([w2], lr=0.5, momentum=0.9)  # built with another lr: the state carries the schedule
    buf.seek(0)
    ck = torch.load(buf)
    with torch.no_grad():
        w2.copy_(ck["w"])
    opt2.load_state_dict(ck["opt"])
    for t in range(13, 30):
        assert opt2.param_groups[0]["lr"] == lrs[t]
        w2.grad = A @ w2.detach() - b
        opt2.step()
        assert torch.equal(w2.detach(), trail[t]), t


def regression(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(32, 5, generator=g, dtype=torch.float64)
    y = X @ torch.randn(5, generator=g, dtype=torch.float64) + 0.1 * torch.randn(32, generator=g, dtype=torch.float64)
    return X, y


def trajectory(opt, w, X, y, steps, after_step=lambda: None):
    out = []
    for _ in range(steps):
        opt.zero_grad()
        ((X @ w - y) ** 2).mean().backward()
        opt.step()
        after_step()
        out.append(w.detach().clone())
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_one_cycle_drives_descend_like_torch_one_cycle(kind):
    X, y = regression()
    n = 60
    oc = S.one_cycle(0.05, n, pct_start=0.25, three_phase=(kind == "adam"))
    w1 = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    w2 = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    if kind == "sgd":
        ours = descend.SGD([w1], lr=oc, momentum=oc.momentum(), fast=False)
        ref = torch.optim.SGD([w2], lr=0.05, momentum=0.9)
    else:
        ours = descend.Adam([w1], lr=oc, betas=(oc.momentum(), 0.999), fast=False)
        ref = torch.optim.Adam([w2], lr=0.05, betas=(0.9, 0.999))
    sch = L.OneCycleLR(ref, 0.05, total_steps=n, pct_start=0.25, three_phase=(kind == "adam"))
    a = trajectory(ours, w1, X, y, n)
    b = trajectory(ref, w2, X, y, n, sch.step)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert not torch.equal(a[0], a[-1])


# --------------------------------------------------------------------------- the torch adapter


def test_schedule_lr_on_torch_sgd_and_exact_resume():
    X, y = regression(1)
    sched = S.warmup_cosine(0.05, 5, 40, end=0.001)

    def make():
        w = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
        opt = torch.optim.SGD([w], lr=123.0, momentum=0.9)
        return w, opt, S.ScheduleLR(opt, sched)

    w, opt, sch = make()
    lrs, trail = [], []
    for t in range(40):
        if t == 17:
            buf = io.BytesIO()
            torch.save({"w": w.detach().clone(), "opt": opt.state_dict(), "sch": sch.state_dict()}, buf)
        lrs.append(opt.param_groups[0]["lr"])
        assert lrs[-1] == sched(t)
        trail.append(trajectory(opt, w, X, y, 1, sch.step)[0])

    w2 = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt2 = torch.optim.SGD([w2], lr=123.0, momentum=0.9)
    buf.seek(0)
    ck = torch.load(buf)
    opt2.load_state_dict(ck["opt"])          # either order works: the scheduler writes the resumed lr
    sch2 = S.ScheduleLR(opt2, S.constant(9.0))
    sch2.load_state_dict(ck["sch"])
    with torch.no_grad():
        w2.copy_(ck["w"])
    for t in range(17, 40):
        assert opt2.param_groups[0]["lr"] == lrs[t]
        assert torch.equal(trajectory(opt2, w2, X, y, 1, sch2.step)[0], trail[t])


def test_schedule_lr_with_momentum_equals_torch_one_cycle():
    X, y = regression(2)
    n = 50
    oc = S.one_cycle(0.05, n, anneal="linear")
    w1 = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    w2 = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    o1 = torch.optim.SGD([w1], lr=1.0, momentum=0.5)
    o2 = torch.optim.SGD([w2], lr=1.0, momentum=0.5)
    s1 = S.ScheduleLR(o1, oc, momentum=oc.momentum())
    s2 = L.OneCycleLR(o2, 0.05, total_steps=n, anneal_strategy="linear")
    torch.testing.assert_close(trajectory(o1, w1, X, y, n, s1.step), trajectory(o2, w2, X, y, n, s2.step),
                               rtol=1e-10, atol=1e-12)


def test_schedule_lr_feeds_a_plateau_and_resumes_it():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    sch = S.ScheduleLR(opt, S.reduce_on_plateau(1.0, factor=0.5, patience=0, threshold=0.0))
    for m in (3, 2, 2):
        S.observe(sch, m)
    assert opt.param_groups[0]["lr"] == 0.5
    sd = copy.deepcopy(sch.state_dict())
    S.observe(sch, 2)
    assert opt.param_groups[0]["lr"] == 0.25
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sch2 = S.ScheduleLR(opt2, S.constant(1.0))
    sch2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.5
    S.observe(sch2, 2)
    assert opt2.param_groups[0]["lr"] == 0.25


def test_schedule_lr_refuses_a_double_schedule():
    w = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="already a descend schedule"):
        S.ScheduleLR(descend.GD([w], lr=S.constant(0.1)), S.constant(0.2))


# --------------------------------------------------------------------------- objects: repr, pickle, copies

ALL = [S.constant(0.1), S.step(0.1, 3), S.multistep(0.1, [3, 1]), S.exponential(0.1, 0.9),
       S.polynomial(0.1, 10, 2.0, 0.01), S.linear(0.0, 1.0, 7), S.inverse_sqrt(1.0, 4), S.cosine(1.0, 10),
       S.cosine_restarts(1.0, 3, 2), S.warmup_cosine(1.0, 2, 10), S.wsd(1.0, 2, 3, 4, decay="sqrt"),
       S.one_cycle(1.0, 20), S.one_cycle_momentum(20, three_phase=True),
       S.join([S.constant(1.0), S.cosine(1.0, 5)], [3])]


@pytest.mark.parametrize("s", ALL, ids=lambda s: type(s).__name__)
def test_repr_rebuilds_and_copies_are_equal(s):
    assert eval(repr(s), vars(S)) == s
    for c in (pickle.loads(pickle.dumps(s)), copy.deepcopy(s)):
        assert c == s and [c(t) for t in range(25)] == [s(t) for t in range(25)]
    with pytest.raises(dataclass_frozen_error()):
        s.__setattr__(next(iter(vars(s))), 0)


def dataclass_frozen_error():
    import dataclasses
    return dataclasses.FrozenInstanceError


def test_plateau_state_survives_pickle():
    p = S.reduce_on_plateau(1.0, patience=0, factor=0.5)
    p.observe(1.0), p.observe(2.0)
    q = pickle.loads(pickle.dumps(p))
    assert q == p and q.value == 0.5 and q.state_dict() == p.state_dict()
    assert q.observe(3.0) == 0.25 and p.value == 0.5


# --------------------------------------------------------------------------- bad input

BAD = [
    (lambda: S.step(0.1, 0), "step_size=0", "integer >= 1"),
    (lambda: S.polynomial(0.1, -5), "total_steps=-5", "integer >= 1"),
    (lambda: S.linear(0.0, 1.0, 0), "total_steps=0", "integer >= 1"),
    (lambda: S.cosine(0.1, 2.5), "total_steps=2.5", "integer >= 1"),
    (lambda: S.warmup_cosine(1.0, 20, 10), "warmup_steps=20", "[0, total_steps - 1] = [0, 9]"),
    (lambda: S.warmup_cosine(1.0, -1, 10), "warmup_steps=-1", "[0, total_steps - 1]"),
    (lambda: S.wsd(1.0, -1, 0, 10), "warmup_steps=-1", "integer >= 0"),
    (lambda: S.wsd(1.0, 0, 0, 0), "decay_steps=0", "integer >= 1"),
    (lambda: S.wsd(1.0, 1, 1, 1, decay="exp"), "decay='exp'", "'linear', 'cosine', 'sqrt'"),
    (lambda: S.inverse_sqrt(1.0, 0), "warmup_steps=0", "integer >= 1"),
    (lambda: S.cosine_restarts(1.0, 0), "period=0", "integer >= 1"),
    (lambda: S.cosine_restarts(1.0, -3), "period=-3", "integer >= 1"),
    (lambda: S.cosine_restarts(1.0, 5, mult=1.5), "mult=1.5", "integer >= 1"),
    (lambda: S.join([S.constant(1.0), S.constant(2.0)], []), "boundaries=[]", "1 strictly increasing"),
    (lambda: S.join([S.constant(1.0), S.constant(2.0)], [5, 6]), "boundaries=[5, 6]", "one fewer than the 2"),
    (lambda: S.join([1.0, 2.0, 3.0], [5, 5]), "boundaries=[5, 5]", "strictly increasing"),
    (lambda: S.join([1.0, 2.0], [0]), "boundaries=[0]", ">= 1"),
    (lambda: S.join([1.0, "x"], [3]), "schedules[1]='x'", "a schedule"),
    (lambda: S.join([], []), "schedules=[]", "non-empty"),
    (lambda: S.one_cycle(1.0, 100, pct_start=1.2), "pct_start=1.2", "(0.01, 1)"),
    (lambda: S.one_cycle(1.0, 100, pct_start=0.6, three_phase=True), "pct_start=0.6", "(0.01, 0.505)"),
    (lambda: S.one_cycle(1.0, 1), "total_steps=1", "integer >= 2"),
    (lambda: S.one_cycle(1.0, 10, anneal="exp"), "anneal='exp'", "'cos', 'linear'"),
    (lambda: S.one_cycle(1.0, 10, div_factor=0.0), "div_factor=0.0", "> 0"),
    (lambda: S.one_cycle_momentum(10, max_momentum=1.0), "max_momentum=1.0", "[0, 1)"),
    (lambda: S.exponential(1.0, -0.5), "gamma=-0.5", ">= 0"),
    (lambda: S.multistep(1.0, [10, -2]), "milestones[1]=-2", "integer >= 0"),
    (lambda: S.cosine(float("nan"), 10), "init=nan", "finite"),
    (lambda: S.reduce_on_plateau(1.0, factor=1.0), "factor=1.0", "[0, 1)"),
    (lambda: S.reduce_on_plateau(1.0, patience=-1), "patience=-1", "integer >= 0"),
    (lambda: S.reduce_on_plateau(1.0, mode="avg"), "mode='avg'", "'min', 'max'"),
    (lambda: S.cosine(1.0, 10)(-1), "step=-1", "integer >= 0"),
    (lambda: S.plot(S.constant(1.0), 0), "total_steps=0", "integer >= 1"),
    (lambda: S.ScheduleLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), S.constant(0.1),
                          momentum=[S.constant(0.1)] * 2), "momentum=", "a list of 1"),
]


@pytest.mark.parametrize("build, name, expected", BAD, ids=[b[1] for b in BAD])
def test_bad_input_names_the_parameter_and_range(build, name, expected):
    with pytest.raises(ValueError) as e:
        build()
    assert name in str(e.value) and expected in str(e.value), str(e.value)


# --------------------------------------------------------------------------- the plot and the CLI


def test_plot_headless_returns_figure_and_writes_png(tmp_path):
    from matplotlib.figure import Figure

    s = S.wsd(1.0, 5, 10, 5, decay="cosine")
    out = tmp_path / "s.png"
    fig = S.plot({"wsd": s, "cos": S.cosine(1.0, 20)}, 21, out=str(out))
    assert isinstance(fig, Figure)
    ys = fig.axes[0].lines[0].get_ydata()
    assert list(ys) == [s(t) for t in range(21)]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_true_values_and_writes_png(tmp_path):
    out = tmp_path / "wsd.png"
    args = ["schedule", "wsd", "--peak", "0.001", "--warmup-steps", "10", "--stable_steps=20", "--decay-steps",
            "10", "--decay", "sqrt", "--end", "-1e-4", "--steps", "41", "--out", str(out)]
    r = CliRunner().invoke(cli_main, args)
    assert r.exit_code == 0, r.output
    s = S.wsd(0.001, 10, 20, 10, end=-1e-4, decay="sqrt")
    rows = re.findall(r"step\s+(\d+)\s+(\S+)", r.output)
    assert len(rows) >= 5 and rows[0][0] == "0" and rows[-1][0] == "40"
    for t, v in rows:
        assert close(float(v), s(int(t)), 1e-9), (t, v)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_cli_flags_lists_and_default_length():
    r = CliRunner().invoke(cli_main, ["schedule", "one_cycle", "--max-lr", "1", "--total-steps", "30",
                                      "--three-phase", "--pct-start", "0.2"])
    assert r.exit_code == 0, r.output
    s = S.one_cycle(1.0, 30, 0.2, three_phase=True)
    rows = re.findall(r"step\s+(\d+)\s+(\S+)", r.output)
    assert rows[-1][0] == "29" and all(close(float(v), s(int(t))) for t, v in rows)
    r = CliRunner().invoke(cli_main, ["schedule", "multistep", "--init", "1", "--milestones", "5,10", "--steps", "11"])
    assert r.exit_code == 0 and re.search(r"step\s+10\s+0\.01\b", r.output), r.output


@pytest.mark.parametrize("args, says", [
    (["schedule", "nope"], "valid names"),
    (["schedule", "wsd", "--peak", "1"], "needs --warmup-steps"),
    (["schedule", "cosine", "--init", "abc", "--total-steps", "3"], "expected a number"),
    (["schedule", "cosine", "--init", "1", "--total-steps", "3", "--bogus", "2"], "no parameter --bogus"),
    (["schedule", "warmup_cosine", "--peak", "1", "--warmup-steps", "20", "--total-steps", "10"],
     "invalid warmup_steps=20"),
    (["schedule", "exponential", "--init", "1", "--gamma", "0.5"], "give --steps"),
    (["schedule", "cosine", "--init", "1", "--total-steps", "3", "--out", "/nonexistent-dir/x.png"], "the folder /nonexistent-dir does not exist"),
])
def test_cli_errors_are_one_line_without_traceback(args, says):
    r = CliRunner().invoke(cli_main, args)
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and says in errors[0], r.output


def test_a_torch_scheduler_fighting_a_schedule_is_warned_once():
    """A torch LRScheduler on a group whose lr is a descend schedule: the schedule wins, with a warning."""
    import warnings

    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = descend.SGD([p], lr=S.cosine(0.1, 100))
    sch = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(4):
            p.grad = torch.ones(2, dtype=torch.float64)
            opt.step()
            sch.step()
            assert opt.param_groups[0]["lr"] != S.cosine(0.1, 100)(t + 1)  # StepLR wrote over it
    fights = [w for w in caught if "outside its schedule" in str(w.message)]
    assert len(fights) == 1
    # what the steps used was the schedule's value: θ = −Σ η_t
    expected = -sum(S.cosine(0.1, 100)(t) for t in range(4))
    torch.testing.assert_close(p.detach(), torch.full((2,), expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_observe_and_plain_schedules_do_not_warn():
    import warnings

    p = torch.zeros(2, requires_grad=True)
    opt = descend.SGD([p], lr=S.reduce_on_plateau(0.1, 0.5, patience=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            p.grad = torch.ones(2)
            opt.step()
            S.observe(opt, 1.0)
    assert opt.param_groups[0]["lr"] < 0.1
