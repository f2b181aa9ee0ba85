"""A CUDA-graph stand-in on torch CPU: a recording keeps a tape of ATen operations, a replay
runs the tape and nothing else.

``tests/test_capture.py``'s ``FakeRecorder`` replays by calling the step's Python again, which
cannot show what a real replay skips: state a step makes on its first use, host numbers it
reads, Python branches. :class:`TapeRecorder` keeps CUDA-graph semantics on the CPU:

* ``capture(fn)`` runs ``fn`` once under a ``TorchDispatchMode`` that logs every ATen operation
  with the very tensors it read and wrote and its output tensors (the graph's memory). Every
  tensor that existed before and that the recording wrote into is then put back as it was: a
  CUDA recording executes nothing.
* ``replay()`` runs the logged operations again on the same tensors — no nnxp Python — and
  copies each result into the output tensor of the recording when the operation made a new
  one (as a graph's kernels write into the memory they were recorded with). Python numbers
  were frozen into the log as they were at recording, exactly as a graph freezes them.
* A host read inside a recording (an operation returning a Python number, ``backend.to_numpy``
  or ``backend.to_float``, ``torch.asarray`` of host data) is listed in :attr:`host_reads`; it
  is not permitted while a CUDA stream captures.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from nnxp import backend


class _Log(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[Any, tuple[Any, ...], dict[str, Any], Any]] = []
        self.made: set[int] = set()  # storages the recording allocated (the graph's pool)
        self.before: dict[int, tuple[Any, Any]] = {}  # storage -> (storage, its old contents)
        self.host_reads: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is None or not arg.alias_info.is_write:
                continue
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            for t in tree_flatten(value)[0]:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    key = storage.data_ptr()
                    if key not in self.made and key not in self.before:
                        self.before[key] = (storage, storage.clone())
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for o in tree_flatten(out)[0]:
            if isinstance(o, torch.Tensor):
                if o.untyped_storage().data_ptr() not in inputs:
                    self.made.add(o.untyped_storage().data_ptr())
            elif isinstance(o, (bool, int, float)):
                self.host_reads.append(f"{func} returned {o!r} to the host")
        self.ops.append((func, args, kwargs, out))
        return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape
            and a.stride() == b.stride() and a.dtype == b.dtype)


class TapeRecorder(backend.GraphRecorder):
    """A :class:`nnxp.backend.GraphRecorder` whose graphs are tapes of ATen operations."""

    kind = "tape"

    def __init__(self) -> None:
        self.graphs: list[backend.CapturedGraph] = []
        self.host_reads: list[str] = []

    def capture(self, fn: Any) -> tuple[backend.CapturedGraph, Any]:
        log = _Log()
        saved = {name: getattr(backend, name) for name in ("to_numpy", "to_float")}
        saved_asarray = torch.asarray

        def spy(name: str) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                log.host_reads.append(f"backend.{name} inside a recording")
                return saved[name](*args, **kwargs)
            return call

        def asarray(obj: Any, *args: Any, **kwargs: Any) -> Any:
            if not isinstance(obj, torch.Tensor):
                log.host_reads.append(f"torch.asarray({type(obj).__name__}) inside a recording")
            return saved_asarray(obj, *args, **kwargs)

        for name in saved:
            setattr(backend, name, spy(name))
        torch.asarray = asarray  # type: ignore[assignment]
        try:
            with log:
                outputs = fn()
        finally:
            for name, original in saved.items():
                setattr(backend, name, original)
            torch.asarray = saved_asarray  # type: ignore[assignment]
        for storage, contents in log.before.values():  # a recording executes nothing
            storage.copy_(contents)
        self.host_reads += log.host_reads
        ops = log.ops

        def launch() -> None:
            for func, args, kwargs, out in ops:
                result = func(*args, **kwargs)
                for o, r in zip(tree_flatten(out)[0], tree_flatten(result)[0]):
                    if isinstance(o, torch.Tensor) and not _same(o, r):
                        o.copy_(r)

        graph = backend.CapturedGraph(launch, keep=ops)
        self.graphs.append(graph)
        return graph, outputs
