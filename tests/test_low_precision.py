"""bfloat16 and float16 parameters on the fast path: loaded, computed in float32, stored rounded to nearest even.

The reference (``ChainOptimizer._reference_step``) computes 16-bit tensors in float32 too, as torch's
fused optimizers do, with the state kept in the parameter's dtype. Each backend — the C kernel on CPU
tensors, the Triton kernel under its CPU interpreter, and on a GPU (``pytest -m cuda``) — must:

- run the 16-bit parameters itself (not hand them to the reference);
- agree with the reference over several steps, within a rounding and almost all bit for bit (the
  snippets' float32 operations are torch's, though not always in torch's order: lerp);
- for one step from the same 16-bit values, give the float32 reference's step of those values, rounded.
"""

from __future__ import annotations

import pytest
import torch

import descend
from descend import kernels

LOW = [torch.bfloat16, torch.float16]
ULP = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}  # the relative spacing of values, at worst
INTERP_BLOCK = 64

# every optimizer with its code-changing switches on (momentum, nesterov, amsgrad, centered, weight decay)
CONFIGS = {
    "gd": dict(lr=0.05, maximize=True),
    "momentum": dict(lr=0.05, momentum=0.9),
    "nesterov": dict(lr=0.05, momentum=0.8),
    "sgd": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adagrad": dict(lr=0.05, eps_in_sqrt=False, lr_decay=0.01, weight_decay=0.01),
    "rmsprop": dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.01),
    "adadelta": dict(weight_decay=0.01, rho=0.5),
    "adam": dict(lr=0.01, amsgrad=True, weight_decay=0.01),
    "adamw": dict(lr=0.01, amsgrad=True),
    "nadam": dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True),
    "radam": dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True),
    "adamax": dict(lr=0.01, weight_decay=0.01),
    "lion": dict(lr=0.01, weight_decay=0.1, betas=(0.5, 0.9)),
}


def test_every_optimizer_is_covered():
    assert set(CONFIGS) == set(descend.available())


@pytest.fixture(params=["c", "interpreter", pytest.param("cuda", marks=pytest.mark.cuda)])
def backend(request, monkeypatch):
    """(name, device): the C kernel on CPU tensors, Triton's interpreter on CPU tensors, or a GPU."""
    if request.param == "c":
        monkeypatch.delenv("DESCEND_BACKEND", raising=False)
        return "c", torch.device("cpu")
    pytest.importorskip("triton")
    from descend.kernels import triton_backend as tb

    if request.param == "interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("DESCEND_BACKEND", "triton")
        monkeypatch.setattr(tb, "BLOCK", INTERP_BLOCK)
        return "interpreter", torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return "cuda", torch.device("cuda")


def _layout(dtype, device):
    g = torch.Generator().manual_seed(1)
    sizes = [(INTERP_BLOCK,), (2, INTERP_BLOCK + 1), (7,)] if device.type == "cpu" else [(4096,), (2, 3000), (7,)]
    return [torch.randn(s, generator=g).to(device=device, dtype=dtype) for s in sizes]


def _spy(monkeypatch):
    """How many parameters a backend ran (rather than the reference), per step."""
    ran = []
    group, planned = kernels.run_group, kernels.run_planned

    def spy_group(blocks, views, work, *args):
        rest = group(blocks, views, work, *args)
        ran.append(len(work) - len(rest))
        return rest

    def spy_planned(blocks, g, plan, state_map):
        ok = planned(blocks, g, plan, state_map)
        if ok:
            ran.append(len(plan.params))
        return ok

    monkeypatch.setattr(kernels, "run_group", spy_group)
    monkeypatch.setattr(kernels, "run_planned", spy_planned)
    return ran


def _run(name, dtype, device, fast, steps=6):
    params = [t.clone().requires_grad_() for t in _layout(dtype, device)]
    opt = descend.create(name, params, fast=fast, **CONFIGS[name])
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen) + 0.1 * p.detach().float().cpu()).to(device=device,
                                                                                              dtype=dtype)
        opt.step()
    return params, opt


def _assert_close(a, b, dtype, exact: bool):
    if exact:
        assert torch.equal(a, b), (a.float() - b.float()).abs().max()
        return
    a, b = a.float(), b.float()
    # at most two roundings apart; near 0 (m + w(u − m) cancelling) a float32 rounding of the tensor's scale
    bound = 2 * ULP[dtype] * torch.maximum(a.abs(), b.abs()) + 2.0 ** -20 * b.abs().max()
    assert ((a - b).abs() <= bound).all(), (a - b).abs().max()
    assert (a == b).float().mean() >= 0.97  # and almost all bit for bit


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "f16"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_path_equals_reference(name, dtype, backend, monkeypatch):
    kind, device = backend
    ran = _spy(monkeypatch)
    got, opt = _run(name, dtype, device, True)
    assert ran == [3] * 6, ran  # every parameter, every step, in the kernel
    want, ref = _run(name, dtype, device, False)
    exact = False  # the snippets' float32 operations are torch's, though not always in torch's order (lerp)
    for p, q in zip(got, want):
        assert p.dtype == dtype
        _assert_close(p.detach(), q.detach(), dtype, exact)
        for k, v in opt.state[p].items():
            if isinstance(v, torch.Tensor):
                assert v.dtype == dtype  # state in the parameter's dtype
                _assert_close(v, ref.state[q][k], dtype, exact)


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "f16"])
@pytest.mark.parametrize("name", ["adam", "rmsprop", "lion", "sgd", "adadelta"])
def test_a_step_is_the_float32_step_rounded(name, dtype, backend):
    """One fast step from 16-bit values equals the float32 reference step of the same values, rounded."""
    _, device = backend
    ps = [t.requires_grad_() for t in _layout(dtype, device)]
    opt = descend.create(name, ps, **CONFIGS[name])
    gen = torch.Generator().manual_seed(3)

    def grads():
        return [torch.randn(p.shape, generator=gen).to(device=device, dtype=dtype) for p in ps]

    for _ in range(3):  # fill the state
        for p, g in zip(ps, grads()):
            p.grad = g
        opt.step()
    qs = [p.detach().float().requires_grad_() for p in ps]
    ref = descend.create(name, qs, fast=False, **CONFIGS[name])
    for p, q in zip(ps, qs):
        ref.state[q] = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()}
    for p, q, g in zip(ps, qs, grads()):
        p.grad, q.grad = g, g.float()
    opt.step()
    ref.step()
    for p, q in zip(ps, qs):
        _assert_close(p.detach(), q.detach().to(dtype), dtype, exact=False)
        for k, v in opt.state[p].items():
            if isinstance(v, torch.Tensor):
                _assert_close(v, ref.state[q][k].to(dtype), dtype, exact=False)


@pytest.mark.parametrize("theta, c", [(1.0, 2.0 ** -8), (1.0, 3 * 2.0 ** -8), (1.0, 2.0 ** -8 + 2.0 ** -20),
                                      (1.0, -(2.0 ** -9)), (1.0, -3 * 2.0 ** -9), (1.0, 1e-30), (3e38, 3e38)],
                         ids=["tie-to-even-down", "tie-to-even-up", "above-tie", "tie-below-1", "tie-below-1-up",
                              "tiny", "overflow"])
def test_c_kernel_rounds_bfloat16_as_torch(theta, c):
    """Ascending with η = |c| and g = sign(c), the kernel stores θ + c — a float32 sum — as bfloat16:
    ties to even, carries, and overflow to infinity exactly as torch's own conversion."""
    p = torch.full((3,), theta, dtype=torch.bfloat16, requires_grad=True)
    p.grad = torch.full((3,), 1.0 if c > 0 else -1.0, dtype=torch.bfloat16)
    opt = descend.GD([p], lr=abs(c), maximize=True)
    opt.step()
    want = (p.grad.float() * abs(c) + torch.full((3,), theta, dtype=torch.bfloat16).float()).to(torch.bfloat16)
    assert torch.equal(p.detach(), want), (p, want)
    assert theta != 1.0 or c != 3 * 2.0 ** -8 or want[0].item() == 1.015625  # the case really is a tie up
