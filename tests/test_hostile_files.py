"""Hostile and corrupt model files: every one is a FormatError, never an allocation first.

``hostile_files()`` generates the cases (the reports of issue 16 and more): each is a file that
``nnxp.load`` must refuse with :class:`nnxp.FormatError` naming the file, or (marked
``cli_only``) one that loads but that the command line must refuse. For every case ``nnxp info``
and ``nnxp predict`` must exit 2 with a single line on stderr and no traceback.
"""

from __future__ import annotations

import io
import json
import struct
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

import nnxp
from nnxp import archive, backend, cli
from nnxp.layers import Dense, ReLU, Standardize
from nnxp.optim import Adam

LEGACY = Path(__file__).resolve().parent / "data" / "checkpoint_before_issue9.npz"
FEATURES = ["f0", "f1", "f2", "f3"]


def npy(a: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, a, allow_pickle=True)
    return out.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "<f4", data: bytes = b"") -> bytes:
    """A .npy file whose header declares ``shape`` whatever the data (which may be absent)."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode() + b" "
    header += b" " * ((-(10 + len(header) + 1)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def zip_members(members: list[tuple[str, bytes]], compress: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w", compression=compress) as zf:
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are one of the cases
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compress)
    return out.getvalue()


@pytest.fixture(scope="module")
def base() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A small classifier checkpoint (Standardize, Dense, ReLU, Dense; Adam state; metadata)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 4)).astype(np.float32)
    y = np.arange(12) % 3
    model = nnxp.Sequential([Standardize(4), Dense(4, 5), ReLU(), Dense(5, 3)], seed=0)
    model.fit(X, y, epochs=1, batch_size=6, optimizer=Adam(lr=1e-3), verbose=0)
    model.metadata = {"task": "classification", "target": "y", "feature_names": FEATURES,
                      "classes": ["a", "b", "c"]}
    record, arrays = archive.model_record(model)
    return json.loads(json.dumps(record)), arrays


def encode(record: Any, arrays: dict[str, np.ndarray], extra: list[tuple[str, bytes]] = (),
           raw_record: bytes | None = None) -> bytes:
    payload = raw_record if raw_record is not None else json.dumps(record).encode()
    members = [(f"{archive.RECORD_KEY}.npy", npy(np.frombuffer(payload, np.uint8)))]
    members += [(f"{k}.npy", npy(v)) for k, v in arrays.items()]
    return zip_members(members + list(extra))


class Case(NamedTuple):
    name: str
    data: bytes
    cli_only: bool = False  # loads (the file is valid) but the command line must refuse it


def hostile_files(base) -> Iterator[Case]:  # noqa: C901 - one flat list of cases
    record, arrays = base

    def edit(change: Callable[[dict[str, Any], dict[str, np.ndarray]], Any],
             **kw: Any) -> bytes:
        r, a = json.loads(json.dumps(record)), {k: v.copy() for k, v in arrays.items()}
        change(r, a)
        return encode(r, a, **kw)

    def setting(path: str, value: Any) -> Callable[[dict, dict], None]:
        def change(r: dict, a: dict) -> None:
            *parents, last = path.split(".")
            target: Any = r
            for p in parents:
                target = target[int(p)] if isinstance(target, list) else target[p]
            target[last] = value
        return change

    def array(name: str, value: np.ndarray) -> Callable[[dict, dict], None]:
        return lambda r, a: a.__setitem__(name, value)

    W = "layers/1/params/W"
    # sizes declared in the config, tiny arrays in the file
    yield Case("dense 10000x10000 config", edit(setting("layers.1.config.in_features", 10000)))
    yield Case("dense 40000x50000 config", edit(lambda r, a: r["layers"][1]["config"].update(
        in_features=40000, out_features=50000)))
    yield Case("standardize 4e8 features", edit(setting("layers.0.config.n_features",
                                                        400_000_000)))
    yield Case("in_features a string", edit(setting("layers.1.config.in_features", "abc")))
    yield Case("in_features a float", edit(setting("layers.1.config.in_features", 1e9)))
    yield Case("in_features negative", edit(setting("layers.1.config.in_features", -4)))
    # array headers: huge, overflowing, inconsistent, not numbers
    extra_w = [(f"{W}.npy", npy_header((10**6, 10**6)))]
    no_w = {k: v for k, v in arrays.items() if k != W}
    yield Case("header of 1e12 elements", encode(record, no_w, extra=extra_w))
    yield Case("shape product overflows int64",
               encode(record, no_w, extra=[(f"{W}.npy", npy_header((2**40, 2**40, 2**40)))]))
    yield Case("header shape larger than the data",
               encode(record, no_w, extra=[(f"{W}.npy", npy_header((4, 5), data=b"\0" * 8))]))
    yield Case("negative shape", encode(record, no_w, extra=[(f"{W}.npy", npy_header((-4, 5)))]))
    yield Case("object array", edit(array(W, np.array([{"a": 1}], dtype=object))))
    yield Case("structured dtype", edit(array(W, np.zeros((4, 5), dtype=[("a", "<f4")]))))
    yield Case("complex weights", edit(array(W, np.zeros((4, 5), np.complex64))))
    yield Case("float64 weights in a float32 layer", edit(array(W, np.zeros((4, 5)))))
    yield Case("weights of the wrong shape", edit(array(W, np.zeros((5, 4), np.float32))))
    yield Case("bomb: a deflated member claiming 1 GB",
               _bomb(record, no_w, W))
    # values
    yield Case("NaN weight", edit(lambda r, a: a[W].__setitem__((0, 0), np.nan)))
    yield Case("standardize scale 0", edit(lambda r, a: a["layers/0/buffers/scale"]
                                           .__setitem__(1, 0.0)))
    yield Case("NaN in adam's moments", edit(lambda r, a: next(
        v for k, v in a.items() if k.startswith("optimizer/state") and v.dtype.kind == "f"
        and v.size).reshape(-1).__setitem__(0, np.nan)))
    yield Case("weights of 3e38", edit(lambda r, a: a[W].fill(3e38)), cli_only=True)
    yield Case("fewer class names than outputs", edit(setting("metadata.classes", ["a", "b"])),
               cli_only=True)
    yield Case("feature names not a list", edit(setting("metadata.feature_names", 7)),
               cli_only=True)
    # the record's fields
    yield Case("epochs_trained -5", edit(setting("epochs_trained", -5)))
    yield Case("epochs_trained 1.5", edit(setting("epochs_trained", 1.5)))
    yield Case("seed 'abc'", edit(setting("seed", "abc")))
    yield Case("params a list", edit(setting("layers.1.params", [1, 2])))
    yield Case("optimizer 'SGD'", edit(setting("optimizer", "SGD")))
    yield Case("optimizer iterations -1", edit(setting("optimizer.iterations", -1)))
    yield Case("metadata a list", edit(setting("metadata", [1, 2])))
    yield Case("loss a string", edit(setting("loss", "mse")))
    yield Case("layer class a number", edit(setting("layers.1.class", 7)))
    yield Case("layer config a list", edit(setting("layers.1.config", [4, 5])))
    yield Case("no layers", edit(setting("layers", [])))
    yield Case("format_version '1'", edit(setting("format_version", "1")))
    yield Case("format_version 99", edit(setting("format_version", 99)))
    yield Case("array reference not a string", edit(setting("layers.1.params.W",
                                                            {"__array__": 5})))
    yield Case("missing referenced array", edit(lambda r, a: a.pop(W)))
    yield Case("__float__ 'abc'", edit(setting("metadata.x", {"__float__": "abc"})))
    yield Case("__dict__ not pairs", edit(setting("metadata.x", {"__dict__": [1, 2, 3]})))
    yield Case("unregistered layer class", edit(setting("layers.2.class", "evil.Module")))
    nested: Any = 0
    for _ in range(900):
        nested = {"a": nested}
    yield Case("metadata nested 900 levels", edit(setting("metadata.deep", nested)))
    deep = b'{"format":"nnxp","format_version":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    yield Case("JSON nested 100000 levels", encode(record, arrays, raw_record=deep))
    yield Case("record not JSON", encode(record, arrays, raw_record=b"\xff\xfe{"))
    yield Case("record with a NaN literal", encode(record, arrays, raw_record=json.dumps(
        {**record, "seed": float("nan")}).encode()))
    # the container
    good = encode(record, arrays)
    yield Case("truncated zip", good[: len(good) // 2])
    yield Case("truncated at the end", good[:-10])
    yield Case("empty file", b"")
    yield Case("wrong magic", b"GIF89a" + good[6:])
    yield Case("a bare .npy", npy(np.zeros(3)))
    yield Case("a pickle", b"\x80\x04\x95" + b"\0" * 20)
    flipped = bytearray(good)
    flipped[good.index(npy(arrays[W])) + 200] ^= 0xFF  # a data byte of W: the CRC catches it
    yield Case("flipped data byte", bytes(flipped))
    record_member = (f"{archive.RECORD_KEY}.npy",
                     npy(np.frombuffer(json.dumps(record).encode(), np.uint8)))
    members = [record_member] + [(f"{k}.npy", npy(v)) for k, v in arrays.items()]
    yield Case("duplicate members", zip_members(members + [members[1]]))
    yield Case("path traversal member", zip_members(members + [("../../evil.npy", npy(
        np.zeros(1)))]))
    yield Case("absolute member name", zip_members(members + [("/etc/evil.npy", npy(
        np.zeros(1)))]))
    yield Case("no record", zip_members(members[1:]))
    yield Case("record not uint8", zip_members([(record_member[0], npy(np.zeros(3)))]
                                               + members[1:]))


def _bomb(record: dict, arrays: dict, name: str) -> bytes:
    """W as a deflated member whose header declares a billion floats; the compressed stream
    is a few kB, so a reader that trusts the header decompresses 4 GB."""
    members = [(f"{archive.RECORD_KEY}.npy", npy(np.frombuffer(json.dumps(record).encode(),
                                                               np.uint8)))]
    members += [(f"{k}.npy", npy(v)) for k, v in arrays.items()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for n, data in members:
            zf.writestr(n, data)
        zf.writestr(f"{name}.npy", npy_header((4, 250_000_000), data=b"\0" * 2**20),
                    compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


@pytest.fixture(scope="module")
def cases(base) -> list[Case]:
    return list(hostile_files(base))


def test_the_base_file_loads(base, tmp_path) -> None:
    path = tmp_path / "m.npz"
    path.write_bytes(encode(*base))
    assert nnxp.load(path).metadata["classes"] == ["a", "b", "c"]


def test_every_hostile_file_is_a_format_error_naming_the_file(cases, tmp_path) -> None:
    assert len(cases) >= 50
    for case in cases:
        path = tmp_path / "hostile.npz"
        path.write_bytes(case.data)
        if case.cli_only:
            nnxp.load(path)
            continue
        start = time.process_time()  # CPU time: other load does not count
        with pytest.raises(nnxp.FormatError) as info:
            nnxp.load(path)
        assert str(path) in str(info.value), case.name
        assert time.process_time() - start < 1.0, case.name


@pytest.fixture
def data_csv(tmp_path) -> Path:
    path = tmp_path / "data.csv"
    rows = ["f0,f1,f2,f3,y"] + [f"{i},{i % 3},{-i},{i / 2},a" for i in range(5)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_the_command_line_answers_every_hostile_file_with_one_line(cases, data_csv, tmp_path,
                                                                    capsys) -> None:
    path = tmp_path / "hostile.npz"
    for case in cases:
        path.write_bytes(case.data)
        commands = [["predict", "--model", str(path), "--data", str(data_csv)]]
        if not case.cli_only or "class" in case.name or "feature" in case.name:
            commands.append(["info", str(path)])
        for argv in commands:
            status = cli.main(argv)
            out, err = capsys.readouterr()
            assert status == 2, (case.name, argv[0], out, err)
            assert len(err.strip().splitlines()) == 1, (case.name, err)
            assert "Traceback" not in err and "nan" not in out.lower(), case.name


def test_an_unreferenced_member_is_never_decompressed(base, tmp_path) -> None:
    """16 MB of zeros deflated to 16 kB, its stream corrupted: read whole, it would cost time
    and memory and fail; nnxp never opens it."""
    record, arrays = base
    good = encode(record, arrays)
    out = io.BytesIO(good)
    with zipfile.ZipFile(out, "a") as zf:
        zf.writestr("junk.npy", b"\0" * 2**24, compress_type=zipfile.ZIP_DEFLATED)
    data = bytearray(out.getvalue())
    start = data.rindex(b"junk.npy", 0, len(good) + 100)  # the local header's name
    data[start + 8 + 100] ^= 0xFF  # corrupt the compressed stream
    path = tmp_path / "m.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="junk"):  # reading every member fails on it
        backend.load_npz(path)
    begin = time.process_time()
    nnxp.load(path)
    assert time.process_time() - begin < 0.5


def test_the_caps_are_overridable_and_checked_before_reading(base, tmp_path) -> None:
    path = tmp_path / "m.npz"
    path.write_bytes(encode(*base))
    with pytest.raises(nnxp.FormatError, match="limit of 10 bytes per array"):
        nnxp.load(path, limits=archive.Limits(array_bytes=10))
    with pytest.raises(nnxp.FormatError, match="limit of 64 bytes in all"):
        nnxp.load(path, limits=archive.Limits(total_bytes=64))
    with pytest.raises(nnxp.FormatError, match="nested more than 3 levels"):
        nnxp.load(path, limits=archive.Limits(depth=3))
    nnxp.load(path, limits=archive.Limits())


def test_loading_takes_linear_time_in_the_number_of_layers(tmp_path) -> None:
    """16 times the layers must cost well under 35 times the time (linear: ~16x; the quadratic
    duplicate check this guards against: ~75x). Timed by this process's CPU time, the best of
    interleaved rounds, so that other work on a shared machine does not count (a wall-clock
    version failed once under load in CI, at 61x)."""
    paths = {}
    for n in (500, 8000):
        paths[n] = tmp_path / f"m{n}.npz"
        nnxp.Sequential([Dense(2, 2)] + [ReLU() for _ in range(n - 1)], seed=0).save(paths[n])
    best = {500: float("inf"), 8000: float("inf")}
    for _ in range(3):
        for n in (500, 8000):
            start = time.process_time()
            nnxp.load(paths[n])
            best[n] = min(best[n], time.process_time() - start)
    small, large = best[500], best[8000]
    assert large < 35 * small + 0.05, (small, large)


def test_an_old_file_still_loads() -> None:
    model = nnxp.load(LEGACY)
    assert model.epochs_trained > 0
