"""Tests of urnn_jax.orthogonal: each map against SciPy / closed forms."""

import os

# Single-threaded OpenBLAS (SciPy's, which jaxlib's CPU LAPACK kernels use):
# on a shared, oversubscribed machine its spinning threads make small SVDs
# and solves 10-100x slower. Only effective before SciPy is first loaded.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg  # noqa: E402

from urnn_jax import orthogonal  # noqa: E402

METHODS = orthogonal.PROJECTION_METHODS


def _randn(seed, shape, complex_=False):
  rng = np.random.default_rng(seed)
  m = rng.standard_normal(shape)
  if complex_:
    m = m + 1j * rng.standard_normal(shape)
  return m


def _flat(a):
  a = np.asarray(a)
  return a.reshape((-1,) + a.shape[-2:])


# --------------------------------------------------------------------------
# skew, orthogonality_error


@pytest.mark.parametrize("complex_", [False, True])
def test_skew_is_half_difference_and_idempotent(x64, complex_):
  m = _randn(0, (3, 5, 5), complex_)
  a = np.asarray(orthogonal.skew(m))
  np.testing.assert_allclose(a, 0.5 * (m - np.conj(np.swapaxes(m, -1, -2))), rtol=0, atol=1e-15)
  np.testing.assert_allclose(a, -np.conj(np.swapaxes(a, -1, -2)), rtol=0, atol=1e-15)
  np.testing.assert_allclose(np.asarray(orthogonal.skew(a)), a, rtol=0, atol=1e-15)


def test_orthogonality_error_values(x64):
  q = scipy.linalg.qr(_randn(1, (6, 6)))[0]
  err = orthogonal.orthogonality_error(np.stack([q, 2.0 * q]))
  assert err.shape == (2,)
  assert err[0] < 1e-13
  # (2Q)^T (2Q) - I = 3 I, Frobenius norm 3 sqrt(n).
  np.testing.assert_allclose(err[1], 3.0 * np.sqrt(6.0), rtol=1e-12)


# --------------------------------------------------------------------------
# expm_skew, cayley


@pytest.mark.parametrize("complex_", [False, True])
def test_expm_skew_matches_scipy(x64, complex_):
  a = np.asarray(orthogonal.skew(_randn(2, (2, 3, 7, 7), complex_)))
  e = np.asarray(orthogonal.expm_skew(a))
  assert e.shape == a.shape
  for ai, ei in zip(_flat(a), _flat(e)):
    np.testing.assert_allclose(ei, scipy.linalg.expm(ai), rtol=0, atol=1e-10)
  assert np.max(orthogonal.orthogonality_error(e)) < 1e-10


@pytest.mark.parametrize("complex_", [False, True])
def test_cayley_identity(x64, complex_):
  a = np.asarray(orthogonal.skew(_randn(3, (4, 6, 6), complex_)))
  c = np.asarray(orthogonal.cayley(a))
  eye = np.eye(6)
  for ai, ci in zip(a, c):
    # Defining identity (I - A/2) C = I + A/2, and SciPy's solve.
    np.testing.assert_allclose((eye - ai / 2) @ ci, eye + ai / 2, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ci, scipy.linalg.solve(eye - ai / 2, eye + ai / 2), rtol=0, atol=1e-10)
    # Inverse Cayley map recovers A: A = 2 (C - I)(C + I)^{-1}.
    np.testing.assert_allclose(2 * (ci - eye) @ np.linalg.inv(ci + eye), ai, rtol=0, atol=1e-10)
  assert np.max(orthogonal.orthogonality_error(c)) < 1e-10


def test_cayley_of_zero_is_identity_and_float32_is_orthogonal():
  np.testing.assert_array_equal(orthogonal.cayley(jnp.zeros((4, 4))), np.eye(4))
  a = orthogonal.skew(jnp.asarray(_randn(4, (64, 64)), jnp.float32))
  c = orthogonal.cayley(a)
  assert c.dtype == jnp.float32
  assert orthogonal.orthogonality_error(c) < 1e-4


# --------------------------------------------------------------------------
# project


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("complex_", [False, True])
def test_project_matches_scipy_polar(x64, method, complex_):
  w = _randn(5, (3, 12, 12), complex_)
  p = np.asarray(orthogonal.project(w, method))
  assert p.shape == w.shape
  for wi, pi in zip(w, p):
    np.testing.assert_allclose(pi, scipy.linalg.polar(wi)[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_project_fixes_orthogonal_matrices(x64, method):
  q = scipy.linalg.qr(_randn(6, (10, 10)))[0]
  np.testing.assert_allclose(np.asarray(orthogonal.project(q, method)), q, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_project_float32(method):
  w = _randn(7, (2, 64, 64))
  p = orthogonal.project(jnp.asarray(w, jnp.float32), method)
  assert p.dtype == jnp.float32
  assert np.max(orthogonal.orthogonality_error(p)) < 1e-5
  ref = np.stack([scipy.linalg.polar(wi)[0] for wi in w])
  np.testing.assert_allclose(np.asarray(p), ref, atol=2e-4)


@pytest.mark.parametrize("method", METHODS)
def test_project_under_jit_and_vmap(method):
  w = jnp.asarray(_randn(8, (4, 8, 8)), jnp.float32)
  eager = orthogonal.project(w, method)
  jitted = jax.jit(lambda m: orthogonal.project(m, method))(w)
  vmapped = jax.vmap(lambda m: orthogonal.project(m, method))(w)
  np.testing.assert_allclose(jitted, eager, atol=1e-5)
  np.testing.assert_allclose(vmapped, eager, atol=1e-5)


def test_newton_schulz_far_from_the_group(x64):
  # Large scale (needs the 1-inf norm scaling) and a condition number of 1e3.
  rng = np.random.default_rng(9)
  u = scipy.linalg.qr(rng.standard_normal((16, 16)))[0]
  v = scipy.linalg.qr(rng.standard_normal((16, 16)))[0]
  w = 1e4 * (u * np.logspace(0, -3, 16)) @ v.T
  p = np.asarray(orthogonal.project(w, "newton_schulz"))
  np.testing.assert_allclose(p, u @ v.T, rtol=0, atol=1e-9)


def test_newton_schulz_tolerance_and_iteration_cap(x64):
  w = _randn(10, (16, 16))
  loose = orthogonal.project(w, "newton_schulz", tol=1e-2)
  capped = orthogonal.project(w, "newton_schulz", max_iters=2)
  full = orthogonal.project(w, "newton_schulz")
  assert 1e-8 < orthogonal.orthogonality_error(loose) <= 1e-2
  assert orthogonal.orthogonality_error(capped) > 1e-2
  assert orthogonal.orthogonality_error(full) < 1e-13


def test_newton_schulz_does_not_stop_early_on_tiny_singular_values():
  # One singular value 1e-4 grows by only ~1.5x per step at first; a naive
  # "stopped improving" test would quit while it is still far from 1.
  rng = np.random.default_rng(11)
  u = scipy.linalg.qr(rng.standard_normal((8, 8)))[0]
  v = scipy.linalg.qr(rng.standard_normal((8, 8)))[0]
  s = np.ones(8)
  s[-1] = 1e-4
  w = jnp.asarray((u * s) @ v.T, jnp.float32)
  p = orthogonal.project(w, "newton_schulz")
  assert orthogonal.orthogonality_error(p) < 1e-5
  np.testing.assert_allclose(np.asarray(p), u @ v.T, atol=1e-4)


# --------------------------------------------------------------------------
# clip_singular_values


@pytest.mark.parametrize("complex_", [False, True])
def test_clip_singular_values_matches_svd_reference(x64, complex_):
  w = _randn(12, (3, 9, 9), complex_)
  rho = 2.0
  c = np.asarray(orthogonal.clip_singular_values(w, rho))
  for wi, ci in zip(w, c):
    u, s, vh = scipy.linalg.svd(wi)
    assert s[0] > rho  # the clip is active
    np.testing.assert_allclose(ci, (u * np.minimum(s, rho)) @ vh, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(ci, 2), rho, rtol=1e-12)


def test_clip_singular_values_leaves_the_ball_unchanged():
  w = jnp.asarray(_randn(13, (2, 16, 16)), jnp.float32)
  w = w / (2.0 * jnp.linalg.norm(w, ord=2, axis=(-2, -1)))[:, None, None]
  np.testing.assert_array_equal(orthogonal.clip_singular_values(w, 1.0), w)


def test_clip_singular_values_float32_stays_in_the_ball():
  rng = np.random.default_rng(14)
  w = jnp.asarray(rng.standard_normal((8, 64, 64)) / 8.0, jnp.float32)
  rho = 0.9
  c = np.asarray(orthogonal.clip_singular_values(w, rho), np.float64)
  norms = np.linalg.norm(c, 2, axis=(-2, -1))
  assert np.all(norms <= rho * (1 + 1e-6))
  assert np.all(norms >= rho * (1 - 1e-6))


# --------------------------------------------------------------------------
# dtypes and errors


def test_integer_input_is_promoted_to_float():
  p = orthogonal.project(jnp.eye(3, dtype=jnp.int32))
  assert jnp.issubdtype(p.dtype, jnp.floating)
  np.testing.assert_allclose(p, np.eye(3), atol=1e-6)


@pytest.mark.parametrize(
    "fn",
    [
        orthogonal.project,
        orthogonal.cayley,
        orthogonal.expm_skew,
        orthogonal.skew,
        orthogonal.orthogonality_error,
        orthogonal.clip_singular_values,
    ],
)
def test_non_square_input_raises(fn):
  with pytest.raises(ValueError, match=r"square matrix.*\(3, 4\)"):
    fn(jnp.zeros((3, 4)))
  with pytest.raises(ValueError, match=r"square matrix.*\(4,\)"):
    fn(jnp.zeros((4,)))


def test_bad_options_raise():
  w = jnp.eye(3)
  with pytest.raises(ValueError, match=r"method='polar'.*'svd'"):
    orthogonal.project(w, "polar")
  with pytest.raises(ValueError, match=r"tol=0"):
    orthogonal.project(w, "newton_schulz", tol=0)
  with pytest.raises(ValueError, match=r"max_iters=0"):
    orthogonal.project(w, "newton_schulz", max_iters=0)
  with pytest.raises(ValueError, match=r"max_value=-1"):
    orthogonal.clip_singular_values(w, -1.0)


def test_integer_matrices_are_promoted_without_overflow():
  # Issue 22: integer matrices are promoted before any product (an int32
  # W^T W with entries 1e5 would wrap around).
  w = jnp.asarray([[100000, 1], [2, 100000]], jnp.int32)
  err = orthogonal.orthogonality_error(w)
  assert jnp.issubdtype(err.dtype, jnp.floating)
  np.testing.assert_allclose(err, np.linalg.norm(np.asarray(w, np.float64).T @ np.asarray(w, np.float64) - np.eye(2)),
                             rtol=1e-6)
  for method in METHODS:
    p = orthogonal.project(w, method)
    assert jnp.issubdtype(p.dtype, jnp.floating)
    assert orthogonal.orthogonality_error(p) < 1e-5
  c = orthogonal.cayley(jnp.asarray([[0, 1], [-1, 0]], jnp.int32))
  np.testing.assert_allclose(c, [[0.6, 0.8], [-0.8, 0.6]], atol=1e-6)


def test_complex_matrices_work_but_complex_options_raise():
  # Complex matrices are the unitary group (supported); tol and max_value
  # are real numbers, and a complex one is a TypeError naming it.
  w = jnp.asarray(_randn(20, (4, 4), complex_=True), jnp.complex64)
  assert orthogonal.orthogonality_error(orthogonal.project(w)) < 1e-5
  with pytest.raises(TypeError, match=r"project: tol must be a real number.*1j"):
    orthogonal.project(w, "newton_schulz", tol=1j)
  with pytest.raises(TypeError, match=r"clip_singular_values: max_value must be a real number.*1j"):
    orthogonal.clip_singular_values(w, 1j)


def test_degenerate_inputs_raise_when_concrete_and_are_documented_under_jit():
  # Issue 22: project(zeros, "newton_schulz") returned the zero matrix and
  # cayley(2 I) NaN, silently.
  zeros, rank1 = jnp.zeros((3, 3)), jnp.ones((2, 3, 3))
  for method in ("newton_schulz", "qdwh"):
    with pytest.raises(ValueError, match=r"project: W is singular to working precision.*method='svd'"):
      orthogonal.project(zeros, method)
    with pytest.raises(ValueError, match=r"singular.*\(matrix \(0,\) of the batch\)"):
      orthogonal.project(rank1, method)
  # svd returns one of the (non-unique) orthogonal polar factors.
  assert orthogonal.orthogonality_error(orthogonal.project(zeros, "svd")) < 1e-6
  for a in (2.0 * jnp.eye(3), jnp.asarray([[2.0, 5.0], [0.0, 1.0]])):
    with pytest.raises(ValueError, match=r"cayley: I - A/2 is singular"):
      orthogonal.cayley(a)
  # Traced values cannot be checked: the documented results under jit.
  assert orthogonal.orthogonality_error(jax.jit(lambda m: orthogonal.project(m, "newton_schulz"))(zeros)) > 1
  assert not np.all(np.isfinite(jax.jit(orthogonal.cayley)(2.0 * jnp.eye(3))))
  # Skew-symmetric generators are never degenerate.
  assert orthogonal.orthogonality_error(orthogonal.cayley(jnp.asarray([[0.0, 1e3], [-1e3, 0.0]]))) < 1e-4
