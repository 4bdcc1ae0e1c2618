"""Shared pytest fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
  """Runs the test with jax_enable_x64 on (float64 exactness checks)."""
  with jax.enable_x64(True):
    yield
