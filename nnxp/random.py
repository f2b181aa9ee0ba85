"""Seeded random numbers that do not depend on the backend.

The array API standard has no random module, so nnxp draws everything that must be reproducible
across backends — initial weights and the shuffling order — on the host with NumPy's PCG64, in
float64, casts to the target dtype on the host, and moves the result to the backend once. The same
``seed`` therefore gives bit-identical initial weights and batches on numpy, array_api_strict,
torch and cupy.

What stays backend-dependent is the arithmetic after that: matrix products and reductions are
summed in different orders by different libraries, so training results agree across backends
only within floating-point tolerance (about 1e-6 relative per step in float32), not bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend

Array = Any


class Generator:
    """A seeded host generator whose draws land on any backend.

    Parameters
    ----------
    seed
        An int, ``None`` (fresh entropy), or a ``numpy.random.SeedSequence``.
    """

    def __init__(self, seed: int | None | np.random.SeedSequence = None) -> None:
        if seed is not None and not isinstance(seed, np.random.SeedSequence):
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self._rng = np.random.Generator(np.random.PCG64(seed))

    # --- draws on a backend ------------------------------------------------------------------

    def normal(
        self, shape: tuple[int, ...], *, mean: float = 0.0, std: float = 1.0, dtype: Any, xp: Any,
        device: Any,
    ) -> Array:
        """Entries drawn from N(mean, std²), cast to ``dtype`` on the host, then moved."""
        host = self._rng.normal(mean, std, size=shape)
        return self._move(host, dtype, xp, device)

    def uniform(
        self, shape: tuple[int, ...], *, low: float = 0.0, high: float = 1.0, dtype: Any, xp: Any,
        device: Any,
    ) -> Array:
        """Entries drawn from U[low, high), cast to ``dtype`` on the host, then moved."""
        host = self._rng.uniform(low, high, size=shape)
        return self._move(host, dtype, xp, device)

    def permutation(self, n: int, *, xp: Any, device: Any) -> Array:
        """A random permutation of ``range(n)`` as an int64 index array on the backend."""
        return backend.asarray(self._rng.permutation(n).astype(np.int64), xp=xp, device=device)

    # --- host-side helpers -----------------------------------------------------------------

    def host_permutation(self, n: int) -> np.ndarray:
        """A random permutation of ``range(n)`` on the host (for splitting data sets)."""
        return self._rng.permutation(n)

    def integers(self, high: int) -> int:
        """One integer in ``[0, high)`` (seeds for backend-side generators)."""
        return int(self._rng.integers(high))

    def spawn(self) -> Generator:
        """An independent child generator (one per layer, so adding a layer keeps the others)."""
        child = Generator.__new__(Generator)
        child._rng = self._rng.spawn(1)[0]
        return child

    @property
    def state(self) -> dict[str, Any]:
        """The bit generator's state, for checkpoints (JSON-serialisable)."""
        return dict(self._rng.bit_generator.state)

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._rng.bit_generator.state = value

    @staticmethod
    def _move(host: np.ndarray, dtype: Any, xp: Any, device: Any) -> Array:
        host = host.astype(backend.dtype_name(dtype), copy=False)
        return backend.asarray(host, xp=xp, device=device)
