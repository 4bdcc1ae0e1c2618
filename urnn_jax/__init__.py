"""urnn_jax: unitary (orthogonal) recurrent neural networks in JAX.

The public API, by name:

* the paper's model as a pure function: :class:`RNNParams`, :func:`simulate`;
* Flax cells and the fast sequence layer: :class:`RNNCell`,
  :class:`OrthogonalRNNCell`, :class:`UnitaryRNNCell` (complex, with
  :func:`modrelu`), :class:`HoistableCell` (the fast-cell protocol's
  base class, for third-party cells), :class:`UnitaryGRUCell` (the uGRU) and
  :class:`HoistableGatedCell` (the gated cells' fast path), :class:`Recurrent`,
  :class:`SequenceRegressor`, :class:`LastStateClassifier`,
  :func:`to_rnn_params`, :func:`from_rnn_params`;
* submodules: :mod:`urnn_jax.orthogonal` (matrix maps),
  :mod:`urnn_jax.initializers`.
"""

from urnn_jax import initializers
from urnn_jax import optim
from urnn_jax import orthogonal
from urnn_jax import theory
from urnn_jax.cells import HoistableCell
from urnn_jax.cells import OrthogonalRNNCell
from urnn_jax.cells import RNNCell
from urnn_jax.cells import UnitaryRNNCell
from urnn_jax.cells import modrelu
from urnn_jax.cells import rebase
from urnn_jax.gated import HoistableGatedCell
from urnn_jax.gated import UnitaryGRUCell
from urnn_jax.recurrent import LastStateClassifier
from urnn_jax.recurrent import Recurrent
from urnn_jax.recurrent import SequenceRegressor
from urnn_jax.recurrent import from_rnn_params
from urnn_jax.recurrent import to_rnn_params
from urnn_jax.rnn import ACTIVATIONS
from urnn_jax.rnn import RNNParams
from urnn_jax.rnn import check_params
from urnn_jax.rnn import get_activation
from urnn_jax.rnn import recurrence
from urnn_jax.rnn import simulate

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "HoistableCell",
    "HoistableGatedCell",
    "LastStateClassifier",
    "OrthogonalRNNCell",
    "RNNCell",
    "RNNParams",
    "Recurrent",
    "SequenceRegressor",
    "UnitaryGRUCell",
    "UnitaryRNNCell",
    "check_params",
    "from_rnn_params",
    "get_activation",
    "initializers",
    "modrelu",
    "optim",
    "orthogonal",
    "rebase",
    "recurrence",
    "simulate",
    "theory",
    "to_rnn_params",
]
