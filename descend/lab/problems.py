r"""Test problems with known minima, for races of optimizers.

A :class:`Problem` is a small function ``f`` of a point ``x`` together with what is known about it:
its global minima and minimum value f*, local minima and saddle points where they matter, the box
used for plots, and the start point people usually race from.

``f`` is written over the *first* axis of its argument: ``x[0]`` is the first coordinate, ``x[1]``
the second. So ``f(x)`` for a point of shape ``(d,)`` is a 0-d tensor (autograd-able), and
``f(torch.stack([X, Y]))`` for a grid of shape ``(2, H, W)`` is the ``(H, W)`` array a contour plot
needs, with the same code.

=============  =====================================================  ==========================
name           f                                                      global minima, f*
=============  =====================================================  ==========================
rosenbrock     (1 − x)² + 100 (y − x²)²                               (1, 1), 0
beale          (1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²  (3, 0.5), 0
himmelblau     (x² + y − 11)² + (x + y² − 7)²                         four points, 0
rastrigin      20 + Σᵢ (xᵢ² − 10 cos 2πxᵢ)                            (0, 0), 0
ackley         −20 e^{−0.2 √(½(x²+y²))} − e^{½(cos 2πx + cos 2πy)} + e + 20   (0, 0), 0
booth          (x + 2y − 7)² + (2x + y − 5)²                          (1, 3), 0
quadratic      ½ (x² + 50 y²)   (ill-conditioned: κ = 50)             (0, 0), 0
saddle         x² + y⁴/4 − y²/2   (saddle at the origin)              (0, ±1), −1/4
double_well    (x² − 1)² + 0.3 x   (1-D)                              x ≈ −1.036 (local x ≈ 0.960)
=============  =====================================================  ==========================

Sources: Rosenbrock (1960); Beale (1958); Himmelblau (1972), minima as tabulated e.g. in Surjanovic &
Bingham, "Virtual Library of Simulation Experiments" (sfu.ca/~ssurjano); Rastrigin (1974);
Ackley (1987); the double well from the chapter "Momentum & Adaptive LR".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["Problem", "problem", "problems", "quadratic", "STEP_SCALE"]

Point = tuple[float, ...]


@dataclass(frozen=True)
class Problem:
    """A test function with what is known about it.

    Attributes:
        name: the name :func:`problem` knows it by.
        f: the function; coordinates along the first axis (see the module docstring).
        minima: the global minima (each a tuple of d numbers).
        min_value: f* = f at a global minimum.
        bounds: ((lo, hi), ...) per coordinate, the box plotted.
        start: the usual start point of a race.
        local_minima: non-global local minima worth knowing (the double well's trap).
        saddles: saddle points worth knowing.
        formula: f in words, for titles.
        lr_gd: a learning rate that is stable from ``start`` for the plain-gradient family
            (GD, Momentum, Nesterov, SGD): the default of a race.
        lr_adaptive: a learning rate for the adaptive family (AdaGrad, RMSProp, Adam, …), whose
            step is about η per coordinate whatever the gradient's scale.
    """

    name: str
    f: Callable[[torch.Tensor], torch.Tensor]
    minima: tuple[Point, ...]
    min_value: float
    bounds: tuple[tuple[float, float], ...]
    start: Point
    local_minima: tuple[Point, ...] = ()
    saddles: tuple[Point, ...] = ()
    formula: str = ""
    lr_gd: float = 1e-2
    lr_adaptive: float = 1e-1
    description: str = field(default="", compare=False)

    @property
    def dim(self) -> int:
        """d, the number of coordinates."""
        return len(self.start)

    def __call__(self, x) -> torch.Tensor:
        return self.f(torch.as_tensor(x, dtype=torch.float64))

    def default_hyperparameters(self, optimizer: str) -> dict[str, float]:
        """The learning rate a race uses for a named optimizer when none is given.

        ``{"lr": lr_gd}`` for the plain-gradient family, ``{"lr": lr_adaptive}`` for the adaptive
        one, ``{}`` (the optimizer's own default) for the others (AdaDelta).
        """
        scale = STEP_SCALE.get(str(optimizer).lower())
        if scale == "gradient":
            return {"lr": self.lr_gd}
        if scale == "adaptive":
            return {"lr": self.lr_adaptive}
        return {}

    def distance_to_minimum(self, x: Sequence[float]) -> float:
        """Euclidean distance from ``x`` to the nearest global minimum."""
        return min(math.dist(tuple(float(v) for v in x), m) for m in self.minima)


#: How an optimizer's step scales with the gradient: "gradient" (step ∝ η·g) or "adaptive"
#: (step ≈ η per coordinate). Names not here (AdaDelta, whose η is a plain multiplier of an
#: already unit-scaled step) keep their own default learning rate in a race.
STEP_SCALE = {
    "gd": "gradient", "momentum": "gradient", "nesterov": "gradient", "sgd": "gradient",
    "adagrad": "adaptive", "rmsprop": "adaptive", "adam": "adaptive", "adamw": "adaptive",
    "nadam": "adaptive", "radam": "adaptive", "adamax": "adaptive", "lion": "adaptive",
}


# --------------------------------------------------------------------------- the functions


def _rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def _beale(x):
    a, b = x[0], x[1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


def _himmelblau(x):
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def _rastrigin(x):
    return 10 * x.shape[0] + sum(x[i] ** 2 - 10 * torch.cos(2 * math.pi * x[i]) for i in range(x.shape[0]))


# Ackley's f has a cone-shaped kink at its minimum: √(x² + y²) is not differentiable at 0, and
# autograd would give 0·∞ = NaN there. The tiny 1e-24 under the root makes the gradient at the
# origin 0 (the subgradient of least norm) and changes f by less than 1e-11.
_ACKLEY_EPS = 1e-24


def _ackley(x):
    r = torch.sqrt(0.5 * (x[0] ** 2 + x[1] ** 2) + _ACKLEY_EPS)
    c = 0.5 * (torch.cos(2 * math.pi * x[0]) + torch.cos(2 * math.pi * x[1]))
    return -20 * torch.exp(-0.2 * r) - torch.exp(c) + math.e + 20


def _booth(x):
    return (x[0] + 2 * x[1] - 7) ** 2 + (2 * x[0] + x[1] - 5) ** 2


def _saddle(x):
    return x[0] ** 2 + x[1] ** 4 / 4 - x[1] ** 2 / 2


_TILT = 0.3


def _double_well(x):
    return (x[0] ** 2 - 1) ** 2 + _TILT * x[0]


def _double_well_critical_points() -> tuple[float, float, float]:
    """The roots of f'(x) = 4x³ − 4x + c, i.e. of x³ − x + c/4 = 0, in closed form.

    A depressed cubic t³ + pt + q with three real roots has them at
    t_k = 2√(−p/3) cos(⅓ arccos((3q / 2p) √(−3/p)) − 2πk/3), k = 0, 1, 2 (Viète's trigonometric
    solution). Here p = −1, q = c/4. Returned in increasing order: global minimum, local maximum,
    local minimum.
    """
    p, q = -1.0, _TILT / 4
    a = 2 * math.sqrt(-p / 3)
    phi = math.acos(3 * q / (2 * p) * math.sqrt(-3 / p)) / 3
    return tuple(sorted(a * math.cos(phi - 2 * math.pi * k / 3) for k in range(3)))  # type: ignore[return-value]


_DW_GLOBAL, _DW_MAX, _DW_LOCAL = _double_well_critical_points()


@dataclass(frozen=True)
class _Quadratic:
    """f(x) = ½ Σᵢ aᵢ xᵢ², a picklable function object."""

    scales: tuple[float, ...]

    def __call__(self, x):
        return 0.5 * sum(a * x[i] ** 2 for i, a in enumerate(self.scales))


def quadratic(scales: Sequence[float] = (1.0, 50.0), *, name: str | None = None,
              start: Sequence[float] | None = None) -> Problem:
    r"""An axis-aligned quadratic f(x) = ½ Σᵢ aᵢ xᵢ², minimum 0 at the origin.

    Its Hessian is diag(a), so the condition number is κ = max a / min a: GD is stable for
    η < 2 / max a and then shrinks coordinate i by |1 − η aᵢ| per step, so the flat coordinate
    crawls when κ is large. The default (1, 50) is the lab's "quadratic".

    Args:
        scales: the curvatures aᵢ > 0 (one per coordinate).
        name: the problem's name (default ``"quadratic"``).
        start: the start point (default (−4, 1) for d = 2, all ones otherwise).

    Returns:
        A :class:`Problem`.
    """
    scales = tuple(float(a) for a in scales)
    if not scales or any(not (math.isfinite(a) and a > 0) for a in scales):
        raise ValueError(f"quadratic: invalid scales={scales!r}; expected one or more finite numbers > 0")
    d = len(scales)
    if start is None:
        start = (-4.0, 1.0) if d == 2 else (1.0,) * d
    start = tuple(float(v) for v in start)
    if len(start) != d:
        raise ValueError(f"quadratic: start={start!r} has {len(start)} coordinates; expected {d}")
    half = tuple(max(1.2 * abs(s), 1.0) for s in start)
    terms = " + ".join(f"{a:g}·x{i + 1}²" for i, a in enumerate(scales))
    return Problem(
        name=name or "quadratic",
        f=_Quadratic(scales),
        minima=((0.0,) * d,),
        min_value=0.0,
        bounds=tuple((-h, h) for h in half),
        start=start,
        formula=f"½({terms})",
        lr_gd=1.0 / max(scales),  # η = 1/L: the stiff coordinate is solved in one step
        lr_adaptive=0.1,
        description=f"ill-conditioned quadratic, condition number {max(scales) / min(scales):g}",
    )


_HIMMELBLAU_MINIMA = (
    (3.0, 2.0),
    (-2.805118, 3.131312),
    (-3.779310, -3.283186),
    (3.584428, -1.848126),
)

_PROBLEMS: dict[str, Callable[[], Problem]] = {
    "rosenbrock": lambda: Problem(
        "rosenbrock", _rosenbrock, ((1.0, 1.0),), 0.0, ((-2.0, 2.0), (-1.0, 3.0)), (-1.5, 2.0),
        formula="(1 − x)² + 100(y − x²)²", lr_gd=1e-3, lr_adaptive=1e-1,
        description="a curved narrow valley; easy to find, hard to follow"),
    "beale": lambda: Problem(
        "beale", _beale, ((3.0, 0.5),), 0.0, ((-4.5, 4.5), (-4.5, 4.5)), (1.0, 1.5),
        formula="(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²", lr_gd=1e-3, lr_adaptive=5e-2,
        description="flat plateaus and steep walls"),
    "himmelblau": lambda: Problem(
        "himmelblau", _himmelblau, _HIMMELBLAU_MINIMA, 0.0, ((-5.0, 5.0), (-5.0, 5.0)), (0.0, 0.0),
        formula="(x² + y − 11)² + (x + y² − 7)²", lr_gd=5e-3, lr_adaptive=1e-1,
        description="four global minima of equal value"),
    "rastrigin": lambda: Problem(
        "rastrigin", _rastrigin, ((0.0, 0.0),), 0.0, ((-5.12, 5.12), (-5.12, 5.12)), (3.2, 2.7),
        formula="20 + Σ(xᵢ² − 10 cos 2πxᵢ)", lr_gd=2e-3, lr_adaptive=1e-1,
        description="a bowl covered in local minima"),
    "ackley": lambda: Problem(
        "ackley", _ackley, ((0.0, 0.0),), 0.0, ((-5.0, 5.0), (-5.0, 5.0)), (2.7, -2.2),
        formula="−20e^{−0.2√(½(x²+y²))} − e^{½(cos 2πx + cos 2πy)} + e + 20", lr_gd=5e-2, lr_adaptive=1e-1,
        description="a nearly flat outer region with many local minima, a deep hole at the origin"),
    "booth": lambda: Problem(
        "booth", _booth, ((1.0, 3.0),), 0.0, ((-10.0, 10.0), (-10.0, 10.0)), (-8.0, 8.0),
        formula="(x + 2y − 7)² + (2x + y − 5)²", lr_gd=2e-2, lr_adaptive=5e-1,
        description="a tilted quadratic bowl"),
    "quadratic": lambda: quadratic((1.0, 50.0)),
    "saddle": lambda: Problem(
        "saddle", _saddle, ((0.0, 1.0), (0.0, -1.0)), -0.25, ((-2.0, 2.0), (-1.75, 1.75)), (1.5, 1e-3),
        saddles=((0.0, 0.0),), formula="x² + y⁴/4 − y²/2", lr_gd=5e-2, lr_adaptive=5e-2,
        description="a saddle at the origin between two minima; starts just off the ridge"),
    "double_well": lambda: Problem(
        "double_well", _double_well, ((_DW_GLOBAL,),), (_DW_GLOBAL**2 - 1) ** 2 + _TILT * _DW_GLOBAL,
        ((-1.8, 2.1),), (2.0,), local_minima=((_DW_LOCAL,),), formula="(x² − 1)² + 0.3x",
        lr_gd=1e-2, lr_adaptive=1e-1,
        description="1-D: a local minimum near 0.96 traps GD started at x = 2; the global one is near −1.04"),
}


def problems() -> list[str]:
    """The names :func:`problem` knows."""
    return list(_PROBLEMS)


def problem(name: str | Problem) -> Problem:
    """The test problem called ``name`` (case-insensitive); a :class:`Problem` is returned as is.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if isinstance(name, Problem):
        return name
    make = _PROBLEMS.get(str(name).lower().replace("-", "_"))
    if make is None:
        raise ValueError(f"unknown problem {name!r}; valid names: {', '.join(problems())}")
    return make()
