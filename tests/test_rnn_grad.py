"""The custom VJP of urnn_jax.recurrence against plain autodiff through lax.scan.

``recurrence(..., custom_gradient=False)`` differentiates the plain loop;
it is the reference. Everything runs in float64 unless a test says otherwise.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import urnn_jax
from urnn_jax.rnn import recurrence

NAMED = ["relu", "tanh", "sigmoid", "identity", "leaky_relu", "abs"]


def _soft(a):
  return a + 0.5 * jnp.sin(a)


def _kinked(a):  # a callable with a kink at 0 (derivative 1 there, by jnp.where)
  return jnp.where(a >= 0, 2.0 * a, 0.3 * a)


CALLABLES = {"soft": _soft, "kinked": _kinked, "softplus": jax.nn.softplus}


def _problem(key, T, batch_shape, n, *, h0_shape=None, dtype=jnp.float64):
  k = jax.random.split(key, 5)
  kernel = jax.random.normal(k[0], (n, n), dtype) * (0.9 / np.sqrt(n))
  z = jax.random.normal(k[1], (T,) + batch_shape + (n,), dtype)
  h0_shape = batch_shape + (n,) if h0_shape is None else h0_shape
  h0 = jax.random.normal(k[2], h0_shape, dtype)
  g_hs = jax.random.normal(k[3], z.shape, dtype)
  g_last = jax.random.normal(k[4], batch_shape + (n,), dtype)
  return kernel, z, h0, g_hs, g_last


def _loss(custom, activation, g_hs, g_last, lengths=None, unroll=1):
  def loss(kernel, z, h0):
    h_last, hs = recurrence(kernel, z, h0, activation, lengths=lengths, unroll=unroll,
                            custom_gradient=custom)
    return jnp.sum(jnp.real(g_hs * hs)) + jnp.sum(jnp.real(g_last * h_last))

  return loss


def _grads(custom, activation, kernel, z, h0, g_hs, g_last, **kw):
  return jax.grad(_loss(custom, activation, g_hs, g_last, **kw), argnums=(0, 1, 2))(kernel, z, h0)


def assert_trees_close(a, b, rtol=1e-10):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape and x.dtype == y.dtype
    scale = max(1.0, float(np.max(np.abs(y)))) if y.size else 1.0
    np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("batch_shape", [(), (2, 3)])
@pytest.mark.parametrize("activation", NAMED + list(CALLABLES))
def test_matches_plain_autodiff(x64, activation, batch_shape, masked):
  act = CALLABLES.get(activation, activation)
  T, n = 9, 4
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(0), T, batch_shape, n)
  lengths = None
  if masked:
    lengths = jnp.asarray(np.resize([9, 4, 0, 1, 12, 6], batch_shape)) if batch_shape else jnp.asarray(5)
  got = _grads(True, act, kernel, z, h0, g_hs, g_last, lengths=lengths)
  want = _grads(False, act, kernel, z, h0, g_hs, g_last, lengths=lengths)
  assert_trees_close(got, want)
  # Forward values do not depend on the gradient path.
  out_c = recurrence(kernel, z, h0, act, lengths=lengths)
  out_p = recurrence(kernel, z, h0, act, lengths=lengths, custom_gradient=False)
  assert_trees_close(out_c, out_p, rtol=0)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "abs", "kinked"])
def test_derivative_at_exact_kinks_matches_jax(x64, activation):
  # kernel = 0 and z with exact zeros: the pre-activations hit the kink at 0.
  act = CALLABLES.get(activation, activation)
  T, n = 6, 5
  _, z, h0, g_hs, g_last = _problem(jax.random.key(1), T, (3,), n)
  z = z.at[:, :, :2].set(0.0)
  kernel = jnp.zeros((n, n))
  got = _grads(True, act, kernel, z, h0, g_hs, g_last)
  want = _grads(False, act, kernel, z, h0, g_hs, g_last)
  assert_trees_close(got, want, rtol=1e-12)  # a wrong kink would be off by O(1)


@pytest.mark.parametrize("h0_shape", [(), (4,), (1, 4), (3, 4)])
def test_h0_broadcasting(x64, h0_shape):
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(2), 7, (3,), 4, h0_shape=h0_shape)
  got = _grads(True, "tanh", kernel, z, h0, g_hs, g_last)
  want = _grads(False, "tanh", kernel, z, h0, g_hs, g_last)
  assert got[2].shape == h0_shape
  assert_trees_close(got, want)


@pytest.mark.parametrize("T", [0, 1, 2])
def test_short_sequences(x64, T):
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(3), T, (2,), 3)
  assert_trees_close(_grads(True, "relu", kernel, z, h0, g_hs, g_last),
                     _grads(False, "relu", kernel, z, h0, g_hs, g_last))


def test_lengths_edge_values(x64):
  # Zero, negative, exactly T and beyond T.
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(4), 6, (5,), 3)
  lengths = jnp.array([0, -2, 6, 9, 3])
  got = _grads(True, "tanh", kernel, z, h0, g_hs, g_last, lengths=lengths)
  want = _grads(False, "tanh", kernel, z, h0, g_hs, g_last, lengths=lengths)
  assert_trees_close(got, want)
  # Steps past a sequence's end receive no gradient.
  np.testing.assert_array_equal(got[1][3:, 4], 0.0)
  np.testing.assert_array_equal(got[1][:, 0], 0.0)


def test_lengths_align_with_trailing_batch_axes(x64):
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(5), 6, (2, 3), 3)
  lengths = jnp.array([6, 2, 4])  # shape (3,) for batch (2, 3)
  assert_trees_close(_grads(True, "relu", kernel, z, h0, g_hs, g_last, lengths=lengths),
                     _grads(False, "relu", kernel, z, h0, g_hs, g_last, lengths=lengths))


@pytest.mark.parametrize("unroll", [2, 3])
def test_unroll(x64, unroll):
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(6), 7, (2,), 3)
  lengths = jnp.array([7, 3])
  assert_trees_close(
      _grads(True, "sigmoid", kernel, z, h0, g_hs, g_last, lengths=lengths, unroll=unroll),
      _grads(False, "sigmoid", kernel, z, h0, g_hs, g_last, lengths=lengths))


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "soft"])
def test_check_grads_numerically_to_second_order(x64, activation):
  act = CALLABLES.get(activation, activation)
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(7), 5, (2,), 3)
  lengths = jnp.array([5, 2])
  f = _loss(True, act, g_hs, g_last, lengths=lengths)
  check_grads(f, (kernel, z, h0), order=2, modes=["rev"], eps=1e-4, atol=1e-6, rtol=1e-6)


def test_grad_of_grad_matches_plain(x64):
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(8), 6, (3,), 4)
  v = jax.random.normal(jax.random.key(9), kernel.shape, jnp.float64)

  def hvp(custom):
    grad_k = jax.grad(_loss(custom, "tanh", g_hs, g_last), argnums=0)
    return jax.grad(lambda k, z, h0: jnp.vdot(grad_k(k, z, h0), v), argnums=(0, 1, 2))(kernel, z, h0)

  assert_trees_close(hvp(True), hvp(False))


def test_forward_mode_raises_clearly_and_plain_path_supports_it(x64):
  kernel, z, h0, _, _ = _problem(jax.random.key(10), 4, (2,), 3)
  f = lambda k: recurrence(k, z, h0, "tanh")[1]
  g = lambda k: recurrence(k, z, h0, "tanh", custom_gradient=False)[1]
  for forward in (lambda fn: jax.jvp(fn, (kernel,), (jnp.ones_like(kernel),)),
                  lambda fn: jax.jacfwd(fn)(kernel)):
    with pytest.raises(TypeError, match="forward-mode autodiff"):
      forward(f)
  # The plain path: forward mode works and agrees with the custom reverse mode.
  np.testing.assert_allclose(jax.jacfwd(g)(kernel), jax.jacrev(f)(kernel), atol=1e-12)


def test_forward_over_reverse_works(x64):
  # jax.hessian = jacfwd(jacrev(.)): forward mode through the custom *backward*
  # pass (plain JAX code) is supported and exact.
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(10), 4, (2,), 3)
  h_c = jax.hessian(_loss(True, "tanh", g_hs, g_last), argnums=(0, 2))(kernel, z, h0)
  h_p = jax.hessian(_loss(False, "tanh", g_hs, g_last), argnums=(0, 2))(kernel, z, h0)
  assert_trees_close(h_c, h_p)


def test_vmap_over_realizations_and_jit(x64):
  R, T, B, n = 3, 6, 2, 4
  keys = jax.random.split(jax.random.key(11), R)
  kernels, zs, h0s, ghs, gls = jax.vmap(lambda k: _problem(k, T, (B,), n))(keys)
  lengths = jnp.array([[6, 2], [3, 6], [0, 5]])

  def grads(custom, kernel, z, h0, g_hs, g_last, lengths):
    return jax.grad(_loss(custom, "relu", g_hs, g_last, lengths=lengths), argnums=(0, 1, 2))(kernel, z, h0)

  vm = jax.jit(jax.vmap(functools.partial(grads, True)))(kernels, zs, h0s, ghs, gls, lengths)
  for r in range(R):
    want = grads(False, kernels[r], zs[r], h0s[r], ghs[r], gls[r], lengths[r])
    assert_trees_close(jax.tree.map(lambda a: a[r], vm), want)


def test_vmap_of_grad_with_shared_inputs(x64):
  # Only the kernel is batched (the realizations' params); z is shared.
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(12), 5, (2,), 3)
  kernels = jnp.stack([kernel, 0.5 * kernel, -kernel])
  f = lambda custom: jax.vmap(jax.grad(_loss(custom, "tanh", g_hs, g_last), argnums=(0, 1)),
                              in_axes=(0, None, None))(kernels, z, h0)
  assert_trees_close(f(True), f(False))


def test_float32_and_mixed_dtypes():
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(13), 20, (4,), 8, dtype=jnp.float32)
  got = _grads(True, "relu", kernel, z, h0, g_hs, g_last)
  want = _grads(False, "relu", kernel, z, h0, g_hs, g_last)
  for a, b in zip(got, want):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))
  with jax.enable_x64(True):
    z64 = z.astype(jnp.float64)
    got = jax.grad(lambda k, z: jnp.sum(recurrence(k, z, h0, "tanh")[1]), argnums=(0, 1))(kernel, z64)
    want = jax.grad(lambda k, z: jnp.sum(recurrence(k, z, h0, "tanh", custom_gradient=False)[1]),
                    argnums=(0, 1))(kernel, z64)
    assert got[0].dtype == jnp.float32 and got[1].dtype == jnp.float64
    assert_trees_close(got, want, rtol=1e-6)


@pytest.mark.parametrize("activation", ["tanh", "identity", "modrelu_like"])
def test_complex(x64, activation):
  # Complex states: holomorphic (tanh, identity) and non-holomorphic callables.
  act = {"modrelu_like": lambda a: a / (1.0 + jnp.abs(a))}.get(activation, activation)
  k = jax.random.split(jax.random.key(14), 2)
  kernel, z, h0, g_hs, g_last = _problem(k[0], 5, (2,), 3)
  kernel2, z2, h02, _, _ = _problem(k[1], 5, (2,), 3)
  kernel = (kernel + 1j * kernel2) / 2
  z, h0 = z + 1j * z2, h0 + 1j * h02
  got = _grads(True, act, kernel, z, h0, g_hs, g_last)
  want = _grads(False, act, kernel, z, h0, g_hs, g_last)
  assert_trees_close(got, want)


@pytest.mark.parametrize("time_major", [False, True])
def test_layer_and_simulate_gradients_match_plain(x64, time_major):
  """Recurrent and simulate go through the custom VJPs; plain autodiff gives the same grads."""
  def model(custom):
    return urnn_jax.SequenceRegressor(urnn_jax.RNNCell(5, param_dtype=jnp.float64), 2,
                                      learn_initial_carry=True, custom_gradient=custom)

  x = jax.random.normal(jax.random.key(15), (3, 11, 2), jnp.float64)
  variables = model(True).init(jax.random.key(16), x)
  variables["params"]["rnn"]["initial_carry"] = jnp.linspace(-1, 1, 5)
  seq_lengths = jnp.array([11, 4, 7])

  def loss(v, custom):
    if time_major:  # The layer itself, time-major, with the regressor's parameters.
      layer = urnn_jax.Recurrent(urnn_jax.RNNCell(5, param_dtype=jnp.float64), time_major=True,
                                 learn_initial_carry=True, custom_gradient=custom)
      hs = layer.apply({"params": v["params"]["rnn"]}, jnp.moveaxis(x, 1, 0),
                       seq_lengths=seq_lengths)
      return jnp.sum(jnp.square(hs))
    return jnp.sum(jnp.square(model(custom).apply(v, x, seq_lengths=seq_lengths)))

  got = jax.grad(loss)(variables, True)
  want = jax.grad(loss)(variables, False)
  assert_trees_close(got, want)
  theta = urnn_jax.to_rnn_params(variables)
  g_sim = jax.grad(lambda t: jnp.sum(jnp.square(urnn_jax.simulate(t, x))))(theta)
  g_plain = jax.grad(lambda t: jnp.sum(jnp.square(
      urnn_jax.simulate(t, x, custom_gradient=False))))(theta)
  assert_trees_close(g_sim, g_plain)


def _batch_major_grads(custom, act, kernel, z, h0, g_hs, g_last, lengths=None, unroll=1):
  """Gradients through ``batch_major=True``, returned in the time-major layout."""
  zb, gb = jnp.moveaxis(z, 0, -2), jnp.moveaxis(g_hs, 0, -2)

  def loss(kernel, zb, h0):
    h_last, hs = recurrence(kernel, zb, h0, act, lengths=lengths, unroll=unroll,
                            custom_gradient=custom, batch_major=True)
    return jnp.sum(jnp.real(gb * hs)) + jnp.sum(jnp.real(g_last * h_last))

  dk, dzb, dh0 = jax.grad(loss, argnums=(0, 1, 2))(kernel, zb, h0)
  return dk, jnp.moveaxis(dzb, -2, 0), dh0


@pytest.mark.parametrize("custom", [True, False])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("batch_shape", [(), (2, 3)])
@pytest.mark.parametrize("activation", ["relu", "tanh", "identity", "soft"])
def test_batch_major_matches_time_major(x64, activation, batch_shape, masked, custom):
  act = CALLABLES.get(activation, activation)
  T, n = 9, 4
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(20), T, batch_shape, n)
  lengths = None
  if masked:
    lengths = jnp.asarray(np.resize([9, 4, 0, 1, 12, 6], batch_shape)) if batch_shape else jnp.asarray(5)
  got = _batch_major_grads(custom, act, kernel, z, h0, g_hs, g_last, lengths=lengths)
  want = _grads(False, act, kernel, z, h0, g_hs, g_last, lengths=lengths)
  assert_trees_close(got, want)
  h_last, hs = recurrence(kernel, jnp.moveaxis(z, 0, -2), h0, act, lengths=lengths,
                          batch_major=True, custom_gradient=custom)
  ref_last, ref_hs = recurrence(kernel, z, h0, act, lengths=lengths, custom_gradient=False)
  assert hs.shape == batch_shape + (T, n) and h_last.shape == batch_shape + (n,)
  assert_trees_close((h_last, jnp.moveaxis(hs, -2, 0)), (ref_last, ref_hs), rtol=1e-13)


@pytest.mark.parametrize("T", [0, 1, 2])
@pytest.mark.parametrize("h0_shape", [(), (4,), (3, 4)])
def test_batch_major_short_sequences_h0_and_unroll(x64, T, h0_shape):
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(21), T, (3,), 4, h0_shape=h0_shape)
  got = _batch_major_grads(True, "relu", kernel, z, h0, g_hs, g_last, unroll=2)
  assert got[2].shape == h0_shape
  assert_trees_close(got, _grads(False, "relu", kernel, z, h0, g_hs, g_last))


def test_batch_major_vmap_and_complex(x64):
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(22), 6, (4, 2), 3)
  zb = jnp.moveaxis(z, 0, -2)  # (4, 2, T, n): vmap over the leading axis
  f = lambda zb: recurrence(kernel, zb, h0[0], "tanh", batch_major=True)[1]
  np.testing.assert_allclose(jax.vmap(f)(zb), f(zb), rtol=0, atol=1e-14)
  kc = (kernel + 0.5j * kernel[::-1]) / 2
  zc = z + 1j * z[::-1]
  got = _batch_major_grads(True, "identity", kc, zc, h0, g_hs, g_last)
  assert_trees_close(got, _grads(False, "identity", kc, zc, h0, g_hs, g_last))


def test_batch_major_lengths_must_have_the_batch_shape():
  with pytest.raises(ValueError, match=r"batch shape \(2, 3\)"):
    recurrence(jnp.eye(3), jnp.ones((2, 3, 5, 3)), jnp.zeros(3), lengths=jnp.ones((3,), int),
               batch_major=True)
  with pytest.raises(ValueError, match=r"\(\*batch, T, n\)"):
    recurrence(jnp.eye(3), jnp.ones((4, 2)), jnp.zeros(3), batch_major=True)


def test_shape_errors():
  with pytest.raises(ValueError, match="square"):
    recurrence(jnp.ones((2, 3, 3)), jnp.ones((4, 3)), jnp.zeros(3))
  with pytest.raises(ValueError, match="n = 3"):
    recurrence(jnp.eye(3), jnp.ones((4, 2)), jnp.zeros(3))


@pytest.mark.parametrize("batch_major", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("activation", ["relu", "soft"])  # phi' from h / from a
def test_bias_in_the_loop_is_a_bias_added_to_z(x64, activation, masked, batch_major):
  """``bias=b`` gives the values and gradients of ``z + b`` (plain autodiff reference)."""
  act = CALLABLES.get(activation, activation)
  T, batch_shape, n = 7, (2, 3), 4
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(30), T, batch_shape, n)
  b = jax.random.normal(jax.random.key(31), (n,), jnp.float64)
  lengths = jnp.asarray([[7, 3, 0], [1, 9, 5]]) if masked else None
  to_layout = (lambda a: jnp.moveaxis(a, 0, -2)) if batch_major else (lambda a: a)

  def loss(custom, with_bias):
    def f(kernel, z, b, h0):
      zz, kw = (z, {"bias": b}) if with_bias else (z + b, {})
      h_last, hs = recurrence(kernel, to_layout(zz), h0, act, lengths=lengths,
                              custom_gradient=custom, batch_major=batch_major, **kw)
      hs = jnp.moveaxis(hs, -2, 0) if batch_major else hs  # back to (T, *batch, n)
      return jnp.sum(g_hs * hs) + jnp.sum(g_last * h_last)
    return f

  want = jax.grad(loss(False, False), argnums=(0, 1, 2, 3))(kernel, z, b, h0)
  for custom in (True, False):
    got = jax.grad(loss(custom, True), argnums=(0, 1, 2, 3))(kernel, z, b, h0)
    assert_trees_close(got, want)
    out = recurrence(kernel, to_layout(z), h0, act, bias=b, lengths=lengths,
                     custom_gradient=custom, batch_major=batch_major)
    ref = recurrence(kernel, to_layout(z + b), h0, act, lengths=lengths,
                     custom_gradient=False, batch_major=batch_major)
    assert_trees_close(out, ref, rtol=1e-14)


def test_bias_shape_and_dtype(x64):
  with pytest.raises(ValueError, match=r"bias must have shape \(3,\).*\(1, 3\)"):
    recurrence(jnp.eye(3), jnp.ones((4, 3)), jnp.zeros(3), bias=jnp.ones((1, 3)))
  _, hs = recurrence(jnp.eye(3, dtype=jnp.float32), jnp.ones((4, 3), jnp.float32),
                     jnp.zeros(3, jnp.float32), bias=np.ones(3, np.float64))
  assert hs.dtype == jnp.float64  # the bias takes part in the dtype promotion


# ---------------------------------------------------------------------------
# Activations with parameters: phi(a, p), p a differentiable input of the VJP.
# ---------------------------------------------------------------------------


def _modrelu(a, b):  # real modReLU with a learned per-unit bias b
  return jnp.sign(a) * jax.nn.relu(jnp.abs(a) + b)


def _leaky(a, slope):  # a learned per-unit negative slope
  return jnp.where(a >= 0, a, slope * a)


def _scaled_tanh(a, p):  # a pytree of parameters: per-unit gain, scalar offset
  return p["gain"] * jnp.tanh(a + p["shift"])


PARAM_ACTIVATIONS = {"modrelu": _modrelu, "leaky": _leaky, "scaled_tanh": _scaled_tanh}


def _activation_params(name, n, dtype=jnp.float64):
  k1, k2 = jax.random.split(jax.random.key(40))
  if name == "modrelu":
    return 0.3 * jax.random.normal(k1, (n,), dtype)
  if name == "leaky":
    return 0.1 + 0.2 * jax.random.uniform(k1, (n,), dtype)
  return {"gain": 1.0 + 0.2 * jax.random.normal(k1, (n,), dtype),
          "shift": jnp.asarray(0.1, dtype)}


def _param_loss(custom, act, g_hs, g_last, lengths=None, batch_major=False, unroll=1):
  def loss(kernel, z, h0, p):
    zz = jnp.moveaxis(z, 0, -2) if batch_major else z
    h_last, hs = recurrence(kernel, zz, h0, act, lengths=lengths, unroll=unroll,
                            custom_gradient=custom, batch_major=batch_major, activation_params=p)
    hs = jnp.moveaxis(hs, -2, 0) if batch_major else hs
    return jnp.sum(g_hs * hs) + jnp.sum(g_last * h_last)

  return loss


@pytest.mark.parametrize("batch_major", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("batch_shape", [(), (2, 3)])
@pytest.mark.parametrize("activation", sorted(PARAM_ACTIVATIONS))
def test_activation_params_match_plain_autodiff(x64, activation, batch_shape, masked, batch_major):
  act = PARAM_ACTIVATIONS[activation]
  T, n = 9, 4
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(41), T, batch_shape, n)
  p = _activation_params(activation, n)
  lengths = None
  if masked:
    lengths = jnp.asarray(np.resize([9, 4, 0, 1, 12, 6], batch_shape)) if batch_shape else jnp.asarray(5)
  args = (kernel, z, h0, p)
  got = jax.grad(_param_loss(True, act, g_hs, g_last, lengths, batch_major), argnums=(0, 1, 2, 3))(*args)
  want = jax.grad(_param_loss(False, act, g_hs, g_last, lengths), argnums=(0, 1, 2, 3))(*args)
  assert_trees_close(got, want, rtol=1e-12)
  assert all(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(got[3]))
  out = recurrence(kernel, jnp.moveaxis(z, 0, -2) if batch_major else z, h0, act,
                   lengths=lengths, batch_major=batch_major, activation_params=p)
  ref = recurrence(kernel, z, h0, lambda a: act(a, p), lengths=lengths, custom_gradient=False)
  out = (out[0], jnp.moveaxis(out[1], -2, 0)) if batch_major else out
  assert_trees_close(out, ref, rtol=0)


def test_activation_params_masked_steps_contribute_nothing(x64):
  # Only the loss at steps past a sequence's end: no gradient reaches p.
  T, n = 6, 3
  kernel, z, h0, _, _ = _problem(jax.random.key(42), T, (2,), n)
  p = _activation_params("modrelu", n)
  lengths = jnp.array([0, 0])
  for batch_major in (False, True):
    zz = jnp.moveaxis(z, 0, -2) if batch_major else z
    g = jax.grad(lambda p: jnp.sum(recurrence(kernel, zz, h0, _modrelu, lengths=lengths,
                                              batch_major=batch_major, activation_params=p)[1]))(p)
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("batch_major", [False, True])
def test_activation_params_second_order_and_unroll(x64, batch_major):
  T, n = 5, 3
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(43), T, (2,), n)
  p = _activation_params("scaled_tanh", n)
  lengths = jnp.array([5, 2])
  f = _param_loss(True, _scaled_tanh, g_hs, g_last, lengths, batch_major, unroll=2)
  check_grads(f, (kernel, z, h0, p), order=1, modes=["rev"], eps=1e-4, atol=1e-6, rtol=1e-6)
  # grad-of-grad (the backward pass differentiated again) equals plain autodiff's.
  v = jax.random.normal(jax.random.key(44), (n,), jnp.float64)

  def hvp(custom):
    gp = jax.grad(_param_loss(custom, _scaled_tanh, g_hs, g_last, lengths,
                              batch_major and custom), argnums=3)
    return jax.grad(lambda k, p: jnp.vdot(gp(k, z, h0, p)["gain"], v), argnums=(0, 1))(kernel, p)

  assert_trees_close(hvp(True), hvp(False))


def test_activation_params_jit_vmap_and_dtypes(x64):
  T, n = 6, 3
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(45), T, (2,), n)
  ps = jnp.stack([_activation_params("leaky", n), 0.5 * _activation_params("leaky", n)])
  f = lambda custom: jax.jit(jax.vmap(jax.grad(_param_loss(custom, _leaky, g_hs, g_last), argnums=3),
                                      in_axes=(None, None, None, 0)))(kernel, z, h0, ps)
  assert_trees_close(f(True), f(False))
  # float32 parameters of a float64 recurrence: the gradient keeps p's dtype.
  p32 = _activation_params("modrelu", n).astype(jnp.float32)
  g = jax.grad(_param_loss(True, _modrelu, g_hs, g_last), argnums=3)(kernel, z, h0, p32)
  assert g.dtype == jnp.float32
  # float64 parameters promote a float32 recurrence's states (as a bias does).
  _, hs = recurrence(kernel.astype(jnp.float32), z.astype(jnp.float32), h0.astype(jnp.float32),
                     _modrelu, activation_params=_activation_params("modrelu", n))
  assert hs.dtype == jnp.float64


def test_activation_params_need_a_callable():
  with pytest.raises(ValueError, match="activation_params need an activation phi"):
    recurrence(jnp.eye(3), jnp.ones((4, 3)), jnp.zeros(3), "relu", activation_params=jnp.ones(3))
  theta = urnn_jax.RNNParams.create(W=jnp.eye(3), F=jnp.ones((3, 1)))
  with pytest.raises(ValueError, match="simulate: activation_params"):
    urnn_jax.simulate(theta, jnp.ones((4, 1)), "tanh", activation_params=jnp.ones(3))


def test_simulate_with_activation_params(x64):
  theta = urnn_jax.RNNParams.create(W=0.5 * jnp.eye(3), F=jnp.ones((3, 2)), b=jnp.array([0.1, -0.2, 0.3]))
  x = jax.random.normal(jax.random.key(46), (2, 7, 2), jnp.float64)
  b = jnp.array([-0.3, 0.2, 0.05])
  y = urnn_jax.simulate(theta, x, _modrelu, activation_params=b)
  np.testing.assert_allclose(y, urnn_jax.simulate(theta, x, lambda a: _modrelu(a, b)), rtol=0, atol=0)
  loss = lambda custom: jax.grad(lambda b, t: jnp.sum(jnp.sin(urnn_jax.simulate(
      t, x, _modrelu, activation_params=b, custom_gradient=custom))), argnums=(0, 1))(b, theta)
  assert_trees_close(loss(True), loss(False))


# --- Through the layer: a cell with a learned activation parameter. -------------


class _LearnedActivationCell(urnn_jax.HoistableCell):
  """h' = phi(h K + x F^T + c, p), with phi's parameters p learned (not an RNNCell)."""

  features: int
  kind: str = "modrelu"

  def setup(self):
    n = self.features
    self.input_kernel = self.param("input_kernel", jax.nn.initializers.normal(1.0), (2, n),
                                   jnp.float64)
    self.input_bias = self.param("input_bias", jax.nn.initializers.normal(0.3), (n,), jnp.float64)
    self.recurrent_kernel = self.param("recurrent_kernel", urnn_jax.initializers.haar(), (n, n),
                                       jnp.float64)
    self.act_params = self.param("activation", lambda _: _activation_params(self.kind, n))

  def project_inputs(self, x, *, custom_gradient=False, separate_bias=False):
    z = x @ self.input_kernel
    return (z, self.input_bias) if separate_bias else z + self.input_bias

  def transition_kernel(self):
    return self.recurrent_kernel

  @property
  def activation_fn(self):
    return PARAM_ACTIVATIONS[self.kind]

  def activation_params(self):
    return self.act_params

  def initialize_carry(self, rng, input_shape):
    return jnp.zeros(tuple(input_shape[:-1]) + (self.features,), jnp.float64)


def _python_loop_states(p, x, lengths, kind):
  """A plain Python loop over the steps (batch-major x), differentiable by autodiff."""
  phi = PARAM_ACTIVATIONS[kind]
  h = jnp.zeros(x.shape[:1] + p["recurrent_kernel"].shape[-1:], x.dtype)
  out = []
  for k in range(x.shape[1]):
    h_new = phi(h @ p["recurrent_kernel"] + x[:, k] @ p["input_kernel"] + p["input_bias"],
                p["activation"])
    if lengths is None:
      h = h_new
      out.append(h_new)
    else:
      valid = (k < lengths)[:, None]
      h = jnp.where(valid, h_new, h)
      out.append(jnp.where(valid, h_new, 0.0))
  return jnp.stack(out, axis=1)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("kind", ["modrelu", "leaky"])
def test_layer_learned_activation_gradient(x64, kind, time_major, masked):
  cell = _LearnedActivationCell(5, kind=kind)
  x = jax.random.normal(jax.random.key(47), (3, 11, 2), jnp.float64)
  w = jax.random.normal(jax.random.key(48), (3, 11, 5), jnp.float64)
  lengths = jnp.array([11, 4, 7]) if masked else None
  variables = urnn_jax.Recurrent(cell).init(jax.random.key(49), x)
  params = variables["params"]

  def loss(p, custom):
    layer = urnn_jax.Recurrent(cell, time_major=time_major, custom_gradient=custom)
    xin = jnp.swapaxes(x, 0, 1) if time_major else x
    hs = layer.apply({"params": p}, xin, seq_lengths=lengths)
    hs = jnp.swapaxes(hs, 0, 1) if time_major else hs
    return jnp.sum(w * hs) + 0.5 * jnp.sum(hs ** 2)

  def loss_loop(p):
    hs = _python_loop_states(p["cell"], x, lengths, kind)
    return jnp.sum(w * hs) + 0.5 * jnp.sum(hs ** 2)

  got = jax.grad(loss)(params, True)
  assert np.all(np.abs(np.asarray(got["cell"]["activation"])) > 0)
  assert_trees_close(got, jax.grad(loss)(params, False))
  assert_trees_close(got, jax.grad(loss_loop)(params))
  np.testing.assert_allclose(loss(params, True), loss_loop(params), rtol=1e-13)
  if not masked:  # The cell's own step (HoistableCell.__call__) under flax.linen.RNN agrees.
    np.testing.assert_allclose(nn.RNN(cell).apply(variables, x),
                               _python_loop_states(params["cell"], x, None, kind), rtol=0, atol=1e-13)


# ---------------------------------------------------------------------------
# Opt-in rematerialisation (recurrence(..., remat=...)): the same values and
# gradients as the default custom VJP, to float64 rounding.
# ---------------------------------------------------------------------------


def _remat_loss(activation, g_hs, g_last, *, lengths, batch_major, remat, params=False):
  def loss(kernel, z, h0, bias, *p):
    zz = jnp.moveaxis(z, 0, -2) if batch_major else z
    h_last, hs = recurrence(kernel, zz, h0, activation, bias=bias, lengths=lengths,
                            batch_major=batch_major, remat=remat,
                            activation_params=p[0] if params else None)
    hs = jnp.moveaxis(hs, -2, 0) if batch_major else hs
    return jnp.sum(jnp.real(g_hs * hs)) + jnp.sum(jnp.real(g_last * h_last))

  return loss


@pytest.mark.parametrize("masked,batch_major", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("activation", ["relu", "soft", "modrelu"])  # phi' from h, from a, params
def test_remat_matches_default(x64, activation, masked, batch_major):
  T, batch_shape, n = 12, (3,), 4
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(60), T, batch_shape, n)
  bias = 0.1 * jax.random.normal(jax.random.key(61), (n,), jnp.float64)
  lengths = jnp.array([12, 5, 0]) if masked else None
  params = activation == "modrelu"
  act = PARAM_ACTIVATIONS["modrelu"] if params else CALLABLES.get(activation, activation)
  args = (kernel, z, h0, bias) + ((_activation_params("modrelu", n),) if params else ())
  argnums = tuple(range(len(args)))
  want = jax.grad(_remat_loss(act, g_hs, g_last, lengths=lengths, batch_major=batch_major,
                              remat=False, params=params), argnums=argnums)(*args)
  for remat in ((True, 1, 4, 12) if activation == "relu" else (True, 4)):  # True: S = 3
    loss = _remat_loss(act, g_hs, g_last, lengths=lengths, batch_major=batch_major,
                       remat=remat, params=params)
    assert_trees_close(jax.grad(loss, argnums=argnums)(*args), want)
    assert float(loss(*args)) == pytest.approx(float(
        _remat_loss(act, g_hs, g_last, lengths=lengths, batch_major=batch_major, remat=False,
                    params=params)(*args)), rel=1e-12)


def test_remat_layer_complex_jit_and_errors(x64):
  # The layer passes remat through; complex (UnitaryRNNCell-like) states and jit work.
  x = jax.random.normal(jax.random.key(62), (2, 8, 3), jnp.float64)
  layer = urnn_jax.Recurrent(urnn_jax.RNNCell(4, activation="tanh", param_dtype=jnp.float64))
  variables = layer.init(jax.random.key(63), x)
  grads = [jax.jit(jax.grad(lambda v, r=r: jnp.sum(jnp.sin(layer.clone(remat=r).apply(v, x)))))(
      variables) for r in (False, True, 2)]
  assert_trees_close(grads[1], grads[0])
  assert_trees_close(grads[2], grads[0])
  kernel, z, h0, g_hs, g_last = _problem(jax.random.key(64), 6, (2,), 3, dtype=jnp.complex128)
  loss = lambda r: (lambda k, z, h0: _remat_loss("tanh", g_hs, g_last, lengths=None,
                                                 batch_major=False, remat=r)(k, z, h0, None))
  assert_trees_close(jax.grad(loss(2), argnums=(0, 1, 2))(kernel, z, h0),
                     jax.grad(loss(False), argnums=(0, 1, 2))(kernel, z, h0))
  assert urnn_jax.rnn.remat_segment(1000, True) == 25
  assert urnn_jax.rnn.remat_segment(100_000, True) == 250
  with pytest.raises(ValueError, match="must divide"):
    recurrence(kernel, z, h0, "tanh", remat=4)
  with pytest.raises(ValueError, match="remat"):
    recurrence(kernel, z, h0, "tanh", remat=0)
  with pytest.raises(ValueError, match="custom_gradient"):
    recurrence(kernel, z, h0, "tanh", remat=True, custom_gradient=False)
  with pytest.raises(TypeError, match="remat"):
    recurrence(kernel, z, h0, "tanh", remat=2.0)
