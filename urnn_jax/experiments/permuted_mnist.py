r"""Permuted pixel MNIST (seed 000, Fig. 4): URNN vs ContRNN vs RNN (vs LSTM).

The logic behind ``python -m train.permuted_mnist``. Each image is a sequence
of 784 pixels (one feature, in [0, 1]) in a fixed random order drawn from
``seed``; a classifier reads the last hidden state. Training uses RMSProp by
default, as in the paper, with validation-based early stopping: the
validation accuracy is measured after every epoch, training stops after
``patience`` epochs without improvement, and the reported test accuracy is
that of the parameters from the best validation epoch.

One *run* is a (dataset, model, hidden, learning rate, seed); it writes,
under ``workdir/<run_name>/``:

* ``config.json``: the configuration (a resumed run must match it, except
  ``epochs``, ``patience`` and where the data comes from);
* ``checkpoints/``: orbax checkpoints of the :class:`~urnn_jax.training.TrainState`
  (each epoch end, and every ``checkpoint_every`` steps);
* ``best/``: orbax checkpoints of the best-validation parameters;
* ``history.json``: the per-epoch curve and timings;
* ``results.json``, ``history.csv``, ``learning_curve.png``.

Epochs are counted from 0 in the files (``best_epoch``, ``history``) and from
1 on the plots' axes.

:func:`write_summary` gathers every run under ``workdir`` into
``summary.{json,csv,md}`` and ``comparison.png`` (the Fig. 4 view).

Determinism: the permutation and the validation split come from ``seed``;
the parameters from ``fold_in(key(seed), 0)``; the batches of epoch e from
``fold_in(fold_in(key(seed), 1), e)``. A resumed run draws the same batches
as an uninterrupted one.

Models (``MODELS``):

===========  =================================================================
``urnn``     :class:`~urnn_jax.OrthogonalRNNCell` (Haar init); after each
             optimiser step W is projected back onto the orthogonal group by
             SVD (:func:`urnn_jax.optim.orthogonal_projection`), as the paper.
``contrnn``  :class:`~urnn_jax.RNNCell` (Haar init) with the singular values of
             W clipped to ``contraction`` after each step
             (:func:`urnn_jax.optim.spectral_norm_projection`).
``rnn``      :class:`~urnn_jax.RNNCell` (Haar init), no constraint.
``lstm``     flax's ``LSTMCell``.
===========  =================================================================
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from urnn_jax import optim
from urnn_jax import training
from urnn_jax.cells import OrthogonalRNNCell, RNNCell
from urnn_jax.data import images
from urnn_jax.recurrent import LastStateClassifier

PyTree = Any

ACTIVATIONS = ("relu", "tanh", "sigmoid", "identity", "leaky_relu", "abs")

# Published anchors on permuted MNIST (test accuracy), for the results table.
PUBLISHED = {
    "uRNN (Arjovsky et al. 2016)": 0.914,
    "full-capacity uRNN, N=512 (Wisdom et al. 2016)": 0.947,
    "LSTM (Arjovsky et al. 2016)": 0.88,
}


# ----------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class Config:
  """One run. See the binary's flags for the meaning of each field."""

  dataset: str = "mnist"
  data_dir: str | None = None
  source: str = "auto"
  model: str = "urnn"
  hidden: int = 128
  activation: str = "relu"
  optimizer: str = "rmsprop"
  learning_rate: float = 1e-3
  grad_clip: float = 0.0
  contraction: float = 1.0
  batch_size: int = 100
  epochs: int = 20
  patience: int = 5
  num_validation: int = 5000
  train_subset: int = 0
  eval_subset: int = 0
  max_steps_per_epoch: int = 0
  eval_batch_size: int = 1000
  checkpoint_every: int = 0
  unroll: int = 1
  seed: int = 0
  permute: bool = True

  # Fields that may differ when a run is resumed.
  RESUMABLE_CHANGES = ("epochs", "patience", "data_dir", "source")

  def run_name(self) -> str:
    perm = "" if self.permute else "_sequential"
    return f"{self.dataset}{perm}_{self.model}_h{self.hidden}_lr{self.learning_rate:g}_s{self.seed}"

  def comparable(self) -> dict:
    d = dataclasses.asdict(self)
    for k in self.RESUMABLE_CHANGES:
      d.pop(k)
    return d

  def validate(self) -> None:
    if self.dataset not in images.DATASETS:
      raise ValueError(f"dataset={self.dataset!r}; expected one of {images.DATASETS}.")
    if self.source not in images.SOURCES:
      raise ValueError(f"source={self.source!r}; expected one of {images.SOURCES}.")
    if self.model not in MODELS:
      raise ValueError(f"model={self.model!r}; expected one of {sorted(MODELS)}.")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"optimizer={self.optimizer!r}; expected one of {sorted(OPTIMIZERS)}.")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation={self.activation!r}; expected one of {ACTIVATIONS}.")
    for name in ("hidden", "batch_size", "epochs", "num_validation", "eval_batch_size", "unroll"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}.")
    for name in ("patience", "train_subset", "eval_subset", "max_steps_per_epoch", "checkpoint_every"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be an int >= 0 (0: off), got {v!r}.")
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}.")
    if not self.grad_clip >= 0:
      raise ValueError(f"grad_clip must be >= 0 (0: off), got {self.grad_clip}.")
    if not (self.contraction > 0 and math.isfinite(self.contraction)):
      raise ValueError(f"contraction must be a finite number > 0, got {self.contraction}.")


# ----------------------------------------------------------------------------
# Models and optimisers.


class ModelSpec(NamedTuple):
  """How to build a model: its cell, and the constraint applied after the optimiser."""

  cell: Callable[[Config], nn.RNNCellBase]
  constraint: Callable[[Config], optax.GradientTransformation] | None
  description: str


MODELS: dict[str, ModelSpec] = {
    "urnn": ModelSpec(
        lambda c: OrthogonalRNNCell(c.hidden, activation=c.activation),
        lambda c: optim.orthogonal_projection(method="svd"),
        "URNN: W orthogonal, SVD projection after each step",
    ),
    "contrnn": ModelSpec(
        lambda c: RNNCell(c.hidden, activation=c.activation),
        lambda c: optim.spectral_norm_projection(max_value=c.contraction),
        "ContRNN: singular values of W clipped to <= contraction after each step",
    ),
    "rnn": ModelSpec(
        lambda c: RNNCell(c.hidden, activation=c.activation),
        None,
        "RNN: free W",
    ),
    "lstm": ModelSpec(lambda c: nn.LSTMCell(c.hidden), None, "LSTM"),
}

OPTIMIZERS = training.OPTIMIZERS


def make_model(config: Config) -> nn.Module:
  """``LastStateClassifier`` over the model's cell, 10 classes."""
  return LastStateClassifier(MODELS[config.model].cell(config), images.NUM_CLASSES, unroll=config.unroll)


def make_optimizer(config: Config) -> optax.GradientTransformation:
  """Clip (optional), the optimiser, then the model's constraint on ``recurrent_kernel``."""
  tx = training.make_optimizer(config.optimizer, config.learning_rate, grad_clip=config.grad_clip)
  constraint = MODELS[config.model].constraint
  return tx if constraint is None else optim.constrained(tx, constraint(config))


def init_params(config: Config, model: nn.Module) -> PyTree:
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  dummy = jnp.zeros((1, 1, 1), jnp.float32)  # the parameters do not depend on the length
  variables = model.init(key, dummy)
  if set(variables) != {"params"}:
    raise ValueError(f"{config.model}: unexpected variable collections {sorted(variables)}.")
  return variables["params"]


def data_key(config: Config) -> jax.Array:
  return jax.random.fold_in(jax.random.key(config.seed), 1)


# ----------------------------------------------------------------------------
# Steps.


def loss_and_metrics(logits, labels):
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = jnp.argmax(logits, axis=-1) == labels
  return ce, correct


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation):
  """``train_step(state, x_uint8 (B, 784), y (B,)) -> (state, metrics)`` (jittable)."""

  def loss_fn(params, x, y):
    logits = model.apply({"params": params}, images.to_inputs(x))
    ce, correct = loss_and_metrics(logits, y)
    return jnp.mean(ce), jnp.mean(correct)

  def train_step(state: training.TrainState, x, y):
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, x, y)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "accuracy": acc, "grad_norm": _global_norm(grads)}
    return training.TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def make_eval_step(model: nn.Module):
  """``eval_step(params, x, y, mask) -> (sum of losses, number correct)`` (jittable)."""

  def eval_step(params, x, y, mask):
    logits = model.apply({"params": params}, images.to_inputs(x))
    ce, correct = loss_and_metrics(logits, y)
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
# Early stopping.


@dataclasses.dataclass
class EarlyStopping:
  """Validation-based early stopping on a metric to maximise (accuracy).

  ``update(epoch, value)`` records one epoch's validation value and returns
  True when it is a new best (strictly better than the best by more than
  ``min_delta``; ties keep the earlier epoch). ``should_stop`` is True once
  ``patience`` epochs in a row have not improved (``patience=0``: never).
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
    """The state after the epochs ``0, 1, ...`` had ``values`` (stops feeding once it would stop)."""
    es = cls(patience, min_delta)
    for epoch, v in enumerate(values):
      if es.should_stop:
        break
      es.update(epoch, v)
    return es


# ----------------------------------------------------------------------------
# Training one run.


def load_data(config: Config, *, log=print) -> images.SequenceSplits:
  """The permuted sequences for ``config`` (loads the images)."""
  dataset = images.load_images(config.dataset, source=config.source, data_dir=config.data_dir)
  log(f"loaded {config.dataset} from {dataset.source}")
  return sequences_for(config, dataset)


def sequences_for(config: Config, dataset: images.ImageDataset) -> images.SequenceSplits:
  return images.permuted_sequences(
      dataset,
      seed=config.seed,
      num_validation=config.num_validation,
      permute=config.permute,
      train_subset=config.train_subset,
      eval_subset=config.eval_subset,
  )


def steps_per_epoch(config: Config, num_train: int) -> int:
  if config.batch_size > num_train:
    raise ValueError(
        f"batch_size={config.batch_size} is larger than the training set ({num_train} examples)."
    )
  spe = num_train // config.batch_size
  return min(spe, config.max_steps_per_epoch) if config.max_steps_per_epoch else spe


def _check_config(config: Config, run_dir: str) -> None:
  path = os.path.join(run_dir, "config.json")
  current = training.to_jsonable(config.comparable())
  if os.path.exists(path):
    saved = {k: v for k, v in training.read_json(path).items() if k not in Config.RESUMABLE_CHANGES}
    diff = sorted(k for k in set(current) | set(saved) if current.get(k) != saved.get(k))
    if diff:
      detail = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in diff)
      raise ValueError(
          f"{run_dir} holds a run with a different configuration ({detail}). Use another"
          " --workdir, or the saved flags to resume."
      )
  training.write_json(path, dataclasses.asdict(config))


def _num_params(params) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def train_and_evaluate(
    config: Config,
    workdir: str,
    data: images.SequenceSplits | None = None,
    *,
    log=print,
    progress_stream=None,
) -> dict:
  """Trains (or resumes) one run with early stopping; returns its results.

  The results (also written to ``workdir/<run_name>/results.json``) hold the
  test accuracy of the best-validation parameters (``test_accuracy``), the
  best epoch, the per-epoch history and timings. A run that diverges (NaN)
  stops there and reports the best epoch before it.
  """
  config.validate()
  if data is None:
    data = load_data(config, log=log)
  run_dir = os.path.join(workdir, config.run_name())
  os.makedirs(run_dir, exist_ok=True)
  _check_config(config, run_dir)
  name = config.run_name()

  model = make_model(config)
  tx = make_optimizer(config)
  params0 = init_params(config, model)
  state = training.create_train_state(params0, tx)
  n_train = len(data.train_y)
  spe = steps_per_epoch(config, n_train)
  total_steps = config.epochs * spe
  dkey = data_key(config)

  history_path = os.path.join(run_dir, "history.json")
  ckpt = training.Checkpoints(os.path.join(run_dir, "checkpoints"), max_to_keep=2)
  best_ckpt = training.Checkpoints(os.path.join(run_dir, "best"), max_to_keep=2)
  try:
    history: list[dict] = []
    meta: dict = {"compile_seconds": None, "diverged": None}
    best_params = None
    latest = ckpt.latest_step()
    if latest is not None:
      state = ckpt.restore(state)
      saved = training.read_json(history_path) if os.path.exists(history_path) else {}
      if saved.get("steps_per_epoch", spe) != spe:
        raise ValueError(f"{run_dir}: saved steps_per_epoch {saved['steps_per_epoch']} != {spe}.")
      done_epochs = int(state.step) // spe
      history = [h for h in saved.get("history", []) if h["epoch"] < done_epochs]
      meta["compile_seconds"] = saved.get("compile_seconds")
      div = saved.get("diverged")
      if div is not None and div["step"] > int(state.step):
        meta["diverged"] = div  # Deterministic: resuming would diverge again.
      log(f"[{name}] resumed at step {int(state.step)} (epoch {done_epochs}, {len(history)} epochs recorded)")
    es = EarlyStopping.replay([h["val_accuracy"] for h in history], config.patience)
    if es.best_epoch is not None:
      best_step = history[es.best_epoch]["step"]
      best_params = best_ckpt.restore(state.params, step=best_step)
      if best_params is None:
        raise RuntimeError(f"{run_dir}: the best-validation checkpoint (step {best_step}) is missing.")

    eval_batch = min(config.eval_batch_size, max(len(data.valid_y), len(data.test_y)))
    valid = make_eval_set(data.valid_x, data.valid_y, eval_batch)
    test = make_eval_set(data.test_x, data.test_y, eval_batch)

    def write_history():
      training.write_json(history_path, {
          "run": name, "steps_per_epoch": spe, "history": history, **meta})

    start = int(state.step)
    finished = es.should_stop or meta["diverged"] is not None or start >= total_steps

    # Compile ahead of time, so the compile time is reported apart.
    t0 = time.perf_counter()
    eval_fn = jax.jit(make_eval_step(model)).lower(state.params, valid.x[0], valid.y[0], valid.mask[0]).compile()
    if not finished:
      xb = np.zeros((config.batch_size, images.SEQUENCE_LENGTH), np.uint8)
      yb = np.zeros((config.batch_size,), np.int32)
      step_fn = jax.jit(make_train_step(model, tx), donate_argnums=0).lower(state, xb, yb).compile()
      if meta["compile_seconds"] is None:
        meta["compile_seconds"] = time.perf_counter() - t0
    stream = sys.stderr if progress_stream is None else progress_stream
    tty = hasattr(stream, "isatty") and stream.isatty()
    progress = training.Progress(total_steps, name, initial=min(start, total_steps), stream=stream,
                                 min_interval=0.5 if tty else 10.0)  # log files: a line per 10 s
    epoch = start // spe
    while not finished and epoch < config.epochs:
      idx = training.batch_indices(jax.random.fold_in(dkey, epoch), n_train, config.batch_size)[:spe]
      sums = {"loss": 0.0, "accuracy": 0.0}
      count = 0
      t_epoch = time.perf_counter()
      for i in range(int(state.step) - epoch * spe, spe):
        b = idx[i]
        state, m = step_fn(state, data.train_x[b], data.train_y[b])
        m = jax.device_get(m)
        step = int(state.step)
        try:
          training.check_finite(m, where=f"{name} step {step}")
        except training.DivergenceError as e:
          meta["diverged"] = {"step": step, "epoch": epoch, "message": str(e)}
          log(f"[{name}] {e}")
          break
        sums["loss"] += float(m["loss"])
        sums["accuracy"] += float(m["accuracy"])
        count += 1
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step % spe:
          ckpt.save(step, state)
        progress.update(1, postfix=f"ep {epoch} loss {m['loss']:.3f} acc {m['accuracy']:.2f}")
      if meta["diverged"] is not None:
        write_history()
        break
      train_seconds = time.perf_counter() - t_epoch
      t_eval = time.perf_counter()
      val = evaluate(eval_fn, state.params, valid)
      eval_seconds = time.perf_counter() - t_eval
      entry = {
          "epoch": epoch,
          "step": int(state.step),
          "train_loss": sums["loss"] / max(count, 1),
          "train_accuracy": sums["accuracy"] / max(count, 1),
          "val_loss": val["loss"],
          "val_accuracy": val["accuracy"],
          "train_seconds": train_seconds,
          "train_steps": count,
          "eval_seconds": eval_seconds,
      }
      history.append(entry)
      improved = es.update(epoch, val["accuracy"])
      entry["best_so_far"] = es.best_epoch
      if improved:
        best_params = jax.tree.map(np.array, state.params)  # a copy: state is donated
        best_ckpt.save(int(state.step), state.params)
      # Order: best params, then the history that points at them, then the state.
      write_history()
      ckpt.save(int(state.step), state)
      log(
          f"[{name}] epoch {epoch}: train loss {entry['train_loss']:.4f} acc"
          f" {entry['train_accuracy']:.4f} | val loss {val['loss']:.4f} acc {val['accuracy']:.4f}"
          f"{' (best)' if improved else ''} | {train_seconds:.1f}s train, {eval_seconds:.1f}s eval"
      )
      progress.update(0, postfix=f"ep {epoch} val acc {val['accuracy']:.4f} best {es.best_value:.4f}@{es.best_epoch}",
                      force=True)
      epoch += 1
      if es.should_stop:
        log(f"[{name}] early stop after epoch {epoch - 1}: no improvement for {config.patience} epochs")
        break
    progress.close()
    write_history()
  finally:
    ckpt.close()
    best_ckpt.close()

  if best_params is not None:
    t_test = time.perf_counter()
    test_metrics = evaluate(eval_fn, best_params, test)
    test_seconds = time.perf_counter() - t_test
  else:
    test_metrics, test_seconds = {"loss": None, "accuracy": None}, 0.0

  train_secs = [h["train_seconds"] for h in history]
  steps_done = [h["train_steps"] for h in history]
  best = history[es.best_epoch] if es.best_epoch is not None else {}
  results = {
      "run": name,
      "config": dataclasses.asdict(config),
      "model_description": MODELS[config.model].description,
      "num_params": _num_params(state.params),
      "data_source": data.source,
      "permutation_sha256_16": images.permutation_digest(data.permutation),
      "split_sha256_16": images.split_digest(data),
      "sizes": data.sizes(),
      "steps_per_epoch": spe,
      "epochs_run": len(history),
      "steps": int(state.step),
      "best_epoch": es.best_epoch,
      "best_step": best.get("step"),
      "best_val_accuracy": best.get("val_accuracy"),
      "best_val_loss": best.get("val_loss"),
      "test_accuracy": test_metrics["accuracy"],
      "test_loss": test_metrics["loss"],
      "stopped_early": es.should_stop,
      "diverged": meta["diverged"],
      "compile_seconds": meta["compile_seconds"],
      "mean_epoch_train_seconds": float(np.mean(train_secs)) if train_secs else None,
      "mean_step_seconds": float(sum(train_secs) / sum(steps_done)) if sum(steps_done) else None,
      "mean_epoch_eval_seconds": float(np.mean([h["eval_seconds"] for h in history])) if history else None,
      "test_eval_seconds": test_seconds,
      "history": history,
  }
  training.write_json(os.path.join(run_dir, "results.json"), results)
  if history:
    training.write_csv(os.path.join(run_dir, "history.csv"), history)
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
      "model": c["model"],
      "hidden": c["hidden"],
      "learning_rate": c["learning_rate"],
      "optimizer": c["optimizer"],
      "train_examples": results["sizes"]["train"],
      "steps_per_epoch": results["steps_per_epoch"],
      "epochs_run": results["epochs_run"],
      "best_epoch": results["best_epoch"],
      "best_val_accuracy": results["best_val_accuracy"],
      "test_accuracy": results["test_accuracy"],
      "stopped_early": results["stopped_early"],
      "diverged": results["diverged"] is not None,
      "sec_per_epoch": results["mean_epoch_train_seconds"],
      "sec_per_step": results["mean_step_seconds"],
      "compile_seconds": results["compile_seconds"],
      "num_params": results["num_params"],
  }


def collect_results(workdir: str) -> list[dict]:
  """Every run's ``results.json`` under ``workdir`` (sorted by run name)."""
  out = []
  if os.path.isdir(workdir):
    for name in sorted(os.listdir(workdir)):
      path = os.path.join(workdir, name, "results.json")
      if os.path.exists(path):
        out.append(training.read_json(path))
  return out


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
  runs = collect_results(workdir)
  rows = [summary_row(r) for r in runs]
  if not rows:
    return {"rows": [], "table": ""}
  training.write_json(os.path.join(workdir, "summary.json"), rows)
  training.write_csv(os.path.join(workdir, "summary.csv"), rows)
  table = training.markdown_table([_fmt_row(r) for r in rows], SUMMARY_COLUMNS)
  anchors = "\n".join(f"- {k}: {100 * v:.1f}%" for k, v in PUBLISHED.items())
  text = (
      "Test accuracy at the best validation epoch.\n\n" + table
      + "\n\nPublished permuted-MNIST anchors (full MNIST, long training, large models; not"
      " comparable to CPU-budget runs):\n" + anchors + "\n"
  )
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(text)
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
