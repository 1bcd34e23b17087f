"""The torch.optim contract, for every optimizer in the table: state_dict round trips, parameter groups,
no-op steps, complex and non-contiguous parameters, dtypes, closures, zero_grad, deepcopy, lr
schedulers, GradScaler, parameters without gradients, sparse gradients; and the README example."""

import copy
import io
import pickle
import re
from pathlib import Path

import pytest
import torch

import descend
from optim_db import (BY_NAME, OPTIMS, WITH_TORCH, Decay, assert_bitwise, assert_same_trajectory, loss_fn,
                      make_params, trajectory)

ids = lambda o: o.name  # noqa: E731


def _step(opt, params, t):
    opt.zero_grad()
    loss_fn(params, t).backward()
    opt.step()


def _snapshot(opt):
    return copy.deepcopy(opt.state_dict())


def assert_state_dicts_equal(a, b):
    """Two state_dicts hold the same groups and bitwise-equal state."""
    assert a.keys() == b.keys()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        sa, sb = a["state"][k], b["state"][k]
        assert sa.keys() == sb.keys()
        for n in sa:
            if isinstance(sa[n], torch.Tensor):
                assert torch.equal(sa[n], sb[n]) and sa[n].dtype == sb[n].dtype, (k, n)
            else:
                assert sa[n] == sb[n] and type(sa[n]) is type(sb[n]), (k, n)


# ------------------------------------------------------------------ state_dict


@pytest.mark.parametrize("via", ["deepcopy", "torch.save"])
@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_state_dict_resume_is_bitwise(info, via):
    params = make_params()
    opt = info.make(params)
    for t in range(3):
        _step(opt, params, t)
    if via == "deepcopy":
        sd = _snapshot(opt)
    else:
        buf = io.BytesIO()
        torch.save(opt.state_dict(), buf)
        buf.seek(0)
        sd = torch.load(buf)
    params2 = [p.detach().clone().requires_grad_() for p in params]
    opt2 = info.make(params2, lr=123.0 if "lr" not in info.required else 0.5)  # overwritten by the load
    opt2.load_state_dict(sd)
    assert_state_dicts_equal(opt.state_dict(), opt2.state_dict())
    for t in range(3, 7):
        _step(opt, params, t)
        _step(opt2, params2, t)
        assert_bitwise([params], [params2], what=f"{info.name} step {t}")
    assert_state_dicts_equal(opt.state_dict(), opt2.state_dict())


def test_state_dict_keeps_schedules():
    """A schedule saved with torch.save (weights_only=False: it is a Python object) resumes where it was."""
    params = make_params()
    opt = descend.Momentum(params, lr=Decay(0.1, 2.0))
    for t in range(3):
        _step(opt, params, t)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    params2 = [p.detach().clone().requires_grad_() for p in params]
    opt2 = descend.Momentum(params2, lr=0.5)
    opt2.load_state_dict(torch.load(buf, weights_only=False))
    assert opt2.param_groups[0]["lr"] == pytest.approx(Decay(0.1, 2.0)(3))
    for t in range(3, 6):
        _step(opt, params, t)
        _step(opt2, params2, t)
    assert_bitwise([params], [params2])


# ------------------------------------------------------------------ parameter groups


class _Both:
    """Two optimizers driven as one (for comparing a grouped optimizer with separate ones)."""

    def __init__(self, *opts):
        self.opts = opts

    def zero_grad(self, set_to_none=True):
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self):
        for o in self.opts:
            o.step()


def _wd(info):
    return {"weight_decay": 0.1} if "weight_decay" in info.cls.__init__.__code__.co_varnames else {}


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_per_group_lr_and_weight_decay(info):
    wd = _wd(info)
    grouped = trajectory(lambda ps: info.make([{"params": ps[:1], "lr": 0.02, **wd}, {"params": ps[1:]}], lr=0.005))
    separate = trajectory(lambda ps: _Both(info.make(ps[:1], lr=0.02, **wd), info.make(ps[1:], lr=0.005)))
    assert_bitwise(grouped, separate, what=info.name)
    # and the groups really differ: one lr for all gives another trajectory
    same = trajectory(lambda ps: info.make(ps, lr=0.005))
    assert not torch.equal(same[-1][0], grouped[-1][0])


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_add_param_group(info):
    """A group added after two steps behaves as a group that was there from the start but got no
    gradient for two steps."""
    def add_at_2(opt, params, t):
        if t == 2:
            opt.add_param_group({"params": [params[2]], "lr": 0.02})
            assert len(opt.param_groups) == 2 and opt.param_groups[1]["step"] == 0

    late = trajectory(lambda ps: info.make(ps[:2], lr=0.01), before_step=add_at_2,
                      no_grad_at={0: (2,), 1: (2,)})
    early = trajectory(lambda ps: info.make([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.02}], lr=0.01),
                       no_grad_at={0: (2,), 1: (2,)})
    assert_bitwise(late, early, what=info.name)
    assert torch.equal(late[1][2], make_params()[2]) and not torch.equal(late[2][2], late[1][2])


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_a_group_may_give_its_parameters_as_a_generator(info):
    """``[{"params": model.parameters()}, ...]``, as torch.optim takes it: the group holds every
    tensor (before, the empty-list check read the generator first, and the group reached torch
    empty: nothing trained, without an error), in the constructor and in add_param_group."""
    model = torch.nn.Linear(3, 2)
    opt = info.make([{"params": model.parameters()}], lr=0.01)
    assert [len(g["params"]) for g in opt.param_groups] == [2]
    extra = torch.nn.Linear(2, 1)
    opt.add_param_group({"params": extra.parameters()})
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    assert all(a is b for a, b in zip(opt.param_groups[1]["params"], extra.parameters()))
    with pytest.raises(ValueError, match="empty parameter list"):
        info.make([{"params": iter([])}], lr=0.01)


def test_add_param_group_after_load_state_dict_and_deepcopy():
    """torch's load_state_dict and deepcopy put "differentiable" into the defaults; a later
    add_param_group must still work, and a deep copy keeps the chain of a ChainOptimizer."""
    from descend import blocks as B

    params = make_params()
    opt = descend.ChainOptimizer(params[:1], [B.ScaleByLearningRate(), B.Trace()], lr=0.1, momentum=0.5)
    opt.load_state_dict(opt.state_dict())
    opt.add_param_group({"params": params[1:2]})
    opt2 = copy.deepcopy(opt)
    assert [repr(b) for b in opt2.blocks] == [repr(b) for b in opt.blocks]
    opt2.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})


def test_add_param_group_validates():
    opt = descend.Adam(make_params()[:1])
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=r"lr=-1"):
        opt.add_param_group({"params": make_params()[1:2], "lr": -1.0})
    with pytest.raises(ValueError, match="empty"):
        opt.add_param_group({"params": []})
    assert len(opt.param_groups) == 1
    assert_state_dicts_equal(before, _snapshot(opt))


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_tiny_lr_leaves_params_unchanged(info):
    """η = 1e-28 moves nothing (every update is far below an ulp of parameters of size ≥ 0.5)."""
    traj = trajectory(lambda ps: info.make(ps, lr=1e-28), steps=3)
    start = make_params()
    for ps in traj:
        for p, p0 in zip(ps, start):
            assert torch.equal(p, p0.detach())


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_no_gradients_no_op(info):
    params = make_params()
    opt = info.make(params)
    before = _snapshot(opt)
    opt.step()
    opt.step()
    for p, p0 in zip(params, make_params()):
        assert torch.equal(p, p0)
    assert len(opt.state) == 0 and opt.param_groups[0]["step"] == 0
    assert_state_dicts_equal(before, _snapshot(opt))


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_params_without_grad_are_skipped(info):
    params = make_params()
    frozen = torch.ones(5, dtype=torch.float64)  # requires_grad=False: never gets a .grad
    opt = info.make(params + [frozen])
    for t in range(3):
        _step(opt, params, t)
    assert torch.equal(frozen, torch.ones(5, dtype=torch.float64))
    assert frozen not in opt.state
    assert all(p in opt.state for p in params)


# ------------------------------------------------------------------ kinds of parameters


def _real_loss(x):
    """A real loss of a (…, 2) real view: non-quadratic, mixing real and imaginary parts."""
    re_, im = x[..., 0], x[..., 1]
    return (re_ ** 3 / 3 + 0.5 * re_ * im + torch.sin(im) + 0.3 * im ** 2).sum()


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_complex_equals_real_view(info):
    g = torch.Generator().manual_seed(1)
    z0 = torch.complex(torch.rand(4, generator=g, dtype=torch.float64) + 0.5,
                       torch.rand(4, generator=g, dtype=torch.float64) - 1.5)
    z = z0.clone().requires_grad_()
    r = torch.view_as_real(z0).clone().requires_grad_()
    oz, orr = info.make([z], lr=0.01), info.make([r], lr=0.01)
    for _ in range(4):
        for opt, p, view in ((oz, z, torch.view_as_real), (orr, r, lambda x: x)):
            opt.zero_grad()
            _real_loss(view(p)).backward()
            opt.step()
    assert not torch.equal(r, torch.view_as_real(z0))
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_non_contiguous_equals_contiguous(info):
    """A transposed (non-contiguous) parameter steps as its contiguous copy."""
    base = make_params()[0].detach()  # (3, 4)
    nc = base.clone().t().requires_grad_()  # (4, 3), strides (1, 4)
    c = base.t().contiguous().requires_grad_()
    assert not nc.is_contiguous() and c.is_contiguous()
    x = torch.linspace(-1, 1, 3, dtype=torch.float64)
    on, oc = info.make([nc], lr=0.01), info.make([c], lr=0.01)
    for t in range(4):
        for opt, p in ((on, nc), (oc, c)):
            opt.zero_grad()
            ((torch.tanh(p @ x) * (1 + t)).sum() + 0.1 * (p ** 4).sum()).backward()
            opt.step()
    assert not nc.is_contiguous()
    torch.testing.assert_close(nc.detach(), c.detach(), rtol=1e-12, atol=1e-14)
    assert not torch.equal(c, base.t())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_dtypes_step_and_stay_finite(info, dtype):
    params = make_params(dtype)
    start = [p.detach().clone() for p in params]
    opt = info.make(params, lr=0.01)
    for t in range(3):
        _step(opt, params, t)
    for p, p0 in zip(params, start):
        assert p.dtype == dtype and torch.isfinite(p).all()
        for v in opt.state[p].values():
            if isinstance(v, torch.Tensor):
                assert v.dtype == dtype and torch.isfinite(v).all()
    assert all(opt.state[p]["step"] == 3 for p in params)
    if dtype in (torch.float64, torch.float32):  # in 16 bits a step of η·1e-3 (AdaDelta) may round away
        assert any(not torch.equal(p, p0) for p, p0 in zip(params, start))


# ------------------------------------------------------------------ the step, zero_grad, copies


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_step_closure_returns_loss(info):
    params = make_params()
    opt = info.make(params)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = loss_fn(params, 0)
        loss.backward()
        return loss

    with torch.no_grad():  # the closure must still get gradients
        loss = opt.step(closure)
    assert calls == [1]
    assert torch.equal(loss, loss_fn(make_params(), 0))
    assert not torch.equal(params[0], make_params()[0])
    assert opt.step() is None


def test_zero_grad():
    params = make_params()
    opt = descend.Adam(params)
    loss_fn(params, 0).backward()
    opt.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_deepcopy_steps_identically(info, how):
    params = make_params()
    opt = info.make(params)
    for t in range(2):
        _step(opt, params, t)
    if how == "deepcopy":
        params2, opt2 = copy.deepcopy((params, opt))
    else:
        params2, opt2 = pickle.loads(pickle.dumps((params, opt)))
    assert all(p2 is not p for p2, p in zip(params2, params))
    for t in range(2, 5):
        _step(opt, params, t)
        _step(opt2, params2, t)
    assert_bitwise([params], [params2], what=info.name)
    assert_state_dicts_equal(opt.state_dict(), opt2.state_dict())


@pytest.mark.parametrize("info", WITH_TORCH, ids=ids)
def test_lr_scheduler_works_unchanged(info):
    """torch.optim.lr_scheduler.StepLR drives a descend optimizer as it drives torch's counterpart."""
    def with_steplr(make):
        def factory(ps):
            opt = make(ps)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            opt_step = opt.step

            def step():  # the scheduler steps after each optimizer step, as in a training loop
                opt_step()
                sched.step()
            return type("Loop", (), {"zero_grad": opt.zero_grad, "step": staticmethod(step), "opt": opt})()
        return factory

    ours = trajectory(with_steplr(lambda ps: info.make(ps, lr=0.02, **info.torch_fixed)))
    with info.torch_dtype_context(torch.float64):
        theirs = trajectory(with_steplr(lambda ps: info.torch_cls(ps, lr=0.02, foreach=False)))
    assert_same_trajectory(ours, theirs, what=info.name)
    constant = trajectory(lambda ps: info.make(ps, lr=0.02, **info.torch_fixed))
    assert not torch.allclose(constant[-1][0], ours[-1][0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_grad_scaler(info):
    """torch.amp.GradScaler("cpu") works unchanged: a scaled step equals the plain one; an inf gradient
    skips the step and halves the scale."""
    plain_p, scaled_p = make_params(torch.float32), make_params(torch.float32)
    plain, scaled = info.make(plain_p, lr=0.01), info.make(scaled_p, lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=1000)
    for t in range(3):
        _step(plain, plain_p, t)
        scaled.zero_grad()
        scaler.scale(loss_fn(scaled_p, t)).backward()
        scaler.step(scaled)
        scaler.update()
    for a, b in zip(plain_p, scaled_p):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    before = [p.detach().clone() for p in scaled_p]
    sd = _snapshot(scaled)
    scaled.zero_grad()
    scaler.scale(loss_fn(scaled_p, 3)).backward()
    scaled_p[0].grad[0, 0] = float("inf")
    scaler.step(scaled)
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 7
    assert all(torch.equal(p, q) for p, q in zip(scaled_p, before))
    assert_state_dicts_equal(sd, _snapshot(scaled))


# ------------------------------------------------------------------ sparse gradients


def _embedding_run(make, steps=4):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 3, sparse=True).double()
    opt = make(emb.parameters())
    idx = [torch.tensor([1, 3, 3, 7]), torch.tensor([0, 1, 9]), torch.tensor([7, 7, 2])]
    for t in range(steps):
        opt.zero_grad()
        (emb(idx[t % 3]) ** 3).sum().backward()
        opt.step()
    return emb.weight.detach().clone()


SPARSE = [o for o in OPTIMS if o.supports_sparse]


@pytest.mark.parametrize("info,hp", [(o, hp) for o in SPARSE for hp in o.sparse_parity],
                         ids=lambda x: x.name if hasattr(x, "name") else "")
@pytest.mark.filterwarnings("ignore:Sparse invariant checks")  # torch.optim.Adagrad's own warning
def test_sparse_matches_torch(info, hp):
    """nn.Embedding(sparse=True) gradients (with repeated indices) step as torch's counterpart steps them."""
    ours = _embedding_run(lambda ps: info.make(ps, **hp, **info.torch_fixed))
    theirs = _embedding_run(lambda ps: info.torch_cls(ps, foreach=False, **hp))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


class _Densify:
    """Wraps an optimizer: turns every sparse gradient dense before stepping."""

    def __init__(self, opt):
        self.opt = opt

    def zero_grad(self):
        self.opt.zero_grad()

    def step(self):
        for g in self.opt.param_groups:
            for p in g["params"]:
                p.grad = p.grad.to_dense()
        self.opt.step()


@pytest.mark.parametrize("info", SPARSE, ids=ids)
def test_sparse_equals_dense(info):
    """Rows a sparse gradient leaves out would get g = 0 from a dense one: no change either way
    (for AdaGrad with either ε placement)."""
    for hp in [{"lr": 0.1}, *([{"lr": 0.1, "eps": 1e-3, "eps_in_sqrt": e} for e in (True, False)]
                              if "eps_in_sqrt" in info.cls.__init__.__code__.co_varnames else [])]:
        sparse = _embedding_run(lambda ps: info.make(ps, **hp))
        dense = _embedding_run(lambda ps: _Densify(info.make(ps, **hp)))
        torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-14)
        assert not torch.equal(sparse, _embedding_run(lambda ps: info.make(ps, lr=0.0)))


@pytest.mark.parametrize("info", [o for o in OPTIMS if not o.supports_sparse], ids=ids)
def test_sparse_gradients_rejected_with_the_optimizer_name(info):
    emb = torch.nn.Embedding(5, 2, sparse=True).double()
    w0 = emb.weight.detach().clone()
    opt = info.make(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises((RuntimeError, ValueError), match=rf"{info.cls.__name__}.*sparse"):
        opt.step()
    assert torch.equal(emb.weight, w0) and len(opt.state) == 0


def test_sparse_adagrad_with_lr_auto_says_to_use_a_fixed_rate():
    """AdaGrad takes sparse gradients at a fixed lr; lr='auto' sums over every element, so it refuses
    them, before anything changes, saying so (it used to say 'use AdaGrad' to AdaGrad)."""
    emb = torch.nn.Embedding(5, 2, sparse=True)
    w0 = emb.weight.detach().clone()
    opt = descend.AdaGrad(emb.parameters(), lr="auto")
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"AdaGrad does not support sparse.*use AdaGrad at a fixed lr"):
        opt.step()
    assert torch.equal(emb.weight, w0) and len(opt.state) == 0


def test_sparse_adagrad_rejects_weight_decay():
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = descend.AdaGrad(emb.parameters(), weight_decay=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="AdaGrad.*weight_decay"):
        opt.step()


# ------------------------------------------------------------------ README


def test_readme_tour_quotes_the_source():
    """The tour's excerpt of the chapter's three rules is what descend/optimizers.py really says."""
    root = Path(__file__).parent.parent
    text = (root / "README.md").read_text()
    section = re.search(r"^## A short tour\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert section, "README.md has no '## A short tour' section"
    excerpt = re.findall(r"```python\n(.*?)```", section.group(1), flags=re.S)[0]
    source = (root / "descend" / "optimizers.py").read_text()
    lines = [line.split("#")[0].strip() for line in excerpt.splitlines()]
    assert len([x for x in lines if x]) >= 6
    for line in filter(None, lines):
        assert line in source, f"README tour line not in descend/optimizers.py: {line!r}"


def test_readme_optimizers_section_runs():
    """Every python block of the README's "Optimizers" section runs as written."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = re.search(r"^## Optimizers\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert section, "README.md has no '## Optimizers' section"
    blocks = re.findall(r"```python\n(.*?)```", section.group(1), flags=re.S)
    assert len(blocks) >= 2
    for b in blocks:
        exec(compile(b, "README.md", "exec"), {"__name__": "readme"})


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_step_hooks_run(info):
    """torch.optim's step pre/post hooks fire around a descend step (the post hook sees the new θ)."""
    params = make_params()
    opt = info.make(params)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(("pre", params[0].detach().clone())))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(("post", params[0].detach().clone())))
    _step(opt, params, 0)
    assert [k for k, _ in seen] == ["pre", "post"]
    assert torch.equal(seen[0][1], make_params()[0]) and torch.equal(seen[1][1], params[0].detach())


def test_global_step_hooks_and_the_profiler_see_every_step():
    """descend's step wraps itself in torch's hooks and profiler region only when something listens;
    global hooks and a running profiler must still see every step, planned or not."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    params = make_params()
    opt = descend.Adam(params, lr=0.1)
    seen = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: seen.append("pre")),
               register_optimizer_step_post_hook(lambda o, a, k: seen.append("post"))]
    try:
        for t in range(4):
            _step(opt, params, t)
    finally:
        for h in handles:
            h.remove()
    assert seen == ["pre", "post"] * 4
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _step(opt, params, 5)
    assert "Optimizer.step#Adam.step" in {e.name for e in prof.events()}


def test_a_subclass_overriding_step_runs_its_hooks_once():
    class Mine(descend.Adam):
        def step(self, closure=None):
            return super().step(closure)

    params = make_params()
    opt = Mine(params, lr=0.1)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    for t in range(3):
        _step(opt, params, t)
    assert seen == ["pre"] * 3
