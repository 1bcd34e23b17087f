"""How good is lr_find's suggestion? Train at it and on a grid of learning rates around it, on real tasks.

For each task (digits: 20 epochs; diabetes: 40 epochs), optimizer and seed: run the range test
(1e-7 → 10, 100 steps, batch 32) on the fresh model, then train the same model (same seed, same
batches) at each rule's suggestion and at every lr of a half-decade grid 1e-5 … 3. Printed per
(task, optimizer): the suggestions (median over seeds), the best grid lr, and the final validation
metric (mean over seeds) at the suggestion, at ×1/10, ×1/3, ×3, ×10 of it, and at the best grid lr.

    python scripts/check_lr_find.py            # about 3 minutes on 2 cores
    python scripts/check_lr_find.py --quick    # 1 seed
"""

from __future__ import annotations

import argparse
import statistics

import torch

import descend
from descend.lab import data as D
from descend.lab import train as T
from descend.cli.options import batch_stream as _batch_stream

GRID = [10 ** (e / 2) for e in range(-10, 1)]  # 1e-5 … 1
EPOCHS = {"digits": 20, "diabetes": 40}


def final_metric(data, name, lr, seed, epochs):
    run = T.train_run(data, name, T.hyperparameters_for(name, {"lr": lr}), seed=seed, epochs=epochs)
    return float("nan") if run.diverged else run.rows[-1]["val_metric"]


def suggestion(data, name, seed, rule):
    model = T.make_model(data.n_features, data.n_outputs, (64,), seed)
    opt = descend.create(name, model.parameters(), **T.hyperparameters_for(name))
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    batches = _batch_stream(len(x), 32, seed)
    loss_of = T._loss_fn(data.kind)

    def loss_fn():
        idx = next(batches)
        return loss_of(model(x[idx]), y[idx])

    return descend.lr_find(model, opt, loss_fn, rule=rule).suggestion


def mean(xs):
    xs = [x for x in xs if x == x]
    return statistics.fmean(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--optimizers", default="gd,momentum,adagrad,rmsprop,adam")
    ap.add_argument("--tasks", default="digits,diabetes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [0] if args.quick else [0, 1, 2]
    for task in args.tasks.split(","):
        data = D.load(task)
        epochs = EPOCHS.get(task, 20)
        print(f"\n== {data.describe()}; {epochs} epochs; final validation {data.metric_name}, mean of {len(seeds)} seed(s)")
        print(f"{'optimizer':9s} {'rule':9s} {'suggested':>9s} {'best grid':>9s} {'/10':>6s} {'/3':>6s} "
              f"{'at sugg':>7s} {'x3':>6s} {'x10':>6s} {'best':>6s}")
        for name in args.optimizers.split(","):
            grid = {lr: mean([final_metric(data, name, lr, s, epochs) for s in seeds]) for lr in GRID}
            best_lr = max(grid, key=lambda k: grid[k] if grid[k] == grid[k] else -1e9)
            for rule in ("steepest", "min10"):
                sugg = {s: suggestion(data, name, s, rule) for s in seeds}
                at = {f: mean([final_metric(data, name, sugg[s] * f, s, epochs) for s in seeds])
                      for f in (0.1, 1 / 3, 1, 3, 10)}
                med = statistics.median(sugg.values())
                print(f"{name:9s} {rule:9s} {med:9.2g} {best_lr:9.2g} {at[0.1]:6.3f} {at[1/3]:6.3f} {at[1]:7.3f} "
                      f"{at[3]:6.3f} {at[10]:6.3f} {grid[best_lr]:6.3f}", flush=True)


if __name__ == "__main__":
    main()
