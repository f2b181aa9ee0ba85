"""Independent float64 NumPy references for the optimizers, schedules and clipping.

Written from the papers' / torch documentation's equations, one parameter array at a time, with
no code shared with nnxp (this module never imports it). ``trajectory(name, theta0, grads, **opts)``
replays a fixed gradient sequence and returns the parameter after every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _sgd(theta0, grads, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    theta, buf, out = theta0.copy(), None, []
    for g in grads:
        g = g + weight_decay * theta
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1.0 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        theta = theta - lr * g
        out.append(theta.copy())
    return out


def _adagrad(theta0, grads, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
             initial_accumulator_value=0.0, eps=1e-10):
    theta, out = theta0.copy(), []
    acc = np.full_like(theta, initial_accumulator_value)
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * theta
        acc = acc + g**2
        theta = theta - lr / (1.0 + (t - 1) * lr_decay) * g / (np.sqrt(acc) + eps)
        out.append(theta.copy())
    return out


def _rmsprop(theta0, grads, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
             centered=False):
    theta, out = theta0.copy(), []
    v, mean_g, buf = np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta)
    for g in grads:
        g = g + weight_decay * theta
        v = alpha * v + (1 - alpha) * g**2
        if centered:
            mean_g = alpha * mean_g + (1 - alpha) * g
            denom = np.sqrt(v - mean_g**2) + eps
        else:
            denom = np.sqrt(v) + eps
        if momentum > 0:
            buf = momentum * buf + g / denom
            theta = theta - lr * buf
        else:
            theta = theta - lr * g / denom
        out.append(theta.copy())
    return out


def _adadelta(theta0, grads, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    theta, out = theta0.copy(), []
    eg2, edx2 = np.zeros_like(theta), np.zeros_like(theta)
    for g in grads:
        g = g + weight_decay * theta
        eg2 = rho * eg2 + (1 - rho) * g**2
        dx = np.sqrt(edx2 + eps) / np.sqrt(eg2 + eps) * g
        edx2 = rho * edx2 + (1 - rho) * dx**2
        theta = theta - lr * dx
        out.append(theta.copy())
    return out


def _adam(theta0, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
          decoupled=False):
    b1, b2 = betas
    theta, out = theta0.copy(), []
    m, v, vmax = np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            theta = theta * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat = m / (1 - b1**t)
        vmax = np.maximum(vmax, v)
        v_hat = (vmax if amsgrad else v) / (1 - b2**t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(theta.copy())
    return out


def _adamw(theta0, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
           amsgrad=False):
    return _adam(theta0, grads, lr, betas, eps, weight_decay, amsgrad, decoupled=True)


def _adamax(theta0, grads, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    b1, b2 = betas
    theta, out = theta0.copy(), []
    m, u = np.zeros_like(theta), np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * theta
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g) + eps)
        theta = theta - lr / (1 - b1**t) * m / u
        out.append(theta.copy())
    return out


def _nadam(theta0, grads, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
           momentum_decay=4e-3, decoupled_weight_decay=False):
    b1, b2 = betas
    theta, out = theta0.copy(), []
    m, v, prod = np.zeros_like(theta), np.zeros_like(theta), 1.0

    def mu(t):
        return b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))

    for t, g in enumerate(grads, start=1):
        if decoupled_weight_decay:
            theta = theta * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * theta
        prod *= mu(t)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        v_hat = v / (1 - b2**t)
        direction = ((1 - mu(t)) / (1 - prod) * g
                     + mu(t + 1) / (1 - prod * mu(t + 1)) * m)
        theta = theta - lr * direction / (np.sqrt(v_hat) + eps)
        out.append(theta.copy())
    return out


REFERENCES = {
    "SGD": _sgd, "Adagrad": _adagrad, "RMSprop": _rmsprop, "Adadelta": _adadelta,
    "Adam": _adam, "AdamW": _adamw, "Adamax": _adamax, "NAdam": _nadam,
}


def trajectory(name: str, theta0: np.ndarray, grads: Sequence[np.ndarray],
               **options) -> list[np.ndarray]:
    """The parameter after each of ``len(grads)`` steps of optimizer ``name`` (float64)."""
    return REFERENCES[name](np.asarray(theta0, dtype=np.float64),
                            [np.asarray(g, dtype=np.float64) for g in grads], **options)


# ----------------------------------------------------------------------------------------------
# Clipping
# ----------------------------------------------------------------------------------------------


def clip_by_norm(grads: Sequence[np.ndarray], max_norm: float, norm_type: float = 2.0):
    """(clipped gradients, total norm) with torch's clip_grad_norm_ rule."""
    flat = np.concatenate([np.ravel(g) for g in grads])
    total = np.max(np.abs(flat)) if math.isinf(norm_type) else np.sum(
        np.abs(flat) ** norm_type) ** (1 / norm_type)
    scale = min(1.0, max_norm / (total + 1e-6))
    return [g * scale for g in grads], float(total)


# ----------------------------------------------------------------------------------------------
# Learning-rate schedules, closed forms
# ----------------------------------------------------------------------------------------------


def lr_step(base: float, epoch: int, step_size: int, gamma: float) -> float:
    return base * gamma ** (epoch // step_size)


def lr_multistep(base: float, epoch: int, milestones: Sequence[int], gamma: float) -> float:
    return base * gamma ** sum(1 for m in milestones if m <= epoch)


def lr_exponential(base: float, epoch: int, gamma: float) -> float:
    return base * gamma**epoch


def lr_cosine(base: float, epoch: int, t_max: int, eta_min: float) -> float:
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * epoch / t_max)) / 2


def lr_linear_warmup(base: float, epoch: int, warmup: int, start_factor: float) -> float:
    if epoch >= warmup:
        return base
    return base * (start_factor + (1 - start_factor) * epoch / warmup)
