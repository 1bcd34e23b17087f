"""The Triton backend (descend.kernels.triton_backend) equals the readable reference — checked with no GPU.

- Every block under every switch that changes its C snippet translates into Triton (kernels/translate.py).
- Parity: every optimizer under its code-changing switches runs the same steps with the generated
  Triton kernel and with the reference (float64 1e-12, float32 1e-6), on a layout with full blocks,
  tails, a tail-only tensor, a complex parameter, a non-contiguous one (which must take the reference)
  and a parameter that skips a step. Here the kernels run under Triton's CPU interpreter
  (``TRITON_INTERPRET=1``, ``DESCEND_BACKEND=triton``, a 64-element block); ``pytest -m cuda`` runs the
  same tests on CUDA tensors with the real block size (skipped without a GPU).
- bfloat16 / float16: computed in float32, stored rounded; equal to the reference (which also computes
  in float32) and, for one step, to the float32 step of the same values, rounded.
- Every generated kernel compiles for sm_80 and sm_90; its PTX has 128-bit vector loads and stores,
  no approximate division or square root, fused multiply-adds only where a snippet writes ``FMA``,
  and registers under a bound. (Triton's interpreter computes ``tl.fma`` as ``x*y + z``, two
  roundings: under it, FMA's single rounding is checked only to within the tolerances.)
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

import descend
from descend import blocks as B
from descend.kernels import translate as tr
from descend.optimizers import REGISTRY
from optim_db import SWITCH_CONFIGS

triton = pytest.importorskip("triton", reason="the Triton backend's tests need triton (.ci/run installs it)")
from descend.kernels import triton_backend as tb  # noqa: E402

CONFIGS = SWITCH_CONFIGS
CASES = [(name, cfg) for name, cfgs in CONFIGS.items() for cfg in cfgs]
CASE_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-6, atol=1e-6)}
STEPS = 12  # RAdam's rectification switches on at step 6 with β₂ = 0.999
INTERP_BLOCK = 64  # the interpreter costs ~2 ms per program instance: small blocks, small tensors


def test_every_optimizer_has_configs():
    assert set(CONFIGS) == set(REGISTRY)


@pytest.fixture
def device(request, monkeypatch):
    """'interpreter': CPU tensors through Triton's interpreter; 'cuda': a GPU (tests marked cuda)."""
    monkeypatch.setattr(tb, "_said", set())
    if request.param == "interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("DESCEND_BACKEND", "triton")
        monkeypatch.setattr(tb, "BLOCK", INTERP_BLOCK)
        return torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("DESCEND_BACKEND", raising=False)
    return torch.device("cuda")


DEVICES = pytest.mark.parametrize("device", ["interpreter", pytest.param("cuda", marks=pytest.mark.cuda)],
                                  indirect=True)


# ------------------------------------------------------------------------------ translation

def _block_variants():
    """Every block class under every combination of the switches that change its snippet."""
    axes = {"amsgrad": [False, True], "nesterov": [False, True], "centered": [False, True],
            "eps_in_sqrt": [False, True], "momentum": [0.0, 0.9], "weight_decay": [0.0, 0.1],
            "decoupled_weight_decay": [False, True]}
    made = [B.ScaleByLearningRate(), B.ScaleByLearningRate(decay=True), B.AddDecayedWeights(),
            B.AddDecayedWeights(when="coupled"), B.AddDecayedWeights(when="decoupled"), B.Trace(), B.ScaleByRss(),
            B.ScaleByRms(), B.ScaleByAdadelta(), B.ScaleByAdam(), B.ScaleByNadam(), B.ScaleByRadam(),
            B.ScaleByAdamax(), B.ScaleByLion(), B.ZeroNonfinite(), B.AverageIterates()]
    # every block of descend.blocks but the lr="auto" estimator, whose per-group sums are a CPU-kernel
    # extension (chains with sums take the reference on other devices: test_a_chain_with_sums_takes_the_reference)
    blocks = {getattr(B, n) for n in B.__all__ if isinstance(getattr(B, n), type) and issubclass(getattr(B, n), B.Block)}
    assert {type(b) for b in made} == blocks - {B.ScaleByAutoLearningRate}
    for b in made:
        names = [hp.name for hp in b.hyper if hp.name in axes]
        for values in itertools.product(*(axes[n] for n in names)):
            h = {hp.name: hp.default for hp in b.hyper} | dict(zip(names, values))
            if h.get("nesterov") and not h.get("momentum"):
                continue
            yield b, h


def test_every_block_and_switch_translates():
    macros = tr.c_macros(descend.kernels.codegen.kernel_source([], [], "float", False, [], []))
    assert {"SQRT", "ABS", "MAX", "SIGN"} <= set(macros)
    seen = set()
    for b, h in _block_variants():
        code = b.c_code(h)
        scal = b.scalars(h, {"step": 3, "mu_product": 0.9}, frozenset())
        for f32 in (True, False):
            lines, used = tr.translate(code, 1, f32, macros)
            assert used <= {f"c1_{n}" for n in scal} | {f"s1_{n}" for n in b.buffers(h)}, (type(b), code)
            text = "\n".join(lines)
            assert ("/" in code) == (("tl.div_rn" in text) if f32 else (" / " in text))
            assert "tl.sqrt(" not in text if f32 else "tl.sqrt_rn" not in text
        seen.add((type(b).__name__, code))
    assert len(seen) >= 19  # the distinct snippets (Trace: 3, ScaleByRms: 4, ...) really were produced


def test_translation_of_the_c_forms():
    macros = tr.c_macros("#define SQRT sqrtf\n#define MAX(a, b) (((a) > (b) || (a) != (a)) ? (a) : (b))\n")
    lines, used = tr.translate("T v = s_x;\nif (c_on) v = MAX(v, (T)0);\nu += c_k ? -u / SQRT(v) : u;", 2, True,
                               macros)
    assert lines == [
        "l2_v = s2_x",
        "q2_1 = (c2_on != 0)",
        "l2_v = tl.where(q2_1, tl.where(((l2_v > 0.0) | (l2_v != l2_v)), l2_v, 0.0), l2_v)",
        "u = (u + tl.where((c2_k != 0), tl.div_rn((-u), tl.sqrt_rn(l2_v)), u))",
    ]
    assert used == {"s2_x", "c2_on", "c2_k"}
    for bad in ("u = pow(u, 2);", "p = u;", "c_x = u;", "u = u % 2;", "T u2 = ;", "u = v;"):
        with pytest.raises(tr.TranslateError):
            tr.translate(bad, 0, True, macros)


def test_an_untranslatable_snippet_takes_the_reference(monkeypatch, caplog):
    class Cube(B.ScaleByLearningRate):
        def c_code(self, h):
            return "u = cbrtf(u) * c_neg_lr;"  # C the translator does not know

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("DESCEND_BACKEND", "triton")
    monkeypatch.setattr(tb, "_said", set())
    monkeypatch.setattr(tb, "_kernels", {})
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    p.grad = torch.tensor([0.5, 0.5])
    with caplog.at_level(logging.DEBUG, logger="descend"):
        descend.ChainOptimizer([p], [Cube()], lr=0.1).step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.95, -2.05]))  # Cube's apply: the reference
    assert "cbrtf" in caplog.text


def test_a_chain_with_sums_takes_the_reference(monkeypatch):
    """lr="auto"'s per-group sums exist only in the C kernel: the items Triton would take run the
    readable reference instead (never Triton without the sums), and the result is the reference's."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("DESCEND_BACKEND", "triton")
    called = []
    real = tb.run_group
    monkeypatch.setattr(tb, "run_group", lambda *a, **k: called.append(1) or real(*a, **k))

    def run(fast):
        torch.manual_seed(0)
        ps = [torch.randn(70, requires_grad=True), torch.randn(3, 5, requires_grad=True)]
        opt = descend.Adam(ps, lr="auto", fast=fast)
        for i in range(4):
            for p in ps:
                p.grad = torch.sin(p.detach() * (i + 1))
            opt.step()
        return [p.detach() for p in ps]

    got = run(True)
    assert not called
    for a, b in zip(got, run(False)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------ parity

def _layout(dtype, device):
    """Full blocks, a tail, a tail-only tensor, a complex parameter and a non-contiguous one."""
    g = torch.Generator().manual_seed(1)
    cdtype = {torch.float64: torch.complex128, torch.float32: torch.complex64}.get(dtype)
    blk = tb.BLOCK
    out = [torch.randn(blk, generator=g), torch.randn(2, blk + 1, generator=g), torch.randn(7, generator=g),
           torch.randn(6, 4, generator=g).t()]  # the last: non-contiguous, takes the reference
    if cdtype is not None:
        out.insert(3, torch.randn(9, generator=g, dtype=torch.complex128))
    return [t.to(device=device, dtype=cdtype if t.is_complex() else dtype) for t in out]


def _run(name, cfg, dtype, device, fast, contiguous_only=False, skip=(3, 2), steps=STEPS):
    params = [t.clone().requires_grad_() for t in _layout(dtype, device)]
    if contiguous_only:
        params = [p for p in params if p.is_contiguous() and not p.is_complex()]  # one dtype: one launch
    opt = descend.create(name, params, fast=fast, **cfg)
    gen = torch.Generator().manual_seed(2)
    for k in range(steps):
        for i, p in enumerate(params):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64 if not p.is_complex() else torch.complex128)
            if (k, i) == skip:
                p.grad = None
                continue
            p.grad = noise.to(device=device, dtype=p.dtype) + 0.1 * p.detach().contiguous()
        opt.step()
    return [p.detach().clone() for p in params], opt


def _spy(monkeypatch):
    """Count the parameters the Triton backend ran (not given back to the reference)."""
    ran = _Ran()
    real_group, real_planned = tb.run_group, tb.run_planned

    def group(blocks, views, work, *args):
        rest = real_group(blocks, views, work, *args)
        ran.append(len(work) - len(rest))
        return rest

    def planned(blocks, g, plan, state_map):
        ok = real_planned(blocks, g, plan, state_map)
        ran.append(len(plan.params) if ok else 0)
        return ok

    monkeypatch.setattr(tb, "run_group", group)
    monkeypatch.setattr(tb, "run_planned", planned)
    ran.stop = lambda: (monkeypatch.setattr(tb, "run_group", real_group),  # noqa: E731
                        monkeypatch.setattr(tb, "run_planned", real_planned))
    return ran


class _Ran(list):
    stop = None


def _assert_equal(got, opt, want, ref, tol):
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)
    for (_, sa), (_, sb) in zip(opt.state.items(), ref.state.items()):
        assert sa.keys() == sb.keys()
        for k in sa:
            if isinstance(sa[k], torch.Tensor):
                torch.testing.assert_close(sa[k], sb[k], **tol)
            else:
                assert sa[k] == sb[k]


@DEVICES
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,cfg", CASES, ids=CASE_IDS)
def test_triton_equals_reference(name, cfg, dtype, device, monkeypatch):
    ran = _spy(monkeypatch)
    got, opt = _run(name, cfg, dtype, device, True)
    # every contiguous parameter with a gradient ran in the kernel, on every step
    n = len(got)
    assert ran == [n - 1] * 3 + [n - 2] + [n - 1] * (STEPS - 4), ran
    ran.stop()
    want, ref = _run(name, cfg, dtype, device, False)
    _assert_equal(got, opt, want, ref, TOL[dtype])


@DEVICES
@pytest.mark.parametrize("name,cfg", [("adam", dict(lr=0.01, amsgrad=True)), ("sgd", dict(lr=0.05, momentum=0.9)),
                                      ("nadam", dict(lr=0.01)), ("radam", dict(lr=0.01))], ids=str)
def test_planned_steps_equal_reference(name, cfg, device, monkeypatch):
    """A group whose every parameter runs in the kernel keeps its tables as a Plan; later steps use it."""
    ran = _spy(monkeypatch)
    planned = []
    real = tb.run_planned
    monkeypatch.setattr(tb, "run_planned", lambda *a: planned.append(real(*a)) or planned[-1])
    got, opt = _run(name, cfg, torch.float64, device, True, contiguous_only=True, skip=None)
    assert planned.count(True) == STEPS - 2, planned  # step 1 makes the state, step 2 the plan
    assert all(isinstance(p, tb.Plan) for p in opt._fast_plans.values())
    assert sum(ran) == len(got) * STEPS
    ran.stop()
    want, ref = _run(name, cfg, torch.float64, device, False, contiguous_only=True, skip=None)
    _assert_equal(got, opt, want, ref, TOL[torch.float64])


@DEVICES
def test_a_plan_follows_what_changes(device):
    """New gradient tensors (their pointers are rewritten), a replaced state tensor, a parameter's
    new storage, a flipped switch: each step still equals the reference's."""
    f64 = dict(dtype=torch.float64, device=device)
    ps = [torch.randn(n, **f64).requires_grad_() for n in (5, 3 * tb.BLOCK + 1)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    opt, ref = descend.Adam(ps, lr=0.1), descend.Adam(qs, lr=0.1, fast=False)

    def step_both(k):
        for p, q in zip(ps, qs):
            g = torch.randn(p.shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64).to(device)
            p.grad, q.grad = g.clone(), g.clone()  # new tensors every step: new addresses
        opt.step()
        ref.step()
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)

    for k in range(3):
        step_both(k)
    plan = next(iter(opt._fast_plans.values()))
    assert isinstance(plan, tb.Plan)
    keep = [p.grad for p in ps]  # hold the old gradients so the next ones cannot reuse their memory
    step_both(3)
    assert next(iter(opt._fast_plans.values())) is plan and plan.gptrs == [p.grad.data_ptr() for p in ps]
    del keep
    opt.state[ps[0]]["exp_avg"] = torch.zeros(5, **f64)  # a user resets a buffer
    ref.state[qs[0]]["exp_avg"] = torch.zeros(5, **f64)
    step_both(4)
    for p, q in zip(ps, qs):  # what model.to() does: new storage under the same Parameter
        p.data = p.data.clone() + 1
        q.data = q.data.clone() + 1
    step_both(5)
    opt.param_groups[0]["amsgrad"] = ref.param_groups[0]["amsgrad"] = True
    step_both(6)
    step_both(7)
    assert "max_exp_avg_sq" in opt.state[ps[0]]


# ------------------------------------------------------------------------------ bfloat16

def test_bf16_rounding_is_to_nearest_even(monkeypatch):
    """The kernels' float32 → bfloat16 conversion (bit operations, see triton_lib) rounds as torch does:
    ties to even, carries into the exponent, overflow to infinity, subnormals, NaN."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import triton.language as tl

    global _bf16_rne
    _bf16_rne = tb.lib().bf16_rne  # the kernels' own helper, as the interpreter runs it

    @triton.jit
    def round_all(x_ptr, y_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(y_ptr + offs, _bf16_rne(tl.load(x_ptr + offs)))

    special = [0x3F808000, 0x3F818000, 0x3F80C000, 0x3F807FFF, 0x3FFF8000, 0x7F7FFFFF, 0x7F7F8000,
               0xFF800000, 0x7F800000, 0x00000001, 0x80008000, 0x007F8000, 0x00000000, 0x80000000]
    rand = torch.randint(0, 2 ** 32, (1024 - len(special),), generator=torch.Generator().manual_seed(0))
    bits = torch.cat([torch.tensor(special), rand]).to(torch.int64)
    x = (bits - (bits >= 2 ** 31).long() * 2 ** 32).to(torch.int32).view(torch.float32)
    x = torch.where(torch.isnan(x), torch.nan, x)  # one NaN pattern: torch keeps payloads, the kernel does not
    y = torch.empty(1024, dtype=torch.int16)
    round_all[(1,)](x, y, N=1024)
    want = x.to(torch.bfloat16)
    got = y.view(torch.bfloat16)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got[~want.isnan()].view(torch.int16), want[~want.isnan()].view(torch.int16))


# ------------------------------------------------------------------------------ fallbacks

def test_without_the_interpreter_cpu_tensors_take_the_reference(monkeypatch, caplog):
    monkeypatch.setenv("DESCEND_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(tb, "_said", set())
    ran = _spy(monkeypatch)
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    p.grad = torch.tensor([0.5, 0.5])
    with caplog.at_level(logging.DEBUG, logger="descend"):
        descend.Momentum([p], lr=0.1, momentum=0.9).step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.95, -2.05]))
    assert ran == [0] and "TRITON_INTERPRET" in caplog.text


def test_without_triton_the_reference_runs(tmp_path):
    """A machine whose triton cannot be imported: steps take the reference, the reason is logged, no crash."""
    code = """
import logging, sys
sys.modules["triton"] = None  # import triton now raises ImportError
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(message)s")
import torch, descend
p = torch.tensor([1.0, -2.0], requires_grad=True); p.grad = torch.tensor([0.5, 0.5])
descend.Adam([p], lr=0.1).step(); descend.Adam([p], lr=0.1).step()
print("p", p.tolist())
"""
    env = {**os.environ, "DESCEND_BACKEND": "triton", "TRITON_INTERPRET": "1", "DESCEND_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "triton is not importable" in out.stdout and out.stdout.count("not importable") == 1
    assert "p [0.8" in out.stdout


# ------------------------------------------------------------------------------ the PTX

def _chain(name, cfg):
    return descend.kernels.codegen.first_step_inputs(descend.create(name, [torch.zeros(1, requires_grad=True)], **cfg))


def _tool(name):
    here = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(here) if here.exists() else shutil.which(name)


def _compile(job):
    """(name, config index, dtype name, capability) -> what the checks read from the compiled kernel."""
    name, i, dtype, cap = job
    blocks, views, maximize, scal, bufs = _chain(name, CONFIGS[name][i])
    k = tb.compile_for(blocks, views, getattr(torch, dtype), maximize, scal, bufs, cap)
    ptx = k.asm["ptx"]
    uses_fma = "tl.fma(" in tb.kernel_source(blocks, views, getattr(torch, dtype), maximize, scal, bufs)
    regs = None
    tool = _tool("cuobjdump")
    if tool and "cubin" in k.asm:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
        regs = {k: int(v) for k, v in re.findall(r"(REG|STACK|LOCAL):(\d+)", res)}
    streams = 2 + sum(len(b) for b in bufs)
    return {"streams": streams, "vec_ld": len(re.findall(r"ld\.global(?:\.\w+)*\.v(?:4\.b32|2\.b64)", ptx)),
            "vec_st": len(re.findall(r"st\.global(?:\.\w+)*\.v(?:4\.b32|2\.b64)", ptx)),
            "approx": re.findall(r"\S*\.approx\S*|div\.full\S*", ptx), "fma": len(re.findall(r"\bfma\.", ptx)),
            "uses_fma": uses_fma,
            "regs": regs, "target": re.search(r"\.target (\w+)", ptx).group(1)}


# Every (chain, switches) in float32 for sm_80 and sm_90, and every optimizer's last config in the other
# dtypes for sm_90 (they differ from float32 only in their loads and stores).
JOBS = ([(n, i, "float32", cap) for n, cs in CONFIGS.items() for i in range(len(cs)) for cap in (80, 90)]
        + [(n, len(cs) - 1, d, 90) for n, cs in CONFIGS.items() for d in ("float64", "bfloat16", "float16")])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    env = {"DESCEND_CACHE_DIR": str(tmp_path_factory.mktemp("kernels")), "TRITON_INTERPRET": "0"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        # spawned, not forked: a fork of a process whose OpenMP threads have run can hang in the child
        with ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1), mp_context=mp.get_context("spawn")) as pool:
            return dict(zip(JOBS, pool.map(_compile, JOBS)))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize("job", JOBS, ids=lambda j: f"{j[0]}-{j[1]}-{j[2]}-sm{j[3]}")
def test_ptx(job, compiled):
    r = compiled[job]
    assert r["target"] in (f"sm_{job[3]}", f"sm_{job[3]}a"), r["target"]  # Triton targets sm_90a for 90
    # the unmasked main path: every stream loaded (and the written ones stored) in 128-bit accesses
    assert r["vec_ld"] >= r["streams"] and r["vec_st"] >= r["streams"] - 1, r
    assert r["approx"] == [], r["approx"]  # exactly rounded division and square root only
    # fused multiply-adds exactly where a snippet asks for one (FMA, as ATen computes addcmul, lerp):
    # no contraction of a written a*b + c (GD's θ + (−η)·g among them), each rounded as in the reference
    assert (r["fma"] > 0) == r["uses_fma"], r
    if r["regs"] is not None:
        # no spills to local memory; float64 may keep a small call frame (its exactly rounded division
        # is a subroutine in SASS: RAdam with weight decay has a 16-byte stack at 128 registers)
        assert r["regs"].get("LOCAL", 0) == 0, r["regs"]
        assert r["regs"].get("STACK", 0) <= (32 if job[2] == "float64" else 0), r["regs"]
        assert r["regs"]["REG"] <= (192 if job[2] == "float64" else 128), r["regs"]


# ------------------------------------------------------------------------------ CUDA only

@pytest.mark.cuda
def test_planned_cuda_steps_do_not_synchronize(monkeypatch):
    """A planned step on the GPU (new gradient tensors included) never waits for the device."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ps = [torch.randn(n, device="cuda", requires_grad=True) for n in (5, 3 * tb.BLOCK + 1, 100_000)]
    opt = descend.Adam(ps, lr=1e-3)
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    assert all(isinstance(p, tb.Plan) for p in opt._fast_plans.values())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert opt.state[ps[0]]["step"] == 6


@pytest.mark.cuda
def test_bench_runs_on_cuda():
    out = subprocess.run([sys.executable, "-m", "descend.bench", "--device", "cuda", "--quick", "--optimizers",
                          "adam,sgd", "--layouts", "model", "--repeat", "2"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^adam\s+model\s", out.stdout, flags=re.M) and "Triton kernels: yes" in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gets")
def test_bench_without_cuda_says_so_in_one_line():
    out = subprocess.run([sys.executable, "-m", "descend.bench", "--device", "cuda"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("Error: --device cuda:") and out.stderr.count("\n") == 1, out.stderr


@DEVICES
def test_average_every_k_steps_equals_reference(device, monkeypatch):
    """AverageIterates(avg_every=3): its snippet's gate becomes a select, so the average moves on
    steps 1, 4, 7 only, as in the reference."""
    ran = _spy(monkeypatch)

    def run(fast):
        torch.manual_seed(0)
        ps = [torch.randn(300, dtype=torch.float64, device=device, requires_grad=True),
              torch.randn(4, 5, dtype=torch.float64, device=device, requires_grad=True)]
        opt = descend.ChainOptimizer(ps, [B.ScaleByLearningRate(), B.AverageIterates()], lr=0.1, avg_gamma=1.0,
                                     avg_every=3, fast=fast)
        gen = torch.Generator().manual_seed(2)
        avgs = []
        for _ in range(8):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(device)
            opt.step()
            avgs.append([opt.state[p]["avg"].clone() for p in ps])
        return avgs

    got = run(True)
    assert sum(ran) == 2 * 8, ran  # every parameter, every step, in the kernel
    ran.stop()
    want = run(False)
    for t, (a, b) in enumerate(zip(got, want), start=1):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
        if t % 3 != 1:
            assert all(torch.equal(x, y) for x, y in zip(a, got[t - 2]))
