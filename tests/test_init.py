"""Weight initialisers: every ``INITIALIZERS`` entry on every backend, moments against their
formulas on large draws, orthogonality, seed reproducibility across backends, the symmetry
warning."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from reference import init as ref

import nnxp
from nnxp import backend, init
from nnxp.init import INITIALIZERS, SymmetryWarning, get_initializer
from nnxp.random import Generator

DTYPES = ["float32", "float64"]
CONSTANT = {"zeros", "ones", "constant"}
RANDOM = sorted(set(INITIALIZERS) - CONSTANT)


def draw(bk, fn, shape, dtype="float64", seed=0):
    return fn(shape, rng=Generator(seed), dtype=backend.resolve_dtype(dtype, bk.xp), xp=bk.xp,
              device=bk.device)


def draw_np(fn, shape, dtype="float64", seed=0) -> np.ndarray:
    with nnxp.use_backend("numpy") as info:
        return nnxp.to_numpy(fn(shape, rng=Generator(seed), dtype=dtype, xp=info.xp,
                                device=info.device))


def _quiet(name: str):
    """A context that expects the symmetry warning for the constant initialisers."""
    if name in CONSTANT:
        return pytest.warns(SymmetryWarning)
    return warnings.catch_warnings()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_contract_shape_dtype_device_finite(bk, name, dtype) -> None:
    with _quiet(name):
        W = draw(bk, INITIALIZERS[name], (7, 5), dtype)
    assert tuple(W.shape) == (7, 5)
    assert W.dtype == backend.resolve_dtype(dtype, bk.xp)
    assert str(backend.device_of(W)) == str(bk.device)
    assert backend.isfinite_all(W, bk.xp)


@pytest.mark.parametrize("name", RANDOM)
def test_same_seed_gives_bit_identical_draws_on_every_backend(bk, name) -> None:
    for dtype in DTYPES:
        for shape in ((6, 4), (3, 5, 2)):
            got = bk.to_numpy(draw(bk, INITIALIZERS[name], shape, dtype, seed=123))
            want = draw_np(INITIALIZERS[name], shape, dtype, seed=123)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    a = draw_np(INITIALIZERS[name], (6, 4), seed=1)
    assert not np.array_equal(a, draw_np(INITIALIZERS[name], (6, 4), seed=2))


@pytest.mark.parametrize("name,params,shape", [
    ("random_normal", {}, (400, 400)),
    ("random_normal", {"mean": 0.5, "std": 0.2}, (400, 400)),
    ("random_uniform", {}, (400, 400)),
    ("random_uniform", {"low": 1.0, "high": 3.0}, (400, 400)),
    ("glorot_normal", {}, (400, 200)),
    ("glorot_uniform", {}, (400, 200)),
    ("he_normal", {}, (400, 400)),
    ("he_normal", {}, (100, 400, 4)),  # fan_in = in · receptive = 400
    ("he_uniform", {}, (250, 400)),
    ("lecun_normal", {}, (300, 400)),
    ("orthogonal", {}, (400, 400)),
    ("orthogonal", {"gain": 2.0}, (400, 400)),
])
def test_empirical_moments_match_the_formula(name, params, shape) -> None:
    fn = getattr(init, name)(**params) if name in ("random_normal", "random_uniform",
                                                    "orthogonal") else getattr(init, name)
    W = draw_np(fn, shape, seed=2024)
    want = ref.expected_moments(name, shape, **params)
    n = W.size
    sd = math.sqrt(want["var"])
    # 5 standard errors for the mean; 3 % for the variance (its relative s.e. is √(2/n) ≈ 0.35 %)
    assert abs(W.mean() - want["mean"]) < 5 * sd / math.sqrt(n)
    assert W.var() == pytest.approx(want["var"], rel=0.03)
    if "low" in want:
        assert want["low"] <= W.min() and W.max() < want["high"]
        assert W.min() < want["low"] + 0.01 * sd and W.max() > want["high"] - 0.01 * sd


def test_he_standard_deviation_is_sqrt_two_over_n_not_two_over_sqrt_n() -> None:
    # the erratum: std √(2/N) (He et al., 2015), not 2/√N, which is √2 times too large
    W = draw_np(init.he_normal, (512, 512), seed=3)
    assert W.std() == pytest.approx(math.sqrt(2 / 512), rel=0.02)
    assert W.std() < 0.8 * 2 / math.sqrt(512)


@pytest.mark.parametrize("shape", [(120, 120), (90, 30), (7, 5, 3), (30, 90), (5, 40)])
def test_orthogonal_is_orthogonal(bk, shape) -> None:
    for dtype, atol in (("float64", 1e-12), ("float32", 2e-6)):
        W = bk.to_numpy(draw(bk, init.orthogonal(gain=1.5), shape, dtype, seed=5))
        M = W.astype(np.float64).reshape(shape[0], -1)
        gram = M.T @ M if M.shape[0] >= M.shape[1] else M @ M.T
        np.testing.assert_allclose(gram, 1.5 ** 2 * np.eye(gram.shape[0]), atol=atol * 10)


@pytest.mark.parametrize("name,shape", [("random_normal", (3, 2)), ("glorot_uniform", (4, 4)),
                                        ("he_normal", (5, 1))])
def test_torch_fans_agree_with_nnxp_layout(name, shape) -> None:
    torch = pytest.importorskip("torch")
    # torch stores a dense weight as (out, in), so nnxp's (in, out, *k) is its (out, in, *k)
    # with the first two axes swapped
    for s in (shape, shape + (3,)):
        t_shape = (s[1], s[0]) + s[2:]
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(t_shape))
        assert init.fans(s) == (fan_in, fan_out) == ref.fans(s)


def test_torch_initialisers_have_the_same_variance() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    shape = (300, 200)  # nnxp (in, out); torch weight (out, in)
    pairs = [
        (init.he_normal, lambda w: torch.nn.init.kaiming_normal_(w, nonlinearity="relu")),
        (init.he_uniform, lambda w: torch.nn.init.kaiming_uniform_(w, nonlinearity="relu")),
        (init.glorot_normal, torch.nn.init.xavier_normal_),
        (init.glorot_uniform, torch.nn.init.xavier_uniform_),
    ]
    for ours, theirs in pairs:
        t = theirs(torch.empty(shape[1], shape[0], dtype=torch.float64)).numpy()
        assert draw_np(ours, shape, seed=9).var() == pytest.approx(t.var(), rel=0.05)
    q = torch.nn.init.orthogonal_(torch.empty(200, 300, dtype=torch.float64)).numpy()
    W = draw_np(init.orthogonal(), shape)
    np.testing.assert_allclose(W.T @ W, q @ q.T, atol=1e-10)  # both: orthonormal in 200 dims


# --- the symmetry warning -------------------------------------------------------------------


@pytest.mark.parametrize("fn,what", [(init.zeros, "all-zero"), (init.ones, "all-one"),
                                     (init.constant(0.3), r"constant \(0.3\)")])
def test_constant_weights_warn_about_symmetry(bk, fn, what) -> None:
    with pytest.warns(SymmetryWarning, match=f"{what} initial weights of shape \\(4, 3\\): every "
                                             "unit gets the same weights"):
        W = draw(bk, fn, (4, 3))
    assert np.unique(bk.to_numpy(W)).size == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a bias, a scale or a PReLU slope: no warning
        draw(bk, fn, (3,))
    assert issubclass(SymmetryWarning, UserWarning)


def test_dense_warns_for_zero_weights_but_not_for_its_zero_bias(bk) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer = nnxp.layers.Dense(4, 3)
    assert np.all(bk.to_numpy(layer.params["b"]) == 0)
    with pytest.warns(SymmetryWarning):
        nnxp.layers.Dense(4, 3, init="zeros")


def test_constant_init_really_keeps_units_identical(bk) -> None:
    """The symmetry problem itself: with constant weights the hidden units never differ."""
    L = nnxp.layers
    with pytest.warns(SymmetryWarning):
        first, last = L.Dense(3, 5, init=init.constant(0.1)), L.Dense(5, 1, init="ones")
    model = nnxp.Sequential([first, L.ReLU(), last])
    rng = np.random.default_rng(0)
    model.fit(rng.standard_normal((32, 3)), rng.standard_normal(32), loss="mse", epochs=3,
              verbose=0)
    W = bk.to_numpy(first.params["W"])
    assert not np.allclose(W, 0.1, rtol=0, atol=1e-6)  # trained, yet every column is the same
    np.testing.assert_allclose(W, np.repeat(W[:, :1], 5, axis=1), rtol=1e-6, atol=1e-7)


# --- names, callables, parameters -----------------------------------------------------------


def test_names_callables_and_factories(bk) -> None:
    assert get_initializer("he_normal") is init.he_normal
    assert get_initializer("kaiming_uniform") is init.he_uniform
    assert get_initializer("xavier_normal") is init.glorot_normal
    custom = init.random_normal(std=0.01)
    assert get_initializer(custom) is custom
    assert get_initializer(init.random_normal) is INITIALIZERS["random_normal"]
    assert repr(custom) == "random_normal(mean=0.0, std=0.01)"
    layer = nnxp.layers.Dense(200, 100, init=custom, dtype="float64", seed=1)
    assert bk.to_numpy(layer.params["W"]).std() == pytest.approx(0.01, rel=0.03)
    layer = nnxp.layers.Dense(60, 40, init=init.orthogonal, dtype="float64", seed=1)
    W = bk.to_numpy(layer.params["W"])
    np.testing.assert_allclose(W.T @ W, np.eye(40), atol=1e-12)

    def mine(shape, *, rng, dtype, xp, device):
        return xp.full(shape, 0.5, dtype=dtype, device=device) + rng.uniform(
            shape, dtype=dtype, xp=xp, device=device)

    assert get_initializer(mine) is mine
    W = bk.to_numpy(nnxp.layers.Dense(3, 2, init=mine).params["W"])
    assert np.all((W >= 0.5) & (W < 1.5))


@pytest.mark.parametrize("make,exc,match", [
    (lambda: get_initializer("he"), ValueError,
     r"init='he' is not a known initialiser; valid names are .*he_normal"),
    (lambda: get_initializer(3), ValueError, r"init=3 is not a known initialiser"),
    (lambda: init.random_normal(std=0.0), ValueError, r"std must be > 0, got 0\.0"),
    (lambda: init.random_normal(mean=float("nan")), ValueError, r"mean must be a finite number"),
    (lambda: init.random_uniform(low=1.0, high=1.0), ValueError,
     r"low must be < high, got low=1\.0, high=1\.0"),
    (lambda: init.orthogonal(gain=-1.0), ValueError, r"gain must be > 0, got -1\.0"),
    (lambda: init.constant("a"), ValueError, r"value must be a finite number, got 'a'"),
    (lambda: init.fans(()), ValueError, r"shape must have at least one dimension"),
])
def test_bad_arguments_get_clear_errors(make, exc, match) -> None:
    with pytest.raises(exc, match=match):
        make()


def test_orthogonal_needs_a_matrix(bk) -> None:
    with pytest.raises(ValueError, match=r"needs a shape of 2 or more dimensions, got \(5,\)"):
        draw(bk, init.orthogonal(), (5,))
