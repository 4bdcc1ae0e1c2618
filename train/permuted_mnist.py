r"""Permuted pixel MNIST (seed 000, Fig. 4): URNN vs ContRNN vs RNN vs LSTM.

Trains one run per (``--model``, ``--learning_rate``) pair on the permuted
pixel task (784 steps, 1 feature), with RMSProp (default) and
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
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging

from urnn_jax.data import images
from urnn_jax.experiments import permuted_mnist as pm

_d = pm.Config()


def define_flags() -> None:
  """Defines this binary's flags (called by ``__main__`` only, so the binaries
  can be imported together)."""
  flags.DEFINE_list("model", [_d.model], f"Model(s), comma-separated, some of {sorted(pm.MODELS)}.")
  flags.DEFINE_integer("hidden", _d.hidden, "Hidden size n (LSTM: cell size).")
  flags.DEFINE_enum("activation", _d.activation, list(pm.ACTIVATIONS), "Activation of the RNN/URNN cells.")
  flags.DEFINE_enum("optimizer", _d.optimizer, sorted(pm.OPTIMIZERS), "Optimiser (RMSProp, as in the paper).")
  flags.DEFINE_list("learning_rate", [f"{_d.learning_rate:g}"], "Learning rate(s), comma-separated.")
  flags.DEFINE_float("grad_clip", _d.grad_clip, "Clip gradients to this global norm (0: off).")
  flags.DEFINE_float("contraction", _d.contraction, "ContRNN: largest allowed singular value of W.")
  flags.DEFINE_integer("epochs", _d.epochs, "Maximum number of epochs.")
  flags.DEFINE_integer("batch_size", _d.batch_size, "Training batch size.")
  flags.DEFINE_integer("patience", _d.patience,
                       "Early stopping: stop after this many epochs without a better validation accuracy (0: off).")
  flags.DEFINE_enum("dataset", _d.dataset, list(images.DATASETS), "Dataset.")
  flags.DEFINE_string("data_dir", None, "tfds data_dir and/or directory of IDX files.")
  flags.DEFINE_enum("source", _d.source, list(images.SOURCES), "Where to read the data (auto: tfds, then IDX).")
  flags.DEFINE_integer("num_validation", _d.num_validation, "Training examples held out for validation.")
  flags.DEFINE_integer("train_subset", _d.train_subset, "Train on only this many examples (0: all).")
  flags.DEFINE_integer("eval_subset", _d.eval_subset, "Validate and test on only this many examples (0: all).")
  flags.DEFINE_integer("max_steps_per_epoch", _d.max_steps_per_epoch, "Cap on steps per epoch (0: a full pass).")
  flags.DEFINE_integer("eval_batch_size", _d.eval_batch_size, "Evaluation chunk size.")
  flags.DEFINE_integer("checkpoint_every", _d.checkpoint_every,
                       "Also checkpoint every this many steps within an epoch (0: epoch ends only).")
  flags.DEFINE_integer("unroll", _d.unroll, "lax.scan unroll factor.")
  flags.DEFINE_integer("seed", _d.seed, "Seed of the pixel permutation, validation split, init and batches.")
  flags.DEFINE_bool("permute", _d.permute, "Permute the pixels (--nopermute: sequential pixel MNIST).")
  flags.DEFINE_string("workdir", "runs/permuted_mnist", "Output and checkpoint directory.")


FLAGS = flags.FLAGS


def configs_from_flags() -> list[pm.Config]:
  try:
    lrs = [float(v) for v in FLAGS.learning_rate]
  except ValueError:
    raise app.UsageError(f"--learning_rate must be numbers, got {FLAGS.learning_rate}.") from None
  if not FLAGS.model or not lrs:
    raise app.UsageError("--model and --learning_rate need at least one value.")
  configs = [
      pm.Config(
          dataset=FLAGS.dataset,
          data_dir=FLAGS.data_dir,
          source=FLAGS.source,
          model=model,
          hidden=FLAGS.hidden,
          activation=FLAGS.activation,
          optimizer=FLAGS.optimizer,
          learning_rate=lr,
          grad_clip=FLAGS.grad_clip,
          contraction=FLAGS.contraction,
          batch_size=FLAGS.batch_size,
          epochs=FLAGS.epochs,
          patience=FLAGS.patience,
          num_validation=FLAGS.num_validation,
          train_subset=FLAGS.train_subset,
          eval_subset=FLAGS.eval_subset,
          max_steps_per_epoch=FLAGS.max_steps_per_epoch,
          eval_batch_size=FLAGS.eval_batch_size,
          checkpoint_every=FLAGS.checkpoint_every,
          unroll=FLAGS.unroll,
          seed=FLAGS.seed,
          permute=FLAGS.permute,
      )
      for model in FLAGS.model
      for lr in lrs
  ]
  for config in configs:
    try:
      config.validate()
    except ValueError as e:
      raise app.UsageError(str(e)) from None
  return configs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  configs = configs_from_flags()
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; --verbosity=0 shows them
  try:
    data = pm.load_data(configs[0])
  except images.DatasetNotFoundError as e:
    raise SystemExit(f"error: {e}") from None
  print(f"data: {data.source}, sizes {data.sizes()}, permutation {images.permutation_digest(data.permutation)}")
  for config in configs:
    r = pm.train_and_evaluate(config, FLAGS.workdir, data)
    acc = "n/a" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.2f}%"
    print(
        f"{r['run']}: test accuracy {acc} at best validation epoch {r['best_epoch']}"
        f" (val {r['best_val_accuracy']}), {r['epochs_run']} epochs,"
        f" {r['mean_epoch_train_seconds'] or 0:.1f} s/epoch train"
        + (", diverged" if r["diverged"] else "")
        + (", stopped early" if r["stopped_early"] else "")
    )
  summary = pm.write_summary(FLAGS.workdir)
  print("\n" + summary["text"])
  print(f"wrote {FLAGS.workdir}/summary.md and comparison.png")


if __name__ == "__main__":
  define_flags()
  app.run(main)
