"""Shared pytest fixtures."""

import os

# JAX's CPU SVD/solve go through SciPy's OpenBLAS; its thread pool thrashes on
# small matrices on a 2-core, shared machine (100 ms vs 0.7 ms for a 64x64
# SVD). Set before anything imports SciPy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """Runs the test with jax_enable_x64 on (float64 exactness checks)."""
  with jax.enable_x64(True):
    yield
