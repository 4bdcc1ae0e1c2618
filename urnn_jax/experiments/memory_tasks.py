"""Long-memory tasks (seed 002): RNN vs uRNN vs LSTM/GRU, and gradient diagnostics.

The logic behind ``python -m train.memory_tasks``. One *run* is a task at one
length; it trains every requested model (any name of the registry
:data:`urnn_jax.registry.MODELS`) on the same stream of batches and writes,
under ``workdir/<task>_L<length>/``:

* ``config.json``: the run's configuration (a resumed run must match it:
  :func:`urnn_jax.training.prepare_run_dir`);
* ``<model>/checkpoints/``: orbax checkpoints of the :class:`TrainState`,
  each with the evaluation history up to its step;
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
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import zlib
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from urnn_jax import config as config_lib
from urnn_jax import diagnostics
from urnn_jax import models as registry
from urnn_jax import orthogonal
from urnn_jax import parallel as mesh_lib
from urnn_jax import training
from urnn_jax.data import memory
from urnn_jax.recurrent import LastStateClassifier, SequenceRegressor
from urnn_jax.rnn import ACTIVATIONS, RNNParams

PyTree = Any


# ----------------------------------------------------------------------------
# Configuration.


# Fields that may change when a run is resumed ("steps" is compared when the schedule spans it).
RESUMABLE = ("models", "steps", "diagnostics", "devices")

# Recall (first_term, copy) needs only a linear recurrence: an orthogonal linear
# RNN is the classic exact solution (Henaff et al. 2016), and it needs n >= T
# states to recall a term T steps back. Comparing (kth_highest) and
# multiplying by a marker (adding) need a nonlinearity.
DEFAULT_ACTIVATION = {"first_term": "identity", "copy": "identity", "kth_highest": "relu", "adding": "relu"}


_f = config_lib.field


@dataclasses.dataclass(frozen=True)
class Config:
  """One run: a task at one length, for a list of models.

  ``models``, ``steps`` and ``diagnostics`` may change when a run is resumed
  (train more models, or longer); every other field must match the saved
  ``config.json``. Under ``lr_schedule="cosine"`` the schedule spans
  ``steps``, so ``steps`` must match too.
  """

  task: str = _f("first_term", "Task.", sorted(memory.TASKS))
  length: int = _f(20, "Sequence length T (copy: the number of blanks).")
  models: tuple[str, ...] = _f(("rnn", "urnn_expm", "lstm"), "Models, names of urnn_jax.registry.MODELS.",
                               list(registry.MODELS))
  hidden: int = _f(128, "Hidden size n (all models).")
  activation: str | None = _f(None, f"Activation of the eq. (1) cells; default per task: {DEFAULT_ACTIVATION}.",
                              sorted(ACTIVATIONS))
  rnn_init: str = _f("haar", "Initialiser of the free RNN's W.", sorted(registry.RNN_INITS))
  constraint: str | None = _f(
      None, "The constraint of urnn, ugru and urnn_complex; default: the model's own (urnn, ugru: projection;"
      " urnn_complex: cayley, the full-capacity update). The other models' constraint is fixed by their name.",
      list(registry.CONSTRAINTS))
  optimizer: str = _f("adam", "Optimiser (all models).", sorted(training.OPTIMIZERS))
  learning_rate: float = _f(1e-3, "Learning rate.")
  recurrent_learning_rate: float | None = _f(
      None, "Learning rate of the recurrent matrix of the eq. (1) and complex models (W, or the generator"
      " A of urnn_param_*), expRNN's 'orthogonal lr'; default: --learning_rate. LSTM / GRU / uGRU use"
      " --learning_rate throughout.")
  lr_schedule: str = _f("constant", "Learning rate (both rates): constant, or cosine decay to 0 over --steps.",
                        list(training.LR_SCHEDULES))
  grad_clip: float = _f(1.0, "Clip gradients to this global norm (0: off).")
  reproject_every: int = _f(0, "The retractions (urnn_cayley, urnn_expm, urnn_complex, --constraint=cayley/expm):"
                            " also project W onto the group every this many steps, removing float32 drift"
                            " (0: never).")
  batch_size: int = _f(64, "Training batch size.")
  steps: int = _f(1000, "Training steps per model.")
  eval_every: int = _f(100, "Evaluate every this many steps.")
  eval_size: int = _f(1000, "Held-out evaluation sequences.")
  eval_batch: int = _f(500, "Evaluation chunk size.")
  checkpoint_every: int = _f(200, "Checkpoint every this many steps (0: at every evaluation).")
  seed: int = _f(0, "Seed of data, initialisation and evaluation set.")
  num_values: int | None = _f(None, "first_term / kth_highest: values per term (default 10 / 100).")
  k: int | None = _f(None, "kth_highest: k (default 3).")
  diagnostics_batch: int = _f(32, "Sequences averaged in the gradient norms.")
  diagnostics: bool = _f(True, "Gradient norms ||dL/dh(k)|| and the Jacobian bound check for the eq. (1) models.")
  devices: int = _f(0, "Devices the batch is sharded over (data parallelism; the parameters are replicated),"
                    " counted over all processes; 0: the most devices that divide --batch_size (several"
                    " processes: the same number from each).")

  def mesh(self):
    """The data-parallel mesh (:func:`urnn_jax.parallel.local_mesh`): ``devices`` devices over all
    processes (0: the most that divide ``batch_size``). Each step draws its batch inside the
    jitted step from ``(seed, step)``, each device its rows, so every process count sees the
    same global batches."""
    return mesh_lib.local_mesh(self.batch_size, self.devices, axis=mesh_lib.DATA, name="batch_size")

  def resolved(self) -> "Config":
    """This config with ``activation`` filled in from :data:`DEFAULT_ACTIVATION`."""
    if self.activation is not None:
      return self
    return dataclasses.replace(self, activation=DEFAULT_ACTIVATION.get(self.task, "relu"))

  def model_options(self) -> registry.ModelOptions:
    c = self.resolved()
    return registry.ModelOptions(hidden=c.hidden, activation=c.activation, rnn_init=c.rnn_init,
                               reproject_every=c.reproject_every, constraint=c.constraint)

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

  def resumable(self) -> tuple[str, ...]:
    """The fields a resumed run may change."""
    return tuple(k for k in RESUMABLE if not (k == "steps" and self.schedule_spans_steps()))

  def validate(self) -> None:
    if self.task not in memory.TASKS:
      raise ValueError(f"task={self.task!r}; expected one of {sorted(memory.TASKS)}.")
    registry.check_names(self.models)
    config_lib.check_ints(self, positive=("length", "hidden", "batch_size", "steps", "eval_every", "eval_size",
                                          "eval_batch", "diagnostics_batch"),
                          non_negative=("checkpoint_every", "devices"))
    self.mesh()  # devices: exist and divide the batch
    self.model_options().validate()  # activation, rnn_init, reproject_every
    # Validates optimizer, learning_rate, recurrent_learning_rate, grad_clip and lr_schedule.
    training.make_optimizer(self.optimizer, self.learning_rate, grad_clip=self.grad_clip,
                            lr_schedule=self.lr_schedule, total_steps=self.steps,
                            recurrent_learning_rate=self.recurrent_learning_rate)
    if self.eval_size % min(self.eval_batch, self.eval_size):
      raise ValueError(f"eval_size={self.eval_size} must be a multiple of eval_batch={self.eval_batch}.")
    task = memory.get_task(self.task, **self.task_options())  # Validates task options.
    # Traces one sample (no compute), so settings that cannot be sampled (k > length,
    # num_values < 1) are refused before anything is written.
    jax.eval_shape(lambda key: task.sample(key, 1, self.length), jax.random.key(0))


# ----------------------------------------------------------------------------
# Models and optimisers.


def make_model(config: Config, model: str, task: memory.MemoryTask) -> nn.Module:
  """The Flax model for ``model`` on ``task``: a per-step or last-state head."""
  cell = registry.make_cell(model, config.model_options())
  if task.kind == "seq_class":
    return SequenceRegressor(cell, task.output_size, use_bias=True)
  return LastStateClassifier(cell, task.output_size)


def make_optimizer(config: Config, model: str) -> optax.GradientTransformation:
  """Clip (optional), the optimiser, then the model's constraint on the recurrent matrix.

  ``config.recurrent_learning_rate`` applies to the eq. (1) models' recurrent
  matrix (W, or the generator A of a parametrised cell); LSTM and GRU have no
  single recurrent matrix and train every parameter at ``learning_rate``.
  """
  recurrent_lr = config.recurrent_learning_rate if registry.single_recurrent_matrix(model) else None
  tx = training.make_optimizer(config.optimizer, config.learning_rate, grad_clip=config.grad_clip,
                               lr_schedule=config.lr_schedule, total_steps=config.steps,
                               recurrent_learning_rate=recurrent_lr)
  return registry.make_tx(model, tx, config.model_options())


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


@functools.lru_cache(maxsize=None)
def _model(config: Config, model: str) -> nn.Module:
  return make_model(config, model, memory.get_task(config.task, **config.task_options()))


@functools.lru_cache(maxsize=None)
def _eq1_fn(config: Config, model: str):
  module = _model(config, model)
  return jax.jit(lambda variables: module.apply(variables, method=lambda m: m.rnn.rnn_params()))


@functools.lru_cache(maxsize=None)
def _kernel_fn(config: Config, model: str):
  module = _model(config, model)
  return jax.jit(lambda variables: module.apply(variables, method=lambda m: m.rnn.cell.transition_kernel()))


def eq1_params(config: Config, model: str, variables: PyTree) -> RNNParams:
  """RNNParams (W, F, b) of an eq. (1) model's recurrent layer (C = I, h0 = 0), asked of the model."""
  if not registry.get(model).eq1:
    raise ValueError(f"eq1_params: model {model!r} is not an eq. (1) RNN.")
  return _eq1_fn(config, model)(variables)


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


def make_steps(config: Config, task: memory.MemoryTask, run: Run, mesh=None):
  """Jittable ``train_step(state) -> (state, metrics)`` and ``eval_step(params, x, y)``.

  The train step is :func:`urnn_jax.training.make_train_step` on the batch
  of step ``state.step``, drawn inside the step.
  """
  data_key = _keys(config.seed)[1]

  def loss_fn(params, batch):
    x, y = batch
    out = run.model.apply({"params": params, **run.constants}, x)
    return task_loss(task, out, y)

  step = training.make_train_step(loss_fn, run.tx)

  def train_step(state: training.TrainState):
    batch = task.sample(jax.random.fold_in(data_key, state.step), config.batch_size, config.length)
    if mesh is not None and mesh.size > 1:  # the batch over the data axis; sharded jit does the rest
      batch = jax.lax.with_sharding_constraint(batch, mesh_lib.batch_sharding(mesh))
    return step(state, batch)

  def eval_step(params, x, y):
    return loss_fn(params, (x, y))[1]

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
  """||W^H W - I||_F of an eq. (1) or complex model's transition matrix (None for the others)."""
  if not registry.single_recurrent_matrix(model):
    return None
  kernel = _kernel_fn(config, model)({"params": params, **run.constants})
  return float(orthogonal.orthogonality_error(kernel))


@functools.lru_cache(maxsize=4)
def _prepare(config: Config, model: str):
  """``(task, run, compiled, initial_state)``; ``compiled()`` gives the AOT-compiled steps, the
  evaluation chunks and the compile time, computed once per configuration
  (so a resumed run in the same process does not compile again)."""
  task = memory.get_task(config.task, **config.task_options())
  run = build(config, model, task)
  mesh = config.mesh()

  def initial_state():
    state = training.create_train_state(run.init_params, run.tx)
    return mesh_lib.replicate(mesh, state) if mesh.size > 1 else state

  @functools.cache
  def compiled():
    train_step, eval_step = make_steps(config, task, run, mesh)
    state = initial_state()
    # Compile ahead of time, so the compile time is reported apart.
    t0 = time.perf_counter()
    step_fn = jax.jit(train_step).lower(state).compile()
    chunks = eval_set(config, task)
    eval_fn = jax.jit(eval_step).lower(state.params, *chunks[0]).compile()
    return step_fn, eval_fn, chunks, time.perf_counter() - t0

  return task, run, compiled, initial_state


def train_model(config: Config, model: str, workdir: str, *, log=print, progress_stream=None,
                stop_after: int | None = None) -> dict:
  """Trains (or resumes) one model with :func:`urnn_jax.training.fit`; returns its summary and history.

  Resumes from the latest checkpoint in ``workdir/<model>/checkpoints``, which
  holds the evaluation history up to its step.
  """
  config = config.resolved()
  # The compile cache key: the fields that change the compiled steps (steps only
  # through a schedule that spans them).
  key = dataclasses.replace(config, models=(), steps=config.steps if config.schedule_spans_steps() else 0,
                            diagnostics=True, eval_every=1, checkpoint_every=1)
  task, run, compiled, initial_state = _prepare(key, model)
  model_dir = os.path.join(workdir, model)

  def advance(state, start, count):
    return training.stepwise(compiled()[0])(state, start, count)

  def evaluate_state(state):
    step_fn, eval_fn, chunks, _ = compiled()
    ev = evaluate(eval_fn, state.params, chunks)
    return {**{f"eval_{k}": v for k, v in ev.items()},
            "orthogonality_error": orthogonality(config, model, run, state.params)}

  out = training.fit(
      initial_state(),
      advance,
      total_steps=config.steps,
      checkpoint_dir=os.path.join(model_dir, "checkpoints"),
      history_path=os.path.join(model_dir, "history.json"),
      eval_every=config.eval_every,
      checkpoint_every=config.checkpoint_every,
      evaluate=evaluate_state,
      eval_at_start=True,
      compile=lambda: compiled()[3],
      postfix=lambda state, step, entry: _score_str(task, entry) if entry else None,
      desc=f"{config.run_name()}/{model}",
      log=log,
      progress_stream=progress_stream,
      stop_after=stop_after,
  )
  if out.diverged is not None:
    raise training.DivergenceError(f"{model}: {out.diverged['message']}")
  history, state = out.history, out.state
  if not history:
    raise RuntimeError(f"{model}: checkpoint at step {int(state.step)} but no history in {model_dir}.")
  final = history[-1]
  summary = {
      "model": model,
      "description": registry.get(model).description,
      "steps": int(state.step),
      "eval_loss": final["eval_loss"],
      "train_seconds": out.meta["train_seconds"],
      "compile_seconds": out.meta["compile_seconds"],
      "orthogonality_error": final["orthogonality_error"],
      "num_params": registry.count_params(state.params),
  }
  if task.kind == "last_regression":
    summary["eval_mse"] = final["eval_mse"]
  else:
    summary["eval_accuracy"] = final["eval_accuracy"]
    summary["best_eval_accuracy"] = max(h["eval_accuracy"] for h in history)
  return {"summary": summary, "history": history, "params": state.params, "run": run,
          "interrupted": out.interrupted}


def _score_str(task, entry) -> str:
  if task.kind == "last_regression":
    return f"mse {entry['eval_mse']:.4f}"
  return f"loss {entry['eval_loss']:.4f} acc {entry['eval_accuracy']:.3f}"


# ----------------------------------------------------------------------------
# Gradient diagnostics.


@functools.lru_cache(maxsize=None)
def _mean_gradient_norms_fn(task_name: str, options: tuple, activation: str):
  """A jitted ``(theta, variables, x, y) -> mean_b ||dL_b/dh(k)||``, shared by every model of a task.

  The loss is the model's own read-out (``outputs_from_states``), which does
  not depend on the cell, so one compiled function serves all models.
  """
  task = memory.get_task(task_name, **dict(options))
  head = make_model(Config(task=task_name, activation=activation), "rnn", task)

  def fn(theta, variables, x, y):
    loss = lambda hs: task_loss(task, head.apply(variables, hs, method="outputs_from_states"), y)[0]
    # The loss is a batch mean; times the batch size each sequence gets its own gradient.
    b = x.shape[0]
    norms = diagnostics.hidden_gradient_norms(theta, x, lambda hs: b * loss(hs), activation)
    return jnp.mean(norms, axis=0)

  return jax.jit(fn)


def gradient_norms(config: Config, model: str, run: Run, params, task: memory.MemoryTask) -> np.ndarray:
  """Mean over a fixed batch of ``||dL/dh(k)||`` for every step k (per-sequence losses)."""
  x, y = task.sample(_keys(config.seed)[3], config.diagnostics_batch, config.length)
  variables = {"params": params, **run.constants}
  theta = eq1_params(config, model, variables)
  head = {k: v for k, v in variables["params"].items() if k in ("head", "readout")}
  fn = _mean_gradient_norms_fn(task.name, tuple(sorted(task.options.items())), config.activation)
  return np.asarray(fn(theta, {"params": head}, x, y))


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


def run_experiment(config: Config, workdir: str, *, log=print, progress_stream=None) -> dict:
  """Trains all of ``config.models`` on one (task, length); writes tables and plots."""
  config.validate()
  config = config.resolved()
  task = memory.get_task(config.task, **config.task_options())
  run_dir = os.path.join(workdir, config.run_name())
  training.prepare_run_dir(run_dir, config, resumable=config.resumable())
  log(f"[{config.run_name()}] mesh: {mesh_lib.describe(config.mesh())}")
  baseline = task.baseline(config.length)

  rows, histories, grad, bounds = [], {}, {}, {}
  for model in config.models:
    try:
      out = train_model(config, model, run_dir, log=log, progress_stream=progress_stream)
    except training.DivergenceError as e:
      # Report it and go on with the other models; the last good checkpoint is kept.
      log(f"[{config.run_name()}/{model}] {e}")
      rows.append({"task": config.task, "length": config.length, "model": model,
                   "description": registry.get(model).description, "diverged": str(e)})
      continue
    row = {"task": config.task, "length": config.length, **out["summary"]}
    rows.append(row)
    histories[model] = out["history"]
    if registry.get(model).eq1 and config.diagnostics:
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
  table = training.write_tables(run_dir, "results", rows, document=results, text=results_table(rows, task))
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
  runs = training.collect_json(workdir)
  out = []
  for task_name in memory.TASKS:
    rs = [r for r in runs if r["config"]["task"] == task_name]
    if not rs:
      continue
    lengths = sorted({r["config"]["length"] for r in rs})
    names = [m for m in registry.MODELS if any(row["model"] == m for r in rs for row in r["results"])]
    regression = task_name == "adding"
    table_rows = []
    for m in names:
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
