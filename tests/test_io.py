"""Persistence: save/load, the file format's refusals, atomic writes, checkpoints and resume,
moving models between backends, and the model summary."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import nnxp
from nnxp import archive
from nnxp import io as nio
from nnxp.layers import Dense, Layer, ReLU
from nnxp.layers.core import LAYERS
from nnxp.optim import SGD


def mlp(seed: int = 0, n_in: int = 5, n_out: int = 3) -> nnxp.Sequential:
    return nnxp.Sequential([Dense(n_in, 16), ReLU(), Dense(16, n_out)], seed=seed)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5).astype(np.int64)
    return X, y


def params_of(model: nnxp.Sequential) -> list[np.ndarray]:
    return [nnxp.to_numpy(layer.params[k]) for layer in model.layers for k in layer.params]


def buffers_of(model: nnxp.Sequential) -> list[np.ndarray]:
    return [nnxp.to_numpy(layer.buffers[k]) for layer in model.layers for k in layer.buffers]


def assert_same_arrays(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


# --- round trips ------------------------------------------------------------------------


def test_round_trip_from_every_backend_loads_on_numpy(bk, data, tmp_path) -> None:
    X, y = data
    model = mlp()
    model.fit(X, y, epochs=2, verbose=0)
    path = tmp_path / "model.npz"
    model.save(path)
    same = nnxp.load(path)  # on the saving backend (the fixture's active one)
    np.testing.assert_array_equal(nnxp.to_numpy(same.predict_proba(X)),
                                  nnxp.to_numpy(model.predict_proba(X)))
    with nnxp.use_backend("numpy"):
        loaded = nnxp.load(path)
    assert loaded.xp is not None and isinstance(loaded.predict(X), np.ndarray)
    assert_same_arrays(params_of(loaded), params_of(model))
    np.testing.assert_allclose(loaded.predict_proba(X), nnxp.to_numpy(model.predict_proba(X)),
                               rtol=1e-5, atol=1e-6)
    assert loaded.loss.name == model.loss.name and loaded.seed == 0
    assert [type(a) for a in loaded.layers] == [type(a) for a in model.layers]


def test_load_onto_a_named_backend(data, tmp_path) -> None:
    pytest.importorskip("array_api_strict")
    X, y = data
    model = mlp()
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = nnxp.load(path, backend="array_api_strict", device="device1")
    assert "device1" in str(loaded.layers[0].params["W"].device)
    np.testing.assert_allclose(nnxp.to_numpy(loaded.predict_proba(X)), model.predict_proba(X),
                               rtol=1e-6)
    assert nnxp.get_backend().name == "numpy"  # the active backend is left as it was


LAYER_STACKS = {
    "dense_relu": lambda: [Dense(5, 8), ReLU(), Dense(8, 3)],
    "dense_f64_nobias": lambda: [Dense(5, 4, bias=False, dtype="float64"), ReLU(),
                                 Dense(4, 3, dtype="float64")],
}
for _name, _stack in {
    "batchnorm_dropout": lambda: [Dense(5, 8), LAYERS["BatchNorm1d"](8), ReLU(),
                                  LAYERS["Dropout"](0.3), Dense(8, 3)],
    "layernorm_prelu": lambda: [Dense(5, 8), LAYERS["LayerNorm"](8), LAYERS["PReLU"](),
                                Dense(8, 3)],
    "maxout_tanh": lambda: [LAYERS["Maxout"](5, 6, 2), LAYERS["Tanh"](), Dense(6, 3)],
}.items():
    if all(name in LAYERS for name in ("BatchNorm1d", "Dropout", "LayerNorm", "PReLU",
                                       "Maxout", "Tanh")):
        LAYER_STACKS[_name] = _stack


@pytest.mark.parametrize("stack", sorted(LAYER_STACKS))
def test_every_layer_kind_round_trips(bk, stack, data, tmp_path) -> None:
    X, y = data
    model = nnxp.Sequential(LAYER_STACKS[stack](), seed=3)
    model.fit(X, y, epochs=1, verbose=0, batch_size=16)  # moves running statistics
    model.save(tmp_path / "m.npz")
    loaded = nnxp.load(tmp_path / "m.npz")
    assert_same_arrays(params_of(loaded), params_of(model))
    assert_same_arrays(buffers_of(loaded), buffers_of(model))
    for a, b in zip(model.layers, loaded.layers):
        assert type(a) is type(b) and a.get_config() == b.get_config()
    np.testing.assert_array_equal(nnxp.to_numpy(loaded.predict_proba(X)),
                                  nnxp.to_numpy(model.predict_proba(X)))


class Scale(Layer):
    """A user's own layer: y = a · x with a learnable scalar a and a config argument."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.init_value = init
        self.params["a"] = self.xp.full((1,), init, dtype=self.xp.float32, device=self.device)

    def get_config(self):
        return {"init": self.init_value}

    def forward(self, x, *, training=True):
        self._cache = x if training else None
        return x * self.params["a"]

    def backward(self, dy):
        x = self._take_cache()
        self.grads["a"] = self.xp.reshape(self.xp.sum(dy * x), (1,))
        return dy * self.params["a"]


class NoConfig(Layer):
    def __init__(self, factor: float = 2.0) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x, *, training=True):
        return x * self.factor


def test_a_users_layer_round_trips_through_the_registry(bk, data, tmp_path) -> None:
    X, y = data
    assert LAYERS[f"{__name__}.Scale"] is Scale
    model = nnxp.Sequential([Dense(5, 3), Scale(0.5)], seed=1)
    model.fit(X, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = nnxp.load(tmp_path / "m.npz")
    assert isinstance(loaded.layers[1], Scale) and loaded.layers[1].init_value == 0.5
    assert_same_arrays(params_of(loaded), params_of(model))


def test_a_layer_with_arguments_but_no_get_config_cannot_be_saved(tmp_path) -> None:
    model = nnxp.Sequential([Dense(5, 3), NoConfig(3.0)])
    with pytest.raises(TypeError, match=r"NoConfig.*factor.*get_config"):
        model.save(tmp_path / "m.npz")
    assert not os.listdir(tmp_path)


def test_unregistered_layer_class_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "m.npz"
    mlp().save(path)
    record, arrays = nio.read(path)
    record["layers"][1]["class"] = "somewhere.Unknown"
    _write_raw(path, record, arrays)
    with pytest.raises(nnxp.FormatError, match=r"'somewhere.Unknown'.*not registered"):
        nnxp.load(path)


def test_metadata_and_encoding_of_nested_values(tmp_path) -> None:
    model = mlp()
    model.metadata = {"classes": ["cat", "dog", "emu"], "pair": (1, 2.5), "by_int": {3: "x"},
                      "nan": float("nan"), "mean": np.arange(3.0), "np_scalar": np.float64(2.5)}
    model.save(tmp_path / "m.npz")
    meta = nnxp.load(tmp_path / "m.npz").metadata
    assert meta["classes"] == ["cat", "dog", "emu"] and meta["pair"] == (1, 2.5)
    assert meta["by_int"] == {3: "x"} and np.isnan(meta["nan"])
    np.testing.assert_array_equal(meta["mean"], np.arange(3.0))
    assert meta["np_scalar"] == 2.5 and type(meta["np_scalar"]) is float


def test_the_record_is_json_in_a_uint8_array(tmp_path) -> None:
    path = tmp_path / "m.npz"
    mlp().save(path)
    with np.load(path, allow_pickle=False) as archive:
        raw = archive[nio.RECORD_KEY]
        names = set(archive.files)
    assert raw.dtype == np.uint8 and raw.ndim == 1
    record = json.loads(raw.tobytes().decode())
    assert record["format"] == "nnxp" and record["format_version"] == nio.FORMAT_VERSION
    assert record["dtype"] == "float32" and record["loss"]["name"] == "softmax_cross_entropy"
    assert record["layers"][0] ["params"]["W"] == {"__array__": "layers/0/params/W"}
    assert {"layers/0/params/W", "layers/0/params/b", "layers/2/params/W"} <= names


# --- refusals ---------------------------------------------------------------------------


def _write_raw(path, record, arrays) -> None:
    payload = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)
    np.savez(path, **{nio.RECORD_KEY: payload, **arrays})
    if not str(path).endswith(".npz"):
        os.replace(f"{path}.npz", path)


def test_a_pickle_is_refused(tmp_path) -> None:
    path = tmp_path / "model.npz"
    with open(path, "wb") as f:
        pickle.dump({"W": np.ones(3)}, f)
    with pytest.raises(nnxp.FormatError, match="not an nnxp model file"):
        nnxp.load(path)


def test_an_object_array_inside_the_archive_is_refused(tmp_path) -> None:
    path = tmp_path / "model.npz"
    nnxp.Sequential([Dense(3, 2)], seed=0).save(path)
    record, arrays = nio.read(path)
    arrays["layers/0/params/W"] = np.array([{"a": 1}], dtype=object)  # the record refers to it
    payload = np.frombuffer(json.dumps(record).encode(), np.uint8)
    np.savez(path, **{nio.RECORD_KEY: payload}, **arrays)
    with pytest.raises(nnxp.FormatError, match="never pickled"):
        nnxp.load(path)


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r.pop("format_version"), "format_version"),
    (lambda r: r.update(format_version=99), "format_version 99.*newer"),
    (lambda r: r.update(format_version="1"), "format_version"),
    (lambda r: r.update(format="other"), "format='nnxp'"),
    (lambda r: r.pop("layers"), "'layers'"),
])
def test_wrong_or_missing_format_version_is_refused(mutate, match, tmp_path) -> None:
    path = tmp_path / "m.npz"
    mlp().save(path)
    record, arrays = nio.read(path)
    mutate(record)
    _write_raw(path, record, arrays)
    with pytest.raises(nnxp.FormatError, match=match):
        nnxp.load(path)


def test_missing_record_bare_npy_and_missing_array_are_refused(tmp_path) -> None:
    plain = tmp_path / "plain.npz"
    np.savez(plain, W=np.ones(3))
    with pytest.raises(nnxp.FormatError, match="no '__nnxp__' record"):
        nnxp.load(plain)
    npy = tmp_path / "a.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(nnxp.FormatError, match="single .npy"):
        nnxp.load(npy)
    path = tmp_path / "m.npz"
    mlp().save(path)
    record, arrays = nio.read(path)
    del arrays["layers/2/params/W"]
    _write_raw(path, record, arrays)
    with pytest.raises(nnxp.FormatError, match="layers/2/params/W"):
        nnxp.load(path)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        nnxp.load(tmp_path / "absent.npz")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_a_truncated_file_is_refused(keep, tmp_path) -> None:
    path = tmp_path / "m.npz"
    mlp().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(nnxp.FormatError):
        nnxp.load(path)


def test_a_corrupted_byte_is_caught_by_the_zip_checksum(tmp_path) -> None:
    path = tmp_path / "m.npz"
    mlp().save(path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("layers/0/params/W.npy")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF  # inside W's data
    path.write_bytes(bytes(data))
    with pytest.raises(nnxp.FormatError, match="corrupt"):
        nnxp.load(path)


def test_shape_mismatch_between_config_and_arrays_is_refused(tmp_path) -> None:
    path = tmp_path / "m.npz"
    mlp().save(path)
    record, arrays = nio.read(path)
    arrays["layers/0/params/W"] = np.ones((5, 17), np.float32)
    _write_raw(path, record, arrays)
    with pytest.raises(nnxp.FormatError, match=r"shape \(5, 17\).*expects \(5, 16\)"):
        nnxp.load(path)


# --- atomic writes ----------------------------------------------------------------------


def test_a_failing_write_leaves_the_old_file_intact(monkeypatch, data, tmp_path) -> None:
    X, _ = data
    path = tmp_path / "model.npz"
    old = mlp(seed=0)
    old.save(path)
    before = path.read_bytes()

    def half_write_then_crash(file, arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(nnxp.backend, "save_npz", half_write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        mlp(seed=1).save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # no temporary file left behind
    monkeypatch.undo()
    np.testing.assert_array_equal(nnxp.load(path).predict_proba(X), old.predict_proba(X))


def test_overwrite_false_never_replaces_an_existing_file(tmp_path) -> None:
    path = tmp_path / "model.npz"
    mlp(seed=0).save(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        mlp(seed=1).save(path, overwrite=False)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.npz"]
    mlp(seed=1).save(path)  # overwrite=True (the default) replaces it
    assert path.read_bytes() != before


def test_saved_file_has_ordinary_permissions_and_missing_directory_is_clear(tmp_path) -> None:
    path = tmp_path / "model.npz"
    mlp().save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mlp().save(tmp_path / "missing" / "model.npz")


# --- checkpoints and resume -------------------------------------------------------------


def _optimizers():
    return [("sgd", lambda: SGD(lr=0.05)),
            ("sgd_momentum", lambda: SGD(lr=0.05, momentum=0.9)),
            ("adam", lambda: nnxp.optim.Adam(lr=0.01))]


@pytest.mark.parametrize("name, make_opt", _optimizers(), ids=[n for n, _ in _optimizers()])
def test_checkpoint_holds_optimizer_state_and_counters(bk, name, make_opt, data,
                                                       tmp_path) -> None:
    X, y = data
    model = mlp()
    model.fit(X, y, optimizer=make_opt(), epochs=2, batch_size=16, verbose=0)
    model.save(tmp_path / "ckpt.npz")
    loaded = nnxp.load(tmp_path / "ckpt.npz")
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.iterations == model.optimizer.iterations == 8
    assert loaded.epochs_trained == 2
    assert loaded.data_rng.state == model.data_rng.state
    a, b = model.optimizer.state_dict(), loaded.optimizer.state_dict()
    assert json.dumps(archive._encode(a, {}, "s")) == json.dumps(archive._encode(b, {}, "s"))
    without = tmp_path / "weights.npz"
    model.save(without, include_optimizer=False)
    assert getattr(nnxp.load(without), "optimizer", None) is None


@pytest.mark.parametrize("name, make_opt", _optimizers(), ids=[n for n, _ in _optimizers()])
def test_resume_is_bit_identical_to_an_uninterrupted_run(bk, name, make_opt, data,
                                                          tmp_path) -> None:
    X, y = data
    full = mlp(seed=5)
    full.fit(X, y, optimizer=make_opt(), epochs=4, batch_size=16, verbose=0)

    first = mlp(seed=5)
    first.fit(X, y, optimizer=make_opt(), epochs=2, batch_size=16, verbose=0)
    first.save(tmp_path / "ckpt.npz")
    del first

    fresh = mlp(seed=123)  # other initial weights and shuffling: all come from the checkpoint
    history = fresh.fit(X, y, optimizer=make_opt(), epochs=4, batch_size=16, verbose=0,
                        resume_from=tmp_path / "ckpt.npz")
    assert history.epoch == [3, 4]
    assert_same_arrays(params_of(fresh), params_of(full))

    reloaded = nnxp.load(tmp_path / "ckpt.npz")  # optimizer rebuilt from the checkpoint
    reloaded.fit(X, y, epochs=4, batch_size=16, verbose=0, resume_from=tmp_path / "ckpt.npz")
    assert_same_arrays(params_of(reloaded), params_of(full))
    assert reloaded.optimizer.iterations == full.optimizer.iterations


def test_resume_into_a_different_architecture_is_refused(data, tmp_path) -> None:
    X, y = data
    mlp().save(tmp_path / "ckpt.npz", include_optimizer=False)
    other = nnxp.Sequential([Dense(5, 8), ReLU(), Dense(8, 3)])
    with pytest.raises(ValueError, match="config"):
        nio.restore_checkpoint(other, tmp_path / "ckpt.npz")
    with pytest.raises(ValueError, match="holds 3 layers but the model has 1"):
        nio.restore_checkpoint(nnxp.Sequential([Dense(5, 3)]), tmp_path / "ckpt.npz")


# --- moving between backends ------------------------------------------------------------


def test_to_moves_a_trained_model_and_its_optimizer_around(data) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("array_api_strict")
    X, y = data
    model = mlp()
    model.fit(X, y, optimizer=_optimizers()[-1][1](), epochs=1, batch_size=16, verbose=0)
    start = params_of(model)
    expected = nnxp.to_numpy(model.predict_proba(X))
    for spec, device in [("array_api_strict", "device1"), ("torch", None), ("numpy", None)]:
        assert model.to(spec, device) is model
        out = model.predict_proba(X)
        assert nnxp.backend.backend_name_of(out) == spec
        if device is not None:
            assert "device1" in str(out.device)
        np.testing.assert_allclose(nnxp.to_numpy(out), expected, rtol=1e-5, atol=1e-6)
        assert all(nnxp.backend.backend_name_of(p) == spec
                   for layer in model.layers for p in layer.params.values())
    assert_same_arrays(params_of(model), start)  # moving never changes a value
    model.to("array_api_strict:device1")
    model.fit(X, y, epochs=1, batch_size=16, verbose=0, optimizer=model.optimizer)


def test_to_then_fit_matches_training_on_the_target(data) -> None:
    pytest.importorskip("array_api_strict")
    X, y = data
    moved = mlp(seed=2).to("array_api_strict:device1")
    moved.fit(X, y, optimizer=SGD(lr=0.1), epochs=1, batch_size=16, verbose=0)
    with nnxp.use_backend("array_api_strict:device1"):
        native = mlp(seed=2)
        native.fit(X, y, optimizer=SGD(lr=0.1), epochs=1, batch_size=16, verbose=0)
    assert_same_arrays(params_of(moved), params_of(native))


# --- summary ----------------------------------------------------------------------------


def test_summary_counts_and_memory(capsys) -> None:
    model = mlp()
    text = model.summary(batch_size=10)
    assert capsys.readouterr().out.strip() == text.strip()
    assert "Dense(5, 16)" in text and "(10, 16)" in text and "(10, 3)" in text
    assert f"parameters: {model.count_params():,}" in text
    info = nio.summary_rows(model, batch_size=10)
    n = model.count_params()
    assert info["params"] == n == 5 * 16 + 16 + 16 * 3 + 3
    mem = info["memory"]
    assert mem["parameters"] == mem["gradients"] == 4 * n
    # what backward keeps: the input, the activation's output (the next Dense's input), the
    # outputs (kept for the metrics) and the loss cache (two arrays of the outputs' shape)
    assert mem["activations"] == 4 * 10 * (5 + 16 + 3 + 2 * 3)
    assert [r["output_shape"] for r in info["rows"]] == [(10, 16), (10, 16), (10, 3)]
    assert model.summary(batch_size=1, print_summary=False) and not capsys.readouterr().out
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        model.summary(batch_size=0)


def test_standardize_layer_applies_training_statistics(bk, data, tmp_path) -> None:
    X, y = data
    scaled = X * 10 + 3
    std = nnxp.layers.Standardize(5).fit(scaled)
    z = nnxp.to_numpy(std(nnxp.asarray(scaled)))
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, rtol=1e-4)
    model = nnxp.Sequential([std, Dense(5, 3)], seed=0)
    model.fit(scaled, y, epochs=2, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = nnxp.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(nnxp.to_numpy(loaded.predict_proba(scaled)),
                                  nnxp.to_numpy(model.predict_proba(scaled)))
    layer = nnxp.layers.Standardize(5, dtype="float64").fit(np.asarray(scaled, np.float64))
    assert nnxp.gradcheck(layer, np.asarray(scaled[:4], np.float64)).passed


# --- ModelCheckpoint ----------------------------------------------------------------------


class _Crash(nnxp.callbacks.Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_begin(self, epoch, logs=None) -> None:
        # killed once epoch `at` is over (ModelCheckpoint saves after every other callback's
        # on_epoch_end, so a crash inside on_epoch_end would precede that epoch's save)
        if epoch == self.at + 1:
            raise KeyboardInterrupt(f"killed after epoch {self.at}")


def test_model_checkpoint_then_crash_then_resume_is_bit_identical(bk, data, tmp_path) -> None:
    from nnxp.callbacks import ModelCheckpoint

    X, y = data
    full = mlp(seed=9)
    full.fit(X, y, optimizer=_optimizers()[-1][1](), epochs=4, batch_size=16, verbose=0)
    path = tmp_path / "ckpt.npz"
    crashed = mlp(seed=9)
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(X, y, optimizer=_optimizers()[-1][1](), epochs=4, batch_size=16, verbose=0,
                    callbacks=[ModelCheckpoint(path), _Crash(at=2)])
    assert nnxp.load(path).epochs_trained == 2
    resumed = nnxp.load(path)
    resumed.fit(X, y, epochs=4, batch_size=16, verbose=0, resume_from=path)
    assert_same_arrays(params_of(resumed), params_of(full))
    with pytest.raises(ValueError, match="completed 2 epochs already; epochs=2"):
        mlp().fit(X, y, epochs=2, verbose=0, resume_from=path)


def test_model_checkpoint_save_best_only_and_file_names(data, tmp_path) -> None:
    from nnxp.callbacks import ModelCheckpoint

    X, y = data
    best = ModelCheckpoint(tmp_path / "best-{epoch:02d}-{val_loss:.4f}.npz", save_best_only=True)
    every = ModelCheckpoint(tmp_path / "last.npz", period=2, include_optimizer=False)
    history = mlp().fit(X, y, optimizer=SGD(lr=0.5), epochs=6, batch_size=8, verbose=0,
                        validation_data=(X[:20], y[:20]), callbacks=[best, every])
    val = history["val_loss"]
    improved = [e for e, v in zip(history.epoch, val) if v == min(val[:e])]
    assert [int(os.path.basename(p)[5:7]) for p in best.saved] == improved
    assert best.best == min(val) and best.best_epoch == val.index(min(val)) + 1
    assert os.path.basename(best.saved[-1]) == f"best-{best.best_epoch:02d}-{min(val):.4f}.npz"
    assert every.saved == [str(tmp_path / "last.npz")] * 3
    assert getattr(nnxp.load(tmp_path / "last.npz"), "optimizer", None) is None
    with pytest.raises(ValueError, match="cannot be filled"):
        mlp().fit(X, y, epochs=1, verbose=0,
                  callbacks=[ModelCheckpoint(tmp_path / "{nope}.npz")])
    with pytest.raises(ValueError, match="period must be an int >= 1"):
        ModelCheckpoint("x.npz", period=0)


# --- random layers: dropout masks and RReLU slopes continue exactly -----------------------


def _random_stack():
    return [Dense(5, 12), LAYERS["Dropout"](0.4), LAYERS["RReLU"](), Dense(12, 3)]


def test_resume_with_dropout_and_rrelu_is_bit_identical_on_each_backend(bk, data,
                                                                         tmp_path) -> None:
    X, y = data
    full = nnxp.Sequential(_random_stack(), seed=4)
    full.fit(X, y, optimizer=SGD(lr=0.05), epochs=3, batch_size=16, verbose=0)
    part = nnxp.Sequential(_random_stack(), seed=4)
    part.fit(X, y, optimizer=SGD(lr=0.05), epochs=1, batch_size=16, verbose=0)
    part.save(tmp_path / "ckpt.npz")
    resumed = nnxp.load(tmp_path / "ckpt.npz")
    resumed.fit(X, y, epochs=3, batch_size=16, verbose=0, resume_from=tmp_path / "ckpt.npz")
    assert_same_arrays(params_of(resumed), params_of(full))


def test_to_moves_random_layers_generators(data) -> None:
    pytest.importorskip("torch")
    X, y = data
    model = nnxp.Sequential(_random_stack(), seed=4)
    for spec in ("torch", "array_api_strict:device1", "numpy"):
        model.to(spec)
        assert model.layers[1].generator.xp is model.xp
        model.fit(X, y, epochs=1, batch_size=16, verbose=0)  # masks drawn on the new backend
