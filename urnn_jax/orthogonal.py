"""Pure matrix maps onto (and within) the orthogonal / unitary group.

All functions act on the last two axes and broadcast over leading (batch)
axes. They accept real (orthogonal) and complex (unitary) matrices in float32
or float64, and are safe under ``jit`` and ``vmap``. Integer and boolean
matrices are promoted to JAX's default float dtype before any arithmetic
(no integer overflow).

Degenerate inputs: the polar factor of a singular W is not unique and the
Cayley transform of an A with I - A/2 singular does not exist. On concrete
(not traced) arrays :func:`project` (``"newton_schulz"``, ``"qdwh"``) and
:func:`cayley` check for them and raise ValueError; under ``jit`` / ``vmap``
the values are tracers and cannot be checked, and the result is then
silently not orthogonal (Newton-Schulz, QDWH) or has inf/NaN entries
(Cayley). Non-finite inputs propagate to non-finite outputs.

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
import numbers

import jax
import jax.numpy as jnp
import numpy as np
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


def _check_real_number(fn: str, name: str, value) -> None:
  """TypeError unless ``value`` is a real number (not a bool) or a 0-d real array."""
  dtype = getattr(value, "dtype", None)
  real_array = (dtype is not None and not isinstance(value, np.generic) and np.ndim(value) == 0
                and (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)))
  if real_array:
    return
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    raise TypeError(
        f"{fn}: {name} must be a real number, got {type(value).__name__}:"
        f" {name}={value!r}."
    )


def _is_concrete(x) -> bool:
  """True for an array with values (not a tracer under jit / vmap / grad)."""
  return not isinstance(x, jax.core.Tracer)


def _check_nonsingular(fn: str, m: Array, what: str, hint: str) -> None:
  """ValueError if a concrete ``m`` (..., n, n) is singular to working precision.

  The test is NumPy's rank rule: smallest singular value <= n eps ||m||_2,
  with eps of ``m``'s dtype. Non-finite or traced inputs are not checked.
  """
  if not _is_concrete(m) or m.size == 0:
    return
  host = np.asarray(m)
  if not np.all(np.isfinite(host)):
    return  # NaN / inf in, NaN / inf out: nothing more to say.
  wide = host.astype(np.complex128 if np.iscomplexobj(host) else np.float64)
  s = np.linalg.svd(wide, compute_uv=False)  # (..., n), descending
  n = m.shape[-1]
  eps = float(jnp.finfo(m.dtype).eps)
  bad = s[..., -1] <= n * eps * s[..., 0]
  if np.any(bad):
    where = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()
    at = f" (matrix {where} of the batch)" if where else ""
    raise ValueError(
        f"{fn}: {what} is singular to working precision{at}: smallest singular"
        f" value {float(s[where][-1]):.3g}, largest {float(s[where][0]):.3g}"
        f" (threshold n eps = {n * eps:.3g} relative). {hint}"
    )


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

  Orthogonal (unitary) when A is skew-symmetric (skew-Hermitian); for such
  an A, I - A/2 is always invertible (its eigenvalues are 1 - i t / 2). An
  eigenvalue l of A becomes (1 + l/2) / (1 - l/2), never -1: orthogonal
  matrices with eigenvalue -1 (e.g. a rotation by pi) are reached only in
  the limit of an unbounded A.

  Raises:
    ValueError: for a non-square ``a``, or, when ``a`` is concrete, if
      I - A/2 is singular to working precision (A has an eigenvalue 2, or
      near it): the transform does not exist there. Under ``jit`` / ``vmap``
      this cannot be checked, and such an A gives inf/NaN entries.
  """
  a = _as_square("cayley", a, "A")
  eye = _eye_like(a)
  m = eye - 0.5 * a
  _check_nonsingular(
      "cayley", m, "I - A/2",
      "The Cayley transform needs I - A/2 invertible (no eigenvalue of A at 2);"
      " a skew-symmetric A (pass skew(A)) always qualifies.")
  return jnp.linalg.solve(m, eye + 0.5 * a)


def expm_skew(a) -> Array:
  """The matrix exponential exp(A) of a skew-symmetric (skew-Hermitian) A.

  The input is not symmetrised: pass ``skew(M)`` for an arbitrary M.
  """
  a = _as_square("expm_skew", a, "A")
  if a.ndim == 2:
    return jax.scipy.linalg.expm(a)
  flat = a.reshape((-1,) + a.shape[-2:])
  return jax.vmap(jax.scipy.linalg.expm)(flat).reshape(a.shape)


def _newton_schulz_step(x: Array, g: Array | None = None) -> Array:
  """One Newton-Schulz polar step X <- X (3I - X^H X) / 2 (``g`` = X^H X if known)."""
  if g is None:
    g = _ct(x) @ x
  return x @ (1.5 * _eye_like(x) - 0.5 * g)


# The SVD the projection uses (a module attribute so that the tests can make it fail).
_svd = jnp.linalg.svd


def _svd_fallback(w: Array) -> Array:
  """The SVD projection's fallback: the Newton-Schulz polar iteration, run to its floor."""
  return _project_newton_schulz(w, None, 100)


def _project_svd(w: Array) -> Array:
  """U V^H from the SVD W = U S V^H, then one Newton-Schulz step.

  The extra step (two matmuls) leaves the polar factor unchanged but removes
  the orthogonality lost to rounding in U and V (in float32 at n = 64,
  ||Q^H Q - I||_F drops from about 1e-5 to about 2e-6).

  Fallback: LAPACK's SVD can fail to converge (rarely; this project has seen
  it on a float32 W next to the group, though random trials did not
  reproduce it), and ``jnp.linalg.svd`` then returns NaN without an error. When a finite W
  gives a non-finite U V^H, the polar factor comes from the Newton-Schulz
  iteration instead (:func:`_project_newton_schulz`, matmuls only, which
  converges fastest exactly there: a W one optimiser step off the group
  takes a few steps). It is a ``lax.cond`` on one all-finite flag over the
  whole (batched) array, so it works under ``jit`` and, when the SVD
  succeeds, costs only that O(n^2) check. Under ``vmap`` JAX turns the cond
  into a select that evaluates both branches, so the Newton-Schulz steps
  then run on every call (at n = 64, batch 30, about +20% over the SVD
  alone, measured on a shared CPU). A singular W that also defeats the SVD
  gives a finite matrix that is not orthogonal.
  """
  u, _, vh = _svd(w, full_matrices=False)
  q = u @ vh
  failed = jnp.all(jnp.isfinite(w)) & ~jnp.all(jnp.isfinite(q))
  q = lax.cond(failed, _svd_fallback, lambda m: q, w)
  return _newton_schulz_step(q)


def _project_qdwh(w: Array) -> Array:
  polar = functools.partial(jax.scipy.linalg.polar, side="right", method="qdwh")
  if w.ndim == 2:
    return polar(w)[0]
  flat = w.reshape((-1,) + w.shape[-2:])
  return jax.vmap(lambda m: polar(m)[0])(flat).reshape(w.shape)


def _project_newton_schulz(w: Array, tol, max_iters: int) -> Array:
  r"""Newton-Schulz polar iteration X <- X (3I - X^H X) / 2, run to a tolerance.

  Each singular value follows s <- s (3 - s^2) / 2, which converges to 1 for
  every s in (0, sqrt(3)), quadratically near 1; the singular vectors are
  kept, so the limit is the polar factor U V^H.

  Start: X_0 = W / alpha with alpha = max(1, b / 1.5), where b is the
  smallest of three upper bounds on ||W||_2: sqrt(||W||_1 ||W||_inf),
  sqrt(1 + ||W^H W - I||_F) and sqrt(1 + ||W^H W - I||_1). So the singular
  values of X_0 are at most 1.5 < sqrt(3), and a W already near the group
  (an optimiser step away from it) is not scaled at all, which saves the
  slow first phase of the iteration.

  Stops, checked on the largest error over the batch, when
  ||X^H X - I||_F <= tol, after ``max_iters`` steps, or at the
  floating-point floor: once the error is below 0.5 each exact step shrinks
  it by a factor of at least 0.57, so a step that does not shrink it by 0.75
  is rounding noise.
  """
  n = w.shape[-1]
  if w.size == 0:
    return w
  eps = float(jnp.finfo(w.dtype).eps)
  if tol is None:
    tol = (n ** 0.5) * eps
  eye = _eye_like(w)
  real = jnp.finfo(w.dtype).dtype

  g_w = _ct(w) @ w
  e_w = g_w - eye
  abs_w = jnp.abs(w)
  bound_1inf = jnp.sqrt(
      jnp.max(jnp.sum(abs_w, axis=-2), axis=-1) * jnp.max(jnp.sum(abs_w, axis=-1), axis=-1)
  )
  bound_fro = jnp.sqrt(1.0 + jnp.linalg.norm(e_w, axis=(-2, -1)))
  bound_one = jnp.sqrt(1.0 + jnp.max(jnp.sum(jnp.abs(e_w), axis=-2), axis=-1))
  bound = jnp.minimum(bound_1inf, jnp.minimum(bound_fro, bound_one))
  alpha = jnp.maximum(1.0, bound / 1.5).astype(real)
  x0 = w / alpha[..., None, None].astype(w.dtype)
  g0 = g_w / (alpha**2)[..., None, None].astype(w.dtype)

  def err_of(g):
    return jnp.max(jnp.linalg.norm(g - eye, axis=(-2, -1)))

  def cond(state):
    _, _, err, prev_err, it = state
    at_floor = (prev_err < 0.5) & (err > 0.75 * prev_err)
    return (err > tol) & (it < max_iters) & ~at_floor

  def body(state):
    x, g, err, _, it = state
    x = _newton_schulz_step(x, g)
    g = _ct(x) @ x
    return x, g, err_of(g), err, it + 1

  state = (x0, g0, err_of(g0), jnp.asarray(jnp.inf, real), jnp.asarray(0))
  x, *_ = lax.while_loop(cond, body, state)
  return x


def project(
    w, method: str = "svd", *, tol: float | None = None, max_iters: int = 100
) -> Array:
  r"""The nearest orthogonal (unitary) matrix: the polar factor U V^H.

  .. math:: \operatorname{project}(W) = \arg\min_{Q^H Q = I} \|W - Q\|_F
            = U V^H, \quad W = U S V^H.

  Args:
    w: ``(..., n, n)`` real or complex matrices.
    method: ``"svd"`` (the paper's), ``"newton_schulz"`` (matmul-only, run to
      ``tol``; for accelerators) or ``"qdwh"`` (``jax.scipy.linalg.polar``).
    tol: Newton-Schulz stopping tolerance on ||X^H X - I||_F (default
      ``sqrt(n) eps``, below the rounding floor, so by default it runs until
      rounding stops it); ignored by the other methods.
    max_iters: Newton-Schulz iteration cap.

  ``"svd"`` falls back to the Newton-Schulz iteration when LAPACK's SVD
  fails to converge on a finite W (it then returns NaN silently); see
  :func:`_project_svd` for how, and its cost under ``vmap``.

  Singular W: the polar factor is not unique. ``"svd"`` returns one of the
  orthogonal (unitary) minimisers (U V^H from the SVD; e.g. I for W = 0).
  ``"newton_schulz"`` keeps zero singular values at zero and ``"qdwh"``
  fails the same way, so for a concrete (not traced) W these two methods
  check first and raise ValueError when W is singular to working precision
  (smallest singular value <= n eps ||W||_2). Under ``jit`` / ``vmap`` the
  check cannot run (the values are tracers): a singular W then silently
  gives a matrix that is not orthogonal. Non-finite entries propagate.

  Raises:
    ValueError: for a non-square ``w``, an unknown ``method``, a
      non-positive ``tol`` or ``max_iters``, or a concrete singular ``w``
      with ``method="newton_schulz"`` or ``"qdwh"``.
    TypeError: for a ``tol`` that is not a real number.
  """
  w = _as_square("project", w)
  if method not in PROJECTION_METHODS:
    raise ValueError(
        f"project: method={method!r} is not supported; expected one of"
        f" {PROJECTION_METHODS}."
    )
  if tol is not None:
    _check_real_number("project", "tol", tol)
  if tol is not None and not tol > 0:
    raise ValueError(f"project: tol must be None or > 0, got tol={tol!r}.")
  if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
    raise ValueError(
        f"project: max_iters must be a positive int, got max_iters={max_iters!r}."
    )
  if method == "svd":
    return _project_svd(w)
  _check_nonsingular(
      "project", w, "W",
      f"Its polar factor is not unique, and method={method!r} does not"
      " converge to an orthogonal matrix from it; method='svd' returns one of"
      " the nearest orthogonal (unitary) matrices.")
  if method == "newton_schulz":
    return _project_newton_schulz(w, tol, max_iters)
  return _project_qdwh(w)


def clip_singular_values(w, max_value: float = 1.0) -> Array:
  r"""Projection onto {||W||_2 <= rho}: singular values clipped at rho.

  .. math:: W = U S V^H \mapsto U \min(S, \rho) V^H .

  This is the Frobenius-nearest matrix with spectral norm at most
  ``max_value`` (rho). A matrix already inside the set is returned exactly
  unchanged. U and V get one Newton-Schulz step each before the product is
  formed: in float32 their loss of orthogonality would otherwise leave the
  result's norm about 1e-6 (relative) above rho; with it, it stays within
  about 4e-7.

  Raises:
    ValueError: for a non-square ``w`` or ``max_value`` not > 0.
    TypeError: for a ``max_value`` that is not a real number.
  """
  w = _as_square("clip_singular_values", w)
  if not isinstance(max_value, (bool, np.bool_, jax.Array, np.ndarray)):
    _check_real_number("clip_singular_values", "max_value", max_value)
  elif not isinstance(max_value, (bool, np.bool_)) and jnp.iscomplexobj(max_value):
    raise TypeError(
        f"clip_singular_values: max_value must be real, got dtype {max_value.dtype}."
    )
  if isinstance(max_value, bool) or not max_value > 0:
    raise ValueError(
        f"clip_singular_values: max_value must be > 0, got max_value={max_value!r}."
    )
  u, s, vh = jnp.linalg.svd(w, full_matrices=False)
  rho = jnp.asarray(max_value, s.dtype)
  u = _newton_schulz_step(u)
  vh = _newton_schulz_step(vh)
  clipped = (u * jnp.minimum(s, rho)[..., None, :].astype(w.dtype)) @ vh
  inside = (s[..., 0] <= rho)[..., None, None]
  return jnp.where(inside, w, clipped)
