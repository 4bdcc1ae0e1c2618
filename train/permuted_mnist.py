r"""Permuted pixel MNIST (seed 000, Fig. 4): URNN vs ContRNN vs RNN vs LSTM.

Trains one run per (``--model``, ``--learning_rate``) pair (``--models`` is
another name of ``--model``; any name of ``urnn_jax.models.MODELS``) on the
permuted pixel task (784 steps, 1 feature), with RMSProp (default) and
validation-based early stopping (``--patience``), and reports the test
accuracy at the best validation epoch. Each run writes
``results.json``, ``history.csv``, ``learning_curve.png`` and orbax
checkpoints (latest state and best-validation parameters) under
``--workdir/<run>/``; every invocation then refreshes
``--workdir/summary.{md,csv,json}`` and ``--workdir/comparison.png`` over all
runs in the workdir.

Resumable: rerun the same command and each run continues from its last
checkpoint (a finished run is only re-evaluated).

Data (nothing is downloaded): ``--source=tfds`` reads a tfds dataset prepared
in ``--data_dir`` in the array_record format (no TensorFlow needed);
``--source=idx`` reads the original IDX files (raw or .gz) from
``--data_dir`` or the system directories (``/usr/share/datasets/fashion-mnist``
from Debian's ``dataset-fashion-mnist``); ``auto`` tries both.

Fig. 4 (URNN, ContRNN, and the RNN at two learning rates)::

    python -m train.permuted_mnist --model=urnn,contrnn,rnn --learning_rate=1e-3
    python -m train.permuted_mnist --model=rnn --learning_rate=1e-4

A CPU-sized run on Debian's Fashion-MNIST::

    python -m train.permuted_mnist --dataset=fashion_mnist --model=urnn,contrnn,rnn,lstm \
        --hidden=32 --train_subset=5000 --eval_subset=1000 --epochs=3

Several processes (hosts): start the same command in each with ``--num_processes``,
``--process_id`` and ``--coordinator_address`` (README, "Scaling out"); process 0 writes the files.
"""

from __future__ import annotations

from absl import app
from absl import flags

from urnn_jax import config as config_lib
from urnn_jax import models as registry
from urnn_jax import training
from urnn_jax.data import images
from urnn_jax.experiments import permuted_mnist as pm

SWEEP = ("model", "learning_rate")
# Other names of some flags: {alias: field}.
ALIASES = {"models": "model", "eval_batch_size": "eval_batch"}


def define_flags() -> None:
  """Defines this binary's flags, one per field of ``pm.Config`` (called by
  ``__main__`` only, so the binaries can be imported together)."""
  config_lib.define_flags(pm.Config, sweep=SWEEP, aliases=ALIASES)
  config_lib.define_distributed_flags()  # --num_processes, --process_id, --coordinator_address, ...
  flags.DEFINE_string("workdir", "runs/permuted_mnist", "Output and checkpoint directory.")


FLAGS = flags.FLAGS


def main(argv):
  config_lib.begin(argv)  # several processes: the distributed runtime first
  say = config_lib.printer()  # process 0 alone prints; the writers are process 0's too
  try:
    registry.check_names(FLAGS.model, field="model")
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  configs = config_lib.binary_configs(pm.Config, FLAGS, sweep=SWEEP)
  try:
    data = pm.load_data(configs[0], log=say)
  except images.DatasetNotFoundError as e:
    raise SystemExit(f"error: {e}") from None
  say(f"data: {data.source}, sizes {data.sizes()}, permutation {images.permutation_digest(data.permutation)}")
  try:
    for config in configs:
      pm.steps_per_epoch(config, len(data.train_y))
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  for config in configs:
    try:
      r = pm.train_and_evaluate(config, FLAGS.workdir, data, log=say)
    except training.RunDirError as e:
      raise app.UsageError(str(e)) from None
    acc = "n/a" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.2f}%"
    say(
        f"{r['run']}: test accuracy {acc} at best validation epoch {r['best_epoch']}"
        f" (val {r['best_val_accuracy']}), {r['epochs_run']} epochs,"
        f" {r['mean_epoch_train_seconds'] or 0:.1f} s/epoch train"
        + (", diverged" if r["diverged"] else "")
        + (", stopped early" if r["stopped_early"] else "")
    )
  if training.is_primary():  # reads every run's results (process 0 wrote them)
    summary = pm.write_summary(FLAGS.workdir)
    say("\n" + summary["text"])
    say(f"wrote {FLAGS.workdir}/summary.md and comparison.png")


if __name__ == "__main__":
  define_flags()
  app.run(main)
