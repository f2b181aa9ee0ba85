"""Independent float64 NumPy references for the activations. Never imports nnxp.

Each function works on float64 NumPy arrays and takes a different route from the kernels where
one exists: ``np.where`` on the textbook piecewise definitions instead of masks, ``math.erf``
for GELU, the explicit softmax Jacobian instead of the Jacobian-vector product, a loop over the
pieces for maxout. Derivatives are written from the input ``x`` as ``(x, dy) -> dx``.
"""

from __future__ import annotations

import math

import numpy as np

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

_erf = np.vectorize(math.erf, otypes=[np.float64])


def identity(x):
    return x.copy()


def identity_grad(x, dy):
    return dy.copy()


def step(x):
    return np.heaviside(x, 0.5)


def sign(x):
    return np.sign(x)


def zero_grad(x, dy):
    return np.zeros_like(dy)


def piecewise_linear(x):
    return np.where(x <= -0.5, 0.0, np.where(x >= 0.5, 1.0, x + 0.5))


def piecewise_linear_grad(x, dy):
    return np.where(np.abs(x) < 0.5, dy, 0.0)


def sigmoid(x):
    # the textbook formula, split by sign only to keep exp's argument from overflowing
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    out[~pos] = np.exp(x[~pos]) / (1.0 + np.exp(x[~pos]))
    return out


def sigmoid_grad(x, dy):
    s = sigmoid(x)
    return dy * s * (1.0 - s)


def tanh(x):
    return np.tanh(x)


def tanh_grad(x, dy):
    return dy / np.cosh(x) ** 2


def relu(x):
    return np.where(x > 0, x, 0.0)


def relu_grad(x, dy):
    return np.where(x > 0, dy, 0.0)


def leaky_relu(x, slope):
    return np.where(x > 0, x, slope * x)


def leaky_relu_grad(x, dy, slope):
    return np.where(x > 0, dy, slope * dy)


def prelu_alpha_grad(x, dy, alpha):
    """dα for α of shape (1,) or (features,): Σ over the batch of dy · x where x < 0."""
    contrib = np.where(x < 0, dy * x, 0.0).reshape(-1, x.shape[-1]).sum(axis=0)
    return contrib.sum(keepdims=True) if alpha.shape == (1,) else contrib


def elu(x, alpha):
    return np.where(x > 0, x, alpha * (np.exp(np.minimum(x, 0.0)) - 1.0))


def elu_grad(x, dy, alpha):
    return np.where(x > 0, dy, dy * alpha * np.exp(np.minimum(x, 0.0)))


def selu(x):
    return SELU_SCALE * elu(x, SELU_ALPHA)


def selu_grad(x, dy):
    return SELU_SCALE * elu_grad(x, dy, SELU_ALPHA)


def softplus(x, beta):
    return np.logaddexp(0.0, beta * x) / beta


def softplus_grad(x, dy, beta):
    return dy * sigmoid(beta * x)


def gelu_exact(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_exact_grad(x, dy):
    cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dy * (cdf + x * pdf)


def gelu_tanh(x):
    k = math.sqrt(2.0 / math.pi)
    return 0.5 * x * (1.0 + np.tanh(k * (x + 0.044715 * x**3)))


def gelu_tanh_grad(x, dy):
    k = math.sqrt(2.0 / math.pi)
    inner = k * (x + 0.044715 * x**3)
    sech2 = 1.0 / np.cosh(inner) ** 2
    return dy * (0.5 * (1.0 + np.tanh(inner)) + 0.5 * x * sech2 * k * (1.0 + 0.134145 * x**2))


def silu(x):
    return x * sigmoid(x)


def silu_grad(x, dy):
    s = sigmoid(x)
    return dy * (s + x * s * (1.0 - s))


def softmax(x):
    """Row by row over the last axis of a 2-D array."""
    out = np.empty_like(x)
    for i, row in enumerate(x):
        e = np.exp(row - row.max())
        out[i] = e / e.sum()
    return out


def softmax_grad(x, dy):
    """dx = Jᵀ dy with the full Jacobian J = diag(s) − s sᵀ of each row."""
    s = softmax(x)
    dx = np.empty_like(x)
    for i in range(x.shape[0]):
        jac = np.diag(s[i]) - np.outer(s[i], s[i])
        dx[i] = jac.T @ dy[i]
    return dx


def maxout(x, W, b):
    """y[n, j] = max over pieces p of Σ_i x[n, i] W[i, j, p] + b[j, p], piece by piece."""
    k = W.shape[2]
    z = np.stack([x @ W[:, :, p] + b[:, p] for p in range(k)], axis=-1)
    return z.max(axis=-1)


def maxout_grads(x, W, b, dy):
    """(dx, dW, db) routing dy[n, j] to the piece that attains the max (no ties in the tests)."""
    k = W.shape[2]
    z = np.stack([x @ W[:, :, p] + b[:, p] for p in range(k)], axis=-1)
    win = z.argmax(axis=-1)
    dx = np.zeros_like(x)
    dW = np.zeros_like(W)
    db = np.zeros_like(b)
    for n in range(x.shape[0]):
        for j in range(W.shape[1]):
            p = win[n, j]
            dx[n] += dy[n, j] * W[:, j, p]
            dW[:, j, p] += dy[n, j] * x[n]
            db[j, p] += dy[n, j]
    return dx, dW, db
