"""Tests of urnn_jax.gated: the unitary GRU and the gated cells' fast path in Recurrent."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import urnn_jax
from urnn_jax import gated, models, optim, orthogonal


def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def reference_gru(p, x, h0):
  """An independent plain-Python loop over steps and units (NumPy float64), from the equations."""
  cell = p["cell"] if "cell" in p else p
  k_in, b_in = np.asarray(cell["input"]["kernel"]), np.asarray(cell["input"]["bias"])
  n = k_in.shape[1] // 3
  w_ir, w_iz, w_in = (k_in[:, i * n:(i + 1) * n].T for i in range(3))
  b_ir, b_iz, b_in = (b_in[i * n:(i + 1) * n] for i in range(3))
  if "gate_kernel" in cell:
    g = np.asarray(cell["gate_kernel"])
    w_hr, w_hz = g[:, :n].T, g[:, n:].T
  else:
    w_hr, w_hz = np.asarray(cell["reset"]["recurrent_kernel"]).T, np.asarray(cell["update"]["recurrent_kernel"]).T
  w_hn = np.asarray(cell["candidate"]["recurrent_kernel"]).T
  b_hn = np.asarray(cell["candidate"]["bias"])
  x = np.asarray(x, np.float64)
  out = np.zeros(x.shape[:-1] + (n,))
  for b in range(x.shape[0]):
    h = np.array(h0[b], np.float64)
    for t in range(x.shape[1]):
      xt = x[b, t]
      new = np.zeros(n)
      for i in range(n):
        r = _sigmoid(w_ir[i] @ xt + b_ir[i] + w_hr[i] @ h)
        z = _sigmoid(w_iz[i] @ xt + b_iz[i] + w_hz[i] @ h)
        c = np.tanh(w_in[i] @ xt + b_in[i] + r * (w_hn[i] @ h + b_hn[i]))
        new[i] = (1 - z) * c + z * h[i]
      h = new
      out[b, t] = h
  return out


@pytest.mark.parametrize("orthogonal_gates", [False, True])
def test_float64_matches_a_plain_loop_reference(x64, orthogonal_gates):
  cell = urnn_jax.UnitaryGRUCell(5, orthogonal_gates=orthogonal_gates, param_dtype=jnp.float64,
                                 bias_init=nn.initializers.normal(0.5))
  layer = urnn_jax.Recurrent(cell, return_carry=True)
  x = jax.random.normal(jax.random.key(1), (2, 7, 3), jnp.float64)
  h0 = jax.random.normal(jax.random.key(2), (2, 5), jnp.float64)
  variables = layer.init(jax.random.key(0), x)
  carry, ys = layer.apply(variables, x, initial_carry=h0)
  ref = reference_gru(variables["params"], x, np.asarray(h0))
  assert ys.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(ys), ref, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(np.asarray(carry), ref[:, -1], rtol=1e-12, atol=1e-12)


def test_parametrised_cell_matches_the_reference_with_its_own_W(x64):
  cell = urnn_jax.UnitaryGRUCell(4, parametrization="cayley", param_dtype=jnp.float64,
                                 generator_init=nn.initializers.normal(0.3))
  layer = urnn_jax.Recurrent(cell)
  x = jax.random.normal(jax.random.key(1), (3, 6, 2), jnp.float64)
  variables = layer.init(jax.random.key(0), x)
  k = layer.apply(variables, method=lambda m: m.cell.transition_matrices()["candidate"])
  assert float(orthogonal.orthogonality_error(k)) < 1e-12
  a = variables["params"]["cell"]["candidate"]["recurrent_generator"]
  assert float(jnp.abs(a).max()) > 0  # not the identity map: the base is really multiplied
  p = jax.tree.map(lambda v: v, dict(variables["params"]["cell"]))
  p["candidate"] = {"recurrent_kernel": k, "bias": p["candidate"]["bias"]}
  ref = reference_gru(p, x, np.zeros((3, 4)))
  np.testing.assert_allclose(np.asarray(layer.apply(variables, x)), ref, rtol=1e-12, atol=1e-12)


def test_equals_flax_gru_with_copied_weights(x64):
  """Constraint off and the weights copied: flax's GRUCell exactly (float64)."""
  flax_cell = nn.GRUCell(6, param_dtype=jnp.float64, bias_init=nn.initializers.normal(0.3))
  x = jax.random.normal(jax.random.key(3), (2, 9, 4), jnp.float64)
  flax_rnn = nn.RNN(flax_cell)
  fv = flax_rnn.init(jax.random.key(0), x)
  ours = urnn_jax.Recurrent(urnn_jax.UnitaryGRUCell(6, param_dtype=jnp.float64))
  params = {"cell": gated.params_from_flax_gru(fv["params"]["cell"])}
  ours_init = ours.init(jax.random.key(0), x)["params"]
  assert jax.tree.structure(ours_init) == jax.tree.structure(params)
  np.testing.assert_allclose(np.asarray(ours.apply({"params": params}, x)),
                             np.asarray(flax_rnn.apply(fv, x)), rtol=1e-12, atol=1e-12)
  # One step through __call__ (what nn.RNN runs) too.
  h = jax.random.normal(jax.random.key(4), (2, 6), jnp.float64)
  mine = urnn_jax.UnitaryGRUCell(6, param_dtype=jnp.float64).apply({"params": params["cell"]}, h, x[:, 0])
  theirs = flax_cell.apply({"params": fv["params"]["cell"]}, h, x[:, 0])
  np.testing.assert_allclose(np.asarray(mine[0]), np.asarray(theirs[0]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"parametrization": "expm"}, {"orthogonal_gates": True}])
def test_fast_path_equals_flax_rnn_of_the_cell(kw):
  cell = urnn_jax.UnitaryGRUCell(8, **kw)
  x = jax.random.normal(jax.random.key(1), (3, 11, 5))
  layer = urnn_jax.Recurrent(cell)
  variables = layer.init(jax.random.key(0), x)
  rnn = nn.RNN(cell, variable_broadcast=("params", "constants"))
  rv = {col: {"cell": tree["cell"]} for col, tree in variables.items()}
  np.testing.assert_allclose(np.asarray(layer.apply(variables, x)), np.asarray(rnn.apply(rv, x)),
                             rtol=2e-6, atol=2e-6)
  # Time-major layout gives the same states.
  tm = urnn_jax.Recurrent(cell, time_major=True)
  np.testing.assert_allclose(np.asarray(tm.apply(variables, jnp.swapaxes(x, 0, 1))),
                             np.asarray(jnp.swapaxes(layer.apply(variables, x), 0, 1)), rtol=1e-6, atol=1e-6)


def test_seq_lengths_freeze_the_carry_and_zero_the_outputs():
  cell = urnn_jax.UnitaryGRUCell(4)
  x = jax.random.normal(jax.random.key(1), (3, 6, 2))
  lengths = jnp.array([6, 2, 4])
  layer = urnn_jax.Recurrent(cell, return_carry=True)
  variables = layer.init(jax.random.key(0), x)
  carry, ys = layer.apply(variables, x, seq_lengths=lengths)
  rnn = nn.RNN(cell, return_carry=True)
  rcarry, rys = rnn.apply(variables, x, seq_lengths=lengths)
  for b, L in enumerate(np.asarray(lengths)):
    full = layer.apply(variables, x[b:b + 1, :L])[1]
    np.testing.assert_allclose(np.asarray(ys[b, :L]), np.asarray(full[0]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(carry[b]), np.asarray(full[0, -1]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rcarry[b]), np.asarray(carry[b]), rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(ys[b, L:]) == 0)


def test_gradients_of_the_fast_path_equal_the_generic_scan():
  cell = urnn_jax.UnitaryGRUCell(5, parametrization="expm", generator_init=nn.initializers.normal(0.1))
  x = jax.random.normal(jax.random.key(1), (2, 8, 3))
  layer = urnn_jax.Recurrent(cell)
  variables = layer.init(jax.random.key(0), x)
  rnn = nn.RNN(cell, variable_broadcast=("params", "constants"))
  consts = {"constants": variables["constants"]}
  g_fast = jax.grad(lambda p: jnp.sum(jnp.sin(layer.apply({"params": p, **consts}, x))))(variables["params"])
  g_ref = jax.grad(lambda p: jnp.sum(jnp.sin(rnn.apply({"params": p, **consts}, x))))(variables["params"])
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("constraint", ["projection", "cayley", "expm"])
def test_orthogonality_is_held_by_the_constraint_after_training_steps(constraint):
  options = models.ModelOptions(hidden=6, constraint=constraint)
  layer = urnn_jax.Recurrent(models.make_cell("ugru", options))
  x = jax.random.normal(jax.random.key(1), (4, 10, 3))
  y = jax.random.normal(jax.random.key(2), (4, 10, 6))
  params = layer.init(jax.random.key(0), x)["params"]
  tx = models.make_tx("ugru", optax.adam(0.05), options)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    g = jax.grad(lambda p: jnp.mean((layer.apply({"params": p}, x) - y) ** 2))(params)
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state

  start = params
  for _ in range(5):
    params, state = step(params, state)
  cell = params["cell"]
  assert float(orthogonal.orthogonality_error(cell["candidate"]["recurrent_kernel"])) < 2e-5
  # It moved, and the free gates are not orthogonal any more (they were at init).
  assert float(jnp.abs(cell["candidate"]["recurrent_kernel"] - start["cell"]["candidate"]["recurrent_kernel"]).max()) > 1e-3
  g = cell["gate_kernel"][:, :6]
  assert float(orthogonal.orthogonality_error(g)) > 1e-3


def test_orthogonal_gates_are_found_by_the_default_constraint():
  cell = urnn_jax.UnitaryGRUCell(4, orthogonal_gates=True)
  layer = urnn_jax.Recurrent(cell)
  x = jnp.ones((2, 3, 2))
  params = layer.init(jax.random.key(0), x)["params"]
  labels = optim.recurrent_kernel_labels(params)["cell"]
  assert labels["candidate"]["recurrent_kernel"] == "constrained"
  assert labels["reset"] == {"recurrent_kernel": "constrained"}
  assert labels["update"] == {"recurrent_kernel": "constrained"}
  assert "gate_kernel" not in labels
  tx = optim.constrained(optax.sgd(0.5), optim.orthogonal_projection())
  state = tx.init(params)
  g = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) ** 3))(params)
  u, _ = tx.update(g, state, params)
  new = optax.apply_updates(params, u)
  for k in layer.apply({"params": new}, method=lambda m: m.cell.transition_matrices()).values():
    assert float(orthogonal.orthogonality_error(k)) < 1e-5


def test_registry_entries_and_errors():
  o = models.ModelOptions(hidden=3)
  assert type(models.make_cell("ugru", o)) is urnn_jax.UnitaryGRUCell
  assert not models.get("ugru").eq1 and not models.get("ugru").orthogonal
  assert models.get("ugru").constraint is not None
  with pytest.raises(ValueError, match="parametrization='qr'"):
    urnn_jax.Recurrent(urnn_jax.UnitaryGRUCell(3, parametrization="qr")).init(jax.random.key(0), jnp.ones((1, 2, 2)))
  with pytest.raises(ValueError, match="features must be a positive int"):
    urnn_jax.Recurrent(urnn_jax.UnitaryGRUCell(0)).init(jax.random.key(0), jnp.ones((1, 2, 2)))
  with pytest.raises(ValueError, match="not an eq. \\(1\\) cell"):
    layer = urnn_jax.Recurrent(urnn_jax.UnitaryGRUCell(3))
    v = layer.init(jax.random.key(0), jnp.ones((1, 2, 2)))
    layer.apply(v, method="rnn_params")
  assert "UnitaryGRUCell" in urnn_jax.__all__ and "HoistableGatedCell" in urnn_jax.__all__
