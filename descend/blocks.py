r"""The blocks optimizers are chained from.

Each block is one gradient transformation ``u ↦ u'`` with its own per-parameter state. ``apply``
is the readable reference (torch ops on one tensor); ``c_code`` is the same rule for one element in
C, used by :mod:`descend.kernels`. In C snippets ``u`` is the update, ``p`` the parameter value,
``s_NAME`` the state tensor NAME and ``c_NAME`` the scalar NAME from ``scalars``;
``SQRT``, ``ABS``, ``MAX``, ``SIGN``, ``FMA`` and ``LERP`` work in the parameter's precision.

One semantics on both paths, non-finite values included (see :mod:`descend.kernels.codegen`): a
snippet does what its ``apply`` does as ATen computes it — one rounding per operation, except that
``lerp``, ``addcmul`` and ``add(alpha=)`` are one fused multiply-add (``LERP``, ``FMA``), ``MAX``
propagates NaN as ``torch.maximum`` does, and NaN stays NaN (Lion's ``_sign`` keeps it, where
``torch.sign(nan)`` is 0 and would freeze the coordinate). ``tests/test_differential.py`` checks it.

The learning rate and the sign enter only in :class:`ScaleByLearningRate`. Symbols follow the
chapter and the papers: η learning rate, γ momentum, β₁/β₂ moment decays, ε, λ weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from descend.core import Block, Hyper

__all__ = [
    "AddDecayedWeights",
    "ScaleByLearningRate",
    "Trace",
    "ScaleByRss",
    "ScaleByRms",
    "ScaleByAdadelta",
    "ScaleByAdam",
    "ScaleByNadam",
    "ScaleByRadam",
    "ScaleByAdamax",
    "ScaleByLion",
    "ZeroNonfinite",
    "ScaleByAutoLearningRate",
    "AverageIterates",
    "Auto",
    "auto",
]

_LR = Hyper("lr", 1e-3, "nonneg", "learning rate η")
_WD = Hyper("weight_decay", 0.0, "nonneg", "weight decay λ")
_EPS = Hyper("eps", 1e-8, "pos", "ε, for numerical stability")
_BETAS = Hyper("betas", (0.9, 0.999), "betas", "(β₁, β₂), decay rates of the moment estimates")


def _lerp_c(state: str, weight: str) -> str:
    return f"s_{state} = LERP(s_{state}, u, {weight});"  # torch.lerp's own formula (descend.kernels.codegen)


def _ema_sq_c(state: str, decay: str, weight: str, x: str = "u") -> str:
    """``s.mul_(decay).addcmul_(x, x, value=weight)`` as ATen computes it: the product rounded, then
    one fused multiply-add (descend.kernels.codegen)."""
    return f"s_{state} = FMA({weight} * {x}, {x}, {decay} * s_{state});"


def _sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x) that keeps NaN (torch.sign(nan) is 0): a NaN must reach the parameter, not freeze it."""
    return torch.where(torch.isnan(x), x, torch.sign(x))


class ScaleByLearningRate(Block):
    r"""u ← −η_t u: the only block that applies the learning rate (and the minus sign of descent).

    With ``decay=True`` it also reads ``lr_decay`` and uses torch.optim.Adagrad's inverse-time
    decay η_t = η / (1 + (t − 1)·lr_decay); otherwise η_t = η (a schedule may still drive η).
    """

    hyper = (_LR,)
    supports_sparse = True  # u · (−η) keeps a sparse u sparse

    def __init__(self, decay: bool = False, **pinned):
        self.decay = decay
        if decay:
            self.hyper = (_LR, Hyper("lr_decay", 0.0, "nonneg", "inverse-time decay of η"))
        super().__init__(**pinned)

    def scalars(self, h, st, new):
        lr = float(h["lr"])
        if self.decay:
            lr = lr / (1 + (st["step"] - 1) * float(h["lr_decay"]))
        return {"neg_lr": -lr}

    def apply(self, u, p, s, c):
        return u * c.neg_lr

    def c_code(self, h):
        return "u = c_neg_lr * u;"

    def __repr__(self):
        return "ScaleByLearningRate(decay=True)" if self.decay else super().__repr__()


class AddDecayedWeights(Block):
    r"""u ← u + λ θ.

    Before an adaptive block this is L2 regularisation (torch's ``weight_decay``); after it and before
    the learning rate it is decoupled weight decay (AdamW: θ ← θ − ηλθ − η·u).
    ``when="coupled"``/``"decoupled"`` makes the block act only if the group's
    ``decoupled_weight_decay`` says so (NAdam, RAdam carry that flag).
    """

    hyper = (_WD,)
    supports_sparse = True  # λ = 0 passes a sparse u through; λ ≠ 0 makes it dense (L2 touches every θ)

    def __init__(self, when: str | None = None, **pinned):
        if when not in (None, "coupled", "decoupled"):
            raise ValueError(f"AddDecayedWeights: invalid when={when!r}; expected None, 'coupled' or 'decoupled'")
        self.when = when
        if when is not None:
            self.hyper = (_WD, Hyper("decoupled_weight_decay", False, "bool", "AdamW-style weight decay"))
        super().__init__(**pinned)

    def _active(self, h) -> bool:
        if self.when is None:
            return True
        return h["decoupled_weight_decay"] == (self.when == "decoupled")

    def scalars(self, h, st, new):
        return {"wd": float(h["weight_decay"]) if self._active(h) else 0.0}

    def apply(self, u, p, s, c):
        if c.wd == 0:
            return u
        return (u.to_dense() if u.is_sparse else u) + c.wd * p

    def c_code(self, h):
        return "u += c_wd * p;" if self._active(h) and h["weight_decay"] != 0 else ""

    def __repr__(self):
        return f"AddDecayedWeights(when={self.when!r})" if self.when else super().__repr__()


class Trace(Block):
    r"""Momentum: v ← γ v + (1 − δ) u (v ← u on its first step); u ← v, or u + γ v with Nesterov.

    With the learning rate applied *before* this block, v is the chapter's velocity
    ṽ_t = γ ṽ_{t−1} − η g_t; after it, v is torch.optim.SGD's buffer. γ = 0 keeps no state.
    """

    hyper = (
        Hyper("momentum", 0.0, "unit", "γ"),
        Hyper("dampening", 0.0, "closed_unit", "δ"),
        Hyper("nesterov", False, "bool", "Nesterov momentum"),
    )
    all_buffers = ("momentum_buffer",)
    supports_sparse = True  # the buffer is dense; a sparse u is added into it (as torch.optim.SGD does)

    def validate(self, h, owner):
        super().validate(h, owner)
        if h["nesterov"] and (float(h["momentum"]) <= 0 or float(h["dampening"]) != 0):
            raise ValueError(
                f"{owner}: invalid nesterov=True with momentum={h['momentum']!r} and dampening="
                f"{h['dampening']!r}; Nesterov momentum needs momentum in (0, 1) and dampening 0"
            )

    def buffers(self, h):
        return ("momentum_buffer",) if float(h["momentum"]) != 0 else ()

    def scalars(self, h, st, new):
        return {"momentum": float(h["momentum"]), "damp": 1.0 - float(h["dampening"]),
                "first": "momentum_buffer" in new, "nesterov": bool(h["nesterov"])}

    def apply(self, u, p, s, c):
        if c.momentum == 0:
            return u
        v = s["momentum_buffer"]
        if c.first:
            v.copy_(u.to_dense() if u.is_sparse else u)
        else:
            v.mul_(c.momentum).add_(u, alpha=c.damp)
        return (c.momentum * v).add_(u) if c.nesterov else v  # γv + u: dense first, so u may be sparse

    def c_code(self, h):
        if float(h["momentum"]) == 0:
            return ""
        tail = "u = u + c_momentum * s_momentum_buffer;" if h["nesterov"] else "u = s_momentum_buffer;"
        # v.mul_(γ).add_(u, alpha=1 − δ): ATen's add with alpha is one fused multiply-add
        return ("s_momentum_buffer = c_first ? u : FMA(u, c_damp, c_momentum * s_momentum_buffer);\n" + tail)


class ScaleByRss(Block):
    r"""AdaGrad's scaling: r ← r + u ⊙ u;  u ← u / √(r + ε)  (the chapter, ``eps_in_sqrt=True``)
    or u / (√r + ε)  (torch.optim.Adagrad, ``eps_in_sqrt=False``). r starts at
    ``initial_accumulator_value``. Works on sparse gradients as torch.optim.Adagrad does.
    """

    hyper = (
        Hyper("eps", 1e-10, "pos", "ε"),
        Hyper("eps_in_sqrt", True, "bool", "ε inside the root (chapter) or outside (torch)"),
        Hyper("initial_accumulator_value", 0.0, "nonneg", "r₀"),
    )
    all_buffers = ("sum",)
    supports_sparse = True

    def init_buffer(self, name, p, h):
        return torch.full_like(p, float(h["initial_accumulator_value"]), memory_format=torch.preserve_format)

    def scalars(self, h, st, new):
        return {"eps": float(h["eps"]), "inside": bool(h["eps_in_sqrt"])}

    def apply(self, u, p, s, c):
        r = s["sum"]
        if u.is_sparse:
            u = u.coalesce()
            idx, val = u._indices(), u._values()
            r.add_(torch.sparse_coo_tensor(idx, val * val, u.shape, check_invariants=False))
            rv = r.sparse_mask(u)._values()
            denom = (rv + c.eps).sqrt() if c.inside else rv.sqrt().add(c.eps)
            return torch.sparse_coo_tensor(idx, val / denom, u.shape, check_invariants=False)
        r.addcmul_(u, u)
        return u / ((r + c.eps).sqrt() if c.inside else r.sqrt().add(c.eps))

    def c_code(self, h):
        denom = "SQRT(s_sum + c_eps)" if h["eps_in_sqrt"] else "(SQRT(s_sum) + c_eps)"
        return f"s_sum = FMA(u, u, s_sum);\nu = u / {denom};"  # r.addcmul_(u, u)


class ScaleByRms(Block):
    r"""RMSProp's scaling: v ← α v + (1 − α) u²;  u ← u / √(v + ε)  (``eps_in_sqrt=True``) or
    u / (√v + ε) (torch.optim.RMSprop). ``centered`` subtracts the square of the mean
    m ← α m + (1 − α) u from v before the root (Graves 2013), clamped at 0: v − m² ≥ 0 in exact
    arithmetic, but rounding (e.g. α = 0, where v − m² = g² − g·g) can make it slightly negative, and
    torch.optim.RMSprop then returns NaN.
    """

    hyper = (
        Hyper("alpha", 0.99, "unit", "α, decay of the squared-gradient average"),
        Hyper("eps", 1e-8, "pos", "ε"),
        Hyper("centered", False, "bool", "centred RMSProp"),
        Hyper("eps_in_sqrt", True, "bool", "ε inside the root or outside (torch)"),
    )
    all_buffers = ("square_avg", "grad_avg")

    def buffers(self, h):
        return ("square_avg", "grad_avg") if h["centered"] else ("square_avg",)

    def scalars(self, h, st, new):
        a = float(h["alpha"])
        return {"alpha": a, "one_m_alpha": 1 - a, "eps": float(h["eps"]),
                "centered": bool(h["centered"]), "inside": bool(h["eps_in_sqrt"])}

    def apply(self, u, p, s, c):
        v = s["square_avg"].mul_(c.alpha).addcmul_(u, u, value=c.one_m_alpha)
        if c.centered:
            m = s["grad_avg"].lerp_(u, c.one_m_alpha)
            # ≥ 0 in exact arithmetic; rounding can dip below. m·m rounded before the subtraction (not
            # addcmul, which torch fuses): at α = 0, m = u exactly and v − m² is exactly 0 on both paths
            v = (v - m * m).clamp_min_(0)
        return u / ((v + c.eps).sqrt() if c.inside else v.sqrt().add(c.eps))

    def c_code(self, h):
        code = _ema_sq_c("square_avg", "c_alpha", "c_one_m_alpha") + "\nT v = s_square_avg;\n"
        if h["centered"]:
            code += _lerp_c("grad_avg", "c_one_m_alpha") + "\nv = MAX(v - s_grad_avg * s_grad_avg, (T)0);\n"
        code += "u = u / SQRT(v + c_eps);" if h["eps_in_sqrt"] else "u = u / (SQRT(v) + c_eps);"
        return code


class ScaleByAdadelta(Block):
    r"""AdaDelta (Zeiler 2012): v ← ρ v + (1 − ρ) u²;  Δ = √(a + ε) / √(v + ε) · u;
    a ← ρ a + (1 − ρ) Δ²;  u ← Δ."""

    hyper = (Hyper("rho", 0.9, "unit", "ρ"), Hyper("eps", 1e-6, "pos", "ε"))
    all_buffers = ("square_avg", "acc_delta")

    def scalars(self, h, st, new):
        r = float(h["rho"])
        return {"rho": r, "one_m_rho": 1 - r, "eps": float(h["eps"])}

    def apply(self, u, p, s, c):
        v = s["square_avg"].mul_(c.rho).addcmul_(u, u, value=c.one_m_rho)
        delta = (s["acc_delta"] + c.eps).sqrt() / (v + c.eps).sqrt() * u
        s["acc_delta"].mul_(c.rho).addcmul_(delta, delta, value=c.one_m_rho)
        return delta

    def c_code(self, h):
        return (_ema_sq_c("square_avg", "c_rho", "c_one_m_rho") + "\n"
                "T delta = SQRT(s_acc_delta + c_eps) / SQRT(s_square_avg + c_eps) * u;\n"
                + _ema_sq_c("acc_delta", "c_rho", "c_one_m_rho", "delta") + "\n"
                "u = delta;")


def _bias_corrections(h, t):
    b1, b2 = (float(b) for b in h["betas"])
    return b1, b2, 1 - b1 ** t, 1 - b2 ** t


class ScaleByAdam(Block):
    r"""Adam's scaling (Kingma & Ba 2015) = momentum + RMS scaling + bias correction:
    m ← β₁ m + (1 − β₁) u;  v ← β₂ v + (1 − β₂) u²;
    u ← (m / (1 − β₁ᵗ)) / (√v / √(1 − β₂ᵗ) + ε);  AMSGrad uses the running max of v.
    """

    hyper = (_BETAS, _EPS, Hyper("amsgrad", False, "bool", "AMSGrad (Reddi et al. 2018)"))
    all_buffers = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def buffers(self, h):
        return self.all_buffers if h["amsgrad"] else self.all_buffers[:2]

    def scalars(self, h, st, new):
        b1, b2, bc1, bc2 = _bias_corrections(h, st["step"])
        return {"one_m_b1": 1 - b1, "b2": b2, "one_m_b2": 1 - b2, "bc1": bc1,
                "sqrt_bc2": math.sqrt(bc2), "eps": float(h["eps"]), "amsgrad": bool(h["amsgrad"])}

    def apply(self, u, p, s, c):
        m = s["exp_avg"].lerp_(u, c.one_m_b1)
        v = s["exp_avg_sq"].mul_(c.b2).addcmul_(u, u, value=c.one_m_b2)
        if c.amsgrad:
            v = torch.maximum(s["max_exp_avg_sq"], v, out=s["max_exp_avg_sq"])
        return (m / c.bc1) / (v.sqrt() / c.sqrt_bc2 + c.eps)

    def c_code(self, h):
        code = (_lerp_c("exp_avg", "c_one_m_b1") + "\n"
                + _ema_sq_c("exp_avg_sq", "c_b2", "c_one_m_b2") + "\nT v = s_exp_avg_sq;\n")
        if h["amsgrad"]:
            code += "s_max_exp_avg_sq = MAX(s_max_exp_avg_sq, v);\nv = s_max_exp_avg_sq;\n"
        return code + "u = (s_exp_avg / c_bc1) / (SQRT(v) / c_sqrt_bc2 + c_eps);"


class ScaleByNadam(Block):
    r"""NAdam's scaling (Dozat 2016), as torch.optim.NAdam: with μ_t = β₁(1 − ½·0.96^{tψ}),
    m ← β₁ m + (1 − β₁) u;  v ← β₂ v + (1 − β₂) u²;  d = √(v / (1 − β₂ᵗ)) + ε;
    u ← ((1 − μ_t)/(1 − Π_{i≤t} μ_i) · u + μ_{t+1}/(1 − Π_{i≤t+1} μ_i) · m) / d.
    The running product Π μ is per-parameter plain-number state (a Python float, exact on reload).
    """

    hyper = (_BETAS, Hyper("eps", 1e-8, "pos", "ε"),
             Hyper("momentum_decay", 4e-3, "nonneg", "ψ"))
    all_buffers = ("exp_avg", "exp_avg_sq")
    scalar_state = ("mu_product",)

    def init_scalar_state(self, st):
        st["mu_product"] = 1.0

    @staticmethod
    def _mu(h, t):
        return float(h["betas"][0]) * (1.0 - 0.5 * 0.96 ** (t * float(h["momentum_decay"])))

    def advance(self, h, st):
        st["mu_product"] *= self._mu(h, st["step"])

    def scalars(self, h, st, new):
        b1, b2, _, bc2 = _bias_corrections(h, st["step"])
        t, prod = st["step"], st["mu_product"]
        mu, mu_next = self._mu(h, t), self._mu(h, t + 1)
        return {"one_m_b1": 1 - b1, "b2": b2, "one_m_b2": 1 - b2, "bc2": bc2, "eps": float(h["eps"]),
                "cg": (1.0 - mu) / (1.0 - prod), "cm": mu_next / (1.0 - prod * mu_next)}

    def apply(self, u, p, s, c):
        m = s["exp_avg"].lerp_(u, c.one_m_b1)
        v = s["exp_avg_sq"].mul_(c.b2).addcmul_(u, u, value=c.one_m_b2)
        d = (v / c.bc2).sqrt() + c.eps
        return (c.cg * u + c.cm * m) / d

    def c_code(self, h):
        return (_lerp_c("exp_avg", "c_one_m_b1") + "\n"
                + _ema_sq_c("exp_avg_sq", "c_b2", "c_one_m_b2") + "\n"
                "T d = SQRT(s_exp_avg_sq / c_bc2) + c_eps;\n"
                "u = (c_cg * u + c_cm * s_exp_avg) / d;")


class ScaleByRadam(Block):
    r"""RAdam's scaling (Liu et al. 2020), as torch.optim.RAdam: m, v as Adam;
    ρ_∞ = 2/(1 − β₂) − 1, ρ_t = ρ_∞ − 2tβ₂ᵗ/(1 − β₂ᵗ); if ρ_t > 5,
    u ← m̂ · r_t √(1 − β₂ᵗ)/(√v + ε) with the rectification r_t, else u ← m̂.
    """

    hyper = (_BETAS, _EPS)
    all_buffers = ("exp_avg", "exp_avg_sq")

    def scalars(self, h, st, new):
        t = st["step"]
        b1, b2, bc1, bc2 = _bias_corrections(h, t)
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * (b2 ** t) / bc2
        rect = rho_t > 5.0
        r = (math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
             if rect else 0.0)
        return {"one_m_b1": 1 - b1, "b2": b2, "one_m_b2": 1 - b2, "bc1": bc1, "eps": float(h["eps"]),
                "rect": rect, "scale": r * math.sqrt(bc2)}

    def apply(self, u, p, s, c):
        m = s["exp_avg"].lerp_(u, c.one_m_b1)
        v = s["exp_avg_sq"].mul_(c.b2).addcmul_(u, u, value=c.one_m_b2)
        m_hat = m / c.bc1
        return m_hat * (c.scale / (v.sqrt() + c.eps)) if c.rect else m_hat

    def c_code(self, h):
        return (_lerp_c("exp_avg", "c_one_m_b1") + "\n"
                + _ema_sq_c("exp_avg_sq", "c_b2", "c_one_m_b2") + "\n"
                "u = s_exp_avg / c_bc1;\n"
                "if (c_rect) u = u * (c_scale / (SQRT(s_exp_avg_sq) + c_eps));")


class ScaleByAdamax(Block):
    r"""Adamax (Kingma & Ba 2015, §7): m ← β₁ m + (1 − β₁) u;  n ← max(β₂ n, |u| + ε);
    u ← m / ((1 − β₁ᵗ) n)."""

    hyper = (_BETAS, _EPS)
    all_buffers = ("exp_avg", "exp_inf")

    def scalars(self, h, st, new):
        b1, b2, bc1, _ = _bias_corrections(h, st["step"])
        return {"one_m_b1": 1 - b1, "b2": b2, "bc1": bc1, "eps": float(h["eps"])}

    def apply(self, u, p, s, c):
        m = s["exp_avg"].lerp_(u, c.one_m_b1)
        n = torch.maximum(s["exp_inf"].mul_(c.b2), u.abs() + c.eps, out=s["exp_inf"])
        return m / c.bc1 / n

    def c_code(self, h):
        return (_lerp_c("exp_avg", "c_one_m_b1") + "\n"
                "s_exp_inf = MAX(c_b2 * s_exp_inf, ABS(u) + c_eps);\n"
                "u = s_exp_avg / c_bc1 / s_exp_inf;")


class ScaleByLion(Block):
    r"""Lion (Chen et al. 2023): u ← sign(β₁ m + (1 − β₁) u);  m ← β₂ m + (1 − β₂) u."""

    hyper = (Hyper("betas", (0.9, 0.99), "betas", "(β₁, β₂)"),)
    all_buffers = ("exp_avg",)

    def scalars(self, h, st, new):
        b1, b2 = (float(b) for b in h["betas"])
        return {"one_m_b1": 1 - b1, "one_m_b2": 1 - b2}

    def apply(self, u, p, s, c):
        m = s["exp_avg"]
        direction = _sign(m.lerp(u, c.one_m_b1))
        m.lerp_(u, c.one_m_b2)
        return direction

    def c_code(self, h):
        return ("T dir = SIGN(LERP(s_exp_avg, u, c_one_m_b1));\n"
                + _lerp_c("exp_avg", "c_one_m_b2") + "\nu = dir;")


# --------------------------------------------------------------------------- lr="auto"
# The learning rate estimated during training (see ScaleByAutoLearningRate). These blocks use the
# two extensions of the block contract that the estimator needs: per-group *sums* (``sums``: the
# reference adds into ``c.acc``, the C kernel into ``r_NAME``), folded once per group step by
# ``finish``, and per-group plain-number state kept in the group (``group_state``).


class ZeroNonfinite(Block):
    r"""u ← u where finite, 0 where u is NaN or ±inf.

    lr="auto" puts it first in the chain: a non-finite gradient element then never reaches a state
    tensor (Adam's m and v would stay NaN for ever) nor θ; the rest of the step goes on. It only
    guards the chain; ``skip_nonfinite=True`` skips such steps whole instead.
    """

    def apply(self, u, p, s, c):
        return torch.where(torch.isfinite(u), u, torch.zeros((), dtype=u.dtype))

    def c_code(self, h):
        return "if (!isfinite(u)) u = (T)0;"


def _check_number(h, name, owner, ok, expected):
    v = h[name]
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(v, bool) or not ok(x):
        raise ValueError(f"{owner}: invalid {name}={v!r}; expected {expected}")


class ScaleByAutoLearningRate(Block):
    r"""u ← −η̂_t · s_t · u with the learning rate η̂_t estimated from the chain's own updates
    (``lr="auto"``: it takes :class:`ScaleByLearningRate`'s place in any chain, at the chain's end).

    The estimate, per parameter group, is a multiplicative hypergradient measured against the
    starting point θ₀ (not against the last step), under a distance-over-gradients cap:

        cos_t = −⟨g_t, θ_t − θ₀⟩ / (‖g_t‖ ‖θ_t − θ₀‖),
        η̂ ← max(η̂ · e^{β_t cos_t},  κ · max_{i≤t} η̂_i),   β_t = β if cos_t > 0 else ρβ,
        η̂ ← min(η̂,  c · r̄_t · max(‖g_t‖ / (‖u_t‖ √G_t), 1/√U_t)),
        r̄_t = max(r₀, max_{i≤t} ‖θ_i − θ₀‖),  G_t = Σ_{i≤t} ‖g_i‖²,  U_t = Σ_{i≤t} ‖u_i‖²,

    with ‖·‖ over the whole group, g the gradient and u the chain's direction (what this block
    receives). cos_t > 0: the gradient at θ_t still points back along the whole path taken so far
    (the loss still falls in the direction travelled): the rate is short, η̂ grows; cos_t < 0: the
    path overshot, η̂ shrinks. Measured against θ₀, minibatch noise — and the curvature term it
    brings near a minimum, ⟨Hδ, δ⟩ for a fluctuation δ — is divided by the whole distance travelled,
    so once progress stops η̂ holds roughly still instead of decaying. The same rule against the last
    step (Baydin et al. 2018), tried first, settles at the greedy one-step rate, far below the best
    rate of a long run under noise (short-horizon bias, Wu et al. 2018): it left GD, AdaGrad and
    RMSProp near chance on MNIST-1D. The cap keeps the step length η̂‖u‖ within DoG's step
    (Ivgi et al. 2023) for gradient descent, c·r̄‖g‖/√G, or along the chain's own direction,
    c·r̄‖u‖/√U, whichever is longer: growth cannot outrun the distance actually covered. For GD
    (u = g) U ≥ G (G's terms are clamped, below): the cap is the gradient's. The gradient's cap alone pins a chain that normalises its
    direction (Adam, RMSProp) ever lower as ‖g‖ shrinks while ‖u‖ holds (iris: Adam's estimate ~10×
    below its best grid rate); the cap along u alone held AdaGrad ~20 points below its grid on
    MNIST-1D (its u decays, so that sum double-counts the decay), so the larger one applies. Without a cap, GD
    diverged on wine and digits; a cap from the recent mean of ‖u‖² diverged on digits; c = 2 gained
    3–4 points for AdaGrad, RMSProp and Adam on MNIST-1D but left GD and Momentum at chance on its
    CNN (2 seeds).

    Start: the first step only measures (η̂_1 = 0; the blocks before this one update their state)
    and sets η̂_2 = r₀/‖u_1‖, so the next step moves θ by r₀ = α(1 + ‖θ₀‖) (DoG's start).
    ``s_t = lr_scale`` (default 1; a schedule gives warm-up/decay shapes) multiplies the estimate;
    ``lr_decay`` (AdaGrad) divides it by 1 + (t − 1)·lr_decay as in ScaleByLearningRate.
    ``group["lr"]`` shows η̂·d·s_t, the learning rate in use (d: the brake below). α = ``lr_init`` (1e-2), β = ``lr_adapt``
    (0.2; ``descend.auto`` gives each rule its own: 0.3 for AdaGrad and RMSProp, 0.1 for a rule with
    momentum), ρ = ``lr_down`` (1), κ = ``lr_floor`` (0.01), c = ``lr_cap`` (1; 0.5 for a rule with
    momentum). The estimate made from
    step t's sums is used from step t + 1 on: the sums are gathered in the step's own pass.

    A brake for what both are too slow to see: a gradient with ‖g_t‖² above 4 × its recent mean E
    (E ← E + 0.1(min(‖g‖², 10E) − E), about the last ten steps) — an instability starting — halves
    the rate in use at once (η̂·d, d ← d/2), and d comes back by ×1.1 per calm step (d ≤ 1). GD
    diverged on one of five MNIST-1D CNN runs without it; measured against the mean of the whole
    run instead of the recent one it fired on 4% of steps while gradients grew early in training
    and cost AdaGrad 5 points there. It also fires on a lone noisy batch: on diabetes (354 rows,
    batches of 32) the last batch of an epoch has 2 rows, and it fired there in 23 of 40 epochs of
    an Adam run. Waiting for a second such step in a row before braking lets those through and left
    diabetes as it was (Adam 0.510, 15 seeds), but GD then collapsed to chance on one of 15
    MNIST-1D CNN runs: it brakes at once. Per batch ‖g‖² spreads by a factor e (σ of its log ≈ 1) on
    digits, diabetes and the CNN, so 4× fires on 3–4% of steps everywhere. A brake in proportion,
    d ← d·√(4E/‖g‖²) (milder below 16×, harder above), was mixed at 20 seeds (mean / worst gap: GD
    +1.04 / −0.33, Momentum +1.00 / −1.14, AdaGrad +1.28 / −0.95, RMSProp +0.63 / −0.58, Adam
    +0.32 / −0.21, against +0.92 / −0.38, +1.04 / −1.17, +1.26 / −0.83, +0.66 / −0.50, +0.38 / −0.33).

    Invariant. |cos_t| ≤ 1: η̂ grows by at most e^β (×1.22 at β = 0.2) per step, the hypergradient lowers it by
    at most e^−ρβ per step and never below κ × its peak, and the cap only lowers it. One step's
    gradient adds at most 10 × the mean so far to G (one spike lowers the gradient's cap by at most
    √(1 + 10/t), and it cannot pin η̂ down for the rest of the run). U takes each ‖u_t‖² whole, so
    U_t ≥ ‖u_t‖² and the step along u is at most c·r̄; a spike in u lowers only the cap along u (the
    gradient's still holds), and a direction that changes scale for good (RAdam's rectified steps
    begin) tightens it at once. A step whose gradient or update holds a NaN
    or ±inf changes nothing in the estimate (``skipped`` counts it) and that element moves nothing;
    with :class:`ZeroNonfinite` first (lr="auto" puts it there) no NaN reaches any state.

    Failure modes. Growth needs steps: a task of a few dozen steps (iris, 80) may end while η̂
    still rises, and the cap grows only as fast as θ moves away from θ₀ (DoG's slow start): at 100
    seeds every rule ends 0.2–1.2 points below its grid on iris, whose best rates are the grid's
    highest, and a larger first step (α = 0.1) only widens that. On
    small data the estimate follows the training loss and may settle above the rate that
    generalises best after a fixed number of epochs (diabetes: 354 rows; judged by each run's best
    epoch instead it is level with every rule's grid, whose best rate is then 3–10× higher: what
    one run cannot know is when training should stop); the iterate average (on by default in ``lr="auto"``)
    takes part of that back, and a rule with momentum, which settled there at ~10× that rate, takes
    β = 0.1 and c = 0.5. There the estimate rises slowly all run (×2–3 over its last 350 steps) on
    cosines of a few hundredths on average; a dead zone that ignores |cos| < 0.1 stopped that drift
    (Adam +0.6 on diabetes, 7 seeds) but the MNIST-1D CNN finds its rate the same way, through
    cosines of about ±0.02 over thousands of steps, and lost 1 to 23 points with it.
    With ρ < 1 an oscillation whose cosines alternate ±1 nets a slow rise
    (e^{(1−ρ)β} per pair) until the cap holds it: with ρ = 0.7, the default before, the estimate
    drifted up through whole runs on diabetes, and with the cap along u Adam's estimate climbed to
    0.33 on Rosenbrock and its iterate bounced 0.19 from the minimum (ρ = 1: 6e-6; at Adam's own
    β = 0.1 and c = 0.5 the slower fall leaves its last iterate 0.15 from it after 4000 steps and
    the average 7e-3). A direction
    that changes scale is seen late: RAdam's first five steps are un-normalised (its first
    normalised step was 0.4× to 6× the one before on iris, digits and MNIST-1D, seed 0), and then
    its rectifier r_t scales the direction up ×17 over diabetes's 480 steps while the estimate, made
    when r_t was small, falls only as fast as the hypergradient lets it (the rate in use ends ~4×
    Adam's there; RAdam +0.03 mean gap on the tuning table at 20 seeds, −2.4 on diabetes; −3.3 while
    U was clamped like G). Giving r_t to the estimate as its scale instead was worse (iris and wine
    near chance: slow early steps hold the cap down). A direction that never shrinks (Lion's signs) gets a looser cap along u
    than along g (Lion −7.3 on diabetes, from −4.2). One estimate per group: very different layers
    in one group share it. Under FSDP2 the sums are each rank's shard's; the optimizer adds them up
    over the ranks before ``finish`` (:func:`descend.kernels.contract.sum_groups`).

    State: the per-parameter tensor ``anchor`` (θ₀, the one extra tensor; written once, then only
    read: one more stream in the fused step, not two) and, per group, the numbers in
    ``group["lr_estimate"]`` (eta, damp, peak, rbar, G, U, E, steps, skipped, cos, avg_from) and the
    list ``group["lr_marks"]`` (see :meth:`_restart_average`), saved by ``state_dict``.
    """

    lr_hyper = Hyper("lr", "auto", "auto_lr", "η: 'auto' (group['lr'] then shows the estimate in use)")
    hyper = (lr_hyper,
             Hyper("lr_scale", 1.0, "nonneg", "s_t, multiplies the estimate (a schedule gives its shape)"),
             Hyper("lr_init", 1e-2, "pos", "α: the second step moves θ by α(1 + ‖θ₀‖)"),
             Hyper("lr_adapt", 0.2, "pos", "β: the hypergradient changes η̂ by at most e^±β in one step"),
             Hyper("lr_floor", 0.01, "pos", "κ: the hypergradient keeps η̂ ≥ κ × its highest value so far"),
             Hyper("lr_down", 1.0, "pos", "ρ: η̂ falls at the rate ρβ (rises at β)"),
             Hyper("lr_cap", 1.0, "pos", "c: the step η̂‖u‖ ≤ c r̄ max(‖g‖/√Σ‖g‖², ‖u‖/√Σ‖u‖²)"))
    all_buffers = ("anchor",)
    read_only_buffers = ("anchor",)  # written when created (θ₀), never by the step: the kernel only loads it
    sums = ("gx", "g2", "x2", "u2", "p2")
    group_state = ("lr_estimate", "lr_marks")
    reads_grad = True
    spike = 10.0  # one step adds at most this × the mean ‖g‖² so far to G
    brake = 4.0  # a step whose ‖g‖² exceeds this × its recent mean (E, ~10 steps) halves the rate in use

    def __init__(self, decay: bool = False, **pinned):
        self.decay = decay
        if decay:
            self.hyper = self.hyper + (Hyper("lr_decay", 0.0, "nonneg", "inverse-time decay of η"),)
        super().__init__(**pinned)

    def validate(self, h, owner):
        super().validate(h, owner)
        _check_number(h, "lr_adapt", owner, lambda x: 0.0 < x <= 1.0, "a number in (0, 1]")
        _check_number(h, "lr_init", owner, lambda x: 0.0 < x < math.inf, "a finite number > 0")
        _check_number(h, "lr_floor", owner, lambda x: 0.0 < x <= 1.0, "a number in (0, 1]")
        _check_number(h, "lr_down", owner, lambda x: 0.0 < x <= 1.0, "a number in (0, 1]")
        _check_number(h, "lr_cap", owner, lambda x: 0.0 < x < math.inf, "a finite number > 0")

    def init_buffer(self, name, p, h):
        return p.detach().clone(memory_format=torch.preserve_format)  # the anchor: θ₀

    def init_group_state(self, group):
        group["lr_estimate"] = {"eta": 0.0, "damp": 1.0, "peak": 0.0, "rbar": 0.0, "G": 0.0, "U": 0.0, "E": 0.0,
                                "steps": 0, "skipped": 0, "cos": 0.0, "avg_from": 1}
        group["lr_marks"] = []

    def scalars(self, h, st, new):
        est = h["lr_estimate"]
        lr = est["eta"] * est.get("damp", 1.0) * float(h["lr_scale"])
        if self.decay:
            lr = lr / (1 + (st["step"] - 1) * float(h["lr_decay"]))
        return {"neg_lr": -lr}

    def apply(self, u, p, s, c):
        # the kernel adds blocks of 1024 in T, then in float64 (a float32 sum may differ in its last
        # ~5 digits); a non-finite g or u makes its sums non-finite, and ``finish`` then skips the step
        g, dx = c.g, p - s["anchor"]  # products in the parameter's dtype, as the kernel; sums in float64
        a = c.acc
        for name, x, y in (("gx", g, dx), ("g2", g, g), ("x2", dx, dx), ("u2", u, u), ("p2", p, p)):
            a[name] += float(torch.sum(x * y, dtype=torch.float64))
        return torch.where(torch.isfinite(u), u * c.neg_lr, torch.zeros((), dtype=u.dtype))

    def c_code(self, h):
        # in T: float32 products for float32 parameters (8 to a vector), float64 for float64
        return ("{ const T dx = p - s_anchor;\n"
                "  r_gx = FMA(g, dx, r_gx); r_g2 = FMA(g, g, r_g2); r_x2 = FMA(dx, dx, r_x2); r_u2 = FMA(u, u, r_u2);\n"
                "  r_p2 = FMA(p, p, r_p2); }\n"
                "u = isfinite(u) ? c_neg_lr * u : (T)0;")

    def finish(self, h, group, acc):
        """Fold one step's sums into the group's estimate (called once per group step)."""
        est = dict(group["lr_estimate"])  # a new dict: a state_dict taken earlier keeps its own
        if not all(math.isfinite(x) for x in acc.values()):
            est["skipped"] += 1
        elif est["eta"] == 0.0:  # nothing moved yet: the next step moves θ by r₀ = α(1 + ‖θ₀‖)
            if acc["u2"] > 0:
                r0 = float(h["lr_init"]) * (1.0 + math.sqrt(acc["p2"]))
                est.update(eta=r0 / math.sqrt(acc["u2"]), rbar=r0, G=acc["g2"], U=acc["u2"], E=acc["g2"],
                           steps=est["steps"] + 1)
        else:
            n = math.sqrt(acc["g2"] * acc["x2"])
            cos = -acc["gx"] / n if n > 0 else 0.0
            est["cos"] = cos
            eta = est["eta"] * math.exp(float(h["lr_adapt"]) * cos * (1.0 if cos > 0 else float(h["lr_down"])))
            eta = max(eta, float(h["lr_floor"]) * est["peak"])
            est["rbar"] = max(est["rbar"], math.sqrt(acc["x2"]))
            # the cap: DoG's step length, r̄‖v_t‖/√(Σ‖v‖²), for v the gradient (plain gradient descent's
            # step) or the chain's own direction u, whichever allows more. A chain that normalises its
            # direction (Adam, RMSProp) keeps ‖u‖ while ‖g‖ shrinks, and the gradient's cap alone then
            # pins its rate ever lower (iris: Adam's estimate ~10× below its best grid rate); a chain
            # whose u decays (AdaGrad) keeps the gradient's. A step adds at most `spike` × the mean so far
            # to G (one spike cannot pin the gradient's cap down); U takes every ‖u‖² whole, so that
            # U ≥ ‖u_t‖² and the step along u stays ≤ c r̄. For GD (u = g) U ≥ G, the cap along u is the
            # smaller one and the cap is the gradient's alone; a direction that changes scale (RAdam's
            # rectified steps begin) tightens the cap along u at once instead of over dozens of steps
            mean = est["G"] / est["steps"]  # of ‖g‖² over the steps so far, the first included
            est["G"] += min(acc["g2"], self.spike * mean)
            est["U"] = est.get("U", 0.0) + acc["u2"]  # (a state saved before U existed starts it here)
            est["steps"] += 1
            # a brake for what the estimate is too slow to see: a gradient `brake` × its recent mean
            # (an instability starting) halves the rate in use at once; it comes back by ×1.1 per step
            recent = est["E"]
            est["damp"] = 0.5 * est["damp"] if acc["g2"] > self.brake * recent else min(1.0, 1.1 * est["damp"])
            est["E"] = recent + 0.1 * (min(acc["g2"], self.spike * recent) - recent)  # ~ the last 10 steps
            if est["G"] > 0 and acc["u2"] > 0:
                cap = math.sqrt(acc["g2"] / (acc["u2"] * est["G"]))
                if est["U"] > 0:
                    cap = max(cap, 1.0 / math.sqrt(est["U"]))
                eta = min(eta, float(h["lr_cap"]) * est["rbar"] * cap)
            est["eta"] = eta
        est["peak"] = max(est["peak"], est["eta"])
        self._restart_average(h, group, est)
        group["lr_estimate"] = est

    @staticmethod
    def _restart_average(h, group, est):
        """Mark where the iterate average restarts: when the estimate has grown ``avg_restart`` × over
        the latter half of the run, the iterates before were taken at rates far below the one in use,
        still on the way in (a short run whose estimate still rises), and the average drops them.
        ``group["lr_marks"]`` keeps [step, estimate] pairs 2^{1/4} × apart in steps (about 4 log₂ t of
        them); the reference is the last at or before t/2, so at most 2^{1/4} × further back."""
        t, marks = group["step"], group.get("lr_marks", [])
        if not marks or t >= marks[-1][0] * 2 ** 0.25:
            group["lr_marks"] = marks = marks + [[t, est["eta"]]]  # a new list: earlier state_dicts keep theirs
        limit = h.get("avg_restart")
        if limit is None or t < 4:
            return
        ref = next((eta for step, eta in reversed(marks) if 2 * step <= t), None)
        if ref is not None and est["eta"] > float(limit) * ref:
            est["avg_from"] = t + 1  # the average restarts at the first iterate it takes from step t + 1 on

    def lr_in_use(self, h, group) -> float:
        """What ``group["lr"]`` shows: the estimate times the scale (and AdaGrad's decay) of the next step."""
        est = group["lr_estimate"]
        lr = est["eta"] * est.get("damp", 1.0) * float(h["lr_scale"])
        if self.decay:
            lr = lr / (1 + group["step"] * float(h["lr_decay"]))
        return lr

    def __repr__(self):
        return "ScaleByAutoLearningRate(decay=True)" if self.decay else super().__repr__()


def estimates_lr(group: Mapping[str, Any]) -> bool:
    """Whether a parameter group's rate is estimated (lr="auto": it keeps
    :class:`ScaleByAutoLearningRate`'s state): its ``group["lr"]`` then only shows the rate in use,
    and ``lr_scale`` takes a schedule's shape."""
    return ScaleByAutoLearningRate.group_state[0] in group


class AverageIterates(Block):
    r"""Keeps a polynomial-decay average of the iterates for evaluation (Shamir & Zhang 2013), taken
    every k-th step (k = ``avg_every``; steps 1, 1 + k, 1 + 2k, …, the m-th of them at step t):

        θ̄ ← θ̄ + w_m (θ_{t+1} − θ̄),  w_m = (1 + γ)/(m + γ)  (θ̄ = θ after the first step),

    and left alone on the other steps. The update passes through unchanged (this block goes last,
    where ``p + u`` is the new θ). ``with opt.averaged(): evaluate(model)`` swaps θ̄ in and θ back
    (bitwise). γ = ``avg_gamma`` (default 8, as the DoG paper): γ = 0 is the uniform average, larger
    γ forgets the start faster. k = 1 averages every iterate; a larger k averages every k-th, and the
    fused kernel then reads and writes θ̄ only on those steps (:attr:`gate`): its memory traffic,
    two streams per step, falls to 2/k.

    With lr="auto" the average restarts (m counts from 1 again, θ̄ ← θ at the next averaged step)
    where the estimator marks it (``group["lr_estimate"]["avg_from"]``): when its estimate has grown
    R× (``avg_restart``, 2) over the latter half of the run so far, the iterates before were taken
    at rates far below the one in use. Without an estimator in the chain it never restarts.
    """

    hyper = (Hyper("avg_gamma", 8.0, "nonneg", "γ of the polynomial-decay average"),
             Hyper("avg_every", 1, "count", "k: the average takes every k-th iterate"),
             Hyper("avg_restart", 2.0, "restart",
                   "R: with lr='auto', restart when the estimate grew R× over the latter half of the run"))
    all_buffers = ("avg",)
    gate = "on"  # the kernel skips this block, and its buffer's loads and stores, on a step where c_on is 0

    def scalars(self, h, st, new):
        g, k = float(h["avg_gamma"]), int(float(h["avg_every"]))
        t = st["step"]
        if (t - 1) % k:
            return {"w": 0.0, "on": 0.0}
        # m: this iterate's place in the average since it (re)started (lr="auto"'s estimator marks a
        # restart in its group state; without one the average starts at step 1)
        start = h["lr_estimate"].get("avg_from", 1) if "lr_estimate" in h else 1
        m = (t - 1) // k - (start + k - 2) // k + 1  # averaged steps 1 + jk: j now, minus the first j at or after start
        return {"w": (1.0 + g) / (max(m, 1) + g), "on": 1.0}

    def apply(self, u, p, s, c):
        if c.on:
            a = s["avg"]
            a.add_((p + u - a) * c.w)
        return u

    def c_code(self, h):
        return "if (c_on != 0) s_avg += c_w * ((p + u) - s_avg);"


class Auto:
    """``lr=descend.auto(...)``: the learning rate estimated during training, with options;
    ``lr="auto"`` is ``descend.auto()``.

    Args:
        scale: s_t, a number or a schedule (warm-up, decay...) that multiplies the estimate;
            its peak should be 1 (e.g. ``schedules.warmup_cosine(1.0, 100, T)``).
        init: α, the second step moves θ by α(1 + ‖θ₀‖) (default 1e-2).
        adapt: β in (0, 1], the estimate changes by at most e^±β per step (default None: the
            rule's own, 0.3 for AdaGrad and for RMSProp without momentum, 0.1 for a rule whose
            direction keeps a momentum (see ``cap``), 0.2 for GD, AdaDelta, NAdam and a custom chain.
            The tuning table's variants, 7 tasks × 15 seeds, against β = 0.2: β = 0.3 lifts
            AdaGrad's mean gap from +0.87 to +1.12 and RMSProp's from +0.41 to +0.70, RMSProp's
            worst task from −1.33 to −0.51, and lowers AdaGrad's from −0.67 to −0.88).
        floor: κ in (0, 1], the hypergradient keeps the estimate ≥ κ × its highest value (default 0.01).
        down: ρ in (0, 1], the estimate falls at the rate ρβ and rises at β (default 1; 0.7 before
            26 Nov 2026: an asymmetric fall nets a slow rise under noise).
        cap: c > 0, the step stays ≤ c × DoG's step, for gradient descent or along the chain's
            direction, whichever is longer (default None: the rule's own, 0.5 with β = 0.1 for a
            rule whose direction keeps a momentum — Momentum, Nesterov, SGD and RMSProp with
            momentum > 0, Adam, AdamW, RAdam, Adamax and Lion with β₁ > 0 — and 1 for the others
            and NAdam (measured: it lost 6 points on the MNIST-1D CNN with them). Measured,
            7 tasks × 15 seeds against each rule's grid, these against β = 0.2 and c = 1: Adam's
            worst task from −2.05 to −0.39 (diabetes, where the estimate had settled ~10× above the
            rate that generalises) and its mean from +0.32 to +0.36 (2.3 points lost on the MNIST-1D
            CNN); Momentum's worst from −2.15 (diabetes) to −1.33 (iris), its mean from +0.61
            to +1.04. Chosen on seeds 0–9, where Adam read +0.44 / −0.29; on seeds 10–14 alone it
            reads +0.10 / −0.67. For GD, AdaGrad and RMSProp, whose cap binds, these values cost
            4–5 points of mean).
        average: keep a polynomial-decay average of the iterates for ``opt.averaged()`` (one more
            state tensor per parameter). On by default: while this estimator was designed, dropping
            it cost 1 to 11 points on diabetes by rule and up to 4 on MNIST-1D (2 seeds, the tasks
            of scripts/tuning_table.py).
        avg_gamma: γ of that average (default 0.5: weights ∝ m^{1/2} roughly, between the uniform
            average, γ = 0, and the linearly weighted one, γ = 1; the tuning table's variants,
            7 tasks × 15 seeds, with the restart below: γ = 0.5 against γ = 1 raises every rule's
            worst task on the same rows by 0.08 to 0.47 points and costs 0.02 to 0.11 of mean.
            γ = 0 takes Adam's MNIST-1D CNN from +0.5 to −2.0 and costs GD 0.5 of mean; γ = 8, the
            DoG paper's, kept 1–4 points less on diabetes, 2 seeds).
        avg_every: k, the average takes every k-th iterate (default 8); the fused step reads and
            writes the average on those steps only, so it costs 2/k memory streams per step instead
            of 2. Before the restart below, k = 8 measured the same as k = 1 on the tuning table
            (7 tasks, 5 seeds: every rule's mean gap within 0.1 point, each task within a validation
            row); with it, at 15 seeds, k = 1 costs GD, Momentum, AdaGrad and RMSProp 0.9–1.6
            points on their worst task and Adam 0.06 of mean.
        restart: R > 1 or inf, the average restarts when the estimate has grown R× over the latter
            half of the run (default 2; inf: never). While the estimate still climbs, the earlier
            iterates were taken at far lower rates (measured: the tuning table's variants; on
            Rosenbrock it takes Momentum's and Adam's averages from 0.1 to below 0.07 of the minimum).
            R = 3 (15 seeds) keeps a diabetes run's first tens of steps in its average (+0.5 points
            at most) but lags on iris, whose estimate rises all its 80 steps (−1.3 to −2.5 points
            for every rule but Adam); every rule's mean falls.

    See :class:`~descend.blocks.ScaleByAutoLearningRate` for the estimator. In a chain where a
    :class:`Trace` follows the learning rate (the chapter's momentum, ṽ ← γṽ − ηg), the estimator
    goes after it (v ← γv + g, θ ← θ − η̂v: the same rule at a fixed rate), so that it scales, and
    measures, the whole step.
    """

    def __init__(self, scale: Any = 1.0, *, init: float = 1e-2, adapt: float | None = None, floor: float = 0.01,
                 down: float = 1.0, cap: float | None = None, average: bool = True, avg_gamma: float = 0.5,
                 avg_every: int = 8, restart: float = 2.0):
        if not isinstance(average, bool):
            raise ValueError(f"auto: invalid average={average!r}; expected True or False")
        self.scale, self.init, self.adapt, self.floor = scale, init, adapt, floor
        self.down, self.cap, self.average, self.avg_gamma = down, cap, average, avg_gamma
        self.avg_every, self.restart = avg_every, restart

    def hyperparameters(self, rule: Mapping[str, Any] | None = None) -> dict:
        """The estimator's (and average's) group settings; ``rule``: the optimizer's own defaults for
        the options left None (``ChainOptimizer._auto_defaults``)."""
        rule = rule or {}
        adapt = self.adapt if self.adapt is not None else rule.get("adapt", 0.2)
        cap = self.cap if self.cap is not None else rule.get("cap", 1.0)
        hp = {"lr_scale": self.scale, "lr_init": self.init, "lr_adapt": adapt, "lr_floor": self.floor,
              "lr_down": self.down, "lr_cap": cap}
        if self.average:
            hp["avg_gamma"] = self.avg_gamma
            hp["avg_every"] = self.avg_every
            hp["avg_restart"] = self.restart
        return hp

    def chain(self, blocks) -> tuple:
        """``blocks`` with every ScaleByLearningRate replaced by the estimator (moved after the Trace
        blocks that follow it), a ZeroNonfinite guard first and, with ``average``, AverageIterates
        last. ValueError if there is no learning rate."""
        out, pending = [], None
        for b in blocks:
            if type(b) is ScaleByLearningRate:
                if "lr" in b.pinned:
                    raise ValueError(f"lr='auto': the chain's {b!r} pins lr={b.pinned['lr']!r}")
                if pending is not None:
                    out.append(pending)
                pending = ScaleByAutoLearningRate(decay=b.decay, **b.pinned)
            elif pending is not None and not isinstance(b, Trace):
                out += [pending, b]
                pending = None
            else:
                out.append(b)
        if pending is not None:
            out.append(pending)
        if not any(isinstance(b, ScaleByAutoLearningRate) for b in out):
            raise ValueError("lr='auto' needs a learning rate to estimate: the chain "
                             f"{[repr(b) for b in blocks]} has no ScaleByLearningRate block")
        if not isinstance(out[0], ZeroNonfinite):
            out.insert(0, ZeroNonfinite())
        if self.average and not any(isinstance(b, AverageIterates) for b in out):
            out.append(AverageIterates())
        return tuple(out)

    def __repr__(self):
        return (f"auto(scale={self.scale!r}, init={self.init!r}, adapt={self.adapt!r}, floor={self.floor!r}, "
                f"down={self.down!r}, cap={self.cap!r}, average={self.average!r}, avg_gamma={self.avg_gamma!r}, "
                f"avg_every={self.avg_every!r}, restart={self.restart!r})")


def auto(scale: Any = 1.0, **options) -> Auto:
    """``lr=descend.auto(scale=..., init=..., adapt=..., floor=..., average=...)``; see :class:`Auto`."""
    return Auto(scale, **options)
