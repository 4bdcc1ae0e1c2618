"""Flax linen cells for the paper's RNN (eq. 1) and its unitary version.

The cells follow :class:`flax.linen.RNNCellBase`, so ``flax.linen.RNN(cell)``
works unchanged.

The fast-cell protocol: :class:`HoistableCell`
-----------------------------------------------

:class:`urnn_jax.Recurrent` runs a cell through its fast path (all
loop-invariant work hoisted out of the loop, the loop itself in
:func:`urnn_jax.rnn.recurrence` with its memory-light custom VJP) exactly when
the cell is an instance of :class:`HoistableCell`. Deriving from it is the
cell's promise that one step is

    h(k) = phi(h(k-1) K + x(k) F^T + b [, p]),

i.e. that its step is nothing but the composition of the pieces below (the
fast path never calls the cell's ``__call__``). A third-party cell gets the
fast path by deriving from :class:`HoistableCell` (not from :class:`RNNCell`)
and providing:

* ``project_inputs(x, *, custom_gradient=False, separate_bias=False)``
  (required): the input part of the pre-activation for every step at once,
  ``x`` being ``(..., m)`` with any leading axes (the layer passes the whole
  ``(*batch, T, m)`` or ``(T, *batch, m)`` sequence). With
  ``separate_bias=False`` it returns ``x F^T + b`` ``(..., n)``; with
  ``separate_bias=True`` the pair ``(x F^T, b)`` with ``b`` of shape ``(n,)``
  or ``None`` (what the layer asks for: it adds ``b`` inside the loop).
  ``custom_gradient`` is a hint that the result is only differentiated in
  reverse mode (so :func:`urnn_jax.rnn.project_rows` may be used); a cell may
  ignore it.
* ``transition_kernel()`` (required): the ``(n, n)`` recurrent kernel
  K = W^T in the row-vector convention, built once per layer call (a
  parametrisation such as K = base @ expm(skew(A)) is evaluated here, outside
  the loop).
* ``activation_fn`` (required, a property or attribute): phi, an elementwise
  callable ``phi(a)``, or ``phi(a, p)`` when ``activation_params()`` returns
  parameters. A *named* activation's function (``urnn_jax.ACTIVATIONS``, e.g.
  ``get_activation("relu")``) gets the closed-form derivative from the saved
  states; any other callable is differentiated by its own ``jax.vjp``.
* ``activation_params()`` (optional; default ``None``): a pytree ``p`` of
  the activation's parameters (e.g. a learned per-unit modReLU bias, declared
  with ``self.param`` in ``setup``). When it is not ``None`` the activation is
  called as ``activation_fn(a, p)`` and ``p`` is a differentiable input of the
  recurrence's custom VJP (see :func:`urnn_jax.recurrence`).
* ``initialize_carry(rng, input_shape)`` (required by
  :class:`flax.linen.RNNCellBase`): the ``input_shape[:-1] + (n,)`` state.
* ``supports_complex`` (optional; default ``False``): the complex hook. A
  real cell (the default) gets a TypeError for complex inputs, states or
  parameters, in :class:`urnn_jax.Recurrent` and in its own step; a complex
  cell opts in by setting ``supports_complex = True`` (a class attribute, or a
  property), and its activation must accept complex numbers too
  (:func:`urnn_jax.rnn.supports_complex`: not relu, leaky_relu or abs).

:class:`HoistableCell` supplies ``__call__(carry, inputs)`` (one step, built
from the same pieces, so ``flax.linen.RNN(cell)`` and the layer's generic
path agree with the fast path) and ``num_feature_axes = 1``. Declare the
parameters in ``setup``: the layer calls ``project_inputs``,
``transition_kernel`` and ``activation_params`` as separate methods.

Cells that also follow eq. (1) literally (``project_inputs`` affine, no
activation parameters) may define ``rnn_params()`` returning
:class:`urnn_jax.RNNParams` with C = I, h0 = 0 (as :class:`RNNCell` and
:class:`OrthogonalRNNCell` do); :func:`urnn_jax.to_rnn_params` and the
layers' ``rnn_params()`` use it.

Input checks (see :mod:`urnn_jax.rnn`): the eq. (1) cells check their fields
at their first use, ``setup`` or ``initialize_carry`` (``features`` a
positive int, a known activation, a floating or complex ``param_dtype`` /
``dtype``, a known parametrisation), before any shape is built from them,
so a bad cell fails with the field's name. Integer or boolean
inputs (and integer variables) are promoted to floating, never run as
integers. A cell is complex exactly when its ``param_dtype`` or ``dtype`` is;
a real cell rejects complex inputs, carries and variables (TypeError), and a
real-only activation (relu, leaky_relu, abs) applied to complex numbers
raises TypeError when the cell is applied (``cell.init``, which only creates
the parameters, does not check the activation).

Parameter layout (row-vector / Flax convention)::

    {'input': {'kernel': (m, n), 'bias': (n,)}, 'recurrent_kernel': (n, n)}

so ``F = input.kernel.T`` and ``W = recurrent_kernel.T`` in the paper's
notation. The orthogonality constraints in :mod:`urnn_jax.optim` find the
transition matrices by the leaf name ``recurrent_kernel``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from urnn_jax import initializers as inits
from urnn_jax import orthogonal
from urnn_jax.rnn import (Activation, RNNParams, as_floating, check_complex, check_params,
                          check_positive_int, floating_dtype, get_activation, project_rows)

Initializer = Callable[..., jax.Array]

PARAMETRIZATIONS = ("expm", "cayley")


class _InputProjection(nn.Module):
  """x F^T + b: ``nn.Dense``'s parameters (``kernel`` (m, n), ``bias`` (n,)) and values.

  With ``custom_gradient`` the matmul is :func:`urnn_jax.rnn.project_rows`,
  whose kernel gradient is computed for the hoisted (all steps at once) case.
  """

  features: int
  kernel_init: Initializer
  bias_init: Initializer
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, custom_gradient: bool = False, separate_bias: bool = False):
    kernel = self.param("kernel", self.kernel_init, (jnp.shape(x)[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    # flax's promotion is inexact: integer x (or variables) become floating.
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = project_rows(x, kernel) if custom_gradient else x @ kernel
    return (y, bias) if separate_bias else y + bias


def _checked_step_inputs(cell, carry, inputs, kernel):
  """``(carry, kernel)`` of one step: complex ones checked against the cell (and, once
  the parameters exist, its activation); integer ones promoted. Trace time only."""
  check_complex(type(cell).__name__, {"carry": carry, "inputs": inputs, "the recurrent kernel": kernel},
                cell=cell, activation=None if cell.is_initializing() else cell.activation_fn)
  dtype = floating_dtype(carry, kernel)
  return as_floating(carry, dtype), as_floating(kernel, dtype)


class HoistableCell(nn.RNNCellBase):
  """Base class of the cells that :class:`urnn_jax.Recurrent` runs on its fast path.

  The public fast-cell protocol (see the module docstring for the full
  contract): a subclass implements ``project_inputs(x, *,
  custom_gradient=False, separate_bias=False)``, ``transition_kernel()``,
  ``activation_fn`` and ``initialize_carry(rng, input_shape)``, and may
  override ``activation_params()`` (default ``None``) and
  ``supports_complex`` (default ``False``: a real cell; ``True`` opts in to
  complex inputs, states and parameters). This class has no fields and
  provides ``__call__`` (one step) and ``num_feature_axes``.

  Example (a cell with a learned real modReLU bias,
  phi(a) = sign(a) relu(|a| + b)):

    >>> import jax, jax.numpy as jnp, flax.linen as nn, urnn_jax
    >>> class ModReLUCell(urnn_jax.HoistableCell):
    ...   features: int
    ...   def setup(self):
    ...     self.dense = nn.Dense(self.features)
    ...     self.kernel = self.param("recurrent_kernel", urnn_jax.initializers.haar(),
    ...                              (self.features, self.features))
    ...     self.b = self.param("modrelu_bias", nn.initializers.zeros_init(), (self.features,))
    ...   def project_inputs(self, x, *, custom_gradient=False, separate_bias=False):
    ...     z = self.dense(x)
    ...     return (z, None) if separate_bias else z
    ...   def transition_kernel(self):
    ...     return self.kernel
    ...   @property
    ...   def activation_fn(self):
    ...     return lambda a, b: jnp.sign(a) * jax.nn.relu(jnp.abs(a) + b)
    ...   def activation_params(self):
    ...     return self.b
    ...   @nn.nowrap
    ...   def initialize_carry(self, rng, input_shape):
    ...     return jnp.zeros(tuple(input_shape[:-1]) + (self.features,))
    >>> layer = urnn_jax.Recurrent(ModReLUCell(4))
    >>> v = layer.init(jax.random.key(0), jnp.ones((2, 5, 3)))
    >>> layer.apply(v, jnp.ones((2, 5, 3))).shape
    (2, 5, 4)
  """

  def project_inputs(self, x: jax.Array, *, custom_gradient: bool = False,
                     separate_bias: bool = False):
    """x F^T + b over all leading axes; ``(x F^T, b)`` with ``separate_bias``."""
    raise NotImplementedError(
        f"{type(self).__name__}: a HoistableCell must implement project_inputs.")

  def transition_kernel(self) -> jax.Array:
    """The ``(n, n)`` recurrent kernel K = W^T (row-vector convention)."""
    raise NotImplementedError(
        f"{type(self).__name__}: a HoistableCell must implement transition_kernel.")

  @property
  def activation_fn(self) -> Callable[..., jax.Array]:
    """phi: ``phi(a)``, or ``phi(a, p)`` when ``activation_params()`` is not None."""
    raise NotImplementedError(
        f"{type(self).__name__}: a HoistableCell must define activation_fn.")

  def activation_params(self) -> Any:
    """The activation's parameters (a pytree), or ``None`` (default): phi(a) alone."""
    return None

  @property
  def supports_complex(self) -> bool:
    """Whether the cell runs on complex numbers (the complex hook; default ``False``).

    A real cell's layer and step raise TypeError for complex inputs, carries
    or variables. A complex cell sets ``supports_complex = True`` (or
    overrides this property); its ``activation_fn`` must then accept complex
    numbers (:func:`urnn_jax.rnn.supports_complex`).
    """
    return False

  def __call__(self, carry, inputs):
    """One step: returns ``(h, h)`` with h = phi(carry K + inputs F^T + b [, p])."""
    k = self.transition_kernel()
    carry, k = _checked_step_inputs(self, carry, inputs, k)
    a = carry @ k + self.project_inputs(inputs)
    params = self.activation_params()
    h = self.activation_fn(a) if params is None else self.activation_fn(a, params)
    return h, h

  @property
  def num_feature_axes(self) -> int:
    return 1


class _Eq1Cell(HoistableCell):
  """Shared body of the eq. (1) cells: h' = phi(h K + x F^T + b)."""

  features: int
  activation: Activation = "relu"
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()
  carry_init: Initializer = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def _check(self):
    """The fields' checks: at the cell's first use (``setup`` and ``initialize_carry``,
    which :class:`urnn_jax.Recurrent` calls first), before any shape is built."""
    where = type(self).__name__
    check_positive_int(where, "features", self.features)
    get_activation(self.activation)
    for name in ("param_dtype", "dtype"):
      value = getattr(self, name)
      if value is None and name == "dtype":
        continue
      try:
        dtype = jnp.dtype(value)
      except TypeError:
        dtype = None
      if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
        shown = value if dtype is None else dtype.name
        raise TypeError(
            f"{where}: {name} must be a floating or complex dtype (e.g. jnp.float32), got"
            f" {name}={shown!r}; an integer dtype would run the recurrence in integer arithmetic."
        )

  @property
  def supports_complex(self) -> bool:
    """A complex cell: its ``param_dtype`` or ``dtype`` is complex (see :class:`HoistableCell`)."""
    return any(d is not None and jnp.issubdtype(jnp.dtype(d), jnp.complexfloating)
               for d in (self.param_dtype, self.dtype))

  def setup(self):
    self._check()
    self.input = _InputProjection(
        self.features,
        kernel_init=self.kernel_init,
        bias_init=self.bias_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="input",
    )
    self._setup_recurrent()

  def _setup_recurrent(self):
    raise NotImplementedError

  @property
  def activation_fn(self) -> Callable[[jax.Array], jax.Array]:
    return get_activation(self.activation)

  def project_inputs(self, x: jax.Array, *, custom_gradient: bool = False,
                     separate_bias: bool = False):
    """x F^T + b over all leading axes (all time steps in one matmul).

    ``custom_gradient``: reverse-mode-only VJP tuned for the hoisted
    projection (:func:`urnn_jax.rnn.project_rows`), as :class:`Recurrent` uses it.
    ``separate_bias``: return ``(x F^T, b)`` instead, for a loop that adds
    ``b`` per step (:func:`urnn_jax.recurrence`'s ``bias``), which saves a
    full pass over the projected sequence.
    """
    return self.input(x, custom_gradient, separate_bias)

  def __call__(self, carry, inputs):
    """One step: returns ``(h, h)`` with h = phi(carry K + inputs F^T + b)."""
    k = self.transition_kernel()
    carry, k = _checked_step_inputs(self, carry, inputs, k)
    h = self.activation_fn(carry @ k + self.project_inputs(inputs))
    return h, h

  def rnn_params(self) -> RNNParams:
    """The cell's eq. (1) parameters: ``RNNParams(W, F, b, C=I, h0=0)``.

    W is ``transition_kernel().T``, so a parametrised cell's W = (base @
    map(skew(A)))^T is evaluated here. Use on a bound cell, e.g.
    ``cell.apply(variables, method="rnn_params")`` with the cell's full
    variables (``'params'`` and, for a parametrised cell, ``'constants'``).
    """
    w = self.transition_kernel().T
    inputs = self.input.variables["params"]
    f = jnp.asarray(inputs["kernel"]).T
    b = jnp.asarray(inputs["bias"])
    n = w.shape[-1]
    params = RNNParams(w, f, b, jnp.eye(n, dtype=w.dtype), jnp.zeros((n,), w.dtype))
    check_params(params)
    return params

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """A zero (by ``carry_init``) state of shape ``input_shape[:-1] + (features,)``."""
    self._check()
    return self.carry_init(rng, tuple(input_shape[:-1]) + (self.features,), self.param_dtype)


class RNNCell(_Eq1Cell):
  r"""The paper's RNN cell with a free transition matrix (eq. 1).

  .. math:: h^{(k)} = \phi(W h^{(k-1)} + F x^{(k)} + b)

  Attributes:
    features: hidden size n.
    activation: ``"relu"`` (default), ``"sigmoid"``, ``"tanh"``,
      ``"identity"``, ``"leaky_relu"``, ``"abs"`` or a callable.
    kernel_init: initialiser of the input kernel F^T ``(m, n)``.
    recurrent_kernel_init: initialiser of K = W^T ``(n, n)``; default
      orthogonal (Haar).
    bias_init, carry_init, dtype, param_dtype: as in flax.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, urnn_jax
    >>> cell = urnn_jax.RNNCell(8)
    >>> x = jnp.ones((4, 20, 3))                   # batch, time, features
    >>> rnn = nn.RNN(cell)
    >>> variables = rnn.init(jax.random.key(0), x)
    >>> rnn.apply(variables, x).shape
    (4, 20, 8)
  """

  recurrent_kernel_init: Initializer = inits.haar()

  def _setup_recurrent(self):
    self.recurrent_kernel = self.param(
        "recurrent_kernel",
        self.recurrent_kernel_init,
        (self.features, self.features),
        self.param_dtype,
    )

  def transition_kernel(self):
    k = self.recurrent_kernel
    return k if self.dtype is None else k.astype(self.dtype)


class OrthogonalRNNCell(_Eq1Cell):
  r"""The unitary (orthogonal) RNN cell: eq. (1) with W^T W = I.

  Two ways to keep W orthogonal:

  * ``parametrization=None`` (default): W is a free parameter named
    ``recurrent_kernel``, initialised orthogonal (Haar), and kept orthogonal
    by an optimiser-side constraint, e.g.
    ``urnn_jax.optim.constrained(optax.adam(1e-3), urnn_jax.optim.orthogonal_projection())``
    (the paper's SVD projection after every step).
  * ``parametrization="expm"`` or ``"cayley"``: the cell stores a free matrix
    ``recurrent_generator`` A and uses K = base @ map(skew(A)) (expRNN
    style), which is orthogonal for any A; any optimiser works. ``base`` is
    the orthogonal matrix drawn by ``base_init`` (a non-trainable
    ``constants`` variable, so it can be re-based, dtriv style, with
    :func:`rebase`). A is initialised by ``generator_init`` (default zeros,
    so W starts at ``base``).

  With a parametrisation, ``flax.linen.RNN`` must also broadcast the
  ``constants`` collection: ``nn.RNN(cell, variable_broadcast=("params",
  "constants"))`` (:class:`urnn_jax.Recurrent` needs nothing).

  Attributes:
    features: hidden size n.
    activation: see :class:`RNNCell`.
    recurrent_kernel_init: initialiser of the orthogonal K (no
      parametrisation) and of ``base`` (with a parametrisation); default Haar.
    parametrization: ``None``, ``"expm"`` or ``"cayley"``.
    generator_init: initialiser of A with a parametrisation.
  """

  recurrent_kernel_init: Initializer = inits.haar()
  parametrization: str | None = None
  generator_init: Initializer = nn.initializers.zeros_init()

  def _check(self):
    super()._check()
    if self.parametrization is not None and self.parametrization not in PARAMETRIZATIONS:
      raise ValueError(
          f"OrthogonalRNNCell: parametrization={self.parametrization!r} is not"
          f" supported; expected None or one of {PARAMETRIZATIONS}."
      )

  def _setup_recurrent(self):
    shape = (self.features, self.features)
    if self.parametrization is None:
      self.recurrent_kernel = self.param(
          "recurrent_kernel", self.recurrent_kernel_init, shape, self.param_dtype
      )
      return
    self.recurrent_generator = self.param(
        "recurrent_generator", self.generator_init, shape, self.param_dtype
    )
    self.base = self.variable(
        "constants",
        "base",
        lambda: self.recurrent_kernel_init(self.make_rng("params"), shape, self.param_dtype),
    )

  def transition_kernel(self):
    if self.parametrization is None:
      k = self.recurrent_kernel
    else:
      a = orthogonal.skew(self.recurrent_generator)
      m = orthogonal.expm_skew(a) if self.parametrization == "expm" else orthogonal.cayley(a)
      k = self.base.value @ m
    return k if self.dtype is None else k.astype(self.dtype)


def rebase(cell_params: dict, cell_constants: dict, parametrization: str = "expm"):
  """dtriv re-basing: folds the current generator into the base.

  Returns ``(params, constants)`` with ``base <- base @ map(skew(A))`` and
  ``A <- 0``: the cell's W is unchanged, and the next steps move from the
  new base. Both arguments are the cell's own sub-dicts (the ones holding
  ``recurrent_generator`` and ``base``).
  """
  if parametrization not in PARAMETRIZATIONS:
    raise ValueError(
        f"rebase: parametrization={parametrization!r}; expected one of {PARAMETRIZATIONS}."
    )
  for name, tree, key in (("cell_params", cell_params, "recurrent_generator"),
                          ("cell_constants", cell_constants, "base")):
    if not hasattr(tree, "keys") or key not in tree:
      raise ValueError(
          f"rebase: {name} must be the parametrised cell's own sub-dict holding {key!r}, got"
          f" {sorted(tree) if hasattr(tree, 'keys') else type(tree).__name__}."
      )
  a = orthogonal.skew(cell_params["recurrent_generator"])
  m = orthogonal.expm_skew(a) if parametrization == "expm" else orthogonal.cayley(a)
  params = dict(cell_params, recurrent_generator=jnp.zeros_like(a))
  constants = dict(cell_constants, base=cell_constants["base"] @ m)
  return params, constants
