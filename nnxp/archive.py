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

Writes are atomic: the archive goes to a temporary file in the destination directory, is flushed
and ``fsync``-ed, and only then renamed over the destination (``os.replace``), so an interrupted
save leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import tempfile
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from . import backend
from ._version import __version__
from .layers import Layer
from .layers.core import LAYERS, layer_class_name
from .losses import LOSSES, Loss
from .random import BackendGenerator, Generator
from .validation import check_flag

if TYPE_CHECKING:  # pragma: no cover - for annotations only; the model sits above this module
    from .model import Sequential

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "RECORD_KEY",
    "FormatError",
    "apply_record",
    "atomic_write",
    "build_layers",
    "checkpoint_callback_states",
    "checkpoint_optimizer",
    "model_record",
    "read",
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
# Atomic writes
# ----------------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], *,
                 overwrite: bool = True) -> None:
    """Run ``write(file)`` on a temporary file beside ``path``, then move it into place.

    The temporary file (``.<name>.<random>.tmp`` in the same directory, so the final rename
    never crosses file systems) is flushed and fsync-ed before ``os.replace`` renames it over
    ``path``; the directory is fsync-ed after. If ``write`` raises or the process dies, ``path``
    keeps its previous content and the temporary file is removed (on an exception).

    With ``overwrite=False`` an existing ``path`` raises :class:`FileExistsError` (checked
    atomically with a hard link where the file system allows it).
    """
    target = _fspath(path)
    if os.path.isdir(target):
        raise IsADirectoryError(f"cannot save to {target}: it is a directory; give a file name "
                                f"such as {os.path.join(target, 'model.npz')}")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save to {target}: the directory {directory} does not "
                                "exist")
    if not overwrite and os.path.exists(target):
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if target appeared meanwhile: never clobbers
            except FileExistsError:
                raise FileExistsError(f"{target} already exists; pass overwrite=True to "
                                      "replace it") from None
            except OSError:  # file systems without hard links
                if os.path.exists(target):
                    raise FileExistsError(f"{target} already exists") from None
                os.replace(tmp, target)
            else:
                os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


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
# Loading
# ----------------------------------------------------------------------------------------------


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The validated JSON record and the host arrays of the nnxp file ``path``.

    Raises
    ------
    FileNotFoundError
        when ``path`` does not exist.
    FormatError
        when it is not an NPZ archive readable without pickle, has no nnxp record, or was
        written in another format version.
    """
    target = _fspath(path)
    if os.path.isdir(target):
        raise IsADirectoryError(f"{target} is a directory, not an nnxp model file")
    if not os.path.isfile(target):
        raise FileNotFoundError(f"no such model file: {target}")
    try:
        arrays = backend.load_npz(target)
    except ValueError as exc:
        raise FormatError(f"{target} is not an nnxp model file: {exc}") from None
    raw = arrays.pop(RECORD_KEY, None)
    if raw is None:
        raise FormatError(f"{target} is an NPZ archive but not an nnxp model file (it has no "
                          f"{RECORD_KEY!r} record)")
    if backend.dtype_name(raw.dtype) != "uint8" or raw.ndim != 1:
        raise FormatError(f"{target}: the {RECORD_KEY!r} record must be a 1-D uint8 array, got "
                          f"{backend.dtype_name(raw.dtype)} of shape {tuple(raw.shape)}")
    try:
        record = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{target}: the {RECORD_KEY!r} record is not valid JSON "
                          f"({exc})") from None
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
    for field in ("layers", "loss", "dtype"):
        if field not in record:
            raise FormatError(f"{target}: the record has no {field!r} field (corrupt file)")
    layers, loss = record["layers"], record["loss"]
    if not isinstance(layers, list) or not layers \
            or not all(isinstance(e, dict) for e in layers):
        raise FormatError(f"{target}: the record's 'layers' must be a non-empty list of layer "
                          f"entries, got {type(layers).__name__} (corrupt or edited file)")
    if not isinstance(loss, dict):
        raise FormatError(f"{target}: the record's 'loss' must be an object with a 'name', got "
                          f"{type(loss).__name__} (corrupt or edited file)")
    return record, arrays


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
