"""Long-memory tasks (seed 002): RNN vs uRNN vs LSTM/GRU, and gradient diagnostics.

The logic behind ``python -m train.memory_tasks``. One *run* is a task at one
length; it trains every requested model on the same stream of batches and
writes, under ``workdir/<task>_L<length>/``:

* ``config.json``: the run's configuration (a resumed run must match it);
* ``<model>/checkpoints/``: orbax checkpoints of the :class:`TrainState`;
* ``<model>/history.json``: the evaluation curve (step, loss, accuracy, ...);
* ``results.json``, ``results.csv``, ``results.md``: the final table, with
  the task's memoryless baseline;
* ``learning_curves.png``: eval loss and accuracy (or MSE) against steps;
* ``gradient_norms.png`` and ``gradient_norms.json``: ``||dL/dh(k)||`` for
  every step k, at initialisation and after training, for the eq. (1)
  models (RNN and uRNNs), on a log scale.

Determinism: batch ``s`` is drawn from ``fold_in(data_key, s)``, the
parameters from ``fold_in(init_key, crc32(model))``, the evaluation set from
a fixed key; so a run is a function of ``(config, seed)``, the same for
every model list, and a resumed run continues exactly where it stopped.

Models (``MODELS``):

=====================  =======================================================
``rnn``                :class:`~urnn_jax.RNNCell`, free W (Haar init by
                       default, see ``rnn_init``), plain optimiser.
``urnn``               :class:`~urnn_jax.OrthogonalRNNCell`; the optimiser's
                       step, then the SVD projection onto the orthogonal
                       group (:func:`urnn_jax.optim.orthogonal_projection`).
``urnn_cayley``        the step, then the Cayley retraction.
``urnn_expm``          the step, then the matrix-exponential retraction
                       W <- exp(A) W (seed 002's update).
``urnn_param_expm``    W = base expm(skew(A)) inside the cell (expRNN style).
``urnn_param_cayley``  W = base cayley(skew(A)) inside the cell.
``lstm``, ``gru``      flax's ``LSTMCell`` / ``GRUCell``.
=====================  =======================================================
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
import zlib
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from urnn_jax import diagnostics
from urnn_jax import initializers as inits
from urnn_jax import optim
from urnn_jax import orthogonal
from urnn_jax import training
from urnn_jax.cells import OrthogonalRNNCell, RNNCell
from urnn_jax.data import memory
from urnn_jax.experiments import system_id
from urnn_jax.recurrent import LastStateClassifier, SequenceRegressor
from urnn_jax.rnn import RNNParams

PyTree = Any


# ----------------------------------------------------------------------------
# Configuration.


NOT_COMPARED = ("models", "steps", "diagnostics")  # "steps" is compared when the schedule spans it

# Recall (first_term, copy) needs only a linear recurrence: an orthogonal linear
# RNN is the classic exact solution (Henaff et al. 2016), and it needs n >= T
# states to recall a term T steps back. Comparing (kth_highest) and
# multiplying by a marker (adding) need a nonlinearity.
DEFAULT_ACTIVATION = {"first_term": "identity", "copy": "identity", "kth_highest": "relu", "adding": "relu"}


@dataclasses.dataclass(frozen=True)
class Config:
  """One run: a task at one length, for a list of models.

  ``models``, ``steps`` and ``diagnostics`` may change when a run is resumed
  (train more models, or longer); every other field must match the saved
  ``config.json``. Under ``lr_schedule="cosine"`` the schedule spans
  ``steps``, so ``steps`` must match too.
  """

  task: str = "first_term"
  length: int = 20
  models: tuple[str, ...] = ("rnn", "urnn_expm", "lstm")
  hidden: int = 128
  activation: str | None = None  # None: DEFAULT_ACTIVATION[task]
  rnn_init: str = "haar"
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  recurrent_learning_rate: float | None = None  # eq. (1) models' W (or A); None: learning_rate
  lr_schedule: str = "constant"  # or "cosine": decay to 0 over `steps`
  grad_clip: float = 1.0
  reproject_every: int = 0  # Retractions (urnn_cayley, urnn_expm): project W every k steps; 0 = never.
  batch_size: int = 64
  steps: int = 1000
  eval_every: int = 100
  eval_size: int = 1000
  eval_batch: int = 500
  checkpoint_every: int = 200
  seed: int = 0
  num_values: int | None = None
  k: int | None = None
  diagnostics_batch: int = 32
  diagnostics: bool = True

  def resolved(self) -> "Config":
    """This config with ``activation`` filled in from :data:`DEFAULT_ACTIVATION`."""
    if self.activation is not None:
      return self
    return dataclasses.replace(self, activation=DEFAULT_ACTIVATION.get(self.task, "relu"))

  def task_options(self) -> dict:
    opts = {}
    if self.task in ("first_term", "kth_highest") and self.num_values is not None:
      opts["num_values"] = self.num_values
    if self.task == "kth_highest" and self.k is not None:
      opts["k"] = self.k
    return opts

  def run_name(self) -> str:
    return f"{self.task}_L{self.length}"

  def schedule_spans_steps(self) -> bool:
    """Whether the learning-rate schedule depends on ``steps`` (any but constant)."""
    return self.lr_schedule != "constant"

  def comparable(self) -> dict:
    """The fields a resumed run must share with the saved one."""
    d = dataclasses.asdict(self)
    for key in NOT_COMPARED:
      if not (key == "steps" and self.schedule_spans_steps()):
        d.pop(key)
    return d

  def validate(self) -> None:
    if self.task not in memory.TASKS:
      raise ValueError(f"task={self.task!r}; expected one of {sorted(memory.TASKS)}.")
    unknown = [m for m in self.models if m not in MODELS]
    if unknown or not self.models:
      raise ValueError(f"models={list(self.models)}: unknown {unknown}; expected some of {list(MODELS)}.")
    if len(set(self.models)) != len(self.models):
      raise ValueError(f"models={list(self.models)} has duplicates.")
    if self.activation is not None and self.activation not in ("relu", "tanh", "sigmoid", "identity", "leaky_relu", "abs"):
      raise ValueError(f"activation={self.activation!r} is not an eq. (1) activation.")
    if self.rnn_init not in RNN_INITS:
      raise ValueError(f"rnn_init={self.rnn_init!r}; expected one of {sorted(RNN_INITS)}.")
    for name in ("length", "hidden", "batch_size", "steps", "eval_every", "eval_size", "eval_batch",
                 "checkpoint_every", "diagnostics_batch"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}.")
    # Validates optimizer, learning_rate, recurrent_learning_rate, grad_clip and lr_schedule.
    training.make_optimizer(self.optimizer, self.learning_rate, grad_clip=self.grad_clip,
                            lr_schedule=self.lr_schedule, total_steps=self.steps,
                            recurrent_learning_rate=self.recurrent_learning_rate)
    if not isinstance(self.reproject_every, int) or self.reproject_every < 0:
      raise ValueError(f"reproject_every must be an int >= 0 (0 = off), got {self.reproject_every!r}.")
    if self.eval_size % min(self.eval_batch, self.eval_size):
      raise ValueError(f"eval_size={self.eval_size} must be a multiple of eval_batch={self.eval_batch}.")
    memory.get_task(self.task, **self.task_options())  # Validates task options.


# ----------------------------------------------------------------------------
# Models and optimisers.

RNN_INITS: dict[str, Callable[[], Callable]] = {
    "haar": inits.haar,
    "identity": inits.identity,
    "lecun_normal": nn.initializers.lecun_normal,
    "henaff": inits.henaff,
}

# The binaries' shared optimiser table (urnn_jax.training).
OPTIMIZERS = training.OPTIMIZERS


class ModelSpec(NamedTuple):
  """How to build a model: its cell, and the constraint after the optimiser."""

  cell: Callable[[Config], nn.RNNCellBase]
  constraint: Callable[[Config], optax.GradientTransformation] | None
  eq1: bool  # an eq. (1) cell (RNNCell / OrthogonalRNNCell): gradient diagnostics apply
  description: str


MODELS: dict[str, ModelSpec] = {
    "rnn": ModelSpec(
        lambda c: RNNCell(c.hidden, activation=c.activation, recurrent_kernel_init=RNN_INITS[c.rnn_init]()),
        None,
        True,
        "RNN, free W",
    ),
    "urnn": ModelSpec(
        lambda c: OrthogonalRNNCell(c.hidden, activation=c.activation),
        lambda c: system_id.make_constraint("projection"),
        True,
        "uRNN, SVD projection after each step",
    ),
    "urnn_cayley": ModelSpec(
        lambda c: OrthogonalRNNCell(c.hidden, activation=c.activation),
        lambda c: system_id.make_constraint("cayley", reproject_every=c.reproject_every or None),
        True,
        "uRNN, Cayley retraction",
    ),
    "urnn_expm": ModelSpec(
        lambda c: OrthogonalRNNCell(c.hidden, activation=c.activation),
        lambda c: system_id.make_constraint("expm", reproject_every=c.reproject_every or None),
        True,
        "uRNN, W <- exp(A) W (seed 002)",
    ),
    "urnn_param_expm": ModelSpec(
        lambda c: OrthogonalRNNCell(c.hidden, activation=c.activation, parametrization="expm"),
        None,
        True,
        "uRNN, W = base expm(skew(A)) (expRNN)",
    ),
    "urnn_param_cayley": ModelSpec(
        lambda c: OrthogonalRNNCell(c.hidden, activation=c.activation, parametrization="cayley"),
        None,
        True,
        "uRNN, W = base cayley(skew(A))",
    ),
    "lstm": ModelSpec(lambda c: nn.LSTMCell(c.hidden), None, False, "LSTM"),
    "gru": ModelSpec(lambda c: nn.GRUCell(c.hidden), None, False, "GRU"),
}


def make_model(config: Config, model: str, task: memory.MemoryTask) -> nn.Module:
  """The Flax model for ``model`` on ``task``: a per-step or last-state head."""
  cell = MODELS[model].cell(config.resolved())
  if task.kind == "seq_class":
    return SequenceRegressor(cell, task.output_size, use_bias=True)
  return LastStateClassifier(cell, task.output_size)


def make_optimizer(config: Config, model: str) -> optax.GradientTransformation:
  """Clip (optional), the optimiser, then the model's constraint on ``recurrent_kernel``.

  ``config.recurrent_learning_rate`` applies to the eq. (1) models' recurrent
  matrix (W, or the generator A of a parametrised cell); LSTM and GRU have no
  single recurrent matrix and train every parameter at ``learning_rate``.
  """
  recurrent_lr = config.recurrent_learning_rate if MODELS[model].eq1 else None
  tx = training.make_optimizer(config.optimizer, config.learning_rate, grad_clip=config.grad_clip,
                               lr_schedule=config.lr_schedule, total_steps=config.steps,
                               recurrent_learning_rate=recurrent_lr)
  constraint = MODELS[model].constraint
  return tx if constraint is None else optim.constrained(tx, constraint(config))


def model_seed(model: str) -> int:
  """A stable per-model integer for ``fold_in`` (independent of the model list)."""
  return zlib.crc32(model.encode()) & 0x7FFFFFFF


# ----------------------------------------------------------------------------
# Loss and metrics.


def task_loss(task: memory.MemoryTask, outputs, targets):
  """``(loss, metrics)`` for the task's kind; metrics hold loss and accuracy/mse."""
  if task.kind == "last_regression":
    pred = outputs[..., 0]
    mse = jnp.mean((pred - targets) ** 2)
    return mse, {"loss": mse, "mse": mse}
  ce = optax.softmax_cross_entropy_with_integer_labels(outputs, targets)
  correct = jnp.argmax(outputs, axis=-1) == targets
  if task.kind == "seq_class":
    s = task.options["num_symbols"]
    loss = jnp.mean(ce)
    # Accuracy on the copied symbols, the part that needs memory.
    return loss, {"loss": loss, "accuracy": jnp.mean(correct[..., -s:])}
  loss = jnp.mean(ce)
  return loss, {"loss": loss, "accuracy": jnp.mean(correct)}


def head_loss_fn(task: memory.MemoryTask, params: PyTree, targets) -> Callable:
  """The task loss as a function of the hidden states ``(B, T, n)`` (for diagnostics)."""
  if task.kind == "seq_class":
    dense = params["readout"]
    out = lambda hs: hs @ dense["kernel"] + dense["bias"]
  else:
    dense = params["head"]
    out = lambda hs: hs[..., -1, :] @ dense["kernel"] + dense["bias"]
  return lambda hs: task_loss(task, out(hs), targets)[0]


@functools.lru_cache(maxsize=None)
def _eq1_fn(config: Config, model: str):
  cell = MODELS[model].cell(config.resolved())

  def fn(cell_vars):
    kernel = cell.apply(cell_vars, method=lambda m: m.transition_kernel())
    p = cell_vars["params"]["input"]
    n = kernel.shape[-1]
    return RNNParams(W=kernel.T, F=p["kernel"].T, b=p["bias"], C=jnp.eye(n, dtype=kernel.dtype),
                     h0=jnp.zeros((n,), kernel.dtype))

  return jax.jit(fn)


def eq1_params(config: Config, model: str, variables: PyTree) -> RNNParams:
  """RNNParams (W, F, b) of an eq. (1) model's cell (C = I, h0 = 0)."""
  if not MODELS[model].eq1:
    raise ValueError(f"eq1_params: model {model!r} is not an eq. (1) RNN.")
  cell_vars = {"params": variables["params"]["rnn"]["cell"]}
  if "constants" in variables:
    cell_vars["constants"] = variables["constants"]["rnn"]["cell"]
  return _eq1_fn(config, model)(cell_vars)


# ----------------------------------------------------------------------------
# Training one model.


class Run(NamedTuple):
  """What the loop needs for one model, built once."""

  model: nn.Module
  tx: optax.GradientTransformation
  constants: dict  # non-trainable collections ({} or {'constants': ...})
  init_params: PyTree


def _keys(seed: int):
  k_init, k_data, k_eval, k_diag = jax.random.split(jax.random.key(seed), 4)
  return k_init, k_data, k_eval, k_diag


def build(config: Config, model: str, task: memory.MemoryTask) -> Run:
  """Model, optimiser and initial variables (deterministic in ``config.seed``)."""
  k_init = jax.random.fold_in(_keys(config.seed)[0], model_seed(model))
  module = make_model(config, model, task)
  dummy = jnp.zeros((1, 2, task.input_size), jnp.float32)
  variables = dict(jax.jit(module.init)(k_init, dummy))  # one compile, not one per op
  params = variables.pop("params")
  return Run(module, make_optimizer(config, model), variables, params)


def make_steps(config: Config, task: memory.MemoryTask, run: Run):
  """Jittable ``train_step(state) -> (state, metrics)`` and ``eval_step(params, x, y)``."""
  data_key = _keys(config.seed)[1]

  def loss_fn(params, x, y):
    out = run.model.apply({"params": params, **run.constants}, x)
    return task_loss(task, out, y)

  def train_step(state: training.TrainState):
    x, y = task.sample(jax.random.fold_in(data_key, state.step), config.batch_size, config.length)
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, x, y)
    updates, opt_state = run.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    return training.TrainState(state.step + 1, params, opt_state), metrics

  def eval_step(params, x, y):
    return loss_fn(params, x, y)[1]

  return train_step, eval_step


def eval_set(config: Config, task: memory.MemoryTask):
  """The fixed evaluation set, as ``eval_size / eval_batch`` chunks."""
  key = _keys(config.seed)[2]
  nb = max(config.eval_size // config.eval_batch, 1)
  size = min(config.eval_batch, config.eval_size)
  return [task.sample(jax.random.fold_in(key, i), size, config.length) for i in range(nb)]


def evaluate(eval_fn, params, chunks) -> dict:
  ms = [jax.device_get(eval_fn(params, x, y)) for x, y in chunks]
  return {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}


def orthogonality(config: Config, model: str, run: Run, params) -> float | None:
  """||W^T W - I||_F of an eq. (1) model's transition matrix."""
  if not MODELS[model].eq1:
    return None
  theta = eq1_params(config, model, {"params": params, **run.constants})
  return float(orthogonal.orthogonality_error(theta.W))


@functools.lru_cache(maxsize=4)
def _prepare(config: Config, model: str):
  """``(task, run, compiled)``; ``compiled()`` gives the AOT-compiled steps, the
  evaluation chunks and the compile time, computed once per configuration
  (so a resumed run in the same process does not compile again)."""
  task = memory.get_task(config.task, **config.task_options())
  run = build(config, model, task)

  @functools.cache
  def compiled():
    train_step, eval_step = make_steps(config, task, run)
    state = training.create_train_state(run.init_params, run.tx)
    # Compile ahead of time, so the compile time is reported apart.
    t0 = time.perf_counter()
    step_fn = jax.jit(train_step).lower(state).compile()
    chunks = eval_set(config, task)
    eval_fn = jax.jit(eval_step).lower(state.params, *chunks[0]).compile()
    return step_fn, eval_fn, chunks, time.perf_counter() - t0

  return task, run, compiled


def _history_path(model_dir: str) -> str:
  return os.path.join(model_dir, "history.json")


def train_model(config: Config, model: str, workdir: str, *, log=print, progress_stream=None) -> dict:
  """Trains (or resumes) one model; returns its summary and history.

  Resumes from the latest checkpoint in ``workdir/<model>/checkpoints``; the
  evaluation history is kept beside it and truncated to the restored step.
  """
  config = config.resolved()
  # The compile cache key: the fields that change the compiled steps (steps only
  # through a schedule that spans them).
  key = dataclasses.replace(config, models=(), steps=config.steps if config.schedule_spans_steps() else 0,
                            diagnostics=True, eval_every=1, checkpoint_every=1)
  task, run, compiled = _prepare(key, model)
  model_dir = os.path.join(workdir, model)
  state = training.create_train_state(run.init_params, run.tx)

  ckpt = training.Checkpoints(os.path.join(model_dir, "checkpoints"), max_to_keep=2)
  try:
    history: list[dict] = []
    meta = {"train_seconds": 0.0, "compile_seconds": None}
    start = ckpt.latest_step()
    if start is not None:
      if start > config.steps:
        raise ValueError(
            f"{model}: the checkpoint in {model_dir} is at step {start} > steps={config.steps};"
            " use a larger --steps or a fresh --workdir."
        )
      state = ckpt.restore(state)
      saved = training.read_json(_history_path(model_dir)) if os.path.exists(_history_path(model_dir)) else {}
      history = [h for h in saved.get("history", []) if h["step"] <= start]
      meta.update({k: saved[k] for k in ("train_seconds", "compile_seconds") if k in saved})
      log(f"[{config.run_name()}/{model}] resumed from step {start}")
    start = int(state.step)

    if start < config.steps:
      step_fn, eval_fn, chunks, compile_seconds = compiled()
      if meta["compile_seconds"] is None:
        meta["compile_seconds"] = compile_seconds

    def record(step, params, train_metrics):
      ev = evaluate(eval_fn, params, chunks)
      training.check_finite(ev, where=f"{model} step {step}")
      entry = {"step": step, **{f"eval_{k}": v for k, v in ev.items()}}
      if train_metrics is not None:
        entry.update({f"train_{k}": float(v) for k, v in train_metrics.items()})
      entry["orthogonality_error"] = orthogonality(config, model, run, params)
      history.append(entry)
      return entry

    def save(step):
      ckpt.save(step, state)
      training.write_json(_history_path(model_dir), {"model": model, "history": history, **meta})

    if start == 0:
      record(0, state.params, None)
    stream = sys.stderr if progress_stream is None else progress_stream
    tty = hasattr(stream, "isatty") and stream.isatty()
    progress = training.Progress(config.steps, f"{config.run_name()} {model}", initial=start,
                                 stream=stream, min_interval=0.5 if tty else 15.0)
    t_last = time.perf_counter()
    metrics = None
    for step in range(start, config.steps):
      state, metrics = step_fn(state)
      done = step + 1
      evaluated = done % config.eval_every == 0 or done == config.steps
      if evaluated:
        metrics = jax.device_get(metrics)
        training.check_finite(metrics, where=f"{model} step {done}")
        meta["train_seconds"] += time.perf_counter() - t_last
        entry = record(done, state.params, metrics)
        progress.postfix = _score_str(task, entry)
      if done % config.checkpoint_every == 0 or done == config.steps:
        if not evaluated:
          jax.block_until_ready(state)
          meta["train_seconds"] += time.perf_counter() - t_last
        save(done)
        evaluated = True
      if evaluated:
        t_last = time.perf_counter()
      progress.update(1, force=evaluated)
    progress.close()
    if not history:
      raise RuntimeError(f"{model}: checkpoint at step {start} but no history in {model_dir}.")
  finally:
    ckpt.close()

  final = history[-1]
  summary = {
      "model": model,
      "description": MODELS[model].description,
      "steps": int(state.step),
      "eval_loss": final["eval_loss"],
      "train_seconds": meta["train_seconds"],
      "compile_seconds": meta["compile_seconds"],
      "orthogonality_error": final["orthogonality_error"],
      "num_params": int(sum(np.size(x) for x in jax.tree.leaves(state.params))),
  }
  if task.kind == "last_regression":
    summary["eval_mse"] = final["eval_mse"]
  else:
    summary["eval_accuracy"] = final["eval_accuracy"]
    summary["best_eval_accuracy"] = max(h["eval_accuracy"] for h in history)
  return {"summary": summary, "history": history, "params": state.params, "run": run}


def _score_str(task, entry) -> str:
  if task.kind == "last_regression":
    return f"mse {entry['eval_mse']:.4f}"
  return f"loss {entry['eval_loss']:.4f} acc {entry['eval_accuracy']:.3f}"


# ----------------------------------------------------------------------------
# Gradient diagnostics.


@functools.lru_cache(maxsize=None)
def _mean_gradient_norms_fn(task_name: str, options: tuple, activation: str):
  """A jitted ``(theta, head_params, x, y) -> mean_b ||dL_b/dh(k)||``, shared by all calls alike."""
  task = memory.get_task(task_name, **dict(options))

  def fn(theta, head_params, x, y):
    loss = head_loss_fn(task, head_params, y)
    # The loss is a batch mean; times the batch size each sequence gets its own gradient.
    b = x.shape[0]
    norms = diagnostics.hidden_gradient_norms(theta, x, lambda hs: b * loss(hs), activation)
    return jnp.mean(norms, axis=0)

  return jax.jit(fn)


def gradient_norms(config: Config, model: str, run: Run, params, task: memory.MemoryTask) -> np.ndarray:
  """Mean over a fixed batch of ``||dL/dh(k)||`` for every step k (per-sequence losses)."""
  x, y = task.sample(_keys(config.seed)[3], config.diagnostics_batch, config.length)
  theta = eq1_params(config, model, {"params": params, **run.constants})
  head = {k: params[k] for k in ("head", "readout") if k in params}
  fn = _mean_gradient_norms_fn(task.name, tuple(sorted(task.options.items())), config.activation)
  return np.asarray(fn(theta, head, x, y))


BOUND_SUMMARY_KEYS = (
    "sigma_min_W", "sigma_max_W", "eig_abs_min_W", "eig_abs_max_W", "normality_defect_W", "is_normal_W", "a_min", "b_max",
    "svd_bound_holds", "eig_bound_holds", "product_bound_holds", "autodiff_matches",
)


def bound_check(config: Config, model: str, run: Run, params, task: memory.MemoryTask) -> dict:
  """Seed 002's Jacobian bound on the first diagnostics sequence (see
  :func:`urnn_jax.diagnostics.jacobian_bound_check`); scalars plus the range of
  ``sigma_min(J_k)``, ``sigma_max(J_k)`` over the steps."""
  x, _ = task.sample(_keys(config.seed)[3], config.diagnostics_batch, config.length)
  theta = eq1_params(config, model, {"params": params, **run.constants})
  r = diagnostics.jacobian_bound_check(theta, x[0], config.activation)
  out = {k: r[k] for k in BOUND_SUMMARY_KEYS}
  out.update(
      min_sigma_min_J=min(r["sigma_min_J"]),
      max_sigma_max_J=max(r["sigma_max_J"]),
      grad_ratio_first_step=r["grad_ratio"][0],
  )
  return out


def plot_learning_curves(path: str, task: memory.MemoryTask, config: Config, histories: dict, baseline: dict):
  plt = training.pyplot()
  regression = task.kind == "last_regression"
  fig, axes = plt.subplots(1, 1 if regression else 2, figsize=(5 if regression else 10, 3.6), squeeze=False)
  axes = axes[0]
  for model, hist in histories.items():
    steps = [h["step"] for h in hist]
    # A float32 cross-entropy can round to 0: floor it for the log scale.
    axes[0].plot(steps, [max(h["eval_loss"], 1e-7) for h in hist], label=model)
    if not regression:
      axes[1].plot(steps, [100 * h["eval_accuracy"] for h in hist], label=model)
  axes[0].axhline(baseline["loss"], color="k", ls="--", lw=1, label="memoryless")
  axes[0].set_yscale("log")
  axes[0].set_xlabel("step")
  axes[0].set_ylabel("eval MSE" if regression else "eval cross-entropy")
  if not regression:
    axes[1].axhline(100 * baseline["accuracy"], color="k", ls="--", lw=1, label="memoryless")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("eval accuracy (%)" + (" on copied symbols" if task.kind == "seq_class" else ""))
    axes[1].set_ylim(0, 100)
  axes[-1].legend(fontsize=8)
  fig.suptitle(f"{config.task}, length {config.length}, hidden {config.hidden}, {config.activation}")
  training.save_figure(fig, path)
  plt.close(fig)


def plot_gradient_norms(path: str, config: Config, norms: dict):
  plt = training.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
  for ax, when in zip(axes, ("init", "trained")):
    for model, d in norms.items():
      ax.semilogy(np.arange(len(d[when])), np.maximum(d[when], 1e-30), label=model)
    ax.set_title(f"{when}")
    ax.set_xlabel("step k")
  axes[0].set_ylabel("mean ||dL/dh(k)||")
  axes[1].legend(fontsize=8)
  fig.suptitle(f"hidden-state gradients: {config.task}, length {config.length}, {config.activation}")
  training.save_figure(fig, path)
  plt.close(fig)


# ----------------------------------------------------------------------------
# A run: all models for one (task, length).


def _check_config(config: Config, run_dir: str):
  path = os.path.join(run_dir, "config.json")
  if os.path.exists(path):
    saved = training.read_json(path)
    current = training.to_jsonable(config.comparable())
    # A field the saved run predates is taken at its default.
    defaults = training.to_jsonable(dataclasses.asdict(Config()))
    saved_cmp = {k: saved.get(k, defaults.get(k)) for k in current}
    diff = sorted(k for k in current if current[k] != saved_cmp[k])
    if diff:
      detail = ", ".join(f"{k}: saved {saved_cmp[k]!r} vs now {current[k]!r}" for k in diff)
      raise ValueError(
          f"{run_dir} holds a run with a different configuration ({detail}). Use another"
          " --workdir, or the saved flags to resume."
      )
  training.write_json(path, dataclasses.asdict(config))


def run_experiment(config: Config, workdir: str, *, log=print, progress_stream=None) -> dict:
  """Trains all of ``config.models`` on one (task, length); writes tables and plots."""
  config.validate()
  config = config.resolved()
  task = memory.get_task(config.task, **config.task_options())
  run_dir = os.path.join(workdir, config.run_name())
  os.makedirs(run_dir, exist_ok=True)
  _check_config(config, run_dir)
  baseline = task.baseline(config.length)

  rows, histories, grad, bounds = [], {}, {}, {}
  for model in config.models:
    try:
      out = train_model(config, model, run_dir, log=log, progress_stream=progress_stream)
    except training.DivergenceError as e:
      # Report it and go on with the other models; the last good checkpoint is kept.
      log(f"[{config.run_name()}/{model}] {e}")
      rows.append({"task": config.task, "length": config.length, "model": model,
                   "description": MODELS[model].description, "diverged": str(e)})
      continue
    row = {"task": config.task, "length": config.length, **out["summary"]}
    rows.append(row)
    histories[model] = out["history"]
    if MODELS[model].eq1 and config.diagnostics:
      run = out["run"]
      grad[model] = {
          "init": gradient_norms(config, model, run, run.init_params, task),
          "trained": gradient_norms(config, model, run, out["params"], task),
      }
      bounds[model] = bound_check(config, model, run, out["params"], task)

  for r in rows:
    r["baseline_loss"] = baseline["loss"]
    if baseline["accuracy"] is not None:
      r["baseline_accuracy"] = baseline["accuracy"]
  results = {"config": dataclasses.asdict(config), "baseline": baseline, "results": rows}
  training.write_json(os.path.join(run_dir, "results.json"), results)
  training.write_csv(os.path.join(run_dir, "results.csv"), rows)
  table = results_table(rows, task)
  with open(os.path.join(run_dir, "results.md"), "w") as f:
    f.write(table + "\n")
  plot_learning_curves(os.path.join(run_dir, "learning_curves.png"), task, config, histories, baseline)
  if grad:
    training.write_json(os.path.join(run_dir, "gradient_norms.json"), grad)
    plot_gradient_norms(os.path.join(run_dir, "gradient_norms.png"), config, grad)
    training.write_json(os.path.join(run_dir, "bound_check.json"), bounds)
  return {"rows": rows, "baseline": baseline, "table": table, "run_dir": run_dir,
          "gradient_norms": grad, "bound_check": bounds}


def results_table(rows: Sequence[dict], task: memory.MemoryTask) -> str:
  """A markdown table of one run (models as rows)."""
  metric = "eval_mse" if task.kind == "last_regression" else "eval_accuracy"
  cols = ["model", "task", "length", metric, "eval_loss"]
  if metric == "eval_accuracy":
    cols += ["baseline_accuracy"]
  cols += ["baseline_loss", "steps", "train_seconds", "compile_seconds"]
  return training.markdown_table(rows, cols)


def summary_table(workdir: str) -> str:
  """Seed 002's layout over every run in ``workdir``: one table per task, models x lengths.

  Entries are eval accuracy in % (MSE for ``adding``), with the memoryless
  baseline as the last row, and the training wall time per cell.
  """
  runs = []
  if os.path.isdir(workdir):
    for name in sorted(os.listdir(workdir)):
      path = os.path.join(workdir, name, "results.json")
      if os.path.exists(path):
        runs.append(training.read_json(path))
  out = []
  for task_name in memory.TASKS:
    rs = [r for r in runs if r["config"]["task"] == task_name]
    if not rs:
      continue
    lengths = sorted({r["config"]["length"] for r in rs})
    models = [m for m in MODELS if any(row["model"] == m for r in rs for row in r["results"])]
    regression = task_name == "adding"
    table_rows = []
    for m in models:
      row = {"model": m}
      for r in rs:
        for res in r["results"]:
          if res["model"] == m and "diverged" in res:
            row[f"L={r['config']['length']}"] = "diverged"
          elif res["model"] == m:
            v = res["eval_mse"] if regression else 100 * res["eval_accuracy"]
            row[f"L={r['config']['length']}"] = f"{v:.4f}" if regression else f"{v:.2f}"
            row[f"time L={r['config']['length']}"] = f"{res['train_seconds']:.0f}s"
      table_rows.append(row)
    base = {"model": "memoryless"}
    for r in rs:
      b = r["baseline"]
      base[f"L={r['config']['length']}"] = f"{b['loss']:.4f}" if regression else f"{100 * b['accuracy']:.2f}"
    table_rows.append(base)
    cols = ["model"] + [f"L={L}" for L in lengths] + [f"time L={L}" for L in lengths]
    unit = "eval MSE" if regression else "eval accuracy (%)"
    out.append(f"**{task_name}** ({unit})\n\n" + training.markdown_table(table_rows, cols))
  return "\n\n".join(out)
