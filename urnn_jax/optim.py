r"""Optax transformations that keep transition matrices orthogonal (unitary).

Each constraint is an ``optax.GradientTransformation`` meant to run *after*
an optimiser, on the leaves that a label or mask picks::

    tx = optax.chain(optax.adam(1e-3), optax.masked(orthogonal_projection(), mask))
    # or, in one line, on every leaf named ``recurrent_kernel``:
    tx = constrained(optax.adam(1e-3), orthogonal_projection())

The incoming update u is the optimiser's step (e.g. u = -lr * adam
direction); each constraint turns the plain step W <- W + u into a step that
stays on the group (or in the ball) and returns u' = W_new - W, so that
``optax.apply_updates(params, u')`` gives W_new.

* :func:`orthogonal_projection`: W_new = project(W + u), the polar factor
  (the paper's "project ... after each iteration using SVD").
* :func:`cayley_retraction`: W_new = (I - A/2)^{-1} (I + A/2) W.
* :func:`expm_retraction`: W_new = exp(A) W.
* :func:`spectral_norm_projection`: W_new = clip_singular_values(W + u, rho)
  (the paper's contractive RNN).
* :func:`scale_recurrent`: not a constraint; scales the recurrent matrices'
  updates, giving W its own learning rate (expRNN's "orthogonal lr").

Both retractions use the skew-symmetric (skew-Hermitian) A = skew(u W^H) =
(u W^H - W u^H) / 2, so that their first-order term A W = W skew(W^H u) is
the projection of u onto the tangent space at W: for small steps they move
like the projected update, and they descend the loss when u does. (Seed
002's W <- exp(-eta A) W with A = G W^T - W G^T is the same map with u =
-2 eta G: the unhalved generator takes a step twice as long.)

All transforms act on leaves of shape ``(..., n, n)``: leading dimensions
are a batch of independent matrices (e.g. params stacked over realizations
with ``jax.vmap``). They work under ``jit``, in float32 and float64, and on
complex (unitary) leaves.

Complex parameters: the one convention
---------------------------------------

``jax.grad`` of a real loss L at a complex leaf w = x + iy returns
dL/dx - i dL/dy, the *conjugate* of the steepest-ascent direction
G = dL/dx + i dL/dy (the gradient for the real inner product Re tr(A^H B)).
Fed to an optimiser as is, it does not descend (``optax.adam`` on a complex
leaf then walks the imaginary part the wrong way; optax leaves the
conjugation to the user). In this module:

* :func:`conjugate_complex` is the transformation G = conj(jax.grad) on the
  complex leaves (real leaves pass unchanged); :func:`conjugated` runs an
  optimiser on those conjugated gradients, with the optimiser's own state.
* :func:`constrained` does it for you: ``constrained(optax.adam(lr),
  cayley_retraction())`` conjugates the raw ``jax.grad`` of every complex
  leaf first, then the optimiser (adam's second moment is optax's
  ``|g|^2``, right for complex leaves), then the constraint, whose incoming
  update u = -lr * (direction of G) is in the conjugated convention. Pass it
  the raw gradients; do **not** also conjugate them (nor put
  :func:`conjugate_complex` in ``optimizer``): conjugating twice undoes it.
  :func:`urnn_jax.models.make_tx` uses :func:`constrained`, or
  :func:`conjugated` for a model without a constraint.

In that convention Wisdom et al.'s (2016) full-capacity step with learning
rate lam is :func:`cayley_retraction` of u = -2 lam G (A = G W^H - W G^H,
W <- (I + lam/2 A)^{-1} (I - lam/2 A) W); see the retractions below. Here
W is the constrained leaf itself: in the cells' row-vector layout that is
K = W_paper^T, so the step multiplies W_paper from the right rather than
the left, a different retraction with the same first-order (projected
gradient) term.

Leaf checks (dtypes and shapes only, so free under ``jit``): constrained
parameters must be square floating (real or complex) matrices, and each
update must be floating, of the parameter's shape, and complex exactly when
the parameter is (a real update of a complex W, or a complex update of a
real W, would lose the imaginary part of W_new - W when cast to the update's
dtype); otherwise TypeError / ValueError naming the leaf.

Degenerate steps: the retractions never are (for a skew-symmetric A,
I - A/2 is always invertible and exp(A) always orthogonal).
:func:`orthogonal_projection` with ``"newton_schulz"`` or ``"qdwh"`` needs a
non-singular W + u; called on concrete arrays it raises ValueError for a
singular one (see :func:`urnn_jax.orthogonal.project`), but under ``jit``
the values are traced and cannot be checked, and a singular W + u then
gives a W_new that is not orthogonal (``"svd"`` always returns an
orthogonal W_new).
"""

from __future__ import annotations

import functools
import numbers
import re
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax
from jax import lax

from urnn_jax import orthogonal

Array = jax.Array
Match = Union[None, str, "re.Pattern[str]", Callable[[str, Any], bool]]

RECURRENT_KERNEL = "recurrent_kernel"
# The recurrent matrix's parameter in every eq. (1) cell: the kernel itself, or
# the generator A of a parametrised OrthogonalRNNCell (W = base map(skew(A))).
RECURRENT_MATRIX = r"(^|/)recurrent_(kernel|generator)$"
CONSTRAINED = "constrained"
FREE = "free"


class RetractionState(NamedTuple):
  """State of the retractions: the number of updates done so far.

  Used by ``reproject_every`` to project onto the group every k steps.
  """

  count: Array


# ---------------------------------------------------------------------------
# Leaf validation.


def _path_str(path) -> str:
  """'a/b/0/c' for a jax key path."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return "/".join(parts)


def _leaf_desc(path) -> str:
  """``params['a/b']`` for a leaf, ``params`` for a bare array."""
  name = _path_str(path)
  return f"params[{name!r}]" if name else "params"


def _check_matrix_leaf(fn: str, path, leaf) -> None:
  desc = _leaf_desc(path)
  shape = getattr(leaf, "shape", None)
  dtype = getattr(leaf, "dtype", None)
  if shape is None or dtype is None:
    raise TypeError(
        f"{fn}: the leaf {desc} must be an array, got"
        f" {type(leaf).__name__}."
    )
  if len(shape) < 2 or shape[-1] != shape[-2]:
    raise ValueError(
        f"{fn}: the leaf {desc} has shape {tuple(shape)}; expected"
        " square matrices of shape (..., n, n). Apply the constraint only to"
        " the transition matrices (e.g. with constrained(...) or"
        " optax.masked(..., recurrent_kernel_mask))."
    )
  if not jnp.issubdtype(dtype, jnp.inexact):
    raise TypeError(
        f"{fn}: the leaf {desc} has dtype {dtype}; expected a real"
        " or complex floating dtype."
    )


def _check_params(fn: str, params) -> None:
  jax.tree_util.tree_map_with_path(
      functools.partial(_check_matrix_leaf, fn), params
  )


def _check_update(fn: str, updates, params) -> None:
  if params is None:
    raise ValueError(
        f"{fn}: params is None; this constraint needs the current parameters."
        " Call tx.update(updates, state, params)."
    )
  _check_params(fn, params)

  def same_shape(path, u, p):
    dtype = getattr(u, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
          f"{fn}: the update for {_leaf_desc(path)} has dtype {dtype}; expected a"
          " floating dtype (an integer update would be truncated)."
      )
    if jnp.issubdtype(dtype, jnp.complexfloating) != jnp.issubdtype(p.dtype, jnp.complexfloating):
      raise TypeError(
          f"{fn}: the update for {_leaf_desc(path)} has dtype {dtype} but the"
          f" parameter has dtype {p.dtype}; a real (orthogonal) parameter needs a"
          " real update and a complex (unitary) one a complex update."
      )
    if u.shape != p.shape:
      raise ValueError(
          f"{fn}: the update for {_leaf_desc(path)} has shape"
          f" {u.shape}; expected the parameter's shape {p.shape}."
      )

  jax.tree_util.tree_map_with_path(same_shape, updates, params)


def _map_leaves(fn: Callable[[Array, Array], Array], updates, params):
  """u' = fn(u, W) - W per leaf, in the update's dtype."""

  def leaf(u, w):
    w_new = fn(u, w)
    return (w_new - w).astype(u.dtype)

  return jax.tree.map(leaf, updates, params)


def _is_real_number(value) -> bool:
  """A real Python/NumPy number, not a bool."""
  return isinstance(value, numbers.Real) and not isinstance(value, (bool, jnp.bool_))


def _check_method(fn: str, name: str, method) -> None:
  if method not in orthogonal.PROJECTION_METHODS:
    raise ValueError(
        f"{fn}: {name}={method!r} is not supported; expected one of"
        f" {orthogonal.PROJECTION_METHODS}."
    )


# ---------------------------------------------------------------------------
# Projections.


def orthogonal_projection(
    method: str = "svd", *, tol: float | None = None, max_iters: int = 100
) -> optax.GradientTransformation:
  r"""Projects each step back onto the orthogonal (unitary) group.

  .. math:: W_{new} = \mathrm{project}(W + u) = U V^H,
            \quad W + u = U S V^H, \qquad u' = W_{new} - W.

  This is the paper's method ("project the transition matrix on the full
  space of unitary matrices after each iteration using SVD").

  Args:
    method: how to compute the polar factor, see
      :func:`urnn_jax.orthogonal.project`: ``"svd"`` (default),
      ``"newton_schulz"`` (matmuls only) or ``"qdwh"``.
    tol: Newton-Schulz tolerance (see :func:`~urnn_jax.orthogonal.project`).
    max_iters: Newton-Schulz iteration cap.

  Returns:
    An ``optax.GradientTransformation`` with an empty state; ``update``
    requires ``params``.
  """
  fn = "orthogonal_projection"
  _check_method(fn, "method", method)
  if tol is not None and (not _is_real_number(tol) or not tol > 0):
    raise ValueError(f"{fn}: tol must be None or a number > 0, got tol={tol!r}.")
  if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
    raise ValueError(f"{fn}: max_iters must be a positive int, got max_iters={max_iters!r}.")

  def init_fn(params):
    _check_params(fn, params)
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    _check_update(fn, updates, params)
    project = lambda u, w: orthogonal.project(w + u, method, tol=tol, max_iters=max_iters)
    return _map_leaves(project, updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)


def spectral_norm_projection(max_value: float = 1.0) -> optax.GradientTransformation:
  r"""Projects each step onto the spectral-norm ball {||W||_2 <= rho}.

  .. math:: W_{new} = U \min(S, \rho) V^H, \quad W + u = U S V^H.

  For the paper's contractive RNN (ContRNN), with rho = ``max_value``
  (rho < 1 makes the recurrence strictly contractive for 1-Lipschitz
  activations). Steps that stay inside the ball are left exactly unchanged.

  Args:
    max_value: rho > 0.
  """
  fn = "spectral_norm_projection"
  if not _is_real_number(max_value) or not (0 < max_value < float("inf")):
    raise ValueError(
        f"{fn}: max_value must be a finite number > 0, got max_value={max_value!r}."
    )

  def init_fn(params):
    _check_params(fn, params)
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    _check_update(fn, updates, params)
    clip = lambda u, w: orthogonal.clip_singular_values(w + u, max_value)
    return _map_leaves(clip, updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Retractions.


def _retraction(fn: str, group_map, reproject_every, reproject_method):
  if reproject_every is not None and (
      isinstance(reproject_every, bool)
      or not isinstance(reproject_every, int)
      or reproject_every < 1
  ):
    raise ValueError(
        f"{fn}: reproject_every must be None or a positive int, got"
        f" reproject_every={reproject_every!r}."
    )
  _check_method(fn, "reproject_method", reproject_method)

  def retract(u, w):
    a = orthogonal.skew(u @ orthogonal._ct(w))  # (u W^H - W u^H) / 2
    return group_map(a, w)

  def init_fn(params):
    _check_params(fn, params)
    return RetractionState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    _check_update(fn, updates, params)
    count = optax.safe_increment(state.count)
    new = jax.tree.map(retract, updates, params)
    if reproject_every is not None:
      new = lax.cond(
          count % reproject_every == 0,
          lambda t: jax.tree.map(lambda w: orthogonal.project(w, reproject_method), t),
          lambda t: t,
          new,
      )
    out = jax.tree.map(lambda w_new, w, u: (w_new - w).astype(u.dtype), new, params, updates)
    return out, RetractionState(count=count)

  return optax.GradientTransformation(init_fn, update_fn)


def _cayley_apply(a, w):
  """(I - A/2)^{-1} (I + A/2) W with a single solve."""
  eye = jnp.eye(a.shape[-1], dtype=a.dtype)
  return jnp.linalg.solve(eye - 0.5 * a, w + 0.5 * (a @ w))


def _expm_apply(a, w):
  return orthogonal.expm_skew(a) @ w


def cayley_retraction(
    *, reproject_every: int | None = None, reproject_method: str = "svd"
) -> optax.GradientTransformation:
  r"""Moves along the group with the Cayley transform.

  .. math:: A = \mathrm{skew}(u W^H) = \tfrac12 (u W^H - W u^H), \qquad
            W_{new} = (I - A/2)^{-1} (I + A/2)\, W .

  W_new is orthogonal (unitary) whenever W is, and
  W_new = W + W skew(W^H u) + O(|u|^2): to first order, the update
  projected onto the tangent space at W (Wen and Yin, 2013; scoRNN).

  Args:
    reproject_every: if set to k, also project W_new onto the group
      (``orthogonal.project``) every k-th update, to remove the slow drift
      off the group that rounding causes in float32. Needs the step count
      kept in :class:`RetractionState`.
    reproject_method: the projection used for that.
  """
  return _retraction("cayley_retraction", _cayley_apply, reproject_every, reproject_method)


def expm_retraction(
    *, reproject_every: int | None = None, reproject_method: str = "svd"
) -> optax.GradientTransformation:
  r"""Moves along the group with the matrix exponential (a geodesic step).

  .. math:: A = \mathrm{skew}(u W^H) = \tfrac12 (u W^H - W u^H), \qquad
            W_{new} = \exp(A)\, W .

  Seed 002's W <- exp(-eta A) W, A = G W^T - W G^T, is this map with
  u = -2 eta G. The first-order term is the tangent projection of u, as for
  :func:`cayley_retraction`.

  Args:
    reproject_every: if set to k, also project W_new onto the group every
      k-th update (removes float32 drift).
    reproject_method: the projection used for that.
  """
  return _retraction("expm_retraction", _expm_apply, reproject_every, reproject_method)


# ---------------------------------------------------------------------------
# Complex gradients.


def _conj_leaf(g):
  if g is None or not jnp.iscomplexobj(g):
    return g
  return jnp.conj(g)


def conjugate_complex() -> optax.GradientTransformation:
  """The complex-gradient convention: conj on every complex leaf; real leaves pass unchanged.

  ``jax.grad`` of a real loss returns the conjugate of the steepest-ascent
  direction of a complex leaf (see the module docstring), so this turns raw
  ``jax.grad`` output into the gradient an optax optimiser descends along.
  Put it first, ``optax.chain(conjugate_complex(), optax.adam(lr))``, or use
  :func:`conjugated` / :func:`constrained`, which apply it for you (so do
  not combine them with it). On real parameters it is the identity, so it
  is safe in any chain. Stateless (``optax.EmptyState``).

  Example:
    >>> import jax.numpy as jnp, urnn_jax
    >>> tx = urnn_jax.optim.conjugate_complex()
    >>> g = {"w": jnp.array([1 + 2j]), "b": jnp.array([3.0])}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> u["w"], u["b"]
    (Array([1.-2.j], dtype=complex64), Array([3.], dtype=float32))
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(_conj_leaf, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def conjugated(optimizer: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``optimizer`` fed conj(g) on the complex leaves (:func:`conjugate_complex`), same state.

  The wrapper keeps ``optimizer``'s state exactly (no extra chain element,
  so checkpoints of real models are unchanged) and is the identity wrapper
  on real parameters. Pass raw ``jax.grad`` gradients. :func:`constrained`
  is ``conjugated`` around the optimiser and the constraint.

  Raises:
    TypeError: ``optimizer`` is not an optax transformation.
  """
  if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
    raise TypeError(
        f"conjugated: optimizer must be an optax.GradientTransformation, got"
        f" {type(optimizer).__name__}: {optimizer!r}."
    )
  inner = optax.with_extra_args_support(optimizer)

  def update_fn(updates, state, params=None, **extra_args):
    return inner.update(jax.tree.map(_conj_leaf, updates), state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


# ---------------------------------------------------------------------------
# Labels and the one-line wrapper.


def _matcher(fn: str, match: Match) -> Callable[[str, Any], bool]:
  if match is None:
    return lambda path, leaf: path.rsplit("/", 1)[-1] == RECURRENT_KERNEL
  if isinstance(match, str):
    try:
      match = re.compile(match)
    except re.error as e:
      raise ValueError(
          f"{fn}: match={match!r} is not a valid regular expression ({e})."
      ) from None
  if isinstance(match, re.Pattern):
    return lambda path, leaf: match.search(path) is not None
  if callable(match):
    return lambda path, leaf: bool(match(path, leaf))
  raise TypeError(
      f"{fn}: match must be None, a regular expression (str or re.Pattern) or"
      f" a callable (path, leaf) -> bool, got {type(match).__name__}: {match!r}."
  )


def _select(fn: str, params, match: Match):
  matcher = _matcher(fn, match)
  mask = jax.tree_util.tree_map_with_path(
      lambda path, leaf: matcher(_path_str(path), leaf), params
  )
  if not any(jax.tree.leaves(mask)):
    paths = [
        _path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ]
    wanted = (
        f"a leaf named {RECURRENT_KERNEL!r}" if match is None else f"a leaf path matching {match!r}"
    )
    raise ValueError(
        f"{fn}: match={match!r} selects no leaf of params; expected at least"
        f" {wanted}. Leaf paths: {paths}."
    )
  return mask


def recurrent_kernel_mask(params, *, match: Match = None):
  """A boolean pytree (an ``optax.masked`` mask) that picks the recurrent kernels.

  By default a leaf is picked when its last path key is ``recurrent_kernel``
  (the transition matrix of :class:`~urnn_jax.RNNCell` and
  :class:`~urnn_jax.OrthogonalRNNCell`, at any depth).

  Args:
    params: the parameter (or update) pytree.
    match: a regular expression searched in the ``/``-joined leaf path (e.g.
      ``"rnn/cell/recurrent_kernel"``), or a predicate ``(path, leaf) ->
      bool``, instead of the default rule.

  Raises:
    ValueError: when nothing is selected (the message lists the leaf paths).
  """
  return _select("recurrent_kernel_mask", params, match)


def recurrent_kernel_labels(params, *, match: Match = None):
  """``optax.partition`` labels: ``"constrained"`` on the recurrent kernels, else ``"free"``.

  Same rule and errors as :func:`recurrent_kernel_mask`. Example::

      tx = optax.partition(
          {"constrained": optax.chain(optax.adam(1e-3), orthogonal_projection()),
           "free": optax.adam(1e-3)},
          recurrent_kernel_labels)
  """
  mask = _select("recurrent_kernel_labels", params, match)
  return jax.tree.map(lambda m: CONSTRAINED if m else FREE, mask)


def scale_recurrent(factor: float, *, match: Match = RECURRENT_MATRIX) -> optax.GradientTransformation:
  """Scales the updates of the recurrent matrices by ``factor``; other leaves pass.

  After an optimiser that is linear in its learning rate (adam, rmsprop, sgd,
  with any schedule), this gives the recurrent matrix its own learning rate
  ``factor * lr``: the "orthogonal learning rate" of expRNN-style training,
  where the orthogonal W takes much smaller steps than the input and output
  weights. Put it before the constraint::

      tx = constrained(optax.chain(optax.adam(3e-3), scale_recurrent(0.03)),
                       expm_retraction())

  Args:
    factor: a finite float > 0.
    match: which leaves to scale; by default every leaf named
      ``recurrent_kernel`` or ``recurrent_generator`` (the free W, the
      orthogonal W, or the generator A of a parametrised cell). Same forms as
      in :func:`recurrent_kernel_mask`.

  Raises:
    ValueError: for a ``factor`` that is not finite and > 0; the returned
      transformation's ``init`` raises ValueError when ``match`` selects no leaf.
  """
  if not _is_real_number(factor) or not (0 < factor < float("inf")):
    raise ValueError(f"scale_recurrent: factor must be a finite number > 0, got {factor!r}.")
  _matcher("scale_recurrent", match)  # Validates match eagerly.

  def mask(tree):
    return _select("scale_recurrent", tree, match)

  return optax.masked(optax.scale(float(factor)), mask)


def constrained(
    optimizer: optax.GradientTransformation,
    constraint: optax.GradientTransformation,
    *,
    match: Match = None,
) -> optax.GradientTransformation:
  """``optimizer`` on every leaf, then ``constraint`` on the recurrent kernels only.

  ``constrained(opt, c) = conjugated(optax.chain(opt, optax.masked(c, recurrent_kernel_mask)))``:
  the gradients of complex leaves are conjugated first (:func:`conjugated`,
  the module's one complex convention), so raw ``jax.grad`` output descends
  on every leaf, real or complex, and nothing else is needed in the chain
  (do not conjugate the gradients yourself). On real parameters this is
  exactly ``optax.chain(opt, optax.masked(c, mask))``, state included.

  Example::

      tx = constrained(optax.adam(1e-3), orthogonal_projection())
      state = tx.init(params)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)

  Args:
    optimizer: any optax transformation (applied to all leaves).
    constraint: one of this module's constraints (or any transformation).
    match: which leaves to constrain; see :func:`recurrent_kernel_mask`.

  Raises:
    TypeError: for arguments that are not optax transformations or a bad
      ``match``; the returned transformation's ``init`` raises ValueError
      when ``match`` selects no leaf.
  """
  for name, tx in (("optimizer", optimizer), ("constraint", constraint)):
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
      raise TypeError(
          f"constrained: {name} must be an optax.GradientTransformation, got"
          f" {type(tx).__name__}: {tx!r}."
      )
  _matcher("constrained", match)  # Validates match eagerly.

  def mask(tree):
    return _select("constrained", tree, match)

  return conjugated(optax.chain(optimizer, optax.masked(constraint, mask)))
