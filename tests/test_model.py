"""The first trainable path end to end: layer protocol, Sequential, validation, digits."""

from __future__ import annotations

import numpy as np
import pytest

import nnxp
from nnxp.layers import Dense, ReLU


@pytest.fixture(scope="module")
def digits():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    X, y = sklearn_datasets.load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    X, y = (X / 16.0).astype(np.float32)[order], y[order]
    return X[:1400], y[:1400], X[1400:], y[1400:]


def mlp(seed: int = 0, n_in: int = 64, n_out: int = 10) -> nnxp.Sequential:
    return nnxp.Sequential([Dense(n_in, 32), ReLU(), Dense(32, n_out)], seed=seed)


# --- the layer protocol --------------------------------------------------------------------


def test_dense_layer_protocol(bk) -> None:
    layer = Dense(4, 3)
    assert set(layer.params) == {"W", "b"} and layer.buffers == {} and layer.grads == {}
    assert tuple(layer.params["W"].shape) == (4, 3) and tuple(layer.params["b"].shape) == (3,)
    assert layer.params["W"].dtype == bk.xp.float32
    x = bk.asarray(np.ones((2, 4)), "float32")
    y = layer.forward(x, training=True)
    expected = nnxp.to_numpy(x) @ nnxp.to_numpy(layer.params["W"]) + nnxp.to_numpy(
        layer.params["b"])
    np.testing.assert_allclose(nnxp.to_numpy(y), expected, rtol=1e-6)
    dx = layer.backward(bk.asarray(np.ones((2, 3)), "float32"))
    assert tuple(dx.shape) == (2, 4) and set(layer.grads) == {"W", "b"}


@pytest.mark.parametrize("layer", [Dense(3, 2), ReLU()], ids=["Dense", "ReLU"])
def test_backward_without_training_forward_is_a_clear_error(layer) -> None:
    with pytest.raises(nnxp.BackwardError, match=r"forward\(x, training=True\) first"):
        layer.backward(nnxp.asarray(np.ones((1, 2), np.float32)))
    layer.forward(nnxp.asarray(np.ones((1, 3), np.float32)), training=False)
    with pytest.raises(nnxp.BackwardError):
        layer.backward(nnxp.asarray(np.ones((1, 2), np.float32)))


def test_backward_consumes_the_cache() -> None:
    layer = Dense(3, 2)
    layer.forward(nnxp.asarray(np.ones((1, 3), np.float32)))
    layer.backward(nnxp.asarray(np.ones((1, 2), np.float32)))
    with pytest.raises(nnxp.BackwardError):
        layer.backward(nnxp.asarray(np.ones((1, 2), np.float32)))


def test_dense_without_bias_and_dtype() -> None:
    layer = Dense(3, 2, bias=False, dtype="float64")
    assert set(layer.params) == {"W"} and layer.params["W"].dtype == np.float64


@pytest.mark.parametrize(("args", "match"), [((0, 3), "in_features must be a positive int"),
                                             ((3, -1), "out_features must be a positive int"),
                                             ((2.5, 3), "in_features")])
def test_dense_rejects_bad_sizes(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        Dense(*args)


def test_dense_rejects_unknown_init() -> None:
    with pytest.raises(ValueError, match="init='bogus' is not a known initialiser"):
        Dense(3, 2, init="bogus")


# --- Sequential ------------------------------------------------------------------------------


def test_sequential_checks_widths_and_protocol() -> None:
    with pytest.raises(ValueError, match=r"layers\[2\] expects 5 input features but layers\[0\]"):
        nnxp.Sequential([Dense(3, 4), ReLU(), Dense(5, 2)])
    with pytest.raises(TypeError, match="does not follow the layer protocol"):
        nnxp.Sequential([Dense(3, 4), "relu"])
    with pytest.raises(ValueError, match="at least one layer"):
        nnxp.Sequential([])


def test_sequential_rejects_layers_from_another_backend() -> None:
    with nnxp.use_backend("array_api_strict"):
        foreign = Dense(3, 2)
    with pytest.raises(ValueError, match="another backend"):
        nnxp.Sequential([foreign])


def test_parameters_and_count() -> None:
    model = mlp()
    assert [k for _, k in model.parameters()] == ["W", "b", "W", "b"]
    assert model.count_params() == 64 * 32 + 32 + 32 * 10 + 10


def test_digits_end_to_end_on_every_backend(bk, digits) -> None:
    X, y, Xt, yt = digits
    model = mlp()
    history = model.fit(X, y, optimizer=nnxp.optim.SGD(lr=0.1), epochs=8, batch_size=32,
                        verbose=0)
    assert len(history["loss"]) == 8 and history["loss"][-1] < history["loss"][0]
    result = model.evaluate(Xt, yt)
    assert result["accuracy"] > 0.9 and set(result) == {"loss", "accuracy"}
    proba = model.predict_proba(Xt)
    labels = model.predict(Xt)
    assert str(nnxp.backend.device_of(proba)) == str(bk.device)
    np.testing.assert_allclose(nnxp.to_numpy(proba).sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(nnxp.to_numpy(labels), nnxp.to_numpy(proba).argmax(axis=1))
    assert np.mean(nnxp.to_numpy(labels) == yt) == pytest.approx(result["accuracy"])


def test_full_batch_and_stochastic_gradient_descent(bk, digits) -> None:
    X, y, _, _ = digits
    for batch_size in (None, 1):
        model = mlp()
        history = model.fit(X[:200], y[:200], optimizer=nnxp.optim.SGD(lr=0.05), epochs=2,
                            batch_size=batch_size, verbose=0)
        assert history["loss"][1] < history["loss"][0]


def test_inputs_from_other_libraries_are_moved(digits) -> None:
    torch = pytest.importorskip("torch")
    X, y, _, _ = digits
    model = mlp()
    model.fit(torch.from_numpy(X[:64]), torch.from_numpy(y[:64]), epochs=1, verbose=0)
    model.fit(X[:64].tolist(), y[:64].tolist(), epochs=1, verbose=0)
    assert model.predict(torch.from_numpy(X[:5])).shape == (5,)


def test_batch_prediction_equals_one_shot(bk, digits) -> None:
    _, _, Xt, _ = digits
    model = mlp()
    np.testing.assert_allclose(nnxp.to_numpy(model.predict_proba(Xt, batch_size=7)),
                               nnxp.to_numpy(model.predict_proba(Xt)), rtol=1e-6)


@pytest.mark.parametrize(
    ("X", "y", "error", "match"),
    [
        (np.ones((10, 5)), np.zeros(10, int), ValueError, "has 5 features per sample but the "
                                                          "model expects 64"),
        (np.ones(64), np.zeros(1, int), ValueError, "must be 2-D"),
        (np.ones((10, 64)), np.zeros(9, int), ValueError, "has 9 labels but X has 10 samples"),
        (np.ones((10, 64)), np.full(10, 10), ValueError, r"labels in \[10, 10\].*must lie in "
                                                         r"\[0, 10\)"),
        (np.ones((10, 64)), np.full(10, -1), ValueError, "labels in"),
        (np.ones((10, 64)), np.full(10, 0.5), ValueError, "non-integer value 0.5"),
        (np.ones((10, 64)), np.zeros((10, 2), int), ValueError, "must be 1-D integer class"),
        (np.full((10, 64), np.nan), np.zeros(10, int), ValueError, "NaN or infinite"),
        (np.array([["a"] * 64] * 2), np.zeros(2, int), TypeError, "must be numeric"),
        (None, np.zeros(2, int), TypeError, "X is required"),
        (np.zeros((0, 64)), np.zeros(0, int), ValueError, "no samples"),
    ],
)
def test_fit_validates_inputs_with_clear_messages(X, y, error, match) -> None:
    model = mlp()
    with pytest.raises(error, match=match):
        model.fit(X, y, epochs=1, verbose=0)


def test_integral_float_labels_are_accepted() -> None:
    model = mlp()
    model.fit(np.zeros((4, 64)), np.array([0.0, 1.0, 2.0, 3.0]), epochs=1, verbose=0)


@pytest.mark.parametrize(("kwargs", "match"), [({"epochs": 0}, "epochs must be > 0"),
                                               ({"batch_size": 0}, "batch_size must be > 0"),
                                               ({"epochs": 1.5}, "epochs must be an int"),
                                               ({"loss": "hinge2"}, "loss='hinge2' is not a "
                                                                    "known loss")])
def test_fit_validates_options(kwargs, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        mlp().fit(np.zeros((4, 64)), np.zeros(4, int), **{"verbose": 0, **kwargs})


def test_sgd_rejects_bad_learning_rate() -> None:
    with pytest.raises(ValueError, match="lr must be > 0, got -0.1"):
        nnxp.optim.SGD(lr=-0.1)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's own overflow warnings
def test_divergence_is_reported_with_the_epoch() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 64)).astype(np.float32) * 10, rng.integers(0, 10, 64)
    model = mlp()
    with pytest.raises(nnxp.TrainingDivergedError, match="epoch"):
        model.fit(X, y, optimizer=nnxp.optim.SGD(lr=1e4), epochs=5, verbose=0)


def test_same_seed_same_training_run(bk) -> None:
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((50, 64)).astype(np.float32), rng.integers(0, 10, 50)
    runs = []
    for _ in range(2):
        model = mlp(seed=3)
        runs.append(model.fit(X, y, epochs=2, batch_size=8, verbose=0)["loss"])
    assert runs[0] == runs[1]


def test_progress_output_can_be_silenced(capsys) -> None:
    mlp().fit(np.zeros((4, 64)), np.zeros(4, int), epochs=2, verbose=0)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# --- the training backward skips what nobody reads --------------------------------------------


class _NoBackward(nnxp.layers.Layer):
    """A parameter-free first layer (like Standardize) whose backward must not run in training."""

    def forward(self, x, *, training=True):
        return x

    def backward(self, dy):
        raise AssertionError("the training backward differentiated a leading parameter-free "
                             "layer")


def test_training_backward_skips_the_data_gradient(bk, rng) -> None:
    X = bk.asarray(rng.standard_normal((6, 5)), "float32")
    y = bk.asarray(rng.integers(0, 3, 6))
    full = nnxp.Sequential([Dense(5, 4), ReLU(), Dense(4, 3)], seed=0)
    lean = nnxp.Sequential([_NoBackward(), Dense(5, 4), ReLU(), Dense(4, 3)], seed=0)
    for a, b in zip(full.layers, lean.layers[1:]):
        b.params.update(a.params)  # the same weights (seed streams are per layer position)
    loss = full.loss
    value, cache = loss.forward(full.forward(X, training=True), y, xp=bk.xp)
    dx = full.backward(loss.backward(cache, xp=bk.xp))
    assert tuple(dx.shape) == (6, 5)  # the default still returns ∂L/∂inputs
    value, cache = loss.forward(lean.forward(X, training=True), y, xp=bk.xp)
    assert lean.backward(loss.backward(cache, xp=bk.xp), need_input_grad=False) is None
    for a, b in zip(full.layers, lean.layers[1:]):
        for key in a.grads:
            np.testing.assert_allclose(nnxp.to_numpy(b.grads[key]), nnxp.to_numpy(a.grads[key]),
                                       rtol=1e-6, atol=1e-7)
    assert lean.layers[1].needs_input_grad  # restored after the pass


def test_dense_returns_no_input_gradient_when_told() -> None:
    layer = Dense(3, 2)
    layer.forward(nnxp.asarray(np.ones((2, 3), np.float32)))
    layer.needs_input_grad = False
    assert layer.backward(nnxp.asarray(np.ones((2, 2), np.float32))) is None
    assert set(layer.grads) == {"W", "b"}


def test_the_loss_can_be_chosen_before_training(bk) -> None:
    """A regression model evaluates and predicts as one before fit, and fit keeps its loss."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 3)).astype(np.float32)
    y = X @ np.array([1.0, -2.0, 0.5], np.float32)
    model = nnxp.Sequential([Dense(3, 8), ReLU(), Dense(8, 1)], seed=0, loss="mse")
    before = model.evaluate(X, y)
    assert set(before) == {"loss"} and before["loss"] > 0
    assert tuple(model.predict(X).shape) == (40, 1)
    model.fit(X, y, optimizer=nnxp.optim.SGD(lr=0.05), epochs=20, batch_size=8, verbose=0)
    assert model.loss.name == "mse" and model.evaluate(X, y)["loss"] < before["loss"]
    with pytest.raises(ValueError, match="loss='hinge2' is not a known loss"):
        nnxp.Sequential([Dense(3, 1)], loss="hinge2")


def test_check_data_evaluate_arrays_and_has_penalty_are_the_public_training_interface(
        bk, rng) -> None:
    """What nnxp.training uses of a model: checked data, device-side evaluation, penalties."""
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, size=20)
    plain = nnxp.Sequential([Dense(4, 8), ReLU(), Dense(8, 3)], seed=0)
    assert plain.has_penalty is False
    Xc, yc = plain.check_data(X, y)
    assert Xc.dtype == plain.dtype and tuple(Xc.shape) == (20, 4) and tuple(yc.shape) == (20,)
    with pytest.raises(ValueError, match="X has 5 features per sample but the model expects 4"):
        plain.check_data(rng.normal(size=(20, 5)), y)
    names, arrays = plain.evaluate_arrays(Xc, yc, [], batch_size=7, prefix="val_")
    assert names == ["val_loss"] and all(a.ndim == 0 for a in arrays)
    assert float(nnxp.to_numpy(arrays[0])) == pytest.approx(plain.evaluate(X, y)["loss"],  # f32
                                                            rel=1e-6)
    penalised = nnxp.Sequential([Dense(4, 8, l2=0.1), ReLU(), Dense(8, 3)], seed=0)
    assert penalised.has_penalty is True
    _, with_penalty = penalised.evaluate_arrays(Xc, yc, [], batch_size=20)
    assert float(nnxp.to_numpy(with_penalty[0])) == pytest.approx(
        float(nnxp.to_numpy(arrays[0])) + float(nnxp.to_numpy(penalised.penalty())), rel=1e-6)


def test_clear_cache_and_the_moved_to_hook() -> None:
    calls = []

    class Tracking(ReLU):
        def moved_to(self, xp, device):
            calls.append((xp.__name__, str(device)))

    layer = Dense(3, 2)
    layer.forward(nnxp.asarray(np.ones((1, 3))), training=True)
    layer.clear_cache()
    with pytest.raises(nnxp.BackwardError):
        layer.backward(nnxp.asarray(np.ones((1, 2))))
    model = nnxp.Sequential([Dense(3, 4), Tracking(), Dense(4, 2)], seed=0)
    model.to("array_api_strict:device1")
    assert calls == [("array_api_strict", "array_api_strict.Device('device1')")]
