"""ATen operations per training step, counted with torch's dispatcher (issue 13).

On a GPU an MLP step of moderate size is bound by how many kernels it launches; on the torch
backend every ATen operator a step issues is roughly one launch there. A ``TorchDispatchMode``
sees every operator however it was reached (nnxp's kernels, array-api-compat's wrappers, torch's
own autograd and optimizers), so counting them on the CPU gives a launch count without a GPU.

Shared by ``tests/test_opcount.py`` (the budgets) and ``benchmarks/opcount.py`` (the report with
torch eager's single-tensor, foreach and fused steps beside nnxp's). Views (``view``, ``t``,
``transpose``, ``expand``, ...) are counted like every other operator, as in the issue's table;
:data:`VIEW_OPS` lets a report show how many of them launch nothing.

A steady-state step is counted: :func:`count_step` runs ``warmup`` steps first (optimizer state
is created lazily on the first step, and grads on the first backward).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import nnxp

MODELS: dict[str, dict[str, Any]] = {
    "big": {"widths": [784, 1024, 1024, 10], "batch": 256},
    "small": {"widths": [64, 128, 10], "batch": 32},
}
"""The reference MLPs of ``nnxp.bench.MODELS`` (ReLU between Dense layers, softmax
cross-entropy), at their step batch sizes."""

VIEW_OPS = frozenset({"view", "_unsafe_view", "t", "transpose", "permute", "expand", "slice",
                      "select", "alias", "as_strided", "unsqueeze", "squeeze", "_reshape_alias",
                      "reshape", "detach", "lift_fresh"})
"""Operators that make a view (metadata only: no kernel launch on a GPU)."""

BOOKKEEPING_OPS = frozenset({"_record_function_enter_new", "_record_function_exit"})
"""torch.optim's profiler markers: dispatched, but no device work."""


def launches(ops: Counter[str] | dict[str, int]) -> int:
    """The operators of ``ops`` that do device work (views and profiler markers left out)."""
    return sum(n for name, n in ops.items() if name not in VIEW_OPS | BOOKKEEPING_OPS)


class OpCounter(TorchDispatchMode):
    """Counts every ATen operator (by its name without overload) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_step(step: Callable[[], Any], *, warmup: int = 2) -> Counter[str]:
    """The ATen operators of one call of ``step`` after ``warmup`` calls, by name."""
    for _ in range(warmup):
        step()
    with OpCounter() as counter:
        step()
    return counter.ops


def nnxp_step(model: str, optimizer: str, package: Any = nnxp) -> Callable[[], Any]:
    """nnxp's training step (forward, loss, backward, optimizer step) of ``model`` on torch CPU,
    the step ``nnxp.bench.train_step`` runs; ``package`` may be another revision of nnxp
    imported under another name (``benchmarks/opcount.py --rev``)."""
    cfg = MODELS[model]
    widths, batch = cfg["widths"], cfg["batch"]
    with package.use_backend("torch"):
        stack: list[Any] = []
        for i in range(len(widths) - 1):
            stack.append(package.layers.Dense(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                stack.append(package.layers.ReLU())
        net = package.Sequential(stack, seed=0)
        opt = {"sgd": package.optim.SGD, "adam": package.optim.Adam}[optimizer]()
        if hasattr(opt, "update_block"):
            # counted as a GPU runs the step: each flat unit's update in one piece (on a CPU
            # it runs in cache-sized blocks, one launch-free pass per block and operation)
            opt.update_block = 0
        opt.bind(net.parameters())
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(batch, widths[0], generator=gen)
    y = torch.randint(0, widths[-1], (batch,), generator=gen)

    def step() -> Any:
        value = net.loss_and_grads(x, y)
        opt.step()
        return value

    return step


def torch_step(model: str, optimizer: str, mode: str) -> Callable[[], Any]:
    """torch eager's step of ``model``: ``mode`` is ``"single"`` (``foreach=False``),
    ``"foreach"`` or ``"fused"`` (Adam only); gradients set to None between steps, as
    ``benchmarks/peers.py`` does."""
    cfg = MODELS[model]
    widths, batch = cfg["widths"], cfg["batch"]
    torch.manual_seed(0)
    mods: list[Any] = []
    for i in range(len(widths) - 1):
        mods.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            mods.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*mods)
    options: dict[str, Any] = {"foreach": mode == "foreach"}
    if mode == "fused":
        options = {"fused": True}
    if optimizer == "sgd":
        opt: Any = torch.optim.SGD(net.parameters(), lr=0.01, **options)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, **options)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(batch, widths[0], generator=gen)
    y = torch.randint(0, widths[-1], (batch,), generator=gen)
    ce = torch.nn.functional.cross_entropy

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = ce(net(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


TORCH_MODES = {"sgd": ("single", "foreach"), "adam": ("single", "foreach", "fused")}
"""The torch eager variants counted beside nnxp for each optimizer."""
