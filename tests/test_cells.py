"""Tests for urnn_jax.cells: the RNNCellBase contract and the orthogonal cell."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import urnn_jax
from urnn_jax import orthogonal


@pytest.mark.parametrize("cell_cls", [urnn_jax.RNNCell, urnn_jax.OrthogonalRNNCell])
def test_cell_contract(cell_cls):
  cell = cell_cls(7)
  assert isinstance(cell, nn.RNNCellBase)
  assert cell.num_feature_axes == 1
  carry = cell.initialize_carry(jax.random.key(0), (4, 3))
  assert carry.shape == (4, 7)
  np.testing.assert_array_equal(carry, 0)
  x = jnp.ones((4, 3))
  variables = cell.init(jax.random.key(1), carry, x)
  new_carry, y = cell.apply(variables, carry, x)
  assert new_carry.shape == y.shape == (4, 7)
  np.testing.assert_array_equal(new_carry, y)


def test_one_step_is_eq_1(x64):
  cell = urnn_jax.RNNCell(3, activation="tanh", param_dtype=jnp.float64)
  h = jnp.array([[0.1, -0.2, 0.3]])
  x = jnp.array([[1.0, 2.0]])
  v = cell.init(jax.random.key(0), h, x)
  p = v["params"]
  W, F, b = p["recurrent_kernel"].T, p["input"]["kernel"].T, p["input"]["bias"]
  expected = np.tanh(np.asarray(W) @ np.asarray(h[0]) + np.asarray(F) @ np.asarray(x[0]) + np.asarray(b))
  np.testing.assert_allclose(cell.apply(v, h, x)[0][0], expected, atol=1e-12)


def test_project_inputs_with_and_without_separate_bias(x64):
  cell = urnn_jax.RNNCell(3, bias_init=nn.initializers.normal(1.0), param_dtype=jnp.float64)
  x = jax.random.normal(jax.random.key(1), (2, 5, 4), jnp.float64)
  v = cell.init(jax.random.key(0), jnp.zeros((2, 3)), x[:, 0])
  F, b = np.asarray(v["params"]["input"]["kernel"]), np.asarray(v["params"]["input"]["bias"])
  assert np.all(b != 0)
  for custom in (False, True):
    full = cell.apply(v, x, custom_gradient=custom, method="project_inputs")
    proj, bias = cell.apply(v, x, custom_gradient=custom, separate_bias=True,
                            method="project_inputs")
    np.testing.assert_allclose(full, np.asarray(x) @ F + b, rtol=0, atol=1e-13)
    np.testing.assert_allclose(proj, np.asarray(x) @ F, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(bias, b)


def test_orthogonal_cell_is_initialised_orthogonal():
  cell = urnn_jax.OrthogonalRNNCell(32)
  v = urnn_jax.Recurrent(cell).init(jax.random.key(0), jnp.ones((1, 3, 2)))
  k = v["params"]["cell"]["recurrent_kernel"]
  assert float(orthogonal.orthogonality_error(k)) < 1e-5
  # Haar, not the identity or a fixed matrix: different keys differ.
  v2 = urnn_jax.Recurrent(cell).init(jax.random.key(1), jnp.ones((1, 3, 2)))
  assert not np.allclose(k, v2["params"]["cell"]["recurrent_kernel"])


def test_injectable_initialisers():
  cell = urnn_jax.RNNCell(
      4,
      recurrent_kernel_init=urnn_jax.initializers.identity(0.5),
      kernel_init=nn.initializers.ones,
      bias_init=nn.initializers.constant(0.25),
  )
  v = urnn_jax.Recurrent(cell).init(jax.random.key(0), jnp.ones((1, 3, 2)))
  np.testing.assert_array_equal(v["params"]["cell"]["recurrent_kernel"], 0.5 * np.eye(4))
  np.testing.assert_array_equal(v["params"]["cell"]["input"]["kernel"], 1.0)
  np.testing.assert_array_equal(v["params"]["cell"]["input"]["bias"], 0.25)


@pytest.mark.parametrize("parametrization", ["expm", "cayley"])
def test_parametrised_cell_kernel_is_orthogonal_for_any_generator(parametrization):
  cell = urnn_jax.OrthogonalRNNCell(
      8, parametrization=parametrization, generator_init=nn.initializers.normal(1.0)
  )
  layer = urnn_jax.Recurrent(cell)
  v = layer.init(jax.random.key(0), jnp.ones((1, 3, 2)))
  assert "recurrent_generator" in v["params"]["cell"]
  assert "recurrent_kernel" not in v["params"]["cell"]
  k = layer.apply(v, method=lambda m: m.cell.transition_kernel())
  assert float(orthogonal.orthogonality_error(k)) < 1e-5


def test_rebase_keeps_the_kernel(x64):
  cell = urnn_jax.OrthogonalRNNCell(
      6, parametrization="expm", generator_init=nn.initializers.normal(0.5), param_dtype=jnp.float64
  )
  layer = urnn_jax.Recurrent(cell)
  v = layer.init(jax.random.key(0), jnp.ones((1, 3, 2)))
  kernel = lambda v: layer.apply(v, method=lambda m: m.cell.transition_kernel())
  params, consts = urnn_jax.rebase(v["params"]["cell"], v["constants"]["cell"], "expm")
  v2 = {"params": {"cell": params}, "constants": {"cell": consts}}
  np.testing.assert_allclose(kernel(v2), kernel(v), atol=1e-12)
  np.testing.assert_array_equal(params["recurrent_generator"], 0.0)


def test_cell_errors():
  x = jnp.ones((1, 2))
  with pytest.raises(ValueError, match="features must be a positive int"):
    urnn_jax.RNNCell(0).init(jax.random.key(0), jnp.zeros((1, 0)), x)
  with pytest.raises(ValueError, match="activation='gelu'"):
    urnn_jax.RNNCell(3, activation="gelu").init(jax.random.key(0), jnp.zeros((1, 3)), x)
  with pytest.raises(ValueError, match="parametrization='householder'"):
    urnn_jax.OrthogonalRNNCell(3, parametrization="householder").init(
        jax.random.key(0), jnp.zeros((1, 3)), x
    )
  with pytest.raises(ValueError, match="parametrization"):
    urnn_jax.rebase({}, {}, "svd")
