r"""Gated recurrent cells with an orthogonal recurrent matrix: :class:`UnitaryGRUCell`.

The unitary GRU (uGRU, seed 002's language-modelling table) is flax's
:class:`flax.linen.GRUCell` with the candidate state's recurrent matrix kept
orthogonal. With x the input and h the previous state (column vectors):

.. math::

    r  &= \sigma(W_{ir} x + b_{ir} + W_{hr} h)                    \\
    z  &= \sigma(W_{iz} x + b_{iz} + W_{hz} h)                    \\
    n  &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn}))   \\
    h' &= (1 - z) \odot n + z \odot h

exactly flax's ``GRUCell`` (``gate_fn`` = sigmoid and ``activation_fn`` =
tanh by default), with :math:`W_{hn}` orthogonal. The gate matrices
:math:`W_{hr}, W_{hz}` are free by default (``orthogonal_gates=False``): a
gate's job is to open and close, and an orthogonal gate matrix would not
bound any gradient path (the candidate path is the one through which the
state is multiplied step after step, once the gates are open); with
``orthogonal_gates=True`` they are orthogonal too, kept the same way.

How W is kept orthogonal (the same two ways as
:class:`~urnn_jax.OrthogonalRNNCell`):

* ``parametrization=None`` (default): each orthogonal matrix is a free leaf
  named ``recurrent_kernel``, initialised Haar, and kept on the group by an
  optimiser-side constraint in one line,
  ``urnn_jax.optim.constrained(tx, urnn_jax.optim.orthogonal_projection())``
  (the default match: every leaf whose last key is ``recurrent_kernel``).
* ``parametrization="expm"`` or ``"cayley"``: a free ``recurrent_generator``
  A and a non-trainable ``constants`` base, K = base @ map(skew(A)),
  orthogonal for every A (expRNN style); any optimiser works.

Parameter layout (row-vector / flax convention, K = W^T)::

    params:
      input:     {kernel (m, 3n), bias (3n,)}  # [W_ir | W_iz | W_in]^T, [b_ir | b_iz | b_in]
      candidate: {recurrent_kernel (n, n), bias (n,)}  # W_hn^T, b_hn
      gate_kernel: (n, 2n)                     # [W_hr | W_hz]^T   (orthogonal_gates=False)
      reset:  {recurrent_kernel (n, n)}        # W_hr^T            (orthogonal_gates=True)
      update: {recurrent_kernel (n, n)}        # W_hz^T            (orthogonal_gates=True)

With a parametrisation ``recurrent_kernel`` becomes ``recurrent_generator``
and each such sub-module has a ``constants`` variable ``base``. So the
default constraint finds ``candidate/recurrent_kernel`` (and, with
``orthogonal_gates``, ``reset/recurrent_kernel`` and
``update/recurrent_kernel``); ``gate_kernel`` is never matched, and
:func:`urnn_jax.optim.scale_recurrent` (the binaries'
``--recurrent_learning_rate``) scales the same leaves the constraint sees.
:func:`params_from_flax_gru` converts a flax ``GRUCell``'s parameters.

The fast path: :class:`HoistableGatedCell`
-------------------------------------------

:class:`urnn_jax.Recurrent` runs a :class:`HoistableGatedCell` with the
input projections of all gates for all steps in ONE matmul before the loop
(``project_inputs``), the loop-invariant recurrent weights built once per
call (``recurrent_weights``; a parametrised W is evaluated here, outside the
loop), and a ``lax.scan`` whose body is only the recurrent part
(``step_fn``): for the GRU, one ``h @ [K_r | K_z | K_n]`` matmul and the
elementwise gates. The gradient is plain autodiff through ``lax.scan``.
A third-party gated cell gets the fast path by deriving from
:class:`HoistableGatedCell` and providing:

* ``project_inputs(x)``: ``(..., m) -> (..., G)``, every gate's input part
  (input biases included), all leading axes at once;
* ``recurrent_weights()``: a pytree of the loop-invariant weights;
* ``step_fn`` (a property): a *pure* function ``(weights, carry, z_k) ->
  (carry, output)`` (it must not touch the module: it runs inside
  ``lax.scan``);
* ``initialize_carry(rng, input_shape)``.

It then inherits ``__call__(carry, inputs)`` (one step, built from the same
pieces, so ``flax.linen.RNN(cell)`` and the fast path agree).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from urnn_jax import initializers as inits
from urnn_jax import orthogonal

Initializer = Callable[..., jax.Array]
PARAMETRIZATIONS = ("expm", "cayley")


class HoistableGatedCell(nn.RNNCellBase):
  """Base class of the gated cells :class:`urnn_jax.Recurrent` runs on its fast path.

  A subclass implements ``project_inputs(x)``, ``recurrent_weights()``,
  ``step_fn`` and ``initialize_carry(rng, input_shape)`` (see the module
  docstring); this class provides ``__call__`` (one step) and
  ``num_feature_axes``.
  """

  def project_inputs(self, x: jax.Array) -> jax.Array:
    """Every gate's input projection, ``(..., m) -> (..., G)``, in one matmul."""
    raise NotImplementedError(
        f"{type(self).__name__}: a HoistableGatedCell must implement project_inputs.")

  def recurrent_weights(self) -> Any:
    """The loop-invariant recurrent weights (a pytree), built once per layer call."""
    raise NotImplementedError(
        f"{type(self).__name__}: a HoistableGatedCell must implement recurrent_weights.")

  @property
  def step_fn(self) -> Callable[[Any, Any, jax.Array], tuple[Any, jax.Array]]:
    """A pure ``(weights, carry, z_k) -> (carry, output)``: the loop body."""
    raise NotImplementedError(
        f"{type(self).__name__}: a HoistableGatedCell must define step_fn.")

  def __call__(self, carry, inputs):
    """One step: ``step_fn(recurrent_weights(), carry, project_inputs(inputs))``."""
    return self.step_fn(self.recurrent_weights(), carry, self.project_inputs(inputs))

  @property
  def num_feature_axes(self) -> int:
    return 1


def gated_recurrence(step_fn, weights, z, initial_carry, *, lengths=None, time_major: bool = False,
                     unroll: int = 1):
  """Scans ``step_fn`` over the projected inputs ``z``; returns ``(carry, outputs)``.

  Args:
    step_fn: ``(weights, carry, z_k) -> (carry, output)``, pure.
    weights: the loop-invariant weights (closed over, not scanned).
    z: ``(*batch, T, G)`` (``time_major``: ``(T, *batch, G)``) input projections.
    initial_carry: the carry pytree, leaves ``(*batch, n)``.
    lengths: optional int ``(*batch,)``: past a sequence's end the carry is
      frozen and the outputs are zero (as :class:`urnn_jax.Recurrent`'s other paths).
    time_major: the layout of ``z`` and of the returned outputs.
    unroll: ``lax.scan`` unroll factor.
  """
  zt = z if time_major else jnp.moveaxis(z, -2, 0)  # (T, *batch, G)
  if lengths is None:
    def body(carry, z_k):
      return step_fn(weights, carry, z_k)

    carry, ys = lax.scan(body, initial_carry, zt, unroll=unroll)
  else:
    lengths = jnp.asarray(lengths)
    valid = jnp.arange(zt.shape[0]).reshape((-1,) + (1,) * lengths.ndim) < lengths

    def body(carry, inputs):
      z_k, v_k = inputs
      new, y = step_fn(weights, carry, z_k)
      new = jax.tree.map(lambda a, b: jnp.where(v_k[..., None], a, b), new, carry)
      return new, jnp.where(v_k[..., None], y, jnp.zeros_like(y))

    carry, ys = lax.scan(body, initial_carry, (zt, valid), unroll=unroll)
  return carry, (ys if time_major else jnp.moveaxis(ys, 0, -2))


class _OrthogonalMatrix(nn.Module):
  """One orthogonal ``(n, n)`` kernel: a constrained ``recurrent_kernel``, or
  ``base @ map(skew(recurrent_generator))`` with ``base`` in ``constants``;
  with ``use_bias``, also a free ``bias`` (n,)."""

  features: int
  parametrization: str | None
  kernel_init: Initializer
  generator_init: Initializer
  bias_init: Initializer
  use_bias: bool = False
  param_dtype: Any = jnp.float32

  def setup(self):
    shape = (self.features, self.features)
    if self.parametrization is None:
      self.recurrent_kernel = self.param("recurrent_kernel", self.kernel_init, shape, self.param_dtype)
    else:
      self.recurrent_generator = self.param("recurrent_generator", self.generator_init, shape,
                                            self.param_dtype)
      self.base = self.variable(
          "constants", "base", lambda: self.kernel_init(self.make_rng("params"), shape, self.param_dtype))
    if self.use_bias:
      self.bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)

  def __call__(self):
    if self.parametrization is None:
      return self.recurrent_kernel
    a = orthogonal.skew(self.recurrent_generator)
    m = orthogonal.expm_skew(a) if self.parametrization == "expm" else orthogonal.cayley(a)
    return self.base.value @ m

  def get_bias(self):
    return self.bias


def stacked_orthogonal(blocks: int, base: Initializer | None = None) -> Initializer:
  """An initialiser of an ``(n, blocks * n)`` kernel: ``blocks`` independent
  orthogonal ``(n, n)`` blocks side by side (flax's GRU gates, one block each)."""
  base = inits.haar() if base is None else base

  def init(key, shape, dtype=jnp.float32):
    n = shape[0]
    if len(shape) != 2 or shape[1] != blocks * n:
      raise ValueError(f"stacked_orthogonal({blocks}): expected shape (n, {blocks} n), got {shape}.")
    keys = jax.random.split(key, blocks)
    return jnp.concatenate([base(k, (n, n), dtype) for k in keys], axis=1)

  return init


def _gru_step(gate_fn, activation_fn, weights, h, zx):
  """One GRU step given the input projections ``zx = [x_r | x_z | x_n]`` (biases in)."""
  n = h.shape[-1]
  hk = h @ weights["kernel"]  # (..., 3n): [W_hr h | W_hz h | W_hn h], one matmul
  r = gate_fn(zx[..., :n] + hk[..., :n])
  u = gate_fn(zx[..., n:2 * n] + hk[..., n:2 * n])
  c = activation_fn(zx[..., 2 * n:] + r * (hk[..., 2 * n:] + weights["candidate_bias"]))
  h = (1.0 - u) * c + u * h
  return h, h


class UnitaryGRUCell(HoistableGatedCell):
  r"""flax's GRU with the candidate recurrent matrix W_hn orthogonal (see the module docstring).

  Attributes:
    features: hidden size n.
    gate_fn: the gates' function (default sigmoid), as flax's ``GRUCell``.
    activation_fn: the candidate's function (default tanh).
    kernel_init: initialiser of the input kernel ``(m, 3n)`` (lecun_normal:
      the same distribution as flax's three ``(m, n)`` input kernels).
    recurrent_kernel_init: initialiser of the orthogonal matrices (and of
      the bases with a parametrisation); default Haar.
    gate_kernel_init: initialiser of the free gate kernel ``(n, 2n)``;
      default two orthogonal blocks (flax's default for ``hr``, ``hz``).
    bias_init: initialiser of the biases (zeros).
    carry_init: initialiser of the carry (zeros).
    parametrization: ``None`` (constraint), ``"expm"`` or ``"cayley"``.
    generator_init: initialiser of the generators A (zeros: W starts at the base).
    orthogonal_gates: also keep W_hr and W_hz orthogonal.
    dtype, param_dtype: as in flax.

  With a parametrisation, ``flax.linen.RNN`` must also broadcast the
  ``constants`` collection: ``nn.RNN(cell, variable_broadcast=("params",
  "constants"))`` (:class:`urnn_jax.Recurrent` needs nothing).

  Example:
    >>> import jax, jax.numpy as jnp, optax, urnn_jax
    >>> layer = urnn_jax.Recurrent(urnn_jax.UnitaryGRUCell(8))
    >>> x = jnp.ones((4, 20, 3))
    >>> params = layer.init(jax.random.key(0), x)["params"]
    >>> layer.apply({"params": params}, x).shape
    (4, 20, 8)
    >>> labels = urnn_jax.optim.recurrent_kernel_labels(params)["cell"]  # what the constraint sees
    >>> labels["candidate"], labels["gate_kernel"]
    ({'bias': 'free', 'recurrent_kernel': 'constrained'}, 'free')
    >>> tx = urnn_jax.optim.constrained(optax.adam(1e-3), urnn_jax.optim.orthogonal_projection())
  """

  features: int
  gate_fn: Callable[..., Any] = jax.nn.sigmoid
  activation_fn: Callable[..., Any] = jnp.tanh
  kernel_init: Initializer = nn.initializers.lecun_normal()
  recurrent_kernel_init: Initializer = inits.haar()
  gate_kernel_init: Initializer | None = None
  bias_init: Initializer = nn.initializers.zeros_init()
  carry_init: Initializer = nn.initializers.zeros_init()
  parametrization: str | None = None
  generator_init: Initializer = nn.initializers.zeros_init()
  orthogonal_gates: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def setup(self):
    if not isinstance(self.features, int) or isinstance(self.features, bool) or self.features < 1:
      raise ValueError(f"UnitaryGRUCell: features must be a positive int, got {self.features!r}.")
    if self.parametrization is not None and self.parametrization not in PARAMETRIZATIONS:
      raise ValueError(
          f"UnitaryGRUCell: parametrization={self.parametrization!r} is not supported; expected None"
          f" or one of {PARAMETRIZATIONS}.")
    if not isinstance(self.orthogonal_gates, bool):
      raise TypeError(f"UnitaryGRUCell: orthogonal_gates must be a bool, got {self.orthogonal_gates!r}.")
    n = self.features
    self.input = nn.Dense(3 * n, kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="input")
    ortho = functools.partial(_OrthogonalMatrix, n, self.parametrization, self.recurrent_kernel_init,
                              self.generator_init, self.bias_init, param_dtype=self.param_dtype)
    self.candidate = ortho(use_bias=True, name="candidate")
    if self.orthogonal_gates:
      self.reset = ortho(name="reset")
      self.update = ortho(name="update")
    else:
      init = stacked_orthogonal(2) if self.gate_kernel_init is None else self.gate_kernel_init
      self.gate_kernel = self.param("gate_kernel", init, (n, 2 * n), self.param_dtype)

  def project_inputs(self, x: jax.Array) -> jax.Array:
    """``[x W_ir^T + b_ir | x W_iz^T + b_iz | x W_in^T + b_in]``, ``(..., 3n)``, one matmul."""
    return self.input(x)

  def transition_matrices(self) -> dict:
    """The orthogonal kernels K = W^T by name: ``candidate`` (and ``reset``, ``update``)."""
    out = {"candidate": self.candidate()}
    if self.orthogonal_gates:
      out.update(reset=self.reset(), update=self.update())
    return out

  def recurrent_weights(self) -> dict:
    """``{"kernel": [K_r | K_z | K_n] (n, 3n), "candidate_bias": b_hn}``, built once per call."""
    k_n = self.candidate()
    gates = (jnp.concatenate([self.reset(), self.update()], axis=1) if self.orthogonal_gates
             else self.gate_kernel)
    kernel = jnp.concatenate([gates, k_n], axis=1)
    bias = self.candidate.get_bias()
    if self.dtype is not None:
      kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    return {"kernel": kernel, "candidate_bias": bias}

  @property
  def step_fn(self):
    return functools.partial(_gru_step, self.gate_fn, self.activation_fn)

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """A zero (by ``carry_init``) state of shape ``input_shape[:-1] + (features,)``."""
    return self.carry_init(rng, tuple(input_shape[:-1]) + (self.features,), self.param_dtype)


def params_from_flax_gru(flax_params: dict) -> dict:
  """A flax ``GRUCell``'s parameters (``ir, iz, in, hr, hz, hn``) in
  :class:`UnitaryGRUCell`'s layout (``orthogonal_gates=False``, no
  parametrisation). The same function; W_hn is orthogonal only if flax's was
  (its default initialiser is orthogonal)."""
  p = flax_params.get("params", flax_params)
  gates = ("ir", "iz", "in")
  return {
      "input": {"kernel": jnp.concatenate([p[g]["kernel"] for g in gates], axis=1),
                "bias": jnp.concatenate([p[g]["bias"] for g in gates])},
      "candidate": {"recurrent_kernel": p["hn"]["kernel"], "bias": p["hn"]["bias"]},
      "gate_kernel": jnp.concatenate([p["hr"]["kernel"], p["hz"]["kernel"]], axis=1),
  }
