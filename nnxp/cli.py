"""The ``nnxp`` command line: ``nnxp train`` trains an MLP on the bundled handwritten digits."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import backend
from .backend import BACKENDS, BackendError
from .layers import Dense, ReLU
from .model import Sequential, TrainingDivergedError
from .optim import SGD
from .random import Generator


class UsageError(Exception):
    """A problem with the user's command or data: one line on stderr, exit status 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnxp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train an MLP (default data: scikit-learn's digits)")
    train.add_argument("--backend", default=None,
                       help=f"one of {', '.join(BACKENDS)}, optionally name:device "
                            "(default: $NNXP_BACKEND or numpy)")
    train.add_argument("--hidden", type=_positive_int, nargs="*", default=[128, 64],
                       metavar="N", help="hidden layer widths (default: 128 64)")
    train.add_argument("--epochs", type=_positive_int, default=30)
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--lr", type=_positive_float, default=0.05, help="SGD learning rate")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--test-size", type=float, default=0.2,
                       help="held-out fraction (default 0.2)")
    train.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    return parser


def load_digits() -> tuple[Any, Any]:
    """scikit-learn's 8×8 handwritten digits (1,797 images, shipped inside scikit-learn)."""
    try:
        from sklearn.datasets import load_digits as _load  # noqa: PLC0415
    except ImportError:
        raise UsageError("the digits demo needs scikit-learn: pip install 'nnxp[demo]'") from None
    data = _load()
    return data.data, data.target


def split(n: int, test_size: float, seed: int) -> tuple[Any, Any]:
    """Shuffled train/test index arrays (host), reproducible from ``seed``."""
    if not 0.0 < test_size < 1.0:
        raise UsageError(f"--test-size must lie in (0, 1), got {test_size}")
    order = Generator(seed).host_permutation(n)
    n_test = max(1, round(n * test_size))
    return order[n_test:], order[:n_test]


def train(args: argparse.Namespace) -> int:
    if args.backend:
        backend.set_backend(args.backend)
    info = backend.get_backend()
    X, y = load_digits()
    X = X / 16.0  # pixel intensities 0..16 → [0, 1]
    tr, te = split(X.shape[0], args.test_size, args.seed)
    widths = [X.shape[1], *args.hidden, int(y.max()) + 1]
    layers: list[Any] = []
    for i in range(len(widths) - 1):
        layers.append(Dense(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(ReLU())
    model = Sequential(layers, seed=args.seed)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    log(f"nnxp: backend={info.name} device={info.device} MLP {'-'.join(map(str, widths))} "
        f"({model.count_params():,} parameters), {len(tr)} train / {len(te)} test samples")
    start = time.perf_counter()
    model.fit(X[tr], y[tr], optimizer=SGD(lr=args.lr), epochs=args.epochs,
              batch_size=args.batch_size, verbose=0 if args.quiet else 1)
    seconds = time.perf_counter() - start
    result = model.evaluate(X[te], y[te])
    print(f"test accuracy: {result['accuracy']:.4f}  test loss: {result['loss']:.4f}  "
          f"({args.epochs} epochs in {seconds:.1f} s on {info.name})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nnxp`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return train(args)
    except (UsageError, BackendError, ValueError, TypeError, TrainingDivergedError) as exc:
        print(f"nnxp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0  # pragma: no cover - argparse rejects unknown commands
