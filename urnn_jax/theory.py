"""The paper's theorems as code (seed 000, §3-4 and Appendix A).

Everything here speaks the language of :class:`urnn_jax.RNNParams` and
:func:`urnn_jax.simulate`, the paper's eq. (1)::

    h(k) = phi(W h(k-1) + F x(k) + b),    y(k) = C h(k),    h(-1) = h0.

What is proved, and what is only demonstrated:

* **Theorem 3.1** (proved in the paper, Appendix A; exact here):
  :func:`unitary_equivalent` builds, for a contractive ReLU RNN with n states,
  a URNN with 2n states and an orthogonal transition matrix whose outputs are
  *identical* for every input sequence with ``||x(k)||_2 <= M``. The paper
  assumes h0 = 0; the construction here also covers h0 != 0 (see
  :func:`state_bound` for the extended invariant).
* **Eq. (7)**: :func:`state_bound`, the bound M_h on the hidden state.
* **Eq. (4)**: :func:`similarity_transform`, the symmetries of the map
  (any invertible T for linear RNNs, positive diagonal T for ReLU), and
  :func:`equivalent`, the largest output difference of two RNNs on given
  inputs.
* **§3 parameter counts**: :func:`degrees_of_freedom`.
* **Theorem 3.2** (2n is tight; proof in supplement B.1, not in the seeds):
  not proved here. :func:`channel_rnn` builds the scalar RNN
  y(k) = relu(y(k-1)/2 + x(k)) and its n-channel version, the targets of
  the numerical demonstration
  :func:`urnn_jax.experiments.equivalence.tightness_demo` (1-state URNNs
  fitted by gradient descent leave a residual, the 2-state construction is
  exact). Caveat, shown by :func:`near_equivalent_channel_urnn`: the
  tightness is about *exact* equivalence. n+1 states approximate the
  n-channel RNN with error O(s) for any s > 0 (the weights grow like
  1/s^(n-1)).
* **Theorem 4.1** (sigmoid converse; proof in supplement B.2): the tools of
  the demonstration
  :func:`urnn_jax.experiments.equivalence.sigmoid_converse_demo`:
  :func:`linearize` (fixed point h* and the eigenvalues of the Jacobian
  diag(phi'(z*)) W), :func:`small_signal_response` and
  :func:`response_eigenvalues` (the eigenvalues read back from the
  input-output map). Caveat, shown by :func:`unitary_dilation`: the 2n-state
  construction with bias -B on the extra states matches a contractive
  sigmoid RNN up to O(e^-B), i.e. to float64 rounding for B ~ 37; the
  converse holds for exact equivalence only.

The demonstrations themselves (fitted URNNs, the tables and figure of
``python -m train.equivalence``) live in
:mod:`urnn_jax.experiments.equivalence`; this module holds the
constructions and bounds.

The constructive functions (:func:`state_bound`, :func:`unitary_equivalent`,
:func:`similarity_transform`) validate concrete values and compute in NumPy
float64 whatever the parameters' dtype, then return arrays of that dtype:
call them outside ``jit``. Exactness to ~1e-12 needs float64 simulation
(``jax.config.update('jax_enable_x64', True)``).

Input checks (every public function): the theory is about the *real* RNN of
eq. (1), so complex parameters, inputs or dtypes raise TypeError (complex,
unitary recurrences are supported by the Flax cells, e.g.
``urnn_jax.OrthogonalRNNCell(n, activation="tanh", param_dtype=jnp.complex64)`` run by
``urnn_jax.Recurrent``); integer or boolean parameters and inputs are
promoted to JAX's default float dtype before any arithmetic (never integer
arithmetic), and results "in params' dtype" are then in that float dtype;
sizes, counts and steps must be ints of the stated range (TypeError /
ValueError naming the argument). :func:`spectral_norm` and
:func:`decay_rate` are generic and also accept complex arrays.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from urnn_jax import initializers
from urnn_jax.rnn import Activation
from urnn_jax.rnn import RNNParams
from urnn_jax.rnn import check_int
from urnn_jax.rnn import check_params
from urnn_jax.rnn import get_activation
from urnn_jax.rnn import simulate

__all__ = [
    "DOF_KINDS",
    "bounded_inputs",
    "channel_rnn",
    "check_input_bound",
    "decay_rate",
    "degrees_of_freedom",
    "equivalent",
    "Linearization",
    "linearize",
    "near_equivalent_channel_urnn",
    "random_contractive_rnn",
    "response_eigenvalues",
    "similarity_transform",
    "small_signal_response",
    "spectral_norm",
    "state_bound",
    "unitary_dilation",
    "unitary_equivalent",
]

# simulate as one compiled computation per shape (eager simulate compiles each
# of its ops separately).
_simulate = jax.jit(simulate, static_argnames=("activation", "unroll", "return_states"))

# Activations for which |phi(t)| <= |t| (the bound of eq. (7) holds) and
# which are positively homogeneous, phi(d t) = d phi(t) for d > 0 (positive
# diagonal similarity transforms are symmetries).
_POSITIVELY_HOMOGENEOUS = ("relu", "leaky_relu", "abs")


# ---------------------------------------------------------------------------
# Validation helpers.


_COMPLEX_HINT = (
    "the theory functions are for the real RNN of eq. (1); complex (unitary)"
    " recurrences are supported by the Flax cells, e.g."
    " urnn_jax.OrthogonalRNNCell(n, activation='tanh', param_dtype=jnp.complex64) run by"
    " urnn_jax.Recurrent"
)


def _dtype_of(value) -> np.dtype:
  dtype = getattr(value, "dtype", None)
  return np.dtype(dtype) if dtype is not None else np.asarray(value).dtype


def _real_params(fn: str, params) -> RNNParams:
  """``params`` validated as real: complex fields raise TypeError, integer or
  boolean fields are promoted to the default float dtype (no integer
  arithmetic). Only dtypes are inspected, so this is free under ``jit``.
  Returns ``params`` itself when nothing needs promoting.
  """
  check_params(params)
  promoted = {}
  for name, value in zip(RNNParams._fields, params):
    dtype = _dtype_of(value)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      raise TypeError(f"{fn}: params.{name} has complex dtype {dtype}; {_COMPLEX_HINT}.")
    if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
      raise TypeError(f"{fn}: params.{name} must be a numeric array, got dtype {dtype}.")
    if not jnp.issubdtype(dtype, jnp.inexact):
      promoted[name] = jnp.asarray(value, jnp.result_type(float))
  return params._replace(**promoted) if promoted else params


def _real_input(fn: str, name: str, x) -> jax.Array:
  """``x`` as a real JAX array: complex raises TypeError, integers are promoted."""
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    raise TypeError(f"{fn}: {name} has complex dtype {x.dtype}; {_COMPLEX_HINT}.")
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    x = x.astype(jnp.result_type(float))
  return x


def _real_numpy(fn: str, name: str, x) -> np.ndarray:
  """``x`` as a float64 NumPy array; complex or non-numeric raises TypeError."""
  arr = np.asarray(x)
  if np.iscomplexobj(arr):
    raise TypeError(f"{fn}: {name} has complex dtype {arr.dtype}; {_COMPLEX_HINT}.")
  if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
    raise TypeError(f"{fn}: {name} must be a real numeric array, got dtype {arr.dtype}.")
  return arr.astype(np.float64)


_check_int = check_int  # urnn_jax.rnn's one integer-argument check


def _is_real_scalar(value) -> bool:
  """A real (non-bool) Python/NumPy number, or a 0-d real array."""
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, numbers.Real):
    return True
  dtype = getattr(value, "dtype", None)
  return (dtype is not None and np.ndim(value) == 0
          and (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)))


def _check_real(fn: str, name: str, value) -> float:
  """``value`` as a Python float: TypeError unless a real (non-bool) number."""
  if not _is_real_scalar(value):
    raise TypeError(
        f"{fn}: {name} must be a real number, got {type(value).__name__}:"
        f" {name}={value!r}."
    )
  return float(value)


def _check_float_dtype(fn: str, dtype) -> jnp.dtype:
  """A real floating dtype; integer or complex dtypes raise TypeError."""
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    raise TypeError(f"{fn}: dtype={dtype} is complex; {_COMPLEX_HINT}.")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"{fn}: dtype must be a real floating dtype (e.g. float32), got dtype={dtype}."
    )
  return dtype


def _single_params(fn: str, params) -> tuple[RNNParams, tuple[np.ndarray, ...]]:
  """(params with float fields, (W, F, b, C, h0) as float64 NumPy arrays), validated."""
  params = _real_params(fn, params)
  if jnp.ndim(params.W) != 2:
    raise ValueError(
        f"{fn}: params must describe a single RNN with W of shape (n, n), got"
        f" W of shape {jnp.shape(params.W)}; apply it per realization."
    )
  try:
    arrays = tuple(np.asarray(v, dtype=np.float64) for v in params)
  except jax.errors.TracerArrayConversionError:
    raise TypeError(
        f"{fn} validates concrete values and cannot be traced: call it outside"
        " jax.jit / jax.vmap."
    ) from None
  for name, value in zip(RNNParams._fields, arrays):
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{fn}: params.{name} has non-finite entries.")
  return params, arrays


def _check_bound(fn: str, name: str, value) -> float:
  if isinstance(value, (complex, np.complexfloating)) or (
      hasattr(value, "dtype") and np.iscomplexobj(value)):
    raise TypeError(
        f"{fn}: {name} must be a real number, got {type(value).__name__}:"
        f" {value!r}."
    )
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise TypeError(
        f"{fn}: {name} must be a real number, got {type(value).__name__}:"
        f" {value!r}."
    ) from None
  if not (math.isfinite(value) and value >= 0.0):
    raise ValueError(
        f"{fn}: {name} must be a finite number >= 0, got {name}={value!r}."
    )
  return value


def _like(value: np.ndarray, ref) -> jax.Array:
  """``value`` as a JAX array of ``ref``'s dtype."""
  return jnp.asarray(value, dtype=jnp.asarray(ref).dtype)


def spectral_norm(w) -> float:
  """||W||_2, the largest singular value (the paper's "spectral norm").

  ``w`` is a real or complex matrix (computed in float64 / complex128); an
  empty matrix has norm 0.

  Raises:
    ValueError: if ``w`` is not 2-D.
    TypeError: if ``w`` is not numeric.
  """
  w = np.asarray(w)
  if not (np.issubdtype(w.dtype, np.number) or w.dtype == np.bool_):
    raise TypeError(f"spectral_norm: w must be a numeric matrix, got dtype {w.dtype}.")
  if w.ndim != 2:
    raise ValueError(f"spectral_norm: w must be a matrix (2-D), got shape {w.shape}.")
  w = w.astype(np.complex128 if np.iscomplexobj(w) else np.float64)
  if w.size == 0:
    return 0.0
  return float(np.linalg.norm(w, ord=2))


# ---------------------------------------------------------------------------
# Eq. (7): the state bound.


def state_bound(params: RNNParams, input_bound: float) -> float:
  """An invariant bound on ||h(k)||_2 for inputs with ||x(k)||_2 <= M (eq. 7).

  The paper's bound, for h0 = 0 and rho = ||W||_2 < 1, is::

      M_h = (||F||_2 M + ||b||_2) / (1 - rho).                     (7)

  This function returns ``B = max(||h0||_2, M_h)``, which also covers
  h0 != 0.

  Claim: ``||h(k)||_2 <= B`` for every k >= -1.

  Proof (induction on k). At k = -1, h(-1) = h0 and ``||h0|| <= B``. If
  ``||h(k-1)|| <= B`` then, because ``|phi(t)| <= |t|`` elementwise (true for
  ReLU, and also for identity, tanh, leaky ReLU and abs; *not* for the
  sigmoid, phi(0) = 1/2), so ``||phi(z)||_2 <= ||z||_2``::

      ||h(k)|| <= ||W h(k-1) + F x(k) + b||
               <= rho B + ||F|| M + ||b||
               =  rho B + (1 - rho) M_h
               <= rho B + (1 - rho) B = B.

  (Unrolled, ``||h(k)|| <= rho^(k+1) ||h0|| + (1 - rho^(k+1)) M_h``, a convex
  combination of ||h0|| and M_h, hence at most their maximum.) For h0 = 0,
  ``B = M_h`` is the paper's bound.

  Args:
    params: a single contractive RNN.
    input_bound: M >= 0, the bound on every ``||x(k)||_2``.

  Returns:
    B as a Python float.

  Raises:
    ValueError: if ``||W||_2 >= 1`` (no finite bound follows from eq. (7)),
      or if ``input_bound`` is negative or not finite.
  """
  _, (W, F, b, _, h0) = _single_params("state_bound", params)
  M = _check_bound("state_bound", "input_bound", input_bound)
  rho = spectral_norm(W)
  if not rho < 1.0:
    raise ValueError(
        "state_bound: eq. (7) needs a contractive transition, ||W||_2 < 1;"
        f" the measured spectral norm of params.W is {rho!r}."
    )
  m_h = (spectral_norm(F) * M + float(np.linalg.norm(b))) / (1.0 - rho)
  return max(float(np.linalg.norm(h0)), m_h)


def check_input_bound(x, input_bound: float, *, rtol: float | None = None,
                      raise_error: bool = True) -> float:
  """The largest ``||x(k)||_2`` of an input sequence, checked against M.

  Theorem 3.1's equivalence is guaranteed only for inputs with
  ``||x(k)||_2 <= M`` at every step (and every batch element). Inputs above
  the bound can break it (see
  :func:`urnn_jax.experiments.equivalence.bound_violation_demo`).

  Args:
    x: inputs ``(..., T, m)``.
    input_bound: M >= 0.
    rtol: relative slack for rounding, so that inputs scaled onto the bound
      pass; default ``16 * eps`` of ``x``'s dtype.
    raise_error: raise when the bound is exceeded (else just report).

  Returns:
    ``max_k ||x(k)||_2`` as a Python float (0.0 for an empty ``x``).

  Raises:
    ValueError: when ``raise_error`` and the maximum norm exceeds
      ``input_bound * (1 + rtol)``.
  """
  M = _check_bound("check_input_bound", "input_bound", input_bound)
  x = np.asarray(x)
  if np.iscomplexobj(x):
    raise TypeError(f"check_input_bound: x has complex dtype {x.dtype}; {_COMPLEX_HINT}.")
  if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
    raise TypeError(f"check_input_bound: x must be a numeric array, got dtype {x.dtype}.")
  if x.ndim < 2:
    raise ValueError(
        "check_input_bound: x must have shape (..., T, m), got shape"
        f" {x.shape}."
    )
  if rtol is None:
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    rtol = 16.0 * float(np.finfo(dtype).eps)
  norms = np.linalg.norm(x.astype(np.float64), axis=-1)
  max_norm = float(norms.max()) if norms.size else 0.0
  if raise_error and max_norm > M * (1.0 + rtol):
    where = np.unravel_index(int(np.argmax(norms)), norms.shape)
    raise ValueError(
        f"check_input_bound: the inputs exceed input_bound={M!r}: max_k"
        f" ||x(k)||_2 = {max_norm!r} at index {tuple(int(i) for i in where)}"
        " (batch..., step). Theorem 3.1's equivalence holds only for"
        " ||x(k)||_2 <= input_bound."
    )
  return max_norm


def bounded_inputs(key, shape: Sequence[int], input_bound: float = 1.0, *,
                   on_bound: float = 0.5, dtype=None) -> jax.Array:
  """Random inputs with ``||x(k)||_2 <= input_bound`` at every step.

  Directions are uniform on the sphere; a fraction ``on_bound`` of the steps
  has norm exactly M (up to rounding), the others a norm uniform in [0, M].

  Args:
    key: a PRNG key.
    shape: ``(..., T, m)``.
    input_bound: M.
    on_bound: the probability that a step lies on the sphere of radius M.
    dtype: default: JAX's default float dtype.
  """
  M = _check_bound("bounded_inputs", "input_bound", input_bound)
  _check_real("bounded_inputs", "on_bound", on_bound)
  if not 0.0 <= on_bound <= 1.0:
    raise ValueError(
        f"bounded_inputs: on_bound must be in [0, 1], got on_bound={on_bound!r}."
    )
  try:
    shape = tuple(shape)
  except TypeError:
    raise TypeError(f"bounded_inputs: shape must be a sequence of ints, got {shape!r}.") from None
  shape = tuple(_check_int("bounded_inputs", f"shape[{i}]", s, 1) for i, s in enumerate(shape))
  if len(shape) < 2:
    raise ValueError(f"bounded_inputs: shape must be (..., T, m), got {shape}.")
  dtype = _check_float_dtype("bounded_inputs", dtype or jnp.result_type(float))
  return _bounded_inputs(key, M, on_bound, shape=shape, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def _bounded_inputs(key, M, on_bound, *, shape, dtype):
  k_dir, k_on, k_rad = jax.random.split(key, 3)
  g = jax.random.normal(k_dir, shape, dtype)
  g = g / jnp.maximum(jnp.linalg.norm(g, axis=-1, keepdims=True), 1e-30)
  on = jax.random.uniform(k_on, shape[:-1] + (1,), dtype) < on_bound
  radius = jnp.where(on, 1.0, jax.random.uniform(k_rad, shape[:-1] + (1,), dtype))
  return (M * radius * g).astype(dtype)


# ---------------------------------------------------------------------------
# Theorem 3.1: the unitary equivalent of a contractive ReLU RNN.


def unitary_equivalent(params: RNNParams, input_bound: float) -> RNNParams:
  """Theorem 3.1: a 2n-state URNN with the same outputs as a contractive ReLU RNN.

  Given Theta = (W, F, b, C, h0) with ``||W||_2 < 1`` and n states, returns
  Theta_u = (W_u, F_u, b_u, C_u, h0_u) with 2n states (Appendix A, eq. 8)::

      W_u = [[W,  W2],      F_u = [F; 0],   b_u = [b; -B 1],
             [W3, W4]],     C_u = [C  0],   h0_u = [h0; 0],

  where ``B = state_bound(params, input_bound) = max(||h0||, M_h)`` and the
  blocks are the Halmos unitary dilation of the contraction W::

      W3 = (I - W^T W)^(1/2),   W2 = (I - W W^T)^(1/2),   W4 = -W^T.

  With the SVD W = U S V^T and Cs = (I - S^2)^(1/2) this is
  ``W_u = diag(U, V) [[S, Cs], [Cs, -S]] diag(V, U)^T``, a product of
  orthogonal matrices, so ``W_u^T W_u = I`` to rounding (~1e-15 in float64).
  W3 is the paper's choice; W2 and W4 are one completion of the orthonormal
  columns [W; W3] to an orthogonal matrix. W_u's top-left block is W itself,
  bit for bit.

  Why the outputs agree (Appendix A, extended to h0 != 0): write
  h_u = [h1; h2]. Claim: ``h1(k) = h(k)`` and ``h2(k) = 0`` for all k >= -1.
  At k = -1 this is h0_u = [h0; 0]. If it holds at k - 1, then
  ``h1(k) = relu(W h(k-1) + W2 0 + F x(k) + b) = h(k)`` and, since
  ``||h(k-1)||_2 <= B`` (:func:`state_bound`, which covers h(-1) = h0 because
  B >= ||h0||) and ``||W3||_2 <= 1``::

      W3 h(k-1) + W4 0 + b2 = W3 h(k-1) - B 1 <= ||W3 h(k-1)||_inf - B <= 0,

  so ``h2(k) = relu(...) = 0``. Hence ``y_u(k) = C h1(k) = y(k)``.

  Scope: the equivalence is exact only for the **ReLU** activation (it uses
  relu(t) = 0 for t <= 0; a smooth activation does not zero the extra states,
  cf. Theorem 4.1) and only for **bounded inputs**, ``||x(k)||_2 <=
  input_bound`` at every step (check with :func:`check_input_bound`). In
  floating point the two simulations differ only by rounding (the extra
  states are exactly 0; the summation order of the matmul may differ).

  Args:
    params: a single contractive RNN (``||W||_2 < 1``), any h0.
    input_bound: M >= 0.

  Returns:
    ``RNNParams`` of the 2n-state URNN, in ``params``' dtype.

  Raises:
    ValueError: if ``||W||_2 >= 1`` (the message gives the measured norm), or
      if ``input_bound`` is negative or not finite.
  """
  M = _check_bound("unitary_equivalent", "input_bound", input_bound)
  return _dilation("unitary_equivalent", params, lambda: state_bound(params, M))


def unitary_dilation(params: RNNParams, garbage_bias: float) -> RNNParams:
  """The 2n-state URNN of Theorem 3.1 with a chosen bias ``b2 = -garbage_bias``.

  Same W_u, F_u, C_u, h0_u as :func:`unitary_equivalent`, which is
  ``unitary_dilation(params, state_bound(params, M))``. With another
  activation than ReLU the extra states are not zeroed exactly, e.g. for the
  **sigmoid** they are ``h2 = sigmoid(W3 h1 + W4 h2 - B) ~ e^-B`` (h1 lies in
  (0, 1)^n), and they perturb h1 through W2 by O(e^-B): the outputs approach
  the sigmoid RNN's exponentially fast in B, reaching float64 rounding near
  B ~ 37, but are never exactly equal (W2 is invertible and h2 > 0), in line
  with Theorem 4.1.

  Raises:
    ValueError: if ``||W||_2 >= 1`` or ``garbage_bias`` is negative or not
      finite.
  """
  B = _check_bound("unitary_dilation", "garbage_bias", garbage_bias)
  return _dilation("unitary_dilation", params, lambda: B)


def _dilation(fn: str, params: RNNParams, garbage_bias: Callable[[], float]) -> RNNParams:
  params, (W, F, b, C, h0) = _single_params(fn, params)
  rho = spectral_norm(W)
  if not rho < 1.0:
    raise ValueError(
        f"{fn}: Theorem 3.1 needs a contractive RNN, ||W||_2 < 1;"
        f" the measured spectral norm of params.W is {rho!r} >= 1. Shrink W,"
        " e.g. urnn_jax.orthogonal.clip_singular_values(W, 0.99)."
    )
  bound = garbage_bias()
  n = W.shape[0]
  u, s, vt = np.linalg.svd(W)
  cs = np.sqrt((1.0 - s) * (1.0 + s))  # (1 - s^2)^(1/2), accurate near s = 1
  v = vt.T
  w3 = (v * cs) @ v.T  # (I - W^T W)^(1/2)
  w2 = (u * cs) @ u.T  # (I - W W^T)^(1/2)
  w_u = np.block([[W, w2], [w3, -W.T]])
  m = F.shape[1]
  f_u = np.concatenate([F, np.zeros((n, m))], axis=0)
  b_u = np.concatenate([b, -bound * np.ones(n)])
  c_u = np.concatenate([C, np.zeros_like(C)], axis=1)
  h0_u = np.concatenate([h0, np.zeros(n)])
  return RNNParams(
      W=_like(w_u, params.W), F=_like(f_u, params.F), b=_like(b_u, params.b),
      C=_like(c_u, params.C), h0=_like(h0_u, params.h0))


# ---------------------------------------------------------------------------
# Eq. (4): similarity transforms, and an equivalence check.


def _is_monomial(t: np.ndarray, *, positive: bool, unit: bool) -> bool:
  """One nonzero per row and column (a permuted diagonal matrix)."""
  nz = t != 0
  if not (np.all(nz.sum(axis=0) == 1) and np.all(nz.sum(axis=1) == 1)):
    return False
  vals = t[nz]
  if positive and not np.all(vals > 0):
    return False
  if unit and not np.all(vals == 1):
    return False
  return True


def similarity_transform(params: RNNParams, T, activation: Activation = "identity") -> RNNParams:
  """Eq. (4): the equivalent RNN with hidden state T h.

  ::

      W -> T W T^-1,   F -> T F,   b -> T b,   C -> C T^-1,   h0 -> T h0.

  (The paper states eq. (4) for linear systems with b = 0; with a bias,
  b -> T b.) The states map to ``T h(k)`` and the outputs are unchanged when
  T commutes with the activation, ``phi(T z) = T phi(z)``:

  * ``"identity"``: any invertible T;
  * ``"relu"``, ``"leaky_relu"``, ``"abs"``: a positive diagonal T (these
    activations are positively homogeneous). Positive diagonal matrices with
    permuted rows (relabelling the states) are also accepted;
  * any other activation (sigmoid, tanh, callables): permutation matrices
    only.

  Args:
    params: a single RNN.
    T: ``(n, n)`` invertible matrix.
    activation: the activation the RNN is run with; decides which T are
      symmetries.

  Returns:
    The transformed ``RNNParams`` in ``params``' dtype.

  Raises:
    ValueError: if T has the wrong shape, is singular, or is not a symmetry
      of ``activation`` (e.g. a non-diagonal T for ReLU).
  """
  params, (W, F, b, C, h0) = _single_params("similarity_transform", params)
  n = W.shape[0]
  t = _real_numpy("similarity_transform", "T", T)
  if t.shape != (n, n):
    raise ValueError(
        f"similarity_transform: T must have shape (n, n) = ({n}, {n}) to match"
        f" params.W, got shape {t.shape}."
    )
  if not np.all(np.isfinite(t)):
    raise ValueError("similarity_transform: T has non-finite entries.")
  cond = float(np.linalg.cond(t)) if n else 1.0
  if not cond < 1.0 / (n * np.finfo(np.float64).eps):
    raise ValueError(
        f"similarity_transform: T must be invertible; its condition number is"
        f" {cond:.3g}."
    )
  name = activation if isinstance(activation, str) else None
  if name is not None:
    get_activation(name)  # validates the name
  if name == "identity":
    pass
  elif name in _POSITIVELY_HOMOGENEOUS:
    if not _is_monomial(t, positive=True, unit=False):
      raise ValueError(
          f"similarity_transform: for activation={name!r}, T must be a positive"
          " diagonal matrix (optionally with permuted rows) so that"
          " phi(T z) = T phi(z); got T with off-diagonal or non-positive"
          f" entries:\n{t}"
      )
  elif not _is_monomial(t, positive=True, unit=True):
    raise ValueError(
        f"similarity_transform: for activation={activation!r}, only permutation"
        " matrices T commute with the activation; got a T that is not a"
        f" permutation matrix:\n{t}"
    )
  t_inv_t = np.linalg.solve(t.T, np.eye(n))  # (T^-1)^T
  t_inv = t_inv_t.T
  return RNNParams(
      W=_like(t @ W @ t_inv, params.W), F=_like(t @ F, params.F),
      b=_like(t @ b, params.b), C=_like(C @ t_inv, params.C),
      h0=_like(t @ h0, params.h0))


def equivalent(params_a: RNNParams, params_b: RNNParams, x,
               activation: Activation = "relu") -> float:
  """The largest output difference ``max |G(x, Theta_a) - G(x, Theta_b)|``.

  Both RNNs are simulated with :func:`urnn_jax.simulate` on the same inputs
  ``x`` (``(..., T, m)``) and the same activation. Two RNNs are equivalent on
  a set of inputs (eq. 3) when this is zero for every x in it; in floating
  point, expect rounding-level values (~1e-12 in float64).

  Returns:
    The maximum absolute difference over batch, time and outputs, as a
    Python float.

  Integer parameters or inputs are promoted to float (no integer
  arithmetic); complex ones raise TypeError.

  Raises:
    ValueError: if the two RNNs have different input or output sizes.
  """
  params_a = _real_params("equivalent", params_a)
  params_b = _real_params("equivalent", params_b)
  x = _real_input("equivalent", "x", x)
  if params_a.input_size != params_b.input_size or params_a.output_size != params_b.output_size:
    raise ValueError(
        "equivalent: the RNNs must map the same inputs to the same outputs;"
        f" params_a has (m, p) = ({params_a.input_size}, {params_a.output_size}),"
        f" params_b has ({params_b.input_size}, {params_b.output_size})."
    )
  ya = _simulate(params_a, x, activation)
  yb = _simulate(params_b, x, activation)
  return float(jnp.max(jnp.abs(ya - yb))) if ya.size else 0.0


# ---------------------------------------------------------------------------
# §3: degrees of freedom.

DOF_KINDS = ("rnn", "urnn", "rnn_raw", "urnn_raw")


def degrees_of_freedom(n: int, m: int, p: int, kind: str = "rnn") -> int:
  """Parameter counts of §3 for an n-state RNN with m inputs and p outputs.

  * ``"rnn"``: d_rnn = n^2 + (p + m) n, the raw count n^2 + (p + m + 1) n
    less the n positive diagonal scalings of eq. (4) that leave a ReLU RNN's
    map unchanged.
  * ``"urnn"``: d_urnn = n (2n - 1) + 2n (p + m), the paper's count for the
    **2n-state** URNN of Theorem 3.1: 2n (2n - 1) / 2 for the orthogonal
    2n x 2n transition plus 2n (p + m) for F_u and C_u.
  * ``"rnn_raw"``: n^2 + (p + m + 1) n (W, F, C and b; h0 not counted).
  * ``"urnn_raw"``: n (2n - 1) + 2n (p + m + 1), the 2n-state URNN including
    its 2n biases. The paper's d_urnn leaves the bias out, although a URNN
    has no positive scaling symmetry that would absorb it (only the one
    global scaling F, b -> c F, c b, C -> C / c), so this is the honest
    upper bound for the URNN; d_rnn does subtract the RNN's scalings.

  Args:
    n: states of the original RNN (>= 1); the URNN kinds have 2n states.
    m: inputs (>= 0).
    p: outputs (>= 0).
    kind: one of ``DOF_KINDS``.

  Returns:
    The count as an int.
  """
  for name, value, low in (("n", n, 1), ("m", m, 0), ("p", p, 0)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise TypeError(
          f"degrees_of_freedom: {name} must be an int, got"
          f" {type(value).__name__}: {value!r}."
      )
    if value < low:
      raise ValueError(
          f"degrees_of_freedom: {name} must be >= {low}, got {name}={value}."
      )
  n, m, p = int(n), int(m), int(p)
  if kind == "rnn":
    return n * n + (p + m) * n
  if kind == "urnn":
    return n * (2 * n - 1) + 2 * n * (p + m)
  if kind == "rnn_raw":
    return n * n + (p + m + 1) * n
  if kind == "urnn_raw":
    return n * (2 * n - 1) + 2 * n * (p + m + 1)
  raise ValueError(
      f"degrees_of_freedom: kind={kind!r} is not known; expected one of"
      f" {DOF_KINDS}."
  )


# ---------------------------------------------------------------------------
# Random and hand-made RNNs.


def random_contractive_rnn(key, n: int, m: int, p: int, *, eps: float | None = 0.01,
                           norm: float | None = None, bias_scale: float = 1.0,
                           h0_scale: float = 0.0, dtype=None) -> RNNParams:
  """A random contractive RNN: F, C, b (and h0) i.i.d. Gaussian.

  The transition is the paper's teacher ``W = I - eps A^T A / ||A||_2^2``
  (eq. 6, :func:`urnn_jax.initializers.contractive`) when ``norm`` is None,
  else a Gaussian matrix rescaled to ``||W||_2 = norm``. F is scaled by
  1/sqrt(m) and C by 1/sqrt(n).
  """
  fn = "random_contractive_rnn"
  n = _check_int(fn, "n", n, 1)
  m = _check_int(fn, "m", m, 0)
  p = _check_int(fn, "p", p, 0)
  dtype = _check_float_dtype(fn, dtype or jnp.result_type(float))
  for name, value in (("bias_scale", bias_scale), ("h0_scale", h0_scale)):
    _check_real(fn, name, value)
  if norm is not None:
    _check_real(fn, "norm", norm)
  if eps is not None:
    _check_real(fn, "eps", eps)
  if norm is not None and not 0.0 < norm < 1.0:
    raise ValueError(
        f"random_contractive_rnn: norm must be in (0, 1), got norm={norm!r}."
    )
  if norm is None and not (eps is not None and 0.0 < eps < 1.0):
    raise ValueError(
        f"random_contractive_rnn: eps must be in (0, 1) when norm is None, got eps={eps!r}."
    )
  return _random_contractive_rnn(key, float(bias_scale), float(h0_scale), n=int(n), m=int(m),
                                 p=int(p), eps=None if norm is not None else float(eps),
                                 norm=None if norm is None else float(norm), dtype=dtype)


@functools.partial(jax.jit, static_argnames=("n", "m", "p", "eps", "norm", "dtype"))
def _random_contractive_rnn(key, bias_scale, h0_scale, *, n, m, p, eps, norm, dtype):
  kw, kf, kb, kc, kh = jax.random.split(key, 5)
  if norm is None:
    W = initializers.contractive(eps)(kw, (n, n), dtype)
  else:
    g = jax.random.normal(kw, (n, n), dtype)
    W = norm * g / jnp.linalg.norm(g, ord=2)
  F = jax.random.normal(kf, (n, m), dtype) / math.sqrt(max(m, 1))
  C = jax.random.normal(kc, (p, n), dtype) / math.sqrt(n)
  b = bias_scale * jax.random.normal(kb, (n,), dtype)
  h0 = h0_scale * jax.random.normal(kh, (n,), dtype)
  return RNNParams(W, F, b, C, h0)


def channel_rnn(decays: Sequence[float], *, dtype=None) -> RNNParams:
  """n independent scalar ReLU channels: h_i(k) = relu(w_i h_i(k-1) + x_i(k)).

  ``W = diag(decays)``, ``F = C = I``, ``b = h0 = 0``; with one decay this is
  the scalar RNN y(k) = relu(w y(k-1) + x(k)) of
  :func:`urnn_jax.experiments.equivalence.tightness_demo`.
  """
  _real_numpy("channel_rnn", "decays", decays)
  dtype = _check_float_dtype("channel_rnn", dtype or jnp.result_type(float))
  w = jnp.asarray(decays, dtype)
  if w.ndim != 1 or w.size == 0 or not bool(jnp.all(jnp.abs(w) < 1)):
    raise ValueError(
        f"channel_rnn: decays must be a non-empty 1-D sequence with |w_i| < 1,"
        f" got {decays!r}."
    )
  n = w.shape[0]
  eye = jnp.eye(n, dtype=dtype)
  return RNNParams(jnp.diag(w), eye, jnp.zeros(n, dtype), eye, jnp.zeros(n, dtype))


# ---------------------------------------------------------------------------
# Linearization (Theorem 4.1).


class Linearization(NamedTuple):
  """The linearization of eq. (1) around a fixed point, for constant x*.

  Small perturbations dx(k) of the input around x* move the state and
  output by ``dh(k) = J dh(k-1) + B dx(k)``, ``dy(k) = C dh(k)``.

  Attributes:
    h_star: the fixed point ``h* = phi(W h* + F x* + b)``.
    y_star: ``C h*``.
    z_star: the pre-activation ``W h* + F x* + b``.
    jacobian: ``J = diag(phi'(z*)) W``.
    input_matrix: ``B = diag(phi'(z*)) F``.
    output_matrix: ``C``.
    eigenvalues: of J, by decreasing modulus (complex).
    spectral_radius: ``max |eigenvalues|``.
    iterations: fixed-point iterations used.
    residual: ``max |phi(W h* + F x* + b) - h*|`` at the returned h*.
  """

  h_star: np.ndarray
  y_star: np.ndarray
  z_star: np.ndarray
  jacobian: np.ndarray
  input_matrix: np.ndarray
  output_matrix: np.ndarray
  eigenvalues: np.ndarray
  spectral_radius: float
  iterations: int
  residual: float


@functools.partial(jax.jit, static_argnames=("activation", "max_iter"))
def _linearize_core(params, x_star, tol, *, activation, max_iter):
  """Fixed-point iteration, then J = d step / d h and B = d step / d x at h*."""
  phi = get_activation(activation)
  W, F, b = params.W, params.F, params.b
  u = F @ x_star + b

  def cond(state):
    _, diff, it = state
    return (diff > tol) & (it < max_iter)

  def body(state):
    h, _, it = state
    h_new = phi(W @ h + u)
    diff = jnp.max(jnp.abs(h_new - h)) / (1.0 + jnp.max(jnp.abs(h_new)))
    return h_new, diff, it + 1

  init = (params.h0.astype(W.dtype), jnp.asarray(jnp.inf, W.dtype), 0)
  h, diff, iters = lax.while_loop(cond, body, init)
  step = lambda hh: phi(W @ hh + u)  # noqa: E731
  residual = jnp.max(jnp.abs(step(h) - h))
  J = jax.jacfwd(step)(h)
  B = jax.jacfwd(lambda xx: phi(W @ h + F @ xx + b))(x_star)
  return h, diff, iters, W @ h + u, J, B, residual, params.C @ h


def linearize(params: RNNParams, x_star, activation: Activation = "sigmoid", *,
              tol: float | None = None, max_iter: int = 100_000) -> Linearization:
  """Fixed point h* for the constant input x* and the Jacobian there.

  h* solves ``h* = phi(W h* + F x* + b)``; it is found by the iteration
  ``h <- phi(W h + F x* + b)`` from ``params.h0``, which converges
  geometrically when the map is a contraction, i.e. when
  ``||W||_2 max phi' < 1`` (a contractive RNN with a 1-Lipschitz activation,
  or any URNN with the sigmoid, max phi' = 1/4). The Jacobian of the state
  update at h* is ``J = diag(phi'(z*)) W`` (computed with ``jax.jacfwd``; for
  ReLU, phi'(0) is taken as 0).

  Its eigenvalues are what Theorem 4.1 is about: for a smooth activation with
  positive slope, the input-output map near x* is, to first order, the
  linear system (J, B, C), whose impulse response ``C J^k B`` decays at the
  rate of J's eigenvalues (see :func:`small_signal_response`). For a URNN,
  ``J_u = diag(phi'(z_u*)) W_u`` with W_u orthogonal, so
  ``J_u J_u^T = diag(phi'(z_u*))^2``: J_u's singular values are exactly the
  slopes phi'(z_u*), a constraint a general RNN's J does not satisfy. For the
  ReLU construction of :func:`unitary_equivalent`, the extra states are
  clamped at zero (phi' = 0), J_u = [[J, *], [0, 0]], and its eigenvalues are
  J's plus n zeros: ReLU hides the extra eigenvalues.

  Args:
    params: a single RNN.
    x_star: the constant input, ``(m,)``.
    activation: name or elementwise callable.
    tol: relative stopping tolerance of the iteration; default ``64 eps``.
    max_iter: iteration cap.

  Returns:
    A :class:`Linearization` (NumPy arrays).

  Raises:
    ValueError: if ``x_star`` has the wrong shape, ``tol`` is not > 0,
      ``max_iter`` < 1, or the iteration does not converge within
      ``max_iter`` (the message gives the residual).
    TypeError: for complex parameters or ``x_star`` (integer ones are
      promoted to float), or a non-int ``max_iter``.
  """
  params = _real_params("linearize", params)
  max_iter = _check_int("linearize", "max_iter", max_iter, 1)
  if tol is not None and not _check_real("linearize", "tol", tol) > 0:
    raise ValueError(f"linearize: tol must be None or > 0, got tol={tol!r}.")
  W = jnp.asarray(params.W)
  if W.ndim != 2:
    raise ValueError(
        f"linearize: params must describe a single RNN with W of shape (n, n), got"
        f" W of shape {W.shape}."
    )
  dtype = W.dtype
  x_star = _real_input("linearize", "x_star", x_star).astype(dtype)
  m = params.input_size
  if x_star.shape != (m,):
    raise ValueError(
        f"linearize: x_star must have shape (m,) = ({m},), got shape"
        f" {x_star.shape}."
    )
  if tol is None:
    tol = 64.0 * float(jnp.finfo(dtype).eps)
  h, diff, iters, z, J, B, residual, y = _linearize_core(
      params, x_star, jnp.asarray(tol, dtype), activation=activation, max_iter=int(max_iter))
  if not float(diff) <= tol:
    raise ValueError(
        f"linearize: the fixed-point iteration did not converge in"
        f" max_iter={max_iter} iterations (last relative change {float(diff):.3g},"
        f" tol={tol:.3g}); the state map may not be a contraction."
    )
  J = np.asarray(J, dtype=np.float64)
  eig = np.linalg.eigvals(J) if J.size else np.zeros(0, complex)
  eig = eig[np.argsort(-np.abs(eig), kind="stable")]
  return Linearization(
      h_star=np.asarray(h), y_star=np.asarray(y), z_star=np.asarray(z),
      jacobian=J, input_matrix=np.asarray(B, np.float64),
      output_matrix=np.asarray(params.C, np.float64), eigenvalues=eig,
      spectral_radius=float(np.max(np.abs(eig))) if eig.size else 0.0,
      iterations=int(iters), residual=float(residual))


def small_signal_response(params: RNNParams, x_star, activation: Activation = "sigmoid", *,
                          direction=None, delta: float = 1e-4, steps: int = 20,
                          lin: Linearization | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The response to a small input impulse around x*, measured and predicted.

  The RNN starts at its fixed point h* (so that y(k) = y* without the
  impulse) and receives ``x(0) = x* +- delta d``, ``x(k) = x*`` for k >= 1.
  Returns ``(measured, predicted)``, each ``(steps, p)``::

      measured[k]  = (y_+(k) - y_-(k)) / (2 delta)   (nonlinear simulation)
      predicted[k] = C J^k B d                        (the linearization)

  The central difference makes them agree to O(delta^2): the input-output
  map itself carries the eigenvalues of J, which can be read back from the
  measured response alone (:func:`response_eigenvalues`, :func:`decay_rate`).

  Raises:
    ValueError: for ``steps`` < 1, a ``delta`` that is not finite and > 0, or
      a ``direction`` or ``x_star`` not of shape ``(m,)``.
    TypeError: for complex parameters, ``x_star`` or ``direction``.
  """
  fn = "small_signal_response"
  params = _real_params(fn, params)
  steps = _check_int(fn, "steps", steps, 1)
  if not (math.isfinite(_check_real(fn, "delta", delta)) and delta > 0):
    raise ValueError(f"{fn}: delta must be a finite number > 0, got delta={delta!r}.")
  m = params.input_size
  if direction is not None:
    direction = _real_input(fn, "direction", direction)
    if direction.shape != (m,):
      raise ValueError(
          f"{fn}: direction must have shape (m,) = ({m},), got shape {direction.shape}."
      )
  lin = lin or linearize(params, x_star, activation)
  dtype = jnp.asarray(params.W).dtype
  d = jnp.ones((m,), dtype) / math.sqrt(m) if direction is None else jnp.asarray(direction, dtype)
  x_star = _real_input(fn, "x_star", x_star).astype(dtype)
  if x_star.shape != (m,):
    raise ValueError(f"{fn}: x_star must have shape (m,) = ({m},), got shape {x_star.shape}.")
  xs = jnp.broadcast_to(x_star, (2, steps, m))
  xs = xs.at[0, 0].add(delta * d).at[1, 0].add(-delta * d)
  at_rest = params._replace(h0=jnp.asarray(lin.h_star, dtype))
  y = np.asarray(_simulate(at_rest, xs, activation), np.float64)
  measured = (y[0] - y[1]) / (2.0 * delta)
  predicted = np.zeros_like(measured)
  v = lin.input_matrix @ np.asarray(d, np.float64)
  for k in range(steps):
    predicted[k] = lin.output_matrix @ v
    v = lin.jacobian @ v
  return measured, predicted


def response_eigenvalues(response, order: int, *, rel_floor: float = 1e-9) -> np.ndarray:
  """The poles of a linear system read from its impulse response (Ho-Kalman).

  ``response[k] = C A^k b`` (``(steps, p)``, k = 0, 1, ...) for an unknown
  system of the given ``order``. With the block Hankel matrices
  ``H0[i, j] = g(i + j)`` and ``H1[i, j] = g(i + j + 1)`` and the rank-
  ``order`` SVD ``H0 ~ U S V^T``, the matrix
  ``S^-1/2 U^T H1 V S^-1/2`` is similar to A on its controllable and
  observable part, so its eigenvalues are the poles visible in the response.
  Only steps with ``||g(k)|| > rel_floor * max ||g||`` are used (the rest are
  rounding noise).

  Returns:
    The eigenvalues by decreasing modulus (complex).

  Raises:
    ValueError: if the response cannot identify ``order`` poles (too few
      usable steps, ``order`` < 1, or an empty response).
    TypeError: for a complex response (the real system of eq. (1)) or a
      non-int ``order``.
  """
  order = _check_int("response_eigenvalues", "order", order, 1)
  _check_real("response_eigenvalues", "rel_floor", rel_floor)
  g = _real_numpy("response_eigenvalues", "response", response)
  if g.ndim < 1 or g.shape[0] == 0 or g.size == 0:
    raise ValueError(
        "response_eigenvalues: response must have shape (steps, ...) with at"
        f" least one step and one output, got shape {g.shape}."
    )
  g = g.reshape(g.shape[0], -1)
  norms = np.linalg.norm(g, axis=1)
  usable = np.nonzero(norms > rel_floor * norms.max())[0]
  steps = int(usable.max()) + 1 if usable.size else 0
  cols = (steps - 1) // 2
  rows = steps - 1 - cols
  if order < 1 or min(rows * g.shape[1], cols) < order:
    raise ValueError(
        f"response_eigenvalues: {steps} usable steps of a response with"
        f" {g.shape[1]} outputs cannot identify order={order}; measure more"
        " steps or a larger response."
    )
  h0 = np.concatenate([np.stack([g[i + j] for j in range(cols)], axis=1) for i in range(rows)])
  h1 = np.concatenate([np.stack([g[i + j + 1] for j in range(cols)], axis=1) for i in range(rows)])
  u, s, vt = np.linalg.svd(h0)
  u, s, v = u[:, :order], s[:order], vt[:order].T
  w = 1.0 / np.sqrt(s)
  a = (w[:, None] * (u.T @ h1 @ v)) * w[None, :]
  eig = np.linalg.eigvals(a)
  return eig[np.argsort(-np.abs(eig), kind="stable")]


def decay_rate(response, *, floor: float = 1e-9) -> float:
  """The geometric decay rate of a response sequence ``(steps, p)``.

  Fits ``log ||r(k)||_2 = a + k log(rate)`` by least squares over the second
  half of the steps where ``||r(k)|| > floor * max_k ||r(k)||`` (the tail,
  where the dominant eigenvalue modulus rules). Returns NaN when fewer than
  two steps qualify (an empty response included). A complex response is
  accepted (its norms are real).
  """
  _check_real("decay_rate", "floor", floor)
  response = np.asarray(response)
  if not (np.issubdtype(response.dtype, np.number) or response.dtype == np.bool_):
    raise TypeError(f"decay_rate: response must be numeric, got dtype {response.dtype}.")
  if response.ndim < 1 or response.size == 0:
    return float("nan")
  wide = np.complex128 if np.iscomplexobj(response) else np.float64
  r = np.linalg.norm(response.astype(wide).reshape(len(response), -1), axis=-1)
  if not r.size or r.max() == 0:
    return float("nan")
  ok = np.nonzero(r > floor * r.max())[0]
  last = ok.max() if ok.size else -1
  ks = np.arange(last // 2, last + 1)
  ks = ks[r[ks] > 0]
  if ks.size < 2:
    return float("nan")
  slope = np.polyfit(ks, np.log(r[ks]), 1)[0]
  return float(np.exp(slope))


# ---------------------------------------------------------------------------
# Theorem 3.2's caveat: fewer than 2n states approximate (never exactly).


def near_equivalent_channel_urnn(decays: Sequence[float], scale: float,
                                 input_bound: float = 1.0) -> RNNParams:
  """An (n+1)-state URNN whose map approaches the n-channel RNN's as scale -> 0.

  Theorem 3.2 is about *exact* equivalence. This family shows that the
  approximation gap can still vanish with fewer than 2n states: for
  :func:`channel_rnn` ``(decays)`` (n channels, ``h_i = relu(w_i h_i + x_i)``)
  it builds a URNN with n channel states and one shared "garbage" state g.

  Column i of W_u (the influence of channel state i) is ``w_i`` on row i,
  zero on rows j < i, and on rows (i+1, ..., n-1, g) the vector of norm
  ``sqrt(1 - w_i^2)`` orthogonal to the columns already built (a one-
  dimensional complement). So channel i leaks into the garbage state (zeroed
  by the ReLU with bias ``-B``, B an upper bound of its pre-activation) *and*
  into the larger channels j > i. Channel i is carried at scale
  ``s_i = scale^(n-1-i)`` (F_u = diag(s), C_u = diag(1/s)), so its pollution
  of channel j is suppressed by ``s_i / s_j <= scale``: the output error is
  O(scale), while ``||C_u||`` grows like ``scale^-(n-1)``. For n = 1 there is
  no pollution and this is the exact 2-state construction. Exact equality for
  n >= 2 would need ``scale = 0``, which the family never reaches.

  Args:
    decays: ``w_i`` with ``0 < |w_i| < 1``.
    scale: in (0, 1].
    input_bound: M, the bound on ``||x(k)||_2``.
  """
  w = _real_numpy("near_equivalent_channel_urnn", "decays", decays)
  _check_real("near_equivalent_channel_urnn", "scale", scale)
  if w.ndim != 1 or w.size == 0 or not np.all((np.abs(w) < 1) & (w != 0)):
    raise ValueError(
        "near_equivalent_channel_urnn: decays must be a non-empty 1-D sequence"
        f" with 0 < |w_i| < 1, got {decays!r}."
    )
  if not 0.0 < float(scale) <= 1.0:
    raise ValueError(
        f"near_equivalent_channel_urnn: scale must be in (0, 1], got scale={scale!r}."
    )
  M = _check_bound("near_equivalent_channel_urnn", "input_bound", input_bound)
  n = w.size
  cols = np.zeros((n + 1, n + 1))
  for i in reversed(range(n)):
    built = cols[i + 1:, i + 1:n]  # later columns on rows i+1..g
    q, _ = np.linalg.qr(built, mode="complete")
    v = q[:, -1]
    v = v if v[-1] >= 0 else -v
    cols[i, i] = w[i]
    cols[i + 1:, i] = math.sqrt((1.0 - w[i]) * (1.0 + w[i])) * v
  q, _ = np.linalg.qr(cols[:, :n], mode="complete")
  cols[:, n] = q[:, -1]
  s = float(scale) ** np.arange(n - 1, -1, -1, dtype=np.float64)
  # Elementwise bounds H_j >= |h_j(k)|, by the lower-triangular recursion.
  H = np.zeros(n)
  for j in range(n):
    H[j] = (s[j] * M + np.abs(cols[j, :j]) @ H[:j]) / (1.0 - abs(w[j]))
  bound = float(np.abs(cols[n, :n]) @ H)
  F = np.zeros((n + 1, n))
  F[np.arange(n), np.arange(n)] = s
  C = np.zeros((n, n + 1))
  C[np.arange(n), np.arange(n)] = 1.0 / s
  b = np.zeros(n + 1)
  b[n] = -bound
  dtype = jnp.result_type(float)
  return RNNParams(*(jnp.asarray(a, dtype) for a in (cols, F, b, C, np.zeros(n + 1))))
