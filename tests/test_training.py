"""Tests for urnn_jax.training: checkpoints, divergence checks, progress, files."""

import dataclasses
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import urnn_jax
from urnn_jax import training


def _state():
  model = urnn_jax.SequenceRegressor(urnn_jax.RNNCell(4), 2)
  params = model.init(jax.random.key(0), jnp.ones((1, 5, 3)))["params"]
  return training.create_train_state(params, optax.adam(1e-3))


def test_checkpoint_round_trip_keeps_structure(tmp_path):
  state = _state()
  state = state._replace(step=jnp.asarray(7, jnp.int32))
  ckpt = training.Checkpoints(tmp_path / "ckpt")
  assert ckpt.latest_step() is None
  assert ckpt.restore(state) is None
  assert ckpt.save(7, state)
  restored = ckpt.restore(jax.tree.map(jnp.zeros_like, state))
  assert isinstance(restored, training.TrainState)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)
  # A fresh manager on the same directory finds it (resume after a kill).
  assert training.Checkpoints(tmp_path / "ckpt").latest_step() == 7


def test_non_finite_state_is_never_saved(tmp_path):
  state = _state()
  ckpt = training.Checkpoints(tmp_path)
  assert ckpt.save(1, state)
  bad = jax.tree.map(lambda a: a * jnp.nan if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
  assert not ckpt.save(2, bad)
  assert ckpt.latest_step() == 1


def test_max_to_keep(tmp_path):
  ckpt = training.Checkpoints(tmp_path, max_to_keep=2)
  for step in range(5):
    ckpt.save(step, {"w": jnp.full((2,), float(step))})
  assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [3, 4]


def test_check_finite_raises_with_names():
  training.check_finite({"loss": 1.0, "r2": np.array([0.1, 0.2])})
  with pytest.raises(training.DivergenceError, match=r"at epoch 3.*loss=nan"):
    training.check_finite({"loss": float("nan"), "ok": 1.0}, where="epoch 3")
  with pytest.raises(training.DivergenceError, match="grad_norm"):
    training.check_finite({"grad_norm": np.array([1.0, np.inf])})


def test_progress_reports_eta():
  out = io.StringIO()
  p = training.Progress(4, "train", stream=out, min_interval=0.0)
  p.update(postfix="loss=1.0")
  p.update(3)
  text = out.getvalue()
  assert "train" in text and "1/4" in text and "4/4" in text and "100%" in text
  assert "ETA" in text and "loss=1.0" in text
  # Resumed progress starts from `initial`.
  out2 = io.StringIO()
  training.Progress(10, stream=out2, initial=6, min_interval=0.0).update()
  assert "7/10" in out2.getvalue()


def test_results_files(tmp_path):
  training.write_json(tmp_path / "r.json", {"a": np.float32(0.5), "b": jnp.arange(3), "c": float("nan")})
  data = json.loads((tmp_path / "r.json").read_text())
  assert data == {"a": 0.5, "b": [0, 1, 2], "c": None}
  training.write_csv(tmp_path / "r.csv", [{"x": 1, "y": 2.5}, {"x": 2, "z": "q"}])
  lines = (tmp_path / "r.csv").read_text().splitlines()
  assert lines[0] == "x,y,z" and lines[1] == "1,2.5," and lines[2] == "2,,q"
  table = training.markdown_table([{"model": "rnn", "r2": 0.91234}])
  assert table.splitlines()[0] == "| model | r2 |" and "0.9123" in table


def test_batch_indices_is_a_seeded_partition():
  idx = training.batch_indices(jax.random.key(0), 23, 5)
  assert idx.shape == (4, 5)
  assert len(set(idx.ravel().tolist())) == 20
  np.testing.assert_array_equal(idx, training.batch_indices(jax.random.key(0), 23, 5))
  assert not np.array_equal(idx, training.batch_indices(jax.random.key(1), 23, 5))
  with pytest.raises(ValueError, match="batch_size must be in"):
    training.batch_indices(jax.random.key(0), 3, 5)


def test_save_figure_writes_png(tmp_path):
  plt = training.pyplot()
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  training.save_figure(fig, str(tmp_path / "f.png"))
  assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_make_optimizer_schedule_clip_and_errors():
  params = {"w": jnp.ones((3,))}
  grads = {"w": jnp.full((3,), 100.0)}
  # Cosine: the peak learning rate at step 0, ~0 at the end; SGD makes it visible.
  tx = training.make_optimizer("sgd", 0.5, lr_schedule="cosine", total_steps=10)
  state = tx.init(params)
  sizes = []
  for _ in range(10):
    updates, state = tx.update({"w": jnp.ones((3,))}, state, params)
    sizes.append(float(-updates["w"][0]))
  np.testing.assert_allclose(sizes[0], 0.5, rtol=1e-6)
  np.testing.assert_allclose(sizes[5], 0.25, rtol=1e-5)  # half way down the cosine
  assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 0.03
  # Clipping: the update of a huge gradient has the clipped global norm.
  tx = training.make_optimizer("sgd", 1.0, grad_clip=2.0)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(float(jnp.linalg.norm(updates["w"])), 2.0, rtol=1e-6)
  # Constant Adam is optax.adam.
  tx = training.make_optimizer("adam", 1e-2)
  want, _ = optax.adam(1e-2).update(grads, optax.adam(1e-2).init(params), params)
  got, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(got["w"], want["w"])
  for kwargs, pattern in [
      (dict(optimizer="lamb"), "optimizer='lamb'"),
      (dict(learning_rate=0.0), "learning_rate must be > 0"),
      (dict(grad_clip=-1.0), "grad_clip must be >= 0"),
      (dict(lr_schedule="linear"), "lr_schedule='linear'"),
      (dict(lr_schedule="cosine"), "needs total_steps"),
      (dict(recurrent_learning_rate=0.0), "recurrent_learning_rate must be None or > 0"),
      (dict(recurrent_learning_rate=float("nan")), "recurrent_learning_rate must be None or > 0"),
  ]:
    with pytest.raises(ValueError, match=pattern):
      training.make_optimizer(**kwargs)


def test_make_optimizer_recurrent_learning_rate():
  """The recurrent matrices step at their own rate, under the same schedule; other leaves do not."""
  params = {"cell": {"recurrent_kernel": jnp.ones((2, 2)), "input": {"kernel": jnp.ones((2, 2))}}}
  grads = jax.tree.map(jnp.ones_like, params)
  tx = training.make_optimizer("sgd", 0.5, recurrent_learning_rate=0.05, lr_schedule="cosine", total_steps=10)
  state = tx.init(params)
  for step in range(3):
    updates, state = tx.update(grads, state, params)
    lr = 0.5 * 0.5 * (1 + np.cos(np.pi * step / 10))
    np.testing.assert_allclose(updates["cell"]["input"]["kernel"], -lr, rtol=1e-6)
    np.testing.assert_allclose(updates["cell"]["recurrent_kernel"], -lr / 10, rtol=1e-6)
  # Adam: the recurrent step is the plain Adam step times the ratio.
  tx = training.make_optimizer("adam", 1e-2, recurrent_learning_rate=1e-3)
  want, _ = optax.adam(1e-2).update(grads, optax.adam(1e-2).init(params), params)
  got, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(got["cell"]["recurrent_kernel"], 0.1 * want["cell"]["recurrent_kernel"], rtol=1e-6)
  np.testing.assert_allclose(got["cell"]["input"]["kernel"], want["cell"]["input"]["kernel"])


# ----------------------------------------------------------------------------
# The shared step and loop.


def _linear_problem():
  """A least-squares problem: w -> 0 under SGD; batches drawn from fold_in(key, step)."""
  key = jax.random.key(3)
  tx = optax.sgd(0.1)

  def loss_fn(params, batch):
    loss = jnp.mean((batch @ params["w"]) ** 2)
    return loss, {"batch_mean": jnp.mean(batch)}

  step = jax.jit(training.make_train_step(loss_fn, tx))
  batch_fn = lambda s: jax.random.normal(jax.random.fold_in(key, s), (4, 2))
  state = training.create_train_state({"w": jnp.ones(2)}, tx)
  return state, step, batch_fn


def test_make_train_step_is_value_and_grad_then_tx():
  state, step, batch_fn = _linear_problem()
  new, metrics = step(state, batch_fn(0))
  b = batch_fn(0)
  grad = jax.grad(lambda w: jnp.mean((b @ w) ** 2))(state.params["w"])
  np.testing.assert_allclose(new.params["w"], state.params["w"] - 0.1 * grad, rtol=1e-6)
  assert int(new.step) == 1 and bool(metrics["finite"])
  np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(grad), rtol=1e-6)
  assert set(metrics) == {"loss", "batch_mean", "grad_norm", "finite"}


def test_a_non_finite_optimiser_state_is_a_divergence():
  # Adam's second moment overflows to inf while the loss and parameters stay finite.
  tx = optax.adam(1e-3)
  step = training.make_train_step(lambda p, b: (jnp.sum(p["w"] * b), {}), tx)
  state = training.create_train_state({"w": jnp.ones(2)}, tx)
  _, metrics = step(state, jnp.full((2,), 1e30))
  assert np.isfinite(metrics["loss"])
  assert not bool(metrics["finite"])


def _fit(state, step, batch_fn, directory, **kw):
  kw.setdefault("total_steps", 10)
  kw.setdefault("eval_every", 4)
  evaluate = kw.pop("evaluate", lambda s: {"w0": float(s.params["w"][0])})
  return training.fit(state, training.stepwise(step, batch_fn), checkpoint_dir=str(directory / "ckpt"),
                      history_path=str(directory / "history.json"), evaluate=evaluate,
                      log=lambda *a: None, progress_stream=io.StringIO(), **kw)


def test_fit_evaluates_checkpoints_and_resumes_exactly(tmp_path):
  state, step, batch_fn = _linear_problem()
  straight = _fit(state, step, batch_fn, tmp_path / "a", checkpoint_every=3, eval_at_start=True)
  assert [h["step"] for h in straight.history] == [0, 4, 8, 10]
  assert int(straight.state.step) == 10 and straight.diverged is None
  # checkpoint_every=3: steps 3, 6, 9 and the end; orbax keeps the last two.
  assert sorted(int(d) for d in os.listdir(tmp_path / "a" / "ckpt") if d.isdigit()) == [9, 10]
  # "last": the train_* entries are the metrics of the evaluation's step.
  assert straight.history[1]["train_steps"] == 4
  # Killed after step 6's checkpoint, then resumed: the same history and parameters.
  cut = _fit(state, step, batch_fn, tmp_path / "b", checkpoint_every=3, eval_at_start=True, stop_after=6)
  assert cut.interrupted and int(cut.state.step) == 6
  resumed = _fit(state, step, batch_fn, tmp_path / "b", checkpoint_every=3, eval_at_start=True)
  assert resumed.resumed_from == 6
  np.testing.assert_array_equal(resumed.state.params["w"], straight.state.params["w"])
  strip = lambda hs: [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in hs]
  assert strip(resumed.history) == strip(straight.history)


def test_the_history_travels_with_the_checkpoint(tmp_path):
  """A kill between the checkpoint and history.json (or a lost history file) loses nothing."""
  state, step, batch_fn = _linear_problem()
  done = _fit(state, step, batch_fn, tmp_path, checkpoint_every=0)
  assert [h["step"] for h in done.history] == [4, 8, 10]
  saved = training.read_json(str(tmp_path / "history.json"))
  saved["history"] = saved["history"][:-1]  # as if killed before history.json was written
  training.write_json(str(tmp_path / "history.json"), saved)
  again = _fit(state, step, batch_fn, tmp_path, checkpoint_every=0)
  assert [h["step"] for h in again.history] == [4, 8, 10]
  assert again.history[-1]["w0"] == done.history[-1]["w0"]
  assert [h["step"] for h in training.read_json(str(tmp_path / "history.json"))["history"]] == [4, 8, 10]


def test_fit_mean_train_metrics_and_early_stopping(tmp_path):
  state, step, batch_fn = _linear_problem()
  values = iter([0.1, 0.5, 0.4, 0.3, 0.2])
  out = _fit(state, step, batch_fn, tmp_path, total_steps=10, eval_every=2, train_metrics="mean",
             evaluate=lambda s: {"val": next(values)}, early_stopping=training.EarlyStopping(2),
             monitor="val", best_dir=str(tmp_path / "best"))
  assert [h["val"] for h in out.history] == [0.1, 0.5, 0.4, 0.3]
  assert out.stopped_early and out.early_stopping.best_epoch == 1 and int(out.state.step) == 8
  means = [float(np.mean(np.asarray(batch_fn(s)))) for s in (2, 3)]
  assert out.history[1]["train_batch_mean"] == pytest.approx(sum(means) / 2, rel=1e-6)
  assert training.Checkpoints(tmp_path / "best").latest_step() == 4
  np.testing.assert_array_equal(out.best_params["w"], training.Checkpoints(tmp_path / "best").restore(
      out.state.params)["w"])


def test_fit_stops_on_divergence_with_a_true_message(tmp_path):
  state, step, _ = _linear_problem()
  bad = lambda s: jnp.full((4, 2), jnp.nan if s >= 5 else 1.0)
  out = _fit(state, step, bad, tmp_path, total_steps=10, eval_every=2, checkpoint_every=2)
  assert out.diverged["step"] == 6
  assert "The last good checkpoint (step 4) was kept" in out.diverged["message"]
  assert training.Checkpoints(tmp_path / "ckpt").latest_step() == 4
  # Resuming the same run reports the divergence instead of repeating it.
  again = _fit(state, step, bad, tmp_path, total_steps=10, eval_every=2, checkpoint_every=2)
  assert again.diverged == out.diverged
  # Diverged before any checkpoint: the message says none was written.
  early = _fit(state, step, lambda s: jnp.full((4, 2), jnp.nan), tmp_path / "e", total_steps=4, eval_every=2)
  assert early.diverged["step"] == 1 and "No checkpoint had been written yet" in early.diverged["message"]


def test_fit_refuses_a_checkpoint_past_the_end(tmp_path):
  state, step, batch_fn = _linear_problem()
  _fit(state, step, batch_fn, tmp_path, total_steps=6)
  with pytest.raises(ValueError, match="at step 6 > 4"):
    _fit(state, step, batch_fn, tmp_path, total_steps=4)


# ----------------------------------------------------------------------------
# The run directory.


@dataclasses.dataclass(frozen=True)
class _Config:
  lr: float = 0.1
  steps: int = 5
  name: str = "a"


def test_prepare_run_dir_one_rule(tmp_path):
  d = str(tmp_path / "run")
  training.prepare_run_dir(d, _Config(), resumable=("steps",))
  training.prepare_run_dir(d, _Config(steps=9), resumable=("steps",))  # resumable: may change
  with pytest.raises(training.ConfigMismatchError, match=r"lr: saved 0.1 vs now 0.2, name: saved 'a' vs now 'b'"):
    training.prepare_run_dir(d, _Config(lr=0.2, name="b"), resumable=("steps",))
  # A field the saved file predates is read at its default.
  training.write_json(os.path.join(d, "config.json"), {"lr": 0.1, "steps": 5})
  training.prepare_run_dir(d, _Config(), resumable=("steps",))
  with pytest.raises(training.ConfigMismatchError, match="name: saved 'a' vs now 'c'"):
    training.prepare_run_dir(d, _Config(name="c"), resumable=("steps",))
  # Derived entries are compared; a legacy file name is read.
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  training.write_json(str(legacy / "settings.json"), {"lr": 0.1, "name": "a", "teacher": {"n": 4}})
  with pytest.raises(training.ConfigMismatchError, match="teacher"):
    training.prepare_run_dir(str(legacy), _Config(), resumable=("steps",), derived={"teacher": {"n": 5}},
                             legacy_filenames=("settings.json",))
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match="cannot be created"):
    training.prepare_run_dir(str(tmp_path / "file" / "run"), _Config())


def test_collect_json(tmp_path):
  for name in ("b", "a"):
    training.write_json(str(tmp_path / name / "results.json"), {"name": name})
  (tmp_path / "c").mkdir()
  assert [r["name"] for r in training.collect_json(str(tmp_path))] == ["a", "b"]
  assert training.collect_json(str(tmp_path / "missing")) == []


# ----------------------------------------------------------------------------
# Damaged checkpoints.


def _data_files(step_dir):
  """The orbax data files (under ``d/`` folders) of a step's state item."""
  return sorted(os.path.join(root, f) for root, _, files in os.walk(step_dir)
                if os.path.basename(root) == "d" for f in files)


def _two_checkpoints(tmp_path):
  state = _state()
  ckpt = training.Checkpoints(tmp_path / "c", max_to_keep=3)
  ckpt.save(1, state, meta={"history": [1]})
  later = jax.tree.map(lambda a: a + 1 if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
  ckpt.save(2, later, meta={"history": [1, 2]})
  return state, ckpt


@pytest.mark.parametrize("damage", ["flip", "truncate", "metadata", "empty"])
def test_a_damaged_checkpoint_is_reported_and_the_previous_one_used(tmp_path, damage):
  state, ckpt = _two_checkpoints(tmp_path)
  step_dir = tmp_path / "c" / "2"
  # orbax (OCDBT) may keep a data file in more than one place and read only one: damage every one.
  if damage == "flip":  # same size, 16 bytes changed at 8 places of each data file
    for path in _data_files(step_dir / "state"):
      data = bytearray(open(path, "rb").read())
      for at in range(len(data) // 16, len(data) - 16, max(len(data) // 8, 16)):
        data[at:at + 16] = bytes(255 - b for b in data[at:at + 16])
      open(path, "wb").write(bytes(data))
  elif damage == "truncate":
    for path in _data_files(step_dir / "state"):
      open(path, "r+b").truncate(os.path.getsize(path) // 3)
  elif damage == "metadata":
    (step_dir / "state" / "_METADATA").write_text("{junk")
  else:
    for root, dirs, files in os.walk(step_dir, topdown=False):
      for f in files:
        os.remove(os.path.join(root, f))
      for d in dirs:
        os.rmdir(os.path.join(root, d))
  with pytest.raises(training.CheckpointError, match="checkpoint step 2"):
    training.Checkpoints(tmp_path / "c").restore(state, step=2)
  logs = []
  step, restored, meta = training.Checkpoints(tmp_path / "c", max_to_keep=3).restore_latest_good(
      state, log=logs.append)
  assert step == 1 and meta == {"history": [1]}
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)
  assert len(logs) == 1 and "checkpoint step 2" in logs[0] and "falling back" in logs[0]
  assert not (tmp_path / "c" / "2").exists()  # set aside, so step 2 can be written again
  assert any(d.startswith("damaged-2-") for d in os.listdir(tmp_path / "c"))


def test_no_usable_checkpoint_starts_over(tmp_path):
  state, ckpt = _two_checkpoints(tmp_path)
  for step in (1, 2):
    (tmp_path / "c" / str(step) / "state" / "_METADATA").write_text("{junk")
  logs = []
  assert training.Checkpoints(tmp_path / "c").restore_latest_good(state, log=logs.append) is None
  assert len(logs) == 3 and "starting over" in logs[-1]


def test_a_checkpoint_of_the_earlier_single_item_format_restores(tmp_path):
  import orbax.checkpoint as ocp

  state = {"w": jnp.arange(3.0)}
  with ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(
      enable_async_checkpointing=False)) as manager:
    manager.save(3, args=ocp.args.StandardSave(state))
  ckpt = training.Checkpoints(tmp_path)
  restored, meta = ckpt.restore_with_meta({"w": jnp.zeros(3)})
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert meta is None
  assert ckpt.save(4, {"w": jnp.ones(3)}, meta={"history": []})  # the same manager goes on saving
  assert ckpt.restore_with_meta({"w": jnp.zeros(3)})[1] == {"history": []}


def test_restore_target_keeps_every_array_leaf_sharding():
  # A one-device array keeps its device (a checkpoint of several processes or devices
  # restores onto it); NumPy leaves get none (restored as they were saved).
  x = jnp.ones((2, 3))
  target = training.restore_target({"x": x, "n": np.zeros(2, np.float32), "s": jax.ShapeDtypeStruct((4,), jnp.int32)})
  assert target["x"].shape == (2, 3) and target["x"].sharding == x.sharding
  assert target["n"].sharding is None and target["n"].dtype == np.float32
  assert target["s"].shape == (4,)


def test_only_process_zero_writes_files_and_reports(tmp_path, monkeypatch):
  monkeypatch.setattr(training, "is_primary", lambda: False)  # as in process 1 of a run
  training.write_json(str(tmp_path / "a.json"), {"a": 1})
  training.write_tables(str(tmp_path), "t", [{"a": 1}])
  training.prepare_run_dir(str(tmp_path / "run"), dataclasses.make_dataclass("C", [("a", int, 1)])())
  assert sorted(p.name for p in tmp_path.rglob("*")) == ["run"]  # the directory, no file in it
  lines, stream = [], io.StringIO()
  step = lambda state, batch: ({"n": state["n"] + 1}, {"loss": jnp.asarray(1.0)})
  run = lambda total: training.fit(
      {"n": jnp.zeros((), jnp.int32)}, training.stepwise(step, lambda s: None), total_steps=total,
      checkpoint_dir=str(tmp_path / "ckpt"), history_path=str(tmp_path / "history.json"), params_of=lambda s: s,
      step_of=lambda s: s["n"], log=lines.append, progress_stream=stream)
  out = run(2)
  assert int(out.state["n"]) == 2 and out.history[-1]["step"] == 2
  with training.Checkpoints(tmp_path / "ckpt") as c:  # every process saves its checkpoints (orbax)
    assert c.latest_step() == 2
  out = run(3)  # resumes: the message is process 0's
  assert int(out.state["n"]) == 3 and out.resumed_from == 2
  assert lines == [] and stream.getvalue() == "" and not (tmp_path / "history.json").exists()
  monkeypatch.setattr(training, "is_primary", lambda: True)  # process 0: the same calls report and write
  run(4)
  assert lines == ["[] resumed from step 3"] and "4/4" in stream.getvalue() and (tmp_path / "history.json").exists()
