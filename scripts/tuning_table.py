"""The README's tuning table: what a learning rate costs, and how close one-run methods come to a tuned one.

Every row is measured with the same harness (descend.lab.tune.run_trial: per seed the same initial
weights and mini-batches for every method, batch 32, the final validation metric — accuracy, or R²
on diabetes — after a fixed number of epochs):

* ``RULE, 8-point grid (best on validation)``: gd, momentum, adagrad, rmsprop, adam, each on
  descend.lab.tune.grid around its lab default (8 half-decade points); the best rate by mean over the
  seeds, selected on the same validation split it is reported on (the issue's measure: it flatters
  the grid, which is judged by the rows that chose it). Cost: 8 runs.
* ``RULE, 8-point grid (held out ...)``: the same trials, the rate chosen on one half of the
  validation rows and reported on the other, both ways round (descend.lab.tune.heldout_best; every
  grid trial caches its metric on the two halves). The "held out" gap columns compare with it; a
  one-run method has no choice to make, so its metric on the whole split is already held out.
* ``RULE at its default lr``: the lab's default (one of the grid's points).
* ``RULE, lr="auto"``: every rule of descend.available(), one run (only where this descend has it).
* ``lr_find → RULE``: descend.lr_find (defaults: 1e-7 → 10, 100 steps) on the fresh model, then one
  run at its suggestion (the sweep's steps are counted in the cost column as a fraction of a run).
* The published methods, from their own packages at their defaults: Prodigy (prodigyopt, lr=1),
  D-Adaptation Adam (dadaptation, lr=1), DoG (dog-optimizer), DoG + polynomial decay averaging
  (dog's PolynomialDecayAverager, γ = 8, evaluated on the averaged weights), Schedule-Free AdamW
  (schedulefree, its default lr 0.0025, evaluated in its eval mode), Mechanic around torch's Adam
  at its default lr 1e-3 (mechanic-pytorch, its default tuner settings). They are not descend
  dependencies; install them with

      pip install torch==2.13.0 prodigyopt dadaptation dog-optimizer schedulefree mechanic-pytorch

Gaps are in points (metric × 100), the row's mean minus the grid-tuned mean of its own rule (the
``RULE`` rows) or of Adam (everything else), per task; "mean gap" and "worst gap" are over tasks.
The worst gap carries ``± SE``, the paired standard error of that task's gap: per seed both rows
start from the same weights and see the same mini-batches, so the error is the spread of the
per-seed differences over √seeds (shown where both rows have every seed and none diverged; it does
not count the grid's own choice of rate, nor that the worst of 7 noisy gaps leans low). The mean
gap carries the same for the mean: the spread over seeds of each seed's mean gap over the tasks.

Tasks (the issue's setup; iris and wine the lab's MLP): digits MLP 64 (20 epochs), breast_cancer
logistic regression (30), diabetes MLP 64 (40), MNIST-1D MLP 100-100 (30) and 1-D CNN 16-16-16 (30),
iris and wine MLP 64 (20).

Resumable: every trial's result is appended to --cache (JSON lines) as it finishes and never run
again; rows whose code changed (lr="auto", lr_find) are keyed by a hash of that code. Stop it any
time, run it again to go on; ``--report`` prints the table from the cache without training.

    nice -n 10 python scripts/tuning_table.py --seeds 5 --jobs 2     # everything (hours on 2 cores)
    python scripts/tuning_table.py --report --seeds 5                  # the table from the cache
    python scripts/tuning_table.py --tasks iris,wine --seeds 2         # a quick look
    python scripts/tuning_table.py --seeds 15:20 --methods grid,auto --rules adam   # fresh seeds, one rule
    python scripts/tuning_table.py --report --seeds 10:15              # seeds 10-14 alone (fresh seeds)
    python scripts/tuning_table.py --best-epoch --tasks diabetes --seeds 15 --jobs 2   # final vs best epoch
    python scripts/tuning_table.py --seeds 5 --methods variants --jobs 2 --variants   # lr="auto" option variants
    python scripts/tuning_table.py --seeds 20 --lr-find-rules      # lr_find's suggestion rules, on the grid
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import hashlib
import importlib
import inspect
import json
import math
import statistics
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import descend
from descend.lab import data as D
from descend.lab import train as T
from descend.lab import tune as U

ROOT = Path(__file__).resolve().parent.parent
LR_FIND = importlib.import_module("descend.lr_find")  # the module (descend.lr_find is the function)

# task label -> (data set, model, hidden, epochs)
TASKS = {
    "digits": ("digits", "mlp", (64,), 20),
    "breast_cancer": ("breast_cancer", "mlp", (), 30),
    "diabetes": ("diabetes", "mlp", (64,), 40),
    "mnist1d": ("mnist1d", "mlp", (100, 100), 30),
    "mnist1d_cnn": ("mnist1d", "cnn1d", (16, 16, 16), 30),
    "iris": ("iris", "mlp", (64,), 20),
    "wine": ("wine", "mlp", (64,), 20),
}
RULES = ("gd", "momentum", "adagrad", "rmsprop", "adam")

# lr="auto" options measured against the default for the five rules (``--methods variants``;
# ``--variants`` prints their gaps): keyword arguments of descend.auto
VARIANTS = {
    "no restart of the average (restart=inf)": {"restart": math.inf},
    "the old slower fall (down=0.7)": {"down": 0.7},
    "every iterate averaged (avg_every=1)": {"avg_every": 1},
    "uniform average (avg_gamma=0)": {"avg_gamma": 0.0},
    "linearly weighted average (avg_gamma=1)": {"avg_gamma": 1.0},
    "the full cap everywhere (cap=1)": {"cap": 1.0},
    "the values before for every rule (adapt=0.2, cap=1)": {"adapt": 0.2, "cap": 1.0},
    "β = 0.2 everywhere (adapt=0.2)": {"adapt": 0.2},
    "half the cap (cap=0.5)": {"cap": 0.5},  # AdaGrad's and RMSProp's (the others': their default)
    "a later restart of the average (restart=3)": {"restart": 3.0},
    "an earlier restart of the average (restart=1.5)": {"restart": 1.5},
    "a larger first step (init=0.1)": {"init": 0.1},
    "faster growth (adapt=0.3)": {"adapt": 0.3},
    "twice the cap (cap=2)": {"cap": 2.0},
    "no average (average=False)": {"average": False},
}


# ------------------------------------------------------------------------------- published methods
# module-level factories (picklable by reference): factory(params, **hyperparameters) -> optimizer


def prodigy(params):
    from prodigyopt import Prodigy

    return Prodigy(params, lr=1.0)


def dadapt_adam(params):
    from dadaptation import DAdaptAdam

    return DAdaptAdam(params, lr=1.0)


def dog_plain(params):
    from dog import DoG

    return DoG(params)


class DoGAveraged:
    """DoG with the package's polynomial decay averager (Shamir & Zhang 2013, γ = 8); ``averaged()``
    swaps the averaged weights in for evaluation and back."""

    def __init__(self, params):
        from dog import DoG, PolynomialDecayAverager

        self.params = list(params)
        self.opt = DoG(self.params)
        holder = nn.Module()
        holder.ps = nn.ParameterList(self.params)
        self.avg = PolynomialDecayAverager(holder, gamma=8.0)
        self.param_groups = self.opt.param_groups

    def zero_grad(self, set_to_none=True):
        self.opt.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.opt.step()
        self.avg.step()

    @contextlib.contextmanager
    def averaged(self):
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, a in zip(self.params, self.avg.averaged_model.ps):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)


def dog_averaged(params):
    return DoGAveraged(params)


def mechanic_adam(params):
    from mechanic_pytorch import mechanize

    return mechanize(torch.optim.Adam)(params)  # the package's tuner around torch's Adam at its default lr 1e-3


def schedule_free_adamw(params):
    from schedulefree import AdamWScheduleFree

    return AdamWScheduleFree(params)  # lr 0.0025, its default; run_trial switches its train/eval modes


PUBLISHED = {
    "Prodigy": (prodigy, "prodigyopt"),
    "D-Adaptation Adam": (dadapt_adam, "dadaptation"),
    "DoG": (dog_plain, "dog"),
    "DoG + polynomial averaging": (dog_averaged, "dog"),
    "Schedule-Free AdamW (its default lr)": (schedule_free_adamw, "schedulefree"),
    "Mechanic(Adam)": (mechanic_adam, "mechanic_pytorch"),
}


# ------------------------------------------------------------------------------- helpers


def code_hash(*objs) -> str:
    """A hash of the objects' code — their syntax trees without docstrings, so editing a docstring
    or a comment keeps the cached rows."""
    h = hashlib.sha1()
    for o in objs:
        tree = ast.parse(textwrap.dedent(inspect.getsource(o)))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        h.update(ast.dump(tree).encode())
    return h.hexdigest()[:10]


def has_auto() -> bool:
    try:
        descend.create("adam", [nn.Parameter(torch.zeros(2))], lr="auto")
        return True
    except Exception:
        return False


class Cache:
    """Trial results as JSON lines, appended as they finish; the last line for a key wins."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self.data[rec["key"]] = rec
                except (json.JSONDecodeError, KeyError):
                    pass  # a line cut short by a stop: run that trial again

    def __contains__(self, key):
        return key in self.data

    def get(self, key):
        return self.data.get(key)

    def put(self, key, **rec):
        rec["key"] = key
        self.data[key] = rec
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()


def lr_find_suggestion(problem: U.Problem, rule: str, seed: int) -> float | None:
    """descend.lr_find on the seed's fresh model with the rule's lab defaults (as scripts/check_lr_find.py)."""
    return lr_find_sweep(problem, rule, seed)[0].suggestion


def lr_find_sweep(problem: U.Problem, rule: str, seed: int):
    """(descend.lr_find's result, the optimizer it swept) on the seed's fresh model, as
    :func:`lr_find_suggestion` runs it."""
    torch.manual_seed(seed)
    model = problem.model()
    opt = descend.create(rule, model.parameters(), **T.hyperparameters_for(rule))
    data = problem._train
    g = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            perm = torch.randperm(data.n, generator=g)
            for i in range(0, data.n, problem.batch_size):
                yield perm[i:i + problem.batch_size]

    it = batches()

    def loss_fn():
        x, y = data.batch(next(it))
        return problem.loss(model(x), y)

    return descend.lr_find(model, opt, loss_fn), opt


# ------------------------------------------------------------------------------- running


def plan(task: str, seeds: list[int], methods: set[str], auto_ok: bool, lrfind_v: str,
         rules: set[str] | None = None):
    """Every trial a task needs: (cache key, Trial or a lr_find request); ``rules``: only these
    optimizers' rows (None: every one)."""
    _, model, hidden, epochs = TASKS[task]
    core = [r for r in RULES if rules is None or r in rules]
    every = [r for r in descend.available() if rules is None or r in rules] if auto_ok else []
    out = []
    for s in seeds:
        if "grid" in methods:
            for rule in core:
                hp = T.hyperparameters_for(rule)
                for lr in U.grid(float(hp["lr"])):
                    trial = U.Trial(rule, rule, tuple(sorted({**hp, "lr": lr}.items())), s, epochs, epochs)
                    out.append((f"{task}|grid|{rule}|{lr:.6g}|{s}", trial))
        if "auto" in methods and auto_ok:
            for rule in every:
                hp = {k: v for k, v in T.hyperparameters_for(rule).items() if k != "lr"}
                trial = U.Trial(rule, rule, tuple(sorted({**hp, "lr": "auto"}.items())), s, epochs, epochs)
                out.append((f"{task}|auto@{auto_version(rule)}|{rule}|auto|{s}", trial))
        if "variants" in methods and auto_ok:
            for name, opts in VARIANTS.items():
                for rule in core:
                    hp = {k: v for k, v in T.hyperparameters_for(rule).items() if k != "lr"}
                    trial = U.Trial(rule, rule, tuple(sorted({**hp, "lr": descend.auto(**opts)}.items())), s, epochs,
                                    epochs)
                    out.append((f"{task}|variant@{auto_version(rule)}|{rule}|{name}|{s}", trial))
        if "published" in methods:
            for label, (factory, module) in PUBLISHED.items():
                trial = U.Trial(label, factory, (), s, epochs, epochs)
                out.append((f"{task}|published|{label}|-|{s}", trial))
        if "lrfind" in methods:
            for rule in core:
                out.append((f"{task}|lrfind@{lrfind_v}|{rule}|?|{s}", ("lrfind", rule, s)))
    return out


def run(args) -> None:
    cache = Cache(Path(args.cache))
    seeds = args.seeds
    methods = set(args.methods.split(","))
    auto_ok = has_auto()
    if "auto" in methods and not auto_ok:
        print("this descend has no lr='auto': skipping those rows", file=sys.stderr)
    if "published" in methods:
        missing = [m for _, m in PUBLISHED.values() if not _importable(m)]
        if missing:
            sys.exit(f"published methods need their packages ({', '.join(sorted(set(missing)))} missing): "
                     "pip install torch==2.13.0 prodigyopt dadaptation dog-optimizer schedulefree mechanic-pytorch")
    lrfind_v = code_hash(LR_FIND)
    torch.set_num_threads(1)
    # seed-major: every task gets seed 0 first, so a run stopped early still covers every task
    for s in seeds:
        for task in args.tasks.split(","):
            name, model, hidden, epochs = TASKS[task]
            todo = [(k, t) for k, t in plan(task, [s], methods, auto_ok, lrfind_v, args.rules) if needs_run(cache, k)]
            if not todo:
                continue
            problem = U.problem_from_data(D.load(name), model, hidden, 32)
            t0 = time.perf_counter()
            trials = []
            for key, t in todo:
                if isinstance(t, tuple):  # lr_find: the suggestion first, then a trial at it
                    _, rule, seed = t
                    sugg = lr_find_suggestion(problem, rule, seed)
                    if sugg is None:
                        cache.put(key, final=None, diverged=True, seconds=0.0, lr=None)
                        continue
                    hp = T.hyperparameters_for(rule, {"lr": sugg})
                    t = U.Trial(rule, rule, tuple(sorted(hp.items())), seed, epochs, epochs)
                trials.append((key, t))
            ex = U.executor(problem, args.jobs)
            try:
                step = max(1, 2 * args.jobs)
                for i in range(0, len(trials), step):
                    chunk = trials[i:i + step]
                    for (key, t), res in zip(chunk, ex.run([(t, None, False) for _, t in chunk])):
                        cache.put(key, final=res.metrics[-1], diverged=res.diverged_epoch is not None,
                                  seconds=res.seconds, lr=_plain(t.hp.get("lr")), halves=res.halves)
            finally:
                ex.close()
            print(f"seed {s} {task}: {len(todo)} trials in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


@functools.lru_cache(maxsize=None)
def half_sizes(task: str) -> tuple[int, int] | None:
    """Row counts of the task's two validation halves (descend.lab.tune.Problem.halves)."""
    name, model, hidden, _ = TASKS[task]
    halves = U.problem_from_data(D.load(name), model, hidden, 32).halves()
    return None if halves is None else (len(halves[0]), len(halves[1]))


def _plain(lr):
    """The lr as the cache stores it: a number, "auto", or descend.auto(...)'s repr."""
    return lr if lr is None or isinstance(lr, (int, float, str)) else repr(lr)


def needs_run(cache: Cache, key: str) -> bool:
    """A trial not in the cache, or a grid trial cached without its metric on the validation halves
    (the held-out column chooses the grid's rate on one half and reports it on the other)."""
    rec = cache.get(key)
    return rec is None or ("|grid|" in key and "halves" not in rec)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@functools.lru_cache(maxsize=None)
def auto_version(rule: str | None = None) -> str:
    """A hash of the code behind lr="auto" (the estimator and averaging blocks, descend.auto, the
    façade's lr="auto" handling) and of ``rule``'s own defaults for it (every rule's where None), so
    a changed estimator re-runs those rows, a rule's changed defaults re-run that rule's rows, and
    nothing else does."""
    from descend import blocks, core

    parts = [getattr(blocks, n) for n in ("ScaleByAutoLearningRate", "AverageIterates", "Auto", "auto")
             if hasattr(blocks, n)]
    parts += [getattr(core.ChainOptimizer, n) for n in ("_auto_lr",) if hasattr(core.ChainOptimizer, n)]
    # each rule's own defaults for lr="auto" (where it has them), in the registry's order, each once
    from descend.optimizers import REGISTRY

    seen = [getattr(cls, "_auto_defaults", None) for name, cls in REGISTRY.items() if rule in (None, name)]
    parts += [f for i, f in enumerate(seen) if f is not None and f not in seen[:i]]
    from descend import optimizers  # and what they share (the values for a rule with momentum)

    parts += [getattr(optimizers, n) for n in ("_with_momentum",) if hasattr(optimizers, n)]
    return code_hash(*parts) if parts else "none"


def old_auto_version() -> str:
    """The key the first runs used: a hash of blocks.py, core.py and optimizers.py (for rekeying)."""
    h = hashlib.sha1()
    for n in ("blocks.py", "core.py", "optimizers.py"):
        f = ROOT / "descend" / n
        if f.exists():
            h.update(f.read_bytes())
    return h.hexdigest()[:10]


# ------------------------------------------------------------------------------- the table


def _stats(vals):
    ok = [v for v in vals if v is not None and math.isfinite(v)]
    if not ok:
        return math.nan, math.nan
    return statistics.fmean(ok), (statistics.stdev(ok) if len(ok) > 1 else 0.0)


def report(args) -> str:
    cache = Cache(Path(args.cache))
    seeds = args.seeds
    tasks = args.tasks.split(",")
    lrfind_v = code_hash(LR_FIND)
    rows: dict[str, dict[str, dict]] = {}  # label -> task -> {"mean", "std", "n", "div", "runs", "sec"}
    ref_of: dict[str, str] = {}
    grid_best_of: dict[tuple[str, str], float] = {}
    grid_seeds_of: dict[tuple[str, str], list] = {}  # the grid's best rate, seed by seed (paired errors)
    grid_heldout_of: dict[tuple[str, str], float] = {}

    def recs(prefix, task):
        return [cache.get(f"{task}|{prefix}|{s}") for s in seeds]

    for task in tasks:
        for rule in RULES:
            hp = T.hyperparameters_for(rule)
            runs = grid_runs(cache, task, rule, seeds)
            if hp["lr"] in runs:
                _cell(rows, f"{rule} at its default lr ({hp['lr']:g})", task, runs[hp["lr"]], 1,
                      by_seed=_finals(recs(f"grid|{rule}|{hp['lr']:.6g}", task)))
                ref_of[f"{rule} at its default lr ({hp['lr']:g})"] = rule
            best = grid_best(runs)
            if best is not None:
                label = f"{rule}, 8-point grid (best on validation)"
                _cell(rows, label, task, runs[best[1]], 8, note=f"{best[1]:.2g}",
                      by_seed=_finals(recs(f"grid|{rule}|{best[1]:.6g}", task)))
                ref_of[label] = rule
                grid_best_of[(task, rule)] = rows[label][task]["mean"]
                grid_seeds_of[(task, rule)] = rows[label][task]["by_seed"]
            held = grid_heldout(runs, task)
            if held is not None:
                label = f"{rule}, 8-point grid (held out: chosen on one half, reported on the other)"
                rows.setdefault(label, {})[task] = dict(mean=held[0], std=math.nan, n=len(next(iter(runs.values()))),
                                                        div=0, runs=8, note="/".join(f"{x:.2g}" for x in held[1]))
                ref_of[label] = rule
                grid_heldout_of[(task, rule)] = held[0]
        for rule in descend.available():
            label = f"{rule}, lr=\"auto\""
            aligned = recs(f"auto@{auto_version(rule)}|{rule}|auto", task)
            got = [r for r in aligned if r is not None]
            if got:
                _cell(rows, label, task, got, 1, by_seed=_finals(aligned))
                ref_of[label] = rule if rule in RULES else "adam"
        for rule in RULES:
            label = f"lr_find → {rule}"
            aligned = recs(f"lrfind@{lrfind_v}|{rule}|?", task)
            got = [r for r in aligned if r is not None]
            if got:
                _cell(rows, label, task, got, 1, note=f"{statistics.median(r['lr'] or math.nan for r in got):.2g}",
                      by_seed=_finals(aligned))
                ref_of[label] = rule
        for label in PUBLISHED:
            aligned = recs(f"published|{label}|-", task)
            got = [r for r in aligned if r is not None]
            if got:
                _cell(rows, label, task, got, 1, by_seed=_finals(aligned))
                ref_of[label] = "adam"
    # markdown, in the order of the docstring: grids and defaults, lr="auto", lr_find, published
    def order(label):
        for i, rule in enumerate(RULES):
            if label.startswith(f"{rule}, 8-point grid (best"):
                return (0, i, 0)
            if label.startswith(f"{rule}, 8-point grid (held"):
                return (0, i, 1)
            if label.startswith(f"{rule} at its default"):
                return (0, i, 2)
        if "auto" in label:
            return (1, descend.available().index(label.split(",")[0]), 0)
        if label.startswith("lr_find"):
            return (2, RULES.index(label.split()[-1]), 0)
        return (3, list(PUBLISHED).index(label), 0)

    rows = {k: rows[k] for k in sorted(rows, key=order)}
    names = {"digits": "digits", "breast_cancer": "breast_cancer", "diabetes": "diabetes R²", "mnist1d": "MNIST-1D MLP",
             "mnist1d_cnn": "MNIST-1D CNN", "iris": "iris", "wine": "wine"}
    n_task = {t: max((c[t]["n"] for c in rows.values() if t in c), default=0) for t in tasks}
    head = ["method", *[f"{names[t]} ({n_task[t]} seed{'s' if n_task[t] != 1 else ''})" for t in tasks],
            "mean gap", "worst gap", "mean gap (held out)", "worst gap (held out)", "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, cells in rows.items():
        ref = ref_of[label]
        gaps, held, parts, pairs = [], [], [], []
        for t in tasks:
            c = cells.get(t)
            if c is None:
                parts.append("—")
                continue
            ok = c["n"] - c["div"]
            txt = ("—" if math.isnan(c["mean"]) else
                   f"{c['mean']:.3f} ± {c['std']:.3f}" if ok > 1 and math.isfinite(c["std"]) else f"{c['mean']:.3f}")
            if c["div"]:
                txt += f" (div {c['div']}/{c['n']})"
            if c["n"] < n_task[t]:
                txt += f" [{c['n']} seed{'s' if c['n'] != 1 else ''}]"
            if c.get("note"):
                txt += f" @{c['note']}"
            parts.append(txt)
            g = grid_best_of.get((t, ref))
            if g is not None and math.isfinite(c["mean"]):
                own = label == f"{ref}, 8-point grid (best on validation)"  # the reference itself: no error to show
                pair = None if own else (c.get("by_seed"), grid_seeds_of.get((t, ref)))
                gaps.append((100 * (c["mean"] - g), pair and paired_se(*pair)))
                pairs.append(pair)
            h = grid_heldout_of.get((t, ref))
            if h is not None and math.isfinite(c["mean"]):
                held.append(100 * (c["mean"] - h))
        worst = min(gaps, key=lambda x: x[0]) if gaps else None
        mse = mean_gap_se(pairs)
        mg = (f"{statistics.fmean(x[0] for x in gaps):+.2f}" + (f" ± {mse:.2f}" if mse is not None else "")) if gaps else "—"
        wg = "—" if worst is None else f"{worst[0]:+.2f}" + (f" ± {worst[1]:.2f}" if worst[1] is not None else "")
        mh, wh = (f"{statistics.fmean(held):+.2f}", f"{min(held):+.2f}") if held else ("—", "—")
        runs = next(iter(cells.values()))["runs"]
        lines.append("| " + " | ".join([label, *parts, mg, wg, mh, wh, str(runs)]) + " |")
    return "\n".join(lines)


def lr_find_report(args) -> str:
    """lr_find's gap table: per task and rule, the suggestion (median over seeds), the grid's best rate,
    the final metric at each (mean over seeds) and the gap in points."""
    cache = Cache(Path(args.cache))
    seeds = args.seeds
    lrfind_v = code_hash(LR_FIND)
    lines = ["| task | rule | suggested (median) | grid best lr | at the suggestion | grid best | gap (points) | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    gaps = []
    for task in args.tasks.split(","):
        for rule in RULES:
            best = grid_best(grid_runs(cache, task, rule, seeds))
            got = [r for r in (cache.get(f"{task}|lrfind@{lrfind_v}|{rule}|?|{s}") for s in seeds) if r is not None]
            if best is None or best[0] == -math.inf or not got:
                continue
            ok = [r["final"] for r in got if not r["diverged"]]
            div = len(got) - len(ok)
            at = statistics.fmean(ok) if ok else math.nan
            gap = 100 * (at - best[0]) if ok else math.nan
            if ok:
                gaps.append(gap)
            sugg = statistics.median(r["lr"] for r in got if r["lr"] is not None)
            lines.append(f"| {task} | {rule} | {sugg:.2g} | {best[1]:.2g} | {at:.3f}" + (f" (diverged {div}/{len(got)})" if div else "")
                         + f" | {best[0]:.3f} | {gap:+.1f} | {len(got)} |")
    if gaps:
        lines.append(f"\nmean gap {statistics.fmean(gaps):+.2f} points, worst {min(gaps):+.2f} ({len(gaps)} task × rule pairs)")
    return "\n".join(lines)


def _valley_third(lrs: list[float], losses: list[float]) -> float:
    """A third of the way (in log lr) back from the curve's minimum towards the highest point before it."""
    skip = max(1, len(lrs) // 10)
    k = min(range(skip, len(losses)), key=losses.__getitem__)
    a = max(range(skip, k + 1), key=losses.__getitem__)
    return lrs[k] * (lrs[a] / lrs[k]) ** (1 / 3)


#: suggestion rules compared by ``--lr-find-rules``: (lrs, centred losses) -> lr, before the velocity factor
LR_FIND_RULES = {
    "min ÷ 10 (the default)": lambda lrs, c: LR_FIND.suggest(lrs, c, "min10")[0],
    "min ÷ 3": lambda lrs, c: (LR_FIND.suggest(lrs, c, "min10")[0] or math.nan) * 10 / 3,
    "steepest descent": lambda lrs, c: LR_FIND.suggest(lrs, c, "steepest")[0],
    "a third of the way back up the valley": lambda lrs, c: _valley_third(lrs, c) if len(lrs) >= 5 else None,
}


def lr_find_rules_report(args) -> str:
    """Other suggestion rules, read off the same sweeps (descend.lr_find on each seed's fresh model,
    a minute or two): no run at each rule's rate, but a proxy score — the grid's mean final metric
    over the seeds, interpolated in log lr between its two nearest rates (the grid's edge value
    outside it; a diverged seed counts −1) — against the grid's best, in points."""
    cache = Cache(Path(args.cache))
    seeds = args.seeds
    lines = ["| suggestion rule | mean gap | worst gap (task, rule) | " + " | ".join(RULES) + " |",
             "|---|---|---|" + "---|" * len(RULES)]
    scores: dict[str, dict[tuple[str, str], float]] = {name: {} for name in LR_FIND_RULES}
    for task in args.tasks.split(","):
        name, model, hidden, _ = TASKS[task]
        problem = U.problem_from_data(D.load(name), model, hidden, 32)
        for rule in RULES:
            runs = grid_runs(cache, task, rule, seeds)
            if len(runs) < 2 or any(len(got) != len(seeds) for got in runs.values()):
                continue
            curve = [(math.log(lr), statistics.fmean(-1.0 if r["diverged"] else r["final"] for r in got))
                     for lr, got in runs.items()]
            best = max(v for _, v in curve)
            sweeps = [lr_find_sweep(problem, rule, s) for s in seeds]
            for label, pick in LR_FIND_RULES.items():
                vals = []
                for res, opt in sweeps:
                    lr = pick(res.lrs, res.centred)
                    if lr is None or not math.isfinite(lr):
                        vals.append(-1.0)
                        continue
                    x = math.log(lr * LR_FIND.velocity_factor(opt, res.lrs)[0])
                    vals.append(float(np.interp(x, [c[0] for c in curve], [c[1] for c in curve])))
                scores[label][(task, rule)] = 100 * (statistics.fmean(vals) - best)
    for label, gaps in scores.items():
        if not gaps:
            continue
        worst = min(gaps, key=gaps.get)
        per_rule = [[g for (_, r), g in gaps.items() if r == rule] for rule in RULES]
        lines.append(f"| {label} | {statistics.fmean(gaps.values()):+.2f} | {gaps[worst]:+.1f} ({', '.join(worst)}) | "
                     + " | ".join(f"{statistics.fmean(g):+.1f}" if g else "—" for g in per_rule) + " |")
    lines.append("\ncells: points to the rule's own grid (proxy: the grid's mean metric interpolated at the rate)")
    return "\n".join(lines)


def grid_runs(cache: Cache, task: str, rule: str, seeds: list[int]) -> dict[float, list[dict]]:
    """The rule's cached grid trials on ``task``: rate → the records of the seeds that have finished
    (rates with none left out), in the grid's order."""
    hp = T.hyperparameters_for(rule)
    out = {}
    for lr in U.grid(float(hp["lr"])):
        got = [r for r in (cache.get(f"{task}|grid|{rule}|{lr:.6g}|{s}") for s in seeds) if r is not None]
        if got:
            out[lr] = got
    return out


def grid_best(runs: dict[float, list[dict]]) -> tuple[float, float] | None:
    """(best mean final over the seeds, its rate): a rate with a diverged seed scores −∞; a tie keeps
    the smaller rate. None without runs."""
    best = None
    for lr, got in runs.items():
        score = -math.inf if any(r["diverged"] for r in got) else statistics.fmean(r["final"] for r in got)
        if best is None or score > best[0]:
            best = (score, lr)
    return best


def grid_heldout(runs: dict[float, list[dict]], task: str) -> tuple[float, tuple[float, float]] | None:
    """The grid held out (descend.lab.tune.heldout_best): None unless every rate has the same seeds
    and their halves."""
    sizes = half_sizes(task)
    if not runs or not sizes or len({len(v) for v in runs.values()}) != 1:
        return None
    return U.heldout_best({lr: [(-math.inf if r["diverged"] else r["final"], r.get("halves")) for r in got]
                           for lr, got in runs.items()}, sizes)


def variants_report(args) -> str:
    """Each lr="auto" variant of VARIANTS (and the default) against each rule's grid: mean and worst
    gap over the tasks, on the same rows and held out, in points."""
    cache = Cache(Path(args.cache))
    seeds = args.seeds
    tasks = args.tasks.split(",")
    grids = {}
    for t in tasks:
        for r in RULES:
            runs = grid_runs(cache, t, r, seeds)
            complete = len(runs) == len(U.grid(float(T.hyperparameters_for(r)["lr"]))) and all(
                len(got) == len(seeds) for got in runs.values())
            held = grid_heldout(runs, t) if complete else None
            grids[(t, r)] = (grid_best(runs)[0], None if held is None else held[0]) if complete else None
    head = ["lr=\"auto\" variant", *RULES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             ]
    for name in ["default", *VARIANTS]:
        cells = []
        for rule in RULES:
            same, held, worst_task = [], [], None
            for t in tasks:
                v = auto_version(rule)
                key = f"{t}|auto@{v}|{rule}|auto" if name == "default" else f"{t}|variant@{v}|{rule}|{name}"
                got = [cache.get(f"{key}|{s}") for s in seeds]
                g = grids[(t, rule)]
                if g is None or any(r is None for r in got):
                    continue
                m = -math.inf if any(r["diverged"] for r in got) else statistics.fmean(r["final"] for r in got)
                same.append(100 * (m - g[0]))
                if g[1] is not None:
                    held.append((100 * (m - g[1]), t))
            if len(same) < len(tasks):
                cells.append("—")
                continue
            worst = min(held) if held else (math.nan, "")
            cells.append(f"{statistics.fmean(same):+.2f} / {min(same):+.2f}; held out {statistics.fmean(h for h, _ in held):+.2f}"
                         f" / {worst[0]:+.2f} ({worst[1]})" if held else f"{statistics.fmean(same):+.2f} / {min(same):+.2f}")
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n\ncells: mean / worst gap over the tasks, points, to the rule's own 8-point grid"


def best_epoch_report(args) -> str:
    """Final epoch against best epoch: per task and rule, the grid and lr="auto" judged by the metric
    after the last epoch (the table's measure) and by the best epoch's (early stopping on the same
    validation rows: optimistic, and the more so for a run whose metric swings). Trains every trial
    again (per-epoch metrics are not cached): 45 trials a rule, task and seed."""
    lines = ["| task | rule | final epoch: grid (@lr) | final: lr=\"auto\" | final: gap | best epoch: grid (@lr) | "
             "best: lr=\"auto\" | best: gap | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    torch.set_num_threads(1)
    for task in args.tasks.split(","):
        name, model, hidden, epochs = TASKS[task]
        problem = U.problem_from_data(D.load(name), model, hidden, 32)
        ex = U.executor(problem, args.jobs)
        try:
            for rule in RULES:
                hp = T.hyperparameters_for(rule)
                auto = {k: v for k, v in hp.items() if k != "lr"} | {"lr": "auto"}
                settings = {lr: {**hp, "lr": lr} for lr in U.grid(float(hp["lr"]))} | {"auto": auto}
                res = {k: ex.run([(U.Trial(rule, rule, tuple(sorted(v.items())), s, epochs, epochs), None, False)
                                  for s in args.seeds]) for k, v in settings.items()}

                def score(got, select):  # the mean over the seeds (every task here: higher is better)
                    return statistics.fmean(U.trial_score(r, problem.higher_is_better, select) for r in got)

                cells = []
                for select in ("final", "best"):
                    g = max((k for k in res if k != "auto"), key=lambda k: score(res[k], select))
                    a, b = score(res["auto"], select), score(res[g], select)
                    cells += [f"{b:.4f} @{g:.2g}", f"{a:.4f}", f"{100 * (a - b):+.2f}"]
                lines.append(f"| {task} | {rule} | " + " | ".join(cells) + f" | {len(args.seeds)} |")
        finally:
            ex.close()
    return "\n".join(lines)


def _cell(rows, label, task, recs, runs, note=None, by_seed=None):
    """One cell: ``recs`` the finished seeds' records; ``by_seed`` the finals aligned with the table's
    seeds (None where missing or diverged), for the paired standard error of a gap."""
    m, s = _stats([r["final"] for r in recs if not r["diverged"]])
    rows.setdefault(label, {})[task] = dict(mean=m, std=s, n=len(recs), div=sum(bool(r["diverged"]) for r in recs),
                                            runs=runs, note=note, by_seed=by_seed)


def _finals(recs: list[dict | None]) -> list[float | None]:
    """Each seed's final metric, None where the trial is missing or diverged."""
    return [None if r is None or r["diverged"] else r["final"] for r in recs]


def paired_se(row: list[float | None] | None, ref: list[float | None] | None) -> float | None:
    """The standard error, in points, of a gap measured seed by seed (same initial weights and
    mini-batches for both): the standard deviation of the per-seed differences over √seeds. None
    unless both have every seed."""
    if not row or not ref or len(row) != len(ref) or len(row) < 2 or None in row or None in ref:
        return None
    diffs = [100 * (a - b) for a, b in zip(row, ref)]
    return statistics.stdev(diffs) / math.sqrt(len(diffs))


def mean_gap_se(pairs: list[tuple | None]) -> float | None:
    """The paired standard error, in points, of a mean gap over tasks: per seed, the mean over the
    tasks of that seed's gaps; the spread of those over √seeds. ``pairs``: per task, the row's and
    the reference's finals seed by seed. None unless every task has every seed of both."""
    if not pairs or any(p is None or paired_se(*p) is None for p in pairs):
        return None
    n = len(pairs[0][0])
    if any(len(row) != n for row, _ in pairs):
        return None
    per_seed = [statistics.fmean(100 * (row[s] - ref[s]) for row, ref in pairs) for s in range(n)]
    return statistics.stdev(per_seed) / math.sqrt(n)


def rule_set(text: str) -> set[str]:
    """``--rules``: optimizer names of ``descend.available()``."""
    names = {n.strip().lower() for n in text.split(",") if n.strip()}
    bad = sorted(names - set(descend.available()))
    if not names or bad:
        raise argparse.ArgumentTypeError(f"invalid --rules {text!r}: unknown {', '.join(bad) or '(none given)'}; "
                                         f"expected names of {', '.join(descend.available())}")
    return names


def seed_range(text: str) -> list[int]:
    """``--seeds``: N (seeds 0 … N−1) or A:B (seeds A … B−1, e.g. 10:15 for five fresh seeds)."""
    try:
        a, _, b = text.partition(":")
        seeds = list(range(int(a), int(b))) if b else list(range(int(a)))
    except ValueError:
        seeds = []
    if not seeds or seeds[0] < 0:
        raise argparse.ArgumentTypeError(f"invalid --seeds {text!r}: expected N ≥ 1 or A:B with 0 ≤ A < B")
    return seeds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=seed_range, default=seed_range("5"),
                    help="N: seeds 0 … N-1; A:B: seeds A … B-1 (default 5)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default="grid,auto,lrfind,published")
    ap.add_argument("--rules", type=rule_set, default=None,
                    help="comma-separated optimizers: run only their grid, lr=\"auto\", variant and lr_find rows "
                         "(default: every one; the published methods are not filtered)")
    ap.add_argument("--jobs", type=int, default=1, help="local processes for the trials")
    ap.add_argument("--cache", default=str(ROOT / "docs" / "tuning_cache.jsonl"))
    ap.add_argument("--report", action="store_true", help="only print the table from the cache")
    ap.add_argument("--lr-find", action="store_true", help="print lr_find's gap table instead of the main one")
    ap.add_argument("--lr-find-rules", action="store_true",
                    help="compare lr_find's suggestion rules on fresh sweeps, scored on the cached grid (no training)")
    ap.add_argument("--variants", action="store_true",
                    help="print the lr=\"auto\" variants' gaps (trials of --methods variants) instead of the main table")
    ap.add_argument("--best-epoch", action="store_true",
                    help="train the grid and lr=\"auto\" again and print them judged by the final and by the best epoch")
    ap.add_argument("--rekey-auto", action="store_true", help=argparse.SUPPRESS)  # old file-hash keys → code-hash keys
    args = ap.parse_args()
    bad = [t for t in args.tasks.split(",") if t not in TASKS]
    if bad:
        sys.exit(f"unknown task {bad[0]!r}; tasks: {', '.join(TASKS)}")
    if args.rekey_auto:
        old, new = f"|auto@{old_auto_version()}|", f"|auto@{auto_version()}|"
        path = Path(args.cache)
        path.write_text(path.read_text().replace(old, new))
        return
    if args.best_epoch:
        print(best_epoch_report(args))
        return
    if args.lr_find_rules:
        print(lr_find_rules_report(args))
        return
    if not args.report:
        run(args)
    print(lr_find_report(args) if args.lr_find else variants_report(args) if args.variants else report(args))
    note = missing_note(args)
    if note:
        print(note, file=sys.stderr)


def missing_trials(cache: Cache, tasks: list[str], seeds: list[int], methods: set[str],
                   rules: set[str] | None = None) -> list[str]:
    """The keys of the trials a table of ``methods`` over ``tasks`` and ``seeds`` reads that ``cache``
    lacks for the code as it is (lr="auto", variant and lr_find rows are keyed by its hash)."""
    lrfind_v, auto_ok = code_hash(LR_FIND), has_auto()
    return [key for task in tasks for key, _ in plan(task, seeds, methods, auto_ok, lrfind_v, rules)
            if needs_run(cache, key)]


def missing_note(args) -> str:
    """A line for stderr when trials the printed table reads are not in the cache for the code as it
    is: lr="auto", variant and lr_find rows are keyed by a hash of their code, and a table printed
    from a cache run before a change leaves those cells out ("—") rather than show stale numbers."""
    methods = ({"grid", "lrfind"} if args.lr_find else {"grid", "variants"} if args.variants
               else set(args.methods.split(",")) | {"grid"})
    kinds: dict[str, int] = {}
    for key in missing_trials(Cache(Path(args.cache)), args.tasks.split(","), args.seeds, methods, args.rules):
        kind = key.split("|")[1]
        kinds[kind] = kinds.get(kind, 0) + 1
    if not kinds:
        return ""
    what = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    return (f"note: {sum(kinds.values())} trials of this table are not in {args.cache} for the code as it is "
            f"({what}): the table shows what is there (a cell of fewer seeds says so, a cell of none is left out); "
            "the same command without --report trains them.")


if __name__ == "__main__":
    main()
