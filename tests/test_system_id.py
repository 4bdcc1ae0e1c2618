"""Tests for urnn_jax.experiments.system_id and the train.system_id binary.

Every run here is tiny (2 realizations, 20 training sequences of 30 steps, 2
epochs); the compiled programs are cached per process, so the runs after the
first mostly reuse them.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from urnn_jax import models as registry
from urnn_jax import orthogonal
from urnn_jax import training
from urnn_jax.experiments import system_id as sid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = sid.Config(
    models=("rnn", "urnn"),
    hidden=(2, 3),
    realizations=2,
    train_sequences=20,
    test_sequences=10,
    length=30,
    epochs=2,
    checkpoint_every=0,  # every epoch (2 steps)
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def quiet(_):
  pass


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sysid_a"))
  out = sid.run(TINY, workdir, log=quiet)
  return workdir, out


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
  """A run stopped after one epoch of its first configuration (URNN, n=2), then resumed."""
  workdir = str(tmp_path_factory.mktemp("sysid_b"))
  config = dataclasses.replace(TINY, models=("urnn", "rnn"))
  half = sid.run(config, workdir, log=quiet, stop_after_steps=2)
  ckpt = os.path.join(workdir, "checkpoints", "urnn_h02")
  mid_state = None
  if os.path.isdir(ckpt):
    progs = sid.config_programs(config, "urnn", 2)
    target, _ = sid.init_carry(progs, config, 2, jnp.zeros((1, 2, 2)))
    with training.Checkpoints(ckpt) as c:
      mid_state = (c.latest_step(), c.restore(target))
  full = sid.run(config, workdir, log=quiet)
  return workdir, half, mid_state, full


def load(workdir, name):
  return training.read_json(os.path.join(workdir, "results", name + ".json"))


def test_end_to_end_writes_results_and_plot(first_run):
  workdir, out = first_run
  names = ["rnn_h02", "rnn_h03", "urnn_h02", "urnn_h03"]
  assert sorted(out["trained"]) == names and out["skipped"] == []
  for name in names:
    res = load(workdir, name)
    assert len(res["test_r2"]) == 2 and len(res["realizations"]) == 2
    assert res["steps"] == 4 and res["resumed_from_step"] == 0
    assert all(np.isfinite(res["test_r2"]))
  for f in ("config.json", "data.json", "results.csv", "summary.csv", "summary.md"):
    assert os.path.getsize(os.path.join(workdir, f)) > 0
  with open(os.path.join(workdir, "r2_vs_hidden.png"), "rb") as f:
    assert f.read(8) == PNG_MAGIC
  summary = training.read_json(os.path.join(workdir, "summary.json"))
  rows = summary["rows"]
  assert len(rows) == 4
  for row in rows:
    for k in ("median_r2", "q25_r2", "q75_r2", "optimal_r2"):
      assert np.isfinite(row[k]), (row, k)
    assert row["q25_r2"] <= row["median_r2"] <= row["q75_r2"]
  assert rows[0]["optimal_r2"] == pytest.approx(100 / 101)
  urnn = [r for r in rows if r["model"] == "urnn"]
  assert [r["adjusted_hidden"] for r in urnn] == [1.0, 1.5]
  data = training.read_json(os.path.join(workdir, "data.json"))
  assert abs(data["snr_db_measured_mean"] - 20.0) < 0.5
  assert abs(data["on_fraction_mean"] - 0.6) < 0.05


def test_rerun_skips_finished_configurations(first_run, tmp_path):
  workdir, _ = first_run
  path = os.path.join(workdir, "results", "rnn_h02.json")
  before = os.stat(path).st_mtime_ns
  out = sid.run(TINY, workdir, log=quiet)
  assert out["trained"] == []
  assert sorted(out["skipped"]) == ["rnn_h02", "rnn_h03", "urnn_h02", "urnn_h03"]
  assert os.stat(path).st_mtime_ns == before
  assert len(out["rows"]) == 4
  # A rerun with fewer models / sizes: the summary still covers every result in the workdir.
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  out = sid.run(dataclasses.replace(TINY, models=("rnn",), hidden=(2,)), copy, log=quiet)
  assert len(out["rows"]) == 4
  assert len(training.read_json(os.path.join(copy, "summary.json"))["rows"]) == 4


def test_half_finished_configuration_resumes_from_checkpoint(first_run, resumed_run):
  workdir_a, _ = first_run
  workdir, half, mid_state, full = resumed_run
  assert half["interrupted"] and half["trained"] == []
  assert mid_state is not None and mid_state[0] == 2
  assert full["trained"][0] == "urnn_h02"
  res = load(workdir, "urnn_h02")
  assert res["resumed_from_step"] == 2 and res["steps"] == 4
  # Resuming gives exactly the uninterrupted result.
  assert res["test_r2"] == load(workdir_a, "urnn_h02")["test_r2"]


def test_urnn_stays_orthogonal(first_run, resumed_run):
  workdir, _ = first_run
  for name in ("urnn_h02", "urnn_h03"):
    errs = [r["orthogonality_error"] for r in load(workdir, name)["realizations"]]
    assert len(errs) == 2 and max(errs) < 1e-5, errs
  # Also in the middle of training (the checkpoint after the first epoch).
  _, _, (_, carry), _ = resumed_run
  w = carry.state.params["rnn"]["cell"]["recurrent_kernel"]
  assert w.shape == (2, 2, 2)
  assert float(jnp.max(orthogonal.orthogonality_error(w))) < 1e-5
  # The free RNN, trained from the same orthogonal start, leaves the group.
  errs = [r["orthogonality_error"] for r in load(workdir, "rnn_h03")["realizations"]]
  assert min(errs) > 1e-3


def test_same_seed_same_r2_other_seed_differs(first_run, resumed_run, tmp_path):
  workdir_a, _ = first_run
  workdir_b, _, _, _ = resumed_run
  for name in ("rnn_h02", "rnn_h03", "urnn_h03"):
    assert load(workdir_a, name)["test_r2"] == load(workdir_b, name)["test_r2"]
  other = dataclasses.replace(TINY, models=("rnn",), hidden=(2,), seed=1)
  sid.run(other, str(tmp_path), log=quiet)
  assert load(str(tmp_path), "rnn_h02")["test_r2"] != load(workdir_a, "rnn_h02")["test_r2"]


def test_other_settings_in_same_workdir_are_refused(first_run):
  workdir, _ = first_run
  with pytest.raises(training.ConfigMismatchError, match="different configuration"):
    sid.run(dataclasses.replace(TINY, epochs=3), workdir, log=quiet)


def test_old_settings_json_resumes(first_run, tmp_path):
  """A work directory of the earlier layout (settings.json: the compared fields, seq_len) resumes."""
  workdir, _ = first_run
  config = training.read_json(os.path.join(workdir, "config.json"))
  old = {k: v for k, v in config.items() if k not in sid.RESUMABLE}
  old["seq_len"] = old.pop("length")
  training.write_json(os.path.join(tmp_path, "settings.json"), old)
  training.prepare_run_dir(str(tmp_path), TINY, resumable=sid.RESUMABLE, derived=TINY.derived(),
                           legacy_filenames=("settings.json",), renamed={"seq_len": "length"})
  assert training.read_json(os.path.join(tmp_path, "config.json")) == config
  with pytest.raises(training.ConfigMismatchError, match="length: saved 30 vs now 31"):
    sid.run(dataclasses.replace(TINY, length=31), str(tmp_path), log=quiet)


def test_diverged_realization_is_recorded_not_fatal(tmp_path):
  config = dataclasses.replace(TINY, models=("rnn",), hidden=(2,))
  data, _ = sid.make_data(config)
  bad_y = data.y_train.at[0].set(jnp.nan)  # realization 0 can only produce NaN losses
  res = sid.train_configuration(config, "rnn", 2, data._replace(y_train=bad_y), str(tmp_path),
                                log=quiet)
  assert res["n_diverged"] == 1
  assert res["realizations"][0]["diverged"] and res["realizations"][0]["diverged_step"] == 0
  assert np.isnan(res["test_r2"][0]) and np.isfinite(res["test_r2"][1])
  rows = sid.summarize([res], 0.99)
  assert rows[0]["n_diverged"] == 1 and np.isfinite(rows[0]["median_r2"])
  # When every realization diverges the configuration is recorded as diverged (not raised).
  all_bad = data._replace(y_train=jnp.full_like(data.y_train, jnp.nan))
  res = sid.train_configuration(config, "rnn", 2, all_bad, str(tmp_path / "all_bad"), log=quiet)
  assert "every realization diverged" in res["diverged"]
  assert "the last at step 1" in res["diverged"] and "No checkpoint had been written" in res["diverged"]
  assert res["n_diverged"] == config.realizations and all(np.isnan(res["test_r2"]))
  assert np.isnan(sid.summarize([res], 0.99)[0]["median_r2"])


def test_non_finite_optimizer_state_is_a_divergence():
  """A step whose parameters are finite but whose optimiser state is not is rejected too."""
  config = dataclasses.replace(TINY, models=("rnn",), hidden=(2,))
  data, _ = sid.make_data(config)

  def update(grads, state, params=None):  # no change to the parameters; inf state on huge gradients
    big = optax.tree.norm(grads) > 1e4
    return jax.tree.map(jnp.zeros_like, grads), {"s": jnp.where(big, jnp.inf, state["s"])}

  tx = optax.GradientTransformation(lambda p: {"s": jnp.zeros(())}, update)
  progs = sid.build_programs(sid.make_model("rnn", 2), tx, steps_per_epoch=2)
  carry, constants = sid.init_carry(progs, config, 2, data.x_train[0, :1, :2])
  y = data.y_train.at[0].multiply(1e8)  # realization 0: huge gradients
  carry = progs.chunk(carry, constants, data.x_train, y, jnp.asarray(sid.epoch_order(config, 0)))
  assert carry.alive.tolist() == [0, 1] and carry.diverged_step.tolist() == [0, -1]
  assert int(carry.state.step) == 2 and bool(jnp.all(jnp.isfinite(carry.state.opt_state["s"])))
  # The epoch's mean loss was recorded in the scan (the dead realization's steps count 0).
  assert float(carry.loss_history[0, 0]) == 0.0 and float(carry.loss_history[0, 1]) > 0
  assert carry.loss_sum.tolist() == [0.0, 0.0]


def test_models_and_optimizers():
  # Shapes only (jax.eval_shape traces, compiles nothing): fast.
  x = jax.ShapeDtypeStruct((1, 5, 2), jnp.float32)
  key = jax.random.key(0)
  for name in registry.MODELS:  # Every registry model.
    model = sid.make_model(name, 3)
    variables = jax.eval_shape(model.init, key, x)
    out = jax.eval_shape(model.apply, variables, x)
    assert out.shape == (1, 5, 2)
    jax.eval_shape(sid.make_optimizer(name, 0.01).init, variables["params"])
    if name in ("rnn", "urnn", "contrnn"):
      assert variables["params"]["rnn"]["cell"]["recurrent_kernel"].shape == (3, 3)
  urnn_params = jax.eval_shape(lambda k, x: sid.make_model("urnn", 3).init(k, x)["params"], key, x)
  for c in registry.CONSTRAINTS:
    jax.eval_shape(sid.make_optimizer("urnn", constraint=c).init, urnn_params)
  with pytest.raises(ValueError, match="model"):
    sid.make_model("transformer", 3)
  with pytest.raises(ValueError, match="constraint"):
    sid.make_optimizer("urnn", constraint="qr")
  with pytest.raises(ValueError, match="constraint='qr'"):
    dataclasses.replace(TINY, constraint="qr").validate()
  with pytest.raises(ValueError, match="models"):
    dataclasses.replace(TINY, models=("rnn", "mlp")).validate()
  with pytest.raises(ValueError, match="lr_schedule='step'"):
    dataclasses.replace(TINY, lr_schedule="step").validate()
  with pytest.raises(ValueError, match="grad_clip must be >= 0"):
    dataclasses.replace(TINY, grad_clip=-1.0).validate()


def test_defaults_decay_and_clip_but_paper_keeps_the_papers_optimiser():
  """The CPU-sized default adds a cosine decay and clipping; --paper is Adam 0.01 as published."""
  d = sid.Config()
  assert (d.optimizer, d.learning_rate, d.batch_size) == ("adam", 0.01, 10)
  assert (d.lr_schedule, d.grad_clip) == ("cosine", 1.0)
  assert (sid.PAPER.lr_schedule, sid.PAPER.grad_clip) == ("constant", 0.0)
  assert (sid.PAPER.realizations, sid.PAPER.train_sequences, sid.PAPER.test_sequences) == (30, 700, 300)
  # The schedule runs over the whole run: the learning rate reaches 0 at the last step.
  tx = sid.make_optimizer("rnn", 0.01, lr_schedule="cosine", total_steps=4, grad_clip=1.0)
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  for _ in range(4):
    updates, state = tx.update({"w": jnp.ones(2)}, state, params)
  updates, state = tx.update({"w": jnp.ones(2)}, state, params)
  np.testing.assert_allclose(updates["w"], 0.0, atol=1e-9)


def test_registry_models_reproduce_the_earlier_students():
  """rnn/contrnn: RNNCell relu (Haar), urnn: OrthogonalRNNCell relu; their optimisers as before."""
  from urnn_jax import cells, optim
  from urnn_jax.recurrent import SequenceRegressor

  x, key = jnp.ones((1, 4, 2)), jax.random.key(3)
  for name, cell in (("rnn", cells.RNNCell(3, activation="relu")), ("contrnn", cells.RNNCell(3, activation="relu")),
                     ("urnn", cells.OrthogonalRNNCell(3, activation="relu")),
                     ("lstm", nn.LSTMCell(3)), ("gru", nn.GRUCell(3))):
    got = sid.make_model(name, 3)
    assert type(got.cell) is type(cell) and getattr(got.cell, "activation", None) == getattr(cell, "activation", None)
    jax.tree.map(np.testing.assert_array_equal, got.init(key, x), SequenceRegressor(cell, 2).init(key, x))
  w = 2.0 * jnp.eye(3).at[0, 1].set(0.5)
  params = {"rnn": {"cell": {"recurrent_kernel": w}}}
  grads = {"rnn": {"cell": {"recurrent_kernel": jnp.ones((3, 3))}}}
  for name, constraint, expected in (
      ("urnn", "projection", optim.orthogonal_projection(method="svd")),
      ("urnn", "cayley", optim.cayley_retraction()),
      ("contrnn", "projection", optim.spectral_norm_projection(max_value=1.0)),
  ):
    got = sid.make_optimizer(name, 0.01, constraint=constraint)
    want = optim.constrained(training.make_optimizer("adam", 0.01), expected)
    a = got.update(grads, got.init(params), params)[0]
    b = want.update(grads, want.init(params), params)[0]
    np.testing.assert_array_equal(a["rnn"]["cell"]["recurrent_kernel"], b["rnn"]["cell"]["recurrent_kernel"])


def test_other_registry_models_run(tmp_path):
  """Models beyond the paper's (a parametrised uRNN, the GRU) train here too, in registry order."""
  config = dataclasses.replace(TINY, models=("gru", "urnn_param_expm"), hidden=(2,), epochs=1)
  out = sid.run(config, str(tmp_path), log=quiet)
  assert [r["model"] for r in out["rows"]] == ["urnn_param_expm", "gru"]
  assert [r["adjusted_hidden"] for r in out["rows"]] == [1.0, 2]
  res = load(str(tmp_path), "urnn_param_expm_h02")
  assert all(np.isfinite(res["test_r2"]))
  assert max(r["orthogonality_error"] for r in res["realizations"]) < 1e-5
  assert load(str(tmp_path), "gru_h02")["realizations"][0]["orthogonality_error"] is None
  sid.plot(out["rows"] + [{**out["rows"][0], "model": "not_in_the_registry"}], 0.99,
           str(tmp_path / "other.png"))  # Unknown models: default label, colour and marker.


def test_finding_lines():
  rows = [
      {"model": "rnn", "hidden": 2, "median_r2": 0.5},
      {"model": "rnn", "hidden": 4, "median_r2": 0.9},
      {"model": "urnn", "hidden": 4, "median_r2": 0.45},
      {"model": "urnn", "hidden": 8, "median_r2": 0.92},
  ]
  text = "\n".join(sid.finding_lines(rows, 0.99))
  assert "n= 2: RNN 0.5000 | URNN(2n= 4) 0.4500" in text
  assert "n= 4: RNN 0.9000 | URNN(2n= 8) 0.9200 | difference +0.0200" in text


def test_binary_paper_flag_with_overrides(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # --seq_len: the older name of --length.
  cmd = [sys.executable, "-m", "train.system_id", "--paper", "--models=rnn", "--hidden=2",
         "--train_sequences=10", "--test_sequences=5", "--seq_len=20", "--epochs=1",
         f"--workdir={tmp_path}"]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # --paper set the realizations (30); the explicit flags won over its sizes.
  assert "realizations=30" in proc.stdout and "length=20" in proc.stdout
  assert "| rnn | 2 |" in proc.stdout
  settings = json.load(open(os.path.join(tmp_path, "config.json")))
  assert settings["realizations"] == 30 and settings["train_sequences"] == 10
  assert settings["length"] == 20 and settings["teacher"]["seq_len"] == 20
  with open(os.path.join(tmp_path, "r2_vs_hidden.png"), "rb") as f:
    assert f.read(8) == PNG_MAGIC
  # Errors are one-line usage errors: a bad value, a bad field, another run's workdir.
  for flag, message in (("--hidden=2,x", "--hidden must be int values"),
                        ("--models=rnn,mlp", "unknown ['mlp']"),
                        ("--epochs=2", "different configuration (epochs: saved 1 vs now 2")):
    proc = subprocess.run(cmd + [flag], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_realizations_sharded_over_devices_give_the_same_results(first_run, tmp_path):
  """2 forced CPU devices, one realization each (sharded jit): the same R^2 as one device, to
  float32 rounding (another compiled program; bit-identical only on one device)."""
  workdir, _ = first_run
  code = (
      "import dataclasses, sys\n"
      "sys.path.insert(0, 'tests')\n"
      "from test_system_id import TINY, quiet\n"
      "from urnn_jax.experiments import system_id as sid\n"
      "import jax\n"
      "assert jax.local_device_count() == 2\n"
      "assert TINY.mesh().shape['realizations'] == 2\n"
      "try:\n"
      "  dataclasses.replace(TINY, devices=3).validate()\n"
      "except ValueError as e:\n"
      "  print('ERROR', e)\n"
      "sid.run(dataclasses.replace(TINY, models=('urnn',), hidden=(2,)), sys.argv[1], log=quiet)\n"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ERROR devices=3; only 2 local devices exist" in proc.stdout
  sharded, single = load(str(tmp_path), "urnn_h02"), load(workdir, "urnn_h02")
  np.testing.assert_allclose(sharded["test_r2"], single["test_r2"], rtol=1e-4)
  np.testing.assert_allclose(sharded["loss_history"], single["loss_history"], rtol=1e-5)
  assert training.read_json(os.path.join(str(tmp_path), "config.json"))["devices"] == 0
