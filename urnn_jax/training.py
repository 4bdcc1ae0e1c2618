"""Shared pieces of the training binaries: state, checkpoints, progress, files.

The binaries in ``train/`` are thin absl mains; the loop pieces they share live
here so that every experiment behaves the same way:

* :class:`TrainState`: an explicit pytree ``(step, params, opt_state)``;
  nothing hidden. Randomness is derived from ``(seed, step)`` with
  ``jax.random.fold_in``, so a resumed run draws the same batches as an
  uninterrupted one.
* :class:`Checkpoints`: orbax ``CheckpointManager`` (synchronous), keeping the
  last few checkpoints; a restore takes the latest *good* one.
* :func:`check_finite`: raises :class:`DivergenceError` on NaN/inf so a
  diverged run stops with a message and its last good checkpoint intact.
* :class:`Progress`: a progress line with rate and ETA.
* :func:`write_json`, :func:`write_csv`, :func:`read_json`: results files,
  written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from urnn_jax import optim

PyTree = Any

# The optimisers the binaries offer, by flag value.
OPTIMIZERS: dict[str, Any] = {
    "adam": optax.adam,
    "rmsprop": optax.rmsprop,
    "sgd": optax.sgd,
}
LR_SCHEDULES = ("constant", "cosine")


def make_optimizer(
    optimizer: str = "adam",
    learning_rate: float = 0.01,
    *,
    grad_clip: float = 0.0,
    lr_schedule: str = "constant",
    total_steps: int | None = None,
    recurrent_learning_rate: float | None = None,
) -> optax.GradientTransformation:
  """The binaries' base optimiser: optional global-norm clipping, then ``optimizer``.

  Args:
    optimizer: a key of :data:`OPTIMIZERS`.
    learning_rate: the (peak) learning rate, > 0.
    grad_clip: clip the gradients' global norm to this value first; 0 = off.
    lr_schedule: ``"constant"``, or ``"cosine"``: cosine decay from
      ``learning_rate`` to 0 over ``total_steps`` (then 0). The schedule is
      indexed by the optimiser's own step count (in its state), so a run
      resumed from a checkpoint continues it exactly.
    total_steps: the number of optimiser steps; needed by ``"cosine"``.
    recurrent_learning_rate: the (peak) learning rate of the recurrent
      matrices (leaves named ``recurrent_kernel`` or ``recurrent_generator``),
      > 0; ``None``: ``learning_rate``. Applied as
      :func:`urnn_jax.optim.scale_recurrent` by the ratio of the two rates,
      after the optimiser (which is linear in its rate), so the schedule
      shapes both. The params must then hold such a leaf (``init`` raises
      ValueError otherwise).
  """
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer={optimizer!r}; expected one of {sorted(OPTIMIZERS)}.")
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
  if not grad_clip >= 0:
    raise ValueError(f"grad_clip must be >= 0 (0: no clipping), got {grad_clip!r}.")
  if lr_schedule not in LR_SCHEDULES:
    raise ValueError(f"lr_schedule={lr_schedule!r}; expected one of {list(LR_SCHEDULES)}.")
  lr: Any = learning_rate
  if lr_schedule == "cosine":
    if not isinstance(total_steps, int) or total_steps < 1:
      raise ValueError(f"lr_schedule='cosine' needs total_steps >= 1, got {total_steps!r}.")
    lr = optax.cosine_decay_schedule(learning_rate, total_steps)
  if recurrent_learning_rate is not None and not (
      isinstance(recurrent_learning_rate, (int, float)) and 0 < recurrent_learning_rate < math.inf
  ):
    raise ValueError(f"recurrent_learning_rate must be None or > 0, got {recurrent_learning_rate!r}.")
  tx = OPTIMIZERS[optimizer](lr)
  if recurrent_learning_rate is not None and recurrent_learning_rate != learning_rate:
    tx = optax.chain(tx, optim.scale_recurrent(recurrent_learning_rate / learning_rate))
  return optax.chain(optax.clip_by_global_norm(grad_clip), tx) if grad_clip > 0 else tx


class TrainState(NamedTuple):
  """Everything a training loop carries between steps (a pytree)."""

  step: jax.Array
  params: PyTree
  opt_state: PyTree


def create_train_state(params: PyTree, tx) -> TrainState:
  """A step-0 state for ``params`` and the optax transform ``tx``."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


class DivergenceError(RuntimeError):
  """Raised when a training run produces NaN or inf."""


def check_finite(values: Mapping[str, Any], *, where: str = "") -> None:
  """Raises DivergenceError naming the non-finite entries of ``values``."""
  bad = []
  for name, value in values.items():
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)):
      bad.append(f"{name}={arr.tolist() if arr.size <= 8 else 'array with non-finite entries'}")
  if bad:
    loc = f" at {where}" if where else ""
    raise DivergenceError(
        f"training diverged{loc}: non-finite {', '.join(bad)}. The last good"
        " checkpoint was kept; lower the learning rate or add a constraint."
    )


def tree_is_finite(tree: PyTree) -> bool:
  """True when every leaf of ``tree`` is finite (host-side check)."""
  leaves = jax.tree.leaves(tree)
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in leaves)


class Checkpoints:
  """A thin wrapper around ``orbax.checkpoint.CheckpointManager``.

  Saves are synchronous, so a run killed right after ``save`` returns can
  resume from that step. Only finite states are saved (a diverged state never
  replaces a good checkpoint).
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.directory = os.path.abspath(os.fspath(directory))
    os.makedirs(self.directory, exist_ok=True)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=False,
            create=True,
        ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree) -> bool:
    """Saves ``state`` at ``step``; returns False (and saves nothing) if not finite."""
    if not tree_is_finite(state):
      return False
    self._manager.save(int(step), args=self._ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()
    return True

  def restore(self, target: PyTree, step: int | None = None) -> PyTree | None:
    """Restores the latest (or given) step into the structure of ``target``.

    Returns None when there is no checkpoint.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype), target
    )
    restored = self._manager.restore(step, args=self._ocp.args.StandardRestore(abstract))
    # Keep the target's container types (NamedTuples etc.).
    return jax.tree.unflatten(jax.tree.structure(target), jax.tree.leaves(restored))

  def close(self):
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _format_seconds(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
  """A progress line ``desc [#####.....] 12/40 30% 1.2 it/s ETA 00:23``.

  Writes to ``stream`` (stderr by default), at most every ``min_interval``
  seconds, with a carriage return on terminals and whole lines otherwise. The
  ETA is computed from the items done since this object was created, so a
  resumed run (``initial > 0``) gets an honest estimate.
  """

  def __init__(
      self,
      total: int,
      desc: str = "",
      *,
      initial: int = 0,
      stream=None,
      min_interval: float = 0.5,
      width: int = 24,
  ):
    self.total = max(int(total), 0)
    self.desc = desc
    self.n = int(initial)
    self._start_n = self.n
    self._t0 = time.perf_counter()
    self._last = -math.inf
    self.stream = sys.stderr if stream is None else stream
    self.min_interval = min_interval
    self.width = width
    self.postfix = ""
    self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

  def eta_seconds(self) -> float:
    done = self.n - self._start_n
    elapsed = time.perf_counter() - self._t0
    if done <= 0:
      return math.inf
    return (self.total - self.n) * elapsed / done

  def render(self) -> str:
    frac = self.n / self.total if self.total else 1.0
    filled = int(round(frac * self.width))
    elapsed = time.perf_counter() - self._t0
    done = self.n - self._start_n
    rate = done / elapsed if elapsed > 0 else 0.0
    bar = "#" * filled + "." * (self.width - filled)
    post = f" {self.postfix}" if self.postfix else ""
    return (
        f"{self.desc} [{bar}] {self.n}/{self.total} {100 * frac:3.0f}%"
        f" {rate:.2f} it/s elapsed {_format_seconds(elapsed)}"
        f" ETA {_format_seconds(self.eta_seconds())}{post}"
    )

  def update(self, n: int = 1, *, postfix: str | None = None, force: bool = False):
    self.n += n
    if postfix is not None:
      self.postfix = postfix
    now = time.perf_counter()
    if force or self.n >= self.total or now - self._last >= self.min_interval:
      self._last = now
      end = "\r" if self._tty and self.n < self.total else "\n"
      self.stream.write(self.render() + end)
      self.stream.flush()

  def close(self):
    if self._tty:
      self.stream.write("\n")
      self.stream.flush()


def atomic_write(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically (a temporary file, then ``os.replace``)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  with os.fdopen(fd, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def to_jsonable(obj):
  """``obj`` with arrays, NumPy scalars and dataclasses made JSON types.

  NaN becomes ``None`` and +-inf the strings ``"inf"`` / ``"-inf"`` (JSON has
  neither).
  """
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return to_jsonable(obj.as_dict() if hasattr(obj, "as_dict") else dataclasses.asdict(obj))
  if isinstance(obj, (np.ndarray, jax.Array)):
    return to_jsonable(np.asarray(obj).tolist())
  if isinstance(obj, np.bool_):
    return bool(obj)
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, np.floating):
    obj = float(obj)
  if isinstance(obj, float) and not math.isfinite(obj):
    return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
  return obj


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented JSON, atomically (see :func:`to_jsonable`)."""
  atomic_write(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def write_csv(path: str, rows: Sequence[Mapping[str, Any]], fieldnames: Iterable[str] | None = None) -> None:
  """Writes a list of dicts as CSV, atomically; missing cells are empty."""
  rows = [dict(to_jsonable(r)) for r in rows]
  if fieldnames is None:
    fieldnames = []
    for r in rows:
      fieldnames.extend(k for k in r if k not in fieldnames)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(fieldnames))
  writer.writeheader()
  writer.writerows(rows)
  atomic_write(path, buf.getvalue())


def format_value(v) -> str:
  """A table cell: 4 significant digits, thousands separated, ``–`` for none/NaN."""
  if v is None:
    return "–"
  if isinstance(v, (bool, np.bool_)):
    return "yes" if v else "no"
  if isinstance(v, (float, np.floating)):
    v = float(v)
    if not math.isfinite(v):
      return "–" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if v == 0:
      return "0"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
  return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   headers: Mapping[str, str] | None = None) -> str:
  """A GitHub markdown table of ``rows`` (dicts), cells by :func:`format_value`.

  ``columns`` picks and orders the keys (default: the first row's);
  ``headers`` renames some of them in the header line.
  """
  if not rows:
    return "_(no rows)_\n"
  columns = list(columns or rows[0].keys())
  headers = headers or {}
  lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
           "|" + "---|" * len(columns)]
  for r in rows:
    lines.append("| " + " | ".join(format_value(r.get(c)) for c in columns) + " |")
  return "\n".join(lines) + "\n"


def batch_indices(key: jax.Array, num_examples: int, batch_size: int) -> np.ndarray:
  """A shuffled ``(num_batches, batch_size)`` index array (drops the remainder)."""
  if batch_size < 1 or batch_size > num_examples:
    raise ValueError(
        f"batch_size must be in [1, {num_examples}] (the number of examples),"
        f" got {batch_size}."
    )
  perm = np.asarray(jax.random.permutation(key, num_examples))
  nb = num_examples // batch_size
  return perm[: nb * batch_size].reshape(nb, batch_size)


def save_figure(fig, path: str) -> None:
  """Saves a matplotlib figure as PNG, atomically."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".png")
  os.close(fd)
  fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
  os.replace(tmp, path)


def pyplot():
  """matplotlib.pyplot with the non-interactive Agg backend (lazy import)."""
  try:
    import matplotlib
  except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "Plots need matplotlib: pip install 'urnn_jax[plots]'."
    ) from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt
