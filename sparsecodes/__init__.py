"""sparsecodes: variable-length sparse codes from adaptive sparse autoencoders, trained, exported, served."""

__version__ = "0.1.0"
