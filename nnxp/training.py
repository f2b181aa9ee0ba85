"""The training loop behind ``Sequential.fit``, ``partial_fit`` and ``train_on_batch``.

This module owns everything that happens while a model trains: checking the loop's options,
preparing the data (sample weights, the validation split or set, the metrics, binding the
optimizer), the epoch loop with its batches and optimizer steps (closure optimizers included),
the divergence guard, the silencing of floating-point warnings, and the :class:`History` that
``fit`` returns.

``fit`` and ``partial_fit`` share one code path, :func:`fit`, which differs between them only in
what ``incremental=True`` implies: one epoch, numbered after the epochs already trained, the
metrics in use kept unless new ones are given, and no ``validation_split`` or ``resume_from``.

The model is known here only through its attributes and methods (``layers``, ``xp``,
``device``, ``loss``, ``optimizer``, ``forward``, ``backward``, ``penalty``,
``apply_constraints``, ``snapshot_weights``, ...): this module never imports
:mod:`nnxp.model` at run time, so the dependency points one way, from the model to its
training loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from . import archive, backend, data
from . import diagnostics as diag
from . import distributed as dist  # mpi4py itself is imported only when a run asks for it
from . import precision as prec
from .accumulation import GradientSum, part_bounds
from .callbacks import CallbackList, get_lr
from .losses import Loss, get_loss
from .metrics import get_metrics, may_hold_batch_arrays
from .optim import SGD, Optimizer
from .progress import EpochProgress
from .summary import format_bytes, memory_plan
from .typing import Array
from .validation import check_features, check_flag, check_positive, check_sample_weight

if TYPE_CHECKING:  # pragma: no cover - for the type checker only: no import cycle at run time
    from .model import Sequential

__all__ = ["History", "TrainingDivergedError", "fit", "train_on_batch"]


class TrainingDivergedError(FloatingPointError):
    """The training loss (or a parameter) became NaN or infinite.

    Attributes
    ----------
    epoch, step
        Where it happened: the epoch (from 1) and the optimizer step counted from the start of
        this ``fit`` call (from 1); None when unknown.
    """

    def __init__(self, message: str, *, epoch: int | None = None,
                 step: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step


class History:
    """Per-epoch training record returned by :meth:`Sequential.fit`.

    Attributes
    ----------
    history
        Maps ``"loss"``, the metric names (``"accuracy"``, ...), ``"val_loss"``,
        ``"val_<metric>"``, ``"lr"`` (the learning rate the epoch ran with) and
        ``"epoch_time"`` (seconds, validation included) to one float per epoch.
    epoch
        The epoch numbers (from 1 in ``fit``; ``partial_fit`` numbers them cumulatively).
    diagnostics
        Filled by ``fit(..., diagnostics=True)``: ``"grad_norm"``, ``"dead_fraction"``,
        ``"saturated_fraction"`` (each ``{layer label: [one float per epoch]}``), ``"kind"`` and
        ``"epoch"``; see :mod:`nnxp.diagnostics`.
    diverged
        None, or the message saying where the loss became non-finite when training stopped
        quietly on divergence (with :class:`~nnxp.callbacks.TerminateOnNaN`).
    capture
        None, or with ``fit(capture=True)``: ``{"recorder": the kind of graph or None,
        "graphs": graphs recorded, "replays": steps replayed, "static_steps": steps run
        unrecorded from the static buffers, "not_recorded": None or why recording was given
        up}`` (see ``docs/training.md``).
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.diagnostics: dict[str, Any] = {}
        self.diverged: str | None = None
        self.capture: dict[str, Any] | None = None

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: object) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.epoch)

    def __repr__(self) -> str:
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"

    def diagnostics_table(self, *, epoch: int | None = None) -> str:
        """The recorded diagnostics as text (see :func:`nnxp.diagnostics.format_table`)."""
        return diag.format_table(self, epoch=epoch)

    def plot(self, path: Any, *, title: str | None = None) -> None:
        """Write a PNG to ``path``: the loss (and ``val_loss``) per epoch, one panel per metric
        (with its validation curve), and the learning rate when it changed.

        Needs matplotlib (the ``plot`` extra: ``pip install 'nnxp[plot]'``), imported only
        here; the object-oriented API is used, so no GUI backend or pyplot state is touched.
        """
        if not self.epoch:
            raise ValueError("the history is empty: nothing to plot")
        bases = [k for k in self.history
                 if not k.startswith("val_") and k not in ("lr", "epoch_time")]
        for k in self.history:  # a validation-only entry still gets a panel
            if k.startswith("val_") and k[4:] not in bases:
                bases.append(k[4:])
        lrs = self.history.get("lr", [])
        show_lr = len(set(lrs)) > 1
        panels = len(bases) + (1 if show_lr else 0)
        fig, axes = diag.new_figure(1, panels, size=(4.5 * panels, 3.6))
        for ax, base in zip(axes[0], bases):
            for key, style in ((base, "-"), ("val_" + base, "--")):
                if key in self.history:
                    ax.plot(self.epoch, self.history[key], style, marker=".", label=key)
            ax.set_xlabel("epoch")
            ax.set_title(base)
            ax.legend(fontsize="small")
        if show_lr:
            ax = axes[0][-1]
            ax.plot(self.epoch, lrs, marker=".")
            ax.set_xlabel("epoch")
            ax.set_title("learning rate")
        if title:
            fig.suptitle(title)
        fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------------------------
# The entry points: fit / partial_fit and train_on_batch
# ----------------------------------------------------------------------------------------------


def fit(
    model: Sequential,
    X: Any,
    y: Any,
    *,
    incremental: bool,
    loss: str | Loss | None,
    optimizer: Optimizer | None,
    batch_size: int | None,
    shuffle: bool,
    verbose: int,
    validation_data: tuple[Any, Any] | None,
    metrics: Any,
    callbacks: Iterable[Any] | None,
    diagnostics: bool,
    check_finite_every: int | None,
    keep_finite_weights: bool,
    sample_weight: Any,
    epochs: int = 1,
    validation_split: float = 0.0,
    resume_from: Any = None,
    distributed: Any = False,
    accumulate: int = 1,
    capture: bool = False,
    memory_budget: Any = None,
    precision: str = "float32",
    loss_scale: Any = None,
) -> History:
    """Train ``model``: the one code path of :meth:`Sequential.fit` and ``partial_fit``.

    The arguments are those of :meth:`Sequential.fit` (which documents them), plus
    ``incremental``, which says which of the two is calling:

    * ``incremental=False`` (``fit``): train epochs ``1 .. epochs`` — or, with
      ``resume_from``, from the epoch after the checkpoint's up to ``epochs`` — and resolve
      ``metrics`` afresh (``None`` meaning the loss's default).
    * ``incremental=True`` (``partial_fit``): train one epoch, numbered after
      ``model.epochs_trained``; keep the metrics in use unless ``metrics`` or a new ``loss`` is
      given. ``epochs``, ``validation_split`` and ``resume_from`` must keep their defaults.

    In both, ``loss=None`` and ``optimizer=None`` keep the model's (the optimizer defaulting to
    ``SGD(lr=0.01)`` the first time), and a given optimizer is bound to the parameters only if
    it is not already, so its state carries over from call to call.

    Returns
    -------
    History
        The epochs this call trained; also stored as ``model.history``.
    """
    if incremental:
        if epochs != 1 or validation_split or resume_from is not None:
            raise ValueError("incremental training runs one epoch, without validation_split "
                             "or resume_from")
    else:
        check_positive(epochs, argument="epochs", integer=True)
    _check_loop_options(shuffle=shuffle, diagnostics=diagnostics, verbose=verbose,
                        keep_finite_weights=keep_finite_weights, batch_size=batch_size,
                        check_finite_every=check_finite_every)
    _check_step_options(model, accumulate=accumulate, capture=capture,
                        optimizer=optimizer if optimizer is not None else model.optimizer,
                        distributed=distributed)
    prec.check_precision(precision, model.xp, model.dtype)
    prec.check_loss_scale(loss_scale)
    parallel = distributed is not False and distributed is not None  # nnxp.distributed
    if precision != "float32" and parallel:
        raise ValueError(f"precision={precision!r} is not supported with distributed "
                         "training yet; expected precision='float32'")
    cbs = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks)
    if loss is not None:
        model.loss = get_loss(loss)
    given = (X, y, sample_weight)
    X, y, w = _training_data(model, X, y, sample_weight, batch_size, memory_budget)
    if parallel and isinstance(X, data.Stream):
        raise ValueError("distributed training does not stream: X does not fit the device "
                         "memory budget; give each rank its own shard that fits (see "
                         "docs/streaming.md)")
    placed = _placed_bytes((X, y, w), given)  # before the split: X_val is a view of X
    X, y, val = _validation_sets(model, X, y, validation_split, validation_data)
    if isinstance(validation_data, (tuple, list)) and val is not None:
        placed += _placed_bytes(val, tuple(validation_data)[:2])
    if w is not None and w.shape[0] != X.shape[0]:
        w = w[:X.shape[0]]  # validation_split held out the last samples
    if not incremental or metrics is not None or model.metrics is None or loss is not None:
        model.metrics = get_metrics(metrics, is_classifier=model.loss.is_classifier,
                                    loss=model.loss)
    if resume_from is not None and optimizer is None:
        optimizer = archive.checkpoint_optimizer(resume_from)
    opt = _use_optimizer(model, optimizer)
    _check_step_options(model, accumulate=accumulate, capture=capture, optimizer=opt,
                        distributed=distributed)  # again: a checkpoint may name the optimizer
    check_memory_plan(model, opt, batch_size=X.shape[0] if batch_size is None else
                      min(batch_size, X.shape[0]), memory_budget=memory_budget,
                      keep_finite_weights=keep_finite_weights and parallel,
                      accumulate=accumulate, precision=precision, data_bytes=placed,
                      stream_bytes=X.device_bytes() if isinstance(X, data.Stream) else 0)
    if incremental:
        first_epoch = last_epoch = model.epochs_trained + 1
    else:
        first_epoch, last_epoch = 1, epochs
    if resume_from is not None:
        first_epoch = archive.restore_checkpoint(model, resume_from, opt) + 1
        if first_epoch > epochs:
            raise ValueError(f"the checkpoint {resume_from} has completed "
                             f"{first_epoch - 1} epochs already; epochs={epochs} is the "
                             "total to reach, so nothing is left to train")
    resumed = archive.checkpoint_callback_states(resume_from) if resume_from is not None \
        else None
    policy = prec.resolve(precision, loss_scale, model)  # after a restore: its loss scaler
    if parallel:
        return _fit_distributed(model, X, y, val, distributed, opt, cbs, dict(
            first_epoch=first_epoch, last_epoch=last_epoch, batch_size=batch_size,
            shuffle=shuffle, verbose=verbose, diagnostics=diagnostics,
            check_finite_every=check_finite_every, sample_weight=w,
            keep_finite_weights=keep_finite_weights, callback_states=resumed,
            accumulate=accumulate), resumed=resume_from is not None)
    return _run_epochs(model, X, y, val, optimizer=opt, first_epoch=first_epoch,
                       last_epoch=last_epoch, batch_size=batch_size, shuffle=shuffle,
                       verbose=verbose, callbacks=cbs, diagnostics=diagnostics,
                       check_finite_every=check_finite_every, sample_weight=w,
                       keep_finite_weights=keep_finite_weights, callback_states=resumed,
                       accumulate=accumulate, capture=capture, precision=policy)


def _fit_distributed(model: Sequential, X: Array, y: Array, val: Any, distributed: Any,
                     opt: Optimizer, cbs: CallbackList, loop: dict[str, Any], *,
                     resumed: bool) -> History:
    """``fit(..., distributed=...)``: the same loop with a :class:`nnxp.distributed.Replica`
    (rank 0 alone shows progress and runs the callbacks that write files); an exception on
    one rank aborts every rank (see :mod:`nnxp.distributed`)."""
    options = distributed if isinstance(distributed, dist.DataParallel) else None
    if options is None and distributed is not True:
        raise TypeError("distributed must be True, False or an nnxp.distributed.DataParallel, "
                        f"got {distributed!r}")
    n = X.shape[0]
    replica = dist.Replica(model, X, y, optimizer=opt,
                           batch_size=n if loop["batch_size"] is None else loop["batch_size"],
                           epochs=loop["last_epoch"], shuffle=loop["shuffle"],
                           sample_weight=loop["sample_weight"], resumed=resumed,
                           options=options, verbose=loop["verbose"],
                           accumulate=loop["accumulate"])
    if replica.rank != 0:
        loop["verbose"] = 0
        cbs = CallbackList([cb for cb in cbs if not getattr(cb, "writes_files", False)])
    try:
        return _run_epochs(model, X, y, val, optimizer=opt, callbacks=cbs, replica=replica,
                           **loop)
    except TrainingDivergedError:
        raise  # the same on every rank: the averaged gradients spread a NaN to all
    except BaseException as exc:  # one rank alone: stop every rank, naming this one
        replica.fail(exc)
        raise


def train_on_batch(model: Sequential, X: Any, y: Any, *, loss: str | Loss | None,
                   optimizer: Optimizer | None, accumulate: int = 1,
                   precision: str = "float32", loss_scale: Any = None) -> float:
    """One optimizer step on the batch ``(X, y)``: :meth:`Sequential.train_on_batch`, which
    documents it. Returns the loss before the update, read on the host.

    ``accumulate=k`` computes the step's gradient from ``k`` contiguous micro-batches of the
    batch (sizes differing by at most one, :func:`nnxp.accumulation.part_bounds`), combined
    exactly as ``fit(accumulate=k)`` combines its micro-batches: the same step, with the
    activations of one micro-batch alive at a time.

    A first-order step is gated on the device (loss, gradients and buffers finite) and the
    loss and the gate come back in one transfer: a non-finite step raises with the weights,
    buffers and optimizer state unchanged. A closure optimizer keeps a copy instead."""
    _check_step_options(model, accumulate=accumulate, capture=False,
                        optimizer=optimizer if optimizer is not None else model.optimizer,
                        distributed=False)
    prec.check_precision(precision, model.xp, model.dtype)
    prec.check_loss_scale(loss_scale)
    if loss is not None:
        model.loss = get_loss(loss)
    X, y = model.check_data(X, y)
    m = X.shape[0]
    if accumulate > m:
        raise ValueError(f"accumulate={accumulate} splits the batch into {accumulate} "
                         f"micro-batches, but it holds {m} samples; give accumulate <= {m}")
    opt = _use_optimizer(model, optimizer)
    policy = prec.resolve(precision, loss_scale, model)
    closure_based = getattr(opt, "requires_closure", False)
    saved = model.snapshot_weights() if closure_based else None
    result = math.nan
    if not closure_based:
        xp = model.xp
        scaled = policy is not None and policy.scaler is not None
        guard = _FiniteGuard(model, None, gated=not scaled, host=scaled, optimizer=opt)
        counts = guard.counts_start
        with _silence_fp_warnings():
            if accumulate == 1:
                value, _ = _step(model, X, y, opt, guard=guard, precision=policy)
            else:
                micro = [(X[lo:hi, ...], y[lo:hi, ...], None) for lo, hi in
                         (part_bounds(m, accumulate, i) for i in range(accumulate))]
                value, _ = _accumulated_step(model, micro, opt, guard=guard, precision=policy)
        gate = guard.ok if guard.ok is not None else xp.isfinite(value)
        host = backend.to_numpy(xp.stack([xp.astype(value, xp.float64),
                                          xp.astype(gate, xp.float64)])).tolist()
        result = float(host[0])
        if host[1] != 1.0:
            if guard.mode == "gate":
                opt.rewind(1)
                for layer, state in zip(guard.counting, counts):  # its batches: not counted
                    layer.set_extra_state(state)
            what = f"the loss is {result}" if not math.isfinite(result) else \
                "a gradient or buffer is NaN or infinite"
            raise TrainingDivergedError(
                f"train_on_batch: {what}; the update was skipped and the weights are "
                f"unchanged. {_ADVICE.format(opt=opt)}")
        return result

    def check(value: Array) -> None:
        nonlocal result
        result = backend.to_float(value)

    with _silence_fp_warnings():
        _step(model, X, y, opt, before_update=check, precision=policy)
    if not math.isfinite(result):
        if saved is not None:
            model.restore_weights(saved)
        raise TrainingDivergedError(
            f"train_on_batch: the loss is {result}; the weights were restored to those "
            f"before the step. {_ADVICE.format(opt=opt)}")
    return result


# ----------------------------------------------------------------------------------------------
# Set-up: options, data, optimizer
# ----------------------------------------------------------------------------------------------


class MemoryPlanError(MemoryError):
    """``fit`` refused to start: the memory plan of a training step exceeds the memory
    available (the device's free memory, or the configured budget)."""


def check_memory_plan(model: Sequential, optimizer: Any, *, batch_size: int,
                      memory_budget: Any = None, keep_finite_weights: bool = False,
                      precision: str | None = None, accumulate: int = 1,
                      data_bytes: int = 0, stream_bytes: int = 0) -> Any:
    """Refuse, before any step, a training step that will not fit (:mod:`nnxp.summary`).

    Compares the plan's total with :func:`nnxp.backend.available_memory` (the device's free
    memory on GPU backends, the ``memory_budget`` argument or the configured budget —
    ``nnxp.set_memory_budget``, ``NNXP_MEMORY_BUDGET`` — whichever is smaller). Added to the
    plan: the divergence guard's copy of the parameters and buffers when
    ``keep_finite_weights`` (only distributed training keeps one; elsewhere the guard gates
    the update on the device and copies nothing), and the gradient-sized sum of
    ``accumulate > 1``, whose micro-batches have ``batch_size`` samples; the training data
    that ``fit`` copied onto the device (``data_bytes``) when the limit is a budget (a measured
    free memory was measured after the copy); and the two chunks a data stream holds on the
    device (``stream_bytes``). Without a limit (a CPU backend and no budget) nothing is
    planned. Returns the plan, or None.
    """
    limit = backend.available_memory(memory_budget, xp=model.xp, device=model.device)
    if limit.nbytes is None:
        return None
    plan = memory_plan(model, batch_size, precision=precision, optimizer=optimizer)
    total = plan.memory["total"] or 0
    mem = plan.memory
    extras = []  # (bytes, what) beyond the step itself
    if keep_finite_weights:
        extras.append((int(mem["parameters"] or 0) + int(mem["buffers"] or 0),
                       "the divergence guard's copy of the weights (keep_finite_weights=False "
                       "saves it)"))
    if accumulate > 1:  # nnxp.accumulation.GradientSum: one more set of gradients
        extras.append((int(mem["gradients"] or 0), f"the gradient sum of accumulate={accumulate}"))
    if data_bytes and not limit.measured:
        extras.append((data_bytes, "the training data fit placed on the device"))
    if stream_bytes:
        extras.append((stream_bytes, "the two chunks of the data stream on the device"))
    guard = sum(n for n, _ in extras)
    if total + guard <= limit.nbytes:
        return plan
    fits = plan.largest_batch_size(limit.nbytes, extra=guard)
    advice = (f"the largest batch size that fits is {fits}" if fits else
              "no batch size fits: the parameters, gradients, optimizer state and the "
              "update's temporaries alone need more; use a smaller model")
    if stream_bytes:
        advice += (f", or stream smaller chunks (two of the largest take "
                   f"{format_bytes(stream_bytes)}: cut the nnxp.data.Chunks parts smaller)")
    parts = (f": {format_bytes(total)} for the step plus "
             + " plus ".join(f"{format_bytes(n)} for {what}" for n, what in extras)
             if extras else "")
    raise MemoryPlanError(
        f"memory_budget: a training step with batch_size={batch_size} needs "
        f"{total + guard:,} bytes ({format_bytes(total + guard)}{parts}), but "
        f"{limit.nbytes:,} bytes "
        f"({format_bytes(limit.nbytes)}) are available ({limit.source}); {advice}. "
        "See model.summary(batch_size=...) for the plan per layer")


def _check_loop_options(*, shuffle: Any, diagnostics: Any, verbose: Any,
                        keep_finite_weights: Any = True, batch_size: Any = None,
                        check_finite_every: Any = None) -> None:
    """The options of ``fit``/``partial_fit``, all checked before anything changes the model
    (a checkpoint restore included). A truthy string such as ``"no"`` must not silently switch
    a flag on."""
    if batch_size is not None:
        check_positive(batch_size, argument="batch_size", integer=True)
    if check_finite_every is not None:
        check_positive(check_finite_every, argument="check_finite_every", integer=True)
    check_flag(shuffle, argument="shuffle")
    check_flag(diagnostics, argument="diagnostics")
    check_flag(keep_finite_weights, argument="keep_finite_weights")
    if not isinstance(verbose, bool):  # verbose=True reads as 1
        check_positive(verbose, argument="verbose", integer=True, allow_zero=True)


def _check_step_options(model: Sequential, *, accumulate: Any, capture: Any, optimizer: Any,
                        distributed: Any) -> None:
    """``accumulate`` and ``capture``, and the combinations refused, before any step."""
    check_positive(accumulate, argument="accumulate", integer=True)
    check_flag(capture, argument="capture")
    name = type(optimizer).__name__
    closure = getattr(optimizer, "requires_closure", False)
    parallel = distributed is not False and distributed is not None
    if accumulate > 1 and closure:
        raise ValueError(f"accumulate={accumulate} needs a first-order optimizer; {name} "
                         "re-evaluates the loss in a closure, which would have to run all "
                         "the micro-batches each time: use accumulate=1 with a larger "
                         "batch_size")
    if capture:
        if closure:
            raise ValueError(f"capture=True needs a first-order optimizer; {name} reads the "
                             "loss on the host inside its step, which a recorded graph "
                             "cannot replay")
        if parallel:
            raise ValueError("capture=True together with distributed=... is not supported "
                             "(the all-reduce runs on the host between backward and update)")
        if accumulate > 1:
            raise ValueError(f"capture=True together with accumulate={accumulate} is not "
                             "supported: use one or the other (see docs/training.md)")
        if not backend.supports_inplace(model.xp):
            raise ValueError("capture=True copies every batch into static input buffers, "
                             "which needs a backend whose arrays can be written in place "
                             f"(numpy, cupy, torch); got the namespace {model.xp.__name__}")


def _training_data(model: Sequential, X: Any, y: Any, sample_weight: Any,
                   batch_size: int | None, memory_budget: Any = None) -> tuple[Any, Any, Any]:
    """``(X, y, sample_weight)`` checked and on the device, or ``(Stream, None, None)`` for a
    memory map or :class:`nnxp.data.Chunks` that does not fit the device (see
    :mod:`nnxp.data`); everything is checked here, before any step."""
    if data.is_streamable(X):
        X, y, sample_weight = data.prepare(model, X, y, sample_weight, batch_size=batch_size,
                                           memory_budget=memory_budget)
        if isinstance(X, data.Stream):
            return X, None, None
    X, y = model.check_data(X, y)
    return X, y, _sample_weight(model, sample_weight, X.shape[0])


def _placed_bytes(placed: tuple[Any, ...], given: tuple[Any, ...]) -> int:
    """Bytes of the arrays in ``placed`` that ``fit`` made (copies onto the device, casts),
    not the caller's own ``given`` arrays used as they are, nor a stream."""
    total = 0
    for a, original in zip(placed, given):
        if a is not None and a is not original and backend.is_array(a):
            total += math.prod(a.shape) * backend.itemsize(a.dtype)
    return total


def _sample_weight(model: Sequential, sample_weight: Any, n_samples: int) -> Array | None:
    """Checked per-sample weights in the model's dtype, or None."""
    if sample_weight is None:
        return None
    return check_sample_weight(sample_weight, n_samples, dtype=model.dtype, xp=model.xp,
                               device=model.device)


def _use_optimizer(model: Sequential, optimizer: Optimizer | None) -> Optimizer:
    """The optimizer for this call, bound to the parameters only if it is not already."""
    if optimizer is None:
        optimizer = model.optimizer if model.optimizer is not None else SGD(lr=0.01)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an nnxp.optim optimizer, got {optimizer!r}")
    refs = model.parameters()
    bound = getattr(optimizer, "_refs", None)
    same = isinstance(bound, list) and len(bound) == len(refs) and all(
        a[0] is b[0] and a[1] == b[1] for a, b in zip(bound, refs))
    if not same:
        optimizer.bind(refs)
    model.optimizer = optimizer
    return optimizer


def _validation_sets(model: Sequential, X: Array, y: Array, validation_split: float,
                     validation_data: Any) -> tuple[Array, Array, Any]:
    """Split off or check the validation data: ``(X_train, y_train, (X_val, y_val) | None)``."""
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) \
            or not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be a float in [0, 1), got "
                         f"{validation_split!r}")
    if validation_data is not None and validation_split:
        raise ValueError("give validation_split or validation_data, not both (got "
                         f"validation_split={validation_split})")
    if validation_split and isinstance(X, data.Stream):
        raise ValueError(f"validation_split={validation_split} cannot be used with streamed "
                         "data (a memory map or nnxp.data.Chunks larger than the device memory "
                         "budget): hold out a validation set yourself and pass it as "
                         "validation_data (which may be streamed too)")
    if isinstance(validation_data, data.Chunks):
        validation_data = (validation_data, None)
    if validation_data is not None and isinstance(validation_data, (tuple, list)) \
            and len(validation_data) == 2 and data.is_streamable(validation_data[0]):
        Xv, yv, _ = data.prepare(model, validation_data[0], validation_data[1],
                                 argument="validation_data[0]")
        if isinstance(Xv, data.Stream):
            return X, y, (Xv, None)
        validation_data = (Xv, yv)
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a pair (X_val, y_val), got "
                            f"{type(validation_data).__name__}"
                            + (f" of length {len(validation_data)}"
                               if isinstance(validation_data, (tuple, list)) else ""))
        Xv = check_features(validation_data[0], n_features=model.n_features,
                            dtype=model.dtype, xp=model.xp, device=model.device,
                            argument="validation_data[0]")
        try:
            yv = model.loss.check_targets(validation_data[1], model.n_outputs or 1,
                                          xp=model.xp, device=model.device,
                                          n_samples=Xv.shape[0], dtype=model.dtype)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"validation_data[1]: {exc}") from None
        return X, y, (Xv, yv)
    if validation_split:
        n = X.shape[0]
        n_train = int(math.floor(n * (1.0 - validation_split)))
        if n_train < 1 or n_train >= n:
            raise ValueError(f"validation_split={validation_split} of {n} samples leaves "
                             f"{n_train} for training and {n - n_train} for validation; "
                             "both need at least one")
        return (X[:n_train, ...], y[:n_train, ...],
                (X[n_train:n, ...], y[n_train:n, ...]))
    return X, y, None


# ----------------------------------------------------------------------------------------------
# The loop: epochs, batches, steps
# ----------------------------------------------------------------------------------------------


def _run_epochs(model: Sequential, X: Array, y: Array, val: Any, *, optimizer: Optimizer,
                first_epoch: int, last_epoch: int, batch_size: int | None, shuffle: bool,
                verbose: int, callbacks: Iterable[Any] | None, diagnostics: bool,
                check_finite_every: int | None, sample_weight: Array | None,
                keep_finite_weights: bool, replica: Any = None,
                callback_states: list[Any] | None = None, accumulate: int = 1,
                capture: bool = False, precision: prec.Policy | None = None) -> History:
    """Epochs ``first_epoch .. last_epoch`` on checked arrays and options, with the callbacks,
    the progress bar and the divergence guard (see the Notes of :meth:`Sequential.fit`).

    With ``accumulate=k`` every optimizer step consumes ``k`` consecutive batches (the last
    step of an epoch may take fewer): the batch loop runs over steps, each a list of
    micro-batches given to :func:`_accumulated_step`; callbacks' ``on_batch_end``, the
    progress bar and ``check_finite_every`` count optimizer steps."""
    xp, n = model.xp, X.shape[0]
    bs = n if batch_size is None else min(batch_size, n)
    n_batches = math.ceil(n / (bs if replica is None else bs * replica.size))
    n_batches = math.ceil(n_batches / accumulate)  # optimizer steps per epoch
    batches, step_fn = (_batches, _step) if replica is None else (replica.batches, replica.step)
    accumulated_step = _accumulated_step if replica is None else replica.accumulated_step
    static = _StaticStep(model, optimizer) if capture else None
    if static is not None:
        step_fn = static
        if replica is None:
            batches = functools.partial(_batches, into=static.buffers)
    if isinstance(X, data.Stream):
        batches = _stream_batches
    _check_batch_sizes(model, n, bs)
    metrics = model.metrics or []
    # with capture, a step's outputs and targets are static buffers: a metric that may keep
    # them (Metric.holds_batch_arrays) gets copies
    held = [static is not None and may_hold_batch_arrays(m) for m in metrics]
    cbs = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks)
    quiet = any(getattr(cb, "handles_divergence", False) for cb in cbs)
    batch_hooks = cbs.has_batch_hooks
    recorder = (diag.DiagnosticsRecorder(model, _first_rows(X, min(n, diag.PROBE_SIZE)))
                if diagnostics else None)
    history = History()
    model.history = history
    model.stop_training = False
    scaled = precision is not None and precision.scaler is not None
    guard = _FiniteGuard(model, check_finite_every, keep=keep_finite_weights,
                         gated=replica is None, host=scaled, optimizer=optimizer)
    step_options: dict[str, Any] = ({} if replica is not None
                                    else {"guard": guard, "precision": precision})
    undo = _StepUndo(model, optimizer)
    # the plain steps (not a replica's, not a recorded one, whose copy must be device work
    # inside its graph) share the undo's copy of the buffers
    share = replica is None and static is None
    progress = EpochProgress(epochs=last_epoch, n_batches=n_batches, verbose=verbose)
    before_update = None if recorder is None else recorder.before_update
    if static is not None:
        history.capture = static.report
    _begin_callbacks(model, cbs, callback_states)
    step = 0
    with _silence_fp_warnings():
        try:
            for epoch in range(first_epoch, last_epoch + 1):
                cbs.on_epoch_begin(epoch, {})
                lr = get_lr(optimizer)
                started = time.perf_counter()
                progress.start_epoch(epoch)
                order = _epoch_order(model, X, shuffle)
                loss_sum = xp.zeros((), dtype=xp.float64, device=model.device)
                states: list[Any] = [None] * len(metrics)
                for batch, micro in enumerate(_step_groups(
                        batches(X, y, bs, sample_weight, order, xp=xp), accumulate)):
                    with undo:
                        if share:  # the gate reads the undo's copy of the buffers
                            step_options["saved"] = undo.buffers
                        if accumulate == 1:
                            xb, yb, wb = micro[0]
                            value, out = step_fn(model, xb, yb, optimizer,
                                                 before_update=before_update, wb=wb,
                                                 **step_options)
                            outs = [out]
                        else:
                            value, outs = accumulated_step(model, micro, optimizer,
                                                           before_update=before_update,
                                                           **step_options)
                    size = sum(part[0].shape[0] for part in micro)
                    step += 1
                    # a new array, which the guard keeps: a replayed step's loss is the graph's
                    # output array, which the next replay overwrites (not copied for nothing)
                    value64 = xp.astype(value, xp.float64)
                    loss_sum = loss_sum + value64 * size
                    for i, metric in enumerate(metrics):
                        for out, (_, yb, _) in zip(outs, micro):
                            if held[i]:  # static buffers, overwritten by the next step
                                out, yb = xp.asarray(out, copy=True), xp.asarray(yb, copy=True)
                            states[i] = metric.update(states[i], out, yb, xp=xp)
                    guard.record(value64, epoch, batch, step)
                    if guard.due(step):
                        guard.check(f"after step {step} (epoch {epoch})")
                    if batch_hooks:
                        if static is not None:  # the callback may keep it
                            value = xp.asarray(value, copy=True)
                        cbs.on_batch_end(batch, {"loss": value, "size": size})
                        if static is not None:
                            static.notice_host_code()
                    progress.advance()
                if replica is not None:  # every rank's shard in the logs
                    loss_sum, states = replica.reduce_epoch(loss_sum, states, metrics, model)
                names = ["loss"] + [m.name for m in metrics]
                arrays = [loss_sum / n] + [m.result(s, xp=xp) for m, s in zip(metrics, states)]
                if val is not None:
                    v_names, v_arrays = model.evaluate_arrays(
                        val[0], val[1], metrics, max(bs, 4096), prefix="val_")
                    names, arrays = names + v_names, arrays + v_arrays
                diag_arrays = recorder.epoch_arrays() if recorder is not None else []
                flag = guard.flag()
                host = backend.to_numpy(xp.stack(arrays + diag_arrays + [flag]))  # one transfer
                values = [float(v) for v in host.tolist()]
                if values[-1] != 1.0:
                    raise guard.diverged()
                guard.commit(f"at the end of epoch {epoch} (after step {step})")
                logs: dict[str, Any] = dict(zip(names, values[:len(names)]))
                if lr is not None:
                    logs["lr"] = lr
                logs["epoch_time"] = time.perf_counter() - started
                if recorder is not None:
                    recorder.record(epoch, values[len(names):-1], history.diagnostics)
                model.epochs_trained += 1
                progress.end_epoch(epoch, logs)
                cbs.on_epoch_end(epoch, logs)
                if static is not None:  # on_epoch_begin too: it runs before the next step
                    static.notice_host_code()
                history.append(epoch, logs)
                if model.stop_training:
                    break
        except _Diverged as event:
            guard.restore()
            message = event.describe(guard, n_batches, optimizer)
            if not quiet:
                raise TrainingDivergedError(message, epoch=event.epoch, step=event.step) \
                    from None
            history.diverged = message
            for cb in cbs:
                hook = getattr(cb, "on_divergence", None)
                if hook is not None:
                    hook(message)
            model.stop_training = True
        finally:
            progress.close()
            if static is not None:
                static.close()
    cbs.on_train_end({})
    return history


def _check_batch_sizes(model: Sequential, n: int, batch_size: int) -> None:
    """Refuse, before the first step, a batch size that a layer cannot train on.

    A layer declares ``min_training_batch`` (BatchNorm1d: 2, a variance needs two samples);
    ``n`` samples in batches of ``batch_size`` give full batches and a last one of
    ``n − (⌈n/batch_size⌉ − 1) · batch_size`` samples. Without this check the last batch of an
    epoch raised after the earlier steps had already changed the weights.
    """
    last = n - (math.ceil(n / batch_size) - 1) * batch_size
    smallest = min(batch_size, last)
    for i, layer in enumerate(model.layers):
        need = int(getattr(layer, "min_training_batch", 1))
        if smallest < need:
            where = (f"batches of {batch_size}" if smallest == batch_size else
                     f"{n} training samples in batches of {batch_size}, which leave a last "
                     f"batch of {last}")
            raise ValueError(f"layers[{i}] ({type(layer).__name__}) needs at least {need} "
                             f"samples per batch in training, but fit would use {where}; "
                             "choose a batch_size that leaves no such batch (or drop that many "
                             "samples)")


class _StepUndo:
    """``with undo: step`` — an exception escaping the step (an error in a layer, an interrupt)
    puts back every layer's buffers and extra state (BatchNorm's running statistics and batch
    count, updated by the forward pass) as they were before the step.

    Parameters are changed only by the optimizer's update, after the forward and backward
    passes: an error before it leaves them as they were, so nothing is copied. A layer that
    replaces its buffers is undone from references to the old arrays (no device work); one that
    writes into them (``buffers_in_place``: BatchNorm1d on numpy, cupy, torch) from a copy
    taken here, written back in place (two ``(C,)`` vectors per batch-norm layer and step, the
    cost of keeping its arrays alive across steps, which a recorded step needs). Plus a small
    dict per layer with extra state. An unrecorded step's divergence gate and loss scaler use
    the same copies (:attr:`buffers`) instead of taking their own.

    An exception that arrives once the update is applied (the optimizer's ``iterations`` moved:
    an interrupt as a recorded step's launch returns, an error in a constraint after the
    update) keeps the whole step — the parameters cannot be taken back, so the buffers and
    counts stay with them rather than one step behind.
    """

    def __init__(self, model: Sequential, optimizer: Optimizer) -> None:
        self.layers: list[tuple[Any, Any]] = [
            (layer, getattr(layer, "get_extra_state", None)) for layer in model.layers
            if getattr(layer, "buffers", None)
            or callable(getattr(layer, "get_extra_state", None))]
        self.optimizer = optimizer
        self.iterations = optimizer.iterations
        self.saved: list[tuple[Any, tuple[dict[str, Any], bool], Any]] = []

    def __enter__(self) -> None:
        self.iterations = self.optimizer.iterations
        self.saved = [(layer, _saved_buffers(layer),
                       get_state() if callable(get_state) else None)
                      for layer, get_state in self.layers]

    @property
    def buffers(self) -> _Buffers:
        """The buffers saved for this step, in the form of :func:`_buffer_refs`."""
        return [(layer, saved) for layer, saved, _ in self.saved if saved[0]]

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if kind is not None and self.optimizer.iterations == self.iterations:
            _put_back(self.buffers)
            for layer, _, extra in self.saved:
                if extra is not None:
                    layer.set_extra_state(extra)
        self.saved = []


def _saved_buffers(layer: Any) -> tuple[dict[str, Array], bool]:
    """``(buffers, in_place)``: references to a layer's buffer arrays, or copies of them when
    the layer writes into them (``buffers_in_place``)."""
    buffers = getattr(layer, "buffers", None) or {}
    if buffers and getattr(layer, "buffers_in_place", False):
        xp = layer.xp
        return {key: xp.asarray(value, copy=True) for key, value in buffers.items()}, True
    return dict(buffers), False


def _begin_callbacks(model: Sequential, cbs: CallbackList, states: list[Any] | None) -> None:
    """``set_model`` and ``on_train_begin``, then (resuming) the callbacks' stored states.

    ``model.active_callbacks`` names the running callbacks so that a checkpoint saved during
    this fit (ModelCheckpoint) stores their state beside the model's and the optimizer's.
    """
    cbs.set_model(model)
    model.active_callbacks = cbs
    cbs.on_train_begin({})
    if states:
        cbs.load_state_dicts(states)


def _batches(X: Array, y: Array, batch_size: int, w: Array | None, order: Array | None, *,
             xp: Any, into: Callable[..., tuple[Array, Array, Array | None]] | None = None,
             ) -> Iterator[tuple[Array, Array, Array | None]]:
    """The epoch's batches: slices in order, or gathered batch by batch along ``order``.

    Gathering each batch from the permutation (rather than taking a shuffled copy of the
    whole data set up front) keeps the extra memory of shuffling at one batch.
    y: (n,) labels or (n, k) targets; w: (n,) sample weights or None. ``into(x, y, w)``, given
    :class:`_Like` descriptions of a batch, returns arrays to gather it into (the static
    buffers of ``fit(capture=True)``, :meth:`_StaticStep.buffers`): a gathered batch is then
    written there (:func:`nnxp.backend.row_taker` with ``out=``) rather than into new arrays.
    """
    n = X.shape[0]
    take = backend.row_taker(xp)  # a permutation's indices are non-negative
    dests: dict[int, tuple[Array, Array, Array | None]] = {}  # into()'s arrays, per batch size
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)  # the standard leaves out-of-bounds stops unspecified
        if order is None:
            yield X[start:stop, ...], y[start:stop, ...], None if w is None else w[start:stop]
            continue
        idx = order[start:stop]
        if into is None:
            yield take(X, idx), take(y, idx), None if w is None else take(w, idx)
            continue
        rows = stop - start
        dest = dests.get(rows)
        if dest is None:
            dest = dests[rows] = into(_Like(X, rows), _Like(y, rows),
                                      None if w is None else _Like(w, rows))
        bx, by, bw = dest
        yield (take(X, idx, out=bx), take(y, idx, out=by),
               None if w is None else take(w, idx, out=bw))


def _step_groups(stream: Iterable[tuple[Array, Array, Array | None]], k: int,
                 ) -> Iterator[list[tuple[Array, Array, Array | None]]]:
    """The epoch's batches in lists of ``k`` consecutive ones: the micro-batches of each
    optimizer step (the last list of an epoch may be shorter)."""
    group: list[tuple[Array, Array, Array | None]] = []
    for item in stream:
        group.append(item)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


def _accumulated_step(model: Sequential, micro: list[tuple[Array, Array, Array | None]],
                      optimizer: Optimizer,
                      before_update: Callable[[Array], None] | None = None, *,
                      guard: _FiniteGuard | None = None,
                      precision: prec.Policy | None = None,
                      saved: _Buffers | None = None) -> tuple[Array, list[Array]]:
    """One optimizer step from several micro-batches: ``(0-d loss of the step, outputs)``.

    Each micro-batch ``i`` of ``n_i`` samples runs forward and backward on its own (its own
    batch-norm statistics, dropout masks, running-statistics update); its gradient, the mean
    over its samples, enters the step's gradient with the weight ``n_i / N``
    (:class:`nnxp.accumulation.GradientSum`), so the step's gradient is the exact mean over
    the ``N`` samples of the step, sample weights included. The step's loss is
    ``Σ_i (n_i/N) L_i`` plus the weight penalty, added once. The optimizer (its clipping
    included) then steps once on the summed gradient, through the same update phase as
    :func:`_step`: the divergence guard's gate and a loss scaler look at the summed gradient
    (an overflow in any micro-batch makes it non-finite), once per step. With ``precision``,
    each micro-batch runs in the low precision and hands back float32, unscaled gradients.
    ``saved`` as in :func:`_step`.
    """
    xp = model.xp
    total = sum(xb.shape[0] for xb, _, _ in micro)
    buffers = ((_buffer_refs(model) if saved is None else saved)
               if _watched(guard, precision) else [])
    grads = GradientSum(model, total)
    value: Array | None = None
    outs: list[Array] = []
    for xb, yb, wb in micro:
        for layer in model.layers:  # each micro-batch's gradient alone; the sum is kept aside
            layer.grads.clear()
        if precision is not None:  # its loss includes the penalty, weighted to one in the sum
            part, out = precision.loss_and_backward(model, xb, yb, wb)
        else:
            out = model.forward(xb, training=True)
            part, cache = model.loss.forward(  # weights checked once in fit
                out, yb, xp=xp, sample_weight=wb, validate_sample_weight=False)
            model.backward(model.loss.backward(cache, xp=xp), need_input_grad=False)
        grads.add(xb.shape[0])
        weighted = part * (xb.shape[0] / total)
        value = weighted if value is None else value + weighted
        outs.append(out)
    assert value is not None  # micro is never empty
    grads.write()
    if model.has_penalty and precision is None:  # once per step, at the weights all saw
        value = value + model.penalty()
    _update(model, value, optimizer, buffers, before_update=before_update, guard=guard,
            precision=precision)
    return value, outs


def _epoch_order(model: Sequential, X: Any, shuffle: bool) -> Any:
    """The epoch's shuffle, drawn from ``model.data_rng``: a permutation of the samples moved
    to the device (one copy per epoch), or for a stream its host-side plan (chunk order, then
    the rows within each chunk; :meth:`nnxp.data.Stream.epoch_plan`). None without shuffle."""
    if not shuffle:
        return None
    if isinstance(X, data.Stream):
        return X.epoch_plan(model.data_rng)
    return model.data_rng.permutation(X.shape[0], xp=model.xp, device=model.device)


def _stream_batches(X: data.Stream, y: Any, batch_size: int, w: Any, order: Any, *,
                    xp: Any) -> Iterator[tuple[Array, Array, Array | None]]:
    """:func:`_batches` for streamed data: the targets and weights travel inside ``X``."""
    return X.batches(batch_size, order)


def _first_rows(X: Any, k: int) -> Array:
    """The first ``k`` rows of the training features on the device (the diagnostics' probe)."""
    return X.head(k) if isinstance(X, data.Stream) else X[:k, ...]


def _step(model: Sequential, xb: Array, yb: Array, optimizer: Optimizer,
          before_update: Callable[[Array], None] | None = None,
          wb: Array | None = None, *, guard: _FiniteGuard | None = None,
          precision: prec.Policy | None = None,
          saved: _Buffers | None = None) -> tuple[Array, Array]:
    """One optimizer step on a batch; returns ``(0-d loss before the update, outputs)``.

    ``before_update(loss)`` runs after the backward pass, before ``optimizer.step()`` (for
    a closure optimizer: after its step, with the gradients of its last evaluation).

    ``guard`` (the divergence guard of ``fit``) gates the update on the device: the step is a
    no-op unless the loss, every gradient and every buffer the forward pass changed are finite
    (and every step since the last check point was); see :meth:`_FiniteGuard.admit`.
    ``precision`` runs the forward and backward passes in a low precision
    (:mod:`nnxp.precision`); with a loss scaler the step reads one flag back to the host and
    skips the update on inf/NaN gradients, as ``torch.amp.GradScaler`` does.
    The gradients of the previous step are released before the forward pass (torch's
    ``zero_grad(set_to_none=True)``), so that they and the new ones never coexist.
    ``saved``: the layers' buffers as saved before this step (:attr:`_StepUndo.buffers`),
    used by the gate instead of a second copy.
    """
    xp = model.xp

    def loss_and_backward() -> tuple[Array, Array]:
        for layer in model.layers:
            layer.grads.clear()
        if precision is not None:
            return precision.loss_and_backward(model, xb, yb, wb)
        out = model.forward(xb, training=True)
        value, cache = model.loss.forward(  # weights checked once in fit
            out, yb, xp=xp, sample_weight=wb, validate_sample_weight=False)
        if model.has_penalty:  # weight penalties, at the weights of this forward
            value = value + model.penalty()
        model.backward(model.loss.backward(cache, xp=xp), need_input_grad=False)
        return value, out

    if getattr(optimizer, "requires_closure", False):
        first: list[tuple[Array, Array]] = []

        def closure() -> float:
            """Recompute the loss and gradients on this batch; return the loss."""
            value, out = loss_and_backward()
            if not first:
                first.append((value, out))
            return backend.to_float(value)

        optimizer.step(closure)
        if not first:  # an optimizer that never evaluated: log the current loss
            closure()
        if before_update is not None:
            before_update(first[0][0])
        model.apply_constraints()
        return first[0]
    buffers = ((_buffer_refs(model) if saved is None else saved)
               if _watched(guard, precision) else [])
    value, out = loss_and_backward()
    _update(model, value, optimizer, buffers, before_update=before_update, guard=guard,
            precision=precision)
    return value, out


def _watched(guard: _FiniteGuard | None, precision: prec.Policy | None) -> bool:
    """Whether the step's update is gated or scaled, so its buffers must be watched."""
    return (guard is not None and guard.mode == "gate") or \
        (precision is not None and precision.scaler is not None)


def _update(model: Sequential, value: Array, optimizer: Optimizer,
            buffers: _Buffers, *,
            before_update: Callable[[Array], None] | None, guard: _FiniteGuard | None,
            precision: prec.Policy | None) -> None:
    """The update phase of a first-order step, once ``layer.grads`` hold the step's gradient:
    ``before_update``, then the optimizer step — gated on the device by ``guard``, or, with a
    loss scaler, skipped on the host when a gradient overflowed — and the constraints.
    ``buffers`` are the layers' buffers from before the step's first forward pass."""
    xp = model.xp
    scaler = precision.scaler if precision is not None else None
    if before_update is not None:
        before_update(value)
    if scaler is not None:  # the one host read per step of loss scaling
        ok = _all_finite(model, value, buffers, optimizer)
        flags = backend.to_numpy(xp.stack([xp.astype(ok, xp.float32),
                                           xp.astype(xp.isfinite(value), xp.float32)]))
        halted = guard is not None and guard.halt(bool(flags[1] == 1.0))
        if flags[0] == 1.0 and not halted:
            optimizer.step()
        else:
            _put_back(buffers)
        if not halted:
            scaler.update(found_inf=bool(flags[0] != 1.0))
    elif guard is not None and guard.mode == "gate":
        ok = _all_finite(model, value, buffers, optimizer)
        optimizer.step(gate=guard.admit(ok, buffers))
    else:
        optimizer.step()
    model.apply_constraints()


class _StaticStep:
    """``fit(capture=True)``: :func:`_step` run on static input buffers, one set per batch
    shape, and recorded as a device graph where :func:`nnxp.backend.graph_capture` offers a
    recorder (CuPy, torch CUDA).

    Per batch shape: the batch (inputs, targets, sample weights) is copied in place into the
    shape's buffers, and the step reads only those. With a recorder, the first step of a
    shape runs eagerly and is *checked*: every array that outlives a step (parameters,
    layer buffers, optimizer state) must still be the same object afterwards, and no host-side
    value a step *reads* may have changed — else a replay would read stale memory or a frozen
    number. What a step reads is declared: an optimizer's :meth:`~nnxp.optim.Optimizer.
    reads_host_state` (Adam's ``step``, for its bias corrections), a layer's
    ``reads_host_state`` (BatchNorm1d's ``num_batches_tracked`` with ``momentum=None``). The
    other host values are bookkeeping — the optimizer's step counts, BatchNorm1d's batch count
    — which a replay, running no Python, leaves alone: the loop advances them by hand after
    every replay (:meth:`nnxp.optim.Optimizer.advance`, ``layer.advance_host_state``), and the
    check step verifies that this reproduces what the eager step did. When the check passes,
    the second step of that shape is recorded (not executed) and replayed, and every later step
    is a copy into the buffers and one replay. A change of the optimizer's options (a schedule
    editing ``lr``) records the graph again. When the check fails, recording is given up for
    the run with a RuntimeWarning giving the reason, and the steps run unrecorded from the
    static buffers. The loss and outputs of a replay are the graph's static output arrays,
    which the next replay overwrites: the loop reads them before it (stream order) and keeps
    only copies (the float64 loss it sums; a copy for batch callbacks). The divergence guard's
    gate is kept in one array updated in place (:meth:`_FiniteGuard.use_static_flag`).
    """

    def __init__(self, model: Sequential, optimizer: Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.recorder = backend.graph_capture(model.xp, model.device)
        if self.recorder is not None:
            for i, layer in enumerate(model.layers):
                if getattr(layer, "generator", None) is not None:
                    raise ValueError(
                        f"capture=True: layers[{i}] ({type(layer).__name__}) draws random "
                        "numbers in training (dropout masks, random slopes), and a recorded "
                        "step would replay the same draws every time; train this model with "
                        "capture=False")
        # layers whose host-side count a training step advances without reading it
        self.counting: list[Any] = [layer for layer in model.layers
                         if callable(getattr(layer, "advance_host_state", None))
                         and not getattr(layer, "reads_host_state", True)]
        self.slots: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.host_code_ran = False  # see notice_host_code
        self.last_view: list[tuple[str, Any]] | None = None  # after the last step Python ran
        # the next check step puts back arrays replaced from outside: by a callback, or before
        # this fit (resume_from=, restore_weights, EarlyStopping's best weights), which the
        # first step copies into the optimizer's flat buffers
        self.repair = True
        # an update that computes numbers from the step count (Adam) reads them from device
        # tables while steps are recorded (nnxp.optim.steptable): bit for bit the same
        # turned on at the first step (inside fit's try block, whose finally calls close(),
        # which turns them off again: an error before the first step leaves them as they were)
        self.tables = False
        self.tables_pending = self.recorder is not None
        self.report: dict[str, Any] = {
            "recorder": None if self.recorder is None else self.recorder.kind,
            "graphs": 0, "replays": 0, "static_steps": 0, "not_recorded": None}

    def __call__(self, model: Sequential, xb: Array, yb: Array, optimizer: Optimizer,
                 before_update: Callable[[Array], None] | None = None,
                 wb: Array | None = None, **options: Any) -> tuple[Array, Array]:
        guard = options.get("guard")
        if guard is not None and guard.mode == "gate":
            guard.use_static_flag()
        slot = self._slot(xb, yb, wb)
        if xb is not slot["x"]:  # (gathered straight into the slot: buffers())
            slot["x"][...] = xb
        if yb is not slot["y"]:
            slot["y"][...] = yb
        if wb is not None and wb is not slot["w"]:
            slot["w"][...] = wb
        if self.recorder is not None and before_update is not None:
            self.report["not_recorded"] = ("diagnostics=True runs host code between the "
                                           "backward pass and the update of every step")
        precision = options.get("precision")
        if self.recorder is not None and precision is not None \
                and precision.scaler is not None:
            self.report["not_recorded"] = (
                "loss scaling (precision='float16') reads on the host, every step, whether "
                "the gradients overflowed, and skips or applies the update and moves its "
                "scale accordingly")
        result = self._run(slot, before_update, options)
        if guard is not None:
            guard.note_step()
        return result

    def _slot(self, xb: Any, yb: Any, wb: Any) -> dict[str, Any]:
        """The static buffers (and graph) of this batch shape, made on its first batch; the
        batch may be arrays or ``(shape, dtype, device)`` descriptions of them."""
        key = (tuple(xb.shape), tuple(yb.shape), wb is None)
        slot = self.slots.get(key)
        if slot is None:
            xp = self.model.xp

            def static(a: Any) -> Any:
                if a is None:
                    return None
                device = a.device if isinstance(a, _Like) else backend.device_of(a)
                return xp.zeros(tuple(a.shape), dtype=a.dtype, device=device)

            slot = self.slots[key] = {
                "x": static(xb), "y": static(yb), "w": static(wb), "graph": None,
                "checked": False, "options": None, "outputs": None}
        return slot

    def buffers(self, x: Any, y: Any, w: Any) -> tuple[Array, Array, Array | None]:
        """The static buffers of a batch shape (``_batches(into=)``, asked once per shape and
        epoch; a slot's buffers are never replaced): a shuffled batch is gathered straight
        into them, which :meth:`__call__` then does not copy again — two or three device copies
        (launches) fewer per step."""
        slot = self._slot(x, y, w)
        return slot["x"], slot["y"], slot["w"]

    def close(self) -> None:
        """The end of ``fit``: the optimizer computes its step numbers on the host again."""
        if self.tables:
            self.optimizer.use_step_tables(False)

    def notice_host_code(self) -> None:
        """User code ran between steps (a callback): before the next replay, check that it
        left every array a graph holds and every host value a graph froze as they were
        (:meth:`_revalidate`)."""
        self.host_code_ran = True

    def _revalidate(self) -> None:
        """When a callback replaced or changed what the steps hold (assigned a new parameter
        array, restored a snapshot, replaced a BatchNorm statistic) since the last step:
        drop every shape's graph and check (a replay would read and write the old memory, a
        recording would copy the stale array in). The next step runs eagerly — the optimizer
        takes the new arrays up, which its check accepts once (:attr:`repair`) — and each shape
        is checked again before it is recorded again. Replays leave the view as it was, so
        one view after the last eager step or recording serves every shape."""
        self.host_code_ran = False
        if self.last_view is None or _host_view(self.model, self.optimizer) == self.last_view:
            return
        self.repair = True
        for slot in self.slots.values():
            slot.update(graph=None, checked=False)

    def _run(self, slot: dict[str, Any], before_update: Callable[[Array], None] | None,
             options: dict[str, Any]) -> tuple[Array, Array]:
        model, optimizer = self.model, self.optimizer
        if self.recorder is None or self.report["not_recorded"] is not None:
            return self._eager(slot, before_update, options)
        if self.tables_pending:
            self.tables_pending = False
            self.tables = not optimizer.uses_step_tables and optimizer.use_step_tables(True)
        if self.host_code_ran:
            self._revalidate()
        settings = _step_settings(optimizer)
        if slot["checked"] and slot["options"] != settings:
            # The options changed since this shape was checked (a schedule, a callback). A new
            # option may make state or constants on its first use (SGD's momentum buffer,
            # AMSGrad's maximum, AdamW's 1 − γλ), which must happen in an eager step: inside a
            # recording it would happen again at every replay. Checked again, then recorded.
            slot.update(graph=None, checked=False)
            self.repair = True  # new state may re-spread the records: views made anew
        if not slot["checked"]:
            slot["options"] = settings
            optimizer.prepare_state()  # loaded records gathered now, not by the checked step
            reads = _reads_problem(optimizer)
            before = _host_view(model, optimizer)
            extra = [layer.get_extra_state() for layer in self.counting]
            result = self.recorder.warm_up(lambda: self._eager(slot, None, options))
            after = self.last_view = _host_view(model, optimizer)
            # the first step after arrays were replaced from outside puts them back into the
            # optimizer's buffers (a replacement by the step itself): then the next is checked
            changed = _compare_host_views(before, after, replaced_ok=self.repair)
            if changed in (None, "new"):
                changed = self._check_counts(extra) or changed
            self.repair = False
            problem = reads or changed
            slot["checked"] = problem != "new"  # state made by this step: check the next one
            if problem not in (None, "new"):
                self._give_up(problem)
            return result
        if slot["graph"] is None:
            problem = _reads_problem(optimizer)  # new options may make the update read more
            if problem is not None:
                self._give_up(problem)
                return self._eager(slot, None, options)
            optimizer.refresh_step_tables()  # refilled now, not inside the recording
            counts = optimizer.host_counts()
            try:
                slot["graph"], slot["outputs"] = self.recorder.capture(  # runs no device work
                    lambda: _step(model, slot["x"], slot["y"], optimizer, wb=slot["w"],
                                  **options))
            finally:
                # the recording ran the step's Python once (also when it failed or was
                # interrupted): its host counts are put back as they were (the optimizer's
                # exactly; the layers' batch counts moved back by one)
                optimizer.restore_host_counts(counts)
                for layer in self.counting:
                    layer.advance_host_state(-1)
            self.last_view = _host_view(model, optimizer)  # what the graph holds (_revalidate)
            self.report["graphs"] += 1
        graph = slot["graph"]
        launched = graph.replays
        try:
            graph.replay()
        finally:
            if graph.replays != launched:
                # the host counts a replay does not move, moved also when an interrupt arrived
                # as the launch returned (its device work queued: the weights move on)
                self.optimizer.advance(1, replayed=True)
                for layer in self.counting:
                    layer.advance_host_state(1)
                self.report["replays"] += 1
        return slot["outputs"]  # the graph's arrays: the loop copies what it keeps

    def _check_counts(self, before: list[Any]) -> str | None:
        """Whether advancing each counting layer by hand from its state before the check step
        gives the state the step left (what a replay relies on)."""
        for layer, was in zip(self.counting, before):
            after = layer.get_extra_state()
            layer.set_extra_state(was)
            layer.advance_host_state(1)
            by_hand = layer.get_extra_state()
            layer.set_extra_state(after)
            if by_hand != after:
                i = self.model.layers.index(layer)
                return (f"layers[{i}] ({type(layer).__name__}) extra state went from {was!r} "
                        f"to {after!r}, not to {by_hand!r} as a replay would count it")
        return None

    def _give_up(self, problem: str) -> None:
        self.report["not_recorded"] = problem
        warnings.warn(f"fit(capture=True): the step cannot be recorded: {problem}; "
                      "the steps run unrecorded from static buffers",
                      RuntimeWarning, stacklevel=4)

    def _eager(self, slot: dict[str, Any],
               before_update: Callable[[Array], None] | None,
               options: dict[str, Any]) -> tuple[Array, Array]:
        self.report["static_steps"] += 1
        return _step(self.model, slot["x"], slot["y"], self.optimizer,
                     before_update=before_update, wb=slot["w"], **options)


class _Like:
    """The shape, dtype and device of ``rows`` rows of an array (a batch not yet gathered)."""

    def __init__(self, a: Array, rows: int) -> None:
        self.shape = (rows, *a.shape[1:])
        self.dtype, self.device = a.dtype, backend.device_of(a)


def _reads_problem(optimizer: Optimizer) -> str | None:
    """Why the optimizer's update cannot be recorded, from the host fields it declares it
    reads (None: nothing that changes between steps)."""
    reads = optimizer.reads_host_state()
    name = type(optimizer).__name__
    if reads is None:  # undeclared: every host value counts as read (_host_view sees them)
        return None
    counted = [field for field in reads if field in _state_fields(optimizer)]
    if counted:
        return (f"{name}'s update reads its host-side state {', '.join(map(repr, counted))} "
                "(a Python number that changes every step, e.g. the step count t of its bias "
                "corrections), which a recording would freeze")
    return None


def _state_fields(optimizer: Optimizer) -> set[str]:
    state_cls = getattr(type(optimizer), "State", None)
    if state_cls is None or not dataclasses.is_dataclass(state_cls):
        return set()
    return {field.name for field in dataclasses.fields(state_cls)}


def _step_settings(optimizer: Optimizer) -> str:
    """The optimizer's options as the step reads them on the host: every group's (everything
    but the parameters), clipping and the flat layout's."""
    return repr(([{k: v for k, v in group.items() if k != "params"}
                  for group in optimizer.param_groups],
                 optimizer.clip_norm, optimizer.clip_value, optimizer.flat,
                 optimizer.update_block))


def _host_view(model: Sequential, optimizer: Optimizer) -> list[tuple[str, Any]]:
    """What a recorded step must leave as it was: ``(name, id of an array | host value)``
    for every parameter, layer buffer, layer extra state and optimizer state entry — less the
    bookkeeping a replay advances by hand: the host numbers of the optimizer's records that its
    update does not read, and the extra state of layers that count steps without reading the
    count (checked by :meth:`_StaticStep._check_counts`)."""
    view: list[tuple[str, Any]] = []
    reads = optimizer.reads_host_state()

    def walk(name: str, value: Any, counters: bool = False) -> None:
        if backend.is_array(value):
            view.append((name, ("array", id(value))))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{name}[{k!r}]", v, counters)
        elif isinstance(value, (tuple, list)):
            fields = getattr(value, "_fields", None) or range(len(value))
            for k, v in zip(fields, value):
                walk(f"{name}.{k}" if isinstance(k, str) else f"{name}[{k}]", v, counters)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for field in dataclasses.fields(value):
                v = getattr(value, field.name)
                if counters and reads is not None and field.name not in reads \
                        and isinstance(v, (int, float)) and not isinstance(v, bool):
                    continue  # bookkeeping: Optimizer.advance moves it on after a replay
                walk(f"{name}.{field.name}", v)
        else:
            view.append((name, ("value", value)))

    for i, layer in enumerate(model.layers):
        where = f"layers[{i}] ({type(layer).__name__})"
        walk(f"{where}.params", dict(layer.params))
        walk(f"{where}.buffers", dict(getattr(layer, "buffers", None) or {}))
        extra = getattr(layer, "get_extra_state", None)
        counted = callable(getattr(layer, "advance_host_state", None)) \
            and not getattr(layer, "reads_host_state", True)
        if callable(extra) and not counted:
            walk(f"{where} extra state", extra())
        view.append((f"{where} options", ("value", _plain_options(layer))))
    loss = model.loss
    view.append(("the loss", ("value", (type(loss).__name__, id(loss), _plain_options(loss)))))
    walk(f"{type(optimizer).__name__} state", dict(getattr(optimizer, "state", {}) or {}),
         counters=True)
    return view


def _plain(value: Any) -> bool:
    """A host value whose repr is the value: a number (Python's or NumPy's: ``np.float32`` is a
    ``numbers.Number``), a string, a flag, None. Not an array (its repr would read the device)."""
    return (isinstance(value, (numbers.Number, str, type(None)))
            or type(value).__name__ in ("bool", "bool_"))  # NumPy's flag, 2.x and 1.x


def _plain_options(obj: Any) -> Any:
    """The plain values of ``obj.get_config()`` (a layer's momentum and ε, a loss's label
    smoothing or δ; NumPy scalars and lists or tuples of plain values too), as reprs: options
    the step reads on the host, which a recording would freeze. Other values (initialisers,
    nested objects) are left out: their repr may differ from call to call. A ``get_config``
    that raises gives nothing to compare."""
    config = getattr(obj, "get_config", None)
    if not callable(config):
        return None
    try:
        options = config()
    except Exception:  # noqa: BLE001 - a layer that cannot describe itself: nothing to watch
        return None
    if not isinstance(options, dict):
        return None
    return tuple(sorted((str(k), repr(v)) for k, v in options.items()
                        if _plain(v) or (isinstance(v, (tuple, list))
                                         and all(_plain(e) for e in v))))


def _compare_host_views(before: list[tuple[str, Any]], after: list[tuple[str, Any]], *,
                        replaced_ok: bool = False) -> str | None:
    """None when a step left every entry as it was, else the first difference, in words;
    ``"new"`` when the only differences are entries the step created (optimizer state made
    on the first step: the next step decides) or, with ``replaced_ok``, arrays it replaced."""
    old = dict(before)
    created = False
    for name, value in after:
        was = old.get(name)
        if was == value:
            continue
        if was is None or (was == ("value", None) and value[0] == "array"):
            created = True  # an entry, or a buffer in an existing record (momentum, AMSGrad)
            continue
        if value[0] == "array" and was[0] == "array":
            if replaced_ok:
                created = True
                continue
            return (f"{name} was replaced by a new array (a recorded step must write it in "
                    "place)")
        return f"{name} is a host value that changed from {was[1]!r} to {value[1]!r}"
    return "new" if created else None


_Buffers = list[tuple[Any, tuple[dict[str, Array], bool]]]
"""Every layer's buffers before a step's forward pass (:func:`_saved_buffers`)."""


def _buffer_refs(model: Sequential) -> _Buffers:
    """Every layer's buffers before a forward pass: references to the arrays of layers that
    replace them (no copy), copies of those of layers that write into them."""
    return [(layer, _saved_buffers(layer)) for layer in model.layers
            if getattr(layer, "buffers", None)]


def _changed_buffers(buffers: _Buffers, xp: Any
                     ) -> Iterator[tuple[Any, str, Array, Array, bool]]:
    """``(layer, key, new, old, in_place)`` for each floating-point buffer the step replaced,
    or (``in_place``) that its layer writes into."""
    for layer, (old, inplace) in buffers:
        for key, before in old.items():
            now = layer.buffers.get(key)
            if now is not None and (inplace or now is not before) \
                    and xp.isdtype(now.dtype, "real floating"):
                yield layer, key, now, before, inplace


def _all_finite(model: Sequential, value: Array, buffers: _Buffers,
                optimizer: Optimizer | None = None) -> Array:
    """0-d bool on the device: the loss, every gradient and every replaced buffer are finite
    (no temporary the size of an array; no host read).

    One sum per array, all added to the loss, and one ``isfinite`` of the total: a NaN or an
    infinity anywhere makes the total non-finite (``inf − inf`` is NaN). That is one pass per
    array without a boolean array of its size, and a single ``isfinite`` (four operations on
    torch) rather than one per array. The gradients that ``optimizer``'s flat units hold
    (:meth:`nnxp.optim.Optimizer.flat_gradients`) are summed once per unit, over a contiguous
    1-D buffer: the small MLP's gate is 3 operations instead of 13 on numpy (6 instead of 28
    on torch, each a kernel launch on a GPU; the big MLP's 8 instead of 40). Half-precision
    arrays are summed in float32 (a float16 sum of ordinary gradients can pass 65504).

    Finite values whose total overflows (beyond 3.4e38 in float32) also read as non-finite:
    such a gradient or loss would overflow the update anyway, and the step is skipped and
    reported rather than applied.
    """
    xp = model.xp
    total = value
    flat, covered = optimizer.flat_gradients() if optimizer is not None else ((), set())
    for g in flat:
        total = total + _sum(g, xp)
    for layer in model.layers:
        for g in layer.grads.values():
            if id(g) not in covered:
                total = total + _sum(g, xp)
    for _, _, now, _, _ in _changed_buffers(buffers, xp):
        total = total + _sum(now, xp)
    return xp.isfinite(total)


def _sum(x: Array, xp: Any) -> Array:
    """Σ x as a 0-d array; in float32 for half-precision ``x`` (a dtype test on the host)."""
    dtype = x.dtype
    if dtype == getattr(xp, "float16", None) or dtype == getattr(xp, "bfloat16", None):
        return xp.sum(x, dtype=xp.float32)
    return xp.sum(x)


def _put_back(buffers: _Buffers) -> None:
    """The buffers as they were before a step's forward pass (a skipped step, known on the
    host; a step that raised): written back into the arrays of layers that write in place,
    the old arrays put back (and nothing else) for layers that replace them."""
    for layer, (old, inplace) in buffers:
        if inplace:
            for key, value in old.items():
                layer.buffers[key][...] = value
        else:
            layer.buffers.clear()
            layer.buffers.update(old)


@contextlib.contextmanager
def _silence_fp_warnings() -> Iterator[None]:
    """Ignore NumPy's "overflow / invalid value / divide by zero encountered" RuntimeWarnings:
    the training loop detects non-finite values itself and reports them with the epoch and
    step (under ``-W error`` such a warning would otherwise escape as an exception before the
    last finite weights are restored)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*(overflow|invalid value|divide by zero) encountered",
            category=RuntimeWarning)
        yield


# ----------------------------------------------------------------------------------------------
# The divergence guard
# ----------------------------------------------------------------------------------------------


_ADVICE = ("Lower the learning rate (optimizer={opt!r}), clip the gradients (the optimizers' "
           "clip_norm= or clip_value= option), or standardise the inputs.")


class _Diverged(Exception):
    """Internal: raised inside the training loop when a check point finds a non-finite value."""

    def __init__(self, epoch: int | None, step: int | None, batch: int | None,
                 value: float | None, last_step: int | None = None) -> None:
        super().__init__()
        self.epoch, self.step, self.batch, self.value = epoch, step, batch, value
        self.last_step = last_step

    def describe(self, guard: _FiniteGuard, n_batches: int, optimizer: Any) -> str:
        if guard.snapshot is not None:
            restored = (f"The weights were restored to those {guard.snapshot_where}, the last "
                        "check point at which every loss and parameter was finite.")
        elif guard.mode in ("gate", "host") and self.step is not None:
            restored = (f"No update from step {self.step} on was applied: the weights, buffers "
                        f"and optimizer state are those after step {self.step - 1}, the last "
                        "step whose loss, gradients and buffers were all finite.")
        elif guard.mode in ("gate", "host"):
            restored = ("The weights are left as that update made them: the guard stops "
                        "non-finite losses, gradients and buffers before they are applied, but "
                        "this update overflowed from finite gradients.")
        else:
            restored = ("The weights are left as the failing step made them "
                        "(keep_finite_weights=False kept no copy of the last finite ones).")
        if self.value is not None:
            head = (f"Training diverged: the loss became {self.value} in epoch {self.epoch}, "
                    f"step {self.step} (batch {(self.batch or 0) + 1} of {n_batches}).")
        elif self.step is not None:
            head = (f"Training diverged: a gradient, parameter or buffer (e.g. a running "
                    f"variance) became NaN or infinite in epoch {self.epoch}, step {self.step} "
                    f"(batch {(self.batch or 0) + 1} of {n_batches}), although its loss was "
                    "finite.")
        else:
            head = (f"Training diverged: a parameter or buffer (e.g. a running variance) "
                    f"became NaN or infinite by step "
                    f"{self.last_step} (epoch {self.epoch}), although every loss up to it was "
                    "finite: an update overflowed.")
        return f"{head} {restored} {_ADVICE.format(opt=optimizer)}"


class _FiniteGuard:
    """The divergence policy of ``fit`` (see its Notes): losses stay on the device until a
    check point, where one flag says whether they and the parameters are all finite.

    How the weights are kept finite (``mode``):

    ``"gate"`` (the default ``fit``)
        no copy: every step's update is gated on the device by a sticky 0-d flag — the loss,
        the gradients and the replaced buffers of this step and of every step since the last
        check point are finite (:meth:`admit`) — so a non-finite step and every step after it
        are no-ops; a failing check point finds the first such step (one more transfer, rare
        path) and rewinds the optimizer's host-side step counts by the skipped steps.
    ``"host"`` (a loss scaler: the step reads its finiteness anyway)
        the skipped steps are decided on the host (:meth:`halt`).
    ``"snapshot"`` (data-parallel ``fit``, whose step has no gate)
        a copy of the weights at every passing check point, restored by a failing one.
    ``"off"`` (``keep_finite_weights=False``)
        nothing: the weights of the failing step stay.
    """

    def __init__(self, model: Sequential, every: int | None, *, keep: bool = True,
                 gated: bool = False, host: bool = False, optimizer: Any = None) -> None:
        self.model = model
        self.every = every
        self.keep = keep  # keep_finite_weights
        self.mode = ("off" if not keep else "host" if host else "gate" if gated
                     else "snapshot")
        self.snapshot = model.snapshot_weights() if self.mode == "snapshot" else None
        self.snapshot_where = "at the start of this call"
        self.optimizer = optimizer
        self.window: list[Array] = []  # 0-d losses since the last check point
        self.where: list[tuple[int, int, int]] = []  # (epoch, batch, step) of each
        self.gates: list[Array] = []  # "gate": each step's own 0-d finiteness flag
        self.ok: Array | None = None  # "gate": the sticky flag the updates are gated by
        self.halted = False  # "host": a non-finite loss was seen, no update since
        self.skipped = 0  # gated steps to take back from the optimizer's step counts
        self.static = False  # "gate" in a recorded step: the sticky flag updated in place
        # "gate": the host-side batch counts of the layers that keep one (BatchNorm1d's
        # num_batches_tracked) at the last check point and after each step since, so that
        # the gated steps' counts are taken back with their statistics
        self.counting: list[Any] = [
            layer for layer in model.layers
            if callable(getattr(layer, "advance_host_state", None))
            and callable(getattr(layer, "get_extra_state", None))] if self.mode == "gate" else []
        self.counts_start = self._counts()
        self.counts: list[list[Any]] = []
        self.recount: list[Any] | None = None  # the counts to put back (restore)
        if self.mode == "gate":
            xp = model.xp
            self.ok = xp.ones((), dtype=xp.bool, device=model.device)

    def _counts(self) -> list[Any]:
        return [layer.get_extra_state() for layer in self.counting]

    def admit(self, finite: Array, buffers: _Buffers) -> Array:
        """``"gate"`` mode, once per step: fold this step's flag into the sticky gate, keep the
        buffers the forward pass replaced only where it is open, and return the gate."""
        xp = self.model.xp
        assert self.ok is not None
        if self.static:  # the same array every step; the caller keeps the flags (note_step)
            self.ok[...] = self.ok & finite
        else:
            self.gates.append(finite)
            self.ok = self.ok & finite
        for layer, key, now, before, inplace in list(_changed_buffers(buffers, xp)):
            if inplace:
                now[...] = xp.where(self.ok, now, before)
            else:
                layer.buffers[key] = xp.where(self.ok, now, before)
        return self.ok

    def use_static_flag(self) -> None:
        """``"gate"`` mode for ``fit(capture=True)``: :meth:`admit` writes the sticky flag
        into its one array instead of making a new one and keeps no per-step flag, since a
        replayed step runs no Python: the loop calls :meth:`note_step` after every step
        instead. The flags kept are then the sticky ones (open up to the first non-finite
        step, shut from it on), which locate the same first failing step."""
        self.static = True

    def note_step(self) -> None:
        """A copy of the sticky flag after a step of ``fit(capture=True)`` (see
        :meth:`use_static_flag`)."""
        if self.static and self.ok is not None:
            self.gates.append(self.model.xp.asarray(self.ok, copy=True))

    def halt(self, loss_finite: bool) -> bool:
        """``"host"`` mode: whether updates stop (a non-finite loss now or earlier)."""
        if self.mode == "host" and not loss_finite:
            self.halted = True
        return self.halted

    def record(self, value: Array, epoch: int, batch: int, step: int) -> None:
        self.window.append(value)
        self.where.append((epoch, batch, step))
        if self.counting:
            self.counts.append(self._counts())

    def due(self, step: int) -> bool:
        return self.every is not None and step % self.every == 0

    def flag(self) -> Array:
        """0-d float64: 1.0 when every recorded loss, every parameter and every floating-point
        buffer is finite, else 0.0."""
        xp = self.model.xp
        ok = xp.ones((), dtype=xp.bool, device=self.model.device)
        if self.ok is not None:
            ok = ok & self.ok
        if self.window:
            ok = ok & xp.all(xp.isfinite(xp.stack(self.window)))
        for layer in self.model.layers:
            for p in layer.params.values():
                ok = ok & xp.all(xp.isfinite(p))
            for b in getattr(layer, "buffers", {}).values():  # running statistics overflow too
                if xp.isdtype(b.dtype, "real floating"):
                    ok = ok & xp.all(xp.isfinite(b))
        return xp.astype(ok, xp.float64)

    def check(self, where: str) -> None:
        """A check point inside an epoch (one synchronisation)."""
        if backend.to_float(self.flag()) != 1.0:
            raise self.diverged()
        self.commit(where)

    def commit(self, where: str) -> None:
        """Everything so far is finite: keep a copy of the weights (``"snapshot"`` mode) and start
        a new window."""
        if self.mode == "snapshot":
            self.snapshot = None  # obsolete now: release it before copying, not after
            self.snapshot = self.model.snapshot_weights()
        self.snapshot_where = where
        self.window.clear()
        self.where.clear()
        self.gates.clear()
        self.counts.clear()
        self.counts_start = self._counts()

    def diverged(self) -> _Diverged:
        """Locate the first non-finite loss (or, gated, the first shut step) of the window
        (rare path: one more transfer)."""
        if self.window:
            xp = self.model.xp
            rows = [xp.astype(v, xp.float64) for v in self.window]
            gated = len(self.gates) == len(self.window)
            if gated:
                rows += [xp.astype(g, xp.float64) for g in self.gates]
            host = backend.to_numpy(xp.stack(rows)).tolist()
            losses = host[:len(self.window)]
            opened = host[len(self.window):] if gated else [1.0] * len(losses)
            for i, (value, (epoch, batch, step)) in enumerate(zip(losses, self.where)):
                if not math.isfinite(value) or opened[i] != 1.0:
                    if self.mode == "gate":
                        self.skipped = len(losses) - i  # this step and all after: gated
                        if self.counting and len(self.counts) == len(losses):
                            self.recount = self.counts[i - 1] if i else self.counts_start
                    if not math.isfinite(value):
                        return _Diverged(epoch, step, batch, float(value))
                    return _Diverged(epoch, step, batch, None)
            epoch, _, step = self.where[-1]
            return _Diverged(epoch, None, None, None, last_step=step)
        return _Diverged(None, None, None, None)

    def restore(self) -> None:
        """After a failing check point: the snapshot back, or the gated steps' counts taken
        back from the optimizer (their arrays were never changed)."""
        if self.snapshot is not None:
            self.model.restore_weights(self.snapshot)
        elif self.skipped and self.optimizer is not None:
            self.optimizer.rewind(self.skipped)
            self.skipped = 0
        if self.recount is not None:  # the gated steps' batches were not counted either
            for layer, state in zip(self.counting, self.recount):
                layer.set_extra_state(state)
            self.recount = None
