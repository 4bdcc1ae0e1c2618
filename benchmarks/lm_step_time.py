r"""Time per batch of the language model: ``python -m benchmarks.lm_step_time``.

Seed 002: the uRNN is "1 - 10% slower per batch despite the costly matrix
exponential"; the target here is within 10%, the constraint included. Every
candidate is timed in this one process, side by side, in float32:

* **LM batch**: one training step of ``python -m train.language_model``
  (:func:`urnn_jax.experiments.language_model.make_train_step`: embedding,
  recurrent layer with the carried state, softmax over the vocabulary,
  ``value_and_grad``, clipping, Adam and the model's constraint), on random
  token ids of shape ``(batch_size, bptt)``;
* **recurrent layer only**: the same step without the softmax read-out
  (embedding -> recurrent layer -> mean square of the states), which is where
  the models differ (the ``vocab x hidden`` softmax dominates the LM batch).

Candidates: ``rnn`` (free W, plain Adam), ``urnn`` (W orthogonal by the SVD
projection after each step: the registry's default constraint),
``urnn_expm`` (seed 002's W <- exp(A) W retraction), ``urnn_param_expm``
(W = base expm(skew(A)) in the cell), ``gru`` (flax's ``GRUCell``, generic
scan), ``ugru`` (:class:`urnn_jax.UnitaryGRUCell`, W_hn projected after each
step), ``ugru_free`` (the same cell and fast path, no constraint: the
constraint's own cost) and ``lstm``. Each is compiled ahead of time (compile
time reported apart), warmed up, then the candidates are timed round-robin
(``benchmarks.common.time_interleaved``, every call ended by
``jax.block_until_ready``) and the medians compared as ratios.

Writes ``<out_dir>/lm_step_time.json`` and ``lm_step_time.md``. ``--quick``
(hidden 64, vocabulary 2000, fewer rounds) takes about a minute.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks import common  # noqa: E402
from urnn_jax import models as registry  # noqa: E402
from urnn_jax import training  # noqa: E402
from urnn_jax.experiments import language_model as lm  # noqa: E402
from urnn_jax.recurrent import Recurrent  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Hidden 64, vocabulary 2000, 5 rounds (about a minute).")
flags.DEFINE_string("out_dir", "runs/benchmarks", "Directory for lm_step_time.{json,md}.")
flags.DEFINE_list("models", None, f"Candidates (default all): some of {','.join(('rnn', 'urnn', 'urnn_expm', 'urnn_param_expm', 'gru', 'ugru', 'ugru_free', 'lstm'))}.")
flags.DEFINE_integer("hidden", None, "Hidden size (default 128; --quick 64).")
flags.DEFINE_integer("embed", None, "Embedding size (default: --hidden).")
flags.DEFINE_integer("vocab_size", None, "Vocabulary (default 10000; --quick 2000).")
flags.DEFINE_integer("bptt", 35, "Steps per window.")
flags.DEFINE_integer("batch_size", 20, "Streams per batch.")
flags.DEFINE_string("activation", "relu", "Activation of the eq. (1) models.")
flags.DEFINE_integer("repeats", None, "Timed rounds per candidate (interleaved; default 15, --quick 5).")

CANDIDATES = ("rnn", "urnn", "urnn_expm", "urnn_param_expm", "gru", "ugru", "ugru_free", "lstm")
# (numerator, denominator, what the ratio measures, the target on it or None)
RATIOS = (
    ("urnn", "rnn", "uRNN (SVD projection) / RNN", 1.10),
    ("urnn_expm", "rnn", "uRNN (exp retraction, seed 002) / RNN", 1.10),
    ("urnn_param_expm", "rnn", "uRNN (W = base expm(skew A)) / RNN", None),
    ("ugru", "gru", "uGRU (projection) / GRU (flax GRUCell)", 1.10),
    ("ugru", "ugru_free", "uGRU / the same cell unconstrained (the constraint's cost)", None),
    ("ugru_free", "gru", "UnitaryGRUCell fast path unconstrained / flax GRUCell", None),
    ("lstm", "gru", "LSTM / GRU", None),
)


def _config(name: str, hidden: int, embed: int, bptt: int, batch: int, activation: str) -> lm.Config:
  model = {"ugru_free": "ugru"}.get(name, name)
  return lm.Config(model=model, hidden=hidden, embed=embed, bptt=bptt, batch_size=batch, activation=activation)


def _optimizer(name: str, config: lm.Config) -> optax.GradientTransformation:
  if name == "ugru_free":  # the binary's optimiser without the model's constraint
    return training.make_optimizer(config.optimizer, config.learning_rate, grad_clip=config.grad_clip)
  return lm.make_optimizer(config)


class _RecurrentOnly(nn.Module):
  """Embedding -> recurrent layer (state carried in and out), no read-out."""

  cell: nn.RNNCellBase
  vocab_size: int
  embed: int

  @nn.compact
  def __call__(self, tokens, carry):
    x = nn.Embed(self.vocab_size, self.embed)(tokens)
    return Recurrent(self.cell, return_carry=True)(x, initial_carry=carry)


def _lm_step(name, config, vocab, tokens, targets):
  model = lm.make_model(config, vocab)
  params, constants = lm.init_variables(config, model)
  tx = _optimizer(name, config)
  step = lm.make_train_step(config, model, constants, tx, steps_per_epoch=1 << 30)
  state = lm.LMState(jnp.ones((), jnp.int32), params, tx.init(params), lm.initial_carry(config, config.batch_size))
  return step, (state, (tokens, targets))


def _recurrent_step(name, config, vocab, tokens, targets):
  del targets
  cell = registry.make_cell(config.model, config.model_options())
  model = _RecurrentOnly(cell, vocab, config.embed)
  carry = lm.initial_carry(config, config.batch_size)
  variables = dict(model.init(jax.random.key(0), tokens, carry))
  params = variables.pop("params")
  tx = _optimizer(name, config)

  def step(params, opt_state, carry):
    def loss(p):
      c, hs = model.apply({"params": p, **variables}, tokens, jax.lax.stop_gradient(carry))
      return jnp.mean(hs ** 2), c

    (value, c), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, c, value

  return step, (params, tx.init(params), carry)


def time_candidates(kind: str, names, *, hidden, embed, vocab, bptt, batch, activation, repeats,
                    log=logging.info) -> list[dict]:
  """One row per candidate: median seconds per batch of ``kind`` ("lm" or "recurrent")."""
  k1, k2 = jax.random.split(jax.random.key(0))
  tokens = jax.random.randint(k1, (batch, bptt), 0, vocab, jnp.int32)
  targets = jax.random.randint(k2, (batch, bptt), 0, vocab, jnp.int32)
  build = _lm_step if kind == "lm" else _recurrent_step
  calls, compile_s = {}, {}
  for name in names:
    config = _config(name, hidden, embed, bptt, batch, activation)
    fn, args = build(name, config, vocab, tokens, targets)
    compiled, compile_s[name] = common.compile_jax(fn, *args)
    calls[name] = (lambda compiled=compiled, args=args: compiled(*args))
    log(f"{kind} {name}: compiled in {compile_s[name]:.2f}s")
  times = common.time_interleaved(calls, rounds=repeats, warmup=2)
  return [{"kind": kind, "model": name, "ms_per_batch": 1e3 * common.median(times[name]),
           "min_ms": 1e3 * min(times[name]), "compile_s": compile_s[name], "times_s": times[name]}
          for name in names]


def ratios(rows: list[dict]) -> list[dict]:
  out = []
  for kind in ("lm", "recurrent"):
    t = {r["model"]: r["ms_per_batch"] for r in rows if r["kind"] == kind}
    for num, den, what, target in RATIOS:
      if num in t and den in t:
        out.append({"kind": kind, "ratio": f"{num} / {den}", "what": what, "value": t[num] / t[den],
                    "slower_%": 100 * (t[num] / t[den] - 1), "target": target,
                    "met": None if target is None else t[num] / t[den] <= target})
  return out


def markdown(payload: dict) -> str:
  s, env = payload["settings"], payload["environment"]
  head = (f"{env.get('time', '')}, jax {env.get('jax')}, backend {env.get('backend')}, {env.get('cpu_count')} CPUs,"
          f" load average {env.get('load_average')}{' (--quick)' if s['quick'] else ''}. Medians of"
          f" {s['repeats']} interleaved rounds after warm-up; hidden {s['hidden']}, embed {s['embed']},"
          f" vocabulary {s['vocab_size']}, bptt {s['bptt']}, batch {s['batch_size']}, {s['activation']}.")
  return "\n".join([
      "# LM time per batch", "", head, "",
      "## Time per batch (ms)", "",
      common.markdown_table(payload["rows"], ["kind", "model", "ms_per_batch", "min_ms", "compile_s"],
                            {"ms_per_batch": "median (ms)", "min_ms": "min (ms)", "compile_s": "compile (s)"}),
      "## Ratios", "",
      common.markdown_table(payload["ratios"], ["kind", "ratio", "what", "value", "slower_%", "target", "met"],
                            {"slower_%": "slower (%)", "target": "target (<=)"}),
  ])


def run(*, quick: bool, names, hidden, embed, vocab, bptt, batch, activation, repeats, log=logging.info) -> dict:
  t0 = time.perf_counter()
  settings = {"quick": quick, "models": list(names), "hidden": hidden, "embed": embed, "vocab_size": vocab,
              "bptt": bptt, "batch_size": batch, "activation": activation, "repeats": repeats,
              "optimizer": "adam", "grad_clip": lm.Config().grad_clip, "dtype": "float32",
              "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS")}
  rows = []
  for kind in ("lm", "recurrent"):
    rows += time_candidates(kind, names, hidden=hidden, embed=embed, vocab=vocab, bptt=bptt, batch=batch,
                            activation=activation, repeats=repeats, log=log)
  rs = ratios(rows)
  targets = [{"target": f"{r['ratio']} per LM batch <= {r['target']:.2f}", "value": r["value"], "met": r["met"]}
             for r in rs if r["target"] is not None and r["kind"] == "lm"]
  return {"benchmark": "lm_step_time", "environment": common.environment(), "settings": settings, "rows": rows,
          "ratios": rs, "targets": targets, "wall_s": time.perf_counter() - t0}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  names = FLAGS.models or list(CANDIDATES)
  unknown = [m for m in names if m not in CANDIDATES]
  if unknown:
    raise app.UsageError(f"--models: unknown {unknown}; expected some of {list(CANDIDATES)}.")
  hidden = FLAGS.hidden or (64 if FLAGS.quick else 128)
  vocab = FLAGS.vocab_size or (2000 if FLAGS.quick else 10000)
  repeats = FLAGS.repeats or (5 if FLAGS.quick else 15)
  for flag, v in (("hidden", hidden), ("vocab_size", vocab), ("bptt", FLAGS.bptt), ("batch_size", FLAGS.batch_size),
                  ("repeats", repeats), ("embed", FLAGS.embed or hidden)):
    if v < 1:
      raise app.UsageError(f"--{flag} must be positive, got {v}.")
  payload = run(quick=FLAGS.quick, names=names, hidden=hidden, embed=FLAGS.embed or hidden, vocab=vocab,
                bptt=FLAGS.bptt, batch=FLAGS.batch_size, activation=FLAGS.activation, repeats=repeats,
                log=lambda m: print(m, flush=True))
  md = markdown(payload)
  print(md)
  common.print_targets(payload)
  common.finish(FLAGS.out_dir, "lm_step_time", payload, md, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
  app.run(main)
