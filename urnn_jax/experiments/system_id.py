r"""System identification (seed 000 §5, Figs 2 and 3): RNN vs URNN vs ContRNN vs LSTM.

The logic behind ``python -m train.system_id``. A contractive ReLU RNN with
n = 4 states (:mod:`urnn_jax.data.synthetic`) generates noisy input/output
sequences; students (any :data:`urnn_jax.models.MODELS` entry, ReLU where it
applies, read out by y = C h without bias) are trained on them with the MSE
loss and scored by their test R^2. All realizations of a configuration (model,
hidden size) train together: parameters, optimiser states and data are
stacked on a leading axis, :func:`urnn_jax.training.make_train_step` runs
under ``jax.vmap`` in a jitted ``lax.scan`` over a chunk of steps (to the next
epoch end or checkpoint), and :func:`urnn_jax.training.fit` drives the chunks.
The eq. (1) models of one size start from the same (Haar) W, F and C.

``workdir``: ``config.json`` (a rerun must match it; older runs:
``settings.json``), ``data.json`` (teacher summary, optimal R^2),
``checkpoints/<model>_h<n>/`` (the stacked :class:`Carry`),
``results/<model>_h<n>.json`` (every realization's R^2 and diagnostics),
``results.csv``, ``summary.{json,csv,md}`` (median and IQR of R^2) and
``r2_vs_hidden.png`` (R^2 vs hidden units, and vs adjusted units).

Resume: a configuration with results is skipped, one with a checkpoint
continues (bit-identical to an uninterrupted run: data from
``fold_in(key(seed), 0)``, parameters from ``fold_in(fold_in(key(seed), 1),
hidden)``, epoch e's batch order from ``fold_in(fold_in(key(seed), 2), e)``,
then realization r).

Divergence: a step whose loss or new state (parameters, optimiser state) is
not finite is rejected for that realization, which is frozen at its last
finite state and marked diverged: R^2 NaN, left out of the quartiles and
counted in ``n_diverged``. Only when every realization diverged does the
configuration stop (:class:`urnn_jax.training.DivergenceError`). Finite
training but overflowing test predictions: R^2 = -inf. Targets are scaled per
realization and channel by their training std (R^2, per channel and
averaged, is invariant to it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
import sys
import threading
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from urnn_jax import config as config_lib
from urnn_jax import models as registry
from urnn_jax import orthogonal
from urnn_jax import parallel as mesh_lib
from urnn_jax import training
from urnn_jax.data import synthetic
from urnn_jax.recurrent import SequenceRegressor

PAPER_HIDDEN = (2, 4, 6, 8, 10, 12, 14)
# Plot styles; other registry models get their name and one of _OTHER_STYLES.
LABELS = {"rnn": "RNN", "urnn": "URNN", "contrnn": "ContRNN", "lstm": "LSTM", "gru": "GRU"}
COLORS = {"rnn": "tab:blue", "urnn": "tab:orange", "contrnn": "tab:green", "lstm": "tab:purple",
          "gru": "tab:brown"}
MARKERS = {"rnn": "o", "urnn": "s", "contrnn": "^", "lstm": "D", "gru": "v"}
_OTHER_STYLES = tuple(zip(("tab:pink", "tab:gray", "tab:olive", "tab:cyan", "black", "gold"),
                          ("P", "X", "*", "h", "<", ">")))
# Fields that may change when a work directory is reused.
RESUMABLE = ("models", "hidden", "checkpoint_every", "unroll", "eval_batch", "devices")


_f = config_lib.field


@dataclasses.dataclass(frozen=True)
class Config:
  """A sweep: ``models`` x ``hidden`` configurations, each over ``realizations``.

  The defaults are the CPU-sized main job (see :data:`PAPER` for the paper's
  scale). The :data:`RESUMABLE` fields may differ when a work directory is
  reused; every other field must match its ``config.json``.
  """

  models: tuple[str, ...] = _f(("rnn", "urnn"), "Models, names of urnn_jax.models.MODELS.",
                               list(registry.MODELS))
  hidden: tuple[int, ...] = _f(PAPER_HIDDEN, "Hidden sizes of the trained models.")
  realizations: int = _f(6, "Teacher realizations (30 in the paper).")
  snr_db: float = _f(20.0, "Output SNR in dB (20: Fig. 2, 15: Fig. 3).")
  inputs: str = _f("gaussian", "Inputs: i.i.d. Gaussian (Fig. 2) or sparse Gaussian, nonzero"
                   " w.p. 0.02 (Fig. 3).", ["gaussian", "sparse"])
  train_sequences: int = _f(200, "Training sequences per realization.")
  test_sequences: int = _f(50, "Test sequences per realization.")
  length: int = _f(1000, "Time steps T per sequence.")
  epochs: int = _f(200, "Training epochs (passes over the training sequences).")
  batch_size: int = _f(10, "Sequences per batch.")
  learning_rate: float = _f(0.01, "Learning rate.")
  optimizer: str = _f("adam", "Optimiser (all models).", sorted(training.OPTIMIZERS))
  # Not in the paper (constant lr, no clipping): at this scale (4000 steps)
  # a cosine decay and clipping let the models converge (see the README).
  lr_schedule: str = _f("cosine", "Learning rate: constant (the paper's), or cosine decay to 0"
                        " over the run.", list(training.LR_SCHEDULES))
  grad_clip: float = _f(1.0, "Clip the gradients' global norm to this before the optimiser (0: off).")
  constraint: str = _f("projection", "urnn: how W is kept orthogonal after each step (projection:"
                       " SVD, the paper's).", list(registry.CONSTRAINTS))
  standardize_targets: bool = _f(True, "Scale each output channel by its training std (R^2 is unchanged).")
  seed: int = _f(0, "Seed of data, initialisation and batch order.")
  checkpoint_every: int = _f(200, "Checkpoint every this many steps (0: every epoch).")
  unroll: int = _f(1, "lax.scan unroll of the recurrences.")
  eval_batch: int = _f(100, "Test sequences per evaluation call.")
  devices: int = _f(0, "Devices the realizations are sharded over (the mesh's realization axis; results do"
                    " not depend on it), counted over all processes; 0: the most devices that divide"
                    " --realizations (several processes: the same number from each).")

  def teacher_spec(self) -> synthetic.TeacherSpec:
    return synthetic.TeacherSpec(snr_db=self.snr_db, inputs=self.inputs, seq_len=self.length)

  def steps_per_epoch(self) -> int:
    return self.train_sequences // self.batch_size

  def total_steps(self) -> int:
    return self.epochs * self.steps_per_epoch()

  def mesh(self):
    """The realization mesh (:func:`urnn_jax.parallel.local_mesh`): ``devices`` devices over all
    processes (0: the most that divide ``realizations``)."""
    return mesh_lib.local_mesh(self.realizations, self.devices, axis=mesh_lib.REALIZATIONS, name="realizations")

  def derived(self) -> dict:
    return {"teacher": dataclasses.asdict(self.teacher_spec())}

  def comparable(self) -> dict:
    """The settings that determine every configuration's result."""
    d = {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE}
    return {**d, **self.derived()}

  def validate(self) -> None:
    registry.check_names(self.models)
    if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
      raise ValueError(f"hidden={list(self.hidden)} must be positive ints.")
    if len(set(self.hidden)) != len(self.hidden):
      raise ValueError(f"hidden={list(self.hidden)} has duplicates.")
    config_lib.check_ints(self, positive=("realizations", "train_sequences", "test_sequences", "length", "epochs",
                                          "batch_size", "unroll", "eval_batch"),
                          non_negative=("checkpoint_every", "devices"))
    self.mesh()  # devices: exist and divide the realizations
    if self.batch_size > self.train_sequences:
      raise ValueError(f"batch_size={self.batch_size} is larger than train_sequences={self.train_sequences}.")
    # Validates optimizer, learning_rate, grad_clip and lr_schedule.
    training.make_optimizer(self.optimizer, self.learning_rate, grad_clip=self.grad_clip,
                            lr_schedule=self.lr_schedule, total_steps=self.total_steps())
    registry.ModelOptions(min(self.hidden), constraint=self.constraint).validate()
    self.teacher_spec()  # Validates snr_db, inputs, length.


# The paper's scale (seed 000 §5): all models, 30 realizations, 700 train and
# 300 test sequences of T = 1000 per realization. The paper does not give the
# number of epochs; 30 (2100 steps) is ours. Measured: 2 h 33 min on the
# idle 2-core CPU, 1 h 48 min of it the LSTM (README).
PAPER = Config(models=("rnn", "urnn", "contrnn", "lstm"), hidden=PAPER_HIDDEN, realizations=30,
               train_sequences=700, test_sequences=300, length=1000, epochs=30,
               lr_schedule="constant", grad_clip=0.0)  # The paper's Adam, lr 0.01, no clipping.


# ----------------------------------------------------------------------------
# Models, data and the compiled programs.


def make_model(name: str, hidden: int, output_size: int = 2, *, unroll: int = 1) -> SequenceRegressor:
  """The student ``name`` (registry) with ``hidden`` states: y(k) = C h(k), no read-out bias."""
  return SequenceRegressor(registry.make_cell(name, registry.ModelOptions(hidden, "relu")), output_size,
                           unroll=unroll)


def make_optimizer(name: str, learning_rate: float = 0.01, optimizer: str = "adam",
                   constraint: str = "projection", *, grad_clip: float = 0.0, lr_schedule: str = "constant",
                   total_steps: int | None = None) -> optax.GradientTransformation:
  """The base optimiser (:func:`urnn_jax.training.make_optimizer`) and the model's constraint."""
  base = training.make_optimizer(optimizer, learning_rate, grad_clip=grad_clip, lr_schedule=lr_schedule,
                                 total_steps=total_steps)
  # The constraints do not depend on the hidden size; contraction 1: ||W||_2 <= 1.
  return registry.make_tx(name, base, registry.ModelOptions(1, "relu", constraint=constraint))


def config_name(model: str, hidden: int) -> str:
  return f"{model}_h{hidden:02d}"


class Data(NamedTuple):
  """Stacked realizations as the trainer uses them (device arrays)."""

  x_train: jax.Array  # (R, N, T, m)
  y_train: jax.Array  # (R, N, T, p), scaled
  x_test: jax.Array
  y_test: jax.Array  # scaled
  scale: np.ndarray  # (R, p): y_scaled = y / scale


def make_data(config: Config) -> tuple[Data, dict]:
  """The ``config.realizations`` teacher realizations and their summary."""
  spec = config.teacher_spec()
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  raw = synthetic.make_realizations(key, spec, config.realizations, config.train_sequences,
                                    config.test_sequences)
  if config.standardize_targets:
    scale = np.std(np.asarray(raw.y_train), axis=(1, 2))  # (R, p)
    scale = np.where(scale > 0, scale, 1.0)
  else:
    scale = np.ones((config.realizations, raw.y_train.shape[-1]), np.float32)
  s = scale[:, None, None, :]
  data = Data(jnp.asarray(raw.x_train), jnp.asarray(raw.y_train / s, jnp.float32),
              jnp.asarray(raw.x_test), jnp.asarray(raw.y_test / s, jnp.float32), scale)
  info = synthetic.summary(raw, spec)
  info["target_scale"] = scale.tolist()
  return data, info


class Carry(NamedTuple):
  """Everything a configuration's training carries (a pytree; checkpointed).

  ``state`` is stacked over realizations except ``state.step`` (a scalar,
  the number of steps done). ``alive[r] = 0`` once realization r diverged.
  """

  state: training.TrainState
  alive: jax.Array  # (R,) int32
  diverged_step: jax.Array  # (R,) int32, -1 while alive
  loss_sum: jax.Array  # (R,) float32: this epoch's summed batch losses
  loss_history: jax.Array  # (epochs, R) float32: mean train loss per epoch


def _where(ok, new, old):
  """Per realization r (the leading axis of every leaf): ``new`` where ``ok[r]``, else ``old``."""
  return jax.tree.map(lambda a, b: jnp.where(ok.reshape(ok.shape + (1,) * (a.ndim - 1)), a, b), new, old)


def make_chunk_fn(model, tx, steps_per_epoch: int = 1):
  """A jitted ``(carry, constants, x_train, y_train, idx) -> carry`` running ``len(idx)`` steps.

  ``idx`` is ``(k, batch)``: the training sequences of each step (the same
  for every realization, each on its own data); ``constants``: the model's
  non-trained variables, stacked. The step is
  :func:`urnn_jax.training.make_train_step` under ``jax.vmap`` (the step
  count unbatched); a realization whose step is not ``finite`` keeps its
  previous state and is marked dead. At the end of each epoch the mean
  loss goes to ``loss_history``. One compiled program per chunk length.
  """

  def loss_fn(params, batch):
    constants, xb, yb = batch
    return jnp.mean(jnp.square(model.apply({"params": params, **constants}, xb) - yb)), {}

  axes = training.TrainState(None, 0, 0)
  vstep = jax.vmap(training.make_train_step(loss_fn, tx), in_axes=(axes, 0), out_axes=(axes, 0))

  def chunk(carry: Carry, constants, x_train, y_train, idx):
    def body(c: Carry, batch):
      xb = jnp.take(x_train, batch, axis=1)  # (R, B, T, m)
      yb = jnp.take(y_train, batch, axis=1)
      new, metrics = vstep(c.state, (constants, xb, yb))
      ok = (c.alive > 0) & metrics["finite"]
      step = c.state.step
      loss_sum = c.loss_sum + jnp.where(ok, metrics["loss"], 0.0)
      end = (step + 1) % steps_per_epoch == 0
      epoch = jnp.where(end, step // steps_per_epoch, c.loss_history.shape[0])  # out of range: dropped
      return Carry(
          state=training.TrainState(new.step, _where(ok, new.params, c.state.params),
                                    _where(ok, new.opt_state, c.state.opt_state)),
          alive=jnp.where(ok, c.alive, 0),
          diverged_step=jnp.where((c.alive > 0) & ~ok, step, c.diverged_step),
          loss_sum=jnp.where(end, 0.0, loss_sum),
          loss_history=c.loss_history.at[epoch].set(loss_sum / steps_per_epoch, mode="drop"),
      ), None

    return lax.scan(body, carry, idx)[0]

  return jax.jit(chunk, donate_argnums=(0,))


class Programs(NamedTuple):
  """A configuration's model, optimiser and compiled functions."""

  model: SequenceRegressor
  tx: optax.GradientTransformation
  init: Callable  # (keys (R,), x_example) -> (params, opt_state, constants), stacked
  chunk: Callable  # see make_chunk_fn
  predict: Callable  # (params, constants, x (R, N, T, m)) -> (R, N, T, p)


def build_programs(model, tx, steps_per_epoch: int = 1) -> Programs:
  def init_one(key, x_example):
    variables = dict(model.init(key, x_example))
    params = variables.pop("params")
    return params, tx.init(params), variables

  # init is not jitted: compiling the vmapped flax init (many threefry calls)
  # takes seconds per configuration, op-by-op dispatch a fraction of that.
  return Programs(model, tx, jax.vmap(init_one, in_axes=(0, None)), make_chunk_fn(model, tx, steps_per_epoch),
                  jax.jit(jax.vmap(lambda p, c, x: model.apply({"params": p, **c}, x))))


@functools.lru_cache(maxsize=64)
def programs(model_name: str, hidden: int, output_size: int = 2, *, unroll: int = 1,
             learning_rate: float = 0.01, optimizer: str = "adam", constraint: str = "projection",
             grad_clip: float = 0.0, lr_schedule: str = "constant", total_steps: int | None = None,
             steps_per_epoch: int = 1) -> Programs:
  """The (cached) programs of a configuration: runs in one process (tests, a
  resumed configuration) reuse them instead of compiling them again."""
  return build_programs(make_model(model_name, hidden, output_size, unroll=unroll),
                        make_optimizer(model_name, learning_rate, optimizer, constraint, grad_clip=grad_clip,
                                       lr_schedule=lr_schedule, total_steps=total_steps),
                        steps_per_epoch)


def config_programs(config: Config, model_name: str, hidden: int, output_size: int = 2) -> Programs:
  """:func:`programs` for a configuration of ``config``."""
  return programs(model_name, hidden, output_size, unroll=config.unroll, learning_rate=config.learning_rate,
                  optimizer=config.optimizer, constraint=config.constraint, grad_clip=config.grad_clip,
                  lr_schedule=config.lr_schedule, total_steps=config.total_steps(),
                  steps_per_epoch=config.steps_per_epoch())


# The realization axis of each part of the carry (the step count is shared).
CARRY_AXES = Carry(state=training.TrainState(None, 0, 0), alive=0, diverged_step=0, loss_sum=0, loss_history=1)


def init_carry(progs: Programs, config: Config, hidden: int, x_example) -> tuple[Carry, dict]:
  """Stacked initial state (realization r: ``fold_in(init_key, r)``) and the model's constants."""
  init_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 1), hidden)
  keys = jax.vmap(lambda r: jax.random.fold_in(init_key, r))(jnp.arange(config.realizations))
  params, opt_state, constants = progs.init(keys, x_example)
  r = config.realizations
  return Carry(training.TrainState(jnp.zeros((), jnp.int32), params, opt_state), jnp.ones((r,), jnp.int32),
               jnp.full((r,), -1, jnp.int32), jnp.zeros((r,), jnp.float32),
               jnp.zeros((config.epochs, r), jnp.float32)), constants


def epoch_order(config: Config, epoch: int) -> np.ndarray:
  """``(steps_per_epoch, batch)`` training-sequence indices of ``epoch``."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 2), epoch)
  return training.batch_indices(key, config.train_sequences, config.batch_size)


def evaluate_r2(progs: Programs, params, constants, x, y, *, eval_batch: int = 100) -> np.ndarray:
  """``(R,)`` test R^2 of stacked ``params`` on stacked ``(x, y)`` (per-channel average)."""
  # to_host: realizations spread over several processes are gathered (a collective).
  pred = np.concatenate([mesh_lib.to_host(progs.predict(params, constants, x[:, s:s + eval_batch]))
                         for s in range(0, x.shape[1], eval_batch)], axis=1)
  return np.asarray(jax.vmap(synthetic.r2_score)(jnp.asarray(mesh_lib.to_host(y)), jnp.asarray(pred)))


def recurrent_kernel(model_name: str, hidden: int, params, constants) -> np.ndarray | None:
  """The stacked transition matrices ``(R, n, n)`` of an eq. (1) model (None for others)."""
  if not registry.get(model_name).eq1:
    return None
  cell_vars = {k: v["rnn"]["cell"] for k, v in {"params": params, **constants}.items()}
  cell = registry.make_cell(model_name, registry.ModelOptions(hidden))
  return mesh_lib.to_host(jax.vmap(lambda v: cell.apply(v, method=lambda m: m.transition_kernel()))(cell_vars))


# ----------------------------------------------------------------------------
# Training one configuration.


def train_configuration(config: Config, model_name: str, hidden: int, data: Data, workdir: str, *,
                        progress=None, stop_after_steps: int | None = None,
                        log: Callable[[str], None] = print, mesh=None) -> dict | None:
  """Trains all realizations of (model, hidden) together with :func:`urnn_jax.training.fit`.

  Resumes from ``workdir/checkpoints/<model>_h<n>`` when a checkpoint is
  there. ``stop_after_steps`` stops (as if interrupted) once that many steps
  are done in total, after checkpointing, and returns None. ``progress``:
  the progress line to update (None: fit's own). ``mesh``: a realization
  mesh (:meth:`Config.mesh`; ``data`` already placed on it); None: one device.

  When every realization diverges, the result says so (``diverged``: the
  message; every test R^2 NaN) instead of raising, so a sweep finishes its
  other configurations.
  """
  name = config_name(model_name, hidden)
  progs = config_programs(config, model_name, hidden, int(data.y_train.shape[-1]))
  carry, constants = init_carry(progs, config, hidden, data.x_train[0, :1, :2])
  if mesh is not None and mesh.size > 1:  # each device trains its realizations (sharded jit)
    carry = mesh_lib.shard_realizations(mesh, carry, CARRY_AXES)
    constants = mesh_lib.shard_realizations(mesh, constants)
  spe, total = config.steps_per_epoch(), config.total_steps()
  first_chunk_s = []

  def advance(carry: Carry, start: int, count: int):
    epoch, offset = divmod(start, spe)  # A chunk ends at the next epoch end or checkpoint.
    idx = jnp.asarray(epoch_order(config, epoch)[offset:offset + count])
    t0 = time.perf_counter()
    carry = progs.chunk(carry, constants, data.x_train, data.y_train, idx)
    if not first_chunk_s:
      jax.block_until_ready(carry)
      first_chunk_s.append(time.perf_counter() - t0)
    return carry, {"alive": jnp.sum(carry.alive), "last_diverged_step": jnp.max(carry.diverged_step)}

  def all_dead(host_metrics):
    for i, m in enumerate(host_metrics):
      if "alive" in m and int(m["alive"]) == 0:
        return i, ("loss or training state in every realization: every realization diverged (the last"
                   f" at step {int(m['last_diverged_step']) + 1})")
    return None

  def postfix(carry: Carry, step: int, entry) -> str:
    # The median: one realization with a huge (finite) loss must not hide the rest.
    e = step // spe
    alive, history = mesh_lib.to_host((carry.alive, carry.loss_history))  # every process calls it
    alive = alive > 0
    loss = float(np.median(history[e - 1][alive])) if e else math.nan
    return f"{name} epoch {e}/{config.epochs} median loss {loss:.4g}"

  out = training.fit(
      carry, advance, total_steps=total, checkpoint_dir=os.path.join(workdir, "checkpoints", name),
      eval_every=spe, checkpoint_every=config.checkpoint_every, evaluate=None,
      params_of=lambda c: c.state.params, step_of=lambda c: c.state.step, check=all_dead,
      postfix=postfix, force_progress=False, desc=name, log=log, progress=progress, stop_after=stop_after_steps)
  if out.interrupted:
    return None
  # Every realization diverged: recorded as such (all R^2 NaN, the message kept), so the
  # sweep goes on with the other configurations and a rerun does not repeat it.
  diverged = None if out.diverged is None else f"{name}: {out.diverged['message']}"

  carry = out.state
  params = carry.state.params
  r2 = evaluate_r2(progs, params, constants, data.x_test, data.y_test, eval_batch=config.eval_batch)
  alive, hist, diverged_steps = mesh_lib.to_host((carry.alive, carry.loss_history, carry.diverged_step))
  alive = alive > 0
  # Diverged in training: NaN. Alive but non-finite test predictions (an
  # unstable free RNN can blow up on new inputs): -inf, the worst R^2.
  r2 = np.where(alive, np.where(np.isfinite(r2), r2, -np.inf), np.nan)
  kernel = recurrent_kernel(model_name, hidden, params, constants)
  ortho = None if kernel is None else np.asarray(orthogonal.orthogonality_error(jnp.asarray(kernel)))
  spec_norm = None if kernel is None else np.linalg.norm(kernel, ord=2, axis=(-2, -1))
  rows = [{"realization": r, "test_r2": float(r2[r]), "diverged": bool(not alive[r]),
           "diverged_step": int(diverged_steps[r]) if not alive[r] else None,
           "final_train_loss": float(hist[-1, r]) if alive[r] else None,
           "orthogonality_error": None if ortho is None else float(ortho[r]),
           "w_spectral_norm": None if spec_norm is None else float(spec_norm[r])}
          for r in range(config.realizations)]
  q25, med, q75 = r2_quartiles(r2)
  return {"model": model_name, "hidden": hidden, "adjusted_hidden": registry.adjusted_hidden(model_name, hidden),
          "num_params": sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(params)),
          "test_r2": r2.tolist(), "median_r2": float(med), "q25_r2": float(q25), "q75_r2": float(q75),
          "n_diverged": int((~alive).sum()), "realizations": rows, "loss_history": hist.T.tolist(),
          "steps": int(carry.state.step), "diverged": diverged, "resumed_from_step": out.resumed_from or 0,
          "train_seconds": out.meta["train_seconds"],
          "first_chunk_seconds_incl_compile": first_chunk_s[0] if first_chunk_s else None,
          "settings": config.comparable()}


# ----------------------------------------------------------------------------
# Summary and plots.

SUMMARY_COLUMNS = ("model", "hidden", "adjusted_hidden", "median_r2", "q25_r2", "q75_r2",
                   "n", "n_diverged", "optimal_r2")


def r2_quartiles(r2) -> tuple[float, float, float]:
  """(25%, 50%, 75%) quantiles of R^2 over the realizations that did not diverge.

  NaN (diverged in training) is left out; -inf (blew up on the test inputs)
  takes part as the worst value. NaN when nothing is left.
  """
  r2 = np.asarray(r2, float)
  kept = r2[~np.isnan(r2)]
  if not kept.size:
    return (math.nan,) * 3
  with np.errstate(invalid="ignore"):
    return tuple(float(q) for q in np.percentile(kept, [25, 50, 75]))


def _order(model: str) -> int:
  names = list(registry.MODELS)
  return names.index(model) if model in names else len(names)


def summarize(results: Sequence[dict], optimal: float) -> list[dict]:
  """One row per (model, hidden), in the registry's order: median and IQR of test R^2."""
  rows = []
  for res in sorted(results, key=lambda r: (_order(r["model"]), r["model"], r["hidden"])):
    r2 = np.asarray([np.nan if v is None else float(v) for v in res["test_r2"]], float)
    q25, med, q75 = r2_quartiles(r2)
    rows.append({"model": res["model"], "hidden": res["hidden"], "adjusted_hidden": res["adjusted_hidden"],
                 "median_r2": float(med), "q25_r2": float(q25), "q75_r2": float(q75), "n": int(r2.size),
                 "n_diverged": int(np.isnan(r2).sum()), "optimal_r2": float(optimal)})
  return rows


def finding_lines(rows: Sequence[dict], optimal: float) -> list[str]:
  """The paper's two claims, read off the summary rows, as printable lines.

  (1) a URNN with 2n states does about as well as an RNN with n states;
  (2) the RNN gets near the optimal R^2 once n is large enough (~8).
  """
  med = {(r["model"], r["hidden"]): r["median_r2"] for r in rows}
  lines = []
  pairs = [(n, 2 * n) for (m, n) in med if m == "rnn" and ("urnn", 2 * n) in med]
  if pairs:
    lines.append("URNN with 2n states vs RNN with n states (median test R^2):")
    for n, n2 in sorted(pairs):
      a, b = med[("rnn", n)], med[("urnn", n2)]
      lines.append(f"  n={n:2d}: RNN {a:.4f} | URNN(2n={n2:2d}) {b:.4f} | difference {b - a:+.4f}")
  rnn = sorted((n, v) for (m, n), v in med.items() if m == "rnn")
  if rnn:
    gaps = ", ".join(f"n={n}: {optimal - v:.4f}" for n, v in rnn)
    lines.append(f"RNN gap to the optimal R^2 {optimal:.4f}: {gaps}")
  return lines


def plot(rows: Sequence[dict], optimal: float, path: str, *, title: str = "") -> None:
  """Fig. 2/3: median test R^2 (bars: IQR) vs hidden units, and vs adjusted units."""
  plt = training.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  models = sorted({r["model"] for r in rows}, key=lambda m: (_order(m), m))
  meds = [r["median_r2"] for r in rows if math.isfinite(r["median_r2"])]
  others = iter(_OTHER_STYLES * len(models))
  styles = {m: (COLORS[m], MARKERS[m]) if m in COLORS else next(others) for m in models}
  for ax, adjusted in zip(axes, (False, True)):
    for m in models:
      rs = sorted((r for r in rows if r["model"] == m and math.isfinite(r["median_r2"])),
                  key=lambda r: r["hidden"])
      x = np.asarray([r["adjusted_hidden"] if adjusted else r["hidden"] for r in rs], float)
      med = np.asarray([r["median_r2"] for r in rs])
      # IQR bars; a non-finite quartile (-inf R^2s) draws a bar to the axis edge.
      lo = np.nan_to_num(med - np.asarray([r["q25_r2"] for r in rs]), nan=1e3, posinf=1e3)
      hi = np.nan_to_num(np.asarray([r["q75_r2"] for r in rs]) - med, nan=0.0)
      halved = adjusted and m in registry.MODELS and registry.get(m).orthogonal
      ax.errorbar(x, med, yerr=[lo, hi], marker=styles[m][1], color=styles[m][0], capsize=3,
                  label=LABELS.get(m, m) + (" (n/2)" if halved else ""))
    ax.axhline(optimal, color="red", linestyle="--", label=f"optimal R² = {optimal:.3f}")
    ax.set_xlabel("adjusted hidden units (orthogonal: n/2)" if adjusted else "hidden units n")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("test R² (median, IQR bars)")
  if meds:  # Medians in view; long IQR bars of poor models may leave it.
    axes[0].set_ylim(max(min(meds) - 0.1, -0.5), min(1.0, optimal + 0.02))
  axes[0].legend(loc="lower right", fontsize=8)
  axes[1].legend(loc="lower right", fontsize=8)
  if title:
    fig.suptitle(title)
  training.save_figure(fig, path)
  plt.close(fig)


# ----------------------------------------------------------------------------
# The whole sweep.


def _latest_step(directory: str) -> int:
  """The newest checkpointed step in ``directory`` (orbax step folders), or 0."""
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
  return max(steps, default=0)


def run(config: Config, workdir: str, *, log: Callable[[str], None] = print,
        stop_after_steps: int | None = None, progress_stream=None, parallel: int = 1) -> dict:
  """Runs (or resumes) the sweep and writes every output; returns a summary dict.

  ``parallel`` configurations train at the same time, in threads (each is
  its own compiled program; results do not depend on it). ``stop_after_steps``
  (for tests) stops the first configuration once that many of its steps are
  done, as an interruption would, and implies ``parallel=1``.

  The returned dict has ``rows`` (the summary table), ``trained`` and
  ``skipped`` (configuration names) and ``interrupted`` (True when
  ``stop_after_steps`` stopped a configuration).

  Raises:
    ValueError: an invalid ``config``.
    training.ConfigMismatchError: ``workdir`` holds a run with other settings.
  """
  config.validate()
  training.prepare_run_dir(workdir, config, resumable=RESUMABLE, derived=config.derived(),
                           filename="config.json", legacy_filenames=("settings.json",),
                           renamed={"seq_len": "length"})
  t0 = time.perf_counter()
  mesh = config.mesh()
  log(f"mesh: {mesh_lib.describe(mesh)}")
  results_dir = os.path.join(workdir, "results")
  result_path = lambda m, h: os.path.join(results_dir, config_name(m, h) + ".json")
  todo, done = [], []
  for m in config.models:
    for h in config.hidden:
      (done if os.path.exists(result_path(m, h)) else todo).append((m, h))
  if done:
    log(f"skipping {len(done)} finished configuration(s): " + ", ".join(config_name(m, h) for m, h in done))

  optimal = synthetic.optimal_r2(config.snr_db)
  data_path = os.path.join(workdir, "data.json")
  if todo or not os.path.exists(data_path):
    data, info = make_data(config)
    info["data_seconds"] = time.perf_counter() - t0
    training.write_json(data_path, info)
    if mesh.size > 1:
      data = data._replace(**{k: mesh_lib.shard_realizations(mesh, getattr(data, k))
                              for k in ("x_train", "y_train", "x_test", "y_test")})
  else:  # Nothing to train: the data's summary is all that is needed.
    data, info = None, training.read_json(data_path)
  log(
      f"data: {config.realizations} realizations x ({config.train_sequences} train +"
      f" {config.test_sequences} test) sequences, T={config.length}, {config.inputs} inputs,"
      f" SNR {config.snr_db} dB (measured {info['snr_db_measured_mean']:.2f} dB); teacher units"
      f" on {100 * info['on_fraction_mean']:.1f}% of the time (target"
      f" {100 * info['on_fraction_target']:.0f}%, range {100 * info['on_fraction_min']:.1f}-"
      f"{100 * info['on_fraction_max']:.1f}%); optimal R^2 {optimal:.4f} (teacher's own test R^2,"
      f" median {info['oracle_r2_median']:.4f}); generated in {info['data_seconds']:.1f} s."
  )

  initial = sum(_latest_step(os.path.join(workdir, "checkpoints", config_name(m, h))) for m, h in todo)
  stream = sys.stderr if progress_stream is None else progress_stream
  tty = hasattr(stream, "isatty") and stream.isatty()
  if not training.is_primary():  # several processes: process 0 alone reports
    stream, tty = training.NullStream(), False
  progress = training.Progress(config.total_steps() * len(todo), "system_id", initial=initial, stream=stream,
                               min_interval=0.5 if tty else 15.0)  # Logs: a line per 15 s.
  lock = threading.Lock()
  trained = []

  def work(m: str, h: int) -> bool:
    res = train_configuration(config, m, h, data, workdir, progress=progress, mesh=mesh,
                              stop_after_steps=stop_after_steps, log=log)
    if res is None:
      return False
    training.write_json(result_path(m, h), res)
    with lock:
      trained.append(config_name(m, h))
      if res["diverged"]:
        log(res["diverged"])
      log(f"{config_name(m, h)}: median test R^2 {res['median_r2']:.4f} (IQR"
          f" {res['q25_r2']:.4f}-{res['q75_r2']:.4f}), {res['n_diverged']} diverged,"
          f" {res['train_seconds']:.1f} s")
    return True

  interrupted = False
  if parallel <= 1 or len(todo) <= 1 or stop_after_steps is not None:
    for m, h in todo:
      if not work(m, h):
        interrupted = True
        break
  else:
    # Configurations are independent: train `parallel` of them at once (XLA
    # runs each program on the calling thread, so this uses that many cores).
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
      futures = [pool.submit(work, m, h) for m, h in todo]
      try:
        for f in concurrent.futures.as_completed(futures):
          f.result()  # Re-raises a configuration's error (e.g. DivergenceError).
      finally:
        pool.shutdown(cancel_futures=True)
  progress.close()

  mesh_lib.barrier("system_id_results")  # several processes: process 0 has written every result
  # Every configuration's result in the workdir (earlier runs of it with other --models or
  # --hidden included: the settings that decide a result are checked by prepare_run_dir).
  results = [training.read_json(os.path.join(results_dir, f)) for f in sorted(os.listdir(results_dir))
             if f.endswith(".json")] if os.path.isdir(results_dir) else []
  rows = summarize(results, optimal)
  per_realization = [{"model": res["model"], "hidden": res["hidden"], **row}
                     for res in results for row in res["realizations"]]
  if per_realization:
    training.write_csv(os.path.join(workdir, "results.csv"), per_realization)
  if rows:
    training.write_tables(workdir, "summary", rows, columns=SUMMARY_COLUMNS, document={
        "rows": rows, "optimal_r2": optimal, "data": {k: v for k, v in info.items() if k != "oracle_r2"},
        "settings": config.comparable(), "wall_seconds_this_run": time.perf_counter() - t0,
    }, text=(f"# System identification: test R^2 (median and IQR over {config.realizations}"
             f" realizations)\n\n{config.inputs} inputs, SNR {config.snr_db} dB, optimal R^2"
             f" {optimal:.4f}.\n\n{training.markdown_table(rows, SUMMARY_COLUMNS)}\n"))
    title = (f"{config.inputs} inputs, SNR {config.snr_db:g} dB, {config.realizations}"
             f" realizations, {config.train_sequences} train seqs, T={config.length},"
             f" {config.epochs} epochs")
    plot(rows, optimal, os.path.join(workdir, "r2_vs_hidden.png"), title=title)
  return {"rows": rows, "trained": trained, "skipped": [config_name(m, h) for m, h in done],
          "interrupted": interrupted, "optimal_r2": optimal, "data": info,
          "seconds": time.perf_counter() - t0}
