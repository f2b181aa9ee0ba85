"""Loss objects: a kernel pair plus what the model needs to know about the task.

A loss object offers ``forward(outputs, targets) -> (0-d loss, cache)``, ``backward(cache) ->
∂L/∂outputs``, ``check_targets`` (validation with clear messages) and, for
classifiers, ``predict_proba`` (the probabilities behind the outputs).
"""

from __future__ import annotations

from typing import Any

from . import validation
from .kernels import losses as k

Array = Any


class Loss:
    """Base class of the loss objects in :data:`LOSSES`."""

    name = "loss"
    is_classifier = False

    def forward(self, outputs: Array, targets: Array, *, xp: Any) -> tuple[Array, Any]:
        raise NotImplementedError

    def backward(self, cache: Any, *, xp: Any) -> Array:
        raise NotImplementedError

    def check_targets(
        self, y: Any, n_outputs: int, *, xp: Any, device: Any, n_samples: int | None = None
    ) -> Array:
        """Validate ``y`` and return it on the backend in the form the kernel expects."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SoftmaxCrossEntropy(Loss):
    """Softmax then cross-entropy on integer labels, fused; mean over the batch.

    ``L = −(1/N) Σ_i log softmax(z_i)_{y_i}``, gradient ``(softmax(z) − onehot(y)) / N``.
    """

    name = "softmax_cross_entropy"
    is_classifier = True

    def forward(self, outputs: Array, targets: Array, *, xp: Any) -> tuple[Array, Any]:
        return k.softmax_cross_entropy(outputs, targets, xp=xp)

    def backward(self, cache: Any, *, xp: Any) -> Array:
        return k.softmax_cross_entropy_backward(cache, xp=xp)

    def check_targets(
        self, y: Any, n_outputs: int, *, xp: Any, device: Any, n_samples: int | None = None
    ) -> Array:
        return validation.check_class_labels(y, n_outputs, xp=xp, device=device,
                                             n_samples=n_samples)

    def predict_proba(self, outputs: Array, *, xp: Any) -> Array:
        return k.softmax(outputs, xp=xp)


LOSSES: dict[str, type[Loss]] = {
    "softmax_cross_entropy": SoftmaxCrossEntropy,
}
"""Losses by name."""


def get_loss(loss: str | Loss) -> Loss:
    """A loss object from a name in :data:`LOSSES` or an instance."""
    if isinstance(loss, Loss):
        return loss
    try:
        return LOSSES[loss]()
    except (KeyError, TypeError):
        raise ValueError(
            f"loss={loss!r} is not a known loss; valid names are {', '.join(sorted(LOSSES))}"
        ) from None
