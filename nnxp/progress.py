"""Progress reporting for ``fit``: a tqdm bar per epoch when tqdm is installed, else plain lines."""

from __future__ import annotations

import sys
from typing import Any


class EpochProgress:
    """One progress bar per epoch over its batches; a summary line with the loss and metrics,
    validation ones included (``verbose=0``: nothing)."""

    def __init__(self, *, epochs: int, n_batches: int, verbose: int) -> None:
        self.epochs = epochs
        self.n_batches = n_batches
        self.verbose = verbose
        self._bar: Any = None
        try:
            import tqdm  # noqa: PLC0415 - optional dependency (the demo extra)

            self._tqdm: Any = tqdm.tqdm
        except ImportError:  # pragma: no cover - exercised only without the extra
            self._tqdm = None

    def start_epoch(self, epoch: int) -> None:
        if self.verbose and self._tqdm is not None:
            self._bar = self._tqdm(total=self.n_batches, desc=f"epoch {epoch}/{self.epochs}",
                                   unit="batch", leave=True, file=sys.stderr,
                                   dynamic_ncols=True)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def end_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        if not self.verbose:
            return
        text = format_logs(logs)
        if self._bar is not None:
            self._bar.set_postfix_str(text)
            self._bar.close()
            self._bar = None
        else:
            print(f"epoch {epoch}/{self.epochs} {text}", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


HIDDEN_KEYS = ("lr", "epoch_time")
"""Log entries left out of the progress line (tqdm shows the time; the rate rarely changes)."""


def format_logs(logs: dict[str, float]) -> str:
    """``"loss=0.3120 accuracy=0.9100 val_loss=0.3500 val_accuracy=0.8900"``: the training
    entries first, then the validation ones."""
    shown = [(k, v) for k, v in logs.items()
             if k not in HIDDEN_KEYS and isinstance(v, (int, float))]
    ordered = [kv for kv in shown if not kv[0].startswith("val_")]
    ordered += [kv for kv in shown if kv[0].startswith("val_")]
    return " ".join(f"{k}={v:.4f}" for k, v in ordered)
