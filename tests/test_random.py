"""Seeded randomness does not depend on the backend: same seed, same bits everywhere."""

from __future__ import annotations

import numpy as np
import pytest

import nnxp
from nnxp.layers import Dense, ReLU
from nnxp.random import BackendGenerator, Generator


def _weights(seed: int) -> list[np.ndarray]:
    model = nnxp.Sequential([Dense(6, 5), ReLU(), Dense(5, 3)], seed=seed)
    return [nnxp.to_numpy(layer.params[k]) for layer in model.layers for k in layer.params]


@pytest.fixture(scope="module")
def numpy_weights() -> list[np.ndarray]:
    with nnxp.use_backend("numpy"):
        return _weights(7)


def test_same_seed_gives_bit_identical_weights_on_every_backend(bk, numpy_weights) -> None:
    for got, want in zip(_weights(7), numpy_weights):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_different_seeds_differ(numpy_weights) -> None:
    assert not np.array_equal(_weights(8)[0], numpy_weights[0])


def test_shuffling_order_is_identical_on_every_backend(bk) -> None:
    order = nnxp.to_numpy(Generator(3).permutation(50, xp=bk.xp, device=bk.device))
    np.testing.assert_array_equal(order, np.random.Generator(np.random.PCG64(3)).permutation(50))


def test_layer_seed_is_reproducible_and_model_seed_overrides_it() -> None:
    a, b = Dense(4, 4, seed=1), Dense(4, 4, seed=1)
    np.testing.assert_array_equal(nnxp.to_numpy(a.params["W"]), nnxp.to_numpy(b.params["W"]))
    before = nnxp.to_numpy(a.params["W"]).copy()
    nnxp.Sequential([a], seed=2)
    assert not np.array_equal(before, nnxp.to_numpy(a.params["W"]))


def test_one_stream_per_layer_so_adding_a_layer_keeps_earlier_ones() -> None:
    m1 = nnxp.Sequential([Dense(3, 4), Dense(4, 2)], seed=0)
    m2 = nnxp.Sequential([Dense(3, 4), Dense(4, 2), Dense(2, 2)], seed=0)
    for l1, l2 in zip(m1.layers, m2.layers):
        np.testing.assert_array_equal(nnxp.to_numpy(l1.params["W"]), nnxp.to_numpy(l2.params["W"]))


def test_generator_state_round_trip() -> None:
    g = Generator(5)
    state = g.state
    first = g.host_permutation(10)
    g.state = state
    np.testing.assert_array_equal(g.host_permutation(10), first)


def test_backend_generator_state_round_trip(bk) -> None:
    """get_state/set_state continue a stream, also from a host copy of the state (checkpoints
    store it with nnxp.to_numpy); on cupy too (its cuRAND state buffer, copied to the host)."""
    g = BackendGenerator(11, bk.xp, bk.device)
    g.uniform((3,), "float32")
    state = g.get_state()
    first = bk.to_numpy(g.uniform((4, 5), "float32"))
    for stored in (state, state if isinstance(state, dict) else nnxp.to_numpy(state)):
        other = BackendGenerator(99, bk.xp, bk.device)
        other.set_state(stored)
        np.testing.assert_array_equal(bk.to_numpy(other.uniform((4, 5), "float32")), first)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_seed_is_rejected(bad) -> None:
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        Generator(bad)


def test_training_agrees_across_backends_within_tolerance(bk) -> None:
    """The documented limit: identical starts, results equal up to floating-point rounding."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)

    def train() -> np.ndarray:
        model = nnxp.Sequential([Dense(6, 8), ReLU(), Dense(8, 2)], seed=0)
        model.fit(X, y, optimizer=nnxp.optim.SGD(lr=0.1), epochs=3, batch_size=16, verbose=0)
        return nnxp.to_numpy(model.layers[0].params["W"])

    got = train()
    with nnxp.use_backend("numpy"):
        want = train()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
