"""Tests for urnn_jax.rnn: RNNParams, simulate, activations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import urnn_jax
from urnn_jax import rnn
from tests.reference import simulate_loop


def random_params(key, n, m, p, *, dtype=jnp.float64, scale=0.9, h0=True):
  k = jax.random.split(key, 5)
  w = jax.random.normal(k[0], (n, n), dtype)
  w = scale * w / jnp.linalg.norm(w, 2)
  return urnn_jax.RNNParams(
      W=w,
      F=jax.random.normal(k[1], (n, m), dtype),
      b=0.3 * jax.random.normal(k[2], (n,), dtype),
      C=jax.random.normal(k[3], (p, n), dtype),
      h0=(0.5 * jax.random.normal(k[4], (n,), dtype) if h0 else jnp.zeros((n,), dtype)),
  )


@pytest.mark.parametrize("activation", sorted(rnn.ACTIVATIONS))
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
def test_simulate_matches_python_loop(x64, activation, batch_shape):
  key = jax.random.key(0)
  params = random_params(key, n=5, m=3, p=2)
  x = jax.random.normal(jax.random.key(1), batch_shape + (40, 3), jnp.float64)
  y = urnn_jax.simulate(params, x, activation)
  assert y.shape == batch_shape + (40, 2)
  assert y.dtype == jnp.float64
  ref = simulate_loop(*params, x, activation)
  np.testing.assert_allclose(np.asarray(y), ref, rtol=0, atol=1e-10)


def test_simulate_accepts_callable_activation(x64):
  params = random_params(jax.random.key(2), n=4, m=2, p=3)
  x = jax.random.normal(jax.random.key(3), (5, 30, 2), jnp.float64)
  y = urnn_jax.simulate(params, x, jax.nn.softplus)
  h = np.asarray(params.h0)
  W, F, b, C = (np.asarray(v) for v in params[:4])
  xs = np.asarray(x)[1]
  for k in range(30):
    h = np.log1p(np.exp(W @ h + F @ xs[k] + b))
  np.testing.assert_allclose(np.asarray(y)[1, -1], C @ h, atol=1e-10)


def test_simulate_unroll_and_states(x64):
  params = random_params(jax.random.key(4), n=6, m=2, p=2)
  x = jax.random.normal(jax.random.key(5), (4, 25, 2), jnp.float64)
  y1 = urnn_jax.simulate(params, x)
  y4, hs = urnn_jax.simulate(params, x, unroll=4, return_states=True)
  np.testing.assert_allclose(y1, y4, atol=1e-12)
  assert hs.shape == (4, 25, 6)
  np.testing.assert_allclose(hs @ params.C.T, y1, atol=1e-12)


def test_simulate_jit_vmap_grad(x64):
  params = random_params(jax.random.key(6), n=4, m=2, p=2)
  x = jax.random.normal(jax.random.key(7), (3, 20, 2), jnp.float64)
  f = jax.jit(urnn_jax.simulate, static_argnames="activation")
  np.testing.assert_allclose(f(params, x, "tanh"), urnn_jax.simulate(params, x, "tanh"), atol=1e-12)

  # vmap over stacked params (e.g. realizations).
  stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
  ys = jax.vmap(lambda p: urnn_jax.simulate(p, x, "tanh"))(stacked)
  np.testing.assert_allclose(ys[0], urnn_jax.simulate(params, x, "tanh"), atol=1e-12)

  # grad against central finite differences in float64.
  def loss(p):
    return jnp.sum(urnn_jax.simulate(p, x, "tanh") ** 2)

  g = jax.grad(loss)(params)
  direction = jax.tree.map(lambda a: jax.random.normal(jax.random.key(8), a.shape, a.dtype), params)
  eps = 1e-6
  plus = jax.tree.map(lambda a, d: a + eps * d, params, direction)
  minus = jax.tree.map(lambda a, d: a - eps * d, params, direction)
  fd = (loss(plus) - loss(minus)) / (2 * eps)
  analytic = sum(jnp.vdot(a, d) for a, d in zip(jax.tree.leaves(g), jax.tree.leaves(direction)))
  np.testing.assert_allclose(analytic, fd, rtol=1e-6)


def _sub_jaxprs(eqn):
  for v in eqn.params.values():
    for item in v if isinstance(v, (tuple, list)) else (v,):
      if hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
        yield item.jaxpr  # ClosedJaxpr
      elif hasattr(item, "eqns"):
        yield item


def _find(jaxpr, name):
  """All equations named ``name`` anywhere in ``jaxpr`` (recursively)."""
  out = []
  for e in jaxpr.eqns:
    if e.primitive.name == name:
      out.append(e)
    for sub in _sub_jaxprs(e):
      out.extend(_find(sub, name))
  return out


def test_input_projection_is_hoisted_out_of_the_scan():
  """Only W h runs inside the loop: the scan body's one matmul is (n, n).

  n = 32 is above the size where the kernel switches its tiny-n matmul to an
  elementwise multiply-sum, so the body's product is a dot_general.
  """
  n, m = 32, 3
  params = random_params(jax.random.key(0), n=n, m=m, p=2, dtype=jnp.float32)
  x = jnp.ones((2, 10, m))
  jaxpr = jax.make_jaxpr(lambda p, x: urnn_jax.simulate(p, x))(params, x)
  scans = _find(jaxpr.jaxpr, "scan")
  assert len(scans) == 1
  body = scans[0].params["jaxpr"].jaxpr
  body_dots = _find(body, "dot_general")
  assert len(body_dots) == 1  # h @ W^T only
  assert {tuple(v.aval.shape) for v in body_dots[0].invars} == {(2, n), (n, n)}
  # Nothing of F's shape is used inside the loop.
  assert not any(
      tuple(v.aval.shape) in {(n, m), (m, n)} for e in body.eqns for v in e.invars if hasattr(v, "aval")
  )


def test_linear_case_matches_closed_form(x64):
  # identity activation, h0 = 0: y(k) = sum_j C W^(k-j) F x(j) + bias terms.
  n, m, p, T = 3, 2, 2, 12
  params = random_params(jax.random.key(9), n, m, p, h0=False)
  params = params._replace(b=jnp.zeros(n))
  x = np.asarray(jax.random.normal(jax.random.key(10), (T, m), jnp.float64))
  W, F, C = (np.asarray(v) for v in (params.W, params.F, params.C))
  expected = np.stack([
      sum(C @ np.linalg.matrix_power(W, k - j) @ F @ x[j] for j in range(k + 1)) for k in range(T)
  ])
  np.testing.assert_allclose(urnn_jax.simulate(params, x, "identity"), expected, atol=1e-10)


# ---------------------------------------------------------------- errors


def test_unknown_activation_lists_valid_names():
  with pytest.raises(ValueError, match="activation='swish'.*relu.*sigmoid"):
    rnn.get_activation("swish")
  with pytest.raises(TypeError, match="activation"):
    rnn.get_activation(3)


def test_x_feature_mismatch_names_x_and_F():
  params = urnn_jax.RNNParams.create(W=0.5 * jnp.eye(3), F=jnp.ones((3, 2)))
  with pytest.raises(ValueError, match=r"x has 4 features.*F has shape \(3, 2\)"):
    urnn_jax.simulate(params, jnp.ones((10, 4)))
  with pytest.raises(ValueError, match=r"x must have shape \(T, m\)"):
    urnn_jax.simulate(params, jnp.ones((10,)))


def test_non_square_W():
  with pytest.raises(ValueError, match=r"RNNParams.W must be square.*\(3, 2\)"):
    urnn_jax.RNNParams.create(W=jnp.ones((3, 2)), F=jnp.ones((3, 1)))


@pytest.mark.parametrize(
    "field,value,pattern",
    [
        ("F", jnp.ones((4, 2)), r"RNNParams.F must have shape \(n, m\) = \(3, m\)"),
        ("b", jnp.ones((4,)), r"RNNParams.b must have shape \(n,\) = \(3,\)"),
        ("C", jnp.ones((2, 4)), r"RNNParams.C must have shape \(p, n\) = \(p, 3\)"),
        ("h0", jnp.ones((2,)), r"RNNParams.h0 must have shape \(n,\) = \(3,\)"),
    ],
)
def test_inconsistent_params(field, value, pattern):
  good = urnn_jax.RNNParams.create(W=0.5 * jnp.eye(3), F=jnp.ones((3, 2)), C=jnp.ones((2, 3)))
  bad = good._replace(**{field: value})
  with pytest.raises(ValueError, match=pattern):
    urnn_jax.simulate(bad, jnp.ones((5, 2)))


def test_params_must_be_rnnparams():
  with pytest.raises(TypeError, match="RNNParams"):
    urnn_jax.simulate((jnp.eye(2),) * 5, jnp.ones((3, 2)))


def test_create_defaults():
  p = urnn_jax.RNNParams.create(W=jnp.eye(3), F=jnp.ones((3, 2)))
  assert p.b.shape == (3,) and p.h0.shape == (3,)
  np.testing.assert_array_equal(p.C, np.eye(3))
  assert (p.hidden_size, p.input_size, p.output_size) == (3, 2, 3)


def test_simulate_forward_mode_with_plain_gradient(x64):
  params = random_params(jax.random.key(11), n=3, m=2, p=2)
  x = jax.random.normal(jax.random.key(12), (15, 2), jnp.float64)
  dw = jax.random.normal(jax.random.key(13), (3, 3), jnp.float64)
  f = lambda w, cg: urnn_jax.simulate(params._replace(W=w), x, "tanh", custom_gradient=cg)
  _, tangent = jax.jvp(lambda w: f(w, False), (params.W,), (dw,))
  eps = 1e-6
  fd = (f(params.W + eps * dw, True) - f(params.W - eps * dw, True)) / (2 * eps)
  np.testing.assert_allclose(tangent, fd, atol=1e-7)
  with pytest.raises(TypeError):
    jax.jvp(lambda w: f(w, True), (params.W,), (dw,))


@pytest.mark.parametrize("rows", [1, 255, 256, 1000, 1031])
def test_row_gram_is_a_transpose_b(x64, rows):
  """row_gram equals a^T b computed by numpy."""
  k = jax.random.split(jax.random.key(7), 2)
  a = jax.random.normal(k[0], (rows, 5), jnp.float64)
  b = jax.random.normal(k[1], (rows, 3), jnp.float64)
  want = np.asarray(a).T @ np.asarray(b)
  for fn in (rnn.row_gram, jax.jit(rnn.row_gram)):
    got = fn(a, b)
    assert got.shape == (5, 3) and got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
  with pytest.raises(ValueError, match=r"\(N, p\) and \(N, q\)"):
    rnn.row_gram(a, b[:-1] if rows > 1 else b[:, 0])


def test_project_rows_values_and_gradients_match_the_matmul(x64):
  k = jax.random.split(jax.random.key(8), 3)
  x = jax.random.normal(k[0], (4, 300, 3), jnp.float64)
  w = jax.random.normal(k[1], (3, 6), jnp.float64)
  g = jax.random.normal(k[2], (4, 300, 6), jnp.float64)
  np.testing.assert_allclose(rnn.project_rows(x, w), x @ w, rtol=0, atol=1e-13)
  got = jax.grad(lambda x, w: jnp.sum(g * rnn.project_rows(x, w)), argnums=(0, 1))(x, w)
  want = jax.grad(lambda x, w: jnp.sum(g * (x @ w)), argnums=(0, 1))(x, w)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-11)
  # float32 in, float32 gradients out.
  got32 = jax.grad(lambda w: jnp.sum(rnn.project_rows(x.astype(jnp.float32), w)))(w.astype(jnp.float32))
  assert got32.dtype == jnp.float32


# ---------------------------------------------------------------------------
# Issue 22: bad input gets a clear error naming the argument, never a silent
# wrong answer. One test per class of bad input.
# ---------------------------------------------------------------------------


def test_integer_inputs_and_params_are_promoted_not_wrapped():
  # Integer arithmetic wrapped around: 3 * 100000 * 100000 overflows int32.
  big = 100_000
  theta_i = urnn_jax.RNNParams(3 * jnp.eye(2, dtype=jnp.int32), jnp.full((2, 1), big, jnp.int32),
                               jnp.zeros(2, jnp.int32), jnp.ones((1, 2), jnp.int32),
                               jnp.zeros(2, jnp.int32))
  theta_f = urnn_jax.RNNParams(*(a.astype(jnp.float32) for a in theta_i))
  x_i = jnp.full((4, 1), big, jnp.int32)
  want = urnn_jax.simulate(theta_f, x_i.astype(jnp.float32), "identity")
  for theta, x in ((theta_i, x_i), (theta_f, x_i), (theta_i, x_i.astype(jnp.float32))):
    y = urnn_jax.simulate(theta, x, "identity")
    assert y.dtype == jnp.float32  # the default float dtype (no floating input at all: too)
    np.testing.assert_array_equal(y, want)
  kernel, z = 3 * jnp.eye(2, dtype=jnp.int32), jnp.full((5, 3, 2), big, jnp.int32)
  want_hs = rnn.recurrence(kernel.astype(jnp.float32), z.astype(jnp.float32), jnp.zeros(2),
                           "identity")[1]
  for batch_major in (False, True):
    zz = jnp.swapaxes(z, 0, 1) if batch_major else z
    _, hs = rnn.recurrence(kernel, zz, jnp.zeros(2, jnp.int32), "identity",
                           bias=jnp.zeros(2, jnp.int32), batch_major=batch_major)
    assert hs.dtype == jnp.float32
    np.testing.assert_array_equal(jnp.swapaxes(hs, 0, 1) if batch_major else hs, want_hs)
  # Booleans too; and RNNParams.create builds floating params from integers.
  assert rnn.recurrence(kernel, z > 0, jnp.zeros(2, bool))[1].dtype == jnp.float32
  created = urnn_jax.RNNParams.create(W=jnp.eye(2, dtype=jnp.int32), F=jnp.ones((2, 1), jnp.int32))
  assert all(v.dtype == jnp.float32 for v in created)
  # Float inputs keep their dtype (x64 off: float32) -- nothing changes for them.
  assert urnn_jax.simulate(theta_f, x_i.astype(jnp.float32)).dtype == jnp.float32


def test_complex_needs_a_complex_capable_activation(x64):
  theta = urnn_jax.RNNParams.create(W=0.5 * jnp.eye(3), F=jnp.ones((3, 2)), C=jnp.ones((2, 3)))
  x = jnp.ones((2, 4, 2))
  z = jnp.ones((4, 2, 3))
  hint = r"complex cell"
  for act in ("relu", "leaky_relu", "abs", jax.nn.relu):
    name = act if isinstance(act, str) else "relu"
    with pytest.raises(TypeError, match=rf"simulate: x is complex \(complex128\), but the activation '{name}' is real-only.*{hint}"):
      urnn_jax.simulate(theta, 1j * x, act)
  with pytest.raises(TypeError, match=r"simulate: params.W is complex.*'relu' is real-only"):
    urnn_jax.simulate(theta._replace(W=theta.W * (1 + 1j)), x)
  real = dict(kernel=jnp.eye(3), z=z, h0=jnp.zeros(3), bias=None)
  for name, value in (("kernel", 1j * jnp.eye(3)), ("z", 1j * z), ("h0", jnp.zeros(3) + 1j),
                      ("bias", 1j * jnp.ones(3))):
    a = dict(real, **{name: value})
    for batch_major in (False, True):
      zz = jnp.swapaxes(a["z"], 0, 1) if batch_major else a["z"]
      with pytest.raises(TypeError, match=rf"recurrence: {name} is complex.*'relu' is real-only"):
        rnn.recurrence(a["kernel"], zz, a["h0"], "relu", bias=a["bias"], batch_major=batch_major)
  # The hook: complex-capable activations run (the complex answer), and a callable
  # may opt out with supports_complex = False.
  assert [rnn.supports_complex(a) for a in ("relu", "leaky_relu", "abs", "identity", "tanh",
                                            "sigmoid")] == [False] * 3 + [True] * 3
  y = urnn_jax.simulate(theta, 1j * x, "identity")
  np.testing.assert_allclose(y, 1j * urnn_jax.simulate(theta, x, "identity"), rtol=0, atol=1e-12)
  modrelu = lambda a: a / (1.0 + jnp.abs(a))
  assert jnp.iscomplexobj(rnn.recurrence(0.5j * jnp.eye(3), z, jnp.zeros(3), modrelu)[1])

  def real_only(a):
    return jnp.maximum(a, 0.0)

  real_only.supports_complex = False
  assert not rnn.supports_complex(real_only)
  with pytest.raises(TypeError, match=r"activation real_only is real-only"):
    rnn.recurrence(jnp.eye(3), 1j * z, jnp.zeros(3), real_only)


def test_lengths_must_be_integers_of_the_batch_shape():
  z = jnp.ones((4, 2, 3))
  zb = jnp.swapaxes(z, 0, 1)
  for bm, zz in ((False, z), (True, zb)):
    for bad in (jnp.array([1.5, 2.0]), jnp.array([True, False])):
      with pytest.raises(TypeError, match=r"recurrence: lengths must be integers, got dtype"):
        rnn.recurrence(jnp.eye(3), zz, jnp.zeros(3), lengths=bad, batch_major=bm)
    with pytest.raises(ValueError, match=r"lengths must have the batch shape \(2,\), got shape \(3,\)"):
      rnn.recurrence(jnp.eye(3), zz, jnp.zeros(3), lengths=jnp.array([1, 2, 3]), batch_major=bm)
    # The kernel defines every integer length (step k valid iff k < length; the layers
    # reject values outside [0, T]): below 0 acts as 0, above T as T, jit or not.
    ok = rnn.recurrence(jnp.eye(3), zz, jnp.zeros(3), lengths=jnp.array([0, 4]), batch_major=bm)
    for run in (rnn.recurrence, jax.jit(rnn.recurrence, static_argnames="batch_major")):
      out = run(jnp.eye(3), zz, jnp.zeros(3), lengths=jnp.array([-3, 9]), batch_major=bm)
      for a, b in zip(ok, out):
        np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match=r"batch shape \(2,\), got shape \(3, 2\)"):
    rnn.recurrence(jnp.eye(3), z, jnp.zeros(3), lengths=jnp.ones((3, 2), int))


def test_sizes_and_counts_must_be_positive_ints():
  theta = urnn_jax.RNNParams.create(W=0.5 * jnp.eye(2), F=jnp.ones((2, 1)))
  z = jnp.ones((3, 2))
  for bad, error in ((0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)):
    with pytest.raises(error, match=rf"simulate: unroll must be a positive int, got .*unroll={bad!r}"):
      urnn_jax.simulate(theta, jnp.ones((3, 1)), unroll=bad)
    for bm in (False, True):
      with pytest.raises(error, match=rf"recurrence: unroll must be a positive int, got .*unroll={bad!r}"):
        rnn.recurrence(jnp.eye(2), z[:, None] if not bm else z[None], jnp.zeros(2), unroll=bad,
                       batch_major=bm)
  with pytest.raises(ValueError, match=r"RNNParams.W must be square \(n, n\) with n >= 1, got shape \(0, 0\)"):
    urnn_jax.RNNParams.create(W=jnp.zeros((0, 0)), F=jnp.zeros((0, 1)))
  with pytest.raises(ValueError, match=r"h0 must be broadcastable to the state shape \(\*batch, n\) = \(2, 2\)"):
    rnn.recurrence(jnp.eye(2), jnp.ones((3, 2, 2)), jnp.zeros((3, 2)))
  # T = 0 is a valid, empty sequence.
  assert urnn_jax.simulate(theta, jnp.ones((0, 1))).shape == (0, 2)
