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


# ---------------------------------------------------------------------------
# The public fast-cell protocol: urnn_jax.HoistableCell.
# ---------------------------------------------------------------------------


class _ScaledTanhCell(urnn_jax.HoistableCell):
  """A third-party cell (not an RNNCell): h' = tanh(h K + x F^T), K = s * Q, no bias."""

  features: int
  scale: float = 0.9

  def setup(self):
    self.dense = nn.Dense(self.features, use_bias=False, param_dtype=jnp.float64)
    self.q = self.param("q", nn.initializers.orthogonal(), (self.features, self.features),
                        jnp.float64)

  def project_inputs(self, x, *, custom_gradient=False, separate_bias=False):
    z = self.dense(x)
    return (z, None) if separate_bias else z

  def transition_kernel(self):
    return self.scale * self.q

  @property
  def activation_fn(self):
    return jnp.tanh

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    return jnp.zeros(tuple(input_shape[:-1]) + (self.features,), jnp.float64)


def _spy_on_recurrence(monkeypatch):
  from urnn_jax import recurrent

  calls = []
  real = recurrent.recurrence

  def spy(*args, **kwargs):
    calls.append(kwargs)
    return real(*args, **kwargs)

  monkeypatch.setattr(recurrent, "recurrence", spy)
  return calls


def test_hoistable_cell_is_public_and_the_paper_cells_follow_it():
  assert "HoistableCell" in urnn_jax.__all__
  assert urnn_jax.HoistableCell is urnn_jax.cells.HoistableCell
  for cell in (urnn_jax.RNNCell(3), urnn_jax.OrthogonalRNNCell(3, parametrization="expm")):
    assert isinstance(cell, urnn_jax.HoistableCell)
  assert not isinstance(nn.LSTMCell(3), urnn_jax.HoistableCell)
  assert not isinstance(nn.SimpleCell(3), urnn_jax.HoistableCell)  # has activation_fn, no opt-in
  assert urnn_jax.RNNCell(3).activation_params() is None


@pytest.mark.parametrize("time_major", [False, True])
def test_third_party_cell_gets_the_fast_path(x64, monkeypatch, time_major):
  cell = _ScaledTanhCell(4)
  x = jax.random.normal(jax.random.key(2), (3, 8, 2), jnp.float64)
  xin = jnp.swapaxes(x, 0, 1) if time_major else x
  lengths = jnp.array([8, 3, 5])
  calls = _spy_on_recurrence(monkeypatch)
  layer = urnn_jax.Recurrent(cell, time_major=time_major)
  v = layer.init(jax.random.key(0), xin)
  ys = layer.apply(v, xin, seq_lengths=lengths)
  assert calls and calls[-1]["batch_major"] is (not time_major)
  assert calls[-1]["bias"] is None and calls[-1]["activation_params"] is None
  # The same as the cell's own step, scanned by flax.linen.RNN (no fast path there).
  ref = nn.RNN(cell).apply(v, x, seq_lengths=lengths)
  ys = jnp.swapaxes(ys, 0, 1) if time_major else ys
  for i, length in enumerate([8, 3, 5]):
    np.testing.assert_allclose(ys[i, :length], ref[i, :length], rtol=0, atol=1e-13)
  # ...and its gradient is the custom VJP's: equal to plain autodiff.
  loss = lambda custom: jax.grad(lambda v: jnp.sum(jnp.sin(urnn_jax.Recurrent(
      cell, time_major=time_major, custom_gradient=custom).apply(v, xin, seq_lengths=lengths))))(v)
  for a, b in zip(jax.tree.leaves(loss(True)), jax.tree.leaves(loss(False))):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_cells_without_the_protocol_take_the_generic_path(monkeypatch):
  calls = _spy_on_recurrence(monkeypatch)
  x = jnp.ones((2, 5, 3))
  layer = urnn_jax.Recurrent(nn.SimpleCell(4))
  layer.apply(layer.init(jax.random.key(0), x), x)
  assert not calls
  layer = urnn_jax.Recurrent(urnn_jax.RNNCell(4))
  layer.apply(layer.init(jax.random.key(0), x), x)
  assert len(calls) == 2 and calls[-1]["activation_params"] is None  # init and apply


def test_incomplete_hoistable_cell_names_the_missing_piece():
  class NoKernel(urnn_jax.HoistableCell):
    def project_inputs(self, x, *, custom_gradient=False, separate_bias=False):
      return (x, None) if separate_bias else x

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
      return jnp.zeros(input_shape)

  with pytest.raises(NotImplementedError, match="NoKernel: a HoistableCell must implement transition_kernel"):
    urnn_jax.Recurrent(NoKernel()).init(jax.random.key(0), jnp.ones((1, 2, 3)))


@pytest.mark.parametrize("parametrization", [None, "expm", "cayley"])
def test_cell_rnn_params(x64, parametrization):
  cell = urnn_jax.OrthogonalRNNCell(4, parametrization=parametrization, param_dtype=jnp.float64,
                                    generator_init=nn.initializers.normal(0.5),
                                    bias_init=nn.initializers.normal(1.0))
  x = jax.random.normal(jax.random.key(3), (2, 6, 3), jnp.float64)
  v = cell.init(jax.random.key(0), jnp.zeros((2, 4)), x[:, 0])
  theta = cell.apply(v, method="rnn_params")
  np.testing.assert_array_equal(theta.W, cell.apply(v, method="transition_kernel").T)
  np.testing.assert_array_equal(theta.F, v["params"]["input"]["kernel"].T)
  np.testing.assert_array_equal(theta.b, v["params"]["input"]["bias"])
  np.testing.assert_array_equal(theta.C, np.eye(4))
  np.testing.assert_array_equal(theta.h0, 0.0)
  rnn = nn.RNN(cell, variable_broadcast=("params", "constants"))
  rnn_vars = {col: {"cell": tree} for col, tree in v.items()}
  np.testing.assert_allclose(urnn_jax.simulate(theta, x), rnn.apply(rnn_vars, x), rtol=0, atol=1e-12)
  # to_rnn_params takes the flax layer as the model, too.
  for a, b in zip(urnn_jax.to_rnn_params(rnn_vars, rnn), theta):
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# Issue 22: bad input gets a clear error naming the field, never a silent wrong
# answer. One test per class of bad input.
# ---------------------------------------------------------------------------


def test_integer_inputs_and_variables_are_promoted_and_integer_dtypes_rejected():
  # carry @ K in int32 wrapped around (1e5 * 1e5 > 2^31).
  cell = urnn_jax.RNNCell(3, activation="identity")
  v = cell.init(jax.random.key(0), jnp.zeros((2, 3)), jnp.ones((2, 2)))
  v_int = jax.tree.map(lambda a: jnp.round(a * 100_000).astype(jnp.int32), v)
  v_float = jax.tree.map(lambda a: a.astype(jnp.float32), v_int)
  carry, x = jnp.full((2, 3), 100_000, jnp.int32), jnp.full((2, 2), 100_000, jnp.int32)
  h, _ = cell.apply(v_int, carry, x)
  assert h.dtype == jnp.float32
  np.testing.assert_allclose(h, cell.apply(v_float, carry.astype(jnp.float32),
                                           x.astype(jnp.float32))[0], rtol=1e-6)
  # The same through flax's RNN (the cell's own step).
  xs = jnp.full((2, 4, 2), 100_000, jnp.int32)
  np.testing.assert_allclose(nn.RNN(cell).apply({"params": {"cell": v_int["params"]}}, xs),
                             nn.RNN(cell).apply({"params": {"cell": v_float["params"]}},
                                                xs.astype(jnp.float32)), rtol=1e-6)
  for field in ("param_dtype", "dtype"):
    for cls in (urnn_jax.RNNCell, urnn_jax.OrthogonalRNNCell):
      with pytest.raises(TypeError, match=rf"{cls.__name__}: {field} must be a floating or complex dtype.*{field}='int32'"):
        urnn_jax.Recurrent(cls(3, **{field: jnp.int32})).init(jax.random.key(0), jnp.ones((1, 2, 2)))


def test_real_cells_reject_complex_and_complex_cells_opt_in(x64):
  x = jnp.ones((2, 5, 2))
  cell = urnn_jax.OrthogonalRNNCell(3, param_dtype=jnp.float64)
  v = cell.init(jax.random.key(0), jnp.zeros((2, 3)), x[:, 0])
  assert not cell.supports_complex and not urnn_jax.RNNCell(3).supports_complex
  real = r"the cell OrthogonalRNNCell \(param_dtype=float64\) is real.*complex cell"
  with pytest.raises(TypeError, match=rf"OrthogonalRNNCell: inputs is complex \(complex128\), but {real}"):
    cell.apply(v, jnp.zeros((2, 3)), 1j * x[:, 0])
  with pytest.raises(TypeError, match=rf"carry is complex.*{real}"):
    cell.apply(v, jnp.zeros((2, 3)) + 1j, x[:, 0])
  with pytest.raises(TypeError, match=rf"the recurrent kernel is complex.*{real}"):
    cell.apply(jax.tree.map(lambda a: a * (1 + 0j), v), jnp.zeros((2, 3)), x[:, 0])
  with pytest.raises(TypeError, match=real):  # flax's RNN runs the cell's own step
    nn.RNN(cell).apply({"params": {"cell": v["params"]}}, 1j * x)
  # A complex cell (complex param_dtype) with a complex-capable activation runs...
  for act in ("identity", lambda a: a / (1.0 + jnp.abs(a))):
    ccell = urnn_jax.OrthogonalRNNCell(3, activation=act, param_dtype=jnp.complex128)
    assert ccell.supports_complex
    cv = ccell.init(jax.random.key(0), jnp.zeros((2, 3), jnp.complex128), x[:, 0])
    h, _ = ccell.apply(cv, jnp.zeros((2, 3), jnp.complex128), 1j * x[:, 0])
    assert h.dtype == jnp.complex128
  # ...one with a real-only activation is created (init only builds the parameters) but
  # not applied: relu would compare complex numbers lexicographically.
  rcell = urnn_jax.OrthogonalRNNCell(3, param_dtype=jnp.complex128)
  rv = rcell.init(jax.random.key(0), jnp.zeros((2, 3), jnp.complex128), x[:, 0])
  with pytest.raises(TypeError, match=r"OrthogonalRNNCell: .*complex.*the activation 'relu' is real-only"):
    rcell.apply(rv, jnp.zeros((2, 3), jnp.complex128), x[:, 0])
  # A third-party HoistableCell is real unless it opts in.
  assert not _ScaledTanhCell(3).supports_complex

  class ComplexScaledTanhCell(_ScaledTanhCell):
    supports_complex = True

  layer = urnn_jax.Recurrent(_ScaledTanhCell(3))
  lv = layer.init(jax.random.key(0), x)
  with pytest.raises(TypeError, match=r"Recurrent: x is complex.*_ScaledTanhCell is real"):
    layer.apply(lv, 1j * x)
  ys = urnn_jax.Recurrent(ComplexScaledTanhCell(3)).apply(lv, 1j * x)
  assert ys.dtype == jnp.complex128


def test_bad_sizes_fail_with_the_field_name():
  x = jnp.ones((2, 4, 1))
  for bad, error in ((-3, ValueError), (0, ValueError), (2.5, TypeError), (True, TypeError)):
    for cls in (urnn_jax.RNNCell, urnn_jax.OrthogonalRNNCell):
      pattern = rf"{cls.__name__}: features must be a positive int, got .*features={bad!r}"
      with pytest.raises(error, match=pattern):  # Recurrent builds the carry first
        urnn_jax.Recurrent(cls(bad)).init(jax.random.key(0), x)
      with pytest.raises(error, match=pattern):
        cls(bad).initialize_carry(jax.random.key(0), (2, 1))
      with pytest.raises(error, match=pattern):
        nn.RNN(cls(bad)).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"rebase: cell_params must be the parametrised cell's own sub-dict holding 'recurrent_generator'"):
    urnn_jax.rebase({"recurrent_kernel": jnp.eye(2)}, {"base": jnp.eye(2)})
