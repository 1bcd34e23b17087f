"""The GPU fast path: one generated Triton kernel per chain, streaming every tensor of a group once.

The kernel comes from the same place as the CPU one: each block's C snippet (``Block.c_code``) is
translated into Triton statements by :mod:`descend.kernels.translate`, and the chain's statements
become the body of one ``@triton.jit`` function per (chain, switches, dtype) — written to the kernel
cache folder as a small Python file, so Triton (which reads a kernel's source) and a reader can see it.

A step of a group is one launch per dtype. Its program instances are work items over (tensor,
block): a device-side table holds each tensor's parameter and state pointers and its size, a second
one its gradient pointer, a third the work items. A full block (``BLOCK`` elements) runs unmasked,
with alignment hints, so its loads and stores are 128-bit vector accesses; a tensor's last partial
block runs masked. The tables are built once and kept in the group's :class:`Plan`; a later step
proves the plan still describes the group (the same conditions as the CPU plan), rewrites only the
gradient pointers that changed (from pinned memory, asynchronously: no step waits for the GPU), and
launches. The per-step scalars (bias corrections, η_t, ...) are the blocks' ``scalars``, computed in
Python as for the reference and passed as kernel arguments.

Numbers: float32 and float64 compute in their own precision with exactly rounded ``/`` and ``sqrt``
(``tl.div_rn``, ``tl.sqrt_rn``; plain float32 ``/`` and ``tl.sqrt`` compile to approximations) and no
contraction into fused multiply-adds (``enable_fp_fusion=False``): the operations and roundings of the
C kernel. bfloat16 and float16 parameters (and their state, kept in the parameter's dtype) are loaded,
computed in float32 and stored rounded to nearest even, as torch's fused optimizers do; bfloat16 is
converted by bit operations, which round the same under Triton's CPU interpreter as on a GPU.

Where it runs: CUDA tensors, when triton is importable (it ships with torch's CUDA wheels). With
``DESCEND_BACKEND=triton`` CPU tensors take it too — under ``TRITON_INTERPRET=1`` that is Triton's
interpreter, how the tests check the generated kernels on a machine with no GPU. Anything it cannot
run takes the readable reference; the reason is logged (``logging.getLogger("descend")``, debug).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path

import torch

from descend.kernels import codegen, contract, cpu
from descend.kernels.cache import cache_dir
from descend.kernels.translate import TranslateError, c_macros, translate

__all__ = ["available", "kernel_source", "run_group", "run_planned", "compile_for", "Plan"]

log = logging.getLogger("descend")

# Elements per program instance, and its warps: 256 threads of 8 elements (two 128-bit accesses per
# stream in float32). Compiled for sm_90, Adam(amsgrad) takes 80 registers in float32 and 158 in
# float64, no spills; 16 elements a thread took 209 and 255 (with spills in float64).
BLOCK = int(os.environ.get("DESCEND_TRITON_BLOCK", "2048"))
NUM_WARPS = 8
ALIGN = 16  # bytes: every pointer of a launch aligned to this gets the vector-access hints

_COMPUTE = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "fp32", torch.float16: "fp32"}
_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}
_DTYPES = frozenset({torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64, torch.complex128})
_ELEM = {torch.float32: "tl.float32", torch.float64: "tl.float64", torch.bfloat16: "tl.uint16",
         torch.float16: "tl.float16"}

_lock = threading.Lock()
_kernels: dict[tuple, object] = {}  # source key -> the jitted kernel, or None if it could not be made
_said: set[str] = set()


def _note(reason: str) -> None:
    """Log why something takes the reference, once per reason."""
    if reason not in _said:
        _said.add(reason)
        log.debug("descend: triton backend: %s", reason)


def _triton_status() -> str | None:
    """None if triton can be imported, else why not."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # not installed, or broken: the reference runs
        return f"triton is not importable ({type(e).__name__}: {e})"
    return None


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def wants(p: torch.Tensor) -> bool:
    """Should this parameter's step go to this backend? CUDA tensors do; CPU ones with
    ``DESCEND_BACKEND=triton``."""
    if p.is_cuda:
        return os.environ.get("DESCEND_BACKEND", "") not in ("reference", "cpu")
    return p.is_cpu and os.environ.get("DESCEND_BACKEND", "") == "triton"


def available(device: str = "cuda") -> str | None:
    """None if this backend can run on ``device`` ("cuda" or "cpu"), else the reason it cannot."""
    reason = _triton_status()
    if reason is None and device == "cpu" and not _interpreted():
        reason = "CPU tensors run Triton kernels only under its interpreter (TRITON_INTERPRET=1)"
    if reason is None and device == "cuda" and not torch.cuda.is_available():
        reason = "no CUDA device"
    return reason


# ----------------------------------------------------------------------------------- the source

def _load(ptr: str, dtype: torch.dtype, mask: str) -> str:
    m = f", mask={mask}" if mask else ""
    if dtype == torch.bfloat16:  # the 16 bits are a float32's upper half: exact
        return f"(tl.load({ptr}{m}).to(tl.uint32) << 16).to(tl.float32, bitcast=True)"
    if dtype == torch.float16:
        return f"tl.load({ptr}{m}).to(tl.float32)"
    return f"tl.load({ptr}{m})"


def _store(ptr: str, value: str, dtype: torch.dtype, mask: str) -> str:
    m = f", mask={mask}" if mask else ""
    if dtype == torch.bfloat16:
        value = f"bf16_rne({value})"
    elif dtype == torch.float16:
        value = f"({value}).to(tl.float16)"
    return f"tl.store({ptr}, {value}{m})"




def kernel_source(blocks, views, dtype: torch.dtype, maximize: bool, scalar_names, buffer_names) -> str:
    """The Triton source of the fused step for one chain under one set of static hyperparameters.

    ``dtype`` is the parameters' (real) dtype; ``scalar_names[i]`` / ``buffer_names[i]`` are block i's
    scalars (in the order passed at run time) and state tensors. The kernel is
    ``step(table, grads, work, c0_…, …, BLOCK, ALIGNED)``: ``table`` holds per tensor
    [θ pointer, state pointers…, size], ``grads`` the gradient pointers, ``work`` (tensor, block) pairs.
    Raises :class:`~descend.kernels.translate.TranslateError` if a snippet is outside the C subset.
    """
    f32 = _COMPUTE[dtype] == "fp32"
    ctype = "float" if f32 else "double"
    macros = c_macros(codegen.kernel_source([], [], ctype, False, [], []))  # what SQRT, MAX, ... mean in C
    ty = "tl.float32" if f32 else "tl.float64"
    args = [f"c{i}_{name}: {ty}" for i, names in enumerate(scalar_names) for name in names]
    # the scalars as values of the kernel's type: a no-op when compiled (the signature types them), but
    # the interpreter passes Python floats, which Triton would otherwise take as float32 in tl.fma
    typed = ["    # the scalars in the kernel's type (compiled: a no-op; interpreted: not Python floats)"]
    typed += [f"    {a.split(':')[0]} = tl.full([], {a.split(':')[0]}, {ty})" for a in args]
    bufs = [(i, name) for i, names in enumerate(buffer_names) for name in names]
    stride = len(bufs) + 2
    body = []
    for i, (b, h) in enumerate(zip(blocks, views)):
        code = b.c_code(h)
        if code:
            lines, used = translate(code, i, f32, macros)
            known = {f"c{i}_{n}" for n in scalar_names[i]} | {f"s{i}_{n}" for n in buffer_names[i]}
            if not used <= known:
                raise TranslateError(f"block {i} ({type(b).__name__}) uses {sorted(used - known)}, "
                                     f"not among its scalars and buffers {sorted(known)}")
            body.append(f"# {type(b).__name__}")
            body += lines
    elem = _ELEM[dtype]

    def part(mask: str) -> list[str]:
        out = [f"p = {_load('P + offs', dtype, mask)}",
               f"u = {'-' if maximize else ''}{_load('G + offs', dtype, mask)}"]
        out += [f"s{i}_{name} = {_load(f'S{j} + offs', dtype, mask)}" for j, (i, name) in enumerate(bufs)]
        out += body
        out.append(_store("P + offs", "p + u", dtype, mask))
        out += [_store(f"S{j} + offs", f"s{i}_{name}", dtype, mask) for j, (i, name) in enumerate(bufs)
                if name not in getattr(blocks[i], "read_only_buffers", ())]  # a read-only buffer is never stored
        return out

    ptrs = [f"    P = tl.load(row).to(tl.pointer_type({elem}))",
            f"    G = tl.load(grads + t).to(tl.pointer_type({elem}))"]
    ptrs += [f"    S{j} = tl.load(row + {j + 1}).to(tl.pointer_type({elem}))" for j in range(len(bufs))]
    hints = ["        P = tl.multiple_of(P, 16)", "        G = tl.multiple_of(G, 16)"]
    hints += [f"        S{j} = tl.multiple_of(S{j}, 16)" for j in range(len(bufs))]
    nl = "\n"
    chain = " -> ".join(type(b).__name__ for b in blocks)
    return f'''# generated by descend.kernels.triton_backend: {chain}, {dtype}, maximize={maximize}
import triton
import triton.language as tl
{"from descend.kernels.triton_backend import lib" + nl + "bf16_rne = lib().bf16_rne" + nl if dtype == torch.bfloat16 else ""}

@triton.jit
def step(table, grads, work, {", ".join(args + ["BLOCK: tl.constexpr", "ALIGNED: tl.constexpr"])}):
{nl.join(typed)}
    pid = tl.program_id(0)
    t = tl.load(work + 2 * pid).to(tl.int64)
    start = tl.load(work + 2 * pid + 1).to(tl.int64) * BLOCK
    row = table + t * {stride}
    n = tl.load(row + {stride - 1})
{nl.join(ptrs)}
    if ALIGNED:  # every pointer is 16-byte aligned: a full block is 128-bit loads and stores
{nl.join(hints)}
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:  # a full block: unmasked
        offs = tl.max_contiguous(tl.multiple_of(offs, BLOCK), BLOCK)
{nl.join("        " + line for line in part(""))}
    else:  # the tensor's last, partial block
        mask = offs < n
{nl.join("        " + line for line in part("mask"))}
'''


def _src_key(blocks, views, dtype, maximize, scalar_names, buffer_names) -> tuple:
    return (dtype, maximize, tuple(type(b) for b in blocks), tuple(b.c_code(h) for b, h in zip(blocks, views)),
            tuple(scalar_names), tuple(buffer_names), _interpreted())


def _module(src: str):
    """Write ``src`` into the kernel cache folder and import it (Triton reads a kernel's source file)."""
    digest = hashlib.sha256(src.encode()).hexdigest()[:24]
    folder = cache_dir() / "triton"
    path = folder / f"step_{digest}.py"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(src)
        os.replace(tmp, path)  # atomic: concurrent processes never see half a file
    name = f"descend_triton_step_{digest}_{int(_interpreted())}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # Triton looks kernels' globals up through their module
    spec.loader.exec_module(mod)
    return mod


_libs: dict[bool, object] = {}


def lib():
    """:mod:`descend.kernels.triton_lib` (the helpers kernels call), loaded for the current mode: Triton
    makes a helper interpreted or compiled when it is defined, and the two do not call each other."""
    mode = _interpreted()
    if mode not in _libs:
        name = f"descend_triton_lib_{int(mode)}"
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("triton_lib.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        _libs[mode] = mod
    return _libs[mode]


def _kernel(key: tuple, make_src):
    fn = _kernels.get(key, False)
    if fn is False:
        with _lock:
            fn = _kernels.get(key, False)
            if fn is False:
                try:
                    fn = _module(make_src()).step
                except TranslateError as e:
                    _note(f"a snippet could not be translated ({e}); the chain runs the reference")
                    fn = None
                except (OSError, ImportError, SyntaxError) as e:
                    _note(f"the generated kernel could not be loaded ({type(e).__name__}: {e})")
                    fn = None
                _kernels[key] = fn
    return fn


def compile_for(blocks, views, dtype, maximize, scalar_names, buffer_names, capability: int = 90,
                block: int | None = None, aligned: bool = True):
    """Compile a chain's kernel ahead of time for an NVIDIA GPU of compute ``capability`` (80: A100,
    90: H100), with no GPU needed; returns Triton's compiled kernel (``.asm["ptx"]``, ``["cubin"]``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _module(kernel_source(blocks, views, dtype, maximize, scalar_names, buffer_names)).step
    ty = "fp32" if _COMPUTE[dtype] == "fp32" else "fp64"
    sig = {"table": "*i64", "grads": "*i64", "work": "*i32"}
    sig |= {f"c{i}_{n}": ty for i, names in enumerate(scalar_names) for n in names}
    sig |= {"BLOCK": "constexpr", "ALIGNED": "constexpr"}
    src = ASTSource(fn, signature=sig, constexprs={"BLOCK": block or BLOCK, "ALIGNED": aligned})
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": NUM_WARPS, "enable_fp_fusion": False})


# ----------------------------------------------------------------------------------- running

class Plan(contract.Plan):
    """One group's launch, kept between steps while nothing about the group changes: what the contract
    proved (:class:`~descend.kernels.contract.Plan`'s fields, re-proved every step by
    :func:`~descend.kernels.contract.plan_holds`) and the device-side tables of the launch."""

    __slots__ = ("table", "grads", "gptrs", "work", "nwork", "aligned", "block")


def _launch(fn, device, table, grads, work, nwork, scal, aligned, block) -> None:
    flat = [float(v) for c in scal for v in c.values()]
    if device.type == "cuda":
        with torch.cuda.device(device):
            fn[(nwork,)](table, grads, work, *flat, BLOCK=block, ALIGNED=aligned,
                         num_warps=NUM_WARPS, enable_fp_fusion=False)
    else:
        fn[(nwork,)](table, grads, work, *flat, BLOCK=block, ALIGNED=aligned)


def _to_device(values: list[int], dtype, device) -> torch.Tensor:
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host
    # from pinned memory, without waiting: torch's pinned allocator keeps the block until the copy ran
    return host.pin_memory().to(device, non_blocking=True)


def run_group(blocks, views, work, cache_, maximize, plans=None, plan_key=None, group=None) -> list:
    """Run the Triton kernel on the eligible parameters of one group; return the rest (for the reference).

    Same contract as :func:`descend.kernels.cpu.run_group`: what the kernel may touch is
    :func:`contract.eligible`'s answer; parameters sharing a key, dtype and device go in one launch;
    if the whole group went in one launch and holds only plain tensors, a :class:`Plan` for it is
    stored in ``plans[plan_key]``.
    """
    if not work or cpu._DISABLED:
        return work
    device_type = work[0][0].device.type
    reason = available(device_type)
    if reason is not None:
        _note(reason)
        return work
    buffer_names = [tuple(b.buffers(h)) for b, h in zip(blocks, views)]
    flat_names = [n for names in buffer_names for n in names]
    rest = []
    buckets: dict[tuple, list] = {}
    for item in work:
        p, st, key = item
        seen = contract.eligible(p, p.grad, [st[n] for n in flat_names], device_type, _DTYPES)
        if seen is None:
            rest.append(item)
        else:
            buckets.setdefault((key, seen[0].dtype, seen[0].device), []).append((item, seen))
    for (key, dtype, device), entries in buckets.items():
        scal = cache_[key]
        scalar_names = [tuple(c) for c in scal]
        real = _REAL.get(dtype, dtype)
        src_key = _src_key(blocks, views, real, maximize, scalar_names, buffer_names)
        fn = _kernel(src_key, lambda: kernel_source(blocks, views, real, maximize, scalar_names, buffer_names))
        if fn is None:
            rest.extend(item for item, _ in entries)
            continue
        k = len(entries)
        _, lbufs, data, gptrs, buf_data, numels = contract.bucket_pointers(entries, len(flat_names))
        mult = 2 if dtype.is_complex else 1
        rows, wk, block = [], [], BLOCK
        for t in range(k):
            n = numels[t] * mult
            rows += [data[t]] + [buf_data[j * k + t] for j in range(len(flat_names))] + [n]
            wk += [x for b in range((n + block - 1) // block) for x in (t, b)]
        aligned = all(x % ALIGN == 0 for x in data + buf_data + gptrs)
        if wk:  # (only empty tensors: nothing to launch)
            table = _to_device(rows, torch.int64, device)
            grads = _to_device(gptrs, torch.int64, device)
            wtab = _to_device(wk, torch.int32, device)
            _launch(fn, device, table, grads, wtab, len(wk) // 2, scal, aligned, block)
        plain = all(seen[0] is item[0] for item, seen in entries)
        if (plans is not None and group is not None and len(buckets) == 1 and not rest and not key[1] and plain
                and wk):
            plan = contract.new_plan(Plan, group, entries, blocks, flat_names, lbufs, dtype, device, numels,
                                     data, buf_data, codegen.switches(blocks, views, maximize), fn)
            plan.table, plan.grads, plan.gptrs, plan.work, plan.nwork = table, grads, gptrs, wtab, len(wk) // 2
            plan.aligned, plan.block = aligned, block
            plans[plan_key] = plan
    return rest


def run_planned(blocks, group, plan: Plan, state_map) -> bool:
    """Take the step with a stored :class:`Plan` if it still describes the group (the contract's
    :func:`~descend.kernels.contract.plan_holds`); False (nothing changed) if not. Also advances each
    parameter's step count and plain-number state. No host synchronisation: new gradient addresses
    are copied to the device table from pinned memory, asynchronously."""
    if cpu._DISABLED:
        return False
    views = [b.view(group) for b in blocks]
    if codegen.switches(blocks, views, group["maximize"]) != plan.switches:
        return False  # a switch that changes the generated code (amsgrad, nesterov, ...) was flipped
    if not contract.plan_holds(plan, group["params"], state_map):
        return False
    gptrs = [p.grad.data_ptr() for p in plan.params]
    if gptrs != plan.gptrs:  # new gradient tensors at new addresses: rewrite that row only
        if plan.aligned and any(x % ALIGN for x in gptrs):
            return False  # the kernel's alignment hints would no longer hold: the generic path decides
        plan.grads.copy_(_to_device(gptrs, torch.int64, plan.device), non_blocking=True)
        plan.gptrs = gptrs
    new = dict(zip(plan.keys, plan.old))
    new["step"] += 1
    for i in plan.advancing:
        blocks[i].advance(views[i], new)
    new_vals = tuple(new[k] for k in plan.keys)
    for st in plan.states:
        st.update(zip(plan.keys, new_vals))
    scal = [b.scalars(h, new, frozenset()) for b, h in zip(blocks, views)]
    _launch(plan.fn, plan.device, plan.table, plan.grads, plan.work, plan.nwork, scal, plan.aligned, plan.block)
    plan.old = new_vals
    return True


if __name__ == "__main__":  # the generated Triton source of a named optimizer: python -m descend.kernels.triton_backend adam
    import descend
    from descend.kernels.codegen import first_step_inputs

    name = sys.argv[1] if len(sys.argv) > 1 else "adam"
    opt = descend.create(name, [torch.zeros(1, requires_grad=True)],
                         **({"lr": 1e-3} if name in ("gd", "momentum", "nesterov") else {}))
    blocks, views, maximize, scal, bufs = first_step_inputs(opt)
    dtype = getattr(torch, sys.argv[2]) if len(sys.argv) > 2 else torch.float32
    print(kernel_source(blocks, views, dtype, maximize, scal, bufs))
