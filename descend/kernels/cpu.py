"""The CPU backend: one generated C kernel per chain, streaming every tensor of a group once.

Why this design. An optimizer step does a handful of flops per parameter and is bound by memory
traffic: Adam must read θ, g, m, v and write θ, m, v (28 bytes per float32 parameter). Running the
readable reference (one torch op per line) streams those arrays once *per op*, and its temporaries
page-fault on large tensors, so it reaches 10–30% of the bandwidth. The fix is to fuse the whole chain
into one elementwise loop that touches each byte once: :mod:`~descend.kernels.codegen` pastes the
blocks' C snippets into one loop body, :mod:`~descend.kernels.cache` compiles it once with the
system C compiler into a small shared library (a fraction of a second, cached on disk, verified
before it is loaded), and it is called here through ctypes with arrays of pointers: one call per
group per step covers all its tensors, split over the OpenMP threads torch itself uses (the library
links the same libgomp that torch has loaded). Threads take the tensors, laid end to end, in chunks
of 64K elements, in turn.

What the kernel may touch is decided by :mod:`~descend.kernels.contract` alone: plain CPU tensors
(a DTensor by its local shard), dense, contiguous, float32/float64 (complex runs as its real view)
or bfloat16/float16 (computed in float32, stored rounded to nearest even, as the reference does),
whose gradient and state tensors match the parameter in dtype, device, layout and size. The rest —
other tensor subclasses, sparse, non-contiguous tensors, anything changed under the optimizer's
feet, a machine without a C compiler — takes the reference path, which the tests prove equal.

A many-tensor model adds a second cost: the per-step bookkeeping of every parameter (its gradient's
pointer, its step count, the checks that nothing changed). Right after a kernel has streamed the
model through the caches every object that touches is a cache miss, and in Python it came to 0.2–0.6
ms a step, 10–20% of a 10M-parameter GD step. So a group of plain tensors that steps the same way
twice keeps a :class:`~descend.kernels.contract.Plan` (the kernel's pointer array), and each later
step proves the contract's :data:`~descend.kernels.contract.PLAN_CONDITIONS` again in
``csrc/plan_check.cpp``: C++ on torch's c10 headers, compiled once per machine in a background
thread (about 2 s; steps use the same check in Python until it is there), which checks the tensors
on the OpenMP threads with prefetching, skips the dict lookups of state dicts CPython's version tags
show untouched, advances the step counts and calls the kernel — about 70 µs for 200 tensors, cold.

The per-step scalars (bias corrections, η_t, ...) are computed in Python by the blocks' ``scalars`` —
the same numbers the reference uses — and passed in. Set ``DESCEND_FAST=0`` in the environment (or
pass ``fast=False`` to an optimizer) to run the reference.
"""

from __future__ import annotations

import ctypes
import operator
import os
import sys
import threading
import warnings
from pathlib import Path

import torch

from descend.kernels import cache, contract
from descend.kernels.cache import cache_dir
from descend.kernels.codegen import CTYPES, STORAGE, kernel_source, src_key, sum_names, switches
from descend.kernels.contract import Plan, state_tensors

__all__ = ["run_group", "run_planned", "kernel_source", "available", "cache_dir", "plan_check", "plan_check_status"]

_lock = threading.Lock()
_kernels: dict[tuple, object] = {}  # src_key -> ctypes function, or None if it failed
_compiler_missing = False
_DISABLED = os.environ.get("DESCEND_FAST", "1") == "0"  # DESCEND_FAST=0: every optimizer runs the reference

# -ffp-contract=off: one rounding per written operation, as the reference's separate torch ops
# (a contracted p + (−η)·g turned GD's inf − inf = NaN into −inf)
_KERNEL_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp"]
_KERNEL_ARGS = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]


def available() -> bool:
    """True if a C compiler is there to build kernels (else everything runs the reference)."""
    return cache.c_compiler() is not None


def _open_kernel(path: str):
    fn = ctypes.CDLL(path).step  # AttributeError: not our library
    fn.argtypes, fn.restype = _KERNEL_ARGS, None
    return fn


def _build(src: str) -> object | None:
    """The ``step`` function of ``src`` (from the cache, or compiled), or None: the reference runs."""
    global _compiler_missing
    cmd = cache.c_compiler()
    if cmd is None:
        if not _compiler_missing:
            warnings.warn("descend: no C compiler found; optimizers run the (slower) reference path",
                          RuntimeWarning, stacklevel=5)
        _compiler_missing = True
        return None
    fn, err = cache.load("step", src, cmd, _KERNEL_FLAGS, ".c", _open_kernel)
    if fn is None:
        warnings.warn(f"descend: compiling a fast kernel failed, using the reference path:\n{err}",
                      RuntimeWarning, stacklevel=5)
    return fn


def _kernel(key: tuple, make_src) -> object | None:
    fn = _kernels.get(key, False)
    if fn is False:
        with _lock:
            fn = _kernels.get(key, False)
            if fn is False:
                fn = _build(make_src())
                _kernels[key] = fn
    return fn


_MIN_PER_THREAD = 1 << 16  # elements

_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}
_OK = frozenset({torch.float32, torch.float64, torch.complex64, torch.complex128, torch.bfloat16, torch.float16})


def _scalar_array(scal: list[dict], n_sums: int = 0):
    """The blocks' scalars for one call, flattened in block order (the order kernel_source reads them),
    then ``n_sums`` slots the kernel writes its per-group sums into."""
    flat = [float(v) for c in scal for v in c.values()]
    return (ctypes.c_double * max(1, len(flat) + n_sums))(*flat)


def _add_sums(blocks, arr, acc) -> None:
    """Add the sums a kernel call wrote after its scalars into the façade's per-block accumulators."""
    k = len(arr) - sum(len(b.sums) for b in blocks)
    for b, a in zip(blocks, acc):
        for name in b.sums:
            a[name] += arr[k]
            k += 1


def run_group(blocks, views, work, cache_, maximize, plans=None, plan_key=None, group=None, acc=None) -> list:
    """Run the fused kernel on the eligible parameters of one group; return the rest (for the reference).

    ``work`` holds (param, state, key) triples prepared by the façade; ``cache_[key]`` the blocks'
    scalars for that key. What the kernel may touch is :func:`contract.eligible`'s answer (a
    DTensor's local shard). Parameters sharing a key and dtype go to the kernel in one call. If the
    whole group went in one call and holds only plain tensors, a :class:`Plan` for it is stored in
    ``plans[plan_key]``.
    """
    n_sums = sum(len(names) for names in sum_names(blocks))
    if _compiler_missing or _DISABLED or (n_sums and acc is None):
        return work
    buffer_names = [tuple(b.buffers(h)) for b, h in zip(blocks, views)]
    flat_names = [n for names in buffer_names for n in names]
    rest = []
    buckets: dict[tuple, list] = {}
    eligible = contract.eligible
    for item in work:  # runs per parameter per step: keep it to attribute checks
        p, st, key = item
        seen = eligible(p, p.grad, [st[n] for n in flat_names], "cpu", _OK)
        if seen is None:
            rest.append(item)
        else:
            buckets.setdefault((key, seen[0].dtype), []).append((item, seen))
    nthreads = torch.get_num_threads()
    for (key, dtype), entries in buckets.items():
        scal = cache_[key]
        scalar_names = [tuple(c) for c in scal]
        name = str(_REAL.get(dtype, dtype)).removeprefix("torch.")
        ctype, storage = CTYPES[name], STORAGE.get(name)
        fn = _kernel(src_key(blocks, views, ctype, maximize, scalar_names, buffer_names, storage),
                     lambda: kernel_source(blocks, views, ctype, maximize, scalar_names, buffer_names, storage))
        if fn is None:
            rest.extend(item for item, _ in entries)
            continue
        n = len(entries)
        lps, lbufs, data, gptrs, buf_data, numels = contract.bucket_pointers(entries, len(flat_names))
        ptrs = data + gptrs + buf_data
        mult = 2 if dtype.is_complex else 1
        sizes = (ctypes.c_int64 * n)(*[k * mult for k in numels])
        # threads only pay off on enough work: waking a second thread costs more than a small step
        threads = max(1, min(nthreads, sum(sizes) // _MIN_PER_THREAD))
        ptr_array = (ctypes.c_void_p * len(ptrs))(*ptrs)
        arr = _scalar_array(scal, n_sums)
        fn(n, sizes, ptr_array, arr, threads)
        if n_sums:
            _add_sums(blocks, arr, acc)
        plain = all(seen[0] is item[0] for item, seen in entries)
        if plans is not None and group is not None and len(buckets) == 1 and not rest and not key[1] and plain:
            plan = contract.new_plan(Plan, group, entries, blocks, flat_names, lbufs, dtype, lps[0].device, numels,
                                     data, buf_data, switches(blocks, views, maximize), fn)
            plan.ptrs, plan.sizes, plan.threads = ptr_array, sizes, threads
            plan.c = plan.keep = None
            plan.n_sums = n_sums
            # the group's values the chain reads (pinned ones live in the blocks' views); two at least,
            # so the getter always returns a tuple
            # (lr="auto"'s lr only shows the estimate, which the scalars read from the group each step)
            names = {"maximize", "skip_nonfinite"} | {hp.name for b in blocks for hp in b.hyper
                                                      if hp.name in group and hp.kind != "auto_lr"}
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
    # a chain with sums reads its scalars from state the sums change, and gets its sums back in the array
    plan.scal = _scalar_array(scal) if frozen and not sample.read and not plan.n_sums else None


def run_planned(blocks, group, plan: Plan | None, state_map, acc=None) -> bool:
    """Take the step with a stored :class:`Plan` if it still describes the group; False if not (nothing
    has changed then). Also advances each parameter's step count and plain-number state."""
    if plan is None or _DISABLED or (plan.n_sums and acc is None):
        return False
    try:
        snapshot = plan.hyper(group)
    except KeyError:  # a hyperparameter was deleted from the group: let the generic path say so
        return False
    if plan.snapshot is None or snapshot != plan.snapshot:  # a hyperparameter changed (or may have)
        views = [b.view(group) for b in blocks]
        if switches(blocks, views, group["maximize"]) != plan.switches:
            return False  # a switch that changes the generated code (amsgrad, nesterov, ...) was flipped
        _remember(plan, blocks, views, snapshot)
    views = plan.views
    if plan.n_sums and any(b.pinned for b in blocks):
        # the scalars read per-group state that the sums change each step (lr="auto"'s estimate); a
        # pinned block's view is a copy of the group taken when the plan was made, so take it again
        views = [b.view(group) for b in blocks]
    # this step's step count and plain-number state, computed once: every parameter holds plan.old now
    new = dict(zip(plan.keys, plan.old))
    new["step"] += 1
    for i in plan.advancing:
        blocks[i].advance(views[i], new)
    new_vals = tuple(new[k] for k in plan.keys)
    check = plan_check()
    if check is not None and plan.c is None:
        _attach(plan, check)
    scal = plan.scal or _scalar_array([b.scalars(h, new, frozenset()) for b, h in zip(blocks, views)], plan.n_sums)
    if plan.c is not None:  # the check, the step counts and the kernel in one call
        if not check.step(plan.c, group["params"], state_map, plan.keys, plan.old, new_vals,
                          plan.check_threads, scal):
            return False
    else:
        if not contract.plan_holds(plan, group["params"], state_map):
            return False
        keys = plan.keys
        for st in plan.states:
            st.update(zip(keys, new_vals))
        n = len(plan.params)
        plan.ptrs[n:2 * n] = [p.grad.data_ptr() for p in plan.params]
        plan.fn(n, plan.sizes, plan.ptrs, scal, plan.threads)
    if plan.n_sums:
        _add_sums(blocks, scal, acc)
    plan.old = new_vals
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

    def arr(ctype, values):
        return (ctype * max(1, len(values)))(*values)

    slot = {id(p): j for j, p in enumerate(params)}
    keep = [
        arr(ctypes.py_object, members), arr(ctypes.c_void_p, [p._cdata for p in members]),
        arr(ctypes.c_int64, [slot.get(id(p), -1) for p in members]),
        arr(ctypes.c_void_p, plan.data), arr(ctypes.c_int64, plan.numels),
        arr(ctypes.py_object, params), arr(ctypes.py_object, states), arr(ctypes.c_int64, [hash(p) for p in params]),
        arr(ctypes.py_object, plan.buf_names), arr(ctypes.py_object, bufs),
        arr(ctypes.c_void_p, [t._cdata for t in bufs]), arr(ctypes.c_void_p, plan.buf_data),
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

    torch_dir = Path(torch.__file__).parent
    abi = int(bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)))
    cxx = cache.cxx_compiler()
    if cxx is None:
        _check["status"] = "python (no C++ compiler)"
        return None
    lib_dir = torch_dir / "lib"
    flags = ["-O2", "-std=c++17", "-fopenmp", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{torch_dir / 'include'}",
             f"-I{sysconfig.get_paths()['include']}", f"-L{lib_dir}", "-lc10", f"-Wl,-rpath,{lib_dir}"]
    lib, err = cache.load("plan_check", _CHECK_SRC.read_text(), cxx, flags, ".cpp", lambda path: _Check(ctypes.PyDLL(path)),
                          key_extra="\n".join([torch.__version__, str(torch_dir), sys.version]))
    if lib is None:
        first = next((line for line in err.splitlines() if "error" in line), err.strip()[:200])
        _check["status"] = f"python (building or loading the plan check failed: {first.strip()[:200]})"
    return lib


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
    plan.data, plan.buf_data = [p.data_ptr() for p in ps], [b.data_ptr() for b in plan.bufs]
    plan.ptrs = (ctypes.c_void_p * 6)(*(plan.data + [0, 0] + plan.buf_data))
    plan.keys, plan.old, plan.c = ("step",), (1,), None
    plan.dtype, plan.numels, plan.sizes, plan.threads = torch.float32, [3, 5], (ctypes.c_int64 * 2)(3, 5), 1
    plan.fn = _NOOP_KERNEL
    _attach(plan, check)
    if check.scalar_type(ps[0]._cdata) == check.scalar_type(torch.zeros(1, dtype=torch.float64)._cdata):
        return False
    ok = check.step(plan.c, ps, states, plan.keys, (1,), (2,), 2, None) == 1
    ok = ok and list(plan.ptrs[2:4]) == [p.grad.data_ptr() for p in ps] and all(st["step"] == 2 for st in plan.states)
    ps[1].grad = ps[1].grad.to_sparse()
    bad = check.step(plan.c, ps, states, plan.keys, (2,), (3,), 2, None) == 0 and plan.states[0]["step"] == 2
    return ok and bad


if __name__ == "__main__":  # the generated source of a named optimizer: python -m descend.kernels.cpu adam
    import descend
    from descend.kernels.codegen import first_step_inputs

    name = sys.argv[1] if len(sys.argv) > 1 else "adam"
    opt = descend.create(name, [torch.zeros(1, requires_grad=True)],
                         **({"lr": 1e-3} if name in ("gd", "momentum", "nesterov") else {}))
    blocks, views, maximize, scal, bufs = first_step_inputs(opt)
    print(kernel_source(blocks, views, "float", maximize, scal, bufs))
