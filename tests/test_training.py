"""The training loop's module and the model's weight snapshots."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import nnxp
from nnxp import training
from nnxp.layers import BatchNorm1d, Dense, Dropout, ReLU
from nnxp.optim import SGD, Adam


def bn_model(seed: int = 0) -> nnxp.Sequential:
    return nnxp.Sequential([Dense(4, 8), BatchNorm1d(8), ReLU(), Dense(8, 3)], seed=seed)


@pytest.fixture
def data(rng):
    X = rng.standard_normal((40, 4)).astype(np.float32)
    return X, rng.integers(0, 3, 40)


def state(model: nnxp.Sequential) -> list[np.ndarray]:
    """Every parameter and buffer on the host, in layer order."""
    return [nnxp.to_numpy(a).copy() for layer in model.layers
            for store in (layer.params, getattr(layer, "buffers", {})) for a in store.values()]


# --- weight snapshots -----------------------------------------------------------------------------


def test_snapshot_holds_every_parameter_and_buffer(bk) -> None:
    model = bn_model()
    snap = model.snapshot_weights()
    assert len(snap) == len(model.layers)
    for layer, (params, buffers) in zip(model.layers, snap):
        assert set(params) == set(layer.params)
        assert set(buffers) == set(getattr(layer, "buffers", {}))
    assert set(snap[1][1]) == {"running_mean", "running_var"}


def test_restore_after_training_gives_back_the_exact_weights_and_buffers(bk, data) -> None:
    X, y = data
    model = bn_model(seed=1)
    model.fit(X, y, epochs=1, batch_size=8, verbose=0, optimizer=SGD(lr=0.1, momentum=0.9))
    snap = model.snapshot_weights()
    before = state(model)
    for _ in range(2):  # the snapshot is a copy: restoring it twice gives the same weights
        model.fit(X, y, epochs=2, batch_size=8, verbose=0)  # in-place updates, new statistics
        assert not all(np.array_equal(a, b) for a, b in zip(before, state(model)))
        model.restore_weights(snap)
        after = state(model)
        assert len(after) == len(before)
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)


# --- fit and partial_fit: one code path -----------------------------------------------------------


def full_model(seed: int = 0) -> nnxp.Sequential:
    return nnxp.Sequential([Dense(4, 8), BatchNorm1d(8), ReLU(), Dropout(0.25), Dense(8, 3)],
                           seed=seed)


def optimizer_state(opt) -> list[tuple[int, str, np.ndarray]]:
    sd = opt.state_dict()
    return [(i, k, np.asarray(v)) for i in sorted(sd["state"]) for k, v in
            sorted(sd["state"][i].items())] + [(-1, "iterations", np.asarray(sd["iterations"]))]


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_partial_fits_are_fit_with_two_epochs_bit_for_bit(bk, data, shuffle) -> None:
    """Weights, buffers, optimizer state and every logged number agree exactly, on every
    backend: the two entry points run the same code, differing only in the epoch count."""
    X, y = data
    X_val, y_val = X[:10] + 0.5, y[:10]
    w = np.linspace(0.5, 1.5, len(y))
    common = dict(batch_size=8, shuffle=shuffle, validation_data=(X_val, y_val),
                  metrics=["accuracy", "top_2_accuracy"], sample_weight=w, diagnostics=True)
    a, b = full_model(seed=7), full_model(seed=7)
    ha = a.fit(X, y, epochs=2, verbose=0, optimizer=Adam(lr=0.01), **common)
    h1 = b.partial_fit(X, y, optimizer=Adam(lr=0.01), **common)
    h2 = b.partial_fit(X, y, **common)
    assert (h1.epoch, h2.epoch, a.epochs_trained, b.epochs_trained) == ([1], [2], 2, 2)
    for a_state, b_state in zip(state(a), state(b), strict=True):
        np.testing.assert_array_equal(a_state, b_state)
    for (i, k, va), (j, kk, vb) in zip(optimizer_state(a.optimizer),
                                       optimizer_state(b.optimizer), strict=True):
        assert (i, k) == (j, kk)
        np.testing.assert_array_equal(va, vb)
    for key in ha.history:
        if key != "epoch_time":
            assert ha[key] == h1[key] + h2[key], key
    assert ha.diagnostics["grad_norm"] == {
        label: h1.diagnostics["grad_norm"][label] + h2.diagnostics["grad_norm"][label]
        for label in ha.diagnostics["grad_norm"]}


def test_partial_fit_continues_a_fit(bk, data) -> None:
    X, y = data
    a, b = full_model(seed=8), full_model(seed=8)
    ha = a.fit(X, y, epochs=3, batch_size=16, verbose=0, optimizer=SGD(lr=0.1, momentum=0.9))
    hb = b.fit(X, y, epochs=2, batch_size=16, verbose=0, optimizer=SGD(lr=0.1, momentum=0.9))
    hc = b.partial_fit(X, y, batch_size=16)  # the optimizer and the metrics of the fit
    assert hc.epoch == [3] and list(hc.history) == list(ha.history)
    assert hb["loss"] + hc["loss"] == ha["loss"]
    for a_state, b_state in zip(state(a), state(b), strict=True):
        np.testing.assert_array_equal(a_state, b_state)


def test_fit_and_partial_fit_go_through_one_function(monkeypatch, data) -> None:
    X, y = data
    calls = []
    original = training.fit

    def spy(model, X, y, *, incremental, **options):
        calls.append(incremental)
        return original(model, X, y, incremental=incremental, **options)

    monkeypatch.setattr(training, "fit", spy)
    model = full_model()
    model.fit(X, y, epochs=1, verbose=0)
    model.partial_fit(X, y)
    assert calls == [False, True]


@pytest.mark.parametrize("option", [{"epochs": 3}, {"validation_split": 0.2},
                                    {"resume_from": "x.npz"}])
def test_incremental_training_refuses_what_only_fit_has(option, data) -> None:
    X, y = data
    model = full_model()
    with pytest.raises(ValueError, match="incremental training runs one epoch"):
        training.fit(model, X, y, incremental=True, loss=None, optimizer=None, batch_size=8,
                     shuffle=True, verbose=0, validation_data=None, metrics=None,
                     callbacks=None, diagnostics=False, check_finite_every=None,
                     keep_finite_weights=True, sample_weight=None, **option)
    assert model.epochs_trained == 0 and model.optimizer is None


@pytest.mark.parametrize(("option", "match"), [
    ({"batch_size": 0}, "batch_size must be > 0"),
    ({"check_finite_every": 0}, "check_finite_every must be > 0"),
    ({"callbacks": [object()]}, "has none of the callback hooks"),
])
def test_bad_options_fail_before_a_checkpoint_changes_the_model(option, match, data,
                                                               tmp_path) -> None:
    """fit(resume_from=...) restores weights, optimizer and epoch count into the model: every
    option is checked before that, so a typo leaves the model as it was."""
    X, y = data
    trained = bn_model(seed=1)
    trained.fit(X, y, epochs=2, batch_size=8, verbose=0, optimizer=Adam(lr=0.01))
    trained.save(tmp_path / "ckpt.npz")
    model = bn_model(seed=2)
    before = state(model)
    with pytest.raises((TypeError, ValueError), match=match):
        model.fit(X, y, epochs=4, verbose=0, resume_from=tmp_path / "ckpt.npz", **option)
    assert all(np.array_equal(a, b) for a, b in zip(before, state(model)))
    assert model.epochs_trained == 0


# --- the direction of the imports -----------------------------------------------------------------


def runtime_imports(source: str) -> set[str]:
    """The modules a source file of the package imports when it runs: every import statement,
    those inside functions included, except the ones under ``if TYPE_CHECKING:``. Relative
    imports are resolved for a module at the top of the package (``from .model import X`` is
    ``nnxp.model``; ``from . import io`` is ``nnxp.io``)."""
    tree = ast.parse(source)
    type_only = {id(inner) for node in ast.walk(tree)
                 if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for stmt in node.body for inner in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("nnxp" + (f".{node.module}" if node.module else "")) if node.level \
                else str(node.module)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


PACKAGE = Path(nnxp.__file__).parent


@pytest.mark.parametrize(("module", "forbidden"), [
    ("training.py", {"nnxp.model"}),
    ("callbacks.py", {"nnxp.model", "nnxp.training"}),
    ("diagnostics.py", {"nnxp.model", "nnxp.training"}),
])
def test_the_loop_and_its_helpers_do_not_import_the_model(module, forbidden) -> None:
    imported = runtime_imports((PACKAGE / module).read_text())
    assert not imported & forbidden, f"{module} imports {sorted(imported & forbidden)}"


@pytest.mark.parametrize(("source", "seen"), [
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .model import A\n", False),
    ("def f():\n    from . import model\n", True),
    ("def f():\n    from .model import Sequential\n", True),
    ("import nnxp.model\n", True),
    ("from nnxp.model import Sequential\n", True),
    ("from .models import x\n", False),
])
def test_the_import_check_sees_what_runs(source, seen) -> None:
    assert ("nnxp.model" in runtime_imports(source)) is seen
