"""Training diagnostics: gradient norms per layer, dead ReLUs, saturated sigmoid/tanh units.

``Sequential.fit(..., diagnostics=True)`` records, for every epoch,

``grad_norm``
    for each layer with parameters, the Euclidean norm of its whole gradient,
    ``‖g‖ = sqrt(Σ_params Σ_entries g²)``, averaged over the epoch's optimizer steps and
    measured before the optimizer's update (before any clipping). Norms that shrink by orders
    of magnitude from the last layer towards the first are the signature of vanishing
    gradients; norms that grow are that of exploding ones.
``dead_fraction``
    for each ReLU layer, the fraction of its units whose output is exactly 0 for every sample
    of the probe batch (a unit that never fires gets no gradient and cannot recover).
``saturated_fraction``
    for each sigmoid or tanh layer, the fraction of activation values (over probe samples and
    units) in the flat tails: ``σ < 0.01`` or ``σ > 0.99`` (where ``σ' = σ(1 − σ) < 0.0099``,
    a quarter of a hundredth of its peak), and ``|tanh| > 0.99`` (where ``tanh' = 1 − tanh² <
    0.02``). The thresholds are :data:`SIGMOID_SATURATION` and :data:`TANH_SATURATION`.

The probe batch is the first :data:`PROBE_SIZE` training samples (after the validation split,
before shuffling), run through the model in evaluation mode at the end of every epoch. Gradient
norms cost a few reductions per step on the device; all values join the single device-to-host
transfer ``fit`` makes per epoch.

Layers are recognised by a ``diagnostic_kind`` attribute (``"relu"``, ``"sigmoid"``,
``"tanh"``) when they have one, else by an ``activation`` attribute (a name, or a fused
activation layer such as ``Dense(..., activation="relu")`` holds), else by their class name
(``ReLU``, ``Sigmoid``, ``Tanh``, case-insensitive). Leaky and smooth variants are not
counted: their units cannot die or saturate in the same way.

The results live in ``history.diagnostics`` and print with :func:`format_table` (or
``history.diagnostics_table()``); :func:`plot` draws them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .typing import Array

if TYPE_CHECKING:  # pragma: no cover
    from .model import Sequential
    from .training import History

SIGMOID_SATURATION = (0.01, 0.99)
"""A sigmoid output below the first or above the second value counts as saturated."""

TANH_SATURATION = 0.99
"""A tanh output with ``|y|`` above this counts as saturated."""

PROBE_SIZE = 512
"""Samples in the probe batch used for the activation statistics."""

__all__ = [
    "PROBE_SIZE",
    "SIGMOID_SATURATION",
    "TANH_SATURATION",
    "DiagnosticsRecorder",
    "format_table",
    "layer_kind",
    "layer_label",
    "plot",
]

_KINDS = {"relu": "relu", "sigmoid": "sigmoid", "logistic": "sigmoid", "tanh": "tanh"}


def layer_kind(layer: Any) -> str | None:
    """``"relu"``, ``"sigmoid"``, ``"tanh"`` or None for any other layer (see module doc)."""
    kind = getattr(layer, "diagnostic_kind", None)
    if isinstance(kind, str) and kind.lower() in _KINDS:
        return _KINDS[kind.lower()]
    activation = getattr(layer, "activation", None)
    if isinstance(activation, str):
        return _KINDS.get(activation.lower())
    if activation is not None and activation is not layer and hasattr(activation, "forward"):
        return layer_kind(activation)  # Dense(..., activation="relu"): its output is the ReLU's
    return _KINDS.get(type(layer).__name__.lower())


def layer_label(index: int, layer: Any) -> str:
    """``"0:Dense"``: the layer's position in the model and its class name."""
    return f"{index}:{type(layer).__name__}"


def _flat2d(a: Array, xp: Any) -> Array:
    return a if a.ndim == 2 else xp.reshape(a, (a.shape[0], -1))


class DiagnosticsRecorder:
    """What ``fit`` uses to collect the diagnostics of one training run (device-side sums).

    ``accumulate()`` after each backward pass; at the end of the epoch ``epoch_arrays()`` gives
    0-d float64 device arrays that ``fit`` transfers with its logs, and ``record(values)`` files
    the host floats into ``history.diagnostics``.
    """

    def __init__(self, model: Sequential, probe: Array) -> None:
        self.model = model
        self.xp = model.xp
        self.probe = probe
        self.grad_layers = [(i, lay) for i, lay in enumerate(model.layers) if lay.params]
        self.act_layers = [(i, layer_kind(lay)) for i, lay in enumerate(model.layers)
                           if layer_kind(lay) is not None]
        self._sums: list[Array] | None = None
        self._steps = 0

    def accumulate(self) -> None:
        """Add each parameterised layer's current gradient norm to the epoch's running sum."""
        xp = self.xp
        norms = []
        for _, layer in self.grad_layers:
            total = None
            for key in layer.params:
                g = layer.grads.get(key)
                if g is None:
                    continue
                sq = xp.sum(xp.astype(g, xp.float64) ** 2)
                total = sq if total is None else total + sq
            if total is None:
                total = xp.zeros((), dtype=xp.float64, device=self.model.device)
            norms.append(xp.sqrt(total))
        if self._sums is None:
            self._sums = norms
        else:
            self._sums = [s + v for s, v in zip(self._sums, norms)]
        self._steps += 1

    def before_update(self, loss: Array) -> None:
        """The hook ``fit`` calls between the backward pass and the optimizer step."""
        self.accumulate()

    def _activation_stats(self) -> list[Array]:
        xp = self.xp
        kinds = dict(self.act_layers)
        stats = []
        x = self.probe
        for i, layer in enumerate(self.model.layers):
            x = layer.forward(x, training=False)
            kind = kinds.get(i)
            if kind is None:
                continue
            a = _flat2d(x, xp)
            if kind == "relu":
                dead = xp.max(a, axis=0) <= 0
                stats.append(xp.mean(xp.astype(dead, xp.float64)))
            elif kind == "sigmoid":
                lo, hi = SIGMOID_SATURATION
                sat = (a < lo) | (a > hi)
                stats.append(xp.mean(xp.astype(sat, xp.float64)))
            else:
                sat = xp.abs(a) > TANH_SATURATION
                stats.append(xp.mean(xp.astype(sat, xp.float64)))
        return stats

    def epoch_arrays(self) -> list[Array]:
        """0-d float64 arrays: the mean gradient norm per layer, then the probe statistics."""
        xp = self.xp
        if self._sums is None:
            nan = xp.asarray(math.nan, dtype=xp.float64, device=self.model.device)
            means = [nan for _ in self.grad_layers]
        else:
            means = [s / self._steps for s in self._sums]
        self._sums, self._steps = None, 0
        return means + self._activation_stats()

    def record(self, epoch: int, values: list[float], into: dict[str, Any]) -> None:
        """File one epoch's host values into ``into`` (``history.diagnostics``)."""
        into.setdefault("epoch", []).append(epoch)
        grad = into.setdefault("grad_norm", {})
        dead = into.setdefault("dead_fraction", {})
        sat = into.setdefault("saturated_fraction", {})
        kinds = into.setdefault("kind", {})
        layers = self.model.layers
        for (i, layer), value in zip(self.grad_layers, values):
            grad.setdefault(layer_label(i, layer), []).append(value)
        for (i, kind), value in zip(self.act_layers, values[len(self.grad_layers):]):
            label = layer_label(i, layers[i])
            kinds[label] = kind
            (dead if kind == "relu" else sat).setdefault(label, []).append(value)


def _pick(series: list[float], position: int) -> float:
    return series[position] if series else math.nan


def format_table(history: History, *, epoch: int | None = None) -> str:
    """The diagnostics of one epoch (default: the last) as a plain-text table.

    Columns: layer, kind, gradient norm, its ratio to the last parameterised layer's norm, dead
    ReLU fraction and saturated fraction. A note flags ratios below 1e-2 (vanishing?) or above
    1e2 (exploding?) and fractions of 50 % or more.
    """
    diag = getattr(history, "diagnostics", None) or {}
    epochs = diag.get("epoch", [])
    if not epochs:
        return "no diagnostics recorded: train with fit(..., diagnostics=True)"
    if epoch is None:
        position = len(epochs) - 1
    elif epoch in epochs:
        position = epochs.index(epoch)
    else:
        raise ValueError(f"epoch={epoch} has no diagnostics; recorded epochs: {epochs}")
    grad: dict[str, list[float]] = diag.get("grad_norm", {})
    dead: dict[str, list[float]] = diag.get("dead_fraction", {})
    sat: dict[str, list[float]] = diag.get("saturated_fraction", {})
    kinds: dict[str, str] = diag.get("kind", {})
    labels = sorted({*grad, *dead, *sat}, key=lambda s: int(s.split(":", 1)[0]))
    last = _pick(grad[list(grad)[-1]], position) if grad else math.nan
    header = ("layer", "kind", "grad norm", "/ last", "dead", "saturated", "note")
    rows = []
    for label in labels:
        notes = []
        g = _pick(grad[label], position) if label in grad else None
        ratio = g / last if g is not None and last and math.isfinite(last) else None
        if ratio is not None and ratio < 1e-2:
            notes.append("vanishing?")
        if ratio is not None and ratio > 1e2:
            notes.append("exploding?")
        d = _pick(dead[label], position) if label in dead else None
        s = _pick(sat[label], position) if label in sat else None
        if d is not None and d >= 0.5:
            notes.append("many dead units")
        if s is not None and s >= 0.5:
            notes.append("saturated")
        rows.append((
            label,
            kinds.get(label, "params" if label in grad else "-"),
            "-" if g is None else f"{g:.3e}",
            "-" if ratio is None else f"{ratio:.2e}",
            "-" if d is None else f"{d:.1%}",
            "-" if s is None else f"{s:.1%}",
            ", ".join(notes),
        ))
    widths = [max(len(header[c]), *(len(r[c]) for r in rows)) for c in range(len(header))]
    lines = [f"diagnostics at epoch {epochs[position]}",
             "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def new_figure(nrows: int, ncols: int, *, size: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib ``Figure`` and its axes, without pyplot (no GUI, no global state).

    Raises
    ------
    ImportError
        naming the ``plot`` extra when matplotlib is missing.
    """
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib, which is not installed; install the "
                          "'plot' extra: pip install 'nnxp[plot]'") from exc
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def plot(history: History, path: Any, *, title: str | None = None) -> None:
    """Write a PNG with the gradient norm of every layer per epoch (log scale), the gradient
    norm against depth for the first and last epoch, and the dead/saturated fractions."""
    diag = getattr(history, "diagnostics", None) or {}
    if not diag.get("epoch"):
        raise ValueError("history has no diagnostics: train with fit(..., diagnostics=True)")
    epochs = diag["epoch"]
    grad = diag.get("grad_norm", {})
    fracs = {**diag.get("dead_fraction", {}), **diag.get("saturated_fraction", {})}
    fig, axes = new_figure(1, 3, size=(15, 4.2))
    ax = axes[0][0]
    for label, series in grad.items():
        ax.plot(epochs, series, marker=".", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean gradient norm")
    ax.set_title("gradient norm per layer")
    ax.legend(fontsize="x-small", ncols=2)
    ax = axes[0][1]
    labels = list(grad)
    depth = list(range(len(labels)))
    ax.plot(depth, [s[0] for s in grad.values()], marker="o", label=f"epoch {epochs[0]}")
    ax.plot(depth, [s[-1] for s in grad.values()], marker="s", label=f"epoch {epochs[-1]}")
    ax.set_xticks(depth, labels, rotation=45, ha="right", fontsize="small")
    ax.set_yscale("log")
    ax.set_ylabel("mean gradient norm")
    ax.set_title("gradient norm against depth")
    ax.legend(fontsize="small")
    ax = axes[0][2]
    for label, series in fracs.items():
        kind = diag.get("kind", {}).get(label, "")
        what = "dead" if kind == "relu" else "saturated"
        ax.plot(epochs, series, marker=".", label=f"{label} ({what})")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction")
    ax.set_title("dead ReLU / saturated units")
    if fracs:
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
