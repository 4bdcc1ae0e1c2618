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


# ---------------------------------------------------------------------------
# The complex unitary cell (issue 20): modReLU and UnitaryRNNCell.


def _np_modrelu(z, b, eps):
  """Independent reference: z / r * max(r + b, 0), r = sqrt(|z|^2 + eps^2), in NumPy."""
  z = np.asarray(z, np.complex128)
  r = np.sqrt(np.abs(z) ** 2 + eps ** 2)
  return z / r * np.maximum(r + np.asarray(b, np.float64), 0.0)


def test_modrelu_matches_numpy_and_the_exact_formula(x64):
  rng = np.random.RandomState(0)
  z = rng.randn(5, 7) + 1j * rng.randn(5, 7)
  b = rng.uniform(-1.5, 0.5, size=7)
  for eps in (1e-5, 0.3):
    got = np.asarray(urnn_jax.modrelu(jnp.asarray(z), jnp.asarray(b), eps=eps))
    np.testing.assert_allclose(got, _np_modrelu(z, b, eps), rtol=0, atol=1e-13)
  # Against the unsmoothed z/|z| relu(|z| + b): exact with eps=0, within eps^2-ish by default.
  exact = z / np.abs(z) * np.maximum(np.abs(z) + b, 0.0)
  np.testing.assert_allclose(urnn_jax.modrelu(jnp.asarray(z), jnp.asarray(b), eps=0.0), exact,
                             rtol=0, atol=1e-14)
  assert np.max(np.abs(np.asarray(urnn_jax.modrelu(jnp.asarray(z), jnp.asarray(b))) - exact)) < 1e-8
  # Units with |z| + b <= 0 are switched off; the phase is kept elsewhere.
  out = np.asarray(urnn_jax.modrelu(jnp.asarray(z), jnp.asarray(b), eps=0.0))
  off = np.abs(z) + b <= 0
  assert off.any() and (~off).any()
  np.testing.assert_array_equal(out[off], 0)
  np.testing.assert_allclose(np.angle(out[~off]), np.angle(z[~off]), atol=1e-12)
  # Real inputs: sign(z) relu(|z| + b).
  x = rng.randn(7)
  np.testing.assert_allclose(urnn_jax.modrelu(jnp.asarray(x), jnp.asarray(b), eps=0.0),
                             np.sign(x) * np.maximum(np.abs(x) + b, 0), atol=1e-14)


def test_modrelu_gradient_at_and_near_zero(x64):
  # The loss L = |modReLU(z)|^2 summed, differentiated in z (= x + iy) and b.
  def loss(z, b, eps):
    return jnp.sum(jnp.abs(urnn_jax.modrelu(z, b, eps=eps)) ** 2)

  for eps in (1e-5, 0.0):
    for b in (-0.3, 0.0, 0.4):
      bb = jnp.full((3,), b)
      z0 = jnp.zeros((3,), jnp.complex128)
      v = urnn_jax.modrelu(z0, bb, eps=eps)
      gz, gb = jax.grad(loss, argnums=(0, 1))(z0, bb, eps)
      assert np.all(np.isfinite(v)) and np.all(np.asarray(v) == 0)
      assert np.all(np.isfinite(gz)) and np.all(np.isfinite(gb))
      # The Jacobian at 0 (a JVP) is finite too: relu(eps + b) / eps times the tangent (0 if eps=0).
      _, tangent = jax.jvp(lambda z: urnn_jax.modrelu(z, bb, eps=eps), (z0,), (jnp.ones(3, jnp.complex128),))
      expected = 0.0 if eps == 0 else max(eps + b, 0.0) / eps
      np.testing.assert_allclose(tangent, expected, rtol=1e-10)
  # Near zero, the gradient is the finite-difference one (b < 0: the unit is off, gradient 0;
  # b = 0: modReLU is the identity up to eps, |z|^2 has gradient 2 conj... i.e. jax.grad = 2 z).
  z = jnp.asarray([1e-3 + 2e-3j, -3e-4j, 5e-2 + 0j])
  for b in (-0.3, 0.0, 0.2):
    bb = jnp.full((3,), b)
    g = jax.grad(loss)(z, bb, 1e-5)
    h = 1e-7
    for k in range(3):
      e = np.zeros(3, np.complex128)
      e[k] = 1.0
      dx = (loss(z + h * e, bb, 1e-5) - loss(z - h * e, bb, 1e-5)) / (2 * h)
      dy = (loss(z + 1j * h * e, bb, 1e-5) - loss(z - 1j * h * e, bb, 1e-5)) / (2 * h)
      # JAX's convention: grad = dL/dx - i dL/dy.
      np.testing.assert_allclose(complex(g[k]), complex(dx) - 1j * complex(dy), rtol=1e-5, atol=1e-9)
    if b < 0:
      np.testing.assert_array_equal(g[:2], 0)
  for bad, err, match in ((-1.0, ValueError, "eps must be a finite number >= 0, got eps=-1.0"),
                          ("x", TypeError, "eps must be a real number >= 0")):
    with pytest.raises(err, match=match):
      urnn_jax.modrelu(z, jnp.zeros(3), eps=bad)
  with pytest.raises(TypeError, match="modrelu: bias must be real.*complex128"):
    urnn_jax.modrelu(z, jnp.zeros(3, jnp.complex128))


def _unitary_loop(k, v, b, x, h0, eps):
  """Independent reference (NumPy, one step at a time): h = modReLU(h W^T... in rows: h K + x V^T)."""
  k, v, b, x = (np.asarray(a) for a in (k, v, b, x))
  h = np.broadcast_to(np.asarray(h0, np.complex128), x.shape[:-2] + (k.shape[0],)).copy()
  hs = []
  for t in range(x.shape[-2]):
    h = _np_modrelu(h @ k + x[..., t, :] @ v, b, eps)
    hs.append(h)
  return np.stack(hs, axis=-2)


def test_unitary_cell_contract_and_layout():
  cell = urnn_jax.UnitaryRNNCell(5)
  assert isinstance(cell, urnn_jax.HoistableCell) and cell.supports_complex
  carry = cell.initialize_carry(jax.random.key(0), (2, 3))
  assert carry.shape == (2, 5) and carry.dtype == jnp.complex64
  v = cell.init(jax.random.key(1), carry, jnp.ones((2, 3)))
  p = v["params"]
  assert jax.tree.map(lambda a: (a.shape, a.dtype.name), p) == {
      "input": {"kernel": ((3, 5), "complex64")}, "modrelu_bias": ((5,), "float32"),
      "recurrent_kernel": ((5, 5), "complex64")}
  assert float(orthogonal.orthogonality_error(p["recurrent_kernel"])) < 1e-5
  assert np.any(np.abs(np.imag(p["recurrent_kernel"])) > 0.1)  # genuinely complex
  h, y = cell.apply(v, carry, jnp.ones((2, 3)))
  assert h.dtype == jnp.complex64 and h.shape == (2, 5)
  np.testing.assert_array_equal(h, y)
  # b = 0 at init: modReLU is the identity (up to eps), so one step from 0 is x V^T.
  np.testing.assert_allclose(h, jnp.ones((2, 3)) @ p["input"]["kernel"], rtol=1e-5)
  # The constraint finds W by its default label.
  assert urnn_jax.optim.recurrent_kernel_mask(p) == {
      "input": {"kernel": False}, "modrelu_bias": False, "recurrent_kernel": True}


@pytest.mark.parametrize("time_major", [False, True])
def test_unitary_cell_fast_path_matches_a_plain_loop_values_and_gradients(x64, time_major):
  n, m, T, eps = 4, 3, 6, 1e-5
  cell = urnn_jax.UnitaryRNNCell(n, param_dtype=jnp.complex128, eps=eps,
                                 modrelu_bias_init=nn.initializers.uniform(0.6))
  layer = urnn_jax.Recurrent(cell, time_major=time_major)
  x = jax.random.normal(jax.random.key(1), (2, T, m), jnp.float64)
  xs = jnp.swapaxes(x, 0, 1) if time_major else x
  variables = layer.init(jax.random.key(0), xs)
  p = variables["params"]["cell"]
  # Shift b so that some units are switched off by modReLU (|a| + b <= 0) and others not.
  p = dict(p, modrelu_bias=jnp.linspace(-1.5, 0.3, n))
  hs = layer.apply({"params": {"cell": p}}, xs)
  hs = jnp.swapaxes(hs, 0, 1) if time_major else hs
  ref = _unitary_loop(p["recurrent_kernel"], p["input"]["kernel"], p["modrelu_bias"], x, 0.0, eps)
  assert hs.dtype == jnp.complex128
  np.testing.assert_allclose(hs, ref, rtol=0, atol=1e-12)
  assert np.any(np.asarray(hs) == 0) and np.any(np.abs(np.asarray(hs)) > 0)

  # Gradients (the custom VJP, with the modReLU bias) against plain autodiff of a Python loop.
  target = jax.random.normal(jax.random.key(2), (2, T, n)) + 1j * jax.random.normal(jax.random.key(3), (2, T, n))

  def loss_layer(p):
    out = layer.apply({"params": {"cell": p}}, xs)
    out = jnp.swapaxes(out, 0, 1) if time_major else out
    return jnp.sum(jnp.abs(out - target) ** 2)

  def loss_loop(p):
    h, out = jnp.zeros((2, n), jnp.complex128), []
    for t in range(T):
      h = urnn_jax.modrelu(h @ p["recurrent_kernel"] + x[:, t] @ p["input"]["kernel"],
                           p["modrelu_bias"], eps=eps)
      out.append(h)
    return jnp.sum(jnp.abs(jnp.stack(out, 1) - target) ** 2)

  g_layer, g_loop = jax.grad(loss_layer)(p), jax.grad(loss_loop)(p)
  np.testing.assert_allclose(loss_layer(p), loss_loop(p), rtol=1e-12)
  for name in ("recurrent_kernel", "modrelu_bias"):
    assert np.max(np.abs(g_loop[name])) > 1e-3
    np.testing.assert_allclose(g_layer[name], g_loop[name], rtol=0, atol=1e-10)
  np.testing.assert_allclose(g_layer["input"]["kernel"], g_loop["input"]["kernel"], rtol=0, atol=1e-10)
  assert g_layer["modrelu_bias"].dtype == jnp.float64


def test_unitary_cell_through_flax_rnn_and_with_a_parametrisation(x64):
  x = jax.random.normal(jax.random.key(1), (2, 6, 3), jnp.float64)
  cell = urnn_jax.UnitaryRNNCell(4, param_dtype=jnp.complex128)
  layer = urnn_jax.Recurrent(cell)
  v = layer.init(jax.random.key(0), x)
  rnn = nn.RNN(cell)
  np.testing.assert_allclose(rnn.apply(v, x), layer.apply(v, x), rtol=0, atol=1e-13)
  for par in ("expm", "cayley"):
    pcell = urnn_jax.UnitaryRNNCell(4, param_dtype=jnp.complex128, parametrization=par,
                                    generator_init=nn.initializers.normal(0.5))
    players = urnn_jax.Recurrent(pcell)
    pv = players.init(jax.random.key(0), x)
    assert set(pv) == {"params", "constants"} and "recurrent_kernel" not in pv["params"]["cell"]
    a = pv["params"]["cell"]["recurrent_generator"]
    assert a.dtype == jnp.complex128 and np.any(np.imag(a) != 0)
    k = players.apply(pv, method=lambda m: m.cell.transition_kernel())
    assert float(orthogonal.orthogonality_error(k)) < 1e-12
    skew = 0.5 * (np.asarray(a) - np.asarray(a).conj().T)
    import scipy.linalg
    m_ = scipy.linalg.expm(skew) if par == "expm" else np.linalg.solve(np.eye(4) - skew / 2, np.eye(4) + skew / 2)
    np.testing.assert_allclose(k, np.asarray(pv["constants"]["cell"]["base"]) @ m_, atol=1e-12)
    if par == "expm":
      prnn = nn.RNN(pcell, variable_broadcast=("params", "constants"))
      np.testing.assert_allclose(prnn.apply(pv, x), players.apply(pv, x), rtol=0, atol=1e-13)


def test_unitary_cell_rejects_bad_fields():
  x = jnp.ones((1, 2, 3))
  for kw, err, match in [
      ({"param_dtype": jnp.float32}, TypeError, r"UnitaryRNNCell: param_dtype must be a complex dtype.*float32"),
      ({"dtype": jnp.float64}, TypeError, r"UnitaryRNNCell: dtype must be a complex dtype.*float64"),
      ({"parametrization": "qr"}, ValueError, r"UnitaryRNNCell: parametrization='qr' is not supported"),
      ({"eps": -1.0}, ValueError, r"UnitaryRNNCell: eps must be a finite number >= 0"),
  ]:
    with pytest.raises(err, match=match):
      urnn_jax.Recurrent(urnn_jax.UnitaryRNNCell(3, **kw)).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"UnitaryRNNCell: features must be a positive int, got features=0"):
    urnn_jax.Recurrent(urnn_jax.UnitaryRNNCell(0)).init(jax.random.key(0), x)
