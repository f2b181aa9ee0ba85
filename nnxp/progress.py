"""Progress reporting for ``fit``: a tqdm bar per epoch when tqdm is installed, else plain lines."""

from __future__ import annotations

import sys
from typing import Any


class EpochProgress:
    """One progress bar per epoch over its batches; a summary line with loss and metrics."""

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
        text = " ".join(f"{k}={v:.4f}" for k, v in logs.items())
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
