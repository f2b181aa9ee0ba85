"""The worked example of docs/diagnostics.md: vanishing gradients in a deep sigmoid network.

Trains 8-layer perceptrons (seven hidden layers of 64 units) on scikit-learn's digits with the
same optimizer, data and seed:

* sigmoid hidden units with "plain" random initial weights, N(0, 0.05²) — small random numbers;
* ReLU hidden units with He initialisation, N(0, 2/fan_in);
* sigmoid hidden units with large random weights, N(0, 1), which saturate.

and writes, into docs/img/,

* ``diagnostics_sigmoid.png``, ``diagnostics_relu.png`` and ``diagnostics_sigmoid_saturated.png``
  — ``nnxp.diagnostics.plot`` of each run;
* ``vanishing_gradients.png`` — the gradient norm against depth for both networks, and their
  validation accuracy per epoch;

and prints the diagnostics tables that the page quotes. Run from anywhere:
``python docs/scripts/diagnostics_example.py`` (needs the ``demo`` and ``plot`` extras).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.datasets import load_digits

import nnxp
from nnxp import diagnostics
from nnxp.init import random_normal
from nnxp.layers import Dense, ReLU, Sigmoid
from nnxp.optim import SGD

IMG = Path(__file__).resolve().parents[1] / "img"
DEPTH, WIDTH, EPOCHS, SEED = 8, 64, 30, 0


def network(activation: type, init: object) -> nnxp.Sequential:
    layers: list = []
    n_in = 64
    for _ in range(DEPTH - 1):
        layers += [Dense(n_in, WIDTH, init=init), activation()]
        n_in = WIDTH
    layers.append(Dense(n_in, 10, init=init))
    return nnxp.Sequential(layers, seed=SEED)


def main() -> None:
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(SEED).permutation(len(y))
    X, y = (X / 16.0).astype(np.float32)[order], y[order]
    runs = {
        "sigmoid, N(0, 0.05²) init": network(Sigmoid, random_normal(std=0.05)),
        "ReLU, He init": network(ReLU, "he_normal"),
        "sigmoid, N(0, 1) init": network(Sigmoid, random_normal(std=1.0)),
    }
    histories = {}
    for name, model in runs.items():
        histories[name] = model.fit(
            X, y, epochs=EPOCHS, batch_size=32, optimizer=SGD(lr=0.1), validation_split=0.2,
            diagnostics=True, verbose=0,
        )
        h = histories[name]
        print(f"== {name}: val_accuracy {h['val_accuracy'][-1]:.3f} after {EPOCHS} epochs")
        print(h.diagnostics_table(epoch=1))
        print()
    IMG.mkdir(parents=True, exist_ok=True)
    (sig_name, sig), (relu_name, relu), (big_name, big) = histories.items()
    diagnostics.plot(sig, IMG / "diagnostics_sigmoid.png", title=sig_name)
    diagnostics.plot(relu, IMG / "diagnostics_relu.png", title=relu_name)
    diagnostics.plot(big, IMG / "diagnostics_sigmoid_saturated.png", title=big_name)

    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for (name, h), marker in zip(histories.items(), ("o", "s", "^")):
        norms = [series[0] for series in h.diagnostics["grad_norm"].values()]
        left.plot(range(1, len(norms) + 1), norms, marker=marker, label=name)
        right.plot(h.epoch, h["val_accuracy"], marker=".", label=name)
    left.set_yscale("log")
    left.set_xlabel("Dense layer (1 = next to the input)")
    left.set_ylabel("gradient norm, epoch 1")
    left.set_title("gradient norm against depth")
    left.legend()
    right.set_xlabel("epoch")
    right.set_ylabel("validation accuracy")
    right.set_ylim(0, 1)
    right.set_title("learning")
    right.legend()
    fig.savefig(IMG / "vanishing_gradients.png", dpi=100)


if __name__ == "__main__":
    main()
