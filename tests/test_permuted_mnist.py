"""Tests of urnn_jax.experiments.permuted_mnist and its binary, on tiny IDX files."""

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from urnn_jax import models as registry
from urnn_jax import orthogonal
from urnn_jax import training
from urnn_jax.experiments import permuted_mnist as pm

from test_images import write_tiny_idx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The per-run timings differ between two runs of the same configuration.
TIMINGS = ("train_seconds", "eval_seconds")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tiny_mnist")
  write_tiny_idx(d, n_train=40, n_test=10)
  return str(d)


def tiny_config(tiny_dir, **kw):
  base = dict(dataset="mnist", data_dir=tiny_dir, source="idx", model="urnn", hidden=4,
              batch_size=10, epochs=1, patience=2, num_validation=10, max_steps_per_epoch=1,
              eval_batch=16)
  base.update(kw)
  return pm.Config(**base)


def quiet():
  return dict(log=lambda *_: None, progress_stream=open(os.devnull, "w"))


def untimed(history):
  return [{k: v for k, v in h.items() if k not in TIMINGS} for h in history]


# ----------------------------------------------------------------------------
# Early stopping logic (training.EarlyStopping, the experiment's rule).


def test_early_stopping_on_a_synthetic_curve():
  curve = [0.10, 0.30, 0.50, 0.40, 0.45, 0.60, 0.20]
  es = training.EarlyStopping(patience=2)
  stopped_after = None
  for epoch, v in enumerate(curve):
    improved = es.update(epoch, v)
    assert improved == (epoch in (0, 1, 2))
    if es.should_stop:
      stopped_after = epoch
      break
  # 0.60 at epoch 5 is never seen: two epochs without improvement stop after epoch 4.
  assert (es.best_epoch, es.best_value, stopped_after) == (2, 0.50, 4)
  assert training.EarlyStopping.replay(curve, 2).best_epoch == 2
  # Without patience it runs through and keeps the global best; ties keep the earlier epoch.
  assert training.EarlyStopping.replay(curve, 0).best_epoch == 5
  assert not training.EarlyStopping.replay(curve, 0).should_stop
  assert training.EarlyStopping.replay([0.2, 0.5, 0.5, 0.5], 0).best_epoch == 1
  # min_delta: small gains do not count; NaN never improves.
  assert training.EarlyStopping.replay([0.5, 0.505, 0.6], 0, min_delta=0.01).best_epoch == 2
  es = training.EarlyStopping.replay([math.nan, 0.1, math.nan], 2)
  assert es.best_epoch == 1 and not es.should_stop
  es = training.EarlyStopping.replay([math.nan, 0.1], 1)
  assert es.best_epoch is None and es.should_stop


# ----------------------------------------------------------------------------
# Models, optimisers, one training step.


def test_models_and_constraints():
  # Every registry model builds, and its optimiser (with the model's constraint) initialises.
  for name in registry.MODELS:
    cfg = pm.Config(model=name, hidden=4)
    cfg.validate()
    params, constants = pm.init_variables(cfg, pm.make_model(cfg))
    tx = pm.make_optimizer(cfg)
    tx.init(params)
    if name in ("urnn", "contrnn", "rnn"):
      assert params["rnn"]["cell"]["recurrent_kernel"].shape == (4, 4)
    assert ("constants" in constants) == name.startswith("urnn_param_")
  with pytest.raises(ValueError, match="model="):
    pm.Config(model="nope").validate()
  with pytest.raises(ValueError, match="patience"):
    pm.Config(patience=-1).validate()
  with pytest.raises(ValueError, match="eval_batch"):
    pm.Config(eval_batch=0).validate()
  with pytest.raises(ValueError, match="contraction"):
    pm.Config(contraction=0.0).validate()
  with pytest.raises(ValueError, match="learning_rate"):
    pm.Config(learning_rate=math.inf).validate()
  with pytest.raises(ValueError, match="optimizer"):
    pm.Config(optimizer="lbfgs").validate()


def test_one_step_training_run(tiny_dir, tmp_path):
  cfg = tiny_config(tiny_dir, model="urnn", epochs=1)
  r = pm.train_and_evaluate(cfg, str(tmp_path), **quiet())
  assert r["steps"] == 1 and r["epochs_run"] == 1 and r["best_epoch"] == 0
  assert r["sizes"] == {"train": 30, "validation": 10, "test": 10}
  assert 0.0 <= r["test_accuracy"] <= 1.0 and r["mean_step_seconds"] > 0
  assert r["history"][0]["epoch"] == 0 and r["history"][0]["step"] == 1
  assert np.isfinite(r["history"][0]["train_grad_norm"])  # make_train_step's gradient norm
  run_dir = tmp_path / cfg.run_name()
  for f in ("results.json", "history.json", "history.csv", "learning_curve.png", "config.json"):
    assert (run_dir / f).exists(), f
  saved = training.read_json(run_dir / "history.json")
  assert saved["run"] == cfg.run_name() and saved["steps_per_epoch"] == 1
  with training.Checkpoints(run_dir / "checkpoints") as c:
    assert c.latest_step() == 1
  # The best-validation params are checkpointed, and the URNN's W stayed orthogonal.
  init = pm.init_variables(cfg, pm.make_model(cfg))[0]
  with training.Checkpoints(run_dir / "best") as best:
    params = best.restore(init)
  w = params["rnn"]["cell"]["recurrent_kernel"]
  assert float(orthogonal.orthogonality_error(w)) < 1e-4
  assert not np.allclose(w, init["rnn"]["cell"]["recurrent_kernel"])
  # Rerunning a finished run trains nothing and reports the same result.
  again = pm.train_and_evaluate(cfg, str(tmp_path), **quiet())
  assert again["steps"] == 1 and again["history"] == r["history"]
  assert again["test_accuracy"] == r["test_accuracy"]


def test_a_parametrised_model_trains(tiny_dir, tmp_path):
  # A registry model with non-trainable constants (the base of W = base expm(skew(A))).
  cfg = tiny_config(tiny_dir, model="urnn_param_expm")
  r = pm.train_and_evaluate(cfg, str(tmp_path), **quiet())
  assert r["steps"] == 1 and r["diverged"] is None and 0.0 <= r["test_accuracy"] <= 1.0
  assert r["model_description"] == registry.get("urnn_param_expm").description


def test_resume_matches_an_uninterrupted_run(tiny_dir, tmp_path):
  data = pm.load_data(tiny_config(tiny_dir), log=lambda *_: None)
  cfg2 = tiny_config(tiny_dir, model="contrnn", epochs=2, patience=0, max_steps_per_epoch=2)
  full = pm.train_and_evaluate(cfg2, str(tmp_path / "a"), data, **quiet())
  pm.train_and_evaluate(dataclasses.replace(cfg2, epochs=1), str(tmp_path / "b"), data, **quiet())
  resumed = pm.train_and_evaluate(cfg2, str(tmp_path / "b"), data, **quiet())
  assert resumed["steps"] == full["steps"] == 4
  for a, b in zip(full["history"], resumed["history"]):
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
  assert resumed["test_accuracy"] == full["test_accuracy"]

  # Killed between checkpoints (here: stopped after the checkpoint of step 3, mid epoch 1):
  # the rerun continues from it and ends exactly where the uninterrupted run does, the
  # epoch's running mean of the training loss included.
  part = pm.train_and_evaluate(cfg2, str(tmp_path / "c"), data, stop_after=3, **quiet())
  assert part["interrupted"] and part["steps"] == 3 and part["epochs_run"] == 1
  assert not (tmp_path / "c" / cfg2.run_name() / "results.json").exists()
  again = pm.train_and_evaluate(cfg2, str(tmp_path / "c"), data, **quiet())
  assert untimed(again["history"]) == untimed(full["history"])
  for k in ("steps", "best_epoch", "best_step", "best_val_accuracy", "test_accuracy", "test_loss"):
    assert again[k] == full[k], k

  # A different configuration in the same run directory is refused.
  with pytest.raises(training.ConfigMismatchError, match="different configuration"):
    pm.train_and_evaluate(dataclasses.replace(cfg2, batch_size=5), str(tmp_path / "b"), data, **quiet())
  # A config.json of the earlier version (``eval_batch_size``, no rnn_init / reproject_every)
  # resumes: the eval batch may change, the missing fields are at their defaults.
  path = tmp_path / "b" / cfg2.run_name() / "config.json"
  old = training.read_json(path)
  for k in ("eval_batch", "rnn_init", "reproject_every"):
    old.pop(k)
  training.write_json(path, {**old, "eval_batch_size": 1000})
  again = pm.train_and_evaluate(dataclasses.replace(cfg2, eval_batch=4), str(tmp_path / "b"), data, **quiet())
  assert again["test_accuracy"] == full["test_accuracy"]
  assert again["best_val_loss"] == pytest.approx(full["best_val_loss"], rel=1e-6)


def test_divergence_stops_the_run_and_keeps_the_best_epoch(tiny_dir, tmp_path):
  # A free RNN with an absurd learning rate overflows within a few steps (Fig. 4's unstable RNN).
  cfg = tiny_config(tiny_dir, model="rnn", learning_rate=1e6, epochs=3, patience=0, max_steps_per_epoch=2)
  r = pm.train_and_evaluate(cfg, str(tmp_path), **quiet())
  assert r["diverged"] is not None and "non-finite" in r["diverged"]["message"]
  assert r["epochs_run"] < 3 and r["steps"] <= r["diverged"]["step"]
  assert r["diverged"]["epoch"] == (r["diverged"]["step"] - 1) // 2
  if r["best_epoch"] is None:
    assert r["test_accuracy"] is None
  else:
    assert 0.0 <= r["test_accuracy"] <= 1.0
  row = pm.summary_row(r)
  assert row["diverged"] is True
  pm.write_summary(str(tmp_path))
  assert "| rnn |" in (tmp_path / "summary.md").read_text()


# ----------------------------------------------------------------------------
# The binary (a subprocess: absl flags are process-global).


def run_binary(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "train.permuted_mnist", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_binary_records_the_best_validation_epoch(tiny_dir, tmp_path):
  workdir = tmp_path / "runs"
  # --models and --eval_batch_size: other names of --model and --eval_batch.
  args = [f"--data_dir={tiny_dir}", "--source=idx", "--models=rnn", "--hidden=4", "--batch_size=10",
          "--num_validation=10", "--max_steps_per_epoch=1", "--epochs=3", "--patience=1",
          "--learning_rate=0.01,0.003", "--eval_batch_size=16", f"--workdir={workdir}"]
  p = run_binary(*args)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "test accuracy" in p.stdout
  runs = training.collect_json(str(workdir))
  assert sorted(r["config"]["learning_rate"] for r in runs) == [0.003, 0.01]
  for r in runs:
    assert r["config"]["eval_batch"] == 16
    vals = [h["val_accuracy"] for h in r["history"]]
    assert r["best_epoch"] == int(np.argmax(vals))  # first maximum
    assert r["best_val_accuracy"] == vals[r["best_epoch"]]
    assert r["best_step"] == r["history"][r["best_epoch"]]["step"]
    # patience=1: stops one epoch after the last improvement (or at --epochs).
    assert r["epochs_run"] == min(3, r["best_epoch"] + 2)
    assert r["stopped_early"] == (r["epochs_run"] < 3 or r["best_epoch"] < 2)
    run_dir = workdir / r["run"]
    assert (run_dir / "learning_curve.png").exists()
    with training.Checkpoints(run_dir / "best") as c:
      assert c.latest_step() == r["best_step"]
  for f in ("summary.md", "summary.csv", "summary.json", "comparison.png"):
    assert (workdir / f).exists(), f
  assert "| rnn |" in (workdir / "summary.md").read_text()
  # A different configuration in the same workdir: a one-line usage error, nothing trained.
  p = run_binary(*args[:-1], "--learning_rate=0.01", "--contraction=0.5", f"--workdir={workdir}")
  assert p.returncode != 0 and "different configuration" in p.stderr and "contraction" in p.stderr
  assert "Traceback" not in p.stderr


def test_flags_are_the_config_fields():
  from absl import flags

  from urnn_jax import config as config_lib
  import train.permuted_mnist as binary

  fv = flags.FlagValues()
  config_lib.define_flags(pm.Config, flag_values=fv, sweep=binary.SWEEP, aliases=binary.ALIASES)
  fv(["prog", "--models=urnn,lstm", "--learning_rate=1e-3,1e-4", "--eval_batch_size=7", "--hidden=3"])
  configs = config_lib.configs_from_flags(pm.Config, fv, sweep=binary.SWEEP)
  # One run per model and learning rate, in the order of the flags.
  assert [(c.model, c.learning_rate) for c in configs] == [
      ("urnn", 1e-3), ("urnn", 1e-4), ("lstm", 1e-3), ("lstm", 1e-4)]
  assert {(c.eval_batch, c.hidden) for c in configs} == {(7, 3)}
  fv = flags.FlagValues()
  config_lib.define_flags(pm.Config, flag_values=fv, sweep=binary.SWEEP, aliases=binary.ALIASES)
  fv(["prog", "--learning_rate=fast"])
  with pytest.raises(config_lib.FlagError, match="--learning_rate must be float"):
    config_lib.configs_from_flags(pm.Config, fv, sweep=binary.SWEEP)


def test_binary_bad_flags_are_usage_errors(tmp_path):
  p = run_binary("--model=rnn,nope", f"--workdir={tmp_path / 'w'}")
  assert p.returncode != 0 and "unknown ['nope']" in p.stderr, p.stderr[-2000:]
  assert "Traceback" not in p.stderr
  assert not (tmp_path / "w").exists()


def test_binary_missing_dataset(tmp_path):
  p = run_binary("--dataset=mnist", "--source=idx", f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'w'}")
  assert p.returncode != 0
  assert "tfds build mnist --file_format=array_record" in p.stderr
  assert "train-images-idx3-ubyte" in p.stderr
  assert not (tmp_path / "w").exists()
