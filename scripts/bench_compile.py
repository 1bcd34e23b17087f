"""Compiled against eager step time: a training step (forward, backward, ``opt.step()``) compiled
whole with ``torch.compile``, and the same step calling ``torch.compile(opt.step)``, each as a ratio to the same eager code
measured in the same rounds (this machine is shared; absolute times drift).

    python scripts/bench_compile.py                      # descend.Adam and torch.optim.Adam, inductor
    python scripts/bench_compile.py --workload step      # opt.step() alone, on fixed gradients
    python scripts/bench_compile.py --backend eager --rounds 5

Each round times ``--steps`` calls of every variant, one variant after another; the table shows the
median over rounds of the time per call and of its ratio to the eager variant of the same round.
Compilation (and, before descend's step was opaque to dynamo, the recompilations) happens in the
warm-up, which is timed on its own and reported as "first calls".
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

import descend


def make(opt_name: str, width: int, depth: int, seed: int = 0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))
    X, y = torch.randn(64, width), torch.randn(64, 1)
    opt = {"descend.Adam": lambda ps: descend.Adam(ps, lr=1e-3),
           "torch.optim.Adam": lambda ps: torch.optim.Adam(ps, lr=1e-3)}[opt_name](model.parameters())
    return model, X, y, opt


def variants(opt_name: str, width: int, depth: int, backend: str, workload: str):
    """name -> a function running one step: ``train`` = forward, backward, ``opt.step()``;
    ``step`` = ``opt.step()`` alone on gradients computed once (the optimizer's share)."""
    out = {}
    for mode in ("eager", "compiled step", "compiled opt.step"):
        model, X, y, opt = make(opt_name, width, depth)
        if workload == "step":
            torch.nn.functional.mse_loss(model(X), y).backward()

        def body(model=model, X=X, y=y, opt=opt, step=opt.step):
            if workload == "train":
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(X), y).backward()
            step()

        if mode == "compiled step":
            fn = torch.compile(body, backend=backend)
        elif mode == "compiled opt.step":
            fn = functools.partial(body, step=torch.compile(opt.step, backend=backend))
        else:
            fn = body
        out[f"{opt_name} {mode}"] = fn
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--workload", choices=["train", "step"], default="train")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50, help="calls timed per variant per round")
    ap.add_argument("--warmup", type=int, default=12, help="untimed-in-the-table first calls (compilation)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--optimizers", default="descend.Adam,torch.optim.Adam")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a busy machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch._dynamo.config.cache_size_limit = 8  # torch's default, stated

    fns = {}
    for o in args.optimizers.split(","):
        fns.update(variants(o, args.width, args.depth, args.backend, args.workload))
    first = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            fn()
        first[name] = time.perf_counter() - t0
    times = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - t0) / args.steps)
    print(f"workload={args.workload}, backend={args.backend}, MLP {args.depth}x{args.width}, batch 64, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.rounds} rounds of {args.steps} steps")
    print(f"{'variant':42s} {'ms/step':>8s} {'÷ eager':>8s} {'first ' + str(args.warmup) + ' calls (s)':>20s}")
    for name in fns:
        eager = times[name.rsplit(" compiled", 1)[0] + " eager" if "compiled" in name else name]
        ratio = statistics.median(t / e for t, e in zip(times[name], eager))
        print(f"{name:42s} {statistics.median(times[name]) * 1e3:8.3f} {ratio:8.2f} {first[name]:20.1f}")


if __name__ == "__main__":
    main()
