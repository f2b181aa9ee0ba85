"""Layers: thin stateful objects over the kernels, one module per family.

See :mod:`nnxp.layers.core` for the layer protocol every layer follows.
"""

from .activations import ReLU
from .core import BackwardError, Dense, Layer

__all__ = ["BackwardError", "Dense", "Layer", "ReLU"]
