"""Seeded random numbers that do not depend on the backend.

The array API standard has no random module, so nnxp draws everything that must be reproducible
across backends — initial weights and the shuffling order — on the host with NumPy's PCG64, in
float64, casts to the target dtype on the host, and moves the result to the backend once. The same
``seed`` therefore gives bit-identical initial weights and batches on numpy, array_api_strict,
torch and cupy.

What stays backend-dependent is the arithmetic after that: matrix products and reductions are
summed in different orders by different libraries, so training results agree across backends
only within floating-point tolerance (about 1e-6 relative per step in float32), not bit for bit.

Dropout masks are the exception: they are drawn anew for every training batch, so they come from
the backend's own generator (:class:`BackendGenerator`: NumPy's, torch's on the device, CuPy's;
a host NumPy generator for array_api_strict). A seed makes them reproducible on one backend, but
the masks differ from one backend to another.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from . import backend
from .typing import Array


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


class BackendGenerator:
    """A seeded generator that draws on the backend itself, with the backend's own generator.

    Used where draws are too many or too frequent to make on the host and move (dropout masks,
    one per training batch). The policy, per backend:

    * numpy — ``numpy.random.Generator(PCG64(seed))``;
    * torch — a ``torch.Generator`` on the arrays' device (CPU or CUDA), seeded with ``seed``;
    * cupy — ``cupy.random.default_rng(seed)`` created on the arrays' GPU (XORWOW: a cuRAND
      state per generator thread, in a device buffer);
    * anything else (array_api_strict has no random numbers) — a NumPy ``Generator`` on the
      host, whose draws are then moved to the device.

    So the same ``seed`` gives the same sequence of draws every time on one backend and device,
    but different draws on different backends: unlike :class:`Generator`, a
    ``BackendGenerator`` is reproducible per backend, not across backends.

    Parameters
    ----------
    seed
        A non-negative int (below 2**63), or ``None`` for fresh entropy.
    xp, device
        The namespace and device the draws are made for.

    Attributes
    ----------
    seed
        The seed the stream started from (drawn from fresh entropy when ``None`` was given).
    kind
        Which generator draws: ``"numpy"``, ``"torch"``, ``"cupy"`` or ``"host"`` (a NumPy
        generator on the host, for namespaces without random numbers).

    Its state can be saved and restored with :meth:`get_state` and :meth:`set_state`.
    """

    def __init__(self, seed: int | None, xp: Any, device: Any) -> None:
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
            0 <= seed < 2**63
        ):
            raise ValueError(f"seed must be an int in [0, 2**63) or None, got {seed!r}")
        self.seed = int(seed)
        self.xp = xp
        self.device = device
        if array_api_compat.is_torch_namespace(xp):
            import torch  # noqa: PLC0415 - only this module and backend.py may name torch

            self.kind = "torch"
            self._rng: Any = torch.Generator(device=device)
            self._rng.manual_seed(self.seed)
        elif array_api_compat.is_cupy_namespace(xp):
            import cupy  # noqa: PLC0415

            self.kind = "cupy"
            with device:
                self._rng = cupy.random.default_rng(self.seed)
        else:
            self.kind = "numpy" if array_api_compat.is_numpy_namespace(xp) else "host"
            self._rng = np.random.Generator(np.random.PCG64(self.seed))

    def uniform(self, shape: tuple[int, ...], dtype: Any) -> Array:
        """Entries drawn from U[0, 1) in ``dtype`` (float32 or float64), on the device."""
        shape = tuple(int(s) for s in shape)
        dt = backend.resolve_dtype(dtype, self.xp)
        if self.kind == "torch":
            import torch  # noqa: PLC0415

            return torch.rand(shape, generator=self._rng, dtype=dt, device=self.device)
        if self.kind == "cupy":
            with self.device:
                return self._rng.random(shape, dtype=dt)
        name = backend.dtype_name(dtype)
        if name in ("float32", "float64"):
            host = np.asarray(self._rng.random(shape, dtype=np.dtype(name)))
        else:
            host = np.asarray(self._rng.random(shape)).astype(name)
        if self.kind == "numpy":
            return host
        return backend.asarray(host, xp=self.xp, device=self.device)

    def get_state(self) -> Any:
        """The generator's current state, for checkpoints.

        Returns
        -------
        dict, torch.Tensor, numpy.ndarray or None
            numpy and host kinds: the PCG64 bit generator's state (a JSON-able dict whose
            integers exceed 64 bits); torch: ``torch.Generator.get_state()``, a CPU ``uint8``
            tensor; cupy: the bytes of the cuRAND states of ``default_rng``'s XORWOW bit
            generator (one ``curandState`` per generator thread, about 1.5 MB), copied to a
            host ``uint8`` array. CuPy has no public accessor for them: they are the bit
            generator's ``_state`` device buffer, which its kernels read and advance in place.
            ``None`` on a CuPy without that buffer (a checkpoint then restarts the stream from
            :attr:`seed`, as every CuPy checkpoint did before issue 10).
        """
        if self.kind in ("numpy", "host"):
            return dict(self._rng.bit_generator.state)
        if self.kind == "torch":
            return self._rng.get_state()
        buffer = getattr(self._rng.bit_generator, "_state", None)
        if buffer is None:
            return None
        return backend.to_numpy(buffer).view(np.uint8).copy()

    def set_state(self, state: Any) -> None:
        """Continue the stream from ``state``, as :meth:`get_state` returned it.

        Parameters
        ----------
        state
            From a generator of the same :attr:`kind`. For torch, any array of the state's
            ``uint8`` bytes (e.g. the host copy a checkpoint holds); it is copied to a CPU
            tensor, where ``torch.Generator.set_state`` expects it. For cupy, the bytes
            :meth:`get_state` returned, written into this generator's cuRAND state buffer on
            its GPU (the buffer keeps its address: CuPy's kernels look it up on every draw).

        Raises
        ------
        ValueError
            on cupy, for a state whose size differs from this generator's (another CuPy
            version or bit generator).
        NotImplementedError
            on a CuPy whose bit generator keeps no ``_state`` buffer.
        """
        if self.kind == "torch":
            self._rng.set_state(backend.asarray(state, xp=self.xp, device="cpu"))
        elif self.kind == "cupy":
            self._set_cupy_state(state)
        else:
            self._rng.bit_generator.state = state

    def _set_cupy_state(self, state: Any) -> None:
        import cupy  # noqa: PLC0415

        buffer = getattr(self._rng.bit_generator, "_state", None)
        if buffer is None:
            raise NotImplementedError("this CuPy's bit generator keeps no _state buffer, so "
                                      "its state cannot be restored; build a new "
                                      "BackendGenerator from the seed instead")
        host = backend.host_array(state).reshape(-1).view(np.uint8)
        if host.nbytes != buffer.nbytes:
            raise ValueError(f"a CuPy generator state of {host.nbytes} bytes does not fit this "
                             f"generator's {buffer.nbytes}-byte state (another CuPy version or "
                             "bit generator wrote it)")
        with self.device:
            buffer[...] = cupy.asarray(host.view(buffer.dtype))

    def bernoulli_mask(self, shape: tuple[int, ...], keep: float, dtype: Any) -> Array:
        """A 0/1 mask in ``dtype`` whose entries are 1 with probability ``keep`` (``u < keep``)."""
        u = self.uniform(shape, dtype)
        return self.xp.astype(u < keep, backend.resolve_dtype(dtype, self.xp))

    def __repr__(self) -> str:
        return f"BackendGenerator(seed={self.seed}, kind={self.kind!r})"
