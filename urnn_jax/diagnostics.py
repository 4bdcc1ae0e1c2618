r"""Gradient diagnostics for eq. (1): vanishing / exploding gradients (seed 002, "Bounds").

For h(k) = phi(W h(k-1) + F x(k) + b) the one-step Jacobian is

.. math:: J_k = \partial h(k) / \partial h(k-1) = \mathrm{diag}(\phi'(z_k))\, W,
          \qquad z_k = W h(k-1) + F x(k) + b,

and back-propagation multiplies ``dL/dh`` by ``J_k^T`` once per step. With
``a_k = min_i |phi'(z_k,i)|`` and ``b_k = max_i |phi'(z_k,i)|``,

.. math:: a_k\, \sigma_{\min}(W) \le \sigma_{\min}(J_k) \le \|J_k\|_2 \le b_k\, \sigma_{\max}(W),

which holds for *every* W (products of singular values bound the singular
values of a product). Seed 002 states the bound with the largest and
smallest *eigenvalues* of a diagonalizable W; that version is true when W is
normal (then ``|lambda|`` are its singular values: orthogonal W has
``sigma_min = sigma_max = 1``), but not for a general diagonalizable W (a
non-normal W can have ``||W||_2`` far above ``max |lambda|``).
:func:`jacobian_bound_check` checks both on a trajectory.

:func:`hidden_gradients` returns ``dL/dh(k)`` for every step k: the loss is
evaluated on states ``h(k) = phi(...) + e(k)`` with zero perturbations
``e(k)``, and the gradient is taken with respect to ``e`` (the total
derivative through all later steps).

Input checks: these diagnostics are for the real RNN of eq. (1). Complex
parameters or inputs raise TypeError (complex, unitary recurrences are
supported by the Flax cells, e.g. ``urnn_jax.OrthogonalRNNCell(n, activation="tanh",
param_dtype=jnp.complex64)``); integer or boolean parameters and inputs are
promoted to JAX's default float dtype (never integer arithmetic, which would
wrap around). The checks look at shapes and dtypes only, so they cost
nothing under ``jit``.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from urnn_jax.rnn import Activation, RNNParams, check_params, get_activation

Array = jax.Array


_COMPLEX_HINT = (
    "the diagnostics are for the real RNN of eq. (1); complex (unitary)"
    " recurrences are supported by the Flax cells, e.g."
    " urnn_jax.OrthogonalRNNCell(n, activation='tanh', param_dtype=jnp.complex64)"
)


def _real(fn: str, name: str, value, *, promote: bool = True):
  """``value`` checked to be real: complex raises TypeError; integer or boolean
  values become the default float dtype when ``promote`` (else are kept).
  Real floating values are returned unchanged (same object)."""
  dtype = getattr(value, "dtype", None)
  if dtype is None:
    value = jnp.asarray(value)
    dtype = value.dtype
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    raise TypeError(f"{fn}: {name} has complex dtype {dtype}; {_COMPLEX_HINT}.")
  if not jnp.issubdtype(dtype, jnp.inexact):
    if not (jnp.issubdtype(dtype, jnp.number) or dtype == jnp.bool_):
      raise TypeError(f"{fn}: {name} must be numeric, got dtype {dtype}.")
    if promote:
      value = jnp.asarray(value, jnp.result_type(float))
  return value


def _check_inputs(fn: str, params: RNNParams, x) -> tuple[RNNParams, Array]:
  """``(params, x)`` validated as one real RNN and its ``(..., T, m)`` inputs."""
  check_params(params)
  if jnp.ndim(params.W) != 2:
    raise ValueError(f"{fn}: expects a single RNNParams (W of shape (n, n)), got W {jnp.shape(params.W)}.")
  params = RNNParams(*(_real(fn, f"params.{name}", v) for name, v in zip(RNNParams._fields, params)))
  x = _real(fn, "x", jnp.asarray(x))
  m = params.F.shape[-1]
  if x.ndim < 2 or x.shape[-1] != m:
    raise ValueError(f"{fn}: x must have shape (T, {m}) or (..., T, {m}), got {x.shape}.")
  return params, x


def perturbed_states(params: RNNParams, x, perturbations, activation: Activation = "relu") -> Array:
  """States of eq. (1) with ``e(k)`` added to each state: h(k) = phi(...) + e(k).

  Args:
    params: ``RNNParams``.
    x: ``(..., T, m)`` inputs.
    perturbations: ``(..., T, n)``, broadcast against the states.
    activation: name or callable.

  Returns:
    the states ``(..., T, n)``; with zero perturbations they equal
    ``simulate(params, x, activation, return_states=True)[1]``.
  """
  params, x = _check_inputs("perturbed_states", params, x)
  phi = get_activation(activation)
  perturbations = _real("perturbed_states", "perturbations", perturbations, promote=False)
  state_shape = x.shape[:-1] + (params.hidden_size,)
  try:
    np.broadcast_shapes(jnp.shape(perturbations), state_shape)
  except ValueError:
    raise ValueError(
        f"perturbed_states: perturbations of shape {jnp.shape(perturbations)} do not"
        f" broadcast to the states' shape {state_shape} (..., T, n)."
    ) from None
  if np.broadcast_shapes(jnp.shape(perturbations), state_shape) != state_shape:
    raise ValueError(
        f"perturbed_states: perturbations of shape {jnp.shape(perturbations)} would"
        f" enlarge the states' shape {state_shape} (..., T, n)."
    )
  z = jnp.moveaxis(x @ params.F.T + params.b, -2, 0)  # (T, *batch, n)
  e = jnp.broadcast_to(perturbations, state_shape)
  e = jnp.moveaxis(e, -2, 0)
  kernel = params.W.T
  h0 = jnp.broadcast_to(params.h0, z.shape[1:]).astype(z.dtype)

  def step(h, inputs):
    z_k, e_k = inputs
    h = phi(h @ kernel + z_k) + e_k
    return h, h

  _, hs = lax.scan(step, h0, (z, e))
  return jnp.moveaxis(hs, 0, -2)


def hidden_gradients(
    params: RNNParams,
    x,
    loss_fn: Callable[[Array], Array],
    activation: Activation = "relu",
) -> Array:
  """``dL/dh(k)`` for every step k, shape ``(..., T, n)``.

  Args:
    params: ``RNNParams`` (for a trained Flax model, :func:`urnn_jax.to_rnn_params`
      or W = the cell's ``transition_kernel().T``).
    x: ``(T, m)`` or ``(..., T, m)`` inputs.
    loss_fn: maps the states ``(..., T, n)`` to a scalar loss, e.g. a read-out
      of the last state and a cross-entropy. For a batch mean, each
      sequence's gradient carries the factor 1/batch; use a sum to get
      per-sequence gradients.
    activation: name or callable.
  """
  params, x = _check_inputs("hidden_gradients", params, x)
  shape = x.shape[:-1] + (params.hidden_size,)
  zeros = jnp.zeros(shape, jnp.result_type(x, params.W))
  # jit: one compile instead of one per eager op (also fine inside an outer jit).
  return jax.jit(jax.grad(lambda e: loss_fn(perturbed_states(params, x, e, activation))))(zeros)


def hidden_gradient_norms(
    params: RNNParams,
    x,
    loss_fn: Callable[[Array], Array],
    activation: Activation = "relu",
) -> Array:
  """``||dL/dh(k)||_2`` for every step k, shape ``(..., T)``.

  See :func:`hidden_gradients`; the norm is over the hidden axis, per
  sequence.

  Example:
    >>> import jax, jax.numpy as jnp, urnn_jax
    >>> from urnn_jax import diagnostics
    >>> n, m, T = 4, 2, 10
    >>> theta = urnn_jax.RNNParams.create(W=jnp.eye(n), F=jnp.ones((n, m)))
    >>> x = jax.random.normal(jax.random.key(0), (T, m))
    >>> norms = diagnostics.hidden_gradient_norms(theta, x, lambda h: h[-1].sum(), "identity")
    >>> norms.shape  # constant 2 = ||1||: W = I passes the gradient unchanged
    (10,)
  """
  g = hidden_gradients(params, x, loss_fn, activation)
  return jnp.linalg.norm(g, axis=-1)


def step_jacobians(params: RNNParams, x, activation: Activation = "relu"):
  """``J_k = diag(phi'(z_k)) W`` for a single sequence, and ``phi'(z_k)``.

  Args:
    params: ``RNNParams``.
    x: ``(T, m)``, one sequence.
    activation: name or callable (``phi'`` by ``jax.grad``, elementwise).

  Returns:
    ``(jacobians, dphi)``: ``(T, n, n)`` with ``jacobians[k] = dh(k)/dh(k-1)``
    (k = 0 is the Jacobian with respect to h0) and ``dphi`` ``(T, n)``.
  """
  params, x = _check_inputs("step_jacobians", params, x)
  if x.ndim != 2:
    raise ValueError(f"step_jacobians: x must be one sequence (T, m), got {x.shape}.")
  return _step_jacobians(params, x, get_activation(activation))


@functools.partial(jax.jit, static_argnums=2)
def _step_jacobians(params, x, phi):
  e = jnp.zeros(x.shape[:-1] + (params.hidden_size,), jnp.result_type(x, params.W))
  hs = perturbed_states(params, x, e, phi)
  h_prev = jnp.concatenate([params.h0[None].astype(hs.dtype), hs[:-1]], axis=0)
  pre = h_prev @ params.W.T + x @ params.F.T + params.b
  dphi = jax.vmap(jax.vmap(jax.grad(phi)))(pre)
  return dphi[:, :, None] * params.W[None], dphi


def jacobian_bound_check(
    params: RNNParams,
    x,
    activation: Activation = "relu",
    *,
    rtol: float = 1e-4,
) -> dict:
  """Checks seed 002's gradient bound along one trajectory (host-side, NumPy).

  For each step k, with ``a_k, b_k`` the min / max of ``|phi'(z_k)|``:

  * ``svd_bound_holds``: ``a_k sigma_min(W) <= sigma_min(J_k)`` and
    ``sigma_max(J_k) <= b_k sigma_max(W)`` for all k (true for any W);
  * ``eig_bound_holds``: the seed's version with ``|lambda|_min(W)`` and
    ``|lambda|_max(W)`` in place of the singular values (true for normal W,
    may fail otherwise); ``normality_defect_W`` is
    ``||W W^T - W^T W||_F / ||W||_2^2`` and ``is_normal_W`` says whether it is
    at rounding level (``100 n eps`` of W's dtype);
  * ``product_bound_holds``: for the loss ``L = u . h(T-1)`` (any fixed u),
    ``||dL/dh(k)|| / ||dL/dh(T-1)||`` lies in
    ``[prod_{j>k} a_j sigma_min(W), prod_{j>k} b_j sigma_max(W)]`` for all k:
    the bound on the gradient across T - 1 - k steps.

  Returns:
    a dict of floats, booleans and per-step lists (``sigma_min_J``,
    ``sigma_max_J``, ``a``, ``b``, ``grad_ratio``, ``lower``, ``upper``).

  Raises:
    ValueError: if ``x`` is not one sequence ``(T, m)`` with T >= 1, or
      ``rtol`` is not a finite number >= 0.
    TypeError: for complex parameters or inputs (integers are promoted).
  """
  params, x = _check_inputs("jacobian_bound_check", params, x)
  if x.ndim == 2 and x.shape[0] < 1:
    raise ValueError(f"jacobian_bound_check: x must have at least one step, got shape {x.shape}.")
  if isinstance(rtol, (bool, np.bool_)) or not isinstance(rtol, (int, float, np.floating, np.integer)) or not (
      0.0 <= rtol < float("inf")):
    raise ValueError(f"jacobian_bound_check: rtol must be a finite number >= 0, got rtol={rtol!r}.")
  jac, dphi = step_jacobians(params, x, activation)
  jac = np.asarray(jac, np.float64)
  dphi = np.abs(np.asarray(dphi, np.float64))
  w = np.asarray(params.W, np.float64)
  s_w = np.linalg.svd(w, compute_uv=False)
  eig_abs = np.abs(np.linalg.eigvals(w))
  s_j = np.linalg.svd(jac, compute_uv=False)  # (T, n), descending
  a, b = dphi.min(axis=1), dphi.max(axis=1)
  smin_j, smax_j = s_j[:, -1], s_j[:, 0]
  tol = lambda v: rtol * np.maximum(1.0, np.abs(v))
  svd_ok = bool(np.all(a * s_w[-1] <= smin_j + tol(smin_j)) and np.all(smax_j <= b * s_w[0] + tol(smax_j)))
  eig_ok = bool(
      np.all(a * eig_abs.min() <= smin_j + tol(smin_j)) and np.all(smax_j <= b * eig_abs.max() + tol(smax_j))
  )

  # ||W W^T - W^T W||_F / ||W||_2^2: 0 for normal W (then |lambda| are the singular values).
  normality = float(np.linalg.norm(w @ w.T - w.T @ w) / max(s_w[0] ** 2, np.finfo(float).tiny))

  # Gradient of L = u . h(T-1) back through the trajectory (explicit products).
  t = jac.shape[0]
  u = np.ones(w.shape[0]) / np.sqrt(w.shape[0])
  g = u.copy()
  ratio = np.ones(t)
  lower = np.ones(t)
  upper = np.ones(t)
  for k in range(t - 2, -1, -1):
    g = jac[k + 1].T @ g  # dL/dh(k) = J_{k+1}^T dL/dh(k+1)
    ratio[k] = np.linalg.norm(g)
    lower[k] = lower[k + 1] * a[k + 1] * s_w[-1]
    upper[k] = upper[k + 1] * b[k + 1] * s_w[0]
  prod_ok = bool(np.all(lower <= ratio + tol(ratio)) and np.all(ratio <= upper + tol(ratio)))

  # The same ratio from hidden_gradient_norms (autodiff), as a cross-check.
  uj = jnp.asarray(u, params.W.dtype)
  norms = np.asarray(hidden_gradient_norms(params, x, lambda h: h[-1] @ uj, activation), np.float64)
  autodiff_ratio = norms / norms[-1]
  return {
      "activation": activation if isinstance(activation, str) else getattr(activation, "__name__", "callable"),
      "steps": int(t),
      "sigma_min_W": float(s_w[-1]),
      "sigma_max_W": float(s_w[0]),
      "eig_abs_min_W": float(eig_abs.min()),
      "eig_abs_max_W": float(eig_abs.max()),
      "normality_defect_W": normality,
      "is_normal_W": bool(normality <= 100 * np.finfo(np.asarray(params.W).dtype).eps * w.shape[0]),
      "a": a.tolist(),
      "b": b.tolist(),
      "a_min": float(a.min()),
      "b_max": float(b.max()),
      "sigma_min_J": smin_j.tolist(),
      "sigma_max_J": smax_j.tolist(),
      "grad_ratio": ratio.tolist(),
      "autodiff_grad_ratio": autodiff_ratio.tolist(),
      "lower": lower.tolist(),
      "upper": upper.tolist(),
      "svd_bound_holds": svd_ok,
      "eig_bound_holds": eig_ok,
      "product_bound_holds": prod_ok,
      "autodiff_matches": bool(np.allclose(autodiff_ratio, ratio, rtol=1e-3, atol=1e-6)),
  }
