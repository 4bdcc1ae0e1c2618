"""The paper's RNN, eq. (1), as data and pure functions.

    h(k) = phi(W h(k-1) + F x(k) + b),    y(k) = C h(k),    h(-1) = h0.

``RNNParams`` is Theta = (W, F, b, C, h0) in the paper's column-vector
convention (``W`` is ``(n, n)``, ``F`` is ``(n, m)``, ``C`` is ``(p, n)``).
``simulate`` maps an input sequence to the output sequence.  ``recurrence``
is the scan kernel shared by ``simulate`` and the Flax layer
(:class:`urnn_jax.Recurrent`): the input projection is computed for every
step before it is called, so only ``h @ K`` runs inside ``lax.scan``.

An activation may carry learned parameters: pass ``activation_params=p``
(any pytree of arrays) to :func:`recurrence` or :func:`simulate` and the
activation is called as ``phi(a, p)``, e.g. a real modReLU
``lambda a, b: jnp.sign(a) * jax.nn.relu(jnp.abs(a) + b)``. ``p`` is a
differentiable input of the custom VJP: its gradient is the per-step VJP of
phi with respect to ``p``, summed over the steps (masked steps contribute
nothing). Without ``activation_params`` (the default) nothing of this runs.

Input checks (shared with :mod:`urnn_jax.cells` and :mod:`urnn_jax.recurrent`):
bad input raises ValueError or TypeError naming the argument, its value and
what was expected.

* Dtypes: a recurrence computes in JAX's promoted dtype of its floating
  arguments; integer and boolean arrays are accepted and take that dtype, and
  when no argument is floating the default float dtype (float32, float64
  with ``jax_enable_x64``) is used: never integer arithmetic, which would
  wrap around (:func:`floating_dtype`). Complex arrays are accepted only where
  complex numbers are supported, else TypeError: by the activation here
  (:func:`supports_complex`: ``relu``, ``leaky_relu`` and ``abs`` are
  real-only), and by the cell in the layers (a cell opts in with
  ``supports_complex``, see :class:`urnn_jax.HoistableCell`).
* Sizes and counts (``unroll``, a cell's ``features``, a head's
  ``out_features`` / ``num_classes``) must be positive ints: TypeError for a
  non-int (booleans included), ValueError below 1 (:func:`check_positive_int`).
* Sequence lengths must be integers (TypeError) of the batch shape
  (ValueError): :func:`check_lengths`. In the layers and heads
  (:class:`urnn_jax.Recurrent` and the heads in :mod:`urnn_jax.recurrent`)
  their values must also lie in ``[0, T]`` (``[1, T]`` where the last valid
  step is read), checked when the values are concrete: under ``jit`` /
  ``vmap`` traced lengths cannot be inspected (that would need
  ``jax.experimental.checkify``). The loops themselves define every integer
  length, step k being valid iff k < length: a length below 0 acts as 0 (no
  valid step), one above T as T (every step valid). :func:`recurrence`, the
  low-level kernel, keeps that definition for concrete lengths too (its
  gradient tests pin it), so only its layers reject such values.

Shapes and dtypes are checked at trace time, so under ``jit`` the checks cost
nothing and nothing is added to the loops.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Activation = Union[str, Callable[[Array], Array]]
# With activation parameters p (a pytree), the activation is phi(a, p).
ParametrizedActivation = Callable[[Array, Any], Array]


def _abs(x):
  return jnp.abs(x)


def _identity(x):
  return x


def _leaky_relu(x):
  return jax.nn.leaky_relu(x, negative_slope=0.01)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "identity": _identity,
    "leaky_relu": _leaky_relu,
    "abs": _abs,
}


def get_activation(activation: Activation) -> Callable[[Array], Array]:
  """Returns the activation function for a name, or the callable itself.

  Raises:
    ValueError: for an unknown name; the message lists the valid names.
    TypeError: for anything that is neither a string nor a callable.
  """
  if isinstance(activation, str):
    try:
      return ACTIVATIONS[activation]
    except KeyError:
      raise ValueError(
          f"activation={activation!r} is not a known activation; expected one"
          f" of {sorted(ACTIVATIONS)} or a callable."
      ) from None
  if callable(activation):
    return activation
  raise TypeError(
      f"activation must be a name in {sorted(ACTIVATIONS)} or a callable, got"
      f" {type(activation).__name__}: {activation!r}."
  )


# ---------------------------------------------------------------------------
# Input checks shared by rnn, cells and recurrent (see the module docstring).
# All but check_lengths look only at Python values, shapes and dtypes.
# ---------------------------------------------------------------------------

# Named activations defined by the order or the modulus of real numbers: on
# complex numbers relu and leaky_relu compare lexicographically and abs maps to
# the reals (the state would change dtype).
REAL_ONLY_ACTIVATIONS = frozenset({"relu", "leaky_relu", "abs"})
_REAL_ONLY_FUNCTIONS = (jax.nn.relu, _leaky_relu, _abs, jax.nn.leaky_relu, jnp.abs)

COMPLEX_HINT = (
    "complex recurrences need a complex-capable activation (identity, tanh, sigmoid or a"
    " callable, e.g. a complex modReLU) and, in the layers, a complex cell (one whose"
    " supports_complex is True, e.g. urnn_jax.OrthogonalRNNCell(n, activation=...,"
    " param_dtype=jnp.complex64))"
)


def default_float_dtype() -> jnp.dtype:
  """JAX's default float dtype: float32, or float64 with ``jax_enable_x64``."""
  return jnp.dtype(jnp.result_type(float))


def floating_dtype(*values) -> jnp.dtype:
  """The dtype a recurrence computes in: JAX's promotion of ``values``' dtypes.

  Integer and boolean values take part as JAX promotes them (an integer and a
  float32 array give float32); when no value is floating, the default float
  dtype: the result is never an integer dtype.
  """
  dtype = jnp.result_type(*values)
  if not jnp.issubdtype(dtype, jnp.inexact):
    dtype = default_float_dtype()
  return jnp.dtype(dtype)


def as_floating(value, dtype):
  """``value`` cast to ``dtype`` if it is an integer or boolean array; floating values unchanged."""
  if jnp.issubdtype(jnp.result_type(value), jnp.inexact):
    return value
  return jnp.asarray(value, dtype)


def check_int(fn: str, name: str, value, low: int) -> int:
  """``value`` as an int >= ``low``: TypeError for a non-int (booleans included), ValueError below.

  The one integer-argument check of the library's functions (``fn`` names
  the function in the message).
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(
        f"{fn}: {name} must be an int, got {type(value).__name__}: {name}={value!r}."
    )
  if value < low:
    raise ValueError(f"{fn}: {name} must be >= {low}, got {name}={value}.")
  return int(value)


def check_positive_int(where: str, name: str, value) -> int:
  """``value`` as an int >= 1: TypeError for a non-int (booleans included), ValueError below 1."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(
        f"{where}: {name} must be a positive int, got {type(value).__name__}: {name}={value!r}."
    )
  if value < 1:
    raise ValueError(f"{where}: {name} must be a positive int, got {name}={value!r}.")
  return int(value)


def supports_complex(activation: Activation) -> bool:
  """Whether ``activation`` may be applied to complex pre-activations.

  The per-activation hook of the complex checks: ``False`` for the real-only
  activations (:data:`REAL_ONLY_ACTIVATIONS`: relu and leaky_relu compare
  with 0, lexicographically on complex numbers; abs maps to the reals),
  ``True`` for identity, tanh and sigmoid (their complex values and
  gradients are JAX's). Any other callable defines its own domain (e.g. a
  complex modReLU): ``True``, unless it carries an attribute
  ``supports_complex = False``.
  """
  phi = get_activation(activation)
  if any(phi is f for f in _REAL_ONLY_FUNCTIONS):
    return False
  return bool(getattr(phi, "supports_complex", True))


def _activation_name(phi) -> str:
  for name, fn in ACTIVATIONS.items():
    if fn is phi:
      return repr(name)
  return getattr(phi, "__name__", repr(phi))


def _complex_names(arrays) -> list[str]:
  return [name for name, v in arrays.items()
          if v is not None and any(jnp.iscomplexobj(leaf) for leaf in jax.tree.leaves(v))]


def check_complex(where: str, arrays: dict, *, activation: Activation | None = None,
                  cell: Any = None) -> None:
  """TypeError when one of ``arrays`` (name -> array or pytree; ``None`` skipped) is
  complex where complex numbers are not supported.

  ``cell``: a cell whose ``supports_complex`` must be True (a cell without
  the attribute, e.g. flax's LSTMCell, is not checked); ``activation``: one
  that :func:`supports_complex` must accept. Dtypes only: free under ``jit``.
  """
  names = _complex_names(arrays)
  if not names:
    return
  dtype = jnp.result_type(*(leaf for n in names for leaf in jax.tree.leaves(arrays[n])))
  what = f"{where}: {', '.join(names)} {'is' if len(names) == 1 else 'are'} complex ({dtype})"
  if cell is not None and getattr(cell, "supports_complex", True) is False:
    declared = getattr(cell, "param_dtype", None)
    declared = "" if declared is None else f" (param_dtype={jnp.dtype(declared).name})"
    raise TypeError(
        f"{what}, but the cell {type(cell).__name__}{declared} is real (its supports_complex"
        f" is False); {COMPLEX_HINT}."
    )
  if activation is not None and not supports_complex(activation):
    raise TypeError(
        f"{what}, but the activation {_activation_name(get_activation(activation))} is"
        f" real-only (relu and leaky_relu compare with 0, abs maps to the reals); {COMPLEX_HINT}."
    )


def check_lengths(where: str, name: str, lengths, steps: int | None, batch_shape: tuple, *,
                  minimum: int = 0, broadcast: bool = False) -> Array:
  """``lengths`` as an integer array of ``batch_shape``, with values in ``[minimum, steps]``.

  ``broadcast``: a shape that broadcasts to ``batch_shape`` is accepted too.
  ``steps=None``: the values are not checked (dtype and shape only). The
  values are checked only when concrete: traced lengths (under ``jit`` or
  ``vmap``) cannot be inspected without ``jax.experimental.checkify``, and
  pass unchecked (see the callers for what out-of-range values then do).

  Raises:
    TypeError: non-integer (float, boolean) lengths.
    ValueError: the wrong shape, or a concrete value outside ``[minimum, steps]``.
  """
  lengths = jnp.asarray(lengths)
  batch_shape = tuple(batch_shape)
  fits = lengths.shape == batch_shape
  if not fits and broadcast:
    try:
      fits = np.broadcast_shapes(lengths.shape, batch_shape) == batch_shape
    except ValueError:
      fits = False
  if not fits:
    raise ValueError(
        f"{where}: {name} must have the batch shape {batch_shape}, got shape {lengths.shape}."
    )
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise TypeError(f"{where}: {name} must be integers, got dtype {lengths.dtype}.")
  if steps is not None and lengths.size and not isinstance(lengths, jax.core.Tracer):
    values = np.asarray(lengths)
    bad = values[(values < minimum) | (values > steps)]
    if bad.size:
      got = (f"got {name}={values.tolist()}" if values.size <= 8 else
             f"{bad.size} of its {values.size} values are out of range, e.g. {bad[:8].tolist()}")
      raise ValueError(
          f"{where}: {name} must lie in [{minimum}, {steps}] (T = {steps} steps); {got}."
      )
  return lengths


class RNNParams(NamedTuple):
  """Theta = (W, F, b, C, h0) of eq. (1); a pytree.

  Attributes:
    W: ``(n, n)`` hidden-to-hidden (transition) matrix.
    F: ``(n, m)`` input-to-hidden matrix.
    b: ``(n,)`` bias.
    C: ``(p, n)`` hidden-to-output matrix.
    h0: ``(n,)`` initial state h(-1).
  """

  W: Array
  F: Array
  b: Array
  C: Array
  h0: Array

  @property
  def hidden_size(self) -> int:
    return self.W.shape[-1]

  @property
  def input_size(self) -> int:
    return self.F.shape[-1]

  @property
  def output_size(self) -> int:
    return self.C.shape[-2]

  @classmethod
  def create(cls, W, F, b=None, C=None, h0=None) -> "RNNParams":
    """Builds and validates params; ``b`` and ``h0`` default to zeros, ``C`` to I.

    Integer and boolean fields become floating (:func:`floating_dtype` of
    the given fields), as the recurrence would compute them anyway.
    """
    given = [jnp.asarray(v) for v in (W, F, b, C, h0) if v is not None]
    dtype = floating_dtype(*given)
    W = as_floating(jnp.asarray(W), dtype)
    F = as_floating(jnp.asarray(F), dtype)
    b, C, h0 = (None if v is None else as_floating(jnp.asarray(v), dtype) for v in (b, C, h0))
    n = W.shape[-1] if W.ndim else 0
    b = jnp.zeros((n,), W.dtype) if b is None else jnp.asarray(b)
    C = jnp.eye(n, dtype=W.dtype) if C is None else jnp.asarray(C)
    h0 = jnp.zeros((n,), W.dtype) if h0 is None else jnp.asarray(h0)
    params = cls(W, F, b, C, h0)
    check_params(params)
    return params


def check_params(params: RNNParams) -> None:
  """Raises ValueError naming the field when RNNParams shapes are inconsistent.

  Leading (batch) dimensions are allowed when all fields share them, e.g. for
  params stacked over realizations under ``jax.vmap``.
  """
  if not isinstance(params, RNNParams):
    raise TypeError(
        f"params must be urnn_jax.RNNParams, got {type(params).__name__}."
    )
  W, F, b, C, h0 = (jnp.shape(v) for v in params)
  if len(W) < 2 or W[-1] != W[-2] or W[-1] < 1:
    raise ValueError(f"RNNParams.W must be square (n, n) with n >= 1, got shape {W}.")
  n = W[-1]
  # (name, shape, does it fit, the expected shape in words)
  for name, shape, fits, expected in (
      ("F", F, len(F) >= 2 and F[-2] == n, f"(n, m) = ({n}, m)"),
      ("b", b, len(b) >= 1 and b[-1] == n, f"(n,) = ({n},)"),
      ("C", C, len(C) >= 2 and C[-1] == n, f"(p, n) = (p, {n})"),
      ("h0", h0, len(h0) >= 1 and h0[-1] == n, f"(n,) = ({n},)"),
  ):
    if not fits:
      raise ValueError(
          f"RNNParams.{name} must have shape {expected} to match W {W}, got shape {shape}."
      )


# ---------------------------------------------------------------------------
# The scan kernel and its derivative rule.
#
# Plain autodiff through ``lax.scan`` of h(k) = phi(h(k-1) K + z(k)) saves
# its residuals step by step and accumulates dK += h(k-1)^T delta(k) inside
# the transposed loop. ``_recurrence`` has a custom VJP instead:
#
#   forward:  the same loop; the residuals are the states hs it outputs anyway
#             (plus the pre-activations, for a callable activation);
#   backward: a reverse loop whose carry is only
#                 delta(k-1) = (phi'(a(k)) * (delta(k) + g(k))) K^T,
#             with phi'(a(k)) computed in the loop from h(k) (or from a(k)),
#             emitting da(k) = phi'(a(k)) * (delta(k) + g(k)) = dL/dz(k);
#             then dK = sum_k h(k-1)^T da(k) is ONE matmul over all steps,
#             and so are dF and db upstream (their z = x F^T + b is hoisted).
#
# A custom VJP rules out pure forward mode: jax.jvp and jax.jacfwd raise
# JAX's TypeError ("can't apply forward-mode autodiff (jvp) to a custom_vjp
# function"); ``recurrence(..., custom_gradient=False)`` differentiates the
# plain loop instead. Reverse mode of any order and forward-over-reverse
# (jax.hessian) work: the backward pass is itself differentiable JAX code.
# ---------------------------------------------------------------------------


def _derivative_from_output(phi):
  """phi' as a function of h = phi(a) for the built-in activations, else None.

  Each matches JAX's own derivative rule, including at kinks.
  """
  if phi is jax.nn.relu:
    # jax.nn.relu: derivative 0 at a = 0; h > 0 <=> a > 0.
    return lambda h: (h > 0).astype(h.dtype)
  if phi is jnp.tanh:
    return lambda h: (1 + h) * (1 - h)
  if phi is jax.nn.sigmoid:
    return lambda h: h * (1 - h)
  if phi is _leaky_relu:
    # where(a >= 0, a, 0.01 a): derivative 1 at a = 0; h >= 0 <=> a >= 0.
    return lambda h: jnp.where(h >= 0, 1.0, 0.01).astype(h.dtype)
  if phi is _identity:
    return lambda h: None
  return None


# Below this many multiply-adds per step (batch * n * n, with n <= 16) the loops
# compute h @ K as a fused broadcast-multiply-sum: for such tiny matrices
# XLA:CPU's dot call costs more than the arithmetic (2-5x slower per step at
# n <= 16, batch 10-32: the system-identification sizes).
_ELEMENTWISE_MATMUL_MAX = 4096


def _step_matmul(h, kernel):
  """``h @ kernel`` inside the loops (``h``: one step's ``(*batch, n)``)."""
  n = kernel.shape[-1]
  if n <= 16 and h.size * n <= _ELEMENTWISE_MATMUL_MAX:
    return jnp.sum(h[..., :, None] * kernel, axis=-2)
  return h @ kernel


def row_gram(a: Array, b: Array) -> Array:
  """``a^T b`` for row-stacked ``(N, p)`` and ``(N, q)``: the sum over rows of a_r^T b_r.

  The gradients of the hoisted matmuls (dK = sum_k h(k-1)^T da(k), dF^T =
  sum_k x(k)^T dz(k)) are such contractions over N = T * batch rows. Written
  as one 2-D matmul of the flattened arrays: XLA:CPU ran the equivalent
  ``jnp.tensordot`` of the 3-D (T, B, n) arrays through a transposed copy
  of each operand. No conjugation (as ``jnp.tensordot``).
  """
  if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
    raise ValueError(f"row_gram: expected (N, p) and (N, q) arrays, got shapes {a.shape}, {b.shape}.")
  return a.T @ b


@jax.custom_vjp
def project_rows(x: Array, kernel: Array) -> Array:
  """``x @ kernel`` for ``x`` ``(..., m)``, ``kernel`` ``(m, n)``; its kernel gradient uses :func:`row_gram`.

  The hoisted input projection of :class:`urnn_jax.Recurrent`. Reverse mode
  only (a custom VJP); use ``x @ kernel`` where forward mode is needed.
  """
  return x @ kernel


def _project_rows_fwd(x, kernel):
  return x @ kernel, (x, kernel)


def _project_rows_bwd(residuals, g):
  x, kernel = residuals
  dx = g @ kernel.T
  dkernel = row_gram(x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


project_rows.defvjp(_project_rows_fwd, _project_rows_bwd)


def _kernel_gradient(kernel, h0, hs, dz, time_axis):
  """dK = sum_k h(k-1)^T da(k), with h(-1) = h0: one contraction over all (time, batch) rows.

  With lengths, a valid step's predecessor is valid too (the mask is a
  prefix), so h(k-1) is the saved state; invalid steps have da(k) = 0.
  """
  steps, n = hs.shape[time_axis], kernel.shape[-1]
  if steps == 0:
    return jnp.zeros_like(kernel)
  h_prev = jnp.concatenate(
      [jnp.expand_dims(h0, time_axis).astype(hs.dtype),
       lax.slice_in_dim(hs, 0, steps - 1, axis=time_axis)],
      axis=time_axis,
  )
  return row_gram(h_prev.reshape(-1, n), dz.reshape(-1, n)).astype(kernel.dtype)


def _forward_step(phi, kernel, bias, h, z_k, v_k):
  """One step: ``(new carry, output, pre-activation)``; ``v_k`` None or the step's mask.

  ``bias`` (None or ``(n,)``) is added here, per step, rather than to all of
  ``z`` beforehand: that saves the layer a full pass over the ``(T, B, n)``
  array, which XLA:CPU does not fuse into the projection's matmul.
  """
  a = _step_matmul(h, kernel) + z_k
  if bias is not None:
    a = a + bias
  h_new = phi(a)
  if v_k is None:
    return h_new, h_new, a
  return jnp.where(v_k, h_new, h), jnp.where(v_k, h_new, jnp.zeros_like(h_new)), a


def _backward_step(phi, dphi, kernel_t, delta, g_k, h_k, a_k, v_k):
  """One reverse step: ``(delta(k-1), da(k))`` from delta(k) and the step's cotangent."""
  ct = delta + g_k
  if dphi is not None:
    d_k = dphi(h_k)
    da = ct if d_k is None else d_k * ct
  else:
    # Any elementwise callable, real or complex: its own VJP at a(k).
    da = jax.vjp(phi, a_k)[1](ct)[0]
  if v_k is None:
    return _step_matmul(da, kernel_t), da
  da = jnp.where(v_k, da, jnp.zeros_like(da))
  return jnp.where(v_k, _step_matmul(da, kernel_t), delta), da


def _forward_with_residuals(loop, phi, unroll, kernel, z, bias, h0, mask):
  """The custom VJPs' forward pass: states, plus pre-activations when phi' needs them."""
  if _derivative_from_output(phi) is not None:
    h_last, hs = loop(phi, unroll, kernel, z, bias, h0, mask)
    pre = None
  else:
    h_last, (hs, pre) = loop(phi, unroll, kernel, z, bias, h0, mask, save_preactivations=True)
  return (h_last, hs), (kernel, bias, h0, hs, pre, mask)


def _bias_gradient(bias, dz):
  """db = the sum of da(k) over all steps and batch rows (None without a bias)."""
  if bias is None:
    return None
  return jnp.sum(dz.reshape(-1, dz.shape[-1]), axis=0).astype(bias.dtype)


def _forward_loop(phi, unroll, kernel, z, bias, h0, valid, save_preactivations=False):
  """The forward loop over axis 0; ``valid`` is None or bool ``(T, *batch, 1)``."""

  def step(h, inputs):
    h, out, a = _forward_step(phi, kernel, bias, h, *inputs)
    return h, ((out, a) if save_preactivations else out)

  return lax.scan(step, h0, (z, valid), unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _recurrence(phi, unroll, kernel, z, bias, h0, valid):
  return _forward_loop(phi, unroll, kernel, z, bias, h0, valid)


_recurrence_fwd = functools.partial(_forward_with_residuals, _forward_loop)


def _recurrence_bwd(phi, unroll, residuals, cotangents):
  kernel, bias, h0, hs, pre, valid = residuals
  g_last, g = cotangents
  dphi = _derivative_from_output(phi)
  kernel_t = kernel.T

  def step(delta, inputs):
    return _backward_step(phi, dphi, kernel_t, delta, *inputs)

  xs = (g, hs if dphi is not None else None, pre, valid)
  dh0, dz = lax.scan(step, g_last, xs, reverse=True, unroll=unroll)
  return (_kernel_gradient(kernel, h0, hs, dz, time_axis=0), dz,
          _bias_gradient(bias, dz), dh0, None)


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


# ---------------------------------------------------------------------------
# Batch-major loops: z, hs and dz are (B, T, n) and step k reads/writes the
# slab [:, k] of a loop-carried buffer in place, so a batch-major layer needs
# no (T, B, n) transposes of its inputs, states or cotangents. Same maths and
# the same custom VJP as the time-major loops above; ``lengths`` is (B,) or None.
# ---------------------------------------------------------------------------


# The batch-major loops write their outputs into the buffer they read from, when
# the dtypes allow: the forward loop reads z(k) and writes h(k) (or a(k), when the
# pre-activations are saved) into the same slab of z, and the backward loop reads
# g(k) and writes da(k) into the same slab of g. Each slab is read before it is
# overwritten and never read again, so XLA updates the buffer in place: no
# zero-filled (B, T, n) output buffer is allocated and written (a full pass and
# B*T*n elements of temporary memory each, at every call), and z / g, dead after
# the loop, hold the result instead. Where z or g is a jit argument XLA copies it
# once first (the same pass the zero fill was). ``_IN_PLACE = False`` (read when
# the loops are traced) restores round 1's separate buffers: the A/B row
# ``urnn_rnn_copying`` of benchmarks.scan_throughput (docs/performance.md, round 2).
_IN_PLACE = True


def _slab(a, k):
  """The step-k slab ``a[:, k]`` of a batch-major buffer (``k`` is in range: no wrap-around)."""
  return lax.dynamic_index_in_dim(a, k, axis=1, keepdims=False, allow_negative_indices=False)


def _put_slab(a, v, k):
  """``a`` with ``a[:, k] = v``."""
  return lax.dynamic_update_index_in_dim(a, v.astype(a.dtype), k, axis=1,
                                         allow_negative_indices=False)


def _bm_forward_loop(phi, unroll, kernel, z, bias, h0, lengths, save_preactivations=False,
                     in_place=True):
  steps = z.shape[1]
  reuse = _IN_PLACE and in_place and z.dtype == h0.dtype

  def body(k, c):
    h, hs, pre, zbuf = c
    v_k = None if lengths is None else (k < lengths)[:, None]
    h_new, out, a = _forward_step(phi, kernel, bias, h, _slab(zbuf, k), v_k)
    if not reuse:
      if save_preactivations:
        pre = _put_slab(pre, a, k)
      return h_new, _put_slab(hs, out, k), pre, zbuf
    # In place: the slab is written by the fusion that reads it, and the carry is
    # read back from the written buffer. Carrying h_new itself would let XLA fuse the
    # slab's read into the carry's fusion too (the add+phi fusion computed twice), and
    # it then copies all of z every step to keep the read before the write.
    zbuf = _put_slab(zbuf, a if save_preactivations else out, k)
    back = _slab(zbuf, k)
    if save_preactivations:  # a(k) is in z's slab k; h(k) into hs
      h_new = phi(back)
      out = h_new if v_k is None else jnp.where(v_k, h_new, jnp.zeros_like(h_new))
      hs = _put_slab(hs, out, k)
    else:  # h(k) (0 past the end) is in z's slab k
      h_new = back
    return (h_new if v_k is None else jnp.where(v_k, h_new, h)), hs, pre, zbuf

  hs = None if (reuse and not save_preactivations) else jnp.zeros(z.shape, h0.dtype)
  pre = jnp.zeros(z.shape, z.dtype) if (save_preactivations and not reuse) else None
  h, hs, pre, zbuf = lax.fori_loop(0, steps, body, (h0, hs, pre, z), unroll=unroll)
  if save_preactivations:
    return h, (hs, zbuf if reuse else pre)
  return h, (zbuf if reuse else hs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _bm_recurrence(phi, unroll, kernel, z, bias, h0, lengths):
  return _bm_forward_loop(phi, unroll, kernel, z, bias, h0, lengths)


_bm_recurrence_fwd = functools.partial(_forward_with_residuals, _bm_forward_loop)


def _bm_recurrence_bwd(phi, unroll, residuals, cotangents):
  kernel, bias, h0, hs, pre, lengths = residuals
  g_last, g = cotangents
  dphi = _derivative_from_output(phi)
  kernel_t = kernel.T
  steps = hs.shape[1]

  dz_dtype = jnp.result_type(g, hs)
  reuse = _IN_PLACE and g.dtype == dz_dtype  # da(k) into g's slab k, in place

  def body(i, c):
    delta, dz, gbuf = c
    k = steps - 1 - i
    at_k = lambda a: None if a is None else _slab(a, k)
    v_k = None if lengths is None else (k < lengths)[:, None]
    delta, da = _backward_step(phi, dphi, kernel_t, delta, at_k(gbuf),
                               at_k(hs) if dphi is not None else None, at_k(pre), v_k)
    if reuse:
      return delta, None, _put_slab(gbuf, da, k)
    return delta, _put_slab(dz, da, k), gbuf

  init = (g_last, None if reuse else jnp.zeros(g.shape, dz_dtype), g)
  dh0, dz, gbuf = lax.fori_loop(0, steps, body, init, unroll=unroll)
  dz = gbuf if reuse else dz
  return (_kernel_gradient(kernel, h0, hs, dz, time_axis=1), dz,
          _bias_gradient(bias, dz), dh0, None)


_bm_recurrence.defvjp(_bm_recurrence_fwd, _bm_recurrence_bwd)


# ---------------------------------------------------------------------------
# Activations with parameters: h(k) = phi(h(k-1) K + z(k), p).
#
# The same loops with phi bound to p, under custom VJPs of their own that take
# p as a differentiable input (the loops above are left exactly as they are:
# without activation parameters none of this is traced). The forward pass saves
# the pre-activations; each backward step takes ONE jax.vjp of phi at
# (a(k), p), giving da(k) and that step's dL/dp, which the reverse loop sums
# in its carry. A masked step's cotangent is zeroed before the VJP, so it
# adds nothing to dL/dp (as in plain autodiff through the masked loop).
# ---------------------------------------------------------------------------


def _bind(phi, params):
  """phi(., params) as a one-argument activation."""
  return lambda a: phi(a, params)


def _param_backward_step(phi, kernel_t, params, carry, g_k, a_k, v_k):
  """One reverse step with activation params: ``((delta(k-1), dp), da(k))``."""
  delta, dparams = carry
  ct = delta + g_k
  if v_k is not None:
    ct = jnp.where(v_k, ct, jnp.zeros_like(ct))
  da, dp = jax.vjp(phi, a_k, params)[1](ct)
  dparams = jax.tree.map(jnp.add, dparams, dp)
  if v_k is None:
    return (_step_matmul(da, kernel_t), dparams), da
  da = jnp.where(v_k, da, jnp.zeros_like(da))
  return (jnp.where(v_k, _step_matmul(da, kernel_t), delta), dparams), da


def _param_forward_with_residuals(loop, phi, unroll, kernel, z, bias, h0, mask, params):
  h_last, (hs, pre) = loop(_bind(phi, params), unroll, kernel, z, bias, h0, mask,
                           save_preactivations=True)
  return (h_last, hs), (kernel, bias, h0, hs, pre, mask, params)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _param_recurrence(phi, unroll, kernel, z, bias, h0, valid, params):
  return _forward_loop(_bind(phi, params), unroll, kernel, z, bias, h0, valid)


_param_recurrence_fwd = functools.partial(_param_forward_with_residuals, _forward_loop)


def _param_recurrence_bwd(phi, unroll, residuals, cotangents):
  kernel, bias, h0, hs, pre, valid, params = residuals
  g_last, g = cotangents
  kernel_t = kernel.T

  def step(carry, inputs):
    return _param_backward_step(phi, kernel_t, params, carry, *inputs)

  carry = (g_last, jax.tree.map(jnp.zeros_like, params))
  (dh0, dparams), dz = lax.scan(step, carry, (g, pre, valid), reverse=True, unroll=unroll)
  return (_kernel_gradient(kernel, h0, hs, dz, time_axis=0), dz,
          _bias_gradient(bias, dz), dh0, None, dparams)


_param_recurrence.defvjp(_param_recurrence_fwd, _param_recurrence_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _bm_param_recurrence(phi, unroll, kernel, z, bias, h0, lengths, params):
  return _bm_forward_loop(_bind(phi, params), unroll, kernel, z, bias, h0, lengths)


_bm_param_recurrence_fwd = functools.partial(_param_forward_with_residuals, _bm_forward_loop)


def _bm_param_recurrence_bwd(phi, unroll, residuals, cotangents):
  kernel, bias, h0, hs, pre, lengths, params = residuals
  g_last, g = cotangents
  kernel_t = kernel.T
  steps = hs.shape[1]

  dz_dtype = jnp.result_type(g, hs)
  reuse = _IN_PLACE and g.dtype == dz_dtype  # da(k) into g's slab k, in place

  def body(i, c):
    delta, dparams, dz, gbuf = c
    k = steps - 1 - i
    v_k = None if lengths is None else (k < lengths)[:, None]
    (delta, dparams), da = _param_backward_step(phi, kernel_t, params, (delta, dparams),
                                                _slab(gbuf, k), _slab(pre, k), v_k)
    if reuse:
      return delta, dparams, None, _put_slab(gbuf, da, k)
    return delta, dparams, _put_slab(dz, da, k), gbuf

  init = (g_last, jax.tree.map(jnp.zeros_like, params),
          None if reuse else jnp.zeros(g.shape, dz_dtype), g)
  dh0, dparams, dz, gbuf = lax.fori_loop(0, steps, body, init, unroll=unroll)
  dz = gbuf if reuse else dz
  return (_kernel_gradient(kernel, h0, hs, dz, time_axis=1), dz,
          _bias_gradient(bias, dz), dh0, None, dparams)


_bm_param_recurrence.defvjp(_bm_param_recurrence_fwd, _bm_param_recurrence_bwd)


# ---------------------------------------------------------------------------
# Opt-in rematerialisation (``recurrence(..., remat=...)``), batch-major.
#
# The forward loop is the usual one, but its residuals are the states at the
# start of every segment of S steps (``(B, T/S, n)``, gathered from the states
# afterwards) and z, instead of all states and pre-activations. The backward
# pass walks the segments from the last: it recomputes the segment's S states
# (and pre-activations) from its start state, runs the S reverse steps, and adds
# the segment's part of dK as one (B*S)-row contraction. Kept alive for the
# backward pass: z and the segment starts, plus one segment's states; not kept:
# the (B, T, n) states (freed when nothing else uses them), the pre-activations
# of a callable activation, and the shifted states the default path builds for dK.
# Costs one more forward pass (the recomputation).
# ---------------------------------------------------------------------------


def remat_segment(steps: int, remat) -> int:
  """The segment length S of ``recurrence(..., remat=remat)`` for ``steps`` steps.

  ``remat=True``: the divisor of ``steps`` nearest to sqrt(steps) (about
  2 sqrt(T) states kept instead of T); an int: that length, which must divide ``steps``.
  """
  if remat is True:
    root = math.sqrt(steps)
    divisors = [d for d in range(1, math.isqrt(steps) + 1) if steps % d == 0]
    divisors += [steps // d for d in divisors]
    return min(divisors, key=lambda d: (abs(d - root), d))
  seg = check_int("recurrence", "remat", remat, 1)
  if steps % seg:
    raise ValueError(
        f"recurrence: remat={seg} (the segment length) must divide the number of steps"
        f" T = {steps}; pass remat=True for the divisor of T nearest sqrt(T)."
    )
  return seg


def _phi_of(phi, params):
  return phi if params is None else _bind(phi, params)


def _segment_starts(hs, h0, lengths, seg):
  """The carry entering each segment, ``(B, T/seg, n)``: h0, then the state at step s*seg - 1.

  With lengths the carry is frozen at the last valid step (h0 for a length <= 0).
  """
  batch, steps, n = hs.shape
  last = jnp.arange(seg - 1, steps - 1, seg)  # the steps that end segments 0 .. T/seg - 2
  if lengths is None:
    ends = lax.slice_in_dim(hs, seg - 1, steps - 1, stride=seg, axis=1)
  else:
    idx = jnp.minimum(last[None, :], lengths[:, None] - 1)  # (B, T/seg - 1)
    ends = jnp.take_along_axis(hs, jnp.maximum(idx, 0)[:, :, None], axis=1)
    ends = jnp.where((idx >= 0)[:, :, None], ends, h0[:, None, :].astype(hs.dtype))
  return jnp.concatenate([h0[:, None, :].astype(hs.dtype), ends], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _bm_remat_recurrence(phi, unroll, seg, kernel, z, bias, h0, lengths, params):
  return _bm_forward_loop(_phi_of(phi, params), unroll, kernel, z, bias, h0, lengths)


def _bm_remat_fwd(phi, unroll, seg, kernel, z, bias, h0, lengths, params):
  # Not in place: z is a residual here (the backward pass recomputes from it).
  h_last, hs = _bm_forward_loop(_phi_of(phi, params), unroll, kernel, z, bias, h0, lengths,
                                in_place=False)
  starts = _segment_starts(hs, h0, lengths, seg)
  return (h_last, hs), (kernel, z, bias, h0, lengths, params, starts)


def _bm_remat_bwd(phi, unroll, seg, residuals, cotangents):
  kernel, z, bias, h0, lengths, params, starts = residuals
  g_last, g = cotangents
  batch, steps, n = z.shape
  phi_p = _phi_of(phi, params)
  dphi = _derivative_from_output(phi_p) if params is None else None
  need_pre = dphi is None
  kernel_t = kernel.T
  dz_dtype = jnp.result_type(g, z)
  reuse = _IN_PLACE and g.dtype == dz_dtype

  def segment(i, c):
    delta, dkernel, dparams, dz, gbuf = c
    s = steps // seg - 1 - i
    first = s * seg
    z_s = lax.dynamic_slice_in_dim(z, first, seg, axis=1)
    lengths_s = None if lengths is None else lengths - first
    start = lax.dynamic_index_in_dim(starts, s, axis=1, keepdims=False)
    out = _bm_forward_loop(phi_p, unroll, kernel, z_s, bias, start, lengths_s,
                           save_preactivations=need_pre)
    hs_s, pre_s = out[1] if need_pre else (out[1], None)

    def step(j, c):
      delta, dparams, dz, gbuf = c
      jj = seg - 1 - j
      k = first + jj
      v_k = None if lengths is None else (k < lengths)[:, None]
      g_k = _slab(gbuf, k)
      if params is None:
        delta, da = _backward_step(phi_p, dphi, kernel_t, delta, g_k,
                                   _slab(hs_s, jj) if dphi is not None else None,
                                   None if pre_s is None else _slab(pre_s, jj), v_k)
      else:
        (delta, dparams), da = _param_backward_step(phi, kernel_t, params, (delta, dparams),
                                                    g_k, _slab(pre_s, jj), v_k)
      if reuse:
        return delta, dparams, None, _put_slab(gbuf, da, k)
      return delta, dparams, _put_slab(dz, da, k), gbuf

    delta, dparams, dz, gbuf = lax.fori_loop(0, seg, step, (delta, dparams, dz, gbuf),
                                             unroll=unroll)
    da_s = lax.dynamic_slice_in_dim(gbuf if reuse else dz, first, seg, axis=1)
    dkernel = dkernel + _kernel_gradient(kernel, start, hs_s, da_s, time_axis=1)
    return delta, dkernel, dparams, dz, gbuf

  init = (g_last, jnp.zeros_like(kernel), jax.tree.map(jnp.zeros_like, params),
          None if reuse else jnp.zeros(g.shape, dz_dtype), g)
  dh0, dkernel, dparams, dz, gbuf = lax.fori_loop(0, steps // seg, segment, init)
  dz = gbuf if reuse else dz
  return dkernel, dz, _bias_gradient(bias, dz), dh0, None, dparams


_bm_remat_recurrence.defvjp(_bm_remat_fwd, _bm_remat_bwd)


def _check_activation_params(where, activation, activation_params):
  if activation_params is not None and isinstance(activation, str):
    raise ValueError(
        f"{where}: activation_params need an activation phi(a, params); the named"
        f" activation {activation!r} takes no parameters (pass a callable of two arguments)."
    )


def recurrence(
    kernel: Array,
    z: Array,
    h0: Array,
    activation: Activation = "relu",
    *,
    bias: Array | None = None,
    lengths: Array | None = None,
    unroll: int = 1,
    custom_gradient: bool = True,
    batch_major: bool = False,
    activation_params: Any = None,
    remat: bool | int = False,
) -> tuple[Array, Array]:
  """Runs h(k) = phi(h(k-1) @ kernel + z(k) [+ bias]) over a time-major sequence.

  This is the scan kernel under :func:`simulate` and :class:`Recurrent`.
  ``z`` holds the already-projected inputs ``x(k) F^T + b`` for every step,
  or ``x(k) F^T`` alone with the bias passed as ``bias``: it is then added
  inside the loop, one ``(*batch, n)`` slab at a time, which saves a full
  pass over ``z`` (what :class:`urnn_jax.Recurrent` does).

  Its gradient is a custom VJP: the backward loop carries only
  ``delta(k-1) = (phi'(a(k)) * (delta(k) + g(k))) @ kernel.T`` and the
  gradient of ``kernel`` is one matmul over all steps after the loop. The
  values are those of plain autodiff through ``lax.scan`` (to rounding);
  ``jit``, ``vmap``, reverse mode of any order and ``jax.hessian``
  (forward-over-reverse) work; pure forward mode (``jax.jvp``,
  ``jax.jacfwd``) raises ``TypeError``: pass ``custom_gradient=False`` for it.

  Args:
    kernel: ``(n, n)`` recurrent kernel in the row-vector (Flax) convention,
      i.e. ``W.T`` in the paper's notation.
    z: ``(T, *batch, n)`` projected inputs, time-major.
    h0: initial state, broadcastable to ``(*batch, n)``.
    activation: name or elementwise callable. The built-in activations'
      derivatives come from the saved states; a callable's from its own
      ``jax.vjp`` at the pre-activations (saved too), so any elementwise
      function works, complex non-holomorphic ones included.
    bias: optional ``(n,)`` vector added to every step's pre-activation;
      differentiable like ``z`` (its gradient is one sum after the loop).
    lengths: optional int ``(*batch,)`` sequence lengths. Past a sequence's
      end the state is frozen and the output is zero: step k is valid iff
      k < length, so a length 0 (or below) keeps h0 and outputs only zeros,
      and one of T (or above) runs every step. This low-level kernel accepts
      any integer length (the layers, :class:`urnn_jax.Recurrent` and its
      heads, reject concrete values outside ``[0, T]``); float or boolean
      lengths raise TypeError, a shape that is not the batch shape's (time-major:
      one that does not broadcast to it) ValueError.
    unroll: ``lax.scan`` unroll factor (of the forward and backward loops), a
      positive int.
    custom_gradient: ``False`` differentiates the plain ``lax.scan`` instead:
      slower, but forward mode works (and it is the tests' reference).
    batch_major: ``z`` is ``(*batch, T, n)`` and so are the returned states:
      the loop reads and writes the step-k slab of batch-major buffers, so no
      time-major transposes are needed (what :class:`urnn_jax.Recurrent`
      uses); ``lengths`` must then have the batch shape.
    activation_params: ``None`` (default), or a pytree ``p`` of parameters of
      the activation, which is then called as ``activation(a, p)`` (so it
      must be a callable of two arguments). ``p`` is differentiable: the
      custom VJP's backward loop takes each step's VJP of the activation with
      respect to ``(a(k), p)`` and sums the ``p`` parts over the steps; masked
      steps add nothing. Its inexact leaves take part in the dtype promotion
      of the states (as ``bias`` does); ``p`` itself is passed as given.
    remat: opt-in rematerialisation of the custom VJP (``False``, the
      default: off). ``True``, or an int S that divides T: the backward pass
      keeps only z and the state entering each segment of S steps (``True``:
      S is the divisor of T nearest sqrt(T)) and recomputes each segment's
      states (and pre-activations) before its reverse steps, at the cost of
      one more forward pass. It frees what the default keeps for the
      backward pass beyond z: the pre-activations of a callable activation,
      the shifted states of the dK contraction, and the states themselves
      when nothing else keeps them (the returned states still exist while
      used). Same values as the default (to rounding). Needs
      ``custom_gradient=True``; time-major ``z`` is run batch-major (one
      transpose each way).

  Returns:
    ``(h_last, hs)``: the final state ``(*batch, n)`` (the state at step
    ``length - 1`` when ``lengths`` is given) and all states ``(T, *batch, n)``
    (``(*batch, T, n)`` with ``batch_major``).

  Dtypes: the loop runs in the promoted dtype of ``kernel``, ``z``, ``h0``,
  ``bias`` and the floating leaves of ``activation_params``; integer and
  boolean arrays are promoted to floating, never run as integers (all-integer
  inputs give the default float dtype). Complex arrays need an activation
  that :func:`supports_complex` accepts: with ``relu``, ``leaky_relu`` or
  ``abs`` they raise TypeError.

  Raises:
    ValueError: inconsistent shapes, ``lengths`` of the wrong shape,
      ``unroll`` below 1, ``remat`` below 1 or not dividing T, ``remat``
      without ``custom_gradient``.
    TypeError: non-integer ``lengths`` or ``unroll``; complex inputs with a
      real-only activation.
  """
  phi = get_activation(activation)
  _check_activation_params("recurrence", activation, activation_params)
  kernel, z, h0 = jnp.asarray(kernel), jnp.asarray(z), jnp.asarray(h0)
  if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
    raise ValueError(
        f"recurrence: kernel must be a square (n, n) matrix, got shape {kernel.shape};"
        " for stacked kernels use jax.vmap."
    )
  if z.ndim < 2 or z.shape[-1] != kernel.shape[0]:
    layout = "(*batch, T, n)" if batch_major else "(T, *batch, n)"
    raise ValueError(
        f"recurrence: z must have shape {layout} with n = {kernel.shape[0]} (the"
        f" kernel's size), got shape {z.shape}."
    )
  if bias is not None:
    bias = jnp.asarray(bias)
    if bias.shape != (kernel.shape[0],):
      raise ValueError(
          f"recurrence: bias must have shape ({kernel.shape[0]},) (the kernel's size),"
          f" got shape {bias.shape}."
      )
  check_positive_int("recurrence", "unroll", unroll)
  batch, steps = (z.shape[:-2], z.shape[-2]) if batch_major else (z.shape[1:-1], z.shape[0])
  seg = None
  if remat is not None and remat is not False:
    if not custom_gradient:
      raise ValueError("recurrence: remat needs custom_gradient=True (it is a rule of the"
                       " custom VJP; plain autodiff can use jax.checkpoint instead).")
    seg = remat_segment(steps, remat) if steps else None
  carry_shape = tuple(batch) + (kernel.shape[0],)
  try:
    h0_fits = np.broadcast_shapes(h0.shape, carry_shape) == carry_shape
  except ValueError:
    h0_fits = False
  if not h0_fits:
    raise ValueError(
        f"recurrence: h0 must be broadcastable to the state shape (*batch, n) = {carry_shape},"
        f" got shape {h0.shape}."
    )
  if lengths is not None:  # dtype and shape; every integer value is defined (see lengths)
    lengths = check_lengths("recurrence", "lengths", lengths, None, batch,
                            broadcast=not batch_major)
  check_complex("recurrence", {"kernel": kernel, "z": z, "h0": h0, "bias": bias,
                               "activation_params": activation_params}, activation=phi)
  promoted = (z, kernel, h0, *(() if bias is None else (bias,)))
  if activation_params is not None:
    promoted += tuple(p for p in jax.tree.leaves(activation_params)
                      if jnp.issubdtype(jnp.result_type(p), jnp.inexact))
  dtype = floating_dtype(*promoted)  # never an integer dtype
  kernel = kernel.astype(dtype)
  z = z.astype(dtype)
  if bias is not None:
    bias = bias.astype(dtype)
  if batch_major:
    return _batch_major_recurrence(phi, unroll, kernel, z, bias, h0, lengths, custom_gradient,
                                   dtype, activation_params, seg)
  if seg is not None:  # time-major, rematerialised: run batch-major
    zb = jnp.moveaxis(z, 0, -2)
    lb = None if lengths is None else jnp.broadcast_to(jnp.asarray(lengths), tuple(batch))
    h_last, hs = _batch_major_recurrence(phi, unroll, kernel, zb, bias, h0, lb, custom_gradient,
                                         dtype, activation_params, seg)
    return h_last, jnp.moveaxis(hs, -2, 0)
  h0 = jnp.broadcast_to(h0, z.shape[1:]).astype(dtype)

  valid = None
  if lengths is not None:
    lengths = jnp.asarray(lengths)
    valid = jnp.arange(z.shape[0]).reshape((-1,) + (1,) * lengths.ndim) < lengths
    # (T, *batch, 1) up to broadcasting: lengths align with the trailing batch axes.
    pad = (1,) * max(z.ndim - 2 - lengths.ndim, 0)
    valid = valid.reshape(valid.shape[:1] + pad + valid.shape[1:] + (1,))

  if activation_params is not None:
    if not custom_gradient:
      return _forward_loop(_bind(phi, activation_params), unroll, kernel, z, bias, h0, valid)
    return _param_recurrence(phi, unroll, kernel, z, bias, h0, valid, activation_params)
  if not custom_gradient:
    return _forward_loop(phi, unroll, kernel, z, bias, h0, valid)
  return _recurrence(phi, unroll, kernel, z, bias, h0, valid)


def _batch_major_recurrence(phi, unroll, kernel, z, bias, h0, lengths, custom_gradient, dtype,
                            activation_params=None, seg=None):
  """:func:`recurrence` with ``batch_major=True`` (batch axes flattened to one)."""
  batch, (steps, n) = z.shape[:-2], z.shape[-2:]
  flat = math.prod(batch)
  h0 = jnp.broadcast_to(h0, batch + (n,)).astype(dtype).reshape(flat, n)
  if lengths is not None:
    lengths = jnp.asarray(lengths)
    if lengths.shape != batch:
      raise ValueError(
          f"recurrence: with batch_major=True, lengths must have the batch shape {batch},"
          f" got shape {lengths.shape}."
      )
    lengths = lengths.reshape(flat)
  z = z.reshape(flat, steps, n)
  if steps == 0:  # No step to run (the loop body could not even be traced).
    return h0.reshape(batch + (n,)), z.reshape(batch + (0, n))
  if seg is not None:
    h_last, hs = _bm_remat_recurrence(phi, unroll, seg, kernel, z, bias, h0, lengths,
                                      activation_params)
  elif activation_params is not None:
    if custom_gradient:
      h_last, hs = _bm_param_recurrence(phi, unroll, kernel, z, bias, h0, lengths,
                                        activation_params)
    else:
      h_last, hs = _bm_forward_loop(_bind(phi, activation_params), unroll, kernel, z, bias, h0,
                                    lengths)
  elif custom_gradient:
    h_last, hs = _bm_recurrence(phi, unroll, kernel, z, bias, h0, lengths)
  else:
    h_last, hs = _bm_forward_loop(phi, unroll, kernel, z, bias, h0, lengths)
  return h_last.reshape(batch + (n,)), hs.reshape(batch + (steps, n))


def simulate(
    params: RNNParams,
    x: Array,
    activation: Activation = "relu",
    *,
    unroll: int = 1,
    return_states: bool = False,
    custom_gradient: bool = True,
    activation_params: Any = None,
):
  """The input-output map y = G(x, Theta) of eq. (1).

  Args:
    params: ``RNNParams``.
    x: inputs ``(T, m)`` or ``(*batch, T, m)``.
    activation: one of ``relu, sigmoid, tanh, identity, leaky_relu, abs`` or
      any elementwise callable.
    unroll: ``lax.scan`` unroll factor.
    return_states: also return the hidden states ``h(k)``.
    custom_gradient: use the recurrence's custom VJP (fast reverse mode).
      Pass ``False`` for forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``),
      which a custom VJP does not support.
    activation_params: parameters ``p`` of a parametrised activation, called
      as ``activation(a, p)`` (see :func:`recurrence`); ``None`` by default.

  Returns:
    ``y`` with shape ``(T, p)`` or ``(*batch, T, p)``; with
    ``return_states`` the pair ``(y, h)`` where ``h`` is ``(*batch, T, n)``.

  Dtypes: as :func:`recurrence`: integer or boolean ``x`` or params are
  promoted to floating before the input projection (all-integer inputs give
  the default float dtype); complex ``x`` or params with a real-only
  activation (``relu``, ``leaky_relu``, ``abs``) raise TypeError.

  Example:
    >>> import jax.numpy as jnp, urnn_jax
    >>> theta = urnn_jax.RNNParams.create(W=0.5 * jnp.eye(2), F=jnp.ones((2, 1)))
    >>> urnn_jax.simulate(theta, jnp.ones((3, 1))).shape
    (3, 2)
  """
  check_params(params)
  phi = get_activation(activation)
  _check_activation_params("simulate", activation, activation_params)
  x = jnp.asarray(x)
  n, m = params.F.shape[-2:]
  if x.ndim < 2:
    raise ValueError(
        f"x must have shape (T, m) or (..., T, m) with m = {m}, got shape"
        f" {x.shape} (rank {x.ndim})."
    )
  if x.shape[-1] != m:
    raise ValueError(
        f"x has {x.shape[-1]} features (shape {x.shape}) but F has shape"
        f" {params.F.shape}, which expects m = {m} input features."
    )
  if params.W.ndim != 2:
    raise ValueError(
        f"simulate expects a single RNNParams with W of shape (n, n); got W of"
        f" shape {params.W.shape}. Use jax.vmap over stacked params."
    )
  check_positive_int("simulate", "unroll", unroll)
  check_complex("simulate", {"x": x, **{f"params.{k}": v for k, v in params._asdict().items()},
                             "activation_params": activation_params}, activation=phi)
  # Integer (or boolean) x or params: floating before the projection, never integer arithmetic.
  dtype = floating_dtype(x, *params)
  x = as_floating(x, dtype)
  params = RNNParams(*(as_floating(v, dtype) for v in params))
  # Hoisted input projection: one matmul for all steps (reverse mode: its
  # kernel gradient is one 2-D matmul, see project_rows).
  # The bias is added inside the loop (no extra pass over the (*batch, T, n) z).
  z = project_rows(x, params.F.T) if custom_gradient else x @ params.F.T
  _, hs = recurrence(
      params.W.T, z, params.h0, phi, bias=params.b, unroll=unroll,
      custom_gradient=custom_gradient, batch_major=True, activation_params=activation_params,
  )  # (*batch, T, n)
  y = hs @ params.C.T
  return (y, hs) if return_states else y
