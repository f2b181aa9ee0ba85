"""Per-step numbers of an update rule, read on the device: what lets a recorded step
(``fit(capture=True)``) use Adam.

Adam's update multiplies by numbers that depend on the step count ``t`` (its bias corrections
``1 − β₁ᵗ`` and ``1 − β₂ᵗ``: :func:`nnxp.kernels.optimizers.adam_scalars`). The eager step
computes them on the host from ``state.step``, a Python int; a recorded step replays the device
work alone, so it would freeze them at the step it was recorded on. A :class:`StepTable` holds
them for the next :data:`LENGTH` steps, computed on the host exactly as the eager step computes
them (float64, then rounded to the parameters' dtype, as a Python float is when it meets an
array), in one device array, and a device counter that each step reads its row with and then
advances: the update reads the same numbers, bit for bit, and the recording stays valid for
every step. When the rows run out, or the options or the step count change, the table is
refilled *in place* between steps (a recorded graph keeps reading the same arrays).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import backend
from ..typing import Array

LENGTH = 1024
"""Steps per table: refilled in place (one host-to-device copy) every LENGTH steps."""


class StepTable:
    """``rows[j]``: the numbers of step ``start + 1 + j`` on the device
    (``rows_of(record, LENGTH, options)``, from a state record at step ``start``:
    :meth:`nnxp.optim.Optimizer.step_scalar_rows`), and the counter ``k`` of the row the next
    step reads (``host_k`` is the same count kept on the host, never read from the device)."""

    def __init__(self, rows_of: Callable[..., list[tuple[float, ...]]], xp: Any, dtype: Any,
                 device: Any) -> None:
        self.rows_of, self.xp, self.dtype, self.device = rows_of, xp, dtype, device
        self.rows: Array | None = None
        self.k = xp.zeros((1,), dtype=xp.int64, device=device)
        self.start = 0
        self.host_k = 0
        self.options: tuple[tuple[str, Any], ...] = ()

    def current(self, step: int, options: dict[str, Any]) -> bool:
        """Whether the next step (the one after ``step`` steps) reads a valid row for these
        ``options``."""
        return (self.rows is not None and self.start + self.host_k == step
                and self.host_k < LENGTH and self.options == tuple(sorted(options.items())))

    def fill(self, record: Any, options: dict[str, Any]) -> None:
        """The rows of the steps after ``record``'s for ``options``, written into the same
        arrays (made on the first fill), and the counter back at row 0."""
        step = record.step
        rows = self.rows_of(record, LENGTH, options)
        host = backend.host_array(rows, dtype=backend.dtype_name(self.dtype))
        fresh = backend.asarray(host, xp=self.xp, device=self.device)
        if self.rows is None:
            self.rows = fresh
        else:
            self.rows[...] = fresh
        self.k[...] = self.xp.zeros((1,), dtype=self.xp.int64, device=self.device)
        self.start, self.host_k = step, 0
        self.options = tuple(sorted(options.items()))

    def scalars(self) -> tuple[Array, ...]:
        """This step's numbers as 0-d arrays, read with the device counter (no host value)."""
        assert self.rows is not None
        row = backend.row_taker(self.xp)(self.rows, self.k)  # k >= 0: no index mapping
        return tuple(row[0, j] for j in range(row.shape[1]))

    def advance(self) -> None:
        """After the step's update: the next row (on the device and in the host mirror)."""
        self.k += 1
        self.host_k += 1

    def arrays(self) -> list[Array]:
        return [a for a in (self.rows, self.k) if a is not None]
