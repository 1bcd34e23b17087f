"""The execution layer: how a chain's step runs fast, generated from the blocks' own per-element rules.

- :mod:`descend.kernels.contract`: the one place that says what a backend may run — which
  (parameter, gradient, state) a kernel may touch (plain tensors, a DTensor by its local shard;
  gradient and every state tensor matching the parameter) and the conditions a kept plan re-proves
  on every step. Every backend calls it.
- :mod:`descend.kernels.codegen`: a chain's C source, pasted from the blocks' ``c_code`` snippets,
  and the arithmetic both paths share (no contraction, torch.lerp's formula, NaN-propagating MAX/SIGN).
- :mod:`descend.kernels.cache`: build once per machine and compiler, verify before every load
  (content hash beside each library), rebuild once or fall back, never load a bad file.
- :mod:`descend.kernels.cpu`: the CPU backend: the fused kernel's launches, plans, and the loader of
  the compiled plan check (``csrc/plan_check.cpp``).

The façade (:mod:`descend.core`) calls :func:`run_planned` and :func:`run_group`; whatever they do not
run takes the readable reference (each block's ``apply``). This package imports nothing else of descend.
"""

from descend.kernels import cache, codegen, contract, cpu
from descend.kernels.cache import cache_dir
from descend.kernels.codegen import kernel_source
from descend.kernels.cpu import available, plan_check, plan_check_status


def run_planned(blocks, group, plan, state_map, acc=None) -> bool:
    """Take a group's step with its stored plan if the plan still holds; False (nothing changed) if not.
    ``acc``: the per-block accumulators the blocks' ``sums`` are added into (chains with sums only)."""
    return cpu.run_planned(blocks, group, plan, state_map, acc)


def run_group(blocks, views, work, cache_, maximize, plans=None, plan_key=None, group=None, acc=None) -> list:
    """Run what a backend can of one group's step; return the (param, state, key) items it did not run."""
    return cpu.run_group(blocks, views, work, cache_, maximize, plans, plan_key, group, acc)


__all__ = ["run_group", "run_planned", "kernel_source", "available", "cache_dir", "plan_check", "plan_check_status",
           "cache", "codegen", "contract", "cpu"]
