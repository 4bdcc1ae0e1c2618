"""Tests of the parametrised OrthogonalRNNCell: K = base @ map(skew(A)) and rebase."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see tests/test_orthogonal.py

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg  # noqa: E402

import urnn_jax  # noqa: E402
from urnn_jax import optim, orthogonal  # noqa: E402
from reference import simulate_loop  # noqa: E402

KEY = jax.random.key(0)
PARAMETRIZATIONS = ["expm", "cayley"]


def _init_cell(parametrization, n=6, m=3, param_dtype=jnp.float32):
  cell = urnn_jax.OrthogonalRNNCell(n, parametrization=parametrization, param_dtype=param_dtype)
  variables = cell.init(KEY, jnp.zeros((1, n), param_dtype), jnp.zeros((1, m), param_dtype))
  return cell, variables


def _with_generator(variables, a):
  params = dict(variables["params"], recurrent_generator=a)
  return {"params": params, "constants": variables["constants"]}


def _map_ref(parametrization, a):
  """scipy reference of map(skew(A))."""
  s = 0.5 * (a - a.conj().T)
  if parametrization == "expm":
    return scipy.linalg.expm(s)
  eye = np.eye(a.shape[0])
  return scipy.linalg.solve(eye - s / 2, eye + s / 2)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_kernel_is_base_times_map_of_skew_generator(x64, parametrization):
  cell, variables = _init_cell(parametrization, param_dtype=jnp.float64)
  assert set(variables) == {"params", "constants"}
  assert "recurrent_kernel" not in variables["params"]
  base = np.asarray(variables["constants"]["base"])
  assert orthogonal.orthogonality_error(base) < 1e-12
  a = np.random.default_rng(0).standard_normal((6, 6))
  k = cell.apply(_with_generator(variables, jnp.asarray(a)), method="transition_kernel")
  np.testing.assert_allclose(np.asarray(k), base @ _map_ref(parametrization, a), rtol=0, atol=1e-10)
  assert orthogonal.orthogonality_error(k) < 1e-12


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_zero_generator_gives_the_base_and_any_generator_is_orthogonal(parametrization):
  cell, variables = _init_cell(parametrization, n=32)
  np.testing.assert_array_equal(variables["params"]["recurrent_generator"], np.zeros((32, 32)))
  k0 = cell.apply(variables, method="transition_kernel")
  np.testing.assert_array_equal(k0, variables["constants"]["base"])
  for scale in (0.1, 3.0):
    a = scale * jax.random.normal(jax.random.key(1), (32, 32))
    k = cell.apply(_with_generator(variables, a), method="transition_kernel")
    assert orthogonal.orthogonality_error(k) < 1e-5
    assert np.abs(np.asarray(k - k0)).max() > 1e-2


def test_complex_parametrization_is_unitary():
  cell, variables = _init_cell("expm", n=8, param_dtype=jnp.complex64)
  a = (jax.random.normal(KEY, (8, 8)) + 1j * jax.random.normal(jax.random.key(1), (8, 8)))
  k = cell.apply(_with_generator(variables, a.astype(jnp.complex64)), method="transition_kernel")
  assert k.dtype == jnp.complex64
  assert np.max(np.abs(np.imag(np.asarray(k)))) > 1e-2
  assert orthogonal.orthogonality_error(k) < 1e-5


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_recurrent_layer_matches_reference_loop(x64, parametrization):
  n, m = 5, 2
  cell = urnn_jax.OrthogonalRNNCell(n, parametrization=parametrization, param_dtype=jnp.float64)
  x = jax.random.normal(KEY, (3, 9, m), jnp.float64)
  layer = urnn_jax.Recurrent(cell)
  variables = layer.init(KEY, x)
  a = 0.5 * jax.random.normal(jax.random.key(2), (n, n), jnp.float64)
  variables["params"]["cell"]["recurrent_generator"] = a
  out = layer.apply(variables, x)
  cell_vars = {"params": variables["params"]["cell"], "constants": variables["constants"]["cell"]}
  k = np.asarray(cell.apply(cell_vars, method="transition_kernel"))
  inp = variables["params"]["cell"]["input"]
  ref = simulate_loop(k.T, np.asarray(inp["kernel"]).T, inp["bias"], np.eye(n), np.zeros(n), x)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-10)
  # flax.linen.RNN gives the same, once it broadcasts the constants collection.
  rnn = nn.RNN(cell, variable_broadcast=("params", "constants"))
  np.testing.assert_allclose(np.asarray(rnn.apply(variables, x)), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_generator_gradient_matches_finite_differences(x64, parametrization):
  model = urnn_jax.SequenceRegressor(
      urnn_jax.OrthogonalRNNCell(4, parametrization=parametrization, activation="tanh", param_dtype=jnp.float64),
      1,
  )
  x = jax.random.normal(KEY, (2, 6, 2), jnp.float64)
  y = jax.random.normal(jax.random.key(1), (2, 6, 1), jnp.float64)
  variables = model.init(KEY, x)
  params, consts = variables["params"], variables["constants"]
  params["rnn"]["cell"]["recurrent_generator"] = 0.3 * jax.random.normal(jax.random.key(3), (4, 4), jnp.float64)

  def loss_of_a(a):
    p = jax.tree.map(lambda v: v, params)
    p["rnn"]["cell"]["recurrent_generator"] = a
    return jnp.mean((model.apply({"params": p, "constants": consts}, x) - y) ** 2)

  a0 = params["rnn"]["cell"]["recurrent_generator"]
  g = jax.grad(loss_of_a)(a0)
  d = jax.random.normal(jax.random.key(4), (4, 4), jnp.float64)
  h = 1e-6
  fd = (loss_of_a(a0 + h * d) - loss_of_a(a0 - h * d)) / (2 * h)
  assert abs(float(jnp.vdot(g, d))) > 1e-4
  np.testing.assert_allclose(float(jnp.vdot(g, d)), float(fd), rtol=1e-6, atol=0)
  # Only the skew part of A matters: the gradient is skew-symmetric.
  np.testing.assert_allclose(np.asarray(g), -np.asarray(g).T, rtol=0, atol=1e-14)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_plain_adam_trains_and_stays_orthogonal(parametrization):
  model = urnn_jax.SequenceRegressor(urnn_jax.OrthogonalRNNCell(8, parametrization=parametrization), 2)
  x = jax.random.normal(KEY, (4, 20, 2))
  y = jnp.cumsum(x, axis=-2) / 5.0
  variables = model.init(KEY, x)
  consts = variables["constants"]
  tx = optax.adam(1e-2)

  def loss(p):
    return jnp.mean((model.apply({"params": p, "constants": consts}, x) - y) ** 2)

  @jax.jit
  def step(p, s):
    l, g = jax.value_and_grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, l

  params, state = variables["params"], tx.init(variables["params"])
  losses = []
  for _ in range(60):
    params, state, l = step(params, state)
    losses.append(float(l))
  assert losses[-1] < 0.7 * losses[0]
  cell_vars = {"params": params["rnn"]["cell"], "constants": consts["rnn"]["cell"]}
  k = urnn_jax.OrthogonalRNNCell(8, parametrization=parametrization).apply(cell_vars, method="transition_kernel")
  assert orthogonal.orthogonality_error(k) < 1e-5
  assert np.abs(np.asarray(k - consts["rnn"]["cell"]["base"])).max() > 1e-2
  # The parametrised cell has no 'recurrent_kernel' leaf: no constraint applies.
  with pytest.raises(ValueError, match="selects no leaf"):
    optim.constrained(optax.adam(1e-2), optim.orthogonal_projection()).init(params)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_rebase_keeps_the_kernel_and_zeroes_the_generator(x64, parametrization):
  cell, variables = _init_cell(parametrization, param_dtype=jnp.float64)
  a = jax.random.normal(jax.random.key(5), (6, 6), jnp.float64)
  variables = _with_generator(variables, a)
  k = cell.apply(variables, method="transition_kernel")
  params, consts = urnn_jax.rebase(variables["params"], variables["constants"], parametrization)
  np.testing.assert_array_equal(params["recurrent_generator"], np.zeros((6, 6)))
  np.testing.assert_array_equal(params["input"]["kernel"], variables["params"]["input"]["kernel"])
  k2 = cell.apply({"params": params, "constants": consts}, method="transition_kernel")
  np.testing.assert_allclose(np.asarray(k2), np.asarray(k), rtol=0, atol=1e-12)
  np.testing.assert_allclose(np.asarray(consts["base"]), np.asarray(k), rtol=0, atol=1e-12)
  assert orthogonal.orthogonality_error(consts["base"]) < 1e-12


def test_bad_parametrization_raises():
  cell = urnn_jax.OrthogonalRNNCell(4, parametrization="householder")
  with pytest.raises(ValueError, match=r"parametrization='householder'.*\('expm', 'cayley'\)"):
    cell.init(KEY, jnp.zeros((1, 4)), jnp.zeros((1, 2)))
  with pytest.raises(ValueError, match=r"rebase: parametrization='svd'"):
    urnn_jax.rebase({"recurrent_generator": jnp.zeros((2, 2))}, {"base": jnp.eye(2)}, "svd")


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_to_rnn_params_of_a_parametrised_model(x64, parametrization):
  cell = urnn_jax.OrthogonalRNNCell(5, parametrization=parametrization, activation="tanh",
                                    generator_init=nn.initializers.normal(0.5),
                                    param_dtype=jnp.float64)
  model = urnn_jax.SequenceRegressor(cell, 2, learn_initial_carry=True)
  x = jax.random.normal(KEY, (3, 9, 2), jnp.float64)
  variables = model.init(KEY, x)
  variables["params"]["rnn"]["initial_carry"] = jnp.linspace(-0.5, 0.5, 5)
  theta = urnn_jax.to_rnn_params(variables, model)
  # W through the cell's own transition_kernel: base @ map(skew(A)), transposed.
  cell_vars = {"params": variables["params"]["rnn"]["cell"],
               "constants": variables["constants"]["rnn"]["cell"]}
  k = cell.apply(cell_vars, method="transition_kernel")
  np.testing.assert_array_equal(theta.W, k.T)
  base = np.asarray(cell_vars["constants"]["base"])
  a = np.asarray(cell_vars["params"]["recurrent_generator"])
  np.testing.assert_allclose(theta.W, (base @ _map_ref(parametrization, a)).T, rtol=0, atol=1e-10)
  assert orthogonal.orthogonality_error(theta.W) < 1e-12
  np.testing.assert_array_equal(theta.C, variables["params"]["readout"]["kernel"].T)
  np.testing.assert_array_equal(theta.h0, variables["params"]["rnn"]["initial_carry"])
  np.testing.assert_allclose(urnn_jax.simulate(theta, x, "tanh"), model.apply(variables, x),
                             rtol=0, atol=1e-12)
  ref = simulate_loop(*theta, x, "tanh")
  np.testing.assert_allclose(np.asarray(model.apply(variables, x)), ref, rtol=0, atol=1e-10)
  # Without the model, or without the constants, the error says what to pass.
  with pytest.raises(ValueError, match=r"parametrised.*to_rnn_params\(variables, model\)"):
    urnn_jax.to_rnn_params(variables)
  with pytest.raises(ValueError, match="'constants'"):
    urnn_jax.to_rnn_params({"params": variables["params"]}, model)
  # The classifier's recurrent part, too.
  clf = urnn_jax.LastStateClassifier(cell, 3)
  vc = clf.init(KEY, x)
  th = urnn_jax.to_rnn_params(vc, clf)
  np.testing.assert_allclose(urnn_jax.simulate(th, x, "tanh"),
                             clf.apply(vc, x, method="hidden_states"), rtol=0, atol=1e-12)
