"""The paper's RNN, eq. (1), as data and pure functions.

    h(k) = phi(W h(k-1) + F x(k) + b),    y(k) = C h(k),    h(-1) = h0.

``RNNParams`` is Theta = (W, F, b, C, h0) in the paper's column-vector
convention (``W`` is ``(n, n)``, ``F`` is ``(n, m)``, ``C`` is ``(p, n)``).
``simulate`` maps an input sequence to the output sequence.  ``recurrence``
is the scan kernel shared by ``simulate`` and the Flax layer
(:class:`urnn_jax.Recurrent`): the input projection is computed for every
step before it is called, so only ``h @ K`` runs inside ``lax.scan``.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Activation = Union[str, Callable[[Array], Array]]


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
    """Builds and validates params; ``b`` and ``h0`` default to zeros, ``C`` to I."""
    W = jnp.asarray(W)
    F = jnp.asarray(F)
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
  if len(W) < 2 or W[-1] != W[-2]:
    raise ValueError(f"RNNParams.W must be square (n, n), got shape {W}.")
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


def _forward_loop(phi, unroll, kernel, z, h0, valid, save_preactivations=False):
  """The forward loop over axis 0; ``valid`` is None or bool ``(T, *batch, 1)``."""

  def step(h, inputs):
    z_k, v_k = inputs
    a = _step_matmul(h, kernel) + z_k
    h_new = phi(a)
    if v_k is None:
      h, out = h_new, h_new
    else:
      h = jnp.where(v_k, h_new, h)
      out = jnp.where(v_k, h_new, jnp.zeros_like(h_new))
    return h, ((out, a) if save_preactivations else out)

  return lax.scan(step, h0, (z, valid), unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _recurrence(phi, unroll, kernel, z, h0, valid):
  return _forward_loop(phi, unroll, kernel, z, h0, valid)


def _recurrence_fwd(phi, unroll, kernel, z, h0, valid):
  if _derivative_from_output(phi) is not None:
    h_last, hs = _forward_loop(phi, unroll, kernel, z, h0, valid)
    pre = None
  else:
    h_last, (hs, pre) = _forward_loop(
        phi, unroll, kernel, z, h0, valid, save_preactivations=True
    )
  return (h_last, hs), (kernel, h0, hs, pre, valid)


def _recurrence_bwd(phi, unroll, residuals, cotangents):
  kernel, h0, hs, pre, valid = residuals
  g_last, g = cotangents
  dphi = _derivative_from_output(phi)
  kernel_t = kernel.T

  def step(delta, inputs):
    g_k, h_k, a_k, v_k = inputs
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

  xs = (g, hs if dphi is not None else None, pre, valid)
  dh0, dz = lax.scan(step, g_last, xs, reverse=True, unroll=unroll)
  # dK = sum_k h(k-1)^T da(k): one contraction over time and batch. With
  # lengths, a valid step's predecessor is valid too (the mask is a prefix),
  # so h(k-1) = hs[k-1]; invalid steps have da(k) = 0.
  axes = tuple(range(hs.ndim - 1))
  if hs.shape[0] == 0:
    dkernel = jnp.zeros_like(kernel)
  else:
    dkernel = jnp.tensordot(hs[:-1], dz[1:], axes=(axes, axes))
    dkernel = dkernel + jnp.tensordot(h0, dz[0], axes=(axes[:-1], axes[:-1]))
  return dkernel, dz, dh0, None


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def recurrence(
    kernel: Array,
    z: Array,
    h0: Array,
    activation: Activation = "relu",
    *,
    lengths: Array | None = None,
    unroll: int = 1,
    custom_gradient: bool = True,
) -> tuple[Array, Array]:
  """Runs h(k) = phi(h(k-1) @ kernel + z(k)) over a time-major sequence.

  This is the scan kernel under :func:`simulate` and :class:`Recurrent`.
  ``z`` holds the already-projected inputs ``x(k) F^T + b`` for every step.

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
    lengths: optional int ``(*batch,)`` sequence lengths. Past a sequence's
      end the state is frozen and the output is zero.
    unroll: ``lax.scan`` unroll factor (of the forward and backward loops).
    custom_gradient: ``False`` differentiates the plain ``lax.scan`` instead:
      slower, but forward mode works (and it is the tests' reference).

  Returns:
    ``(h_last, hs)``: the final state ``(*batch, n)`` (the state at step
    ``length - 1`` when ``lengths`` is given) and all states ``(T, *batch, n)``.
  """
  phi = get_activation(activation)
  kernel, z, h0 = jnp.asarray(kernel), jnp.asarray(z), jnp.asarray(h0)
  if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
    raise ValueError(
        f"recurrence: kernel must be a square (n, n) matrix, got shape {kernel.shape};"
        " for stacked kernels use jax.vmap."
    )
  if z.ndim < 2 or z.shape[-1] != kernel.shape[0]:
    raise ValueError(
        f"recurrence: z must have shape (T, *batch, n) with n = {kernel.shape[0]} (the"
        f" kernel's size), got shape {z.shape}."
    )
  dtype = jnp.result_type(z, kernel, h0)
  kernel = kernel.astype(dtype)
  z = z.astype(dtype)
  h0 = jnp.broadcast_to(h0, z.shape[1:]).astype(dtype)

  valid = None
  if lengths is not None:
    lengths = jnp.asarray(lengths)
    valid = jnp.arange(z.shape[0]).reshape((-1,) + (1,) * lengths.ndim) < lengths
    # (T, *batch, 1) up to broadcasting: lengths align with the trailing batch axes.
    pad = (1,) * max(z.ndim - 2 - lengths.ndim, 0)
    valid = valid.reshape(valid.shape[:1] + pad + valid.shape[1:] + (1,))

  if not custom_gradient:
    return _forward_loop(phi, unroll, kernel, z, h0, valid)
  return _recurrence(phi, unroll, kernel, z, h0, valid)


def simulate(
    params: RNNParams,
    x: Array,
    activation: Activation = "relu",
    *,
    unroll: int = 1,
    return_states: bool = False,
    custom_gradient: bool = True,
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

  Returns:
    ``y`` with shape ``(T, p)`` or ``(*batch, T, p)``; with
    ``return_states`` the pair ``(y, h)`` where ``h`` is ``(*batch, T, n)``.

  Example:
    >>> import jax.numpy as jnp, urnn_jax
    >>> theta = urnn_jax.RNNParams.create(W=0.5 * jnp.eye(2), F=jnp.ones((2, 1)))
    >>> urnn_jax.simulate(theta, jnp.ones((3, 1))).shape
    (3, 2)
  """
  check_params(params)
  phi = get_activation(activation)
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
  # Hoisted input projection: one matmul for all steps.
  z = x @ params.F.T + params.b  # (*batch, T, n)
  z = jnp.moveaxis(z, -2, 0)  # (T, *batch, n)
  _, hs = recurrence(
      params.W.T, z, params.h0, phi, unroll=unroll, custom_gradient=custom_gradient
  )
  hs = jnp.moveaxis(hs, 0, -2)  # (*batch, T, n)
  y = hs @ params.C.T
  return (y, hs) if return_states else y
