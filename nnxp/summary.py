"""The model summary: a table of the layers and a memory estimate for one training step.

:meth:`Sequential.summary <nnxp.model.Sequential.summary>` and ``nnxp info`` print
:func:`summary`; :func:`summary_rows` returns the numbers behind it. Everything here works on
any object with the model protocol (``layers``, ``xp``, ``device``, ``dtype``, ``n_features``,
``optimizer``), so this module does not import :mod:`nnxp.model`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from . import backend
from .validation import check_count

__all__ = ["format_bytes", "itemsize", "summary", "summary_rows"]


def itemsize(dtype: Any) -> int:
    """Bytes per element of ``dtype`` (``float32`` → 4, ``bool`` → 1)."""
    name = backend.dtype_name(dtype)
    bits = re.sub(r"\D", "", name)
    return max(1, int(bits) // 8) if bits else 1


def _nbytes(x: Any) -> int:
    return math.prod(x.shape) * itemsize(x.dtype)


def _tree_bytes(obj: Any) -> int:
    if backend.is_array(obj):
        return _nbytes(obj)
    if isinstance(obj, dict):
        return sum(_tree_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tree_bytes(v) for v in obj)
    return 0


def format_bytes(n: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def summary_rows(model: Any, batch_size: int = 32) -> dict[str, Any]:
    """The numbers behind :func:`summary`: per-layer rows and the memory estimate in bytes.

    Output shapes come from one forward pass in evaluation mode on a zero batch of
    ``batch_size`` samples (when the model declares its input width).
    """
    check_count(batch_size, argument="batch_size")
    n_in = model.n_features
    x = None
    if n_in is not None:
        x = model.xp.zeros((batch_size, n_in), dtype=model.dtype, device=model.device)
    rows = []
    activations = 0 if x is None else _nbytes(x)
    for i, layer in enumerate(model.layers):
        shape: tuple[int, ...] | None = None
        if x is not None:
            x = layer.forward(x, training=False)
            shape = tuple(int(s) for s in x.shape)
            activations += _nbytes(x)
        n_params = sum(math.prod(p.shape) for p in layer.params.values())
        rows.append({"index": i, "layer": repr(layer), "class": type(layer).__name__,
                     "output_shape": shape, "params": n_params,
                     "param_bytes": sum(_nbytes(p) for p in layer.params.values()),
                     "buffer_bytes": sum(_nbytes(b) for b in
                                         getattr(layer, "buffers", {}).values())})
    param_bytes = sum(r["param_bytes"] for r in rows)
    opt: Any = getattr(model, "optimizer", None)
    opt_bytes = None
    if callable(getattr(opt, "state_dict", None)):
        opt_bytes = _tree_bytes(opt.state_dict())
    memory = {"parameters": param_bytes, "gradients": param_bytes,
              "buffers": sum(r["buffer_bytes"] for r in rows),
              "optimizer_state": opt_bytes,
              "activations": activations if x is not None else None}
    memory["total"] = sum(v for v in memory.values() if v is not None)
    return {"rows": rows, "params": sum(r["params"] for r in rows), "memory": memory,
            "batch_size": batch_size, "n_features": n_in, "dtype": backend.dtype_name(model.dtype)}


def summary(model: Any, batch_size: int = 32) -> str:
    """A table of the layers, output shapes and parameter counts, and a memory estimate.

    Memory for one training step with ``batch_size`` samples: parameters, their gradients (the
    same size), buffers, the optimizer's state (when the model has a stateful optimizer), and
    activations (the input and every layer's output, which the backward pass keeps).
    """
    info = summary_rows(model, batch_size)
    head = ("#", "layer", "output shape", "params")
    body = [(str(r["index"]), r["layer"],
             "?" if r["output_shape"] is None else str(r["output_shape"]), f"{r['params']:,}")
            for r in info["rows"]]
    widths = [max(len(row[c]) for row in [head, *body]) for c in range(4)]
    aligns = (">", "<", "<", ">")
    fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(aligns, widths))
    rule = "-" * (sum(widths) + 6)
    where = getattr(model.xp, "__name__", "?").removeprefix("array_api_compat.")
    lines = [f"Sequential on {where} ({model.device}), dtype {info['dtype']}, input width "
             f"{info['n_features']}",
             rule, fmt.format(*head), rule]
    lines += [fmt.format(*row) for row in body]
    lines.append(rule)
    mem = info["memory"]
    lines.append(f"parameters: {info['params']:,} ({format_bytes(mem['parameters'])})")
    lines.append(f"memory estimate for a training step with batch_size={batch_size}:")
    for key, label in (("parameters", "parameters"), ("gradients", "gradients"),
                       ("buffers", "buffers"), ("optimizer_state", "optimizer state"),
                       ("activations", "activations")):
        value = mem[key]
        lines.append(f"  {label:<16} {'n/a' if value is None else format_bytes(value)}")
    lines.append(f"  {'total':<16} {format_bytes(mem['total'])}")
    return "\n".join(lines)
