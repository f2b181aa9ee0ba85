"""The command line on users' own data: train (CSV/NPZ, classify/regress, --save, --plot),
predict, evaluate, info, and one-line errors with exit status 2 for bad input."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

import nnxp
from nnxp.cli import main


def _write_csv(path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """A 3-class problem with string labels and features on very different scales."""
    rng = np.random.default_rng(0)
    n = 180
    y = np.arange(n) % 3
    centers = np.array([[0.0, 0.0, 0.0], [3.0, 3.0, 0.0], [0.0, 3.0, 3.0]])
    X = centers[y] + rng.normal(scale=0.6, size=(n, 3))
    X = X * np.array([1.0, 100.0, 0.01]) + np.array([0.0, 500.0, -2.0])
    names = np.array(["ant", "bee", "cat"])[y]
    root = tmp_path_factory.mktemp("cli")
    path = root / "blobs.csv"
    _write_csv(path, ["f1", "f2", "f3", "kind"],
               [[*map(repr, row), label] for row, label in zip(X.tolist(), names)])
    return root, path, X, names


@pytest.fixture(scope="module")
def trained(blobs):
    root, data, _, _ = blobs
    model = root / "model.npz"
    assert main(["train", "--data", str(data), "--target", "kind", "--task", "classify",
                 "--hidden", "16", "--epochs", "25", "--lr", "0.1", "--quiet",
                 "--save", str(model)]) == 0
    return model


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --- train, predict, evaluate, info -------------------------------------------------------


def test_train_on_csv_classifies_and_saves_standardisation(blobs, trained, capsys) -> None:
    root, data, X, names = blobs
    model = nnxp.load(trained)
    assert model.metadata["classes"] == ["ant", "bee", "cat"]
    assert model.metadata["feature_names"] == ["f1", "f2", "f3"]
    assert model.metadata["target"] == "kind" and model.metadata["task"] == "classify"
    std = model.layers[0]
    assert type(std).__name__ == "Standardize"
    train_rows = np.sort(nnxp.cli.split(len(X), 0.2, 0)[0])  # the split the command used
    np.testing.assert_allclose(nnxp.to_numpy(std.buffers["mean"]), X[train_rows].mean(axis=0),
                               rtol=1e-5)
    np.testing.assert_allclose(nnxp.to_numpy(std.buffers["scale"]), X[train_rows].std(axis=0),
                               rtol=1e-4)
    predicted = np.array(["ant", "bee", "cat"])[nnxp.to_numpy(model.predict(X))]
    assert (predicted == names).mean() > 0.95  # raw features in: the model standardises


def test_train_prints_test_accuracy(blobs, tmp_path, capsys) -> None:
    _, data, _, _ = blobs
    assert main(["train", "--data", str(data), "--target", "kind", "--task", "classify",
                 "--hidden", "8", "--epochs", "20", "--lr", "0.1", "--quiet"]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.9


def test_predict_writes_labels_and_probabilities(blobs, trained, tmp_path, capsys) -> None:
    _, data, X, names = blobs
    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(trained), "--data", str(data), "--output", str(out),
                 "--proba"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["prediction", "proba_ant", "proba_bee", "proba_cat"]
    assert len(rows) == len(X) + 1
    labels = np.array([r[0] for r in rows[1:]])
    expected = np.array(["ant", "bee", "cat"])[nnxp.to_numpy(nnxp.load(trained).predict(X))]
    np.testing.assert_array_equal(labels, expected)
    proba = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-4)
    assert main(["predict", "--model", str(trained), "--data", str(data)]) == 0  # to stdout
    printed = lines(capsys.readouterr().out)
    assert printed[0] == "prediction" and printed[1:] == list(labels)


def test_predict_accepts_columns_in_another_order_without_target(blobs, trained,
                                                                tmp_path, capsys) -> None:
    _, _, X, _ = blobs
    shuffled = tmp_path / "new.csv"
    _write_csv(shuffled, ["f3", "f1", "f2"], [[r[2], r[0], r[1]] for r in X[:5].tolist()])
    assert main(["predict", "--model", str(trained), "--data", str(shuffled)]) == 0
    got = lines(capsys.readouterr().out)[1:]
    expected = np.array(["ant", "bee", "cat"])[nnxp.to_numpy(nnxp.load(trained).predict(X[:5]))]
    assert got == list(expected)


def test_evaluate_and_info(blobs, trained, capsys) -> None:
    _, data, X, names = blobs
    assert main(["evaluate", "--model", str(trained), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    model = nnxp.load(trained)
    accuracy = float(out.split("accuracy: ")[1].split()[0])
    predicted = np.array(["ant", "bee", "cat"])[nnxp.to_numpy(model.predict(X))]
    assert accuracy == pytest.approx((predicted == names).mean(), abs=1e-6)
    assert f"(n={len(X)})" in out
    assert main(["info", str(trained), "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "format version 1" in out and "classes (3): ant, bee, cat" in out
    assert f"parameters: {model.count_params():,}" in out
    assert "Dense(3, 16)" in out and "(8, 16)" in out and "memory plan" in out
    assert "batch_size=8" in out and "total" in out


def test_regression_on_npz(tmp_path, capsys) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4)) * [1, 10, 0.1, 5]
    y = X @ np.array([1.0, 0.1, 10.0, 0.2]) + 3.0
    data = tmp_path / "reg.npz"
    np.savez(data, X=X, price=y)
    model = tmp_path / "reg_model.npz"
    assert main(["train", "--data", str(data), "--target", "price", "--task", "regress",
                 "--hidden", "32", "--epochs", "60", "--lr", "0.01", "--optimizer", "adam",
                 "--quiet", "--save", str(model)]) == 0
    out = capsys.readouterr().out
    assert float(out.split("test r2: ")[1].split()[0]) > 0.9
    assert main(["evaluate", "--model", str(model), "--data", str(data)]) == 0
    assert float(capsys.readouterr().out.split("r2: ")[1].split()[0]) > 0.9
    pred = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(model), "--data", str(data), "--output",
                 str(pred)]) == 0
    with open(pred, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["price"]
    np.testing.assert_allclose([float(r[0]) for r in rows[1:]],
                               nnxp.to_numpy(nnxp.load(model).predict(X))[:, 0], rtol=1e-6)


def test_plot_writes_a_png(blobs, tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    _, data, _, _ = blobs
    png = tmp_path / "curves.png"
    assert main(["train", "--data", str(data), "--target", "kind", "--task", "classify",
                 "--hidden", "8", "--epochs", "3", "--quiet", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backend_option_trains_there(blobs, tmp_path, capsys) -> None:
    pytest.importorskip("array_api_strict")
    _, data, _, _ = blobs
    model = tmp_path / "strict.npz"
    assert main(["train", "--data", str(data), "--target", "kind", "--task", "classify",
                 "--hidden", "8", "--epochs", "2", "--quiet", "--backend",
                 "array_api_strict:device1", "--save", str(model)]) == 0
    assert "on array_api_strict" in capsys.readouterr().out
    assert nnxp.get_backend().name == "numpy"  # the command did not change the process state
    assert nnxp.io.read(model)[0]["saved_from"]["backend"] == "array_api_strict"


# --- bad input: one line on stderr, status 2, no traceback, no clobbering -----------------


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(lines(err)) == 1, err
    return err.strip()


def test_existing_model_is_never_overwritten_without_the_flag(blobs, tmp_path, capsys) -> None:
    _, data, _, _ = blobs
    model = tmp_path / "keep.npz"
    model.write_bytes(b"precious")
    argv = ["train", "--data", str(data), "--target", "kind", "--task", "classify",
            "--hidden", "4", "--epochs", "1", "--quiet", "--save", str(model)]
    assert main(argv) == 2
    assert "already exists; pass --overwrite" in _error_line(capsys)
    assert model.read_bytes() == b"precious"
    assert main([*argv, "--overwrite"]) == 0
    assert nnxp.load(model).metadata["target"] == "kind"


@pytest.mark.parametrize("header, rows, extra, message", [
    (["a", "b", "y"], [["1", "2", "0"], ["x", "3", "1"]], [], "non-numeric value 'x' at line 3"),
    (["a", "b", "y"], [["1", "2", "0"], ["nan", "3", "1"]], [], "value nan at line 3"),
    (["a", "b", "y"], [["1", "", "0"], ["2", "3", "1"]], [], "empty value at line 2"),
    (["a", "b", "y"], [["1", "2", "0"], ["2", "3"]], [], "line 3 has 2 fields"),
    (["a", "b", "z"], [["1", "2", "0"], ["2", "3", "1"]], [], "no column 'y'"),
    (["a", "b", "y"], [["1", "2", "0"], ["2", "3", "0"]], [], "single class"),
    (["a", "b", "y"], [["1", "2", "0"], ["2", "3", "1"]], ["--features", "a,q"], "no column 'q'"),
    (["a", "b", "y"], [["1", "2", "0"], ["2", "3", "inf"]], ["--task", "regress"],
     "target column 'y' has the value inf"),
])
def test_bad_training_data(header, rows, extra, message, tmp_path, capsys) -> None:
    data = tmp_path / "bad.csv"
    _write_csv(data, header, rows * 3)
    task = [] if "--task" in extra else ["--task", "classify"]
    assert main(["train", "--data", str(data), "--target", "y", *task, "--epochs", "1",
                 "--quiet", "--test-size", "0.3", *extra]) == 2
    assert message in _error_line(capsys)


@pytest.mark.parametrize("values, task, why", [
    (["ant", "bee", "ant", "cat"], "classify", "holds text labels (3 distinct"),
    (["0", "1", "2", "1"], "classify", "holds 3 distinct integer values"),
    (["0.5", "1", "2.25", "1"], "regress", "holds non-integer numbers"),
    ([str(v) for v in range(60)], "regress", "60 distinct integer values, more than 50"),
])
def test_task_is_inferred_from_the_target_column(values, task, why) -> None:
    chosen, reason = nnxp.cli.infer_task(values)
    assert chosen == task and why in reason


@pytest.mark.parametrize("target, override, task", [
    ("kind", [], "classify"), ("code", [], "classify"), ("size", [], "regress"),
    ("code", ["--task", "regress"], "regress"),
])
def test_train_prints_the_inferred_task_and_task_overrides(target, override, task, tmp_path,
                                                           capsys) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "mixed.csv"
    rows = [[f"{rng.normal():.3f}", f"{rng.normal():.3f}", "ant" if i % 2 else "bee",
             str(i % 3), f"{rng.normal():.4f}"] for i in range(30)]
    _write_csv(data, ["a", "b", "kind", "code", "size"], rows)
    model = tmp_path / "m.npz"
    features = "a,b"
    assert main(["train", "--data", str(data), "--target", target, "--features", features,
                 *override, "--epochs", "1", "--save", str(model)]) == 0
    err = capsys.readouterr().err
    assert (f"task: {task} (inferred" in err) == (not override)
    assert nnxp.load(model).metadata["task"] == task


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "absent.csv", "--target", "y", "--task", "classify"],
     "no such data file: absent.csv"),
    (["train", "--data", "{csv}"], "--data needs --target COLUMN"),
    (["train", "--task", "classify"], "need --data FILE"),
    (["train", "--optimizer", "nope"], "--optimizer 'nope' is not supported"),
    (["predict", "--model", "absent.npz", "--data", "{csv}"], "no such model file: absent.npz"),
    (["predict", "--model", "{pickle}", "--data", "{csv}"], "not an nnxp model file"),
    (["info", "{csv}"], "not an nnxp model file"),
    (["predict", "--model", "{model}", "--data", "{narrow}"],
     "lacks the model's feature column(s) 'f3' and has 2 other columns, but the model "
     "expects 3"),
    (["predict", "--model", "{plain}", "--data", "{narrow}"],
     "has 2 feature columns but the model expects 3"),
    (["evaluate", "--model", "{model}", "--data", "{narrow}"], "no column 'kind'"),
    (["evaluate", "--model", "{model}", "--data", "{alien}"], "label(s) 'dog'"),
    (["predict", "--model", "{model}", "--data", "{csv}", "--output", "/no/such/dir/p.csv"],
     "does not exist"),
])
def test_bad_commands_give_one_line_and_status_2(argv, message, blobs, trained, tmp_path,
                                                  capsys) -> None:
    _, data, X, _ = blobs
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(b"\x80\x04\x95 not really a model")
    narrow = tmp_path / "narrow.csv"
    _write_csv(narrow, ["f1", "f2"], X[:4, :2].tolist())
    alien = tmp_path / "alien.csv"
    _write_csv(alien, ["f1", "f2", "f3", "kind"], [[*X[0].tolist(), "dog"]])
    plain = tmp_path / "plain.npz"  # saved from Python: no feature names recorded
    nnxp.Sequential([nnxp.layers.Dense(3, 2)]).save(plain)
    paths = {"csv": str(data), "pickle": str(pickled), "model": str(trained), "plain": str(plain),
             "narrow": str(narrow), "alien": str(alien)}
    argv = [a.format(**paths) for a in argv]
    assert main(argv) == 2
    assert message in _error_line(capsys)


def test_argparse_errors_are_one_line_too(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epochs", "zero"])
    assert exc.value.code == 2
    line = _error_line(capsys)
    assert "--epochs" in line and "must be a positive integer" in line and "--help" in line
    with pytest.raises(SystemExit):
        main(["predict", "--data", "x.csv"])
    assert "--model" in _error_line(capsys)


def test_subprocess_python_m_nnxp(blobs, trained) -> None:
    _, data, X, _ = blobs
    env = {**os.environ, "NNXP_BACKEND": "numpy"}
    ok = subprocess.run([sys.executable, "-m", "nnxp", "predict", "--model", str(trained),
                         "--data", str(data)], capture_output=True, text=True, timeout=120,
                        env=env)
    assert ok.returncode == 0, ok.stderr
    assert lines(ok.stdout)[0] == "prediction" and len(lines(ok.stdout)) == len(X) + 1
    bad = subprocess.run([sys.executable, "-m", "nnxp", "info", str(data)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(lines(bad.stderr)) == 1 and "not an nnxp model file" in bad.stderr


def test_dataframe_like_inputs_are_accepted() -> None:
    class Frame:  # what the library relies on: pandas' to_numpy(), nothing else
        def __init__(self, values):
            self.values_ = np.asarray(values)

        def to_numpy(self):
            return self.values_

    model = nnxp.Sequential([nnxp.layers.Dense(3, 2)], seed=0)
    X = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(nnxp.to_numpy(model.predict_proba(Frame(X))),
                                  nnxp.to_numpy(model.predict_proba(X)))


# --- fit's options for larger models: --precision, --loss-scale, --accumulate, --memory-budget,
# --tf32, --capture ---------------------------------------------------------------------------


def _train_blobs(data, *options: str) -> list[str]:
    return ["train", "--data", str(data), "--target", "kind", "--task", "classify",
            "--hidden", "8", "--lr", "0.1", "--quiet", *options]


def test_training_options_reach_fit(blobs, monkeypatch, capsys) -> None:
    _, data, _, _ = blobs
    seen: list[dict] = []
    fit = nnxp.Sequential.fit

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(nnxp.Sequential, "fit", spy)
    assert main(_train_blobs(data, "--epochs", "2", "--precision", "float16", "--no-loss-scale",
                             "--accumulate", "2", "--memory-budget", "6GiB")) == 0
    assert "test accuracy" in capsys.readouterr().out
    options = {k: seen[-1][k] for k in ("precision", "loss_scale", "accumulate",
                                        "memory_budget", "capture")}
    assert options == {"precision": "float16", "loss_scale": False, "accumulate": 2,
                       "memory_budget": 6 * 1024**3, "capture": False}
    assert main(_train_blobs(data, "--epochs", "1", "--capture")) == 0
    assert seen[-1]["capture"] is True
    assert main(_train_blobs(data, "--epochs", "1")) == 0  # the defaults: fit's own
    assert {k: seen[-1][k] for k in options} == {
        "precision": "float32", "loss_scale": None, "accumulate": 1, "memory_budget": None,
        "capture": False}


def test_float16_trains_on_numpy_and_saves_its_loss_scale(blobs, tmp_path, capsys) -> None:
    _, data, _, _ = blobs
    saved = tmp_path / "half.npz"
    assert main(_train_blobs(data, "--epochs", "20", "--precision", "float16",
                             "--save", str(saved))) == 0
    accuracy = float(capsys.readouterr().out.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.9
    scaler = nnxp.load(saved).loss_scaler  # on by default for float16, kept in the file
    assert isinstance(scaler, nnxp.precision.LossScaler) and scaler.growth_tracker > 0
    assert scaler.scale in (2.0**16, 2.0**15, 2.0**14)  # from 2**16, halved on an overflow


def test_bfloat16_trains_on_torch(blobs) -> None:
    pytest.importorskip("torch")
    _, data, _, _ = blobs
    assert main(_train_blobs(data, "--epochs", "2", "--backend", "torch",
                             "--precision", "bfloat16")) == 0


def test_accumulate_gives_the_weights_of_fit_with_accumulate(blobs, tmp_path) -> None:
    _, data, X, names = blobs
    paths = {k: tmp_path / f"{k}.npz" for k in ("accumulated", "large")}
    assert main(_train_blobs(data, "--epochs", "3", "--batch-size", "8", "--accumulate", "2",
                             "--save", str(paths["accumulated"]))) == 0
    assert main(_train_blobs(data, "--epochs", "3", "--batch-size", "16",
                             "--save", str(paths["large"]))) == 0
    y = np.searchsorted(["ant", "bee", "cat"], names)
    train_rows = nnxp.cli.split(len(X), 0.2, 0)[0]  # the command's split, standardisation, model
    std = nnxp.layers.Standardize(3).fit(X[train_rows])
    model = nnxp.Sequential([std, nnxp.layers.Dense(3, 8), nnxp.layers.ReLU(),
                             nnxp.layers.Dense(8, 3)], seed=0)
    model.fit(X[train_rows], y[train_rows], loss="softmax_cross_entropy",
              optimizer=nnxp.optim.SGD(lr=0.1), epochs=3, batch_size=8, accumulate=2,
              verbose=0)
    cli_model = nnxp.load(paths["accumulated"])
    large = nnxp.load(paths["large"])
    for ours, theirs, one_batch in zip(cli_model.layers, model.layers, large.layers):
        for key, p in theirs.params.items():
            np.testing.assert_array_equal(nnxp.to_numpy(ours.params[key]), nnxp.to_numpy(p))
            # and one step per 2 batches of 8 is one step on a batch of 16 (to float32 rounding)
            np.testing.assert_allclose(nnxp.to_numpy(ours.params[key]),
                                       nnxp.to_numpy(one_batch.params[key]),
                                       rtol=1e-5, atol=1e-6)


def test_a_memory_budget_too_small_is_refused_before_training(blobs, tmp_path, capsys) -> None:
    _, data, _, _ = blobs
    saved = tmp_path / "never.npz"
    assert main(_train_blobs(data, "--memory-budget", "500B", "--save", str(saved))) == 2
    line = _error_line(capsys)
    assert line.startswith("nnxp train: error: --memory-budget 500 bytes: a training step "
                           "with --batch-size 32 needs ")
    assert "no batch size fits" in line and not saved.exists()
    # a budget above the fixed part (parameters, gradients, ...) names the largest batch size
    assert main(_train_blobs(data, "--batch-size", "4096", "--memory-budget", "5kB")) == 2
    assert "the largest batch size that fits is " in _error_line(capsys)


@pytest.mark.parametrize(("options", "message"), [
    (["--precision", "float64"], "argument --precision: invalid choice: 'float64'"),
    (["--accumulate", "0"], "argument --accumulate: must be a positive integer, got 0"),
    (["--accumulate", "1.5"], "argument --accumulate: must be a positive integer, got '1.5'"),
    (["--memory-budget", "lots"], "argument --memory-budget: must be a number of bytes >= 1 "
                                  "such as 6GiB, 512MB or 2e9, got lots"),
    (["--memory-budget", "0"], "argument --memory-budget: must be a number of bytes"),
    (["--loss-scale", "yes"], "unrecognized arguments: yes"),
])
def test_bad_training_options_are_argparse_errors(options, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", *options])
    assert exc.value.code == 2
    assert message in _error_line(capsys)


@pytest.mark.parametrize(("options", "message"), [
    (["--loss-scale"], "--loss-scale needs --precision float16 or bfloat16"),
    (["--precision", "bfloat16", "--backend", "numpy"],
     "--precision bfloat16: the numpy backend has no bfloat16 dtype; it offers float32, "
     "float16"),
    # fit's own refusal, in the command line's option names
    (["--capture", "--accumulate", "2"], "--capture together with --accumulate 2 is not"),
])
def test_option_combinations_that_cannot_work_exit_2(options, message, blobs, capsys) -> None:
    assert main(_train_blobs(blobs[1], *options)) == 2
    assert message in _error_line(capsys)


def test_tf32_is_set_for_the_run_and_put_back(blobs, capsys) -> None:
    _, data, _, _ = blobs
    before = nnxp.backend.get_tf32()
    seen = []

    class Probe(nnxp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(nnxp.backend.get_tf32())

    fit = nnxp.Sequential.fit
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nnxp.Sequential, "fit",
                   lambda self, *a, **k: fit(self, *a, **{**k, "callbacks": [Probe()]}))
        args = _train_blobs(data, "--epochs", "1", "--tf32")
        args.remove("--quiet")
        assert main(args) == 0
    assert seen == [True] and nnxp.backend.get_tf32() == before
    assert "TF32 requested but not applicable: numpy on cpu is a CPU backend" in \
        capsys.readouterr().err
