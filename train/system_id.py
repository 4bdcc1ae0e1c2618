r"""System identification (seed 000 §5, Figs 2 and 3): RNN, URNN, ContRNN, LSTM.

A contractive ReLU RNN with 4 states generates noisy data; RNNs, URNNs
(W kept orthogonal after every Adam step), contractive RNNs and LSTMs with
2..14 states are trained on it, every realization of a (model, hidden size)
configuration together under ``jax.vmap``. Writes to ``--workdir``:
``results/<model>_h<n>.json`` (every realization's test R^2),
``results.csv``, ``summary.{json,csv,md}`` (median and IQR of R^2 per model
x hidden size), ``data.json`` (teacher statistics, optimal R^2) and
``r2_vs_hidden.png`` (Fig. 2: R^2 vs hidden units, and vs "adjusted" units
with the URNN's halved). Prints the summary table.

Rerun the same command to resume: finished configurations are skipped and a
half-finished one continues from its last checkpoint.

Examples::

    python -m train.system_id                        # the CPU-sized main job
    python -m train.system_id --inputs=sparse --snr_db=15 --workdir=runs/system_id_fig3
    python -m train.system_id --paper                # the paper's scale (hours)
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app
from absl import flags
from absl import logging

from urnn_jax import training
from urnn_jax.experiments import system_id as sid

_d = sid.Config()


def define_flags() -> None:
  """Defines this binary's flags (called by ``__main__`` only, so the binaries
  can be imported together)."""
  flags.DEFINE_list("models", list(_d.models), f"Models, some of {list(sid.MODELS)}.")
  flags.DEFINE_list("hidden", [str(h) for h in _d.hidden], "Hidden sizes of the trained models.")
  flags.DEFINE_integer("realizations", _d.realizations, "Teacher realizations (30 in the paper).")
  flags.DEFINE_float("snr_db", _d.snr_db, "Output SNR in dB (20: Fig. 2, 15: Fig. 3).")
  flags.DEFINE_enum("inputs", _d.inputs, ["gaussian", "sparse"],
                    "Inputs: i.i.d. Gaussian (Fig. 2) or sparse Gaussian, nonzero w.p. 0.02 (Fig. 3).")
  flags.DEFINE_integer("train_sequences", _d.train_sequences, "Training sequences per realization.")
  flags.DEFINE_integer("test_sequences", _d.test_sequences, "Test sequences per realization.")
  flags.DEFINE_integer("seq_len", _d.seq_len, "Time steps T per sequence.")
  flags.DEFINE_integer("epochs", _d.epochs, "Training epochs (passes over the training sequences).")
  flags.DEFINE_integer("batch_size", _d.batch_size, "Sequences per batch.")
  flags.DEFINE_float("learning_rate", _d.learning_rate, "Learning rate.")
  flags.DEFINE_enum("optimizer", _d.optimizer, sorted(sid.OPTIMIZERS), "Optimiser (all models).")
  flags.DEFINE_enum("lr_schedule", _d.lr_schedule, list(training.LR_SCHEDULES),
                    "Learning rate: constant (the paper's), or cosine decay to 0 over the run.")
  flags.DEFINE_float("grad_clip", _d.grad_clip,
                     "Clip the gradients' global norm to this before the optimiser (0: off).")
  flags.DEFINE_enum("constraint", _d.constraint, list(sid.CONSTRAINTS),
                    "URNN: how W is kept orthogonal after each step (projection: SVD, the paper's).")
  flags.DEFINE_boolean("standardize_targets", _d.standardize_targets,
                       "Scale each output channel by its training std (R^2 is unchanged).")
  flags.DEFINE_integer("seed", _d.seed, "Seed of data, initialisation and batch order.")
  flags.DEFINE_integer("checkpoint_every", _d.checkpoint_every,
                       "Checkpoint every this many steps (0: every epoch).")
  flags.DEFINE_integer("unroll", _d.unroll, "lax.scan unroll of the recurrences.")
  flags.DEFINE_integer("parallel", 1,
                       "Configurations trained at the same time, in threads (results do not"
                       " depend on it).")
  flags.DEFINE_integer("eval_batch", _d.eval_batch, "Test sequences per evaluation call.")
  flags.DEFINE_string("workdir", None,
                      "Output and checkpoint directory (default runs/system_id, with --paper"
                      " runs/system_id_paper).")
  flags.DEFINE_boolean("paper", False,
                       "The paper's scale: 30 realizations, 700/300 sequences of T=1000, hidden"
                       " 2..14, models rnn,urnn,contrnn,lstm. Flags given explicitly still win.")


FLAGS = flags.FLAGS

_FIELDS = [f.name for f in dataclasses.fields(sid.Config)]


def config_from_flags() -> sid.Config:
  base = sid.PAPER if FLAGS.paper else sid.Config()
  values = {}
  for name in _FIELDS:
    if FLAGS.paper and not FLAGS[name].present:
      continue  # Keep the paper's value.
    v = FLAGS[name].value
    if name == "models":
      v = tuple(v)
    elif name == "hidden":
      try:
        v = tuple(int(h) for h in v)
      except ValueError:
        raise app.UsageError(f"--hidden must be integers, got {v}.") from None
    values[name] = v
  return dataclasses.replace(base, **values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  config = config_from_flags()
  try:
    config.validate()
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  workdir = FLAGS.workdir or ("runs/system_id_paper" if FLAGS.paper else "runs/system_id")
  print(f"system_id: {config}\nworkdir: {workdir}", flush=True)
  out = sid.run(config, workdir, log=lambda s: print(s, flush=True), parallel=FLAGS.parallel)
  print()
  print(f"Test R^2 over {config.realizations} realizations ({config.inputs} inputs,"
        f" SNR {config.snr_db:g} dB; optimal R^2 = {out['optimal_r2']:.4f}):")
  print(training.markdown_table(out["rows"], sid.SUMMARY_COLUMNS))
  print()
  for line in sid.finding_lines(out["rows"], out["optimal_r2"]):
    print(line)
  print(f"\nwrote {workdir}/summary.md, summary.csv, summary.json, results.csv, results/,"
        f" r2_vs_hidden.png; this run took {out['seconds']:.0f} s"
        f" (trained {len(out['trained'])}, skipped {len(out['skipped'])} configurations).")
  sys.stdout.flush()


if __name__ == "__main__":
  define_flags()
  app.run(main)
