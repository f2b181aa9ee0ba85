"""The nnxp file format: records, arrays, atomic writes, and restoring state into a model.

This module knows the format but not the :class:`~nnxp.model.Sequential` class, so it sits
below the model: :meth:`Sequential.save <nnxp.model.Sequential.save>` calls :func:`save`, and
resuming a fit calls :func:`checkpoint_optimizer` and :func:`restore_checkpoint`, which put a
checkpoint into an existing model. Everything here works on any object with the model protocol
(``layers``, ``xp``, ``device``, ``dtype``, ``loss``, ``seed``, ``data_rng``, ``optimizer``,
``epochs_trained``, ``metadata``, ``parameters()``). Building a new model from a file —
:func:`nnxp.load` — is :mod:`nnxp.io`'s job: it calls :func:`build_layers`, constructs the
``Sequential`` and hands it to :func:`apply_record`. Nothing here imports :mod:`nnxp.model`
at run time (a test checks it).

The format (documented field by field in ``docs/persistence.md``) is a NumPy NPZ archive:

* ``__nnxp__`` — a ``uint8`` array holding a UTF-8 JSON record: the format name and version, the
  architecture (each layer's registry name and :meth:`~nnxp.layers.Layer.get_config`), the dtype,
  the loss, the model's data-shuffling generator state, user metadata and, in checkpoints, the
  optimizer's configuration and state and the number of epochs trained;
* one array per parameter, buffer and optimizer-state array, named by its path in the record
  (``layers/0/params/W``, ``optimizer/state/...``). The record refers to them as
  ``{"__array__": "layers/0/params/W"}``.

Nothing is ever pickled: the archive is read with ``allow_pickle=False`` and any other content
(a pickle, a bare ``.npy``, a truncated archive, a missing or newer format version) is refused
with :class:`FormatError`. Arrays are written from the host, so a model saved from a GPU or from
array_api_strict's ``device1`` loads on any backend.

Writes are atomic and crash-safe (:func:`atomic_write`): the archive goes to a temporary file in
the destination directory, is flushed and ``fsync``-ed, and only then renamed over the destination;
an interrupted save leaves the previous file intact and no temporary file behind. Reading
validates everything before it allocates (:func:`read`, :class:`Limits`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import secrets
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from . import backend
from ._version import __version__
from .layers import Layer
from .layers.core import LAYERS, layer_class_name
from .losses import LOSSES, Loss
from .precision import LossScaler
from .random import BackendGenerator, Generator
from .validation import check_flag

if TYPE_CHECKING:  # pragma: no cover - for annotations only; the model sits above this module
    from .model import Sequential

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "RECORD_KEY",
    "LIMITS",
    "FormatError",
    "Limits",
    "apply_record",
    "atomic_write",
    "build_layers",
    "checkpoint_callback_states",
    "checkpoint_optimizer",
    "model_record",
    "read",
    "remove_stale_temporaries",
    "restore_checkpoint",
    "save",
]

FORMAT = "nnxp"
"""Value of the record's ``format`` field."""

FORMAT_VERSION = 1
"""Version of the file layout this nnxp writes (and the newest it reads)."""

RECORD_KEY = "__nnxp__"
"""Name of the NPZ entry that holds the JSON record."""

_RESERVED = frozenset({"__array__", "__tuple__", "__dict__", "__float__"})


class FormatError(ValueError):
    """A file is not an nnxp model/checkpoint this version can read (the message says why)."""


# ----------------------------------------------------------------------------------------------
# Nested Python values <-> JSON + arrays
# ----------------------------------------------------------------------------------------------


def _encode(obj: Any, arrays: dict[str, Any], path: str) -> Any:
    """``obj`` as JSON-able data; every array goes into ``arrays[path]`` and is referenced.

    Dicts with string keys stay JSON objects; other dicts (e.g. optimizer state keyed by
    parameter index) become ``{"__dict__": [[key, value], ...]}``; tuples
    ``{"__tuple__": [...]}``; NaN/inf ``{"__float__": "nan"}``; NumPy scalars Python numbers.
    """
    obj = backend.host_scalar(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if backend.is_array(obj):
        if path in arrays:
            raise ValueError(f"two arrays would be stored under the name {path!r}")
        arrays[path] = backend.to_numpy(obj)
        return {"__array__": path}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not _RESERVED.intersection(obj):
            return {k: _encode(v, arrays, f"{path}/{k}") for k, v in obj.items()}
        return {"__dict__": [[_encode(k, arrays, f"{path}/key{i}"),
                              _encode(v, arrays, f"{path}/{k}")]
                             for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"cannot store {path!r}: a {type(obj).__name__} is not a number, string, "
                    "list, dict or array")


def _decode(obj: Any, arrays: dict[str, Any]) -> Any:
    """The inverse of :func:`_encode`; arrays come back as host NumPy arrays."""
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (key, value), = obj.items()
        if key == "__array__":
            if value not in arrays:
                raise FormatError(f"the record refers to the array {value!r}, which the archive "
                                  "does not hold (truncated or edited file)")
            return arrays[value]
        if key == "__tuple__":
            return tuple(_decode(v, arrays) for v in value)
        if key == "__dict__":
            return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in value}
        if key == "__float__":
            return float(value)
    return {k: _decode(v, arrays) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


# ----------------------------------------------------------------------------------------------
# Atomic, crash-safe writes
# ----------------------------------------------------------------------------------------------

_TMP_MARK = ".nnxp-tmp-"
"""Temporary files are named ``.<name>.nnxp-tmp-<pid>-<random>`` beside their destination."""

_ACTIVE: set[str] = set()  # temporary files this process is writing now (all threads)
_ACTIVE_LOCK = threading.Lock()
_HANDLED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT")
                         if hasattr(signal, name))


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], *,
                 overwrite: bool = True) -> None:
    """Run ``write(file)`` on a temporary file beside ``path``, then move it into place.

    * The destination is the file ``path`` names: a symbolic link is followed and its target
      written (the link stays a link); an existing file keeps its permission bits (and, where
      the process may, its owner and group); a new file gets ``0o666 & ~umask``.
    * The temporary file ``.<name>.nnxp-tmp-<pid>-<random>`` sits in the destination's
      directory (so the rename never crosses file systems); it is flushed and fsync-ed before
      ``os.replace`` renames it over the destination, and the directory is fsync-ed after. At
      every moment the destination holds the complete old content or the complete new one.
    * No temporary file survives a failure the process can observe: an exception (including
      ``KeyboardInterrupt``) or SIGTERM/SIGHUP/SIGINT while writing (in the main thread a
      handler removes it, then passes the signal on to the handler that was installed before,
      or to the default action). A death it cannot observe (SIGKILL, power loss) leaves at most
      that one file, which the next save into the same directory removes: temporaries whose
      process no longer exists are stale.

    With ``overwrite=False`` an existing ``path`` raises :class:`FileExistsError` (checked
    atomically with a hard link where the file system allows it).
    """
    target = _resolve_destination(_fspath(path))
    if os.path.isdir(target):
        raise IsADirectoryError(f"cannot save to {target}: it is a directory; give a file name "
                                f"such as {os.path.join(target, 'model.npz')}")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save to {target}: the directory {directory} does not "
                                "exist")
    if not overwrite and os.path.lexists(target):
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    remove_stale_temporaries(directory)
    tmp = os.path.join(directory, f".{os.path.basename(target)}{_TMP_MARK}{os.getpid()}-"
                                  f"{secrets.token_hex(4)}")
    with _removed_on_signal(tmp):
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)  # the umask applies, as for any new file
            with os.fdopen(fd, "wb") as file:
                _keep_mode_and_owner(file.fileno(), target)
                write(file)
                file.flush()
                os.fsync(file.fileno())
            _move_into_place(tmp, target, overwrite=overwrite)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    _fsync_directory(directory)


def _resolve_destination(target: str) -> str:
    """``target``, or the file its chain of symbolic links ends at (which may not exist yet)."""
    if not os.path.islink(target):
        return target
    return os.path.realpath(target)


def _keep_mode_and_owner(fd: int, target: str) -> None:
    try:
        info = os.stat(target)
    except OSError:  # a new file: the umask decided its mode
        return
    if not stat.S_ISREG(info.st_mode):
        return
    os.fchmod(fd, stat.S_IMODE(info.st_mode))
    if hasattr(os, "fchown"):
        with contextlib.suppress(OSError):  # only the owner's own group, or root, may
            os.fchown(fd, info.st_uid, info.st_gid)


def _move_into_place(tmp: str, target: str, *, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # fails if target appeared meanwhile: never clobbers
    except FileExistsError:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to "
                              "replace it") from None
    except OSError:  # file systems without hard links
        if os.path.lexists(target):
            raise FileExistsError(f"{target} already exists") from None
        os.replace(tmp, target)
    else:
        os.unlink(tmp)


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary files that saves of dead processes left in ``directory``.

    A temporary file ``.<name>.nnxp-tmp-<pid>-<random>`` is stale when process ``pid`` no longer
    exists, or is this process but not writing it now (a previous process that had the same
    pid, e.g. before a container restarted). Returns the names removed. Called by every save.
    """
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    me = os.getpid()
    for name in names:
        if not name.startswith(".") or _TMP_MARK not in name:
            continue
        pid_text = name.rsplit(_TMP_MARK, 1)[1].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        full = os.path.join(directory, name)
        pid = int(pid_text)
        with _ACTIVE_LOCK:
            mine_now = full in _ACTIVE
        if mine_now or (pid != me and _process_exists(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(full)
            removed.append(name)
    return removed


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but belongs to someone else, or cannot tell
        return True
    return True


@contextlib.contextmanager
def _removed_on_signal(tmp: str) -> Iterator[None]:
    """Register ``tmp`` as being written; in the main thread, remove it on a fatal signal."""
    with _ACTIVE_LOCK:
        _ACTIVE.add(tmp)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in _HANDLED_SIGNALS:
            with contextlib.suppress(ValueError, OSError, TypeError):
                handler = signal.getsignal(signum)
                if handler is signal.SIG_IGN or handler is None:
                    continue  # ignored stays ignored; None: installed outside Python, leave it
                previous[signum] = handler
                signal.signal(signum, _make_handler(handler))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, handler)
        with _ACTIVE_LOCK:
            _ACTIVE.discard(tmp)


def _make_handler(previous: Any) -> Callable[[int, Any], None]:
    def handler(signum: int, frame: Any) -> None:
        if callable(previous):  # the user's handler, or Python's (KeyboardInterrupt): if it
            previous(signum, frame)  # raises, atomic_write's cleanup removes the file; if it
            return  # returns, the save goes on
        with _ACTIVE_LOCK:
            active = list(_ACTIVE)
        for name in active:
            with contextlib.suppress(OSError):
                os.unlink(name)
        signal.signal(signum, signal.SIG_DFL)  # the default action: die of this signal
        os.kill(os.getpid(), signum)

    return handler


def _fspath(path: Any, argument: str = "path") -> str:
    """``os.fspath(path)``, or a TypeError naming ``argument`` and what was received."""
    try:
        target = os.fspath(path)
    except TypeError:
        raise TypeError(f"{argument} must be a file name (str or os.PathLike), got "
                        f"{type(path).__name__} {path!r}") from None
    if isinstance(target, bytes):
        target = os.fsdecode(target)
    return target


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------


def _layer_config(layer: Any, index: int) -> dict[str, Any]:
    cls = type(layer)
    own = getattr(cls, "get_config", None)
    if own is None or own is Layer.get_config:
        takes_args = [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if takes_args:
            raise TypeError(
                f"layers[{index}] ({cls.__name__}) takes constructor arguments "
                f"({', '.join(p.name for p in takes_args)}) but defines no get_config(), so it "
                "cannot be saved faithfully; add get_config() returning them as a dict"
            )
        return {}
    config = layer.get_config()
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"layers[{index}] ({cls.__name__}).get_config() is not JSON-"
                        f"serialisable: {exc}") from None
    return dict(config)


def _loss_record(loss: Loss) -> dict[str, Any]:
    name = getattr(loss, "name", None)
    if name not in LOSSES or not isinstance(loss, LOSSES[name]):
        raise TypeError(f"the model's loss {loss!r} is not registered in nnxp.losses.LOSSES, so "
                        "it cannot be saved by name")
    get_config = getattr(loss, "get_config", None)
    return {"name": name, "config": dict(get_config()) if callable(get_config) else {}}


def _optimizer_config(opt: Any) -> dict[str, Any]:
    get_config = getattr(opt, "get_config", None)
    if callable(get_config):
        return dict(get_config())
    # fall back on the constructor's arguments, held in ``defaults`` (nnxp.optim) or as
    # attributes of the same name; callables (parameter-group selectors) are left out
    config: dict[str, Any] = {}
    defaults = getattr(opt, "defaults", None)
    defaults = defaults if isinstance(defaults, dict) else {}
    for p in list(inspect.signature(type(opt).__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in defaults:
            value = defaults[p.name]
        elif hasattr(opt, p.name):
            value = getattr(opt, p.name)
        else:
            continue
        value = backend.host_scalar(value)
        if value is None or isinstance(value, (bool, int, float, str)):
            config[p.name] = value
        elif isinstance(value, (tuple, list)) and all(
                isinstance(v, (bool, int, float, str)) for v in value):
            config[p.name] = list(value)
    return config


def _optimizer_record(opt: Any, arrays: dict[str, Any]) -> dict[str, Any]:
    state_dict = getattr(opt, "state_dict", None)
    state = state_dict() if callable(state_dict) else None
    return {
        "class": type(opt).__name__,
        "config": _encode(_optimizer_config(opt), arrays, "optimizer/config"),
        "state": _encode(state, arrays, "optimizer/state"),
        "iterations": int(getattr(opt, "iterations", 0)),
    }


def model_record(model: Any, *, include_optimizer: bool = True) -> tuple[dict[str, Any],
                                                                        dict[str, Any]]:
    """The JSON record and the arrays (host NumPy, by name) that :func:`save` writes."""
    arrays: dict[str, Any] = {}
    layers = []
    for i, layer in enumerate(model.layers):
        entry: dict[str, Any] = {
            "class": layer_class_name(type(layer)),
            "config": _layer_config(layer, i),
            "params": _encode(dict(layer.params), arrays, f"layers/{i}/params"),
            "buffers": _encode(dict(getattr(layer, "buffers", {})), arrays,
                               f"layers/{i}/buffers"),
        }
        generators = _generator_states(layer, arrays, f"layers/{i}/generators")
        if generators:
            entry["generators"] = generators
        get_state = getattr(layer, "get_extra_state", None)
        if callable(get_state):
            entry["extra_state"] = _encode(get_state(), arrays, f"layers/{i}/extra_state")
        layers.append(entry)
    opt = getattr(model, "optimizer", None) if include_optimizer else None
    info = backend.get_backend()
    record: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nnxp_version": __version__,
        "saved_from": {"backend": _namespace_name(model.xp, info), "device": str(model.device)},
        "dtype": backend.dtype_name(model.dtype),
        "loss": _loss_record(model.loss),
        "layers": layers,
        "seed": model.seed,
        "rng": {"data": _encode(model.data_rng.state, arrays, "rng/data")},
        "metadata": _encode(dict(getattr(model, "metadata", None) or {}), arrays, "metadata"),
        "epochs_trained": int(getattr(model, "epochs_trained", 0)),
        "optimizer": None if opt is None else _optimizer_record(opt, arrays),
    }
    # issue 16 (resume state): the state of the callbacks of a running fit, in checkpoints only
    callbacks = getattr(model, "active_callbacks", None) if include_optimizer else None
    if callbacks is not None:
        record["callbacks"] = _encode(callbacks.state_dicts(), arrays, "callbacks")
    # issue 11 (mixed precision): the loss scale and its growth counter, JSON numbers
    scaler = getattr(model, "loss_scaler", None) if include_optimizer else None
    if scaler is not None:
        record["loss_scaler"] = scaler.state_dict()
    json.dumps(record, allow_nan=False)  # fail before writing anything
    return record, arrays


def _namespace_name(xp: Any, info: backend.BackendInfo) -> str:
    name = getattr(xp, "__name__", "unknown")
    return name.removeprefix("array_api_compat.")


def save(model: Any, path: str | os.PathLike[str], *, include_optimizer: bool = True,
         overwrite: bool = True) -> None:
    """Write ``model`` to ``path`` (an NPZ archive; see the module docstring for the layout).

    Parameters
    ----------
    model
        A :class:`~nnxp.model.Sequential` whose layers all have registered classes and a
        :meth:`~nnxp.layers.Layer.get_config` (or no constructor arguments).
    path
        Destination; the name is used as given (no extension is added).
    include_optimizer
        Also store ``model.optimizer`` (its configuration, ``state_dict()`` and step counter)
        and the epoch counter, so that ``fit(..., resume_from=path)`` continues the run.
    overwrite
        Replace an existing file (atomically); with False, an existing file raises
        :class:`FileExistsError` and is left untouched.
    """
    check_flag(include_optimizer, argument="include_optimizer")
    check_flag(overwrite, argument="overwrite")
    record, arrays = model_record(model, include_optimizer=include_optimizer)
    payload = json.dumps(record, allow_nan=False, separators=(",", ":")).encode("utf-8")
    arrays[RECORD_KEY] = backend.host_array(list(payload), "uint8")
    atomic_write(path, lambda file: backend.save_npz(file, arrays), overwrite=overwrite)


# ----------------------------------------------------------------------------------------------
# Loading: everything is validated before anything large is allocated
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Caps that :func:`read` applies to a file before it allocates anything.

    The defaults are :data:`LIMITS`; pass ``limits=Limits(array_bytes=...)`` to :func:`read` or
    :func:`nnxp.load`, or assign ``nnxp.archive.LIMITS`` to change them for the process.
    """

    array_bytes: int = 4 * 2**30
    """Largest array (declared shape × item size), 4 GiB."""
    total_bytes: int = 16 * 2**30
    """All the arrays the record refers to, together, 16 GiB."""
    record_bytes: int = 256 * 2**20
    """The JSON record, 256 MiB (about 1 kB per layer)."""
    depth: int = 64
    """Nesting of the record's JSON objects and lists (a model's own record needs about 10)."""


LIMITS = Limits()
"""The caps :func:`read` uses when it is given none."""


def read(path: str | os.PathLike[str], *, limits: Limits | None = None,
         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The validated JSON record and the host arrays of the nnxp file ``path``.

    The order of the checks (``docs/persistence.md`` lists them): the ZIP structure and member
    names; the record's own ``.npy`` header and size; the JSON, with bounded nesting; the
    record's fields and their types and ranges; every array the record refers to, by its
    ``.npy`` header only (dtype, shape, size within ``limits``, consistent with the ZIP
    directory); each layer's configuration against the shapes of its stored arrays. Only then
    are the referenced arrays read (members the record does not name are never decompressed),
    and their values checked (finite parameters, buffers and optimizer state; positive
    scales).

    Raises
    ------
    FileNotFoundError
        when ``path`` does not exist.
    FormatError
        for anything else, naming the file and the field.
    """
    target = _fspath(path)
    lim = LIMITS if limits is None else limits
    if os.path.isdir(target):
        raise IsADirectoryError(f"{target} is a directory, not an nnxp model file")
    if not os.path.isfile(target):
        raise FileNotFoundError(f"no such model file: {target}")
    try:
        with backend.NpzReader(target, max_array_bytes=lim.array_bytes) as reader:
            record = _read_record(reader, target, lim)
            refs = _check_record(record, target, lim)
            entries: dict[str, backend.NpzEntry] = {}
            total = 0
            for name, field in refs.items():
                if name not in reader.names:
                    raise FormatError(f"{target}: {field} refers to the array {name!r}, which "
                                      "the archive does not hold (truncated or edited file)")
                try:
                    entries[name] = reader.entry(name)
                except ValueError as exc:
                    raise FormatError(f"{target}: {field}: {exc}") from None
                total += entries[name].nbytes
                if total > lim.total_bytes:
                    raise FormatError(f"{target}: the arrays the record refers to exceed the "
                                      f"limit of {lim.total_bytes} bytes in all (at {field})")
            _check_layer_shapes(record, {n: (e.dtype, e.shape) for n, e in entries.items()},
                                target)
            arrays = {}
            for name in entries:
                try:
                    arrays[name] = reader.array(name)
                except ValueError as exc:
                    raise FormatError(f"{target}: {refs[name]}: {exc}") from None
    except FormatError:
        raise
    except ValueError as exc:
        raise FormatError(f"{target} is not an nnxp model file: {exc}") from None
    _check_values(record, arrays, target)
    return record, arrays


def _read_record(reader: Any, target: str, lim: Limits) -> dict[str, Any]:
    if RECORD_KEY not in reader.names:
        raise FormatError(f"{target} is an NPZ archive but not an nnxp model file (it has no "
                          f"{RECORD_KEY!r} record)")
    head = reader.entry(RECORD_KEY)
    if head.dtype != "uint8" or len(head.shape) != 1:
        raise FormatError(f"{target}: the {RECORD_KEY!r} record must be a 1-D uint8 array, got "
                          f"{head.dtype} of shape {head.shape}")
    if head.nbytes > lim.record_bytes:
        raise FormatError(f"{target}: the {RECORD_KEY!r} record has {head.nbytes} bytes, above "
                          f"the limit of {lim.record_bytes}")
    raw = reader.array(RECORD_KEY)

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed (non-finite numbers are stored as "
                         "{'__float__': ...})")

    try:
        record = json.loads(raw.tobytes().decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{target}: the {RECORD_KEY!r} record is not valid JSON "
                          f"({exc})") from None
    except RecursionError:
        raise FormatError(f"{target}: the {RECORD_KEY!r} record is nested too deeply") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise FormatError(f"{target}: the record does not say format={FORMAT!r}; not an nnxp "
                          "model file")
    version = record.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise FormatError(f"{target}: missing or invalid format_version {version!r} (expected "
                          f"the integer {FORMAT_VERSION})")
    if version != FORMAT_VERSION:
        newer = " (written by a newer nnxp: upgrade to read it)" if version > FORMAT_VERSION \
            else ""
        raise FormatError(f"{target} has format_version {version}, but this nnxp reads "
                          f"format_version {FORMAT_VERSION}{newer}")
    return record


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_record(record: dict[str, Any], target: str, lim: Limits) -> dict[str, str]:
    """Check the record's nesting, fields and wrappers; its array references, by field."""
    def bad(field: str, why: str) -> FormatError:
        return FormatError(f"{target}: the record's {field} {why} (corrupt or edited file)")

    refs = _scan(record, target, lim.depth)
    for field in ("layers", "loss", "dtype"):
        if field not in record:
            raise FormatError(f"{target}: the record has no {field!r} field (corrupt file)")
    layers = record["layers"]
    if not isinstance(layers, list) or not layers:
        raise bad("'layers'", f"must be a non-empty list of layer entries, got "
                              f"{type(layers).__name__}")
    for i, entry in enumerate(layers):
        if not isinstance(entry, dict):
            raise bad(f"layers[{i}]", f"must be an object, got {type(entry).__name__}")
        if not isinstance(entry.get("class"), str):
            raise bad(f"layers[{i}].class", "must be a layer class name")
        for key in ("config", "params", "buffers", "generators"):
            if entry.get(key) is not None and not isinstance(entry[key], dict):
                raise bad(f"layers[{i}].{key}", f"must be an object, got "
                                                f"{type(entry[key]).__name__}")
        for kind in ("params", "buffers"):
            for key, value in (entry.get(kind) or {}).items():
                if not (isinstance(value, dict) and set(value) == {"__array__"}):
                    raise bad(f"layers[{i}].{kind}.{key}", "must refer to an array")
        for key, gen in (entry.get("generators") or {}).items():
            if not isinstance(gen, dict) or gen.get("type") not in ("Generator",
                                                                    "BackendGenerator"):
                raise bad(f"layers[{i}].generators.{key}", "must be a generator entry")
            if gen["type"] == "BackendGenerator" and not (
                    _is_int(gen.get("seed")) or gen.get("seed") is None):
                raise bad(f"layers[{i}].generators.{key}.seed", "must be an integer or null")
    loss = record["loss"]
    if not isinstance(loss, dict) or not isinstance(loss.get("name"), str):
        raise bad("'loss'", f"must be an object with a 'name', got {type(loss).__name__}")
    if loss.get("config") is not None and not isinstance(loss["config"], dict):
        raise bad("loss.config", "must be an object")
    if not isinstance(record["dtype"], str):
        raise bad("'dtype'", "must be a dtype name")
    seed = record.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad("'seed'", f"must be an integer or null, got {seed!r}")
    epochs = record.get("epochs_trained", 0)
    if not _is_int(epochs) or epochs < 0:
        raise bad("'epochs_trained'", f"must be an integer >= 0, got {epochs!r}")
    for key in ("metadata", "rng", "saved_from", "loss_scaler"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            raise bad(f"'{key}'", f"must be an object, got {type(record[key]).__name__}")
    opt = record.get("optimizer")
    if opt is not None:
        if not isinstance(opt, dict) or not isinstance(opt.get("class"), str):
            raise bad("'optimizer'", "must be null or an object with a 'class'")
        if opt.get("config") is not None and not isinstance(opt["config"], dict):
            raise bad("optimizer.config", "must be an object")
        iterations = opt.get("iterations", 0)
        if not _is_int(iterations) or iterations < 0:
            raise bad("optimizer.iterations", f"must be an integer >= 0, got {iterations!r}")
    return refs


def _scan(record: Any, target: str, max_depth: int) -> dict[str, str]:
    """Walk the record without recursion: bound its depth, check the wrappers of
    :func:`_encode`, and collect every array reference with the field that holds it."""
    refs: dict[str, str] = {}
    stack: list[tuple[Any, str, int]] = [(record, "record", 0)]
    while stack:
        obj, field, depth = stack.pop()
        if depth > max_depth:
            raise FormatError(f"{target}: the record is nested more than {max_depth} levels "
                              f"deep (at {field})")
        if isinstance(obj, list):
            stack.extend((v, f"{field}[{i}]", depth + 1) for i, v in enumerate(obj))
            continue
        if not isinstance(obj, dict):
            continue
        if len(obj) == 1:
            (key, value), = obj.items()
            if key == "__array__":
                if not isinstance(value, str):
                    raise FormatError(f"{target}: {field} refers to an array by {value!r}, not "
                                      "by name")
                refs.setdefault(value, field)
                continue
            if key == "__float__":
                if value not in ("nan", "inf", "-inf"):
                    raise FormatError(f"{target}: {field} holds {value!r}, not 'nan', 'inf' or "
                                      "'-inf'")
                continue
            if key == "__tuple__" and not isinstance(value, list):
                raise FormatError(f"{target}: {field} must hold a list")
            if key == "__dict__" and not (isinstance(value, list) and all(
                    isinstance(p, list) and len(p) == 2 for p in value)):
                raise FormatError(f"{target}: {field} must hold a list of [key, value] pairs")
            if key == "__dict__" and not all(_hashable_encoded(p[0]) for p in value):
                raise FormatError(f"{target}: {field} has a key that is not a number, string "
                                  "or list of them")
        stack.extend((v, f"{field}.{k}", depth + 1) for k, v in obj.items())
    return refs


def _hashable_encoded(key: Any) -> bool:
    if isinstance(key, list):
        return all(_hashable_encoded(k) for k in key)
    if isinstance(key, dict):
        return set(key) == {"__tuple__"} and isinstance(key["__tuple__"], list) and all(
            _hashable_encoded(k) for k in key["__tuple__"])
    return key is None or isinstance(key, (bool, int, float, str))


def _shape_from_config(config: dict[str, Any], key: str, default: Any, field: str) -> int:
    value = config.get(key, default)
    if not _is_int(value) or value < 1:
        raise FormatError(f"{field}.{key} must be a positive integer, got {value!r}")
    return int(value)


def _flag(config: dict[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    return value if isinstance(value, bool) else default  # the constructor refuses the rest


def _expected_shapes(cls_name: str, config: Any, field: str) -> dict[str, tuple[int, ...]] | None:
    """The shapes of the arrays that nnxp's layer ``cls_name`` allocates from ``config``
    (``"params.W"``: shape), or None when the class is not one that allocates from its config.

    A user's layer class may declare the same with a classmethod ``config_shapes(config)``.
    """
    if not isinstance(config, dict):
        raise FormatError(f"{field} must be an object")

    def n(key: str, default: Any = None) -> int:
        return _shape_from_config(config, key, default, field)

    out: dict[str, tuple[int, ...]]
    if cls_name == "Dense":
        i, o = n("in_features"), n("out_features")
        out = {"params.W": (i, o)}
        if _flag(config, "bias", True):
            out["params.b"] = (o,)
        act = config.get("activation")
        if isinstance(act, dict) and isinstance(act.get("class"), str):
            inner = _expected_shapes(act["class"], act.get("config") or {},
                                     f"{field}.activation.config") or {}
            out.update({f"params.activation.{k.split('.', 1)[1]}": s for k, s in inner.items()})
        return out
    if cls_name == "Maxout":
        i, o, k = n("in_features"), n("out_features"), n("k", 2)
        out = {"params.W": (i, o, k)}
        if _flag(config, "bias", True):
            out["params.b"] = (o, k)
        return out
    if cls_name == "PReLU":
        return {"params.alpha": (n("num_parameters", 1),)}
    if cls_name == "Standardize":
        f = n("n_features")
        return {"buffers.mean": (f,), "buffers.scale": (f,)}
    if cls_name == "BatchNorm1d":
        f = n("num_features")
        out = {}
        if _flag(config, "affine", True):
            out.update({"params.weight": (f,), "params.bias": (f,)})
        if _flag(config, "track_running_stats", True):
            out.update({"buffers.running_mean": (f,), "buffers.running_var": (f,)})
        return out
    if cls_name == "LayerNorm":
        f = n("normalized_shape")
        affine = _flag(config, "elementwise_affine", True)
        out = {"params.weight": (f,)} if affine else {}
        if affine and _flag(config, "bias", True):
            out["params.bias"] = (f,)
        return out
    hook = getattr(LAYERS.get(cls_name), "config_shapes", None)
    if callable(hook):
        try:
            declared = hook(config)
        except (TypeError, ValueError, KeyError) as exc:
            raise FormatError(f"{field}: {exc}") from None
        return {name: tuple(shape) for name, shape in declared.items()}
    return None


def _check_layer_shapes(record: dict[str, Any], shapes: dict[str, tuple[str, tuple[int, ...]]],
                        target: str) -> None:
    """Each layer's configuration against the shapes its stored arrays declare, before any
    layer is built (a config that asks for more than the file holds would allocate it)."""
    for i, entry in enumerate(record["layers"]):
        field = f"{target}: layers[{i}].config"
        expected = _expected_shapes(entry["class"], entry.get("config") or {}, field)
        if expected is None:
            continue
        stored = {f"{kind}.{key}": shapes[ref["__array__"]][1]
                  for kind in ("params", "buffers")
                  for key, ref in (entry.get(kind) or {}).items()}
        for name, shape in expected.items():
            if name not in stored:
                raise FormatError(f"{target}: layers[{i}] ({entry['class']}) has no stored "
                                  f"{name}, which its config requires")
            if tuple(stored[name]) != tuple(shape):
                raise FormatError(f"{target}: layers[{i}] ({entry['class']}) {name} has shape "
                                  f"{tuple(stored[name])} in the file, but its config "
                                  f"{entry.get('config')} expects {tuple(shape)}")


def _check_values(record: dict[str, Any], arrays: dict[str, Any], target: str) -> None:
    """Finite parameters, buffers and optimizer state; positive scales and variances."""
    for i, entry in enumerate(record["layers"]):
        for kind in ("params", "buffers"):
            for key, ref in (entry.get(kind) or {}).items():
                value = arrays[ref["__array__"]]
                if not backend.host_all_finite(value):
                    raise FormatError(f"{target}: layers[{i}] ({entry['class']}) "
                                      f"{kind}[{key!r}] holds NaN or infinite values (a "
                                      "diverged or corrupt model)")
        if entry["class"] == "Standardize" and "scale" in (entry.get("buffers") or {}):
            if not backend.host_all_positive(arrays[entry["buffers"]["scale"]["__array__"]]):
                raise FormatError(f"{target}: layers[{i}] (Standardize) buffers['scale'] must "
                                  "be positive everywhere (a scale of 0 divides by zero)")
        if entry["class"] == "BatchNorm1d" and "running_var" in (entry.get("buffers") or {}):
            var = arrays[entry["buffers"]["running_var"]["__array__"]]
            if not backend.host_all_positive(var, allow_zero=True):
                raise FormatError(f"{target}: layers[{i}] (BatchNorm1d) "
                                  "buffers['running_var'] must be >= 0")
    opt = record.get("optimizer")
    if opt:
        for name, field in _scan(opt.get("state"), target, 10**9).items():
            if not backend.host_all_finite(arrays[name]):
                raise FormatError(f"{target}: the optimizer's state "
                                  f"({field.replace('record', 'optimizer.state', 1)}) holds NaN or "
                                  "infinite values")


def _layer_class(name: str) -> type:
    cls = LAYERS.get(name)
    if cls is None:
        raise FormatError(f"the file uses the layer class {name!r}, which is not registered; "
                          "import the module that defines it before loading")
    return cls


def _build_layer(entry: dict[str, Any], arrays: dict[str, Any], index: int) -> Any:
    cls = _layer_class(entry.get("class", "?"))
    config = entry.get("config") or {}
    try:
        layer = cls.from_config(config) if hasattr(cls, "from_config") else cls(**config)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"layers[{index}]: cannot rebuild {cls.__name__} from its stored "
                          f"config {config}: {exc}") from None
    _assign_arrays(layer, entry, arrays, index)
    return layer


def _assign_arrays(layer: Any, entry: dict[str, Any], arrays: dict[str, Any], index: int) -> None:
    """Copy the stored params/buffers of ``entry`` into ``layer``, checking names and shapes."""
    for kind in ("params", "buffers"):
        stored = _decode(entry.get(kind) or {}, arrays)
        target: dict[str, Any] = getattr(layer, kind)
        if set(stored) != set(target):
            raise FormatError(f"layers[{index}] ({type(layer).__name__}) {kind}: the file holds "
                              f"{sorted(stored)}, the layer has {sorted(target)}")
        for key, value in stored.items():
            current = target[key]
            if tuple(value.shape) != tuple(current.shape):
                raise FormatError(f"layers[{index}] ({type(layer).__name__}) {kind}[{key!r}] "
                                  f"has shape {tuple(value.shape)} in the file, but the layer "
                                  f"expects {tuple(current.shape)}")
            if backend.dtype_name(value.dtype) != backend.dtype_name(current.dtype):
                raise FormatError(f"layers[{index}] ({type(layer).__name__}) {kind}[{key!r}] "
                                  f"has dtype {backend.dtype_name(value.dtype)} in the file, but "
                                  f"the layer expects {backend.dtype_name(current.dtype)}")
            moved = backend.asarray(value, xp=layer.xp, device=layer.device, copy=True)
            if layer.xp.isdtype(moved.dtype, "real floating") \
                    and not backend.isfinite_all(moved, layer.xp):
                raise FormatError(f"layers[{index}] ({type(layer).__name__}) {kind}[{key!r}] "
                                  "holds NaN or infinite values in the file (a diverged or "
                                  "corrupt model)")
            target[key] = moved
    _restore_generators(layer, entry.get("generators") or {}, arrays)
    if "extra_state" in entry and callable(getattr(layer, "set_extra_state", None)):
        layer.set_extra_state(_decode(entry["extra_state"], arrays))
    if hasattr(layer, "grads"):
        layer.grads.clear()
    clear = getattr(layer, "clear_cache", None)
    if callable(clear):
        clear()


def _generator_states(layer: Any, arrays: dict[str, Any], path: str) -> dict[str, Any]:
    """The state of every random generator a layer holds (dropout masks, RReLU slopes)."""
    out: dict[str, Any] = {}
    for name, value in vars(layer).items():
        if isinstance(value, Generator):
            out[name] = {"type": "Generator",
                         "state": _encode(value.state, arrays, f"{path}/{name}")}
        elif isinstance(value, BackendGenerator):
            state = value.get_state()  # None only on a CuPy that hides it: restart from seed
            out[name] = {"type": "BackendGenerator", "kind": value.kind, "seed": value.seed,
                         "state": _encode(state, arrays, f"{path}/{name}")}
    return out


def _restore_generators(layer: Any, entries: dict[str, Any], arrays: dict[str, Any]) -> None:
    for name, entry in entries.items():
        current = getattr(layer, name, None)
        state = _decode(entry.get("state"), arrays)
        if entry.get("type") == "Generator" and isinstance(current, Generator):
            current.state = state
        elif entry.get("type") == "BackendGenerator" and isinstance(current, BackendGenerator):
            fresh = BackendGenerator(int(entry["seed"]), layer.xp, layer.device)
            if state is not None and fresh.kind == entry.get("kind"):
                fresh.set_state(state)
            setattr(layer, name, fresh)  # another backend: the same seed, its own stream


def _build_optimizer(record: dict[str, Any], arrays: dict[str, Any]) -> Any:
    from .optim import Optimizer  # noqa: PLC0415 - keeps this module's imports light

    name = record.get("class")
    classes = {c.__name__: c for c in _subclasses(Optimizer)}
    if name not in classes:
        raise FormatError(f"the file's optimizer class {name!r} is not defined in this session; "
                          f"known: {', '.join(sorted(classes))}")
    config = _decode(record.get("config") or {}, arrays)
    try:
        return classes[name](**config)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"cannot rebuild the optimizer {name} from {config}: {exc}") from None


def _subclasses(cls: type) -> list[type]:
    out: list[type] = []
    sub: type
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def _restore_optimizer(opt: Any, record: dict[str, Any], arrays: dict[str, Any]) -> None:
    """Put the stored state into ``opt``, which must already be bound to the model."""
    if type(opt).__name__ != record.get("class"):
        raise ValueError(f"the checkpoint holds the state of a {record.get('class')} optimizer, "
                         f"but the optimizer given is {opt!r}; pass optimizer=None to rebuild the "
                         "stored one")
    state = _decode(record.get("state"), arrays)
    if state is not None:
        load_state_dict = getattr(opt, "load_state_dict", None)
        if not callable(load_state_dict):
            raise ValueError(f"{opt!r} has no load_state_dict() to take the stored state")
        load_state_dict(state)
    elif not callable(getattr(opt, "state_dict", None)):
        # stateless optimizers: restore hyperparameters a schedule may have changed (lr)
        for key, value in _decode(record.get("config") or {}, arrays).items():
            if hasattr(opt, key) and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                setattr(opt, key, value)
    opt.iterations = int(record.get("iterations", 0))

# ----------------------------------------------------------------------------------------------
# Rebuilding: layers from a record, then the rest of the record into the model built on them
# ----------------------------------------------------------------------------------------------


def build_layers(record: dict[str, Any], arrays: dict[str, Any]) -> list[Layer]:
    """The record's layers, rebuilt on the active backend with their stored arrays.

    Each layer class is looked up in the layer registry by its stored name and built from its
    stored config (``from_config``, by default the constructor); its parameters, buffers,
    generator states and extra state are then replaced by the stored ones.

    Parameters
    ----------
    record, arrays
        As :func:`read` returns them (or :func:`model_record`).

    Returns
    -------
    list of Layer
        In order, ready to be passed to :class:`~nnxp.model.Sequential`.

    Raises
    ------
    FormatError
        for an unregistered layer class, a config the class refuses, or stored arrays whose
        names, shapes or dtypes do not match the rebuilt layer, or that hold NaN or infinity.
    """
    return [_build_layer(entry, arrays, i) for i, entry in enumerate(record["layers"])]


def apply_record(model: Sequential, record: dict[str, Any], arrays: dict[str, Any]) -> None:
    """Give ``model``, just built on :func:`build_layers`, the rest of the record.

    Sets the seed, the data-shuffling generator's state, the epoch counter, the loss and
    ``metadata``; when the record holds an optimizer, rebuilds it from its stored
    configuration, binds it to the model's parameters and restores its state and step counter.

    Raises
    ------
    FormatError
        for an invalid generator state, an unknown loss or an optimizer class that is not
        defined in this session.
    """
    _apply_training_state(model, record, arrays)
    loss = record["loss"]
    if loss.get("name") not in LOSSES:
        raise FormatError(f"the file's loss {loss.get('name')!r} is not one of "
                          f"{', '.join(sorted(LOSSES))}")
    model.loss = LOSSES[loss["name"]](**(loss.get("config") or {}))
    model.metadata = _decode(record.get("metadata") or {}, arrays)
    if record.get("optimizer"):
        opt = _build_optimizer(record["optimizer"], arrays)
        opt.bind(model.parameters())
        _restore_optimizer(opt, record["optimizer"], arrays)
        model.optimizer = opt


# ----------------------------------------------------------------------------------------------
# Checkpoints: restoring into an existing model
# ----------------------------------------------------------------------------------------------


def _apply_training_state(model: Any, record: dict[str, Any], arrays: dict[str, Any]) -> None:
    model.seed = record.get("seed")
    rng = record.get("rng") or {}
    if "data" in rng:
        try:
            model.data_rng.state = _decode(rng["data"], arrays)
        except (TypeError, ValueError, KeyError) as exc:
            raise FormatError(f"invalid generator state in the record: {exc}") from None
    model.epochs_trained = int(record.get("epochs_trained", 0))
    stored = record.get("loss_scaler")  # absent in files written before issue 11: kept as is
    if stored is not None:
        scaler = LossScaler()
        try:
            scaler.load_state_dict(stored)
        except ValueError as exc:
            raise FormatError(f"invalid loss scaler state in the record: {exc}") from None
        model.loss_scaler = scaler


def checkpoint_optimizer(path: str | os.PathLike[str]) -> Any:
    """A fresh optimizer built from the configuration stored in the checkpoint ``path``."""
    record, arrays = read(path)
    if not record.get("optimizer"):
        raise ValueError(f"{os.fspath(path)} holds no optimizer state (saved with "
                         "include_optimizer=False or before any fit): pass optimizer=")
    return _build_optimizer(record["optimizer"], arrays)


def checkpoint_callback_states(path: str | os.PathLike[str]) -> list[Any]:
    """The callbacks' stored states (``CallbackList.state_dicts()`` at the save), ``[]`` for a
    file without them (weights only, or written before callbacks were stored)."""
    record, arrays = read(path)
    stored = record.get("callbacks")
    if stored is None:
        return []
    states = _decode(stored, arrays)
    if not isinstance(states, list):
        raise FormatError("the record's 'callbacks' entry is not a list")
    return states


def restore_checkpoint(model: Any, path: str | os.PathLike[str], optimizer: Any = None) -> int:
    """Load the checkpoint ``path`` into ``model`` (and ``optimizer``, bound to it) in place.

    The layers must match the stored architecture (same classes, configs, parameter names and
    shapes). Restores the parameters, buffers, data-shuffling generator, epoch counter and, when
    ``optimizer`` is given, its state and step counter.

    Returns
    -------
    int
        The number of epochs the checkpoint had completed (training resumes with the next).
    """
    record, arrays = read(path)
    stored = record["layers"]
    if len(stored) != len(model.layers):
        raise ValueError(f"{os.fspath(path)} holds {len(stored)} layers but the model has "
                         f"{len(model.layers)}")
    for i, (entry, layer) in enumerate(zip(stored, model.layers)):
        name = layer_class_name(type(layer))
        if entry.get("class") != name:
            raise ValueError(f"layers[{i}] is {name} but the checkpoint stored "
                             f"{entry.get('class')}")
        config = _layer_config(layer, i)
        if json.loads(json.dumps(config)) != entry.get("config"):
            raise ValueError(f"layers[{i}] ({name}) has config {config} but the checkpoint "
                             f"stored {entry.get('config')}")
        _assign_arrays(layer, entry, arrays, i)
    _apply_training_state(model, record, arrays)
    if optimizer is not None:
        if not record.get("optimizer"):
            raise ValueError(f"{os.fspath(path)} holds no optimizer state to resume from")
        _restore_optimizer(optimizer, record["optimizer"], arrays)
    return model.epochs_trained
