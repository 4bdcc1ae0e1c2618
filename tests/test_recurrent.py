"""Tests for urnn_jax.recurrent: Recurrent, the heads, RNNParams conversion."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import urnn_jax
from tests.reference import simulate_loop


def f64_cell(n, **kw):
  return urnn_jax.RNNCell(n, param_dtype=jnp.float64, **kw)


def random_regressor_variables(key, n, m, p, *, h0=True):
  k = jax.random.split(key, 5)
  w = jax.random.normal(k[0], (n, n), jnp.float64)
  theta = urnn_jax.RNNParams(
      W=0.95 * w / jnp.linalg.norm(w, 2),
      F=jax.random.normal(k[1], (n, m), jnp.float64),
      b=0.2 * jax.random.normal(k[2], (n,), jnp.float64),
      C=jax.random.normal(k[3], (p, n), jnp.float64),
      h0=(jax.random.normal(k[4], (n,), jnp.float64) if h0 else jnp.zeros((n,), jnp.float64)),
  )
  return theta, urnn_jax.from_rnn_params(theta)


@pytest.mark.parametrize("activation", ["relu", "tanh", "abs"])
@pytest.mark.parametrize("batch_shape", [(1,), (4,), (2, 3)])
def test_layer_simulate_and_loop_agree(x64, activation, batch_shape):
  n, m, p, T = 6, 3, 2, 50
  theta, variables = random_regressor_variables(jax.random.key(0), n, m, p)
  model = urnn_jax.SequenceRegressor(f64_cell(n, activation=activation), p, learn_initial_carry=True)
  x = jax.random.normal(jax.random.key(1), batch_shape + (T, m), jnp.float64)
  y_layer = model.apply(variables, x)
  y_sim = urnn_jax.simulate(theta, x, activation)
  y_loop = simulate_loop(*theta, x, activation)
  assert y_layer.shape == batch_shape + (T, p)
  np.testing.assert_allclose(np.asarray(y_layer), y_loop, rtol=0, atol=1e-10)
  np.testing.assert_allclose(np.asarray(y_sim), y_loop, rtol=0, atol=1e-10)


def test_round_trip_conversion(x64):
  theta, variables = random_regressor_variables(jax.random.key(2), 5, 2, 3)
  back = urnn_jax.to_rnn_params(variables)
  for a, b in zip(theta, back):
    np.testing.assert_array_equal(a, b)
  # From an initialised model, too.
  model = urnn_jax.SequenceRegressor(f64_cell(4), 2)
  v = model.init(jax.random.key(0), jnp.ones((1, 5, 3)))
  theta2 = urnn_jax.to_rnn_params(v)
  assert theta2.W.shape == (4, 4) and theta2.F.shape == (4, 3) and theta2.C.shape == (2, 4)
  np.testing.assert_array_equal(theta2.h0, 0)
  x = jax.random.normal(jax.random.key(1), (2, 7, 3), jnp.float64)
  np.testing.assert_allclose(model.apply(v, x), urnn_jax.simulate(theta2, x), atol=1e-12)


def test_to_rnn_params_rejects_readout_bias_and_foreign_trees():
  model = urnn_jax.SequenceRegressor(urnn_jax.RNNCell(3), 2, use_bias=True)
  v = model.init(jax.random.key(0), jnp.ones((1, 4, 2)))
  with pytest.raises(ValueError, match="bias"):
    urnn_jax.to_rnn_params(v)
  with pytest.raises(ValueError, match="expected params"):
    urnn_jax.to_rnn_params({"params": {"Dense_0": {}}})


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_flax_rnn_with_our_cell_equals_recurrent(x64, activation):
  cell = f64_cell(8, activation=activation)
  x = jax.random.normal(jax.random.key(3), (4, 30, 3), jnp.float64)
  flax_rnn = nn.RNN(cell)
  variables = flax_rnn.init(jax.random.key(4), x)
  ours = urnn_jax.Recurrent(cell)
  np.testing.assert_allclose(ours.apply(variables, x), flax_rnn.apply(variables, x), atol=1e-12)
  # Same parameter tree, so variables are interchangeable both ways.
  v2 = ours.init(jax.random.key(4), x)
  assert jax.tree.structure(v2) == jax.tree.structure(variables)


def test_seq_lengths_freeze_carry_and_zero_outputs(x64):
  cell = f64_cell(5, activation="tanh")
  layer = urnn_jax.Recurrent(cell, return_carry=True)
  x = jax.random.normal(jax.random.key(5), (3, 12, 2), jnp.float64)
  variables = layer.init(jax.random.key(6), x)
  lengths = jnp.array([12, 7, 1])
  carry, ys = layer.apply(variables, x, seq_lengths=lengths)
  for i, length in enumerate([12, 7, 1]):
    c_i, y_i = layer.apply(variables, x[i : i + 1, :length])
    np.testing.assert_allclose(carry[i], c_i[0], atol=1e-12)
    np.testing.assert_allclose(ys[i, :length], y_i[0], atol=1e-12)
    np.testing.assert_array_equal(ys[i, length:], 0.0)


def test_seq_lengths_with_flax_lstm(x64):
  cell = nn.LSTMCell(4, param_dtype=jnp.float64)
  layer = urnn_jax.Recurrent(cell, return_carry=True)
  x = jax.random.normal(jax.random.key(7), (2, 9, 3), jnp.float64)
  variables = layer.init(jax.random.key(8), x)
  (c, h), ys = layer.apply(variables, x, seq_lengths=jnp.array([9, 4]))
  (c1, h1), ys1 = layer.apply(variables, x[1:, :4])
  np.testing.assert_allclose(h[1], h1[0], atol=1e-12)
  np.testing.assert_allclose(c[1], c1[0], atol=1e-12)
  np.testing.assert_array_equal(ys[1, 4:], 0.0)
  # flax.linen.RNN gives the same outputs on full-length sequences.
  y_flax = nn.RNN(cell).apply(variables, x)
  np.testing.assert_allclose(ys[0], y_flax[0], atol=1e-12)


def test_time_major_equals_batch_major(x64):
  cell = f64_cell(4)
  x = jax.random.normal(jax.random.key(9), (3, 11, 2), jnp.float64)
  bm = urnn_jax.Recurrent(cell)
  tm = urnn_jax.Recurrent(cell, time_major=True)
  variables = bm.init(jax.random.key(0), x)
  y_bm = bm.apply(variables, x)
  y_tm = tm.apply(variables, jnp.swapaxes(x, 0, 1))
  assert y_tm.shape == (11, 3, 4)
  np.testing.assert_allclose(jnp.swapaxes(y_tm, 0, 1), y_bm, atol=1e-12)
  lengths = jnp.array([11, 3, 6])
  np.testing.assert_allclose(
      jnp.swapaxes(tm.apply(variables, jnp.swapaxes(x, 0, 1), seq_lengths=lengths), 0, 1),
      bm.apply(variables, x, seq_lengths=lengths),
      atol=1e-12,
  )


def test_initial_carry_and_learnable_h0(x64):
  cell = f64_cell(3, activation="tanh")
  x = jax.random.normal(jax.random.key(10), (2, 6, 2), jnp.float64)
  layer = urnn_jax.Recurrent(cell, learn_initial_carry=True)
  variables = layer.init(jax.random.key(0), x)
  assert variables["params"]["initial_carry"].shape == (3,)
  np.testing.assert_array_equal(variables["params"]["initial_carry"], 0.0)
  h0 = jnp.array([0.3, -0.2, 0.5])
  variables["params"]["initial_carry"] = h0
  plain = urnn_jax.Recurrent(cell)
  np.testing.assert_allclose(
      layer.apply(variables, x),
      plain.apply({"params": {"cell": variables["params"]["cell"]}}, x, initial_carry=jnp.broadcast_to(h0, (2, 3))),
      atol=1e-12,
  )
  # The learnable h0 receives a gradient.
  g = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) ** 2))(variables["params"])
  assert np.all(np.abs(g["initial_carry"]) > 0)


def test_unroll_does_not_change_outputs(x64):
  cell = f64_cell(5)
  x = jax.random.normal(jax.random.key(11), (2, 17, 3), jnp.float64)
  v = urnn_jax.Recurrent(cell).init(jax.random.key(0), x)
  np.testing.assert_allclose(
      urnn_jax.Recurrent(cell, unroll=8).apply(v, x), urnn_jax.Recurrent(cell).apply(v, x), atol=1e-12
  )


def test_jit_vmap_grad_through_layer(x64):
  model = urnn_jax.SequenceRegressor(f64_cell(4), 2)
  x = jax.random.normal(jax.random.key(12), (3, 10, 2), jnp.float64)
  variables = model.init(jax.random.key(0), x)
  jitted = jax.jit(model.apply)
  np.testing.assert_allclose(jitted(variables, x), model.apply(variables, x), atol=1e-12)
  # vmap over a stack of parameter sets (realizations).
  keys = jax.random.split(jax.random.key(1), 3)
  stacked = jax.vmap(lambda k: model.init(k, x))(keys)
  ys = jax.vmap(lambda v: model.apply(v, x))(stacked)
  assert ys.shape == (3, 3, 10, 2)
  v1 = jax.tree.map(lambda a: a[1], stacked)
  np.testing.assert_allclose(ys[1], model.apply(v1, x), atol=1e-12)
  # grad matches the pure-function path.
  theta = urnn_jax.to_rnn_params(variables)
  g_layer = jax.grad(lambda v: jnp.sum(model.apply(v, x) ** 2))(variables)
  g_theta = jax.grad(lambda t: jnp.sum(urnn_jax.simulate(t, x) ** 2))(theta)
  np.testing.assert_allclose(g_layer["params"]["rnn"]["cell"]["recurrent_kernel"], g_theta.W.T, atol=1e-10)
  np.testing.assert_allclose(g_layer["params"]["readout"]["kernel"], g_theta.C.T, atol=1e-10)


def test_forward_mode_needs_custom_gradient_off(x64):
  cell = f64_cell(4, activation="tanh")
  x = jax.random.normal(jax.random.key(13), (2, 9, 3), jnp.float64)
  dx = jax.random.normal(jax.random.key(14), x.shape, jnp.float64)
  v = urnn_jax.Recurrent(cell).init(jax.random.key(0), x)
  with pytest.raises(TypeError):
    jax.jvp(lambda a: urnn_jax.Recurrent(cell).apply(v, a), (x,), (dx,))
  plain = urnn_jax.Recurrent(cell, custom_gradient=False)
  y, dy = jax.jvp(lambda a: plain.apply(v, a), (x,), (dx,))
  np.testing.assert_allclose(y, urnn_jax.Recurrent(cell).apply(v, x), atol=1e-12)
  # Central difference of the same map: the tangent is the derivative.
  eps = 1e-6
  fd = (plain.apply(v, x + eps * dx) - plain.apply(v, x - eps * dx)) / (2 * eps)
  np.testing.assert_allclose(dy, fd, atol=1e-8)
  # Both settings give the same reverse-mode gradient.
  loss = lambda layer: jax.grad(lambda a: jnp.sum(jnp.sin(layer.apply(v, a))))(x)
  np.testing.assert_allclose(loss(plain), loss(urnn_jax.Recurrent(cell)), atol=1e-12)
  with pytest.raises(TypeError, match="custom_gradient"):
    urnn_jax.Recurrent(cell, custom_gradient="yes").apply(v, x)


def test_classifier_uses_last_valid_step(x64):
  cell = f64_cell(6, activation="tanh")
  model = urnn_jax.LastStateClassifier(cell, num_classes=10)
  x = jax.random.normal(jax.random.key(13), (2, 15, 1), jnp.float64)
  variables = model.init(jax.random.key(0), x)
  logits = model.apply(variables, x, seq_lengths=jnp.array([15, 8]))
  assert logits.shape == (2, 10)
  short = model.apply(variables, x[1:, :8])
  np.testing.assert_allclose(logits[1], short[0], atol=1e-12)
  # Works with flax's LSTM, too.
  lstm_model = urnn_jax.LastStateClassifier(nn.LSTMCell(6), num_classes=3)
  v = lstm_model.init(jax.random.key(0), x)
  assert lstm_model.apply(v, x).shape == (2, 3)


def test_parametrised_kernel_built_once_per_call():
  """With W = base @ expm(A), the matrix exponential is outside the scan."""
  from tests.test_rnn import _find

  layer = urnn_jax.Recurrent(urnn_jax.OrthogonalRNNCell(4, parametrization="expm"))
  x = jnp.ones((2, 30, 3))
  variables = layer.init(jax.random.key(0), x)
  jaxpr = jax.make_jaxpr(lambda v: layer.apply(v, x))(variables)
  scans = _find(jaxpr.jaxpr, "scan")
  assert scans, "no scan found"
  for scan in scans:
    body = scan.params["jaxpr"].jaxpr
    # expm's scaling-and-squaring uses a linear solve; it must not be in the scan body.
    assert not _find(body, "lu") and not _find(body, "triangular_solve")
  # ...but it does run before the scan.
  assert _find(jaxpr.jaxpr, "lu")


def test_bad_inputs():
  layer = urnn_jax.Recurrent(urnn_jax.RNNCell(3))
  with pytest.raises(ValueError, match="x must have shape"):
    layer.init(jax.random.key(0), jnp.ones((5,)))
  x = jnp.ones((2, 4, 1))
  v = layer.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="seq_lengths must have the batch shape"):
    layer.apply(v, x, seq_lengths=jnp.array([1, 2, 3]))
  with pytest.raises(TypeError, match="seq_lengths must be integers"):
    layer.apply(v, x, seq_lengths=jnp.array([1.0, 2.0]))
  with pytest.raises(ValueError, match="unroll must be a positive int"):
    urnn_jax.Recurrent(urnn_jax.RNNCell(3), unroll=0).init(jax.random.key(0), x)
  with pytest.raises(TypeError, match="RNNCellBase"):
    urnn_jax.Recurrent(nn.Dense(3)).init(jax.random.key(0), x)


# ---------------------------------------------------------------------------
# Heads that answer for themselves: hidden_states / outputs_from_states /
# rnn_params, and to_rnn_params(variables, model).
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["regressor", "classifier"])
def test_heads_split_into_states_and_read_out(x64, head):
  cell = f64_cell(5, activation="tanh")
  if head == "regressor":
    model = urnn_jax.SequenceRegressor(cell, 3, use_bias=True)
  else:
    model = urnn_jax.LastStateClassifier(cell, num_classes=4)
  x = jax.random.normal(jax.random.key(20), (2, 9, 2), jnp.float64)
  lengths = jnp.array([9, 4])
  v = model.init(jax.random.key(0), x)
  # The parameter tree keeps its names.
  assert set(v["params"]) == {"rnn", "readout" if head == "regressor" else "head"}
  for sl in (None, lengths):
    hs = model.apply(v, x, seq_lengths=sl, method="hidden_states")
    np.testing.assert_array_equal(
        hs, urnn_jax.Recurrent(cell).apply({"params": v["params"]["rnn"]}, x, seq_lengths=sl))
    out = model.apply(v, hs, seq_lengths=sl, method="outputs_from_states")
    np.testing.assert_array_equal(out, model.apply(v, x, seq_lengths=sl))
  # The read-out as a function of the states, differentiable (what diagnostics need).
  g = jax.grad(lambda h: jnp.sum(model.apply(v, h, seq_lengths=lengths,
                                             method="outputs_from_states") ** 2))(hs)
  assert g.shape == hs.shape
  if head == "classifier":  # only each sequence's last valid state is read
    np.testing.assert_array_equal(g[1, 4:], 0.0)
    np.testing.assert_array_equal(g[1, :3], 0.0)
    assert np.any(g[1, 3] != 0)


def test_rnn_params_of_every_model(x64):
  x = jax.random.normal(jax.random.key(21), (3, 8, 2), jnp.float64)
  cell = f64_cell(4, activation="tanh", bias_init=nn.initializers.normal(0.5))
  reg = urnn_jax.SequenceRegressor(cell, 2, learn_initial_carry=True)
  v = reg.init(jax.random.key(0), x)
  v["params"]["rnn"]["initial_carry"] = jnp.array([0.3, -0.1, 0.2, 0.5])
  theta = urnn_jax.to_rnn_params(v, reg)
  for a, b in zip(theta, urnn_jax.to_rnn_params(v)):  # the same as reading the tree
    np.testing.assert_array_equal(a, b)
  for a, b in zip(theta, reg.apply(v, method="rnn_params")):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(urnn_jax.simulate(theta, x, "tanh"), reg.apply(v, x), atol=1e-12)
  # Recurrent: C = I, h0 = the learned initial carry.
  layer = urnn_jax.Recurrent(cell, learn_initial_carry=True)
  th = urnn_jax.to_rnn_params({"params": v["params"]["rnn"]}, layer)
  np.testing.assert_array_equal(th.C, np.eye(4))
  np.testing.assert_array_equal(th.h0, v["params"]["rnn"]["initial_carry"])
  np.testing.assert_allclose(urnn_jax.simulate(th, x, "tanh"),
                             layer.apply({"params": v["params"]["rnn"]}, x), atol=1e-12)
  # LastStateClassifier: the recurrent part, C = I, h0 = 0.
  clf = urnn_jax.LastStateClassifier(cell, num_classes=3)
  vc = clf.init(jax.random.key(1), x)
  th = urnn_jax.to_rnn_params(vc, clf)
  np.testing.assert_array_equal(th.C, np.eye(4))
  np.testing.assert_array_equal(th.h0, 0.0)
  np.testing.assert_allclose(urnn_jax.simulate(th, x, "tanh"),
                             clf.apply(vc, x, method="hidden_states"), atol=1e-12)
  # The recurrent part alone (C = I) of a regressor, read-out bias or not.
  reg_b = urnn_jax.SequenceRegressor(cell, 2, use_bias=True, learn_initial_carry=True)
  v_b = reg_b.init(jax.random.key(0), x)
  v_b["params"]["rnn"] = v["params"]["rnn"]
  th = reg_b.apply(v_b, method=lambda m: m.rnn.rnn_params())
  np.testing.assert_array_equal(th.C, np.eye(4))
  np.testing.assert_array_equal(th.W, theta.W)
  np.testing.assert_array_equal(th.h0, theta.h0)
  # jit-able (model is static).
  jitted = jax.jit(lambda v: urnn_jax.to_rnn_params(v, reg))(v)
  np.testing.assert_array_equal(jitted.W, theta.W)


def test_rnn_params_errors_name_the_problem():
  x = jnp.ones((1, 4, 2))
  lstm = urnn_jax.SequenceRegressor(nn.LSTMCell(3), 2)
  v = lstm.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="LSTMCell is not an eq. \\(1\\) cell"):
    urnn_jax.to_rnn_params(v, lstm)
  with pytest.raises(ValueError, match="LSTMCell is not an eq. \\(1\\) cell"):
    urnn_jax.to_rnn_params({"params": v["params"]["rnn"]}, urnn_jax.Recurrent(nn.LSTMCell(3)))
  with pytest.raises(ValueError, match="LSTMCell is not an eq. \\(1\\) cell"):
    urnn_jax.LastStateClassifier(nn.LSTMCell(3), 2).apply(
        urnn_jax.LastStateClassifier(nn.LSTMCell(3), 2).init(jax.random.key(0), x),
        method="rnn_params")
  with pytest.raises(ValueError, match="expected params"):
    urnn_jax.to_rnn_params(v)
  with pytest.raises(ValueError, match="Dense is not an eq. \\(1\\) cell"):
    urnn_jax.to_rnn_params({"params": {}}, nn.Dense(3))
  reg = urnn_jax.SequenceRegressor(urnn_jax.RNNCell(3), 2, use_bias=True)
  with pytest.raises(ValueError, match="read-out has a bias"):
    urnn_jax.to_rnn_params(reg.init(jax.random.key(0), x), reg)


# ---------------------------------------------------------------------------
# Issue 22: bad input gets a clear error naming the argument, never a silent
# wrong answer. One test per class of bad input.
# ---------------------------------------------------------------------------


def test_integer_inputs_variables_and_carries_are_promoted():
  big = 100_000
  x_i = jnp.full((2, 4, 2), big, jnp.int32)
  x_f = x_i.astype(jnp.float32)
  layer = urnn_jax.Recurrent(urnn_jax.OrthogonalRNNCell(3, activation="identity"))
  v = layer.init(jax.random.key(0), x_f)
  v_int = jax.tree.map(lambda a: jnp.round(a * big).astype(jnp.int32), v)
  v_flt = jax.tree.map(lambda a: a.astype(jnp.float32), v_int)
  for variables, carry in ((v, None), (v_int, None), (v_int, jnp.zeros((2, 3), jnp.int32))):
    ys = layer.apply(variables, x_i, initial_carry=carry)
    assert ys.dtype == jnp.float32
    ref = v if variables is v else v_flt
    np.testing.assert_allclose(ys, layer.apply(ref, x_f), rtol=1e-6)
  # A generic (flax) cell with an integer carry and inputs: a floating carry.
  lstm = urnn_jax.Recurrent(nn.LSTMCell(3))
  lv = lstm.init(jax.random.key(0), x_f)
  carry = (jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3), jnp.int32))
  np.testing.assert_array_equal(lstm.apply(lv, x_i, initial_carry=carry), lstm.apply(lv, x_f))
  # from_rnn_params of integer params gives floating variables; the regressor then
  # computes what the float params give.
  theta_i = urnn_jax.RNNParams(3 * jnp.eye(2, dtype=jnp.int32), jnp.full((2, 2), big, jnp.int32),
                               jnp.zeros(2, jnp.int32), jnp.ones((1, 2), jnp.int32),
                               jnp.zeros(2, jnp.int32))
  variables = urnn_jax.from_rnn_params(theta_i)
  assert all(jnp.issubdtype(a.dtype, jnp.floating) for a in jax.tree.leaves(variables))
  reg = urnn_jax.SequenceRegressor(urnn_jax.RNNCell(2, activation="identity"), 1)
  np.testing.assert_allclose(reg.apply(variables, x_i), urnn_jax.simulate(theta_i, x_i, "identity"),
                             rtol=1e-6)


def test_real_cells_reject_complex_inputs_carries_and_variables(x64):
  x = jnp.ones((2, 5, 2))
  real = r"the cell (OrthogonalRNNCell|RNNCell) \(param_dtype=float32\) is real.*complex cell"
  layer = urnn_jax.Recurrent(urnn_jax.OrthogonalRNNCell(3))
  v = layer.init(jax.random.key(0), x)
  for call, name in (
      (lambda: layer.apply(v, 1j * x), "x"),
      (lambda: layer.apply(v, x, initial_carry=jnp.zeros((2, 3)) + 1j), "initial_carry"),
      (lambda: layer.apply(jax.tree.map(lambda a: a * (1 + 0j), v), x), "the cell's recurrent kernel"),
      (lambda: jax.jit(layer.apply)(v, 1j * x), "x"),  # dtypes are checked under jit too
  ):
    with pytest.raises(TypeError, match=rf"Recurrent: {name}.* complex \(complex128\), but {real}"):
      call()
  for model in (urnn_jax.SequenceRegressor(urnn_jax.RNNCell(3), 2),
                urnn_jax.LastStateClassifier(urnn_jax.RNNCell(3), 4)):
    mv = model.init(jax.random.key(0), x)
    with pytest.raises(TypeError, match=rf"Recurrent: x is complex.*{real}"):
      model.apply(mv, 1j * x)
  # A complex cell runs complex sequences (and equals its own step under flax's RNN),
  # unless its activation is real-only.
  ccell = urnn_jax.OrthogonalRNNCell(3, activation="identity", param_dtype=jnp.complex128)
  cv = urnn_jax.Recurrent(ccell).init(jax.random.key(0), x)
  ys = urnn_jax.Recurrent(ccell).apply(cv, 1j * x)
  assert ys.dtype == jnp.complex128
  np.testing.assert_allclose(ys, nn.RNN(ccell).apply(cv, 1j * x), rtol=0, atol=1e-12)
  with pytest.raises(TypeError, match=r"Recurrent: .*complex.*the activation 'relu' is real-only"):
    urnn_jax.Recurrent(urnn_jax.OrthogonalRNNCell(3, param_dtype=jnp.complex128)).init(
        jax.random.key(0), x)


def test_seq_lengths_out_of_range_are_rejected_when_concrete(x64):
  cell = f64_cell(3, activation="tanh")
  x = jax.random.normal(jax.random.key(30), (2, 4, 1), jnp.float64)
  layer = urnn_jax.Recurrent(cell)
  v = layer.init(jax.random.key(0), x)
  reg = urnn_jax.SequenceRegressor(cell, 2)
  rv = reg.init(jax.random.key(0), x)
  clf = urnn_jax.LastStateClassifier(cell, 3)
  cv = clf.init(jax.random.key(0), x)
  hs = clf.apply(cv, x, method="hidden_states")
  in_0_4 = r"seq_lengths must lie in \[0, 4\] \(T = 4 steps\)"
  in_1_4 = r"seq_lengths must lie in \[1, 4\] \(T = 4 steps\)"
  cases = [
      (lambda l: layer.apply(v, x, seq_lengths=l), [[-1, 3], [2, 7]], rf"Recurrent: {in_0_4}"),
      (lambda l: urnn_jax.Recurrent(cell, time_major=True).apply(v, jnp.swapaxes(x, 0, 1),
                                                                 seq_lengths=l),
       [[-1, 3], [2, 7]], rf"Recurrent: {in_0_4}"),
      (lambda l: reg.apply(rv, x, seq_lengths=l), [[-1, 3], [2, 7]], rf"Recurrent: {in_0_4}"),
      (lambda l: reg.apply(rv, hs, seq_lengths=l, method="outputs_from_states"), [[2, 9]],
       rf"SequenceRegressor.outputs_from_states: {in_0_4}"),
      (lambda l: clf.apply(cv, x, seq_lengths=l), [[0, 3], [-2, 3], [2, 7]],
       rf"LastStateClassifier: {in_1_4}"),
      (lambda l: clf.apply(cv, hs, seq_lengths=l, method="outputs_from_states"), [[0, 3], [2, 7]],
       rf"LastStateClassifier.outputs_from_states: {in_1_4}"),
  ]
  for call, bads, pattern in cases:
    for bad in bads:
      with pytest.raises(ValueError, match=rf"{pattern}; got seq_lengths=\[{bad[0]}, {bad[1]}\]"):
        call(jnp.array(bad))
  with pytest.raises(TypeError, match="outputs_from_states: seq_lengths must be integers"):
    clf.apply(cv, hs, seq_lengths=jnp.array([2.0, 3.0]), method="outputs_from_states")
  with pytest.raises(ValueError, match=r"outputs_from_states: seq_lengths must have the batch shape \(2,\)"):
    clf.apply(cv, hs, seq_lengths=jnp.array([2, 3, 1]), method="outputs_from_states")
  # The limits themselves are valid; under jit traced lengths are not checked, and act
  # as documented: Recurrent clamps to [0, T]; the classifier reads the last step for a
  # length above T, and a zero state (logits = the head's bias) for one below 1.
  jit_layer = jax.jit(lambda l: layer.apply(v, x, seq_lengths=l))
  np.testing.assert_array_equal(jit_layer(jnp.array([-1, 9])),
                                layer.apply(v, x, seq_lengths=jnp.array([0, 4])))
  logits = jax.jit(lambda l: clf.apply(cv, x, seq_lengths=l))(jnp.array([0, 9]))
  np.testing.assert_allclose(logits[1], clf.apply(cv, x)[1], rtol=0, atol=1e-12)
  np.testing.assert_array_equal(logits[0], cv["params"]["head"]["bias"])


def test_bad_head_sizes_and_empty_sequences():
  x = jnp.ones((2, 4, 1))
  for cls, field in ((urnn_jax.SequenceRegressor, "out_features"),
                     (urnn_jax.LastStateClassifier, "num_classes")):
    for bad, error in ((0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)):
      with pytest.raises(error, match=rf"{cls.__name__}: {field} must be a positive int, got .*{field}={bad!r}"):
        cls(urnn_jax.RNNCell(3), bad).init(jax.random.key(0), x)
    with pytest.raises(TypeError, match=rf"{cls.__name__}: cell must be a flax.linen.RNNCellBase, got Dense"):
      cls(nn.Dense(3), 2).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"features must be a positive int, got features=-3"):
      cls(urnn_jax.RNNCell(-3), 2).init(jax.random.key(0), x)
  with pytest.raises(TypeError, match=r"Recurrent: unroll must be a positive int, got float: unroll=2.0"):
    urnn_jax.Recurrent(urnn_jax.RNNCell(3), unroll=2.0).init(jax.random.key(0), x)
  # T = 0: a classifier has no last step to read...
  clf = urnn_jax.LastStateClassifier(urnn_jax.RNNCell(3), 2)
  cv = clf.init(jax.random.key(0), x)
  empty = jnp.ones((2, 0, 1))
  with pytest.raises(ValueError, match=r"LastStateClassifier: x has T = 0 time steps \(shape \(2, 0, 1\)\)"):
    clf.apply(cv, empty)
  with pytest.raises(ValueError, match=r"outputs_from_states: hidden_states have T = 0 time steps"):
    clf.apply(cv, jnp.ones((2, 0, 3)), method="outputs_from_states")
  # ...while the layer (every path) and the regressor give empty outputs and h0.
  for cell in (urnn_jax.RNNCell(3), nn.LSTMCell(3)):
    for time_major in (False, True):
      layer = urnn_jax.Recurrent(cell, time_major=time_major, return_carry=True)
      xe = jnp.swapaxes(empty, 0, 1) if time_major else empty
      v = layer.init(jax.random.key(0), xe)
      carry, ys = layer.apply(v, xe)
      assert ys.shape == ((0, 2, 3) if time_major else (2, 0, 3))
      for c in jax.tree.leaves(carry):
        np.testing.assert_array_equal(c, 0.0)
  reg = urnn_jax.SequenceRegressor(urnn_jax.RNNCell(3), 2)
  assert reg.apply(reg.init(jax.random.key(0), empty), empty).shape == (2, 0, 2)


# ---------------------------------------------------------------------------
# Complex cells (issue 20): the recurrence's custom VJP, and the heads' [Re h, Im h] read-out.


def _complex(key, shape):
  k1, k2 = jax.random.split(key)
  return jax.random.normal(k1, shape, jnp.float64) + 1j * jax.random.normal(k2, shape, jnp.float64)


def _soft(a):  # a non-holomorphic, parameter-free activation
  return a / (1.0 + jnp.abs(a))


def test_recurrence_custom_vjp_is_exact_for_complex_kernels_and_states(x64):
  """The custom VJP (plain transposes, JAX's convention) against autodiff of a Python loop."""
  n, T, B = 3, 5, 2
  ks = jax.random.split(jax.random.key(0), 6)
  kernel = 0.6 * _complex(ks[0], (n, n))
  h0 = 0.3 * _complex(ks[2], (B, n))
  bias = _complex(ks[3], (n,))
  b_mod = jnp.array([-0.5, 0.1, 0.3])
  target = _complex(ks[4], (B, T, n))
  lengths = jnp.array([T, 3])
  # A closed-form derivative (tanh), none (identity), a callable's own VJP, activation params;
  # time- and batch-major loops, with and without lengths.
  cases = [("tanh", None, False, None), ("identity", None, True, lengths), (_soft, None, False, lengths),
           (_soft, None, True, None), (urnn_jax.modrelu, b_mod, True, None),
           (urnn_jax.modrelu, b_mod, False, lengths)]
  for activation, params, batch_major, lens in cases:
    phi = urnn_jax.get_activation(activation)
    z = _complex(ks[1], (B, T, n) if batch_major else (T, B, n))

    def loss_kernel(kernel, z, h0, bias, params):
      _, hs = urnn_jax.recurrence(kernel, z, h0, activation, bias=bias, lengths=lens,
                                  batch_major=batch_major, activation_params=params)
      hs = hs if batch_major else jnp.swapaxes(hs, 0, 1)
      return jnp.sum(jnp.abs(hs - target) ** 2)

    def loss_loop(kernel, z, h0, bias, params):
      zb = z if batch_major else jnp.swapaxes(z, 0, 1)
      h, out = h0, []
      for t in range(T):
        a = h @ kernel + zb[:, t] + bias
        new = phi(a) if params is None else phi(a, params)
        valid = jnp.ones((B, 1), bool) if lens is None else (t < lens)[:, None]
        h = jnp.where(valid, new, h)
        out.append(jnp.where(valid, new, 0))
      return jnp.sum(jnp.abs(jnp.stack(out, 1) - target) ** 2)

    argnums = (0, 1, 2, 3) if params is None else (0, 1, 2, 3, 4)
    args = (kernel, z, h0, bias, params)
    np.testing.assert_allclose(loss_kernel(*args), loss_loop(*args), rtol=1e-12)
    got = jax.grad(loss_kernel, argnums=argnums)(*args)
    want = jax.grad(loss_loop, argnums=argnums)(*args)
    for g, w in zip(got, want):
      assert np.max(np.abs(w)) > 1e-3
      np.testing.assert_allclose(g, w, rtol=0, atol=1e-10)


def test_heads_read_a_complex_cell_out_from_its_real_and_imaginary_parts(x64):
  cell = urnn_jax.UnitaryRNNCell(4, param_dtype=jnp.complex128)
  x = jax.random.normal(jax.random.key(1), (3, 7, 2), jnp.float64)
  reg = urnn_jax.SequenceRegressor(cell, 2, use_bias=True)
  v = reg.init(jax.random.key(0), x)
  assert v["params"]["readout"]["kernel"].shape == (8, 2)
  assert v["params"]["readout"]["kernel"].dtype == jnp.float64
  y = reg.apply(v, x)
  hs = reg.apply(v, x, method="hidden_states")
  assert hs.dtype == jnp.complex128 and y.dtype == jnp.float64 and y.shape == (3, 7, 2)
  feats = np.concatenate([np.real(hs), np.imag(hs)], -1)
  ro = v["params"]["readout"]
  np.testing.assert_allclose(y, feats @ np.asarray(ro["kernel"]) + np.asarray(ro["bias"]), atol=1e-13)
  np.testing.assert_array_equal(urnn_jax.recurrent.real_features(jnp.ones(3)), jnp.ones(3))
  with pytest.raises(ValueError, match="UnitaryRNNCell is not an eq. \\(1\\) cell"):
    urnn_jax.SequenceRegressor(cell, 2).apply(v, method="rnn_params")
  # The classifier: real logits from [Re h, Im h] of each sequence's last valid step.
  clf = urnn_jax.LastStateClassifier(cell, 5)
  cv = clf.init(jax.random.key(0), x)
  lengths = jnp.array([7, 2, 4])
  logits = clf.apply(cv, x, seq_lengths=lengths)
  hs = clf.apply(cv, x, method="hidden_states", seq_lengths=lengths)
  last = np.asarray(hs)[np.arange(3), np.asarray(lengths) - 1]
  head = cv["params"]["head"]
  np.testing.assert_allclose(
      logits, np.concatenate([last.real, last.imag], -1) @ np.asarray(head["kernel"]) + np.asarray(head["bias"]),
      atol=1e-13)
  assert logits.dtype == jnp.float64
  # A complex eq. (1) cell behind the regressor has no eq. (1) C: refused, with or without the model.
  ocell = urnn_jax.OrthogonalRNNCell(4, activation="tanh", param_dtype=jnp.complex128)
  oreg = urnn_jax.SequenceRegressor(ocell, 2)
  ov = oreg.init(jax.random.key(0), x)
  assert oreg.apply(ov, x).dtype == jnp.float64
  for call in (lambda: oreg.apply(ov, method="rnn_params"), lambda: urnn_jax.to_rnn_params(ov)):
    with pytest.raises(ValueError, match=r"the cell is complex, and the head reads it out from \[Re h, Im h\]"):
      call()
