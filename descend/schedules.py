r"""Learning-rate schedules: closed-form functions of the step, composable, resumable, plottable.

A schedule is a small immutable object with ``sched(step) -> float``; step 0 is the first optimizer
step. Give one to any descend optimizer wherever it takes a number::

    opt = descend.Momentum(model.parameters(), lr=warmup_cosine(0.1, 100, 1000), momentum=0.9)

The step counter is the optimizer's own (``group["step"]``), so step ``t`` uses η_t = sched(t), and
``state_dict()`` / ``load_state_dict()`` resume the schedule exactly; ``group["lr"]`` always shows the
value the next step will use. For a torch optimizer, :class:`ScheduleLR` wraps a schedule as a
``torch.optim.lr_scheduler.LRScheduler``.

The same words mean the same thing everywhere: ``init`` the value at step 0 of a decaying schedule,
``peak`` the top of a warm-up, ``start``/``end`` the first and last values, ``total_steps`` the length
of the whole schedule (warm-up included), ``warmup_steps`` the step at which the warm-up reaches
``peak``. After its ``total_steps`` a finite schedule stays at its last value.

=====================  =========================================================================
constant(v)            η_t = v
step                   η_t = η₀ γ^⌊t/s⌋                                     (torch StepLR)
multistep              η_t = η₀ γ^{#milestones ≤ t}                          (torch MultiStepLR)
exponential            η_t = η₀ γ^t                                           (torch ExponentialLR)
polynomial             η_t = (η₀ − η_end)(1 − min(t,T)/T)^p + η_end            (torch PolynomialLR)
linear                 η_t = η_s + (η_end − η_s)·min(t,T)/T                     (torch LinearLR)
inverse_sqrt           linear warm-up to η_peak at w, then η_peak √(w/t)        (Vaswani et al. 2017)
cosine                 η_t = η_end + (η₀ − η_end)(1 + cos(π min(t,T)/T))/2     (torch CosineAnnealingLR)
cosine_restarts        the cosine restarted every period, periods ×mult        (SGDR)
warmup_cosine          linear warm-up, then cosine to η_end at T
wsd                    warm-up, stable at η_peak, then a linear/cosine/√ decay (MiniCPM)
one_cycle              up then down (two or three phases)                      (torch OneCycleLR)
one_cycle_momentum     the matching momentum / β₁ cycle
join                   schedules one after another, each with its own step counter
reduce_on_plateau      divided by 1/factor when a metric stops improving        (torch ReduceLROnPlateau)
=====================  =========================================================================

:func:`observe` feeds a metric to the ``reduce_on_plateau`` schedules of an optimizer; :func:`plot`
draws a schedule; ``descend schedule NAME --param value ... --out FILE.png`` does it from the shell.
"""

from __future__ import annotations

import copy
import math
import numbers
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from descend.core import resolve

__all__ = [
    "Schedule", "constant", "step", "multistep", "exponential", "polynomial", "linear", "inverse_sqrt",
    "cosine", "cosine_restarts", "warmup_cosine", "wsd", "one_cycle", "one_cycle_momentum", "join",
    "reduce_on_plateau", "observe", "ScheduleLR", "plot", "REGISTRY", "create",
]


# --------------------------------------------------------------------------- validation


def _bad(owner: str, name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{owner}: invalid {name}={value!r}; expected {expected}")


def _int(owner: str, name: str, value: Any, lo: int, hi: int | None = None, hi_text: str = "") -> int:
    """An integer in [lo, hi] (hi_text says where hi comes from, e.g. 'total_steps - 1')."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok:
        ok = lo <= int(value) and (hi is None or int(value) <= hi)
    if not ok:
        rng = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi_text or hi}]" + (
            f" = [{lo}, {hi}]" if hi_text else "")
        raise _bad(owner, name, value, rng)
    return int(value)


_RANGES = {
    "real": ("a finite number", lambda x: True),
    "nonneg": ("a finite number >= 0", lambda x: x >= 0),
    "pos": ("a finite number > 0", lambda x: x > 0),
    "unit": ("a number in [0, 1)", lambda x: 0 <= x < 1),
    "open_unit": ("a number in (0, 1)", lambda x: 0 < x < 1),
}


def _real(owner: str, name: str, value: Any, kind: str = "real") -> float:
    text, ok = _RANGES[kind]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not ok(float(value)):
        raise _bad(owner, name, value, text)
    return float(value)


def _choice(owner: str, name: str, value: Any, options: Sequence[str]) -> str:
    if value not in options:
        raise _bad(owner, name, value, "one of " + ", ".join(repr(o) for o in options))
    return value


def _step_index(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"schedule: invalid step={step!r}; expected an integer >= 0 (0 is the first step)")
    return int(step)


def _set(obj: Any, **values: Any) -> None:
    """Store normalised values on a frozen dataclass."""
    for k, v in values.items():
        object.__setattr__(obj, k, v)


# --------------------------------------------------------------------------- the base


class Schedule:
    """A function of the step: ``sched(step) -> float``, step 0 being the first optimizer step.

    Subclasses implement ``_at(t)`` for a validated integer ``t >= 0`` and validate their parameters
    at construction. Any picklable callable of the step also works as a schedule in descend.
    """

    __slots__ = ()

    def __call__(self, step: int) -> float:
        return float(self._at(_step_index(step)))

    def _at(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def values(self, steps: int) -> list[float]:
        """``[sched(0), ..., sched(steps - 1)]``."""
        return [self(t) for t in range(_int(type(self).__name__, "steps", steps, 0))]


def _cos_anneal(start: float, end: float, pct: float) -> float:
    """From ``start`` (pct 0) to ``end`` (pct 1) along half a cosine."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _lin_anneal(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start


# --------------------------------------------------------------------------- constant and step decays


@dataclass(frozen=True)
class constant(Schedule):
    """η_t = value."""

    value: float

    def __post_init__(self):
        _set(self, value=_real("constant", "value", self.value))

    def _at(self, t):
        return self.value


@dataclass(frozen=True)
class step(Schedule):
    r"""Step decay: η_t = η₀ · γ^⌊t / step_size⌋ (torch.optim.lr_scheduler.StepLR).

    Args:
        init: η₀; step_size: steps between decays (>= 1); gamma: γ >= 0, the factor per decay.
    """

    init: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self):
        _set(self, init=_real("step", "init", self.init),
             step_size=_int("step", "step_size", self.step_size, 1),
             gamma=_real("step", "gamma", self.gamma, "nonneg"))

    def _at(self, t):
        return self.init * self.gamma ** (t // self.step_size)


@dataclass(frozen=True)
class multistep(Schedule):
    r"""Decay at milestones: η_t = η₀ · γ^{n(t)}, n(t) = the number of milestones ≤ t
    (a milestone listed twice counts twice), as torch.optim.lr_scheduler.MultiStepLR.

    Args:
        init: η₀; milestones: steps (>= 0) at which γ is applied; gamma: γ >= 0.
    """

    init: float
    milestones: tuple[int, ...]
    gamma: float = 0.1

    def __post_init__(self):
        if isinstance(self.milestones, (str, bytes)) or not isinstance(self.milestones, Sequence):
            raise _bad("multistep", "milestones", self.milestones, "a sequence of integers >= 0")
        ms = tuple(sorted(_int("multistep", f"milestones[{i}]", m, 0) for i, m in enumerate(self.milestones)))
        _set(self, init=_real("multistep", "init", self.init), milestones=ms,
             gamma=_real("multistep", "gamma", self.gamma, "nonneg"))

    def _at(self, t):
        return self.init * self.gamma ** bisect_right(self.milestones, t)


@dataclass(frozen=True)
class exponential(Schedule):
    r"""η_t = η₀ · γ^t (torch.optim.lr_scheduler.ExponentialLR). Args: init: η₀; gamma: γ >= 0."""

    init: float
    gamma: float

    def __post_init__(self):
        _set(self, init=_real("exponential", "init", self.init),
             gamma=_real("exponential", "gamma", self.gamma, "nonneg"))

    def _at(self, t):
        return self.init * self.gamma ** t


@dataclass(frozen=True)
class polynomial(Schedule):
    r"""Polynomial decay: η_t = (η₀ − η_end) · (1 − min(t, T)/T)^p + η_end.

    With ``end=0`` this is torch.optim.lr_scheduler.PolynomialLR(total_iters=T, power=p).

    Args:
        init: η₀; total_steps: T >= 1; power: p > 0; end: η_end, kept from step T on.
    """

    init: float
    total_steps: int
    power: float = 1.0
    end: float = 0.0

    def __post_init__(self):
        _set(self, init=_real("polynomial", "init", self.init),
             total_steps=_int("polynomial", "total_steps", self.total_steps, 1),
             power=_real("polynomial", "power", self.power, "pos"),
             end=_real("polynomial", "end", self.end))

    def _at(self, t):
        frac = 1.0 - min(self.total_steps, t) / self.total_steps
        return (self.init - self.end) * frac ** self.power + self.end


@dataclass(frozen=True)
class linear(Schedule):
    r"""Linear ramp: η_t = η_start + (η_end − η_start) · min(t, T)/T, then η_end.

    torch's LinearLR(start_factor=a, end_factor=b, total_iters=T) on base η is
    ``linear(a·η, b·η, T)``.

    Args:
        start: η at step 0; end: η from step T on; total_steps: T >= 1.
    """

    start: float
    end: float
    total_steps: int

    def __post_init__(self):
        _set(self, start=_real("linear", "start", self.start), end=_real("linear", "end", self.end),
             total_steps=_int("linear", "total_steps", self.total_steps, 1))

    def _at(self, t):
        return self.start + (self.end - self.start) * min(t, self.total_steps) / self.total_steps


@dataclass(frozen=True)
class inverse_sqrt(Schedule):
    r"""Warm-up then inverse square root: η_t = η_s + (η_peak − η_s) t/w for t < w,
    η_t = η_peak · √(w / t) for t >= w (the Transformer's schedule, Vaswani et al. 2017, §5.3,
    with the peak as the parameter instead of d_model^−½).

    Args:
        peak: η_peak, reached at step w; warmup_steps: w >= 1; start: η at step 0 (default 0).
    """

    peak: float
    warmup_steps: int
    start: float = 0.0

    def __post_init__(self):
        _set(self, peak=_real("inverse_sqrt", "peak", self.peak),
             warmup_steps=_int("inverse_sqrt", "warmup_steps", self.warmup_steps, 1),
             start=_real("inverse_sqrt", "start", self.start))

    def _at(self, t):
        w = self.warmup_steps
        if t < w:
            return self.start + (self.peak - self.start) * t / w
        return self.peak * math.sqrt(w / t)


# --------------------------------------------------------------------------- cosines


@dataclass(frozen=True)
class cosine(Schedule):
    r"""Cosine annealing: η_t = η_end + (η₀ − η_end) · (1 + cos(π · min(t, T)/T)) / 2.

    Equals torch.optim.lr_scheduler.CosineAnnealingLR(T_max=T, eta_min=η_end) for t <= T; after T
    it stays at η_end (torch's would rise again).

    Args:
        init: η₀; total_steps: T >= 1; end: η_end.

    Source: Loshchilov & Hutter (2017), "SGDR", eq. 5 without restarts.
    """

    init: float
    total_steps: int
    end: float = 0.0

    def __post_init__(self):
        _set(self, init=_real("cosine", "init", self.init),
             total_steps=_int("cosine", "total_steps", self.total_steps, 1),
             end=_real("cosine", "end", self.end))

    def _at(self, t):
        t = min(t, self.total_steps)
        return self.end + (self.init - self.end) * (1 + math.cos(math.pi * t / self.total_steps)) / 2


@dataclass(frozen=True)
class cosine_restarts(Schedule):
    r"""SGDR: cosine from η₀ to η_end over a period T_i, then restart at η₀ with T_{i+1} = mult · T_i:
    η_t = η_end + (η₀ − η_end)(1 + cos(π t_cur / T_i))/2, t_cur the steps since the last restart.
    Equals torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(T_0=period, T_mult=mult).

    Args:
        init: η₀; period: T_0 >= 1; mult: integer >= 1; end: η_end.

    Source: Loshchilov & Hutter (2017), "SGDR: Stochastic Gradient Descent with Warm Restarts", eq. 5.
    """

    init: float
    period: int
    mult: int = 1
    end: float = 0.0

    def __post_init__(self):
        _set(self, init=_real("cosine_restarts", "init", self.init),
             period=_int("cosine_restarts", "period", self.period, 1),
             mult=_int("cosine_restarts", "mult", self.mult, 1),
             end=_real("cosine_restarts", "end", self.end))

    def _at(self, t):
        length = self.period
        if self.mult == 1:
            t = t % length
        else:
            while t >= length:  # exact integer walk over the periods: O(log t) iterations
                t -= length
                length *= self.mult
        return self.end + (self.init - self.end) * (1 + math.cos(math.pi * t / length)) / 2


@dataclass(frozen=True)
class warmup_cosine(Schedule):
    r"""Linear warm-up then cosine decay (the nanoGPT / BERT-style schedule)::

        t < w:        η_t = η_s + (η_peak − η_s) · t / w                    # warm-up
        w <= t < T:   η_t = η_end + (η_peak − η_end)(1 + cos(π (t − w)/(T − w)))/2   # decay
        t >= T:       η_t = η_end

    Args:
        peak: η_peak, reached at step w; warmup_steps: w in [0, T − 1];
        total_steps: T, the whole schedule including the warm-up; start: η_s; end: η_end.

    Source: Goyal et al. (2017) for the warm-up; Loshchilov & Hutter (2017) for the cosine.
    """

    peak: float
    warmup_steps: int
    total_steps: int
    start: float = 0.0
    end: float = 0.0

    def __post_init__(self):
        n = "warmup_cosine"
        total = _int(n, "total_steps", self.total_steps, 1)
        _set(self, peak=_real(n, "peak", self.peak), total_steps=total,
             warmup_steps=_int(n, "warmup_steps", self.warmup_steps, 0, total - 1, "total_steps - 1"),
             start=_real(n, "start", self.start), end=_real(n, "end", self.end))

    def _at(self, t):
        w, total = self.warmup_steps, self.total_steps
        if t < w:
            return self.start + (self.peak - self.start) * t / w
        return _cos_anneal(self.peak, self.end, min(t - w, total - w) / (total - w))


_DECAYS = ("linear", "cosine", "sqrt")


@dataclass(frozen=True)
class wsd(Schedule):
    r"""Warm-up, stable, decay (the trapezoid)::

        t < w:              η_t = η_s + (η_peak − η_s) · t / w
        w <= t < w + s:     η_t = η_peak
        then, x = min(t − w − s, d) / d:
            "linear":       η_t = η_peak + (η_end − η_peak) · x
            "cosine":       η_t = η_end + (η_peak − η_end)(1 + cos(π x))/2
            "sqrt":         η_t = η_end + (η_peak − η_end)(1 − √x)

    Args:
        peak: η_peak; warmup_steps: w >= 0; stable_steps: s >= 0; decay_steps: d >= 1;
        start: η_s; end: η_end (reached at step w + s + d and kept); decay: the decay's shape.

    Source: Hu et al. (2024), "MiniCPM", §4.1; Hägele et al. (2024), "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations" (the 1 − √x cool-down).
    """

    peak: float
    warmup_steps: int
    stable_steps: int
    decay_steps: int
    start: float = 0.0
    end: float = 0.0
    decay: str = "linear"

    def __post_init__(self):
        _set(self, peak=_real("wsd", "peak", self.peak),
             warmup_steps=_int("wsd", "warmup_steps", self.warmup_steps, 0),
             stable_steps=_int("wsd", "stable_steps", self.stable_steps, 0),
             decay_steps=_int("wsd", "decay_steps", self.decay_steps, 1),
             start=_real("wsd", "start", self.start), end=_real("wsd", "end", self.end),
             decay=_choice("wsd", "decay", self.decay, _DECAYS))

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.stable_steps + self.decay_steps

    def _at(self, t):
        w, s, d = self.warmup_steps, self.stable_steps, self.decay_steps
        if t < w:
            return self.start + (self.peak - self.start) * t / w
        if t < w + s:
            return self.peak
        x = min(t - w - s, d) / d
        if self.decay == "linear":
            return self.peak + (self.end - self.peak) * x
        if self.decay == "cosine":
            return _cos_anneal(self.peak, self.end, x)
        return self.end + (self.peak - self.end) * (1.0 - math.sqrt(x))


# --------------------------------------------------------------------------- one cycle


def _one_cycle_phases(owner: str, total_steps: Any, pct_start: Any, anneal: Any, three_phase: Any):
    """Validate the shared one-cycle arguments; return them normalised."""
    n = _int(owner, "total_steps", total_steps, 2)
    if not isinstance(three_phase, bool):
        raise _bad(owner, "three_phase", three_phase, "True or False")
    # every phase must last longer than zero steps (torch would divide by zero)
    hi = (n + 1) / (2 * n) if three_phase else 1.0
    p = pct_start
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not (1.0 / n < p < hi):
        raise _bad(owner, "pct_start", p, f"a number in (1/total_steps, {'(total_steps+1)/(2·total_steps)' if three_phase else '1'})"
                   f" = ({1.0 / n:.6g}, {hi:.6g})")
    return n, float(p), _choice(owner, "anneal", anneal, ("cos", "linear")), three_phase


def _one_cycle_at(t: int, n: int, pct_start: float, three_phase: bool, points: Sequence[float], anneal: str):
    """torch.optim.lr_scheduler.OneCycleLR's interpolation between ``points`` (one per phase boundary):
    phase ends at step pct·n − 1 (and 2·pct·n − 2 with three phases) and n − 1; after n − 1 the last
    value is kept."""
    ends = [pct_start * n - 1, n - 1.0] if not three_phase else [pct_start * n - 1, 2 * pct_start * n - 2, n - 1.0]
    t = min(t, n - 1)
    begin = 0.0
    for i, end in enumerate(ends):
        if t <= end or i == len(ends) - 1:
            pct = (t - begin) / (end - begin)
            f = _cos_anneal if anneal == "cos" else _lin_anneal
            return f(points[i], points[i + 1], pct)
        begin = end
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class one_cycle(Schedule):
    r"""The 1cycle policy (torch.optim.lr_scheduler.OneCycleLR): from η_max/div_factor up to η_max over
    the first ``pct_start`` of the steps, then down to η_max/(div_factor·final_div_factor).
    With ``three_phase`` it comes back down to η_max/div_factor symmetrically first, then anneals to
    the minimum. ``anneal`` is "cos" (half cosines) or "linear". The matching momentum (β₁) cycle is
    :meth:`momentum`.

    Args:
        max_lr: η_max; total_steps: the number of optimizer steps (>= 2); pct_start: fraction of the
        steps spent rising; div_factor, final_div_factor: > 0; anneal; three_phase.

    Source: Smith & Topin (2019), "Super-convergence"; Smith (2018), "A disciplined approach to neural
    network hyper-parameters: Part 1".
    """

    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    anneal: str = "cos"
    three_phase: bool = False

    def __post_init__(self):
        n, p, a, three = _one_cycle_phases("one_cycle", self.total_steps, self.pct_start, self.anneal,
                                           self.three_phase)
        _set(self, max_lr=_real("one_cycle", "max_lr", self.max_lr, "nonneg"), total_steps=n, pct_start=p,
             div_factor=_real("one_cycle", "div_factor", self.div_factor, "pos"),
             final_div_factor=_real("one_cycle", "final_div_factor", self.final_div_factor, "pos"),
             anneal=a, three_phase=three)

    def _at(self, t):
        initial = self.max_lr / self.div_factor
        low = initial / self.final_div_factor
        points = (initial, self.max_lr, initial, low) if self.three_phase else (initial, self.max_lr, low)
        return _one_cycle_at(t, self.total_steps, self.pct_start, self.three_phase, points, self.anneal)

    def momentum(self, base_momentum: float = 0.85, max_momentum: float = 0.95) -> one_cycle_momentum:
        """The momentum (or β₁) cycle that goes with this learning-rate cycle (same phases)."""
        return one_cycle_momentum(self.total_steps, self.pct_start, base_momentum, max_momentum,
                                  self.anneal, self.three_phase)


@dataclass(frozen=True)
class one_cycle_momentum(Schedule):
    r"""The momentum (γ, or Adam's β₁) half of the 1cycle policy, as OneCycleLR(cycle_momentum=True):
    from max_momentum down to base_momentum while the learning rate rises, back up while it falls
    (with three phases: down, up, then flat at max_momentum).

    Use it as ``descend.SGD(..., momentum=m)`` or ``descend.Adam(..., betas=(m, 0.999))``.

    Args:
        total_steps, pct_start, anneal, three_phase: as for :class:`one_cycle`;
        base_momentum, max_momentum: the low and high values, in [0, 1).
    """

    total_steps: int
    pct_start: float = 0.3
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    anneal: str = "cos"
    three_phase: bool = False

    def __post_init__(self):
        n, p, a, three = _one_cycle_phases("one_cycle_momentum", self.total_steps, self.pct_start,
                                           self.anneal, self.three_phase)
        _set(self, total_steps=n, pct_start=p, anneal=a, three_phase=three,
             base_momentum=_real("one_cycle_momentum", "base_momentum", self.base_momentum, "unit"),
             max_momentum=_real("one_cycle_momentum", "max_momentum", self.max_momentum, "unit"))

    def _at(self, t):
        lo, hi = self.base_momentum, self.max_momentum
        points = (hi, lo, hi, hi) if self.three_phase else (hi, lo, hi)
        return _one_cycle_at(t, self.total_steps, self.pct_start, self.three_phase, points, self.anneal)


# --------------------------------------------------------------------------- reduce on plateau


class reduce_on_plateau(Schedule):
    r"""η multiplied by ``factor`` when a metric has not improved for more than ``patience``
    observations (torch.optim.lr_scheduler.ReduceLROnPlateau, for one value).

    The one schedule that is not a closed form of the step: its value is the current reduced value,
    a function of the metrics seen so far. Feed it through the optimizer with
    ``observe(optimizer, metric)``: the optimizer's ``state_dict`` holds a copy of it, and
    ``load_state_dict`` installs a new copy, so a reference you kept to the object you passed in no
    longer drives that optimizer after a load (``observe`` always finds the one in force).
    ``sched.observe(metric)`` feeds one object directly. Its state (current value, best metric, bad
    observations, cooldown) lives in the object, so it is saved and restored with the optimizer.

    Rule, per observed metric m: m improves on the best if m < best·(1 − threshold) ("min", "rel"),
    m < best − threshold ("min", "abs"), m > best·(1 + threshold) ("max", "rel") or
    m > best + threshold ("max", "abs"); otherwise it is a bad observation. During a cooldown bad
    observations are not counted. When more than ``patience`` are counted, η ← max(η·factor, min_value)
    (only if that lowers η by more than ``eps``) and a cooldown of ``cooldown`` observations starts.

    Args:
        init: η before any reduction; factor: in [0, 1); patience, cooldown: integers >= 0;
        threshold: >= 0; mode: "min" or "max"; min_value: the floor; threshold_mode: "rel" or "abs";
        eps: the smallest change applied.
    """

    _CONFIG = ("init", "factor", "patience", "threshold", "mode", "cooldown", "min_value", "threshold_mode", "eps")
    _STATE = ("value", "best", "num_bad", "cooldown_counter", "observations")

    def __init__(self, init: float, factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                 mode: str = "min", cooldown: int = 0, min_value: float = 0.0, threshold_mode: str = "rel",
                 eps: float = 1e-8) -> None:
        n = "reduce_on_plateau"
        self.init = _real(n, "init", init)
        self.factor = _real(n, "factor", factor, "unit")
        self.patience = _int(n, "patience", patience, 0)
        self.threshold = _real(n, "threshold", threshold, "nonneg")
        self.mode = _choice(n, "mode", mode, ("min", "max"))
        self.cooldown = _int(n, "cooldown", cooldown, 0)
        self.min_value = _real(n, "min_value", min_value)
        self.threshold_mode = _choice(n, "threshold_mode", threshold_mode, ("rel", "abs"))
        self.eps = _real(n, "eps", eps, "nonneg")
        self.value = self.init
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad = 0
        self.cooldown_counter = 0
        self.observations = 0

    def _at(self, t):
        return self.value

    def _improves(self, m: float) -> bool:
        b, th = self.best, self.threshold
        if self.mode == "min":
            return m < (b * (1.0 - th) if self.threshold_mode == "rel" else b - th)
        return m > (b * (th + 1.0) if self.threshold_mode == "rel" else b + th)

    def observe(self, metric: Any) -> float:
        """Take one metric value (a number or a one-element tensor); return the value now in force."""
        m = float(metric)
        self.observations += 1
        if self._improves(m):
            self.best, self.num_bad = m, 0
        else:
            self.num_bad += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad = 0  # bad observations during a cooldown do not count
        if self.num_bad > self.patience:
            new = max(self.value * self.factor, self.min_value)
            if self.value - new > self.eps:
                self.value = new
            self.cooldown_counter, self.num_bad = self.cooldown, 0
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [k for k in self._STATE if k not in state]
        if missing:
            raise ValueError(f"reduce_on_plateau.load_state_dict: missing {missing}")
        for k in self._STATE:
            setattr(self, k, state[k])

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self._CONFIG + self._STATE)

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._CONFIG)
        return (f"reduce_on_plateau({cfg})[value={self.value!r}, best={self.best!r}, bad={self.num_bad}, "
                f"cooldown={self.cooldown_counter}]")


# --------------------------------------------------------------------------- composition


def _as_schedule(owner: str, name: str, s: Any) -> Callable[[int], float]:
    if isinstance(s, numbers.Real) and not isinstance(s, bool):
        return constant(s)
    if callable(s) and not isinstance(s, (torch.Tensor, type)):
        return s
    raise _bad(owner, name, s, "a schedule (a callable of the step) or a number")


@dataclass(frozen=True)
class join(Schedule):
    r"""Schedules one after another: schedule i runs on [boundaries[i−1], boundaries[i]) with its own
    step counted from 0 there (boundaries[−1] = 0). E.g. warm-up then a plateau schedule::

        join([linear(0.0, 0.1, 500), reduce_on_plateau(0.1, patience=3)], [500])

    Args:
        schedules: n >= 1 schedules (numbers become :class:`constant`);
        boundaries: n − 1 strictly increasing integers >= 1.
    """

    schedules: tuple
    boundaries: tuple[int, ...]

    def __post_init__(self):
        if isinstance(self.schedules, (str, bytes)) or not isinstance(self.schedules, Sequence) \
                or len(self.schedules) == 0:
            raise _bad("join", "schedules", self.schedules, "a non-empty sequence of schedules")
        scheds = tuple(_as_schedule("join", f"schedules[{i}]", s) for i, s in enumerate(self.schedules))
        need = len(scheds) - 1
        b = self.boundaries
        expected = f"{need} strictly increasing integer(s) >= 1 (one fewer than the {len(scheds)} schedules)"
        if isinstance(b, (str, bytes)) or not isinstance(b, Sequence) or len(b) != need:
            raise _bad("join", "boundaries", b, expected)
        for i, x in enumerate(b):
            lo = 1 if i == 0 else b[i - 1] + 1
            if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < lo:
                raise _bad("join", "boundaries", b, expected)
        _set(self, schedules=scheds, boundaries=tuple(int(x) for x in b))

    def piece(self, t: int) -> tuple[int, int]:
        """(index of the schedule in force at step t, its local step)."""
        i = bisect_right(self.boundaries, t)
        return i, t - (self.boundaries[i - 1] if i else 0)

    def _at(self, t):
        i, local = self.piece(t)
        return self.schedules[i](local)


# --------------------------------------------------------------------------- feeding plateaus


def _plateaus(spec: Any, t: int | None):
    """The reduce_on_plateau objects in ``spec``: all of them (t None) or those in force at step t."""
    if isinstance(spec, reduce_on_plateau):
        yield spec
    elif isinstance(spec, join):
        if t is None:
            for s in spec.schedules:
                yield from _plateaus(s, None)
        else:
            i, local = spec.piece(t)
            yield from _plateaus(spec.schedules[i], local)
    elif isinstance(spec, (tuple, list)):
        for s in spec:
            yield from _plateaus(s, t)


def observe(target: Any, metric: Any) -> None:
    """Feed ``metric`` to every :class:`reduce_on_plateau` in force in ``target``.

    ``target`` is a descend optimizer (its groups' schedules, also inside :class:`join`, at the step
    the next optimizer step will use), a :class:`ScheduleLR`, or one ``reduce_on_plateau``. A plateau
    inside a ``join`` that is not in force yet (e.g. during a warm-up) does not see the metric. Each
    object is fed once even if several groups share it; afterwards ``group["lr"]`` (or the scheduled
    key) shows the new value.

    Raises:
        ValueError: if ``target`` holds no reduce_on_plateau schedule at all.
    """
    if isinstance(target, reduce_on_plateau):
        target.observe(metric)
        return
    if isinstance(target, ScheduleLR):
        specs = [(None, s, target.last_epoch) for s in target.schedules]
    elif isinstance(target, torch.optim.Optimizer):
        specs = [(g, g.get("schedules", {}), g.get("step", 0)) for g in target.param_groups]
    else:
        raise TypeError(f"observe: expected a descend optimizer, a ScheduleLR or a reduce_on_plateau, "
                        f"got {type(target).__name__}")
    everything = [p for _, spec, _ in specs for p in _plateaus(
        list(spec.values()) if isinstance(spec, Mapping) else spec, None)]
    if not everything:
        raise ValueError(f"observe: {type(target).__name__} has no reduce_on_plateau schedule to feed")
    m = float(metric)
    seen: set[int] = set()
    for _, spec, t in specs:
        for p in _plateaus(list(spec.values()) if isinstance(spec, Mapping) else spec, t):
            if id(p) not in seen:
                seen.add(id(p))
                p.observe(m)
    if isinstance(target, ScheduleLR):
        target._apply()
    else:
        for g, spec, t in specs:
            for k, s in spec.items():
                g[k] = resolve(s, t)


# --------------------------------------------------------------------------- torch adapter


class ScheduleLR(torch.optim.lr_scheduler.LRScheduler):
    r"""A schedule as a ``torch.optim.lr_scheduler.LRScheduler``, for any torch optimizer.

    After k calls of ``scheduler.step()`` the groups' ``lr`` is ``sched(k)``: the value optimizer
    step k (0-based) uses, as torch's own schedulers. ``state_dict()`` holds the step and a copy of
    the schedules (with any plateau state); ``load_state_dict`` resumes exactly and writes the
    resumed values into the optimizer.

    On a descend optimizer with ``lr="auto"`` the schedule is the *shape* that multiplies the
    estimate (peak 1, as ``descend.auto(scale=schedule)``, with the same steps): it goes into each
    group's ``lr_scale``, and ``group["lr"]`` and :meth:`get_last_lr` show the rate in use, the
    estimate times the shape. So a training loop that drives a scheduler object (HF Trainer's
    ``optimizers=(opt, scheduler)``, Lightning's ``configure_optimizers``) shapes the estimate and
    logs the rate in use. (A torch scheduler cannot: it writes ``group["lr"]``, which lr="auto" only
    shows, and its base rate would be the estimate before the first step, 0.) Under
    ZeroRedundancyOptimizer (``partitioned=True``) the shape reaches each rank's optimizer at its next
    step, and ``get_last_lr()`` shows the rate of the step before until then.

    Args:
        optimizer: any torch.optim.Optimizer.
        schedule: one schedule for every group, or a list with one per group.
        momentum: optional schedule (or list) for the groups' ``momentum``, or β₁ of ``betas``
            (e.g. :func:`one_cycle_momentum`).
        last_epoch: as for torch schedulers (-1 to start).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Any, momentum: Any = None,
                 last_epoch: int = -1) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"ScheduleLR: {type(optimizer).__name__} is not a torch.optim.Optimizer")
        n = len(optimizer.param_groups)
        self.schedules = self._per_group("schedule", schedule, n)
        self.momentum_schedules = None if momentum is None else self._per_group("momentum", momentum, n)
        from descend.blocks import estimates_lr

        for i, g in enumerate(optimizer.param_groups):
            key = "lr_scale" if estimates_lr(g) else "lr"
            if key in g.get("schedules", {}):
                raise ValueError(f"ScheduleLR: group {i}'s {key} is already a descend schedule; "
                                 "give the schedule to the optimizer or to ScheduleLR, not both")
            if self.momentum_schedules is not None and "momentum" not in g and "betas" not in g:
                raise ValueError(f"ScheduleLR: invalid momentum for group {i}; the optimizer has "
                                 "neither 'momentum' nor 'betas'")
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _per_group(name: str, value: Any, n: int) -> list:
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise _bad("ScheduleLR", name, value, f"one schedule or a list of {n} (one per group)")
            return [_as_schedule("ScheduleLR", f"{name}[{i}]", s) for i, s in enumerate(value)]
        return [_as_schedule("ScheduleLR", name, value)] * n

    def get_lr(self) -> list[float]:
        t = max(self.last_epoch, 0)
        if self.momentum_schedules is not None:
            for g, m in zip(self.optimizer.param_groups, self.momentum_schedules):
                if "momentum" in g:
                    g["momentum"] = float(m(t))
                else:
                    g["betas"] = (float(m(t)), *tuple(g["betas"])[1:])
        return [float(s(t)) for s in self.schedules]

    _get_closed_form_lr = get_lr

    def step(self, epoch: int | None = None) -> None:
        shown = [g.get("lr") for g in self.optimizer.param_groups]
        super().step(epoch)
        self._to_auto_groups(shown)

    def _apply(self) -> None:
        shown = [g.get("lr") for g in self.optimizer.param_groups]
        for g, lr in zip(self.optimizer.param_groups, self.get_lr()):
            g["lr"] = lr
        self._to_auto_groups(shown)

    def _to_auto_groups(self, shown: list) -> None:
        """An lr="auto" group (its rate estimated) takes the value just written into its
        ``lr`` as ``lr_scale`` and shows the rate in use again (``shown``: what its ``lr`` held
        before); then record what the groups show."""
        from descend.blocks import estimates_lr

        show = getattr(self.optimizer, "_show_lr", None)
        for g, before in zip(self.optimizer.param_groups, shown):
            if estimates_lr(g):
                g["lr_scale"] = float(g["lr"])
                if show is not None:
                    show(g)
                else:  # a wrapper that copies its groups' keys into a descend optimizer's
                    g["lr"] = before  # (ZeroRedundancyOptimizer): that one shows the new rate at its step
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["schedules"] = copy.deepcopy(self.schedules)
        sd["momentum_schedules"] = copy.deepcopy(self.momentum_schedules)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        for k in ("schedules", "momentum_schedules"):
            if k in sd:
                sd[k] = copy.deepcopy(sd[k])
        if sd.get("schedules") is not None and len(sd["schedules"]) != len(self.optimizer.param_groups):
            raise ValueError(f"ScheduleLR.load_state_dict: the state has {len(sd['schedules'])} schedule(s), "
                             f"the optimizer {len(self.optimizer.param_groups)} group(s)")
        super().load_state_dict(sd)
        self._apply()


# --------------------------------------------------------------------------- by name, plots, the CLI

#: name → schedule class, for :func:`create` and the command line.
REGISTRY: dict[str, type] = {c.__name__: c for c in (
    constant, step, multistep, exponential, polynomial, linear, inverse_sqrt, cosine, cosine_restarts,
    warmup_cosine, wsd, one_cycle, one_cycle_momentum, join, reduce_on_plateau)}


# Checkpoints hold schedules (an optimizer's state_dict carries them): let torch.load's default
# weights_only unpickler rebuild these plain-data classes, so `torch.load(path)` works unchanged.
torch.serialization.add_safe_globals(list(REGISTRY.values()))


def create(name: str, **params: Any) -> Schedule:
    """Build a schedule by name, e.g. ``create("wsd", peak=1e-3, warmup_steps=100, ...)``."""
    cls = REGISTRY.get(str(name).lower())
    if cls is None:
        raise ValueError(f"unknown schedule {name!r}; valid names: {', '.join(REGISTRY)}")
    return cls(**params)


def _length(s: Any) -> int | None:
    """A natural number of steps to show ``s`` over, if it has one."""
    if hasattr(s, "total_steps"):  # one past the end, to show the final value (one-cycle ends at n − 1)
        return int(s.total_steps) + (0 if isinstance(s, (one_cycle, one_cycle_momentum)) else 1)
    if isinstance(s, cosine_restarts):
        return s.period * (1 + s.mult + s.mult ** 2) + 1
    if isinstance(s, step):
        return 4 * s.step_size
    if isinstance(s, multistep) and s.milestones:
        return s.milestones[-1] + max(1, s.milestones[-1] // 4)
    if isinstance(s, inverse_sqrt):
        return 10 * s.warmup_steps
    return None


def _landmarks(s: Any) -> list[int]:
    """Steps where ``s`` changes phase (end of warm-up, of the stable phase, the end...)."""
    if isinstance(s, wsd):
        return [s.warmup_steps, s.warmup_steps + s.stable_steps, s.total_steps]
    if isinstance(s, warmup_cosine):
        return [s.warmup_steps, s.total_steps]
    if isinstance(s, (one_cycle, one_cycle_momentum)):
        up = math.ceil(s.pct_start * s.total_steps - 1)
        return [up, 2 * up] if s.three_phase else [up]
    if isinstance(s, inverse_sqrt):
        return [s.warmup_steps]
    if isinstance(s, multistep):
        return list(s.milestones)
    if isinstance(s, join):
        return list(s.boundaries)
    return [s.total_steps] if hasattr(s, "total_steps") else []


def _phase_names(s: Any) -> list[str]:
    """Names of the phase boundaries :func:`_landmarks` returns, in the same order."""
    if isinstance(s, wsd):
        return ["warm-up ends", "decay starts", "end"]
    if isinstance(s, warmup_cosine):
        return ["warm-up ends", "end"]
    if isinstance(s, (one_cycle, one_cycle_momentum)):
        return ["peak", "back at the start"] if s.three_phase else ["peak"]
    if isinstance(s, inverse_sqrt):
        return ["warm-up ends"]
    if isinstance(s, multistep):
        return [f"×{s.gamma:g}"] * len(s.milestones)
    if isinstance(s, join):
        return [f"schedule {i + 2}" for i in range(len(s.boundaries))]
    return ["end"] * len(_landmarks(s))


def describe(s: Any, width: int = 90) -> str:
    """A short readable title: the name and the settings that differ from the defaults, in at most two lines."""
    import dataclasses
    import textwrap

    if not dataclasses.is_dataclass(s):
        name = type(s).__name__
        if isinstance(s, reduce_on_plateau):
            return f"reduce_on_plateau: init={s.init:g}, factor={s.factor:g}, patience={s.patience}"
        return getattr(s, "__name__", name)
    parts = []
    for f in dataclasses.fields(s):
        v = getattr(s, f.name)
        if f.default is not dataclasses.MISSING and v == f.default:
            continue
        if isinstance(v, float):
            v = f"{v:g}"
        elif isinstance(v, tuple) and all(isinstance(x, (int, float)) for x in v):
            v = ",".join(f"{x:g}" for x in v)
        elif isinstance(v, tuple):
            v = f"{len(v)} schedules"
        parts.append(f"{f.name}={v}")
    return "\n".join(textwrap.wrap(f"{type(s).__name__}: " + ", ".join(parts), width)[:2])


def plot(schedule: Any, total_steps: int, *, out: str | None = None, title: str | None = None,
         ax: Any = None, logy: bool = False):
    """Draw ``schedule`` (or a mapping label → schedule) over steps 0 … total_steps − 1.

    Uses matplotlib's object API with the Agg canvas, so it works without a display.

    Args:
        schedule: a schedule, or a dict of label → schedule drawn together.
        total_steps: how many steps to draw (>= 1).
        out: if given, the figure is saved there (e.g. a .png).
        title: the figure title (default: :func:`describe` — the name and the non-default settings).
        ax: draw into this matplotlib Axes instead of a new figure.
        logy: logarithmic value axis.

    Returns:
        the matplotlib Figure.
    """
    n = _int("plot", "total_steps", total_steps, 1)
    items = dict(schedule) if isinstance(schedule, Mapping) else {None: schedule}
    for label, s in items.items():
        _as_schedule("plot", "schedule" if label is None else f"schedule[{label!r}]", s)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=(7, 3.6), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    steps = list(range(n))
    for label, s in items.items():
        ax.plot(steps, [float(s(t)) for t in steps], lw=1.8, label=label)
    ax.set_xlabel("step t (0 = the first optimizer step)")
    ax.set_ylabel(r"value $\eta_t$")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(items) > 1 or next(iter(items)) is not None:
        ax.legend()
    if len(items) == 1:  # the phase boundaries (end of warm-up, start of decay, ...), dotted and named
        only = next(iter(items.values()))
        marks = [(t, name) for t, name in zip(_landmarks(only), _phase_names(only)) if 0 < t < n]
        for t, _ in marks:
            ax.axvline(t, color="0.35", ls=":", lw=1.1, zorder=1)
        if marks:  # named on a second x axis along the top, clear of the curve
            top = ax.secondary_xaxis("top")
            top.set_xticks([t for t, _ in marks], [f"{name}\nt={t}" for t, name in marks], fontsize=7, color="0.3")
            top.tick_params(length=3, color="0.5")
    if title is None and len(items) == 1:
        title = describe(next(iter(items.values())))
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    if out is not None:
        fig.savefig(out)
    return fig
