"""The table that drives the generic tests: one row per registry entry.

Quirks live here as fields, never as ``if name == ...`` inside a test body. The helpers at the end
(:func:`make_params`, :func:`loss_fn`, :func:`trajectory`) run any optimizer factory over one small
fixed problem and return the parameters after every step, so the same trajectory can be compared
against torch.optim, a hand formula, another descend optimizer, or the fast path, e.g.::

    for info in OPTIMS:
        for hp in info.parity_configs() or [{}]:
            assert_same_trajectory(trajectory(lambda ps: info.make(ps, **hp, fast=True)),
                                   trajectory(lambda ps: info.make(ps, **hp, fast=False)))
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

import descend
from descend.optimizers import REGISTRY


def grid(**axes: list) -> list[dict[str, Any]]:
    """Every combination of the listed values, as keyword dicts."""
    keys = list(axes)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(axes[k] for k in keys))]


class Decay:
    """A learning-rate schedule for the convergence table: linear warm-up over ``warmup`` steps, then
    halving every ``half_life`` steps: η_t = η · min(1, (t + 1)/warmup) · 2^(−t/half_life).
    (A module-level class, so optimizers holding it pickle.)"""

    def __init__(self, lr: float, half_life: float, warmup: int = 1):
        self.lr, self.half_life, self.warmup = lr, half_life, warmup

    def __call__(self, t: int) -> float:
        return self.lr * min(1.0, (t + 1) / self.warmup) * 0.5 ** (t / self.half_life)

    def __repr__(self) -> str:
        return f"Decay({self.lr}, half_life={self.half_life}, warmup={self.warmup})"


@dataclass(frozen=True)
class Converge:
    """Settings for one convergence run: hyperparameters, number of steps, tolerance on ‖θ − θ*‖∞."""

    hp: dict[str, Any]
    steps: int
    tol: float


@dataclass(frozen=True)
class OptimInfo:
    """One optimizer and everything the generic tests need to know about it.

    Attributes:
        name: the registry name.
        required: keyword arguments the constructor needs (e.g. GD has no default lr).
        torch_cls: the torch.optim counterpart, or None.
        torch_fixed: descend keywords that make the rule equal to ``torch_cls`` (AdaGrad's ε placement).
        parity: hyperparameter combinations the counterpart supports, for the step-by-step parity test.
        parity_requires: a predicate on a combination (nesterov needs momentum > 0 and dampening 0).
        float64_default_for_parity: torch's rule keeps float32 internals unless torch's default
            dtype is float64 (torch.optim.NAdam's ``mu_product``), so set it during float64 parity.
        supports_sparse: accepts sparse gradients.
        sparse_parity: combinations to compare with ``torch_cls`` on sparse gradients.
        quadratic, rosenbrock: convergence settings.
    """

    name: str
    required: dict[str, Any] = field(default_factory=dict)
    torch_cls: type | None = None
    torch_fixed: dict[str, Any] = field(default_factory=dict)
    parity: list[dict[str, Any]] = field(default_factory=list)
    parity_requires: Callable[[dict[str, Any]], bool] = lambda hp: True
    float64_default_for_parity: bool = False
    supports_sparse: bool = False
    sparse_parity: list[dict[str, Any]] = field(default_factory=list)
    quadratic: Converge | None = None
    rosenbrock: Converge | None = None

    @property
    def cls(self) -> type:
        return REGISTRY[self.name]

    def make(self, params, **hp) -> descend.ChainOptimizer:
        return self.cls(params, **{**self.required, **hp})

    def parity_configs(self) -> list[dict[str, Any]]:
        return [c for c in self.parity if self.parity_requires(c)]

    @contextlib.contextmanager
    def torch_dtype_context(self, dtype: torch.dtype) -> Iterator[None]:
        """Set torch's default dtype as the counterpart needs for ``dtype``, and restore it."""
        old = torch.get_default_dtype()
        if self.float64_default_for_parity and dtype == torch.float64:
            torch.set_default_dtype(torch.float64)
        try:
            yield
        finally:
            torch.set_default_dtype(old)


def _nesterov_ok(hp: dict[str, Any]) -> bool:
    return not hp.get("nesterov") or (hp.get("momentum", 0) > 0 and hp.get("dampening", 0) == 0)


_MAX = [False, True]

OPTIMS: list[OptimInfo] = [
    OptimInfo(
        "gd", required={"lr": 0.1},
        torch_cls=torch.optim.SGD, parity=grid(lr=[0.1, 0.03], maximize=_MAX),
        supports_sparse=True, sparse_parity=grid(lr=[0.1], maximize=_MAX),
        quadratic=Converge({"lr": 0.1}, 300, 1e-8),
        rosenbrock=Converge({"lr": 0.02}, 1000, 2e-3),
    ),
    OptimInfo(
        "momentum", required={"lr": 0.1}, supports_sparse=True,
        quadratic=Converge({"lr": 0.1, "momentum": 0.5}, 300, 1e-8),
        rosenbrock=Converge({"lr": 0.01, "momentum": 0.9}, 1000, 1e-6),
    ),
    OptimInfo(
        "nesterov", required={"lr": 0.1}, supports_sparse=True,
        quadratic=Converge({"lr": 0.1, "momentum": 0.5}, 300, 1e-8),
        rosenbrock=Converge({"lr": 0.01, "momentum": 0.9}, 1000, 1e-6),
    ),
    OptimInfo(
        "sgd", torch_cls=torch.optim.SGD,
        parity=grid(lr=[0.05], momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=[False, True],
                    weight_decay=[0.0, 0.1], maximize=_MAX),
        parity_requires=_nesterov_ok,
        supports_sparse=True,
        sparse_parity=grid(lr=[0.1], momentum=[0.0, 0.9], dampening=[0.0, 0.3], maximize=_MAX)
        + [{"lr": 0.1, "momentum": 0.9, "nesterov": True}],
        quadratic=Converge({"lr": 0.1, "momentum": 0.5}, 300, 1e-8),
        rosenbrock=Converge({"lr": 0.01, "momentum": 0.9}, 1000, 1e-6),
    ),
    OptimInfo(
        "adagrad", torch_cls=torch.optim.Adagrad, torch_fixed={"eps_in_sqrt": False},
        parity=grid(lr=[0.1], lr_decay=[0.0, 0.1], weight_decay=[0.0, 0.1], initial_accumulator_value=[0.0, 0.5],
                    eps=[1e-10, 1e-2], maximize=_MAX),
        supports_sparse=True,
        sparse_parity=[{"lr": 0.1}, {"lr": 0.1, "lr_decay": 0.1, "initial_accumulator_value": 0.3, "eps": 1e-3},
                       {"lr": 0.1, "maximize": True}],
        quadratic=Converge({"lr": 1.0}, 300, 1e-8),
        rosenbrock=Converge({"lr": 0.5}, 1000, 3e-3),
    ),
    OptimInfo(
        "rmsprop", torch_cls=torch.optim.RMSprop, torch_fixed={"eps_in_sqrt": False},
        parity=grid(lr=[0.01], alpha=[0.99, 0.5], eps=[1e-8, 1e-2], weight_decay=[0.0, 0.1],
                    momentum=[0.0, 0.9], centered=[False, True], maximize=_MAX),
        quadratic=Converge({"lr": Decay(0.3, 40)}, 300, 1e-6),
        rosenbrock=Converge({"lr": Decay(0.1, 150)}, 1000, 1e-3),
    ),
    OptimInfo(
        "adadelta", torch_cls=torch.optim.Adadelta,
        parity=grid(lr=[1.0, 0.5], rho=[0.9, 0.5], eps=[1e-6, 1e-2], weight_decay=[0.0, 0.1], maximize=_MAX),
        quadratic=Converge({"lr": 1.0, "eps": 1e-2}, 300, 1e-6),
        rosenbrock=Converge({"lr": Decay(2.0, 300), "eps": 1e-2}, 2000, 1e-2),
    ),
    OptimInfo(
        "adam", torch_cls=torch.optim.Adam,
        parity=grid(lr=[0.01], betas=[(0.9, 0.999), (0.5, 0.9)], eps=[1e-8, 1e-2], weight_decay=[0.0, 0.1],
                    amsgrad=[False, True], maximize=_MAX),
        quadratic=Converge({"lr": 1.0}, 300, 1e-5),
        rosenbrock=Converge({"lr": Decay(0.3, 150)}, 1000, 1e-5),
    ),
    OptimInfo(
        "adamw", torch_cls=torch.optim.AdamW,
        parity=grid(lr=[0.01], betas=[(0.9, 0.999), (0.5, 0.9)], eps=[1e-8, 1e-2], weight_decay=[0.0, 0.1],
                    amsgrad=[False, True], maximize=_MAX),
        quadratic=Converge({"lr": 1.0, "weight_decay": 0.0}, 300, 1e-5),
        rosenbrock=Converge({"lr": Decay(0.3, 150), "weight_decay": 0.0}, 1000, 1e-5),
    ),
    OptimInfo(
        "nadam", torch_cls=torch.optim.NAdam, float64_default_for_parity=True,
        parity=grid(lr=[0.01], betas=[(0.9, 0.999), (0.5, 0.9)], eps=[1e-8, 1e-2], weight_decay=[0.0, 0.1],
                    momentum_decay=[4e-3, 0.1], decoupled_weight_decay=[False, True], maximize=_MAX),
        quadratic=Converge({"lr": 0.1}, 300, 1e-8),
        rosenbrock=Converge({"lr": Decay(1.0, 150)}, 1000, 2e-3),
    ),
    OptimInfo(
        "radam", torch_cls=torch.optim.RAdam,
        parity=grid(lr=[0.01], betas=[(0.9, 0.999), (0.5, 0.9)], eps=[1e-8, 1e-2], weight_decay=[0.0, 0.1],
                    decoupled_weight_decay=[False, True], maximize=_MAX),
        quadratic=Converge({"lr": 1.0}, 300, 1e-4),
        rosenbrock=Converge({"lr": Decay(0.5, 150, warmup=100)}, 1000, 1e-2),
    ),
    OptimInfo(
        "adamax", torch_cls=torch.optim.Adamax,
        parity=grid(lr=[0.01], betas=[(0.9, 0.999), (0.5, 0.9)], eps=[1e-8, 1e-2], weight_decay=[0.0, 0.1],
                    maximize=_MAX),
        quadratic=Converge({"lr": 1.0}, 300, 1e-5),
        rosenbrock=Converge({"lr": 0.5}, 1000, 1e-6),
    ),
    OptimInfo(
        "lion",
        quadratic=Converge({"lr": Decay(0.3, 25)}, 300, 1e-3),
        rosenbrock=Converge({"lr": Decay(0.1, 150)}, 1000, 1e-2),
    ),
]

BY_NAME: dict[str, OptimInfo] = {o.name: o for o in OPTIMS}
WITH_TORCH: list[OptimInfo] = [o for o in OPTIMS if o.torch_cls is not None]


# --------------------------------------------------------------------------- the fixed problem

#: at these steps (0-based) these parameter indices get no gradient (grad set to None)
NO_GRAD_AT: dict[int, tuple[int, ...]] = {0: (2,), 3: (0,)}


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.Tensor]:
    """Three small leaf tensors of different shapes, values bounded away from 0."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (4,), (2, 3)]
    out = []
    for s in shapes:
        x = torch.rand(s, generator=g, dtype=torch.float64) + 0.5
        sign = torch.where(torch.rand(s, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
        out.append((x * sign).to(dtype).requires_grad_())
    return out


def loss_fn(params: list[torch.Tensor], t: int) -> torch.Tensor:
    """A smooth, non-quadratic loss whose gradients change with the step ``t``: varied signs and scales."""
    w, b, c = params
    x = torch.linspace(-1.0, 1.0, 4, dtype=w.dtype) * (1 + 0.3 * math.sin(t))
    h = torch.tanh(w @ x + b[:3])
    return ((h - 0.2 * t) ** 2).sum() + 0.1 * (b ** 4).sum() + (torch.sin(2 * c) * (1 + t % 3)).sum()


def trajectory(factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer], steps: int = 8,
               dtype: torch.dtype = torch.float64, no_grad_at: dict[int, tuple[int, ...]] | None = None,
               seed: int = 0, before_step: Callable[[Any, list[torch.Tensor], int], None] | None = None,
               ) -> list[list[torch.Tensor]]:
    """Run ``factory(params)`` for ``steps`` steps on the fixed problem; return the parameters after each.

    At step ``t`` the parameters listed in ``no_grad_at[t]`` (default :data:`NO_GRAD_AT`) get no
    gradient, so an optimizer must skip them (and create their state late). ``before_step(opt,
    params, t)``, if given, runs after the gradients are in place and before ``opt.step()``.
    """
    no_grad_at = NO_GRAD_AT if no_grad_at is None else no_grad_at
    params = make_params(dtype, seed)
    opt = factory(params)
    out = []
    for t in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(params, t).backward()
        for i in no_grad_at.get(t, ()):
            params[i].grad = None
        if before_step is not None:
            before_step(opt, params, t)
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-6, atol=1e-6)}


def assert_same_trajectory(a, b, dtype: torch.dtype = torch.float64, tol: dict | None = None, what: str = ""):
    """Every parameter after every step agrees within the dtype's tolerance (``tol`` overrides)."""
    tol = TOL[dtype] if tol is None else tol
    assert len(a) == len(b)
    for t, (pa, pb) in enumerate(zip(a, b)):
        for i, (x, y) in enumerate(zip(pa, pb)):
            torch.testing.assert_close(x, y, **tol, msg=lambda m: f"{what} step {t} param {i}: {m}")


def assert_bitwise(a, b, what: str = ""):
    for t, (pa, pb) in enumerate(zip(a, b)):
        for i, (x, y) in enumerate(zip(pa, pb)):
            assert torch.equal(x, y), f"{what} step {t} param {i} differs: {x} vs {y}"


# name -> configurations that between them flip every switch that changes a generated kernel (every
# static flag both ways): the fast-path tests of both backends (test_fast, test_triton) run them all
SWITCH_CONFIGS = {
    "gd": [dict(lr=0.05), dict(lr=0.05, maximize=True)],
    "momentum": [dict(lr=0.05, momentum=0.9)],
    "nesterov": [dict(lr=0.05, momentum=0.8)],
    "sgd": [dict(lr=0.05), dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.01),
            dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)],
    "adagrad": [dict(lr=0.05), dict(lr=0.05, eps_in_sqrt=False, lr_decay=0.01, weight_decay=0.01,
                                    initial_accumulator_value=0.1)],
    "rmsprop": [dict(lr=0.01), dict(lr=0.01, centered=True),
                dict(lr=0.01, centered=True, momentum=0.5, eps_in_sqrt=False, weight_decay=0.01)],
    "adadelta": [dict(), dict(weight_decay=0.01, rho=0.5, maximize=True)],
    "adam": [dict(lr=0.01), dict(lr=0.01, amsgrad=True, weight_decay=0.01, maximize=True)],
    "adamw": [dict(lr=0.01), dict(lr=0.01, amsgrad=True, weight_decay=0.0)],
    "nadam": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True)],
    "radam": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True)],
    "adamax": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.01)],
    "lion": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1, betas=(0.5, 0.9))],
}
