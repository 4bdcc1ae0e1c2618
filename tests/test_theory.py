"""Tests for urnn_jax.theory: the paper's constructions and bounds (float64).

The demonstrations (fitted URNNs, the tables of ``train.equivalence``) are
tested in test_equivalence.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reference import simulate_loop
from urnn_jax import RNNParams
from urnn_jax import initializers
from urnn_jax import simulate
from urnn_jax import theory

T = 1000
BATCH = 32

# One compile per shape (eager simulate compiles op by op).
sim = jax.jit(simulate, static_argnames=("activation", "unroll", "return_states"))


def _random_rnn(seed, n, m, p, *, norm=0.9, h0_scale=0.0, negative_bias=False, bound=1.0):
  """A random contractive RNN (NumPy-drawn: no compiles) with active states.

  ||W||_2 = norm; F's rows have norm 2 and the biases are of the order of the
  input bound, so that |F x| and |b| are comparable and the outputs are not
  all zero.
  """
  rng = np.random.default_rng(seed)
  W = rng.standard_normal((n, n))
  W *= norm / np.linalg.norm(W, 2)
  F = rng.standard_normal((n, m))
  F *= 2.0 / np.linalg.norm(F, axis=1, keepdims=True)
  b = 0.3 * bound * rng.standard_normal(n)
  if negative_bias:
    b = -np.abs(b)
  C = rng.standard_normal((p, n)) / np.sqrt(n)
  h0 = h0_scale * rng.standard_normal(n)
  return RNNParams(*(jnp.asarray(v) for v in (W, F, b, C, h0)))


def _inputs(seed, m, bound, batch=BATCH, steps=T):
  """Inputs with ||x(k)|| <= bound: half of the steps on the sphere, half inside."""
  rng = np.random.default_rng(1000 + seed)
  g = rng.standard_normal((batch, steps, m))
  g /= np.linalg.norm(g, axis=-1, keepdims=True)
  radius = np.where(rng.random((batch, steps, 1)) < 0.5, 1.0, rng.random((batch, steps, 1)))
  return jnp.asarray(bound * radius * g)


def _orth_err(w):
  w = np.asarray(w)
  return np.linalg.norm(w.T @ w - np.eye(w.shape[0]))


def _assert_exact(params, x, bound):
  urnn = theory.unitary_equivalent(params, bound)
  n = params.hidden_size
  # On and inside the bound, and accepted by the checker.
  norms = np.linalg.norm(np.asarray(x), axis=-1)
  assert abs(norms.max() - bound) < 1e-12 * max(bound, 1.0)
  assert 0 < norms.min() < 0.5 * bound
  assert theory.check_input_bound(x, bound) == pytest.approx(bound, rel=1e-12)
  # The construction: orthogonal, 2n states, W itself in the top-left block.
  assert urnn.W.shape == (2 * n, 2 * n)
  assert _orth_err(urnn.W) < 1e-12
  np.testing.assert_array_equal(np.asarray(urnn.W[:n, :n]), np.asarray(params.W))
  y = sim(params, x, "relu")
  y_u, h_u = sim(urnn, x, "relu", return_states=True)
  assert float(jnp.max(jnp.abs(y))) > 1e-2, "degenerate test: all outputs ~0"
  assert float(jnp.max(jnp.abs(y_u - y))) < 1e-9
  assert float(jnp.max(jnp.abs(h_u[..., n:]))) == 0.0  # the extra states stay exactly 0
  return urnn, y_u


@pytest.mark.parametrize(
    "seed,n,m,p,h0_scale,negative_bias",
    [
        (0, 1, 1, 1, 0.0, False),
        (1, 1, 1, 1, 0.0, True),
        (2, 1, 3, 2, 2.0, True),
        (3, 2, 1, 1, 0.0, True),
        (4, 3, 2, 4, 1.0, False),
        (5, 5, 1, 3, 0.0, True),
        (6, 8, 4, 1, 3.0, True),
        (7, 16, 2, 2, 1.0, False),
    ],
)
def test_unitary_equivalent_is_exact(x64, seed, n, m, p, h0_scale, negative_bias):
  bound = [1.0, 0.3, 2.5][seed % 3]
  params = _random_rnn(seed, n, m, p, h0_scale=h0_scale, negative_bias=negative_bias,
                       bound=bound)
  if negative_bias:
    assert bool(jnp.all(params.b < 0))
  _assert_exact(params, _inputs(seed, m, bound), bound)


def test_paper_teacher_against_numpy_loop(x64):
  """The paper's W = I - eps A^T A/||A||^2, checked against tests/reference.py."""
  n, m, p = 4, 2, 2
  k = jax.random.split(jax.random.PRNGKey(11), 4)
  W = initializers.contractive(0.01)(k[0], (n, n), jnp.float64)
  F = jax.random.normal(k[1], (n, m), jnp.float64)
  C = jax.random.normal(k[2], (p, n), jnp.float64)
  b = -jnp.abs(jax.random.normal(k[3], (n,), jnp.float64)) * jnp.array([1.0, 0.1, 0.01, 0.5])
  params = RNNParams.create(W, F, b, C)
  assert 0.99 < theory.spectral_norm(W) < 1.0
  x = _inputs(11, m, 1.0)
  urnn, y_u = _assert_exact(params, x, 1.0)
  xs = x[:4]  # the NumPy loop is slow; 4 sequences of T = 1000 steps
  y_ref = simulate_loop(*params, xs, activation="relu")
  y_u_ref = simulate_loop(*urnn, xs, activation="relu")
  assert np.max(np.abs(y_u_ref - y_ref)) < 1e-9
  assert np.max(np.abs(np.asarray(y_u[:4]) - y_ref)) < 1e-9
  assert np.max(np.abs(y_ref)) > 1.0


def test_construction_blocks(x64):
  """W3 = (I - W^T W)^(1/2), F_u = [F; 0], b_u = [b; -B], C_u = [C 0], h0_u = [h0; 0]."""
  params = _random_rnn(3, 3, 2, 2, h0_scale=1.0)
  bound = 0.7
  u = theory.unitary_equivalent(params, bound)
  W = np.asarray(params.W)
  w3 = np.asarray(u.W[3:, :3])
  np.testing.assert_allclose(w3, w3.T, atol=1e-14)
  assert np.linalg.eigvalsh(w3).min() >= -1e-14
  np.testing.assert_allclose(w3 @ w3, np.eye(3) - W.T @ W, atol=1e-13)
  np.testing.assert_array_equal(np.asarray(u.F[3:]), 0.0)
  np.testing.assert_array_equal(np.asarray(u.F[:3]), np.asarray(params.F))
  np.testing.assert_array_equal(np.asarray(u.C[:, 3:]), 0.0)
  B = theory.state_bound(params, bound)
  np.testing.assert_allclose(np.asarray(u.b[3:]), -B)
  np.testing.assert_array_equal(np.asarray(u.h0[3:]), 0.0)
  np.testing.assert_array_equal(np.asarray(u.h0[:3]), np.asarray(params.h0))


def test_state_bound_by_hand_and_invariant(x64):
  scalar = theory.channel_rnn([0.5])
  assert theory.state_bound(scalar, 1.0) == pytest.approx(2.0)  # (1*1 + 0)/(1 - 0.5)
  assert theory.state_bound(scalar._replace(b=jnp.array([-1.0])), 1.0) == pytest.approx(4.0)
  assert theory.state_bound(scalar._replace(h0=jnp.array([5.0])), 1.0) == pytest.approx(5.0)
  params = _random_rnn(21, 4, 2, 2, h0_scale=100.0)
  B = theory.state_bound(params, 1.0)
  assert B == pytest.approx(float(jnp.linalg.norm(params.h0)))  # h0 dominates here
  _, h = sim(params, _inputs(21, 2, 1.0, batch=8, steps=300), "relu", return_states=True)
  assert float(jnp.max(jnp.linalg.norm(h, axis=-1))) <= B


def test_h0_extension_needs_the_larger_bound(x64):
  """With ||h0|| > M_h the paper's b2 = -M_h would be wrong; max(||h0||, M_h) is right."""
  params = theory.channel_rnn([0.5])._replace(h0=jnp.array([10.0]))
  x = _inputs(3, 1, 1.0, batch=4, steps=50)
  u = theory.unitary_equivalent(params, 1.0)
  assert theory.equivalent(params, u, x) < 1e-12
  paper = u._replace(b=u.b.at[1].set(-2.0))  # M_h = (1 + 0) / (1 - 0.5) ignores h0
  assert theory.equivalent(params, paper, x) > 1.0


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_unitary_equivalent_rejects_non_contractive(x64, scale):
  W = scale * np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0]
  params = RNNParams.create(W, jnp.ones((3, 1)))
  with pytest.raises(ValueError, match=r"spectral norm of params\.W is 1\.|>= 1"):
    theory.unitary_equivalent(params, 1.0)
  with pytest.raises(ValueError, match="spectral norm"):
    theory.state_bound(params, 1.0)


def test_argument_validation(x64):
  params = theory.channel_rnn([0.5])
  with pytest.raises(ValueError, match="input_bound"):
    theory.unitary_equivalent(params, -1.0)
  with pytest.raises(ValueError, match="input_bound"):
    theory.unitary_equivalent(params, float("inf"))
  with pytest.raises(TypeError, match="outside"):
    jax.jit(lambda p: theory.unitary_equivalent(p, 1.0))(params)


def test_inputs_above_the_bound_are_flagged_and_break_equivalence(x64):
  params = theory.channel_rnn([0.5])
  u = theory.unitary_equivalent(params, 1.0)
  x = jnp.full((2, 40, 1), 3.0)
  with pytest.raises(ValueError, match=r"exceed input_bound=1\.0.*3\.0"):
    theory.check_input_bound(x, 1.0)
  assert theory.check_input_bound(x, 1.0, raise_error=False) == pytest.approx(3.0)
  assert theory.equivalent(params, u, x) > 10.0


def test_similarity_identity_any_invertible_T(x64):
  params = _random_rnn(31, 4, 2, 3, h0_scale=1.0)
  T = jax.random.normal(jax.random.PRNGKey(5), (4, 4), jnp.float64) + 2 * jnp.eye(4)
  q = theory.similarity_transform(params, T, "identity")
  x = _inputs(31, 2, 1.0, batch=4, steps=200)
  assert theory.equivalent(params, q, x, "identity") < 1e-9
  _, h = sim(params, x, "identity", return_states=True)
  _, hq = sim(q, x, "identity", return_states=True)
  np.testing.assert_allclose(np.asarray(hq), np.asarray(h @ T.T), atol=1e-9)
  # A different W (not a trivial T).
  assert float(jnp.max(jnp.abs(q.W - params.W))) > 0.1


def test_similarity_relu_positive_diagonal(x64):
  params = _random_rnn(32, 5, 2, 2, h0_scale=1.0, negative_bias=True)
  x = _inputs(32, 2, 1.0, batch=4, steps=300)
  D = jnp.diag(jnp.array([0.1, 2.0, 5.0, 1.0, 0.3]))
  q = theory.similarity_transform(params, D, "relu")
  assert theory.equivalent(params, q, x, "relu") < 1e-9
  perm = D[jnp.array([2, 0, 1, 4, 3])]  # positive diagonal with permuted rows
  assert theory.equivalent(params, theory.similarity_transform(params, perm, "relu"), x) < 1e-9


def test_similarity_relu_rejects_non_diagonal(x64):
  params = _random_rnn(33, 3, 2, 2, h0_scale=1.0)
  dense = jnp.eye(3) + 0.3 * jnp.ones((3, 3))
  with pytest.raises(ValueError, match="positive diagonal"):
    theory.similarity_transform(params, dense, "relu")
  with pytest.raises(ValueError, match="positive diagonal"):
    theory.similarity_transform(params, jnp.diag(jnp.array([1.0, -1.0, 2.0])), "relu")
  # The check matters: the same T (valid for the identity) changes ReLU outputs.
  q = theory.similarity_transform(params, dense, "identity")
  x = _inputs(33, 2, 1.0, batch=4, steps=100)
  assert theory.equivalent(params, q, x, "relu") > 1e-3
  with pytest.raises(ValueError, match="permutation"):
    theory.similarity_transform(params, jnp.diag(jnp.array([1.0, 2.0, 3.0])), "sigmoid")
  with pytest.raises(ValueError, match="invertible"):
    theory.similarity_transform(params, jnp.zeros((3, 3)), "identity")
  with pytest.raises(ValueError, match=r"shape \(n, n\) = \(3, 3\)"):
    theory.similarity_transform(params, jnp.eye(2), "identity")
  perm = jnp.eye(3)[jnp.array([1, 2, 0])]
  q = theory.similarity_transform(params, perm, "sigmoid")
  assert theory.equivalent(params, q, x, "sigmoid") < 1e-12


def test_equivalent_validates_sizes(x64):
  a = theory.channel_rnn([0.5])
  b = theory.channel_rnn([0.5, 0.6])
  assert theory.equivalent(a, a, jnp.ones((1, 5, 1))) == 0.0
  with pytest.raises(ValueError, match="same inputs"):
    theory.equivalent(a, b, jnp.ones((1, 5, 1)))


@pytest.mark.parametrize(
    "n,m,p,rnn,urnn,rnn_raw,urnn_raw",
    [
        (1, 1, 1, 3, 5, 4, 7),          # 1+2; 1*1+2*2; 1+3; 1+2*3
        (4, 2, 2, 32, 60, 36, 68),      # 16+16; 4*7+8*4; 16+20; 28+8*5
        (64, 2, 2, 4352, 8640, 4416, 8768),  # 4096+256; 64*127+128*4
        (3, 0, 5, 24, 45, 27, 51),      # 9+15; 3*5+6*5; 9+18; 15+6*6
    ],
)
def test_degrees_of_freedom_by_hand(n, m, p, rnn, urnn, rnn_raw, urnn_raw):
  assert theory.degrees_of_freedom(n, m, p, "rnn") == rnn
  assert theory.degrees_of_freedom(n, m, p, "urnn") == urnn
  assert theory.degrees_of_freedom(n, m, p, "rnn_raw") == rnn_raw
  assert theory.degrees_of_freedom(n, m, p, "urnn_raw") == urnn_raw


def test_degrees_of_freedom_validation():
  with pytest.raises(ValueError, match="kind='lstm'"):
    theory.degrees_of_freedom(2, 1, 1, "lstm")
  with pytest.raises(ValueError, match="n must be >= 1"):
    theory.degrees_of_freedom(0, 1, 1)
  with pytest.raises(TypeError, match="m must be an int"):
    theory.degrees_of_freedom(2, 1.5, 1)


def test_linearize_scalar_sigmoid_by_hand(x64):
  w, f, b, x_star = 0.8, 1.0, 0.2, 0.3
  params = RNNParams.create(jnp.array([[w]]), jnp.array([[f]]), jnp.array([b]),
                            jnp.array([[2.0]]))
  h = 0.0
  for _ in range(200):
    h = 1.0 / (1.0 + np.exp(-(w * h + f * x_star + b)))
  lin = theory.linearize(params, jnp.array([x_star]), "sigmoid")
  assert lin.h_star[0] == pytest.approx(h, abs=1e-13)
  slope = h * (1 - h)
  assert lin.eigenvalues[0] == pytest.approx(w * slope, abs=1e-13)
  assert lin.input_matrix[0, 0] == pytest.approx(f * slope, abs=1e-13)
  meas, pred = theory.small_signal_response(params, jnp.array([x_star]), "sigmoid", lin=lin)
  np.testing.assert_allclose(pred[:, 0], 2.0 * f * slope * (w * slope) ** np.arange(20),
                             rtol=1e-12)
  np.testing.assert_allclose(meas, pred, atol=1e-8)
  assert theory.decay_rate(meas) == pytest.approx(w * slope, rel=1e-4)


def test_eigenvalues_are_in_the_input_output_map(x64):
  """Ho-Kalman on the measured small-signal response recovers eig(J)."""
  base = _random_rnn(0, 2, 1, 1)
  params = base._replace(F=1.5 * base.F, C=3 * base.C, b=3 * base.b)
  x_star = jnp.zeros(1)
  lin = theory.linearize(params, x_star, "sigmoid")
  assert 0 < lin.spectral_radius < 0.25 * 0.9 + 1e-12  # sigmoid' <= 1/4
  meas, _ = theory.small_signal_response(params, x_star, "sigmoid", lin=lin, steps=24)
  ident = theory.response_eigenvalues(meas, 2)
  np.testing.assert_allclose(np.sort_complex(ident), np.sort_complex(lin.eigenvalues),
                             atol=1e-6)


def test_urnn_jacobian_singular_values_are_the_slopes(x64):
  """J_u J_u^T = diag(phi')^2 for a URNN; not for a general contractive RNN."""
  n = 4
  rng = np.random.default_rng(1)
  Wu = np.linalg.qr(rng.standard_normal((n, n)))[0]
  urnn = RNNParams.create(Wu, rng.standard_normal((n, 1)), rng.standard_normal(n))
  lin = theory.linearize(urnn, jnp.array([0.5]), "sigmoid")
  d = lin.h_star * (1 - lin.h_star)
  np.testing.assert_allclose(lin.jacobian @ lin.jacobian.T, np.diag(d ** 2), atol=1e-15)
  rnn = _random_rnn(2, n, 1, 1)
  lin = theory.linearize(rnn, jnp.array([0.5]), "sigmoid")
  d = lin.h_star * (1 - lin.h_star)
  assert np.linalg.norm(lin.jacobian @ lin.jacobian.T - np.diag(d ** 2)) > 1e-3


def test_relu_construction_hides_the_extra_eigenvalues(x64):
  params = _random_rnn(41, 3, 1, 1)
  u = theory.unitary_equivalent(params, 1.0)
  x_star = jnp.array([1.0])
  lin = theory.linearize(params, x_star, "relu")
  ulin = theory.linearize(u, x_star, "relu")
  assert np.sum(lin.z_star > 0) >= 1 and lin.spectral_radius > 0.05
  expected = np.concatenate([lin.eigenvalues, np.zeros(3)])
  np.testing.assert_allclose(np.sort_complex(ulin.eigenvalues), np.sort_complex(expected),
                             atol=1e-12)
  np.testing.assert_allclose(ulin.h_star[:3], lin.h_star, atol=1e-12)
  np.testing.assert_array_equal(ulin.h_star[3:], 0.0)


def test_linearize_reports_non_convergence(x64):
  params = RNNParams.create(jnp.array([[1.0]]), jnp.array([[1.0]]), jnp.array([0.1]))
  with pytest.raises(ValueError, match="did not converge"):
    theory.linearize(params, jnp.array([0.0]), "relu", max_iter=50)
  with pytest.raises(ValueError, match=r"x_star must have shape \(m,\) = \(1,\)"):
    theory.linearize(params, jnp.zeros(2), "relu")


@pytest.mark.parametrize("decays", [[0.5, 0.8], [0.3, -0.6, 0.9]])
def test_near_equivalent_channel_urnn_error_falls_with_scale(x64, decays):
  n = len(decays)
  target = theory.channel_rnn(decays)
  x = _inputs(51, n, 1.0, batch=8, steps=300)
  errs = []
  for s in (0.1, 0.01, 0.001):
    u = theory.near_equivalent_channel_urnn(decays, s)
    assert u.W.shape == (n + 1, n + 1)
    assert _orth_err(u.W) < 1e-13
    errs.append(theory.equivalent(target, u, x))
  assert errs[-1] > 0  # never exact
  assert errs[0] / errs[1] == pytest.approx(10, rel=0.05)
  assert errs[1] / errs[2] == pytest.approx(10, rel=0.05)


def test_near_equivalent_is_exact_for_one_channel(x64):
  x = _inputs(52, 1, 1.0, batch=4, steps=200)
  u = theory.near_equivalent_channel_urnn([0.5], 0.1)
  assert theory.equivalent(theory.channel_rnn([0.5]), u, x) < 1e-12


def test_sigmoid_dilation_error_falls_like_exp_minus_b_but_is_never_zero(x64):
  """Theorem 4.1 is about exact equivalence: the 2n-state dilation gets within e^-B."""
  base = _random_rnn(71, 2, 1, 1)
  params = base._replace(C=3 * base.C)
  x = _inputs(71, 1, 1.0, batch=8, steps=64)
  errs = {B: theory.equivalent(params, theory.unitary_dilation(params, B), x, "sigmoid")
          for B in (5.0, 10.0, 15.0)}
  assert errs[5.0] > 1e-4
  for lo, hi in ((5.0, 10.0), (10.0, 15.0)):
    ratio = errs[lo] / errs[hi]
    assert np.exp(5) / 3 < ratio < np.exp(5) * 3  # ~ e^5 per 5 units of B
  # The extra states are positive (never exactly zero) at the fixed point.
  lin = theory.linearize(theory.unitary_dilation(params, 15.0), jnp.zeros(1), "sigmoid")
  assert np.all(lin.h_star[2:] > 0) and np.all(lin.h_star[2:] < 1e-5)
  # Same matrices as the ReLU construction, other bias.
  u = theory.unitary_equivalent(params, 1.0)
  d = theory.unitary_dilation(params, 15.0)
  np.testing.assert_array_equal(np.asarray(u.W), np.asarray(d.W))
  np.testing.assert_array_equal(np.asarray(d.b[2:]), -15.0)
  with pytest.raises(ValueError, match="garbage_bias"):
    theory.unitary_dilation(params, -1.0)



def _int_rnn():
  """An integer-valued (int32) RNN; W = 0, the only contractive integer W."""
  rng = np.random.default_rng(5)
  F, C = np.round(3 * rng.standard_normal((3, 2))), np.round(3 * rng.standard_normal((2, 3)))
  b = np.round(rng.standard_normal(3))
  return RNNParams(*(jnp.asarray(v, jnp.int32) for v in (np.zeros((3, 3)), F, b, C, np.zeros(3))))


def test_integer_params_and_inputs_are_promoted_to_float():
  # Issue 22: integer RNNParams came back as integer arrays (the 2n-state W_u
  # truncated to 0/1) and simulations ran in int32 arithmetic, wrapping around.
  p = _int_rnn()
  pf = p._replace(**{k: v.astype(jnp.float32) for k, v in p._asdict().items()})
  for fn in (lambda q: theory.unitary_equivalent(q, 1.0),
             lambda q: theory.unitary_dilation(q, 2.0),
             lambda q: theory.similarity_transform(q, 2.0 * np.eye(3), "relu")):
    got, want = fn(p), fn(pf)
    for g, w in zip(got, want):
      assert jnp.issubdtype(g.dtype, jnp.floating)
      np.testing.assert_allclose(g, w, rtol=1e-6)
  assert _orth_err(theory.unitary_equivalent(p, 1.0).W) < 1e-5
  lin = theory.linearize(p, np.zeros(2, np.int32), "sigmoid")
  np.testing.assert_allclose(lin.jacobian, theory.linearize(pf, np.zeros(2), "sigmoid").jacobian, rtol=1e-6)
  # int32 x and F with entries 1e5: the outputs reach 4e15, far beyond int32.
  big = RNNParams(jnp.zeros((2, 2), jnp.int32), jnp.full((2, 2), 100000, jnp.int32),
                  jnp.zeros(2, jnp.int32), jnp.full((2, 2), 100000, jnp.int32), jnp.zeros(2, jnp.int32))
  x = jnp.full((1, 3, 2), 100000, jnp.int32)
  diff = theory.equivalent(big, big._replace(C=0 * big.C), x, "identity")
  np.testing.assert_allclose(diff, 4e15, rtol=1e-6)


def test_complex_inputs_are_rejected():
  # Issue 22: unitary_equivalent (and the other constructions) dropped the
  # imaginary part of a complex W with only a NumPy warning.
  p = _random_rnn(80, 2, 1, 1)
  cp = p._replace(W=p.W.astype(jnp.complex64) * (1 + 0.5j))
  hint = r"complex dtype.*real RNN of eq\. \(1\).*OrthogonalRNNCell"
  calls = [
      lambda: theory.unitary_equivalent(cp, 1.0),
      lambda: theory.unitary_dilation(cp, 1.0),
      lambda: theory.state_bound(cp, 1.0),
      lambda: theory.similarity_transform(p, np.eye(2) * (1 + 1j), "identity"),
      lambda: theory.equivalent(cp, cp, jnp.ones((3, 1))),
      lambda: theory.equivalent(p, p, 1j * jnp.ones((3, 1))),
      lambda: theory.check_input_bound(1j * jnp.ones((3, 1)), 1.0),
      lambda: theory.linearize(cp, np.zeros(1)),
      lambda: theory.linearize(p, 1j * np.ones(1)),
      lambda: theory.small_signal_response(p, np.zeros(1), direction=1j * np.ones(1)),
      lambda: theory.response_eigenvalues(np.exp((0.5j - 0.1) * np.arange(20))[:, None], 1),
      lambda: theory.channel_rnn([0.5 + 0.5j]),
      lambda: theory.near_equivalent_channel_urnn([0.5 + 0.1j], 0.5),
  ]
  for call in calls:
    with pytest.raises(TypeError, match=hint):
      call()
  for call in (lambda: theory.bounded_inputs(jax.random.key(0), (3, 2), dtype=jnp.complex64),
               lambda: theory.random_contractive_rnn(jax.random.key(0), 2, 1, 1, dtype=jnp.complex64),
               lambda: theory.channel_rnn([0.5], dtype=jnp.complex64)):
    with pytest.raises(TypeError, match=r"dtype=complex64 is complex"):
      call()
  with pytest.raises(TypeError, match=r"input_bound must be a real number"):
    theory.state_bound(p, np.complex128(1.0))
  # The generic helpers compute the complex answer instead.
  assert theory.spectral_norm(np.array([[0, 2j], [0, 0]])) == pytest.approx(2.0)
  assert theory.decay_rate(0.5 ** np.arange(20) * np.exp(1j * np.arange(20))) == pytest.approx(0.5)


def test_bad_sizes_counts_and_dtypes_raise():
  # Issue 22: negative or float sizes raised deep inside JAX or were truncated,
  # steps=0 / delta=0 gave an IndexError / NaN, integer dtypes a JAX error.
  key = jax.random.key(0)
  p = _random_rnn(81, 2, 1, 1)
  value_errors = [
      (lambda: theory.bounded_inputs(key, (-1, 2)), r"bounded_inputs: shape\[0\] must be >= 1"),
      (lambda: theory.random_contractive_rnn(key, 0, 1, 1), r"random_contractive_rnn: n must be >= 1"),
      (lambda: theory.random_contractive_rnn(key, 2, -1, 1), r"m must be >= 0"),
      (lambda: theory.small_signal_response(p, np.zeros(1), steps=0), r"steps must be >= 1, got steps=0"),
      (lambda: theory.small_signal_response(p, np.zeros(1), delta=0.0), r"delta must be a finite number > 0"),
      (lambda: theory.small_signal_response(p, np.zeros(1), direction=np.ones(3)),
       r"direction must have shape \(m,\) = \(1,\)"),
      (lambda: theory.linearize(p, np.zeros(1), max_iter=0), r"max_iter must be >= 1"),
      (lambda: theory.response_eigenvalues(np.zeros((0, 1)), 1), r"at least one step"),
      (lambda: theory.response_eigenvalues(0.5 ** np.arange(20)[:, None], 0), r"order must be >= 1"),
      (lambda: theory.spectral_norm(np.ones((2, 2, 2))), r"spectral_norm: w must be a matrix"),
  ]
  for call, match in value_errors:
    with pytest.raises(ValueError, match=match):
      call()
  type_errors = [
      (lambda: theory.bounded_inputs(key, (2.5, 2)), r"shape\[0\] must be an int.*2\.5"),
      (lambda: theory.random_contractive_rnn(key, 2, 2.5, 1), r"m must be an int.*2\.5"),
      (lambda: theory.linearize(p, np.zeros(1), max_iter=2.5), r"max_iter must be an int"),
      (lambda: theory.response_eigenvalues(0.5 ** np.arange(20)[:, None], 1.5), r"order must be an int"),
      (lambda: theory.bounded_inputs(key, (3, 2), dtype=jnp.int32), r"dtype must be a real floating dtype"),
      (lambda: theory.random_contractive_rnn(key, 2, 1, 1, dtype=jnp.int32), r"dtype=int32"),
      (lambda: theory.channel_rnn([0.5], dtype=jnp.int32), r"channel_rnn: dtype must be a real floating"),
  ]
  for call, match in type_errors:
    with pytest.raises(TypeError, match=match):
      call()
  assert np.isnan(theory.decay_rate(np.zeros((0, 2))))
