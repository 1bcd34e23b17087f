"""The fast path: one generated C kernel per chain, streaming every tensor of a group once.

Why this design. An optimizer step does a handful of flops per parameter and is bound by memory
traffic: Adam must read θ, g, m, v and write θ, m, v (28 bytes per float32 parameter). Running the
readable reference (one torch op per line) streams those arrays once *per op*, and its temporaries
page-fault on large tensors, so it reaches 10–30% of the bandwidth. The fix is to fuse the whole chain
into one elementwise loop that touches each byte once. Every block already states its rule for one
element as a C snippet (``Block.c_code``); here the snippets of a chain are pasted, in order, into
one loop body, compiled once with the system C compiler into a small shared library (a fraction of a
second, cached on disk by a hash of the source, so later processes just load it), and called through
ctypes with arrays of pointers: one call per group per step covers all its tensors, split over the
OpenMP threads torch itself uses (the library links the same libgomp that torch has loaded).

Threads take the tensors, laid end to end, in chunks of 64K elements, in turn.

A many-tensor model adds a second cost: the per-step bookkeeping of every parameter (its gradient's
pointer, its step count, the checks that nothing changed). Right after a kernel has streamed the
model through the caches every object that touches is a cache miss, and in Python it came to 0.2–0.6
ms a step, 10–20% of a 10M-parameter GD step. So a group that steps the same way twice keeps a
:class:`Plan` (the kernel's pointer array), and each later step proves it still holds in
``csrc/plan_check.cpp``: C++ on torch's c10 headers, compiled once per machine in a background thread
(about 2 s; steps use the same check in Python until it is there), which checks the tensors on the
OpenMP threads with prefetching, skips the dict lookups of state dicts CPython's version tags show
untouched, advances the step counts and calls the kernel — about 70 µs for 200 tensors, cold.

What stays outside: the per-step scalars (bias corrections, η_t, ...) are computed in Python by the
blocks' ``scalars`` — the same numbers the reference uses — and passed in; sparse, non-contiguous,
non-CPU or low-precision (bfloat16/float16) tensors, or a machine without a C compiler, use the
reference path, which the tests prove equal. Complex parameters run as their real view.
Set ``DESCEND_FAST=0`` in the environment (or pass ``fast=False`` to an optimizer) to run the reference.
"""

from __future__ import annotations

import ctypes
import hashlib
import operator
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["run_group", "kernel_source", "available", "cache_dir"]

_CTYPES = {torch.float32: "float", torch.float64: "double"}
_MATH = {
    "float": "#define SQRT sqrtf\n#define ABS fabsf\n",
    "double": "#define SQRT sqrt\n#define ABS fabs\n",
}

_lock = threading.Lock()
_kernels: dict[tuple[str, str], object] = {}  # (body, C type) -> ctypes function, or None if it failed
_compiler_missing = False
_DISABLED = os.environ.get("DESCEND_FAST", "1") == "0"  # DESCEND_FAST=0: every optimizer runs the reference


def cache_dir() -> Path:
    """Where compiled kernels are kept (``$DESCEND_CACHE_DIR``, else ``~/.cache/descend/kernels``)."""
    root = os.environ.get("DESCEND_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "descend")
    return Path(root) / "kernels"


def available() -> bool:
    """True if a C compiler is there to build kernels (else everything runs the reference)."""
    return _cc() is not None


def _cc() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _rename(code: str, i: int) -> str:
    code = re.sub(r"\bs_(\w+)", rf"s{i}_\1", code)
    return re.sub(r"\bc_(\w+)", rf"c{i}_\1", code)


def kernel_source(blocks, views, ctype: str, maximize: bool, scalar_names, buffer_names) -> str:
    """The C source of the fused step for one chain under one set of static hyperparameters.

    ``scalar_names[i]`` / ``buffer_names[i]`` are block i's scalars (in the order passed at run time)
    and state tensors. The exported function is
    ``step(n, sizes, ptrs, scalars, nthreads)`` with ``ptrs`` = [θ…, g…, state₀…, state₁…] (n each).
    """
    decls = []
    k = 0
    for i, names in enumerate(scalar_names):
        for name in names:
            decls.append(f"    const T c{i}_{name} = (T)sc[{k}];")
            k += 1
    bufs = [(i, name) for i, names in enumerate(buffer_names) for name in names]
    load = [f"            T s{i}_{name} = S{j}[e];" for j, (i, name) in enumerate(bufs)]
    store = [f"            S{j}[e] = s{i}_{name};" for j, (i, name) in enumerate(bufs)]
    ptrs = [f"        T* restrict S{j} = (T*)ptrs[{2 + j} * n + tt];" for j in range(len(bufs))]
    body = []
    for i, (b, h) in enumerate(zip(blocks, views)):
        code = b.c_code(h)
        if code:
            body.append("            { " + _rename(code, i).replace("\n", "\n              ") + " }")
    return f"""// generated by descend.kernels.cpu: {' -> '.join(type(b).__name__ for b in blocks)}
#include <math.h>
#include <stdint.h>
#include <omp.h>
typedef {ctype} T;
{_MATH[ctype]}#define MAX(a, b) (((a) > (b) || (a) != (a)) ? (a) : (b))
#define SIGN(x) ((x) > 0 ? (T)1 : ((x) < 0 ? (T)-1 : (x)))  /* 0 and NaN pass through */

void step(int64_t n, const int64_t* sizes, void** ptrs, const double* sc, int nthreads) {{
{chr(10).join(decls)}
    int64_t total = 0;
    for (int64_t t = 0; t < n; t++) total += sizes[t];
    /* The tensors, end to end, are cut into chunks of CHUNK elements that the threads take in turn:
       two cores do not stream at the same speed (a neighbour, where the pages sit), and a fixed
       half each left one waiting for the other up to 20% of a step. A chunk (256 KB of float32 per
       stream) is long enough for the hardware prefetchers, short enough to even out the finish. */
    const int64_t CHUNK = 1 << 16;
    int64_t nchunks = (total + CHUNK - 1) / CHUNK, next = 0;
    #pragma omp parallel num_threads(nthreads)
    {{
    int64_t t = 0, base = 0;  /* where this thread's walk over the tensors stands: chunks only go forward */
    for (int64_t c; (c = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED)) < nchunks;) {{
    int64_t lo = c * CHUNK, hi = lo + CHUNK < total ? lo + CHUNK : total;
    while (base + sizes[t] <= lo) base += sizes[t++];
    for (int64_t tt = t, bb = base; tt < n && bb < hi; bb += sizes[tt], tt++) {{
        int64_t a = lo > bb ? lo - bb : 0, b = hi - bb < sizes[tt] ? hi - bb : sizes[tt];
        if (a >= b) continue;
        T* restrict P = (T*)ptrs[tt];
        const T* restrict G = (const T*)ptrs[n + tt];
{chr(10).join(ptrs)}
        for (int64_t e = a; e < b; e++) {{
            const T p = P[e];
            T u = {'-' if maximize else ''}G[e];
{chr(10).join(load)}
{chr(10).join(body)}
            P[e] = p + u;
{chr(10).join(store)}
        }}
    }}
    }}
    }}
}}
"""


def _fingerprint() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    return f"{platform.machine()} {platform.system()} {cpu}"


_KERNEL_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"]


def _compile(cc: str, src: str, out: Path, flags=_KERNEL_FLAGS, suffix: str = ".c") -> str | None:
    """Compile ``src`` into the shared library ``out``; the error text if that failed."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            c_file = Path(tmp) / ("src" + suffix)
            c_file.write_text(src)
            tmp_so = Path(tmp) / "lib.so"
            cmd = [cc, "-shared", "-fPIC", "-o", str(tmp_so), str(c_file), *flags]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                return res.stderr
            os.replace(tmp_so, out)  # atomic: concurrent processes never see half a file
    except OSError as e:  # no compiler at $CC, or a cache folder we cannot write
        return str(e)
    return None


def _build(src: str) -> object | None:
    """Compile ``src`` (or load it from the cache) and return its ``step`` function, or None."""
    global _compiler_missing
    digest = hashlib.sha256((src + _fingerprint()).encode()).hexdigest()[:24]
    out = cache_dir() / f"step_{digest}.so"
    if not out.exists():
        cc = _cc()
        if cc is None:
            if not _compiler_missing:
                warnings.warn("descend: no C compiler found; optimizers run the (slower) reference path",
                              RuntimeWarning, stacklevel=4)
            _compiler_missing = True
            return None
        err = _compile(cc, src, out)
        if err is not None:
            warnings.warn(f"descend: compiling a fast kernel failed, using the reference path:\n{err}",
                          RuntimeWarning, stacklevel=4)
            return None
    lib = ctypes.CDLL(str(out))
    fn = lib.step
    fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    fn.restype = None
    return fn


def _kernel(src_key: tuple, make_src) -> object | None:
    fn = _kernels.get(src_key, False)
    if fn is False:
        with _lock:
            fn = _kernels.get(src_key, False)
            if fn is False:
                fn = _build(make_src())
                _kernels[src_key] = fn
    return fn


_MIN_PER_THREAD = 1 << 16  # elements

_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}
_OK = {torch.float32, torch.float64, torch.complex64, torch.complex128}


def _eligible(p: torch.Tensor, g: torch.Tensor) -> bool:
    """CPU, dense, contiguous, float32/float64 (or complex of them), gradient of the parameter's dtype."""
    return (p.is_cpu and g.dtype is p.dtype and p.dtype in _OK and g.layout is torch.strided
            and p.is_contiguous() and g.is_contiguous())


def _src_key(blocks, views, ctype, maximize, scalar_names, buffer_names) -> tuple:
    return (ctype, maximize, tuple(type(b) for b in blocks), tuple(b.c_code(h) for b, h in zip(blocks, views)),
            tuple(scalar_names), tuple(buffer_names))


class Plan:
    """One group's kernel call, kept between steps while nothing about the group changes.

    The generic path re-derives every pointer and per-parameter key on every step: about 3 µs a
    parameter, 0.6 ms a step for a 200-tensor model, which is 20% of a 10M-parameter GD step. A plan
    keeps the pointer array and the sizes. Each step then only proves that it still describes the
    group (the same parameters with the same storage, the same state dicts and state tensors, one step
    count, dense contiguous gradients of the right dtype), writes the new gradient pointers in,
    advances the step counts, and calls the kernel. The proof runs in the compiled plan check
    (``csrc/plan_check.cpp``, a few ns a parameter) once it is built, else in Python. Any doubt: the
    step is not taken here, the plan is dropped, and the generic path builds a new one.
    """

    __slots__ = ("members", "params", "states", "bufs", "switches", "dtype", "fn", "ptrs", "sizes",
                 "threads", "keys", "old", "advancing", "c", "keep", "check_threads",
                 "hyper", "snapshot", "views", "scal", "buf_names")


def _switches(blocks, views, maximize) -> tuple:
    """What decides the generated code beyond the dtype: a change (amsgrad, nesterov, ...) drops a plan."""
    return (maximize, tuple(tuple(b.buffers(h)) for b, h in zip(blocks, views)),
            tuple(b.c_code(h) for b, h in zip(blocks, views)))


def _scalar_array(scal: list[dict]):
    """The blocks' scalars for one call, flattened in block order (the order kernel_source reads them)."""
    flat = [float(v) for c in scal for v in c.values()]
    return (ctypes.c_double * max(1, len(flat)))(*flat)


def _state_tensors(states, flat_names):
    return [st[n] for n in flat_names for st in states]


def run_group(blocks, views, work, cache, maximize, plans=None, plan_key=None, group=None) -> list:
    """Run the fused kernel on the eligible parameters of one group; return the rest (for the reference).

    ``work`` holds (param, state, key) triples prepared by the façade; ``cache[key]`` the blocks'
    scalars for that key. Parameters sharing a key and dtype go to the kernel in one call. If the whole
    group went in one call, a :class:`Plan` for it is stored in ``plans[plan_key]``.
    """
    if _compiler_missing or _DISABLED:
        return work
    buffer_names = [tuple(b.buffers(h)) for b, h in zip(blocks, views)]
    flat_names = [n for names in buffer_names for n in names]
    rest = []
    buckets: dict[tuple, list] = {}
    for item in work:  # runs per parameter per step: keep it to attribute checks
        p, st, key = item
        if _eligible(p, p.grad) and all(st[n].is_contiguous() for n in flat_names):
            buckets.setdefault((key, p.dtype), []).append(item)
        else:
            rest.append(item)
    nthreads = torch.get_num_threads()
    for (key, dtype), items in buckets.items():
        scal = cache[key]
        scalar_names = [tuple(c) for c in scal]
        ctype = _CTYPES[_REAL.get(dtype, dtype)]
        src_key = _src_key(blocks, views, ctype, maximize, scalar_names, buffer_names)
        fn = _kernel(src_key, lambda: kernel_source(blocks, views, ctype, maximize, scalar_names, buffer_names))
        if fn is None:
            rest += items
            continue
        n = len(items)
        params = [p for p, _, _ in items]
        states = [st for _, st, _ in items]
        ptrs = [p.data_ptr() for p in params] + [p.grad.data_ptr() for p in params]
        bufs = _state_tensors(states, flat_names)
        ptrs += [t.data_ptr() for t in bufs]
        mult = 2 if params[0].is_complex() else 1
        sizes = (ctypes.c_int64 * n)(*[p.numel() * mult for p in params])
        # threads only pay off on enough work: waking a second thread costs more than a small step
        threads = max(1, min(nthreads, sum(sizes) // _MIN_PER_THREAD))
        ptr_array = (ctypes.c_void_p * len(ptrs))(*ptrs)
        fn(n, sizes, ptr_array, _scalar_array(scal), threads)
        if plans is not None and group is not None and len(buckets) == 1 and not rest and not key[1]:
            plan = Plan()
            plan.members = list(group["params"])
            plan.params, plan.states, plan.bufs, plan.buf_names = params, states, bufs, flat_names
            plan.switches, plan.dtype, plan.fn = _switches(blocks, views, maximize), dtype, fn
            plan.ptrs, plan.sizes, plan.threads = ptr_array, sizes, threads
            plan.advancing = [i for i, b in enumerate(blocks) if b.scalar_state]
            plan.keys = ("step", *[k for b in blocks for k in b.scalar_state])
            plan.old = tuple(states[0][k] for k in plan.keys)  # the key says every state holds these
            plan.c = plan.keep = None
            # the group's values the chain reads (pinned ones live in the blocks' views); two at least,
            # so the getter always returns a tuple
            names = {"maximize", "skip_nonfinite"} | {hp.name for b in blocks for hp in b.hyper if hp.name in group}
            plan.hyper = operator.itemgetter(*sorted(names))
            _remember(plan, blocks, views, plan.hyper(group))
            plans[plan_key] = plan
    return rest


class _Reads(dict):
    """A state dict that notes whether anyone looked into it."""

    read = False

    def __getitem__(self, k):
        self.read = True
        return super().__getitem__(k)

    def get(self, k, default=None):
        self.read = True
        return super().get(k, default)


def _remember(plan: Plan, blocks, views, snapshot) -> None:
    """Keep the group's hyperparameter values, its views, and the kernel's scalars if no block's
    scalars depend on the step: while the values stay the same, a step re-derives nothing of these."""
    # a value that can change in place (a tensor lr, a list of betas) is never trusted to stay the same
    frozen = all(isinstance(v, (bool, int, float, str, type(None))) or
                 (isinstance(v, tuple) and all(isinstance(x, (int, float)) for x in v)) for v in snapshot)
    plan.snapshot = snapshot if frozen else None
    plan.views = views
    sample = _Reads(zip(plan.keys, plan.old))
    scal = [b.scalars(h, sample, frozenset()) for b, h in zip(blocks, views)]
    plan.scal = _scalar_array(scal) if frozen and not sample.read else None


def run_planned(blocks, group, plan: Plan | None, state_map) -> bool:
    """Take the step with a stored :class:`Plan` if it still describes the group; False if not (nothing
    has changed then). Also advances each parameter's step count and plain-number state."""
    if plan is None or _DISABLED:
        return False
    try:
        snapshot = plan.hyper(group)
    except KeyError:  # a hyperparameter was deleted from the group: let the generic path say so
        return False
    if plan.snapshot is None or snapshot != plan.snapshot:  # a hyperparameter changed (or may have)
        views = [b.view(group) for b in blocks]
        if _switches(blocks, views, group["maximize"]) != plan.switches:
            return False  # a switch that changes the generated code (amsgrad, nesterov, ...) was flipped
        _remember(plan, blocks, views, snapshot)
    views = plan.views
    # this step's step count and plain-number state, computed once: every parameter holds plan.old now
    new = dict(zip(plan.keys, plan.old))
    new["step"] += 1
    for i in plan.advancing:
        blocks[i].advance(views[i], new)
    new_vals = tuple(new[k] for k in plan.keys)
    check = plan_check()
    if check is not None and plan.c is None:
        _attach(plan, check)
    scal = plan.scal or _scalar_array([b.scalars(h, new, frozenset()) for b, h in zip(blocks, views)])
    if plan.c is not None:  # the check, the step counts and the kernel in one call
        if not check.step(plan.c, group["params"], state_map, plan.keys, plan.old, new_vals,
                          plan.check_threads, scal):
            return False
    else:
        if not _python_check(plan, group["params"], state_map, new_vals):
            return False
        n = len(plan.params)
        plan.ptrs[n:2 * n] = [p.grad.data_ptr() for p in plan.params]
        plan.fn(n, plan.sizes, plan.ptrs, scal, plan.threads)
    plan.old = new_vals
    return True


def _python_check(plan: Plan, group_params, state_map, new_vals) -> bool:
    """The plan check in Python (until the compiled one is built, or where it cannot be): the same
    conditions as ``csrc/plan_check.cpp``; on success the new step counts are written."""
    params, dtype = plan.params, plan.dtype
    if len(group_params) != len(plan.members) or not all(map(operator.is_, group_params, plan.members)):
        return False
    if sum(p.grad is not None for p in group_params) != len(params):
        return False
    # one pass over the parameters, touching each object once: the kernel has just flushed the caches,
    # so every extra pass costs a cache miss per parameter
    keys, old = plan.keys, plan.old
    for i, (p, st) in enumerate(zip(params, plan.states)):
        g = p.grad
        if (g is None or state_map.get(p) is not st or any(st[k] != v for k, v in zip(keys, old))
                or p.data_ptr() != plan.ptrs[i] or not p.is_contiguous() or g.dtype is not dtype
                or g.layout is not torch.strided or not g.is_contiguous()):
            return False  # another parameter, reset state, replaced storage (model.to()), odd gradient
    if not all(map(operator.is_, _state_tensors(plan.states, plan.buf_names), plan.bufs)):
        return False  # a state tensor was replaced
    if [t.data_ptr() for t in plan.bufs] != plan.ptrs[2 * len(params):]:
        return False  # ... or given other storage in place (set_, resize_)
    for st in plan.states:
        st.update(zip(keys, new_vals))
    return True


# --------------------------------------------------------------------------- the compiled plan check

_CHECK_SRC = Path(__file__).with_name("csrc") / "plan_check.cpp"


class _PlanC(ctypes.Structure):
    """Mirrors ``struct PlanC`` in csrc/plan_check.cpp."""

    _fields_ = [("n_all", ctypes.c_int64), ("members", ctypes.c_void_p), ("impls", ctypes.c_void_p),
                ("slot", ctypes.c_void_p), ("n", ctypes.c_int64), ("p_data", ctypes.c_void_p),
                ("numel", ctypes.c_void_p), ("scalar_type", ctypes.c_int64), ("planned", ctypes.c_void_p),
                ("states", ctypes.c_void_p), ("hashes", ctypes.c_void_p), ("n_bufs", ctypes.c_int64),
                ("buf_names", ctypes.c_void_p), ("bufs", ctypes.c_void_p), ("buf_impls", ctypes.c_void_p),
                ("buf_data", ctypes.c_void_p), ("grads_out", ctypes.c_void_p), ("kernel", ctypes.c_void_p),
                ("sizes", ctypes.c_void_p), ("ptrs", ctypes.c_void_p), ("kernel_threads", ctypes.c_int64),
                ("tags", ctypes.c_void_p), ("map_tag", ctypes.c_uint64)]


class _Check:
    """The loaded plan-check library."""

    def __init__(self, lib):
        self.step = lib.descend_plan_step
        self.step.argtypes = [ctypes.POINTER(_PlanC)] + [ctypes.py_object] * 5 + [ctypes.c_int, ctypes.c_void_p]
        self.step.restype = ctypes.c_int
        self.scalar_type = lib.descend_scalar_type
        self.scalar_type.argtypes = [ctypes.c_void_p]
        self.scalar_type.restype = ctypes.c_int64


def _attach(plan: Plan, check: _Check) -> None:
    """Give a plan the arrays the compiled check reads. They hold raw addresses of the plan's own
    objects (parameters, state dicts, state tensors), which the plan keeps alive. The data pointers
    are the kernel's own (from when the plan was made), not today's: what changed since must fail."""
    members, params, states, bufs = plan.members, plan.params, plan.states, plan.bufs
    n = len(params)
    mult = 2 if plan.dtype.is_complex else 1  # the kernel's sizes count real numbers

    def arr(ctype, values):
        return (ctype * max(1, len(values)))(*values)

    slot = {id(p): j for j, p in enumerate(params)}
    keep = [
        arr(ctypes.py_object, members), arr(ctypes.c_void_p, [p._cdata for p in members]),
        arr(ctypes.c_int64, [slot.get(id(p), -1) for p in members]),
        arr(ctypes.c_void_p, plan.ptrs[:n]), arr(ctypes.c_int64, [k // mult for k in plan.sizes]),
        arr(ctypes.py_object, params), arr(ctypes.py_object, states), arr(ctypes.c_int64, [hash(p) for p in params]),
        arr(ctypes.py_object, plan.buf_names), arr(ctypes.py_object, bufs),
        arr(ctypes.c_void_p, [t._cdata for t in bufs]), arr(ctypes.c_void_p, plan.ptrs[2 * n:]),
        arr(ctypes.c_uint64, [0] * n),  # the state dicts' version tags: unknown until the first check
    ]
    a = [ctypes.addressof(x) for x in keep]
    scalar_type = check.scalar_type(torch.empty(0, dtype=plan.dtype)._cdata)
    struct = _PlanC(len(members), a[0], a[1], a[2], n, a[3], a[4], scalar_type, a[5], a[6], a[7],
                    len(plan.buf_names), a[8], a[9], a[10], a[11],
                    ctypes.addressof(plan.ptrs) + n * ctypes.sizeof(ctypes.c_void_p),
                    ctypes.cast(plan.fn, ctypes.c_void_p).value, ctypes.addressof(plan.sizes),
                    ctypes.addressof(plan.ptrs), plan.threads, a[12], 0)
    plan.c, plan.keep = ctypes.pointer(struct), keep + [struct]
    # a second thread pays off once there are enough parameters to chase (waking it costs ~10 µs)
    plan.check_threads = min(torch.get_num_threads(), max(1, len(members) // 32))


_KERNEL_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
_NOOP_KERNEL = _KERNEL_TYPE(lambda *args: None)  # the self-test's kernel

_check_lock = threading.Lock()
_check: dict = {"lib": None, "thread": None, "status": "not built yet"}


def plan_check(wait: bool = False) -> _Check | None:
    """The compiled plan check, or None while it is being built (in a background thread, so no step
    waits for the C++ compiler) or where it cannot be built. ``wait=True`` waits for the build."""
    lib = _check["lib"]
    if lib is not None or _check["status"] not in ("not built yet", "building"):
        return lib
    with _check_lock:
        if _check["thread"] is None:
            _check["status"] = "building"
            _check["thread"] = threading.Thread(target=_build_check, name="descend-plan-check")
            _check["thread"].start()
    if wait:
        _check["thread"].join()
    return _check["lib"]


def plan_check_status() -> str:
    """How many-tensor steps are checked: 'compiled', 'building', or why they use the Python check."""
    return _check["status"]


def _build_check() -> None:
    try:
        lib = _load_check()
        if lib is not None and not _self_test(lib):
            lib, _check["status"] = None, "python (the compiled check failed its self-test)"
        if lib is not None:
            _check["lib"], _check["status"] = lib, "compiled"
    except Exception as e:  # never let a speed-up break a training run
        _check["status"] = f"python ({type(e).__name__}: {e})"


def _load_check() -> _Check | None:
    import sysconfig

    src = _CHECK_SRC.read_text()
    torch_dir = Path(torch.__file__).parent
    abi = int(bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)))
    key = "\n".join([src, torch.__version__, str(torch_dir), sys.version, str(abi), _fingerprint()])
    out = cache_dir() / f"plan_check_{hashlib.sha256(key.encode()).hexdigest()[:24]}.so"
    if not out.exists():
        cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
        if cxx is None:
            _check["status"] = "python (no C++ compiler)"
            return None
        lib_dir = torch_dir / "lib"
        flags = ["-O2", "-std=c++17", "-fopenmp", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{torch_dir / 'include'}",
                 f"-I{sysconfig.get_paths()['include']}", f"-L{lib_dir}", "-lc10", f"-Wl,-rpath,{lib_dir}"]
        err = _compile(cxx, src, out, flags, suffix=".cpp")
        if err is not None:
            first = next((line for line in err.splitlines() if "error" in line), err.strip()[:200])
            _check["status"] = f"python (compiling the plan check failed: {first.strip()[:200]})"
            return None
    return _Check(ctypes.PyDLL(str(out)))


def _self_test(check: _Check) -> bool:
    """Run the compiled check on a small plan: it must find the gradient pointers Python sees, advance
    the steps, and refuse a sparse gradient. A mismatch (an unexpected torch layout) disables it."""
    ps = [torch.zeros(n, requires_grad=True) for n in (3, 5)]
    for p in ps:
        p.grad = torch.ones_like(p)
    states = {p: {"step": 1, "b": torch.zeros_like(p)} for p in ps}
    plan = Plan()
    plan.members, plan.params, plan.states = list(ps), ps, [states[p] for p in ps]
    plan.bufs, plan.buf_names = [states[p]["b"] for p in ps], ("b",)
    plan.ptrs = (ctypes.c_void_p * 6)(*([p.data_ptr() for p in ps] + [0, 0] + [b.data_ptr() for b in plan.bufs]))
    plan.keys, plan.old, plan.c = ("step",), (1,), None
    plan.dtype, plan.sizes, plan.threads = torch.float32, (ctypes.c_int64 * 2)(3, 5), 1
    plan.fn = _NOOP_KERNEL
    _attach(plan, check)
    if check.scalar_type(ps[0]._cdata) == check.scalar_type(torch.zeros(1, dtype=torch.float64)._cdata):
        return False
    ok = check.step(plan.c, ps, states, plan.keys, (1,), (2,), 2, None) == 1
    ok = ok and list(plan.ptrs[2:4]) == [p.grad.data_ptr() for p in ps] and all(st["step"] == 2 for st in plan.states)
    ps[1].grad = ps[1].grad.to_sparse()
    bad = check.step(plan.c, ps, states, plan.keys, (2,), (3,), 2, None) == 0 and plan.states[0]["step"] == 2
    return ok and bad


if __name__ == "__main__":  # print the generated source of a named optimizer: python -m descend.kernels.cpu adam
    import descend

    opt = descend.create(sys.argv[1] if len(sys.argv) > 1 else "adam", [torch.zeros(1, requires_grad=True)])
    g = opt.param_groups[0]
    views = [b.view(g) for b in opt.blocks]
    st = {"step": 1}
    for b in opt.blocks:
        b.init_scalar_state(st)
    scal = [b.scalars(h, st, frozenset()) for b, h in zip(opt.blocks, views)]
    print(kernel_source(opt.blocks, views, "float", g["maximize"], [tuple(c) for c in scal],
                        [tuple(b.buffers(h)) for b, h in zip(opt.blocks, views)]))
