"""Data for training comparisons: scikit-learn's bundled sets, or the user's CSV / .npz file.

Everything ends up as a :class:`Data`: float32 feature matrices standardised with the training
statistics, a fixed stratified (classification) or random (regression) validation split, and the
task kind. The split does not depend on the training seed: every optimizer and every seed is judged
on the same validation rows.

Bad input raises :class:`DataError` (a ``ValueError``) whose message is one line that says what is
wrong and where (file, row, column) or lists the valid choices; the CLI prints it as it is.
"""

from __future__ import annotations

import csv
import math
import os
import random
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Data", "DataError", "LabWarning", "TASKS", "load", "load_task", "load_file", "prepare", "detect_kind"]

#: bundled scikit-learn sets (no download): name → (loader name, kind)
TASKS: dict[str, tuple[str, str]] = {
    "digits": ("load_digits", "classification"),      # 1797 × 64, 10 classes (8×8 images)
    "iris": ("load_iris", "classification"),          # 150 × 4, 3 classes
    "wine": ("load_wine", "classification"),          # 178 × 13, 3 classes
    "breast_cancer": ("load_breast_cancer", "classification"),  # 569 × 30, 2 classes
    "diabetes": ("load_diabetes", "regression"),      # 442 × 10, disease progression
    "mnist1d": ("mnist1d", "classification"),        # 5000 × 40, 10 classes (the mnist1d package; see load_mnist1d)
}

KINDS = ("classification", "regression")

#: a target with integer values and at most this many distinct ones is taken as class labels
MAX_CLASSES = 50


class DataError(ValueError):
    """Bad data or a bad data option; the message is one line meant for the user."""


class LabWarning(UserWarning):
    """Something about the data or the settings that makes a reading less trustworthy (a tiny
    validation split, a schedule that does not fit the run); one line meant for the user, which the
    CLI prints as ``Warning: ...``."""


#: fewer validation rows than this draws a :class:`LabWarning`
SMALL_VALIDATION = 20


@dataclass
class Data:
    """A prepared task: standardised float32 features, targets, and what kind of task it is.

    ``y_*`` are int64 class indices 0..k−1 (classification) or float32 values standardised with the
    training mean and standard deviation (regression; R² does not change under that rescaling).
    """

    name: str
    kind: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int = 0
    feature_names: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings about the data, repeated in the report

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_outputs(self) -> int:
        return self.n_classes if self.kind == "classification" else 1

    @property
    def metric_name(self) -> str:
        return "accuracy" if self.kind == "classification" else "R²"

    def describe(self) -> str:
        what = f"{self.n_classes} classes" if self.kind == "classification" else "regression"
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} validation rows, "
                f"{self.n_features} features, {what}")


# ------------------------------------------------------------------------------- kinds


def detect_kind(y: np.ndarray) -> str:
    """``"classification"`` if every target is integer-valued and there are at most
    :data:`MAX_CLASSES` distinct values, else ``"regression"``."""
    y = np.asarray(y, dtype=np.float64)
    if np.all(np.isfinite(y)) and np.all(y == np.round(y)) and len(np.unique(y)) <= MAX_CLASSES:
        return "classification"
    return "regression"


# ------------------------------------------------------------------------------- sources


def load_task(name: str) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    """A bundled scikit-learn set by name: ``(X, y, kind, feature_names)``."""
    key = str(name).lower().replace("-", "_")
    if key not in TASKS:
        raise DataError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    if key == "mnist1d":
        return load_mnist1d()
    import sklearn.datasets

    loader, kind = TASKS[key]
    bunch = getattr(sklearn.datasets, loader)()
    names = [str(n) for n in getattr(bunch, "feature_names", [])] or [f"x{i}" for i in range(bunch.data.shape[1])]
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target), kind, names


def load_mnist1d() -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    """MNIST-1D (Greydanus 2020): 5000 one-dimensional signals of length 40, 10 classes.

    Generated offline by the ``mnist1d`` package's ``make_dataset`` with its default arguments (seed
    42), never its download path; the package's own 4000/1000 train/test split is joined, so the
    lab's stratified split applies as for every task. Generating takes a few seconds, so the arrays
    are cached in ``$DESCEND_CACHE_DIR`` (else ``~/.cache/descend``) under the package's version;
    the global ``random`` / ``numpy.random`` states that ``make_dataset`` reseeds are put back.
    """
    try:
        from importlib.metadata import version

        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError("the mnist1d task needs the mnist1d package: pip install mnist1d") from None
    root = Path(os.environ.get("DESCEND_CACHE_DIR") or Path.home() / ".cache" / "descend")
    cache = root / f"mnist1d-{version('mnist1d')}-default.npz"
    try:
        with np.load(cache, allow_pickle=False) as z:
            x, y = z["X"], z["y"]
    except (OSError, KeyError, ValueError):
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            d = make_dataset(get_dataset_args())
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        x = np.concatenate([d["x"], d["x_test"]]).astype(np.float64)
        y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
        try:  # best effort: an unwritable cache only costs the next run a few seconds
            root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=root, suffix=".npz")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, X=x, y=y)
            os.replace(tmp, cache)  # atomic: a concurrent reader never sees half a file
        except OSError:
            pass
    return x, y, "classification", [f"t{i}" for i in range(x.shape[1])]


_MISSING = {"", "na", "nan", "n/a", "null", "none", "?"}


def _columns(path: Path, header: list[str], target: str, features: list[str] | None,
             drop: list[str] | None) -> list[int]:
    """The indices of the feature columns: ``features`` (default: every column but the target) less ``drop``."""
    for option, names in (("--features", features), ("--drop", drop)):
        for n in names or []:
            if n not in header:
                raise DataError(f"{path}: {option}: no column {n!r}; columns: {', '.join(header)}")
            if n == target:
                raise DataError(f"{path}: {option}: {n!r} is the target column")
        if names and len(set(names)) != len(names):
            raise DataError(f"{path}: {option} names a column twice: {', '.join(names)}")
    chosen = [h for h in header if h != target] if features is None else list(features)
    chosen = [h for h in chosen if h not in set(drop or [])]
    if not chosen:
        raise DataError(f"{path}: no feature columns left (--features/--drop); columns: {', '.join(header)}")
    return [header.index(h) for h in chosen]


def _read_csv(path: Path, target: str | None, features: list[str] | None = None,
              drop: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Parse a CSV with a header row. Feature columns must hold numbers; the target may be numbers or
    labels. ``features`` picks the feature columns (default: all but the target), ``drop`` leaves some
    out; columns not used are not read (an id column of text is fine).

    Rows are numbered as lines of the file (the header is row 1), so an editor's line number finds them.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None
    if not rows or not any(c.strip() for c in rows[0]):
        raise DataError(f"{path}: empty file; expected a header row and data rows")
    header = [c.strip() for c in rows[0]]
    if target is None:
        raise DataError(f"{path}: say which column is the target with --target; columns: {', '.join(header)}")
    if target not in header:
        raise DataError(f"{path}: no target column {target!r}; columns: {', '.join(header)}")
    t = header.index(target)
    used = set(_columns(path, header, target, features, drop))
    feats, ys = [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue  # blank line
        if len(row) != len(header):
            raise DataError(f"{path}: row {lineno} has {len(row)} values, the header has {len(header)} columns")
        vals = []
        for j, cell in enumerate(row):
            if j != t and j not in used:
                continue
            c = cell.strip()
            if c.lower() in _MISSING:
                raise DataError(f"{path}: row {lineno}, column {header[j]!r}: missing value")
            if j == t:
                ys.append(c)
                continue
            try:
                v = float(c)
            except ValueError:
                raise DataError(f"{path}: row {lineno}, column {header[j]!r}: {c!r} is not a number") from None
            if not math.isfinite(v):
                raise DataError(f"{path}: row {lineno}, column {header[j]!r}: {c!r} is not a finite number")
            vals.append(v)
        feats.append(vals)
    if not feats:
        raise DataError(f"{path}: no data rows under the header")
    names = [h for j, h in enumerate(header) if j != t and j in used]
    if not names:
        raise DataError(f"{path}: the target {target!r} is the only column; there are no features")
    try:
        y = np.array([float(v) for v in ys])
        if not np.all(np.isfinite(y)):
            bad = int(np.flatnonzero(~np.isfinite(y))[0])
            raise DataError(f"{path}: column {target!r}: {ys[bad]!r} is not a finite number")
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        y = np.array(ys, dtype=object)  # text labels: a classification target
    return np.array(feats, dtype=np.float64), y, names


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if "X" not in keys or "y" not in keys:
                raise DataError(f"{path}: expected arrays named 'X' and 'y'; the file has {', '.join(keys) or 'none'}")
            x, y = np.asarray(z["X"]), np.asarray(z["y"])
    except DataError:
        raise
    except Exception as e:  # not a zip, pickled objects, ...
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise DataError(f"{path}: X must be 2-D (rows × features); it has shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: y must be 1-D with one value per row of X ({len(x)}); it has shape {y.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: X must hold numbers; its dtype is {x.dtype}")
    x = x.astype(np.float64)
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        r, c = (int(v) for v in bad[0])
        raise DataError(f"{path}: X[{r}, {c}] is {x[r, c]}; every value must be a finite number")
    if y.dtype.kind in "US":  # text labels, as a CSV's: a classification target
        y = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in y.tolist()], dtype=object)
    elif not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise DataError(f"{path}: y must hold numbers or text labels; its dtype is {y.dtype}")
    else:
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            raise DataError(f"{path}: y[{int(np.flatnonzero(~np.isfinite(y))[0])}] is not a finite number")
    return x, y, [f"x{i}" for i in range(x.shape[1])]


def load_file(path: str | Path, target: str | None = None, features: list[str] | None = None,
              drop: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read ``X, y, feature_names`` from a ``.csv`` (header row; ``target`` names the target column;
    ``features`` / ``drop`` pick the feature columns) or a ``.npz`` (arrays ``X`` and ``y``)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        if features or drop:
            raise DataError(f"{p}: --features and --drop pick columns of a CSV by name; an .npz has no column names")
        return _read_npz(p)
    if suffix in (".csv", ".txt"):
        return _read_csv(p, target, features, drop)
    raise DataError(f"{p}: unknown file type {suffix or '(none)'!r}; use a .csv (with --target) or an .npz with X and y")


# ------------------------------------------------------------------------------- preparation


def prepare(x: np.ndarray, y: np.ndarray, *, name: str, kind: str | None = None, val_fraction: float = 0.2,
            subsample: int | None = None, split_seed: int = 0, feature_names: list[str] | None = None) -> Data:
    """Split, standardise and type a data set.

    Args:
        x: (n, d) features; y: (n,) targets (numbers, or labels for classification).
        kind: ``"classification"``, ``"regression"`` or None to detect it (:func:`detect_kind`).
        val_fraction: share of rows held out for validation, in (0, 1).
        subsample: keep only this many rows (a random, seeded choice) — for quick runs and tests.
        split_seed: seed of the subsample and the split (fixed, so the validation rows never change).
    """
    if kind is not None and kind not in KINDS:
        raise DataError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"invalid val_fraction={val_fraction!r}; expected a number in (0, 1)")
    rng = np.random.default_rng(split_seed)
    n = len(x)
    if subsample is not None:
        if subsample < 4:
            raise DataError(f"invalid subsample={subsample!r}; expected at least 4 rows")
        if subsample < n:
            keep = np.sort(rng.choice(n, size=subsample, replace=False))
            x, y, n = x[keep], y[keep], subsample
    numeric = y.dtype != object
    if kind is None:
        kind = detect_kind(y) if numeric else "classification"
    if kind == "regression" and not numeric:
        raise DataError(f"{name}: the target holds text labels; it cannot be a regression target")
    n_val = int(round(n * val_fraction))
    if n_val < 1 or n - n_val < 2:
        raise DataError(f"{name}: {n} rows are too few to hold out a validation fraction of {val_fraction} "
                        f"(--val-fraction): that leaves {n - n_val} training and {n_val} validation rows")

    class_names: list[str] = []
    n_classes = 0
    if kind == "classification":
        labels, y_idx = np.unique(y if numeric else y.astype(str), return_inverse=True)
        n_classes = len(labels)
        if n_classes < 2:
            raise DataError(f"{name}: the target has a single class ({labels[0]!r}); nothing to classify")
        if n_classes > 1000:
            raise DataError(f"{name}: the target has {n_classes} distinct values; use --kind regression")
        class_names = [_label(v) for v in labels]
        # stratified split: every class keeps its share in the validation rows
        val = []
        for c in range(n_classes):
            rows = np.flatnonzero(y_idx == c)
            rng.shuffle(rows)
            k = min(int(round(len(rows) * val_fraction)), len(rows) - 1)  # every class keeps a training row
            val.extend(rows[:k])
        val = np.array(sorted(val), dtype=np.int64)
        if len(val) == 0:
            raise DataError(f"{name}: too few rows per class to hold out a validation set")
        y_all = y_idx.astype(np.int64)
    else:
        val = np.sort(rng.permutation(n)[:n_val])
        y_all = np.asarray(y, dtype=np.float64)
        if np.ptp(y_all) == 0:
            raise DataError(f"{name}: the target is constant (every value is {y_all[0]:g}); there is nothing to learn "
                            "and R² is undefined")
        if np.ptp(y_all[val]) == 0:
            raise DataError(f"{name}: the {len(val)} validation rows all have the target {y_all[val][0]:g}, so R² is "
                            "undefined on them; hold out more rows (--val-fraction)")
    mask = np.zeros(n, dtype=bool)
    mask[val] = True
    xt, xv, yt, yv = x[~mask], x[mask], y_all[~mask], y_all[mask]
    least = max(2, n_classes)  # classification: the stratified split keeps one training row per class
    if len(xt) < least:
        raise DataError(f"{name}: a validation fraction of {val_fraction} (--val-fraction) leaves {len(xt)} training "
                        f"rows of {n} (at least {least} needed); hold out fewer rows")
    notes = []
    if len(xt) < SMALL_VALIDATION:
        notes.append(f"{name}: only {len(xt)} training rows; the comparison says little about larger data")
    if len(xv) < SMALL_VALIDATION:
        step = f" (it moves in steps of 1/{len(xv)} = {1 / len(xv):.3f})" if kind == "classification" else ""
        notes.append(f"{name}: only {len(xv)} validation rows, so the validation "
                     f"{'accuracy is coarse and noisy' if kind == 'classification' else 'R² is noisy'}{step}; "
                     "differences between optimizers may be chance")
    for note in notes:
        warnings.warn(note, LabWarning, stacklevel=2)
    mu, sd = xt.mean(axis=0), xt.std(axis=0)
    sd[sd == 0] = 1.0  # constant features stay 0
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    if kind == "regression":
        ym, ys = yt.mean(), yt.std() or 1.0
        yt, yv = ((yt - ym) / ys).astype(np.float32), ((yv - ym) / ys).astype(np.float32)
    return Data(name=name, kind=kind, x_train=xt.astype(np.float32), y_train=yt, x_val=xv.astype(np.float32),
                y_val=yv, n_classes=n_classes, feature_names=list(feature_names or []), class_names=class_names,
                notes=notes)


def _label(v) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def load(task: str | None = "digits", data: str | Path | None = None, target: str | None = None, *,
         kind: str | None = None, val_fraction: float = 0.2, subsample: int | None = None,
         features: list[str] | None = None, drop: list[str] | None = None) -> Data:
    """A :class:`Data` from a bundled task name, or from a file (``data``, with ``target`` for a CSV
    and optionally ``features`` / ``drop`` to pick its feature columns)."""
    if (features or drop) and data is None:
        raise DataError("--features and --drop pick columns of a CSV given with --data; a bundled task has its own")
    if data is not None:
        x, y, names = load_file(data, target, features, drop)
        return prepare(x, y, name=Path(data).name, kind=kind, val_fraction=val_fraction, subsample=subsample,
                       feature_names=names)
    if target is not None:
        raise DataError("--target goes with --data FILE.csv; a bundled task has its own target")
    x, y, task_kind, names = load_task(task or "digits")
    return prepare(x, y, name=str(task).lower(), kind=kind or task_kind, val_fraction=val_fraction,
                   subsample=subsample, feature_names=names)
