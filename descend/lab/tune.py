r"""What does it cost to tune the learning rate? A fair search per optimizer, and its bill.

For each optimizer the harness searches the learning rate on the validation split and reports the
best rate, its final validation metric, and the compute spent (runs, epochs, seconds of training).

**The grid** (the default search): 8 points, half a decade apart, around the optimizer's default
rate η₀ (the lab's table, :data:`descend.lab.train.DEFAULT_HYPERPARAMETERS`):

    η_k = η₀ · 10^{(k − 3)/2},   k = 0 … 7    (η₀/10^{1.5} … η₀·100, η₀ itself is the 4th point)

— three points below the default and four above, since the lab's defaults are customary, cautious
rates and the tuned best was above them more often than below (e.g. Adam: 3.2e-5 … 0.1; GD: 3.2e-3
… 10; Momentum: 3.2e-4 … 1; AdaGrad: 1.6e-3 … 5; RMSProp: 3.2e-5 … 0.1).
Every point is trained for the full ``epochs`` with every seed; the best is the rate with the
highest mean final validation metric over the seeds (diverged runs count as −∞). Cost: points ×
seeds runs.

**Successive halving** (``search="halving"``, Jamieson & Talwalkar 2016): the same points start
together on a small budget; after each rung the best ⌈n/η⌉ (η = ``rate``, 2 by default) go on, with
η× the epochs, until one point has trained the full ``epochs``. A survivor *continues* from its
checkpoint (model, optimizer, batch order), so it costs only the extra epochs, and its result
equals the same run trained in one go (tested). Budgets: ``epochs / η^{R−1−r}`` for rungs
r = 0 … R−1, R = ⌊log_η n⌋ + 1, at least one epoch; 8 points, η = 2, 20 epochs: 8 @ 3, 4 @ 5,
2 @ 10, 1 @ 20 epochs, 50 epochs in all instead of 160.

**What a trial trains** is a :class:`Problem`: a model factory (called right after
``torch.manual_seed(seed)``, so every rate starts from the same weights), a loss ``loss(out, y)``,
training and validation data (a pair of tensors ``(X, y)`` or any ``torch.utils.data.Dataset`` of
``(x, y)`` items), a metric and the batch size. Per seed the batch order is a ``torch.Generator``
seeded with the seed, one permutation per epoch; for a lab task (:func:`problem_from_data`) this is
exactly :func:`descend.lab.train.train_run`, so a trial's final metric equals that run's (tested).
A trial *diverges* when a mini-batch loss is NaN/±inf or above ``divergence_factor`` × the
initial training loss; it stops there.

**Where trials run**: one after another (``jobs=1``), in ``jobs`` local processes
(``concurrent.futures.ProcessPoolExecutor``, one torch thread each; forked on Linux, so they
inherit the problem, spawned elsewhere — there the problem must pickle and a script needs
``if __name__ == "__main__":``), or on a Ray cluster
(``ray=True`` for a local instance or the one ``ray.init()`` finds, ``ray="ADDRESS"`` to connect,
one CPU per trial; ``pip install descend[ray]``). Each trial is seeded by itself and every backend
runs torch with one intra-op thread, so the three give bitwise the same results (tested). An
optimizer factory sent to processes must be picklable (a module-level function or class; checked
before any training); Ray pickles with cloudpickle and takes lambdas.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import descend
from descend.lab import train as T
from descend.lab.data import Data

__all__ = ["grid", "GRID_POINTS", "SEARCHES", "Problem", "problem_from_data", "Trial", "TrialResult",
           "run_trial", "trial_score", "Executor", "executor", "Tuning", "TuneResult", "tune", "halving_budgets"]

GRID_POINTS = 8
SEARCHES = ("grid", "halving")
SELECTS = ("final", "best")  # a trial's score: its metric after the last epoch, or after its best one
METRICS = ("accuracy", "r2", "loss")


# ------------------------------------------------------------------------------- the grid


def grid(center: float, points: int = GRID_POINTS, step: float = 10 ** 0.5) -> list[float]:
    """``points`` rates ``step`` apart (log scale) around ``center``: center · step^{k − ⌊(points−1)/2⌋}.

    With the defaults, 8 half-decade points from center/10^1.5 to center·100; ``center`` is the
    4th. Bad values raise ValueError naming them.
    """
    if not (isinstance(center, (int, float)) and 0 < center < math.inf):
        raise ValueError(f"invalid grid center={center!r}; expected a finite number > 0")
    if not (isinstance(points, int) and points >= 1):
        raise ValueError(f"invalid points={points!r}; expected an integer >= 1")
    if not (isinstance(step, (int, float)) and 1 < step < math.inf):
        raise ValueError(f"invalid step={step!r}; expected a finite number > 1")
    return [float(f"{center * step ** (k - (points - 1) // 2):.12g}") for k in range(points)]


def log_grid(low: float, high: float, points: int = GRID_POINTS) -> list[float]:
    """``points`` rates evenly spaced in log scale from ``low`` to ``high`` (both included)."""
    if not (isinstance(low, (int, float)) and 0 < low < math.inf):
        raise ValueError(f"invalid grid low={low!r}; expected a finite number > 0")
    if not (isinstance(high, (int, float)) and low < high < math.inf):
        raise ValueError(f"invalid grid high={high!r}; expected a finite number > low={low!r}")
    if not (isinstance(points, int) and points >= 2):
        raise ValueError(f"invalid points={points!r}; expected an integer >= 2")
    return [float(f"{low * (high / low) ** (k / (points - 1)):.12g}") for k in range(points)]


def halving_budgets(n: int, epochs: int, rate: int = 2) -> list[tuple[int, int]]:
    """The rungs of successive halving as ``(configurations, epochs)``: n configurations start, the
    best ⌈n/rate⌉ go on after each rung, the last rung trains one for ``epochs``."""
    if not (isinstance(rate, int) and rate >= 2):
        raise ValueError(f"invalid rate={rate!r}; expected an integer >= 2")
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"invalid n={n!r}; expected an integer >= 1")
    rungs, alive = [], n
    while True:
        rungs.append(alive)
        if alive == 1:
            break
        alive = math.ceil(alive / rate)
    r_count = len(rungs)
    out, prev = [], 0
    for r, alive in enumerate(rungs):
        e = max(1, math.ceil(epochs / rate ** (r_count - 1 - r)), prev + (1 if r else 0))
        e = min(e, epochs)
        out.append((alive, e))
        prev = e
    return out


# ------------------------------------------------------------------------------- what a trial trains


def _accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    return float((out.argmax(dim=1) == y).double().mean())


def _r2(out: torch.Tensor, y: torch.Tensor) -> float:
    pred = out.squeeze(-1)
    sst = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / sst if sst > 0 else math.nan


class _Split:
    """Training or validation data: a pair of tensors (indexed directly) or a Dataset (collated)."""

    def __init__(self, data: Any, what: str):
        from torch.utils.data import Dataset

        if isinstance(data, (tuple, list)) and len(data) == 2:
            x, y = (torch.as_tensor(v) if isinstance(v, np.ndarray) else v for v in data)
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                raise TypeError(f"{what}: expected a pair of tensors (X, y) or a torch Dataset")
            if len(x) != len(y) or len(x) == 0:
                raise ValueError(f"{what}: X and y must hold the same number (>= 1) of rows; got {len(x)} and {len(y)}")
            self.x, self.y, self.ds = x, y, None
            self.n = len(x)
        elif isinstance(data, Dataset):
            try:
                self.n = len(data)
            except TypeError:
                raise TypeError(f"{what}: the Dataset needs a length (__len__)") from None
            if self.n == 0:
                raise ValueError(f"{what}: the Dataset is empty")
            self.x = self.y = None
            self.ds = data
        else:
            raise TypeError(f"{what}: expected a pair of tensors (X, y) or a torch Dataset, not {type(data).__name__}")

    def batch(self, idx: torch.Tensor) -> tuple[Any, Any]:
        if self.ds is None:
            return self.x[idx], self.y[idx]
        from torch.utils.data import default_collate

        return default_collate([self.ds[int(i)] for i in idx])

    def chunks(self, size: int = 1024):
        if self.ds is None:
            yield self.x, self.y  # whole, as train.evaluate does
            return
        for i in range(0, self.n, size):
            yield self.batch(torch.arange(i, min(i + size, self.n)))


@dataclass
class Problem:
    """What one trial trains and how it is judged (see the module docstring).

    Args:
        model: a callable returning a fresh ``nn.Module``; called right after ``torch.manual_seed(seed)``.
        loss: ``loss(output, y)`` → a scalar tensor (the training objective; also the validation loss).
        train, val: ``(X, y)`` tensors (or numpy arrays) or a ``torch.utils.data.Dataset`` of ``(x, y)``.
        metric: ``"accuracy"``, ``"r2"``, ``"loss"`` (the validation loss: lower is better) or a
            callable ``metric(output, y)`` → float, higher is better; computed on the whole validation set.
        batch_size: mini-batch size.
        name: for tables.
    """

    model: Callable[[], nn.Module]
    loss: Callable[[Any, Any], torch.Tensor]
    train: Any
    val: Any
    metric: str | Callable[[Any, Any], float] = "loss"
    batch_size: int = 32
    name: str = "problem"
    divergence_factor: float = 1e3

    def __post_init__(self):
        if not callable(self.model):
            raise TypeError("model must be a callable that returns a fresh torch.nn.Module (a model factory)")
        if not callable(self.loss):
            raise TypeError("loss must be a callable loss(output, y) -> scalar tensor")
        if not (callable(self.metric) or self.metric in METRICS):
            raise ValueError(f"invalid metric={self.metric!r}; expected one of {', '.join(METRICS)} or a callable")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"invalid batch_size={self.batch_size!r}; expected an integer >= 1")
        self._train = _Split(self.train, "train")
        self._val = _Split(self.val, "val")

    def __getstate__(self):
        d = dict(self.__dict__)
        d.pop("_train", None)
        d.pop("_val", None)
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._train = _Split(self.train, "train")
        self._val = _Split(self.val, "val")

    @property
    def metric_name(self) -> str:
        if callable(self.metric):
            return getattr(self.metric, "__name__", "metric")
        return {"accuracy": "accuracy", "r2": "R²", "loss": "validation loss"}[self.metric]

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "loss"

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self._train.n / self.batch_size)

    def _outputs(self, model: nn.Module, split: str) -> tuple[Any, Any]:
        data = self._val if split == "val" else self._train
        was = model.training
        model.eval()
        outs, ys = [], []
        for x, y in data.chunks():
            outs.append(model(x))
            ys.append(y)
        model.train(was)
        return (outs[0], ys[0]) if len(outs) == 1 else (torch.cat(outs), torch.cat(ys))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "val") -> tuple[float, float]:
        """(loss, metric) on the whole split in eval mode; the metric is NaN when an output is not finite."""
        out, y = self._outputs(model, split)
        loss = float(self.loss(out, y))
        if self.metric == "loss":
            return loss, loss
        if not torch.isfinite(out).all():
            return loss, math.nan
        if self.metric == "accuracy":
            return loss, _accuracy(out, y)
        if self.metric == "r2":
            return loss, _r2(out, y)
        return loss, float(self.metric(out, y))


    def halves(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Two disjoint halves of the validation rows, for selecting on one and reporting on the other
        (:func:`heldout_best`): for accuracy, alternate rows in the order of their class (each class
        split evenly); for R², alternate rows. None for other metrics."""
        if self.metric not in ("accuracy", "r2") or self._val.ds is not None or self._val.n < 2:
            return None
        y = torch.as_tensor(self._val.y)
        order = torch.argsort(y, stable=True) if self.metric == "accuracy" else torch.arange(len(y))
        return order[0::2], order[1::2]

    @torch.no_grad()
    def half_metrics(self, model: nn.Module) -> list[float] | None:
        """The metric on each of :meth:`halves`, on the whole split's scale: their size-weighted mean is
        the metric on the whole split (accuracy per half; for R², 1 − SSE_half·n/(n_half·SST), SST of
        the whole split). None where :meth:`halves` is, or an output is not finite."""
        halves = self.halves()
        if halves is None:
            return None
        out, y = self._outputs(model, "val")
        if not torch.isfinite(out).all():
            return None
        if self.metric == "accuracy":
            return [_accuracy(out[h], y[h]) for h in halves]
        pred = out.squeeze(-1)
        sst = float(((y - y.mean()) ** 2).sum())
        if sst <= 0:
            return None
        n = len(y)
        return [1.0 - float(((y[h] - pred[h]) ** 2).sum()) * n / (len(h) * sst) for h in halves]


def heldout_best(results: Mapping[Any, Sequence[tuple[float, Sequence[float] | None]]],
                 sizes: Sequence[int]) -> tuple[float, tuple[Any, Any]] | None:
    """The held-out metric of a grid search: the setting is chosen by its mean over seeds on one half
    of the validation rows and reported on the other half, both ways round, and the two reports are
    combined by the halves' sizes — no row is judged by a setting it helped choose.

    ``results``: setting → per seed ``(final, halves)`` (``halves`` from :meth:`Problem.half_metrics`,
    ``sizes`` the halves' row counts; a diverged run has ``final`` −inf and, as in the search on the
    whole split, its setting is not chosen). Returns (metric, (the setting reported on half 0, the one
    reported on half 1)), or None if a run has no halves or every setting diverged."""
    ok = {}
    for setting, runs in results.items():
        if any(not math.isfinite(f) for f, _ in runs):
            continue
        if any(h is None or len(h) != 2 for _, h in runs):
            return None
        ok[setting] = [[h[j] for _, h in runs] for j in (0, 1)]
    if not ok:
        return None

    def mean(xs):
        return sum(xs) / len(xs)

    on0 = max(ok, key=lambda s: mean(ok[s][1]))  # chosen on half 1, reported on half 0
    on1 = max(ok, key=lambda s: mean(ok[s][0]))
    return (sizes[0] * mean(ok[on0][0]) + sizes[1] * mean(ok[on1][1])) / (sizes[0] + sizes[1]), (on0, on1)


class _LabModel:
    """A picklable factory for the lab's models (the seed is set by the harness just before)."""

    def __init__(self, n_in: int, n_out: int, hidden: Sequence[int] | None, model: str):
        self.args = (n_in, n_out, None if hidden is None else tuple(hidden), model)
        T.make_model(n_in, n_out, hidden, 0, model)  # bad model name or widths: fail now

    def __call__(self) -> nn.Module:
        n_in, n_out, hidden, model = self.args
        return T.make_model(n_in, n_out, hidden, None, model)


class _LabLoss:
    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, out, y):
        return T._loss_fn(self.kind)(out, y)


def problem_from_data(data: Data, model: str = "mlp", hidden: Sequence[int] | None = None,
                      batch_size: int = 32, divergence_factor: float = 1e3) -> Problem:
    """A lab task (:func:`descend.lab.load_data`) as a :class:`Problem`: the lab's MLP or 1-D CNN, its
    loss, accuracy or R², the same data order and divergence rule as :func:`descend.lab.train.train_run`."""
    return Problem(model=_LabModel(data.n_features, data.n_outputs, hidden, model), loss=_LabLoss(data.kind),
                   train=(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)),
                   val=(torch.from_numpy(data.x_val), torch.from_numpy(data.y_val)),
                   metric="accuracy" if data.kind == "classification" else "r2", batch_size=batch_size,
                   name=f"{data.name} ({model})", divergence_factor=divergence_factor)


# ------------------------------------------------------------------------------- one trial


@dataclass(frozen=True)
class Trial:
    """One training run: an optimizer (a descend name, or a picklable ``factory(params, **hp)``) with
    its hyperparameters, a seed, and how far to train (``epochs``) out of a full run of ``total_epochs``
    (a schedule spans the full run)."""

    label: str
    optimizer: str | Callable[..., torch.optim.Optimizer]
    hyperparameters: tuple[tuple[str, Any], ...]
    seed: int
    epochs: int
    total_epochs: int
    schedule: str | None = None

    @property
    def hp(self) -> dict[str, Any]:
        return dict(self.hyperparameters)


@dataclass
class TrialResult:
    """What a trial saw: the validation metric after each epoch (``metrics[0]``: before training;
    a continued trial's list starts with its checkpoint's), the epoch it diverged at (or None), the
    seconds and epochs it trained (this segment only), and — when asked for — a checkpoint."""

    trial: Trial
    metrics: list[float]
    diverged_epoch: int | None
    seconds: float
    epochs_run: int
    checkpoint: bytes | None = None
    halves: list[float] | None = None  # the final metric on the validation split's two halves (Problem.half_metrics)

    @property
    def final(self) -> float:
        return -math.inf if self.diverged_epoch is not None or not math.isfinite(self.metrics[-1]) else self.metrics[-1]


def _make_optimizer(trial: Trial, params, problem: Problem):
    hp = trial.hp
    if trial.schedule and isinstance(hp.get("lr"), (int, float)):
        hp["lr"] = T.make_schedule(trial.schedule, float(hp["lr"]), trial.total_epochs * problem.steps_per_epoch)
    if isinstance(trial.optimizer, str):
        return descend.create(trial.optimizer, params, **hp)
    return trial.optimizer(params, **hp)


def run_trial(problem: Problem, trial: Trial, checkpoint: bytes | None = None, keep: bool = False) -> TrialResult:
    """Train ``trial`` on ``problem`` (from ``checkpoint`` if given) up to ``trial.epochs``; the caller
    sets torch's threads. ``keep=True`` returns a checkpoint to continue from."""
    data = problem._train
    if checkpoint is None:
        torch.manual_seed(trial.seed)
        model = problem.model()
        opt = _make_optimizer(trial, model.parameters(), problem)
        order = torch.Generator().manual_seed(trial.seed)
        initial, _ = problem.evaluate(model, "train")
        limit = problem.divergence_factor * max(initial, 1e-12)
        with T.evaluated_weights(opt):
            metrics = [problem.evaluate(model)[1]]
        start, seconds = 0, 0.0
    else:
        ck = torch.load(io.BytesIO(checkpoint), weights_only=False)
        torch.manual_seed(trial.seed)
        model = problem.model()
        model.load_state_dict(ck["model"])
        opt = _make_optimizer(trial, model.parameters(), problem)
        opt.load_state_dict(ck["optimizer"])
        order = torch.Generator()
        order.set_state(ck["order"])
        limit, metrics, start, seconds = ck["limit"], list(ck["metrics"]), ck["epoch"], 0.0
    diverged = None
    for epoch in range(start + 1, trial.epochs + 1):
        perm = torch.randperm(data.n, generator=order)
        t0 = time.perf_counter()
        bad, _ = T.train_epoch(model, opt, (data.batch(perm[i:i + problem.batch_size])
                                            for i in range(0, data.n, problem.batch_size)),
                               lambda xy: problem.loss(model(xy[0]), xy[1]), limit)
        seconds += time.perf_counter() - t0
        with T.evaluated_weights(opt):
            metrics.append(problem.evaluate(model)[1])
        if bad:
            diverged = epoch
            break
    epochs_run = len(metrics) - 1 - start
    halves = None
    if diverged is None and math.isfinite(metrics[-1]):
        with T.evaluated_weights(opt):
            halves = problem.half_metrics(model)
    ck_bytes = None
    if keep and diverged is None:
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "order": order.get_state(),
                    "limit": limit, "metrics": metrics, "epoch": trial.epochs}, buf)
        ck_bytes = buf.getvalue()
    return TrialResult(trial, metrics, diverged, seconds, epochs_run, ck_bytes, halves)


# ------------------------------------------------------------------------------- where trials run


_WORKER_PROBLEM: Problem | None = None


def _worker_init(problem_bytes: bytes) -> None:
    global _WORKER_PROBLEM
    torch.set_num_threads(1)
    _WORKER_PROBLEM = pickle.loads(problem_bytes)


def _worker_run(args) -> TrialResult:
    trial, checkpoint, keep = args
    return run_trial(_WORKER_PROBLEM, trial, checkpoint, keep)


def _ray_run(problem, trial, checkpoint, keep):  # executed on a Ray worker
    torch.set_num_threads(1)
    return run_trial(problem, trial, checkpoint, keep)


class Executor:
    """Runs a batch of trials of one problem and returns their results in the batch's order."""

    name = "sequential"

    def __init__(self, problem: Problem):
        self.problem = problem

    def run(self, items: list[tuple[Trial, bytes | None, bool]], on_done: Callable[[], None] | None = None):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            out = []
            for trial, ck, keep in items:
                out.append(run_trial(self.problem, trial, ck, keep))
                if on_done:
                    on_done()
            return out
        finally:
            torch.set_num_threads(before)

    def close(self) -> None:
        pass


class _Processes(Executor):
    def __init__(self, problem: Problem, jobs: int):
        super().__init__(problem)
        self.name = f"{jobs} processes"
        import concurrent.futures as cf
        import multiprocessing as mp

        # fork where there is one (Linux): the workers inherit the problem, so a lambda model factory
        # works and nothing needs a ``if __name__ == "__main__"`` guard; each worker runs torch with one
        # thread, as DataLoader's forked workers do. Elsewhere spawn, which pickles the problem.
        if "fork" in mp.get_all_start_methods():
            global _WORKER_PROBLEM
            _WORKER_PROBLEM = problem
            self.pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("fork"),
                                               initializer=torch.set_num_threads, initargs=(1,))
            return
        try:
            blob = pickle.dumps(problem)
        except Exception as e:
            raise ValueError(f"jobs={jobs} runs trials in other processes, so the model factory, loss and metric "
                             f"must be picklable (module-level functions or classes, not lambdas or closures): "
                             f"{type(e).__name__}: {e}; use jobs=1, or ray") from None
        self.pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                           initializer=_worker_init, initargs=(blob,))

    def run(self, items, on_done=None):
        for trial, _, _ in items:
            if not isinstance(trial.optimizer, str):
                try:
                    pickle.dumps(trial.optimizer)
                except Exception as e:
                    raise ValueError(f"optimizer {trial.label!r}: a factory run in other processes must be picklable "
                                     f"(a module-level function or class): {type(e).__name__}: {e}") from None
        futures = [self.pool.submit(_worker_run, it) for it in items]
        if on_done:
            for f in futures:
                f.add_done_callback(lambda _f: on_done())
        return [f.result() for f in futures]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Ray(Executor):
    def __init__(self, problem: Problem, address: str | bool | None):
        super().__init__(problem)
        try:
            import ray
        except ImportError:
            raise ValueError("ray=... needs Ray: pip install 'descend[ray]' (or pip install ray)") from None
        self.ray = ray
        if not ray.is_initialized():
            kw = dict(log_to_driver=False, include_dashboard=False)
            if isinstance(address, str) and address not in ("", "local"):
                kw["address"] = address  # "auto": a running instance on this machine; "ray://host:10001", ...
            try:
                ray.init(**kw)
            except Exception as e:
                raise ValueError(f"could not start or reach a Ray cluster (address={address!r}): "
                                 f"{type(e).__name__}: {e}") from None
            self.started = True
        else:
            self.started = False
        self.name = "ray"
        self.remote = ray.remote(num_cpus=1)(_ray_run)
        self.ref = ray.put(problem)

    def run(self, items, on_done=None):
        refs = [self.remote.remote(self.ref, t, ck, keep) for t, ck, keep in items]
        if on_done:
            pending = list(refs)
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                on_done()
        return self.ray.get(refs)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def executor(problem: Problem, jobs: int = 1, ray: str | bool | None = None) -> Executor:
    """The backend: Ray if ``ray`` is given (True: the instance ``ray.init()`` finds — ``RAY_ADDRESS``
    or a new local one — or the one already initialised; a string: the address to connect to), else
    ``jobs`` processes (jobs > 1), else this process."""
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"invalid jobs={jobs!r}; expected an integer >= 1")
    if ray is not None and ray is not False:
        return _Ray(problem, "" if ray is True else ray)
    if jobs > 1:
        return _Processes(problem, jobs)
    return Executor(problem)


# ------------------------------------------------------------------------------- the search


@dataclass
class Tuning:
    """One optimizer's search: every rate tried, the best, and what the search cost.

    ``scores[lr]`` is the mean final validation metric over the seeds at the largest budget that rate
    reached (``budget[lr]`` epochs; −∞ if a seed diverged; with ``select="best"`` each run's best
    epoch's metric instead, and ``best_mean`` too; ``finals`` are always the last epoch's); ``rungs`` lists successive halving's
    (configurations, epochs) (one rung for the grid). ``best_mean`` is judged on the rows that chose
    the rate, so it flatters the search; ``heldout`` (grid search, accuracy or R², the last epoch) is the metric with
    the rate chosen on one half of the validation rows and reported on the other
    (:func:`heldout_best`), else None.
    """

    label: str
    optimizer: str
    hyperparameters: dict[str, Any]
    lrs: list[float]
    scores: dict[float, float]
    budget: dict[float, int]
    finals: dict[float, list[float]]
    diverged: dict[float, int]
    best_lr: float | None
    best_mean: float
    best_std: float
    runs: int
    epochs: int
    seconds: float
    wall: float
    rungs: list[tuple[int, int]]
    search: str
    trials: list[TrialResult] = field(default_factory=list, repr=False)
    heldout: float | None = None
    select: str = "final"

    def best_hyperparameters(self) -> dict[str, Any]:
        return {**self.hyperparameters, "lr": self.best_lr}


@dataclass
class TuneResult:
    """:func:`tune`'s result: one :class:`Tuning` per optimizer, the settings and the backend."""

    tunings: list[Tuning]
    settings: dict[str, Any]
    backend: str
    metric_name: str
    higher_is_better: bool

    def __getitem__(self, label: str) -> Tuning:
        for t in self.tunings:
            if t.label == label:
                return t
        raise KeyError(label)

    def best(self) -> dict[str, dict[str, Any]]:
        """{optimizer: its hyperparameters with the tuned lr} (only those with a finite best)."""
        return {t.label: t.best_hyperparameters() for t in self.tunings if t.best_lr is not None}

    def as_metric(self, score: float) -> float:
        """A score back on its metric's scale (a lower-is-better metric's scores are negated, so that
        the search always maximises)."""
        return score if self.higher_is_better else -score

    def plot(self, ax=None):
        """The validation metric against the learning rate tried (log x axis), one line per optimizer:
        each rate's score (the mean over the seeds, as the search judged it), a band from the lowest to
        the highest seed's last-epoch metric (grid search by the last epoch), × on the lower edge for a
        rate where a seed diverged, and a star on the rate chosen. Returns the matplotlib Figure."""
        import matplotlib.pyplot as plt

        from descend.lab.plots import metric_limits

        own = ax is None
        if own:
            fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110, layout="constrained")
        else:
            fig = ax.figure
        select = self.settings.get("select", "final")
        finite = []
        for i, t in enumerate(self.tunings):
            c = f"C{i % 10}"
            ok = [lr for lr in t.lrs if math.isfinite(t.scores.get(lr, math.nan))]
            ys = [self.as_metric(t.scores[lr]) for lr in ok]
            finite += ys
            ax.plot(ok, ys, "o-", color=c, lw=1.6, ms=4, label=t.label)
            if t.search == "grid" and select == "final":
                lo = [min(t.finals[lr]) for lr in ok]
                hi = [max(t.finals[lr]) for lr in ok]
                ax.fill_between(ok, lo, hi, color=c, alpha=0.15, lw=0)
                finite += lo + hi
            if t.best_lr is not None and t.best_lr in ok:
                ax.plot([t.best_lr], [self.as_metric(t.scores[t.best_lr])], "*", color=c, ms=14, mec="k", mew=0.6, zorder=5)
        limits = metric_limits(finite, self.metric_name)
        if limits is not None:
            ax.set_ylim(*limits)
        y0 = ax.get_ylim()[0]
        for i, t in enumerate(self.tunings):
            bad = [lr for lr in t.lrs if t.scores.get(lr) == -math.inf]
            if bad:
                ax.plot(bad, [y0] * len(bad), "x", color=f"C{i % 10}", ms=9, mew=2.2, clip_on=False, zorder=6)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        what = "best epoch" if select == "best" else "last epoch"
        ax.set_ylabel(f"validation {self.metric_name} ({what})")
        n = len(self.settings.get("seeds", [0]))
        ax.set_title(f"{self.settings.get('problem', '')}: {self.settings.get('search', 'grid')} search, mean over "
                     f"{n} seed{'s' if n != 1 else ''}; ★ chosen, × a seed diverged", fontsize=9)
        ax.grid(alpha=0.3)
        if own:  # under the plot, where no curve or mark is
            fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=min(len(self.tunings), 6),
                       fontsize=8, frameon=False)
        else:
            ax.legend(fontsize=8)
        return fig

    def rows(self) -> list[dict[str, Any]]:
        """One row per trial: optimizer, lr, seed, epochs trained to, final metric, diverged, seconds."""
        out = []
        for t in self.tunings:
            for r in t.trials:
                out.append(dict(optimizer=t.label, lr=r.trial.hp.get("lr"), seed=r.trial.seed, epochs=r.trial.epochs,
                                val_metric=r.metrics[-1], diverged=r.diverged_epoch is not None,
                                seconds=r.seconds))
        return out


def trial_score(res: TrialResult, higher: bool, select: str = "final") -> float:
    """A trial's score, higher is better (−∞ if it diverged): its metric after the last epoch, or
    (``select="best"``) after its best epoch of training (``metrics[0]``, before training, is not one)."""
    f = res.final
    if f == -math.inf:
        return -math.inf
    if select == "best":
        seen = [v for v in res.metrics[1:] if math.isfinite(v)]
        f = max(seen) if higher else min(seen)
    return f if higher else -f


def tune(problem: Problem | Data, optimizers: Sequence[str] | Mapping[str, Any] = ("adam",), *,
         search: str = "grid", lrs: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
         points: int = GRID_POINTS, seeds: int | Sequence[int] = 1, epochs: int = 20,
         hyperparameters: Mapping[str, Mapping[str, Any]] | None = None, schedule: str | None = None,
         rate: int = 2, jobs: int = 1, ray: str | bool | None = None, progress: bool = False,
         model: str = "mlp", hidden: Sequence[int] | None = None, batch_size: int = 32,
         select: str = "final") -> TuneResult:
    """Search each optimizer's learning rate on the validation split; see the module docstring.

    Args:
        problem: a :class:`Problem` (your model factory, loss and data) or a lab :class:`Data`
            (then ``model``, ``hidden`` and ``batch_size`` pick the lab's model).
        optimizers: descend names, or {label: factory(params, **hp)} for any torch optimizer.
        search: ``"grid"`` (every rate, full budget) or ``"halving"`` (successive halving, ``rate``).
        lrs: the rates to try, for all optimizers or per label; default: :func:`grid` around each
            one's default lr with ``points`` points.
        seeds: a count K (seeds 0..K−1) or the seeds; a rate's score is the mean over them.
        hyperparameters: per label, the other hyperparameters (and the default lr the grid centres on).
        schedule: a lab schedule spec (``"cosine"``, …) peaking at each tried lr.
        jobs, ray: where trials run (see :func:`executor`).
        select: ``"final"`` (a run's score is its metric after the last epoch) or ``"best"`` (after
            its best epoch: the rate to pick if training stops early on the validation rows; judged
            on the rows that chose the epoch, so optimistic, the more so for a metric that swings).
            On small data that overfits, the final epoch favours rates that train less: on diabetes
            (40 epochs) the grid's best rate by the best epoch was 3–10× its best by the last.

    Returns:
        a :class:`TuneResult`. Bad arguments raise ValueError/TypeError before any training.
    """
    if isinstance(problem, Data):
        problem = problem_from_data(problem, model, hidden, batch_size)
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a descend.lab.tune.Problem or a lab Data, not {type(problem).__name__}")
    if search not in SEARCHES:
        raise ValueError(f"invalid search={search!r}; expected one of {', '.join(SEARCHES)}")
    if select not in SELECTS:
        raise ValueError(f"invalid select={select!r}; expected one of {', '.join(SELECTS)}")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"invalid epochs={epochs!r}; expected an integer >= 1")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError(f"invalid seeds={seeds!r}; expected at least one seed")
    if isinstance(optimizers, Mapping):
        opts = {str(k): v for k, v in optimizers.items()}
    else:
        opts = {str(o).lower(): str(o).lower() for o in optimizers}
    if not opts:
        raise ValueError("no optimizers given; valid names: " + ", ".join(descend.available()))
    per = {str(k): dict(v) for k, v in (hyperparameters or {}).items()}
    for k in per:
        if k not in opts:
            raise ValueError(f"hyperparameters given for {k!r}, which is not among the optimizers ({', '.join(opts)})")
    plans: dict[str, tuple[dict[str, Any], list[float]]] = {}
    for label, opt in opts.items():
        if isinstance(opt, str):
            hp = T.hyperparameters_for(opt, per.get(label, {}))
            T.check_optimizer(opt, hp)
        elif callable(opt):
            hp = dict(per.get(label, {}))
        else:
            raise TypeError(f"optimizer {label!r}: expected a descend name or a factory(params, **hp)")
        if isinstance(hp.get("lr"), str) and hp["lr"] == "auto":
            raise ValueError(f"{label}: lr='auto' has no rate to search (the search tries fixed rates); to see "
                             "it beside the tuned ones, use descend compare --tuned (compare_tuned)")
        if lrs is None:
            if not isinstance(hp.get("lr"), (int, float)):
                raise ValueError(f"{label}: give a default lr to centre the grid on, or the rates (lrs=...)")
            tried = grid(float(hp["lr"]), points)
        else:
            tried = lrs.get(label) if isinstance(lrs, Mapping) else lrs
            if tried is None:
                raise ValueError(f"lrs has no rates for {label!r}")
            tried = [float(v) for v in tried]
            if not tried or any(not (0 < v < math.inf) for v in tried):
                raise ValueError(f"invalid lrs for {label}: {tried!r}; expected finite rates > 0")
        if schedule:
            T.make_schedule(schedule, tried[0], epochs * problem.steps_per_epoch)  # fail now
        plans[label] = (hp, tried)
    if search == "halving":
        halving_budgets(len(next(iter(plans.values()))[1]), epochs, rate)  # bad rate: fail now

    ex = executor(problem, jobs, ray)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(len(seed_list) * (len(tr) if search == "grid" else sum(n for n, _ in halving_budgets(len(tr), epochs, rate)))
                    for _, tr in plans.values())
        bar = tqdm(total=total, unit="run", desc=f"descend tune ({ex.name})")
    tunings = []
    try:
        for label, (hp, tried) in plans.items():
            if bar is not None:
                bar.set_postfix_str(label)
            tunings.append(_search(ex, problem, label, opts[label], hp, tried, seed_list, epochs, schedule,
                                   search, rate, bar.update if bar is not None else None, select))
    finally:
        ex.close()
        if bar is not None:
            bar.close()
    settings = dict(problem=problem.name, search=search, select=select, seeds=seed_list, epochs=epochs, rate=rate,
                    batch_size=problem.batch_size, schedule=schedule, points=points, jobs=jobs, ray=ray)
    return TuneResult(tunings, settings, ex.name, problem.metric_name, problem.higher_is_better)


def _search(ex: Executor, problem: Problem, label: str, opt, hp: dict[str, Any], tried: list[float],
            seeds: list[int], epochs: int, schedule: str | None, search: str, rate: int,
            on_done: Callable[[], None] | None, select: str = "final") -> Tuning:
    t0 = time.perf_counter()
    higher = problem.higher_is_better
    rungs = [(len(tried), epochs)] if search == "grid" else halving_budgets(len(tried), epochs, rate)
    last_rung = len(rungs) - 1
    alive = list(tried)
    checkpoints: dict[tuple[float, int], bytes | None] = {}
    results: dict[tuple[float, int], TrialResult] = {}
    all_trials: list[TrialResult] = []
    scores: dict[float, float] = {}
    budget: dict[float, int] = {}
    for r, (_, rung_epochs) in enumerate(rungs):
        items, keys = [], []
        for lr in alive:
            for s in seeds:
                prev = results.get((lr, s))
                if prev is not None and prev.diverged_epoch is not None:
                    continue  # a diverged seed stays diverged
                trial = Trial(label, opt, tuple(sorted({**hp, "lr": lr}.items())), s, rung_epochs, epochs, schedule)
                items.append((trial, checkpoints.get((lr, s)), r < last_rung))
                keys.append((lr, s))
        for key, res in zip(keys, ex.run(items, on_done)):
            results[key] = res
            checkpoints[key] = res.checkpoint
            all_trials.append(res)
        for lr in alive:
            vals = [trial_score(results[(lr, s)], higher, select) for s in seeds]
            scores[lr] = -math.inf if any(v == -math.inf for v in vals) else float(np.mean(vals))
            budget[lr] = rung_epochs
        if r < last_rung:
            keep = rungs[r + 1][0]
            alive = sorted(alive, key=lambda v: -scores[v])[:keep]  # stable: ties keep the smaller lr
            alive.sort()
    for res in all_trials:
        res.checkpoint = None  # bulky; only needed between rungs
    full = [lr for lr in tried if budget.get(lr) == epochs and scores[lr] > -math.inf]
    best = max(full, key=lambda v: scores[v]) if full else None
    finals = {lr: [results[(lr, s)].metrics[-1] for s in seeds] for lr in tried}
    diverged = {lr: sum(results[(lr, s)].diverged_epoch is not None for s in seeds) for lr in tried}
    if best is not None:  # the best rate's metric, as scored (the last epoch's, or the best epoch's)
        sign = 1.0 if higher else -1.0
        vals = np.array([sign * trial_score(results[(best, s)], higher, select) for s in seeds], dtype=float)
        best_mean, best_std = float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    else:
        best_mean = best_std = math.nan
    heldout = None
    halves = problem.halves()
    if search == "grid" and select == "final" and halves is not None and higher:
        held = heldout_best({lr: [(results[(lr, s)].final, results[(lr, s)].halves) for s in seeds] for lr in tried},
                            (len(halves[0]), len(halves[1])))
        heldout = None if held is None else held[0]
    return Tuning(label=label, optimizer=opt if isinstance(opt, str) else getattr(opt, "__name__", label),
                  hyperparameters={k: v for k, v in hp.items() if k != "lr"}, lrs=list(tried), scores=scores,
                  budget=budget, finals=finals, diverged=diverged, best_lr=best, best_mean=best_mean,
                  best_std=best_std, runs=len(results), epochs=sum(r.epochs_run for r in all_trials),
                  seconds=sum(r.seconds for r in all_trials), wall=time.perf_counter() - t0, rungs=rungs,
                  search=search, trials=all_trials, heldout=heldout, select=select)


# ------------------------------------------------------------------------------- compare --tuned


def compare_tuned(data: Data, optimizers: Sequence[str] = T.DEFAULT_OPTIMIZERS, *, seeds: int | Sequence[int] = 5,
                  epochs: int = 20, batch_size: int = 32, model: str = "mlp", hidden: Sequence[int] | None = None,
                  hyperparameters: Mapping[str, Mapping[str, Any]] | None = None, tune_seeds: Sequence[int] = (0,),
                  search: str = "grid", points: int = GRID_POINTS, auto: bool = True, jobs: int = 1,
                  ray: str | bool | None = None, goal: float | None = None, progress: bool = False,
                  schedule: str | None = None, select: str = "final") -> T.Comparison:
    """Each optimizer at its tuned learning rate, beside the same rule with ``lr="auto"`` from one run.

    With ``schedule`` (a lab spec, e.g. ``"warmup_cosine:warmup_steps=50"``) the search tunes the
    schedule's peak, the tuned rows train with it, and the ``lr="auto"`` rows take its shape with peak
    1 as the estimate's scale (``descend.auto(scale=...)``). ``reduce_on_plateau``, which follows the
    validation loss, is refused (the search's trials do not feed it).

    First :func:`tune` searches each optimizer's lr (``search`` over ``points`` rates, on ``tune_seeds``,
    the full ``epochs``); then every optimizer is trained at its best rate on every seed (rows labelled
    ``NAME (tuned)``) and, where this descend has it and ``auto``, once per seed with ``lr="auto"``
    (``NAME (lr=auto)``). Returns a :class:`~descend.lab.train.Comparison` whose
    ``settings["tuning"]`` holds, per row, what finding its rate cost (``runs``, ``epochs``,
    ``seconds``; one run for lr="auto"), which the table and the report show.

    ``select`` is :func:`tune`'s: ``"final"`` picks each rate by its runs' last epoch, ``"best"`` by
    their best (the rate to train at when stopping early on the validation rows); the reading then
    compares ``lr="auto"`` with the tuned rows by the best epoch too (the table's "best val" column).
    """
    if select not in SELECTS:  # before any training
        raise ValueError(f"invalid select={select!r}; expected one of {', '.join(SELECTS)}")
    names = [str(o).lower() for o in optimizers]
    total_steps = epochs * math.ceil(len(data.x_train) / batch_size)
    if schedule:
        if T.feeds_on_validation_loss(schedule):
            raise ValueError("compare --tuned: reduce_on_plateau follows the validation loss, which the search's trials "
                             "do not feed; give a schedule of a fixed shape (cosine, warmup_cosine, wsd, ...)")
        T.make_schedule(schedule, 1.0, total_steps)  # a bad spec fails here, before any training
    res = tune(data, names, search=search, points=points, seeds=list(tune_seeds), epochs=epochs,
               hyperparameters=hyperparameters, jobs=jobs, ray=ray, progress=progress, model=model,
               hidden=hidden, batch_size=batch_size, schedule=schedule, select=select)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    auto_ok = auto and _has_auto()
    variants: list[tuple[str, str, dict[str, Any]]] = []
    tuning: dict[str, dict[str, Any]] = {}
    for t in res.tunings:
        if t.best_lr is not None:
            label = f"{t.label} (tuned)"
            variants.append((label, t.label, t.best_hyperparameters()))
            tuning[label] = dict(runs=t.runs, epochs=t.epochs, seconds=t.seconds, search=t.search,
                                 lrs=(min(t.lrs), max(t.lrs), len(t.lrs)), lr=t.best_lr, best=t.best_mean,
                                 heldout=t.heldout, select=select,
                                 # every rate's score (None: a seed diverged), for the report's figure
                                 curve=[(lr, res.as_metric(t.scores[lr]) if math.isfinite(t.scores.get(lr, math.nan))
                                         else None) for lr in t.lrs])
        if auto_ok:
            label = f"{t.label} (lr=auto)"
            lr_auto = T.scheduled_lr(schedule, "auto", total_steps) if schedule else "auto"
            variants.append((label, t.label, {**t.hyperparameters, "lr": lr_auto}))
            tuning[label] = dict(runs=1, epochs=epochs, seconds=None, search="auto", lr="auto")
    if not variants:
        raise ValueError("every tuning run diverged and this descend has no lr='auto': nothing to compare")
    hidden_t = tuple(T.DEFAULT_HIDDEN[model] if hidden is None else hidden)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(variants) * len(seed_list) * epochs, unit="epoch", desc="descend compare --tuned")
    runs = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in seed_list:
            for label, name, hp in variants:
                run = T.train_run(data, name, hp, seed=seed, epochs=epochs, batch_size=batch_size, hidden=hidden_t,
                                  on_epoch=bar.update if bar is not None else None, model=model,
                                  schedule=schedule if isinstance(hp.get("lr"), (int, float)) else None)
                if bar is not None and run.diverged:
                    bar.update(epochs - run.diverged_epoch)
                run.optimizer = label
                for row in run.rows:
                    row["optimizer"] = label
                runs.append(run)
    finally:
        torch.set_num_threads(before)
        if bar is not None:
            bar.close()
    labels = [v[0] for v in variants]
    for label in labels:  # lr=auto's compute: its own runs' training time, one run per seed
        if tuning[label]["seconds"] is None:
            tuning[label]["seconds"] = float(np.mean([r.rows[-1]["seconds"] for r in runs if r.optimizer == label]))
    settings = dict(task=data.name, kind=data.kind, metric=data.metric_name, optimizers=labels, seeds=seed_list,
                    epochs=epochs, batch_size=batch_size, hidden=list(hidden_t), model=model, schedule=schedule,
                    divergence_factor=1e3, train_rows=len(data.x_train), val_rows=len(data.x_val),
                    n_features=data.n_features, tuning=tuning, tuning_seeds=list(tune_seeds))
    return T._comparison(data, runs, labels, seed_list, settings, goal)


def _has_auto() -> bool:
    try:
        descend.create("adam", [nn.Parameter(torch.zeros(1))], lr="auto")
        return True
    except (ValueError, TypeError):
        return False


def tuning_cost_text(cost: Mapping[str, Any]) -> str:
    """``8 runs, 160 epochs, 5.1 s`` (a tuned row) or ``1 run`` (lr="auto")."""
    if cost.get("search") == "auto":
        return "1 run (no search)"
    return f"{cost['runs']} runs, {cost['epochs']} epochs, {cost['seconds']:.1f} s ({cost['search']})"
