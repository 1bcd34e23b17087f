"""The fused C kernels (descend.fast) equal the readable reference (each block's ``apply``).

Every optimizer, under every switch that changes the generated code, runs the same steps twice —
``fast=True`` and ``fast=False`` — on a layout that exercises the kernel's edge cases: tensors of odd
sizes, one large enough to be split across threads at an arbitrary point, a complex parameter, a
parameter that misses its gradient on one step, and a non-contiguous one (which must fall back).
"""

from __future__ import annotations

import subprocess

import pytest
import torch

import descend
from descend import fast
from descend.optimizers import REGISTRY

# name -> configurations covering each switch its chain reads (every static flag both ways)
CONFIGS = {
    "gd": [dict(lr=0.05), dict(lr=0.05, maximize=True)],
    "momentum": [dict(lr=0.05, momentum=0.9)],
    "nesterov": [dict(lr=0.05, momentum=0.8)],
    "sgd": [dict(lr=0.05), dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.01),
            dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)],
    "adagrad": [dict(lr=0.05), dict(lr=0.05, eps_in_sqrt=False, lr_decay=0.01, weight_decay=0.01,
                                    initial_accumulator_value=0.1)],
    "rmsprop": [dict(lr=0.01), dict(lr=0.01, centered=True, momentum=0.5, eps_in_sqrt=False, weight_decay=0.01)],
    "adadelta": [dict(), dict(weight_decay=0.01, rho=0.5)],
    "adam": [dict(lr=0.01), dict(lr=0.01, amsgrad=True, weight_decay=0.01, maximize=True)],
    "adamw": [dict(lr=0.01), dict(lr=0.01, amsgrad=True)],
    "nadam": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True)],
    "radam": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True)],
    "adamax": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.01)],
    "lion": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1, betas=(0.5, 0.9))],
}
CASES = [(name, cfg) for name, cfgs in CONFIGS.items() for cfg in cfgs]
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-6, atol=1e-6)}
STEPS = 12  # RAdam's rectification switches on at step 6 with β₂ = 0.999


def test_every_optimizer_has_fast_configs():
    assert set(CONFIGS) == set(REGISTRY)


def _layout(dtype):
    g = torch.Generator().manual_seed(1)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    big = 2 * fast._MIN_PER_THREAD + 1234  # split across threads mid-tensor
    return [
        torch.randn(7, 5, generator=g, dtype=dtype),
        torch.randn(big, generator=g, dtype=dtype),
        torch.randn(3, generator=g, dtype=dtype),
        torch.randn(9, generator=g, dtype=cdtype),
        torch.randn(6, 4, generator=g, dtype=dtype).t(),  # non-contiguous: reference path
    ]


def _run(name, cfg, dtype, use_fast, spy=None):
    params = [t.clone().requires_grad_() for t in _layout(dtype)]
    opt = descend.create(name, params, fast=use_fast, **cfg)
    gen = torch.Generator().manual_seed(2)
    for k in range(STEPS):
        for i, p in enumerate(params):
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if k == 3 and i == 2:
                p.grad = None  # this one skips a step: its own step count (bias corrections) lags
                continue
            # a gradient that depends gently on θ (a quadratic's) plus fixed noise: rounding differences
            # between the two paths stay rounding-sized instead of being amplified step after step
            p.grad = noise + 0.1 * p.detach().contiguous()
        opt.step()
    return [p.detach().clone() for p in params], opt


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,cfg", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_fast_equals_reference(name, cfg, dtype, monkeypatch):
    calls = []
    real = fast.run_group

    def spy(blocks, views, work, cache, maximize):
        rest = real(blocks, views, work, cache, maximize)
        calls.append((len(work), len(rest)))
        return rest

    monkeypatch.setattr(fast, "run_group", spy)
    got, opt = _run(name, cfg, dtype, True)
    # the kernel really ran: of the 5 parameters only the non-contiguous one fell back
    assert calls and all(n - r >= 3 and r == 1 for n, r in calls if n == 5), calls
    monkeypatch.setattr(fast, "run_group", real)
    want, ref = _run(name, cfg, dtype, False)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[dtype])
    for (pa, sa), (pb, sb) in zip(opt.state.items(), ref.state.items()):
        assert sa.keys() == sb.keys()
        for k in sa:
            if isinstance(sa[k], torch.Tensor):
                torch.testing.assert_close(sa[k], sb[k], **TOL[dtype])
            else:
                assert sa[k] == sb[k]


def test_generated_source_contains_each_blocks_rule():
    opt = descend.Adam([torch.zeros(2, requires_grad=True)], amsgrad=True)
    g = opt.param_groups[0]
    views = [b.view(g) for b in opt.blocks]
    st = {"step": 1}
    scal = [b.scalars(h, st, frozenset()) for b, h in zip(opt.blocks, views)]
    src = fast.kernel_source(opt.blocks, views, "double", False, [tuple(c) for c in scal],
                             [tuple(b.buffers(h)) for b, h in zip(opt.blocks, views)])
    assert "s1_max_exp_avg_sq = MAX(s1_max_exp_avg_sq, v);" in src
    assert "u = c2_neg_lr * u;" in src
    assert "typedef double T;" in src


def test_kernels_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("DESCEND_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fast, "_kernels", {})
    p = torch.ones(5, requires_grad=True)
    p.grad = torch.ones(5)
    descend.Adam([p], lr=0.1).step()
    assert len(list((tmp_path / "kernels").glob("*.so"))) == 1
    # a fresh process (an empty in-memory table) loads the file and compiles nothing
    monkeypatch.setattr(fast, "_kernels", {})

    def no_compiler(*a, **k):
        raise AssertionError("compiled again")

    monkeypatch.setattr(subprocess, "run", no_compiler)
    q = torch.ones(5, requires_grad=True)
    q.grad = torch.ones(5)
    descend.Adam([q], lr=0.1).step()
    assert torch.equal(p, q)


def test_without_a_compiler_the_reference_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DESCEND_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(fast, "_kernels", {})
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    p.grad = torch.tensor([0.5, 0.5])
    with pytest.warns(RuntimeWarning):
        try:
            descend.Momentum([p], lr=0.1, momentum=0.9).step()
        except FileNotFoundError:
            pytest.fail("a missing compiler must not break the step")
    torch.testing.assert_close(p.detach(), torch.tensor([0.95, -2.05]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_takes_the_reference_path(dtype):
    p = torch.ones(4, dtype=dtype, requires_grad=True)
    p.grad = torch.full((4,), 0.5, dtype=dtype)
    opt = descend.Adam([p], lr=0.1)
    assert fast.run_group(opt.blocks, [b.view(opt.param_groups[0]) for b in opt.blocks],
                          [(p, {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}, None)],
                          {}, False) != []
    opt.step()
    assert p.dtype == dtype and torch.isfinite(p).all() and (p < 1).all()
