r"""System identification (seed 000 §5, Figs 2 and 3): RNN vs URNN vs ContRNN vs LSTM.

The logic behind ``python -m train.system_id``. A synthetic contractive ReLU
RNN with ``n = 4`` states (:mod:`urnn_jax.data.synthetic`) generates noisy
input/output sequences; student models with ``hidden`` states are trained
on them with the MSE loss and scored by their test R^2. A *configuration*
is a (model, hidden size) pair; **all realizations of a configuration train
together in one compiled program**: parameters, optimiser states and data
are stacked on a leading realization axis and the training step is
``jax.vmap``-ed over it, inside a jitted ``lax.scan`` over the batches of
an epoch (one call per epoch, or per ``checkpoint_every`` chunk when that is
shorter). Independent configurations can also run side by side in threads
(``run(..., parallel=k)``).

Models (:data:`MODELS`), all read out by y = C h (:class:`SequenceRegressor`,
no read-out bias, as in eq. 1):

============  ================================================================
``rnn``       :class:`~urnn_jax.RNNCell` (ReLU), free W, plain optimiser.
``urnn``      :class:`~urnn_jax.OrthogonalRNNCell` (ReLU); after every
              optimiser step W is put back on the orthogonal group by
              ``--constraint``: ``projection`` (SVD polar factor, the paper's),
              ``cayley`` or ``expm`` retraction (:mod:`urnn_jax.optim`).
``contrnn``   :class:`~urnn_jax.RNNCell` + projection onto ||W||_2 <= 1.
``lstm``      ``flax.linen.LSTMCell``.
``gru``       ``flax.linen.GRUCell`` (optional).
============  ================================================================

The eq. (1) models share their initial parameters (same keys): the RNN, the
URNN and the ContRNN of a given size start from the same (Haar-orthogonal)
W, F and C, so their differences come from the constraint alone.

Work directory layout (``workdir``)::

    settings.json           the run settings a rerun must match
    data.json               teacher summary: on-fractions, SNR, optimal R^2
    checkpoints/<model>_h<n>/   orbax checkpoints of the stacked state
    results/<model>_h<n>.json   every realization's test R^2 (+ diagnostics)
    results.csv             one row per (model, hidden, realization)
    summary.{json,csv,md}   median and IQR of R^2 per model x hidden size
    r2_vs_hidden.png        Fig. 2/3: R^2 vs hidden units | vs adjusted units

Resume: a configuration with a results file is skipped; one with a
checkpoint continues from it (checkpoints every ``checkpoint_every`` steps,
default 200, or every epoch with 0, and at the end), so at most one
checkpoint interval is lost. The
run is a function of the settings and ``seed`` alone: data from
``fold_in(key(seed), 0)`` (realization r: ``fold_in(., r)``), initial
parameters from ``fold_in(fold_in(key(seed), 1), hidden)`` (then r), the
batch order of epoch e from ``fold_in(fold_in(key(seed), 2), e)``; a resumed
configuration therefore ends bit-identical to an uninterrupted one.

Divergence: realizations are vmapped, so one diverging realization must not
stop the others. A step whose loss or new parameters are not finite is
*rejected* for that realization, which is then frozen at its last finite
parameters and marked ``diverged`` (with the step); its test R^2 is recorded
as NaN (``null`` in JSON), it is left out of the median/IQR and counted in
``n_diverged`` of the summary. Checkpoints therefore always hold finite
states. Only when *every* realization of a configuration diverges does the
run stop, with :class:`urnn_jax.training.DivergenceError`, keeping the last
checkpoint. (A realization that trained fine but whose predictions overflow
on the test inputs, as an unstable free RNN can, gets R^2 = -inf and counts
as the worst value in the quartiles.)

Targets are scaled per realization and output channel by their training
standard deviation (no centring, so y = C h stays exact); inputs are left as
generated. R^2 is computed per output channel and averaged, which is
invariant to that scaling.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from urnn_jax import optim
from urnn_jax import orthogonal
from urnn_jax import training
from urnn_jax.cells import OrthogonalRNNCell, RNNCell
from urnn_jax.data import synthetic
from urnn_jax.recurrent import SequenceRegressor

PyTree = Any

MODELS = ("rnn", "urnn", "contrnn", "lstm", "gru")
CONSTRAINTS = ("projection", "cayley", "expm")
OPTIMIZERS = training.OPTIMIZERS
PAPER_HIDDEN = (2, 4, 6, 8, 10, 12, 14)
LABELS = {"rnn": "RNN", "urnn": "URNN", "contrnn": "ContRNN", "lstm": "LSTM", "gru": "GRU"}
COLORS = {"rnn": "tab:blue", "urnn": "tab:orange", "contrnn": "tab:green", "lstm": "tab:purple",
          "gru": "tab:brown"}
MARKERS = {"rnn": "o", "urnn": "s", "contrnn": "^", "lstm": "D", "gru": "v"}


# ----------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class Config:
  """A sweep: ``models`` x ``hidden`` configurations, each over ``realizations``.

  The defaults are the CPU-sized main job (see :data:`PAPER` for the paper's
  scale). ``models``, ``hidden``, ``checkpoint_every``, ``unroll`` and
  ``eval_batch`` may differ when a work directory is reused; every other
  field must match its ``settings.json``.
  """

  models: tuple[str, ...] = ("rnn", "urnn")
  hidden: tuple[int, ...] = PAPER_HIDDEN
  realizations: int = 6
  snr_db: float = 20.0
  inputs: str = "gaussian"
  train_sequences: int = 200
  test_sequences: int = 50
  seq_len: int = 1000
  epochs: int = 200
  batch_size: int = 10
  learning_rate: float = 0.01
  optimizer: str = "adam"
  # Not in the paper (constant lr, no clipping): at this scale (4000 steps)
  # a cosine decay and clipping let the models converge (see the README).
  lr_schedule: str = "cosine"
  grad_clip: float = 1.0
  constraint: str = "projection"
  standardize_targets: bool = True
  seed: int = 0
  checkpoint_every: int = 200
  unroll: int = 1
  eval_batch: int = 100

  def teacher_spec(self) -> synthetic.TeacherSpec:
    return synthetic.TeacherSpec(snr_db=self.snr_db, inputs=self.inputs, seq_len=self.seq_len)

  def steps_per_epoch(self) -> int:
    return self.train_sequences // self.batch_size

  def total_steps(self) -> int:
    return self.epochs * self.steps_per_epoch()

  def comparable(self) -> dict:
    """The settings that determine every configuration's result."""
    d = dataclasses.asdict(self)
    for key in ("models", "hidden", "checkpoint_every", "unroll", "eval_batch"):
      d.pop(key)
    d["teacher"] = dataclasses.asdict(self.teacher_spec())
    return d

  def validate(self) -> None:
    unknown = [m for m in self.models if m not in MODELS]
    if unknown or not self.models:
      raise ValueError(f"models={list(self.models)}: unknown {unknown}; expected some of {list(MODELS)}.")
    if len(set(self.models)) != len(self.models):
      raise ValueError(f"models={list(self.models)} has duplicates.")
    if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
      raise ValueError(f"hidden={list(self.hidden)} must be positive ints.")
    if len(set(self.hidden)) != len(self.hidden):
      raise ValueError(f"hidden={list(self.hidden)} has duplicates.")
    for name in ("realizations", "train_sequences", "test_sequences", "seq_len", "epochs",
                 "batch_size", "unroll", "eval_batch"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}.")
    if self.checkpoint_every < 0:
      raise ValueError(f"checkpoint_every must be >= 0 (0: every epoch), got {self.checkpoint_every}.")
    if self.batch_size > self.train_sequences:
      raise ValueError(
          f"batch_size={self.batch_size} is larger than train_sequences={self.train_sequences}."
      )
    # Validates optimizer, learning_rate, grad_clip and lr_schedule.
    training.make_optimizer(self.optimizer, self.learning_rate, grad_clip=self.grad_clip,
                            lr_schedule=self.lr_schedule, total_steps=self.total_steps())
    if self.constraint not in CONSTRAINTS:
      raise ValueError(f"constraint={self.constraint!r}; expected one of {list(CONSTRAINTS)}.")
    self.teacher_spec()  # Validates snr_db, inputs, seq_len.


# The paper's scale (seed 000 §5): all models, 30 realizations, 700 train and
# 300 test sequences of T = 1000 per realization. The paper does not give the
# number of epochs; 30 (2100 steps) is ours. Measured: 2 h 33 min on the
# idle 2-core CPU, 1 h 48 min of it the LSTM (README).
PAPER = Config(
    models=("rnn", "urnn", "contrnn", "lstm"),
    hidden=PAPER_HIDDEN,
    realizations=30,
    train_sequences=700,
    test_sequences=300,
    seq_len=1000,
    epochs=30,
    lr_schedule="constant",  # The paper's Adam, lr 0.01, without clipping.
    grad_clip=0.0,
)


# ----------------------------------------------------------------------------
# Models and optimisers.


def make_model(name: str, hidden: int, output_size: int = 2, *, unroll: int = 1) -> SequenceRegressor:
  """The student ``name`` with ``hidden`` states: y(k) = C h(k), no read-out bias."""
  if name in ("rnn", "contrnn"):
    cell = RNNCell(hidden, activation="relu")
  elif name == "urnn":
    cell = OrthogonalRNNCell(hidden, activation="relu")
  elif name == "lstm":
    cell = nn.LSTMCell(hidden)
  elif name == "gru":
    cell = nn.GRUCell(hidden)
  else:
    raise ValueError(f"make_model: model={name!r}; expected one of {list(MODELS)}.")
  return SequenceRegressor(cell, output_size, unroll=unroll)


def make_constraint(name: str, *, reproject_every: int | None = None) -> optax.GradientTransformation:
  """The URNN's orthogonality constraint, by ``--constraint`` name.

  ``reproject_every``: for the retractions, also project W back onto the
  group every that many steps (removes float32 drift); ignored by the
  projection, which lands on the group every step.
  """
  if name == "projection":
    return optim.orthogonal_projection(method="svd")
  if name == "cayley":
    return optim.cayley_retraction(reproject_every=reproject_every)
  if name == "expm":
    return optim.expm_retraction(reproject_every=reproject_every)
  raise ValueError(f"make_constraint: constraint={name!r}; expected one of {list(CONSTRAINTS)}.")


def make_optimizer(
    model: str,
    learning_rate: float = 0.01,
    optimizer: str = "adam",
    constraint: str = "projection",
    *,
    grad_clip: float = 0.0,
    lr_schedule: str = "constant",
    total_steps: int | None = None,
) -> optax.GradientTransformation:
  """The optimiser of a model: plain, or followed by its constraint on W.

  ``grad_clip``, ``lr_schedule`` and ``total_steps``: see
  :func:`urnn_jax.training.make_optimizer`.
  """
  base = training.make_optimizer(optimizer, learning_rate, grad_clip=grad_clip,
                                 lr_schedule=lr_schedule, total_steps=total_steps)
  if model == "urnn":
    return optim.constrained(base, make_constraint(constraint))
  if model == "contrnn":
    return optim.constrained(base, optim.spectral_norm_projection(max_value=1.0))
  if model in MODELS:
    return base
  raise ValueError(f"make_optimizer: model={model!r}; expected one of {list(MODELS)}.")


def config_name(model: str, hidden: int) -> str:
  return f"{model}_h{hidden:02d}"


# ----------------------------------------------------------------------------
# Data.


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
  raw = synthetic.make_realizations(
      key, spec, config.realizations, config.train_sequences, config.test_sequences
  )
  if config.standardize_targets:
    scale = np.std(np.asarray(raw.y_train), axis=(1, 2))  # (R, p)
    scale = np.where(scale > 0, scale, 1.0)
  else:
    scale = np.ones((config.realizations, raw.y_train.shape[-1]), np.float32)
  s = scale[:, None, None, :]
  data = Data(
      x_train=jnp.asarray(raw.x_train),
      y_train=jnp.asarray(raw.y_train / s, jnp.float32),
      x_test=jnp.asarray(raw.x_test),
      y_test=jnp.asarray(raw.y_test / s, jnp.float32),
      scale=scale,
  )
  info = synthetic.summary(raw, spec)
  info["target_scale"] = scale.tolist()
  return data, info


# ----------------------------------------------------------------------------
# Training.


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


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _tree_where(c, a, b):
  return jax.tree.map(lambda x, y: jnp.where(c, x, y), a, b)


def init_carry(programs: "Programs", config: Config, hidden: int, x_example) -> Carry:
  """Stacked initial parameters (realization r: ``fold_in(init_key, r)``) and state."""
  init_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 1), hidden)
  keys = jax.vmap(lambda r: jax.random.fold_in(init_key, r))(jnp.arange(config.realizations))
  params, opt_state = programs.init(keys, x_example)
  r = config.realizations
  return Carry(
      state=training.TrainState(jnp.zeros((), jnp.int32), params, opt_state),
      alive=jnp.ones((r,), jnp.int32),
      diverged_step=jnp.full((r,), -1, jnp.int32),
      loss_sum=jnp.zeros((r,), jnp.float32),
      loss_history=jnp.zeros((config.epochs, r), jnp.float32),
  )


def make_chunk_fn(model, tx):
  """A jitted ``(carry, x_train, y_train, idx) -> carry`` running ``len(idx)`` steps.

  ``idx`` is ``(k, batch)``: the training sequences of each step (the same
  for every realization, each on its own data). One compiled program per
  chunk length; the realizations run under ``jax.vmap``.
  """

  def loss_fn(params, xb, yb):
    return jnp.mean(jnp.square(model.apply({"params": params}, xb) - yb))

  def one_step(params, opt_state, alive, xb, yb):
    loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    ok = (alive > 0) & jnp.isfinite(loss) & _all_finite(new_params)
    params = _tree_where(ok, new_params, params)
    opt_state = _tree_where(ok, new_opt, opt_state)
    return params, opt_state, ok, jnp.where(ok, loss, 0.0)

  vstep = jax.vmap(one_step)

  def chunk(carry: Carry, x_train, y_train, idx):
    def body(c: Carry, batch):
      xb = jnp.take(x_train, batch, axis=1)  # (R, B, T, m)
      yb = jnp.take(y_train, batch, axis=1)
      params, opt_state, ok, loss = vstep(c.state.params, c.state.opt_state, c.alive, xb, yb)
      newly_dead = (c.alive > 0) & ~ok
      c = Carry(
          state=training.TrainState(c.state.step + 1, params, opt_state),
          alive=jnp.where(ok, c.alive, 0),
          diverged_step=jnp.where(newly_dead, c.state.step, c.diverged_step),
          loss_sum=c.loss_sum + loss,
          loss_history=c.loss_history,
      )
      return c, None

    carry, _ = lax.scan(body, carry, idx)
    return carry

  return jax.jit(chunk, donate_argnums=(0,))


def epoch_order(config: Config, epoch: int) -> np.ndarray:
  """``(steps_per_epoch, batch)`` training-sequence indices of ``epoch``."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 2), epoch)
  return training.batch_indices(key, config.train_sequences, config.batch_size)


def make_predict_fn(model):
  """A jitted ``(stacked params, (R, N, T, m) x) -> (R, N, T, p)`` prediction."""
  return jax.jit(jax.vmap(lambda p, x: model.apply({"params": p}, x)))


class Programs(NamedTuple):
  """A configuration's model, optimiser and compiled functions."""

  model: SequenceRegressor
  tx: optax.GradientTransformation
  init: Callable  # (keys (R,), x_example) -> (params, opt_state), stacked
  chunk: Callable  # see make_chunk_fn
  predict: Callable  # see make_predict_fn


@functools.lru_cache(maxsize=64)
def programs(
    model_name: str,
    hidden: int,
    output_size: int = 2,
    *,
    unroll: int = 1,
    learning_rate: float = 0.01,
    optimizer: str = "adam",
    constraint: str = "projection",
    grad_clip: float = 0.0,
    lr_schedule: str = "constant",
    total_steps: int | None = None,
) -> Programs:
  """The (cached) model, optimiser and jitted programs of a configuration.

  Cached so that runs in one process (tests, a resumed configuration) reuse
  the compiled programs instead of tracing and compiling them again.
  """
  model = make_model(model_name, hidden, output_size, unroll=unroll)
  tx = make_optimizer(model_name, learning_rate, optimizer, constraint, grad_clip=grad_clip,
                      lr_schedule=lr_schedule, total_steps=total_steps)

  def init_one(key, x_example):
    params = model.init(key, x_example)["params"]
    return params, tx.init(params)

  return Programs(
      model=model,
      tx=tx,
      # Not jitted: compiling the vmapped flax init (many threefry calls) takes
      # seconds per configuration, op-by-op dispatch a fraction of that.
      init=jax.vmap(init_one, in_axes=(0, None)),
      chunk=make_chunk_fn(model, tx),
      predict=make_predict_fn(model),
  )


def config_programs(config: Config, model_name: str, hidden: int, output_size: int = 2) -> Programs:
  """:func:`programs` for a configuration of ``config``."""
  return programs(model_name, hidden, output_size, unroll=config.unroll,
                  learning_rate=config.learning_rate, optimizer=config.optimizer,
                  constraint=config.constraint, grad_clip=config.grad_clip,
                  lr_schedule=config.lr_schedule, total_steps=config.total_steps())


def evaluate_r2(model, params, x, y, *, eval_batch: int = 100, predict=None) -> np.ndarray:
  """``(R,)`` test R^2 of stacked ``params`` on stacked ``(x, y)`` (per-channel average)."""
  predict = make_predict_fn(model) if predict is None else predict
  n = x.shape[1]
  preds = []
  for start in range(0, n, eval_batch):
    preds.append(np.asarray(predict(params, x[:, start:start + eval_batch])))
  pred = np.concatenate(preds, axis=1)
  return np.asarray(jax.vmap(synthetic.r2_score)(jnp.asarray(y), jnp.asarray(pred)))


def _recurrent_kernel(params) -> np.ndarray | None:
  try:
    return np.asarray(params["rnn"]["cell"]["recurrent_kernel"])
  except (KeyError, TypeError):
    return None


def train_configuration(
    config: Config,
    model_name: str,
    hidden: int,
    data: Data,
    workdir: str,
    *,
    progress: training.Progress | None = None,
    stop_after_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> dict | None:
  """Trains all realizations of (model, hidden) together; returns its results.

  Resumes from ``workdir/checkpoints/<model>_h<n>`` when a checkpoint is
  there. ``stop_after_steps`` stops (as if interrupted) once that many steps
  are done in total, after checkpointing, and returns None.

  Raises:
    training.DivergenceError: when every realization diverged.
  """
  name = config_name(model_name, hidden)
  t_start = time.perf_counter()
  progs = config_programs(config, model_name, hidden, int(data.y_train.shape[-1]))
  carry = init_carry(progs, config, hidden, data.x_train[0, :1, :2])
  spe, total = config.steps_per_epoch(), config.total_steps()
  ckpt_dir = os.path.join(workdir, "checkpoints", name)
  resumed_from = 0
  with training.Checkpoints(ckpt_dir, max_to_keep=1) as ckpts:
    restored = ckpts.restore(carry)
    if restored is not None:
      carry = jax.tree.map(jnp.asarray, restored)
      resumed_from = int(carry.state.step)
      log(f"{name}: resuming from the checkpoint at step {resumed_from}/{total}.")
    chunk_fn = progs.chunk
    every = config.checkpoint_every or spe
    step = int(carry.state.step)
    compile_s = None
    while step < total:
      epoch, offset = divmod(step, spe)
      # A chunk ends at the next epoch end or checkpoint, whichever is first.
      k = min(every - step % every, spe - offset, total - step)
      idx = jnp.asarray(epoch_order(config, epoch)[offset:offset + k])
      t0 = time.perf_counter()
      carry = chunk_fn(carry, data.x_train, data.y_train, idx)
      step = int(carry.state.step)  # Blocks until the chunk is done.
      if compile_s is None:
        compile_s = time.perf_counter() - t0
      if step % spe == 0:  # End of an epoch: record its mean loss.
        e = step // spe - 1
        carry = carry._replace(
            loss_history=carry.loss_history.at[e].set(carry.loss_sum / spe),
            loss_sum=jnp.zeros_like(carry.loss_sum),
        )
      alive = np.asarray(carry.alive)
      if not alive.any():
        raise training.DivergenceError(
            f"{name}: every realization diverged (NaN/inf loss or parameters) by step"
            f" {step}; the last good checkpoint (step {ckpts.latest_step()}) was kept."
            " Lower --learning_rate."
        )
      stop = stop_after_steps is not None and step >= stop_after_steps and step < total
      if step % every == 0 or step == total or stop:
        ckpts.save(step, carry)
      if progress is not None:
        hist = np.asarray(carry.loss_history)
        e_done = step // spe
        # The median: one realization with a huge (finite) loss must not hide the rest.
        loss = float(np.median(hist[e_done - 1][alive > 0])) if e_done else float("nan")
        progress.update(
            k, postfix=f"{name} epoch {e_done}/{config.epochs} median loss {loss:.4g}"
        )
      if stop:
        return None
  train_s = time.perf_counter() - t_start

  params = carry.state.params
  r2 = evaluate_r2(progs.model, params, data.x_test, data.y_test, eval_batch=config.eval_batch,
                   predict=progs.predict)
  alive = np.asarray(carry.alive) > 0
  # Diverged in training: NaN. Alive but non-finite test predictions (an
  # unstable free RNN can blow up on new inputs): -inf, the worst R^2.
  r2 = np.where(alive, np.where(np.isfinite(r2), r2, -np.inf), np.nan)
  kernel = _recurrent_kernel(params)
  ortho = (np.asarray(orthogonal.orthogonality_error(jnp.asarray(kernel)))
           if kernel is not None else None)
  spec_norm = (np.linalg.norm(kernel, ord=2, axis=(-2, -1)) if kernel is not None else None)
  hist = np.asarray(carry.loss_history)
  rows = []
  for r in range(config.realizations):
    rows.append({
        "realization": r,
        "test_r2": float(r2[r]),
        "diverged": bool(not alive[r]),
        "diverged_step": int(carry.diverged_step[r]) if not alive[r] else None,
        "final_train_loss": float(hist[-1, r]) if alive[r] else None,
        "orthogonality_error": None if ortho is None else float(ortho[r]),
        "w_spectral_norm": None if spec_norm is None else float(spec_norm[r]),
    })
  q25, med, q75 = r2_quartiles(r2)
  num_params = sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(params))
  return {
      "model": model_name,
      "hidden": hidden,
      "adjusted_hidden": hidden / 2 if model_name == "urnn" else hidden,
      "num_params": num_params,
      "test_r2": r2.tolist(),
      "median_r2": float(med),
      "q25_r2": float(q25),
      "q75_r2": float(q75),
      "n_diverged": int((~alive).sum()),
      "realizations": rows,
      "loss_history": hist.T.tolist(),
      "steps": total,
      "resumed_from_step": resumed_from,
      "train_seconds": train_s,
      "first_chunk_seconds_incl_compile": compile_s,
      "settings": config.comparable(),
  }


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


def summarize(results: Sequence[dict], optimal: float) -> list[dict]:
  """One row per (model, hidden): median and interquartile range of test R^2."""
  rows = []
  for res in sorted(results, key=lambda r: (MODELS.index(r["model"]), r["hidden"])):
    r2 = np.asarray([np.nan if v is None else float(v) for v in res["test_r2"]], float)
    q25, med, q75 = r2_quartiles(r2)
    rows.append({
        "model": res["model"],
        "hidden": res["hidden"],
        "adjusted_hidden": res["adjusted_hidden"],
        "median_r2": float(med),
        "q25_r2": float(q25),
        "q75_r2": float(q75),
        "n": int(r2.size),
        "n_diverged": int(np.isnan(r2).sum()),
        "optimal_r2": float(optimal),
    })
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
  models = [m for m in MODELS if any(r["model"] == m for r in rows)]
  meds = [r["median_r2"] for r in rows if math.isfinite(r["median_r2"])]
  for ax, adjusted in zip(axes, (False, True)):
    for m in models:
      rs = sorted((r for r in rows if r["model"] == m and math.isfinite(r["median_r2"])),
                  key=lambda r: r["hidden"])
      x = np.asarray([r["adjusted_hidden"] if adjusted else r["hidden"] for r in rs], float)
      med = np.asarray([r["median_r2"] for r in rs])
      # IQR bars; a non-finite quartile (-inf R^2s) draws a bar to the axis edge.
      lo = np.nan_to_num(med - np.asarray([r["q25_r2"] for r in rs]), nan=1e3, posinf=1e3)
      hi = np.nan_to_num(np.asarray([r["q75_r2"] for r in rs]) - med, nan=0.0)
      label = LABELS[m] + (" (n/2)" if adjusted and m == "urnn" else "")
      ax.errorbar(x, med, yerr=[lo, hi], marker=MARKERS[m], color=COLORS[m], capsize=3,
                  label=label)
    ax.axhline(optimal, color="red", linestyle="--", label=f"optimal R² = {optimal:.3f}")
    ax.set_xlabel("adjusted hidden units (URNN: n/2)" if adjusted else "hidden units n")
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


def _check_settings(config: Config, workdir: str) -> None:
  path = os.path.join(workdir, "settings.json")
  current = training.read_json(path) if os.path.exists(path) else None
  wanted = json.loads(json.dumps(config.comparable()))  # Tuples become lists.
  if current is None:
    training.write_json(path, wanted)
    return
  if current != wanted:
    diff = sorted(k for k in set(current) | set(wanted) if current.get(k) != wanted.get(k))
    raise ValueError(
        f"{workdir} holds a run with other settings (differences in {diff}:"
        f" saved {[current.get(k) for k in diff]}, now {[wanted.get(k) for k in diff]})."
        " Use another --workdir, or delete this one to start over."
    )


class _LockedProgress:
  """``training.Progress.update`` made safe to call from several threads."""

  def __init__(self, progress: training.Progress):
    self._progress = progress
    self._lock = threading.Lock()

  def update(self, *args, **kwargs):
    with self._lock:
      self._progress.update(*args, **kwargs)


def _latest_step(directory: str) -> int:
  """The newest checkpointed step in ``directory`` (orbax step folders), or 0."""
  if not os.path.isdir(directory):
    return 0
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()]
  return max(steps, default=0)


def run(
    config: Config,
    workdir: str,
    *,
    log: Callable[[str], None] = print,
    stop_after_steps: int | None = None,
    progress_stream=None,
    parallel: int = 1,
) -> dict:
  """Runs (or resumes) the sweep and writes every output; returns a summary dict.

  ``parallel`` configurations train at the same time, in threads (each is
  its own compiled program; results do not depend on it). ``stop_after_steps``
  (for tests) stops the first configuration once that many of its steps are
  done, as an interruption would, and implies ``parallel=1``.

  The returned dict has ``rows`` (the summary table), ``trained`` and
  ``skipped`` (configuration names) and ``interrupted`` (True when
  ``stop_after_steps`` stopped a configuration).
  """
  config.validate()
  os.makedirs(workdir, exist_ok=True)
  _check_settings(config, workdir)
  t0 = time.perf_counter()
  results_dir = os.path.join(workdir, "results")
  todo, done = [], []
  for m in config.models:
    for h in config.hidden:
      path = os.path.join(results_dir, config_name(m, h) + ".json")
      (done if os.path.exists(path) else todo).append((m, h))
  if done:
    log(f"skipping {len(done)} finished configuration(s): "
        + ", ".join(config_name(m, h) for m, h in done))

  optimal = synthetic.optimal_r2(config.snr_db)
  data_path = os.path.join(workdir, "data.json")
  if todo or not os.path.exists(data_path):
    data, info = make_data(config)
    info["data_seconds"] = time.perf_counter() - t0
    training.write_json(data_path, info)
  else:  # Nothing to train: the data's summary is all that is needed.
    data, info = None, training.read_json(data_path)
  log(
      f"data: {config.realizations} realizations x ({config.train_sequences} train +"
      f" {config.test_sequences} test) sequences, T={config.seq_len}, {config.inputs} inputs,"
      f" SNR {config.snr_db} dB (measured {info['snr_db_measured_mean']:.2f} dB); teacher units"
      f" on {100 * info['on_fraction_mean']:.1f}% of the time (target"
      f" {100 * info['on_fraction_target']:.0f}%, range {100 * info['on_fraction_min']:.1f}-"
      f"{100 * info['on_fraction_max']:.1f}%); optimal R^2 {optimal:.4f} (teacher's own test R^2,"
      f" median {info['oracle_r2_median']:.4f}); generated in {info['data_seconds']:.1f} s."
  )

  total = config.total_steps()
  initial = sum(_latest_step(os.path.join(workdir, "checkpoints", config_name(m, h)))
                for m, h in todo)
  stream = sys.stderr if progress_stream is None else progress_stream
  tty = hasattr(stream, "isatty") and stream.isatty()
  progress = training.Progress(total * len(todo), "system_id", initial=initial, stream=stream,
                               min_interval=0.5 if tty else 15.0)  # Logs: a line per 15 s.
  shared_progress = _LockedProgress(progress)
  lock = threading.Lock()
  trained = []

  def work(m: str, h: int) -> bool:
    res = train_configuration(config, m, h, data, workdir, progress=shared_progress,
                              stop_after_steps=stop_after_steps, log=log)
    if res is None:
      return False
    training.write_json(os.path.join(results_dir, config_name(m, h) + ".json"), res)
    with lock:
      trained.append(config_name(m, h))
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
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel)
    futures = [pool.submit(work, m, h) for m, h in todo]
    try:
      done_f, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
      for f in done_f:
        f.result()  # Re-raises a configuration's error (e.g. DivergenceError).
    finally:
      pool.shutdown(wait=True, cancel_futures=True)
  progress.close()

  results = []
  for m in config.models:
    for h in config.hidden:
      path = os.path.join(results_dir, config_name(m, h) + ".json")
      if os.path.exists(path):
        results.append(training.read_json(path))
  rows = summarize(results, optimal)
  per_realization = [
      {"model": res["model"], "hidden": res["hidden"], **{k: v for k, v in row.items()}}
      for res in results for row in res["realizations"]
  ]
  if per_realization:
    training.write_csv(os.path.join(workdir, "results.csv"), per_realization)
  if rows:
    training.write_json(os.path.join(workdir, "summary.json"), {
        "rows": rows, "optimal_r2": optimal, "data": {k: v for k, v in info.items() if k != "oracle_r2"},
        "settings": config.comparable(), "wall_seconds_this_run": time.perf_counter() - t0,
    })
    training.write_csv(os.path.join(workdir, "summary.csv"), rows, SUMMARY_COLUMNS)
    table = training.markdown_table(rows, SUMMARY_COLUMNS)
    with open(os.path.join(workdir, "summary.md"), "w") as f:
      f.write(
          f"# System identification: test R^2 (median and IQR over {config.realizations}"
          f" realizations)\n\n{config.inputs} inputs, SNR {config.snr_db} dB, optimal R^2"
          f" {optimal:.4f}.\n\n{table}\n"
      )
    title = (f"{config.inputs} inputs, SNR {config.snr_db:g} dB, {config.realizations}"
             f" realizations, {config.train_sequences} train seqs, T={config.seq_len},"
             f" {config.epochs} epochs")
    plot(rows, optimal, os.path.join(workdir, "r2_vs_hidden.png"), title=title)
  return {"rows": rows, "trained": trained, "skipped": [config_name(m, h) for m, h in done],
          "interrupted": interrupted, "optimal_r2": optimal, "data": info,
          "seconds": time.perf_counter() - t0}
