r"""System identification (seed 000 §5, Figs 2 and 3): RNN, URNN, ContRNN, LSTM.

A contractive ReLU RNN with 4 states generates noisy data; RNNs, URNNs
(W kept orthogonal after every Adam step), contractive RNNs and LSTMs with
2..14 states (``--models``: any of ``urnn_jax.models.MODELS``) are trained on
it, every realization of a (model, hidden size) configuration together under
``jax.vmap``. Writes to ``--workdir``: ``config.json`` (the configuration a
rerun must match), ``results/<model>_h<n>.json`` (every realization's test R^2),
``results.csv``, ``summary.{json,csv,md}`` (median and IQR of R^2 per model
x hidden size), ``data.json`` (teacher statistics, optimal R^2) and
``r2_vs_hidden.png`` (Fig. 2: R^2 vs hidden units, and vs "adjusted" units
with the URNN's halved). Prints the summary table.

Rerun the same command to resume: finished configurations are skipped and a
half-finished one continues from its last checkpoint. ``--seq_len`` is the
older name of ``--length``.

Examples::

    python -m train.system_id                        # the CPU-sized main job
    python -m train.system_id --inputs=sparse --snr_db=15 --workdir=runs/system_id_fig3
    python -m train.system_id --paper                # the paper's scale (hours)

Several processes (hosts): start the same command in each with ``--num_processes``,
``--process_id`` and ``--coordinator_address`` (README, "Scaling out"); process 0 writes the files.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from urnn_jax import config as config_lib
from urnn_jax import training
from urnn_jax.experiments import system_id as sid

# Older flag names kept working.
ALIASES = {"seq_len": "length"}


def define_flags() -> None:
  """Defines this binary's flags, one per field of ``sid.Config`` plus
  ``--parallel``, ``--workdir`` and ``--paper`` (called by ``__main__`` only,
  so the binaries can be imported together)."""
  config_lib.define_flags(sid.Config, aliases=ALIASES)
  config_lib.define_distributed_flags()  # --num_processes, --process_id, --coordinator_address, ...
  flags.DEFINE_integer("parallel", 1,
                       "Configurations trained at the same time, in threads (results do not"
                       " depend on it).")
  flags.DEFINE_string("workdir", None,
                      "Output and checkpoint directory (default runs/system_id, with --paper"
                      " runs/system_id_paper).")
  flags.DEFINE_boolean("paper", False,
                       "The paper's scale: 30 realizations, 700/300 sequences of T=1000, hidden"
                       " 2..14, models rnn,urnn,contrnn,lstm. Flags given explicitly still win.")


FLAGS = flags.FLAGS


def config_from_flags() -> sid.Config:
  """The flags' configuration (``--paper``: :data:`sid.PAPER` and the flags given), validated."""
  (config,) = config_lib.binary_configs(sid.Config, FLAGS, base=sid.PAPER if FLAGS.paper else None,
                                        only_present=FLAGS.paper)
  return config


def main(argv):
  config_lib.begin(argv)  # several processes: the distributed runtime first
  say = config_lib.printer()  # process 0 alone prints; the writers are process 0's too
  config = config_from_flags()
  workdir = FLAGS.workdir or ("runs/system_id_paper" if FLAGS.paper else "runs/system_id")
  say(f"system_id: {config}\nworkdir: {workdir}")
  try:
    out = sid.run(config, workdir, log=say, parallel=FLAGS.parallel)
  except training.RunDirError as e:
    raise app.UsageError(str(e)) from None
  say()
  say(f"Test R^2 over {config.realizations} realizations ({config.inputs} inputs,"
      f" SNR {config.snr_db:g} dB; optimal R^2 = {out['optimal_r2']:.4f}):")
  say(training.markdown_table(out["rows"], sid.SUMMARY_COLUMNS))
  say()
  for line in sid.finding_lines(out["rows"], out["optimal_r2"]):
    say(line)
  say(f"\nwrote {workdir}/summary.md, summary.csv, summary.json, results.csv, results/,"
      f" r2_vs_hidden.png; this run took {out['seconds']:.0f} s"
      f" (trained {len(out['trained'])}, skipped {len(out['skipped'])} configurations).")
  sys.stdout.flush()


if __name__ == "__main__":
  define_flags()
  app.run(main)
