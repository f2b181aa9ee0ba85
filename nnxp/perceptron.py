"""Rosenblatt's perceptron (1958): one unit with a step activation, trained by its own rule.

The unit computes ``z = w·x + b`` and fires, ``ŷ = 1``, when ``z > 0`` (``ŷ = 0`` otherwise, so
``z = 0`` counts as the negative class). Training visits the samples one at a time and applies

    w ← w + lr · (y − ŷ) · x,        b ← b + lr · (y − ŷ)

which changes nothing when the unit is right and moves the hyperplane towards a misclassified
sample otherwise. This is *not* gradient descent: the step function has derivative 0 almost
everywhere, so no gradient reaches ``w``; the rule is an error-correction procedure.

Convergence (Novikoff, 1962): if ``‖(x, 1)‖ ≤ R`` for every sample and some unit vector ``u``
separates the labelled set with margin ``γ`` — ``s · u·(x, 1) ≥ γ`` with ``s = ±1`` the label —
then, from ``w = 0, b = 0``, the rule makes at most ``(R/γ)²`` updates in total, whatever the
order of the samples and whatever ``lr > 0``. On a set that no hyperplane separates (XOR) it
never stops making mistakes; :attr:`Perceptron.converged_` then stays False.

The functions at the top are the kernels (pure, namespace passed in); :class:`Perceptron` holds
the state and the loop.
"""

from __future__ import annotations

import warnings
from typing import Any

from . import backend
from .random import Generator
from .typing import Array
from .validation import check_features, check_positive, to_backend


class ConvergenceWarning(UserWarning):
    """``Perceptron.fit`` reached ``max_epochs`` with mistakes left in the last epoch."""


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


def perceptron_decision(X: Array, w: Array, b: Array) -> Array:
    """``z = X w + b``: X (n, d), w (d,), b 0-d → z (n,)."""
    return X @ w + b


def step(z: Array, *, xp: Any) -> Array:
    """The perceptron's threshold ``ŷ = 1[z > 0]`` in ``z``'s dtype (0 at ``z = 0``)."""
    return xp.astype(z > 0, z.dtype)


def rosenblatt_update(
    x: Array, t: Array, w: Array, b: Array, *, lr: float, xp: Any
) -> tuple[Array, Array, Array]:
    """One step of Rosenblatt's rule on one sample.

    ``ŷ = 1[w·x + b > 0]``, ``e = t − ŷ ∈ {−1, 0, 1}``,
    ``w ← w + lr · e · x``, ``b ← b + lr · e``.

    Parameters
    ----------
    x : (d,) sample;  t : 0-d target in {0, 1} (in ``x``'s dtype)
    w : (d,) weights;  b : 0-d bias

    Returns
    -------
    The new ``w`` (d,) and ``b`` (0-d), and ``|e|`` (0-d: 1 for a mistake, 0 otherwise).
    """
    z = xp.sum(x * w) + b
    err = t - step(z, xp=xp)
    delta = lr * err
    return w + delta * x, b + delta, xp.abs(err)


# ----------------------------------------------------------------------------------------------
# The estimator
# ----------------------------------------------------------------------------------------------


class Perceptron:
    """A single threshold unit trained by Rosenblatt's learning rule, on any backend.

    Parameters
    ----------
    lr
        Learning rate (> 0). From zero initial weights it only rescales ``w`` and ``b``: the
        predictions, the mistakes and the number of epochs do not depend on it.
    max_epochs
        Passes over the data at most; training stops after the first epoch without a mistake.
    shuffle
        Visit the samples in a new random order each epoch (from ``seed``); otherwise in order.
    seed
        Seed of the visiting order (the same order on every backend).
    dtype
        Dtype of the weights and of the data inside ``fit``, ``"float32"`` by default.

    Attributes
    ----------
    coef_ : (n_features,) array — ``w``;  intercept_ : 0-d array — ``b``
    converged_ : bool — an epoch went by without a mistake (the training set is separated)
    n_epochs_ : int — epochs run, the final mistake-free epoch included
    n_mistakes_ : int — updates made in total (bounded by ``(R/γ)²``, see the module docstring)
    mistakes_per_epoch_ : list[int]
    classes_ : tuple — ``(0, 1)`` or ``(-1, 1)``, the label coding seen by ``fit``, which
        ``predict`` answers in

    Notes
    -----
    Labels may be ``{0, 1}`` (or booleans) or ``{−1, +1}``; the latter are mapped to ``{0, 1}``
    inside, so both codings train identically (the ``{−1, +1}`` form of the rule,
    ``w ← w + lr · y · x`` on mistakes, is the same rule with ``lr`` doubled).
    """

    def __init__(
        self,
        *,
        lr: float = 1.0,
        max_epochs: int = 100,
        shuffle: bool = True,
        seed: int | None = None,
        dtype: Any = "float32",
    ) -> None:
        self.lr = float(check_positive(lr, argument="lr"))
        self.max_epochs = check_positive(max_epochs, argument="max_epochs", integer=True)
        self.shuffle = shuffle
        self.seed = seed
        info = backend.get_backend()
        self.xp, self.device = info.xp, info.device
        self.dtype = backend.resolve_dtype(dtype, self.xp)
        self.coef_: Array | None = None
        self.intercept_: Array | None = None
        self.converged_ = False
        self.n_epochs_ = 0
        self.n_mistakes_ = 0
        self.mistakes_per_epoch_: list[int] = []
        self.classes_: tuple[int, int] = (0, 1)

    # --- data checks ----------------------------------------------------------------------

    def _targets(self, y: Any, n_samples: int) -> tuple[Array, tuple[int, int]]:
        """``y`` as {0, 1} targets in the model dtype, and the coding it came in."""
        xp = self.xp
        y = to_backend(y, argument="y", xp=xp, device=self.device)
        if y.ndim != 1 or y.shape[0] != n_samples:
            raise ValueError(f"y must be 1-D with one label per sample ({n_samples}), got shape "
                             f"{tuple(y.shape)}")
        if xp.isdtype(y.dtype, "bool"):
            y = xp.astype(y, xp.int64)
        yf = xp.astype(y, xp.float64 if self.dtype == xp.float64 else xp.float32)
        zero_one = backend.to_float(xp.all((yf == 0.0) | (yf == 1.0)))
        signed = backend.to_float(xp.all((yf == -1.0) | (yf == 1.0)))
        if not (zero_one or signed):
            seen = sorted({float(v) for v in backend.to_numpy(y).ravel().tolist()})[:6]
            raise ValueError(f"y must hold binary labels in {{0, 1}} or {{-1, 1}}, got the "
                             f"values {seen}")
        classes = (0, 1) if zero_one else (-1, 1)
        return xp.astype(yf > 0.0, self.dtype), classes

    def _check_X(self, X: Any, n_features: int | None) -> Array:
        return check_features(X, n_features=n_features, dtype=self.dtype, xp=self.xp,
                              device=self.device)

    # --- training and prediction -----------------------------------------------------------

    def fit(self, X: Any, y: Any) -> Perceptron:
        """Train from ``w = 0, b = 0`` until an epoch makes no mistake or ``max_epochs`` pass.

        Parameters
        ----------
        X : (n_samples, n_features) array-like
        y : (n_samples,) labels in {0, 1} or {−1, 1}

        Returns
        -------
        self. Warns :class:`ConvergenceWarning` when ``max_epochs`` end with mistakes left
        (always, for a set that is not linearly separable).
        """
        xp = self.xp
        X = self._check_X(X, None)
        t, self.classes_ = self._targets(y, X.shape[0])
        n, d = X.shape
        w = xp.zeros((d,), dtype=self.dtype, device=self.device)
        b = xp.zeros((), dtype=self.dtype, device=self.device)
        rng = Generator(self.seed)
        self.mistakes_per_epoch_ = []
        self.converged_ = False
        for _ in range(self.max_epochs):
            order = rng.host_permutation(n).tolist() if self.shuffle else range(n)
            mistakes = xp.zeros((), dtype=self.dtype, device=self.device)
            for i in order:
                w, b, miss = rosenblatt_update(X[i, ...], t[i], w, b, lr=self.lr, xp=xp)
                mistakes = mistakes + miss
            count = int(backend.to_float(mistakes))
            self.mistakes_per_epoch_.append(count)
            if count == 0:
                self.converged_ = True
                break
        self.coef_, self.intercept_ = w, b
        self.n_epochs_ = len(self.mistakes_per_epoch_)
        self.n_mistakes_ = sum(self.mistakes_per_epoch_)
        if not self.converged_:
            warnings.warn(
                f"Perceptron did not converge in max_epochs={self.max_epochs} epochs "
                f"({self.mistakes_per_epoch_[-1]} mistake(s) in the last one); the data may not "
                "be linearly separable (XOR is not), or more epochs are needed",
                ConvergenceWarning, stacklevel=2)
        return self

    def _fitted(self) -> tuple[Array, Array]:
        if self.coef_ is None or self.intercept_ is None:
            raise RuntimeError("this Perceptron is not fitted yet: call fit(X, y) first")
        return self.coef_, self.intercept_

    def decision_function(self, X: Any) -> Array:
        """``z = X w + b`` (n_samples,): positive on the side of class 1."""
        w, b = self._fitted()
        return perceptron_decision(self._check_X(X, w.shape[0]), w, b)

    def predict(self, X: Any) -> Array:
        """Labels (int64, n_samples) in the coding ``fit`` saw: {0, 1} or {−1, 1}."""
        xp = self.xp
        fired = xp.astype(step(self.decision_function(X), xp=xp), xp.int64)
        return fired if self.classes_ == (0, 1) else 2 * fired - 1

    def score(self, X: Any, y: Any) -> float:
        """Accuracy of :meth:`predict` on ``(X, y)``."""
        xp = self.xp
        X = self._check_X(X, self._fitted()[0].shape[0])
        t, _ = self._targets(y, X.shape[0])
        hits = step(perceptron_decision(X, *self._fitted()), xp=xp) == t
        return backend.to_float(xp.mean(xp.astype(hits, xp.float64)))

    def __repr__(self) -> str:
        return (f"Perceptron(lr={self.lr}, max_epochs={self.max_epochs}, "
                f"shuffle={self.shuffle}, seed={self.seed})")
