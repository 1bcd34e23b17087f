"""descend.lr_find: the sweep and smoothing against their formulas, early stop at GD's stability limit,
the suggestion rules on curves with a known answer, and an exact (bitwise) restore."""

import math

import pytest
import torch

import descend
from descend.lr_find import LRFinder, suggest


def _regression(seed=0, n=128):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1 * torch.randn(n, generator=g)
    return x, y


def _batches(x, y, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), bs):
            yield x[perm[i:i + bs]], y[perm[i:i + bs]]


def test_sweep_and_smoothing_follow_the_formulas():
    x, y = _regression()
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    opt = descend.Adam(model.parameters(), lr=1e-3)
    it = _batches(x, y)

    def loss_fn():
        xb, yb = next(it)
        return ((model(xb).squeeze(1) - yb) ** 2).mean()

    res = descend.lr_find(model, opt, loss_fn, start_lr=1e-5, end_lr=1.0, num_steps=40, smoothing=0.9)
    n = len(res.lrs)
    assert n == 40 and not res.stopped_early  # Adam with lr ≤ 1 on a linear model does not blow up
    for i, lr in enumerate(res.lrs):
        assert lr == pytest.approx(1e-5 * (1.0 / 1e-5) ** (i / 39), rel=1e-12)
    avg = 0.0
    for i, (raw, sm) in enumerate(zip(res.raw_losses, res.losses)):
        avg = 0.9 * avg + 0.1 * raw
        assert sm == pytest.approx(avg / (1 - 0.9 ** (i + 1)), rel=1e-12)
    assert res.losses[-1] < 0.5 * res.losses[0]  # the sweep did train


def test_stops_when_gd_passes_its_stability_limit():
    """f(w) = ½ L w² with GD: |1 − ηL| > 1 once η > 2/L, and the loss grows geometrically."""
    L = 4.0
    w = torch.nn.Parameter(torch.tensor([1.0]))
    model = torch.nn.Module()
    model.w = w
    opt = descend.GD([w], lr=0.1)
    res = descend.lr_find(model, opt, lambda: 0.5 * L * (w ** 2).sum(), start_lr=1e-3, end_lr=100.0,
                          num_steps=200, smoothing=0.0)
    assert res.stopped_early and len(res.lrs) < 200
    assert res.lrs[-1] > 2 / L  # it cannot stop while GD still contracts
    assert res.losses[-1] > 4 * min(res.losses)
    assert res.suggestion < 2 / L  # the suggestion is a stable rate
    assert w.item() == 1.0  # restored


def test_suggestion_rules_on_known_curves():
    lrs = [10 ** (-6 + 6 * i / 199) for i in range(200)]
    x0 = math.log(1e-3)
    # a smooth step in log lr that falls fastest at 1e-3, then a rise after its minimum
    losses = [2 - math.tanh(math.log(lr) - x0) + max(0.0, math.log(lr) - math.log(1e-1)) ** 2 for lr in lrs]
    s, notes = suggest(lrs, losses, "steepest")  # the default is min10
    assert s == pytest.approx(1e-3, rel=0.08) and notes == []  # one grid step is a factor 1.07
    k = min(range(200), key=losses.__getitem__)
    s10, _ = suggest(lrs, losses, "min10")
    assert s10 == pytest.approx(lrs[k] / 10)
    assert suggest(lrs[:3], losses[:3])[0] is None


def _state(model, opt):
    sd = opt.state_dict()
    tensors = {f"m.{k}": v.clone() for k, v in model.state_dict().items()}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"o.{pid}.{k}"] = v.clone() if isinstance(v, torch.Tensor) else v
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    return tensors, groups, grads


def _same(a, b):
    ta, ga, da = a
    tb, gb, db = b
    assert ta.keys() == tb.keys()
    for k in ta:
        if isinstance(ta[k], torch.Tensor):
            assert torch.equal(ta[k], tb[k]), k
        else:
            assert ta[k] == tb[k], k
    assert repr(ga) == repr(gb)
    assert len(da) == len(db) and all((u is None and v is None) or torch.equal(u, v) for u, v in zip(da, db))


class Halving:
    """A picklable lr schedule: η_t = 0.01 · 2^(−t)."""

    def __call__(self, t):
        return 0.01 * 0.5 ** t

    def __repr__(self):
        return "Halving()"


@pytest.mark.parametrize("make", [
    lambda ps: descend.Adam(ps, lr=1e-3, betas=(0.8, 0.99)),
    lambda ps: descend.Momentum(ps, lr=Halving(), momentum=0.9),
    lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
    lambda ps: torch.optim.Adam(ps, lr=1e-3),
])
def test_model_and_optimizer_are_restored_bitwise(make):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = make(model.parameters())
    x, y = _regression()
    it = _batches(x, y)

    def loss_fn():
        xb, yb = next(it)
        return ((model(xb).squeeze(1) - yb) ** 2).mean()

    for _ in range(3):  # some optimizer state and BatchNorm statistics to restore
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    loss_fn().backward()  # and leave gradients in place
    before = _state(model, opt)
    lr_before = opt.param_groups[0]["lr"]
    res = descend.lr_find(model, opt, loss_fn, num_steps=30)
    assert len(res.lrs) > 5
    _same(before, _state(model, opt))
    assert opt.param_groups[0]["lr"] == lr_before
    if isinstance(opt, descend.ChainOptimizer) and isinstance(opt.param_groups[0]["schedules"].get("lr"), Halving):
        opt.step()  # the schedule is back in charge
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 4)  # 3 steps before, 1 now


def test_restored_even_when_loss_fn_fails():
    model = torch.nn.Linear(2, 1)
    opt = descend.GD(model.parameters(), lr=0.1)
    before = _state(model, opt)
    calls = []

    def loss_fn():
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("data ran out")
        return model(torch.ones(1, 2)).sum() ** 2

    with pytest.raises(RuntimeError, match="data ran out"):
        descend.lr_find(model, opt, loss_fn, num_steps=20)
    _same(before, _state(model, opt))


def test_non_finite_loss_stops_the_sweep():
    model = torch.nn.Linear(2, 1)
    opt = descend.GD(model.parameters(), lr=0.1)
    values = iter([1.0] * 10 + [float("nan")] * 10)
    res = descend.lr_find(model, opt, lambda: model(torch.zeros(1, 2)).sum() * 0 + next(values), num_steps=20)
    assert res.stopped_early and len(res.lrs) == 10


def test_plot_returns_a_figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    model = torch.nn.Linear(5, 1)
    x, y = _regression()
    res = descend.lr_find(model, descend.GD(model.parameters(), lr=0.1),
                          lambda: ((model(x).squeeze(1) - y) ** 2).mean(), start_lr=1e-4, end_lr=10, num_steps=40)
    fig = res.plot()
    assert isinstance(fig, Figure) and fig.axes[0].get_xscale() == "log"
    assert res.rule == "lr at the minimum of the smoothed loss ÷ 10" and "suggested lr" in str(res)
    skip = max(1, len(res.lrs) // 10)
    k = min(range(skip, len(res.centred)), key=res.centred.__getitem__)
    assert res.suggestion == res.lrs[k] / 10


@pytest.mark.parametrize("kw, name", [
    (dict(start_lr=0.0), "start_lr=0.0"), (dict(start_lr=1.0, end_lr=0.5), "end_lr=0.5"),
    (dict(num_steps=1), "num_steps=1"), (dict(smoothing=1.0), "smoothing=1.0"),
    (dict(diverge_factor=1.0), "diverge_factor=1.0"), (dict(rule="best"), "rule='best'"),
])
def test_bad_arguments(kw, name):
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match=name.replace("(", r"\(")):
        LRFinder(model, descend.GD(model.parameters(), lr=0.1), lambda: model(torch.ones(1, 2)).sum(), **kw)


# ---------------------------------------------------------------- the suggestion's fixes (issue 11)


def test_centred_smoothing_is_the_symmetric_kernel_and_does_not_lag():
    from descend.lr_find import centred_smoothing

    rng = torch.Generator().manual_seed(0)
    vals = torch.rand(30, generator=rng).tolist()
    beta = 0.7
    direct = [sum(beta ** abs(i - j) * v for j, v in enumerate(vals)) / sum(beta ** abs(i - j) for j in range(30))
              for i in range(30)]
    assert centred_smoothing(vals, beta) == pytest.approx(direct, rel=1e-12)
    assert centred_smoothing(vals, 0.0) == vals
    # a symmetric dip: the centred curve's minimum stays at the dip, the online average's comes later
    dip = [abs(i - 50) / 10 for i in range(101)]
    c = centred_smoothing(dip, 0.9)
    assert min(range(101), key=c.__getitem__) == 50
    ema, a = [], 0.0
    for i, v in enumerate(dip):
        a = 0.9 * a + 0.1 * v
        ema.append(a / (1 - 0.9 ** (i + 1)))
    assert min(range(101), key=ema.__getitem__) > 55


def test_flat_start_takes_the_largest_rate_before_the_rise():
    lrs = [10 ** (-7 + 8 * i / 99) for i in range(100)]
    # flat (tiny wiggles below 1%) until 1e-2, then a rise: the old rule took the wiggles' minimum
    losses = [1.0 + 0.002 * math.sin(i) + (0.0 if lr < 1e-2 else 5 * math.log10(lr / 1e-2)) for i, lr in
              enumerate(lrs)]
    s, notes = suggest(lrs, losses, "min10")
    last_flat = max(i for i, v in enumerate(losses) if v <= losses[10] * 1.01)
    assert s == pytest.approx(lrs[last_flat] / 10) and 1e-4 < s < 1e-2 and "barely went down" in notes[0]
    # a clear dip is not a flat start
    dipped = [v - (0.5 if 1e-4 < lr < 1e-3 else 0.0) for v, lr in zip(losses, lrs)]
    s2, notes2 = suggest(lrs, dipped, "min10")
    assert notes2 == [] and 1e-5 < s2 < 1e-4


def test_momentum_with_lr_inside_the_velocity_is_corrected():
    from descend.lr_find import velocity_factor

    p = [torch.nn.Parameter(torch.zeros(2))]
    lrs = [1e-7 * 1.2 ** i for i in range(10)]
    f, why = velocity_factor(descend.Momentum(p, lr=0.1, momentum=0.9), lrs)
    assert f == pytest.approx(0.1 / (1 - 0.9 / 1.2)) and "inside the velocity" in why
    assert velocity_factor(descend.Nesterov(p, lr=0.1, momentum=0.5), lrs)[0] == pytest.approx(0.5 / (1 - 0.5 / 1.2))
    for opt in (descend.SGD(p, lr=0.1, momentum=0.9), torch.optim.SGD(p, lr=0.1, momentum=0.9),
                descend.Adam(p), descend.GD(p, lr=0.1)):  # η outside a buffer, or no velocity
        assert velocity_factor(opt, lrs) == (1.0, "")
    # end to end: the same sweep with Momentum suggests the factor × what the curve alone says
    model = torch.nn.Linear(5, 1)
    x, y = _regression()
    res = descend.lr_find(model, descend.Momentum(model.parameters(), lr=0.01, momentum=0.9),
                          lambda: ((model(x).squeeze(1) - y) ** 2).mean(), start_lr=1e-4, end_lr=10, num_steps=40)
    plain, _ = suggest(res.lrs, res.centred, "min10")
    f, _ = velocity_factor(descend.Momentum([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9), res.lrs)
    assert res.suggestion == pytest.approx(plain * f) and "inside the velocity" in res.rule


@pytest.mark.parametrize("bad_at", [3, 10])
def test_the_blow_up_note_names_the_step_and_its_rate(bad_at):
    # the loss turns non-finite at step `bad_at`: the note says that step, of how many, at which lr
    # (it said "stopped after 10 of 10 steps" when the last step blew up)
    w = torch.nn.Parameter(torch.ones(2))
    model = torch.nn.Module()
    model.w = w
    opt = descend.GD([w], lr=0.1)
    calls = []

    def loss_fn():
        calls.append(1)
        return (w ** 2).sum() * (math.inf if len(calls) == bad_at else 1.0)

    res = descend.lr_find(model, opt, loss_fn, start_lr=1e-4, end_lr=1e-1, num_steps=10)
    lr = 1e-4 * (1e-1 / 1e-4) ** ((bad_at - 1) / 9)
    assert res.stopped_early
    assert f"the loss blew up at step {bad_at} of 10 (lr {lr:.3g})" in " ".join(res.notes), res.notes


def test_an_lr_auto_optimizer_is_refused_before_any_step():
    """lr="auto" only shows its rate in group["lr"]: a sweep's writes would be ignored (it used to run
    anyway and suggest a meaningless rate, with the scheduler warning)."""
    model = torch.nn.Linear(4, 1)
    opt = descend.Adam(model.parameters(), lr="auto")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"optimizer=Adam\(lr='auto'\).*build it with a number"):
        descend.lr_find(model, opt, lambda: model(torch.ones(2, 4)).sum())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before)) and opt.param_groups[0]["step"] == 0
