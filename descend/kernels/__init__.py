"""The execution layer: how a chain's step runs fast, generated from the blocks' own per-element rules.

- :mod:`descend.kernels.cpu`: the chain's C snippets fused into one elementwise kernel per group,
  compiled once and cached; the group's :class:`~descend.kernels.cpu.Plan` and its per-step check
  (``csrc/plan_check.cpp`` compiled, or the same conditions in Python).

The façade (:mod:`descend.core`) calls :func:`run_planned` and :func:`run_group`; whatever they do not
run takes the readable reference (each block's ``apply``). This package imports nothing else of descend.
"""

from descend.kernels import cpu
from descend.kernels.cpu import available, cache_dir, kernel_source, plan_check, plan_check_status


def run_planned(blocks, group, plan, state_map) -> bool:
    """Take a group's step with its stored plan if the plan still holds; False (nothing changed) if not."""
    return cpu.run_planned(blocks, group, plan, state_map)


def run_group(blocks, views, work, cache, maximize, plans=None, plan_key=None, group=None) -> list:
    """Run what a backend can of one group's step; return the (param, state, key) items it did not run."""
    return cpu.run_group(blocks, views, work, cache, maximize, plans, plan_key, group)


__all__ = ["run_group", "run_planned", "kernel_source", "available", "cache_dir", "plan_check", "plan_check_status"]
