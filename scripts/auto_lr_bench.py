"""Step time of lr="auto" against the same chain at a fixed lr, on the fused path (ratios, same rounds).

    nice -n 10 python scripts/auto_lr_bench.py [--numel 4000000,32000000] [--rounds 15]

Two sizes by default: 4M float32 elements (16 MB a tensor: a fixed-lr GD step's θ and g, 32 MB, sit
largely in this machine's 32 MB L3 cache, while the estimator's third tensor pushes its step out to
DRAM) and 32M (128 MB a tensor: every variant streams from DRAM, the regime of a model that does not
fit in the last-level cache). Each size runs its own interleaved rounds.

Rows: each optimizer at a fixed lr, with lr=descend.auto(average=False) (the estimator alone: one
extra state tensor, θ₀, read and never written) and with lr="auto" (its default: the estimator and
the iterate average, read and written on every 8th step). The rounds interleave the three so a slow stretch of the
shared machine falls on all alike; the median ratio is reported, with the ratio the extra memory
traffic alone would give (streams of 4 bytes per float32 element: fixed-lr GD reads θ and g and
writes θ, 3 streams; the anchor adds 1, the average 2 every 8th step: 2/8 a step).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import descend


def make(name, lr, numel, layout):
    torch.manual_seed(0)
    if layout == "mlp":  # the lab's digits MLP 64-64-10: six small tensors
        shapes = [(64, 64), (64,), (10, 64), (10,)]
    else:
        shapes = [(numel,)]
    ps = [torch.randn(s).requires_grad_() for s in shapes]
    for p in ps:
        p.grad = torch.randn_like(p) * 1e-3
    hp = {"momentum": 0.9} if name == "momentum" else {}
    opt = descend.create(name, ps, lr=lr, **hp)
    for _ in range(3):
        opt.step()
    return opt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--numel", default="4000000,32000000", help="sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--optimizers", default="gd,momentum,adagrad,rmsprop,adam")
    ap.add_argument("--layout", default="flat", choices=["flat", "mlp"])
    args = ap.parse_args()
    reps = 20 if args.layout == "flat" else 2000
    print(f"layout {args.layout}, {torch.get_num_threads()} threads; median over {args.rounds} rounds of {reps} steps")
    for numel in ([int(x) for x in args.numel.split(",")] if args.layout == "flat" else [0]):
        if numel:
            print(f"one tensor of {numel:,} float32 elements ({numel * 4 / 2**20:.0f} MiB a tensor)")
        for name in args.optimizers.split(","):
            one(name, numel, args, reps)


def one(name, numel, args, reps):
    """One rule at one size: the three variants in interleaved rounds; prints the median ratios."""
    variants = {"fixed": 1e-3, "auto (no avg)": descend.auto(average=False), "auto": "auto"}
    opts = {k: make(name, v, numel, args.layout) for k, v in variants.items()}
    times = {k: [] for k in variants}
    for _ in range(args.rounds):
        for k, opt in opts.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                opt.step()
            times[k].append((time.perf_counter() - t0) / reps)
    base = times["fixed"]
    r1 = statistics.median(a / b for a, b in zip(times["auto (no avg)"], base))
    r2 = statistics.median(a / b for a, b in zip(times["auto"], base))
    n = streams(opts["fixed"])
    print(f"{name:9s} fixed {statistics.median(base) * 1e6:9.1f} µs   auto(average=False) ×{r1:.2f} "
          f"(traffic ×{(n + 1) / n:.2f})   auto ×{r2:.2f} (traffic ×{(n + 1 + 2 / descend.auto().avg_every) / n:.2f})", flush=True)


def streams(opt) -> int:
    """Memory streams of a fixed-lr step: θ read and written, g read, each state tensor read and written."""
    p = opt.param_groups[0]["params"][0]
    return 3 + 2 * sum(1 for v in opt.state[p].values() if isinstance(v, torch.Tensor) and v.numel() == p.numel())


if __name__ == "__main__":
    main()
