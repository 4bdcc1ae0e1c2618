r"""Word-level language modelling (seed 002's third experiment): RNN vs uRNN, GRU vs uGRU.

The logic behind ``python -m train.language_model``. The model is

    tokens -> nn.Embed(vocab, embed) -> Recurrent(cell) -> nn.Dense(vocab)

with any cell of the registry :data:`urnn_jax.models.MODELS` (``rnn``,
``urnn`` with ``--constraint``, ``urnn_param_expm``, ``gru``, ``ugru``,
``lstm``, ...), trained on next-word prediction with the LM literature's
batching (:class:`urnn_jax.data.text.LMBatches`): the training stream cut
into ``batch_size`` contiguous streams, windows of ``bptt`` steps, the hidden
state carried from window to window (its gradient stopped between them) and
reset to zeros at the start of every epoch.

**Perplexity** is ``exp`` of the mean per-token negative log-likelihood over a
whole split, with the state carried through it
(:func:`urnn_jax.data.text.eval_windows`: ``eval_batch_size`` contiguous
streams, each from a zero state; every token but the first is predicted once).
Each epoch reports the training perplexity (exp of the mean training loss
over the epoch's windows, with the parameters changing as it goes) and the
validation perplexity; the best epoch is the one with the lowest validation
perplexity (early stopping with ``patience``), and the **test perplexity** is
that of the best epoch's parameters. Seed 002's tables give two numbers per
cell and do not say which; here every table gives *validation / test*.

One *run* is a (corpus, model, activation, bptt, hidden, seed) and writes,
under ``workdir/<run_name>/``: ``config.json``; ``checkpoints/`` (the
:class:`LMState`, carried hidden state included, so a resumed run continues
exactly); ``best/`` (the best-validation parameters); ``history.json``,
``history.csv``; ``results.json``; ``curves.png`` (train / valid perplexity
per epoch, test at the best epoch); ``samples.txt`` (sentences sampled from
the trained model); and for the eq. (1) models ``gradient_norms.{json,png}``:
``||dL/dh(k)||`` for every step k of a BPTT window, at initialisation and
after training (seed 002: "successfully bounded gradient norms"), through
:mod:`urnn_jax.diagnostics`. :func:`write_summary` gathers every run of a
workdir into ``summary.{json,csv,md}``.

Determinism: the parameters come from ``fold_in(key(seed), 0)``, the samples
from ``fold_in(key(seed), 2)``; the batches are the corpus in order, so a run
is a function of its configuration, and a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from urnn_jax import config as config_lib
from urnn_jax import diagnostics
from urnn_jax import models as registry
from urnn_jax import orthogonal
from urnn_jax import parallel as mesh_lib
from urnn_jax import training
from urnn_jax.data import text
from urnn_jax.gated import UnitaryGRUCell
from urnn_jax.recurrent import Recurrent
from urnn_jax.rnn import ACTIVATIONS

PyTree = Any

CORPORA = ("fortunes", "text", "ptb")
# The models whose constraint is the --constraint flag (the others' is fixed by their entry).
CONSTRAINT_MODELS = ("urnn", "ugru")
# Fields that may differ when a run is resumed.
RESUMABLE = ("epochs", "patience", "data_dir", "num_samples", "sample_length", "temperature", "diagnostics",
             "diagnostics_batch", "devices")

# Published anchors (test perplexity on PTB), for scale only.
PUBLISHED = {
    "LSTM small, 2x200, 13 epochs (Zaremba et al. 2014), PTB": 114.5,
    "LSTM medium, 2x650, dropout (Zaremba et al. 2014), PTB": 82.7,
    "5-gram Kneser-Ney (Mikolov et al. 2011), PTB": 141.2,
}


_f = config_lib.field


@dataclasses.dataclass(frozen=True)
class Config:
  """One run (the binary's flags are these fields)."""

  corpus: str = _f("fortunes", "fortunes: Debian's fortunes package (a PTB-style corpus built from"
                   " /usr/share/games/fortunes, or --data_dir); text: plain text files or directories in"
                   " --data_dir (comma-separated); ptb: Mikolov's ptb.{train,valid,test}.txt in --data_dir.",
                   CORPORA)
  data_dir: str | None = _f(None, "The corpus files (see --corpus).")
  vocab_size: int = _f(text.PTB_VOCAB_SIZE, "Vocabulary size, <unk> and <eos> included (ptb: the expected"
                       " size, or fewer words with the rest <unk>).")
  oov: str = _f("error", "ptb: valid/test words missing from the training vocabulary are an error, or"
                " <unk>.", ("error", "unk"))
  model: str = _f("urnn", "Model, a name of urnn_jax.models.MODELS.", registry.MODELS)
  activation: str = _f("relu", "Activation of the eq. (1) models (seed 002: relu, abs, leaky_relu); the"
                       " gated models use their own (recorded as tanh).", sorted(ACTIVATIONS))
  constraint: str = _f("projection", f"The orthogonality constraint of {list(CONSTRAINT_MODELS)}.",
                       registry.CONSTRAINTS)
  rnn_init: str = _f("haar", "Initialiser of the free RNN's W.", sorted(registry.RNN_INITS))
  reproject_every: int = _f(0, "Retractions: also project W onto the group every this many steps (0: never).")
  hidden: int = _f(128, "Hidden size n.")
  embed: int = _f(128, "Word embedding size.")
  bptt: int = _f(35, "Steps per BPTT window (seed 002: 35 and 150).")
  batch_size: int = _f(20, "Contiguous training streams.")
  eval_batch_size: int = _f(10, "Contiguous streams of the validation / test evaluation.")
  optimizer: str = _f("adam", "Optimiser.", sorted(training.OPTIMIZERS))
  learning_rate: float = _f(2e-3, "Learning rate.")
  recurrent_learning_rate: float | None = _f(
      None, "Learning rate of the recurrent matrix (W of the eq. (1) models, W_hn of the uGRU, or their"
      " generators); default --learning_rate. LSTM / GRU use --learning_rate throughout.")
  grad_clip: float = _f(5.0, "Clip gradients to this global norm (0: off).")
  epochs: int = _f(4, "Maximum number of epochs.")
  patience: int = _f(2, "Early stopping: stop after this many epochs without a lower validation perplexity"
                     " (0: off).")
  max_steps_per_epoch: int = _f(0, "Cap on the windows per epoch (0: a full pass).")
  checkpoint_every: int = _f(0, "Checkpoint every this many steps (0: at every epoch end).")
  seed: int = _f(0, "Seed of the initialisation and the samples.")
  num_samples: int = _f(3, "Sentences sampled from the trained model.")
  sample_length: int = _f(40, "Most words per sampled sentence.")
  temperature: float = _f(1.0, "Sampling temperature.")
  diagnostics: bool = _f(True, "Gradient norms across the BPTT window for the eq. (1) models.")
  diagnostics_batch: int = _f(8, "Windows averaged in the gradient norms.")
  devices: int = _f(0, "Devices the training streams are sharded over (data parallelism: each device holds"
                    " its streams and their carried state; the parameters are replicated), counted over all"
                    " processes; 0: the most devices that divide --batch_size (several processes: the same"
                    " number from each).")

  def mesh(self):
    """The data-parallel mesh (:func:`urnn_jax.parallel.local_mesh`): ``devices`` devices over all
    processes (0: the most that divide ``batch_size``)."""
    return mesh_lib.local_mesh(self.batch_size, self.devices, axis=mesh_lib.DATA, name="batch_size")

  def normalized(self) -> "Config":
    """The same run with the fields its model ignores at their defaults (so equal runs compare equal)."""
    spec = registry.get(self.model)
    out = self
    if not spec.eq1:
      out = dataclasses.replace(out, activation="tanh", rnn_init="haar")
    if self.model not in CONSTRAINT_MODELS:
      out = dataclasses.replace(out, constraint="projection")
    return out

  def run_name(self) -> str:
    c = self.normalized()
    parts = [c.corpus, c.model]
    if c.model in CONSTRAINT_MODELS:
      parts.append(c.constraint)
    if registry.get(c.model).eq1:
      parts.append(c.activation)
    parts += [f"bptt{c.bptt}", f"h{c.hidden}", f"s{c.seed}"]
    return "_".join(parts)

  def model_options(self) -> registry.ModelOptions:
    return registry.ModelOptions(hidden=self.hidden, activation=self.activation, rnn_init=self.rnn_init,
                                 constraint=self.constraint, reproject_every=self.reproject_every)

  def validate(self) -> None:
    if self.corpus not in CORPORA:
      raise ValueError(f"corpus={self.corpus!r}; expected one of {list(CORPORA)}.")
    if self.corpus == "text" and not self.data_dir:
      raise ValueError("corpus='text' needs --data_dir: the plain text files or directories, comma-separated.")
    if self.corpus == "ptb" and not self.data_dir:
      raise ValueError("corpus='ptb' needs --data_dir: the directory of ptb.{train,valid,test}.txt.")
    if self.oov not in ("error", "unk"):
      raise ValueError(f"oov={self.oov!r}; expected 'error' or 'unk'.")
    registry.get(self.model)
    config_lib.check_ints(self, positive=("vocab_size", "hidden", "embed", "bptt", "batch_size",
                                          "eval_batch_size", "epochs", "sample_length", "diagnostics_batch"),
                          non_negative=("patience", "max_steps_per_epoch", "checkpoint_every", "num_samples",
                                        "devices"))
    self.mesh()  # devices: exist and divide the batch
    if self.vocab_size < 3:
      raise ValueError(f"vocab_size must be >= 3 (<unk>, <eos> and a word), got {self.vocab_size}.")
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}.")
    if not (self.temperature > 0 and math.isfinite(self.temperature)):
      raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}.")
    self.model_options().validate()
    make_optimizer(self)


# ----------------------------------------------------------------------------
# Data.


def corpus_dir(config: Config, workdir: str) -> str:
  """Where a built (fortunes / text) corpus is written: ``workdir/corpus_<corpus>_v<vocab_size>``."""
  return os.path.join(workdir, f"corpus_{config.corpus}_v{config.vocab_size}")


def load_corpus(config: Config, workdir: str, *, log=print) -> text.Corpus:
  """The corpus of ``config``: PTB files read as they are, or a PTB-style corpus built
  (in :func:`corpus_dir`) from the fortunes / plain text files, then read the same way.

  Raises:
    urnn_jax.data.text.CorpusError: a missing file, an empty corpus, a vocabulary mismatch.
  """
  if config.corpus == "ptb":
    return text.load_ptb(config.data_dir, vocab_size=config.vocab_size, oov=config.oov)
  if config.corpus == "fortunes":
    files = text.fortune_files(config.data_dir or text.FORTUNES_DIR)
  else:
    files = text.expand_paths([p for p in config.data_dir.split(",") if p])
  out = corpus_dir(config, workdir)
  error = None
  if training.is_primary():  # several processes: process 0 builds it, the others read it
    try:
      stats = text.build_text_corpus(files, out, vocab_size=config.vocab_size)
    except text.CorpusError as e:
      error = e
    else:
      training.write_json(os.path.join(out, "stats.json"), {"files": files, **stats})
      log(f"corpus: {len(files)} {config.corpus} files -> {out}: "
          + ", ".join(f"{s} {stats[s]['tokens']} tokens (<unk> {100 * stats[s]['unk_rate']:.1f}%)"
                      for s in text.SPLITS))
  if not mesh_lib.primary_ok(error is None):  # every process waits for process 0's build
    raise error or text.CorpusError(f"process 0 could not build the corpus in {out} (see its error).")
  corpus = text.load_ptb(out, vocab_size=config.vocab_size)
  return dataclasses.replace(corpus, source=f"{config.corpus}: {config.data_dir or text.FORTUNES_DIR}")


# ----------------------------------------------------------------------------
# The model.


class LanguageModel(nn.Module):
  """``tokens (B, T) -> logits (B, T, vocab)``, the recurrent state carried in and out.

  ``__call__(tokens, carry) -> (carry, logits)``; ``hidden_states(tokens,
  carry) -> (carry, states)``; ``logits_from_states(states)``;
  ``rnn_params()`` (eq. (1) cells: the recurrent layer's ``RNNParams``, C = I).
  Submodules (the parameter tree): ``embedding``, ``rnn``, ``head``.
  """

  cell: nn.RNNCellBase
  vocab_size: int
  embed: int

  def setup(self):
    self.embedding = nn.Embed(self.vocab_size, self.embed)
    self.rnn = Recurrent(self.cell.clone(parent=None), return_carry=True)
    self.head = nn.Dense(self.vocab_size)

  def __call__(self, tokens, carry):
    carry, hs = self.hidden_states(tokens, carry)
    return carry, self.logits_from_states(hs)

  def hidden_states(self, tokens, carry):
    return self.rnn(self.embed_tokens(tokens), initial_carry=carry)

  def embed_tokens(self, tokens):
    return self.embedding(tokens)

  def logits_from_states(self, hidden_states):
    return self.head(hidden_states)

  def rnn_params(self):
    return self.rnn.rnn_params()


def make_model(config: Config, vocab_size: int) -> LanguageModel:
  return LanguageModel(registry.make_cell(config.model, config.model_options()), vocab_size, config.embed)


def initial_carry(config: Config, batch: int):
  """The zero state of ``batch`` streams (a pytree: the LSTM's is ``(c, h)``)."""
  cell = registry.make_cell(config.model, config.model_options())
  return cell.initialize_carry(jax.random.key(0), (batch, config.embed))


def has_recurrent_matrix(config: Config) -> bool:
  """Whether the model has leaves ``--recurrent_learning_rate`` applies to."""
  cell = registry.make_cell(config.model, config.model_options())
  return registry.get(config.model).eq1 or isinstance(cell, UnitaryGRUCell)


def make_optimizer(config: Config) -> optax.GradientTransformation:
  """Clip (optional), the optimiser, then the model's constraint (:func:`urnn_jax.models.make_tx`)."""
  recurrent_lr = config.recurrent_learning_rate if has_recurrent_matrix(config) else None
  tx = training.make_optimizer(config.optimizer, config.learning_rate, grad_clip=config.grad_clip,
                               recurrent_learning_rate=recurrent_lr)
  return registry.make_tx(config.model, tx, config.model_options())


def init_variables(config: Config, model: LanguageModel) -> tuple[PyTree, dict]:
  """``(params, constants)``, from ``fold_in(key(seed), 0)``."""
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  tokens = jnp.zeros((1, 2), jnp.int32)
  variables = dict(jax.jit(model.init)(key, tokens, initial_carry(config, 1)))
  return variables.pop("params"), variables


class LMState(NamedTuple):
  """The training state: :class:`urnn_jax.training.TrainState`'s fields plus the carried hidden state."""

  step: jax.Array
  params: PyTree
  opt_state: PyTree
  carry: PyTree


def token_nll(model: LanguageModel, variables, tokens, targets, carry):
  """``(carry, nll (B, T))``: per-token negative log-likelihood of ``targets``."""
  carry, logits = model.apply(variables, tokens, carry)
  return carry, optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def make_train_step(config: Config, model: LanguageModel, constants: dict, tx, steps_per_epoch: int):
  """``step(state: LMState, (x, y)) -> (state, metrics)`` (pure, jittable).

  The carry from the previous window enters with its gradient stopped; at the
  first window of an epoch (``state.step % steps_per_epoch == 0``) it is reset
  to zeros. The optimiser step is :func:`urnn_jax.training.make_train_step`'s.
  """
  zeros = initial_carry(config, config.batch_size)

  def loss_fn(params, batch):
    x, y, carry = batch
    carry, nll = token_nll(model, {"params": params, **constants}, x, y, lax.stop_gradient(carry))
    loss = jnp.mean(nll)
    return loss, {"loss": loss, "carry": carry}

  base = training.make_train_step(loss_fn, tx)

  def step(state: LMState, batch):
    x, y = batch
    fresh = state.step % steps_per_epoch == 0
    carry = jax.tree.map(lambda z, c: jnp.where(fresh, z.astype(c.dtype), c), zeros, state.carry)
    ts, metrics = base(training.TrainState(state.step, state.params, state.opt_state), (x, y, carry))
    metrics = dict(metrics)
    new_carry = metrics.pop("carry")
    return LMState(ts.step, ts.params, ts.opt_state, new_carry), metrics

  return step


def make_eval_fn(config: Config, model: LanguageModel, constants: dict):
  """``eval(params, x, y, mask) -> (sum of nll, count)`` over windows ``(W, B, T)``, the state carried."""

  def evaluate(params, x, y, mask):
    variables = {"params": params, **constants}

    def body(carry, window):
      xw, yw, mw = window
      carry, nll = token_nll(model, variables, xw, yw, carry)
      return carry, jnp.sum(jnp.where(mw, nll, 0.0))

    _, sums = lax.scan(body, initial_carry(config, x.shape[1]), (x, y, mask))
    return jnp.sum(sums), jnp.sum(mask)

  return evaluate


def perplexity(eval_fn, params, windows) -> dict:
  """``{"loss": mean nll, "ppl": exp(loss), "tokens"}`` of a split (:func:`urnn_jax.data.text.eval_windows`)."""
  total, count = jax.device_get(eval_fn(params, *windows))
  loss = float(total) / float(count)
  return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": int(count)}


# ----------------------------------------------------------------------------
# Sampling.


def make_sampler(config: Config, model: LanguageModel, constants: dict, eos_id: int):
  """``sample(params, key) -> (num_samples, sample_length)`` token ids: each row starts
  after ``<eos>`` from a zero state, each word drawn from softmax(logits / temperature)."""
  num = max(config.num_samples, 1)

  def sample(params, key):
    variables = {"params": params, **constants}

    def body(c, k):
      carry, tok = c
      carry, logits = model.apply(variables, tok, carry)
      nxt = jax.random.categorical(k, logits[:, -1] / config.temperature).astype(jnp.int32)
      return (carry, nxt[:, None]), nxt

    start = jnp.full((num, 1), eos_id, jnp.int32)
    _, toks = lax.scan(body, (initial_carry(config, num), start), jax.random.split(key, config.sample_length))
    return toks.T

  return sample


def sentences_from_ids(corpus: text.Corpus, ids: np.ndarray) -> list[str]:
  """Each row's words up to (not including) the first ``<eos>``."""
  out = []
  for row in np.asarray(ids):
    words = []
    for i in row:
      if int(i) == corpus.eos_id:
        break
      words.append(corpus.vocab[int(i)])
    out.append(" ".join(words))
  return out


def sample_sentences(config: Config, model: LanguageModel, constants: dict, params, corpus: text.Corpus) -> list[str]:
  """``config.num_samples`` sentences from ``params`` (deterministic in ``config.seed``)."""
  if config.num_samples == 0:
    return []
  fn = jax.jit(make_sampler(config, model, constants, corpus.eos_id))
  ids = fn(params, jax.random.fold_in(jax.random.key(config.seed), 2))
  return sentences_from_ids(corpus, ids)[: config.num_samples]


# ----------------------------------------------------------------------------
# Diagnostics.


def orthogonality(config: Config, model: LanguageModel, variables) -> float | None:
  """The largest ``||W^T W - I||_F`` of the model's recurrent matrices (eq. (1) W; the uGRU's
  orthogonal ones), or None (LSTM, GRU)."""
  if registry.get(config.model).eq1:
    theta = model.apply(variables, method="rnn_params")
    return float(orthogonal.orthogonality_error(theta.W))
  if isinstance(model.cell, UnitaryGRUCell):
    ks = model.apply(variables, method=lambda m: m.rnn.cell.transition_matrices())
    return max(float(orthogonal.orthogonality_error(k)) for k in ks.values())
  return None


def gradient_norms(config: Config, model: LanguageModel, variables, corpus: text.Corpus) -> dict:
  """``||dL/dh(k)||`` for every step k of a BPTT window (eq. (1) models), from a zero state.

  Two losses, both per window (averaged over ``diagnostics_batch`` windows of
  the validation stream): ``last``, the NLL of the window's last word, so the
  norm at step k is the gradient carried back ``bptt - 1 - k`` steps (the
  vanishing / exploding measure); ``window``, the summed NLL of every word
  (the training loss). Also seed 002's Jacobian bound on the first window
  (:func:`urnn_jax.diagnostics.jacobian_bound_check`).
  """
  theta = model.apply(variables, method="rnn_params")
  batch = min(config.diagnostics_batch, max(len(corpus.valid) // (config.bptt + 1), 1))
  try:
    windows = text.LMBatches(corpus.valid, batch, config.bptt)
  except text.CorpusError:  # a validation split shorter than one window
    return None
  x_ids, y = windows[0]
  x = model.apply(variables, jnp.asarray(x_ids), method="embed_tokens")
  head = lambda hs: model.apply(variables, hs, method="logits_from_states")
  nll = lambda hs: optax.softmax_cross_entropy_with_integer_labels(head(hs), jnp.asarray(y))
  out = {}
  for name, loss in (("last", lambda hs: jnp.sum(nll(hs)[:, -1])), ("window", lambda hs: jnp.sum(nll(hs)))):
    norms = diagnostics.hidden_gradient_norms(theta, x, loss, config.activation)
    out[name] = np.asarray(jnp.mean(norms, axis=0)).tolist()
  bound = diagnostics.jacobian_bound_check(theta, x[0], config.activation)
  out["bound_check"] = {k: bound[k] for k in ("sigma_min_W", "sigma_max_W", "a_min", "b_max", "svd_bound_holds",
                                              "eig_bound_holds", "product_bound_holds")}
  last = np.asarray(out["last"])
  out["last_first_over_last"] = float(last[0] / last[-1]) if last[-1] > 0 else None
  return out


def plot_gradient_norms(path: str, config: Config, norms: dict) -> None:
  plt = training.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
  for ax, loss in zip(axes, ("last", "window")):
    for when, style in (("init", "--"), ("trained", "-")):
      v = np.maximum(np.asarray(norms[when][loss]), 1e-30)
      ax.semilogy(np.arange(len(v)), v, style, label=when)
    ax.set_xlabel("step k of the BPTT window")
    ax.set_title("loss: last word's NLL" if loss == "last" else "loss: the window's NLL")
    ax.legend(fontsize=8)
  axes[0].set_ylabel("mean ||dL/dh(k)||")
  fig.suptitle(f"{config.run_name()}: hidden-state gradients")
  training.save_figure(fig, path)
  plt.close(fig)


def plot_curves(path: str, results: dict) -> None:
  """Train and validation perplexity per epoch (log scale); the test perplexity at the best epoch."""
  plt = training.pyplot()
  h = results["history"]
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  epochs = [e["epoch"] + 1 for e in h]
  cap = 1e5  # an epoch that starts by exploding has an astronomic running train perplexity
  ax.semilogy(epochs, [min(e["train_ppl"], cap) for e in h], "o-", label=f"train (running, capped at {cap:g})")
  ax.semilogy(epochs, [e["val_ppl"] for e in h], "s-", label="validation")
  if results["best_epoch"] is not None and results["test_ppl"] is not None:
    ax.semilogy([results["best_epoch"] + 1], [results["test_ppl"]], "r*", ms=12,
                label=f"test at best: {results['test_ppl']:.1f}")
  ax.set_xlabel("epoch")
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.set_ylabel("perplexity")
  ax.legend(fontsize=8)
  ax.set_title(results["run"], fontsize=9)
  training.save_figure(fig, path)
  plt.close(fig)


# ----------------------------------------------------------------------------
# One run.


def same_shape(*splits):
  """Evaluation windows padded (masked) to the same number of windows: one compiled evaluation for all."""
  w = max(s[0].shape[0] for s in splits)
  pad = lambda a, k: np.concatenate([a, np.zeros((k,) + a.shape[1:], a.dtype)])
  return [tuple(pad(a, w - a.shape[0]) for a in s) for s in splits]


def steps_per_epoch(config: Config, batches: text.LMBatches) -> int:
  return min(len(batches), config.max_steps_per_epoch) if config.max_steps_per_epoch else len(batches)


def train_and_evaluate(config: Config, workdir: str, corpus: text.Corpus, *, log=print, progress_stream=None,
                       stop_after: int | None = None) -> dict:
  """Trains (or resumes) one run; returns its results (also ``results.json``).

  ``stop_after`` (tests): stop after a checkpoint at that step, as a kill
  would; the results are then marked ``interrupted`` and nothing but the
  checkpoints and the history is written.
  """
  config = config.normalized()
  config.validate()
  name = config.run_name()
  run_dir = os.path.join(workdir, name)
  batches = text.LMBatches(corpus.train, config.batch_size, config.bptt)
  spe = steps_per_epoch(config, batches)
  training.prepare_run_dir(run_dir, config, resumable=RESUMABLE,
                           derived={"corpus_sha256_16": corpus.digest(), "steps_per_epoch": spe})
  model = make_model(config, corpus.vocab_size)
  tx = make_optimizer(config)
  params0, constants = init_variables(config, model)
  state0 = LMState(jnp.zeros((), jnp.int32), params0, tx.init(params0), initial_carry(config, config.batch_size))
  params_init = jax.device_get(params0)  # a host copy: the training step donates state0's buffers
  mesh = config.mesh()
  log(f"[{name}] mesh: {mesh_lib.describe(mesh)}")
  sharded = mesh.size > 1  # data parallel: the streams (and their carried state) over the data axis
  if sharded:
    state_sharding = LMState(*(mesh_lib.replicated_sharding(mesh),) * 3, mesh_lib.batch_sharding(mesh))
    state0 = mesh_lib.place(state0, state_sharding)
  # Several processes: each feeds only its streams (rows) of every window.
  rows = mesh_lib.local_batch_slice(mesh, config.batch_size) if jax.process_count() > 1 else None

  def batch_fn(s: int):
    x, y = batches[s % spe]
    if rows is not None:
      return mesh_lib.shard_local_batch(mesh, (x[rows], y[rows]))
    return mesh_lib.shard_batch(mesh, (x, y)) if sharded else (x, y)

  valid, test = same_shape(text.eval_windows(corpus.valid, config.eval_batch_size, config.bptt),
                           text.eval_windows(corpus.test, config.eval_batch_size, config.bptt))
  fns: dict = {}

  def compile_steps() -> float:
    t0 = time.perf_counter()
    step_fn = make_train_step(config, model, constants, tx, spe)
    if sharded:  # the state's and the windows' shardings fixed in and out (the carry stays on its devices)
      step = mesh_lib.sharded_step(step_fn, mesh, state_sharding, mesh_lib.batch_sharding(mesh))
    else:
      step = jax.jit(step_fn, donate_argnums=0)
    fns["train"] = step.lower(state0, batch_fn(0)).compile()
    fns["eval"] = jax.jit(make_eval_fn(config, model, constants))
    fns["eval"](params_init, *valid)  # compiles it (for the evaluation shapes)
    return time.perf_counter() - t0

  def eval_fn():
    if "eval" not in fns:
      fns["eval"] = jax.jit(make_eval_fn(config, model, constants))
    return fns["eval"]

  def evaluate_state(state) -> dict:
    v = perplexity(eval_fn(), state.params, valid)
    return {"epoch": int(state.step) // spe - 1, "val_loss": v["loss"], "val_ppl": v["ppl"],
            "val_log_likelihood": -v["loss"],
            "orthogonality_error": orthogonality(config, model, {"params": state.params, **constants})}

  def report(state, step, entry):
    if entry is None:
      return None
    best = entry.get("best_so_far") == entry["epoch"]
    train_ppl = math.exp(min(entry["train_loss"], 700.0))
    log(f"[{name}] epoch {entry['epoch']}: train ppl {train_ppl:.6g} | valid ppl {entry['val_ppl']:.2f}"
        f"{' (best)' if best else ''} | {entry['train_seconds']:.1f}s train, {entry['eval_seconds']:.1f}s eval")
    return f"ep {entry['epoch']} valid ppl {entry['val_ppl']:.2f} best@{entry.get('best_so_far')}"

  out = training.fit(
      state0, training.stepwise(lambda s, b: fns["train"](s, b), batch_fn),
      total_steps=config.epochs * spe, eval_every=spe, evaluate=evaluate_state, train_metrics="mean",
      checkpoint_dir=os.path.join(run_dir, "checkpoints"), checkpoint_every=config.checkpoint_every,
      early_stopping=training.EarlyStopping(config.patience), monitor="val_log_likelihood",
      best_dir=os.path.join(run_dir, "best"), history_path=os.path.join(run_dir, "history.json"),
      history_extra={"run": name, "steps_per_epoch": spe}, compile=compile_steps, postfix=report,
      desc=name, log=log, progress_stream=progress_stream, stop_after=stop_after)
  history, es = out.history, out.early_stopping
  for h in history:  # exp of the epoch's mean training loss
    h["train_ppl"] = math.exp(min(h["train_loss"], 700.0)) if "train_loss" in h else None
  diverged = None if out.diverged is None else {**out.diverged, "epoch": (out.diverged["step"] - 1) // spe}
  best = history[es.best_epoch] if es.best_epoch is not None else {}
  results = {
      "run": name,
      "config": dataclasses.asdict(config),
      "model_description": registry.get(config.model).description,
      "corpus": {"source": corpus.source, "sha256_16": corpus.digest(), **corpus.sizes(),
                 "unk_rate_train": corpus.unk_rate("train")},
      "num_params": registry.count_params(out.state.params),
      "steps_per_epoch": spe,
      "tokens_per_step": batches.tokens_per_window,
      "epochs_run": len(history),
      "steps": int(out.state.step),
      "best_epoch": es.best_epoch,
      "best_step": best.get("step"),
      "val_ppl": best.get("val_ppl"),
      "val_loss": best.get("val_loss"),
      "test_ppl": None,
      "test_loss": None,
      "test_tokens": None,
      "stopped_early": es.should_stop,
      "diverged": diverged,
      "compile_seconds": out.meta["compile_seconds"],
      "train_seconds": out.meta["train_seconds"],
      "mean_step_seconds": (sum(h["train_seconds"] for h in history) / max(sum(h["train_steps"] for h in history), 1)
                            if history else None),
      "history": history,
  }
  if out.interrupted:
    return {**results, "interrupted": True}
  if out.best_params is not None:
    t = perplexity(eval_fn(), out.best_params, test)
    results.update(test_ppl=t["ppl"], test_loss=t["loss"], test_tokens=t["tokens"])
    variables = {"params": out.best_params, **constants}
    results["orthogonality_error_best"] = orthogonality(config, model, variables)
    results["samples"] = sample_sentences(config, model, constants, out.best_params, corpus)
    training.atomic_write(os.path.join(run_dir, "samples.txt"),
                          "".join(f"{s}\n" for s in results["samples"]))
    norms = None
    if registry.get(config.model).eq1 and config.diagnostics:
      norms = {"init": gradient_norms(config, model, {"params": params_init, **constants}, corpus),
               "trained": gradient_norms(config, model, variables, corpus)}
    if norms is not None and norms["init"] is not None:
      training.write_json(os.path.join(run_dir, "gradient_norms.json"), norms)
      plot_gradient_norms(os.path.join(run_dir, "gradient_norms.png"), config, norms)
      results["gradient_norms"] = {w: {"last_first_over_last": norms[w]["last_first_over_last"],
                                       "last_min": min(norms[w]["last"]), "last_max": max(norms[w]["last"]),
                                       **norms[w]["bound_check"]} for w in norms}
  training.write_json(os.path.join(run_dir, "results.json"), results)
  if history:
    training.write_csv(os.path.join(run_dir, "history.csv"), history)
    plot_curves(os.path.join(run_dir, "curves.png"), results)
  return results


# ----------------------------------------------------------------------------
# Summary.

SUMMARY_COLUMNS = ("model", "activation", "constraint", "bptt", "hidden", "epochs_run", "best_epoch", "val_ppl",
                   "test_ppl", "sec_per_epoch", "ms_per_step", "num_params", "diverged")


def summary_row(r: dict) -> dict:
  c = r["config"]
  spec_eq1 = registry.get(c["model"]).eq1 if c["model"] in registry.MODELS else False
  h = r["history"]
  return {
      "run": r["run"], "model": c["model"], "activation": c["activation"] if spec_eq1 else "-",
      "constraint": c["constraint"] if c["model"] in CONSTRAINT_MODELS else "-",
      **{k: c[k] for k in ("bptt", "hidden", "embed", "batch_size", "learning_rate", "corpus")},
      **{k: r[k] for k in ("epochs_run", "best_epoch", "val_ppl", "test_ppl", "num_params")},
      "sec_per_epoch": float(np.mean([e["train_seconds"] for e in h])) if h else None,
      "ms_per_step": 1000 * r["mean_step_seconds"] if r.get("mean_step_seconds") else None,
      "diverged": r["diverged"] is not None,
  }


def write_summary(workdir: str) -> dict:
  """``summary.{json,csv,md}`` over every run under ``workdir``: valid and test perplexity per run."""
  runs = training.collect_json(workdir)
  rows = [summary_row(r) for r in runs]
  if not rows:
    return {"rows": [], "table": "", "text": ""}
  table = training.markdown_table(rows, SUMMARY_COLUMNS)
  anchors = "\n".join(f"- {k}: {v}" for k, v in PUBLISHED.items())
  text_ = ("Perplexity: exp of the mean per-token NLL over the whole split, the state carried through it;"
           " val_ppl at the best validation epoch, test_ppl of that epoch's parameters.\n\n" + table
           + "\n\nPublished test perplexities on Penn Treebank (other corpus, larger models, longer training;"
           " for scale only):\n" + anchors + "\n")
  columns = list(SUMMARY_COLUMNS) + [k for k in rows[0] if k not in SUMMARY_COLUMNS]
  training.write_tables(workdir, "summary", rows, columns=columns, text=text_)
  return {"rows": rows, "table": table, "text": text_}
