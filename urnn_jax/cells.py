"""Flax linen cells for the paper's RNN (eq. 1), its orthogonal version, and the complex uRNN.

:class:`RNNCell` and :class:`OrthogonalRNNCell` are eq. (1) cells;
:class:`UnitaryRNNCell` is the complex unitary RNN of the uRNN literature
(h in C^n, W unitary, the :func:`modrelu` activation with a learned bias).

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

import numbers
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
  use_bias: bool = True

  @nn.compact
  def __call__(self, x, custom_gradient: bool = False, separate_bias: bool = False):
    kernel = self.param("kernel", self.kernel_init, (jnp.shape(x)[-1], self.features),
                        self.param_dtype)
    if not self.use_bias:  # x F^T alone (no 'bias' parameter)
      x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
      y = project_rows(x, kernel) if custom_gradient else x @ kernel
      return (y, None) if separate_bias else y
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


def _check_modrelu_eps(where: str, eps) -> float:
  if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
    raise TypeError(f"{where}: eps must be a real number >= 0, got {type(eps).__name__}: eps={eps!r}.")
  if not 0 <= eps < float("inf"):
    raise ValueError(f"{where}: eps must be a finite number >= 0, got eps={eps!r}.")
  return float(eps)


def modrelu(z, bias, *, eps: float = 1e-5) -> jax.Array:
  r"""modReLU (Arjovsky et al., 2016): z / |z| * relu(|z| + b), elementwise.

  .. math:: \mathrm{modReLU}(z, b) = \frac{z}{r}\,\mathrm{relu}(r + b), \qquad
            r = \sqrt{|z|^2 + \epsilon^2}.

  It keeps the phase of ``z`` and shifts its modulus by the real bias ``b``
  (``b < 0`` switches small units off; ``b = 0`` is the identity up to the
  smoothing). The modulus is smoothed by ``eps`` so that the value and the
  gradient are finite everywhere, z = 0 included: modReLU(0, b) = 0, and its
  derivative there is relu(eps + b) / eps (1 for b = 0; for b > 0 the exact
  modReLU is discontinuous at 0 and this bounds its slope by about
  b / eps). Away from 0 it differs from the exact formula by at most about
  ``eps**2 / (2 |z|) * (1 + |b| / |z|)``. With ``eps=0`` the exact formula
  is used, guarded at z = 0 (value 0 and a zero gradient there; near 0 the
  gradient then grows like b / |z| for b > 0).

  Works on real ``z`` too (then it is sign(z) relu(|z| + b)).

  Args:
    z: real or complex array ``(..., n)``.
    bias: real array broadcastable to ``z`` (the learned per-unit b, ``(n,)``).
    eps: the smoothing, a finite number >= 0.

  Raises:
    TypeError: a complex ``bias`` (b must be real), a non-number ``eps``.
    ValueError: a negative or non-finite ``eps``.

  Example:
    >>> import jax.numpy as jnp, urnn_jax
    >>> z = jnp.array([3 + 4j, 0j, 0.1j])
    >>> urnn_jax.modrelu(z, jnp.array([-1.0, 0.5, -0.5]), eps=0.0)
    Array([2.4+3.2j, 0. +0.j , 0. +0.j ], dtype=complex64)
  """
  eps = _check_modrelu_eps("modrelu", eps)
  z = jnp.asarray(z)
  bias = jnp.asarray(bias)
  if jnp.issubdtype(bias.dtype, jnp.complexfloating):
    raise TypeError(
        f"modrelu: bias must be real (a shift of the modulus |z|), got dtype {bias.dtype}.")
  if not jnp.issubdtype(z.dtype, jnp.inexact):
    z = z.astype(jnp.result_type(float))
  real = jnp.finfo(z.dtype).dtype
  s = jnp.square(jnp.real(z)) + jnp.square(jnp.imag(z)) if jnp.iscomplexobj(z) else jnp.square(z)
  s = s + jnp.asarray(eps * eps, real)
  positive = s > 0
  r = jnp.sqrt(jnp.where(positive, s, 1))  # the where keeps the unselected gradient finite
  scale = jnp.where(positive, jax.nn.relu(r + bias.astype(real)) / r, 0)
  return z * scale.astype(real)


class _ModReLU:
  """phi(a, b) = modrelu(a, b, eps=eps): a hashable activation (equal for equal eps)."""

  supports_complex = True
  __name__ = "modrelu"

  def __init__(self, eps: float):
    self.eps = eps

  def __call__(self, a, b):
    return modrelu(a, b, eps=self.eps)

  def __eq__(self, other):
    return type(other) is _ModReLU and other.eps == self.eps

  def __hash__(self):
    return hash((_ModReLU, self.eps))

  def __repr__(self):
    return f"modrelu(eps={self.eps!r})"


def _real_dtype(dtype):
  """The real dtype of a complex one (complex64 -> float32); None and real dtypes unchanged."""
  if dtype is None:
    return None
  dtype = jnp.dtype(dtype)
  return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype


class UnitaryRNNCell(HoistableCell):
  r"""The complex unitary RNN cell with modReLU (Arjovsky et al., 2016; Wisdom et al., 2016).

  .. math:: h^{(k)} = \mathrm{modReLU}(W h^{(k-1)} + V x^{(k)},\ b),
            \qquad h \in \mathbb{C}^n,\ W^H W = I,

  with a learned real modReLU bias b per unit (:func:`modrelu`); real inputs
  x, complex V and W. The heads (:class:`urnn_jax.SequenceRegressor`,
  :class:`urnn_jax.LastStateClassifier`) read a complex state out from
  ``[Re h, Im h]`` with a real layer, so n complex units are 2n real
  features.

  Parameter layout (row-vector convention, as the real cells)::

      {'input': {'kernel': (m, n) complex}, 'recurrent_kernel': (n, n) complex,
       'modrelu_bias': (n,) real}

  i.e. V = ``input.kernel.T``, W = ``recurrent_kernel.T`` (unitary exactly
  when ``recurrent_kernel`` is). There is no additive input bias: b inside
  modReLU plays that role.

  Two ways to keep W unitary (as :class:`OrthogonalRNNCell`):

  * ``parametrization=None`` (default): the free ``recurrent_kernel``,
    initialised unitary (Haar), kept unitary by an optimiser-side
    constraint that finds it by its name, e.g.
    ``urnn_jax.optim.constrained(optax.adam(1e-3), urnn_jax.optim.cayley_retraction())``
    (Wisdom et al.'s full-capacity Cayley step; the SVD projection or the
    expm retraction work too). :func:`urnn_jax.optim.constrained` conjugates
    JAX's complex gradients itself: nothing else is needed in the chain.
  * ``parametrization="expm"`` or ``"cayley"``: the cell stores a free
    complex ``recurrent_generator`` A and uses K = base @ map(skew(A)),
    skew(A) = (A - A^H) / 2 skew-Hermitian, so K is unitary for any A; base
    (drawn by ``recurrent_kernel_init``) is a ``constants`` variable, as in
    :class:`OrthogonalRNNCell` (``nn.RNN`` then needs
    ``variable_broadcast=("params", "constants")``). Any optimiser works, but
    A and V are complex: wrap it in :func:`urnn_jax.optim.conjugated` (what
    :func:`urnn_jax.models.make_tx` does).

  It is a :class:`HoistableCell` (``supports_complex`` True), so
  :class:`urnn_jax.Recurrent` hoists V x for all steps and builds W once,
  and the recurrence's custom VJP differentiates modReLU (and b) by its own
  ``jax.vjp``; ``flax.linen.RNN(cell)`` works too.

  Attributes:
    features: n, the number of complex units.
    kernel_init: initialiser of V^T ``(m, n)``, complex (default
      ``lecun_normal``: E|V_ij|^2 = 1 / m).
    recurrent_kernel_init: initialiser of K (or of ``base``); default
      :func:`urnn_jax.initializers.haar` (Haar-unitary for a complex dtype);
      :func:`urnn_jax.initializers.diagonal_phases` is Arjovsky et al.'s.
    modrelu_bias_init: initialiser of b ``(n,)`` (default zeros: modReLU
      starts as the identity, a linear unitary RNN).
    carry_init: initialiser of h(-1) (default zeros).
    parametrization: ``None``, ``"expm"`` or ``"cayley"``.
    generator_init: initialiser of A with a parametrisation (default zeros).
    eps: modReLU's smoothing (see :func:`modrelu`).
    dtype: the computation dtype (None: from the inputs and parameters), complex.
    param_dtype: complex dtype of V, W (A, base) and the carry; b has the
      matching real dtype. Default ``complex64``.

  Raises (at the first use): TypeError for a ``features`` that is not an
  int, a ``param_dtype`` / ``dtype`` that is not complex, a bad ``eps``;
  ValueError for ``features < 1``, an unknown ``parametrization``.

  Example:
    >>> import jax, jax.numpy as jnp, urnn_jax
    >>> layer = urnn_jax.Recurrent(urnn_jax.UnitaryRNNCell(4))
    >>> x = jnp.ones((2, 5, 3))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> hs = layer.apply(variables, x)
    >>> hs.shape, hs.dtype
    ((2, 5, 4), dtype('complex64'))
    >>> k = variables["params"]["cell"]["recurrent_kernel"]
    >>> bool(urnn_jax.orthogonal.orthogonality_error(k) < 1e-5)
    True
  """

  features: int
  kernel_init: Initializer = nn.initializers.lecun_normal()
  recurrent_kernel_init: Initializer = inits.haar()
  modrelu_bias_init: Initializer = nn.initializers.zeros_init()
  carry_init: Initializer = nn.initializers.zeros_init()
  parametrization: str | None = None
  generator_init: Initializer = nn.initializers.zeros_init()
  eps: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.complex64

  @property
  def supports_complex(self) -> bool:
    return True

  def _check(self):
    where = "UnitaryRNNCell"
    check_positive_int(where, "features", self.features)
    for name in ("param_dtype", "dtype"):
      value = getattr(self, name)
      if value is None and name == "dtype":
        continue
      try:
        dtype = jnp.dtype(value)
      except TypeError:
        dtype = None
      if dtype is None or not jnp.issubdtype(dtype, jnp.complexfloating):
        shown = value if dtype is None else dtype.name
        raise TypeError(
            f"{where}: {name} must be a complex dtype (e.g. jnp.complex64), got {name}={shown!r};"
            " the unitary cell's state, V and W are complex (for a real orthogonal cell use"
            " OrthogonalRNNCell)."
        )
    if self.parametrization is not None and self.parametrization not in PARAMETRIZATIONS:
      raise ValueError(
          f"{where}: parametrization={self.parametrization!r} is not supported; expected None"
          f" or one of {PARAMETRIZATIONS}."
      )
    _check_modrelu_eps(where, self.eps)

  def setup(self):
    self._check()
    self.input = _InputProjection(
        self.features, kernel_init=self.kernel_init, bias_init=nn.initializers.zeros_init(),
        dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False, name="input")
    shape = (self.features, self.features)
    if self.parametrization is None:
      self.recurrent_kernel = self.param(
          "recurrent_kernel", self.recurrent_kernel_init, shape, self.param_dtype)
    else:
      self.recurrent_generator = self.param(
          "recurrent_generator", self.generator_init, shape, self.param_dtype)
      self.base = self.variable(
          "constants", "base",
          lambda: self.recurrent_kernel_init(self.make_rng("params"), shape, self.param_dtype))
    self.modrelu_bias = self.param(
        "modrelu_bias", self.modrelu_bias_init, (self.features,), _real_dtype(self.param_dtype))

  def project_inputs(self, x: jax.Array, *, custom_gradient: bool = False,
                     separate_bias: bool = False):
    """x V^T over all leading axes (complex); ``(x V^T, None)`` with ``separate_bias``."""
    return self.input(x, custom_gradient, separate_bias)

  def transition_kernel(self) -> jax.Array:
    """K = W^T (complex, unitary): the free kernel, or base @ map(skew(A))."""
    if self.parametrization is None:
      k = self.recurrent_kernel
    else:
      a = orthogonal.skew(self.recurrent_generator)
      m = orthogonal.expm_skew(a) if self.parametrization == "expm" else orthogonal.cayley(a)
      k = self.base.value @ m
    return k if self.dtype is None else k.astype(self.dtype)

  @property
  def activation_fn(self) -> Callable[..., jax.Array]:
    """modReLU, phi(a, b) = :func:`modrelu` (a, b, eps=self.eps)."""
    return _ModReLU(self.eps)

  def activation_params(self) -> jax.Array:
    """The real modReLU bias b ``(n,)``."""
    return self.modrelu_bias

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """A zero (by ``carry_init``) complex state ``input_shape[:-1] + (features,)``."""
    self._check()
    return self.carry_init(rng, tuple(input_shape[:-1]) + (self.features,), self.param_dtype)


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
