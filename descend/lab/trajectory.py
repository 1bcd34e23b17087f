"""Trajectories: run an optimizer on a test problem and record every iterate.

The point θ is one float64 parameter of shape (d,). Each step evaluates f(θ), back-propagates, and
calls the optimizer's ``step``; the learning rate recorded for step t is ``group["lr"]`` read just
before it (descend's schedules, and torch's LR schedulers, write the value in use there). If the loss
or the gradient becomes NaN or ±inf the run stops cleanly and is marked ``diverged`` (a non-finite gradient shows up
there: it carries θ, and so f, to NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import descend
from descend.lab.problems import Problem, problem as get_problem

__all__ = ["Trajectory", "trajectory"]


@dataclass
class Trajectory:
    """The record of one run.

    Attributes:
        problem: the :class:`~descend.lab.problems.Problem`.
        label: the optimizer's name (a descend name, or the class / factory name).
        hyperparameters: the keyword arguments the optimizer was built with.
        points: (n + 1, d) array, the start and every iterate (n = steps taken).
        losses: (n + 1,) array, f at each point.
        lrs: (n,) array, the learning rate each step used (NaN if the optimizer has no ``lr``).
        diverged: True if the run stopped early because f(θ) or θ became non-finite;
            then the last point is the first non-finite one and n ≤ ``steps``.
        steps: the number of steps asked for.
    """

    problem: Problem
    label: str
    hyperparameters: dict[str, Any]
    points: np.ndarray
    losses: np.ndarray
    lrs: np.ndarray
    diverged: bool
    steps: int

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1])

    @property
    def final_point(self) -> np.ndarray:
        return self.points[-1]

    def distance_to_minimum(self) -> float:
        """Distance from the last point to the nearest global minimum (NaN if it is not finite)."""
        x = self.points[-1]
        if not np.all(np.isfinite(x)):
            return math.nan
        return self.problem.distance_to_minimum(x)

    def steps_to(self, tol: float = 1e-3) -> int | None:
        """The first step t with f(θ_t) − f* ≤ ``tol``, or None if the run never got there."""
        gap = self.losses - self.problem.min_value
        hit = np.nonzero(np.isfinite(gap) & (gap <= tol))[0]
        return int(hit[0]) if hit.size else None


def _label(optimizer: Any) -> str:
    if isinstance(optimizer, str):
        return optimizer.lower()
    name = getattr(optimizer, "__name__", None) or getattr(getattr(optimizer, "func", None), "__name__", None)
    return name or type(optimizer).__name__


def trajectory(
    problem: str | Problem,
    optimizer: str | type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer],
    steps: int,
    start: Any = None,
    **hyperparameters: Any,
) -> Trajectory:
    """Run ``optimizer`` for ``steps`` steps on ``problem`` from ``start``.

    Args:
        problem: a problem name (see :func:`~descend.lab.problems.problems`) or a Problem.
        optimizer: a descend name (built with :func:`descend.create`), or any class / factory
            called as ``optimizer([θ], **hyperparameters)`` (a descend class, ``torch.optim.Adam``,
            ``functools.partial(torch.optim.SGD, momentum=0.5)``, ...). Optimizers that need a
            closure (``torch.optim.LBFGS``) get one.
        steps: the number of steps (≥ 0).
        start: the start point (d numbers); default the problem's usual one.
        **hyperparameters: passed to the optimizer; any may be a descend schedule.

    Returns:
        A :class:`Trajectory` with ``points`` (steps + 1 × d, the start included), ``losses`` and
        ``lrs``; shorter and ``diverged=True`` if f(θ) became non-finite.

    Raises:
        ValueError: unknown problem or optimizer name, bad ``steps`` or ``start``, bad
            hyperparameter values (from the optimizer).

    Example:
        >>> from descend import lab
        >>> t = lab.trajectory("double_well", "gd", steps=500, lr=0.01)
        >>> round(float(t.points[-1, 0]), 2)   # trapped in the local minimum
        0.96
    """
    prob = get_problem(problem)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"trajectory: invalid steps={steps!r}; expected an integer >= 0")
    if start is None:
        start = prob.start
    try:
        x0 = [float(v) for v in (start if isinstance(start, (list, tuple, np.ndarray, torch.Tensor)) else [start])]
    except (TypeError, ValueError):
        raise ValueError(f"trajectory: invalid start={start!r}; expected {prob.dim} numbers") from None
    if len(x0) != prob.dim or not all(math.isfinite(v) for v in x0):
        raise ValueError(f"trajectory: invalid start={start!r}; expected {prob.dim} finite number(s) "
                         f"for {prob.name}")

    theta = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    if isinstance(optimizer, str):
        opt = descend.create(optimizer, [theta], **hyperparameters)
    elif callable(optimizer):
        opt = optimizer([theta], **hyperparameters)
    else:
        raise ValueError(f"trajectory: invalid optimizer={optimizer!r}; expected a name "
                         f"({', '.join(descend.available())}) or an optimizer class / factory")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = prob.f(theta)
        loss.backward()
        return loss

    def loss_at() -> float:
        with torch.no_grad():
            return float(prob.f(theta))

    points = [theta.detach().numpy().copy()]
    losses = [loss_at()]
    lrs: list[float] = []
    diverged = not math.isfinite(losses[0])
    for _ in range(steps if not diverged else 0):
        lrs.append(float(opt.param_groups[0].get("lr", math.nan)))
        opt.step(closure)
        points.append(theta.detach().numpy().copy())
        losses.append(loss_at())
        if not (math.isfinite(losses[-1]) and np.all(np.isfinite(points[-1]))):
            diverged = True
            break
    return Trajectory(
        problem=prob,
        label=_label(optimizer),
        hyperparameters=dict(hyperparameters),
        points=np.array(points, dtype=np.float64).reshape(len(points), prob.dim),
        losses=np.array(losses, dtype=np.float64),
        lrs=np.array(lrs, dtype=np.float64),
        diverged=diverged,
        steps=steps,
    )
