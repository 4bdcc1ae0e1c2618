"""Long-memory tasks: seed 002's toy tasks and the uRNN literature's standard ones.

Every generator is a pure, jitted function of a ``jax.random`` key (the sizes
are static arguments), so a batch is a deterministic function of
``(seed, step)`` (draw it with ``jax.random.fold_in(key, step)``) and can be
generated inside a jitted training step.

=================  ==========================================================
task               input -> answer
=================  ==========================================================
``first_term``     seed 002, Task 1. ``T`` integers uniform in
                   ``{0, ..., V-1}``; the answer is the first one.
``kth_highest``    seed 002, Task 2. ``T`` integers uniform in
                   ``{0, ..., V-1}`` (with repetition); the answer is the
                   k-th largest, counting repeats (the k-th entry of the
                   sequence sorted in decreasing order).
``copy``           Arjovsky et al. (2016) / Henaff et al. (2016). 10 symbols
                   from 8 categories, ``T - 1`` blanks, a delimiter, 10 more
                   blanks (``T + 20`` steps); the target is ``T + 10`` blanks
                   then the 10 symbols.
``adding``         Arjovsky et al. (2016). Two channels of length ``T``:
                   values ~ U[0, 1) and a marker that is 1 at exactly two
                   steps, one uniform in the first half and one in the second
                   half; the answer is the sum of the two marked values.
=================  ==========================================================

Each task also has a *memoryless baseline*: the best score of a predictor
that does not look at the input (it may know the task, the length and the
time step). A model has learned something only when it beats it:

* ``first_term``: accuracy ``1/V``, cross-entropy ``log V``;
* ``kth_highest``: accuracy ``max_v P(answer = v)``, cross-entropy
  ``H(answer)``, from the exact distribution of the k-th order statistic
  (:func:`kth_highest_distribution`); it grows with ``T`` because the answer
  concentrates near ``V - 1``;
* ``copy``: cross-entropy ``10 log 8 / (T + 20)`` per step (blanks where
  they are certain, uniform over the 8 categories for the copied symbols),
  accuracy ``1/8`` on the copied symbols;
* ``adding``: mean squared error ``1/6`` (predict 1, the mean; the target's
  variance is ``2 * 1/12``).

:func:`get_task` bundles a generator, its input encoding (one-hot for the
token tasks), its loss kind and its baseline into a :class:`MemoryTask`.
Its options (``num_values``, ``k``, ``num_symbols``, ``num_categories``) are
validated when the task is built, not at the first sample: each must be a
positive int (ValueError naming the option). Lengths given to a task's
``baseline`` and ``num_steps`` are validated the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Copy-task vocabulary (Arjovsky et al. 2016): 0 blank, 1..8 symbols, 9 delimiter.
BLANK = 0


def _check_positive(fn: str, **values):
  for name, v in values.items():
    if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v < 1:
      raise ValueError(f"{fn}: {name} must be a positive int, got {v!r}.")


def _check_float_dtype(fn: str, dtype) -> None:
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"{fn}: dtype must be a real floating dtype (e.g. float32), got dtype={dtype}."
    )


# ----------------------------------------------------------------------------
# Generators: key -> (inputs, targets). Token tasks return int32 tokens.


@functools.partial(jax.jit, static_argnames=("batch_size", "length", "num_values"))
def first_term_recall(key: Array, batch_size: int, length: int, *, num_values: int = 10):
  """Seed 002, Task 1: recall the first term.

  Returns:
    ``(tokens, targets)``: int32 ``(batch_size, length)`` uniform in
    ``{0, ..., num_values - 1}`` and int32 ``(batch_size,)`` =
    ``tokens[:, 0]``.
  """
  _check_positive("first_term_recall", batch_size=batch_size, length=length, num_values=num_values)
  tokens = jax.random.randint(key, (batch_size, length), 0, num_values, dtype=jnp.int32)
  return tokens, tokens[:, 0]


@functools.partial(jax.jit, static_argnames=("batch_size", "length", "k", "num_values"))
def kth_highest(key: Array, batch_size: int, length: int, *, k: int = 3, num_values: int = 100):
  """Seed 002, Task 2: the k-th highest term (repeats counted).

  The default ``k = 3, num_values = 100`` matches seed 002's example
  (``5, 7, 9, 53, 99, 98, 2, 100, ...`` -> 98).

  Returns:
    ``(tokens, targets)``: int32 ``(batch_size, length)`` uniform in
    ``{0, ..., num_values - 1}`` and the int32 ``(batch_size,)`` k-th largest.
  """
  _check_positive("kth_highest", batch_size=batch_size, length=length, k=k, num_values=num_values)
  if k > length:
    raise ValueError(f"kth_highest: k={k} must be <= length={length}.")
  tokens = jax.random.randint(key, (batch_size, length), 0, num_values, dtype=jnp.int32)
  targets = jnp.sort(tokens, axis=-1)[:, length - k]
  return tokens, targets


@functools.partial(
    jax.jit, static_argnames=("batch_size", "num_blanks", "num_symbols", "num_categories")
)
def copy_memory(
    key: Array,
    batch_size: int,
    num_blanks: int,
    *,
    num_symbols: int = 10,
    num_categories: int = 8,
):
  """The copy-memory task of Arjovsky et al. (2016) (after Hochreiter 1997, Henaff 2016).

  With ``T = num_blanks``, ``S = num_symbols``, ``C = num_categories``, the
  input has ``T + 2S`` steps: ``S`` symbols uniform in ``{1, ..., C}``,
  ``T - 1`` blanks (0), the delimiter ``C + 1``, ``S`` blanks. The target
  is ``T + S`` blanks followed by the ``S`` symbols.

  Returns:
    ``(tokens, targets)``, both int32 ``(batch_size, T + 2S)``; tokens lie in
    ``{0, ..., C + 1}`` and targets in ``{0, ..., C}``.
  """
  _check_positive(
      "copy_memory",
      batch_size=batch_size,
      num_blanks=num_blanks,
      num_symbols=num_symbols,
      num_categories=num_categories,
  )
  t, s = num_blanks, num_symbols
  symbols = jax.random.randint(key, (batch_size, s), 1, num_categories + 1, dtype=jnp.int32)
  blanks = jnp.zeros((batch_size, t - 1), jnp.int32)
  delim = jnp.full((batch_size, 1), num_categories + 1, jnp.int32)
  tail = jnp.zeros((batch_size, s), jnp.int32)
  tokens = jnp.concatenate([symbols, blanks, delim, tail], axis=1)
  targets = jnp.concatenate([jnp.zeros((batch_size, t + s), jnp.int32), symbols], axis=1)
  return tokens, targets


@functools.partial(jax.jit, static_argnames=("batch_size", "length", "dtype"))
def adding_problem(key: Array, batch_size: int, length: int, *, dtype=jnp.float32):
  """The adding problem as in Arjovsky et al. (2016).

  Returns:
    ``(inputs, targets)``: ``(batch_size, length, 2)`` with channel 0 the
    values ~ U[0, 1) and channel 1 the marker (1 at one step uniform in
    ``[0, length // 2)`` and one uniform in ``[length // 2, length)``), and
    the ``(batch_size,)`` sum of the two marked values.
  """
  _check_positive("adding_problem", batch_size=batch_size, length=length)
  _check_float_dtype("adding_problem", dtype)
  if length < 2:
    raise ValueError(f"adding_problem: length must be >= 2, got {length}.")
  kv, k1, k2 = jax.random.split(key, 3)
  half = length // 2
  values = jax.random.uniform(kv, (batch_size, length), dtype)
  first = jax.random.randint(k1, (batch_size,), 0, half)
  second = jax.random.randint(k2, (batch_size,), half, length)
  steps = jnp.arange(length)
  marker = ((steps == first[:, None]) | (steps == second[:, None])).astype(dtype)
  targets = jnp.sum(values * marker, axis=1)
  return jnp.stack([values, marker], axis=-1), targets


# ----------------------------------------------------------------------------
# Memoryless baselines.


def kth_highest_distribution(length: int, *, k: int = 3, num_values: int = 100) -> np.ndarray:
  """The exact pmf of the answer of :func:`kth_highest`, shape ``(num_values,)``.

  The k-th largest of ``T`` iid uniform draws from ``{0..V-1}`` is ``<= v``
  iff fewer than ``k`` draws exceed ``v``; with ``p = (V - 1 - v) / V``,
  ``P(answer <= v) = sum_{j < k} C(T, j) p^j (1 - p)^(T - j)``.
  """
  _check_positive("kth_highest_distribution", length=length, k=k, num_values=num_values)
  if k > length:
    raise ValueError(f"kth_highest_distribution: k={k} must be <= length={length}.")
  cdf = np.zeros(num_values)
  for v in range(num_values):
    p = (num_values - 1 - v) / num_values
    cdf[v] = sum(math.comb(length, j) * p**j * (1 - p) ** (length - j) for j in range(min(k, length + 1)))
  return np.diff(np.concatenate([[0.0], cdf]))


def _entropy(p: np.ndarray) -> float:
  p = p[p > 0]
  return float(-np.sum(p * np.log(p)))


def memoryless_baseline(name: str, length: int, **options) -> dict:
  """The best score without memory of the input, for :func:`get_task`'s tasks.

  Returns a dict with ``loss`` (the task's training loss: cross-entropy, or
  MSE for ``adding``) and ``accuracy`` (on the answer; for ``copy`` on the 10
  copied symbols; ``None`` for ``adding``), and ``description``.
  """
  task = get_task(name, **options)
  return task.baseline(length)


# ----------------------------------------------------------------------------
# Task bundles.


@dataclasses.dataclass(frozen=True)
class MemoryTask:
  """A task as the experiments use it.

  Attributes:
    name: ``first_term``, ``kth_highest``, ``copy`` or ``adding``.
    kind: ``"last_class"`` (one class per sequence, from the last state),
      ``"seq_class"`` (a class per step) or ``"last_regression"``.
    input_size: features per step after encoding.
    output_size: classes (or 1 for regression).
    generate: ``(key, batch_size, length) -> (raw inputs, targets)``.
    encode: raw inputs -> float model inputs ``(B, steps, input_size)``.
    baseline: ``length -> dict`` (see :func:`memoryless_baseline`).
    default_lengths: the lengths seed 002 / the literature report.
    options: the task's keyword options (``num_values``, ``k``, ...).
  """

  name: str
  kind: str
  input_size: int
  output_size: int
  generate: Callable
  encode: Callable
  baseline: Callable[[int], dict]
  default_lengths: tuple[int, ...]
  options: dict

  def sample(self, key: Array, batch_size: int, length: int):
    """``(x, y)`` with ``x`` float ``(B, steps, input_size)`` ready for a model."""
    raw, y = self.generate(key, batch_size, length)
    return self.encode(raw), y

  def num_steps(self, length: int) -> int:
    """Sequence length fed to the model (``length + 2 * num_symbols`` for copy)."""
    _check_positive(f"MemoryTask({self.name!r}).num_steps", length=length)
    if self.name == "copy":
      return length + 2 * self.options["num_symbols"]
    return length


def _one_hot(n: int):
  return lambda tokens: jax.nn.one_hot(tokens, n, dtype=jnp.float32)


def _first_term_task(num_values: int = 10) -> MemoryTask:
  _check_positive("get_task('first_term')", num_values=num_values)

  def baseline(length):
    _check_positive("first_term baseline", length=length)
    return {
        "loss": math.log(num_values),
        "accuracy": 1.0 / num_values,
        "description": f"uniform guess over {num_values} values",
    }

  return MemoryTask(
      name="first_term",
      kind="last_class",
      input_size=num_values,
      output_size=num_values,
      generate=functools.partial(first_term_recall, num_values=num_values),
      encode=_one_hot(num_values),
      baseline=baseline,
      default_lengths=(20, 50, 100),
      options={"num_values": num_values},
  )


def _kth_highest_task(k: int = 3, num_values: int = 100) -> MemoryTask:
  _check_positive("get_task('kth_highest')", k=k, num_values=num_values)

  def baseline(length):
    p = kth_highest_distribution(length, k=k, num_values=num_values)
    mode = int(np.argmax(p))
    return {
        "loss": _entropy(p),
        "accuracy": float(p[mode]),
        "description": f"always answer the most likely value {mode}",
    }

  return MemoryTask(
      name="kth_highest",
      kind="last_class",
      input_size=num_values,
      output_size=num_values,
      generate=functools.partial(kth_highest, k=k, num_values=num_values),
      encode=_one_hot(num_values),
      baseline=baseline,
      default_lengths=(100, 200, 400),
      options={"k": k, "num_values": num_values},
  )


def _copy_task(num_symbols: int = 10, num_categories: int = 8) -> MemoryTask:
  _check_positive("get_task('copy')", num_symbols=num_symbols, num_categories=num_categories)

  def baseline(length):
    _check_positive("copy baseline", length=length)
    total = length + 2 * num_symbols
    return {
        "loss": num_symbols * math.log(num_categories) / total,
        "accuracy": 1.0 / num_categories,
        "description": (
            f"blanks, then a uniform guess over {num_categories} categories for"
            f" the {num_symbols} copied symbols"
        ),
    }

  return MemoryTask(
      name="copy",
      kind="seq_class",
      input_size=num_categories + 2,
      output_size=num_categories + 1,
      generate=functools.partial(copy_memory, num_symbols=num_symbols, num_categories=num_categories),
      encode=_one_hot(num_categories + 2),
      baseline=baseline,
      default_lengths=(100, 200, 500, 1000),
      options={"num_symbols": num_symbols, "num_categories": num_categories},
  )


def _adding_task() -> MemoryTask:
  def baseline(length):
    _check_positive("adding baseline", length=length)
    if length < 2:
      raise ValueError(f"adding baseline: length must be >= 2, got length={length}.")
    return {"loss": 1.0 / 6.0, "accuracy": None, "description": "always answer 1 (the mean)"}

  return MemoryTask(
      name="adding",
      kind="last_regression",
      input_size=2,
      output_size=1,
      generate=adding_problem,
      encode=lambda x: x,
      baseline=baseline,
      default_lengths=(100, 200, 400, 750),
      options={},
  )


TASKS: dict[str, Callable[..., MemoryTask]] = {
    "first_term": _first_term_task,
    "kth_highest": _kth_highest_task,
    "copy": _copy_task,
    "adding": _adding_task,
}


def get_task(name: str, **options) -> MemoryTask:
  """The :class:`MemoryTask` called ``name`` with its keyword ``options``.

  Example:
    >>> import jax
    >>> from urnn_jax.data import memory
    >>> task = memory.get_task("first_term")
    >>> x, y = task.sample(jax.random.key(0), 4, 20)
    >>> x.shape, y.shape
    ((4, 20, 10), (4,))
  """
  try:
    factory = TASKS[name]
  except KeyError:
    raise ValueError(f"unknown memory task {name!r}; expected one of {sorted(TASKS)}.") from None
  try:
    return factory(**options)
  except TypeError as e:
    raise ValueError(f"get_task({name!r}): bad options {options}: {e}") from None
