"""Inverted dropout and the backend generators behind its masks, on every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnxp
from nnxp.kernels import dropout as k
from nnxp.layers import BackwardError, Dense, Dropout, ReLU
from nnxp.random import BackendGenerator

DTYPES = ["float32", "float64"]
HYPO = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- rate validation --------------------------------------------------------------------------


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, math.nan, math.inf])
def test_rate_outside_zero_one_is_a_value_error_naming_p(bk, p) -> None:
    with pytest.raises(ValueError, match=r"p must be a dropout rate in \[0, 1\), got") as info:
        Dropout(p)
    assert repr(p) in str(info.value)


@pytest.mark.parametrize("p", ["0.5", None, True])
def test_rate_of_the_wrong_type_is_a_type_error(bk, p) -> None:
    with pytest.raises(TypeError, match="p must be a number"):
        Dropout(p)  # type: ignore[arg-type]


# --- the backend generators -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_backend_generator_draws_uniform_on_the_device_reproducibly(bk, dtype) -> None:
    g1, g2 = (BackendGenerator(7, bk.xp, bk.device) for _ in range(2))
    u1, u2 = g1.uniform((50, 40), dtype), g2.uniform((50, 40), dtype)
    assert nnxp.backend.dtype_name(u1.dtype) == dtype
    assert str(nnxp.backend.device_of(u1)) == str(bk.device)
    a = bk.to_numpy(u1)
    np.testing.assert_array_equal(a, bk.to_numpy(u2))
    assert a.min() >= 0.0 and a.max() < 1.0
    assert abs(a.mean() - 0.5) < 0.02 and abs(a.var() - 1 / 12) < 0.01
    assert not np.array_equal(a, bk.to_numpy(g1.uniform((50, 40), dtype)))  # the stream moves
    other = bk.to_numpy(BackendGenerator(8, bk.xp, bk.device).uniform((50, 40), dtype))
    assert not np.array_equal(a, other)


def test_backend_generator_uses_the_backends_own_generator(bk) -> None:
    g = BackendGenerator(11, bk.xp, bk.device)
    got = bk.to_numpy(g.uniform((3, 4), "float64"))
    if bk.name == "torch":
        torch = pytest.importorskip("torch")
        tg = torch.Generator(device=bk.device).manual_seed(11)
        want = torch.rand((3, 4), generator=tg, dtype=torch.float64, device=bk.device)
        np.testing.assert_array_equal(got, want.cpu().numpy())
        assert g.kind == "torch"
    elif bk.name in ("numpy", "array_api_strict"):
        want = np.random.Generator(np.random.PCG64(11)).random((3, 4))
        np.testing.assert_array_equal(got, want)
        assert g.kind == ("numpy" if bk.name == "numpy" else "host")
    else:
        assert g.kind == bk.name


def test_backend_generator_bernoulli_mask_and_seed_checks(bk) -> None:
    m = bk.to_numpy(BackendGenerator(0, bk.xp, bk.device).bernoulli_mask((200, 50), 0.3,
                                                                         "float32"))
    assert set(np.unique(m)) <= {0.0, 1.0} and m.dtype == np.float32
    assert abs(m.mean() - 0.3) < 0.02
    for bad in (-1, 2**63, 1.5, "3"):
        with pytest.raises(ValueError, match="seed"):
            BackendGenerator(bad, bk.xp, bk.device)  # type: ignore[arg-type]
    assert BackendGenerator(None, bk.xp, bk.device).seed >= 0


# --- the kernels and the layer ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_training_keeps_units_scaled_by_one_over_one_minus_p(bk, rng, dtype, p) -> None:
    x = rng.uniform(0.5, 2.0, (64, 32)) * rng.choice([-1.0, 1.0], (64, 32))
    layer = Dropout(p, seed=1)
    y = layer.forward(bk.asarray(x, dtype), training=True)
    assert nnxp.backend.dtype_name(y.dtype) == dtype
    assert str(nnxp.backend.device_of(y)) == str(bk.device)
    ratio = bk.to_numpy(y) / x.astype(dtype)
    kept = ratio != 0
    # independent NumPy reference: kept entries are x / (1 - p), the others 0
    np.testing.assert_allclose(ratio[kept], 1.0 / (1.0 - p), rtol=1e-6)
    assert abs(kept.mean() - (1 - p)) < 4 * math.sqrt(p * (1 - p) / x.size)
    dy = rng.standard_normal(x.shape)
    dx = bk.to_numpy(layer.backward(bk.asarray(dy, dtype)))
    np.testing.assert_allclose(dx, np.where(kept, dy / (1 - p), 0.0), rtol=1e-6, atol=1e-7)


def test_evaluation_is_the_identity_and_keeps_no_cache(bk, rng) -> None:
    x = bk.asarray(rng.standard_normal((5, 4)), "float32")
    layer = Dropout(0.5, seed=0)
    y = layer.forward(x, training=False)
    np.testing.assert_array_equal(bk.to_numpy(y), bk.to_numpy(x))
    with pytest.raises(BackwardError):
        layer.backward(x)


def test_rate_zero_is_the_identity_in_training_too(bk, rng) -> None:
    x = bk.asarray(rng.standard_normal((5, 4)), "float64")
    layer = Dropout(0.0)
    np.testing.assert_array_equal(bk.to_numpy(layer.forward(x, training=True)), bk.to_numpy(x))
    np.testing.assert_array_equal(bk.to_numpy(layer.backward(x)), bk.to_numpy(x))
    with pytest.raises(BackwardError):
        layer.backward(x)


def test_same_seed_gives_the_same_masks_on_a_backend(bk) -> None:
    x = bk.asarray(np.ones((20, 10)), "float32")
    a, b, c = Dropout(0.5, seed=42), Dropout(0.5, seed=42), Dropout(0.5, seed=43)
    first_a = bk.to_numpy(a.forward(x))
    np.testing.assert_array_equal(first_a, bk.to_numpy(b.forward(x)))
    np.testing.assert_array_equal(bk.to_numpy(a.forward(x)), bk.to_numpy(b.forward(x)))
    assert not np.array_equal(first_a, bk.to_numpy(c.forward(x)))
    assert not np.array_equal(first_a, bk.to_numpy(a.forward(x)))  # a fresh mask per call


def test_dropout_kernel_pair_passes_gradcheck(bk, rng) -> None:
    u = BackendGenerator(3, bk.xp, bk.device).uniform((4, 6), "float64")
    mask = k.dropout_mask(u, p=0.4, xp=bk.xp)
    pair = (lambda x: k.dropout_forward(x, mask), lambda dy, _: k.dropout_backward(dy, mask))
    result = nnxp.gradcheck(pair, bk.asarray(rng.standard_normal((4, 6)), "float64"), tol=1e-7)
    assert result.passed, result.errors


def test_model_seed_seeds_every_dropout_layer(bk, rng) -> None:
    X = rng.standard_normal((16, 4))

    def outputs(seed: int) -> list[np.ndarray]:
        model = nnxp.Sequential([Dense(4, 8), Dropout(0.5), ReLU(), Dense(8, 3)], seed=seed)
        xa = bk.asarray(X, "float32")
        return [bk.to_numpy(model.forward(xa, training=True)) for _ in range(2)]

    a, b, c = outputs(5), outputs(5), outputs(6)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], c[0])


def test_fit_with_dropout_is_reproducible_and_predict_is_deterministic(bk, rng) -> None:
    X = rng.standard_normal((40, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)

    def train() -> tuple[list[float], np.ndarray]:
        model = nnxp.Sequential([Dense(4, 16), ReLU(), Dropout(0.3), Dense(16, 2)], seed=9)
        hist = model.fit(X, y, epochs=3, batch_size=8, verbose=0,
                         optimizer=nnxp.optim.SGD(lr=0.1))
        out = model.predict_proba(X)
        np.testing.assert_array_equal(bk.to_numpy(out), bk.to_numpy(
            model.predict_proba(X)))  # evaluation: no dropout, deterministic
        return hist["loss"], bk.to_numpy(out)

    (l1, p1), (l2, p2) = train(), train()
    assert l1 == l2
    np.testing.assert_array_equal(p1, p2)


@HYPO
@given(seed=st.integers(0, 2**32 - 1), p=st.floats(0.0, 0.9),
       dtype=st.sampled_from(DTYPES))
def test_dropout_preserves_the_expectation(bk, seed, p, dtype) -> None:
    x = np.random.default_rng(seed).uniform(-3.0, 3.0, 6)
    n = 4000
    layer = Dropout(p, seed=seed % 1000)
    y = bk.to_numpy(layer.forward(bk.asarray(np.tile(x, (n, 1)), dtype), training=True))
    x = x.astype(dtype).astype(np.float64)  # the input the layer saw
    sd = np.abs(x) * math.sqrt(p / (1.0 - p) / n)  # std of the mean of n masked copies
    # 5 sd, plus room for a few rare drops where the normal approximation fails: uniform draws
    # are multiples of 2^-24 in float32, so even a tiny p drops a unit with probability 2^-24
    rare = 4.0 * np.abs(x) / (n * (1.0 - p))
    np.testing.assert_array_less(np.abs(y.astype(np.float64).mean(axis=0) - x),
                                 5.0 * sd + rare + 1e-6 * np.abs(x) + 1e-12)


@pytest.mark.parametrize("p", [0.25, 0.6])
def test_scaling_rule_matches_torch_functional_dropout(bk, rng, p) -> None:
    torch = pytest.importorskip("torch")
    x = rng.uniform(0.5, 2.0, (50, 20)).astype(np.float32)
    yt = torch.nn.functional.dropout(torch.from_numpy(x), p=p, training=True).numpy()
    y = bk.to_numpy(Dropout(p, seed=0).forward(bk.asarray(x, "float32"), training=True))
    kept_t, kept = yt != 0, y != 0
    # the masks differ (different generators), the rule does not: kept units become x / (1 - p)
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    np.testing.assert_allclose(y[kept & kept_t], yt[kept & kept_t], rtol=1e-6)
    np.testing.assert_allclose(yt[kept_t] / x[kept_t], 1 / (1 - p), rtol=1e-6)
    with torch.no_grad():
        np.testing.assert_array_equal(
            torch.nn.functional.dropout(torch.from_numpy(x), p=p, training=False).numpy(),
            bk.to_numpy(Dropout(p).forward(bk.asarray(x, "float32"), training=False)))


def test_config_round_trip(bk) -> None:
    assert Dropout.from_config(Dropout(0.3).get_config()).p == 0.3
