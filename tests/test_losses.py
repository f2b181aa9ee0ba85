"""Every loss in ``nnxp.losses.LOSSES`` on every available backend, three oracles each.

Registry-driven: a new entry is covered by the contract, gradcheck, reference and torch tests as
soon as it is listed in ``INPUTS`` below (a test fails until it is).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import losses as ref

import nnxp
from nnxp import backend
from nnxp.kernels import activations as act
from nnxp.kernels import losses as k
from nnxp.losses import (
    LOSSES,
    BinaryCrossEntropy,
    BinaryCrossEntropyWithLogits,
    Huber,
    SoftmaxCrossEntropy,
    get_loss,
)

DTYPES = ["float32", "float64"]
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-10, atol=1e-12)}

# What each loss takes as outputs: real values, logits, probabilities per output, or rows of
# class probabilities.
INPUTS = {
    "mse": "real",
    "half_mse": "real",
    "mae": "real",
    "huber": "real",
    "binary_cross_entropy": "probs",
    "binary_cross_entropy_with_logits": "logits",
    "categorical_cross_entropy": "prob_rows",
    "sparse_categorical_cross_entropy": "prob_rows",
    "softmax_cross_entropy": "logits",
}
CROSS_ENTROPIES = [name for name, cls in LOSSES.items() if cls.is_classifier]
N, D = 6, 3


def _variants(name: str) -> list[str]:
    out = ["plain", "weighted"]
    if LOSSES[name].is_classifier:
        out += ["smoothed", "smoothed_weighted"]
    if name == "huber":
        out.append("delta")
    return out


CASES = [(name, variant) for name in LOSSES for variant in _variants(name)]


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_case(name: str, rng: np.random.Generator, n: int = N, d: int = D
              ) -> tuple[np.ndarray, np.ndarray]:
    """(outputs, targets) as NumPy arrays suited to the loss ``name``."""
    kind, target = INPUTS[name], LOSSES[name].target_type
    if kind == "real":
        outputs = rng.standard_normal((n, d)) * 1.5
    elif kind == "logits":
        outputs = rng.standard_normal((n, d)) * 2.0
    elif kind == "probs":
        outputs = rng.uniform(0.05, 0.95, (n, d))
    else:
        outputs = _softmax_rows(rng.standard_normal((n, d)))
    if target == "real":
        targets = rng.standard_normal((n, d))
    elif target == "binary":  # hard labels in the first rows, soft targets in the others
        targets = (rng.uniform(size=(n, d)) > 0.5).astype(np.float64)
        targets[n // 2:] = rng.uniform(size=(n - n // 2, d))
    elif target == "distribution":  # one-hot rows, then soft rows
        targets = np.eye(d)[rng.integers(0, d, n)]
        targets[n // 2:] = rng.dirichlet(np.ones(d), n - n // 2)
    else:
        targets = rng.integers(0, d, n)
        targets[:d] = np.arange(d)  # every class present
    return outputs, targets


def _options(variant: str, rng: np.random.Generator, n: int = N
             ) -> tuple[dict, np.ndarray | None]:
    """(constructor keyword arguments, sample weights) for a variant."""
    ctor: dict = {}
    if "smoothed" in variant:
        ctor["label_smoothing"] = 0.1
    if variant == "delta":
        ctor["delta"] = 0.5
    w = None
    if "weighted" in variant:
        w = rng.uniform(0.0, 2.0, n)
        w[1] = 0.0
    return ctor, w


def _prepare(bk, name: str, outputs: np.ndarray, targets: np.ndarray, dtype: str,
             loss=None):
    loss = LOSSES[name]() if loss is None else loss
    o = bk.asarray(outputs, dtype)
    t = loss.check_targets(targets, outputs.shape[1], xp=bk.xp, device=bk.device,
                           n_samples=outputs.shape[0], dtype=dtype)
    return loss, o, t


def _same_device(x, bk) -> bool:
    return str(backend.device_of(x)) == str(bk.device)


def test_every_loss_has_test_inputs_and_a_reference() -> None:
    assert set(INPUTS) == set(LOSSES), "add new losses to INPUTS (and to reference.losses)"
    assert set(ref.REFERENCES) == set(LOSSES)
    for name, cls in LOSSES.items():
        assert cls.name == name
        assert cls.target_type in ("real", "binary", "distribution", "class_labels")


# --- the contract: finite value, dtype and device kept ----------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(LOSSES))
def test_contract_finite_dtype_device(bk, rng, name, dtype) -> None:
    outputs, targets = make_case(name, rng)
    loss, o, t = _prepare(bk, name, outputs, targets, dtype)
    value, cache = loss.forward(o, t, xp=bk.xp)
    grad = loss.backward(cache, xp=bk.xp)
    assert value.ndim == 0 and value.dtype == o.dtype and _same_device(value, bk)
    assert tuple(grad.shape) == tuple(o.shape)
    assert grad.dtype == o.dtype and _same_device(grad, bk)
    assert math.isfinite(backend.to_float(value))
    assert backend.isfinite_all(grad, bk.xp)


@pytest.mark.parametrize("name,variant", CASES)
def test_gradcheck_float64(bk, rng, name, variant) -> None:
    outputs, targets = make_case(name, rng)
    ctor, w = _options(variant, rng)
    loss, o, t = _prepare(bk, name, outputs, targets, "float64", LOSSES[name](**ctor))
    wa = None if w is None else bk.asarray(w, "float64")

    def forward(x):
        return loss.forward(x, t, xp=bk.xp, sample_weight=wa)

    def backward(dy, cache):
        return loss.backward(cache, xp=bk.xp) * dy

    result = nnxp.gradcheck((forward, backward), o, raise_on_failure=True)
    assert result.passed and result.n_checked == N * D


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,variant", CASES)
def test_matches_numpy_reference(bk, rng, name, variant, dtype) -> None:
    outputs, targets = make_case(name, rng)
    outputs = outputs.astype(dtype)  # the reference sees exactly the values the kernel sees
    ctor, w = _options(variant, rng)
    loss, o, t = _prepare(bk, name, outputs, targets, dtype, LOSSES[name](**ctor))
    wa = None if w is None else bk.asarray(w, dtype)
    value, cache = loss.forward(o, t, xp=bk.xp, sample_weight=wa)
    grad = loss.backward(cache, xp=bk.xp)
    t_ref = targets if LOSSES[name].target_type == "class_labels" else targets.astype(dtype)
    w_ref = None if w is None else w.astype(dtype)
    want_value, want_grad = ref.REFERENCES[name](outputs, t_ref, w_ref, **ctor)
    np.testing.assert_allclose(backend.to_float(value), want_value, **TOL[dtype])
    np.testing.assert_allclose(bk.to_numpy(grad), want_grad, **TOL[dtype])


def _torch_per_sample(torch, name: str, o, t, ctor: dict):
    """Per-sample losses from torch.nn.functional (reduction="none"), mean over the outputs."""
    F = torch.nn.functional
    eps = ctor.get("label_smoothing", 0.0)
    if name in ("binary_cross_entropy", "binary_cross_entropy_with_logits"):
        t = t * (1 - eps) + eps / 2
    elementwise = {
        "mse": lambda: F.mse_loss(o, t, reduction="none"),
        "half_mse": lambda: 0.5 * F.mse_loss(o, t, reduction="none"),
        "mae": lambda: F.l1_loss(o, t, reduction="none"),
        "huber": lambda: F.huber_loss(o, t, reduction="none", delta=ctor.get("delta", 1.0)),
        "binary_cross_entropy": lambda: F.binary_cross_entropy(o, t, reduction="none"),
        "binary_cross_entropy_with_logits":
            lambda: F.binary_cross_entropy_with_logits(o, t, reduction="none"),
    }
    if name in elementwise:
        return elementwise[name]().mean(dim=1)
    if name == "softmax_cross_entropy":
        return F.cross_entropy(o, t, label_smoothing=eps, reduction="none")
    if name == "sparse_categorical_cross_entropy" and eps == 0.0:
        return F.nll_loss(torch.log(o), t, reduction="none")
    # On probabilities with distribution targets (or smoothed labels): −Σ_k t_k log p_k, by
    # torch autograd. (F.cross_entropy on log p would add a term ∂ log Σp / ∂p = 1 to the
    # gradient, since it renormalises p; the probability losses do not.)
    c = o.shape[1]
    if t.ndim == 1:
        t = F.one_hot(t, c).to(o.dtype)
    t = t * (1 - eps) + eps / c
    return -(t * torch.log(o)).sum(dim=1)


@pytest.mark.parametrize("name,variant", CASES)
def test_matches_torch(bk, rng, name, variant) -> None:
    torch = pytest.importorskip("torch")
    outputs, targets = make_case(name, rng)
    ctor, w = _options(variant, rng)
    loss, o, t = _prepare(bk, name, outputs, targets, "float64", LOSSES[name](**ctor))
    wa = None if w is None else bk.asarray(w, "float64")
    value, cache = loss.forward(o, t, xp=bk.xp, sample_weight=wa)
    grad = loss.backward(cache, xp=bk.xp)

    to = torch.tensor(outputs, requires_grad=True)
    tt = torch.tensor(targets)
    per_sample = _torch_per_sample(torch, name, to, tt, ctor)
    # Keras' "sum over batch size": (l · w).mean(), the same as torch's reduction="none" idiom.
    tl = per_sample.mean() if w is None else (per_sample * torch.tensor(w)).mean()
    tl.backward()
    np.testing.assert_allclose(backend.to_float(value), tl.item(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bk.to_numpy(grad), to.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_plain_losses_equal_torch_default_reduction(rng) -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    o, t = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    to, tt = torch.tensor(o), torch.tensor(t)
    for name, want in (("mse", F.mse_loss(to, tt)), ("mae", F.l1_loss(to, tt)),
                       ("huber", F.huber_loss(to, tt, delta=0.7))):
        loss = Huber(delta=0.7) if name == "huber" else get_loss(name)
        assert math.isclose(float(loss(o, t)), want.item(), rel_tol=1e-12)
    labels = rng.integers(0, 4, 5)
    want = F.cross_entropy(to, torch.tensor(labels), label_smoothing=0.2)
    got = SoftmaxCrossEntropy(label_smoothing=0.2)(o, labels)
    assert math.isclose(float(got), want.item(), rel_tol=1e-12)


# --- properties -----------------------------------------------------------------------------


_EXTREME = st.sampled_from([-1e4, -50.0, 0.0, 50.0, 1e4]) | st.floats(-1e4, 1e4)


@pytest.mark.parametrize("dtype", ["float32"])  # float32 saturates first: the harder case
@pytest.mark.parametrize("name", CROSS_ENTROPIES)
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cross_entropies_finite_for_extreme_logits(bk, name, dtype, data) -> None:
    xp = bk.xp
    logits = np.array(data.draw(st.lists(_EXTREME, min_size=12, max_size=12))).reshape(4, 3)
    target_type = LOSSES[name].target_type
    if target_type == "class_labels":
        targets = np.array(data.draw(st.lists(st.integers(0, 2), min_size=4, max_size=4)))
    elif target_type == "binary":
        targets = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=12,
                                              max_size=12))).reshape(4, 3)
    else:
        targets = np.eye(3)[data.draw(st.lists(st.integers(0, 2), min_size=4, max_size=4))]
    z = bk.asarray(logits, dtype)
    if INPUTS[name] == "probs":
        z = act.sigmoid(z, xp=xp)
    elif INPUTS[name] == "prob_rows":
        z = act.softmax(z, xp=xp)
    loss = LOSSES[name](label_smoothing=data.draw(st.sampled_from([0.0, 0.1])))
    t = loss.check_targets(targets, 3, xp=xp, device=bk.device, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or divide-by-zero warnings either
        value, cache = loss.forward(z, t, xp=xp)
        grad = loss.backward(cache, xp=xp)
    assert math.isfinite(backend.to_float(value))
    assert backend.isfinite_all(grad, xp)


def test_softmax_cross_entropy_at_extreme_logits_is_exact(bk) -> None:
    z = bk.asarray([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], "float32")
    y = bk.asarray(np.array([0, 0]))
    value, cache = k.softmax_cross_entropy(z, y, xp=bk.xp)
    # sample 0 is certain and right (loss 0), sample 1 certain and wrong (loss 2e4)
    assert backend.to_float(value) == pytest.approx(1e4)
    np.testing.assert_allclose(bk.to_numpy(k.softmax_cross_entropy_backward(cache, xp=bk.xp)),
                               [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-7)


def test_sample_weight_is_normalised_by_the_batch_size(bk, rng) -> None:
    """``(1/N) Σ w_i l_i`` (Keras), not ``Σ w_i l_i / Σ w_i`` (scikit-learn's np.average)."""
    o, t = rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    per_sample = ((o - t) ** 2).mean(axis=1)
    loss = get_loss("mse")
    oa, ta = bk.asarray(o), bk.asarray(t)
    ones = backend.to_float(loss.forward(oa, ta, xp=bk.xp, sample_weight=np.ones(4))[0])
    assert ones == pytest.approx(per_sample.mean(), rel=1e-12)
    w = np.array([0.0, 1.0, 2.0, 3.0])
    got = backend.to_float(loss.forward(oa, ta, xp=bk.xp, sample_weight=w)[0])
    assert got == pytest.approx((w * per_sample).sum() / 4, rel=1e-12)
    assert got != pytest.approx((w * per_sample).sum() / w.sum(), rel=1e-6)
    doubled = backend.to_float(loss.forward(oa, ta, xp=bk.xp, sample_weight=2 * w)[0])
    assert doubled == pytest.approx(2 * got, rel=1e-12)
    checked = nnxp.validation.check_sample_weight(w, 4, dtype=oa.dtype, xp=bk.xp,
                                                  device=bk.device)
    fast = loss.forward(oa, ta, xp=bk.xp, sample_weight=checked, validate_sample_weight=False)
    assert backend.to_float(fast[0]) == got


def test_float64_targets_follow_float32_outputs(bk, rng) -> None:
    o, t = rng.standard_normal((5, 1)), rng.standard_normal(5)
    loss = get_loss("huber")
    value, cache = loss.forward(bk.asarray(o, "float32"), bk.asarray(t, "float64"), xp=bk.xp)
    grad = loss.backward(cache, xp=bk.xp)
    assert value.dtype == bk.xp.float32 and grad.dtype == bk.xp.float32
    assert tuple(grad.shape) == (5, 1)  # (N,) targets of a 1-output model are (N, 1)


def test_predict_proba_and_predictions(bk) -> None:
    xp = bk.xp
    logits = bk.asarray([[2.0], [-1.0], [0.0]], "float64")
    y = bk.asarray([[1.0], [1.0], [0.0]], "float64")
    with_logits = BinaryCrossEntropyWithLogits()
    np.testing.assert_allclose(bk.to_numpy(with_logits.predict_proba(logits, xp=xp)),
                               1 / (1 + np.exp(-np.array([[2.0], [-1.0], [0.0]]))), rtol=1e-12)
    assert bk.to_numpy(with_logits.predict(logits, xp=xp)).tolist() == [1, 0, 1]
    assert backend.to_float(with_logits.n_correct(logits, y, xp=xp)) == 1
    probs = bk.asarray([[0.9], [0.2], [0.5]], "float64")
    on_probs = BinaryCrossEntropy()
    assert on_probs.predict_proba(probs, xp=xp) is probs
    assert bk.to_numpy(on_probs.predict(probs, xp=xp)).tolist() == [1, 0, 1]
    z = bk.asarray([[1.0, 2.0, 0.5], [3.0, -1.0, 0.0]], "float64")
    p = SoftmaxCrossEntropy().predict_proba(z, xp=xp)
    np.testing.assert_allclose(bk.to_numpy(p), _softmax_rows(bk.to_numpy(z)), rtol=1e-12)
    assert get_loss("categorical_cross_entropy").predict_proba(p, xp=xp) is p
    assert not hasattr(get_loss("mse"), "predict_proba")
    assert get_loss("mse").predict(z, xp=xp) is z


# --- objects, registry, options ------------------------------------------------------------


def test_get_loss_by_name_class_and_instance() -> None:
    assert isinstance(get_loss("huber"), Huber) and get_loss("huber").delta == 1.0
    assert isinstance(get_loss(Huber), Huber)
    h = Huber(delta=2.0)
    assert get_loss(h) is h
    assert repr(h) == "Huber(delta=2.0)"
    s = SoftmaxCrossEntropy(label_smoothing=0.1)
    assert type(s)(**s.get_config()).label_smoothing == 0.1
    with pytest.raises(ValueError, match="loss='nope' is not a known loss; valid names are"):
        get_loss("nope")


@pytest.mark.parametrize("ctor,match", [
    (lambda: Huber(delta=0.0), r"delta must be > 0, got 0\.0"),
    (lambda: Huber(delta=-1), r"delta must be > 0, got -1"),
    (lambda: SoftmaxCrossEntropy(label_smoothing=1.5),
     r"label_smoothing must lie in \[0, 1\], got 1\.5"),
    (lambda: BinaryCrossEntropy(label_smoothing=-0.1), r"label_smoothing must lie in \[0, 1\]"),
    (lambda: BinaryCrossEntropy(eps=0.5), r"eps must lie in \(0, 0\.5\), got 0\.5"),
])
def test_bad_options_are_rejected(ctor, match) -> None:
    with pytest.raises(ValueError, match=match):
        ctor()


# --- target validation ----------------------------------------------------------------------


def _check(bk, name: str, y, n_outputs: int = 3, n_samples: int | None = None):
    return get_loss(name).check_targets(y, n_outputs, xp=bk.xp, device=bk.device,
                                        n_samples=n_samples)


@pytest.mark.parametrize("name,y,n_outputs,n_samples,match", [
    ("mse", np.zeros((4, 2)), 1, None,
     r"y must have shape \(n_samples, 1\) or \(n_samples,\) for a model with 1 output\(s\), "
     r"got shape \(4, 2\)"),
    ("mse", np.zeros(4), 3, None, r"y must have shape \(n_samples, 3\) .* got shape \(4,\)"),
    ("mae", np.zeros((4, 3, 1)), 3, None, r"got shape \(4, 3, 1\)"),
    ("huber", np.zeros((5, 3)), 3, 6, r"y has 5 rows but X has 6 samples"),
    ("mse", np.array([[0.0], [np.nan]]), 1, None, r"y contains 1 NaN or infinite value"),
    ("half_mse", np.array([np.inf, 1.0, -np.inf]), 1, None, r"y contains 2 NaN or infinite"),
    ("binary_cross_entropy", np.array([0.0, 1.5]), 1, None,
     r"y must hold probabilities in \[0, 1\], got values in \[0, 1\.5\]"),
    ("binary_cross_entropy_with_logits", np.array([[-0.5, 1.0]]), 2, None,
     r"y must hold probabilities in \[0, 1\], got values in \[-0\.5, 1\]"),
    ("binary_cross_entropy_with_logits", np.array([0.0, np.nan]), 1, None, r"y contains 1 NaN"),
    ("categorical_cross_entropy", np.array([0, 2, 1]), 3, None,
     r"got shape \(3,\) \(integer class labels need "
     r"loss='sparse_categorical_cross_entropy'"),
    ("categorical_cross_entropy", np.array([[1.0, 1.0, 0.0]]), 3, None,
     r"y must hold one-hot or probability rows that sum to 1, got row sums in \[2, 2\]"),
    ("categorical_cross_entropy", np.array([[1.5, -0.5, 0.0]]), 3, None,
     r"y must hold probabilities in \[0, 1\]"),
    ("sparse_categorical_cross_entropy", np.array([0, 3]), 3, None,
     r"y has labels in \[0, 3\], but the model has 3 outputs, so labels must lie in \[0, 3\)"),
    ("sparse_categorical_cross_entropy", np.array([-1, 2]), 3, None,
     r"labels must lie in \[0, 3\)"),
    ("sparse_categorical_cross_entropy", np.array([0.0, 1.5]), 3, None,
     r"y must hold integer class labels, got the non-integer value 1\.5"),
    ("softmax_cross_entropy", np.array([[0], [1]]), 3, None,
     r"y must be 1-D integer class labels of shape \(n_samples,\), got shape \(2, 1\)"),
    ("softmax_cross_entropy", np.array([0.0, np.nan]), 3, None, r"y contains NaN or inf"),
    ("softmax_cross_entropy", np.array([0, 1, 2]), 3, 4, r"y has 3 labels but X has 4 samples"),
])
def test_bad_targets_get_clear_errors(bk, name, y, n_outputs, n_samples, match) -> None:
    with pytest.raises(ValueError, match=match):
        _check(bk, name, y, n_outputs, n_samples)


def test_string_targets_are_a_type_error(bk) -> None:
    with pytest.raises(TypeError, match=r"y must (hold|be an array or nested list of) numbers"):
        _check(bk, "mse", np.array([["a"], ["b"]]), 1)


@pytest.mark.parametrize("w,match", [
    (np.ones(3), r"sample_weight must have shape \(4,\), one weight per sample, got shape \(3,\)"),
    (np.ones((4, 1)), r"sample_weight must have shape \(4,\).*got shape \(4, 1\)"),
    (np.array([1.0, -1.0, 1.0, 1.0]), r"sample_weight must be >= 0, got a minimum of -1"),
    (np.array([1.0, np.nan, 1.0, 1.0]), r"sample_weight contains NaN or infinite values"),
])
def test_bad_sample_weight_gets_clear_errors(bk, rng, w, match) -> None:
    o, t = bk.asarray(rng.standard_normal((4, 2))), bk.asarray(rng.standard_normal((4, 2)))
    with pytest.raises(ValueError, match=match):
        get_loss("mse").forward(o, t, xp=bk.xp, sample_weight=w)


def test_kernels_refuse_targets_that_would_broadcast(bk) -> None:
    o, t = bk.asarray(np.zeros((4, 1))), bk.asarray(np.zeros(4))
    with pytest.raises(ValueError, match=r"same shape, got outputs \(4, 1\) and targets \(4,\)"):
        k.mse(o, t, xp=bk.xp)


# --- through the model ----------------------------------------------------------------------


def _mlp(n_in: int, n_out: int, hidden: int = 32) -> nnxp.Sequential:
    L = nnxp.layers
    return nnxp.Sequential([L.Dense(n_in, hidden), L.ReLU(), L.Dense(hidden, n_out)], seed=0)


def test_regression_fit_learns_sin(bk) -> None:
    x = np.linspace(-3, 3, 128)[:, None]
    y = np.sin(x[:, 0])
    model = _mlp(1, 1)
    model.loss = get_loss("mse")  # evaluate uses the model's loss (set by fit)
    before = model.evaluate(x, y)["loss"]
    hist = model.fit(x, y, loss="mse", epochs=60, batch_size=16, verbose=0,
                     optimizer=nnxp.optim.SGD(lr=0.02))
    after = model.evaluate(x, y)
    assert set(after) == {"loss"} and "accuracy" not in hist.history
    assert after["loss"] < 0.25 * y.var() and after["loss"] < 0.05 * before
    pred = model.predict(x)
    assert tuple(pred.shape) == (128, 1) and pred.dtype == bk.xp.float32
    np.testing.assert_allclose(np.mean((bk.to_numpy(pred)[:, 0] - y) ** 2), after["loss"],
                               rtol=1e-4)
    with pytest.raises(TypeError, match="predict_proba needs a classification loss"):
        model.predict_proba(x)


def test_regression_targets_as_column_or_vector_train_alike(bk, rng) -> None:
    x = rng.standard_normal((40, 2))
    y = x @ np.array([1.0, -2.0]) + 0.5
    runs = []
    for targets in (y, y[:, None]):
        model = _mlp(2, 1, hidden=8)
        runs.append(model.fit(x, targets, loss=Huber(delta=2.0), epochs=3, verbose=0,
                              optimizer=nnxp.optim.SGD(lr=0.01))["loss"])
        assert isinstance(model.loss, Huber) and model.loss.delta == 2.0
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match=r"y must have shape \(n_samples, 1\)"):
        _mlp(2, 1, hidden=8).fit(x, np.stack([y, y], axis=1), loss="mse", verbose=0)


def test_binary_classifier_with_logits_through_fit(bk, rng) -> None:
    x = rng.standard_normal((120, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.float64)
    model = _mlp(2, 1, hidden=8)
    hist = model.fit(x, y, loss="binary_cross_entropy_with_logits", epochs=15, batch_size=40,
                     verbose=0, optimizer=nnxp.optim.SGD(lr=0.5))
    assert 0.9 <= hist["accuracy"][-1] <= 1.0
    pred = bk.to_numpy(model.predict(x))
    proba = bk.to_numpy(model.predict_proba(x))
    assert pred.shape == (120,) and proba.shape == (120, 1)
    np.testing.assert_array_equal(pred, (proba[:, 0] >= 0.5).astype(np.int64))
    assert model.evaluate(x, y)["accuracy"] == pytest.approx(np.mean(pred == y))


def test_label_smoothing_through_fit(bk, rng) -> None:
    x = rng.standard_normal((90, 2))
    y = np.digitize(x[:, 0], [-0.5, 0.5])
    model = _mlp(2, 3, hidden=16)
    hist = model.fit(x, y, loss=SoftmaxCrossEntropy(label_smoothing=0.1), epochs=20,
                     batch_size=45, verbose=0, optimizer=nnxp.optim.SGD(lr=0.5))
    assert hist["accuracy"][-1] > 0.85
    # with smoothing the loss cannot fall to 0: its floor is the entropy of the smoothed target
    t = np.full(3, 0.1 / 3) + np.array([0.9, 0, 0])
    assert hist["loss"][-1] > -(t * np.log(t)).sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_float32_many_classes_matches_torch(bk, rng, smoothing,
                                                                  weighted) -> None:
    """The fused kernel (one exp, a row-wise dot for Σ t d, in-place scaling) in float32 on a
    wider problem than the contract cases, against torch; the backward may be taken twice."""
    torch = pytest.importorskip("torch")
    z = (rng.standard_normal((48, 300)) * 4).astype(np.float32)
    y = rng.integers(0, 300, size=48)
    w = rng.uniform(0.0, 2.0, size=48).astype(np.float32) if weighted else None
    value, cache = k.softmax_cross_entropy(
        bk.asarray(z, "float32"), bk.asarray(y), xp=bk.xp, label_smoothing=smoothing,
        sample_weight=None if w is None else bk.asarray(w, "float32"))
    first = bk.to_numpy(k.softmax_cross_entropy_backward(cache, xp=bk.xp)).copy()
    second = bk.to_numpy(k.softmax_cross_entropy_backward(cache, xp=bk.xp))
    np.testing.assert_array_equal(first, second)  # the cache is not consumed or changed

    tz = torch.tensor(z, requires_grad=True)
    per_sample = torch.nn.functional.cross_entropy(tz, torch.tensor(y), reduction="none",
                                                   label_smoothing=smoothing)
    tl = per_sample.mean() if w is None else (per_sample * torch.tensor(w)).mean()
    tl.backward()
    assert bk.to_numpy(value).dtype == np.float32
    np.testing.assert_allclose(backend.to_float(value), tl.item(), rtol=2e-6)
    np.testing.assert_allclose(first, tz.grad.numpy(), rtol=1e-4, atol=1e-8)
