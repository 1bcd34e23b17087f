"""Training comparisons on real data: the same model, initialisation and data order for every optimizer.

For each seed s and each optimizer the run is:

1. ``torch.manual_seed(s)``, then build the MLP — so every optimizer starts from the same weights;
2. a ``torch.Generator`` seeded with s draws each epoch's permutation of the training rows — so every
   optimizer sees the same mini-batches in the same order;
3. after each epoch (and once before training, epoch 0) the model is evaluated on the *whole*
   training set (train loss) and on the fixed validation rows (validation loss and metric: accuracy
   for classification, R² for regression), in eval mode without gradients.

Recorded per epoch: train_loss, val_loss, val_metric, lr (the learning rate of the epoch's last step)
and seconds (cumulative wall time of the training steps of this run, evaluation excluded).

A run *diverges* when a mini-batch loss is NaN/±inf or exceeds ``divergence_factor`` × the initial
training loss; it stops there, its last row is the diverged epoch, and the other runs go on.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import descend
from descend.core import keeps_average
from descend.lab.data import Data

__all__ = ["parse_value", "parse_schedule", "DEFAULT_OPTIMIZERS", "DEFAULT_HYPERPARAMETERS", "hyperparameters_for",
           "make_model", "MODELS", "DEFAULT_HIDDEN", "make_schedule", "train_run", "compare", "Interrupted", "check_memory",
           "default_goal", "check_goal", "schedule_parameters", "Run", "Comparison", "Summary", "CSV_COLUMNS"]

#: the optimizers ``descend compare`` runs by default: the chapter's three rules and the two that follow
DEFAULT_OPTIMIZERS = ("gd", "momentum", "adagrad", "rmsprop", "adam")

#: default hyperparameters per optimizer for the lab's MLPs on standardised inputs, batch 32.
#: Chosen with an lr sweep on digits (see the README): each is within a factor ~3 of the best lr for
#: that optimizer there, and none diverges on the bundled tasks. Momentum here has η inside the
#: velocity, so its effective step is η/(1 − γ) = 10η: it needs a smaller η than GD.
DEFAULT_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "gd": {"lr": 0.1},
    "momentum": {"lr": 0.01, "momentum": 0.9},
    "nesterov": {"lr": 0.01, "momentum": 0.9},
    "sgd": {"lr": 0.1},
    "adagrad": {"lr": 0.05},
    "rmsprop": {"lr": 1e-3},
    "adadelta": {"lr": 1.0},
    "adam": {"lr": 1e-3},
    "adamw": {"lr": 1e-3},
    "nadam": {"lr": 2e-3},
    "radam": {"lr": 1e-3},
    "adamax": {"lr": 2e-3},
    "lion": {"lr": 1e-4},
}

CSV_COLUMNS = ("optimizer", "seed", "epoch", "train_loss", "val_loss", "val_metric", "lr", "seconds")


def hyperparameters_for(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The lab's defaults for ``name`` updated with ``overrides``; unknown name → ValueError listing valid ones."""
    key = str(name).lower()
    if key not in descend.optimizers.REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(descend.available())}")
    hp = dict(DEFAULT_HYPERPARAMETERS.get(key, {}))
    hp.update(overrides or {})
    if "lr" not in hp:
        default = inspect.signature(descend.optimizers.REGISTRY[key]).parameters["lr"].default
        if default is inspect.Parameter.empty:
            raise ValueError(f"{key} has no default learning rate; give one (e.g. --set {key}.lr=0.01)")
        hp["lr"] = default
    return hp


def check_optimizer(name: str, hyper: Mapping[str, Any]) -> None:
    """Build the optimizer once on a dummy parameter so bad names or values fail before any training."""
    cls = descend.optimizers.REGISTRY[str(name).lower()]
    takes = [p for p in inspect.signature(cls).parameters if p != "params"]
    for k in hyper:
        if k not in takes:
            raise ValueError(f"{name} has no hyperparameter {k!r}; it takes {', '.join(takes)}")
    descend.create(name, [nn.Parameter(torch.zeros(1))], **hyper)


# ------------------------------------------------------------------------------- schedules

#: argument names a schedule may use for its peak / initial learning rate (the first one it has gets
#: the optimizer's lr) and for its length (gets the run's number of steps)
_LR_NAMES = ("lr", "peak", "max_lr", "init", "value", "peak_lr", "init_value", "base_lr", "start")
_STEP_NAMES = ("total_steps", "num_steps", "steps", "T", "max_steps")


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str) -> Any:
    """A hyperparameter value from the command line: ``true``/``false``, an int, a float, or a
    comma-separated tuple of those. Raises ValueError otherwise."""
    s = text.strip()
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    if "," in s:
        return tuple(parse_value(part) for part in s.split(","))
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    if _NUMBER.match(s) or s.lower() in ("inf", "-inf", "nan"):
        return float(s)
    raise ValueError(f"{text!r} is not a number, true/false, or a comma-separated list of those")


def parse_schedule(spec: str) -> tuple[str, dict[str, Any]]:
    """``"warmup_cosine:warmup_steps=50,end=0"`` → ``("warmup_cosine", {"warmup_steps": 50, "end": 0})``."""
    name, _, rest = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise ValueError(f"invalid schedule argument {item!r} in {spec!r}; expected NAME:key=value,key=value")
        try:
            kwargs[k.strip()] = parse_value(v.strip())
        except ValueError:
            kwargs[k.strip()] = v.strip()  # a word, e.g. wsd's decay=cosine
    return name.strip().lower(), kwargs


def _schedule_registry() -> dict[str, Callable[..., Any]]:
    try:
        from descend import schedules
    except ImportError:
        raise ValueError("schedules need descend.schedules, which this installation does not have") from None
    reg = getattr(schedules, "REGISTRY", None)
    if reg is None:
        reg = {n: getattr(schedules, n) for n in getattr(schedules, "__all__", dir(schedules))
               if not n.startswith("_") and callable(getattr(schedules, n))}
    return dict(reg)


#: schedules that cannot be built from ``NAME:K=V``, and why
_NOT_FROM_SPEC = {"join": "join chains other schedules; build it in Python (descend.schedules.join([...], [...])) "
                          "and pass it as the optimizer's lr",
                  "one_cycle_momentum": "it schedules a momentum (γ or β₁), not a learning rate; one_cycle is "
                                        "its learning-rate half"}


def schedule_parameters(name: str) -> str:
    """What schedule ``name`` takes, for help texts and errors: ``"init=the optimizer's lr, step_size (needed),
    gamma=0.1"``. The learning-rate argument and the length are filled in by :func:`make_schedule`."""
    params = inspect.signature(_schedule_registry()[name]).parameters
    lr_arg = next((n for n in _LR_NAMES if n in params), None)
    parts = []
    for p in params.values():
        if p.name == lr_arg:
            parts.append(f"{p.name}=the optimizer's lr")
        elif p.name in _STEP_NAMES:
            parts.append(f"{p.name}=the run's steps")
        elif p.name == "decay_steps" and name == "wsd":
            parts.append("decay_steps=the steps left")
        elif p.default is inspect.Parameter.empty:
            parts.append(f"{p.name} (needed)")
        else:
            d = p.default
            shown = f"{d:g}" if isinstance(d, float) else str(d).lower() if isinstance(d, bool) else str(d)
            parts.append(f"{p.name}={shown}")
    return ", ".join(parts)


def make_schedule(spec: str, lr: float, total_steps: int) -> Callable[[int], float]:
    """Build a learning-rate schedule from :mod:`descend.schedules` by name (looked up at run time).

    ``spec`` is ``NAME`` or ``NAME:key=value,...``. Arguments not given are filled in: the schedule's
    learning-rate argument (``peak``, ``init``, ``max_lr``, … — the first it has) with the optimizer's
    ``lr``, its length (``total_steps``) with the run's number of steps (epochs × batches per epoch),
    and wsd's ``decay_steps`` with what is left after its warm-up and stable phases.

    A schedule that lasts longer than the run (it would never reach its end, e.g. wsd's decay) is a
    ValueError; one that ends before the run does draws a :class:`~descend.lab.data.LabWarning` (the
    rest of the run keeps its final value). ``reduce_on_plateau`` needs a metric: :func:`train_run`
    feeds it the validation loss after every epoch.
    """
    name, kwargs = parse_schedule(spec)
    reg = _schedule_registry()
    if name in _NOT_FROM_SPEC:
        raise ValueError(f"schedule {name!r} cannot be given as NAME:K=V: {_NOT_FROM_SPEC[name]}")
    if name not in reg:
        raise ValueError(f"unknown schedule {name!r}; valid schedules: {', '.join(n for n in reg if n not in _NOT_FROM_SPEC)}")
    fn = reg[name]
    params = inspect.signature(fn).parameters
    for k in kwargs:
        if k not in params:
            raise ValueError(f"schedule {name} has no argument {k!r}; it takes {schedule_parameters(name)}")
    lr_arg = next((n for n in _LR_NAMES if n in params), None)
    if lr_arg is not None and lr_arg not in kwargs:
        kwargs[lr_arg] = lr
    for n in _STEP_NAMES:
        if n in params and n not in kwargs:
            kwargs[n] = total_steps
    if "decay_steps" in params and "decay_steps" not in kwargs:
        used = sum(int(kwargs.get(n, 0)) for n in ("warmup_steps", "stable_steps"))
        kwargs["decay_steps"] = max(1, total_steps - used)
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        example = ",".join(f"{n}=..." for n in missing)
        raise ValueError(f"schedule {name} needs {' and '.join(missing)} (e.g. {name}:{example}); "
                         f"it takes {schedule_parameters(name)}")
    try:
        sched = fn(**kwargs)
    except TypeError as e:
        raise ValueError(f"schedule {name}: {e}; it takes {schedule_parameters(name)}") from None
    _check_length(spec, sched, total_steps)
    return sched


def _check_length(spec: str, sched: Any, total_steps: int) -> None:
    """A schedule longer than the run is an error; one shorter than the run, a warning."""
    import warnings

    from descend.lab.data import LabWarning

    ends = getattr(sched, "total_steps", None)
    if isinstance(ends, int) and ends > total_steps:
        raise ValueError(f"schedule {spec!r} lasts {ends} steps but the run has {total_steps} (epochs × batches "
                         "per epoch): it would never reach its end; shorten it or train longer")
    if isinstance(ends, int) and ends < total_steps:
        warnings.warn(f"schedule {spec!r} ends at step {ends} of the run's {total_steps}; the rest of the run keeps "
                      f"its final value {sched(total_steps - 1):.3g}", LabWarning, stacklevel=3)
    late = [m for m in getattr(sched, "milestones", ()) or () if m >= total_steps]
    step_size = getattr(sched, "step_size", None)
    if late or (isinstance(step_size, int) and step_size >= total_steps):
        warnings.warn(f"schedule {spec!r} changes only after the run's {total_steps} steps "
                      f"({'milestones ' + ', '.join(map(str, late)) if late else f'step_size={step_size}'}): "
                      "the run sees a constant rate", LabWarning, stacklevel=3)


def scheduled_lr(spec: str, lr: Any, total_steps: int) -> Any:
    """The ``lr`` to give an optimizer for the schedule ``spec``: the schedule peaking at a numeric
    ``lr``, or, for ``lr="auto"``, the estimate scaled by the schedule's shape with peak 1
    (``descend.auto(scale=...)``)."""
    if isinstance(lr, str) and lr == "auto":
        return descend.auto(scale=make_schedule(spec, 1.0, total_steps))
    return make_schedule(spec, float(lr) if isinstance(lr, (numbers.Real, torch.Tensor)) else lr, total_steps)


def feeds_on_validation_loss(schedule: Any) -> bool:
    """Whether ``schedule`` (a spec or a built schedule) is a plateau schedule, fed the validation loss per epoch."""
    if isinstance(schedule, str):
        return parse_schedule(schedule)[0] == "reduce_on_plateau"
    from descend import schedules

    return isinstance(schedule, schedules.reduce_on_plateau)


# ------------------------------------------------------------------------------- model and one run


#: the lab's models: an MLP, and a small 1-D CNN that reads the features as a signal (MNIST-1D)
MODELS = ("mlp", "cnn1d")

#: hidden widths when none are given: the MLP's hidden layers, the CNN's channels per conv layer
DEFAULT_HIDDEN = {"mlp": (64,), "cnn1d": (16, 16, 16)}


def make_model(n_in: int, n_out: int, hidden: Sequence[int] | None = None, seed: int | None = 0,
               model: str = "mlp") -> nn.Sequential:
    """The lab's model, initialised from ``torch.manual_seed(seed)`` (``seed=None``: from torch's
    random state as it is).

    ``"mlp"``: ``n_in → hidden… → n_out`` with ReLU (``hidden=()``: a linear model). ``"cnn1d"``: the ``n_in`` features as a
    one-channel signal through one Conv1d per entry of ``hidden`` (its channels; kernel 5, stride 2,
    padding 2, ReLU), flattened into a linear layer to ``n_out``; the default (16, 16, 16) on
    MNIST-1D's 40 samples has 3.5k parameters (32 channels would be 5× slower per epoch on this
    2-core machine's CPU for 3.5× the parameters).
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid models: {', '.join(MODELS)}")
    hidden = tuple(DEFAULT_HIDDEN[model] if hidden is None else hidden)
    if (model == "cnn1d" and not hidden) or any(w < 1 for w in hidden):
        raise ValueError(f"invalid hidden={hidden!r}; expected widths >= 1 (an MLP may have none: a linear model)")
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = []
    if model == "cnn1d":
        layers.append(nn.Unflatten(1, (1, n_in)))
        channels, length = [1, *hidden], n_in
        for a, b in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv1d(a, b, kernel_size=5, stride=2, padding=2), nn.ReLU()]
            length = (length - 1) // 2 + 1
        layers += [nn.Flatten(), nn.Linear(channels[-1] * length, n_out)]
        return nn.Sequential(*layers)
    widths = [n_in, *hidden]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], n_out))
    return nn.Sequential(*layers)


def _loss_fn(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if kind == "classification":
        return nn.functional.cross_entropy
    return lambda out, y: nn.functional.mse_loss(out.squeeze(-1), y)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str) -> tuple[float, float]:
    """(loss, metric) on the whole of (x, y): accuracy for classification, R² = 1 − SSE/SST for regression."""
    was = model.training
    model.eval()
    out = model(x)
    model.train(was)
    loss = float(_loss_fn(kind)(out, y))
    if not torch.isfinite(out).all():
        return loss, math.nan
    if kind == "classification":
        return loss, float((out.argmax(dim=1) == y).double().mean())
    pred = out.squeeze(-1)
    sst = float(((y - y.mean()) ** 2).sum())
    return loss, 1.0 - float(((y - pred) ** 2).sum()) / sst if sst > 0 else math.nan


def train_epoch(model: nn.Module, opt, batches: Iterable[Any], loss_of: Callable[[Any], torch.Tensor],
                limit: float) -> tuple[bool, Any]:
    """One epoch of steps, one per batch (``loss_of(batch)`` is its loss), in training mode. Stops at
    the first loss that is not finite or exceeds ``limit`` (before stepping on it). Returns (stopped,
    the learning rate of the last step begun) — the one loop of :func:`train_run` and
    :func:`descend.lab.tune.run_trial`."""
    lr = opt.param_groups[0].get("lr")
    model.train()
    for batch in batches:
        lr = opt.param_groups[0].get("lr")  # the value this step uses
        opt.zero_grad(set_to_none=True)
        loss = loss_of(batch)
        v = loss.item()
        if not math.isfinite(v) or v > limit:
            return True, lr
        loss.backward()
        opt.step()
    return False, lr


def _keeps_average(opt) -> bool:
    """May ``opt`` evaluate other weights than its iterate (descend's chain with an AverageIterates
    block; any other optimizer: perhaps, via ``averaged()`` or ``eval()``)?"""
    blocks = getattr(opt, "blocks", None)
    return blocks is None or keeps_average(blocks)


class evaluated_weights:
    """Evaluate with the weights the optimizer means to be evaluated, through the evaluation switch
    ``opt.eval()`` / ``opt.train()`` where the optimizer has one: descend's swaps its average of the
    iterates in and out (a no-op when its chain keeps none), schedule-free's switches its weights."""

    def __init__(self, opt):
        self.opt = opt
        self.switch = callable(getattr(opt, "eval", None)) and callable(getattr(opt, "train", None))

    def __enter__(self):
        if self.switch:
            self.opt.eval()

    def __exit__(self, *exc):
        if self.switch:
            self.opt.train()
        return False


@dataclass
class Run:
    """One (optimizer, seed) run: its rows (one per epoch, epoch 0 = before training) and how it ended."""

    optimizer: str
    seed: int
    hyperparameters: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    diverged_epoch: int | None = None

    @property
    def diverged(self) -> bool:
        return self.diverged_epoch is not None

    def metric(self) -> np.ndarray:
        return np.array([r["val_metric"] for r in self.rows], dtype=float)


def train_run(data: Data, optimizer: str, hyperparameters: Mapping[str, Any], *, seed: int = 0, epochs: int = 20,
              batch_size: int = 32, hidden: Sequence[int] | None = None, schedule: str | None = None,
              divergence_factor: float = 1e3, on_epoch: Callable[[], None] | None = None, model: str = "mlp") -> Run:
    """Train one MLP on ``data`` with one optimizer for ``epochs`` epochs; see the module docstring."""
    xt, xv = torch.from_numpy(data.x_train), torch.from_numpy(data.x_val)
    yt, yv = torch.from_numpy(data.y_train), torch.from_numpy(data.y_val)
    n = len(xt)
    steps_per_epoch = math.ceil(n / batch_size)
    hp = dict(hyperparameters)
    if schedule:
        hp["lr"] = scheduled_lr(schedule, hp["lr"], epochs * steps_per_epoch)
    plateau = schedule is not None and feeds_on_validation_loss(schedule)
    arch = model  # the keyword names the architecture; from here on ``model`` is the module
    model = make_model(data.n_features, data.n_outputs, hidden, seed, arch)
    opt = descend.create(optimizer, model.parameters(), **hp)
    loss_fn = _loss_fn(data.kind)
    order = torch.Generator().manual_seed(seed)
    run = Run(optimizer, seed, dict(hyperparameters))

    def record(epoch: int, seconds: float, lr: float) -> float:
        """One row; returns the training loss of the weights as they are (the divergence check's)."""
        tl = own = evaluate(model, xt, yt, data.kind)[0]
        with evaluated_weights(opt):  # the averaged iterate where the optimizer keeps one (lr="auto")
            if _keeps_average(opt):
                tl, _ = evaluate(model, xt, yt, data.kind)
            vl, vm = evaluate(model, xv, yv, data.kind)
        if plateau and epoch > 0 and math.isfinite(vl):
            from descend.schedules import observe

            observe(opt, vl)  # reduce_on_plateau: the validation loss after each epoch
        run.rows.append(dict(optimizer=optimizer, seed=seed, epoch=epoch, train_loss=tl, val_loss=vl,
                             val_metric=vm, lr=lr, seconds=seconds))
        return own

    initial = record(0, 0.0, float(opt.param_groups[0]["lr"]))
    limit = divergence_factor * max(initial, 1e-12)
    seconds = 0.0
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=order)
        t0 = time.perf_counter()
        bad, lr = train_epoch(model, opt, (perm[i:i + batch_size] for i in range(0, n, batch_size)),
                              lambda idx: loss_fn(model(xt[idx]), yt[idx]), limit)
        lr = float(lr)
        seconds += time.perf_counter() - t0
        own_loss = record(epoch, seconds, lr)
        if on_epoch is not None:
            on_epoch()
        if bad or not math.isfinite(own_loss) or own_loss > limit:
            run.diverged_epoch = epoch
            break
    return run


# ------------------------------------------------------------------------------- the comparison


@dataclass
class Summary:
    """One optimizer's results over its seeds (means and sample standard deviations over the seeds
    that did not diverge)."""

    optimizer: str
    hyperparameters: dict[str, Any]
    seeds: int
    diverged: int
    final_mean: float
    final_std: float
    best_mean: float
    epochs_to_goal: float  # mean over seeds that reached it; nan if none did
    reached_goal: int
    seconds: float  # mean training time per run

    @property
    def all_diverged(self) -> bool:
        return self.diverged == self.seeds


@dataclass
class Comparison:
    """The result of :func:`compare`: every run, the settings, and summaries."""

    data: Data
    runs: list[Run]
    settings: dict[str, Any]
    goal: float

    @property
    def optimizers(self) -> list[str]:
        return list(dict.fromkeys(r.optimizer for r in self.runs))

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One row per optimizer, seed and epoch, as in metrics.csv."""
        return [row for r in self.runs for row in r.rows]

    def runs_of(self, optimizer: str) -> list[Run]:
        return [r for r in self.runs if r.optimizer == optimizer]

    def summaries(self) -> list[Summary]:
        out = []
        for name in self.optimizers:
            runs = self.runs_of(name)
            ok = [r for r in runs if not r.diverged]
            finals = np.array([r.rows[-1]["val_metric"] for r in ok], dtype=float)
            bests = np.array([np.nanmax(m) if np.isfinite(m).any() else math.nan for r in ok for m in [r.metric()]],
                             dtype=float)
            to_goal = []
            for r in ok:
                hit = [row["epoch"] for row in r.rows if row["val_metric"] >= self.goal]
                if hit:
                    to_goal.append(hit[0])
            out.append(Summary(
                optimizer=name, hyperparameters=runs[0].hyperparameters, seeds=len(runs),
                diverged=len(runs) - len(ok),
                final_mean=float(finals.mean()) if len(ok) else math.nan,
                final_std=float(finals.std(ddof=1)) if len(ok) > 1 else 0.0 if len(ok) else math.nan,
                best_mean=float(bests.mean()) if len(ok) else math.nan,
                epochs_to_goal=float(np.mean(to_goal)) if to_goal else math.nan, reached_goal=len(to_goal),
                seconds=float(np.mean([r.rows[-1]["seconds"] for r in runs])),
            ))
        return out


def compare(data: Data, optimizers: Iterable[str] = DEFAULT_OPTIMIZERS, *,
            hyperparameters: Mapping[str, Mapping[str, Any]] | None = None, lr: float | str | None = None,
            seeds: int | Sequence[int] = 5, epochs: int = 20, batch_size: int = 32, hidden: Sequence[int] | None = None,
            schedule: str | None = None, goal: float | None = None, divergence_factor: float = 1e3,
            progress: bool = False, threads: int | None = 1, model: str = "mlp") -> Comparison:
    """Train the same MLP on ``data`` with each optimizer and each seed.

    Args:
        data: a prepared task (:func:`descend.lab.data.load`).
        optimizers: descend names (``descend.available()``).
        hyperparameters: per optimizer, values that replace the lab defaults
            (:data:`DEFAULT_HYPERPARAMETERS`), e.g. ``{"adam": {"lr": 3e-4}}``.
        lr: if given, the learning rate of every optimizer (``hyperparameters`` still win); ``"auto"``
            (here or per optimizer): the rate estimated during training, scaled by ``schedule``'s shape.
        seeds: a count K (seeds 0..K−1) or the seeds themselves.
        schedule: e.g. ``"cosine"`` or ``"warmup_cosine:warmup_steps=50"`` (see :func:`make_schedule`);
            the schedule's peak is each optimizer's lr.
        goal: the validation metric for "epochs to goal"; default :func:`default_goal` (98% of the best
            "best val" in the table). An accuracy in (0, 1] or an R² <= 1, else ValueError.
        progress: show a tqdm bar over all epochs.
        threads: torch's intra-op threads during the comparison (restored afterwards); None leaves
            them alone. One is the default: these models are too small to gain from more, and on a
            busy machine extra threads only wait for each other.

    Returns:
        a :class:`Comparison`. Bad names or values raise ValueError/TypeError before any training.

    Raises:
        Interrupted: on Ctrl-C (a KeyboardInterrupt), carrying the runs finished so far.
    """
    names = [str(o).lower() for o in optimizers]
    if not names:
        raise ValueError("no optimizers given; valid names: " + ", ".join(descend.available()))
    per = {str(k).lower(): dict(v) for k, v in (hyperparameters or {}).items()}
    for k in per:
        if k not in names:
            raise ValueError(f"hyperparameters given for {k!r}, which is not among the optimizers compared "
                             f"({', '.join(names)})")
    if epochs < 1:
        raise ValueError(f"invalid epochs={epochs!r}; expected an integer >= 1")
    if batch_size < 1:
        raise ValueError(f"invalid batch_size={batch_size!r}; expected an integer >= 1")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid models: {', '.join(MODELS)}")
    hidden = tuple(DEFAULT_HIDDEN[model] if hidden is None else hidden)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError(f"invalid seeds={seeds!r}; expected at least one seed")
    if goal is not None:
        check_goal(goal, data.kind)
    hps = {}
    for name in names:
        hp = hyperparameters_for(name, ({"lr": lr} if lr is not None else {}) | per.get(name, {}))
        check_optimizer(name, hp)
        if schedule:  # fail now
            scheduled_lr(schedule, hp["lr"], epochs * math.ceil(len(data.x_train) / batch_size))
        hps[name] = hp
    check_memory(data, hidden, batch_size, model)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names) * len(seed_list) * epochs, unit="epoch", desc="descend compare")
    runs = []
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    settings = dict(task=data.name, kind=data.kind, metric=data.metric_name, optimizers=names,
                    seeds=seed_list, epochs=epochs, batch_size=batch_size, hidden=list(hidden), model=model,
                    schedule=schedule, divergence_factor=divergence_factor,
                    train_rows=len(data.x_train), val_rows=len(data.x_val), n_features=data.n_features)
    try:
        for seed in seed_list:
            for name in names:
                if bar is not None:
                    bar.set_postfix_str(f"{name} seed {seed}")
                run = train_run(data, name, hps[name], seed=seed, epochs=epochs, batch_size=batch_size,
                                hidden=hidden, schedule=schedule, divergence_factor=divergence_factor,
                                on_epoch=bar.update if bar is not None else None, model=model)
                if bar is not None and run.diverged:
                    bar.update(epochs - run.diverged_epoch)  # the epochs it will not run
                runs.append(run)
    except KeyboardInterrupt:
        planned = len(names) * len(seed_list)
        partial = None
        if runs:
            settings["partial"] = dict(runs_done=len(runs), runs_planned=planned)
            partial = _comparison(data, runs, names, seed_list, settings, goal)
        raise Interrupted(partial, len(runs), planned) from None
    finally:
        torch.set_num_threads(before)
        if bar is not None:
            bar.close()
    return _comparison(data, runs, names, seed_list, settings, goal)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`compare`. ``comparison`` holds the runs finished before it (the run in
    progress is dropped; ``settings["partial"]`` says how many of how many), or is None if none finished."""

    def __init__(self, comparison: Comparison | None, done: int, planned: int):
        super().__init__(f"interrupted after {done} of {planned} runs")
        self.comparison, self.done, self.planned = comparison, done, planned


def _comparison(data: Data, runs: list[Run], names: list[str], seed_list: list[int], settings: dict[str, Any],
                goal: float | None) -> Comparison:
    runs = sorted(runs, key=lambda r: (names.index(r.optimizer), seed_list.index(r.seed)))
    return Comparison(data=data, runs=runs, settings=settings, goal=float(default_goal(runs) if goal is None else goal))


def default_goal(runs: Sequence[Run]) -> float:
    """98% of the best "best val" of the table (per optimizer: the mean over its seeds that did not
    diverge of each seed's best validation metric), or that best itself if it is <= 0: the goal sits
    on the same quantity the table shows, so some optimizer's entry always reaches it on average."""
    bests = []
    for name in dict.fromkeys(r.optimizer for r in runs):
        per_seed = [np.nanmax(m) for r in runs if r.optimizer == name and not r.diverged
                    for m in [r.metric()] if np.isfinite(m).any()]
        if per_seed:
            bests.append(float(np.mean(per_seed)))
    if not bests:
        return math.nan
    best = max(bests)
    return 0.98 * best if best > 0 else best


def check_goal(goal: float, kind: str) -> None:
    """ValueError naming ``goal`` unless it is a value the validation metric can take: an accuracy in
    (0, 1], an R² <= 1."""
    ok = isinstance(goal, (int, float)) and math.isfinite(goal) and (0 < goal <= 1 if kind == "classification"
                                                                   else goal <= 1)
    if not ok:
        expected = "a validation accuracy in (0, 1]" if kind == "classification" else "a finite R² <= 1"
        raise ValueError(f"invalid goal={goal!r}; expected {expected}")


def model_bytes(n_in: int, n_out: int, hidden: Sequence[int], rows: int, batch_size: int, model: str = "mlp") -> int:
    """A rough upper estimate of the memory one comparison run needs, in bytes (float32): the model's
    parameters four times over (weights, gradients, two optimizer states) and the activations of the
    largest forward pass (the evaluation on all ``rows`` training rows at once). For ``"cnn1d"`` the
    activations are each conv layer's channels × its length (kernel 5, stride 2, as make_model)."""
    if model == "cnn1d":
        channels, length, params, units = [1, *hidden], n_in, 0, n_in
        for a, b in zip(channels[:-1], channels[1:]):
            length = (length - 1) // 2 + 1
            params += (a * 5 + 1) * b
            units += b * length
        params += (channels[-1] * length + 1) * n_out
        units += n_out
    else:
        widths = [n_in, *hidden, n_out]
        params = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
        units = sum(widths)
    activations = max(rows, batch_size) * units * 2
    return 4 * (4 * params + activations)


def available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable; None where it cannot be read)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(data: Data, hidden: Sequence[int], batch_size: int, model: str = "mlp") -> None:
    """ValueError naming ``hidden`` if one run's estimated memory (:func:`model_bytes`) exceeds what is available."""
    need = model_bytes(data.n_features, data.n_outputs, hidden, len(data.x_train), batch_size, model)
    have = available_memory()
    if have is not None and need > have:
        shape = "→".join(map(str, [data.n_features, *hidden, data.n_outputs]))
        what = f"the 1-D CNN with channels {tuple(hidden)!r}" if model == "cnn1d" else f"the MLP {shape}"
        raise ValueError(f"invalid hidden={tuple(hidden)!r}: {what} needs about {need / 1e9:.3g} GB of memory "
                         f"to train and evaluate, more than the {have / 1e9:.3g} GB available; use smaller hidden widths")
