"""Sparse autoencoder kinds. ``registry`` maps names to classes; ``base`` is the shared interface."""

from sparsecodes.train.models.base import Progress, SAEConfig, SparseAutoencoder, StepOutput
from sparsecodes.train.models.registry import build, kinds, make_config, model_class

__all__ = [
    "Progress",
    "SAEConfig",
    "SparseAutoencoder",
    "StepOutput",
    "build",
    "kinds",
    "make_config",
    "model_class",
]
