"""``fit(capture=True)`` against a CUDA-graph stand-in that replays ATen operations only.

``tests/tape.py``'s recorder keeps a graph's semantics on torch CPU: a recording runs nothing,
a replay runs no Python, every number is frozen at recording. Each run here is compared with
``capture=False`` bit for bit (weights, running statistics, losses, host counts), with the
flat updates in one piece, as on a GPU. The cases are those a review of the recorded step
found wrong (options switched on mid-run, options the old check did not watch, loss scaling,
arrays replaced before ``fit``, interrupts, step tables left on), and a sweep of optimizers.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tape  # noqa: E402

import nnxp  # noqa: E402
from nnxp import backend  # noqa: E402
from nnxp.callbacks import Callback  # noqa: E402
from nnxp.layers import BatchNorm1d, Dense, Tanh  # noqa: E402

N, F, C = 23, 4, 3


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    return (rng.normal(size=(N, F)).astype(np.float32), rng.integers(0, C, size=N),
            rng.uniform(0.5, 2, size=N).astype(np.float32))


def _mlp() -> nnxp.Sequential:
    return nnxp.Sequential([Dense(F, 6), Tanh(), Dense(6, C)], seed=3)


def _bn_model() -> nnxp.Sequential:
    return nnxp.Sequential([Dense(F, 6), BatchNorm1d(6), Tanh(), Dense(6, C)], seed=3)


def _state(model: nnxp.Sequential) -> np.ndarray:
    return np.concatenate([np.ravel(nnxp.to_numpy(a)) for layer in model.layers
                           for a in [*layer.params.values(),
                                     *getattr(layer, "buffers", {}).values()]])


def _counts(model: nnxp.Sequential) -> Any:
    opt = model.optimizer
    state = opt.state_dict()
    return (state["iterations"],
            {i: {k: v for k, v in s.items() if not hasattr(v, "shape")}
             for i, s in state["state"].items()},
            [layer.num_batches_tracked for layer in model.layers
             if isinstance(layer, BatchNorm1d)])


def _run(monkeypatch: Any, make_model: Any, make_opt: Any, capture: bool,
         recorder: Any = None, before: Any = None, **fit: Any) -> dict[str, Any]:
    X, y, w = _data()
    rec = recorder if recorder is not None else tape.TapeRecorder()
    monkeypatch.setattr(backend, "update_block_bytes", lambda xp, device: None)
    monkeypatch.setattr(backend, "graph_capture", lambda xp, device: rec)
    options = {"epochs": 3, "batch_size": 5, "sample_weight": w, "verbose": 0}
    options.update(fit)
    with nnxp.use_backend("torch"):
        model, opt = make_model(), make_opt()
        if before is not None:
            before(model, opt)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a refused recording fails here
            history = model.fit(X, y, optimizer=opt, capture=capture, **options)
    return {"state": _state(model), "loss": history.history["loss"],
            "counts": _counts(model), "report": history.capture, "recorder": rec}


def _same_run(monkeypatch: Any, make_model: Any, make_opt: Any, **kw: Any) -> dict[str, Any]:
    """The recorded run, after checking it against the plain one bit for bit."""
    plain = _run(monkeypatch, make_model, make_opt, False, **kw)
    taped = _run(monkeypatch, make_model, make_opt, True, **kw)
    assert np.array_equal(plain["state"], taped["state"])
    assert plain["loss"] == taped["loss"]
    assert plain["counts"] == taped["counts"]
    assert taped["recorder"].host_reads == []
    return taped


class _Edit(Callback):
    """At the start of epoch 2, ``edit(model)``."""

    def __init__(self, edit: Any) -> None:
        super().__init__()
        self.edit = edit

    def on_epoch_begin(self, epoch: int, logs: Any) -> None:
        if epoch == 2:
            self.edit(self.model)


def _groups(key: str, value: Any) -> Any:
    def edit(model: nnxp.Sequential) -> None:
        for group in model.optimizer.param_groups:
            group[key] = value
    return edit


@pytest.mark.parametrize("make_opt", [
    lambda: nnxp.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda: nnxp.optim.Adam(lr=0.01, amsgrad=True, weight_decay=1e-3, clip_norm=1.0),
    lambda: nnxp.optim.AdamW(lr=0.01),
    lambda: nnxp.optim.NAdam(lr=0.01),
    lambda: nnxp.optim.RMSprop(lr=0.01, momentum=0.5, centered=True),
    lambda: nnxp.optim.Adagrad(lr=0.1, lr_decay=0.1),
], ids=["sgd-nesterov", "adam-amsgrad-clip", "adamw", "nadam", "rmsprop-centered",
        "adagrad-decay"])
def test_replays_of_the_tape_equal_the_plain_run(monkeypatch: Any, make_opt: Any) -> None:
    taped = _same_run(monkeypatch, _bn_model, make_opt,
                      callbacks=[_Edit(_groups("lr", 0.005))])
    assert taped["report"]["graphs"] >= 2 and taped["report"]["replays"] >= 5


@pytest.mark.parametrize("make_opt, edit", [
    # the first use of the option makes state (a momentum buffer, AMSGrad's maximum): in a
    # recording, every replay would make it again (momentum reset to the gradient each step)
    (lambda: nnxp.optim.SGD(lr=0.1), _groups("momentum", 0.9)),
    (lambda: nnxp.optim.Adam(lr=0.01), _groups("amsgrad", True)),
    (lambda: nnxp.optim.RMSprop(lr=0.01), _groups("centered", True)),
    # options the old check did not watch: replays kept the recorded ones
    (lambda: nnxp.optim.SGD(lr=0.1, clip_norm=1.0),
     lambda model: setattr(model.optimizer, "clip_norm", 0.01)),
    (lambda: nnxp.optim.SGD(lr=0.1, clip_value=1.0),
     lambda model: setattr(model.optimizer, "clip_value", 0.001)),
    (lambda: nnxp.optim.SGD(lr=0.1), lambda model: setattr(model.layers[1], "momentum", 0.5)),
], ids=["momentum-on", "amsgrad-on", "centered-on", "clip-norm", "clip-value", "bn-momentum"])
def test_options_changed_mid_run_are_checked_and_recorded_again(monkeypatch: Any,
                                                                make_opt: Any,
                                                                edit: Any) -> None:
    taped = _same_run(monkeypatch, _bn_model, make_opt, callbacks=[_Edit(edit)])
    assert taped["report"]["not_recorded"] is None
    assert taped["report"]["graphs"] >= 2  # once before the change, again after it


def test_loss_scaling_runs_unrecorded(monkeypatch: Any) -> None:
    """float16 with a loss scaler reads on the host every step whether to skip the update."""
    taped = _same_run(monkeypatch, _mlp, lambda: nnxp.optim.SGD(lr=0.1, momentum=0.9),
                      precision="float16")
    report = taped["report"]
    assert report["graphs"] == 0 and report["static_steps"] == 15
    assert "loss scaling (precision='float16') reads on the host" in report["not_recorded"]


def test_arrays_replaced_before_fit_do_not_stop_the_recording(monkeypatch: Any) -> None:
    """``restore_weights`` (or ``resume_from=``, or EarlyStopping's best weights) replaces the
    parameter arrays after the optimizer bound them; the first step copies them into its flat
    buffers, and the run is still recorded."""
    def restored(model: nnxp.Sequential, opt: Any) -> None:
        X, y, _ = _data()
        model.fit(X, y, optimizer=opt, epochs=1, batch_size=5, verbose=0)
        model.restore_weights(model.snapshot_weights())

    taped = _same_run(monkeypatch, _bn_model, lambda: nnxp.optim.Adam(lr=0.01),
                      before=restored)
    assert taped["report"]["not_recorded"] is None and taped["report"]["graphs"] >= 1


class _Fault(tape.TapeRecorder):
    """Raises ``error`` while recording (``on_launch`` None: after the step's Python ran), or
    at the ``on_launch``-th launch of a replay: as it returns, its work done (a signal), or
    with ``launched=False`` before it queues anything (a failed launch, a CUDA error)."""

    def __init__(self, on_launch: int | None, error: Any = KeyboardInterrupt, *,
                 launched: bool = True) -> None:
        super().__init__()
        self.on_launch, self.error, self.launched = on_launch, error, launched
        self.launches = 0

    def capture(self, fn: Any) -> Any:
        graph, outputs = super().capture(fn)
        if self.on_launch is None:
            raise self.error
        launch = graph._launch  # noqa: SLF001 - the stand-in wraps its own launch

        def faulty() -> None:
            self.launches += 1
            due = self.launches == self.on_launch
            if due and not self.launched:
                raise self.error
            launch()
            if due:
                raise self.error

        graph._launch = faulty  # noqa: SLF001
        return graph, outputs


def _faulty_fit_against_plain(monkeypatch: Any, recorder: _Fault, *, epochs: int,
                              steps: int, match: str | None = None) -> nnxp.Sequential:
    """Adam on the BatchNorm model with ``recorder`` until its fault, then checked against a
    plain fit of the first ``steps`` batches: the same weights, running statistics and
    counts. Returns the faulty run's model."""
    X, y, w = _data()
    monkeypatch.setattr(backend, "update_block_bytes", lambda xp, device: None)
    monkeypatch.setattr(backend, "graph_capture", lambda xp, device: recorder)
    with nnxp.use_backend("torch"):
        taped = _bn_model()
        error = recorder.error if isinstance(recorder.error, type) else type(recorder.error)
        with pytest.raises(error, match=match):
            taped.fit(X, y, optimizer=nnxp.optim.Adam(lr=0.01), epochs=epochs, batch_size=5,
                      sample_weight=w, verbose=0, shuffle=False, capture=True)
        monkeypatch.setattr(backend, "graph_capture", lambda xp, device: None)
        plain = _bn_model()
        n = 5 * steps
        plain.fit(X[:n], y[:n], optimizer=nnxp.optim.Adam(lr=0.01), epochs=1, batch_size=5,
                  sample_weight=w[:n], verbose=0, shuffle=False)
    assert taped.optimizer.iterations == steps
    assert _counts(taped) == _counts(plain)
    assert np.array_equal(_state(taped), _state(plain))
    return taped


@pytest.mark.parametrize("on_launch", [None, 2])
def test_an_interrupt_leaves_the_counts_with_the_weights(monkeypatch: Any,
                                                         on_launch: int | None) -> None:
    """Interrupted while recording (counts put back: the recording applied nothing) or as a
    replay's launch returns (its update applied: counts, running statistics and batch counts
    kept with it): the model is the model of as many plain steps as the weights took (Adam:
    two check steps, its state made by the first, then the replays)."""
    _faulty_fit_against_plain(monkeypatch, _Fault(on_launch), epochs=3,
                              steps=2 + (on_launch or 0))


def test_step_tables_are_not_left_on_by_a_fit_that_fails_before_its_first_step(
        monkeypatch: Any) -> None:
    monkeypatch.setattr(backend, "graph_capture", lambda xp, device: tape.TapeRecorder())
    X, y, _ = _data()
    with nnxp.use_backend("torch"):
        model, opt = _bn_model(), nnxp.optim.Adam(lr=0.01)
        with pytest.raises(ValueError, match="needs at least 2 samples per batch"):
            model.fit(X[:21], y[:21], optimizer=opt, batch_size=5, verbose=0, capture=True)
    assert not opt.uses_step_tables


def test_the_counts_the_gpu_test_expects_hold_under_the_tape(monkeypatch: Any) -> None:
    """``test_capture.py::test_a_real_recording_matches_the_unrecorded_fit`` runs only on a
    GPU and expects 2 graphs, 7 replays and 3 checked steps: the same run under the tape."""
    import test_capture  # noqa: PLC0415 - its model, data and fit

    monkeypatch.setattr(backend, "update_block_bytes", lambda xp, device: None)
    monkeypatch.setattr(backend, "graph_capture", lambda xp, device: tape.TapeRecorder())
    with nnxp.use_backend("torch"):
        w0, w1, h0, h1 = test_capture._recorded_against_plain(  # noqa: SLF001
            lambda: nnxp.optim.SGD(lr=0.1, momentum=0.9))
    assert np.array_equal(w0, w1) and h0.history["loss"] == h1.history["loss"]
    assert h1.capture == {"recorder": "tape", "graphs": 2, "replays": 7, "static_steps": 3,
                          "not_recorded": None}


def test_a_change_of_the_loss_options_is_recorded_again(monkeypatch: Any) -> None:
    def smooth(model: nnxp.Sequential) -> None:
        model.loss.label_smoothing = 0.3

    taped = _same_run(monkeypatch, _mlp, lambda: nnxp.optim.SGD(lr=0.1),
                      callbacks=[_Edit(smooth)])
    assert taped["report"]["graphs"] >= 2 and taped["report"]["not_recorded"] is None


class _Opaque(Tanh):
    """A layer whose options are not plain values, or that cannot describe itself."""

    def __init__(self, raises: bool) -> None:
        super().__init__()
        self.raises = raises

    def get_config(self) -> dict[str, Any]:
        if self.raises:
            raise NotImplementedError("this layer cannot be saved")
        return {"helper": object(), "scale": 1.0}  # a repr that differs at every call


@pytest.mark.parametrize("raises", [False, True])
def test_layers_whose_options_cannot_be_compared_are_still_recorded(monkeypatch: Any,
                                                                     raises: bool) -> None:
    def model() -> nnxp.Sequential:
        return nnxp.Sequential([Dense(F, 6), _Opaque(raises), Dense(6, C)], seed=3)

    taped = _same_run(monkeypatch, model, lambda: nnxp.optim.Adam(lr=0.01))
    assert taped["report"]["graphs"] >= 1 and taped["report"]["not_recorded"] is None


def test_a_failed_launch_moves_no_count(monkeypatch: Any) -> None:
    """Epoch 1: two check steps (Adam's state is new at the first), two replays, the smaller
    last batch checked; epoch 2: its first launch fails. The counts say five steps, as the
    weights do."""
    failure = RuntimeError("CUDA error: launch failure (emulated)")
    _faulty_fit_against_plain(monkeypatch, _Fault(3, failure, launched=False), epochs=2,
                              steps=5, match="launch failure")


class _Anneal(Callback):
    """From epoch 2 on, set ``option`` of layer/loss ``owner(model)`` to NumPy float32 values
    (np.float32 is no Python float: still an option the step reads)."""

    def __init__(self, owner: Any, option: str, values: list[float]) -> None:
        super().__init__()
        self.owner, self.option, self.values = owner, option, values

    def on_epoch_begin(self, epoch: int, logs: Any) -> None:
        if epoch >= 2:
            setattr(self.owner(self.model), self.option, np.float32(self.values[epoch - 2]))


@pytest.mark.parametrize("owner, option", [
    (lambda model: model.layers[1], "momentum"),
    (lambda model: model.loss, "label_smoothing"),
], ids=["batchnorm-momentum", "label-smoothing"])
def test_numpy_scalar_options_are_watched(monkeypatch: Any, owner: Any, option: str) -> None:
    taped = _same_run(monkeypatch, _bn_model, lambda: nnxp.optim.SGD(lr=0.1),
                      callbacks=[_Anneal(owner, option, [0.5, 0.9])])
    assert taped["report"]["graphs"] >= 3  # recorded again after each change


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_a_signal_as_a_launch_returns_keeps_the_step(monkeypatch: Any, error: Any) -> None:
    """KeyboardInterrupt, or SystemExit from a SIGTERM handler, raised as the second replay's
    launch returns (its work queued): the step is kept whole, as after four plain steps."""
    taped = _faulty_fit_against_plain(monkeypatch, _Fault(2, error), epochs=3, steps=4)
    assert taped.history.capture["replays"] == 2
