"""Code generation: one chain's C source, pasted together from its blocks' per-element snippets.

Every block states its rule for one element as a C snippet (``Block.c_code``; the conventions are in
:mod:`descend.blocks`). :func:`kernel_source` renames each block's names apart (``s_NAME`` →
``s{i}_NAME``, ``c_NAME`` → ``c{i}_NAME``), pastes the snippets in chain order into one elementwise
loop, and wraps it in the exported function every backend's launcher calls the same way:
``step(n, sizes, ptrs, scalars, nthreads)``. Nothing here compiles or runs anything.

The semantics the generated code must share with the readable reference (each block's ``apply``) are
fixed here, in the macros every snippet uses:

- IEEE arithmetic, one rounding per written operation: no contraction of ``a*b + c`` into a fused
  multiply-add (the CPU backend compiles with ``-ffp-contract=off``), so overflow and ±inf/NaN come
  out as the reference's separate torch ops give them (a contracted ``p + (−η)·g`` turned GD's
  ``−inf + inf = NaN`` into ``−inf``);
- ``LERP(a, b, w)`` is torch.lerp as ATen computes it: ``fma(w, b − a, a)`` for |w| < ½, else
  ``fma(w − 1, b − a, b)``, so w = 1 gives exactly b (centred RMSProp at α = 0 relies on it) and
  the moving averages match torch bit for bit;
- ``MAX`` propagates NaN from either side (torch.maximum); ``SIGN`` keeps NaN (so a NaN reaches
  the parameter instead of freezing it; the reference's ``_sign`` does the same).
"""

from __future__ import annotations

import re

__all__ = ["kernel_source", "CTYPES", "STORAGE", "switches", "src_key", "sum_names", "first_step_inputs"]

# torch dtype name -> C type computed in; complex runs as its real view. 16-bit floats are computed in
# float ("opmath", as torch's fused optimizers) and stored back rounded to nearest even (STORAGE).
CTYPES = {"float32": "float", "float64": "double", "bfloat16": "float", "float16": "float"}
STORAGE = {"bfloat16": "bf16", "float16": "f16"}

# How a value of a 16-bit storage type is loaded as T and stored from it (C type in memory, LD, ST).
# bfloat16 by its bits: the upper half of a float32, rounded to nearest even on the way back (NaN →
# the quiet NaN 0x7FC0, as torch); float16 by the compiler's _Float16, whose conversion rounds so too.
_STORAGE_C = {
    None: "typedef T M;\n#define LD(x) (x)\n#define ST(x) (x)\n",
    "f16": "typedef _Float16 M;\n#define LD(x) ((T)(x))\n#define ST(x) ((M)(x))\n",
    "bf16": """typedef uint16_t M;
static inline float LD(uint16_t h) { uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); return f; }
static inline uint16_t ST(float f) {
    uint32_t b; memcpy(&b, &f, 4);
    return f != f ? (uint16_t)0x7FC0 : (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}
""",
}

_MATH = {
    "float": "#define SQRT sqrtf\n#define ABS fabsf\n#define FMA fmaf\n",
    "double": "#define SQRT sqrt\n#define ABS fabs\n#define FMA fma\n",
}

_MACROS = r"""#define MAX(a, b) (((a) > (b) || (a) != (a)) ? (a) : (b))  /* NaN on either side wins */
/* NaN passes through, else -1, 0 or 1: branch-free, so a loop with random signs vectorizes */
#define SIGN(x) ((x) != (x) ? (x) : (T)((x) > 0) - (T)((x) < 0))
/* torch.lerp as ATen computes it: coefficient and base chosen by the weight, one fused multiply-add
   (exact at w = 0 and 1); written as selects, not branches, so the loop vectorizes */
#define LERP(a, b, w) FMA(ABS(w) < (T)0.5 ? (w) : (w) - (T)1, (b) - (a), ABS(w) < (T)0.5 ? (a) : (b))
"""


SUMBLOCK = 1024  # elements a per-group sum adds up in T before it goes into the chunk's double


def _rename(code: str, i: int) -> str:
    code = re.sub(r"\bs_(\w+)", rf"s{i}_\1", code)
    code = re.sub(r"\br_(\w+)", rf"r{i}_\1", code)
    return re.sub(r"\bc_(\w+)", rf"c{i}_\1", code)


def sum_names(blocks) -> list[tuple[str, ...]]:
    """Per block, the per-group sums its snippet accumulates (``r_NAME += ...``; :attr:`Block.sums`)."""
    return [tuple(getattr(b, "sums", ())) for b in blocks]


def kernel_source(blocks, views, ctype: str, maximize: bool, scalar_names, buffer_names,
                  storage: str | None = None) -> str:
    """The C source of the fused step for one chain under one set of static hyperparameters.

    ``scalar_names[i]`` / ``buffer_names[i]`` are block i's scalars (in the order passed at run time)
    and state tensors. The exported function is
    ``step(n, sizes, ptrs, scalars, nthreads)`` with ``ptrs`` = [θ…, g…, state₀…, state₁…] (n each).
    ``storage`` ("bf16", "f16"): the tensors hold 16-bit floats, computed in ``ctype`` (float).

    Sums (the one extension for lr="auto"): a block that declares ``sums`` adds into the double
    ``r_NAME`` in its snippet. Each 64K-element chunk sums into its own slot, and after the parallel
    loop the chunks' partial sums are added up in chunk order, so the totals do not depend on which
    thread took which chunk (a resumed run is bitwise the same). The totals are written into the
    scalar array after the scalars (``sc[k]``, k = the number of scalars): the caller allocates
    those slots and reads them back. ``g`` (the gradient as the chain received it) is visible to
    every snippet of a chain that has a block with ``reads_grad``.
    """
    decls = []
    k = 0
    for i, names in enumerate(scalar_names):
        for name in names:
            decls.append(f"    const T c{i}_{name} = (T)sc[{k}];")
            k += 1
    sums = [(i, name) for i, names in enumerate(sum_names(blocks)) for name in names]
    nsum = len(sums)
    sum_zero = " ".join(f"double r{i}_{name} = 0;" for i, name in sums)
    # a chunk's partial sums go to its own slot (on the stack up to 1024 chunks, 64M elements);
    # if the heap has no room for more, they are added atomically instead (same totals up to order)
    to_part = " ".join(f"part[c * {nsum} + {j}] = r{i}_{name};" for j, (i, name) in enumerate(sums))
    to_fb = " ".join(f'_Pragma("omp atomic") fb[{j}] += r{i}_{name};' for j, (i, name) in enumerate(sums))
    sum_part = f"if (part) {{ {to_part} }} else {{ {to_fb} }}" if nsum else ""
    sum_alloc = (f"    double stack_part[1024 * {nsum}], fb[{nsum}] = {{0}};\n"
                 f"    double* part = nchunks <= 1024 ? stack_part : (double*)malloc((size_t)nchunks * {nsum} * sizeof(double));"
                 if nsum else "")
    sum_total = (f"""    for (int j = 0; j < {nsum}; j++) {{
        double tot = 0;
        if (part) for (int64_t c = 0; c < nchunks; c++) tot += part[c * {nsum} + j];
        else tot = fb[j];
        ((double*)sc)[{k} + j] = tot;
    }}
    if (part && part != stack_part) free(part);""" if nsum else "")
    # the sums vectorise as a reduction (a fixed order for a given layout: chunk bounds and torch's
    # 64-byte aligned storage decide it, not the threads)
    # Sums are taken in T over blocks of SUMBLOCK elements (in float32, 8 lanes to a vector instead
    # of float64's 4: the products and adds of a float32 step in double precision made a GD step
    # compute-bound, ×2.3 the fixed-lr step instead of the ×1.33 its memory traffic costs), and each
    # block's total is added into the chunk's double. Block bounds follow the layout, not the threads.
    simd = f"        #pragma omp simd reduction(+: {', '.join(f'q{i}_{name}' for i, name in sums)})" if nsum else ""
    q_zero = " ".join(f"T q{i}_{name} = 0;" for i, name in sums)
    q_add = " ".join(f"r{i}_{name} += (double)q{i}_{name};" for i, name in sums)
    block_open = (f"        for (int64_t e0 = a; e0 < b; e0 += {SUMBLOCK}) {{\n"
                  f"        const int64_t e1 = e0 + {SUMBLOCK} < b ? e0 + {SUMBLOCK} : b;\n        {q_zero}"
                  if nsum else "")
    block_close = f"        {q_add}\n        }}" if nsum else ""
    # GCC keeps a loop with a select (lr="auto"'s finiteness guards) scalar unless it may assume no
    # floating-point traps; that changes no value (only when exception flags could be raised)
    no_trap = ('#if defined(__GNUC__) && !defined(__clang__)\n#pragma GCC optimize("no-trapping-math")\n#endif\n'
               if nsum else "")
    grad = "            const T g = u;" if any(getattr(b, "reads_grad", False) for b in blocks) else ""
    bufs = [(i, name) for i, names in enumerate(buffer_names) for name in names]
    # a buffer a block only reads (lr="auto"'s anchor) is loaded and never stored: one stream, not two
    ro = [name in getattr(blocks[i], "read_only_buffers", ()) for i, name in bufs]
    ptrs = [f"        {'const ' if ro[j] else ''}M* restrict S{j} = ({'const ' if ro[j] else ''}M*)ptrs[{2 + j} * n + tt];"
            for j in range(len(bufs))]
    # a gated block (AverageIterates every k steps) does nothing while its gate scalar is 0 — its
    # snippet checks that itself — so on a step where every gate is 0 the kernel runs a second copy
    # of the loop without those blocks and without a load or a store of their buffers
    gated = {i for i, b in enumerate(blocks) if getattr(b, "gate", None) and b.gate in scalar_names[i]}
    assert not any(sum_names(blocks)[i] for i in gated), "a gated block may not add to the sums"

    def loop(skip):
        load = [f"            T s{i}_{name} = LD(S{j}[e]);" for j, (i, name) in enumerate(bufs) if i not in skip]
        store = [f"            S{j}[e] = ST(s{i}_{name});" for j, (i, name) in enumerate(bufs) if not ro[j] and i not in skip]
        body = []
        for i, (b, h) in enumerate(zip(blocks, views)):
            code = b.c_code(h)
            if code and i not in skip:
                code = _rename(code, i)
                if nsum:  # the snippet adds into its block accumulator q…, not the chunk's r…
                    code = re.sub(rf"\br{i}_", f"q{i}_", code)
                body.append("            { " + code.replace("\n", "\n              ") + " }")
        nl = "\n"
        return f"""{simd}
        for (int64_t e = {"e0" if nsum else "a"}; e < {"e1" if nsum else "b"}; e++) {{
            const T p = LD(P[e]);
            T u = {'-' if maximize else ''}LD(G[e]);
{grad}
{nl.join(load)}
{nl.join(body)}
            P[e] = ST(p + u);
{nl.join(store)}
        }}"""

    if gated:
        cond = " || ".join(f"c{i}_{blocks[i].gate} != 0" for i in sorted(gated))
        loops = f"        if ({cond}) {{\n{loop(set())}\n        }} else {{\n{loop(gated)}\n        }}"
    else:
        loops = loop(set())
    return f"""// generated by descend.kernels.codegen: {' -> '.join(type(b).__name__ for b in blocks)}
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
typedef {ctype} T;
{_STORAGE_C[storage]}{_MATH[ctype]}{_MACROS}{no_trap}
void step(int64_t n, const int64_t* sizes, void** ptrs, const double* sc, int nthreads) {{
{chr(10).join(decls)}
    int64_t total = 0;
    for (int64_t t = 0; t < n; t++) total += sizes[t];
    /* The tensors, end to end, are cut into chunks of CHUNK elements that the threads take in turn:
       two cores do not stream at the same speed (a neighbour, where the pages sit), and a fixed
       half each left one waiting for the other up to 20% of a step. A chunk (256 KB of float32 per
       stream) is long enough for the hardware prefetchers, short enough to even out the finish. */
    const int64_t CHUNK = 1 << 16;
    int64_t nchunks = (total + CHUNK - 1) / CHUNK, next = 0;
{sum_alloc}
    #pragma omp parallel num_threads(nthreads)
    {{
    int64_t t = 0, base = 0;  /* where this thread's walk over the tensors stands: chunks only go forward */
    for (int64_t c; (c = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED)) < nchunks;) {{
    int64_t lo = c * CHUNK, hi = lo + CHUNK < total ? lo + CHUNK : total;
    {sum_zero}
    while (base + sizes[t] <= lo) base += sizes[t++];
    for (int64_t tt = t, bb = base; tt < n && bb < hi; bb += sizes[tt], tt++) {{
        int64_t a = lo > bb ? lo - bb : 0, b = hi - bb < sizes[tt] ? hi - bb : sizes[tt];
        if (a >= b) continue;
        M* restrict P = (M*)ptrs[tt];
        const M* restrict G = (const M*)ptrs[n + tt];
{chr(10).join(ptrs)}
{block_open}
{loops}
{block_close}
    }}
    {sum_part}
    }}
    }}
{sum_total}
}}
"""


def src_key(blocks, views, ctype, maximize, scalar_names, buffer_names, storage=None) -> tuple:
    """What the generated source depends on: the in-memory table of built kernels is keyed by it."""
    return (ctype, storage, maximize, tuple(type(b) for b in blocks), tuple(b.c_code(h) for b, h in zip(blocks, views)),
            tuple(scalar_names), tuple(buffer_names), tuple(sum_names(blocks)))


def switches(blocks, views, maximize) -> tuple:
    """What decides the generated code beyond the dtype: a change (amsgrad, nesterov, ...) drops a plan."""
    return (maximize, tuple(tuple(b.buffers(h)) for b, h in zip(blocks, views)),
            tuple(b.c_code(h) for b, h in zip(blocks, views)))


def first_step_inputs(opt) -> tuple:
    """What a kernel generator needs for ``opt``'s first group on its first step: (blocks, views,
    maximize, scalar names, buffer names). For printing a chain's source and for compile checks."""
    g = opt.param_groups[0]
    views = [b.view(g) for b in opt.blocks]
    st = {"step": 1}
    for b, h in zip(opt.blocks, views):
        b.init_scalar_state(st)
        b.advance(h, st)
    scal = [b.scalars(h, st, frozenset()) for b, h in zip(opt.blocks, views)]
    return (opt.blocks, views, g["maximize"], [tuple(x) for x in scal],
            [tuple(b.buffers(h)) for b, h in zip(opt.blocks, views)])
