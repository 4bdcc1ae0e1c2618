"""``Recurrent``: the sequence layer, plus the experiments' task heads.

``Recurrent(cell)`` runs any :class:`flax.linen.RNNCellBase` over a sequence.
For a :class:`~urnn_jax.HoistableCell` (the public fast-cell protocol, see
:mod:`urnn_jax.cells`; :class:`~urnn_jax.RNNCell` and
:class:`~urnn_jax.OrthogonalRNNCell` are ones) it hoists all loop-invariant
work out of ``lax.scan``:

1. the input projection x F^T + b for every step, as one matmul
   (``cell.project_inputs``);
2. the recurrent kernel K = W^T, including any parametrisation
   (K = base @ expm(skew(A))), built once per call (``cell.transition_kernel``);
3. a loop whose body is only ``phi(h @ K + z_k)`` (``cell.activation_fn``,
   with ``cell.activation_params()`` when the activation has parameters)
   (:func:`urnn_jax.rnn.recurrence`, shared with :func:`urnn_jax.simulate`),
   run in the input's own layout: batch-major inputs are read and the states
   written step by step in place, with no (T, B, n) transposes.

A :class:`~urnn_jax.gated.HoistableGatedCell` (:class:`~urnn_jax.UnitaryGRUCell`)
gets the same treatment for gates: all gates' input projections in one matmul,
the recurrent weights built once, and a plain ``lax.scan`` over the recurrent
part (:func:`urnn_jax.gated.gated_recurrence`; autodiff, no custom VJP).

Other cells (flax's ``LSTMCell``, ``GRUCell``, ...) are scanned with
``flax.linen.scan`` exactly as ``flax.linen.RNN`` does, so every baseline
goes through the same layer with the same options.

The heads answer for themselves: ``hidden_states(x)`` and
``outputs_from_states(hidden_states)`` split a head's ``__call__`` (``model(x)
== outputs_from_states(hidden_states(x))``), and ``rnn_params()`` returns the
eq. (1) parameters (all usable as ``model.apply(variables, ..., method=...)``);
:func:`to_rnn_params` wraps the latter.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from urnn_jax.cells import HoistableCell
from urnn_jax.gated import HoistableGatedCell, gated_recurrence
from urnn_jax.rnn import (RNNParams, as_floating, check_complex, check_lengths, check_params,
                          check_positive_int, floating_dtype, recurrence)


def _is_hoistable(cell) -> bool:
  return isinstance(cell, HoistableCell)


def _not_eq1_error(where: str, cell) -> ValueError:
  return ValueError(
      f"{where}: the cell {type(cell).__name__} is not an eq. (1) cell"
      " (h(k) = phi(W h(k-1) + F x(k) + b) with an rnn_params() method, as RNNCell and"
      " OrthogonalRNNCell have), so the model has no RNNParams (W, F, b, C, h0)."
  )


class Recurrent(nn.Module):
  """Runs ``cell`` over a sequence with ``lax.scan``.

  Attributes:
    cell: any ``flax.linen.RNNCellBase``; a :class:`~urnn_jax.HoistableCell`
      (e.g. :class:`RNNCell`, :class:`OrthogonalRNNCell`) runs on the fast path.
    time_major: inputs are ``(T, *batch, m)`` instead of ``(*batch, T, m)``.
    unroll: ``lax.scan`` unroll factor.
    learn_initial_carry: make h(-1) a learnable parameter ``initial_carry``
      (zeros at init), shared across the batch.
    return_carry: also return the final carry.
    custom_gradient: for a :class:`~urnn_jax.HoistableCell` (the paper's
      cells :class:`RNNCell`, :class:`OrthogonalRNNCell` among them), use
      :func:`urnn_jax.rnn.recurrence`'s memory-light custom VJP (default).
      Reverse mode only: set ``False`` to differentiate the layer in forward
      mode (``jax.jvp``, ``jax.jacfwd``). Other cells ignore it.
    remat: opt-in rematerialisation of that custom VJP (default ``False``):
      ``True`` or a segment length S dividing T keeps only the projected
      inputs and the state entering each segment for the backward pass and
      recomputes each segment's states there (``urnn_jax.recurrence``'s
      ``remat``). For long sequences; a HoistableCell with
      ``custom_gradient=True`` only (else ValueError; other cells ignore it).

  ``__call__(x, *, initial_carry=None, seq_lengths=None)`` returns the
  outputs, ``(*batch, T, n)`` (time-major: ``(T, *batch, n)``), or
  ``(carry, outputs)`` with ``return_carry``. With ``seq_lengths`` (int,
  shape ``batch``, values in ``[0, T]``), the carry is frozen once a sequence
  has ended, so the returned carry is the state at its last valid step, and
  outputs past the end are zero (a length 0 keeps the initial carry). A
  sequence of T = 0 steps gives empty outputs and the initial carry.

  Input checks: concrete ``seq_lengths`` outside ``[0, T]`` raise
  ValueError, non-integer ones TypeError. Under ``jit`` traced lengths
  cannot be checked (that would need ``jax.experimental.checkify``): a length
  below 0 then acts as 0 and one above T as T. Integer or boolean ``x`` (or
  carry) is promoted to floating, never run as integers. A real cell (one
  whose ``supports_complex`` is False, e.g. :class:`OrthogonalRNNCell` with a
  real ``param_dtype``) raises TypeError for complex ``x``, carry or
  variables, and so does a real-only activation (relu, leaky_relu, abs) of a
  complex cell; flax's cells are not checked. ``unroll`` must be a positive int.

  ``rnn_params()`` (``layer.apply(variables, method="rnn_params")``) gives the
  eq. (1) parameters of an eq. (1) cell, with C = I and h0 the learned
  ``initial_carry`` (else the cell's initial carry).

  Example:
    >>> import jax, jax.numpy as jnp, urnn_jax
    >>> layer = urnn_jax.Recurrent(urnn_jax.OrthogonalRNNCell(16))
    >>> x = jnp.ones((8, 100, 2))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> layer.apply(variables, x).shape
    (8, 100, 16)
  """

  cell: nn.RNNCellBase
  time_major: bool = False
  unroll: int = 1
  learn_initial_carry: bool = False
  return_carry: bool = False
  custom_gradient: bool = True
  remat: bool | int = False

  @nn.compact
  def __call__(self, x, *, initial_carry=None, seq_lengths=None):
    if not isinstance(self.cell, nn.RNNCellBase):
      raise TypeError(
          f"Recurrent: cell must be a flax.linen.RNNCellBase, got"
          f" {type(self.cell).__name__}."
      )
    x = jnp.asarray(x)
    if x.ndim < 2:
      raise ValueError(
          f"Recurrent: x must have shape {'(T, ..., m)' if self.time_major else '(..., T, m)'}"
          f" (at least rank 2), got shape {x.shape}."
      )
    check_positive_int("Recurrent", "unroll", self.unroll)
    if not isinstance(self.custom_gradient, bool):
      raise TypeError(
          f"Recurrent: custom_gradient must be a bool, got {self.custom_gradient!r}."
      )
    batch_shape = x.shape[1:-1] if self.time_major else x.shape[:-2]
    if seq_lengths is not None:  # integers in [0, T] (values checked when concrete)
      seq_lengths = check_lengths("Recurrent", "seq_lengths", seq_lengths,
                                  x.shape[0] if self.time_major else x.shape[-2], batch_shape)

    carry_shape = batch_shape + x.shape[-1:]
    if initial_carry is None:
      initial_carry = self.cell.initialize_carry(
          self.make_rng("params") if self.is_initializing() else jax.random.key(0),
          carry_shape,
      )
      if self.learn_initial_carry:
        template = jax.tree.map(lambda c: c[(0,) * (c.ndim - 1)], initial_carry)
        h0 = self.param("initial_carry", lambda _: jax.tree.map(jnp.zeros_like, template))
        initial_carry = jax.tree.map(
            lambda c, p: jnp.broadcast_to(p.astype(c.dtype), c.shape), initial_carry, h0
        )

    # A real cell (supports_complex False) takes no complex x or carry; cells without
    # the hook (flax's) are not checked.
    given_carry = initial_carry
    check_complex("Recurrent", {"x": x, "initial_carry": given_carry}, cell=self.cell)
    # The carry takes the promoted dtype of inputs and carry (float64 inputs
    # through float32 cells give float64 states, as the cell's output does);
    # integer inputs and carries give a floating carry, never an integer one.
    initial_carry = jax.tree.map(
        lambda c: jnp.asarray(c, floating_dtype(c, x.dtype)), initial_carry
    )
    if _is_hoistable(self.cell):
      # In the input's own layout: a batch-major x needs no transposes.
      z, bias = self.cell.project_inputs(  # one matmul, all steps; b is added in the loop
          x, custom_gradient=self.custom_gradient, separate_bias=True)
      kernel = self.cell.transition_kernel()  # built once per call
      activation_params = self.cell.activation_params()  # None: phi(a) alone
      check_complex(  # complex variables of a real cell; complex numbers and the activation
          "Recurrent",
          {"x": x, "initial_carry": given_carry, "the cell's recurrent kernel": kernel,
           "the cell's input projection": None if jnp.iscomplexobj(x) else z,
           "the cell's bias": bias, "the cell's activation_params": activation_params},
          cell=self.cell, activation=self.cell.activation_fn)
      carry, ys = recurrence(
          kernel,
          z,
          initial_carry,
          self.cell.activation_fn,
          bias=bias,
          lengths=seq_lengths,
          unroll=self.unroll,
          custom_gradient=self.custom_gradient,
          batch_major=not self.time_major,
          activation_params=activation_params,
          remat=self.remat,
      )
    elif isinstance(self.cell, HoistableGatedCell):
      # Gated cells (urnn_jax.gated): every gate's input projection in one matmul, the
      # recurrent weights (a parametrised W included) built once, the loop only h's part.
      carry, ys = gated_recurrence(
          self.cell.step_fn, self.cell.recurrent_weights(), self.cell.project_inputs(x),
          initial_carry, lengths=seq_lengths, time_major=self.time_major, unroll=self.unroll)
    else:
      xt = x if self.time_major else jnp.moveaxis(x, -2, 0)  # (T, *batch, m)
      carry, ys = self._generic_scan(xt, initial_carry, seq_lengths)
      if not self.time_major:
        ys = jnp.moveaxis(ys, 0, -2)
    return (carry, ys) if self.return_carry else ys

  def rnn_params(self) -> RNNParams:
    """The eq. (1) parameters ``RNNParams(W, F, b, C=I, h0)`` of the layer's cell.

    W comes from the cell's own ``transition_kernel`` (parametrised cells
    included); h0 is the learned ``initial_carry`` with
    ``learn_initial_carry``, else the cell's initial carry (zeros by
    default). Call it as ``layer.apply(variables, method="rnn_params")``.

    Raises:
      ValueError: the cell is not an eq. (1) cell (e.g. an LSTM).
    """
    cell = self.cell
    if not callable(getattr(cell, "rnn_params", None)):
      raise _not_eq1_error("Recurrent.rnn_params", cell)
    theta = cell.rnn_params()
    if self.learn_initial_carry:
      h0 = self.get_variable("params", "initial_carry")
      if h0 is None:
        raise ValueError(
            "Recurrent.rnn_params: learn_initial_carry=True but the variables hold no"
            " 'initial_carry' parameter."
        )
    else:
      h0 = cell.initialize_carry(jax.random.key(0), (theta.input_size,))
    theta = theta._replace(h0=jnp.asarray(h0))
    check_params(theta)
    return theta

  def _generic_scan(self, xt, carry, seq_lengths):
    """Scans an arbitrary cell, as flax.linen.RNN does (no hoisting possible)."""
    if seq_lengths is None:
      valid = None
    else:
      valid = (
          jnp.arange(xt.shape[0]).reshape((-1,) + (1,) * seq_lengths.ndim) < seq_lengths
      )

    def body(cell, c, inputs):
      x_k, v_k = inputs
      new_c, y = cell(c, x_k)
      if v_k is None:
        return new_c, y
      keep = lambda new, old: jnp.where(v_k[..., None], new, old)
      new_c = jax.tree.map(keep, new_c, c)
      y = jnp.where(v_k[..., None], y, jnp.zeros_like(y))
      return new_c, y

    scan = nn.scan(
        body,
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=0,
        out_axes=0,
        unroll=self.unroll,
    )
    return scan(self.cell, carry, (xt, valid))


def _check_head(where: str, cell, count_name: str, count) -> None:
  """A head's fields, at its first use: an RNNCellBase cell and a positive-int count."""
  if not isinstance(cell, nn.RNNCellBase):
    raise TypeError(
        f"{where}: cell must be a flax.linen.RNNCellBase, got {type(cell).__name__}."
    )
  check_positive_int(where, count_name, count)


def _states_shape(where: str, hidden_states) -> tuple:
  shape = jnp.shape(hidden_states)
  if len(shape) < 2:
    raise ValueError(
        f"{where}: hidden_states must have shape (*batch, T, n), got shape {shape}."
    )
  return shape


def _real_dtype(dtype):
  """The real dtype of a complex one (complex64 -> float32); None and real dtypes unchanged."""
  try:
    d = jnp.dtype(dtype) if dtype is not None else None
  except TypeError:  # not a dtype: passed on as is, for the cell's own check to name it
    return dtype
  return jnp.finfo(d).dtype if d is not None and jnp.issubdtype(d, jnp.complexfloating) else dtype


def _readout_dtypes(cell) -> dict:
  """``dtype`` / ``param_dtype`` of a head's real read-out layer: the cell's, made real."""
  return {"dtype": _real_dtype(getattr(cell, "dtype", None)),
          "param_dtype": _real_dtype(getattr(cell, "param_dtype", jnp.float32))}


def real_features(hidden_states):
  """The heads' real read-out features: ``[Re h, Im h]`` ``(..., 2n)`` of complex states
  ``(..., n)`` (a complex cell, e.g. :class:`~urnn_jax.UnitaryRNNCell`); real states unchanged."""
  if jnp.iscomplexobj(hidden_states):
    return jnp.concatenate([jnp.real(hidden_states), jnp.imag(hidden_states)], axis=-1)
  return hidden_states


def _complex_readout_error(where: str) -> ValueError:
  return ValueError(
      f"{where}: the cell is complex, and the head reads it out from [Re h, Im h] with a real"
      " layer, which is not eq. (1)'s complex read-out y = C h; there are no RNNParams with"
      " that C (use model.apply(variables, method=lambda m: m.rnn.rnn_params()) for the"
      " recurrent part of a complex eq. (1) cell)."
  )


class SequenceRegressor(nn.Module):
  """Sequence-to-sequence regression, y(k) = C h(k) (the paper's Figs 2 and 3).

  With an eq. (1) cell this is exactly the paper's model; its parameters
  convert to and from :class:`~urnn_jax.RNNParams` with :func:`to_rnn_params`
  (or ``model.apply(variables, method="rnn_params")``) and
  :func:`from_rnn_params`.

  Methods (all usable as ``model.apply(variables, ..., method=name)``):
  ``__call__(x, *, seq_lengths=None)`` = ``outputs_from_states(
  hidden_states(x, seq_lengths=seq_lengths))``;
  ``hidden_states(x, *, seq_lengths=None)``: the states ``(*batch, T, n)``;
  ``outputs_from_states(hidden_states, *, seq_lengths=None)``: the read-out
  y(k) = C h(k) (+ bias) for every step (``seq_lengths`` is accepted for a
  signature shared with :class:`LastStateClassifier` and unused: the states
  past a sequence's end are already zero); ``rnn_params()`` (with C = the
  read-out; the recurrent part alone, C = I, whatever the read-out:
  ``model.apply(variables, method=lambda m: m.rnn.rnn_params())``).

  A complex cell (e.g. :class:`~urnn_jax.UnitaryRNNCell`) is read out from
  ``[Re h, Im h]`` (:func:`real_features`) by a real read-out, so the
  outputs are real; ``hidden_states`` stays complex, and ``rnn_params``
  raises ValueError (that read-out is not eq. (1)'s y = C h).

  Attributes:
    cell: the recurrent cell (a ``flax.linen.RNNCellBase``).
    out_features: p, a positive int.
    use_bias: add a bias to the read-out (the paper has none).
    learn_initial_carry: learn h(-1).
    unroll: scan unroll.
    custom_gradient: see :class:`Recurrent` (``False`` for forward mode).

  The fields are checked at the first call (``init``): TypeError for a
  non-cell or a non-int ``out_features``, ValueError below 1. ``seq_lengths``
  is checked as in :class:`Recurrent` (integers in ``[0, T]`` when concrete).
  """

  cell: nn.RNNCellBase
  out_features: int
  use_bias: bool = False
  learn_initial_carry: bool = False
  unroll: int = 1
  custom_gradient: bool = True

  def setup(self):
    _check_head("SequenceRegressor", self.cell, "out_features", self.out_features)
    # Submodule names (and so the parameter tree) are "rnn" and "readout".
    self.rnn = Recurrent(
        self.cell.clone(parent=None),
        learn_initial_carry=self.learn_initial_carry,
        unroll=self.unroll,
        custom_gradient=self.custom_gradient,
    )
    self.readout = nn.Dense(self.out_features, use_bias=self.use_bias,
                            **_readout_dtypes(self.cell))

  def __call__(self, x, *, seq_lengths=None):
    return self.outputs_from_states(self.hidden_states(x, seq_lengths=seq_lengths))

  def hidden_states(self, x, *, seq_lengths=None):
    """The recurrent layer's states h(k), ``(*batch, T, n)``."""
    return self.rnn(x, seq_lengths=seq_lengths)

  def outputs_from_states(self, hidden_states, *, seq_lengths=None):
    """The read-out y(k) = C h(k) (+ bias) of states ``(*batch, T, n)``: ``(*batch, T, p)``.

    ``seq_lengths`` is unused (see the class docstring), but checked when given.
    """
    if seq_lengths is not None:
      shape = _states_shape("SequenceRegressor.outputs_from_states", hidden_states)
      check_lengths("SequenceRegressor.outputs_from_states", "seq_lengths", seq_lengths,
                    shape[-2], shape[:-2])
    return self.readout(real_features(hidden_states))

  def rnn_params(self) -> RNNParams:
    """``RNNParams(W, F, b, C, h0)`` with C = the read-out kernel^T.

    Raises:
      ValueError: the read-out has a bias (``use_bias=True``), which eq. (1)
        does not have, or the cell is not an eq. (1) cell.
    """
    if self.use_bias:
      raise ValueError(
          "SequenceRegressor.rnn_params: the read-out has a bias, which eq. (1) does not"
          " have; build the SequenceRegressor with use_bias=False."
      )
    theta = self.rnn.rnn_params()
    if jnp.iscomplexobj(theta.W):
      raise _complex_readout_error("SequenceRegressor.rnn_params")
    c = jnp.asarray(self.readout.variables["params"]["kernel"]).T
    theta = theta._replace(C=c)
    check_params(theta)
    return theta


class LastStateClassifier(nn.Module):
  """Classification from the output at each sequence's last step (Fig. 4).

  Methods (all usable as ``model.apply(variables, ..., method=name)``):
  ``__call__(x, *, seq_lengths=None)`` = ``outputs_from_states(
  hidden_states(x, seq_lengths=seq_lengths), seq_lengths=seq_lengths)``;
  ``hidden_states(x, *, seq_lengths=None)``: the states ``(*batch, T, n)``;
  ``outputs_from_states(hidden_states, *, seq_lengths=None)``: the logits
  from each sequence's last valid state; ``rnn_params()``: the recurrent
  part's eq. (1) parameters with C = I (the classifier head, which reads
  only the last step and has a bias, is not eq. (1)'s C).

  A complex cell (e.g. :class:`~urnn_jax.UnitaryRNNCell`) is classified from
  the real ``[Re h, Im h]`` of its last state (:func:`real_features`) by a
  real head: the logits are real.

  Example:
    >>> import jax, jax.numpy as jnp, urnn_jax
    >>> model = urnn_jax.LastStateClassifier(urnn_jax.UnitaryRNNCell(8), num_classes=3)
    >>> x = jnp.ones((2, 6, 1))
    >>> variables = model.init(jax.random.key(0), x)
    >>> variables["params"]["head"]["kernel"].shape   # [Re h, Im h]: 2n rows
    (16, 3)
    >>> model.apply(variables, x).dtype
    dtype('float32')

  Attributes:
    cell: the recurrent cell (a ``flax.linen.RNNCellBase``).
    num_classes: number of logits, a positive int.
    unroll: scan unroll.
    custom_gradient: see :class:`Recurrent` (``False`` for forward mode).

  Input checks: the fields at the first call (``init``): TypeError for a
  non-cell or a non-int ``num_classes``, ValueError below 1. A sequence needs
  a last step: T = 0 raises ValueError, and ``seq_lengths`` must be integers
  in ``[1, T]`` (ValueError for concrete values outside; TypeError for
  non-integers). Under ``jit`` traced lengths cannot be checked (that would
  need ``jax.experimental.checkify``): a length below 1 then reads a zero
  state (the layer outputs zeros for an empty sequence), so the logits are
  the head's bias, and one above T reads the last step's state.
  """

  cell: nn.RNNCellBase
  num_classes: int
  unroll: int = 1
  custom_gradient: bool = True

  def setup(self):
    _check_head("LastStateClassifier", self.cell, "num_classes", self.num_classes)
    # Submodule names (and so the parameter tree) are "rnn" and "head".
    self.rnn = Recurrent(self.cell.clone(parent=None), unroll=self.unroll,
                         custom_gradient=self.custom_gradient)
    self.head = nn.Dense(self.num_classes, **_readout_dtypes(self.cell))

  def __call__(self, x, *, seq_lengths=None):
    shape = jnp.shape(x)
    if len(shape) >= 2 and shape[-2] == 0:
      raise ValueError(
          f"LastStateClassifier: x has T = 0 time steps (shape {shape}); the classifier reads"
          " each sequence's last step, so it needs T >= 1."
      )
    if seq_lengths is not None and len(shape) >= 2:  # named here, with the classifier's range
      seq_lengths = check_lengths("LastStateClassifier", "seq_lengths", seq_lengths, shape[-2],
                                  shape[:-2], minimum=1)
    hs = self.hidden_states(x, seq_lengths=seq_lengths)
    return self.outputs_from_states(hs, seq_lengths=seq_lengths)

  def hidden_states(self, x, *, seq_lengths=None):
    """The recurrent layer's states h(k), ``(*batch, T, n)``."""
    return self.rnn(x, seq_lengths=seq_lengths)

  def outputs_from_states(self, hidden_states, *, seq_lengths=None):
    """Logits ``(*batch, num_classes)`` from the state at each sequence's last valid step.

    ``seq_lengths``: integers in ``[1, T]`` (see the class docstring).
    """
    where = "LastStateClassifier.outputs_from_states"
    hs = hidden_states
    shape = _states_shape(where, hs)
    if shape[-2] == 0:
      raise ValueError(
          f"{where}: hidden_states have T = 0 time steps (shape {shape}); there is no last"
          " step to classify from (T >= 1 needed)."
      )
    if seq_lengths is None:
      last = hs[..., -1, :]
    else:
      seq_lengths = check_lengths(where, "seq_lengths", seq_lengths, shape[-2], shape[:-2],
                                  minimum=1)
      idx = jnp.clip(seq_lengths - 1, 0, hs.shape[-2] - 1)  # traced lengths: clamped
      last = jnp.take_along_axis(hs, idx[..., None, None], axis=-2)[..., 0, :]
    return self.head(real_features(last))

  def rnn_params(self) -> RNNParams:
    """The recurrent part's ``RNNParams(W, F, b, C=I, h0=0)`` (see the class docstring).

    Raises:
      ValueError: the cell is not an eq. (1) cell.
    """
    return self.rnn.rnn_params()


def _unwrap(variables) -> dict:
  variables = dict(variables)
  return dict(variables["params"]) if "params" in variables else variables


def _contains_key(tree, key: str) -> bool:
  if not hasattr(tree, "items"):
    return False
  return any(k == key or _contains_key(v, key) for k, v in tree.items())


def _apply_rnn_params(variables, model: nn.Module) -> RNNParams:
  variables = dict(variables)
  if "params" not in variables:
    variables = {"params": variables}
  if _contains_key(variables["params"], "recurrent_generator") and "constants" not in variables:
    raise ValueError(
        "to_rnn_params: the cell is parametrised (W = base @ map(skew(A))), and its base"
        " lives in the 'constants' collection: pass the full variables"
        " {'params': ..., 'constants': ...}."
    )
  if isinstance(model, nn.RNN):  # flax's layer: the cell's variables are under 'cell'.
    model = model.cell
    variables = {col: tree["cell"] for col, tree in variables.items() if "cell" in tree}
  if not callable(getattr(model, "rnn_params", None)):
    raise _not_eq1_error("to_rnn_params", model)
  return model.apply(variables, method="rnn_params")


def to_rnn_params(variables, model: nn.Module | None = None) -> RNNParams:
  """RNNParams (W, F, b, C, h0) of an eq. (1) model's variables.

  With ``model`` (the module the variables belong to: a
  :class:`SequenceRegressor`, :class:`LastStateClassifier`,
  :class:`Recurrent`, ``flax.linen.RNN`` of an eq. (1) cell, or the cell
  itself), this is ``model.apply(variables, method="rnn_params")``: W comes
  from the cell's own ``transition_kernel``, so every eq. (1) cell works,
  parametrised ones (``OrthogonalRNNCell(parametrization="expm"/"cayley")``)
  included; pass the full variables ``{'params': ..., 'constants': ...}``.
  C is the regressor's read-out kernel^T, or I for the other models (no
  eq. (1) read-out); h0 is the learned ``initial_carry``, or zeros.

  Without ``model`` the parameter tree is read directly: the variables of a
  ``SequenceRegressor``, ``Recurrent`` or ``flax.linen.RNN`` whose cell has a
  free ``recurrent_kernel`` (:class:`RNNCell`, unparametrised
  :class:`OrthogonalRNNCell`).

  The activation, and any parameters of it, are not part of Theta.

  Raises:
    ValueError: the read-out has a bias; the cell is not an eq. (1) cell
      (e.g. an LSTM); a parametrised cell without ``model`` or without its
      ``constants``; a tree of no known layout.
  """
  if model is not None:
    return _apply_rnn_params(variables, model)
  p = _unwrap(variables)
  readout = p.get("readout")
  if readout is not None and "bias" in readout:
    raise ValueError(
        "to_rnn_params: the read-out has a bias, which eq. (1) does not have;"
        " build the SequenceRegressor with use_bias=False."
    )
  rnn = p.get("rnn", p)
  cell = rnn.get("cell")
  if cell is not None and "recurrent_generator" in cell:
    raise ValueError(
        "to_rnn_params: the cell is parametrised (W = base @ map(skew(A)), a"
        " 'recurrent_generator' instead of a 'recurrent_kernel'); pass the model so that W"
        " is computed by the cell's own transition_kernel: to_rnn_params(variables, model),"
        " with the full variables {'params': ..., 'constants': ...}."
    )
  if cell is None or "recurrent_kernel" not in cell:
    raise ValueError(
        "to_rnn_params: expected params of a SequenceRegressor/Recurrent/"
        "flax.linen.RNN with an RNNCell or OrthogonalRNNCell (a 'cell' holding"
        f" 'input' and 'recurrent_kernel'); got top-level keys {sorted(p)}. For other"
        " eq. (1) cells pass the model: to_rnn_params(variables, model)."
    )
  k = jnp.asarray(cell["recurrent_kernel"])
  if readout is not None and jnp.iscomplexobj(k):
    raise _complex_readout_error("to_rnn_params")
  n = k.shape[-1]
  w = k.T
  f = jnp.asarray(cell["input"]["kernel"]).T
  b = jnp.asarray(cell["input"]["bias"])
  c = jnp.asarray(readout["kernel"]).T if readout is not None else jnp.eye(n, dtype=k.dtype)
  h0 = rnn.get("initial_carry", jnp.zeros((n,), k.dtype))
  params = RNNParams(w, f, b, c, jnp.asarray(h0))
  check_params(params)
  return params


def from_rnn_params(params: RNNParams, *, learn_initial_carry: bool | None = None) -> dict:
  """Variables ``{'params': ...}`` for ``SequenceRegressor(RNNCell(n), p)``.

  ``h0`` is stored as the learnable ``initial_carry``; pass
  ``learn_initial_carry=True`` to the regressor when h0 is nonzero (by
  default it is included only when h0 != 0, and then the regressor must be
  built with ``learn_initial_carry=True``). Integer or boolean fields become
  floating (:func:`urnn_jax.rnn.floating_dtype` of all fields).
  """
  check_params(params)
  dtype = floating_dtype(*params)
  params = RNNParams(*(as_floating(v, dtype) for v in params))
  rnn: dict[str, Any] = {
      "cell": {
          "input": {"kernel": params.F.T, "bias": params.b},
          "recurrent_kernel": params.W.T,
      }
  }
  if learn_initial_carry is None:
    learn_initial_carry = bool(np.any(np.asarray(params.h0) != 0))
  if learn_initial_carry:
    rnn["initial_carry"] = params.h0
  return {"params": {"rnn": rnn, "readout": {"kernel": params.C.T}}}
