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
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from absl import logging

from urnn_jax.data import memory
from urnn_jax.experiments import memory_tasks as mt

_d = mt.Config()


def define_flags() -> None:
  """Defines this binary's flags (called by ``__main__`` only, so the binaries
  can be imported together)."""
  flags.DEFINE_enum("task", _d.task, sorted(memory.TASKS), "Task.")
  flags.DEFINE_list("length", [str(_d.length)],
                    "Sequence length(s) T, comma-separated (copy: the number of blanks).")
  flags.DEFINE_list("models", list(_d.models), f"Models, some of {list(mt.MODELS)}.")
  flags.DEFINE_integer("hidden", _d.hidden, "Hidden size n (all models).")
  flags.DEFINE_enum("activation", None, ["relu", "tanh", "sigmoid", "identity", "leaky_relu", "abs"],
                    f"Activation of the RNN / uRNN cells; default per task: {mt.DEFAULT_ACTIVATION}.")
  flags.DEFINE_enum("rnn_init", _d.rnn_init, sorted(mt.RNN_INITS), "Initialiser of the free RNN's W.")
  flags.DEFINE_enum("optimizer", _d.optimizer, sorted(mt.OPTIMIZERS), "Optimiser (all models).")
  flags.DEFINE_float("learning_rate", _d.learning_rate, "Learning rate.")
  flags.DEFINE_float("recurrent_learning_rate", None,
                     "Learning rate of the recurrent matrix of the RNN / uRNN models (W, or the"
                     " generator A of urnn_param_*), expRNN's 'orthogonal lr'; default: --learning_rate."
                     " LSTM / GRU use --learning_rate throughout.")
  flags.DEFINE_enum("lr_schedule", _d.lr_schedule, list(mt.training.LR_SCHEDULES),
                    "Learning rate (both rates): constant, or cosine decay to 0 over --steps.")
  flags.DEFINE_float("grad_clip", _d.grad_clip, "Clip gradients to this global norm (0: off).")
  flags.DEFINE_integer("reproject_every", _d.reproject_every,
                       "urnn_cayley/urnn_expm: also project W onto the orthogonal group every this"
                       " many steps, removing float32 drift (0: never).")
  flags.DEFINE_integer("batch_size", _d.batch_size, "Training batch size.")
  flags.DEFINE_integer("steps", _d.steps, "Training steps per model.")
  flags.DEFINE_integer("eval_every", _d.eval_every, "Evaluate every this many steps.")
  flags.DEFINE_integer("eval_size", _d.eval_size, "Held-out evaluation sequences.")
  flags.DEFINE_integer("eval_batch", _d.eval_batch, "Evaluation chunk size.")
  flags.DEFINE_integer("checkpoint_every", _d.checkpoint_every, "Checkpoint every this many steps.")
  flags.DEFINE_integer("seed", _d.seed, "Seed of data, initialisation and evaluation set.")
  flags.DEFINE_integer("num_values", None, "first_term / kth_highest: values per term (default 10 / 100).")
  flags.DEFINE_integer("k", None, "kth_highest: k (default 3).")
  flags.DEFINE_integer("diagnostics_batch", _d.diagnostics_batch, "Sequences averaged in the gradient norms.")
  flags.DEFINE_bool("diagnostics", _d.diagnostics,
                    "Gradient norms ||dL/dh(k)|| and the Jacobian bound check for the RNN / uRNN models.")
  flags.DEFINE_string("workdir", "runs/memory_tasks", "Output and checkpoint directory.")


FLAGS = flags.FLAGS


def configs_from_flags() -> list[mt.Config]:
  try:
    lengths = [int(v) for v in FLAGS.length]
  except ValueError:
    raise app.UsageError(f"--length must be integers, got {FLAGS.length}.") from None
  return [
      mt.Config(
          task=FLAGS.task,
          length=length,
          models=tuple(FLAGS.models),
          hidden=FLAGS.hidden,
          activation=FLAGS.activation,
          rnn_init=FLAGS.rnn_init,
          optimizer=FLAGS.optimizer,
          learning_rate=FLAGS.learning_rate,
          recurrent_learning_rate=FLAGS.recurrent_learning_rate,
          lr_schedule=FLAGS.lr_schedule,
          grad_clip=FLAGS.grad_clip,
          reproject_every=FLAGS.reproject_every,
          batch_size=FLAGS.batch_size,
          steps=FLAGS.steps,
          eval_every=FLAGS.eval_every,
          eval_size=FLAGS.eval_size,
          eval_batch=FLAGS.eval_batch,
          checkpoint_every=FLAGS.checkpoint_every,
          seed=FLAGS.seed,
          num_values=FLAGS.num_values,
          k=FLAGS.k,
          diagnostics_batch=FLAGS.diagnostics_batch,
          diagnostics=FLAGS.diagnostics,
      )
      for length in lengths
  ]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  configs = configs_from_flags()
  for config in configs:
    try:
      config.validate()
    except ValueError as e:
      raise app.UsageError(str(e)) from None
  for config in configs:
    out = mt.run_experiment(config, FLAGS.workdir)
    print(f"\n{config.task}, length {config.length}: memoryless baseline {out['baseline']}")
    print(out["table"])
    for model, b in out["bound_check"].items():
      print(f"bound check {model}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in b.items()))
    print(f"wrote {out['run_dir']}")
  summary = mt.summary_table(FLAGS.workdir)
  with open(os.path.join(FLAGS.workdir, "summary.md"), "w") as f:
    f.write(summary + "\n")
  print("\n" + summary)


if __name__ == "__main__":
  define_flags()
  app.run(main)
