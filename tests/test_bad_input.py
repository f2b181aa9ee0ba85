"""Bad input across the public API: a clear error naming the argument, the expected and the
received value, never a kernel stack trace, a silent wrong answer or lost work.

Each test pins one case found by the bad-input review; the happy paths live in each family's
own test file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import nnxp
from nnxp import Sequential, callbacks
from nnxp.init import INITIALIZERS
from nnxp.layers import (
    BatchNorm1d,
    Dense,
    LayerNorm,
    Maxout,
    PReLU,
    ReLU,
    Standardize,
)
from nnxp.losses import LOSSES, get_loss
from nnxp.random import Generator


def _data(n: int = 8, d: int = 4, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, d)).astype("float32"), np.arange(n) % k


def _clf() -> Sequential:
    return Sequential([Dense(4, 5), ReLU(), Dense(5, 3)], seed=0)


# --- Sequential -------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [None, 3])
def test_sequential_layers_not_a_list(bk, layers):
    with pytest.raises(TypeError, match=r"layers must be a list of layers, got"):
        Sequential(layers)


def test_sequential_single_layer_not_in_a_list(bk):
    with pytest.raises(TypeError, match=r"layers must be a list of layers, got Dense.*"
                                        r"Sequential\(\[\.\.\.\]\)"):
        Sequential(Dense(4, 3))


def test_sequential_same_layer_object_twice(bk):
    # one cache per layer: the second forward would overwrite the first's, so backward would
    # compute the wrong gradients without any error
    shared = Dense(3, 3)
    with pytest.raises(ValueError, match=r"layers\[2\] is the same object as layers\[0\]"):
        Sequential([shared, ReLU(), shared])
    relu = ReLU()
    with pytest.raises(ValueError, match=r"layers\[3\] is the same object as layers\[1\]"):
        Sequential([Dense(3, 3), relu, Dense(3, 3), relu])


@pytest.mark.parametrize(("option", "value"), [("shuffle", "no"), ("diagnostics", "yes"),
                                               ("shuffle", None)])
def test_fit_flags_refuse_truthy_non_bools(bk, option, value):
    X, y = _data()
    model = _clf()
    before = [nnxp.to_numpy(p).copy() for layer in model.layers for p in layer.params.values()]
    with pytest.raises(TypeError, match=rf"{option} must be True or False, got"):
        model.fit(X, y, epochs=1, verbose=0, **{option: value})
    with pytest.raises(TypeError, match=rf"{option} must be True or False, got"):
        model.partial_fit(X, y, **{option: value})
    after = [nnxp.to_numpy(p) for layer in model.layers for p in layer.params.values()]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # nothing was trained


@pytest.mark.parametrize(("value", "error", "match"), [
    ("x", TypeError, r"verbose must be an int, got 'x'"),
    (-1, ValueError, r"verbose must be >= 0, got -1"),
    (1.0, TypeError, r"verbose must be an int, got 1.0"),
])
def test_fit_verbose(bk, value, error, match):
    X, y = _data()
    with pytest.raises(error, match=match):
        _clf().fit(X, y, epochs=1, verbose=value)


def test_fit_verbose_bool_still_accepted(bk):
    X, y = _data()
    assert len(_clf().fit(X, y, epochs=1, verbose=False)) == 1


def test_fit_single_callback_not_in_a_list(bk):
    X, y = _data()
    with pytest.raises(TypeError, match=r"callbacks must be a list of callbacks, got "
                                        r"TerminateOnNaN.*callbacks=\[\.\.\.\]"):
        _clf().fit(X, y, epochs=1, verbose=0, callbacks=callbacks.TerminateOnNaN())


@pytest.mark.parametrize("dim", [0, 5])
def test_sequential_softmax_over_the_wrong_axis(bk, dim):
    # dim=0 would normalise over the batch: each prediction would depend on the others
    with pytest.raises(ValueError, match=rf"layers\[1\] is Softmax\(dim={dim}\), but a "
                                         r"model's activations have shape \(batch, features\)"):
        Sequential([Dense(4, 3), nnxp.layers.Softmax(dim=dim)],
                   loss="categorical_cross_entropy")
    with pytest.raises(ValueError, match=rf"activation is Softmax\(dim={dim}\), but this "
                                         r"layer's output has shape \(batch, out_features\)"):
        Dense(4, 3, activation=nnxp.layers.Softmax(dim=dim))


@pytest.mark.parametrize(("make", "match"), [
    (lambda: callbacks.EarlyStopping(restore_best_weights="no"),
     r"restore_best_weights must be True or False, got str 'no'"),
    (lambda: callbacks.EarlyStopping(baseline="a"), r"baseline must be a number or None"),
    (lambda: callbacks.ModelCheckpoint("m.npz", save_best_only="no"),
     r"save_best_only must be True or False"),
    (lambda: callbacks.ModelCheckpoint("m.npz", include_optimizer=None),
     r"include_optimizer must be True or False"),
    (lambda: callbacks.LearningRateScheduler(lambda a, b, c: 0.1),
     r"schedule must be callable as schedule\(epoch\) or schedule\(epoch, lr\), got .*"
     r"which takes \(a, b, c\)"),
])
def test_callback_options(bk, make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_learning_rate_scheduler_optional_extra_arguments_still_work(bk):
    X, y = _data()
    seen = []

    def schedule(epoch, lr, scale=1.0):
        seen.append((epoch, lr))
        return 0.05 * scale

    _clf().fit(X, y, epochs=2, verbose=0,
               callbacks=[callbacks.LearningRateScheduler(schedule)])
    assert len(seen) == 2


def test_fit_all_zero_sample_weight(bk):
    X, y = _data()
    with pytest.raises(ValueError, match=r"sample_weight is zero for all 8 samples"):
        _clf().fit(X, y, epochs=1, verbose=0, sample_weight=np.zeros(8))


def test_fit_float64_input_overflowing_float32_is_a_clear_error(bk):
    X, y = _data()
    X64 = X.astype("float64")
    X64[0, 0] = 1e300  # finite in float64, inf in the model's float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from the cast escapes first
        with pytest.raises(ValueError, match=r"X contains 1 NaN or infinite value\(s\) \(after "
                                             r"casting to float32\)"):
            _clf().fit(X64, y, epochs=1, verbose=0)


# --- layers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda dtype: Dense(4, 3, dtype=dtype),
    lambda dtype: Maxout(4, 3, dtype=dtype),
    lambda dtype: PReLU(dtype=dtype),
    lambda dtype: BatchNorm1d(4, dtype=dtype),
    lambda dtype: LayerNorm(4, dtype=dtype),
    lambda dtype: Standardize(4, dtype=dtype),
])
@pytest.mark.parametrize("dtype", ["int32", "bool"])
def test_layers_refuse_non_float_dtypes(bk, make, dtype):
    with pytest.raises(ValueError, match=rf"dtype must be a real floating dtype such as "
                                         rf"'float32' or 'float64', got {dtype}"):
        make(dtype)


@pytest.mark.parametrize("make", [
    lambda: Dense(4, 3, bias="no"),
    lambda: Maxout(4, 3, bias="no"),
    lambda: BatchNorm1d(4, affine="no"),
    lambda: BatchNorm1d(4, track_running_stats=0),
    lambda: LayerNorm(4, elementwise_affine="no"),
    lambda: LayerNorm(4, bias=None),
])
def test_layer_flags_refuse_non_bools(bk, make):
    with pytest.raises(TypeError, match=r"must be True or False, got"):
        make()


@pytest.mark.parametrize("key", ["l1", "l2"])
def test_dense_infinite_penalty(bk, key):
    with pytest.raises(ValueError, match=rf"{key} must be a finite number >= 0, got inf"):
        Dense(4, 3, **{key: float("inf")})


@pytest.mark.parametrize("activation", [lambda: Dense(3, 5), lambda: Maxout(3, 2, k=2)])
def test_dense_activation_that_changes_the_width(bk, activation):
    with pytest.raises(TypeError, match=r"activation must be an element-wise activation "
                                        r"layer, got .*which changes the width"):
        Dense(4, 3, activation=activation())


def test_dense_forward_wrong_width_is_explained(bk):
    x = nnxp.asarray(np.ones((8, 3), dtype="float32"))
    with pytest.raises(ValueError, match=r"Dense.forward expects x of shape \(batch, 4\), "
                                         r"float32, on the layer's backend \(\w+\), got "
                                         r"\w+ float32 array of shape \(8, 3\)"):
        Dense(4, 3).forward(x)
    with pytest.raises(ValueError, match=r"Maxout.forward expects x of shape \(batch, 4\)"):
        Maxout(4, 3, k=2).forward(x)


def test_dense_forward_array_of_another_backend_is_explained():
    strict = pytest.importorskip("array_api_strict")
    with nnxp.use_backend("array_api_strict:device1"):
        layer = Dense(4, 3)
        x = strict.asarray(np.ones((2, 4), dtype="float32"))  # the default device, not device1
        with pytest.raises((TypeError, ValueError),
                           match=r"on the layer's backend \(array_api_strict\), got "
                                 r"array_api_strict float32 array of shape \(2, 4\)"):
            layer.forward(x)


def test_dense_forward_dtype_mismatch_on_torch_is_explained():
    torch = pytest.importorskip("torch")
    with nnxp.use_backend("torch"):
        with pytest.raises(TypeError, match=r"float32, on the layer's backend \(torch\), got "
                                            r"torch float64 array"):
            Dense(4, 3).forward(torch.ones((2, 4), dtype=torch.float64))


def test_batchnorm_forward_list(bk):
    with pytest.raises(TypeError, match=r"BatchNorm1d expects an array of shape \(batch, 4\), "
                                        r"got list"):
        BatchNorm1d(4).forward([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0]])


@pytest.mark.parametrize(("X", "error", "match"), [
    (np.full((3, 4), np.nan), ValueError, r"X contains 12 NaN or infinite value"),
    (np.zeros((0, 4)), ValueError, r"X has no samples"),
    (np.array([["a"] * 4]), TypeError,
     r"X must be (numeric|an array or nested list of numbers), got .*<U1"),
    (np.ones((3, 2)), ValueError, r"X has 2 features per sample but the model expects 4"),
])
def test_standardize_fit_bad_data(bk, X, error, match):
    layer = Standardize(4)
    with pytest.raises(error, match=match):
        layer.fit(X)
    assert np.array_equal(nnxp.to_numpy(layer.buffers["mean"]), np.zeros(4))  # unchanged


# --- losses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "sparse_categorical_cross_entropy"])
@pytest.mark.parametrize(("labels", "match"), [
    ([0, 1, 2, 5], r"labels in \[0, 5\].*must lie in \[0, 3\)"),
    ([0, 1, 2, -1], r"labels in \[-1, 2\]"),
    ([0.5, 1.0, 2.0, 0.0], r"non-integer value 0.5"),
    ([0, 1, 2], r"y has 3 labels but X has 4 samples"),
])
def test_loss_call_checks_class_labels(bk, name, labels, match):
    outputs = nnxp.asarray(np.full((4, 3), 1.0 / 3.0, dtype="float32"))
    with pytest.raises(ValueError, match=r"\(outputs, targets\) with outputs of shape "
                                         r"\(4, 3\): .*" + match):
        get_loss(name)(outputs, labels)


@pytest.mark.parametrize("name", sorted(set(LOSSES) - {"softmax_cross_entropy",
                                                       "sparse_categorical_cross_entropy"}))
def test_loss_call_checks_float_targets(bk, name):
    outputs = nnxp.asarray(np.full((4, 3), 0.25, dtype="float32"))
    loss = get_loss(name)
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        loss(outputs, np.full((4, 3), np.nan, dtype="float32"))
    with pytest.raises(ValueError, match=r"y has 3 rows but X has 4 samples"):
        loss(outputs, np.zeros((3, 3), dtype="float32"))
    if name in ("binary_cross_entropy", "binary_cross_entropy_with_logits",
                "categorical_cross_entropy"):
        with pytest.raises(ValueError, match=r"y must hold probabilities in \[0, 1\]"):
            loss(outputs, np.full((4, 3), 2.0, dtype="float32"))


def test_loss_call_valid_targets_still_computes(bk):
    outputs = nnxp.asarray(np.zeros((2, 3), dtype="float32"))
    value = get_loss("softmax_cross_entropy")(outputs, [0, 2])
    assert nnxp.backend.to_float(value) == pytest.approx(np.log(3.0), rel=1e-6)


# --- initialisers -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
@pytest.mark.parametrize(("shape", "error"), [((-1, 3), ValueError), (3, TypeError),
                                              ((2.0, 3), ValueError)])
def test_initialisers_check_the_shape(bk, name, shape, error):
    with pytest.raises(error, match=r"shape must be a tuple of non-negative ints"):
        INITIALIZERS[name](shape, rng=Generator(0), dtype=bk.xp.float32, xp=bk.xp,
                           device=bk.device)


# --- gradcheck --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"eps": 0}, ValueError, r"eps must be > 0, got 0"),
    ({"eps": -1e-6}, ValueError, r"eps must be > 0"),
    ({"tol": "a"}, TypeError, r"tol must be a number, got 'a'"),
    ({"max_entries": 0}, ValueError, r"max_entries must be > 0, got 0"),
    ({"raise_on_failure": "yes"}, TypeError, r"raise_on_failure must be True or False"),
])
def test_gradcheck_options(bk, kwargs, error, match):
    x = np.ones((2, 4))
    with pytest.raises(error, match=match):
        nnxp.gradcheck(Dense(4, 3), x, **kwargs)


def test_gradcheck_nan_input_is_bad_input_not_a_failed_check(bk):
    x = nnxp.asarray(np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match=r"inputs\[0\] .* contains NaN or infinite values"):
        nnxp.gradcheck(Dense(4, 3), x)


def test_gradcheck_model_checks_the_features(bk):
    X, y = _data()
    with pytest.raises(ValueError, match=r"X has 3 features per sample but the model expects 4"):
        nnxp.gradcheck(_clf(), X[:, :3], y=y)


def test_gradcheck_layer_accepts_a_nested_list(bk):
    assert nnxp.gradcheck(Dense(2, 2, dtype="float64"), [[0.5, -1.0], [2.0, 0.25]]).passed


# --- persistence ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [None, 3])
def test_save_and_load_path_types(bk, path):
    with pytest.raises(TypeError, match=r"path must be a file name \(str or os.PathLike\), got"):
        _clf().save(path)
    with pytest.raises(TypeError, match=r"path must be a file name \(str or os.PathLike\), got"):
        nnxp.load(path)


def test_save_to_a_directory(bk, tmp_path):
    with pytest.raises(IsADirectoryError, match=r"it is a directory; give a file name"):
        _clf().save(tmp_path)
    with pytest.raises(IsADirectoryError, match=r"is a directory, not an nnxp model file"):
        nnxp.load(tmp_path)
    assert list(tmp_path.iterdir()) == []  # and nothing was left behind


def test_save_flags(bk, tmp_path):
    with pytest.raises(TypeError, match=r"include_optimizer must be True or False, got str"):
        _clf().save(tmp_path / "m.npz", include_optimizer="no")
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize(("content", "match"), [(b"", r"it is empty"),
                                                (b"a,b\n1,2\n", r"it begins with b'a,b\\n1,'")])
def test_load_a_file_that_is_not_a_zip(bk, tmp_path, content, match):
    path = tmp_path / "m.npz"
    path.write_bytes(content)
    with pytest.raises(nnxp.FormatError, match=r"is not an NPZ archive \(a zip file\): " + match):
        nnxp.load(path)


def _tampered(tmp_path, edit):
    path = tmp_path / "m.npz"
    _clf().save(path)
    with np.load(path) as archive:
        arrays = dict(archive)
    edit(arrays)
    out = tmp_path / "edited.npz"
    np.savez(out, **arrays)
    return out


def test_load_weights_of_another_dtype(bk, tmp_path):
    def edit(arrays):
        arrays["layers/0/params/W"] = arrays["layers/0/params/W"].astype("int32")
    with pytest.raises(nnxp.FormatError, match=r"layers\[0\] \(Dense\) params\['W'\] has dtype "
                                               r"int32 in the file, but the layer expects float32"):
        nnxp.load(_tampered(tmp_path, edit))


def test_load_non_finite_weights(bk, tmp_path):
    def edit(arrays):
        arrays["layers/2/params/b"][1] = np.nan
    with pytest.raises(nnxp.FormatError, match=r"layers\[2\] \(Dense\) params\['b'\] holds NaN "
                                               r"or infinite values"):
        nnxp.load(_tampered(tmp_path, edit))


def test_load_record_with_layers_not_a_list(bk, tmp_path):
    import json

    def edit(arrays):
        record = json.loads(arrays["__nnxp__"].tobytes().decode())
        record["layers"] = "oops"
        arrays["__nnxp__"] = np.frombuffer(json.dumps(record).encode(), dtype="uint8")
    with pytest.raises(nnxp.FormatError, match=r"the record's 'layers' must be a non-empty list "
                                               r"of layer entries, got str"):
        nnxp.load(_tampered(tmp_path, edit))


def test_model_checkpoint_missing_directory_fails_before_training(bk, tmp_path):
    X, y = _data()
    model = _clf()
    cb = callbacks.ModelCheckpoint(str(tmp_path / "missing" / "ckpt.npz"))
    with pytest.raises(FileNotFoundError, match=r"ModelCheckpoint\(filepath=.*\): the directory "
                                                r".*missing does not exist"):
        model.fit(X, y, epochs=2, verbose=0, callbacks=[cb])
    assert model.epochs_trained == 0
    with pytest.raises(IsADirectoryError, match=r"is a directory; give a file name"):
        model.fit(X, y, epochs=1, verbose=0, callbacks=[callbacks.ModelCheckpoint(tmp_path)])


# --- backend ----------------------------------------------------------------------------------


def test_asarray_ragged_lists(bk):
    with pytest.raises(ValueError, match=r"cannot convert list to an array: the nested "
                                         r"sequences have different lengths"):
        nnxp.asarray([[1.0], [1.0, 2.0]])


def test_torch_input_that_requires_grad_is_used_as_data():
    torch = pytest.importorskip("torch")
    X, y = _data()
    with nnxp.use_backend("torch"):
        model = _clf()
        Xt = torch.tensor(X, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's requires_grad UserWarning stays silent
            model.fit(Xt, y, epochs=2, verbose=0)
        assert not any(p.requires_grad for layer in model.layers for p in layer.params.values())
        assert not model.predict(Xt).requires_grad
        assert Xt.grad is None


# --- scikit-learn -----------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "match"), [
    ({"shuffle": "no"}, r"'shuffle' parameter of MLPClassifier must be an instance of 'bool'"),
    ({"early_stopping": "no"}, r"'early_stopping' parameter of MLPClassifier must be"),
    ({"solver": "rmsprop"}, r"'solver' parameter of MLPClassifier must be a str among"),
    ({"momentum": 1.5}, r"'momentum' parameter of MLPClassifier must be a float in the range"),
    ({"backend": 3}, r"'backend' parameter of MLPClassifier must be an instance of 'str'"),
])
def test_sklearn_hyperparameters(bk, params, match):
    pytest.importorskip("sklearn")
    from nnxp.sklearn import MLPClassifier

    X, y = _data(20)
    with pytest.raises(ValueError, match=match):
        MLPClassifier(max_iter=2, **params).fit(X, y)


# --- CLI --------------------------------------------------------------------------------------


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "NNXP_BACKEND": "numpy"}
    return subprocess.run([sys.executable, "-m", "nnxp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _csv(tmp_path):
    rows = ["a,b,label"] + [f"{i % 5},{(i * 3) % 7},{i % 2}" for i in range(12)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    return "data.csv"


def test_cli_predict_output_never_replaces_an_input(tmp_path):
    data = _csv(tmp_path)
    done = _cli("train", "--data", data, "--target", "label", "--task", "classify",
                "--epochs", "1", "--hidden", "4", "--quiet", "--save", "m.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    model_bytes = (tmp_path / "m.npz").read_bytes()
    data_text = (tmp_path / data).read_text()
    for target in ("m.npz", data):
        done = _cli("predict", "--model", "m.npz", "--data", data, "--output", target,
                    cwd=tmp_path)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1
        assert f"--output {target} is the input file" in done.stderr
    assert (tmp_path / "m.npz").read_bytes() == model_bytes
    assert (tmp_path / data).read_text() == data_text


def test_cli_train_bad_plot_path_fails_before_training(tmp_path):
    data = _csv(tmp_path)
    done = _cli("train", "--data", data, "--target", "label", "--task", "classify",
                "--epochs", "1", "--hidden", "4", "--quiet", "--save", "m.npz",
                "--plot", "missing/curves.png", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "cannot write --plot missing/curves.png: the directory" in done.stderr
    assert "test accuracy" not in done.stdout  # failed up front, before any training
