"""Training: sparse autoencoder kinds, data sets, the trainer, metrics and reports (PyTorch)."""
