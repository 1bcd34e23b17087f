"""The contract: what a backend may run, and what a kept plan must prove again on every step.

A kernel is handed raw pointers and element counts; it cannot tell a tensor from a wrapper, a
parameter that was resized from one that was not, or a float32 state tensor from a float64 one.
So every backend (the CPU one in :mod:`descend.kernels.cpu`, a GPU one later) asks this module, and
only this module, whether it may touch a (parameter, gradient, state tensors) triple; whatever it
may not touch takes the readable reference (each block's ``apply``), which gives torch's own
results and errors.

**Eligible** (:func:`eligible`). Tensors whose exact type is known: ``torch.Tensor`` and
``torch.nn.Parameter`` as they are; a ``DTensor`` (FSDP2, tensor parallelism) by its local shard
(``to_local()``: a plain tensor with the shard's own sizes and storage — a DTensor's own
``data_ptr()`` is 0 and its ``numel()`` the global size), if its gradient and every state tensor are
DTensors with the same mesh and the same Shard/Replicate placements. Any other tensor subclass
takes the reference. Then the parameter (its local shard) is on the backend's device, of one of its
dtypes, strided, contiguous, with no conjugate/negative bit; and the gradient and **every state
tensor** match it in dtype, device, layout and number of elements, and are contiguous with no
conjugate/negative bit. A parameter resized or retyped after a step (``p.data = ...``,
``model.double()``) thus no longer matches its gradient or its state, and runs the reference, which
raises torch's error where the shapes or dtypes do not fit.

**Re-proved on every planned step** (:data:`PLAN_CONDITIONS`; :func:`plan_holds` in Python, and the
same list, condition for condition, in ``csrc/plan_check.cpp``). A plan is kept only for plain
tensors. Any condition that fails drops the plan and the step takes the generic path, which applies
:func:`eligible` again.
"""

from __future__ import annotations

import operator
import sys

import torch

__all__ = ["PLAN_CONDITIONS", "KNOWN", "eligible", "local", "plan_holds", "Plan", "shard_groups", "sum_groups"]

KNOWN = (torch.Tensor, torch.nn.Parameter)  # exact types a kernel may see

PLAN_CONDITIONS = (
    "the group's parameter list holds the planned parameters, the same objects in the same order",
    "exactly the planned parameters have a gradient",
    "each parameter has the planned dtype, device and number of elements, is strided and contiguous "
    "with no conjugate/negative bit, and its data is at the planned address",
    "its gradient is a plain tensor (no Python subclass) with the parameter's dtype, device, layout and "
    "number of elements, contiguous, with no conjugate/negative bit",
    "optimizer.state[p] is the planned dict, and holds the planned step count and plain-number state",
    "that dict holds the planned state tensor objects under their names",
    "each state tensor has its parameter's dtype, device, layout and number of elements, is contiguous "
    "with no conjugate/negative bit, and its data is at the planned address",
)


def _dtensor_type():
    mod = sys.modules.get("torch.distributed.tensor")  # not imported: no tensor can be a DTensor
    return getattr(mod, "DTensor", None) if mod is not None else None


def local(t):
    """The plain tensor a kernel may see for ``t``, or None: ``t`` itself if its type is exactly a
    known one, a DTensor's local shard, None for any other subclass."""
    tp = type(t)
    if tp is torch.Tensor or tp is torch.nn.Parameter:
        return t
    dt = _dtensor_type()
    if dt is not None and tp is dt:
        with torch.no_grad():
            loc = t.to_local()
        return loc if type(loc) in KNOWN else None
    return None


def sum_groups(params, owner: str = "the optimizer") -> tuple:
    """The process groups over which a sum over the elements of ``params`` (one parameter group), each
    rank adding up its own elements, must be added up across ranks to be the sum over the whole tensors.

    () for plain tensors: each rank holds them whole (one process, DDP) and its sum is the whole one.
    DTensors: the groups of the mesh dimensions they are sharded on (FSDP2: its one dimension; a
    Replicate dimension holds copies and adds nothing). A group that mixes layouts (plain tensors with
    sharded ones, two meshes, two placements) has no one such set: ValueError naming the group's layouts,
    since summing either way would silently give each rank its own answer."""
    dt = _dtensor_type()
    if dt is None:  # torch.distributed.tensor not imported: no tensor is a DTensor
        return ()
    specs = {}
    for p in params:
        key = (p.device_mesh, tuple(p.placements)) if type(p) is dt else None
        specs.setdefault(key, p)
    if len(specs) > 1:
        seen = ", ".join("plain tensors" if k is None else f"DTensors on {k[0]} with {k[1]}" for k in specs)
        raise ValueError(f"{owner}: a parameter group whose sums are taken over its elements (lr='auto') "
                         f"holds tensors of different layouts ({seen}); put each layout in its own "
                         "parameter group")
    return shard_groups(specs.values())


def shard_groups(params) -> tuple:
    """The process groups of every mesh dimension that a DTensor among ``params`` is sharded on, each
    once, in the order met (the same on every rank): where a decision about a group's tensors (does
    any gradient hold a NaN?) must be taken over the whole tensors, not one rank's shards."""
    dt = _dtensor_type()
    out: list = []
    if dt is None:
        return ()
    for p in params:
        if type(p) is dt:
            for i, pl in enumerate(p.placements):
                pg = p.device_mesh.get_group(i) if pl.is_shard() else None
                if pg is not None and not any(pg is q for q in out):
                    out.append(pg)
    return tuple(out)


def _same_spec(a, b) -> bool:
    return type(b) is type(a) and b.device_mesh == a.device_mesh and tuple(b.placements) == tuple(a.placements)


def _plain_dense(t, dtype, device, numel) -> bool:
    return (t.dtype is dtype and t.layout is torch.strided and t.device == device and t.numel() == numel
            and t.is_contiguous() and not t.is_conj() and not t.is_neg())


def eligible(p, g, bufs, device_type: str, dtypes) -> tuple | None:
    """(p, g, bufs) as the kernel may see them — local shards for DTensors — if the contract allows
    it, else None (the reference runs)."""
    lp = local(p)
    if lp is None or g is None:
        return None
    if lp is not p:  # a DTensor: its gradient and state are DTensors laid out alike, no pending reduction
        if not all(pl.is_shard() or pl.is_replicate() for pl in p.placements):
            return None
        if not _same_spec(p, g) or not all(_same_spec(p, b) for b in bufs):
            return None
        lg, lbufs = local(g), [local(b) for b in bufs]
    else:
        if type(g) not in KNOWN or not all(type(b) in KNOWN for b in bufs):
            return None
        lg, lbufs = g, bufs
    if lg is None or any(b is None for b in lbufs):
        return None
    dtype, device, numel = lp.dtype, lp.device, lp.numel()
    if dtype not in dtypes or device.type != device_type or not _plain_dense(lp, dtype, device, numel):
        return None
    if not _plain_dense(lg, dtype, device, numel) or not all(_plain_dense(b, dtype, device, numel) for b in lbufs):
        return None
    return lp, lg, lbufs


class Plan:
    """One group's kernel call, kept between steps while nothing about the group changes.

    What the contract proved when it was made: ``members`` (the group's parameter list), ``params``
    (those with a gradient, all plain tensors), ``states`` (their state dicts), ``buf_names`` and
    ``bufs`` (the state tensors, name-major), ``dtype``, ``device``, ``numels``, ``data`` and ``buf_data`` (the
    data addresses the kernel uses), ``keys``/``old`` (the step count and plain-number state every
    parameter holds). The rest is the backend's: its kernel and launch arguments (``fn``, ``ptrs``,
    ``sizes``, ``threads``), its compiled check (``c``, ``keep``, ``check_threads``), and the cached
    hyperparameters and scalars (``hyper``, ``snapshot``, ``views``, ``scal``, ``switches``,
    ``advancing``).
    """

    __slots__ = ("members", "params", "states", "bufs", "buf_names", "dtype", "device", "numels", "data", "buf_data",
                 "keys", "old", "switches", "fn", "ptrs", "sizes", "threads", "advancing", "c", "keep",
                 "check_threads", "hyper", "snapshot", "views", "scal", "n_sums")


def bucket_pointers(entries, nbuf: int) -> tuple:
    """For one bucket of proven ``(item, seen)`` entries (``seen`` as :func:`eligible` returns it): the
    tensors the kernel runs on, their state tensors name-major, and the addresses it is given — data,
    gradient, state (name-major) — with the tensors' element counts. Both backends build their
    pointer tables from this."""
    lps = [seen[0] for _, seen in entries]
    lbufs = [seen[2][j] for j in range(nbuf) for _, seen in entries]
    return (lps, lbufs, [p.data_ptr() for p in lps], [seen[1].data_ptr() for _, seen in entries],
            [t.data_ptr() for t in lbufs], [p.numel() for p in lps])


def new_plan(cls, group, entries, blocks, flat_names, lbufs, dtype, device, numels, data, buf_data, switches, fn):
    """A ``cls`` (:class:`Plan` or a backend's subclass) holding what the contract proved for a
    bucket that is the whole group; the backend adds its launch arguments."""
    plan = cls()
    plan.members = list(group["params"])
    plan.params = [item[0] for item, _ in entries]
    plan.states = states = [item[1] for item, _ in entries]
    plan.bufs, plan.buf_names = lbufs, flat_names
    plan.dtype, plan.device, plan.numels = dtype, device, numels
    plan.data, plan.buf_data = data, buf_data
    plan.switches, plan.fn = switches, fn
    plan.advancing = [i for i, b in enumerate(blocks) if b.scalar_state]
    plan.keys = ("step", *[k for b in blocks for k in b.scalar_state])
    plan.old = tuple(states[0][k] for k in plan.keys)  # the key says every state holds these
    return plan


def state_tensors(states, flat_names) -> list:
    """The state tensors of ``states`` (one dict per parameter), name-major."""
    return [st[n] for n in flat_names for st in states]


def plan_holds(plan: Plan, group_params, state_map) -> bool:
    """:data:`PLAN_CONDITIONS`, checked in Python (the compiled check, ``csrc/plan_check.cpp``, checks
    the same list). Changes nothing."""
    params, dtype, device, numels = plan.params, plan.dtype, plan.device, plan.numels
    if len(group_params) != len(plan.members) or not all(map(operator.is_, group_params, plan.members)):
        return False
    if sum(p.grad is not None for p in group_params) != len(params):
        return False
    # one pass over the parameters, touching each object once: the kernel has just flushed the caches,
    # so every extra pass costs a cache miss per parameter
    keys, old, data = plan.keys, plan.old, plan.data
    for i, (p, st) in enumerate(zip(params, plan.states)):
        g, n = p.grad, numels[i]
        if (g is None or type(g) not in KNOWN or state_map.get(p) is not st
                or any(st.get(k) != v for k, v in zip(keys, old))
                or p.data_ptr() != data[i] or not _plain_dense(p, dtype, device, n)
                or not _plain_dense(g, dtype, device, n)):
            return False  # another parameter, reset state, replaced or resized storage, odd gradient
    bufs = plan.bufs
    names = plan.buf_names
    if not all(map(operator.is_, state_tensors(plan.states, names), bufs)):
        return False  # a state tensor was replaced
    n = len(params)
    for j, t in enumerate(bufs):
        if t.data_ptr() != plan.buf_data[j] or not _plain_dense(t, dtype, device, numels[j % n]):
            return False  # ... or given other storage, size or dtype in place (set_, resize_, .data =)
    return True
