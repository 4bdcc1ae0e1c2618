"""Tests for urnn_jax.training: checkpoints, divergence checks, progress, files."""

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
