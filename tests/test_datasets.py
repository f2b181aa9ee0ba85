"""nnxp.datasets: IDX files (plain and gzip) and folders of them; ``nnxp train --data DIR``."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import nnxp
from nnxp.cli import main
from nnxp.datasets import IDXError, idx_images, load_idx, load_idx_folder

CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B,
         np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(a: np.ndarray, code: int | None = None) -> bytes:
    big = a.astype(a.dtype.newbyteorder(">")) if a.dtype.itemsize > 1 else a
    code = CODES[big.dtype] if code is None else code
    head = bytes([0, 0, code, a.ndim]) + b"".join(struct.pack(">I", s) for s in a.shape)
    return head + big.tobytes()


def write(path: Path, a: np.ndarray, *, gz: bool = False, data: bytes | None = None) -> Path:
    raw = idx_bytes(a) if data is None else data
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_round_trip_every_type(tmp_path, dtype, gz) -> None:
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    # a misleading name: the format is told by the magic bytes, not the suffix
    path = write(tmp_path / ("data.idx" if gz else "data.gz"), a, gz=gz)
    out = load_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, a)
    assert out.flags.writeable


def test_one_dimensional_and_empty(tmp_path) -> None:
    np.testing.assert_array_equal(load_idx(write(tmp_path / "l", np.arange(7, dtype="u1"))),
                                  np.arange(7))
    assert load_idx(write(tmp_path / "e", np.zeros((0, 3), "u1"))).shape == (0, 3)


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)


BAD = [
    (b"", "truncated header: .* 0 byte"),
    (b"\x00\x00\x08", "truncated header: .* 3 byte"),
    (b"\x1a\x00\x08\x01" + b"\x00" * 8, r"bad magic number 1a 00 08 01: .* 0x00 0x00"),
    (b"\x00\x00\x07\x01" + b"\x00" * 8, r"unknown IDX type code 0x07; expected one of 0x08"),
    (b"\x00\x00\x08\x00", "declares 0 dimensions; expected 1 to 16"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated file: the 2 dimension sizes .* needs 8 "
                                          "bytes, only 4"),
    (_header(0x08, (2, 3)) + b"\x01" * 5, r"truncated file: .*shape \(2, 3\).*unsigned bytes"
                                          r".* needs 6 (data )?bytes.*(has|only) 5"),
    (_header(0x0D, (2,)) + b"\x00" * 9, r"trailing byte.* after the data: shape \(2,\) of "
                                        "32-bit floats is 8 bytes"),
    (_header(0x0E, (100000, 100000, 100)), r"declares shape \(100000, 100000, 100\) of 64-bit "
                                           "floats, 8,000,000,000,000 bytes, above the limit"),
]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("data", "message"), BAD)
def test_bad_files_name_the_file_and_the_problem(tmp_path, data, message, gz) -> None:
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(IDXError, match=message) as err:
        load_idx(path)
    assert str(path) in str(err.value)


def test_max_bytes_caps_before_allocating(tmp_path) -> None:
    path = write(tmp_path / "a", np.zeros((10, 10), "f4"))
    assert load_idx(path, max_bytes=400).shape == (10, 10)
    with pytest.raises(IDXError, match="400 bytes, above the limit of 399"):
        load_idx(path, max_bytes=399)


def test_truncated_and_corrupt_gzip_streams(tmp_path) -> None:
    packed = gzip.compress(idx_bytes(np.arange(5000, dtype="i4")))
    cut = tmp_path / "cut"
    cut.write_bytes(packed[:len(packed) // 2])
    with pytest.raises(IDXError, match=f"{cut}: truncated"):
        load_idx(cut)
    flipped = bytearray(packed)
    flipped[-6] ^= 0xFF  # the CRC/size trailer no longer matches the data
    bad = tmp_path / "crc"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(IDXError, match=f"{bad}: corrupt compressed data"):
        load_idx(bad)
    with pytest.raises(FileNotFoundError):
        load_idx(tmp_path / "missing")


def test_images_are_flattened_and_scaled() -> None:
    images = np.array([[[0, 255], [51, 102]]], dtype="u1")
    out = idx_images(images)
    assert out.dtype == np.float32 and out.shape == (1, 4)
    np.testing.assert_allclose(out, [[0.0, 1.0, 0.2, 0.4]])
    floats = idx_images(np.array([[1.5, -2.0]], dtype="f8"))
    assert floats.dtype == np.float32 and floats.tolist() == [[1.5, -2.0]]


def mnist_like(folder: Path, n_train: int = 120, n_test: int = 40, *, gz_train: bool = True,
               test_prefix: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """A tiny MNIST-shaped data set: 6×6 images whose bright quadrant gives the class."""
    rng = np.random.default_rng(1)
    folder.mkdir(exist_ok=True)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 4, n).astype("u1")
        images = (rng.random((n, 6, 6)) * 60).astype("u1")
        for i, k in enumerate(labels):
            r, c = divmod(int(k), 2)
            images[i, 3 * r:3 * r + 3, 3 * c:3 * c + 3] += 190
        return images, labels

    images, labels = make(n_train)
    write(folder / ("train-images-idx3-ubyte" + (".gz" if gz_train else "")), images,
          gz=gz_train)
    write(folder / "train-labels-idx1-ubyte", labels)
    if n_test:
        test_images, test_labels = make(n_test)
        write(folder / f"{test_prefix}-images-idx3-ubyte", test_images)
        write(folder / f"{test_prefix}-labels-idx1-ubyte.gz", test_labels, gz=True)
    return images, labels


def test_folder_rule(tmp_path) -> None:
    images, labels = mnist_like(tmp_path / "d")
    found = load_idx_folder(tmp_path / "d")
    assert found.X_train.shape == (120, 36) and found.X_train.dtype == np.float32
    np.testing.assert_allclose(found.X_train, images.reshape(120, 36) / 255, rtol=1e-6)
    np.testing.assert_array_equal(found.y_train, labels)
    assert found.y_train.dtype == np.int64 and found.X_test.shape == (40, 36)
    assert found.files["train_images"].endswith("train-images-idx3-ubyte.gz")
    mnist_like(tmp_path / "t", n_test=10, gz_train=False, test_prefix="test")
    assert load_idx_folder(tmp_path / "t").X_test.shape == (10, 36)
    mnist_like(tmp_path / "n", n_test=0)
    assert load_idx_folder(tmp_path / "n").X_test is None


def test_folder_errors(tmp_path) -> None:
    d = tmp_path / "d"
    mnist_like(d)
    (d / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(IDXError, match="no train labels file .* found: t10k-images"):
        load_idx_folder(d)
    write(d / "train-labels-idx1-ubyte", np.zeros(119, "u1"))
    with pytest.raises(IDXError, match="119 labels for 120 images"):
        load_idx_folder(d)
    write(d / "train-labels-idx1-ubyte", np.zeros(120, "f4"))
    with pytest.raises(IDXError, match="labels must be integers, got float32"):
        load_idx_folder(d)
    write(d / "train-labels-idx1-ubyte", np.full(120, -1, "i1"))
    with pytest.raises(IDXError, match="non-negative class indices"):
        load_idx_folder(d)
    write(d / "train-labels-idx1-ubyte", np.zeros((120, 2), "u1"))
    with pytest.raises(IDXError, match="one-dimensional"):
        load_idx_folder(d)
    write(d / "train-labels-idx1-ubyte", np.zeros(120, "u1"))
    write(d / "train-labels-idx1-ubyte.gz", np.zeros(120, "u1"), gz=True)
    with pytest.raises(IDXError, match="2 files could be the train labels"):
        load_idx_folder(d)
    (d / "train-labels-idx1-ubyte.gz").unlink()
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(IDXError, match="no test labels file"):
        load_idx_folder(d)
    write(d / "t10k-labels-idx1-ubyte", np.zeros(40, "u1"))
    write(d / "t10k-images-idx3-ubyte", np.zeros((40, 5, 5), "u1"))
    with pytest.raises(IDXError, match="test images have 25 values per sample, the training "
                                       "images 36"):
        load_idx_folder(d)
    with pytest.raises(IDXError, match="not a folder"):
        load_idx_folder(d / "t10k-labels-idx1-ubyte")


def test_cli_trains_on_an_idx_folder_and_evaluates_on_its_test_set(tmp_path, capsys) -> None:
    mnist_like(tmp_path / "mnist")
    model_path = tmp_path / "m.npz"
    assert main(["train", "--data", str(tmp_path / "mnist"), "--hidden", "16", "--epochs", "15",
                 "--lr", "0.2", "--batch-size", "16", "--val-size", "0.1",
                 "--save", str(model_path)]) == 0
    out, err = capsys.readouterr()
    assert "108 train / 12 validation / 40 test samples" in err
    assert "4 classes" in err
    accuracy = float(out.split("test accuracy:")[1].split()[0])
    assert accuracy >= 0.9
    model = nnxp.load(model_path)
    assert model.metadata["data"].startswith("IDX folder") and model.n_features == 36
    found = load_idx_folder(tmp_path / "mnist")
    assert model.evaluate(found.X_test, found.y_test)["accuracy"] == pytest.approx(accuracy,
                                                                                   abs=1e-4)


def test_cli_folder_errors_are_one_line(tmp_path, capsys) -> None:
    mnist_like(tmp_path / "mnist")
    assert main(["train", "--data", str(tmp_path / "mnist"), "--target", "y"]) == 2
    assert "--target does not apply to a folder of IDX files" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no train images file" in err and "Traceback" not in err
    mnist_like(tmp_path / "notest", n_test=0)
    assert main(["train", "--data", str(tmp_path / "notest"), "--epochs", "1", "--quiet"]) == 0
    assert "test accuracy" in capsys.readouterr().out
