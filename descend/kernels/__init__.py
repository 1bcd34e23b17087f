"""The execution layer: how a chain's step runs fast, generated from the blocks' own per-element rules.

- :mod:`descend.kernels.cpu`: the chain's C snippets fused into one elementwise kernel per group,
  compiled once and cached; the group's :class:`~descend.kernels.cpu.Plan` and its per-step check
  (``csrc/plan_check.cpp`` compiled, or the same conditions in Python).
- :mod:`descend.kernels.triton_backend`: the same snippets translated (:mod:`descend.kernels.translate`)
  into one Triton kernel per chain, for CUDA tensors (and, with ``DESCEND_BACKEND=triton``, CPU
  tensors under Triton's interpreter).

The façade (:mod:`descend.core`) calls :func:`run_planned` and :func:`run_group`; whatever they do not
run takes the readable reference (each block's ``apply``). This package imports nothing else of descend.
``DESCEND_BACKEND``: unset, CUDA tensors take Triton and CPU tensors the C kernel; ``triton`` sends CPU
tensors to Triton too; ``reference`` (or ``cpu``) keeps CUDA tensors on the reference.
"""

from descend.kernels import cpu, triton_backend
from descend.kernels.cpu import available, cache_dir, kernel_source, plan_check, plan_check_status


def run_planned(blocks, group, plan, state_map) -> bool:
    """Take a group's step with its stored plan if the plan still holds; False (nothing changed) if not."""
    if isinstance(plan, triton_backend.Plan):
        return not cpu._DISABLED and triton_backend.run_planned(blocks, group, plan, state_map)
    return cpu.run_planned(blocks, group, plan, state_map)


def run_group(blocks, views, work, cache, maximize, plans=None, plan_key=None, group=None) -> list:
    """Run what a backend can of one group's step; return the (param, state, key) items it did not run."""
    if cpu._DISABLED:
        return work
    gpu = [item for item in work if triton_backend.wants(item[0])]
    if not gpu:
        return cpu.run_group(blocks, views, work, cache, maximize, plans, plan_key, group)
    if len(gpu) == len(work):
        return triton_backend.run_group(blocks, views, work, cache, maximize, plans, plan_key, group)
    # a group on several devices: each backend takes its part, and neither keeps a plan for the group
    ids = {id(item) for item in gpu}
    host = [item for item in work if id(item) not in ids]
    return (triton_backend.run_group(blocks, views, gpu, cache, maximize)
            + cpu.run_group(blocks, views, host, cache, maximize))


__all__ = ["run_group", "run_planned", "kernel_source", "available", "cache_dir", "plan_check", "plan_check_status"]
