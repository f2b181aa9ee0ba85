"""Independent float64 NumPy references for normalisation and regularisation; never imports nnxp.

The routes differ on purpose from the kernels': batch-norm backward follows the long chain rule
through the variance and the mean (Ioffe & Szegedy's Algorithm), layer-norm backward builds each
sample's full Jacobian, the batch statistics use ``np.mean``/``np.var`` and the penalties and
max-norm loop over columns.
"""

from __future__ import annotations

import numpy as np


def batch_norm_train(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5):
    """Training-mode output, batch mean and biased batch variance."""
    mu = np.mean(x, axis=0)
    var = np.var(x, axis=0)  # ddof=0: the biased variance
    y = gamma * (x - mu) / np.sqrt(var + eps) + beta
    return y, mu, var


def batch_norm_eval(x, gamma, beta, running_mean, running_var, eps: float = 1e-5) -> np.ndarray:
    return gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta


def batch_norm_backward(dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, eps: float = 1e-5):
    """The long chain rule: ∂L/∂x̂, then ∂L/∂σ², then ∂L/∂μ, then ∂L/∂x."""
    n = x.shape[0]
    mu = x.mean(axis=0)
    var = ((x - mu) ** 2).mean(axis=0)
    std = np.sqrt(var + eps)
    xhat = (x - mu) / std
    dxhat = dy * gamma
    dvar = np.sum(dxhat * (x - mu), axis=0) * -0.5 * std**-3
    dmu = np.sum(-dxhat / std, axis=0) + dvar * np.sum(-2.0 * (x - mu), axis=0) / n
    dx = dxhat / std + dvar * 2.0 * (x - mu) / n + dmu / n
    dgamma = np.sum(dy * xhat, axis=0)
    dbeta = np.sum(dy, axis=0)
    return dx, dgamma, dbeta


def running_stats(batches, momentum: float = 0.1, eps: float = 1e-5):
    """torch's running statistics after training on ``batches`` in order (from 0 and 1)."""
    c = batches[0].shape[1]
    rm, rv = np.zeros(c), np.ones(c)
    for xb in batches:
        rm = (1 - momentum) * rm + momentum * xb.mean(axis=0)
        rv = (1 - momentum) * rv + momentum * np.var(xb, axis=0, ddof=1)
    return rm, rv


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5):
    mu = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def layer_norm_backward(dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, eps: float = 1e-5):
    """Per sample, the Jacobian ∂x̂/∂x = (I − 1/D − x̂ x̂ᵀ/D) / std, applied to γ·dy."""
    n, d = x.shape
    dx = np.empty_like(x)
    xhat_all = np.empty_like(x)
    for i in range(n):
        mu = x[i].mean()
        std = np.sqrt(x[i].var() + eps)
        xhat = (x[i] - mu) / std
        xhat_all[i] = xhat
        jac = (np.eye(d) - np.full((d, d), 1.0 / d) - np.outer(xhat, xhat) / d) / std
        dx[i] = jac.T @ (gamma * dy[i])
    return dx, np.sum(dy * xhat_all, axis=0), np.sum(dy, axis=0)


def l1_l2_penalty(W: np.ndarray, l1: float, l2: float) -> float:
    return float(l1 * np.abs(W).sum() + l2 * np.square(W).sum())


def l1_l2_penalty_grad(W: np.ndarray, l1: float, l2: float) -> np.ndarray:
    return l1 * np.sign(W) + 2.0 * l2 * W


def max_norm(W: np.ndarray, c: float) -> np.ndarray:
    out = W.copy()
    for j in range(W.shape[1]):
        norm = np.linalg.norm(W[:, j])
        if norm > c:
            out[:, j] = W[:, j] * (c / norm)
    return out
