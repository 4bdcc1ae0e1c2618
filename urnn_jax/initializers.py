"""Initialisers for recurrent kernels, with the flax signature ``(key, shape, dtype)``.

Every factory returns a function ``init(key, shape, dtype=jnp.float32)`` that
can be passed wherever flax takes an initializer (``kernel_init=...``).
Shapes are ``(..., n, n)``; leading dimensions give independent draws.

* :func:`haar`: orthogonal (or unitary, for complex dtypes) matrices drawn
  from the Haar measure.
* :func:`identity`: the identity (times ``scale``).
* :func:`henaff`: block-diagonal 2x2 rotations with angles ~ U[-pi, pi]
  (Henaff et al., 2016; expRNN's ``henaff_init``).
* :func:`cayley`: the Cayley transform of a block-diagonal skew matrix whose
  rotation angles are ~ U[0, pi/2] (Helfrich et al., scoRNN; expRNN's
  ``cayley_init``).
* :func:`contractive`: the paper's teacher W = I - eps A^T A / ||A||_2^2
  (seed 000, eq. 6), singular values in [1 - eps, 1).
* :func:`diagonal_phases` (complex only): diag(exp(i theta)), theta ~
  U[-pi, pi] (the diagonal factors of Arjovsky et al.'s 2016 uRNN, as they
  initialise them).

The complex unitary cell (:class:`urnn_jax.UnitaryRNNCell`) uses
:func:`haar` with a complex dtype (Haar on U(n): QR of a complex Gaussian
matrix with the phases of R's diagonal divided out) by default, or
:func:`diagonal_phases`.

``henaff`` and ``cayley`` can also return the skew-symmetric generator
(``skew=True``) for the parametrised cells, where W = map(A).

Bad arguments raise at the call, naming the argument: a shape whose sizes
are not positive ints, or not square (ValueError / TypeError); an integer or
boolean ``dtype`` (TypeError: these matrices are not integer-valued); a
complex ``dtype`` for the real-only initialisers (ValueError; ``haar`` and
``identity`` support complex dtypes), a real one for ``diagonal_phases``
(ValueError).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

DTypeLike = jnp.dtype | type


def _check_square(name: str, shape) -> tuple[int, ...]:
  """``shape`` as a tuple of positive ints ``(..., n, n)``, or a clear error."""
  try:
    dims = tuple(shape)
  except TypeError:
    raise TypeError(
        f"initializers.{name}: shape must be a sequence of ints (..., n, n),"
        f" got {type(shape).__name__}: {shape!r}."
    ) from None
  for d in dims:
    if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
      raise TypeError(
          f"initializers.{name}: shape must contain ints, got shape={shape!r}"
          f" (entry {d!r} of type {type(d).__name__})."
      )
  shape = tuple(int(d) for d in dims)
  if len(shape) < 2 or shape[-1] != shape[-2]:
    raise ValueError(
        f"initializers.{name} needs a square shape (..., n, n), got shape"
        f" {shape}."
    )
  if any(d < 1 for d in shape):
    raise ValueError(
        f"initializers.{name}: every size in shape must be >= 1, got shape"
        f" {shape}."
    )
  return shape


def _check_dtype(name: str, dtype, *, complex_ok: bool) -> jnp.dtype:
  """``dtype`` as a floating (or, if ``complex_ok``, complex) ``jnp.dtype``."""
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.inexact):
    kinds = "a floating or complex dtype" if complex_ok else "a real floating dtype"
    raise TypeError(
        f"initializers.{name}: dtype must be {kinds} (e.g. float32), got"
        f" dtype={dtype}; these matrices are not integer-valued."
    )
  if not complex_ok and jnp.issubdtype(dtype, jnp.complexfloating):
    raise ValueError(
        f"initializers.{name} supports real dtypes only, got dtype={dtype}."
    )
  return dtype


def haar():
  """Haar-distributed orthogonal (real dtype) or unitary (complex dtype) matrices."""

  def init(key, shape, dtype=jnp.float32):
    shape = _check_square("haar", shape)
    dtype = _check_dtype("haar", dtype, complex_ok=True)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      kr, ki = jax.random.split(key)
      real = jnp.finfo(dtype).dtype
      g = (jax.random.normal(kr, shape, real)
           + 1j * jax.random.normal(ki, shape, real)).astype(dtype)
    else:
      g = jax.random.normal(key, shape, dtype)
    q, r = jnp.linalg.qr(g)
    d = jnp.diagonal(r, axis1=-2, axis2=-1)
    # Fix the phases so that the distribution is exactly Haar (Mezzadri 2007).
    phase = jnp.where(d == 0, 1, d / jnp.abs(d)).astype(dtype)
    return (q * phase[..., None, :]).astype(dtype)

  return init


def identity(scale: float = 1.0):
  """``scale * I``, in the requested dtype.

  ``scale`` is a real number (complex numbers are accepted only with a
  complex dtype).
  """
  is_scalar_array = hasattr(scale, "dtype") and np.ndim(scale) == 0
  if isinstance(scale, (bool, np.bool_)) or not (isinstance(scale, numbers.Number) or is_scalar_array):
    raise TypeError(
        f"initializers.identity: scale must be a number, got"
        f" {type(scale).__name__}: {scale!r}."
    )

  def init(key, shape, dtype=jnp.float32):
    del key
    shape = _check_square("identity", shape)
    dtype = _check_dtype("identity", dtype, complex_ok=True)
    if jnp.iscomplexobj(scale) and not jnp.issubdtype(dtype, jnp.complexfloating):
      raise TypeError(
          f"initializers.identity: scale={scale!r} is complex but dtype={dtype}"
          " is real; pass a complex dtype or a real scale."
      )
    return jnp.broadcast_to(scale * jnp.eye(shape[-1], dtype=dtype), shape).astype(dtype)

  return init


def _block_skew(angles, n, dtype):
  """Block-diagonal skew matrix with 2x2 blocks [[0, a], [-a, 0]] (odd n: last 0)."""
  batch = angles.shape[:-1]
  a = jnp.zeros(batch + (n, n), dtype)
  idx = jnp.arange(angles.shape[-1])
  a = a.at[..., 2 * idx, 2 * idx + 1].set(angles.astype(dtype))
  a = a.at[..., 2 * idx + 1, 2 * idx].set(-angles.astype(dtype))
  return a


def _rotation_blocks(angles, n, dtype):
  """Block-diagonal rotations by ``angles`` (odd n: the last entry is 1)."""
  batch = angles.shape[:-1]
  w = jnp.broadcast_to(jnp.eye(n, dtype=dtype), batch + (n, n))
  idx = jnp.arange(angles.shape[-1])
  angles = angles.astype(dtype)  # trig in the target precision: exactly orthogonal
  c, s = jnp.cos(angles), jnp.sin(angles)
  w = w.at[..., 2 * idx, 2 * idx].set(c)
  w = w.at[..., 2 * idx + 1, 2 * idx + 1].set(c)
  w = w.at[..., 2 * idx, 2 * idx + 1].set(s)
  w = w.at[..., 2 * idx + 1, 2 * idx].set(-s)
  return w


def henaff(*, skew: bool = False):
  """Henaff et al. (2016): 2x2 block rotations with angles ~ U[-pi, pi].

  Args:
    skew: return the skew-symmetric generator A (so that expm(A) is the
      rotation) instead of the orthogonal matrix.
  """

  def init(key, shape, dtype=jnp.float32):
    shape = _check_square("henaff", shape)
    dtype = _check_dtype("henaff", dtype, complex_ok=False)
    n = shape[-1]
    angles = jax.random.uniform(
        key, shape[:-2] + (n // 2,), jnp.float32, -jnp.pi, jnp.pi
    )
    if skew:
      return _block_skew(angles, n, dtype)
    return _rotation_blocks(angles, n, dtype)

  return init


def cayley(*, skew: bool = False):
  """scoRNN's Cayley initialisation: 2x2 block rotations by t ~ U[0, pi/2].

  The generator A is block diagonal with blocks [[0, a], [-a, 0]],
  a = 2 tan(t/2), so that ``orthogonal.cayley(A) = (I - A/2)^{-1} (I + A/2)``
  is exactly the rotation by t returned when ``skew=False``.

  Args:
    skew: return A instead of the orthogonal matrix.
  """

  def init(key, shape, dtype=jnp.float32):
    shape = _check_square("cayley", shape)
    dtype = _check_dtype("cayley", dtype, complex_ok=False)
    n = shape[-1]
    t = jax.random.uniform(key, shape[:-2] + (n // 2,), jnp.float32, 0.0, jnp.pi / 2)
    if skew:
      return _block_skew(2.0 * jnp.tan(t.astype(dtype) / 2), n, dtype)
    return _rotation_blocks(t, n, dtype)

  return init


def contractive(eps: float = 0.01):
  """The paper's teacher transition, W = I - eps A^T A / ||A||_2^2 (eq. 6).

  A has i.i.d. standard Gaussian entries. The singular values of W lie in
  [1 - eps, 1): the system is contractive with time constant about 1/eps.
  """
  if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
    raise TypeError(
        f"contractive(eps=...) needs a real number, got {type(eps).__name__}: {eps!r}."
    )
  if not 0.0 < eps < 1.0:
    raise ValueError(f"contractive(eps=...) needs 0 < eps < 1, got eps={eps}.")

  def init(key, shape, dtype=jnp.float32):
    shape = _check_square("contractive", shape)
    dtype = _check_dtype("contractive", dtype, complex_ok=False)
    a = jax.random.normal(key, shape, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    ata = jnp.swapaxes(a, -1, -2) @ a
    norm2 = jnp.linalg.norm(a, ord=2, axis=(-2, -1)) ** 2
    w = jnp.eye(shape[-1], dtype=ata.dtype) - eps * ata / norm2[..., None, None]
    return w.astype(dtype)

  return init


def diagonal_phases(*, skew: bool = False):
  """Arjovsky et al. (2016): the unitary diagonal diag(exp(i theta)), theta ~ U[-pi, pi].

  Complex dtypes only (a real diagonal of phases would be +-1). Leading axes
  of ``shape`` give independent draws.

  Args:
    skew: return the skew-Hermitian generator diag(i theta) instead, so that
      ``orthogonal.expm_skew`` of it is the diagonal (for
      ``UnitaryRNNCell(..., parametrization="expm", generator_init=...)``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from urnn_jax import initializers
    >>> w = initializers.diagonal_phases()(jax.random.key(0), (3, 3), jnp.complex64)
    >>> bool(jnp.allclose(jnp.abs(jnp.diagonal(w)), 1.0)), bool(jnp.all(w - jnp.diag(jnp.diagonal(w)) == 0))
    (True, True)
  """

  def init(key, shape, dtype=jnp.complex64):
    shape = _check_square("diagonal_phases", shape)
    dtype = _check_dtype("diagonal_phases", dtype, complex_ok=True)
    if not jnp.issubdtype(dtype, jnp.complexfloating):
      raise ValueError(
          f"initializers.diagonal_phases needs a complex dtype (e.g. complex64), got dtype={dtype};"
          " a real diagonal of unit phases is +-1 (use haar or henaff for real matrices)."
      )
    real = jnp.finfo(dtype).dtype
    n = shape[-1]
    theta = jax.random.uniform(key, shape[:-2] + (n,), real, -jnp.pi, jnp.pi)
    diag = 1j * theta if skew else jnp.exp(1j * theta)
    eye = jnp.eye(n, dtype=dtype)
    return (diag.astype(dtype)[..., None, :] * eye).astype(dtype)

  return init
