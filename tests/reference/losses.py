"""Independent float64 NumPy references for the losses. Never imports nnxp.

Each function returns ``(loss, gradient with respect to the outputs)`` for a mean over the batch
with optional per-sample weights ``w`` normalised Keras-style: ``L = Σ_i w_i l_i / N``. The
per-sample losses are written loop by loop over the batch (a different route from the kernels'
vectorised forms) and the gradients from the textbook derivatives.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def _weights(w: np.ndarray | None, n: int) -> np.ndarray:
    return np.ones(n) if w is None else np.asarray(w, dtype=np.float64)


def _as2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[:, None] if x.ndim == 1 else x


def _elementwise(o, t, w, value, derivative):
    """Mean over the D outputs of each sample, then the weighted mean over the batch."""
    o, t = _as2d(o), _as2d(t)
    n, d = o.shape
    w = _weights(w, n)
    loss = 0.0
    grad = np.empty_like(o)
    for i in range(n):
        loss += w[i] * sum(value(o[i, j], t[i, j]) for j in range(d)) / d
        for j in range(d):
            grad[i, j] = w[i] * derivative(o[i, j], t[i, j]) / (n * d)
    return loss / n, grad


def mse(o, t, w=None):
    return _elementwise(o, t, w, lambda a, b: (a - b) ** 2, lambda a, b: 2.0 * (a - b))


def half_mse(o, t, w=None):
    return _elementwise(o, t, w, lambda a, b: 0.5 * (a - b) ** 2, lambda a, b: a - b)


def mae(o, t, w=None):
    return _elementwise(o, t, w, lambda a, b: abs(a - b), lambda a, b: float(np.sign(a - b)))


def huber(o, t, w=None, delta=1.0):
    def value(a, b):
        r = abs(a - b)
        return 0.5 * r * r if r <= delta else delta * r - 0.5 * delta * delta

    def derivative(a, b):
        r = a - b
        if abs(r) <= delta:
            return r
        return delta if r > 0 else -delta

    return _elementwise(o, t, w, value, derivative)


def binary_cross_entropy(p, t, w=None, label_smoothing=0.0, eps=EPS):
    t = _as2d(t) * (1 - label_smoothing) + 0.5 * label_smoothing
    p = np.minimum(np.maximum(_as2d(p), eps), 1 - eps)

    def value(a, b):
        return -(b * np.log(a) + (1 - b) * np.log1p(-a))

    def derivative(a, b):
        return -b / a + (1 - b) / (1 - a)

    return _elementwise(p, t, w, value, derivative)


def binary_cross_entropy_with_logits(x, t, w=None, label_smoothing=0.0):
    t = _as2d(t) * (1 - label_smoothing) + 0.5 * label_smoothing

    def value(a, b):
        # −[b log σ(a) + (1 − b) log(1 − σ(a))] with log σ(a) = −log(1 + e^{−a})
        return b * np.logaddexp(0.0, -a) + (1 - b) * np.logaddexp(0.0, a)

    def derivative(a, b):
        return 1.0 / (1.0 + np.exp(-a)) - b if a >= 0 else np.exp(a) / (1.0 + np.exp(a)) - b

    return _elementwise(x, t, w, value, derivative)


def categorical_cross_entropy(p, t, w=None, label_smoothing=0.0, eps=EPS):
    p = np.asarray(p, dtype=np.float64)
    n, c = p.shape
    t = np.asarray(t, dtype=np.float64) * (1 - label_smoothing) + label_smoothing / c
    w = _weights(w, n)
    pc = np.clip(p, eps, 1 - eps)
    loss = 0.0
    grad = np.zeros_like(p)
    for i in range(n):
        loss -= w[i] * float(np.dot(t[i], np.log(pc[i])))
        grad[i] = -w[i] * t[i] / pc[i] / n
    return loss / n, grad


def sparse_categorical_cross_entropy(p, labels, w=None, label_smoothing=0.0, eps=EPS):
    p = np.asarray(p, dtype=np.float64)
    onehot = np.eye(p.shape[1])[np.asarray(labels, dtype=np.int64)]
    return categorical_cross_entropy(p, onehot, w, label_smoothing, eps)


def softmax_cross_entropy(z, labels, w=None, label_smoothing=0.0):
    z = np.asarray(z, dtype=np.float64)
    n, c = z.shape
    w = _weights(w, n)
    loss = 0.0
    grad = np.zeros_like(z)
    for i in range(n):
        lse = np.logaddexp.reduce(z[i])
        logp = z[i] - lse
        target = np.full(c, label_smoothing / c)
        target[int(labels[i])] += 1 - label_smoothing
        loss -= w[i] * float(np.dot(target, logp))
        grad[i] = w[i] * (np.exp(logp) - target) / n
    return loss / n, grad


REFERENCES = {
    "mse": mse,
    "half_mse": half_mse,
    "mae": mae,
    "huber": huber,
    "binary_cross_entropy": binary_cross_entropy,
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
    "categorical_cross_entropy": categorical_cross_entropy,
    "sparse_categorical_cross_entropy": sparse_categorical_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}
