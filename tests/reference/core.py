"""Independent float64 NumPy reference for the foundation kernels. Never imports nnxp."""

from __future__ import annotations

import numpy as np


def dense_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    # y_ij = Σ_k x_ik W_kj + b_j, written as an explicit contraction rather than a matmul
    return np.einsum("ik,kj->ij", x, W) + b[None, :]


def dense_backward(dy: np.ndarray, x: np.ndarray, W: np.ndarray):
    dx = np.einsum("ij,kj->ik", dy, W)
    dW = np.einsum("ik,ij->kj", x, dy)
    db = dy.sum(axis=0)
    return dx, dW, db


def relu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, 0.0)


def relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, dy, 0.0)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """Loss and gradient, row by row with Python loops over the batch (a different route)."""
    n, c = logits.shape
    loss = 0.0
    grad = np.zeros_like(logits, dtype=np.float64)
    for i in range(n):
        z = logits[i].astype(np.float64)
        m = z.max()
        lse = m + np.log(np.exp(z - m).sum())
        loss += lse - z[labels[i]]
        p = np.exp(z - lse)
        p[labels[i]] -= 1.0
        grad[i] = p / n
    return loss / n, grad


def sgd_trajectory(p0: np.ndarray, grads: list[np.ndarray], lr: float) -> list[np.ndarray]:
    out, p = [], p0.astype(np.float64).copy()
    for g in grads:
        p = p - lr * g
        out.append(p.copy())
    return out
