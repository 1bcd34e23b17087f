"""Training comparisons (descend.lab.train) and their data (descend.lab.data): the loop against a hand
computation, the same init and batch order for every optimizer, metrics against scikit-learn,
divergence, schedules, and bad data."""

import math

import numpy as np
import pytest
import torch

from descend.lab import data as D
from descend.lab import train as T


@pytest.fixture(scope="module")
def digits():
    return D.load("digits", subsample=300)


@pytest.fixture(scope="module")
def diabetes():
    return D.load("diabetes", subsample=200)


# ------------------------------------------------------------------------------- the training loop


def test_one_run_equals_a_hand_written_loop(digits):
    """GD with batch 64: replay the documented recipe (seeded init, seeded permutation per epoch,
    θ ← θ − η∇ℓ per batch) by hand and compare every recorded number."""
    lr, bs, epochs, seed = 0.2, 64, 2, 3
    run = T.train_run(digits, "gd", {"lr": lr}, seed=seed, epochs=epochs, batch_size=bs, hidden=(16,))
    model = T.make_model(digits.n_features, digits.n_outputs, (16,), seed)
    x, y = torch.from_numpy(digits.x_train), torch.from_numpy(digits.y_train)
    xv, yv = torch.from_numpy(digits.x_val), torch.from_numpy(digits.y_val)
    g = torch.Generator().manual_seed(seed)

    def losses():
        with torch.no_grad():
            tl = torch.nn.functional.cross_entropy(model(x), y).item()
            out = model(xv)
            vl = torch.nn.functional.cross_entropy(out, yv).item()
            acc = (out.argmax(1) == yv).double().mean().item()
        return tl, vl, acc

    expected = [losses()]
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= lr * p.grad
        expected.append(losses())
    assert [r["epoch"] for r in run.rows] == [0, 1, 2]
    for row, (tl, vl, acc) in zip(run.rows, expected):
        assert row["train_loss"] == pytest.approx(tl, rel=1e-5)
        assert row["val_loss"] == pytest.approx(vl, rel=1e-5)
        assert row["val_metric"] == pytest.approx(acc, abs=1e-9)
        assert row["lr"] == lr
    assert run.rows[0]["seconds"] == 0.0 and run.rows[2]["seconds"] >= run.rows[1]["seconds"] > 0
    assert not run.diverged


def test_every_optimizer_sees_the_same_init_and_batches(digits):
    """SGD with momentum 0 is GD exactly; if the init or the batch order differed between the two
    optimizers (per seed) the recorded losses would differ."""
    comp = T.compare(digits, ["gd", "sgd"], lr=0.1, seeds=2, epochs=2, batch_size=50, hidden=(8,))
    for seed in (0, 1):
        a = [r for r in comp.rows if r["optimizer"] == "gd" and r["seed"] == seed]
        b = [r for r in comp.rows if r["optimizer"] == "sgd" and r["seed"] == seed]
        for ra, rb in zip(a, b):
            assert (ra["train_loss"], ra["val_loss"], ra["val_metric"]) == (rb["train_loss"], rb["val_loss"], rb["val_metric"])
    init = {r["seed"]: r["train_loss"] for r in comp.rows if r["epoch"] == 0}
    assert init[0] != init[1]  # seeds do differ


def test_rows_and_summaries(digits):
    comp = T.compare(digits, ["adam", "gd"], seeds=2, epochs=3, hidden=(8,), goal=0.5)
    assert all(tuple(r) == T.CSV_COLUMNS for r in comp.rows)
    assert len(comp.rows) == 2 * 2 * 4
    s = {x.optimizer: x for x in comp.summaries()}
    finals = [r.rows[-1]["val_metric"] for r in comp.runs_of("adam")]
    assert s["adam"].final_mean == pytest.approx(np.mean(finals))
    assert s["adam"].final_std == pytest.approx(np.std(finals, ddof=1))
    hits = [next(row["epoch"] for row in r.rows if row["val_metric"] >= 0.5) for r in comp.runs_of("adam")
            if any(row["val_metric"] >= 0.5 for row in r.rows)]
    assert s["adam"].reached_goal == len(hits)
    if hits:
        assert s["adam"].epochs_to_goal == pytest.approx(np.mean(hits))
    assert comp.optimizers == ["adam", "gd"]


def test_metrics_match_scikit_learn(diabetes):
    from sklearn.metrics import accuracy_score, r2_score

    torch.manual_seed(0)
    x = torch.randn(50, 3)
    y = torch.randn(50)
    model = torch.nn.Linear(3, 1)
    loss, r2 = T.evaluate(model, x, y, "regression")
    pred = model(x).detach().squeeze(1)
    assert r2 == pytest.approx(r2_score(y.numpy(), pred.numpy()), rel=1e-5)
    assert loss == pytest.approx(float(((pred - y) ** 2).mean()), rel=1e-6)
    cls = torch.nn.Linear(3, 4)
    labels = torch.randint(0, 4, (50,))
    _, acc = T.evaluate(cls, x, labels, "classification")
    assert acc == pytest.approx(accuracy_score(labels.numpy(), cls(x).argmax(1).numpy()))
    run = T.train_run(diabetes, "adam", {"lr": 0.01}, epochs=5, hidden=(16,))
    assert run.rows[-1]["val_metric"] > 0.2  # a trained net explains part of diabetes' variance


def test_a_diverging_run_is_marked_and_the_others_finish(digits):
    comp = T.compare(digits, ["gd", "adam"], hyperparameters={"gd": {"lr": 1e6}}, seeds=2, epochs=3, hidden=(8,))
    for r in comp.runs_of("gd"):
        assert r.diverged and r.diverged_epoch == r.rows[-1]["epoch"] == 1
        assert not math.isfinite(r.rows[-1]["train_loss"]) or r.rows[-1]["train_loss"] > 1e3 * r.rows[0]["train_loss"]
    for r in comp.runs_of("adam"):
        assert not r.diverged and len(r.rows) == 4
    s = {x.optimizer: x for x in comp.summaries()}
    assert s["gd"].all_diverged and math.isnan(s["gd"].final_mean)
    assert s["adam"].diverged == 0


def test_lr_and_hyperparameter_overrides(digits):
    comp = T.compare(digits, ["gd", "momentum"], lr=0.03, hyperparameters={"momentum": {"momentum": 0.5}},
                     seeds=1, epochs=1, hidden=(4,))
    assert comp.runs_of("gd")[0].hyperparameters == {"lr": 0.03}
    assert comp.runs_of("momentum")[0].hyperparameters == {"lr": 0.03, "momentum": 0.5}
    assert T.hyperparameters_for("adam") == {"lr": 1e-3}


@pytest.mark.parametrize("call, words", [
    (lambda d: T.compare(d, ["nope"], epochs=1), ["'nope'", "adam", "momentum"]),
    (lambda d: T.compare(d, ["gd"], hyperparameters={"adam": {"lr": 1}}, epochs=1), ["'adam'", "gd"]),
    (lambda d: T.compare(d, ["gd"], hyperparameters={"gd": {"lr": -1.0}}, epochs=1), ["lr=-1.0"]),
    (lambda d: T.compare(d, ["gd"], hyperparameters={"gd": {"beta": 1}}, epochs=1), ["'beta'", "lr"]),
    (lambda d: T.compare(d, ["gd"], epochs=0), ["epochs=0"]),
])
def test_bad_comparisons_fail_before_training(digits, call, words):
    with pytest.raises(ValueError) as e:
        call(digits)
    for w in words:
        assert w in str(e.value)


def test_schedule_by_name(digits):
    pytest.importorskip("descend.schedules")
    bs, epochs = 100, 3
    comp = T.compare(digits, ["gd"], lr=0.2, seeds=1, epochs=epochs, batch_size=bs, hidden=(4,), schedule="cosine")
    spe = math.ceil(len(digits.x_train) / bs)
    total = spe * epochs
    for row in comp.rows:
        t = 0 if row["epoch"] == 0 else row["epoch"] * spe - 1  # the last step of the epoch
        assert row["lr"] == pytest.approx(0.2 * (1 + math.cos(math.pi * t / total)) / 2, abs=1e-12)
    with pytest.raises(ValueError, match="valid schedules"):
        T.compare(digits, ["gd"], epochs=1, schedule="no_such_schedule")


def test_schedule_arguments_are_filled_in():
    pytest.importorskip("descend.schedules")
    s = T.make_schedule("warmup_cosine:warmup_steps=10", 0.5, 100)
    assert s(0) == pytest.approx(0.0) and s(10) == pytest.approx(0.5) and s(100) == pytest.approx(0.0)
    assert T.parse_schedule("WSD:warmup_steps=5,decay=cosine,end=1e-4") == (
        "wsd", {"warmup_steps": 5, "decay": "cosine", "end": 1e-4})
    w = T.make_schedule("wsd:warmup_steps=5,stable_steps=10,decay=cosine", 1.0, 40)
    assert w.decay_steps == 25 and w(15) == pytest.approx(1.0) and w(40) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="has no argument 'foo'"):
        T.make_schedule("cosine:foo=1", 0.1, 10)


def test_parse_value():
    assert T.parse_value("3e-4") == 3e-4 and T.parse_value("10") == 10 and T.parse_value("true") is True
    assert T.parse_value("0.9,0.99") == (0.9, 0.99)
    with pytest.raises(ValueError, match="not a number"):
        T.parse_value("fast")


# ------------------------------------------------------------------------------- data


def test_detect_kind():
    assert D.detect_kind(np.array([0, 1, 2, 1.0])) == "classification"
    assert D.detect_kind(np.array([0.5, 1, 2])) == "regression"
    assert D.detect_kind(np.arange(200)) == "regression"  # integers, but too many distinct values


def test_prepare_split_and_standardise():
    x = np.random.default_rng(0).normal(3.0, 5.0, size=(100, 3))
    y = np.repeat([7, 8, 9, 10], 25)
    d = D.prepare(x, y, name="t", val_fraction=0.2)
    assert d.kind == "classification" and d.n_classes == 4 and d.class_names == ["7", "8", "9", "10"]
    assert len(d.x_val) == 20 and np.bincount(d.y_val).tolist() == [5, 5, 5, 5]  # stratified
    np.testing.assert_allclose(d.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(0), 1, atol=1e-5)
    d2 = D.prepare(x, y, name="t")
    np.testing.assert_array_equal(d.x_val, d2.x_val)  # the split is fixed
    r = D.prepare(x, x[:, 0] * 2.5 + 1, name="r")
    assert r.kind == "regression" and abs(float(r.y_train.mean())) < 1e-5


def test_csv_reading(tmp_path):
    f = tmp_path / "ok.csv"
    f.write_text("a,b,species\n1,2,cat\n3,4,dog\n5,6,cat\n\n7,8,dog\n")
    x, y, names = D.load_file(f, "species")
    assert x.tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]] and names == ["a", "b"]
    d = D.prepare(x, y, name="ok.csv", val_fraction=0.5)
    assert d.kind == "classification" and d.class_names == ["cat", "dog"]


@pytest.mark.parametrize("text, target, message", [
    ("a,b,t\n1,2,0\n3,x,1\n", "t", "row 3, column 'b': 'x' is not a number"),
    ("a,b,t\n1,2,0\n3,,1\n", "t", "row 3, column 'b': missing value"),
    ("a,b,t\n1,2,0\n3,4,NA\n", "t", "row 3, column 't': missing value"),
    ("a,b,t\n1,2,0\n3,4\n", "t", "row 3 has 2 values"),
    ("a,b,t\n1,2,0\n", "label", "no target column 'label'; columns: a, b, t"),
    ("a,b,t\n1,2,0\n", None, "--target; columns: a, b, t"),
    ("", "t", "empty file"),
])
def test_bad_csv(tmp_path, text, target, message):
    f = tmp_path / "d.csv"
    f.write_text(text)
    with pytest.raises(D.DataError) as e:
        D.load_file(f, target)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_npz(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, X=np.arange(40.0).reshape(20, 2), y=(np.arange(20) % 2) * 0.5)
    d = D.load(data=f)
    assert d.kind == "regression" and d.n_features == 2
    d = D.load(data=f, kind="classification", val_fraction=0.5)
    assert d.kind == "classification"
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(D.DataError, match="expected arrays named 'X' and 'y'; the file has features, y"):
        D.load(data=bad)
    nan = tmp_path / "nan.npz"
    np.savez(nan, X=np.array([[1.0, np.nan]] * 5), y=np.zeros(5))
    with pytest.raises(D.DataError, match=r"X\[0, 1\] is nan"):
        D.load(data=nan)


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(D.DataError, match="valid tasks: digits, iris, wine, breast_cancer, diabetes"):
        D.load("mnist")
