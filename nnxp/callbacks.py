"""Callbacks: hooks that ``Sequential.fit`` calls around epochs and batches.

The callback protocol
---------------------
A callback is an object with any of the methods below (subclass :class:`Callback`, which
provides them all as no-ops, and override the ones you need). ``fit`` first calls
``set_model(model)`` and then, in this order::

    on_train_begin(logs)
    for every epoch:
        on_epoch_begin(epoch, logs)
        for every batch:   on_batch_end(batch, logs)
        on_epoch_end(epoch, logs)          # may set model.stop_training = True
    on_train_end(logs)

* ``epoch`` counts from 1 (the numbering of :attr:`History.epoch`); ``batch`` counts from 0
  within the epoch.
* ``logs`` in ``on_epoch_end`` maps ``"loss"``, the metric names (``"accuracy"``, ...), their
  validation counterparts (``"val_loss"``, ``"val_accuracy"``, ...), ``"lr"`` and
  ``"epoch_time"`` to Python floats. A callback may add entries; they are recorded in the
  :class:`~nnxp.training.History` too.
* ``logs`` in ``on_batch_end`` holds ``"size"`` (samples in the batch, an int) and ``"loss"``, the
  batch loss as a **0-d array on the model's device**: reading it with ``float()`` or
  :func:`nnxp.backend.to_float` forces a device-to-host synchronisation, so a callback that does
  so every batch slows GPU training down. Leave it on the device when you can.
* Setting ``model.stop_training = True`` in any hook ends training after the current epoch
  (``on_epoch_end`` and ``on_train_end`` are still called).
* When ``fit`` raises (``TrainingDivergedError`` without :class:`TerminateOnNaN`, a bad
  argument, an interrupt), ``on_train_end`` is not called.

Callbacks run in the order given to ``fit``, except that in ``on_epoch_end`` those with
``runs_last = True`` (:class:`ModelCheckpoint`) run after all the others, so that a checkpoint
holds every callback's state *after* the epoch (a learning-rate schedule already stepped, an
early-stopping counter already updated). The epoch's entry is appended to the
:class:`~nnxp.training.History` after ``on_epoch_end`` has run for all of them, so what a callback
adds to ``logs`` is seen by the later callbacks and recorded in the history.

Resumable state
---------------
A callback with state that must survive a restart defines ``state_dict() -> dict`` (plain
numbers, strings, lists, dicts, arrays) and ``load_state_dict(state)``. A checkpoint written
during ``fit`` (:class:`ModelCheckpoint`, or ``model.save`` while ``model.active_callbacks`` is
set) stores them, and ``fit(..., resume_from=path, callbacks=[...])`` gives each callback its
stored state after ``on_train_begin``: the k-th callback of a class gets the k-th stored state
of that class.

Writing your own::

    class PrintEvery(Callback):
        def __init__(self, n):
            self.n = n

        def on_epoch_end(self, epoch, logs):
            if epoch % self.n == 0:
                print(epoch, logs["loss"])

"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import backend
from .validation import check_choice, check_flag, check_int

if TYPE_CHECKING:  # pragma: no cover - imports only for the type checker (no cycle at runtime)
    from .model import Sequential

Logs = dict[str, Any]

__all__ = [
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "TerminateOnNaN",
    "get_lr",
    "set_lr",
]


class Callback:
    """Base class for callbacks: every hook is a no-op; override the ones you need.

    Attributes
    ----------
    model
        The :class:`~nnxp.model.Sequential` being trained (set by ``fit`` through
        :meth:`set_model` before ``on_train_begin``); ``None`` before.
    """

    model: Sequential | None = None

    def set_model(self, model: Sequential) -> None:
        """Called by ``fit`` before training starts."""
        self.model = model

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Before the first epoch."""

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Before epoch ``epoch`` (from 1)."""

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """After the optimizer step on batch ``batch`` (from 0 within the epoch).

        ``logs["loss"]`` is the batch loss as a 0-d array on the device (reading it costs a
        synchronisation), ``logs["size"]`` the number of samples in the batch.
        """

    def on_epoch_end(self, epoch: int, logs: Logs) -> None:
        """After epoch ``epoch``; ``logs`` holds its losses and metrics as floats.

        Set ``self.model.stop_training = True`` to end training after this epoch.
        """

    def on_train_end(self, logs: Logs | None = None) -> None:
        """After the last epoch (also after an early stop or a quiet stop on divergence)."""


class CallbackList(Callback):
    """Several callbacks called in order; what ``fit`` uses internally."""

    def __init__(self, callbacks: Iterable[Any] | None = None) -> None:
        if (isinstance(callbacks, Callback) and not isinstance(callbacks, CallbackList)) or (
                callbacks is not None and not isinstance(callbacks, Iterable)):
            raise TypeError(f"callbacks must be a list of callbacks, got "
                            f"{type(callbacks).__name__} {callbacks!r}; write callbacks=[...]")
        self.callbacks = list(callbacks or [])
        for i, cb in enumerate(self.callbacks):
            if isinstance(cb, type):
                raise TypeError(f"callbacks[{i}] is the class {cb.__name__}, not an instance; "
                                f"write {cb.__name__}(...)")
            hooks = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end",
                     "on_train_end")
            if not any(callable(getattr(cb, h, None)) for h in hooks):
                raise TypeError(f"callbacks[{i}] ({cb!r}) has none of the callback hooks "
                                f"({', '.join(hooks)}); subclass nnxp.callbacks.Callback")

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if method is not None:
                method(*args)

    def set_model(self, model: Sequential) -> None:
        self.model = model
        self._call("set_model", model)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self._call("on_train_begin", logs)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self._call("on_epoch_begin", epoch, logs)

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        self._call("on_batch_end", batch, logs)

    def on_epoch_end(self, epoch: int, logs: Logs) -> None:
        late = [cb for cb in self.callbacks if getattr(cb, "runs_last", False)]
        for cb in [cb for cb in self.callbacks if cb not in late] + late:
            method = getattr(cb, "on_epoch_end", None)
            if method is not None:
                method(epoch, logs)

    def state_dicts(self) -> list[dict[str, Any] | None]:
        """``[{"class": name, "state": cb.state_dict()} | None, ...]``, one per callback (None
        for those without state)."""
        out: list[dict[str, Any] | None] = []
        for cb in self.callbacks:
            get = getattr(cb, "state_dict", None)
            out.append({"class": type(cb).__name__, "state": get()} if callable(get) else None)
        return out

    def load_state_dicts(self, states: list[Any]) -> None:
        """Give each callback a stored state of its class: the k-th callback of a class gets
        the k-th stored state of that class, so adding or dropping a callback of another
        class (a ModelCheckpoint left out on resume) does not shift the others."""
        stored: dict[str, list[Any]] = {}
        for entry in states:
            if isinstance(entry, dict) and isinstance(entry.get("class"), str):
                stored.setdefault(entry["class"], []).append(entry.get("state") or {})
        for cb in self.callbacks:
            load = getattr(cb, "load_state_dict", None)
            queue = stored.get(type(cb).__name__)
            if callable(load) and queue:
                load(queue.pop(0))

    def on_train_end(self, logs: Logs | None = None) -> None:
        self._call("on_train_end", logs)

    @property
    def has_batch_hooks(self) -> bool:
        """Whether any callback overrides ``on_batch_end`` (else the loop skips building logs)."""
        for cb in self.callbacks:
            method = getattr(type(cb), "on_batch_end", None)
            if method is not None and method is not Callback.on_batch_end:
                return True
        return False

    def __iter__(self) -> Any:
        return iter(self.callbacks)


# ----------------------------------------------------------------------------------------------
# Reading and setting an optimizer's learning rate
# ----------------------------------------------------------------------------------------------


def get_lr(optimizer: Any) -> float | None:
    """The optimizer's learning rate (``optimizer.lr``, which for ``nnxp.optim`` optimizers is
    the default parameter group's), else its last group's ``"lr"``; None if it has none."""
    lr = getattr(optimizer, "lr", None)
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        return float(lr)
    groups = getattr(optimizer, "param_groups", None)
    if groups and isinstance(groups[-1], dict) and groups[-1].get("lr") is not None:
        return float(groups[-1]["lr"])
    return None


def set_lr(optimizer: Any, lr: float) -> None:
    """Set the learning rate of ``optimizer`` (``optimizer.lr`` and every parameter group's)."""
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) \
            or lr < 0:
        raise ValueError(f"a schedule returned the learning rate {lr!r}; expected a finite "
                         "float >= 0")
    if hasattr(optimizer, "lr"):
        optimizer.lr = float(lr)
    for group in getattr(optimizer, "param_groups", None) or []:
        if isinstance(group, dict):
            group["lr"] = float(lr)
        elif hasattr(group, "lr"):
            group.lr = float(lr)


# ----------------------------------------------------------------------------------------------
# EarlyStopping
# ----------------------------------------------------------------------------------------------


class EarlyStopping(Callback):
    """Stop training when a monitored quantity has not improved for ``patience`` epochs.

    After each epoch, the value ``v = logs[monitor]`` counts as an improvement on the best value
    ``b`` seen so far when ``v < b − min_delta`` (``mode="min"``) or ``v > b + min_delta``
    (``mode="max"``). Training stops at the end of the ``patience``-th epoch in a row without
    improvement: with ``patience=2`` and the best value in epoch 3, training stops after epoch 5
    (as in Keras).

    Parameters
    ----------
    monitor
        Key of the epoch logs to watch: ``"val_loss"`` (the default; ``"loss"`` is used instead,
        with a note in :attr:`monitor_used`, when ``fit`` has no validation data), ``"loss"``,
        ``"val_accuracy"``, ...
    patience
        Epochs in a row without improvement after which training stops (>= 0; 0 and 1 both
        stop at the end of the first epoch that does not improve).
    min_delta
        Smallest change that counts as an improvement (>= 0).
    mode
        ``"min"``, ``"max"``, or ``"auto"``: ``"max"`` for names containing ``accuracy`` or
        ending in ``r2``, ``"min"`` otherwise.
    restore_best_weights
        At the end of training, put back the parameters (and buffers) of the best epoch. The
        snapshot is a copy on the device, taken at every improvement.
    baseline
        When given, it is the value to beat: training also stops when no epoch has beaten it
        within the first ``patience`` epochs.

    Attributes
    ----------
    best, best_epoch
        The best monitored value and the epoch (from 1) it was reached in.
    stopped_epoch
        The epoch after which training was stopped, 0 when it ran to the end.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        *,
        patience: int = 0,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = False,
        baseline: float | None = None,
    ) -> None:
        patience = check_int(patience, argument="patience", low=0)
        if not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ValueError(f"min_delta must be a float >= 0, got {min_delta!r}")
        check_choice(mode, ("auto", "min", "max"), argument="mode")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be the name of a logged quantity, got {monitor!r}")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = float(min_delta)
        self.mode = _resolve_mode(mode, monitor)
        self.restore_best_weights = check_flag(restore_best_weights,
                                               argument="restore_best_weights")
        if baseline is not None and (isinstance(baseline, bool)
                                     or not isinstance(baseline, (int, float))):
            raise TypeError(f"baseline must be a number or None, got {baseline!r}")
        self.baseline = baseline
        self._reset()

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        if self.baseline is not None:
            self.best = float(self.baseline)
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch = 0
        self.monitor_used = self.monitor
        self.best_weights: Any = None

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self._reset()

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch: int, logs: Logs) -> None:
        key = self.monitor
        if key not in logs and key.startswith("val_") and key[4:] in logs:
            key = key[4:]  # no validation data: watch the training value instead
        if key not in logs:
            raise KeyError(f"EarlyStopping(monitor={self.monitor!r}): the epoch logs have no "
                           f"{self.monitor!r}; available: {', '.join(sorted(logs))}")
        self.monitor_used = key
        value = float(logs[key])
        if math.isfinite(value) and self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights and self.model is not None:
                self.best_weights = self.model.snapshot_weights()
            return
        self.wait += 1
        if self.wait >= self.patience and self.model is not None:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def state_dict(self) -> dict[str, Any]:
        """The best value and epoch, the patience counter, the stopped epoch and (with
        ``restore_best_weights``) the best weights, as host copies."""
        state: dict[str, Any] = {"best": self.best, "best_epoch": self.best_epoch,
                                 "wait": self.wait, "stopped_epoch": self.stopped_epoch}
        if self.best_weights is not None:
            state["best_weights"] = [
                ({k: backend.to_numpy(v).copy() for k, v in params.items()},
                 {k: backend.to_numpy(v).copy() for k, v in buffers.items()})
                for params, buffers in self.best_weights]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (the best weights go to the model's device)."""
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.wait = int(state["wait"])
        self.stopped_epoch = int(state.get("stopped_epoch", 0))
        weights = state.get("best_weights")
        if weights is not None and self.model is not None:
            xp, device = self.model.xp, self.model.device
            self.best_weights = [
                tuple({k: backend.asarray(v, xp=xp, device=device, copy=True)
                       for k, v in part.items()} for part in layer)
                for layer in weights]

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self.restore_best_weights and self.best_weights is not None \
                and self.model is not None:
            self.model.restore_weights(self.best_weights)

    def __repr__(self) -> str:
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
                f"min_delta={self.min_delta}, mode={self.mode!r}, "
                f"restore_best_weights={self.restore_best_weights})")


def _resolve_mode(mode: str, monitor: str) -> str:
    if mode != "auto":
        return mode
    name = monitor.lower()
    if "acc" in name or name.endswith("r2"):
        return "max"
    return "min"


# ----------------------------------------------------------------------------------------------
# LearningRateScheduler
# ----------------------------------------------------------------------------------------------


class LearningRateScheduler(Callback):
    """Change the optimizer's learning rate between epochs from a schedule.

    ``schedule`` may be

    * a callable ``schedule(epoch) -> lr`` or ``schedule(epoch, lr) -> lr`` (the current rate is
      passed when it takes two arguments). It is called in ``on_epoch_begin`` with the number of
      epochs completed so far (0 before the first epoch, as in Keras and torch), and the
      result is written to the optimizer (``optimizer.lr`` and each parameter group's ``lr``);
    * a schedule object with a ``step()`` method (:mod:`nnxp.schedules`,
      torch.optim.lr_scheduler style). One created without an optimizer
      (``StepLR(step_size=10)``) is attached to the model's optimizer when training begins.
      Its ``step()`` is called in ``on_epoch_end``, once per epoch, after the epoch's
      updates. A plateau schedule — one whose ``step`` takes the monitored value (it has a
      ``requires_metric = True`` attribute, or its class name contains "Plateau") — gets
      ``step(logs[monitor])``.

    A callable sets one rate for every parameter group; a schedule object scales each group
    from its own base rate.

    Parameters
    ----------
    schedule
        The callable or schedule object.
    monitor
        The log entry passed to a plateau schedule (``"val_loss"``, falling back to ``"loss"``
        without validation data).
    verbose
        Print the new rate when it changes.
    """

    def __init__(self, schedule: Any, *, monitor: str = "val_loss",
                 verbose: int = 0) -> None:
        has_step = callable(getattr(schedule, "step", None))
        if not has_step and not callable(schedule):
            raise TypeError("schedule must be a callable epoch -> lr or an object with a step() "
                            f"method, got {schedule!r}")
        self.schedule = schedule
        self.monitor = monitor
        self.verbose = verbose
        self._stepper = has_step
        self._needs_metric = has_step and (
            bool(getattr(schedule, "requires_metric", False))
            or "plateau" in type(schedule).__name__.lower()
        )
        self._n_args = 1 if has_step else _positional_arity(schedule)
        if not has_step:
            try:
                params = list(inspect.signature(schedule).parameters.values())
            except (TypeError, ValueError):  # builtins without a signature
                params = []
            required = [p.name for p in params if p.default is inspect.Parameter.empty and p.kind
                        in (inspect.Parameter.POSITIONAL_ONLY,
                            inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            if len(required) > 2 or (params and self._n_args == 0):
                raise TypeError(f"schedule must be callable as schedule(epoch) or "
                                f"schedule(epoch, lr), got {schedule!r}, which takes "
                                f"({', '.join(p.name for p in params)})")
        self._completed = 0

    @property
    def optimizer(self) -> Any:
        opt = getattr(self.model, "optimizer", None)
        if opt is None:
            raise RuntimeError("LearningRateScheduler needs a model with an optimizer; use it "
                               "through fit(..., callbacks=[...])")
        return opt

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self._completed = 0
        bind = getattr(self.schedule, "bind", None)
        if self._stepper and callable(bind) and getattr(self.schedule, "optimizer", 0) is None:
            bind(self.optimizer)  # a schedule created without an optimizer: attach it now

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        if self._stepper:
            return
        opt = self.optimizer
        old = get_lr(opt)
        if self._n_args >= 2:
            lr = self.schedule(self._completed, old)
        else:
            lr = self.schedule(self._completed)
        set_lr(opt, float(lr))
        if self.verbose and old != float(lr):
            print(f"epoch {epoch}: learning rate {old} -> {float(lr)}")

    def on_epoch_end(self, epoch: int, logs: Logs) -> None:
        self._completed += 1
        if not self._stepper:
            return
        old = get_lr(getattr(self.model, "optimizer", None))
        if self._needs_metric:
            key = self.monitor
            if key not in logs and key.startswith("val_") and key[4:] in logs:
                key = key[4:]
            if key not in logs:
                raise KeyError(f"LearningRateScheduler(monitor={self.monitor!r}): the epoch logs "
                               f"have no {self.monitor!r}; available: {', '.join(sorted(logs))}")
            self.schedule.step(float(logs[key]))
        else:
            self.schedule.step()
        new = get_lr(getattr(self.model, "optimizer", None))
        if self.verbose and old != new:
            print(f"epoch {epoch}: learning rate {old} -> {new}")

    def state_dict(self) -> dict[str, Any]:
        """``{"completed": epochs seen, "schedule": the schedule object's state_dict()}``."""
        state: dict[str, Any] = {"completed": self._completed}
        get = getattr(self.schedule, "state_dict", None)
        if self._stepper and callable(get):
            state["schedule"] = get()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the stored epoch; a schedule object gets its own stored state (which
        re-applies its learning rate)."""
        self._completed = int(state["completed"])
        load = getattr(self.schedule, "load_state_dict", None)
        if "schedule" in state and callable(load):
            load(state["schedule"])

    def __repr__(self) -> str:
        return f"LearningRateScheduler({self.schedule!r})"


def _positional_arity(fn: Any) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(1 for p in params if p.kind in kinds)


# ----------------------------------------------------------------------------------------------
# TerminateOnNaN
# ----------------------------------------------------------------------------------------------


class TerminateOnNaN(Callback):
    """Stop training quietly, instead of raising, when the loss becomes NaN or infinite.

    Without this callback ``fit`` raises :class:`~nnxp.training.TrainingDivergedError` on
    divergence. With it, ``fit`` keeps the last finite weights (see the divergence policy in
    ``Sequential.fit``), records the event in ``history.diverged``, stops, calls
    ``on_train_end`` and returns the history. It also stops training when any loss in the epoch
    logs (e.g. ``val_loss``) is not finite.

    Attributes
    ----------
    triggered
        The divergence message, or None while training went well.
    """

    handles_divergence = True

    def __init__(self) -> None:
        self.triggered: str | None = None

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self.triggered = None

    def on_divergence(self, message: str) -> None:
        """Called by ``fit`` when it detects a non-finite loss (before it stops)."""
        self.triggered = message

    def on_epoch_end(self, epoch: int, logs: Logs) -> None:
        bad = [k for k, v in logs.items()
               if k.endswith("loss") and isinstance(v, float) and not math.isfinite(v)]
        if bad and self.model is not None:
            self.triggered = f"{bad[0]} became {logs[bad[0]]} in epoch {epoch}"
            self.model.stop_training = True

    def __repr__(self) -> str:
        return "TerminateOnNaN()"


# ----------------------------------------------------------------------------------------------
# ModelCheckpoint
# ----------------------------------------------------------------------------------------------


class ModelCheckpoint(Callback):
    """Save the model after epochs: weights and, by default, everything needed to resume.

    Each save is :meth:`Sequential.save <nnxp.model.Sequential.save>` (atomic: a crash
    mid-save keeps the previous file). With ``include_optimizer=True`` the file is a full
    checkpoint — optimizer state, step and epoch counters, the shuffling generator — that
    ``fit(..., resume_from=path)`` continues from, bit-identically.

    Parameters
    ----------
    filepath
        Destination; may hold ``str.format`` fields filled from ``epoch`` and the epoch logs,
        e.g. ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``. A fixed name is overwritten each time.
    monitor
        The logged quantity that decides what "best" is with ``save_best_only``
        (``"val_loss"``, falling back to ``"loss"`` when ``fit`` has no validation data).
    save_best_only
        Save only when the monitored value improves on the best one so far (by more than
        ``min_delta``); otherwise save after every ``period``-th epoch.
    mode
        ``"min"``, ``"max"`` or ``"auto"`` (``"max"`` for accuracies and R², else ``"min"``).
    period
        Consider saving every ``period`` epochs (>= 1).
    include_optimizer
        Store the optimizer state and counters (a resumable checkpoint) or the weights only.
    min_delta
        Smallest change that counts as an improvement (>= 0).

    Attributes
    ----------
    best, best_epoch
        The best monitored value seen and its epoch (with ``save_best_only``).
    saved
        The paths written, in order.
    """

    writes_files = True
    """Data-parallel training (:mod:`nnxp.distributed`) runs it on rank 0 only."""

    def __init__(self, filepath: Any, *, monitor: str = "val_loss",
                 save_best_only: bool = False, mode: str = "auto", period: int = 1,
                 include_optimizer: bool = True, min_delta: float = 0.0) -> None:
        import os  # noqa: PLC0415 - only this callback needs it

        try:
            self.filepath = os.fspath(filepath)
        except TypeError:
            raise TypeError(f"filepath must be a str or path, got {filepath!r}") from None
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be the name of a logged quantity, got {monitor!r}")
        check_choice(mode, ("auto", "min", "max"), argument="mode")
        period = check_int(period, argument="period", low=1)
        if not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ValueError(f"min_delta must be a float >= 0, got {min_delta!r}")
        self.monitor = monitor
        self.save_best_only = check_flag(save_best_only, argument="save_best_only")
        self.mode = _resolve_mode(mode, monitor)
        self.period = period
        self.include_optimizer = check_flag(include_optimizer, argument="include_optimizer")
        self.min_delta = float(min_delta)
        self.saved: list[str] = []
        self._reset()

    runs_last = True  # save after the other callbacks' on_epoch_end: their state is current

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        """``{"best": float, "best_epoch": int}`` (what ``save_best_only`` compares with)."""
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])

    def on_train_begin(self, logs: Logs | None = None) -> None:
        import os  # noqa: PLC0415 - only this callback needs it

        self._reset()
        # fail before the first epoch, not after it: a missing folder or a folder given as
        # the file name would otherwise stop training only when the first save is due
        if "{" not in self.filepath:
            if os.path.isdir(self.filepath):
                raise IsADirectoryError(f"ModelCheckpoint(filepath={self.filepath!r}) is a "
                                        "directory; give a file name such as "
                                        f"{os.path.join(self.filepath, 'ckpt.npz')!r}")
        parent = os.path.dirname(os.path.abspath(self.filepath))
        if "{" not in parent and not os.path.isdir(parent):
            raise FileNotFoundError(f"ModelCheckpoint(filepath={self.filepath!r}): the "
                                    f"directory {parent} does not exist")

    def _path(self, epoch: int, logs: Logs) -> str:
        try:
            return self.filepath.format(epoch=epoch, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"ModelCheckpoint(filepath={self.filepath!r}) cannot be filled "
                             f"from epoch and the logs ({', '.join(sorted(logs))}): "
                             f"{type(exc).__name__}: {exc}") from None

    def on_epoch_end(self, epoch: int, logs: Logs) -> None:
        if epoch % self.period or self.model is None:
            return
        if self.save_best_only:
            key = self.monitor
            if key not in logs and key.startswith("val_") and key[4:] in logs:
                key = key[4:]  # no validation data: watch the training value
            if key not in logs:
                raise KeyError(f"ModelCheckpoint(monitor={self.monitor!r}): the epoch logs "
                               f"have no {self.monitor!r}; available: "
                               f"{', '.join(sorted(logs))}")
            value = float(logs[key])
            better = (value < self.best - self.min_delta if self.mode == "min"
                      else value > self.best + self.min_delta)
            if not (math.isfinite(value) and better):
                return
            self.best, self.best_epoch = value, epoch
        path = self._path(epoch, logs)
        self.model.save(path, include_optimizer=self.include_optimizer)
        self.saved.append(path)

    def __repr__(self) -> str:
        return (f"ModelCheckpoint({self.filepath!r}, monitor={self.monitor!r}, "
                f"save_best_only={self.save_best_only}, mode={self.mode!r})")
