"""Reference rows for the benchmarks: the same computations written in PyTorch and in NumPy.

* ``impl="torch"`` — the *peer*: PyTorch on the same device (CPU for the numpy and torch:cpu
  backends, CUDA for cupy and torch:cuda), written as a PyTorch user would: ``torch.nn`` layers,
  autograd and ``torch.optim`` with its default implementation choice.
* ``impl="torch-fused"`` — ``torch.optim.Adam(fused=True)`` where torch supports it, because
  that is the fastest Adam torch has, and the one issue 5 compares the Adam update with.
* ``impl="numpy-by-hand"`` — a plain NumPy training step of the MLP, written here, with the
  obvious in-place tricks a careful NumPy programmer uses (``out=``, ``+=``), and no library.

Each function returns :class:`nnxp.bench.Case` objects, so the same timer runs nnxp, its peers
and its bound. Peer cases carry their own synchronisation (``torch.cuda.synchronize``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nnxp import bench
from nnxp.bench import MODELS, Case

HAS_TORCH = importlib.util.find_spec("torch") is not None

TORCH_ACTIVATIONS: dict[str, Callable[[], Any]] = {}
"""nnxp activation name → a torch module factory (filled when torch is importable)."""


def _torch() -> Any:
    import torch

    return torch


if HAS_TORCH:
    import torch
    from torch import nn

    TORCH_ACTIVATIONS.update({
        "identity": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU, "rrelu": nn.RReLU, "elu": nn.ELU,
        "selu": nn.SELU, "softplus": nn.Softplus, "gelu": nn.GELU,
        "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "silu": nn.SiLU,
        "softmax": lambda: nn.Softmax(dim=1),
    })


def peer_devices(backends: Sequence[str]) -> list[str]:
    """The torch devices ("cpu", "cuda") that the peers must run on for ``backends``."""
    if not HAS_TORCH:
        return []
    devices = sorted({"cuda" if bench.is_gpu(b) else "cpu" for b in backends})
    return [d for d in devices if d == "cpu" or _torch().cuda.is_available()]


def _spec(device: str) -> str:
    return f"torch:{device}"


def _sync(device: str) -> Callable[[], None]:
    if device == "cuda":
        return lambda: _torch().cuda.synchronize()
    return lambda: None


def _randn(shape: tuple[int, ...], seed: int, device: str) -> Any:
    g = np.random.default_rng(seed)
    return torch.from_numpy(g.standard_normal(shape, dtype=np.float32)).to(device)


def _labels_t(n: int, classes: int, seed: int, device: str) -> Any:
    g = np.random.default_rng(seed)
    return torch.from_numpy(g.integers(0, classes, size=n)).to(device)


# ----------------------------------------------------------------------------------------------
# Kernel peers
# ----------------------------------------------------------------------------------------------


def _module_cases(device: str, name: str, make: Callable[[], Any], batch: int, width: int,
                  flops: float | None = None) -> list[Case]:
    """Forward (with autograd recording, as in training) and backward of a torch module."""

    def build_forward() -> Any:
        mod = make().to(device).train()
        x = _randn((batch, width), 1, device).requires_grad_(True)
        return (lambda: None), (lambda _: mod(x))

    def build_backward() -> Any:
        mod = make().to(device).train()
        x = _randn((batch, width), 1, device).requires_grad_(True)
        dy = _randn((batch, width), 2, device)

        def setup() -> Any:
            mod.zero_grad(set_to_none=True)
            x.grad = None
            return mod(x)

        return setup, (lambda out: out.backward(dy))

    size, spec, sync = f"{batch}x{width}", _spec(device), _sync(device)
    return [Case("kernel", name, "forward", size, "torch", spec, build_forward, flops,
                 sync=sync),
            Case("kernel", name, "backward", size, "torch", spec, build_backward,
                 None if flops is None else 2 * flops, sync=sync)]


def _loss_cases(device: str, batch: int, width: int) -> list[Case]:
    functional = torch.nn.functional

    def build_forward() -> Any:
        z, t = _randn((batch, width), 1, device), _labels_t(batch, width, 7, device)
        return (lambda: None), (lambda _: functional.cross_entropy(z, t))

    def build_backward() -> Any:
        z = _randn((batch, width), 1, device).requires_grad_(True)
        t = _labels_t(batch, width, 7, device)

        def setup() -> Any:
            z.grad = None
            return functional.cross_entropy(z, t)

        return setup, (lambda loss: loss.backward())

    size, spec, sync = f"{batch}x{width}", _spec(device), _sync(device)
    return [Case("kernel", "softmax_cross_entropy", "forward", size, "torch", spec,
                 build_forward, sync=sync),
            Case("kernel", "softmax_cross_entropy", "backward", size, "torch", spec,
                 build_backward, sync=sync)]


def torch_optimizer(name: str, params: Any, *, fused: bool = False) -> Any:
    """torch.optim's optimizer for nnxp's ``name``, with torch's defaults (which nnxp follows;
    SGD gets nnxp's default learning rate, since torch's SGD has none before 2.6)."""
    optim = torch.optim
    if name == "sgd":
        return optim.SGD(params, lr=float(bench.make_optimizer("sgd").lr))
    classes = {"adam": optim.Adam, "adamw": optim.AdamW, "rmsprop": optim.RMSprop,
               "adagrad": optim.Adagrad, "nadam": optim.NAdam, "adamax": optim.Adamax,
               "adadelta": optim.Adadelta}
    if name not in classes:
        raise KeyError(name)
    return classes[name](params, fused=True) if fused else classes[name](params)


def _optimizer_cases(device: str, name: str, width: int) -> list[Case]:
    def build(fused: bool) -> Callable[[], Any]:
        def inner() -> Any:
            W = _randn((width, width), 3, device).requires_grad_(True)
            b = _randn((width,), 4, device).requires_grad_(True)
            W.grad, b.grad = _randn((width, width), 5, device), _randn((width,), 6, device)
            opt = torch_optimizer(name, [W, b], fused=fused)
            return (lambda: None), (lambda _: opt.step())
        return inner

    cases = []
    for impl, fused in (("torch", False), ("torch-fused", True)):
        if fused and name == "sgd":
            continue
        try:
            build(fused)()
        except (KeyError, RuntimeError, TypeError, ValueError):
            continue  # no such torch optimizer, or no fused version on this device
        cases.append(Case("kernel", name, "update", f"{width}x{width}", impl, _spec(device),
                          build(fused), sync=_sync(device)))
    return cases


def kernel_peer_cases(device: str, batch: int, width: int) -> list[Case]:
    """The torch rows that match :func:`nnxp.bench.kernel_cases` for one size."""
    nn_ = torch.nn
    cases = _module_cases(device, "dense", lambda: nn_.Linear(width, width), batch, width,
                          2.0 * batch * width * width)
    for name in bench.activation_classes():
        if name in TORCH_ACTIVATIONS:
            cases += _module_cases(device, name, TORCH_ACTIVATIONS[name], batch, width)
    cases += _module_cases(device, "batchnorm", lambda: nn_.BatchNorm1d(width), batch, width)
    cases += _module_cases(device, "dropout", lambda: nn_.Dropout(0.5), batch, width)
    cases += _loss_cases(device, batch, width)
    for name in bench.optimizer_classes():
        cases += _optimizer_cases(device, name, width)
    return cases


# ----------------------------------------------------------------------------------------------
# Model peers
# ----------------------------------------------------------------------------------------------


def torch_mlp(widths: Sequence[int], device: str) -> Any:
    """``nn.Sequential`` of Linear layers with ReLU between them (torch's default init)."""
    torch.manual_seed(0)
    mods: list[Any] = []
    for i in range(len(widths) - 1):
        mods.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods).to(device)


def model_peer_cases(device: str, name: str, opt_name: str) -> list[Case]:
    """Torch step and epoch of MLP ``name`` (plus the fused-Adam step where it exists)."""
    cfg = MODELS[name]
    widths, batch = cfg["widths"], cfg["batch"]
    info = {"optimizer": opt_name, "widths": list(widths), "batch": batch}
    ce = torch.nn.functional.cross_entropy
    size, spec, sync = f"{name}/{opt_name}", _spec(device), _sync(device)

    def build_step(fused: bool) -> Callable[[], Any]:
        def inner() -> Any:
            net = torch_mlp(widths, device)
            opt = torch_optimizer(opt_name, net.parameters(), fused=fused)
            x = _randn((batch, widths[0]), 11, device)
            y = _labels_t(batch, widths[-1], 12, device)

            def run(_: Any) -> Any:
                opt.zero_grad(set_to_none=True)
                loss = ce(net(x), y)
                loss.backward()
                opt.step()
                return loss

            return (lambda: None), run
        return inner

    def build_epoch() -> Any:
        net = torch_mlp(widths, device)
        opt = torch_optimizer(opt_name, net.parameters())
        n = bench.epoch_samples(name)
        X = _randn((n, widths[0]), 11, device)
        Y = _labels_t(n, widths[-1], 12, device)

        def run(_: Any) -> Any:  # what nnxp's fit does: shuffle, batches, loss and accuracy
            order = torch.randperm(n, device=device)
            Xe, Ye = X[order], Y[order]
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            for start in range(0, n, batch):
                xb, yb = Xe[start:start + batch], Ye[start:start + batch]
                opt.zero_grad(set_to_none=True)
                out = net(xb)
                loss = ce(out, yb)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * xb.shape[0]
                correct += (out.detach().argmax(1) == yb).sum()
            return float(loss_sum) / n, int(correct) / n

        return (lambda: None), run

    cases = [Case("step", f"mlp-{name}", "step", size, "torch", spec, build_step(False),
                  bench.step_flops(widths, batch), dict(info), sync=sync),
             Case("epoch", f"mlp-{name}", "epoch", size, "torch", spec, build_epoch, None,
                  {**info, "samples": bench.epoch_samples(name)}, sync=sync)]
    if opt_name != "sgd":
        try:
            build_step(True)()
        except (RuntimeError, TypeError, ValueError, KeyError):
            pass
        else:
            cases.append(Case("step", f"mlp-{name}", "step", size, "torch-fused", spec,
                              build_step(True), bench.step_flops(widths, batch), dict(info),
                              sync=sync))
    return cases


# ----------------------------------------------------------------------------------------------
# The hand-written NumPy step
# ----------------------------------------------------------------------------------------------


class NumpyMLP:
    """A plain-NumPy MLP (ReLU, softmax cross-entropy) trained with SGD or Adam, by hand.

    Written the way a careful NumPy programmer would for speed: biases added and ReLU applied
    in place, the softmax gradient formed in the probability buffer, the ReLU mask multiplied
    in place, and the updates (SGD ``θ -= lr g``; Adam with torch's defaults
    ``lr=1e-3, β=(0.9, 0.999), ε=1e-8``) written into the parameters.
    """

    def __init__(self, widths: Sequence[int], optimizer: str = "sgd", seed: int = 0) -> None:
        g = np.random.default_rng(seed)
        self.params: list[np.ndarray] = []
        for i in range(len(widths) - 1):
            std = np.sqrt(2.0 / widths[i])
            self.params.append((g.standard_normal((widths[i], widths[i + 1])) * std)
                               .astype(np.float32))
            self.params.append(np.zeros(widths[i + 1], dtype=np.float32))
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"the hand-written step knows sgd and adam, not {optimizer!r}")
        self.optimizer = optimizer
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def _update(self, i: int, grad: np.ndarray) -> None:
        p = self.params[i]
        if self.optimizer == "sgd":
            p -= np.float32(0.01) * grad
            return
        b1, b2, lr, eps = 0.9, 0.999, 1e-3, 1e-8
        m, v = self.m[i], self.v[i]
        m *= np.float32(b1)
        m += np.float32(1 - b1) * grad
        v *= np.float32(b2)
        grad *= grad
        grad *= np.float32(1 - b2)
        v += grad
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        denom = np.sqrt(v)
        denom /= np.float32(np.sqrt(c2))
        denom += np.float32(eps)
        p -= np.float32(lr / c1) * (m / denom)

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        n_layers = len(self.params) // 2
        acts = [x]
        h = x
        for i in range(n_layers):
            z = h @ self.params[2 * i]
            z += self.params[2 * i + 1]
            if i < n_layers - 1:
                np.maximum(z, 0, out=z)
            acts.append(z)
            h = z
        z = acts[-1]
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        rows = np.arange(x.shape[0])
        loss = -float(np.mean(np.log(z[rows, y])))
        z[rows, y] -= 1.0
        z /= np.float32(x.shape[0])
        g = z
        self.t += 1
        for i in reversed(range(n_layers)):
            W = self.params[2 * i]
            dW = acts[i].T @ g
            db = g.sum(axis=0)
            if i > 0:
                g_prev = g @ W.T
                g_prev *= acts[i] > 0
            self._update(2 * i, dW)
            self._update(2 * i + 1, db)
            if i > 0:
                g = g_prev
        return loss


def numpy_by_hand_cases(name: str, opt_name: str) -> list[Case]:
    """The hand-written NumPy step of MLP ``name`` (cpu only)."""
    if opt_name not in ("sgd", "adam"):
        return []
    cfg = MODELS[name]
    widths, batch = cfg["widths"], cfg["batch"]

    def build() -> Any:
        net = NumpyMLP(widths, opt_name)
        g = np.random.default_rng(11)
        x = g.standard_normal((batch, widths[0]), dtype=np.float32)
        y = g.integers(0, widths[-1], size=batch)
        return (lambda: None), (lambda _: net.step(x, y))

    return [Case("step", f"mlp-{name}", "step", f"{name}/{opt_name}", "numpy-by-hand", "numpy",
                 build, bench.step_flops(widths, batch),
                 {"optimizer": opt_name, "widths": list(widths), "batch": batch})]
