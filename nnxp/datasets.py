"""Data set files: the IDX format of MNIST-style data sets, and folders of them.

:func:`load_idx` reads one IDX file (plain or gzip-compressed, told apart by its first bytes,
not by its name) into a host NumPy array; :func:`load_idx_folder` finds the training and test
images and labels of a folder laid out as MNIST's (what ``nnxp train --data DIR`` uses).

The IDX format (LeCun et al., the MNIST distribution): a 4-byte magic number ``0x00 0x00 T D``
— two zero bytes, the element type ``T`` and the number of dimensions ``D`` — then ``D``
sizes as big-endian unsigned 32-bit integers, then the ``prod(sizes)`` elements, big-endian,
in C order. Type codes: ``0x08`` unsigned byte, ``0x09`` signed byte, ``0x0B`` 16-bit int,
``0x0C`` 32-bit int, ``0x0D`` 32-bit float, ``0x0E`` 64-bit float.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Any, NamedTuple

from . import backend

__all__ = ["IDX_TYPES", "MAX_IDX_BYTES", "IDXError", "IdxFolder", "idx_images",
           "load_idx", "load_idx_folder"]

IDX_TYPES: dict[int, tuple[str, str]] = {
    0x08: ("u1", "unsigned byte"),
    0x09: ("i1", "signed byte"),
    0x0B: (">i2", "16-bit integer"),
    0x0C: (">i4", "32-bit integer"),
    0x0D: (">f4", "32-bit float"),
    0x0E: (">f8", "64-bit float"),
}
"""IDX type code → (big-endian NumPy dtype, name)."""

MAX_IDX_BYTES = 2**34
"""Default cap on the data a header may declare (16 GiB), checked before anything is
allocated; pass ``max_bytes=`` to :func:`load_idx` for larger files."""

_MAX_DIMS = 16
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24


class IDXError(ValueError):
    """A file that is not a valid IDX file; the message names the file and what was wrong."""


def _read_exact(f: Any, n: int, path: str, what: str) -> bytearray:
    """Exactly ``n`` bytes from ``f``, read in chunks into one buffer, or IDXError."""
    out = bytearray(n)
    view = memoryview(out)
    done = 0
    try:
        while done < n:
            got = f.readinto(view[done:done + _CHUNK])
            if not got:
                break
            done += got
    except (EOFError, OSError, zlib.error) as exc:
        raise IDXError(f"{path}: truncated or corrupt compressed data while reading {what} "
                       f"(after {done:,} of {n:,} bytes): {exc}") from None
    if done != n:
        raise IDXError(f"{path}: truncated file: {what} needs {n:,} bytes, only {done:,} "
                       "are there")
    return out


def load_idx(path: str | os.PathLike[str], *, max_bytes: int = MAX_IDX_BYTES) -> Any:
    """Read an IDX file into a host NumPy array of its declared shape and type.

    Parameters
    ----------
    path
        The file, plain or gzip-compressed (recognised by the gzip magic bytes ``1f 8b``,
        whatever the file is called).
    max_bytes
        Refuse a header that declares more data than this (16 GiB by default), before
        allocating anything.

    Returns
    -------
    numpy.ndarray
        Shape ``(d0, d1, ...)`` from the header; dtype uint8, int8, int16, int32, float32 or
        float64 in the machine's byte order.

    Raises
    ------
    IDXError
        (a ValueError) naming the file, for: a bad magic number (the first two bytes are not
        zero, an unknown type code, zero dimensions), a header cut short, a declared size above
        ``max_bytes``, fewer data bytes than the sizes' product needs (a truncated file, or a
        truncated/corrupt gzip stream), and bytes after the data (trailing bytes: a wrong header
        or two files glued together).
    FileNotFoundError
        when ``path`` does not exist.
    """
    name = os.fspath(path)
    with open(name, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if compressed:
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return _read_idx(f, name, max_bytes, None)
        size = os.fstat(raw.fileno()).st_size
        return _read_idx(raw, name, max_bytes, size)


def _read_idx(f: Any, path: str, max_bytes: int, file_size: int | None) -> Any:
    try:
        magic = f.read(4)
    except (EOFError, OSError, zlib.error) as exc:
        raise IDXError(f"{path}: not a readable gzip stream: {exc}") from None
    if len(magic) < 4:
        raise IDXError(f"{path}: truncated header: an IDX file starts with a 4-byte magic "
                       f"number, the file has {len(magic)} byte(s)")
    if magic[0] != 0 or magic[1] != 0:
        raise IDXError(f"{path}: bad magic number {magic.hex(' ')}: an IDX file starts with "
                       "0x00 0x00, then the type code and the number of dimensions")
    code, ndim = magic[2], magic[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X} ({n})" for c, (_, n) in IDX_TYPES.items())
        raise IDXError(f"{path}: unknown IDX type code 0x{code:02X}; expected one of {known}")
    if not 1 <= ndim <= _MAX_DIMS:
        raise IDXError(f"{path}: the header declares {ndim} dimensions; expected 1 to "
                       f"{_MAX_DIMS}")
    dims_bytes = _read_exact(f, 4 * ndim, path, f"the {ndim} dimension sizes of the header")
    shape = tuple(int.from_bytes(dims_bytes[4 * i:4 * i + 4], "big") for i in range(ndim))
    dtype, type_name = IDX_TYPES[code]
    width = int(dtype[-1])
    n_bytes = math.prod(shape) * width
    if n_bytes > max_bytes:
        raise IDXError(f"{path}: the header declares shape {shape} of {type_name}s, "
                       f"{n_bytes:,} bytes, above the limit of {max_bytes:,} bytes "
                       "(max_bytes=); a corrupt header, or pass a larger max_bytes")
    header = 4 + 4 * ndim
    if file_size is not None and file_size != header + n_bytes:
        have = file_size - header
        if have < n_bytes:
            raise IDXError(f"{path}: truncated file: shape {shape} of {type_name}s needs "
                           f"{n_bytes:,} data bytes after the {header}-byte header, the file "
                           f"has {have:,}")
        raise IDXError(f"{path}: {have - n_bytes:,} trailing byte(s) after the data: shape "
                       f"{shape} of {type_name}s is {n_bytes:,} bytes, the file has {have:,} "
                       "after the header")
    data = _read_exact(f, n_bytes, path, f"the data of shape {shape} ({type_name}s)")
    try:
        extra = f.read(1)
    except (EOFError, OSError, zlib.error) as exc:
        raise IDXError(f"{path}: corrupt compressed data after the array: {exc}") from None
    if extra:
        raise IDXError(f"{path}: trailing bytes after the data: shape {shape} of "
                       f"{type_name}s is {n_bytes:,} bytes, the stream holds more")
    return backend.host_from_bytes(data, dtype, shape)


def idx_images(images: Any) -> Any:
    """Images ``(n, ...)`` as a float32 matrix ``(n, features)``: each sample flattened in C
    order; unsigned bytes (MNIST's pixels, 0-255) scaled to [0, 1] by 1/255, other types
    cast unchanged."""
    xp = backend.host_namespace()
    n = images.shape[0] if images.ndim else 0
    flat = xp.reshape(images, (n, -1)) if images.ndim >= 2 else xp.reshape(images, (n, 1))
    out = xp.astype(flat, xp.float32)
    if backend.dtype_name(images.dtype) == "uint8":
        out = out / xp.asarray(255.0, dtype=xp.float32)
    return out


class IdxFolder(NamedTuple):
    """What :func:`load_idx_folder` found: the training images (float32, ``(n, features)``)
    and labels (int64), the test pair or ``None``, and the four file paths."""

    X_train: Any
    y_train: Any
    X_test: Any
    y_test: Any
    files: dict[str, str]


def _stem(name: str) -> str:
    low = name.lower()
    return low[:-3] if low.endswith(".gz") else low


def _find(folder: Path, prefixes: tuple[str, ...], kind: str) -> Path | None:
    found = sorted(p for p in folder.iterdir() if p.is_file()
                   and _stem(p.name).startswith(prefixes) and kind in _stem(p.name))
    if len(found) > 1:
        raise IDXError(f"{folder}: {len(found)} files could be the {prefixes[0]} {kind}: "
                       f"{', '.join(p.name for p in found)}; keep one")
    return found[0] if found else None


def _labels(path: Path, n_images: int) -> Any:
    labels = load_idx(path)
    if labels.ndim != 1:
        raise IDXError(f"{path}: labels must be one-dimensional, got shape {tuple(labels.shape)}")
    if backend.dtype_name(labels.dtype) not in ("uint8", "int8", "int16", "int32"):
        raise IDXError(f"{path}: labels must be integers, got {backend.dtype_name(labels.dtype)}")
    if labels.shape[0] != n_images:
        raise IDXError(f"{path}: {labels.shape[0]} labels for {n_images} images")
    xp = backend.host_namespace()
    out = xp.astype(labels, xp.int64)
    if not backend.host_all_positive(out, allow_zero=True):
        raise IDXError(f"{path}: labels must be non-negative class indices")
    return out


def load_idx_folder(folder: str | os.PathLike[str]) -> IdxFolder:
    """The training and test sets of a folder of IDX files named as MNIST's.

    The rule, on each file name in lower case with a final ``.gz`` removed: names starting with
    ``train`` are the training set and names starting with ``t10k`` or ``test`` the test set;
    within each, the name containing ``images`` holds the images and the one containing
    ``labels`` the labels (``train-images-idx3-ubyte``, ``train-labels.idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte``, ``test_labels.idx``, ...). The training pair is required, the
    test pair optional (both files or neither); two candidates for one role are an error.
    Images become float32 rows (:func:`idx_images`), labels int64 class indices.
    """
    root = Path(folder)
    if not root.is_dir():
        raise IDXError(f"{root}: not a folder")
    files: dict[str, str] = {}
    sets: dict[str, tuple[Any, Any] | None] = {}
    for part, prefixes in (("train", ("train",)), ("test", ("t10k", "test"))):
        images, labels = _find(root, prefixes, "images"), _find(root, prefixes, "labels")
        if images is None and labels is None and part == "test":
            sets[part] = None
            continue
        if images is None or labels is None:
            missing = "images" if images is None else "labels"
            raise IDXError(f"{root}: no {part} {missing} file (a name starting with "
                           f"{' or '.join(prefixes)} and containing {missing!r}, e.g. "
                           f"{prefixes[0]}-{missing}-idx{'3' if missing == 'images' else '1'}"
                           f"-ubyte[.gz]); found: "
                           f"{', '.join(sorted(p.name for p in root.iterdir())) or 'nothing'}")
        X = load_idx(images)
        if X.ndim < 1:  # pragma: no cover - load_idx guarantees ndim >= 1
            raise IDXError(f"{images}: images need a sample axis")
        if X.shape[0] == 0:
            raise IDXError(f"{images}: the {part} images hold no samples (shape {X.shape})")
        y = _labels(labels, X.shape[0])
        files[f"{part}_images"], files[f"{part}_labels"] = str(images), str(labels)
        sets[part] = (idx_images(X), y)
    train = sets["train"]
    assert train is not None
    test = sets["test"]
    if test is not None and test[0].shape[1] != train[0].shape[1]:
        raise IDXError(f"{root}: the test images have {test[0].shape[1]} values per sample, the "
                       f"training images {train[0].shape[1]}")
    return IdxFolder(train[0], train[1], None if test is None else test[0],
                     None if test is None else test[1], files)
