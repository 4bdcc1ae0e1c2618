"""Tests of urnn_jax.initializers."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see tests/test_orthogonal.py

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg  # noqa: E402

import urnn_jax  # noqa: E402
from urnn_jax import initializers, orthogonal  # noqa: E402

KEY = jax.random.key(0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_haar_is_orthogonal_batched_and_deterministic(dtype):
  init = initializers.haar()
  w = init(KEY, (3, 2, 32, 32), dtype)
  assert w.shape == (3, 2, 32, 32) and w.dtype == dtype
  assert np.max(orthogonal.orthogonality_error(w)) < 1e-5
  np.testing.assert_array_equal(init(KEY, (3, 2, 32, 32), dtype), w)
  assert not np.allclose(init(jax.random.key(1), (32, 32), dtype), w[0, 0])
  # Independent draws along the batch axes.
  assert not np.allclose(w[0, 0], w[1, 1])


def test_haar_float64(x64):
  w = initializers.haar()(KEY, (16, 16), jnp.float64)
  assert w.dtype == jnp.float64
  assert orthogonal.orthogonality_error(w) < 1e-13


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_haar_moments(dtype):
  # For Haar U(n) and O(n) (n >= 2): E[tr Q] = 0 and E[|tr Q|^2] = 1. A QR
  # factor without the phase correction has E[tr Q] far from 0 (its diagonal
  # has a fixed sign), so this catches a missing or wrong correction.
  q = initializers.haar()(KEY, (4000, 4, 4), dtype)
  tr = np.trace(np.asarray(q), axis1=-2, axis2=-1)
  assert abs(np.mean(tr)) < 0.06
  np.testing.assert_allclose(np.mean(np.abs(tr) ** 2), 1.0, atol=0.1)


def test_identity():
  w = initializers.identity(scale=0.5)(KEY, (2, 3, 3), jnp.float32)
  np.testing.assert_array_equal(w, np.broadcast_to(0.5 * np.eye(3), (2, 3, 3)))


@pytest.mark.parametrize("n", [6, 7])
def test_henaff_rotation_is_expm_of_its_generator(x64, n):
  a = initializers.henaff(skew=True)(KEY, (2, n, n), jnp.float64)
  w = initializers.henaff()(KEY, (2, n, n), jnp.float64)
  np.testing.assert_allclose(np.asarray(a), -np.swapaxes(np.asarray(a), -1, -2), rtol=0, atol=0)
  np.testing.assert_allclose(np.asarray(orthogonal.expm_skew(a)), np.asarray(w), rtol=0, atol=1e-10)
  for ai, wi in zip(np.asarray(a), np.asarray(w)):
    np.testing.assert_allclose(scipy.linalg.expm(ai), wi, rtol=0, atol=1e-10)
  assert np.max(orthogonal.orthogonality_error(w)) < 1e-12
  # Block-diagonal 2x2 structure, angles in [-pi, pi]; odd n: last entry 1.
  angles = np.asarray(a)[:, np.arange(0, n - 1, 2), np.arange(1, n, 2)]
  assert np.all(np.abs(angles) <= np.pi)
  assert np.std(angles) > 0.5
  band = np.abs(np.subtract.outer(np.arange(n), np.arange(n))) > 1
  assert np.all(np.asarray(w)[:, band] == 0)
  if n % 2:
    np.testing.assert_allclose(np.asarray(w)[:, -1, -1], 1.0)


@pytest.mark.parametrize("n", [8, 9])
def test_cayley_init_is_cayley_of_its_generator(x64, n):
  a = initializers.cayley(skew=True)(KEY, (3, n, n), jnp.float64)
  w = initializers.cayley()(KEY, (3, n, n), jnp.float64)
  np.testing.assert_allclose(np.asarray(orthogonal.cayley(a)), np.asarray(w), rtol=0, atol=1e-10)
  assert np.max(orthogonal.orthogonality_error(w)) < 1e-12
  # Rotation angles t in [0, pi/2]: cos t and sin t both >= 0.
  idx = np.arange(0, n - 1, 2)
  assert np.all(np.asarray(w)[:, idx, idx] >= 0)
  assert np.all(np.asarray(w)[:, idx, idx + 1] >= 0)


def test_contractive_singular_values(x64):
  eps = 0.05
  w = np.asarray(initializers.contractive(eps)(KEY, (5, 32, 32), jnp.float64))
  np.testing.assert_allclose(w, np.swapaxes(w, -1, -2), rtol=0, atol=1e-15)
  s = np.linalg.svd(w, compute_uv=False)
  assert np.all(s < 1.0)
  assert np.all(s >= 1.0 - eps - 1e-12)
  # The smallest singular value is exactly 1 - eps (A^T A / ||A||^2 has top eigenvalue 1).
  np.testing.assert_allclose(s[:, -1], 1.0 - eps, rtol=0, atol=1e-12)


def test_contractive_float32_dtype():
  w = initializers.contractive(0.01)(KEY, (16, 16), jnp.float32)
  assert w.dtype == jnp.float32
  assert np.linalg.norm(np.asarray(w, np.float64), 2) <= 1.0 + 1e-6


def test_as_flax_kernel_init():
  cell = urnn_jax.RNNCell(8, recurrent_kernel_init=initializers.henaff())
  x = jnp.ones((2, 5, 3))
  v = urnn_jax.Recurrent(cell).init(KEY, x)
  k = v["params"]["cell"]["recurrent_kernel"]
  assert k.shape == (8, 8)
  assert orthogonal.orthogonality_error(k) < 1e-5


@pytest.mark.parametrize(
    "name, init",
    [
        ("haar", initializers.haar()),
        ("identity", initializers.identity()),
        ("henaff", initializers.henaff()),
        ("cayley", initializers.cayley()),
        ("contractive", initializers.contractive()),
    ],
)
def test_non_square_shape_raises(name, init):
  with pytest.raises(ValueError, match=rf"initializers\.{name}.*square.*\(4, 5\)"):
    init(KEY, (4, 5), jnp.float32)


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.1])
def test_contractive_bad_eps_raises(eps):
  with pytest.raises(ValueError, match=rf"eps={eps}"):
    initializers.contractive(eps)


@pytest.mark.parametrize("factory", [initializers.henaff, initializers.cayley, initializers.contractive])
def test_real_only_initializers_reject_complex(factory):
  with pytest.raises(ValueError, match="complex64"):
    factory()(KEY, (4, 4), jnp.complex64)
  # identity supports complex dtypes, but a complex scale with a real dtype
  # would silently return a complex matrix.
  with pytest.raises(TypeError, match=r"scale=1j is complex but dtype=float32"):
    initializers.identity(1j)(KEY, (2, 2), jnp.float32)


def test_integer_dtypes_raise():
  # Issue 22: an integer dtype truncated rotations and contractions to 0 (and
  # identity(0.5) ignored it); every initializer now names the dtype.
  factories = [initializers.haar(), initializers.identity(0.5), initializers.henaff(),
               initializers.cayley(), initializers.contractive()]
  for init in factories:
    for dtype in (jnp.int32, jnp.bool_):
      with pytest.raises(TypeError, match=rf"dtype must be .*floating.*got dtype={jnp.dtype(dtype)}"):
        init(KEY, (4, 4), dtype)


def test_bad_shape_sizes_raise():
  # Issue 22: negative sizes raised deep inside JAX, zero sizes returned an
  # empty matrix and float sizes were truncated.
  init = initializers.haar()
  for shape in [(-3, -3), (0, 0), (-1, 2, 2), (0, 2, 2)]:
    with pytest.raises(ValueError, match=r"initializers\.haar: every size in shape must be >= 1"):
      init(KEY, shape)
  with pytest.raises(TypeError, match=r"initializers\.henaff: shape must contain ints.*2\.5"):
    initializers.henaff()(KEY, (2.5, 2.5))
  with pytest.raises(TypeError, match=r"eps"):
    initializers.contractive("0.1")


def test_diagonal_phases_is_arjovskys_unitary_diagonal(x64):
  init = urnn_jax.initializers.diagonal_phases()
  w = np.asarray(init(KEY, (500, 6, 6), jnp.complex128))
  assert w.dtype == np.complex128
  d = np.diagonal(w, axis1=-2, axis2=-1)
  np.testing.assert_array_equal(w - d[..., None] * np.eye(6), 0)  # diagonal
  np.testing.assert_allclose(np.abs(d), 1.0, atol=1e-15)  # unit modulus: unitary
  theta = np.angle(d).ravel()  # ~ U[-pi, pi]: mean 0, variance pi^2 / 3
  assert abs(theta.mean()) < 0.1 and abs(theta.var() - np.pi ** 2 / 3) < 0.15
  assert not np.allclose(w[0], w[1])  # independent draws along the batch
  # skew=True: the skew-Hermitian generator diag(i theta), whose expm is the diagonal.
  a = urnn_jax.initializers.diagonal_phases(skew=True)(KEY, (500, 6, 6), jnp.complex128)
  np.testing.assert_allclose(np.asarray(a), -np.conj(np.swapaxes(np.asarray(a), -1, -2)), atol=0)
  np.testing.assert_allclose(np.asarray(orthogonal.expm_skew(a[:3])), w[:3], atol=1e-12)
  assert init(KEY, (3, 3), jnp.complex64).dtype == jnp.complex64
  with pytest.raises(ValueError, match=r"diagonal_phases needs a complex dtype.*dtype=float32"):
    init(KEY, (3, 3), jnp.float32)
  with pytest.raises(ValueError, match="square shape"):
    init(KEY, (3, 4), jnp.complex64)
  with pytest.raises(TypeError, match="dtype must be a floating or complex dtype"):
    init(KEY, (3, 3), jnp.int32)
