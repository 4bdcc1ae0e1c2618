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
