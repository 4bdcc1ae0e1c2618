"""Tests for urnn_jax.experiments.memory_tasks and the train.memory_tasks binary.

Everything runs the real loop on tiny configurations (a few steps, hidden 4-8).
"""

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from urnn_jax import models as registry
from urnn_jax import orthogonal, training
from urnn_jax.data import memory
from urnn_jax.experiments import memory_tasks as mt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**kw):
  base = dict(
      hidden=6, batch_size=4, steps=2, eval_every=1, eval_size=8, eval_batch=8,
      checkpoint_every=2, diagnostics_batch=2,
  )
  base.update(kw)
  return mt.Config(**base)


def quiet(config, workdir):
  return mt.run_experiment(config, str(workdir), log=lambda *a: None, progress_stream=io.StringIO())


# One model per task keeps the module fast; together they cover every head
# (last-state classifier, per-step classifier, regression), seed 002's
# exp-retraction uRNN, the projected uRNN, a parametrised uRNN (constants
# collection) and a gated cell.
@pytest.mark.parametrize("task,length,model", [
    ("first_term", 5, "urnn_expm"),
    ("kth_highest", 6, "urnn"),
    ("copy", 3, "urnn_param_expm"),
    ("adding", 6, "lstm"),
])
def test_end_to_end_each_task(tmp_path, task, length, model):
  # Gradient diagnostics (compile-heavy) once, on seed 002's task; tests/test_diagnostics.py checks the numbers.
  config = tiny(task=task, length=length, models=(model,), diagnostics=task == "first_term",
                num_values=5 if task in ("first_term", "kth_highest") else None)
  out = quiet(config, tmp_path)
  run_dir = tmp_path / f"{task}_L{length}"
  for name in ("config.json", "results.json", "results.csv", "results.md", "learning_curves.png"):
    assert (run_dir / name).exists(), name
  (row,) = out["rows"]
  assert row["model"] == model and row["steps"] == 2
  assert np.isfinite(row["eval_loss"])
  assert row["baseline_loss"] == pytest.approx(out["baseline"]["loss"])
  if task == "adding":
    assert np.isfinite(row["eval_mse"])
  else:
    assert 0.0 <= row["eval_accuracy"] <= 1.0
  history = training.read_json(str(run_dir / model / "history.json"))["history"]
  assert [h["step"] for h in history] == [0, 1, 2]
  if config.diagnostics:
    norms = out["gradient_norms"][model]
    assert norms["init"].shape == norms["trained"].shape == (memory.get_task(task).num_steps(length),)
    assert np.all(np.isfinite(norms["trained"]))
    assert (run_dir / "gradient_norms.png").exists()
    assert out["bound_check"][model]["svd_bound_holds"]
  if model.startswith("urnn"):
    assert row["orthogonality_error"] < 1e-4
  table = mt.summary_table(str(tmp_path))
  assert f"**{task}**" in table and "memoryless" in table


def test_other_models_take_a_step_and_constraints_hold():
  config = tiny(task="first_term", length=3, hidden=4)
  task = memory.get_task("first_term")
  # The models that the other tests do not train (rnn: test_binary_runs).
  for model in ("urnn_param_cayley", "gru"):
    run = mt.build(config, model, task)
    train_step, _ = mt.make_steps(config, task, run)
    state = training.create_train_state(run.init_params, run.tx)
    state, metrics = jax.jit(train_step)(state)
    assert np.isfinite(float(metrics["loss"])), model
    if model.startswith("urnn"):
      theta = mt.eq1_params(config, model, {"params": state.params, **run.constants})
      assert float(orthogonal.orthogonality_error(theta.W)) < 1e-4, model


def test_complex_model_takes_the_constraint_flag_and_reports_its_unitarity():
  # --constraint picks urnn_complex's constraint (default: the Cayley retraction, which keeps
  # W's singular values; projection lands on the group), the recurrent learning rate reaches
  # its W, and orthogonality / num_params cover complex W.
  task = memory.get_task("first_term")
  for constraint, lands_on_group in ((None, False), ("projection", True)):
    config = tiny(task="first_term", length=3, hidden=4, constraint=constraint, learning_rate=0.1,
                  recurrent_learning_rate=1e-12)
    config.validate()
    run = mt.build(config, "urnn_complex", task)
    train_step, _ = mt.make_steps(config, task, run)
    state = training.create_train_state(run.init_params, run.tx)
    new, metrics = jax.jit(train_step)(state)
    assert np.isfinite(float(metrics["loss"]))
    w0, w1 = (s.params["rnn"]["cell"]["recurrent_kernel"] for s in (state, new))
    np.testing.assert_allclose(np.asarray(w1), np.asarray(w0), atol=1e-5)  # W's rate: 1e-12
    assert np.abs(np.asarray(new.params["head"]["kernel"] - state.params["head"]["kernel"])).max() > 1e-3
    err = mt.orthogonality(config, "urnn_complex", run, new.params)
    assert err is not None and err < 1e-5
    # A zero step from W = 2 U: the projection returns U, the retraction keeps 2 U.
    params = jax.tree.map(lambda x: x, state.params)
    params["rnn"]["cell"]["recurrent_kernel"] = 2 * w0
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = run.tx.update(zeros, run.tx.init(params), params)
    w2 = params["rnn"]["cell"]["recurrent_kernel"] + updates["rnn"]["cell"]["recurrent_kernel"]
    assert (float(orthogonal.orthogonality_error(w2)) < 1e-5) == lands_on_group, constraint
  assert registry.count_params({"w": np.zeros((2, 3), np.complex64), "b": np.zeros(4, np.float32)}) == 16
  with pytest.raises(ValueError, match="constraint='bogus'"):
    tiny(constraint="bogus").validate()


def _histories(run_dir, model):
  h = training.read_json(os.path.join(run_dir, model, "history.json"))["history"]
  return [{k: v for k, v in e.items() if "seconds" not in k} for e in h]


def test_deterministic_and_resumable(tmp_path):
  model = "urnn_cayley"  # optimiser state with a masked retraction (a step count)
  config = tiny(task="first_term", length=4, models=(model,), steps=4, eval_every=1, checkpoint_every=1,
                num_values=4, diagnostics=False)
  straight = quiet(config, tmp_path / "a")
  # Interrupted after 2 steps, then resumed to 4.
  quiet(dataclasses.replace(config, steps=2), tmp_path / "b")
  resumed = quiet(config, tmp_path / "b")
  run = "first_term_L4"
  assert _histories(tmp_path / "a" / run, model) == _histories(tmp_path / "b" / run, model)
  for key in ("eval_loss", "eval_accuracy", "orthogonality_error"):
    assert straight["rows"][0][key] == resumed["rows"][0][key]
  # A finished run is read back, not retrained.
  again = quiet(config, tmp_path / "b")
  assert again["rows"][0]["eval_loss"] == straight["rows"][0]["eval_loss"]
  # The configuration of a run directory is checked.
  with pytest.raises(ValueError, match="different configuration.*hidden"):
    quiet(dataclasses.replace(config, hidden=5), tmp_path / "b")


def test_a_lost_history_entry_is_recovered_from_the_checkpoint(tmp_path):
  """Issue 22's reproducer: a kill between the checkpoint and history.json (here: the last entry
  deleted) must not change what the rerun reports; the history travels inside the checkpoint."""
  config = tiny(task="first_term", length=4, models=("rnn",), steps=4, eval_every=2, checkpoint_every=2,
                num_values=4, diagnostics=False)
  first = quiet(config, tmp_path)
  path = tmp_path / "first_term_L4" / "rnn" / "history.json"
  saved = training.read_json(str(path))
  saved["history"] = saved["history"][:-1]
  training.write_json(str(path), saved)
  again = quiet(config, tmp_path)
  assert again["rows"][0]["eval_accuracy"] == first["rows"][0]["eval_accuracy"]
  assert [h["step"] for h in training.read_json(str(path))["history"]] == [0, 2, 4]


@pytest.mark.parametrize("flags,message", [
    (["--task=kth_highest", "--length=2", "--k=5"], "k=5 must be <= length=2"),
    (["--num_values=0"], "num_values must be a positive int, got 0"),
    (["--length=4,x"], "--length must be int values"),
    (["--models=rnn,transformer"], "unknown ['transformer']"),
])
def test_bad_flags_are_one_line_usage_errors_before_anything_is_written(tmp_path, flags, message):
  workdir = tmp_path / "w"
  cmd = [sys.executable, "-m", "train.memory_tasks", *flags, f"--workdir={workdir}"]
  proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert message in proc.stderr and "Traceback" not in proc.stderr
  assert not workdir.exists()


def test_help_lists_the_generated_flags():
  proc = subprocess.run([sys.executable, "-m", "train.memory_tasks", "--help"], cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)
  for flag in ("--task", "--length", "--recurrent_learning_rate", "--workdir"):
    assert flag in proc.stdout, flag


def test_config_validation():
  assert mt.Config(task="first_term").resolved().activation == "identity"
  assert mt.Config(task="adding").resolved().activation == "relu"
  assert mt.Config(task="adding", activation="tanh").resolved().activation == "tanh"
  with pytest.raises(ValueError, match="unknown"):
    mt.Config(models=("rnn", "transformer")).validate()
  with pytest.raises(ValueError, match="task="):
    mt.Config(task="sorting").validate()
  with pytest.raises(ValueError, match="eval_size"):
    mt.Config(eval_size=10, eval_batch=4).validate()


def test_binary_runs(tmp_path):
  workdir = tmp_path / "w"
  cmd = [
      sys.executable, "-m", "train.memory_tasks", "--task=adding", "--length=4", "--models=rnn",
      "--hidden=4", "--steps=2", "--eval_every=2", "--checkpoint_every=2", "--eval_size=4",
      "--eval_batch=4", "--batch_size=4", "--nodiagnostics", f"--workdir={workdir}",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "**adding** (eval MSE)" in proc.stdout
  assert (workdir / "summary.md").exists()
  results = json.loads((workdir / "adding_L4" / "results.json").read_text())
  assert results["results"][0]["steps"] == 2
  # A changed flag on the same workdir: a one-line usage error naming the field.
  proc = subprocess.run([c if c != "--hidden=4" else "--hidden=5" for c in cmd], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "different configuration (hidden: saved 4 vs now 5)" in proc.stderr


def test_divergence_is_reported_not_fatal(tmp_path, monkeypatch):
  def diverge(config, model, workdir, **kw):
    raise training.DivergenceError("training diverged at rnn step 3: non-finite loss")

  monkeypatch.setattr(mt, "train_model", diverge)
  out = quiet(tiny(task="adding", length=4, models=("rnn",)), tmp_path)
  assert "diverged" in out["rows"][0]
  assert "| rnn | diverged |" in mt.summary_table(str(tmp_path))


def test_training_binaries_import_together():
  # Each binary defines its absl flags in define_flags(), called only as
  # __main__, so a driver script or notebook can import several of them
  # without DuplicateFlagError. A fresh interpreter keeps this process's
  # global flag registry untouched.
  code = (
      "from absl import flags\n"
      "import train.memory_tasks as a, train.permuted_mnist as b, train.system_id as c, train.equivalence\n"
      "assert 'task' not in flags.FLAGS and 'hidden' not in flags.FLAGS\n"
      "a.define_flags()\n"
      "assert 'task' in flags.FLAGS and 'hidden' in flags.FLAGS\n"
      "print('ok')\n"
  )
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().endswith("ok")


@pytest.mark.parametrize("model", ["urnn_expm", "urnn_cayley"])
def test_reproject_every_removes_drift(model):
  """A retraction keeps W's singular values; reproject_every=1 puts W back on the group."""
  import jax.numpy as jnp

  from urnn_jax import initializers

  w = 1.01 * initializers.haar()(jax.random.key(0), (8, 8), jnp.float32)  # off the group
  params = {"rnn": {"cell": {"recurrent_kernel": w}}}
  grads = {"rnn": {"cell": {"recurrent_kernel": jnp.full((8, 8), 0.1, jnp.float32)}}}
  errors = {}
  for every in (0, 1):
    tx = mt.make_optimizer(mt.Config(models=(model,), reproject_every=every), model)
    updates, _ = tx.update(grads, tx.init(params), params)
    new_w = params["rnn"]["cell"]["recurrent_kernel"] + updates["rnn"]["cell"]["recurrent_kernel"]
    errors[every] = float(orthogonal.orthogonality_error(new_w))
  assert errors[0] > 0.05  # the drift stays: ||W^T W - I||_F = (1.01^2 - 1) sqrt(8) = 0.057
  assert errors[1] < 1e-5
  with pytest.raises(ValueError, match="reproject_every must be an int >= 0"):
    mt.Config(reproject_every=-1).validate()


def test_recurrent_learning_rate_reaches_the_recurrent_matrix_only():
  """--recurrent_learning_rate scales W's step (before the retraction) for the eq. (1) models;
  LSTM has no recurrent matrix and keeps one rate."""
  import jax.numpy as jnp

  task = memory.get_task("first_term")
  x, y = task.sample(jax.random.key(1), 4, 5)
  for model, leaf in [("rnn", "recurrent_kernel"), ("urnn_param_expm", "recurrent_generator")]:
    config = mt.Config(models=(model,), hidden=6, learning_rate=1e-2)
    run = mt.build(config, model, task)
    grads = jax.grad(lambda p: mt.task_loss(
        task, run.model.apply({"params": p, **run.constants}, x), y)[0])(run.init_params)
    steps = {}
    for rlr in (None, 1e-3):
      tx = mt.make_optimizer(dataclasses.replace(config, recurrent_learning_rate=rlr), model)
      steps[rlr], _ = tx.update(grads, tx.init(run.init_params), run.init_params)
    cell = lambda u: u["rnn"]["cell"]
    np.testing.assert_allclose(cell(steps[1e-3])[leaf], 0.1 * cell(steps[None])[leaf], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(cell(steps[1e-3])["input"]["kernel"], cell(steps[None])["input"]["kernel"])
  config = mt.Config(models=("lstm",), hidden=6, recurrent_learning_rate=1e-3)
  run = mt.build(config, "lstm", task)
  mt.make_optimizer(config, "lstm").init(run.init_params)  # no recurrent leaf: not applied, no error
  with pytest.raises(ValueError, match="recurrent_learning_rate must be None or > 0"):
    mt.Config(recurrent_learning_rate=0.0).validate()


def _check_config(config, run_dir):
  training.prepare_run_dir(run_dir, config, resumable=config.resumable())


def test_config_check_under_a_cosine_schedule(tmp_path):
  """A constant-rate run may be extended (steps not compared); a cosine run spans its steps, so
  they must match; a config.json that predates a field reads it at its default."""
  base = mt.Config(task="first_term", length=4, steps=4)
  _check_config(base, str(tmp_path / "const"))
  _check_config(dataclasses.replace(base, steps=8), str(tmp_path / "const"))
  cosine = dataclasses.replace(base, lr_schedule="cosine")
  _check_config(cosine, str(tmp_path / "cos"))
  with pytest.raises(ValueError, match="different configuration.*steps: saved 4 vs now 8"):
    _check_config(dataclasses.replace(cosine, steps=8), str(tmp_path / "cos"))
  old = tmp_path / "old"
  old.mkdir()
  saved = dataclasses.asdict(base)
  for field in ("recurrent_learning_rate", "lr_schedule"):
    saved.pop(field)
  training.write_json(str(old / "config.json"), saved)
  _check_config(base, str(old))
  with pytest.raises(ValueError, match="different configuration.*recurrent_learning_rate: saved None vs now 0.001"):
    _check_config(dataclasses.replace(base, recurrent_learning_rate=1e-3), str(old))
  with pytest.raises(ValueError, match="lr_schedule='linear'"):
    mt.Config(lr_schedule="linear").validate()


def test_cosine_run_with_a_recurrent_learning_rate_trains_and_resumes(tmp_path):
  config = tiny(task="first_term", length=4, models=("urnn_expm",), steps=4, checkpoint_every=1, num_values=4,
                diagnostics=False, learning_rate=1e-2, recurrent_learning_rate=1e-4, lr_schedule="cosine")
  straight = quiet(config, tmp_path / "a")
  saved = training.read_json(str(tmp_path / "a" / "first_term_L4" / "config.json"))
  assert (saved["lr_schedule"], saved["recurrent_learning_rate"]) == ("cosine", 1e-4)
  # Killed before its last checkpoint (orbax keeps steps 3 and 4), then resumed with the same flags.
  shutil.rmtree(tmp_path / "a" / "first_term_L4" / "urnn_expm" / "checkpoints" / "4")
  logs = []
  resumed = mt.run_experiment(config, str(tmp_path / "a"), log=logs.append, progress_stream=io.StringIO())
  assert any("resumed from step 3" in line for line in logs)
  assert resumed["rows"][0]["eval_loss"] == straight["rows"][0]["eval_loss"]


def test_data_parallel_over_two_devices_matches_one(tmp_path):
  """The batch sharded over 2 forced CPU devices (parameters replicated): the same curve as one
  device, to float32 rounding."""
  config = tiny(task="first_term", length=4, models=("urnn_expm",), steps=2, eval_every=1, num_values=4,
                diagnostics=False)
  single = quiet(config, tmp_path / "one")
  code = (
      "import sys, io\n"
      "sys.path.insert(0, 'tests')\n"
      "from test_memory_tasks import tiny, quiet\n"
      "import jax\n"
      "from urnn_jax.experiments import memory_tasks as mt\n"
      "config = tiny(task='first_term', length=4, models=('urnn_expm',), steps=2, eval_every=1, num_values=4,"
      " diagnostics=False)\n"
      "assert config.mesh().shape['data'] == 2\n"
      "logs = []\n"
      "mt.run_experiment(config, sys.argv[1], log=logs.append, progress_stream=io.StringIO())\n"
      "print([l for l in logs if 'mesh' in l][0])\n"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "two")], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "'data': 2" in proc.stdout
  two = training.read_json(str(tmp_path / "two" / "first_term_L4" / "results.json"))["results"][0]
  assert two["eval_loss"] == pytest.approx(single["rows"][0]["eval_loss"], rel=1e-5)
  with pytest.raises(ValueError, match="devices=3; only 1 local devices exist"):
    dataclasses.replace(config, devices=3).validate()
