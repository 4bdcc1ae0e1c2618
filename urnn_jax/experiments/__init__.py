"""Experiment logic behind the binaries in ``train/`` (one module per experiment)."""
