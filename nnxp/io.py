"""Saving and loading models: the functions to call, and building a model from a file.

:func:`load` (also :func:`nnxp.load`) reads a file and builds a new
:class:`~nnxp.model.Sequential` from it; :func:`from_record` does the same from a record
already in memory (the scikit-learn estimators pickle through it). Those two need the model
class, so they live here, above :mod:`nnxp.model`.

Everything else is re-exported from the module that owns it, so ``nnxp.io`` keeps offering the
names it always has:

* the file format — :func:`save`, :func:`read`, :func:`model_record`, :func:`atomic_write`,
  :func:`checkpoint_optimizer`, :func:`restore_checkpoint`, :class:`FormatError`,
  ``FORMAT``, ``FORMAT_VERSION``, ``RECORD_KEY`` — from :mod:`nnxp.archive`, which sits below
  the model (``Sequential.save`` and resuming a fit use it);
* :func:`move` (``Sequential.to``) from :mod:`nnxp.devices`;
* :func:`summary`, :func:`summary_rows`, :func:`format_bytes`, :func:`itemsize`
  (``Sequential.summary``) from :mod:`nnxp.summary`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from .archive import (
    FORMAT,
    FORMAT_VERSION,
    LIMITS,
    RECORD_KEY,
    FormatError,
    Limits,
    apply_record,
    atomic_write,
    build_layers,
    checkpoint_optimizer,
    model_record,
    read,
    restore_checkpoint,
    save,
)
from .backend import use_backend
from .devices import move
from .model import Sequential
from .summary import format_bytes, itemsize, summary, summary_rows

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LIMITS",
    "RECORD_KEY",
    "FormatError",
    "Limits",
    "atomic_write",
    "checkpoint_optimizer",
    "format_bytes",
    "from_record",
    "itemsize",
    "load",
    "model_record",
    "move",
    "read",
    "restore_checkpoint",
    "save",
    "summary",
    "summary_rows",
]


def load(path: str | os.PathLike[str], *, backend: str | None = None,
         device: Any = None, limits: Limits | None = None) -> Sequential:
    """Rebuild the model saved at ``path`` (by :meth:`Sequential.save`).

    Parameters
    ----------
    path
        An nnxp NPZ file.
    backend, device
        Where the model's arrays go: by default the active backend (so a model saved from a
        GPU loads on the CPU); e.g. ``backend="torch", device="cuda"``.
    limits
        Size and nesting caps checked before anything is allocated (:class:`Limits`; by
        default :data:`LIMITS`: 4 GiB per array, 16 GiB in all, a 256 MiB record nested at
        most 64 levels).

    Returns
    -------
    Sequential
        With its layers, parameters, buffers, loss, seed, data-shuffling generator state and
        ``metadata``; when the file is a checkpoint, also ``optimizer`` (bound to the
        parameters, its state restored) and ``epochs_trained``.

    Raises
    ------
    FileNotFoundError, FormatError
        see :func:`read`.
    """
    record, arrays = read(path, limits=limits)
    try:
        return from_record(record, arrays, backend=backend, device=device)
    except FormatError as exc:  # raised while building: say which file
        where = os.fspath(path)
        if isinstance(where, bytes):
            where = os.fsdecode(where)
        raise FormatError(f"{where}: {exc}") from None


def from_record(record: dict[str, Any], arrays: dict[str, Any], *,
                backend: str | None = None, device: Any = None) -> Sequential:
    """The model described by ``record`` and ``arrays`` (as :func:`model_record` returns them
    or :func:`read` reads them); what :func:`load` does after reading the file."""
    ctx = use_backend(backend, device) if backend is not None else contextlib.nullcontext()
    with ctx:
        model = Sequential(build_layers(record, arrays))
    apply_record(model, record, arrays)
    return model
