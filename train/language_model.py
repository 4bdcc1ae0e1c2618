r"""Word-level language modelling (seed 002): RNN vs uRNN, GRU vs uGRU, LSTM.

Trains one run per (``--model``, ``--activation``, ``--bptt``) combination
(each flag comma-separated; any name of ``urnn_jax.models.MODELS``) on next-word
prediction with the hidden state carried across BPTT windows, keeps the
best-validation checkpoint, and reports the validation and test perplexity
(exp of the mean per-token NLL over the whole split, the state carried
through it) of the best epoch. Each run writes ``results.json``,
``history.csv``, ``curves.png``, ``samples.txt``, ``gradient_norms.{json,png}``
(eq. (1) models) and orbax checkpoints under ``--workdir/<run>/``; every
invocation then refreshes ``--workdir/summary.{md,csv,json}``.

Resumable: rerun the same command and each run continues from its last
checkpoint (a finished run is only re-evaluated). Deterministic for a given
``--seed``.

Corpus (nothing is downloaded): ``--corpus=fortunes`` (default) builds a
PTB-style corpus from Debian's ``fortunes`` package (``apt-get install
fortunes``; real English text, **not** Penn Treebank) in
``--workdir/corpus_fortunes_v<vocab_size>/``; ``--corpus=text
--data_dir=FILES_OR_DIRS`` does the same from any plain text;
``--corpus=ptb --data_dir=DIR`` reads Mikolov's ``ptb.{train,valid,test}.txt``.

Seed 002's first table (RNN vs uRNN, three activations, BPTT 35) on the
fortunes corpus, CPU-sized (one epoch each, about 11 minutes on 2 cores)::

    python -m train.language_model --model=rnn,urnn --activation=relu,abs,leaky_relu \
        --hidden=128 --embed=128 --epochs=1

and its second (GRU vs uGRU at BPTT 35 and 150; ``--constraint=expm`` for seed
002's W <- exp(A) W update)::

    python -m train.language_model --model=gru,ugru --bptt=35,150 --hidden=128 --embed=128 --epochs=1

The measured results: ``docs/language_model.md``.

Several processes (hosts): start the same command in each with ``--num_processes``,
``--process_id`` and ``--coordinator_address`` (README, "Scaling out"); process 0 writes the files.
"""

from __future__ import annotations

from absl import app
from absl import flags

from urnn_jax import config as config_lib
from urnn_jax import models as registry
from urnn_jax import training
from urnn_jax.data import text
from urnn_jax.experiments import language_model as lm

SWEEP = ("model", "activation", "bptt")


def define_flags() -> None:
  """Defines this binary's flags, one per field of ``lm.Config`` (called by
  ``__main__`` only, so the binaries can be imported together)."""
  config_lib.define_flags(lm.Config, sweep=SWEEP)
  config_lib.define_distributed_flags()  # --num_processes, --process_id, --coordinator_address, ...
  flags.DEFINE_string("workdir", "runs/language_model", "Output, corpus and checkpoint directory.")


FLAGS = flags.FLAGS


def unique_runs(configs) -> list:
  """The configs with the fields each model ignores normalised, duplicates dropped (in order)."""
  seen, out = set(), []
  for c in configs:
    c = c.normalized()
    if c.run_name() not in seen:
      seen.add(c.run_name())
      out.append(c)
  return out


def main(argv):
  config_lib.begin(argv)  # several processes: the distributed runtime first
  say = config_lib.printer()  # process 0 alone prints; the writers are process 0's too
  try:
    registry.check_names(FLAGS.model, field="model")
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  configs = unique_runs(config_lib.binary_configs(lm.Config, FLAGS, sweep=SWEEP))
  try:
    corpus = lm.load_corpus(configs[0], FLAGS.workdir, log=say)
  except text.CorpusError as e:
    raise SystemExit(f"error: {e}") from None
  say(f"corpus {corpus.source}: {corpus.sizes()}, sha256 {corpus.digest()}")
  try:
    for c in configs:
      text.LMBatches(corpus.train, c.batch_size, c.bptt)
  except text.CorpusError as e:
    raise app.UsageError(str(e)) from None
  for config in configs:
    try:
      r = lm.train_and_evaluate(config, FLAGS.workdir, corpus, log=say)
    except training.RunDirError as e:
      raise app.UsageError(str(e)) from None
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
    say(f"{r['run']}: valid ppl {fmt(r['val_ppl'])}, test ppl {fmt(r['test_ppl'])} at best epoch"
        f" {r['best_epoch']}, {r['epochs_run']} epochs"
        + (", diverged" if r["diverged"] else "") + (", stopped early" if r["stopped_early"] else ""))
    for s in r.get("samples", []):
      say(f"  sample: {s}")
  if training.is_primary():  # reads every run's results (process 0 wrote them)
    summary = lm.write_summary(FLAGS.workdir)
    say("\n" + summary["text"])
    say(f"wrote {FLAGS.workdir}/summary.md")


if __name__ == "__main__":
  define_flags()
  app.run(main)
