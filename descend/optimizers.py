r"""The named optimizers: each one is a chain of blocks from :mod:`descend.blocks`.

Read the chain left to right: the gradient goes in, the last block's output ``u`` is added to θ.
The chapter's three rules come first.

=========  ============================================================================
GD         [lr]                          θ ← θ − η g
Momentum   [lr, trace]                   ṽ ← γ ṽ − η g;  θ ← θ + ṽ       (η inside)
AdaGrad    [wd, rss, lr]                 r ← r + g⊙g;  θ ← θ − η/√(r + ε) ⊙ g
SGD        [wd, trace, lr]               b ← γ b + (1 − δ) g;  θ ← θ − η b  (η outside)
=========  ============================================================================
"""

from __future__ import annotations

from typing import Any

from descend.blocks import (
    AddDecayedWeights,
    ScaleByAdadelta,
    ScaleByAdam,
    ScaleByAdamax,
    ScaleByLearningRate,
    ScaleByLion,
    ScaleByNadam,
    ScaleByRadam,
    ScaleByRms,
    ScaleByRss,
    Trace,
)
from descend.core import ChainOptimizer

__all__ = ["GD", "Momentum", "Nesterov", "SGD", "AdaGrad", "RMSProp", "AdaDelta", "Adam", "AdamW",
           "NAdam", "RAdam", "Adamax", "Lion", "REGISTRY", "available", "create"]


def _with_momentum(coefficient: Any) -> dict[str, float]:
    """``lr="auto"`` for a rule whose direction keeps a momentum (``coefficient`` ≠ 0; a schedule
    counts): β = 0.1 and c = 0.5 (descend.auto's ``adapt`` and ``cap``). Measured (7 tasks × 15
    seeds, each rule against its own grid): at the defaults of the other rules, Momentum and Adam
    settled on diabetes at ~10× the rate that generalises and lost 2.15 and 2.05 points there; with
    these, −0.94 and −0.39 (Adam pays 2.3 points on the MNIST-1D CNN). Rules without momentum, whose
    cap binds, lost 4–5 points of mean with them (iris, the MNIST-1D CNN), so they keep theirs."""
    try:
        none = float(coefficient) == 0.0
    except (TypeError, ValueError, RuntimeError):
        none = False
    return {} if none else {"adapt": 0.1, "cap": 0.5}


def _auto_defaults_from_betas(self, hyperparameters):
    """The Adam family and Lion: momentum where β₁ > 0 (see :func:`_with_momentum`)."""
    betas = hyperparameters.get("betas", (0.9, 0.999))
    return _with_momentum(betas[0] if isinstance(betas, (tuple, list)) and betas else betas)


def _hp(local_vars: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters of a constructor call: its arguments but self, params and the class cell."""
    return {k: v for k, v in local_vars.items() if k not in ("self", "params", "__class__")}


# ------------------------------------------------------------------ the chapter's three rules


class GD(ChainOptimizer):
    r"""Gradient descent: θ_{t+1} = θ_t − η g_t.

    Args:
        params: parameters or parameter groups.
        lr: η (or a schedule of the step).
        maximize, skip_nonfinite, partitioned, fast: see :class:`~descend.core.ChainOptimizer`.

    Source: the chapter "Momentum & Adaptive LR"; Cauchy (1847).
    """

    blocks = (ScaleByLearningRate(),)

    def __init__(self, params, lr, *, maximize=False, skip_nonfinite=False, partitioned=False, fast=True):
        super().__init__(params, **_hp(locals()))


class Momentum(ChainOptimizer):
    r"""Momentum with the learning rate inside the velocity (the chapter's rule):
    ṽ_t = γ ṽ_{t−1} − η_t g_t,  θ_{t+1} = θ_t + ṽ_t,  ṽ_0 = 0.

    With a constant η this equals torch.optim.SGD(momentum=γ); with a changing η it does not: here a
    new η affects only new gradients, in SGD it rescales the whole buffer at once.

    Args:
        lr: η; momentum: γ in [0, 1).

    Source: the chapter; Polyak (1964); Sutskever et al. (2013), eq. 1.
    """

    blocks = (ScaleByLearningRate(), Trace(dampening=0.0, nesterov=False))

    def __init__(self, params, lr, momentum=0.9,
                 *, maximize=False, skip_nonfinite=False, partitioned=False, fast=True):
        super().__init__(params, **_hp(locals()))

    def _auto_defaults(self, hyperparameters):
        return _with_momentum(hyperparameters.get("momentum", 0.9))  # lr="auto" with momentum


class AdaGrad(ChainOptimizer):
    r"""AdaGrad with ε inside the root (the chapter's rule):
    r_t = r_{t−1} + g_t ⊙ g_t,  θ_{t+1} = θ_t − η_t / √(r_t + ε) ⊙ g_t.

    ``eps_in_sqrt=False`` gives torch.optim.Adagrad exactly: θ ← θ − η_t g / (√r + ε), with
    η_t = η / (1 + (t − 1)·lr_decay) and L2 ``weight_decay`` added to g first.
    Sparse gradients are supported (as torch.optim.Adagrad; not with weight decay).

    Source: the chapter; Duchi, Hazan & Singer (2011).
    """

    blocks = (AddDecayedWeights(), ScaleByRss(), ScaleByLearningRate(decay=True))

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, eps_in_sqrt=True,
                 *, maximize=False, skip_nonfinite=False, partitioned=False, fast=True):
        super().__init__(params, **_hp(locals()))

    def _auto_defaults(self, hyperparameters):
        # lr="auto": a faster estimate (β = 0.3; see descend.auto's ``adapt``, measured on the tuning table)
        return {"adapt": 0.3}

    def _step_group(self, group):
        if group["weight_decay"] != 0 and any(p.grad is not None and p.grad.is_sparse for p in group["params"]):
            raise RuntimeError("AdaGrad: weight_decay is not compatible with sparse gradients")
        super()._step_group(group)


# ------------------------------------------------------------------ momentum variants


class Nesterov(ChainOptimizer):
    r"""Nesterov's accelerated gradient, learning rate inside the velocity:
    ṽ_t = γ ṽ_{t−1} − η_t g_t,  θ_{t+1} = θ_t + γ ṽ_t − η_t g_t
    (the gradient is taken at θ_t; Sutskever et al. 2013's reformulation of the look-ahead).

    Source: Nesterov (1983); Sutskever et al. (2013); Bengio et al. (2013).
    """

    blocks = (ScaleByLearningRate(), Trace(dampening=0.0, nesterov=True))

    def __init__(self, params, lr, momentum=0.9,
                 *, maximize=False, skip_nonfinite=False, partitioned=False, fast=True):
        super().__init__(params, **_hp(locals()))

    def _auto_defaults(self, hyperparameters):
        return _with_momentum(hyperparameters.get("momentum", 0.9))  # lr="auto" with momentum


class SGD(ChainOptimizer):
    r"""torch.optim.SGD exactly (learning rate outside the buffer):
    g ← g + λθ;  b_t = γ b_{t−1} + (1 − δ) g_t (b_1 = g_1);  d = g + γ b_t if nesterov else b_t;
    θ ← θ − η d.  Sparse gradients work as in torch.optim.SGD (the momentum buffer is kept dense).
    """

    blocks = (AddDecayedWeights(), Trace(), ScaleByLearningRate())

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 *, maximize=False, skip_nonfinite=False, partitioned=False, fast=True):
        super().__init__(params, **_hp(locals()))

    def _auto_defaults(self, hyperparameters):
        return _with_momentum(hyperparameters.get("momentum", 0.0))  # lr="auto" with momentum


# ------------------------------------------------------------------ adaptive family


class RMSProp(ChainOptimizer):
    r"""RMSProp: v ← α v + (1 − α) g²;  u = g / √(v + ε) (``eps_in_sqrt=True``, as AdaGrad in the
    chapter) or g / (√v + ε) (``eps_in_sqrt=False``: torch.optim.RMSprop exactly);
    optional centring (v − m², m the mean of g) and momentum b ← γ b + u;  θ ← θ − η b.

    Source: Tieleman & Hinton (2012), lecture 6.5; Graves (2013) for the centred form.
    """

    blocks = (AddDecayedWeights(), ScaleByRms(), Trace(dampening=0.0, nesterov=False), ScaleByLearningRate())

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 eps_in_sqrt=True, *, maximize=False, skip_nonfinite=False, partitioned=False, fast=True):
        super().__init__(params, **_hp(locals()))

    def _auto_defaults(self, hyperparameters):
        # lr="auto": β = 0.3 without momentum, as AdaGrad (measured); with momentum, as Momentum
        return _with_momentum(hyperparameters.get("momentum", 0.0)) or {"adapt": 0.3}


class AdaDelta(ChainOptimizer):
    r"""AdaDelta = torch.optim.Adadelta: v ← ρv + (1 − ρ)g²;  Δ = √(a + ε)/√(v + ε)·g;
    a ← ρa + (1 − ρ)Δ²;  θ ← θ − η Δ.   Source: Zeiler (2012)."""

    blocks = (AddDecayedWeights(), ScaleByAdadelta(), ScaleByLearningRate())

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
                 *, maximize=False, skip_nonfinite=False, partitioned=False, fast=True):
        super().__init__(params, **_hp(locals()))


class Adam(ChainOptimizer):
    r"""Adam = torch.optim.Adam: g ← g + λθ;  m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;
    θ ← θ − η · (m/(1 − β₁ᵗ)) / (√v/√(1 − β₂ᵗ) + ε)  (AMSGrad: v replaced by its running max).

    Source: Kingma & Ba (2015); Reddi, Kale & Kumar (2018) for AMSGrad.
    """

    blocks = (AddDecayedWeights(), ScaleByAdam(), ScaleByLearningRate())

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 *, maximize=False, skip_nonfinite=False, partitioned=False, fast=True):
        super().__init__(params, **_hp(locals()))

    _auto_defaults = _auto_defaults_from_betas  # lr="auto": with momentum where β₁ > 0


class AdamW(ChainOptimizer):
    r"""AdamW = torch.optim.AdamW: Adam with decoupled weight decay,
    θ ← θ − ηλθ − η · (m̂ / (√v̂ + ε)).   Source: Loshchilov & Hutter (2019)."""

    blocks = (ScaleByAdam(), AddDecayedWeights(), ScaleByLearningRate())
    implied = {"decoupled_weight_decay": True}  # what torch.optim.AdamW's state says

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 *, maximize=False, skip_nonfinite=False, partitioned=False, fast=True):
        super().__init__(params, **_hp(locals()))

    _auto_defaults = _auto_defaults_from_betas  # lr="auto": with momentum where β₁ > 0


class NAdam(ChainOptimizer):
    r"""NAdam = torch.optim.NAdam: Adam with Nesterov momentum and the momentum schedule
    μ_t = β₁(1 − ½·0.96^{tψ}) (see :class:`~descend.blocks.ScaleByNadam`); weight decay is L2, or
    decoupled (θ ← θ − ηλθ) with ``decoupled_weight_decay=True``.   Source: Dozat (2016)."""

    blocks = (AddDecayedWeights(when="coupled"), ScaleByNadam(), AddDecayedWeights(when="decoupled"),
              ScaleByLearningRate())

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                 decoupled_weight_decay=False,
                 *, maximize=False, skip_nonfinite=False, partitioned=False, fast=True):
        super().__init__(params, **_hp(locals()))

    def _auto_defaults(self, hyperparameters):
        # lr="auto": NAdam keeps β = 0.2 and c = 1 although it keeps a momentum. Measured (tuning
        # table, 7 tasks × 10 seeds, against Adam's grid): with β = 0.1, c = 0.5 its MNIST-1D CNN
        # fell from 0.922 to 0.858 and its mean gap from +0.82 to −0.47 (worst −1.37 → −3.36)
        return {}


class RAdam(ChainOptimizer):
    r"""RAdam = torch.optim.RAdam: Adam whose adaptive step is switched on, rectified, only once the
    variance of the adaptive rate is tractable (ρ_t > 5; see :class:`~descend.blocks.ScaleByRadam`).
    Source: Liu et al. (2020)."""

    blocks = (AddDecayedWeights(when="coupled"), ScaleByRadam(), AddDecayedWeights(when="decoupled"),
              ScaleByLearningRate())

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False,
                 *, maximize=False, skip_nonfinite=False, partitioned=False, fast=True):
        super().__init__(params, **_hp(locals()))

    _auto_defaults = _auto_defaults_from_betas  # lr="auto": with momentum where β₁ > 0


class Adamax(ChainOptimizer):
    r"""Adamax = torch.optim.Adamax: m ← β₁m + (1 − β₁)g;  n ← max(β₂n, |g| + ε);
    θ ← θ − η m / ((1 − β₁ᵗ) n).   Source: Kingma & Ba (2015), §7.1."""

    blocks = (AddDecayedWeights(), ScaleByAdamax(), ScaleByLearningRate())

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 *, maximize=False, skip_nonfinite=False, partitioned=False, fast=True):
        super().__init__(params, **_hp(locals()))

    _auto_defaults = _auto_defaults_from_betas  # lr="auto": with momentum where β₁ > 0


class Lion(ChainOptimizer):
    r"""Lion: c = β₁m + (1 − β₁)g;  θ ← θ − η(sign(c) + λθ);  m ← β₂m + (1 − β₂)g.
    Source: Chen et al. (2023), "Symbolic Discovery of Optimization Algorithms", Alg. 2."""

    blocks = (ScaleByLion(), AddDecayedWeights(), ScaleByLearningRate())

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0,
                 *, maximize=False, skip_nonfinite=False, partitioned=False, fast=True):
        super().__init__(params, **_hp(locals()))

    _auto_defaults = _auto_defaults_from_betas  # lr="auto": with momentum where β₁ > 0


# ------------------------------------------------------------------ the registry

#: name → optimizer class; feeds :func:`create`, the CLI, the lab and the tests.
REGISTRY: dict[str, type[ChainOptimizer]] = {
    cls.__name__.lower(): cls
    for cls in (GD, Momentum, Nesterov, SGD, AdaGrad, RMSProp, AdaDelta, Adam, AdamW, NAdam, RAdam, Adamax, Lion)
}


def available() -> list[str]:
    """The names :func:`create` accepts (lower case; ``create`` ignores case)."""
    return list(REGISTRY)


def create(name: str, params, **hyperparameters: Any) -> ChainOptimizer:
    """Build an optimizer by name, e.g. ``create("adam", model.parameters(), lr=3e-4)``."""
    cls = REGISTRY.get(str(name).lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(available())}")
    return cls(params, **hyperparameters)
