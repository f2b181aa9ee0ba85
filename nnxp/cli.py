"""The ``nnxp`` command line.

* ``nnxp train`` trains an MLP — on scikit-learn's bundled handwritten digits by default, or on
  your own table with ``--data FILE.csv|FILE.npz --target COLUMN [--task classify|regress]``,
  or on a folder of MNIST-style IDX files with ``--data DIR`` (:mod:`nnxp.datasets`) —
  and can ``--save`` it and ``--plot`` its learning curves; ``--precision``, ``--loss-scale``,
  ``--accumulate``, ``--memory-budget``, ``--tf32`` and ``--capture`` are ``fit``'s options;
* ``nnxp predict --model M --data FILE [--output out.csv]`` writes predictions as CSV;
* ``nnxp evaluate --model M --data FILE [--target COLUMN]`` prints the loss and metrics;
* ``nnxp info M`` prints the architecture, parameter count and memory estimate;
* ``nnxp bench`` times kernels and training steps;
* ``nnxp doctor [--require cupy,torch:cuda]`` says which backends and devices work here, and
  why the others do not (exit status 1 when a required one does not work).

Every problem with the command or the data (a missing file or column, non-numeric or NaN
values, a feature count that does not match the model, an existing model file without
``--overwrite``) is reported as one line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import backend, bench, datasets, distributed
from . import io as nio
from ._version import __version__
from .backend import BACKENDS, BackendError
from .layers import Dense, Standardize, get_activation
from .model import Sequential, TrainingDivergedError
from .optim import OPTIMIZERS, get_optimizer
from .precision import available as available_precisions
from .random import Generator
from .training import MemoryPlanError
from .validation import check_above_zero, check_count


class UsageError(Exception):
    """A problem with the user's command or data: one line on stderr, exit status 2."""


def _option_type(parse: Callable[[str], Any], check: Callable[..., Any], *, unparsable: str,
                 rejected: str) -> Callable[[str], Any]:
    """An argparse ``type=`` converter over a :mod:`nnxp.validation` check.

    The text is parsed with ``parse`` (``int``, ``float``) and the value handed to ``check``,
    which holds the rule; either failure becomes an :class:`argparse.ArgumentTypeError`, which
    argparse prints after the option's name: ``argument --epochs: must be a positive integer,
    got 0``. ``unparsable`` and ``rejected`` say what was expected in the two cases.
    """

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {unparsable}, got {text!r}") from None
        try:
            return check(value, argument="value")
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {rejected}, got {text}") from None

    return convert


_positive_int = _option_type(int, check_count, unparsable="a positive integer",
                             rejected="a positive integer")
_positive_float = _option_type(float, check_above_zero, unparsable="a number > 0",
                               rejected="> 0")
_byte_count = _option_type(str, lambda text, argument: backend.parse_bytes(text,
                                                                         argument=argument),
                           unparsable="a number of bytes",
                           rejected="a number of bytes >= 1 such as 6GiB, 512MB or 2e9")

PRECISIONS = ("float32", "float16", "bfloat16")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``nnxp train: error: ... (see nnxp train --help)``."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nnxp", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    backend_help = (f"one of {', '.join(BACKENDS)}, optionally name:device "
                    "(default: $NNXP_BACKEND or numpy)")

    train = sub.add_parser("train", help="train an MLP (default data: scikit-learn's digits)")
    data = train.add_argument_group("your own data (default: the bundled digits)")
    data.add_argument("--data", default=None, metavar="FILE|DIR",
                      help="a CSV file with a header row, an NPZ archive (an 'X' matrix "
                           "plus the target array, or one 1-D array per column), or a folder "
                           "of IDX files named as MNIST's (train-images-idx3-ubyte[.gz], "
                           "train-labels-idx1-ubyte[.gz], t10k-* as the test set)")
    data.add_argument("--target", default=None, metavar="COLUMN",
                      help="name of the target column (required with --data)")
    data.add_argument("--task", choices=("classify", "regress"), default=None,
                      help="classification or regression (default: inferred from the target "
                           "column: text or at most 50 distinct integers classify, other "
                           "numbers regress)")
    data.add_argument("--features", default=None, metavar="A,B,...",
                      help="comma-separated feature columns (default: every other column)")
    data.add_argument("--no-standardize", action="store_true",
                      help="do not standardise the features (by default the training split's "
                           "mean and standard deviation are stored in the model)")
    train.add_argument("--backend", default=None, help=backend_help)
    train.add_argument("--hidden", type=_positive_int, nargs="*", default=[128, 64],
                       metavar="N", help="hidden layer widths (default: 128 64)")
    train.add_argument("--activation", default="relu",
                       help="hidden activation, a name from nnxp.layers.ACTIVATIONS "
                            "(default: relu)")
    train.add_argument("--optimizer", default="sgd", type=str.lower,
                       help=f"one of {', '.join(n for n in OPTIMIZERS if n != 'lbfgs')} "
                            "(default: sgd)")
    train.add_argument("--epochs", type=_positive_int, default=30)
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--lr", type=_positive_float, default=0.05, help="learning rate")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--test-size", type=float, default=0.2,
                       help="held-out test fraction (default 0.2)")
    train.add_argument("--val-size", type=float, default=0.0,
                       help="validation fraction, evaluated every epoch (default 0; 0.1 is "
                            "used with --plot when not given)")
    train.add_argument("--save", default=None, metavar="MODEL.npz",
                       help="write the trained model (with its standardisation) here")
    train.add_argument("--overwrite", action="store_true",
                       help="allow --save to replace an existing file")
    train.add_argument("--plot", default=None, metavar="CURVES.png",
                       help="write the learning curves (needs matplotlib)")
    train.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel training across the ranks of mpiexec -n N "
                            "(--batch-size is per rank; needs the mpi extra; only rank 0 "
                            "prints and saves)")
    big = train.add_argument_group("larger models (fit's options; see docs/training.md)")
    big.add_argument("--precision", choices=PRECISIONS, default="float32",
                     help="mixed precision: forward and backward passes in float16 or bfloat16 "
                          "with float32 master weights (default float32; bfloat16 needs torch)")
    big.add_argument("--loss-scale", action=argparse.BooleanOptionalAction, default=None,
                     help="dynamic loss scaling (default: on for float16, off for bfloat16; "
                          "only with --precision float16|bfloat16)")
    big.add_argument("--accumulate", type=_positive_int, default=1, metavar="K",
                     help="gradient accumulation: one optimizer step per K batches of "
                          "--batch-size samples, equal to one step on a K-times larger batch "
                          "(default 1)")
    big.add_argument("--memory-budget", type=_byte_count, default=None, metavar="BYTES",
                     help="device memory a training step may use, e.g. 6GiB, 512MB or 2e9; "
                          "training is refused up front when the memory plan exceeds it "
                          "(default: $NNXP_MEMORY_BUDGET, and a GPU's free memory)")
    big.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                     help="allow (or with --no-tf32 forbid) TF32 float32 matmuls on cupy and "
                          "torch CUDA (default: $NNXP_TF32, else off; no effect on a CPU)")
    big.add_argument("--capture", action="store_true",
                     help="run every step from static input buffers and record it as a CUDA "
                          "graph where the backend can (cupy, torch CUDA; not yet verified on "
                          "a GPU); elsewhere the same buffers without recording")

    predict = sub.add_parser("predict", help="predict with a saved model; writes CSV")
    predict.add_argument("--model", required=True, metavar="MODEL.npz")
    predict.add_argument("--data", required=True, metavar="FILE")
    predict.add_argument("--output", default=None, metavar="OUT.csv",
                         help="CSV file to write (default: standard output)")
    predict.add_argument("--proba", action="store_true",
                         help="add one probability column per class (classifiers)")
    predict.add_argument("--backend", default=None, help=backend_help)

    evaluate = sub.add_parser("evaluate", help="loss and metrics of a saved model on data")
    evaluate.add_argument("--model", required=True, metavar="MODEL.npz")
    evaluate.add_argument("--data", required=True, metavar="FILE")
    evaluate.add_argument("--target", default=None, metavar="COLUMN",
                          help="target column (default: the one the model was trained on)")
    evaluate.add_argument("--backend", default=None, help=backend_help)

    info = sub.add_parser("info", help="architecture, parameter count and memory of a model")
    info.add_argument("model", metavar="MODEL.npz")
    info.add_argument("--batch-size", type=_positive_int, default=32,
                      help="batch size of the memory plan (default 32)")
    info.add_argument("--precision", choices=PRECISIONS,
                      default="float32", help="plan for mixed precision (default float32)")

    bench.add_arguments(sub.add_parser(
        "bench", help="time kernels and training steps on the available backends"))

    doctor_parser = sub.add_parser(
        "doctor", help="which backends and devices work here, and why the others do not")
    doctor_parser.add_argument(
        "--require", default="", metavar="NAME,...",
        help="backends that must work, e.g. cupy,torch:cuda (or cupy:1, torch:cuda:0); the exit "
             "status is 1 when one does not")
    doctor_parser.add_argument("--json", action="store_true",
                               help="print the findings as JSON instead of a table")
    return parser


# ----------------------------------------------------------------------------------------------
# Reading tables (CSV without pandas; NPZ through nnxp.backend)
# ----------------------------------------------------------------------------------------------


class Table:
    """Named columns read from a file: each a list of strings (CSV) or a host array (NPZ)."""

    def __init__(self, path: str, columns: dict[str, Any], n_rows: int, *,
                 line_of_row: Any = None) -> None:
        self.path = path
        self.columns = columns
        self.n_rows = n_rows
        self._line_of_row = line_of_row

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def where(self, row: int) -> str:
        if self._line_of_row is not None:
            return f"line {self._line_of_row[row]}"
        return f"row {row}"

    def column(self, name: str) -> Any:
        if name not in self.columns:
            shown = ", ".join(repr(c) for c in self.names[:20])
            more = ", ..." if len(self.names) > 20 else ""
            raise UsageError(f"{self.path} has no column {name!r}; its columns are {shown}{more}")
        return self.columns[name]

    def floats(self, names: Sequence[str], *, what: str = "feature") -> Any:
        """The named columns as a finite float64 host matrix ``(n_rows, len(names))``."""
        rows: list[list[float]] = [[0.0] * len(names) for _ in range(self.n_rows)]
        for j, name in enumerate(names):
            values = self.column(name)
            if backend.is_array(values):
                values = values.tolist()
            for i, raw in enumerate(values):
                rows[i][j] = self._number(raw, name, i, what)
        return backend.host_array(rows, "float64").reshape(self.n_rows, len(names))

    def _number(self, raw: Any, name: str, i: int, what: str) -> float:
        if isinstance(raw, str):
            text = raw.strip()
            if not text:
                raise UsageError(f"{self.path}: {what} column {name!r} has an empty value at "
                                 f"{self.where(i)}; fill in or drop missing values first")
            try:
                value = float(text)
            except ValueError:
                raise UsageError(f"{self.path}: {what} column {name!r} has the non-numeric "
                                 f"value {text!r} at {self.where(i)}") from None
        elif isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise UsageError(f"{self.path}: {what} column {name!r} has the non-numeric value "
                             f"{raw!r} at {self.where(i)}")
        else:
            value = float(raw)
        if not math.isfinite(value):
            raise UsageError(f"{self.path}: {what} column {name!r} has the value {value} at "
                             f"{self.where(i)}; NaN and infinite values are not accepted")
        return value

    def labels(self, name: str) -> list[str]:
        """The column as label strings (integral floats written without ``.0``)."""
        values = self.column(name)
        if backend.is_array(values):
            values = values.tolist()
        out = []
        for i, raw in enumerate(values):
            if isinstance(raw, float):
                if not math.isfinite(raw):
                    raise UsageError(f"{self.path}: target column {name!r} has the value {raw} "
                                     f"at {self.where(i)}")
                raw = int(raw) if raw.is_integer() else raw
            text = str(raw).strip()
            if not text:
                raise UsageError(f"{self.path}: target column {name!r} has an empty value at "
                                 f"{self.where(i)}")
            out.append(text)
        return out


def read_table(path: str) -> Table:
    """A CSV (header row, comma- or semicolon-separated; ``.tsv`` tab) or NPZ file as columns."""
    if not os.path.isfile(path):
        raise UsageError(f"no such data file: {path}")
    if path.lower().endswith(".npz"):
        return _read_npz(path)
    return _read_csv(path)


def _read_csv(path: str) -> Table:
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            sample = file.read(65536)
            file.seek(0)
            delimiter = "\t" if path.lower().endswith(".tsv") else (
                ";" if sample.count(";") > sample.count(",") else ",")
            reader = csv.reader(file, delimiter=delimiter)
            header: list[str] | None = None
            rows: list[list[str]] = []
            lines: list[int] = []
            for record in reader:
                if not record or all(not field.strip() for field in record):
                    continue
                if header is None:
                    header = [h.strip() for h in record]
                    continue
                if len(record) != len(header):
                    raise UsageError(f"{path}: line {reader.line_num} has {len(record)} fields "
                                     f"but the header has {len(header)}")
                rows.append(record)
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not a UTF-8 text (CSV) file: {exc}") from None
    except csv.Error as exc:
        raise UsageError(f"{path} is not a readable CSV file: {exc}") from None
    if header is None:
        raise UsageError(f"{path} is empty: expected a header row and data rows")
    if not rows:
        raise UsageError(f"{path} has a header but no data rows")
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates or "" in header:
        raise UsageError(f"{path}: the header has duplicate or empty column names "
                         f"{duplicates or ['']}")
    columns = {name: [row[j] for row in rows] for j, name in enumerate(header)}
    return Table(path, columns, len(rows), line_of_row=lines)


def _read_npz(path: str) -> Table:
    try:
        arrays = backend.load_npz(path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    columns: dict[str, Any] = {}
    n_rows = None
    X = arrays.pop("X", None)
    names = arrays.pop("feature_names", None)
    if X is not None:
        if X.ndim != 2:
            raise UsageError(f"{path}: the array 'X' must be 2-D (samples, features), got shape "
                             f"{tuple(X.shape)}")
        labels = [str(n) for n in names.tolist()] if names is not None else [
            f"x{j}" for j in range(X.shape[1])]
        if len(labels) != X.shape[1]:
            raise UsageError(f"{path}: 'feature_names' has {len(labels)} entries but 'X' has "
                             f"{X.shape[1]} columns")
        columns.update({label: X[:, j] for j, label in enumerate(labels)})
        n_rows = X.shape[0]
    for name, value in arrays.items():
        if value.ndim == 2 and value.shape[1] == 1:
            value = value.reshape(-1)
        if value.ndim != 1:
            raise UsageError(f"{path}: the array {name!r} has shape {tuple(value.shape)}; "
                             "expected an 'X' matrix and 1-D columns")
        columns[name] = value
        n_rows = value.shape[0] if n_rows is None else n_rows
        if value.shape[0] != n_rows:
            raise UsageError(f"{path}: the array {name!r} has {value.shape[0]} rows, the others "
                             f"{n_rows}")
    if not columns or not n_rows:
        raise UsageError(f"{path} holds no data columns")
    return Table(path, columns, int(n_rows))


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------


def load_digits() -> tuple[Any, Any]:
    """scikit-learn's 8×8 handwritten digits (1,797 images, shipped inside scikit-learn)."""
    try:
        from sklearn.datasets import load_digits as _load  # noqa: PLC0415
    except ImportError:
        raise UsageError("the digits demo needs scikit-learn: pip install 'nnxp[demo]'") from None
    data = _load()
    return data.data, data.target


def _split_validation(n: int, val_size: float, seed: int) -> tuple[Any, Any]:
    """Training and validation indices (host) when the test set comes separately."""
    order = Generator(seed).host_permutation(n)
    if val_size <= 0:
        return order, None
    if not 0.0 < val_size < 1.0:
        raise UsageError(f"--val-size must lie in [0, 1), got {val_size}")
    n_val = max(1, round(n * val_size))
    if n - n_val < 1:
        raise UsageError(f"{n} training samples are too few for a validation fraction of "
                         f"{val_size}")
    return order[n_val:], order[:n_val]


def _prepare_idx_folder(args: argparse.Namespace) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``--data DIR``: the IDX files of an MNIST-style folder (:func:`nnxp.datasets.
    load_idx_folder`): training features and labels, the test pair or None, the metadata."""
    for option in ("target", "task", "features"):
        if getattr(args, option):
            raise UsageError(f"--{option} does not apply to a folder of IDX files (--data "
                             f"{args.data}): the labels files hold the classes")
    try:
        found = datasets.load_idx_folder(args.data)
    except datasets.IDXError as exc:
        raise UsageError(str(exc)) from None
    test = None if found.X_test is None else (found.X_test, found.y_test)
    xp = backend.host_namespace()
    n_classes = int(backend.host_scalar(xp.max(found.y_train))) + 1
    if test is not None and found.y_test.shape[0]:
        n_classes = max(n_classes, int(backend.host_scalar(xp.max(found.y_test))) + 1)
    n_features = found.X_train.shape[1]
    if not args.quiet:
        print(f"data: {', '.join(os.path.basename(p) for p in found.files.values())} "
              f"({found.X_train.shape[0]} training"
              + (f", {found.X_test.shape[0]} test" if test is not None else
                 ", no test files: --test-size holds out part of the training set")
              + f" samples of {n_features} values, {n_classes} classes)", file=sys.stderr)
    meta = {"task": "classify", "target": "label", "data": f"IDX folder {args.data}",
            "feature_names": [f"pixel_{i}" for i in range(n_features)],
            "classes": [str(k) for k in range(max(n_classes, 2))]}
    return found.X_train, found.y_train, test, meta


def split(n: int, test_size: float, seed: int, val_size: float = 0.0) -> tuple[Any, ...]:
    """Shuffled train/test (and validation) index arrays (host), reproducible from ``seed``.

    Returns ``(train, test)``, or ``(train, val, test)`` when ``val_size > 0``.
    """
    if not 0.0 < test_size < 1.0:
        raise UsageError(f"--test-size must lie in (0, 1), got {test_size}")
    if not 0.0 <= val_size < 1.0 or test_size + val_size >= 1.0:
        raise UsageError(f"--val-size must lie in [0, 1) with --test-size + --val-size < 1, got "
                         f"{val_size} and {test_size}")
    order = Generator(seed).host_permutation(n)
    n_test = max(1, round(n * test_size))
    n_val = max(1, round(n * val_size)) if val_size > 0 else 0
    if n - n_test - n_val < 1:
        raise UsageError(f"{n} samples are too few for a test fraction of {test_size} and a "
                         f"validation fraction of {val_size}")
    if not n_val:
        return order[n_test:], order[:n_test]
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def _check_save_target(path: str | None, overwrite: bool) -> None:
    if path is None:
        return
    if os.path.isdir(path):
        raise UsageError(f"--save {path} is a directory; give a file name such as model.npz")
    if os.path.exists(path) and not overwrite:
        raise UsageError(f"{path} already exists; pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot save to {path}: the directory {parent} does not exist")


def _prepare_own_data(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """Features (float64 host matrix), targets (host) and the model metadata from --data."""
    if args.target is None:
        raise UsageError("--data needs --target COLUMN (and optionally --task classify|regress)")
    table = read_table(args.data)
    table.column(args.target)
    if args.task is None:
        args.task, why = infer_task(table.labels(args.target))
        if not args.quiet:
            print(f"task: {args.task} (inferred: the target column {args.target!r} {why}; "
                  "--task overrides)", file=sys.stderr)
    if args.features:
        features = [f.strip() for f in args.features.split(",") if f.strip()]
        for name in features:
            table.column(name)
        if args.target in features:
            raise UsageError(f"--features includes the target column {args.target!r}")
    else:
        features = [c for c in table.names if c != args.target]
    if not features:
        raise UsageError(f"{args.data} has no feature columns besides the target {args.target!r}")
    X = table.floats(features)
    meta: dict[str, Any] = {"task": args.task, "target": args.target,
                            "feature_names": features, "data": os.path.basename(args.data)}
    if args.task == "classify":
        labels = table.labels(args.target)
        classes = _sorted_classes(set(labels))
        if len(classes) < 2:
            raise UsageError(f"the target column {args.target!r} holds a single class "
                             f"{classes[0]!r}; classification needs at least two")
        index = {c: k for k, c in enumerate(classes)}
        y = backend.host_array([index[v] for v in labels], "int64")
        meta["classes"] = classes
    else:
        y = table.floats([args.target], what="target").reshape(-1)
    return X, y, meta


MAX_INTEGER_CLASSES = 50


def infer_task(labels: Sequence[str]) -> tuple[str, str]:
    """``("classify" | "regress", why)`` for a target column given as label strings.

    Text labels classify; integer values classify when there are at most
    ``MAX_INTEGER_CLASSES`` distinct ones (class codes, digits, ratings) and regress when
    there are more (counts, prices, years: a quantity); any other number regresses.
    """
    distinct = set(labels)
    numbers: list[float] = []
    for text in distinct:
        try:
            numbers.append(float(text))
        except ValueError:
            return "classify", f"holds text labels ({len(distinct)} distinct, e.g. {text!r})"
    if all(math.isfinite(v) and v.is_integer() for v in numbers):
        if len(distinct) <= MAX_INTEGER_CLASSES:
            return "classify", f"holds {len(distinct)} distinct integer values"
        return "regress", (f"holds {len(distinct)} distinct integer values, more than "
                           f"{MAX_INTEGER_CLASSES}: read as a quantity")
    return "regress", "holds non-integer numbers"


def _sorted_classes(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def _build_model(n_features: int, n_outputs: int, args: argparse.Namespace,
                 standardize: Any) -> Sequential:
    widths = [n_features, *args.hidden, n_outputs]
    layers: list[Any] = [standardize]
    for i in range(len(widths) - 1):
        layers.append(Dense(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            act = get_activation(args.activation)
            if act is None:
                raise UsageError(f"--activation {args.activation!r} gives no layer")
            layers.append(act)
    return Sequential(layers, seed=args.seed)


def _check_plot_target(path: str | None) -> None:
    """Fail before training, not after it, when the --plot file cannot be written."""
    if path is None:
        return
    if os.path.isdir(path):
        raise UsageError(f"--plot {path} is a directory; give a file name such as curves.png")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write --plot {path}: the directory {parent} does not exist")


def _check_output_target(path: str | None, *inputs: str) -> None:
    """--output must not be (or replace) one of the command's own input files."""
    if path is None:
        return
    if os.path.isdir(path):
        raise UsageError(f"--output {path} is a directory; give a file name such as out.csv")
    for source in inputs:
        if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise UsageError(f"--output {path} is the input file {source}; writing the "
                             "predictions there would destroy it, so choose another name")


def _check_training_options(args: argparse.Namespace) -> None:
    """Combinations of --precision, --loss-scale and --backend that cannot work: refused
    before any data is read (argparse has checked each option's own value)."""
    if args.loss_scale and args.precision == "float32":
        raise UsageError("--loss-scale needs --precision float16 or bfloat16 (float32 needs no "
                         "loss scaling)")
    offered = available_precisions(backend.get_backend().xp)
    if args.precision not in offered:
        raise UsageError(f"--precision {args.precision}: the {backend.get_backend().name} "
                         f"backend has no {args.precision} dtype; it offers "
                         f"{', '.join(offered)} (bfloat16 needs --backend torch)")


def _plan_refused(exc: MemoryPlanError, args: argparse.Namespace) -> UsageError:
    """fit's refusal as the command line's one line, naming the options that decide it."""
    text = str(exc).removeprefix("memory_budget: ")
    text = text.replace("step with batch_size=", "step with --batch-size ")
    where = (f"--memory-budget {args.memory_budget:,} bytes" if args.memory_budget is not None
             else "memory plan")
    return UsageError(f"{where}: {text}")


_FIT_TO_CLI = ((re.compile(r"\bcapture=True\b"), "--capture"),
               (re.compile(r"\baccumulate=(\d+)"), r"--accumulate \1"),
               (re.compile(r"\bprecision='(\w+)'"), r"--precision \1"),
               (re.compile(r"\bloss_scale=True\b"), "--loss-scale"),
               (re.compile(r"\bdistributed=\.\.\."), "--distributed"))


def _option_names(message: str) -> str:
    """A message of ``fit`` about its keyword arguments, in the command line's option names
    (``capture=True together with accumulate=2`` → ``--capture together with --accumulate 2``)."""
    for pattern, flag in _FIT_TO_CLI:
        message = pattern.sub(flag, message)
    return message


def train(args: argparse.Namespace) -> int:
    _check_save_target(args.save, args.overwrite)
    _check_plot_target(args.plot)
    _check_training_options(args)
    if args.tf32 is None:
        return _train(args)
    with backend.tf32(args.tf32):  # the process-wide flag, put back afterwards
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    if args.optimizer not in OPTIMIZERS or args.optimizer == "lbfgs":
        raise UsageError(f"--optimizer {args.optimizer!r} is not supported; valid names are "
                         f"{', '.join(n for n in OPTIMIZERS if n != 'lbfgs')}")
    info = backend.get_backend()
    test: tuple[Any, Any] | None = None
    if args.data is None:
        if args.target or args.task or args.features:
            raise UsageError("--target, --task and --features need --data FILE")
        X, y = load_digits()
        task = "classify"
        meta: dict[str, Any] = {"task": task, "target": "digit", "data": "sklearn digits",
                                "feature_names": [f"pixel_{i}" for i in range(X.shape[1])],
                                "classes": [str(k) for k in range(int(y.max()) + 1)]}
    elif os.path.isdir(args.data):  # a folder of IDX files (MNIST's layout)
        X, y, test, meta = _prepare_idx_folder(args)
        task = "classify"
    else:
        X, y, meta = _prepare_own_data(args)
        task = meta["task"]
    val_size = args.val_size if args.val_size or not args.plot else 0.1
    if test is None:
        parts = split(X.shape[0], args.test_size, args.seed, val_size)
        tr, te = parts[0], parts[-1]
        va = parts[1] if len(parts) == 3 else None
        X_te, y_te = X[te], y[te]
    else:  # the folder's own test set; a validation part (if asked for) comes from training
        X_te, y_te = test
        tr, va = _split_validation(X.shape[0], val_size, args.seed)
    n_out = len(meta["classes"]) if task == "classify" else 1
    standardize = Standardize(X.shape[1])
    if args.data is None:  # pixel intensities 0..16 → [0, 1]
        standardize.buffers["scale"] = standardize.xp.full(
            (X.shape[1],), 16.0, dtype=standardize.dtype, device=standardize.device)
    elif not args.no_standardize and test is None:
        standardize.fit(X[tr])
    meta["standardized"] = args.data is not None and not args.no_standardize and test is None
    model = _build_model(X.shape[1], n_out, args, standardize)
    model.metadata = meta
    widths = [X.shape[1], *args.hidden, n_out]
    root = not args.distributed or distributed.rank() == 0  # rank 0 alone prints and saves
    log = (lambda *a: None) if args.quiet or not root else (
        lambda *a: print(*a, file=sys.stderr))
    n_val = 0 if va is None else len(va)
    log(f"nnxp: backend={info.name} device={info.device} MLP {'-'.join(map(str, widths))} "
        f"({model.count_params():,} parameters), {len(tr)} train / "
        + (f"{n_val} validation / " if n_val else "") + f"{X_te.shape[0]} test samples")
    options = ([f"precision={args.precision}"] if args.precision != "float32" else []) + (
        [f"{args.accumulate} batches per step"] if args.accumulate > 1 else []) + (
        ["captured step"] if args.capture else [])
    if options:
        log(f"nnxp: {', '.join(options)}")
    if args.tf32 is not None:
        log(f"nnxp: {backend.tf32_status()['note']}")
    loss = "softmax_cross_entropy" if task == "classify" else "mse"
    metrics = None if task == "classify" else ["mae", "r2"]
    start = time.perf_counter()
    try:
        history = model.fit(X[tr], y[tr], loss=loss, metrics=metrics,
                            optimizer=get_optimizer(args.optimizer, lr=args.lr),
                            epochs=args.epochs, batch_size=args.batch_size,
                            verbose=0 if args.quiet else 1,
                            validation_data=None if va is None else (X[va], y[va]),
                            distributed=args.distributed, precision=args.precision,
                            loss_scale=args.loss_scale, accumulate=args.accumulate,
                            memory_budget=args.memory_budget, capture=args.capture)
    except MemoryPlanError as exc:
        raise _plan_refused(exc, args) from None
    except ValueError as exc:  # fit's checks of its options, before any step
        raise UsageError(_option_names(str(exc))) from None
    if not root:
        return 0
    seconds = time.perf_counter() - start
    result = model.evaluate(X_te, y_te)
    where = f"({args.epochs} epochs in {seconds:.1f} s on {info.name})"
    if task == "classify":
        print(f"test accuracy: {result['accuracy']:.4f}  test loss: {result['loss']:.4f}  "
              f"{where}")
    else:
        print(f"test mse: {result['loss']:.6g}  test mae: {result['mae']:.6g}  "
              f"test r2: {result['r2']:.4f}  {where}")
    if args.save:  # before the plot: a failing plot must not lose the trained model
        try:
            model.save(args.save, overwrite=args.overwrite)
        except FileExistsError:
            raise UsageError(f"{args.save} already exists; pass --overwrite to replace it") \
                from None
        log(f"nnxp: model written to {args.save}")
    if args.plot:
        try:
            history.plot(args.plot, title=f"nnxp: {meta['data']}")
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'nnxp[plot]'") from None
        log(f"nnxp: learning curves written to {args.plot}")
    return 0


# ----------------------------------------------------------------------------------------------
# predict, evaluate, info
# ----------------------------------------------------------------------------------------------


def _read_model(path: str) -> tuple[dict[str, Any], Sequential]:
    """The record and the model of the file ``path``, or a one-line error (exit status 2).

    ``nnxp.load`` refuses a corrupt or hostile file with a FormatError; anything else a file
    could still provoke while the model is built (a layer's own checks, memory) is reported as
    the same kind of one line, never as a traceback. The metadata the command line relies on
    is checked here (its types, and one class name per output).
    """
    if not os.path.isfile(path):
        raise UsageError(f"no such model file: {path}")
    try:
        record, arrays = nio.read(path)
        model: Sequential = nio.from_record(record, arrays)
    except nio.FormatError:
        raise
    except (ArithmeticError, AttributeError, LookupError, MemoryError, RecursionError,
            TypeError, ValueError) as exc:
        raise nio.FormatError(f"{path}: not a usable nnxp model file ({type(exc).__name__}: "
                              f"{exc})") from None
    _check_cli_metadata(model, path)
    return record, model


def _check_cli_metadata(model: Sequential, path: str) -> None:
    meta = model.metadata
    if not isinstance(meta, dict):
        raise nio.FormatError(f"{path}: the record's metadata must be an object")
    for key in ("task", "target"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise nio.FormatError(f"{path}: the record's metadata.{key} must be a string, got "
                                  f"{meta[key]!r}")
    for key in ("feature_names", "classes"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, list) and all(
                isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value)):
            raise nio.FormatError(f"{path}: the record's metadata.{key} must be a list of "
                                  "names")
    names, n_in = meta.get("feature_names"), model.n_features
    if names and n_in is not None and len(names) != n_in:
        raise nio.FormatError(f"{path}: the record's metadata.feature_names has {len(names)} "
                              f"names but the model takes {n_in} features")
    classes, n_out = meta.get("classes"), model.n_outputs
    if classes and model.loss.is_classifier and n_out is not None \
            and len(classes) != max(n_out, 2 if n_out == 1 else n_out):
        raise nio.FormatError(f"{path}: the record's metadata.classes has {len(classes)} "
                              f"names but the model has {n_out} outputs")


def _load_model(path: str) -> Sequential:
    return _read_model(path)[1]


def _features_for(model: Sequential, table: Table, *, target: str | None) -> Any:
    meta = getattr(model, "metadata", None) or {}
    expected = model.n_features
    names = meta.get("feature_names")
    if names and all(n in table.columns for n in names):
        chosen = list(names)
    else:
        skip = {target, meta.get("target")}
        chosen = [c for c in table.names if c not in skip]
        if names:
            missing = [n for n in names if n not in table.columns]
            if expected is not None and len(chosen) != expected:
                raise UsageError(f"{table.path} lacks the model's feature column(s) "
                                 f"{', '.join(repr(m) for m in missing[:5])} and has "
                                 f"{len(chosen)} other columns, but the model expects {expected}")
    if expected is not None and len(chosen) != expected:
        raise UsageError(f"{table.path} has {len(chosen)} feature columns but the model "
                         f"expects {expected}")
    return table.floats(chosen)


def predict(args: argparse.Namespace) -> int:
    _check_output_target(args.output, args.model, args.data)
    model = _load_model(args.model)
    table = read_table(args.data)
    X = _features_for(model, table, target=None)
    meta = getattr(model, "metadata", None) or {}
    classes = meta.get("classes")
    if model.loss.is_classifier:
        with backend.quiet_float_errors():  # an overflow is reported below, as one line
            proba = backend.to_numpy(model.predict_proba(X))
        _refuse_non_finite(proba, args.model, table)
        codes = proba.argmax(axis=1).tolist()
        names = classes or [str(k) for k in range(proba.shape[1])]
        header = ["prediction"] + ([f"proba_{c}" for c in names] if args.proba else [])
        rows = [[names[k]] + ([f"{p:.6g}" for p in row] if args.proba else [])
                for k, row in zip(codes, proba.tolist())]
    else:
        with backend.quiet_float_errors():
            out = backend.to_numpy(model.predict(X))
        _refuse_non_finite(out, args.model, table)
        target = meta.get("target", "prediction")
        header = [target] if out.shape[1] == 1 else [f"{target}_{j}" for j in range(out.shape[1])]
        rows = [[f"{v:.9g}" for v in row] for row in out.tolist()]
    if args.output:
        _write_csv_atomically(args.output, header, rows)
    else:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return 0


def _refuse_non_finite(out: Any, model_path: str, table: Table) -> None:
    """Never write NaN or infinity as a prediction (or label it as a class): exit 2."""
    bad = backend.nonfinite_rows(out)
    if bad:
        raise UsageError(f"{model_path} gives NaN or infinite outputs for {len(bad)} of "
                         f"{table.n_rows} rows (first: data row {bad[0] + 1}); its weights "
                         "overflow on this input (a diverged or corrupt model)")


def _write_csv_atomically(path: str, header: list[str], rows: list[list[str]]) -> None:
    import io as _stdio  # noqa: PLC0415 - the standard library's io (this package has its own)

    def write(file: Any) -> None:
        text = _stdio.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        file.write(text.getvalue().encode("utf-8"))

    try:
        nio.atomic_write(path, write)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None


def evaluate(args: argparse.Namespace) -> int:
    model = _load_model(args.model)
    meta = getattr(model, "metadata", None) or {}
    target = args.target or meta.get("target")
    if target is None:
        raise UsageError("the model does not record its target column; pass --target COLUMN")
    table = read_table(args.data)
    table.column(target)
    X = _features_for(model, table, target=target)
    if model.loss.is_classifier:
        labels = table.labels(target)
        classes = meta.get("classes") or [str(k) for k in range(model.n_outputs or 0)]
        index = {c: k for k, c in enumerate(classes)}
        unknown = sorted({v for v in labels if v not in index})
        if unknown:
            raise UsageError(f"{table.path}: the target column {target!r} holds label(s) "
                             f"{', '.join(repr(u) for u in unknown[:5])} that the model does not "
                             f"know; its classes are {', '.join(classes)}")
        y = backend.host_array([index[v] for v in labels], "int64")
        result = model.evaluate(X, y, metrics=["accuracy"])
    else:
        y = table.floats([target], what="target").reshape(-1)
        result = model.evaluate(X, y, metrics=["mse", "mae", "r2"])
    print("  ".join(f"{k}: {v:.6g}" for k, v in result.items()) + f"  (n={table.n_rows})")
    return 0


def info(args: argparse.Namespace) -> int:
    record, model = _read_model(args.model)
    meta = getattr(model, "metadata", None) or {}
    origin = record.get("saved_from", {})
    print(f"{args.model}: nnxp model file, format version {record['format_version']} "
          f"(written by nnxp {record.get('nnxp_version', '?')} from "
          f"{origin.get('backend', '?')} on {origin.get('device', '?')})")
    print(f"loss: {record['loss']['name']}  dtype: {record['dtype']}  "
          f"epochs trained: {record.get('epochs_trained', 0)}  optimizer: "
          f"{(record.get('optimizer') or {}).get('class', 'none saved')}")
    if meta:
        features = meta.get("feature_names") or []
        shown = ", ".join(features[:8]) + (", ..." if len(features) > 8 else "")
        print(f"task: {meta.get('task', '?')}  target: {meta.get('target', '?')}  "
              f"features ({len(features)}): {shown}")
        if meta.get("classes"):
            print(f"classes ({len(meta['classes'])}): {', '.join(map(str, meta['classes']))}")
    print(nio.summary(model, args.batch_size, precision=args.precision))
    return 0


# ----------------------------------------------------------------------------------------------
# doctor
# ----------------------------------------------------------------------------------------------


def _tf32_report() -> dict[str, Any]:
    status = backend.tf32_status()
    return {"requested": status["requested"], "configured": status["configured"]}


def doctor(args: argparse.Namespace) -> int:
    """Print what works here (backend.diagnose); 1 when a --require'd backend does not work."""
    required = [name.strip() for name in args.require.split(",") if name.strip()]
    found = backend.diagnose()
    try:
        unmet = backend.unmet_requirements(required, found.probes)
    except ValueError as exc:
        raise UsageError(f"--require: {exc}") from None
    if args.json:
        import json  # noqa: PLC0415 - only this subcommand writes JSON

        print(json.dumps({
            "nvidia_driver": found.driver,
            "backends": [{"spec": p.spec, "device": p.device, "status": p.status,
                          "detail": p.detail, "versions": dict(p.versions)}
                         for p in found.probes],
            "required": required, "unmet": dict(unmet), "tf32": _tf32_report(),
            "memory_budget": backend.get_memory_budget()}, indent=2))
        return 1 if unmet else 0
    print(f"nnxp {__version__}, Python {sys.version.split()[0]} on {sys.platform}")
    print(f"NVIDIA driver: {found.driver}")
    rows = [(p.spec, p.device or "-", p.status,
             ", ".join(f"{name} {version}" for name, version in p.versions) or "-")
            for p in found.probes]
    header = ("backend", "device", "status", "versions")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row, probe in zip([header, *rows], [None, *found.probes]):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
        if probe is not None and probe.detail:
            print(f"    {probe.detail}")
    tf32 = _tf32_report()
    print(f"TF32 matmul: {'requested' if tf32['requested'] else 'off'} "
          f"(nnxp.set_tf32 / NNXP_TF32; applies to cupy and torch CUDA only)")
    budget = backend.get_memory_budget()
    print("memory budget: " + ("none (GPU backends check their free memory)" if budget is None
                               else f"{budget:,} bytes (nnxp.set_memory_budget / "
                                    "NNXP_MEMORY_BUDGET)"))
    if required:
        for name in required:
            why = dict(unmet).get(name)
            print(f"required {name}: " + ("works" if why is None else f"does not work: {why}"))
    return 1 if unmet else 0


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nnxp`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    commands = {"train": train, "predict": predict, "evaluate": evaluate, "info": info,
                "bench": bench.run_args, "doctor": doctor}
    try:
        spec = getattr(args, "backend", None)  # the whole command runs on --backend
        with backend.use_backend(spec) if spec else contextlib.nullcontext():
            return commands[args.command](args)
    except BrokenPipeError:  # e.g. `nnxp predict ... | head`: the reader went away
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (UsageError, BackendError, ValueError, TypeError, KeyError, OSError,
            TrainingDivergedError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, KeyError):
            message = f"missing entry {message}"
        print(f"nnxp {args.command}: error: {message}", file=sys.stderr)
        return 2
