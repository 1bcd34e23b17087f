"""The composable core: blocks, hyperparameters, and the torch.optim façade that runs a chain.

An optimizer here is a *chain* of small blocks. Each block is one gradient transformation:
it reads the update ``u`` coming out of the previous block (the first block sees the gradient),
may keep per-parameter state tensors, and returns a new ``u``. After the last block the façade
applies ``θ ← θ + u``. The learning rate and its sign enter in exactly one block
(:class:`~descend.blocks.ScaleByLearningRate`), so the *order* of the chain says where the learning
rate sits: ``[lr, trace]`` is the chapter's momentum (η inside the velocity), ``[trace, lr]`` is
torch.optim.SGD's (η outside).

Hyperparameters live in torch's ``param_groups`` (so per-group values, torch schedulers and
``state_dict`` work as users expect). A block declares the ones it reads as :class:`Hyper` entries
with a default and a validity check; the façade collects them. A hyperparameter value may also be a
*schedule* (any callable of the step); the façade evaluates it before every step and writes the
current value into the group, so ``group["lr"]`` always shows the learning rate in use.

Per-parameter state is a dict, as in torch.optim: an ``int`` ``"step"`` (the number of steps this
parameter has taken), the blocks' state tensors (same shape and dtype as the parameter), and the
plain-number state a block may keep (NAdam's running product). Keeping numbers as Python numbers
makes a ``state_dict`` round trip bitwise exact.

Execution: a block has two equivalent forms. ``apply`` is the readable torch reference for one
tensor, and is the specification. ``c_code`` is the same rule as a C expression over one element;
:mod:`descend.kernels` joins the snippets of a chain into one elementwise kernel that streams every
tensor of a group once (see there for why). The façade uses a kernel where
:mod:`descend.kernels.contract` allows it (plain or DTensor-local tensors, dense, contiguous, gradient
and state matching the parameter; CPU tensors through the C kernel, CUDA ones through Triton;
float32/float64, or bfloat16/float16 computed in float32) and the reference otherwise; the tests prove
the two equal.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch.optim import optimizer as _torch_optimizer

from descend import kernels  # the execution layer (fused kernels); imports nothing else of descend

__all__ = ["Hyper", "Block", "ChainOptimizer", "is_schedule", "resolve"]


# --------------------------------------------------------------------------- hyperparameters


def _num(x: Any) -> float:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise TypeError("expected a one-element tensor")
        return float(x.item())
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError("expected a number")
    return float(x)


@dataclass(frozen=True)
class Hyper:
    """A hyperparameter a block reads from its parameter group.

    ``kind`` names the valid range and selects the check:
    ``"nonneg"`` [0, ∞), ``"pos"`` (0, ∞), ``"unit"`` [0, 1), ``"closed_unit"`` [0, 1],
    ``"betas"`` a pair in [0, 1), ``"bool"``, ``"count"`` an integer >= 1, ``"restart"`` a number > 1
    or inf.
    """

    name: str
    default: Any
    kind: str
    doc: str = ""

    _RANGES = {
        "nonneg": "a finite number >= 0",
        "pos": "a finite number > 0",
        "unit": "a number in [0, 1)",
        "closed_unit": "a number in [0, 1]",
        "betas": "a pair of numbers, each in [0, 1)",
        "bool": "True or False",
        "count": "an integer >= 1",
        "restart": "a number > 1, or inf (never)",
        "auto_lr": "'auto' (or the number the estimate shows)",
    }

    def expected(self) -> str:
        return self._RANGES[self.kind]

    def check(self, value: Any, owner: str) -> None:
        """Raise ValueError naming the parameter, its value and the valid range if ``value`` is bad."""
        def bad(shown: str = f"{self.name}={value!r}") -> ValueError:
            return ValueError(f"{owner}: invalid {shown}; expected {self.expected()}")

        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad()
            return
        if self.kind == "auto_lr":  # lr="auto": the group shows the estimate, a number, once it has one
            if isinstance(value, str) and value == "auto":
                return
            try:
                x = _num(value)
            except TypeError:
                raise bad() from None
            if not (math.isfinite(x) and x >= 0.0):
                raise bad()
            return
        if self.kind == "betas":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise bad()
            for i, b in enumerate(value):
                try:
                    x = _num(b)
                except TypeError:
                    raise bad(f"{self.name}[{i}]={b!r}") from None
                if not (0.0 <= x < 1.0):
                    raise bad(f"{self.name}[{i}]={b!r}")
            return
        try:
            x = _num(value)
        except TypeError:
            raise bad() from None
        ok = {
            "nonneg": math.isfinite(x) and x >= 0.0,
            "pos": math.isfinite(x) and x > 0.0,
            "unit": 0.0 <= x < 1.0,
            "closed_unit": 0.0 <= x <= 1.0,
            "count": 1.0 <= x < 2.0**31 and x == int(x),
            "restart": x > 1.0,
        }[self.kind]
        if not ok:
            raise bad()


def is_schedule(value: Any) -> bool:
    """A hyperparameter value that is a function of the step (a schedule), or a tuple holding one."""
    if isinstance(value, (tuple, list)):
        return any(is_schedule(v) for v in value)
    return callable(value) and not isinstance(value, (torch.Tensor, type))


def resolve(spec: Any, step: int) -> Any:
    """A hyperparameter's value at ``step``: schedules (also inside tuples) evaluated, the rest as is."""
    if isinstance(spec, (tuple, list)):
        return type(spec)(resolve(v, step) for v in spec)
    return float(spec(step)) if is_schedule(spec) else spec


def _plain(v: Any) -> Any:
    """A one-element tensor as a Python float (other values unchanged)."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v.item())
    return v


def _count(v: Any) -> int | None:
    """A saved step count as an int: a non-negative integer, or a one-element tensor holding one (as
    torch.optim saves it); None if ``v`` is anything else."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or v.is_complex():
            return None
        v = v.item()
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():
            v = int(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        return None
    return int(v) if v >= 0 else None


_COUNT = "a non-negative integer (or a one-element tensor holding one)"


# --------------------------------------------------------------------------- blocks


class Block:
    """One gradient transformation in a chain.

    Subclasses set ``hyper`` (the hyperparameters read from the group) and implement:

    - ``buffers(h)``: names of the per-parameter state tensors used under hyperparameters ``h``;
    - ``init_buffer(name, p, h)``: the initial value of one (zeros by default);
    - ``scalars(h, t, new)``: the numbers this step needs (Python floats/bools), from ``h``, the
      parameter's step count ``t`` (1 on its first step) and the set of buffers created this step;
    - ``apply(u, p, s, c)``: the readable reference on one tensor: ``s`` are the state tensors
      (update them in place), ``c`` the scalars; return the new update (never modify ``u`` in place:
      the first block's ``u`` is the parameter's ``.grad``);
    - ``c_code(h)``: the same rule as C statements over one element (see :mod:`descend.kernels`),
      or None if the block has no fast form.

    Hyperparameters passed to the constructor are pinned: the block uses them instead of the group's.
    """

    hyper: tuple[Hyper, ...] = ()
    all_buffers: tuple[str, ...] = ()  # every state tensor the block may keep, whatever ``h``
    supports_sparse: bool = False
    scalar_state: tuple[str, ...] = ()  # plain-number per-parameter state, advanced by ``advance``
    sums: tuple[str, ...] = ()  # per-group sums gathered during a step and handed to ``finish``
    group_state: tuple[str, ...] = ()  # keys of per-group plain-number state the block keeps in the group

    def __init__(self, **pinned: Any) -> None:
        names = {hp.name for hp in self.hyper}
        for k in pinned:
            if k not in names:
                raise TypeError(f"{type(self).__name__} has no hyperparameter {k!r}")
        self.pinned = pinned

    # the group's view as this block sees it
    def view(self, group: Mapping[str, Any]) -> Mapping[str, Any]:
        return {**group, **self.pinned} if self.pinned else group

    def validate(self, h: Mapping[str, Any], owner: str) -> None:
        for hp in self.hyper:
            hp.check(h[hp.name], owner)

    def buffers(self, h: Mapping[str, Any]) -> tuple[str, ...]:
        return self.all_buffers

    def init_buffer(self, name: str, p: torch.Tensor, h: Mapping[str, Any]) -> torch.Tensor:
        return torch.zeros_like(p, memory_format=torch.preserve_format)

    def init_scalar_state(self, st: dict) -> None:
        pass

    def advance(self, h: Mapping[str, Any], st: dict) -> None:
        """Update plain-number state for the step ``st["step"]`` (called once per parameter per step)."""

    def scalars(self, h: Mapping[str, Any], st: Mapping[str, Any], new: frozenset) -> dict[str, Any]:
        return {}

    # -- per-group sums (used by lr="auto"): ``apply`` adds into ``c.acc[name]`` (Python floats, in
    # float64); ``c_code`` into ``r_NAME`` (double), which the kernel sums per group; after every
    # parameter of the group has stepped, ``finish`` gets the totals and may update group state.
    def init_group_state(self, group: dict) -> None:
        pass

    def finish(self, h: Mapping[str, Any], group: dict, acc: Mapping[str, float]) -> None:
        pass

    def apply(self, u, p, s, c):  # pragma: no cover - abstract
        raise NotImplementedError

    def c_code(self, h: Mapping[str, Any]) -> str | None:
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.pinned.items())
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------- the façade


def _all_reduce(values: list[float], ranks: tuple, device, op: str) -> list[float]:
    """``values`` reduced elementwise (``op``: "sum" or "max") over each process group in ``ranks``
    in turn, in float64, on ``device`` (the group's tensors': NCCL takes CUDA tensors only)."""
    import torch.distributed as dist

    out = torch.tensor(values, dtype=torch.float64, device=device)
    for pg in ranks:
        dist.all_reduce(out, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=pg)
    return out.tolist()


def keeps_average(blocks: Iterable[Any]) -> bool:
    """Whether a chain keeps an average of the iterates (an AverageIterates block, which ``lr="auto"``
    adds): ``opt.averaged()`` and ``opt.eval()`` then have other weights to show. By the block's name:
    descend.blocks imports this module."""
    return any(type(b).__name__ == "AverageIterates" for b in blocks)


def _partition_ranks(group: Mapping[str, Any]) -> tuple:
    """``(dist.group.WORLD,)`` for a ``partitioned=True`` group under an initialised torch.distributed
    (ZeroRedundancyOptimizer: each rank steps its own partition of the tensors); () otherwise."""
    if not group.get("partitioned"):  # (.get: an optimizer pickled before the option)
        return ()
    import torch.distributed as dist

    return (dist.group.WORLD,) if dist.is_available() and dist.is_initialized() else ()


class ChainOptimizer(torch.optim.Optimizer):
    """A torch.optim.Optimizer that runs a chain of blocks.

    Args:
        params: parameters or parameter groups, as for any torch optimizer.
        blocks: the chain, applied in order to the gradient.
        maximize: ascend instead of descend (the gradient is negated first).
        skip_nonfinite: if True, a group whose gradients hold a NaN or ±inf skips the step
            (parameters, state and the step counter stay as they were) and
            ``group["skipped_steps"]`` counts it. If False (the default, as torch.optim),
            non-finite gradients flow into the state and the parameters.
        partitioned: this optimizer steps one rank's partition of the model's tensors, as under
            ``ZeroRedundancyOptimizer(params, descend.Adam, ..., partitioned=True)`` (which hands the
            keyword on). What is decided per group is then decided over every rank of the default
            process group (``dist.group.WORLD``): ``lr="auto"``'s sums are added up, so every rank
            keeps the one estimate one process would on the whole model; ``skip_nonfinite``'s check
            skips on every rank alike; and the group's step count (its schedules') advances on every
            rank when any rank's partition had a gradient. That costs one all-reduce of a few numbers
            per group step (two with ``skip_nonfinite``). A rank whose partition of a group is empty,
            or has no gradient, joins with nothing; an empty group is accepted only here. Without an
            initialised torch.distributed it changes nothing (one process holds the whole model).
            Not covered: ZeRO over a process group other than the default one; and under ZeRO
            ``opt.optim.averaged()`` swaps in the average of this rank's partition only (see
            :meth:`averaged`). Default False (one process, DDP, FSDP2: each rank sees whole tensors,
            or DTensor shards, whose own process groups are used).
        fast: use the fused kernel of :mod:`descend.kernels` where possible (default True). A
            parameter group may say ``"fast": False`` for itself (as ZeroRedundancyOptimizer,
            which copies every keyword into the groups, does with ``fast=False``).
        **hyperparameters: values for the blocks' hyperparameters; the blocks' defaults fill the rest.
            Any of them may be a schedule ``f(step) -> value`` (or a tuple holding one).

    Example:
        >>> import torch, descend
        >>> from descend import blocks as B
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = descend.ChainOptimizer([w], [B.ScaleByLearningRate(), B.Trace()], lr=0.1, momentum=0.9)
        >>> w.sum().backward(); _ = opt.step()
        >>> w.detach()
        tensor([0.9000, 0.9000, 0.9000])
    """

    blocks: tuple[Block, ...] = ()

    def __init__(
        self,
        params: Iterable[Any],
        blocks: Iterable[Block] | None = None,
        *,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        partitioned: bool = False,
        fast: bool = True,
        **hyperparameters: Any,
    ) -> None:
        if blocks is not None:
            self.blocks = tuple(blocks)
        if not self.blocks:
            raise ValueError(f"{self._name()}: a chain needs at least one block")
        hyperparameters = self._auto_lr(hyperparameters)
        known: dict[str, Hyper] = {}
        for b in self.blocks:
            for hp in b.hyper:
                if hp.name not in b.pinned:
                    known.setdefault(hp.name, hp)
        for k in hyperparameters:
            if k not in known:
                raise TypeError(
                    f"{self._name()} got an unexpected hyperparameter {k!r}; "
                    f"it takes {', '.join(sorted(known)) or 'none'}"
                )
        defaults = {name: hp.default for name, hp in known.items()}
        defaults.update(hyperparameters)
        defaults.update(maximize=maximize, skip_nonfinite=skip_nonfinite, partitioned=partitioned)
        self._known = known
        self.fast = fast
        if isinstance(params, torch.Tensor):
            raise TypeError(f"{self._name()}: params must be an iterable of tensors or dicts, not a tensor")
        params = list(params)
        if len(params) == 0:
            raise ValueError(f"{self._name()}: got an empty parameter list")
        self._check_group(defaults)  # fail before torch touches anything
        super().__init__(params, defaults)

    # -- helpers ----------------------------------------------------------------------------

    @classmethod
    def _name(cls) -> str:
        return cls.__name__

    _FLAGS = (Hyper("maximize", False, "bool"), Hyper("skip_nonfinite", False, "bool"),
              Hyper("partitioned", False, "bool"))

    def _check_group(self, group: Mapping[str, Any]) -> None:
        """Validate every hyperparameter of a group (a schedule by its value at the group's step)."""
        t = group.get("step", 0)
        h = {k: resolve(v, t) for k, v in group.items() if k not in ("params", "schedules")}
        for k, spec in group.get("schedules", {}).items():
            h[k] = resolve(spec, t)
        for hp in self._FLAGS:
            hp.check(h.get(hp.name, hp.default), self._name())
        for b in self.blocks:
            b.validate(b.view(h), self._name())

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        for k, v in getattr(self, "defaults", {}).items():
            group.setdefault(k, v)
        params = group.get("params")
        if isinstance(params, torch.Tensor):
            params = [params]
        elif params is not None and not isinstance(params, (set, list, tuple)):
            # a generator (``model.parameters()``) read once here would reach torch empty
            params = group["params"] = list(params)
        if params is not None and len(params) == 0 and group.get("partitioned") is not True:
            # (a ZeroRedundancyOptimizer hands a rank with no tensor of a group an empty one)
            raise ValueError(f"{self._name()}: got an empty parameter list (a group of a "
                             "ZeroRedundancyOptimizer's partition may be empty with partitioned=True)")
        if self._sum_blocks():  # lr="auto": group["lr"] is the estimate's display, never an input
            given = param_group.get("lr", "auto")
            if not (isinstance(given, str) and given == "auto"):
                raise ValueError(f"{self._name()}: invalid lr={given!r} in a parameter group of an lr='auto' "
                                 "optimizer; every group's rate is estimated (scale one with lr_scale)")
        if "fast" in group and not isinstance(group["fast"], bool):
            raise ValueError(f"{self._name()}: invalid fast={group['fast']!r} in a parameter group; expected True or False")
        unknown = set(group) - set(self._known) - {k for b in self.blocks for k in b.group_state} - {
            "params", "maximize", "skip_nonfinite", "partitioned", "name", "fast",
                                                   "param_names", "initial_lr", "schedules",
                                                   "step", "skipped_steps",
                                                   "differentiable"}  # torch's __setstate__ adds it
        if unknown:
            raise TypeError(f"{self._name()}: unknown hyperparameter(s) {sorted(unknown)} in a parameter group")
        self._check_group(group)
        # move schedules out of the plain values: group[k] always holds the value in use
        sched = dict(group.get("schedules", {}))
        for k in list(group):
            if k not in ("params", "schedules") and is_schedule(group[k]):
                sched[k] = group[k]
        group["schedules"] = sched
        group.setdefault("step", 0)
        group.setdefault("skipped_steps", 0)
        for k, spec in sched.items():
            group[k] = resolve(spec, group["step"])
        for b in self.blocks:
            if not all(k in group for k in b.group_state):
                b.init_group_state(group)
        super().add_param_group(group)
        self._show_lr(self.param_groups[-1])
        for p in self.param_groups[-1]["params"]:
            if p.is_sparse:
                raise ValueError(f"{self._name()}: sparse parameters are not supported")

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim.Optimizer pickles (and deep-copies) only defaults, state and param_groups; a
        # chain also needs its blocks (an instance attribute for ChainOptimizer(params, blocks)),
        # its hyperparameter table and the fast flag.
        return {**super().__getstate__(), "blocks": self.blocks, "_known": self._known, "fast": self.fast}

    # -- state_dict --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        for g in sd["param_groups"]:
            g["schedules"] = copy.deepcopy(g["schedules"])  # stateful schedules (plateau) snapshot
        sd["descend"] = {"optimizer": self._name(), "blocks": [repr(b) for b in self.blocks]}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by an optimizer of the same kind over the same parameter layout.

        Everything is checked before anything changes: on a mismatch a ValueError says what differs,
        and the optimizer is left exactly as it was.
        """
        name = self._name()
        if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: not an optimizer state_dict")
        meta = state_dict.get("descend")
        mine = {"optimizer": name, "blocks": [repr(b) for b in self.blocks]}
        if meta is not None and meta != mine:
            raise ValueError(
                f"{name}.load_state_dict: the state was saved by {meta.get('optimizer')} "
                f"with blocks {meta.get('blocks')}, not by {name} with blocks {mine['blocks']}"
            )
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the state has {len(saved)} parameter group(s), "
                             f"this optimizer has {len(self.param_groups)}")
        saved = [self._drop_foreign_keys(i, sg) for i, sg in enumerate(saved)]
        params = []
        for i, (g, sg) in enumerate(zip(self.param_groups, saved)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(f"{name}.load_state_dict: group {i} has {len(sg['params'])} parameter(s) "
                                 f"in the state and {len(g['params'])} here")
            params += list(zip(sg["params"], g["params"]))
            for k in ("step", "skipped_steps"):  # the group's counters, as ints
                if k in sg:
                    if _count(sg[k]) is None:
                        raise ValueError(f"{name}.load_state_dict: group {i} has {k}={sg[k]!r}; expected {_COUNT}")
                    sg[k] = _count(sg[k])
            if "averaged_in" in sg and (sg["averaged_in"] is not True or not self._keeps_average()):
                raise ValueError(f"{name}.load_state_dict: group {i} has averaged_in={sg['averaged_in']!r}; "
                                 "expected True (saved in eval mode) from an optimizer that keeps an average "
                                 "of the iterates, as this one " + ("does" if self._keeps_average() else "does not"))
            for b in self.blocks:  # a block's per-group state (lr="auto"'s estimate) came with the state
                if b.group_state and not any(k in sg for k in b.group_state):
                    raise ValueError(
                        f"{name}.load_state_dict: group {i} has no {b.group_state[0]!r}: the state was saved "
                        f"without lr='auto' (at lr={sg.get('lr')!r}, by torch.optim or descend), and lr='auto' "
                        "resumes only its own; build the optimizer with that lr to resume it")
            merged = {**self.defaults, **{k: v for k, v in sg.items() if k != "params"}}
            try:
                self._check_group(merged)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{name}.load_state_dict: group {i}: {e}") from None
        allowed = {"step"} | {n for b in self.blocks for n in b.scalar_state}
        buffers = {n for b in self.blocks for n in b.all_buffers}
        # every state entry belongs to a parameter the saved groups list (torch.optim would keep an
        # entry under any other key, e.g. the string ids of a JSON round trip, and drop its tensors)
        ids = dict(params)
        if not isinstance(state_dict["state"], Mapping):
            raise ValueError(f"{name}.load_state_dict: 'state' is a {type(state_dict['state']).__name__}, "
                             "not a dict of parameter id -> state")
        for pid, st in state_dict["state"].items():
            if isinstance(pid, (bool, float)) or pid not in ids:  # (True == 1 and 1.0 == 1 as dict keys)
                listed = list(ids)
                raise ValueError(
                    f"{name}.load_state_dict: the state has an entry for parameter id {pid!r} "
                    f"({type(pid).__name__}), which no saved parameter group lists; they list "
                    f"{listed[:8]}{' ...' if len(listed) > 8 else ''}"
                    + (" (string ids, as after a JSON round trip?)" if isinstance(pid, str) else ""))
            if not isinstance(st, Mapping):
                raise ValueError(f"{name}.load_state_dict: the state of parameter {pid} is a "
                                 f"{type(st).__name__}, not a dict")
        for pid, p in params:
            st = state_dict["state"].get(pid)
            if st is None:
                continue
            for k, v in st.items():
                if k == "step" and _count(v) is None:
                    raise ValueError(f"{name}.load_state_dict: state 'step' of parameter {pid} is {v!r}; "
                                     f"expected {_COUNT}")
                if k in allowed and k != "step" and not (
                        isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_complex()
                        or isinstance(v, numbers.Real) and not isinstance(v, bool)):
                    raise ValueError(f"{name}.load_state_dict: state {k!r} of parameter {pid} is {v!r}; "
                                     "expected a real number (or a one-element tensor holding one)")
                if k in buffers:
                    if not isinstance(v, torch.Tensor) or v.shape != p.shape:
                        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                        raise ValueError(f"{name}.load_state_dict: state {k!r} of parameter {pid} has "
                                         f"shape {got}, the parameter has {tuple(p.shape)}")
                elif k not in allowed:
                    raise ValueError(f"{name}.load_state_dict: unexpected state {k!r} for parameter {pid}; "
                                     f"{name} keeps {sorted(buffers | allowed)}")
        sd = dict(state_dict)
        sd.pop("descend", None)
        # torch.optim keeps the step count (and NAdam's mu_product) as one-element tensors; here they
        # are Python numbers (the bias corrections are computed in float64 from them), so a state saved
        # by the torch.optim counterpart resumes exactly
        sd["state"] = {pid: {k: (_count(v) if k == "step" else _plain(v) if k in allowed else v)
                             for k, v in st.items()}
                       for pid, st in state_dict["state"].items()}
        sd["param_groups"] = [{**self.defaults, "schedules": {}, "step": 0, "skipped_steps": 0, **sg}
                              for sg in saved]
        super().load_state_dict(sd)
        self.__dict__.pop("_written", None)
        self.__dict__.pop("_fast_plans", None)
        self.__dict__.pop("_lr_shown", None)
        for g in self.param_groups:
            g["schedules"] = copy.deepcopy(g["schedules"])

    # torch.optim group keys that only choose how torch runs a step: dropped on load
    _TORCH_EXECUTION_KEYS = frozenset({"foreach", "fused", "capturable", "differentiable"})
    # torch.optim group keys that change the rule, with the value an optimizer without the key acts
    # as; an optimizer class overrides the ones its rule implies (AdamW: decoupled weight decay)
    _RULE_KEYS = {"decoupled_weight_decay": False, "nesterov": False, "amsgrad": False, "centered": False,
                  "momentum": 0, "dampening": 0, "weight_decay": 0, "maximize": False}
    implied: Mapping[str, Any] = {}

    def _drop_foreign_keys(self, i: int, sg: Mapping[str, Any]) -> dict[str, Any]:
        """A saved group without the keys this optimizer has no use for. A torch.optim state may carry a
        rule switch this chain does not implement (Adam's ``decoupled_weight_decay=True`` loaded into
        descend's Adam): that is an error, not a silently different optimizer."""
        name, out = self._name(), {}
        for k, v in sg.items():
            if k in self.defaults or (k not in self._RULE_KEYS and k not in self._TORCH_EXECUTION_KEYS):
                out[k] = v  # ours, or another key (a scheduler's initial_lr, a user's own): kept
            elif k in self._RULE_KEYS:
                acts_as = self.implied.get(k, self._RULE_KEYS[k])
                if v != acts_as:
                    raise ValueError(
                        f"{name}.load_state_dict: group {i} was saved with {k}={v!r}; {name} has no {k!r} "
                        f"and always acts as {k}={acts_as!r}. Load it into the optimizer with that rule"
                        + (" (descend.AdamW)" if k == "decoupled_weight_decay" and v else ""))
        return out

    # -- the step ----------------------------------------------------------------------------

    # Under torch.compile the step is opaque: dynamo breaks the graph at the call and the step runs
    # eagerly (the fused kernel, schedules, hooks). Traced, it would guard on the integer step counts
    # and recompile every step until torch's limit, then run slower than eager.
    @torch.compiler.disable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one step for every group; return ``closure()``'s loss if a closure is given.

        Under ``torch.compile`` (of a training step that calls it, or of ``opt.step`` itself) the step
        is not traced: it runs eagerly, as does ``closure``, so it never recompiles.
        """
        # torch.optim wraps every optimizer's step in a profiler region and its step hooks. Here that
        # wrapper runs only when something listens (a hook, or the profiler): on a many-tensor model
        # it costs ~0.2 ms a step, because the kernel has just flushed every cache it touches.
        if type(self).step is ChainOptimizer.step and (
            _step_hooks_registered(self) or torch.autograd._profiler_enabled()
        ):
            return self._profiled_step(closure)
        return self._step(closure)

    def _step(self, closure: Callable[[], Any] | None = None) -> Any:
        if any(g.get("averaged_in") for g in self.param_groups):
            raise RuntimeError(f"{self._name()}.step(): the parameters hold the averaged weights (opt.eval()); "
                               "call opt.train() before the forward pass that this step follows, so that the "
                               "gradient is taken at the iterate")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    _profiled_step = torch.optim.Optimizer.profile_hook_step(_step)

    def _step_group(self, group: dict[str, Any]) -> None:
        # partitioned=True (ZeRO): the ranks that hold the rest of the model
        world = _partition_ranks(group)
        if group["skip_nonfinite"] and self._nonfinite(group, world):
            group["skipped_steps"] += 1
            return
        if group["schedules"]:
            self._apply_schedules(group, check_overwrite=True)
            self._check_group(group)
        acc = self._new_sums()
        if acc is not None:
            self._check_lr_shown(group)
        plans = self.__dict__.setdefault("_fast_plans", {})  # not pickled: it holds raw pointers
        # the planned step runs no torch op (only the kernel), so it needs no torch.no_grad(); a plan
        # is kept for plain tensors only, so each rank's sums are already whole, unless the tensors
        # are one rank's partition of the model (partitioned=True)
        if self.fast and group.get("fast", True) and kernels.run_planned(self.blocks, group, plans.get(id(group)), self.state,
                                                   **({} if acc is None else {"acc": acc})):
            self._finish_group(group, acc, world)
            return
        plans.pop(id(group), None)
        # where each rank holds shards (FSDP2), its sums are partial: the process groups that add them
        # up (a ValueError for a group of mixed layouts, before anything has changed); where it holds a
        # partition (ZeRO, partitioned=True), the default group, whatever the tensors' layout
        ranks = world or (kernels.contract.sum_groups(group["params"], self._name()) if acc is not None else ())
        views = [b.view(group) for b in self.blocks]
        maximize = group["maximize"]
        with torch.no_grad():
            self._step_group_generic(group, views, maximize, plans, acc, ranks)

    def _step_group_generic(self, group, views, maximize, plans, acc=None, ranks=()) -> None:
        """The step without a plan: per-parameter bookkeeping, then the kernel where it applies (which
        may leave a plan for the next step) and the readable reference for the rest."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            if ranks and group.get("partitioned"):  # the other ranks' partitions may have stepped:
                self._finish_group(group, acc, ranks, stepped=False)  # join their count (and sums)
            return
        name = self._name()
        sparse = any(p.grad.is_sparse for p in params)
        if sparse:
            bad = [type(b).__name__ for b in self.blocks if not b.supports_sparse]
            if bad:
                hint = ("AdaGrad at a fixed lr (lr='auto' measures every element)" if self._sum_blocks()
                        else "AdaGrad")
                raise RuntimeError(f"{name} does not support sparse gradients (blocks {bad} need dense "
                                   f"ones); use {hint} or densify the gradient")
        # per-parameter bookkeeping: state, step count, plain-number state. This loop runs for every
        # parameter on every step, so it does only dict work; anything per group is hoisted out of it.
        needed = [(b, h, b.buffers(h)) for b, h in zip(self.blocks, views)]
        needed_names = {n for _, _, names in needed for n in names}
        advancing = [(b, h) for b, h in zip(self.blocks, views) if b.scalar_state]
        scalar_keys = [n for b, _ in advancing for n in b.scalar_state]
        work = []
        cache: dict[tuple, list[dict]] = {}
        for p in params:
            st = self.state[p]
            if "step" not in st:
                st["step"] = 0
                for b in self.blocks:
                    b.init_scalar_state(st)
            new: tuple = ()
            if not st.keys() >= needed_names:  # first step, or a hyperparameter switched a buffer on
                new = tuple(n for _, _, names in needed for n in names if n not in st)
                for b, h, names in needed:
                    st.update({n: b.init_buffer(n, p, h) for n in names if n in new})
            t = st["step"] = st["step"] + 1
            for b, h in advancing:
                b.advance(h, st)
            key = (t, new, *[st[n] for n in scalar_keys])
            if key not in cache:
                cache[key] = [b.scalars(h, st, frozenset(new)) for b, h in zip(self.blocks, views)]
            work.append((p, st, key))
        if self.fast and group.get("fast", True) and not sparse:  # returns what it can't run, and may store a plan
            work = kernels.run_group(self.blocks, views, work, cache, maximize, plans, id(group), group,
                                     **({} if acc is None else {"acc": acc}))
        for p, st, key in work:
            self._reference_step(p, st, cache[key], views, maximize, acc)
        self._finish_group(group, acc, ranks)

    def _finish_group(self, group: dict[str, Any], acc: list[dict[str, float]] | None = None,
                      ranks: tuple = (), stepped: bool = True) -> None:
        """The group's step is taken (``stepped``: on this rank; with ``ranks``, on any of them):
        count it, show the next scheduled values, fold the sums (added up over ``ranks``)."""
        if ranks:  # (FSDP2: lr="auto"'s shard groups; partitioned=True: the default group, every step)
            stepped = self._sum_over_ranks(group, acc or [], ranks, stepped)
            if not stepped:  # no rank had a gradient in the group: one process would pass it by
                return
        group["step"] += 1
        if group["schedules"]:
            self._apply_schedules(group)  # show the value the next step will use
        if acc is not None:
            for b, a in zip(self.blocks, acc):
                if b.sums:
                    b.finish(b.view(group), group, a)
            self._show_lr(group)

    # -- lr="auto" ---------------------------------------------------------------------------

    def _auto_lr(self, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        """``lr="auto"`` or ``lr=descend.auto(...)``: the chain with its learning rate estimated (see
        :class:`~descend.blocks.ScaleByAutoLearningRate`); returns the hyperparameters to use."""
        spec = hyperparameters.get("lr")
        if not isinstance(spec, str) and type(spec).__name__ != "Auto":
            return hyperparameters
        from descend.blocks import Auto  # the blocks module imports this one

        if isinstance(spec, str):
            if spec != "auto":
                raise ValueError(f"{self._name()}: invalid lr={spec!r}; expected a finite number >= 0, "
                                 "a schedule, or 'auto'")
            spec = Auto()
        try:
            self.blocks = spec.chain(self.blocks)
        except ValueError as e:
            raise ValueError(f"{self._name()}: {e}") from None
        # the estimate's settings, except those every block that reads them pins (a hand-built chain
        # may hold ScaleByAutoLearningRate(lr_adapt=0.3) already: the group then has no lr_adapt)
        read = {hp.name for b in self.blocks for hp in b.hyper if hp.name not in b.pinned}
        defaults = {k: v for k, v in spec.hyperparameters(self._auto_defaults(hyperparameters)).items()
                    if k in read}
        return {**defaults, **hyperparameters, "lr": "auto"}

    def _auto_defaults(self, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
        """This rule's own values for the ``descend.auto`` options left None (the constructor's
        ``hyperparameters`` given): none here; AdaGrad and RMSProp set ``adapt``, the rules with
        momentum ``adapt`` and ``cap`` (:func:`descend.optimizers._with_momentum`)."""
        return {}

    def _sum_blocks(self) -> bool:
        return any(b.sums for b in self.blocks)

    def _nonfinite(self, group: dict[str, Any], world: tuple = ()) -> bool:
        """Does any gradient of the group hold a NaN or ±inf? Over the whole tensors: where ranks hold
        shards (FSDP2), or partitions (``world``: partitioned=True), a NaN on one rank's part must skip
        the step on every rank, or their step counts part. (The test runs on this rank's own elements:
        ``torch.isfinite`` on a DTensor.)"""
        bad = not all(
            bool(torch.isfinite(p.grad._values() if p.grad.is_sparse else p.grad).all())
            for p in group["params"] if p.grad is not None
        )
        ranks = world or kernels.contract.shard_groups(group["params"])
        if ranks:
            (bad,) = _all_reduce([float(bad)], ranks, self._reduce_device(group), "max")
        return bool(bad)

    def _reduce_device(self, group: dict[str, Any]):
        """Where a group's collectives run: its tensors' device; for an empty partition
        (partitioned=True), that of this optimizer's other tensors, else the default backend's (NCCL:
        this rank's GPU), so that every rank reduces through the same backend."""
        for g in (group, *self.param_groups):
            if g["params"]:
                return g["params"][0].device
        import torch.distributed as dist

        cuda = "nccl" in str(dist.get_backend()) and torch.cuda.is_available()
        return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

    def _sum_over_ranks(self, group: dict[str, Any], acc: list[dict[str, float]], ranks: tuple,
                        stepped: bool = True) -> bool:
        """Each rank added up its own shards' elements; add those sums up over the process groups
        ``ranks`` (the mesh dimensions the group is sharded on), so that every rank folds the sums over
        the whole tensors, and they all keep one estimate. One all-reduce of a few float64 numbers per
        group step; a NaN on any rank reaches every rank, and every rank skips that step alike. (The
        kernel sums a DTensor's local shard; the reference's ``float(torch.sum(...))`` of a sharded
        DTensor is its Partial placement's local value, the same: tests/test_distributed.py checks
        both paths against one process.) The same all-reduce counts the ranks that ``stepped`` (had a
        gradient in the group); returns whether any did."""
        keys = [(a, k) for a in acc for k in a]
        *total, stepped = _all_reduce([a[k] for a, k in keys] + [float(stepped)], ranks, self._reduce_device(group),
                                      "sum")
        for (a, k), v in zip(keys, total):
            a[k] = v
        return stepped > 0

    def _new_sums(self) -> list[dict[str, float]] | None:
        """Zeroed accumulators for the blocks' per-group sums (None if no block keeps any)."""
        if not self._sum_blocks():
            return None
        return [dict.fromkeys(b.sums, 0.0) for b in self.blocks]

    def _show_lr(self, group: dict[str, Any]) -> None:
        """Write the estimated learning rate of the next step into ``group["lr"]`` (lr="auto")."""
        for b in self.blocks:
            shown = getattr(b, "lr_in_use", None)
            if shown is not None and "lr" not in b.pinned:
                group["lr"] = value = shown(b.view(group), group)
                self.__dict__.setdefault("_lr_shown", {})[id(group)] = value

    def _check_lr_shown(self, group: dict[str, Any]) -> None:
        shown = self.__dict__.get("_lr_shown", {}).get(id(group))
        if shown is not None and group["lr"] != shown and not self.__dict__.get("_warned_auto"):
            self._warned_auto = True
            warnings.warn(
                f"{self._name()}: group['lr'] was changed to {group['lr']!r} (by a torch LRScheduler?), but "
                "with lr='auto' it only shows the estimate, which is used; give the schedule's shape as "
                "lr=descend.auto(scale=schedule), as a scheduler descend.schedules.ScheduleLR(opt, schedule) "
                "(peak 1; HF Trainer makes a torch one when given none: pass optimizers=(opt, ScheduleLR(...))), "
                "or set group['lr_scale'].", RuntimeWarning, stacklevel=5)

    @contextlib.contextmanager
    def averaged(self):
        """``with opt.averaged(): evaluate(model)``: the parameters hold the average of the iterates
        (:class:`~descend.blocks.AverageIterates`; ``lr="auto"`` keeps one) inside the block and their own
        values again, bitwise, after it. A parameter that has not stepped yet keeps its value.
        Do not step inside the block.

        Under ZeroRedundancyOptimizer each rank's optimizer (``opt.optim``) holds only its partition,
        so ``opt.optim.averaged()`` swaps in the average of that partition and leaves this rank's
        copies of the other partitions at the current iterate. ZeRO's own (private)
        ``opt._sync_params()``, called inside the block and again after it, broadcasts every rank's
        partition: every rank then holds the whole average, and after the block its iterates again
        (tests/test_distributed.py checks both, bitwise on the way back)."""
        if self._itself() is not self:
            with self._itself().averaged():
                yield self
            return
        if not self._keeps_average():
            raise RuntimeError(f"{self._name()}.averaged(): this optimizer keeps no average of the "
                               "iterates; lr='auto' keeps one (unless average=False), or add "
                               "descend.blocks.AverageIterates() to the chain")
        pairs = [(p, self.state[p]["avg"]) for g in self.param_groups if not g.get("averaged_in")
                 for p in g["params"] if "avg" in self.state.get(p, {})]  # (after eval(): already in)
        with torch.no_grad():
            saved = [p.detach().clone(memory_format=torch.preserve_format) for p, _ in pairs]
            for p, a in pairs:
                p.copy_(a)
        try:
            yield self
        finally:
            with torch.no_grad():
                for (p, _), s in zip(pairs, saved):
                    p.copy_(s)

    def _keeps_average(self) -> bool:
        return keeps_average(self.blocks)

    def _itself(self) -> ChainOptimizer:
        """This optimizer, when a method is called through a wrapper that subclasses its class (Lightning's
        LightningOptimizer: ``self.optimizers().eval()``). There ``self`` is the wrapper, which forwards only
        the attributes it lacks, so a rule's class-level default blocks would shadow this optimizer's own
        chain (lr="auto"'s) and the call would silently do nothing: resolve to the optimizer it wraps."""
        inner = self.__dict__.get("_optimizer")
        return inner if isinstance(inner, ChainOptimizer) and inner is not self else self

    def train(self, mode: bool = True) -> ChainOptimizer:
        """``opt.train()`` / ``opt.eval()``: the evaluation switch that training loops call on an
        optimizer which has one (HF Trainer calls ``eval()`` before each evaluation and ``train()``
        before each training step, as for Schedule-Free). ``eval()`` swaps the average of the
        iterates (:class:`~descend.blocks.AverageIterates`, which ``lr="auto"`` keeps) into the
        parameters, bitwise, and keeps the iterates in the average's place; ``train()`` swaps them
        back. Each is a no-op when already in that mode, or when the chain keeps no average (a fixed
        lr). The mode is per parameter group (``group["averaged_in"]``, saved by ``state_dict``), so a
        checkpoint written in eval mode — the model's averaged weights and this state, together —
        resumes exactly after ``train()``. :meth:`step` refuses to run in eval mode (the gradient
        would have been taken at the average). Returns the optimizer.

        Under ZeroRedundancyOptimizer each rank's ``opt.optim`` swaps only its partition (as
        :meth:`averaged`): ZeRO's own ``_sync_params()`` then shares them."""
        if not isinstance(mode, bool):
            raise ValueError(f"{self._name()}.train(): invalid mode={mode!r}; expected True or False")
        if self._itself() is not self:
            self._itself().train(mode)
            return self
        if not self._keeps_average():
            return self
        with torch.no_grad():
            for group in self.param_groups:
                if bool(group.get("averaged_in")) == (not mode):
                    continue
                for p in group["params"]:
                    avg = self.state.get(p, {}).get("avg")
                    if avg is not None:  # a parameter that has not stepped yet has no average
                        held = p.detach().clone(memory_format=torch.preserve_format)
                        p.copy_(avg)
                        avg.copy_(held)
                if mode:
                    group.pop("averaged_in", None)
                else:
                    group["averaged_in"] = True
        return self

    def eval(self) -> ChainOptimizer:
        """``opt.train(False)``: the averaged weights in (see :meth:`train`)."""
        return self.train(False)

    def _apply_schedules(self, group: dict[str, Any], check_overwrite: bool = False) -> None:
        """Write the scheduled hyperparameters' values for the group's step into the group.

        Something else may have written one since (a torch LRScheduler attached to this optimizer):
        the schedule wins, and a warning says so once, instead of two schedules silently fighting.
        """
        written = self.__dict__.setdefault("_written", {})  # not pickled; ids are of live groups
        for k, spec in group["schedules"].items():
            key, value = (id(group), k), resolve(spec, group["step"])
            if (check_overwrite and key in written and group[k] != written[key] and group[k] != value
                    and not self.__dict__.get("_warned")):  # (a plateau fed by observe() writes `value`)
                self._warned = True
                warnings.warn(
                    f"{self._name()}: group[{k!r}] was changed to {group[k]!r} outside its schedule (by a torch "
                    f"LRScheduler?); the schedule's value is used. Give the schedule to the optimizer or wrap it "
                    f"in descend.schedules.ScheduleLR, not both.", RuntimeWarning, stacklevel=4)
            group[k] = written[key] = value

    def _reference_step(self, p, st, scal, views, maximize, acc=None) -> None:
        """The readable path: each block's ``apply`` on this one tensor.

        bfloat16/float16 tensors are computed in float32 and stored back rounded to nearest (as torch's
        fused optimizers and descend's kernels do): arithmetic in 8 or 11 bits would lose small updates."""
        as_real = torch.view_as_real if torch.is_complex(p) else (lambda t: t)  # complex: its real view
        g = as_real(p.grad)
        u = -g if maximize else g
        pv = as_real(p)
        low = pv.dtype in (torch.bfloat16, torch.float16)
        up = (lambda t: t.float()) if low else (lambda t: t)
        u, pu = up(u), up(pv)
        for i, (b, h, c) in enumerate(zip(self.blocks, views, scal)):
            s = {n: as_real(st[n]) for n in b.buffers(h)}
            su = {n: up(t) for n, t in s.items()}
            c = SimpleNamespace(**c)
            if b.sums:
                c.acc = acc[i]  # the group's sums for this step: apply adds into them
            if getattr(b, "reads_grad", False):
                c.g = up(-g if maximize else g)  # the gradient as the chain received it (C: ``g``)
            u = b.apply(u, pu, su, c)
            if low:
                for n, t in s.items():
                    t.copy_(su[n])
        if low:
            pv.copy_(pu.add_(u))
        else:
            pv.add_(u)

    def __repr__(self) -> str:
        lines = [f"{self._name()} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


ChainOptimizer.step.hooked = True  # tells torch.optim not to wrap it: step() wraps itself when needed


def _step_hooks_registered(opt: torch.optim.Optimizer) -> bool:
    """Is any torch.optim step hook registered, on this optimizer or globally?"""
    return bool(opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
                or getattr(_torch_optimizer, "_global_optimizer_pre_hooks", True)
                or getattr(_torch_optimizer, "_global_optimizer_post_hooks", True))
