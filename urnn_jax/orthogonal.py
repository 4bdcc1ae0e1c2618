"""Pure matrix maps onto (and within) the orthogonal / unitary group.

All functions act on the last two axes and broadcast over leading (batch)
axes. They accept real (orthogonal) and complex (unitary) matrices in float32
or float64, and are safe under ``jit`` and ``vmap``.

* :func:`project`: the nearest orthogonal/unitary matrix in Frobenius norm,
  the polar factor U V^H of W = U S V^H. The paper's method (seed 000, §5).
* :func:`cayley`, :func:`expm_skew`, :func:`skew`: the maps from skew
  matrices (the Lie algebra) to the group.
* :func:`clip_singular_values`: the projection onto {||W||_2 <= rho}
  (the paper's contractive "ContRNN").
* :func:`orthogonality_error`: ||W^H W - I||_F.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

PROJECTION_METHODS = ("svd", "newton_schulz", "qdwh")


def _as_square(fn: str, w, name: str = "W") -> Array:
  w = jnp.asarray(w)
  if w.ndim < 2 or w.shape[-1] != w.shape[-2]:
    raise ValueError(
        f"{fn}: {name} must be a square matrix (..., n, n), got shape"
        f" {w.shape}."
    )
  if not jnp.issubdtype(w.dtype, jnp.inexact):
    w = w.astype(jnp.result_type(float))
  return w


def _eye_like(w: Array) -> Array:
  return jnp.eye(w.shape[-1], dtype=w.dtype)


def _ct(w: Array) -> Array:
  """Conjugate transpose of the last two axes."""
  return jnp.conj(jnp.swapaxes(w, -1, -2))


def skew(m) -> Array:
  """The skew-symmetric (skew-Hermitian) part (M - M^H) / 2."""
  m = _as_square("skew", m, "M")
  return 0.5 * (m - _ct(m))


def orthogonality_error(w) -> Array:
  """||W^H W - I||_F, per matrix (shape ``w.shape[:-2]``)."""
  w = _as_square("orthogonality_error", w)
  return jnp.linalg.norm(_ct(w) @ w - _eye_like(w), axis=(-2, -1))


def cayley(a) -> Array:
  """The Cayley transform (I - A/2)^{-1} (I + A/2).

  Orthogonal (unitary) when A is skew-symmetric (skew-Hermitian).
  """
  a = _as_square("cayley", a, "A")
  eye = _eye_like(a)
  return jnp.linalg.solve(eye - 0.5 * a, eye + 0.5 * a)


def expm_skew(a) -> Array:
  """The matrix exponential exp(A) of a skew-symmetric (skew-Hermitian) A.

  The input is not symmetrised: pass ``skew(M)`` for an arbitrary M.
  """
  a = _as_square("expm_skew", a, "A")
  if a.ndim == 2:
    return jax.scipy.linalg.expm(a)
  flat = a.reshape((-1,) + a.shape[-2:])
  return jax.vmap(jax.scipy.linalg.expm)(flat).reshape(a.shape)


def _project_svd(w: Array) -> Array:
  u, _, vh = jnp.linalg.svd(w, full_matrices=False)
  return u @ vh


def _project_qdwh(w: Array) -> Array:
  polar = functools.partial(jax.scipy.linalg.polar, side="right", method="qdwh")
  if w.ndim == 2:
    return polar(w)[0]
  flat = w.reshape((-1,) + w.shape[-2:])
  return jax.vmap(lambda m: polar(m)[0])(flat).reshape(w.shape)


def _project_newton_schulz(w: Array, tol, max_iters: int) -> Array:
  """Newton-Schulz polar iteration X <- X (3I - X^H X) / 2, run to a tolerance.

  X_0 = W / sqrt(||W||_1 ||W||_inf) has all singular values in (0, 1], inside
  the basin (0, sqrt(3)) of the iteration, which converges quadratically to
  the polar factor once they are near 1. The loop stops when
  ||X^H X - I||_F <= tol for every matrix in the batch, when it stops
  improving (the floating-point floor), or after ``max_iters`` steps.
  """
  n = w.shape[-1]
  eps = jnp.finfo(w.dtype).eps
  if tol is None:
    tol = 10.0 * n * float(eps)
  abs_w = jnp.abs(w)
  norm1 = jnp.max(jnp.sum(abs_w, axis=-2), axis=-1)
  norminf = jnp.max(jnp.sum(abs_w, axis=-1), axis=-1)
  scale = jnp.sqrt(norm1 * norminf)
  scale = jnp.where(scale > 0, scale, 1.0)
  x0 = w / scale[..., None, None].astype(w.dtype)
  eye = _eye_like(w)
  real = jnp.finfo(w.dtype).dtype

  def err_of(x):
    g = _ct(x) @ x
    return g, jnp.max(jnp.linalg.norm(g - eye, axis=(-2, -1)))

  def cond(state):
    _, _, err, prev_err, it = state
    return (err > tol) & (err < prev_err) & (it < max_iters)

  def body(state):
    x, g, err, _, it = state
    x = x @ (1.5 * eye - 0.5 * g)
    g_new, err_new = err_of(x)
    return x, g_new, err_new, err, it + 1

  g0, err0 = err_of(x0)
  state = (x0, g0, err0, jnp.asarray(jnp.inf, real), jnp.asarray(0))
  x, *_ = lax.while_loop(cond, body, state)
  return x


def project(w, method: str = "svd", *, tol: float | None = None, max_iters: int = 100) -> Array:
  """The nearest orthogonal (unitary) matrix: the polar factor U V^H.

  Args:
    w: ``(..., n, n)`` real or complex matrices.
    method: ``"svd"`` (the paper's), ``"newton_schulz"`` (matmul-only, run to
      ``tol``; for accelerators) or ``"qdwh"`` (``jax.scipy.linalg.polar``).
    tol: Newton-Schulz stopping tolerance on ||X^H X - I||_F (default
      ``10 n eps``); ignored by the other methods.
    max_iters: Newton-Schulz iteration cap.
  """
  w = _as_square("project", w)
  if method == "svd":
    return _project_svd(w)
  if method == "newton_schulz":
    return _project_newton_schulz(w, tol, max_iters)
  if method == "qdwh":
    return _project_qdwh(w)
  raise ValueError(
      f"project: method={method!r} is not supported; expected one of"
      f" {PROJECTION_METHODS}."
  )


def clip_singular_values(w, max_value: float = 1.0) -> Array:
  """Projection onto {||W||_2 <= max_value}: singular values clipped at it.

  This is the Frobenius-nearest matrix with spectral norm at most
  ``max_value``; matrices already inside the set are returned unchanged (up
  to rounding).
  """
  w = _as_square("clip_singular_values", w)
  if not max_value > 0:
    raise ValueError(
        f"clip_singular_values: max_value must be > 0, got {max_value!r}."
    )
  u, s, vh = jnp.linalg.svd(w, full_matrices=False)
  s = jnp.minimum(s, jnp.asarray(max_value, s.dtype))
  return (u * s[..., None, :].astype(w.dtype)) @ vh
