r"""Long-memory tasks of seed 002 and the uRNN literature: RNN vs uRNN vs LSTM/GRU.

Trains each of ``--models`` on ``--task`` at each of ``--length`` and writes,
per (task, length), ``results.{json,csv,md}``, ``learning_curves.png``,
``gradient_norms.{png,json}`` (||dL/dh(k)|| for every step, log scale) and
``bound_check.json`` under ``--workdir/<task>_L<length>/``; then
``--workdir/summary.md``, seed 002's table (models x lengths) over every run
in the workdir, with the memoryless baseline.

Resumable: rerun the same command and finished models are read back, others
continue from their last checkpoint. Deterministic for a given ``--seed``.

The default run (first-term recall, T = 20, RNN / seed 002's exp-retraction
uRNN / LSTM, hidden 128, 1000 steps) takes a few minutes on a CPU::

    python -m train.memory_tasks

Seed 002's table (about 30 minutes on 2 busy CPU cores)::

    python -m train.memory_tasks --task=first_term --length=20,50,100 --steps=2000

The activation defaults per task (``DEFAULT_ACTIVATION``): identity for the
recall tasks (first_term, copy), relu for kth_highest and adding.

Several processes (hosts): start the same command in each with ``--num_processes``,
``--process_id`` and ``--coordinator_address`` (README, "Scaling out"); process 0 writes the files.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from urnn_jax import config as config_lib
from urnn_jax import training
from urnn_jax.experiments import memory_tasks as mt

SWEEP = ("length",)


def define_flags() -> None:
  """Defines this binary's flags, one per field of ``mt.Config`` (called by
  ``__main__`` only, so the binaries can be imported together)."""
  config_lib.define_flags(mt.Config, sweep=SWEEP)
  config_lib.define_distributed_flags()  # --num_processes, --process_id, --coordinator_address, ...
  flags.DEFINE_string("workdir", "runs/memory_tasks", "Output and checkpoint directory.")


FLAGS = flags.FLAGS


def main(argv):
  config_lib.begin(argv)  # several processes: the distributed runtime first
  say = config_lib.printer()  # process 0 alone prints; the writers are process 0's too
  configs = config_lib.binary_configs(mt.Config, FLAGS, sweep=SWEEP)
  for config in configs:
    try:
      out = mt.run_experiment(config, FLAGS.workdir, log=say)
    except training.RunDirError as e:
      raise app.UsageError(str(e)) from None
    say(f"\n{config.task}, length {config.length}: memoryless baseline {out['baseline']}")
    say(out["table"])
    for model, b in out["bound_check"].items():
      say(f"bound check {model}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in b.items()))
    say(f"wrote {out['run_dir']}")
  if training.is_primary():  # reads every run's results (process 0 wrote them)
    summary = mt.summary_table(FLAGS.workdir)
    training.atomic_write(os.path.join(FLAGS.workdir, "summary.md"), summary + "\n")
    say("\n" + summary)


if __name__ == "__main__":
  define_flags()
  app.run(main)
