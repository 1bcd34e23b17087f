"""Triton helpers the generated kernels call. Load it with :func:`descend.kernels.triton_backend.lib`
(once per mode: interpreted or compiled), not by importing it."""

import triton
import triton.language as tl


@triton.jit
def bf16_rne(x):
    """float32 → bfloat16 bits, rounded to nearest, ties to even, as torch rounds (NaN → 0x7FC0).

    Done with integer operations rather than ``x.to(tl.bfloat16)``: on a GPU both round the same, but
    Triton's CPU interpreter truncates in that cast, and the tests run there."""
    b = x.to(tl.uint32, bitcast=True)
    r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return tl.where(x != x, 0x7FC0, r).to(tl.uint16)
