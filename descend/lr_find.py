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

Suggestion rules (the result says which one it used):

* ``"min10"`` (default): the η at the minimum of ℓ̄, divided by 10.
* ``"steepest"``: the η where the smoothed loss falls fastest, min over i of dℓ̄/d log η (central
  differences), looked for between the first tenth of the sweep and the minimum of ℓ̄.

How reliable it is (scripts/check_lr_find.py: the lab's MLP on scikit-learn's digits, 20 epochs,
and on diabetes, 40 epochs; 3 seeds; trained at the suggestion, at ×1/10 … ×10 of it and on a
half-decade grid 1e-5 … 1; the table is in the README section on lr-find):

* ``min10`` on digits came within a factor 4 of the best grid lr for GD, AdaGrad, RMSProp and Adam,
  and within 0.01 of their best final accuracy; for Momentum (η inside the velocity, effective step
  η/(1 − γ); the sweep is too short for the velocity to build up) it suggested 0.23 and training at
  it diverged. On diabetes (354 rows; validation R² prefers much smaller rates than the training
  loss) it was 2.4× the best lr for GD (R² 0.499 vs 0.507) but 5–40× too high for the others
  (R² 0.38–0.47 vs 0.51).
* ``steepest`` over-shot 3–10× on digits and on diabetes was captured by noise at the start of the
  sweep (≈5e-7: useless).

So treat the suggestion as the top of the range worth trying, also try ÷3 and ÷10, and with
heavy momentum divide by a further 1/(1 − γ).

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
        ax.plot(self.lrs, self.losses, color="C0", lw=1.8, label="smoothed loss")
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
                 diverge_factor: float = 4.0, rule: str = "min10") -> None:
        _check("start_lr", start_lr, isinstance(start_lr, (int, float)) and 0 < start_lr < math.inf, "a number > 0")
        _check("end_lr", end_lr, isinstance(end_lr, (int, float)) and start_lr < end_lr < math.inf,
               f"a finite number > start_lr={start_lr!r}")
        _check("num_steps", num_steps, isinstance(num_steps, int) and num_steps >= 2, "an integer >= 2")
        _check("smoothing", smoothing, isinstance(smoothing, (int, float)) and 0 <= smoothing < 1, "a number in [0, 1)")
        _check("diverge_factor", diverge_factor, isinstance(diverge_factor, (int, float)) and diverge_factor > 1,
               "a number > 1")
        _check("rule", rule, rule in RULES, f"one of {', '.join(RULES)}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"lr_find: optimizer must be a torch.optim.Optimizer, not {type(optimizer).__name__}")
        if not callable(loss_fn):
            raise TypeError("lr_find: loss_fn must be callable: loss_fn() -> the loss of the next batch")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.start_lr, self.end_lr, self.num_steps = float(start_lr), float(end_lr), num_steps
        self.smoothing, self.diverge_factor, self.rule = float(smoothing), float(diverge_factor), rule

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
        avg, best, stopped = 0.0, math.inf, False
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
                    stopped = True
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
                    stopped = True
                    break
        finally:
            model.load_state_dict(saved_model)
            opt.load_state_dict(saved_opt)
            for p, g in zip(params, saved_grads):
                p.grad = g
        suggestion, notes = suggest(lrs, smooth, self.rule)
        rule = {"steepest": "steepest descent of the smoothed loss",
                "min10": "lr at the minimum of the smoothed loss ÷ 10"}[self.rule]
        if stopped:
            notes.append(f"stopped after {len(lrs)} of {self.num_steps} steps: the loss blew up")
        return LRFindResult(lrs, smooth, raw, suggestion, rule, stopped, notes)


def suggest(lrs: list[float], losses: list[float], rule: str = "min10") -> tuple[float | None, list[str]]:
    """Apply a suggestion rule to a smoothed curve; ``(None, [why])`` when there is too little of it."""
    if len(lrs) < 5:
        return None, [f"only {len(lrs)} finite steps before the loss blew up; start lower (start_lr)"]
    k = min(range(len(losses)), key=losses.__getitem__)
    if rule == "min10":
        return lrs[k] / 10, []
    skip = max(1, len(lrs) // 10)  # the first tenth: the average still warms up and its slope is noise
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
