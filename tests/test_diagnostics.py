"""Tests for urnn_jax.diagnostics: hidden-state gradients and seed 002's Jacobian bound."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import urnn_jax
from tests.reference import NP_ACTIVATIONS
from urnn_jax import diagnostics, initializers
from urnn_jax.rnn import recurrence


def random_params(seed, n, m, *, w=None, dtype=jnp.float64):
  k = jax.random.split(jax.random.key(seed), 4)
  if w is None:
    w = jax.random.normal(k[0], (n, n), dtype) / np.sqrt(n)
  return urnn_jax.RNNParams.create(
      W=jnp.asarray(w, dtype),
      F=jax.random.normal(k[1], (n, m), dtype),
      b=0.1 * jax.random.normal(k[2], (n,), dtype),
      C=jax.random.normal(k[3], (2, n), dtype),
  )


def loop_loss(params, x, activation, loss_np, perturb_step=None, delta=None):
  """NumPy loop of eq. (1) with ``delta`` added to the state at one step."""
  phi = NP_ACTIVATIONS[activation]
  W, F, b, h0 = (np.asarray(v, np.float64) for v in (params.W, params.F, params.b, params.h0))
  h = h0.copy()
  hs = []
  for k, x_k in enumerate(np.asarray(x, np.float64)):
    h = phi(W @ h + F @ x_k + b)
    if k == perturb_step:
      h = h + delta
    hs.append(h)
  return loss_np(np.stack(hs))


def test_perturbed_states_with_zero_is_simulate():
  theta = random_params(0, 5, 3, dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(1), (2, 9, 3))
  _, hs = urnn_jax.simulate(theta, x, "tanh", return_states=True)
  got = diagnostics.perturbed_states(theta, x, jnp.zeros((2, 9, 5)), "tanh")
  np.testing.assert_allclose(got, hs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_hidden_gradients_match_finite_differences(x64, activation):
  n, m, t = 4, 2, 8
  theta = random_params(1, n, m)
  x = jax.random.normal(jax.random.key(2), (t, m), jnp.float64)
  u = np.linspace(-1.0, 1.0, n)
  wts = np.linspace(0.5, 1.5, t)

  # A loss that reads every state (so the direct term and the chain through later steps both count).
  def loss_jax(hs):
    return jnp.sum(wts[:, None] * jnp.sin(hs @ u)[:, None])

  def loss_np(hs):
    return float(np.sum(wts * np.sin(hs @ u)))

  g = np.asarray(diagnostics.hidden_gradients(theta, x, loss_jax, activation))
  assert g.shape == (t, n)
  eps = 1e-6
  rng = np.random.default_rng(0)
  for k in range(t):
    v = rng.normal(size=n)
    fd = (loop_loss(theta, x, activation, loss_np, k, eps * v) - loop_loss(theta, x, activation, loss_np, k, -eps * v)) / (2 * eps)
    assert g[k] @ v == pytest.approx(fd, rel=1e-5, abs=1e-8)
  norms = np.asarray(diagnostics.hidden_gradient_norms(theta, x, loss_jax, activation))
  np.testing.assert_allclose(norms, np.linalg.norm(g, axis=-1), rtol=1e-12)


def test_hidden_gradient_norms_match_jvp_of_the_future(x64):
  """For a loss on the last state, dL/dh(k) is the gradient of the map h(k) -> L
  obtained by restarting the recurrence from h(k); checked with jax.jvp per direction."""
  n, m, t = 5, 3, 7
  theta = random_params(3, n, m)
  x = jax.random.normal(jax.random.key(4), (t, m), jnp.float64)
  c = jnp.arange(1.0, n + 1.0)
  loss = lambda h_last: jnp.tanh(h_last @ c)
  norms = np.asarray(diagnostics.hidden_gradient_norms(theta, x, lambda hs: loss(hs[-1]), "tanh"))
  _, hs = urnn_jax.simulate(theta, x, "tanh", return_states=True)
  eye = jnp.eye(n, dtype=jnp.float64)
  for k in (0, 3, t - 1):
    if k == t - 1:
      future = loss
    else:
      # Restart eq. (1) from h(k) with the library's scan kernel (plain lax.scan, so jvp works).
      z = x[k + 1:] @ theta.F.T + theta.b
      future = lambda h, z=z: loss(recurrence(theta.W.T, z, h, "tanh", custom_gradient=False)[0])
    # The full gradient from n jvps along the basis directions (one compiled call).
    grad = jax.jit(jax.vmap(lambda e: jax.jvp(future, (hs[k],), (e,))[1]))(eye)
    assert norms[k] == pytest.approx(float(jnp.linalg.norm(grad)), rel=1e-10)


def test_batched_norms_are_per_sequence(x64):
  theta = random_params(5, 3, 2)
  x = jax.random.normal(jax.random.key(6), (4, 6, 2), jnp.float64)
  loss = lambda hs: jnp.sum(hs[..., -1, :] ** 2)
  batched = diagnostics.hidden_gradient_norms(theta, x, loss, "tanh")
  assert batched.shape == (4, 6)
  for i in (0, 3):
    single = diagnostics.hidden_gradient_norms(theta, x[i], lambda hs: jnp.sum(hs[-1] ** 2), "tanh")
    np.testing.assert_allclose(batched[i], single, rtol=1e-12)


def test_orthogonal_linear_rnn_conserves_gradient_norm(x64):
  n, t = 6, 30
  w = initializers.haar()(jax.random.key(0), (n, n), jnp.float64)
  theta = random_params(7, n, 2, w=w)
  x = jax.random.normal(jax.random.key(8), (t, 2), jnp.float64)
  u = jnp.ones(n)
  norms = diagnostics.hidden_gradient_norms(theta, x, lambda hs: hs[-1] @ u, "identity")
  np.testing.assert_allclose(norms, np.sqrt(n), rtol=1e-10)
  # A contraction 0.5 I makes them vanish geometrically: ||g_k|| = 0.5^(T-1-k) sqrt(n).
  theta_c = theta._replace(W=0.5 * jnp.eye(n))
  norms_c = diagnostics.hidden_gradient_norms(theta_c, x, lambda hs: hs[-1] @ u, "identity")
  np.testing.assert_allclose(norms_c, 0.5 ** np.arange(t - 1, -1, -1) * np.sqrt(n), rtol=1e-10)


def test_step_jacobians_match_autodiff(x64):
  theta = random_params(9, 4, 2)
  x = jax.random.normal(jax.random.key(10), (5, 2), jnp.float64)
  jac, dphi = diagnostics.step_jacobians(theta, x, "tanh")
  _, hs = urnn_jax.simulate(theta, x, "tanh", return_states=True)
  step = lambda h, x_k: jnp.tanh(theta.W @ h + theta.F @ x_k + theta.b)
  for k in range(1, 5):
    np.testing.assert_allclose(jac[k], jax.jacfwd(step)(hs[k - 1], x[k]), rtol=1e-12)
  assert np.all((dphi > 0) & (dphi <= 1))


def test_bound_orthogonal_tanh(x64):
  """Orthogonal W: singular values = |eigenvalues| = 1, and a_k <= sigma(J_k) <= b_k."""
  n, t = 6, 25
  w = initializers.haar()(jax.random.key(1), (n, n), jnp.float64)
  theta = random_params(11, n, 3, w=w)
  x = jax.random.normal(jax.random.key(12), (t, 3), jnp.float64)
  r = diagnostics.jacobian_bound_check(theta, x, "tanh")
  assert r["is_normal_W"]
  assert r["sigma_min_W"] == pytest.approx(1.0) and r["sigma_max_W"] == pytest.approx(1.0)
  assert r["eig_abs_min_W"] == pytest.approx(1.0) and r["eig_abs_max_W"] == pytest.approx(1.0)
  assert r["svd_bound_holds"] and r["eig_bound_holds"] and r["product_bound_holds"]
  assert r["autodiff_matches"]
  assert 0 < r["a_min"] <= r["b_max"] <= 1
  # With W orthogonal, sigma(J_k) are exactly |phi'(z_k)| (sorted).
  jac, dphi = diagnostics.step_jacobians(theta, x, "tanh")
  for k in range(t):
    np.testing.assert_allclose(np.linalg.svd(jac[k], compute_uv=False), np.sort(np.abs(dphi[k]))[::-1], rtol=1e-10)


def test_bound_eigenvalue_version_fails_for_non_normal_w(x64):
  """Diagonalizable but non-normal: eigenvalues 0.5, 0.4 but ||W||_2 ~ 10.
  The singular-value bound holds; the seed's eigenvalue bound does not."""
  theta = urnn_jax.RNNParams.create(W=jnp.array([[0.5, 10.0], [0.0, 0.4]]), F=jnp.ones((2, 1)))
  r = diagnostics.jacobian_bound_check(theta, 0.1 * jnp.ones((6, 1)), "identity")
  assert not r["is_normal_W"]
  assert r["eig_abs_max_W"] == pytest.approx(0.5)
  assert max(r["sigma_max_J"]) > 9.0 > 0.5 * r["b_max"]
  assert r["svd_bound_holds"] and r["product_bound_holds"]
  assert not r["eig_bound_holds"]


def test_errors():
  theta = random_params(0, 3, 2, dtype=jnp.float32)
  with pytest.raises(ValueError, match=r"x must have shape \(T, 2\)"):
    diagnostics.hidden_gradient_norms(theta, jnp.ones((4, 3)), lambda hs: hs.sum())
  with pytest.raises(ValueError, match="one sequence"):
    diagnostics.step_jacobians(theta, jnp.ones((2, 4, 2)))


def test_integer_params_and_inputs_are_promoted_to_float():
  # Issue 22: perturbed_states ran in int32 arithmetic and wrapped around
  # (F x = 2e10 came out as -1474836480); the gradient functions failed in
  # jax.grad. Integer params and inputs are now promoted to float.
  big = urnn_jax.RNNParams(jnp.zeros((2, 2), jnp.int32), jnp.full((2, 2), 100000, jnp.int32),
                           jnp.zeros(2, jnp.int32), jnp.eye(2, dtype=jnp.int32), jnp.zeros(2, jnp.int32))
  x = jnp.full((3, 2), 100000, jnp.int32)
  h = diagnostics.perturbed_states(big, x, 0, "identity")
  assert jnp.issubdtype(h.dtype, jnp.floating)
  np.testing.assert_allclose(h, 2e10, rtol=1e-6)
  theta = random_params(1, 3, 2, dtype=jnp.float32)
  ints = theta._replace(W=jnp.round(3 * theta.W).astype(jnp.int32), F=jnp.round(theta.F).astype(jnp.int32))
  floats = ints._replace(W=ints.W.astype(jnp.float32), F=ints.F.astype(jnp.float32))
  xi = jnp.asarray([[1, 0], [0, 2], [1, 1]], jnp.int32)
  loss = lambda hs: hs[-1].sum()
  np.testing.assert_allclose(diagnostics.hidden_gradient_norms(ints, xi, loss, "tanh"),
                             diagnostics.hidden_gradient_norms(floats, xi.astype(jnp.float32), loss, "tanh"))
  for got, want in zip(diagnostics.step_jacobians(ints, xi, "tanh"),
                       diagnostics.step_jacobians(floats, xi.astype(jnp.float32), "tanh")):
    np.testing.assert_allclose(got, want)
  assert diagnostics.jacobian_bound_check(ints, xi, "tanh") == diagnostics.jacobian_bound_check(
      floats, xi.astype(jnp.float32), "tanh")


def test_complex_params_and_inputs_are_rejected():
  # Issue 22: jacobian_bound_check dropped the imaginary part of a complex W
  # and perturbed_states ran a complex recurrence; eq. (1) is real here.
  theta = random_params(2, 3, 2, dtype=jnp.float32)
  complex_theta = theta._replace(W=theta.W.astype(jnp.complex64) * (1 + 0.5j))
  x = jnp.ones((4, 2))
  calls = [
      lambda: diagnostics.jacobian_bound_check(complex_theta, x, "identity"),
      lambda: diagnostics.hidden_gradients(complex_theta, x, lambda hs: hs.sum(), "identity"),
      lambda: diagnostics.perturbed_states(theta, 1j * x, 0, "identity"),
      lambda: diagnostics.perturbed_states(theta, x, 1j * jnp.ones((4, 3)), "identity"),
      lambda: diagnostics.step_jacobians(theta, 1j * x, "identity"),
  ]
  for call in calls:
    with pytest.raises(TypeError, match=r"complex dtype complex64; the diagnostics are for the real RNN.*OrthogonalRNNCell"):
      call()


def test_bad_sizes_raise():
  # Issue 22: T = 0 gave an IndexError inside JAX, and perturbations of the
  # wrong shape a broadcasting error from lax.
  theta = random_params(3, 3, 2, dtype=jnp.float32)
  with pytest.raises(ValueError, match=r"jacobian_bound_check: x must have at least one step, got shape \(0, 2\)"):
    diagnostics.jacobian_bound_check(theta, jnp.ones((0, 2)))
  with pytest.raises(ValueError, match=r"perturbations of shape \(4, 3\) do not broadcast to the states' shape \(3, 3\)"):
    diagnostics.perturbed_states(theta, jnp.ones((3, 2)), jnp.ones((4, 3)))
  with pytest.raises(ValueError, match=r"perturbations of shape \(2, 3, 3\) would enlarge"):
    diagnostics.perturbed_states(theta, jnp.ones((3, 2)), jnp.ones((2, 3, 3)))
  with pytest.raises(ValueError, match=r"rtol must be a finite number >= 0"):
    diagnostics.jacobian_bound_check(theta, jnp.ones((3, 2)), rtol=-1.0)
