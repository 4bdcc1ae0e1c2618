r"""Permuted pixel MNIST (seed 000, Fig. 4): URNN vs ContRNN vs RNN (vs LSTM).

The logic behind ``python -m train.permuted_mnist``. Each image is a sequence
of 784 pixels (one feature, in [0, 1]) in a fixed random order drawn from
``seed``; a classifier reads the last hidden state of any model of the
registry :data:`urnn_jax.models.MODELS` (the paper's: ``urnn``, SVD
projection; ``contrnn``, singular values clipped to ``contraction``; ``rnn``;
``lstm``). RMSProp by default, as in the paper, with validation-based early
stopping: the validation accuracy is measured after every epoch, training
stops after ``patience`` epochs without improvement, and the reported test
accuracy is that of the parameters from the best validation epoch.

One *run* is a (dataset, model, hidden, learning rate, seed), trained by
:func:`urnn_jax.training.fit`; under ``workdir/<run_name>/`` it writes
``config.json`` (a resumed run must match it but for :data:`RESUMABLE`),
``checkpoints/`` (the state with the history, at each epoch end or every
``checkpoint_every`` steps), ``best/`` (the best-validation parameters),
``history.json``, ``results.json``, ``history.csv`` and
``learning_curve.png``. Epochs count from 0 in the files, from 1 on the
plots. :func:`write_summary` gathers every run under ``workdir`` into
``summary.{json,csv,md}`` and ``comparison.png`` (Fig. 4's view).

Determinism: the permutation and the validation split come from ``seed``,
the parameters from ``fold_in(key(seed), 0)``, the batches of epoch e from
``fold_in(fold_in(key(seed), 1), e)``; a resumed run draws the same batches.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from urnn_jax import config as config_lib
from urnn_jax import models as registry
from urnn_jax import parallel as mesh_lib
from urnn_jax import training
from urnn_jax.data import images
from urnn_jax.recurrent import LastStateClassifier
from urnn_jax.rnn import ACTIVATIONS

PyTree = Any

# Published anchors on permuted MNIST (test accuracy), for the results table.
PUBLISHED = {
    "uRNN (Arjovsky et al. 2016)": 0.914,
    "full-capacity uRNN, N=512 (Wisdom et al. 2016)": 0.947,
    "LSTM (Arjovsky et al. 2016)": 0.88,
}

# Fields that may differ when a run is resumed.
RESUMABLE = ("epochs", "patience", "data_dir", "source", "eval_batch", "devices")


_f = config_lib.field


@dataclasses.dataclass(frozen=True)
class Config:
  """One run (the binary's flags are these fields)."""

  dataset: str = _f("mnist", "Dataset.", images.DATASETS)
  data_dir: str | None = _f(None, "tfds data_dir and/or directory of IDX files.")
  source: str = _f("auto", "Where to read the data (auto: tfds, then IDX).", images.SOURCES)
  model: str = _f("urnn", "Model, a name of urnn_jax.models.MODELS.", registry.MODELS)
  hidden: int = _f(128, "Hidden size n (LSTM: cell size).")
  activation: str = _f("relu", "Activation of the eq. (1) cells.", ACTIVATIONS)
  rnn_init: str = _f("haar", "Initialiser of the free RNN's W (rnn, contrnn).", sorted(registry.RNN_INITS))
  constraint: str | None = _f(
      None, "The constraint of urnn, ugru and urnn_complex; default: the model's own (urnn, ugru: projection;"
      " urnn_complex: cayley, the full-capacity update). The other models' constraint is fixed by their name.",
      list(registry.CONSTRAINTS))
  reproject_every: int = _f(0, "urnn_cayley/urnn_expm/urnn_complex: also project W onto the group every this"
                            " many steps (0: never).")
  optimizer: str = _f("rmsprop", "Optimiser (RMSProp, as in the paper).", sorted(training.OPTIMIZERS))
  learning_rate: float = _f(1e-3, "Learning rate.")
  grad_clip: float = _f(0.0, "Clip gradients to this global norm (0: off).")
  contraction: float = _f(1.0, "ContRNN: largest allowed singular value of W.")
  batch_size: int = _f(100, "Training batch size.")
  epochs: int = _f(20, "Maximum number of epochs.")
  patience: int = _f(5, "Early stopping: stop after this many epochs without a better validation"
                     " accuracy (0: off).")
  num_validation: int = _f(5000, "Training examples held out for validation.")
  train_subset: int = _f(0, "Train on only this many examples (0: all).")
  eval_subset: int = _f(0, "Validate and test on only this many examples (0: all).")
  max_steps_per_epoch: int = _f(0, "Cap on steps per epoch (0: a full pass).")
  eval_batch: int = _f(1000, "Evaluation chunk size.")
  checkpoint_every: int = _f(0, "Checkpoint every this many steps (0: at every epoch end).")
  unroll: int = _f(1, "lax.scan unroll factor.")
  seed: int = _f(0, "Seed of the pixel permutation, validation split, init and batches.")
  permute: bool = _f(True, "Permute the pixels (--nopermute: sequential pixel MNIST).")
  devices: int = _f(0, "Devices the batch is sharded over (data parallelism; the parameters are replicated),"
                    " counted over all processes; 0: the most devices that divide --batch_size (several"
                    " processes: the same number from each).")

  def mesh(self):
    """The data-parallel mesh (:func:`urnn_jax.parallel.local_mesh`): ``devices`` devices over all
    processes (0: the most that divide ``batch_size``)."""
    return mesh_lib.local_mesh(self.batch_size, self.devices, axis=mesh_lib.DATA, name="batch_size")

  def run_name(self) -> str:
    perm = "" if self.permute else "_sequential"
    return f"{self.dataset}{perm}_{self.model}_h{self.hidden}_lr{self.learning_rate:g}_s{self.seed}"

  def model_options(self) -> registry.ModelOptions:
    return registry.ModelOptions(hidden=self.hidden, activation=self.activation, rnn_init=self.rnn_init,
                                 reproject_every=self.reproject_every, contraction=self.contraction,
                                 constraint=self.constraint)

  def validate(self) -> None:
    if self.dataset not in images.DATASETS:
      raise ValueError(f"dataset={self.dataset!r}; expected one of {images.DATASETS}.")
    if self.source not in images.SOURCES:
      raise ValueError(f"source={self.source!r}; expected one of {images.SOURCES}.")
    registry.get(self.model)
    self.mesh()  # devices: exist and divide the batch
    config_lib.check_ints(self, positive=("hidden", "batch_size", "epochs", "num_validation", "eval_batch", "unroll"),
                          non_negative=("patience", "train_subset", "eval_subset", "max_steps_per_epoch",
                                        "checkpoint_every"))
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}.")
    self.model_options().validate()  # hidden, activation, rnn_init, reproject_every, contraction
    make_optimizer(self)  # optimizer, grad_clip


# ----------------------------------------------------------------------------
# Model, optimiser, steps.


def make_model(config: Config) -> nn.Module:
  """``LastStateClassifier`` over the registry model's cell, 10 classes."""
  cell = registry.make_cell(config.model, config.model_options())
  return LastStateClassifier(cell, images.NUM_CLASSES, unroll=config.unroll)


def make_optimizer(config: Config) -> optax.GradientTransformation:
  """Clip (optional), the optimiser, then the model's constraint (:func:`urnn_jax.models.make_tx`)."""
  tx = training.make_optimizer(config.optimizer, config.learning_rate, grad_clip=config.grad_clip)
  return registry.make_tx(config.model, tx, config.model_options())


def init_variables(config: Config, model: nn.Module) -> tuple[PyTree, dict]:
  """``(params, constants)``: the trainable parameters and the other collections ({} or {'constants': ...})."""
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  dummy = jnp.zeros((1, 1, 1), jnp.float32)  # the parameters do not depend on the length
  variables = dict(model.init(key, dummy))
  return variables.pop("params"), variables


def data_key(config: Config) -> jax.Array:
  return jax.random.fold_in(jax.random.key(config.seed), 1)


def loss_and_metrics(logits, labels):
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = jnp.argmax(logits, axis=-1) == labels
  return ce, correct


def make_loss_fn(model: nn.Module, constants: dict):
  """``loss_fn(params, (x_uint8 (B, 784), y (B,))) -> (loss, {"loss", "accuracy"})`` for
  :func:`urnn_jax.training.make_train_step`."""

  def loss_fn(params, batch):
    x, y = batch
    ce, correct = loss_and_metrics(model.apply({"params": params, **constants}, images.to_inputs(x)), y)
    loss = jnp.mean(ce)
    return loss, {"loss": loss, "accuracy": jnp.mean(correct)}

  return loss_fn


def make_eval_step(model: nn.Module, constants: dict):
  """``eval_step(params, x, y, mask) -> (sum of losses, number correct)`` (jittable)."""

  def eval_step(params, x, y, mask):
    ce, correct = loss_and_metrics(model.apply({"params": params, **constants}, images.to_inputs(x)), y)
    return jnp.sum(jnp.where(mask, ce, 0.0)), jnp.sum(jnp.where(mask, correct, False))

  return eval_step


class EvalSet(NamedTuple):
  """A split padded to whole chunks: ``x (C, B, 784)``, ``y (C, B)``, ``mask (C, B)``."""

  x: np.ndarray
  y: np.ndarray
  mask: np.ndarray
  size: int


def make_eval_set(x: np.ndarray, y: np.ndarray, batch: int) -> EvalSet:
  n = len(y)
  chunks = max(1, -(-n // batch))
  pad = chunks * batch - n
  xp = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
  yp = np.concatenate([y, np.zeros((pad,), y.dtype)])
  mask = np.arange(chunks * batch) < n
  return EvalSet(xp.reshape(chunks, batch, -1), yp.reshape(chunks, batch), mask.reshape(chunks, batch), n)


def evaluate(eval_fn, params, data: EvalSet) -> dict:
  """Mean loss and accuracy of ``params`` on ``data``."""
  loss, correct = 0.0, 0
  for i in range(len(data.y)):
    l, c = eval_fn(params, data.x[i], data.y[i], data.mask[i])
    loss += float(l)
    correct += int(c)
  return {"loss": loss / data.size, "accuracy": correct / data.size}


# ----------------------------------------------------------------------------
# Training one run.


def load_data(config: Config, *, log=print) -> images.SequenceSplits:
  """The permuted sequences for ``config`` (loads the images)."""
  dataset = images.load_images(config.dataset, source=config.source, data_dir=config.data_dir)
  log(f"loaded {config.dataset} from {dataset.source}")
  return sequences_for(config, dataset)


def sequences_for(config: Config, dataset: images.ImageDataset) -> images.SequenceSplits:
  return images.permuted_sequences(dataset, seed=config.seed, num_validation=config.num_validation,
                                   permute=config.permute, train_subset=config.train_subset,
                                   eval_subset=config.eval_subset)


def steps_per_epoch(config: Config, num_train: int) -> int:
  if config.batch_size > num_train:
    raise ValueError(f"batch_size={config.batch_size} is larger than the training set ({num_train} examples).")
  spe = num_train // config.batch_size
  return min(spe, config.max_steps_per_epoch) if config.max_steps_per_epoch else spe


def train_and_evaluate(config: Config, workdir: str, data: images.SequenceSplits | None = None, *,
                       log=print, progress_stream=None, stop_after: int | None = None) -> dict:
  """Trains (or resumes) one run with early stopping; returns its results.

  The results (also written to ``workdir/<run_name>/results.json``) hold the
  test accuracy of the best-validation parameters (``test_accuracy``), the
  best epoch, the per-epoch history and timings. A run that diverges (NaN)
  stops there and reports the best epoch before it. ``stop_after`` (tests):
  stop after a checkpoint at that step, as a kill would; nothing is written
  then but the checkpoints and the history.
  """
  config.validate()
  if data is None:
    data = load_data(config, log=log)
  name = config.run_name()
  run_dir = os.path.join(workdir, name)
  n_train = len(data.train_y)
  spe = steps_per_epoch(config, n_train)
  training.prepare_run_dir(run_dir, config, resumable=RESUMABLE)
  history_path = os.path.join(run_dir, "history.json")
  saved_spe = training.read_json(history_path).get("steps_per_epoch", spe) if os.path.exists(history_path) else spe
  if saved_spe != spe:
    raise training.ConfigMismatchError(f"{run_dir} holds a run with steps_per_epoch {saved_spe} != {spe} now.")

  model = make_model(config)
  tx = make_optimizer(config)
  params0, constants = init_variables(config, model)
  state0 = training.create_train_state(params0, tx)
  abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params0)
  mesh = config.mesh()
  log(f"[{name}] mesh: {mesh_lib.describe(mesh)}")
  sharded = mesh.size > 1  # data parallel: the state replicated, each batch over the data axis
  if sharded:
    state0 = mesh_lib.replicate(mesh, state0)
    abstract_params = mesh_lib.abstract_like(params0, mesh_lib.replicated_sharding(mesh))
  eval_batch = min(config.eval_batch, max(len(data.valid_y), len(data.test_y)))
  valid = make_eval_set(data.valid_x, data.valid_y, eval_batch)
  test = make_eval_set(data.test_x, data.test_y, eval_batch)

  fns = {}

  def eval_fn():
    if "eval" not in fns:
      step = jax.jit(make_eval_step(model, constants))
      fns["eval"] = step.lower(abstract_params, valid.x[0], valid.y[0], valid.mask[0]).compile()
    return fns["eval"]

  def compile_steps() -> float:
    # Ahead of time, so the compile time is reported apart.
    t0 = time.perf_counter()
    eval_fn()
    batch = (np.zeros((config.batch_size, images.SEQUENCE_LENGTH), np.uint8), np.zeros((config.batch_size,), np.int32))
    step = jax.jit(training.make_train_step(make_loss_fn(model, constants), tx), donate_argnums=0)
    fns["train"] = step.lower(state0, mesh_lib.shard_batch(mesh, batch) if sharded else batch).compile()
    epoch_batches(0)  # compiles the shuffle too
    return time.perf_counter() - t0

  @functools.lru_cache(maxsize=1)
  def epoch_batches(epoch: int) -> np.ndarray:
    return training.batch_indices(jax.random.fold_in(data_key(config), epoch), n_train, config.batch_size)[:spe]

  # Several processes: each gathers only its rows of every (global) batch.
  rows = mesh_lib.local_batch_slice(mesh, config.batch_size) if jax.process_count() > 1 else None

  def batch_fn(step: int):
    b = epoch_batches(step // spe)[step % spe]
    if rows is not None:
      return mesh_lib.shard_local_batch(mesh, (data.train_x[b[rows]], data.train_y[b[rows]]))
    batch = data.train_x[b], data.train_y[b]
    return mesh_lib.shard_batch(mesh, batch) if sharded else batch

  def evaluate_state(state) -> dict:
    val = evaluate(eval_fn(), state.params, valid)
    return {"epoch": int(state.step) // spe - 1, "val_loss": val["loss"], "val_accuracy": val["accuracy"]}

  def report(state, step, entry):
    if entry is None:
      return None
    best = entry.get("best_so_far") == entry["epoch"]
    log(f"[{name}] epoch {entry['epoch']}: train loss {entry['train_loss']:.4f} acc"
        f" {entry['train_accuracy']:.4f} | val loss {entry['val_loss']:.4f} acc {entry['val_accuracy']:.4f}"
        f"{' (best)' if best else ''} | {entry['train_seconds']:.1f}s train, {entry['eval_seconds']:.1f}s eval")
    return f"ep {entry['epoch']} val acc {entry['val_accuracy']:.4f} best@{entry.get('best_so_far')}"

  out = training.fit(
      state0, training.stepwise(lambda state, batch: fns["train"](state, batch), batch_fn),
      total_steps=config.epochs * spe, eval_every=spe, evaluate=evaluate_state, train_metrics="mean",
      checkpoint_dir=os.path.join(run_dir, "checkpoints"), checkpoint_every=config.checkpoint_every,
      early_stopping=training.EarlyStopping(config.patience), monitor="val_accuracy",
      best_dir=os.path.join(run_dir, "best"), history_path=history_path,
      history_extra={"run": name, "steps_per_epoch": spe}, compile=compile_steps, postfix=report,
      desc=name, log=log, progress_stream=progress_stream, stop_after=stop_after)
  history, es = out.history, out.early_stopping
  diverged = None if out.diverged is None else {**out.diverged, "epoch": (out.diverged["step"] - 1) // spe}
  steps = int(out.state.step) if diverged is None else min(int(out.state.step), diverged["step"])

  if out.best_params is not None:
    t_test = time.perf_counter()
    test_metrics = evaluate(eval_fn(), out.best_params, test)
    test_seconds = time.perf_counter() - t_test
  else:
    test_metrics, test_seconds = {"loss": None, "accuracy": None}, 0.0

  train_secs = [h["train_seconds"] for h in history]
  steps_done = [h["train_steps"] for h in history]
  best = history[es.best_epoch] if es.best_epoch is not None else {}
  results = {
      "run": name,
      "config": dataclasses.asdict(config),
      "model_description": registry.get(config.model).description,
      "num_params": registry.count_params(out.state.params),
      "data_source": data.source,
      "permutation_sha256_16": images.permutation_digest(data.permutation),
      "split_sha256_16": images.split_digest(data),
      "sizes": data.sizes(),
      "steps_per_epoch": spe,
      "epochs_run": len(history),
      "steps": steps,
      "best_epoch": es.best_epoch,
      "best_step": best.get("step"),
      "best_val_accuracy": best.get("val_accuracy"),
      "best_val_loss": best.get("val_loss"),
      "test_accuracy": test_metrics["accuracy"],
      "test_loss": test_metrics["loss"],
      "stopped_early": es.should_stop,
      "diverged": diverged,
      "compile_seconds": out.meta["compile_seconds"],
      "mean_epoch_train_seconds": float(np.mean(train_secs)) if train_secs else None,
      "mean_step_seconds": float(sum(train_secs) / sum(steps_done)) if sum(steps_done) else None,
      "mean_epoch_eval_seconds": float(np.mean([h["eval_seconds"] for h in history])) if history else None,
      "test_eval_seconds": test_seconds,
      "history": history,
  }
  if out.interrupted:
    return {**results, "interrupted": True}
  training.write_json(os.path.join(run_dir, "results.json"), results)
  if history:
    training.write_csv(os.path.join(run_dir, "history.csv"), [{"epoch": h["epoch"], **h} for h in history])
    plot_learning_curve(os.path.join(run_dir, "learning_curve.png"), results)
  return results


# ----------------------------------------------------------------------------
# Plots and tables.


def _label(results: dict) -> str:
  c = results["config"]
  return f"{c['model']} lr={c['learning_rate']:g}"


def plot_learning_curve(path: str, results: dict) -> None:
  """Train/validation accuracy and loss per epoch; the best epoch marked."""
  plt = training.pyplot()
  h = results["history"]
  epochs = [e["epoch"] + 1 for e in h]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  axes[0].plot(epochs, [100 * e["train_accuracy"] for e in h], "o-", label="train (running)")
  axes[0].plot(epochs, [100 * e["val_accuracy"] for e in h], "s-", label="validation")
  axes[1].plot(epochs, [e["train_loss"] for e in h], "o-", label="train (running)")
  axes[1].plot(epochs, [e["val_loss"] for e in h], "s-", label="validation")
  if results["best_epoch"] is not None:
    for ax in axes:
      ax.axvline(results["best_epoch"] + 1, color="k", ls="--", lw=1, label="best validation")
    if results["test_accuracy"] is not None:
      axes[0].plot([results["best_epoch"] + 1], [100 * results["test_accuracy"]], "r*", ms=12,
                   label=f"test at best: {100 * results['test_accuracy']:.2f}%")
  axes[0].set_ylabel("accuracy (%)")
  axes[1].set_ylabel("cross-entropy")
  for ax in axes:
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
  c = results["config"]
  fig.suptitle(
      f"{'permuted ' if c['permute'] else ''}{c['dataset']}: {_label(results)}, hidden {c['hidden']},"
      f" {c['optimizer']}, {results['sizes']['train']} train"
      + (" (diverged)" if results["diverged"] else "")
  )
  training.save_figure(fig, path)
  plt.close(fig)


SUMMARY_COLUMNS = (
    "dataset", "model", "hidden", "learning_rate", "optimizer", "train_examples", "epochs_run",
    "best_epoch", "best_val_accuracy", "test_accuracy", "stopped_early", "diverged",
    "sec_per_epoch", "sec_per_step", "num_params",
)


def summary_row(results: dict) -> dict:
  c = results["config"]
  return {
      "run": results["run"],
      "dataset": c["dataset"] + ("" if c["permute"] else " (sequential)"),
      **{k: c[k] for k in ("model", "hidden", "learning_rate", "optimizer")},
      "train_examples": results["sizes"]["train"],
      **{k: results[k] for k in ("steps_per_epoch", "epochs_run", "best_epoch", "best_val_accuracy",
                                 "test_accuracy", "stopped_early")},
      "diverged": results["diverged"] is not None,
      "sec_per_epoch": results["mean_epoch_train_seconds"],
      "sec_per_step": results["mean_step_seconds"],
      **{k: results[k] for k in ("compile_seconds", "num_params")},
  }


def _fmt_row(row: dict) -> dict:
  r = dict(row)
  for k in ("best_val_accuracy", "test_accuracy"):
    r[k] = "-" if r[k] is None else f"{100 * r[k]:.2f}%"
  for k in ("sec_per_epoch", "sec_per_step"):
    r[k] = "-" if r[k] is None else f"{r[k]:.3g}"
  r["learning_rate"] = f"{r['learning_rate']:g}"
  return r


def write_summary(workdir: str) -> dict:
  """``summary.{json,csv,md}`` and ``comparison.png`` over every run in ``workdir``."""
  runs = training.collect_json(workdir)
  rows = [summary_row(r) for r in runs]
  if not rows:
    return {"rows": [], "table": ""}
  table = training.markdown_table([_fmt_row(r) for r in rows], SUMMARY_COLUMNS)
  anchors = "\n".join(f"- {k}: {100 * v:.1f}%" for k, v in PUBLISHED.items())
  text = (
      "Test accuracy at the best validation epoch.\n\n" + table
      + "\n\nPublished permuted-MNIST anchors (full MNIST, long training, large models; not"
      " comparable to CPU-budget runs):\n" + anchors + "\n"
  )
  training.write_tables(workdir, "summary", rows, text=text)
  plot_comparison(os.path.join(workdir, "comparison.png"), runs)
  return {"rows": rows, "table": table, "text": text}


def plot_comparison(path: str, runs: Sequence[dict]) -> None:
  """Fig. 4's view: validation accuracy per epoch of every run, and test accuracy bars."""
  plt = training.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
  labels, accs, colors = [], [], []
  for i, r in enumerate(runs):
    color = f"C{i % 10}"
    h = r["history"]
    label = f"{_label(r)} ({r['config']['dataset']}, h{r['config']['hidden']})"
    if h:
      axes[0].plot([e["epoch"] + 1 for e in h], [100 * e["val_accuracy"] for e in h], "o-",
                   color=color, label=label + (" diverged" if r["diverged"] else ""))
      if r["best_epoch"] is not None:
        axes[0].plot([r["best_epoch"] + 1], [100 * h[r["best_epoch"]]["val_accuracy"]], "*",
                     color=color, ms=12)
    labels.append(_label(r))
    accs.append(0.0 if r["test_accuracy"] is None else 100 * r["test_accuracy"])
    colors.append(color)
  axes[0].set_xlabel("epoch")
  axes[0].xaxis.get_major_locator().set_params(integer=True)
  axes[0].set_ylabel("validation accuracy (%)")
  if any(r["history"] for r in runs):
    axes[0].legend(fontsize=7)
  axes[0].set_title("validation accuracy (* = best epoch)")
  bars = axes[1].bar(range(len(accs)), accs, color=colors)
  for b, a, r in zip(bars, accs, runs):
    text = f"{a:.1f}" if r["test_accuracy"] is not None else (
        f"diverged\n(step {r['diverged']['step']})" if r["diverged"] else "n/a")
    axes[1].text(b.get_x() + b.get_width() / 2, a, text, ha="center", va="bottom", fontsize=8)
  axes[1].set_xticks(range(len(accs)), labels, rotation=30, ha="right", fontsize=8)
  axes[1].set_ylabel("test accuracy at best validation epoch (%)")
  axes[1].set_ylim(0, 100)
  axes[1].set_title("test accuracy")
  training.save_figure(fig, path)
  plt.close(fig)
