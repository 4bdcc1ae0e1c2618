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

Several processes (``jax.distributed``; :mod:`urnn_jax.parallel`): every
process runs the same loop and takes part in every checkpoint save and
restore (orbax's multi-process checkpoints), but only process 0
(:func:`is_primary`) writes files: the writers here (:func:`atomic_write`,
:func:`write_json`, :func:`write_csv`, :func:`write_tables`,
:func:`save_figure`, :func:`prepare_run_dir`'s config, :func:`fit`'s history)
do nothing in the other processes, and :func:`fit`'s progress line and
messages come from process 0 alone.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import threading
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


def is_primary() -> bool:
  """True in process 0 (and in a run of one process): the process that writes files and logs.

  Does not start a backend: without ``jax.distributed`` this is True.
  """
  return not jax.distributed.is_initialized() or jax.process_index() == 0


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


def all_finite(tree: PyTree) -> jax.Array:
  """A traced bool: every inexact leaf of ``tree`` is finite (jittable; no host sync)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_train_step(loss_fn, tx: optax.GradientTransformation):
  """The one training step: ``step(state, batch) -> (state, metrics)`` (pure, jittable).

  ``loss_fn(params, batch) -> (loss, metrics)``. The step takes the gradient,
  runs ``tx`` (optimiser and constraints) and applies the updates. The
  returned ``metrics`` are the loss function's, plus ``loss``, ``grad_norm``
  (the gradient's global norm) and ``finite``: whether the loss and the
  *whole* new state (parameters and optimiser state) are finite. A
  non-finite optimiser state (Adam's second moment overflowing while the
  loss looks fine) is a divergence too; :func:`fit` stops on it without a
  host sync per step. Under ``jax.vmap`` (many realizations) the same step
  runs per realization, ``state.step`` unbatched.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from urnn_jax import training
    >>> loss_fn = lambda p, b: (jnp.sum((p["w"] * b) ** 2), {})
    >>> tx = optax.sgd(0.1)
    >>> state = training.create_train_state({"w": jnp.ones(2)}, tx)
    >>> step = jax.jit(training.make_train_step(loss_fn, tx))
    >>> state, metrics = step(state, jnp.ones(2))
    >>> int(state.step), float(metrics["loss"]), bool(metrics["finite"])
    (1, 2.0, True)
  """

  def step(state: TrainState, batch):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics.setdefault("loss", loss)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["finite"] = jnp.isfinite(loss) & all_finite((params, opt_state))
    return TrainState(state.step + 1, params, opt_state), metrics

  return step


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
  leaves = jax.tree.leaves(to_host(tree))
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in leaves)


def abstract_leaf(x, sharding=None):
  """A ``jax.ShapeDtypeStruct`` of ``x`` (its dtype as ``jnp.asarray`` gives it), with ``sharding``."""
  if isinstance(x, jax.ShapeDtypeStruct):
    return x if sharding is None else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  if sharding is None and isinstance(x, jax.Array):
    sharding = x.sharding
  dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
  # The dtype jnp.asarray would give (NumPy float64 is float32 without x64).
  return jax.ShapeDtypeStruct(np.shape(x), jax.dtypes.canonicalize_dtype(dtype), sharding=sharding)


def restore_target(target: PyTree) -> PyTree:
  """The abstract restore target of ``target``: every jax.Array leaf keeps its sharding.

  A leaf that is a ``jax.ShapeDtypeStruct`` stays as it is; a jax.Array
  (placed by :mod:`urnn_jax.parallel` on a mesh of any size, or a plain
  one-device array) becomes a ShapeDtypeStruct with its sharding, so orbax
  restores it onto the current devices whatever device or process count it
  was saved from (a checkpoint of a two-process run restores into a
  one-device state); any other leaf (NumPy, a Python scalar) gets no
  sharding, so orbax restores it with the sharding it was saved with.
  """
  return jax.tree.map(abstract_leaf, target)


def to_host(tree: PyTree) -> PyTree:
  """``tree``'s leaves as NumPy copies, gathering those spread over processes.

  A leaf sharded over several processes' devices is gathered with
  ``multihost_utils.process_allgather``, a collective: every process must
  call ``to_host`` on the same tree. Replicated and process-local leaves are
  copied without communication.
  """
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.array(x)  # a copy: the device buffer may be donated later

  return jax.tree.map(one, tree)


def _step_items(directory: str, step: int) -> set[str]:
  path = os.path.join(directory, str(step))
  return set(os.listdir(path)) if os.path.isdir(path) else set()


class CheckpointError(RuntimeError):
  """A checkpoint cannot be restored or fails its checksum."""


def checksum(state: PyTree, meta: Any = None) -> str:
  """SHA-256 of the leaves of ``state`` (dtype, shape, bytes) and the JSON of ``meta``."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(to_host(state)):
    arr = np.asarray(leaf)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  h.update(json.dumps(to_jsonable(meta), sort_keys=True).encode())
  return h.hexdigest()


class Checkpoints:
  """A thin wrapper around ``orbax.checkpoint.CheckpointManager``.

  * Saves are synchronous, so a run killed right after ``save`` returns can
    resume from that step.
  * Only finite states are saved (a diverged state never replaces a good
    checkpoint); a refused save returns False, and :func:`fit` reports it.
  * ``save(step, state, meta=...)`` stores a JSON ``meta`` (the loop's
    history) *in the same checkpoint* as the state (orbax items ``state``
    and ``meta``), so the two are one unit: a kill can never leave a state
    without the history that led to it.
  * Every checkpoint carries a SHA-256 checksum of the state and meta
    (:func:`checksum`); a restore verifies it. :meth:`restore_latest_good`
    falls back to the previous checkpoint when the newest cannot be restored
    or fails its checksum, and says so. Checkpoints of earlier versions
    (one item ``default``, no checksum) restore unverified.
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

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: PyTree, meta: Mapping[str, Any] | None = None) -> bool:
    """Saves ``state`` (and ``meta``) at ``step``; returns False (and saves nothing) if not finite."""
    if not tree_is_finite(state):
      return False
    meta = None if meta is None else to_jsonable(meta)
    record = {"checksum": checksum(state, meta), "meta": meta}
    args = {"state": self._ocp.args.StandardSave(state), "meta": self._ocp.args.JsonSave(record)}
    self._manager.save(int(step), args=self._ocp.args.Composite(**args), force=True)
    self._manager.wait_until_finished()
    return True

  def restore_with_meta(self, target: PyTree, step: int | None = None) -> tuple[PyTree, dict | None] | None:
    """``(state, meta)`` of the latest (or given) step, the state in ``target``'s structure.

    ``meta`` is None for a checkpoint saved without it. Returns None when
    there is no checkpoint.

    Raises:
      CheckpointError: the checkpoint cannot be restored, or its checksum
        does not match (the message names the step and the reason).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    where = f"checkpoint step {step} in {self.directory}"
    items = _step_items(self.directory, step)
    if not items:
      raise CheckpointError(f"{where}: the step folder is missing or empty.")
    name = "default" if "default" in items else "state"
    abstract = restore_target(target)  # on a mesh: the target's (new) shardings
    args = {name: self._ocp.args.StandardRestore(abstract)}
    if "meta" in items:
      args["meta"] = self._ocp.args.JsonRestore()
    try:
      if name == "default":  # an earlier version's single-item checkpoint: its own manager
        with self._ocp.CheckpointManager(self.directory) as legacy:
          restored = {name: legacy.restore(step, args=args[name])}
      else:
        restored = self._manager.restore(step, args=self._ocp.args.Composite(**args))
      # Keep the target's container types (NamedTuples etc.).
      state = jax.tree.unflatten(jax.tree.structure(target), jax.tree.leaves(restored[name]))
    except Exception as e:  # orbax / tensorstore raise many types on damaged files
      first = str(e).strip().splitlines()[0] if str(e).strip() else ""
      raise CheckpointError(f"{where} cannot be restored: {type(e).__name__}: {first[:300]}") from e
    if name == "default":  # an earlier version's checkpoint: no checksum, no meta
      return state, None
    record = restored.get("meta") if "meta" in items else None
    if not isinstance(record, Mapping) or "checksum" not in record:
      raise CheckpointError(f"{where} has no checksum record.")
    if checksum(state, record.get("meta")) != record["checksum"]:
      raise CheckpointError(f"{where} fails its checksum: its bytes changed after it was written.")
    meta = record.get("meta")
    return state, (dict(meta) if meta is not None else None)

  def restore(self, target: PyTree, step: int | None = None) -> PyTree | None:
    """Restores the latest (or given) step into the structure of ``target``.

    Returns None when there is no checkpoint. Raises CheckpointError as
    :meth:`restore_with_meta`.
    """
    out = self.restore_with_meta(target, step)
    return None if out is None else out[0]

  def restore_latest_good(self, target: PyTree, *, log=print) -> tuple[int, PyTree, dict | None] | None:
    """``(step, state, meta)`` of the newest checkpoint that restores and verifies.

    A checkpoint that fails is reported in one line (which one and why),
    moved aside (``damaged-<step>-<time>``, kept for inspection) and the
    previous one is tried; None (with a line saying so) when none is
    usable, or when there is no checkpoint at all (silently).
    """
    steps = self.all_steps()
    for step in reversed(steps):
      try:
        state, meta = self.restore_with_meta(target, step)
      except CheckpointError as e:
        aside = self._set_aside(step)
        log(f"{e} Moved it to {aside}; falling back to the previous checkpoint.")
        continue
      return step, state, meta
    if steps:
      log(f"no usable checkpoint in {self.directory}; starting over.")
    return None

  def _set_aside(self, step: int) -> str:
    """Renames a damaged step folder (kept for inspection, no longer a checkpoint)."""
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, f"damaged-{step}-{int(time.time())}")
    if is_primary() and os.path.exists(src):  # several processes: process 0 renames it
      os.replace(src, dst)
    _barrier(f"set_aside_{step}")
    self._manager.reload()
    return dst

  def close(self):
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _barrier(name: str) -> None:
  """Waits until every process gets here (a no-op in one process)."""
  if jax.distributed.is_initialized() and jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    multihost_utils.sync_global_devices(name)


class NullStream:
  """A stream that drops what is written (the progress line of processes other than 0)."""

  def write(self, text):
    return len(text)

  def flush(self):
    pass

  def isatty(self):
    return False


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
    self._lock = threading.Lock()

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
    """Adds ``n`` done items; safe to call from several threads (one line for all)."""
    with self._lock:
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
  """Writes ``text`` to ``path`` atomically (a temporary file, then ``os.replace``).

  Process 0 only (:func:`is_primary`): a no-op in the other processes of a run.
  """
  if not is_primary():
    return
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


def write_tables(directory: str, stem: str, rows: Sequence[Mapping[str, Any]], *,
                 columns: Sequence[str] | None = None, document: Any = None, text: str | None = None) -> str:
  """An experiment's result files, atomically: ``stem.json``, ``stem.csv`` and ``stem.md``.

  ``stem.json`` holds ``document`` (default: ``rows``), ``stem.csv`` the
  rows (``columns`` first, when given), ``stem.md`` ``text`` (default: the
  markdown table of ``rows`` over ``columns``). Returns the markdown.
  """
  write_json(os.path.join(directory, f"{stem}.json"), rows if document is None else document)
  write_csv(os.path.join(directory, f"{stem}.csv"), rows, columns)
  text = markdown_table(rows, columns) if text is None else text
  atomic_write(os.path.join(directory, f"{stem}.md"), text if text.endswith("\n") else text + "\n")
  return text


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
  """Saves a matplotlib figure as PNG, atomically (process 0 only, as :func:`atomic_write`)."""
  if not is_primary():
    return
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


# ----------------------------------------------------------------------------
# The run directory: one policy for every binary.


class RunDirError(ValueError):
  """A run directory cannot be used: it cannot be created, or holds another run."""


class ConfigMismatchError(RunDirError):
  """A run directory holds a run with a different configuration."""


def _comparable(config, resumable: Sequence[str], derived: Mapping[str, Any] | None) -> dict:
  d = dataclasses.asdict(config)
  for key in resumable:
    d.pop(key, None)
  d.update(derived or {})
  return to_jsonable(d)


def prepare_run_dir(
    run_dir: str,
    config,
    *,
    resumable: Sequence[str] = (),
    derived: Mapping[str, Any] | None = None,
    filename: str = "config.json",
    legacy_filenames: Sequence[str] = (),
    renamed: Mapping[str, str] | None = None,
) -> None:
  """Creates ``run_dir``, checks ``config`` against the saved one, writes it.

  The one rule of every binary: each field of the dataclass ``config``
  (plus the ``derived`` entries) must equal the saved run's, except the
  fields in ``resumable`` (which may change on resume: train longer, more
  models, ...). A field the saved file predates is taken at its default
  (``type(config)()``'s value), so older run directories stay resumable.
  On a difference, raises :class:`ConfigMismatchError` naming every
  differing field with both values; nothing is written then. The
  configuration is then written to ``run_dir/filename`` atomically.
  ``legacy_filenames``: older names of the file, read when it is missing.
  ``renamed``: ``{old_name: field}``, fields a saved file may hold under an
  older name (read as the field when the field itself is missing).

  Raises:
    ConfigMismatchError: the saved run's configuration differs.
    RunDirError: ``run_dir`` cannot be created (ConfigMismatchError is one too).
  """
  try:
    os.makedirs(run_dir, exist_ok=True)
  except OSError as e:
    raise RunDirError(f"workdir {run_dir!r} cannot be created: {e.strerror or e}.") from None
  current = _comparable(config, resumable, derived)
  saved_path = next((p for p in [os.path.join(run_dir, n) for n in (filename, *legacy_filenames)]
                     if os.path.exists(p)), None)
  if saved_path is not None:
    saved = read_json(saved_path)
    for old, new in (renamed or {}).items():
      if old in saved and new not in saved:
        saved[new] = saved[old]
    try:
      defaults = _comparable(type(config)(), resumable, None)
    except TypeError:  # a config without defaults: every field must be saved
      defaults = {}
    saved_cmp = {k: saved.get(k, defaults.get(k)) for k in current}
    diff = [k for k in current if current[k] != saved_cmp[k]]
    if diff:
      detail = ", ".join(f"{k}: saved {saved_cmp[k]!r} vs now {current[k]!r}" for k in diff)
      raise ConfigMismatchError(
          f"{run_dir} holds a run with a different configuration ({detail}). Use another"
          " --workdir, or the saved flags to resume."
      )
  write_json(os.path.join(run_dir, filename), {**dataclasses.asdict(config), **(derived or {})})


def collect_json(directory: str, filename: str = "results.json") -> list[Any]:
  """``directory/*/filename``, read in sorted order of the sub-directories."""
  out = []
  if os.path.isdir(directory):
    for name in sorted(os.listdir(directory)):
      path = os.path.join(directory, name, filename)
      if os.path.exists(path):
        out.append(read_json(path))
  return out


# ----------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class EarlyStopping:
  """Early stopping on an evaluation metric to maximise (e.g. validation accuracy).

  ``update(index, value)`` records one evaluation's value and returns True
  when it is a new best (strictly better than the best by more than
  ``min_delta``; ties keep the earlier one). ``should_stop`` is True once
  ``patience`` evaluations in a row have not improved (``patience=0``: never).
  """

  patience: int
  min_delta: float = 0.0
  best_value: float = -math.inf
  best_epoch: int | None = None
  epochs_without_improvement: int = 0

  def update(self, epoch: int, value: float) -> bool:
    value = float(value)
    if math.isfinite(value) and (self.best_epoch is None or value > self.best_value + self.min_delta):
      self.best_value, self.best_epoch = value, int(epoch)
      self.epochs_without_improvement = 0
      return True
    self.epochs_without_improvement += 1
    return False

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.epochs_without_improvement >= self.patience

  @classmethod
  def replay(cls, values: Sequence[float], patience: int, min_delta: float = 0.0) -> "EarlyStopping":
    """The state after the evaluations ``0, 1, ...`` had ``values`` (stops feeding once it would stop)."""
    es = cls(patience, min_delta)
    for epoch, v in enumerate(values):
      if es.should_stop:
        break
      es.update(epoch, v)
    return es


class FitResult(NamedTuple):
  """What :func:`fit` returns.

  ``history``: one entry per evaluation (``step``, the ``train_*`` metrics,
  the evaluation's own keys, ``train_seconds`` / ``eval_seconds`` / ``train_steps``
  since the previous one). ``meta``: ``train_seconds`` (in all) and
  ``compile_seconds``. ``diverged``: None, or ``{"step", "message"}``.
  ``best_params``: the parameters of the best evaluation (early stopping).
  ``interrupted``: stopped by ``stop_after`` before the end.
  """

  state: PyTree
  history: list
  meta: dict
  diverged: dict | None
  stopped_early: bool
  early_stopping: EarlyStopping | None
  best_params: PyTree | None
  interrupted: bool
  resumed_from: int | None


def stepwise(step_fn, batch_fn=None):
  """An ``advance`` for :func:`fit` from a one-step ``step_fn``.

  ``step_fn(state, batch_fn(step))`` (or ``step_fn(state)`` without
  ``batch_fn``) is called for each step; the metrics stay on the device.
  """

  def advance(state, start: int, count: int):
    metrics = []
    for s in range(start, start + count):
      state, m = step_fn(state) if batch_fn is None else step_fn(state, batch_fn(s))
      metrics.append(m)
    return state, metrics

  return advance


def _first_divergence(host_metrics: Sequence[Mapping[str, Any]]):
  """``(index, description)`` of the first metrics entry that is not finite, or None."""
  for i, m in enumerate(host_metrics):
    if "finite" in m and not bool(np.all(m["finite"])):
      return i, "loss or training state (parameters / optimiser state)"
    bad = [k for k, v in m.items() if k != "finite" and not np.all(np.isfinite(np.asarray(v, float)))]
    if bad:
      return i, ", ".join(bad)
  return None


def _train_summary(host_metrics: Sequence[Mapping[str, Any]], how: str) -> dict:
  if not host_metrics:
    return {}
  keys = [k for k in host_metrics[-1] if k != "finite"]
  if how == "last":
    return {f"train_{k}": float(host_metrics[-1][k]) for k in keys}
  out = {}
  for k in keys:
    total = 0.0
    for m in host_metrics:
      total += float(m[k])
    out[f"train_{k}"] = total / len(host_metrics)
  return out


def fit(
    state: PyTree,
    advance,
    *,
    total_steps: int,
    checkpoint_dir: str,
    eval_every: int = 0,
    checkpoint_every: int = 0,
    evaluate=None,
    eval_at_start: bool = False,
    train_metrics: str = "last",
    early_stopping: EarlyStopping | None = None,
    monitor: str | None = None,
    best_dir: str | None = None,
    params_of=lambda s: s.params,
    step_of=lambda s: s.step,
    history_path: str | None = None,
    history_extra: Mapping[str, Any] | None = None,
    compile=None,
    check=_first_divergence,
    postfix=None,
    force_progress: bool = True,
    desc: str = "",
    log=print,
    progress=None,
    progress_stream=None,
    stop_after: int | None = None,
    max_to_keep: int = 2,
) -> FitResult:
  """The training loop every binary shares: resume, evaluate, checkpoint, stop.

  Args:
    state: the initial state (a pytree with the step count at ``step_of``).
    advance: ``(state, start, count) -> (state, metrics)`` runs ``count``
      steps from step ``start``; ``metrics`` is a list of per-step metric
      dicts (or one dict for the whole chunk), left on the device
      (:func:`stepwise` makes one from a step function; a chunk of steps in
      one ``lax.scan`` is another).
    total_steps: the step to train to.
    checkpoint_dir: orbax checkpoints of the state, with the history in the
      same checkpoint (one unit; see :class:`Checkpoints`). A run resumes
      from the latest one.
    eval_every: evaluate every this many steps, and at the end (0: only at
      the end).
    checkpoint_every: checkpoint every this many steps, and at the end; 0:
      at every evaluation. The same meaning in every binary.
    evaluate: ``state -> dict`` of evaluation results, or None (then the
      evaluation points are only where training syncs and checkpoints).
    eval_at_start: also evaluate at step 0 (a fresh run).
    train_metrics: the ``train_*`` entries of an evaluation: the ``"last"``
      step's metrics, or their ``"mean"`` since the previous evaluation.
    early_stopping, monitor, best_dir: stop once ``history[-1][monitor]``
      has not improved for ``patience`` evaluations; the best parameters are
      checkpointed to ``best_dir`` and returned.
    params_of, step_of: where the parameters and the step count live in
      ``state``.
    history_path: also write the history (and a divergence) there as JSON
      for people and plots, at every evaluation and checkpoint.
    history_extra: more top-level entries of that JSON (e.g. the run's name),
      written first.
    compile: ``() -> seconds``, called once before the first step of a run
      that has steps to do (ahead-of-time compilation, timed apart).
    check: ``host metrics list -> (index, description) | None``: the first
      diverged entry. Default: a ``finite`` flag of :func:`make_train_step`
      or any non-finite value. Metrics reach the host only at evaluations
      and checkpoints, so the check costs no sync per step.
    postfix: ``(state, step, entry | None) -> str``, the progress line's tail.
    force_progress: write a progress line at every evaluation, whatever the
      line's ``min_interval`` (False: at most one per interval, for one line
      shared by several loops).
    desc, log, progress, progress_stream: the progress line (a
      :class:`Progress` is made unless ``progress`` is given) and messages.
    stop_after: stop (as a kill would, after a checkpoint) once this many
      steps are done; for tests.

  A divergence (non-finite metrics, evaluation, or a state that cannot be
  checkpointed) stops the loop; ``FitResult.diverged`` says where, and the
  message says which checkpoint was kept. It is recorded in
  ``history_path``, so resuming the same run reports it again instead of
  repeating it.
  """
  if train_metrics not in ("last", "mean"):
    raise ValueError(f"train_metrics={train_metrics!r}; expected 'last' or 'mean'.")
  if early_stopping is not None and monitor is None:
    raise ValueError("fit: early_stopping needs monitor (the evaluation key to maximise).")
  if not is_primary():  # several processes: process 0 alone reports
    log = lambda *args, **kwargs: None  # pylint: disable=unnecessary-lambda-assignment
    if progress is None:
      progress_stream = NullStream()
  ckpt = Checkpoints(checkpoint_dir, max_to_keep=max_to_keep)
  best_ckpt = Checkpoints(best_dir, max_to_keep=max_to_keep) if best_dir else None
  own_progress = progress is None
  meta: dict = {"train_seconds": 0.0, "compile_seconds": None}
  history: list[dict] = []
  interval: list = []  # host metrics of the steps since the last evaluation
  interval_seconds = 0.0
  diverged = None
  resumed_from = None
  try:
    latest = ckpt.latest_step()
    if latest is not None and latest > total_steps:
      raise ValueError(
          f"{desc}: the checkpoint in {checkpoint_dir} is at step {latest} > {total_steps}, the"
          " steps asked for; train longer or use a fresh --workdir."
      )
    good = ckpt.restore_latest_good(state, log=lambda msg: log(f"[{desc}] {msg}"))
    if good is not None:
      latest, state, saved = good
      if saved is not None:
        history = list(saved.get("history", []))
        meta.update({k: v for k, v in saved.get("meta", {}).items() if v is not None})
        interval = list(saved.get("interval", []))  # the steps since the last evaluation
        interval_seconds = float(saved.get("interval_seconds", 0.0))
      elif history_path and os.path.exists(history_path):  # written before the history moved in
        old = read_json(history_path)
        history = [h for h in old.get("history", []) if h["step"] <= latest]
        meta.update({k: old[k] for k in meta if old.get(k) is not None})
      resumed_from = int(step_of(state))
      log(f"[{desc}] resumed from step {resumed_from}")
    step = int(step_of(state))
    if history_path and os.path.exists(history_path):
      old_div = read_json(history_path).get("diverged")
      if old_div is not None and old_div["step"] > step:
        diverged = old_div  # Deterministic: resuming would diverge again.

    es, best_params = None, None
    if early_stopping is not None:
      es = EarlyStopping.replay([h[monitor] for h in history], early_stopping.patience,
                                early_stopping.min_delta)
      if es.best_epoch is not None:
        best_step = history[es.best_epoch]["step"]
        best_params = best_ckpt.restore(params_of(state), step=best_step) if best_ckpt else None
        if best_ckpt and best_params is None:
          raise RuntimeError(f"{desc}: the best-evaluation checkpoint (step {best_step}) is missing.")

    def write_history():
      if history_path:
        write_json(history_path, {**(history_extra or {}), "history": history, **meta, "diverged": diverged})

    def run_eval(s, interval, interval_seconds):
      entry = {"step": s, **_train_summary(interval, train_metrics)}
      t0 = time.perf_counter()
      entry.update(evaluate(state) if evaluate is not None else {})
      entry.update(train_steps=len(interval), train_seconds=interval_seconds,
                   eval_seconds=time.perf_counter() - t0)
      return entry

    def divergence(s, what):
      kept = ckpt.latest_step()
      kept = (f"The last good checkpoint (step {kept}) was kept" if kept is not None
              else "No checkpoint had been written yet")
      return {"step": s, "message": f"training diverged at step {s}: non-finite {what}. {kept};"
                                    " lower the learning rate or add a constraint."}

    stopped = es is not None and es.should_stop
    if eval_at_start and step == 0 and evaluate is not None and not history and diverged is None:
      entry = run_eval(0, [], 0.0)
      bad = check([{k: v for k, v in entry.items() if isinstance(v, float)}])
      history.append(entry)
      if bad is not None:
        diverged = divergence(0, bad[1])
    todo = not stopped and diverged is None and step < total_steps
    if todo and compile is not None:
      seconds = compile()
      if meta.get("compile_seconds") is None:
        meta["compile_seconds"] = seconds
    if own_progress:
      stream = sys.stderr if progress_stream is None else progress_stream
      tty = hasattr(stream, "isatty") and stream.isatty()
      progress = Progress(total_steps, desc, initial=min(step, total_steps), stream=stream,
                          min_interval=0.5 if tty else 15.0)  # Logs: a line per 15 s.
    pending, pending_steps = [], []
    interrupted = False
    t_last = time.perf_counter()
    while todo and step < total_steps:
      bounds = [total_steps]
      for every in (eval_every, checkpoint_every):
        if every:
          bounds.append((step // every + 1) * every)
      if stop_after is not None and stop_after > step:
        bounds.append(stop_after)
      nxt = min(bounds)
      state, ms = advance(state, step, nxt - step)
      ms = [ms] if isinstance(ms, Mapping) else list(ms)
      pending += ms
      pending_steps += [nxt] if len(ms) == 1 else list(range(step + 1, nxt + 1))
      progress.update(nxt - step)
      step = nxt
      end = step == total_steps
      is_eval = end or (eval_every and step % eval_every == 0)
      is_stop = stop_after is not None and step >= stop_after and not end
      is_ckpt = (end or is_stop or (checkpoint_every and step % checkpoint_every == 0)
                 or (not checkpoint_every and is_eval))
      if not (is_eval or is_ckpt):
        continue
      host = jax.device_get(pending)
      elapsed = time.perf_counter() - t_last
      meta["train_seconds"] += elapsed
      interval_seconds += elapsed
      bad = check(host)
      if bad is not None:
        diverged = divergence(pending_steps[bad[0]], bad[1])
        break
      interval += host
      pending, pending_steps = [], []
      entry = None
      if is_eval:
        entry = run_eval(step, interval, interval_seconds)
        interval, interval_seconds = [], 0.0
        history.append(entry)
        bad = check([{k: v for k, v in entry.items() if isinstance(v, float)}])
        if bad is not None:
          diverged = divergence(step, "evaluation " + bad[1])
          break
        if es is not None:
          improved = es.update(len(history) - 1, entry[monitor])
          entry["best_so_far"] = es.best_epoch
          if improved:
            best_params = to_host(params_of(state))  # a copy: state may be donated
            if best_ckpt is not None:
              best_ckpt.save(step, params_of(state))
      write_history()  # Best params, then the history that points at them, then the state.
      if is_ckpt and not ckpt.save(step, state, meta={"history": history, "meta": meta, "interval": interval,
                                                       "interval_seconds": interval_seconds}):
        diverged = divergence(step, "training state (the checkpoint was refused)")
        break
      if postfix is not None:
        progress.update(0, postfix=postfix(state, step, entry), force=force_progress)
      if es is not None and es.should_stop:
        stopped = True
        log(f"[{desc}] early stop at step {step}: no improvement in {monitor} for"
            f" {early_stopping.patience} evaluations")
        break
      if is_stop:
        interrupted = True
        break
      t_last = time.perf_counter()
    if diverged is not None and todo:
      log(f"[{desc}] {diverged['message']}")
    if own_progress:
      progress.close()
    write_history()
  finally:
    ckpt.close()
    if best_ckpt is not None:
      best_ckpt.close()
  return FitResult(state, history, meta, diverged, stopped, es, best_params, interrupted,
                   resumed_from)
