"""How close does ``lr="auto"`` come to a grid-tuned learning rate? (issue 11's goal, measured)

For each task and optimizer: an 8-point log grid of fixed learning rates (the best by mean final
validation metric over the seeds is "grid-tuned"), and one run with ``lr="auto"``, evaluated both on
the final weights and on the averaged ones (``with opt.averaged()``). Every run has the lab's
protocol (descend.lab.train.train_run: same init and batches per seed, batch 32, final-epoch
validation metric; accuracy, or R² for diabetes). Gaps are in points (metric × 100), auto minus grid.

    nice -n 10 python scripts/auto_lr_eval.py --seeds 5                # the README table
    python scripts/auto_lr_eval.py --tasks iris,wine --optimizers adam --seeds 3   # a quick look

Grid runs are cached in --cache (JSON), so changing the estimator re-runs only the auto runs.
MNIST-1D comes from the ``mnist1d`` package (pip install mnist1d), generated offline with its
default arguments (5000 rows; 80/20 stratified split by descend.lab.data.prepare).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

import descend
from descend.lab import load_data
from descend.lab.data import prepare
from descend.lab.train import _loss_fn, evaluate, make_model, train_run

# task -> (hidden widths, epochs): the setup; iris and wine use the lab's MLP and 20 epochs
TASKS = {
    "digits": ((64,), 20),
    "breast_cancer": ((), 30),  # logistic regression
    "diabetes": ((64,), 40),
    "mnist1d": ((100, 100), 30),
    "iris": ((64,), 20),
    "wine": ((64,), 20),
}
# 8-point log grids (half decades), per optimizer, around the lab's defaults
GRIDS = {
    "adam": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
    "rmsprop": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
    "gd": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0],
    "momentum": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
    "adagrad": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0],
}


def load_task(name: str):
    if name != "mnist1d":
        return load_data(name)
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / "descend_mnist1d.npz"
    if not cache.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())
        np.savez(cache, x=np.concatenate([d["x"], d["x_test"]]), y=np.concatenate([d["y"], d["y_test"]]))
    z = np.load(cache)
    return prepare(z["x"].astype(np.float64), z["y"].astype(np.int64), name="mnist1d", kind="classification")


def run_auto(data, optimizer: str, lr, *, seed: int, epochs: int, hidden, batch_size: int = 32,
             divergence_factor: float = 1e3) -> dict:
    """train_run's loop with lr="auto": final metric on the weights and on the averaged weights."""
    xt, xv = torch.from_numpy(data.x_train), torch.from_numpy(data.x_val)
    yt, yv = torch.from_numpy(data.y_train), torch.from_numpy(data.y_val)
    n = len(xt)
    model = make_model(data.n_features, data.n_outputs, hidden, seed)
    opt = descend.create(optimizer, model.parameters(), lr=lr)
    loss_fn = _loss_fn(data.kind)
    order = torch.Generator().manual_seed(seed)
    limit = divergence_factor * max(evaluate(model, xt, yt, data.kind)[0], 1e-12)
    diverged, lrs = False, []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order)
        model.train()
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            if not math.isfinite(loss.item()) or loss.item() > limit:
                diverged = True
                break
            loss.backward()
            opt.step()
        lrs.append(float(opt.param_groups[0]["lr"]))
        if diverged:
            break
    final = evaluate(model, xv, yv, data.kind)[1]
    avg = final
    if any(type(b).__name__ == "AverageIterates" for b in opt.blocks):
        with opt.averaged():
            avg = evaluate(model, xv, yv, data.kind)[1]
    return {"final": final, "avg": avg, "diverged": diverged, "lrs": lrs}


def grid_metric(cache: dict, data, task, optimizer, lr, seed, epochs, hidden) -> float:
    key = f"{task}|{optimizer}|{lr}|{seed}|{epochs}|{list(hidden)}"
    if key not in cache:
        run = train_run(data, optimizer, {**_fixed(optimizer), "lr": lr}, seed=seed, epochs=epochs, hidden=hidden)
        m = run.rows[-1]["val_metric"]
        cache[key] = m if math.isfinite(m) else -1.0
    return cache[key]


def _fixed(optimizer: str) -> dict:
    return {"momentum": 0.9} if optimizer == "momentum" else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--optimizers", default=",".join(GRIDS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every task's epochs (design runs)")
    ap.add_argument("--cache", default="scripts/.auto_lr_grid_cache.json")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--auto", default="", help="options of descend.auto, e.g. 'adapt=0.05,init=1e-3'")
    ap.add_argument("--no-grid", action="store_true", help="only the auto runs (no gaps)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache_path = Path(args.cache)
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    seeds = list(range(args.seeds))
    results = {}
    t0 = time.time()
    for task in args.tasks.split(","):
        data = load_task(task)
        hidden, epochs = TASKS[task]
        epochs = max(1, round(epochs * args.epochs_scale))
        for opt in args.optimizers.split(","):
            row = {}
            if not args.no_grid:
                means = {lr: float(np.mean([grid_metric(cache, data, task, opt, lr, s, epochs, hidden) for s in seeds]))
                         for lr in GRIDS[opt]}
                cache_path.write_text(json.dumps(cache))
                best = max(means, key=means.get)
                row.update(grid_lr=best, grid=means[best])
            spec = descend.auto(**{k: float(v) if k != "average" else v == "True"
                                    for k, v in (kv.split("=") for kv in filter(None, args.auto.split(",")))})
            runs = [run_auto(data, opt, spec, seed=s, epochs=epochs, hidden=hidden) for s in seeds]
            fin, avg = np.array([r["final"] for r in runs]), np.array([r["avg"] for r in runs])
            row.update(auto=float(np.nanmean(fin)), auto_std=float(np.nanstd(fin, ddof=1)) if len(fin) > 1 else 0.0,
                       auto_avg=float(np.nanmean(avg)),
                       auto_avg_std=float(np.nanstd(avg, ddof=1)) if len(avg) > 1 else 0.0,
                       diverged=sum(r["diverged"] for r in runs),
                       lr_end=float(np.mean([r["lrs"][-1] for r in runs])))
            results[(task, opt)] = row
            gap = ""
            if "grid" in row:
                gap = (f"grid {row['grid']:.4f} @ {row['grid_lr']:g}  gap {100 * (row['auto'] - row['grid']):+.2f}"
                       f"  avg-gap {100 * (row['auto_avg'] - row['grid']):+.2f}")
            print(f"{task:14s} {opt:9s} auto {row['auto']:.4f}±{row['auto_std']:.4f} avg {row['auto_avg']:.4f} "
                  f"lr_end {row['lr_end']:.3g} div {row['diverged']}  {gap}  [{time.time() - t0:.0f}s]", flush=True)
    if not args.no_grid:
        print("\nper optimizer: mean gap / worst gap in points (final weights | averaged weights)")
        for opt in args.optimizers.split(","):
            rows = [r for (t, o), r in results.items() if o == opt]
            g = np.array([100 * (r["auto"] - r["grid"]) for r in rows])
            ga = np.array([100 * (r["auto_avg"] - r["grid"]) for r in rows])
            print(f"{opt:9s} {g.mean():+.2f} / {g.min():+.2f}   |   {ga.mean():+.2f} / {ga.min():+.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({f"{t}|{o}": r for (t, o), r in results.items()}, indent=1))
    if not args.no_grid:
        print()
        print(markdown(results, args.tasks.split(","), args.optimizers.split(","), len(seeds)))


def markdown(results: dict, tasks, optimizers, seeds: int) -> str:
    """The README table: per optimizer, lr="auto" (mean ± sd over the seeds) and the grid's best per task."""
    head = "| optimizer | | " + " | ".join(tasks) + " | mean gap | worst gap |"
    lines = [head, "|" + "---|" * (len(tasks) + 4)]
    for o in optimizers:
        rows = [results[(t, o)] for t in tasks]
        gaps = [100 * (r["auto"] - r["grid"]) for r in rows]
        div = sum(r["diverged"] for r in rows)
        lines.append(f"| {o} | lr=\"auto\" (1 run) | " + " | ".join(f"{r['auto']:.3f} ± {r['auto_std']:.3f}" for r in rows)
                     + f" | {np.mean(gaps):+.2f} | {min(gaps):+.2f} |" + (f" ({div} diverged)" if div else ""))
        lines.append(f"| | grid (8 runs), best lr | " + " | ".join(f"{r['grid']:.3f} @ {r['grid_lr']:g}" for r in rows)
                     + " | 0 | 0 |")
    return "\n".join(lines) + f"\n\n({seeds} seeds; metric: accuracy, R² for diabetes; gap = auto − grid in points)"


if __name__ == "__main__":
    main()
