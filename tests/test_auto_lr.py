"""lr="auto": the estimator block (ScaleByAutoLearningRate), its guard, iterate averaging, and the contract.

Hand-computed steps, the estimate's invariants, recovery from non-finite gradients, exact resume, the
fused kernel against the reference, schedules, known minima, and the averaged() swap.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

import descend
from descend import blocks as B
from descend.kernels import cpu

NAMES = descend.available()


def _grads(params, gen, scale=1.0):
    for p in params:
        p.grad = scale * torch.randn(p.shape, generator=gen, dtype=p.dtype) + 0.1 * p.detach()


def _params(dtype=torch.float64, big=False):
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (3,)] + ([(2 * cpu._MIN_PER_THREAD + 123,)] if big else [])
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _run(name, steps, fast=True, dtype=torch.float64, big=False, opt_kw=None, seed=1, auto=None):
    ps = _params(dtype, big)
    kw = {"momentum": 0.9} if name in ("momentum", "nesterov") else {}
    opt = descend.create(name, ps, fast=fast, **(auto or {"lr": "auto"}), **kw, **(opt_kw or {}))
    gen = torch.Generator().manual_seed(seed)
    lrs = []
    for _ in range(steps):
        _grads(ps, gen)
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
    return ps, opt, lrs


@pytest.mark.parametrize("doubling", [0.5, 1.0])
def test_gd_auto_first_steps_by_hand(doubling):
    # θ₀ = (3, 4): ‖θ₀‖ = 5; α = 1e-2, β = 0.2, ρ = 0.7
    w = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    opt = descend.GD([w], lr=descend.auto(doubling=doubling), fast=False)
    assert opt.param_groups[0]["lr"] == 0.0
    g1, g2, g3 = (torch.tensor(v, dtype=torch.float64) for v in ([1.0, 2.0], [2.0, -1.0], [1.0, 1.0]))
    w.grad = g1.clone()
    opt.step()  # step 1 only measures: η₁ = 0
    assert torch.equal(w.detach(), torch.tensor([3.0, 4.0], dtype=torch.float64))
    eta = 1e-2 * (1 + 5.0) / math.sqrt(5.0)  # the next step moves θ by α(1 + ‖θ₀‖)
    assert opt.param_groups[0]["lr"] == pytest.approx(eta, rel=1e-15)
    w.grad = g2.clone()
    opt.step()  # θ₂ = θ₁ − η g₂; θ had not moved, so the cosine is 0 and η stays
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0], dtype=torch.float64) - eta * g2)
    assert opt.param_groups[0]["lr"] == pytest.approx(eta, rel=1e-15)
    w.grad = g3.clone()
    opt.step()  # cos(−g₃, θ₂ − θ₁) = cos(g₃, g₂) = 1/√10
    cos = float(g3 @ g2) / (g3.norm() * g2.norm()).item()
    assert opt.param_groups[0]["lr_estimate"]["cos"] == pytest.approx(cos, rel=1e-12)
    if doubling < 1:  # the doubling start ends at the first cos ≤ δ: η halves once
        assert opt.param_groups[0]["lr"] == pytest.approx(eta / 2, rel=1e-15)
    else:  # η ← η·exp(β cos), cos > 0
        assert opt.param_groups[0]["lr"] == pytest.approx(eta * math.exp(0.2 * cos), rel=1e-12)
    w.grad = -g2.clone()  # a second doubling-start check: cos(g₂, θ₃ − θ₂ = −η₃g₃)
    eta3 = opt.param_groups[0]["lr"]
    opt.step()
    cos = -float(g2 @ g3) / (g2.norm() * g3.norm()).item()  # < 0: η falls at ρβ = 0.14
    assert cos < 0 and opt.param_groups[0]["lr"] == pytest.approx(eta3 * math.exp(0.14 * cos), rel=1e-12)


def test_doubling_start_doubles_while_steps_are_short():
    w = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = descend.GD([w], lr=descend.auto(doubling=0.5), fast=False)
    lrs = []
    for _ in range(6):  # a gentle linear slope: every step is short, cos = 1
        w.grad = torch.tensor([1.0, 0.5], dtype=torch.float64)
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert [b / a for a, b in zip(lrs[2:], lrs[3:])] == pytest.approx([2.0] * 3)


@pytest.mark.parametrize("name", ["gd", "adam", "momentum", "adagrad", "rmsprop"])
def test_estimate_changes_at_most_by_its_bound_and_never_below_its_floor(name):
    _, opt, lrs = _run(name, 60, fast=False)
    g = opt.param_groups[0]
    beta, floor, down = g["lr_adapt"], g["lr_floor"], g["lr_down"]
    peak = 0.0
    for a, b in zip(lrs[1:], lrs[2:]):
        assert b <= a * math.exp(beta) * (1 + 1e-12)  # bounded growth
        peak = max(peak, a)
        assert b >= max(a * math.exp(-down * beta), floor * peak) * (1 - 1e-12)  # bounded fall, the floor
    assert all(math.isfinite(x) and x > 0 for x in lrs[1:])


def test_estimate_comes_down_when_steps_overshoot():
    # a steep quadratic: from a first step far too long the gradient flips sign, and η̂ falls
    w = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = descend.GD([w], lr=descend.auto(init=3.0, floor=1e-6), fast=False)
    lrs = []
    for _ in range(30):
        opt.zero_grad()
        (50 * w ** 2).sum().backward()
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[-1] < lrs[1] / 3  # from 6× the stable step to about 1/h
    assert abs(w.item()) < 1e-3


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("name", ["adam", "gd", "rmsprop"])
def test_nonfinite_gradient_is_ignored_and_training_recovers(name, fast):
    ps, opt, _ = _run(name, 5, fast=fast)
    before = copy.deepcopy(opt.param_groups[0]["lr_estimate"])
    gen = torch.Generator().manual_seed(9)
    _grads(ps, gen)
    ps[0].grad[0, 0] = float("nan")
    ps[1].grad[1] = float("inf")
    opt.step()
    est = opt.param_groups[0]["lr_estimate"]
    assert est["skipped"] == before["skipped"] + 1 and est["eta"] == before["eta"]
    for p in ps:
        assert torch.isfinite(p).all()
        assert all(torch.isfinite(t).all() for t in opt.state[p].values() if isinstance(t, torch.Tensor))
    for _ in range(5):
        _grads(ps, gen)
        opt.step()
    assert opt.param_groups[0]["lr_estimate"]["steps"] == before["steps"] + 5
    assert all(torch.isfinite(p).all() for p in ps)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("name", NAMES)
def test_resume_is_bitwise(name, fast):
    ps, opt, _ = _run(name, 7, fast=fast, dtype=torch.float32)
    saved = copy.deepcopy(opt.state_dict())
    snap = [p.detach().clone() for p in ps]
    gen = torch.Generator().manual_seed(5)
    for _ in range(6):
        _grads(ps, gen)
        opt.step()
    qs = [s.clone().requires_grad_() for s in snap]
    kw = {"momentum": 0.9} if name in ("momentum", "nesterov") else {}
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
    assert opt.param_groups[0]["lr_estimate"] == opt2.param_groups[0]["lr_estimate"]
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


@pytest.mark.parametrize("name", NAMES)
def test_fast_equals_reference(name, monkeypatch):
    calls = []
    real = cpu.run_group

    def spy(*args, **kw):
        rest = real(*args, **kw)
        calls.append((len(args[2]), len(rest)))
        return rest

    monkeypatch.setattr(cpu, "run_group", spy)
    avg = {"lr": descend.auto(average=True)}
    a, oa, la = _run(name, 15, fast=True, big=True, opt_kw=None, auto=avg)
    assert calls and all(r == 0 for _, r in calls)  # the kernel ran every parameter
    assert oa.__dict__.get("_fast_plans")  # ... and later steps ran on its plan
    b, ob, lb = _run(name, 15, fast=False, big=True, auto=avg)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert la == pytest.approx(lb, rel=1e-9)
    for p, q in zip(a, b):
        torch.testing.assert_close(oa.state[p]["avg"], ob.state[q]["avg"], rtol=1e-10, atol=1e-12)


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


def test_lr_scale_per_group_and_the_estimate_per_group():
    a, b = _params()
    opt = descend.Adam([{"params": [a]}, {"params": [b], "lr_scale": 0.5}], lr="auto")
    gen = torch.Generator().manual_seed(4)
    for _ in range(5):
        _grads([a, b], gen)
        opt.step()
    g0, g1 = opt.param_groups
    assert g1["lr"] == pytest.approx(0.5 * g1["lr_estimate"]["eta"])
    assert g0["lr_estimate"] != g1["lr_estimate"]  # one estimate per group


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


def test_quadratic_and_rosenbrock_reached_without_tuning():
    torch.manual_seed(0)
    q = torch.randn(10, 10, dtype=torch.float64)
    a = q @ q.T / 10 + 0.1 * torch.eye(10, dtype=torch.float64)
    b = torch.randn(10, dtype=torch.float64)
    star = torch.linalg.solve(a, b)
    for name in ("gd", "adam", "momentum"):
        w = torch.zeros(10, dtype=torch.float64, requires_grad=True)
        kw = {"momentum": 0.9} if name == "momentum" else {}
        opt = descend.create(name, [w], lr=descend.auto(average=True), **kw)
        for _ in range(2000):
            opt.zero_grad()
            (0.5 * w @ a @ w - b @ w).backward()
            opt.step()
        with opt.averaged():  # the average of the last iterates: Adam's constant-size steps average out
            assert (w.detach() - star).abs().max() < 1e-3, name
    xy = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
    opt = descend.Adam([xy], lr=descend.auto(average=True))
    for _ in range(4000):
        opt.zero_grad()
        ((1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2).backward()
        opt.step()
    with opt.averaged():
        assert (xy.detach() - 1).abs().max() < 1e-2


def test_averaged_swaps_in_the_average_and_back_bitwise():
    ps, opt, _ = _run("adam", 12, dtype=torch.float32, auto={"lr": descend.auto(average=True)})
    own = [p.detach().clone() for p in ps]
    with opt.averaged():
        for p in ps:
            assert torch.equal(p, opt.state[p]["avg"])
            assert not torch.equal(p, own[0]) or p.shape != own[0].shape
    for p, o in zip(ps, own):
        assert torch.equal(p, o)
    sd = opt.state_dict()
    assert all("avg" in st for st in sd["state"].values())
    # the average by hand: θ̄ = θ₁, then θ̄ += w_t (θ_{t+1} − θ̄), w_t = 9/(t + 8)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = descend.GD([w], lr=descend.auto(average=True), fast=False)
    avg = None
    for t in range(1, 6):
        w.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * t
        opt.step()
        avg = w.detach().clone() if avg is None else avg + (w.detach() - avg) * (9 / (t + 8))
    torch.testing.assert_close(opt.state[w]["avg"], avg, rtol=1e-15, atol=1e-15)


def test_averaged_needs_averaging():
    ps = _params()
    for opt in (descend.Adam(ps, lr=1e-3), descend.Adam(ps, lr="auto")):
        with pytest.raises(RuntimeError, match="average"):
            with opt.averaged():
                pass


@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_takes_auto(name):
    ps, opt, lrs = _run(name, 8)
    assert all(torch.isfinite(p).all() for p in ps)
    assert lrs[0] > 0 and opt.param_groups[0]["lr_estimate"]["steps"] == 8
    # drop-in: a closure's loss comes back, zero_grad clears
    loss = opt.step(lambda: torch.tensor(1.5))
    assert float(loss) == 1.5
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


def test_custom_chain_gets_auto():
    ps = _params()
    opt = descend.ChainOptimizer(ps, [B.ScaleByRms(), B.Trace(), B.ScaleByLearningRate()],
                                 lr=descend.auto(average=True), momentum=0.5)
    assert [type(b).__name__ for b in opt.blocks] == ["ZeroNonfinite", "ScaleByRms", "Trace",
                                                      "ScaleByAutoLearningRate", "AverageIterates"]
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


def test_readme_auto_section_runs():
    """The python block of the README's lr="auto" section runs as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split('## `lr="auto"`', 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
