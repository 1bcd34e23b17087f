r"""The learning-rate range test (Smith 2017, §3.3; popularised by fastai's ``lr_find``).

Train for ``num_steps`` steps while the learning rate grows exponentially from ``start_lr`` to
``end_lr``,

    η_i = η_start · (η_end / η_start)^{i / (N − 1)},   i = 0 … N − 1,

record each step's loss ℓ_i, smooth it with a debiased exponential moving average,

    a_i = β a_{i−1} + (1 − β) ℓ_i,   ℓ̄_i = a_i / (1 − β^{i+1}),

and stop early once ℓ̄_i > ``diverge_factor`` × min_{j≤i} ℓ̄_j (or a loss is NaN/inf): past that
point larger rates only blow up. The model and the optimizer are then restored *exactly* (parameter
and buffer values, optimizer state, hyperparameters, schedules, and the parameters' ``.grad``), so
the finder can be run on the model you are about to train.

Suggestion rules (the result says which one it used), read off a *centred* smoothing of the
losses (:func:`centred_smoothing`, β_c = 0.7: symmetric, so it does not lag; the blow-up at the end
capped at the stopping level first) and ignoring the sweep's first tenth (too few batches to tell
noise from progress):

* ``"min10"`` (default): the η at the minimum, divided by 10. On a *flat start* — the minimum is
  not even 1% below the level where the search begins — the lowest point is noise, so the rule
  takes the largest η before the loss rose above that level, ÷ 10.
* ``"steepest"``: the η where the smoothed loss falls fastest, min over i of dℓ̄/d log η (central
  differences), looked for between the first tenth of the sweep and the minimum.

For a rule with η inside the velocity (descend's Momentum, Nesterov) the suggestion is multiplied
by (1 − γ)/(1 − γ/r) (:func:`velocity_factor`): the sweep's growing rate builds a smaller velocity
than the same rate held fixed.

How reliable it is: measured by the tuning harness (scripts/tuning_table.py: lr_find on each seed's
fresh model, one run at the suggestion, against each rule's 8-point grid; the table is in the
README). Before these changes (the online average's minimum ÷ 10; scripts/check_lr_find.py, 3 seeds)
it was too high on diabetes by 5–40× for every rule but GD, and for Momentum it diverged on digits;
the online average (β = 0.98) lags by about 49 steps, so its minimum falls after the raw curve's.
Validation prefers smaller rates than the training loss does on small data sets (diabetes' 354
rows), which no range test can see: treat the suggestion as a starting point.

Not restored: the random number generators and whatever ``loss_fn`` consumes (e.g. a data iterator)
— the finder calls ``loss_fn`` ``num_steps`` times at most.

Source: L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["lr_find", "LRFinder", "LRFindResult", "RULES"]

RULES = ("min10", "steepest")


@dataclass
class LRFindResult:
    """What the range test saw. ``lrs[i]`` is the rate of step i, ``losses[i]`` its smoothed loss and
    ``raw_losses[i]`` the loss ``loss_fn`` returned before that step's update."""

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float | None
    rule: str
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)
    centred: list[float] = field(default_factory=list)  # the zero-lag smoothing the suggestion reads

    def __str__(self) -> str:
        s = "none" if self.suggestion is None else f"{self.suggestion:.3g}"
        return f"suggested lr {s} ({self.rule})"

    def plot(self, ax=None):
        """Smoothed (and raw) loss against the learning rate, log x axis, the suggestion marked.
        Returns the matplotlib Figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        else:
            fig = ax.figure
        ax.plot(self.lrs, self.raw_losses, color="0.75", lw=0.8, label="loss")
        ax.plot(self.lrs, self.losses, color="C0", lw=1.8, label="smoothed loss (online)")
        if self.centred:
            ax.plot(self.lrs, self.centred, color="C1", lw=1.4, label="centred smoothing")
        if self.suggestion is not None:
            ax.axvline(self.suggestion, color="C3", ls="--", lw=1.2, label=f"suggestion {self.suggestion:.2g}")
        finite = [v for v in self.losses if math.isfinite(v)]
        raw = [v for v in self.raw_losses if math.isfinite(v)]
        if finite:  # keep the blow-up from squashing the interesting part
            lo, hi = min(finite + raw), max(finite[0], min(finite) * 1.5)
            ax.set_ylim(lo - 0.1 * (hi - lo or 1), hi + 0.25 * (hi - lo or 1))
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(str(self), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def _check(name: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"lr_find: invalid {name}={value!r}; expected {expected}")


class LRFinder:
    """The range test on any model / optimizer / training step; see the module docstring.

    Args:
        model: the ``torch.nn.Module`` being trained (its ``state_dict`` is restored afterwards).
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters (descend or torch).
        loss_fn: ``loss_fn()`` returns the loss of the next batch as a tensor with a graph; the
            finder zeroes the gradients, calls it, runs ``backward()`` and ``optimizer.step()``.
        start_lr, end_lr: η_start < η_end, both > 0.
        num_steps: N ≥ 2 steps at most.
        smoothing: β in [0, 1) of the moving average (0: no smoothing).
        diverge_factor: stop once the smoothed loss exceeds this multiple (> 1) of its minimum.
        rule: ``"min10"`` (default) or ``"steepest"``.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor],
                 start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100, *, smoothing: float = 0.98,
                 diverge_factor: float = 4.0, rule: str = "min10", centre_smoothing: float = 0.7) -> None:
        _check("start_lr", start_lr, isinstance(start_lr, (int, float)) and 0 < start_lr < math.inf, "a number > 0")
        _check("end_lr", end_lr, isinstance(end_lr, (int, float)) and start_lr < end_lr < math.inf,
               f"a finite number > start_lr={start_lr!r}")
        _check("num_steps", num_steps, isinstance(num_steps, int) and num_steps >= 2, "an integer >= 2")
        _check("smoothing", smoothing, isinstance(smoothing, (int, float)) and 0 <= smoothing < 1, "a number in [0, 1)")
        _check("diverge_factor", diverge_factor, isinstance(diverge_factor, (int, float)) and diverge_factor > 1,
               "a number > 1")
        _check("rule", rule, rule in RULES, f"one of {', '.join(RULES)}")
        _check("centre_smoothing", centre_smoothing,
               isinstance(centre_smoothing, (int, float)) and 0 <= centre_smoothing < 1, "a number in [0, 1)")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"lr_find: optimizer must be a torch.optim.Optimizer, not {type(optimizer).__name__}")
        if not callable(loss_fn):
            raise TypeError("lr_find: loss_fn must be callable: loss_fn() -> the loss of the next batch")
        from descend.blocks import estimates_lr

        if any(estimates_lr(g) for g in optimizer.param_groups):  # its group["lr"] is a display only
            raise ValueError(f"lr_find: invalid optimizer={type(optimizer).__name__}(lr='auto'): its rate is "
                             "estimated during training and a sweep's rates would be ignored; build it with a "
                             "number (e.g. lr=1e-3) to run the range test")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.start_lr, self.end_lr, self.num_steps = float(start_lr), float(end_lr), num_steps
        self.smoothing, self.diverge_factor, self.rule = float(smoothing), float(diverge_factor), rule
        self.centre_smoothing = float(centre_smoothing)

    def lrs(self) -> list[float]:
        """η_i for i = 0 … N − 1 (the whole sweep, before any early stop)."""
        n, a, b = self.num_steps, self.start_lr, self.end_lr
        return [a * (b / a) ** (i / (n - 1)) for i in range(n)]

    def run(self) -> LRFindResult:
        model, opt = self.model, self.optimizer
        saved_model = copy.deepcopy(model.state_dict())
        saved_opt = copy.deepcopy(opt.state_dict())
        params = [p for g in opt.param_groups for p in g["params"]]
        saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
        # the finder owns the lr during the sweep: set aside an lr schedule (descend keeps it in
        # group["schedules"]); load_state_dict puts everything back afterwards
        for g in opt.param_groups:
            if isinstance(g.get("schedules"), dict):
                g["schedules"].pop("lr", None)
        lrs, raw, smooth = [], [], []
        avg, best, stopped, blew = 0.0, math.inf, False, None
        try:
            for i, lr in enumerate(self.lrs()):
                for g in opt.param_groups:
                    if isinstance(g["lr"], torch.Tensor):
                        g["lr"].fill_(lr)
                    else:
                        g["lr"] = lr
                opt.zero_grad()
                loss = self.loss_fn()
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError("lr_find: loss_fn() must return a one-element loss tensor")
                value = float(loss.detach())
                if not math.isfinite(value):
                    stopped, blew = True, (i + 1, lr)
                    break
                loss.backward()
                opt.step()
                avg = self.smoothing * avg + (1 - self.smoothing) * value
                s = avg / (1 - self.smoothing ** (i + 1))
                lrs.append(lr)
                raw.append(value)
                smooth.append(s)
                best = min(best, s)
                if s > self.diverge_factor * best:
                    stopped, blew = True, (i + 1, lr)
                    break
        finally:
            model.load_state_dict(saved_model)
            opt.load_state_dict(saved_opt)
            for p, g in zip(params, saved_grads):
                p.grad = g
        # the blow-up at the end can be orders of magnitude above the rest: capped at the stopping
        # level, so it marks the end as high without spilling over the whole centred curve
        cap = self.diverge_factor * min(smooth) if smooth else math.inf
        centred = centred_smoothing([min(v, cap) for v in raw], self.centre_smoothing)
        suggestion, notes = suggest(lrs, centred, self.rule)
        rule = {"steepest": "steepest descent of the smoothed loss",
                "min10": "lr at the minimum of the smoothed loss ÷ 10"}[self.rule]
        factor, why = velocity_factor(opt, lrs)
        if suggestion is not None and factor != 1.0:
            suggestion *= factor
            notes.append(why)
            rule += f" × {factor:.2g} (η inside the velocity)"
        if stopped:
            notes.append(f"the loss blew up at step {blew[0]} of {self.num_steps} (lr {blew[1]:.3g}): the sweep "
                         "stopped there")
        return LRFindResult(lrs, smooth, raw, suggestion, rule, stopped, notes, centred)


def centred_smoothing(values: list[float], beta: float) -> list[float]:
    r"""Zero-lag smoothing: s_i = Σ_j β^{|i−j|} ℓ_j / Σ_j β^{|i−j|} over the recorded steps.

    The online average the early stop uses lags: its weights all lie in the past (a mean lag of
    β/(1 − β) = 49 steps at β = 0.98), so its minimum falls after the raw curve's, on the rise, and
    min ÷ 10 came out too high. This kernel is symmetric, so a minimum stays where it is; it is
    normalised by the weight present, so the ends are not biased towards 0. β = 0 returns the losses.
    """
    n = len(values)
    if n == 0 or beta == 0:
        return list(values)
    fwd, fmass, bwd, bmass = [0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n
    acc = mass = 0.0
    for i, v in enumerate(values):
        acc, mass = v + beta * acc, 1.0 + beta * mass
        fwd[i], fmass[i] = acc, mass
    acc = mass = 0.0
    for i in range(n - 1, -1, -1):
        acc, mass = values[i] + beta * acc, 1.0 + beta * mass
        bwd[i], bmass[i] = acc, mass
    return [(fwd[i] + bwd[i] - values[i]) / (fmass[i] + bmass[i] - 1.0) for i in range(n)]


def velocity_factor(optimizer: torch.optim.Optimizer, lrs: list[float]) -> tuple[float, str]:
    r"""The correction for a rule with η *inside* the velocity (descend's Momentum and Nesterov:
    ṽ_t = γ ṽ_{t−1} − η_t g_t), where the sweep and training see different effective steps.

    With a steady gradient the velocity sums past rates: during the sweep, whose rate grows by r per
    step, ṽ ≈ −η_t g / (1 − γ/r); at a fixed η, ṽ = −η g / (1 − γ). The same effective step at a fixed
    rate is therefore η_t (1 − γ) / (1 − γ/r) — with γ = 0.9 and the default sweep (r ≈ 1.2) about
    0.4 η_t. torch.optim.SGD keeps η outside its buffer (the step is η_t times the whole buffer), so
    it and every rule without a velocity get 1.
    """
    from descend.blocks import ScaleByLearningRate, Trace

    chain = list(getattr(optimizer, "blocks", ()))
    lr_at = next((i for i, b in enumerate(chain) if isinstance(b, ScaleByLearningRate)), None)
    traced = lr_at is not None and any(isinstance(b, Trace) for b in chain[lr_at + 1:])
    if not traced or len(lrs) < 2:
        return 1.0, ""
    gamma = float(optimizer.param_groups[0].get("momentum", 0.0))
    if not 0 < gamma < 1:
        return 1.0, ""
    r = lrs[1] / lrs[0]
    f = (1 - gamma) / (1 - gamma / r)
    return f, (f"η sits inside the velocity (γ = {gamma:g}): the sweep's effective step was η/(1 − γ/r), "
               f"a fixed rate's is η/(1 − γ); multiplied the suggestion by {f:.2g}")


def suggest(lrs: list[float], losses: list[float], rule: str = "min10") -> tuple[float | None, list[str]]:
    """Apply a suggestion rule to a smoothed curve; ``(None, [why])`` when there is too little of it."""
    if len(lrs) < 5:
        return None, [f"only {len(lrs)} finite steps before the loss blew up; start lower (start_lr)"]
    skip = max(1, len(lrs) // 10)  # the first tenth: too few batches averaged to tell noise from progress
    k = min(range(skip, len(losses)), key=losses.__getitem__)
    if rule == "min10":
        level = losses[skip]
        if losses[k] > level - 0.01 * abs(level):
            # a flat start: the loss never went clearly below where it began, so its lowest point is
            # noise. Take the largest rate before it rose above that level instead.
            last = max((i for i in range(skip, len(losses)) if losses[i] <= level * 1.01 + 1e-12), default=k)
            return lrs[last] / 10, ["the loss barely went down during the sweep: suggested the largest lr before "
                                    "it rose ÷ 10"]
        return lrs[k] / 10, []
    if k < skip + 1:
        return lrs[k] / 10, ["the loss did not go down after the first tenth of the sweep; fell back to min/10"]
    logs = [math.log(x) for x in lrs[:k + 1]]
    seg = losses[:k + 1]
    slopes = {i: (seg[i + 1] - seg[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(skip, k)}
    i = min(slopes, key=slopes.__getitem__)
    return lrs[i], []


def lr_find(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor],
            start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100, **options) -> LRFindResult:
    """Run the learning-rate range test and restore ``model`` and ``optimizer`` exactly.

    Example:
        >>> import torch, descend
        >>> _ = torch.manual_seed(0); x = torch.randn(256, 4); y = x @ torch.tensor([1., -2., 3., 0.5])
        >>> model = torch.nn.Linear(4, 1); opt = descend.GD(model.parameters(), lr=0.1)
        >>> res = descend.lr_find(model, opt, lambda: ((model(x).squeeze(1) - y) ** 2).mean(), num_steps=60)
        >>> 1e-3 < res.suggestion < 1.0, res.rule
        (True, 'lr at the minimum of the smoothed loss ÷ 10')

    Options (keywords): ``smoothing`` (β, 0.98), ``diverge_factor`` (4), ``rule`` (``"min10"`` or
    ``"steepest"``). See :class:`LRFinder`.
    """
    return LRFinder(model, optimizer, loss_fn, start_lr, end_lr, num_steps, **options).run()
