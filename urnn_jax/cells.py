"""Flax linen cells for the paper's RNN (eq. 1) and its unitary version.

The cells follow :class:`flax.linen.RNNCellBase`, so ``flax.linen.RNN(cell)``
works unchanged. They also expose the three pieces that
:class:`urnn_jax.Recurrent` hoists out of ``lax.scan``:

* ``project_inputs(x)``: x F^T + b for every step at once (one matmul;
  ``separate_bias=True`` returns ``(x F^T, b)``, and the loop adds b per step);
* ``transition_kernel()``: the recurrent kernel K = W^T, built once per call
  (for a parametrised cell this is where map(A) is evaluated);
* ``activation_fn``: phi.

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
from urnn_jax.rnn import Activation, get_activation, project_rows

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
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = project_rows(x, kernel) if custom_gradient else x @ kernel
    return (y, bias) if separate_bias else y + bias


class _HoistableCell(nn.RNNCellBase):
  """Shared body of the eq. (1) cells: h' = phi(h K + x F^T + b)."""

  features: int
  activation: Activation = "relu"
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()
  carry_init: Initializer = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def _check(self):
    if not isinstance(self.features, int) or isinstance(self.features, bool) or self.features < 1:
      raise ValueError(
          f"{type(self).__name__}: features must be a positive int, got"
          f" {self.features!r}."
      )
    get_activation(self.activation)

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

  def transition_kernel(self) -> jax.Array:
    """The recurrent kernel K = W^T (row-vector convention)."""
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
    h = self.activation_fn(carry @ k + self.project_inputs(inputs))
    return h, h

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """A zero (by ``carry_init``) state of shape ``input_shape[:-1] + (features,)``."""
    return self.carry_init(rng, tuple(input_shape[:-1]) + (self.features,), self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


class RNNCell(_HoistableCell):
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


class OrthogonalRNNCell(_HoistableCell):
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

  def _setup_recurrent(self):
    shape = (self.features, self.features)
    if self.parametrization is None:
      self.recurrent_kernel = self.param(
          "recurrent_kernel", self.recurrent_kernel_init, shape, self.param_dtype
      )
      return
    if self.parametrization not in PARAMETRIZATIONS:
      raise ValueError(
          f"OrthogonalRNNCell: parametrization={self.parametrization!r} is not"
          f" supported; expected None or one of {PARAMETRIZATIONS}."
      )
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
  a = orthogonal.skew(cell_params["recurrent_generator"])
  m = orthogonal.expm_skew(a) if parametrization == "expm" else orthogonal.cayley(a)
  params = dict(cell_params, recurrent_generator=jnp.zeros_like(a))
  constants = dict(cell_constants, base=cell_constants["base"] @ m)
  return params, constants
