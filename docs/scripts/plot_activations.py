"""Plot every registered activation with its derivative: writes docs/img/activations.png.

Run from the repository root (or anywhere): ``python docs/scripts/plot_activations.py``. The
curves come from nnxp's own layers on the NumPy backend — the values from ``forward`` and the
derivatives from ``backward`` with an upstream gradient of ones — so the figure shows what the
code computes, not a separate transcription of the formulas.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import nnxp  # noqa: E402
from nnxp.layers import ACTIVATIONS  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img" / "activations.png"

# One panel per activation; aliases ("linear", "swish", "gelu_exact") are left out.
PANELS = [
    ("identity", "Identity"),
    ("step", "Step (Heaviside)"),
    ("sign", "Sign"),
    ("piecewise_linear", "Piecewise linear"),
    ("sigmoid", "Sigmoid"),
    ("tanh", "Tanh"),
    ("relu", "ReLU"),
    ("leaky_relu", "Leaky ReLU (slope 0.01)"),
    ("prelu", "PReLU (α = 0.25 at init)"),
    ("rrelu", "RReLU (evaluation: mean slope)"),
    ("elu", "ELU (α = 1)"),
    ("selu", "SELU"),
    ("softplus", "Softplus"),
    ("gelu", "GELU (exact)"),
    ("gelu_tanh", "GELU (tanh approximation)"),
    ("silu", "SiLU / swish"),
    ("softmax", "Softmax of [x, 0], first output"),
]


def curves(name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(f(x), f'(x))`` from the layer registered as ``name``."""
    layer = ACTIVATIONS[name]()
    if name == "softmax":
        # a two-way softmax of [x, 0]: its first output is sigmoid(x); ∂y₀/∂x₀ via the JVP
        pair = np.stack([x, np.zeros_like(x)], axis=1)
        y = layer.forward(pair, training=True)
        dx = layer.backward(np.stack([np.ones_like(x), np.zeros_like(x)], axis=1))
        return nnxp.to_numpy(y)[:, 0], nnxp.to_numpy(dx)[:, 0]
    if name == "rrelu":
        # in training every element gets a random slope; plot the evaluation-mode function
        mean = 0.5 * (layer.lower + layer.upper)
        return layer.forward(x, training=False), np.where(x > 0, 1.0, mean)
    y = layer.forward(x[:, None], training=True)
    dx = layer.backward(np.ones((x.size, 1)))
    return nnxp.to_numpy(y)[:, 0], nnxp.to_numpy(dx)[:, 0]


def main() -> None:
    nnxp.set_backend("numpy")
    x = np.linspace(-4.0, 4.0, 801)
    cols = 4
    rows = math.ceil(len(PANELS) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), sharex=True)
    for ax, (name, title) in zip(axes.flat, PANELS):
        y, dy = curves(name, x)
        ax.axhline(0.0, color="0.8", lw=0.8)
        ax.axvline(0.0, color="0.8", lw=0.8)
        ax.plot(x, y, lw=2.0, label="f(x)")
        ax.plot(x, dy, lw=1.5, ls="--", label="f′(x)")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-2.2, 4.2)
    for ax in list(axes.flat)[len(PANELS):]:
        ax.axis("off")
    axes.flat[0].legend(loc="upper left", fontsize=9)
    fig.suptitle("nnxp activations (solid) and their derivatives (dashed)")
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
