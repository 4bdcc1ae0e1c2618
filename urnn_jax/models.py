"""The model registry: one table from a model name to its cell and its constraint.

Every binary, benchmark and test builds its models from :data:`MODELS`, so a
new model is one entry here, and it is then available to every experiment::

    >>> from urnn_jax import models
    >>> opts = models.ModelOptions(hidden=8, activation="relu")
    >>> cell = models.make_cell("urnn_expm", opts)
    >>> type(cell).__name__, cell.features
    ('OrthogonalRNNCell', 8)
    >>> models.get("contrnn").description
    'ContRNN: singular values of W clipped to <= contraction after each step'

An entry (:class:`ModelSpec`) says how to build the cell from the shared
hyper-parameters (:class:`ModelOptions`) and which optax constraint, if any,
runs after the optimiser's step (:func:`urnn_jax.optim.constrained` finds the
recurrent matrix by its leaf name). The model itself never knows how it is
optimised.

=====================  ======================================================
``rnn``                :class:`~urnn_jax.RNNCell`, free W (initialised by
                       ``rnn_init``, Haar by default), plain optimiser.
``urnn``               :class:`~urnn_jax.OrthogonalRNNCell`; after each step
                       W is put back on the orthogonal group by
                       ``constraint`` (``projection``: the SVD polar factor,
                       the paper's; ``cayley`` / ``expm`` retractions).
``urnn_cayley``        ``urnn`` with the Cayley retraction.
``urnn_expm``          ``urnn`` with the matrix-exponential retraction
                       W <- exp(A) W (seed 002's update).
``urnn_param_expm``    W = base expm(skew(A)) inside the cell (expRNN style);
                       no constraint needed.
``urnn_param_cayley``  W = base cayley(skew(A)) inside the cell.
``contrnn``            :class:`~urnn_jax.RNNCell` with the singular values of
                       W clipped to ``contraction`` after each step.
``lstm``, ``gru``      flax's ``LSTMCell`` / ``GRUCell``.
``ugru``               :class:`~urnn_jax.UnitaryGRUCell`: flax's GRU with the
                       candidate matrix W_hn orthogonal, kept by
                       ``constraint`` (as ``urnn``); gates free. (The
                       parametrised uGRU, ``UnitaryGRUCell(n,
                       parametrization="expm")``, is not an entry yet.)
``urnn_complex``       :class:`~urnn_jax.UnitaryRNNCell`: complex state,
                       unitary W, modReLU (Arjovsky et al. 2016), n complex
                       units (2n real read-out features). W kept unitary by
                       ``constraint``; by default (``constraint=None``) the
                       Cayley retraction, Wisdom et al.'s (2016)
                       full-capacity update. ``activation`` is ignored
                       (always modReLU).
=====================  ======================================================

Two more complex entries, parametrised (no constraint):
``urnn_param_complex_expm`` (W = base expm(skew(A)), A complex, skew(A) its
skew-Hermitian part; expRNN style) and ``urnn_param_complex_cayley``
(W = base cayley(skew(A))). Their names start with ``urnn_param_``, as do
all the entries whose cell holds a ``constants`` collection (the base).

Complex models need no special optimiser: :func:`make_tx` goes through
:func:`urnn_jax.optim.constrained` or :func:`urnn_jax.optim.conjugated`,
which conjugate JAX's complex gradients (``urnn_jax.optim``'s one
convention), and is the plain ``base`` (+ constraint) on real parameters.
The complex entries are not eq. (1) cells (``eq1`` False: modReLU has a
parameter), so the real gradient diagnostics skip them, and, like ``ugru``,
they are marked ``orthogonal=False`` (no n / 2 adjustment). Their
``hidden`` is the number of complex units: ``hidden=64`` has the real
state dimension (128) of a real cell with ``hidden=128``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from urnn_jax import initializers as inits
from urnn_jax import optim
from urnn_jax.cells import OrthogonalRNNCell, RNNCell, UnitaryRNNCell
from urnn_jax.gated import UnitaryGRUCell
from urnn_jax.rnn import ACTIVATIONS

# Initialisers of a free RNN's W, by name.
RNN_INITS: dict[str, Callable[[], Callable]] = {
    "haar": inits.haar,
    "identity": inits.identity,
    "lecun_normal": nn.initializers.lecun_normal,
    "henaff": inits.henaff,
}

# The optimiser-side orthogonality constraints, by name (``urnn``'s ``constraint``).
CONSTRAINTS = ("projection", "cayley", "expm")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """The hyper-parameters a registry entry may read.

  Attributes:
    hidden: the hidden size n (the LSTM's cell size).
    activation: the eq. (1) cells' activation, a key of
      :data:`urnn_jax.ACTIVATIONS`.
    rnn_init: the free RNN's W initialiser, a key of :data:`RNN_INITS`.
    constraint: the constraint of ``urnn``, ``ugru`` and ``urnn_complex``, one
      of :data:`CONSTRAINTS`, or None (default): the model's own default,
      ``projection`` (the paper's SVD) for ``urnn`` / ``ugru``, ``cayley``
      (Wisdom et al.'s full-capacity update) for ``urnn_complex``.
    reproject_every: for the retractions, also project W onto the group every
      this many steps (removes float32 drift); 0: never.
    contraction: ``contrnn``'s largest allowed singular value of W.
  """

  hidden: int
  activation: str = "relu"
  rnn_init: str = "haar"
  constraint: str | None = None
  reproject_every: int = 0
  contraction: float = 1.0

  def validate(self) -> None:
    """Raises ValueError naming the first bad field."""
    if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
      raise ValueError(f"hidden must be a positive int, got {self.hidden!r}.")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation={self.activation!r}; expected one of {sorted(ACTIVATIONS)}.")
    if self.rnn_init not in RNN_INITS:
      raise ValueError(f"rnn_init={self.rnn_init!r}; expected one of {sorted(RNN_INITS)}.")
    if self.constraint is not None and self.constraint not in CONSTRAINTS:
      raise ValueError(
          f"constraint={self.constraint!r}; expected None (the model's default) or one of"
          f" {list(CONSTRAINTS)}.")
    if (isinstance(self.reproject_every, bool) or not isinstance(self.reproject_every, int)
        or self.reproject_every < 0):
      raise ValueError(f"reproject_every must be an int >= 0 (0 = off), got {self.reproject_every!r}.")
    if not (isinstance(self.contraction, (int, float)) and 0 < self.contraction < math.inf):
      raise ValueError(f"contraction must be a finite number > 0, got {self.contraction!r}.")


class ModelSpec(NamedTuple):
  """One registry entry.

  Attributes:
    cell: ``ModelOptions -> flax.linen.RNNCellBase``.
    constraint: ``ModelOptions -> optax.GradientTransformation`` run after the
      optimiser on the recurrent matrix, or None.
    eq1: an eq. (1) cell (h' = phi(W h + F x + b)): it has a single recurrent
      matrix (its own learning rate applies), converts to
      :class:`~urnn_jax.RNNParams`, and the gradient diagnostics apply.
    orthogonal: W is orthogonal (by constraint or parametrisation); the
      paper's "adjusted" hidden size of such a model is n / 2 (Theorem 3.1,
      an eq. (1) result: ``ugru``, whose W_hn is orthogonal but whose gates
      are free, is marked False and compared at the same n).
    description: one line for tables.
    complex: the cell is complex (a unitary W, modReLU): like an eq. (1)
      cell it has a single recurrent matrix (``recurrent_kernel`` or its
      generator), but it is not eq. (1) and has no RNNParams.
  """

  cell: Callable[[ModelOptions], nn.RNNCellBase]
  constraint: Callable[[ModelOptions], optax.GradientTransformation] | None
  eq1: bool
  orthogonal: bool
  description: str
  complex: bool = False


def orthogonal_constraint(name: str, *, reproject_every: int = 0) -> optax.GradientTransformation:
  """An orthogonality constraint by name (:data:`CONSTRAINTS`).

  ``reproject_every``: for the retractions, also project W back onto the
  group every that many steps (0: never); the projection lands on the group
  every step and ignores it.
  """
  every = reproject_every or None
  if name == "projection":
    return optim.orthogonal_projection(method="svd")
  if name == "cayley":
    return optim.cayley_retraction(reproject_every=every)
  if name == "expm":
    return optim.expm_retraction(reproject_every=every)
  raise ValueError(f"constraint={name!r}; expected one of {list(CONSTRAINTS)}.")


def _rnn(o: ModelOptions) -> RNNCell:
  return RNNCell(o.hidden, activation=o.activation, recurrent_kernel_init=RNN_INITS[o.rnn_init]())


def _urnn(parametrization: str | None = None) -> Callable[[ModelOptions], OrthogonalRNNCell]:
  return lambda o: OrthogonalRNNCell(o.hidden, activation=o.activation, parametrization=parametrization)


def _retraction(name: str) -> Callable[[ModelOptions], optax.GradientTransformation]:
  return lambda o: orthogonal_constraint(name, reproject_every=o.reproject_every)


def _optioned(default: str) -> Callable[[ModelOptions], optax.GradientTransformation]:
  """The constraint named by ``options.constraint``, ``default`` when that is None."""
  return lambda o: orthogonal_constraint(o.constraint or default, reproject_every=o.reproject_every)


def _complex(parametrization: str | None = None) -> Callable[[ModelOptions], UnitaryRNNCell]:
  return lambda o: UnitaryRNNCell(o.hidden, parametrization=parametrization)


MODELS: dict[str, ModelSpec] = {
    "rnn": ModelSpec(_rnn, None, True, False, "RNN: free W"),
    "urnn": ModelSpec(
        _urnn(), _optioned("projection"), True, True, "URNN: W orthogonal, kept by the constraint after each step (SVD projection by default)"),
    "urnn_cayley": ModelSpec(_urnn(), _retraction("cayley"), True, True, "uRNN, Cayley retraction"),
    "urnn_expm": ModelSpec(_urnn(), _retraction("expm"), True, True, "uRNN, W <- exp(A) W (seed 002)"),
    "urnn_param_expm": ModelSpec(_urnn("expm"), None, True, True, "uRNN, W = base expm(skew(A)) (expRNN)"),
    "urnn_param_cayley": ModelSpec(_urnn("cayley"), None, True, True, "uRNN, W = base cayley(skew(A))"),
    "contrnn": ModelSpec(
        _rnn, lambda o: optim.spectral_norm_projection(max_value=o.contraction), True, False,
        "ContRNN: singular values of W clipped to <= contraction after each step"),
    "lstm": ModelSpec(lambda o: nn.LSTMCell(o.hidden), None, False, False, "LSTM"),
    "gru": ModelSpec(lambda o: nn.GRUCell(o.hidden), None, False, False, "GRU"),
    # The uGRU ignores ``activation`` (its gates are sigmoid, its candidate tanh, as the GRU's).
    "ugru": ModelSpec(
        lambda o: UnitaryGRUCell(o.hidden), _optioned("projection"),
        False, False, "uGRU: GRU with W_hn orthogonal, kept by the constraint (SVD projection by default)"),
    # Complex unitary RNNs (modReLU; ``activation`` ignored). Not eq. (1): modReLU has a parameter;
    # ``orthogonal`` False as for ugru (Theorem 3.1's n / 2 is an eq. (1) result): compared at n.
    "urnn_complex": ModelSpec(
        _complex(), _optioned("cayley"), False, False,
        "complex uRNN, modReLU; W unitary, kept by the constraint (Cayley, full-capacity, by default)", True),
    "urnn_param_complex_expm": ModelSpec(
        _complex("expm"), None, False, False, "complex uRNN, modReLU; W = base expm(skew-Hermitian A)", True),
    "urnn_param_complex_cayley": ModelSpec(
        _complex("cayley"), None, False, False, "complex uRNN, modReLU; W = base cayley(skew-Hermitian A)", True),
}


def get(name: str, registry: dict[str, ModelSpec] | None = None) -> ModelSpec:
  """The entry of ``name``; ValueError listing the known names otherwise."""
  registry = MODELS if registry is None else registry
  if not isinstance(name, str) or name not in registry:
    raise ValueError(f"model={name!r}; expected one of {list(registry)}.")
  return registry[name]


def check_names(names, *, field: str = "models") -> tuple[str, ...]:
  """``names`` as a tuple, checked: non-empty, known, no duplicates."""
  names = tuple(names)
  unknown = [m for m in names if m not in MODELS]
  if unknown or not names:
    raise ValueError(f"{field}={list(names)}: unknown {unknown}; expected some of {list(MODELS)}.")
  if len(set(names)) != len(names):
    raise ValueError(f"{field}={list(names)} has duplicates.")
  return names


def single_recurrent_matrix(name: str) -> bool:
  """Whether model ``name`` has one recurrent matrix (W or its generator): eq. (1) and complex cells.

  Those are the models a separate recurrent learning rate
  (:func:`urnn_jax.optim.scale_recurrent`) and the orthogonality error apply
  to; LSTM, GRU and uGRU have several.
  """
  spec = get(name)
  return spec.eq1 or spec.complex


def count_params(params) -> int:
  """The number of real parameters in a tree: a complex entry counts as two."""
  return int(sum(x.size * (2 if jnp.iscomplexobj(x) else 1) for x in jax.tree.leaves(params)))


def make_cell(name: str, options: ModelOptions) -> nn.RNNCellBase:
  """The cell of model ``name``, built from ``options``."""
  return get(name).cell(options)


def make_tx(name: str, base: optax.GradientTransformation, options: ModelOptions) -> optax.GradientTransformation:
  """``base`` followed by the model's constraint on the recurrent matrix (if any).

  Both go through the complex-gradient convention of :mod:`urnn_jax.optim`
  (:func:`~urnn_jax.optim.constrained`, or :func:`~urnn_jax.optim.conjugated`
  without a constraint): pass raw ``jax.grad`` gradients, complex or real.
  On real parameters the result is ``base`` (+ the masked constraint), with
  ``base``'s state.
  """
  constraint = get(name).constraint
  if constraint is None:
    return optim.conjugated(base)
  return optim.constrained(base, constraint(options))


def adjusted_hidden(name: str, hidden: int) -> float:
  """The paper's adjusted hidden size: n / 2 for an orthogonal model (Theorem 3.1), else n."""
  return hidden / 2 if get(name).orthogonal else hidden
