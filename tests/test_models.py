"""Tests for urnn_jax.models: the registry every binary builds its models from."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import urnn_jax
from urnn_jax import models, orthogonal


def _params(name, options, m=3):
  layer = urnn_jax.Recurrent(models.make_cell(name, options))
  variables = layer.init(jax.random.key(0), jnp.ones((2, 5, m)))
  return layer, variables


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_entry_builds_a_cell_and_an_optimizer_that_steps(name):
  options = models.ModelOptions(hidden=4, activation="tanh", contraction=0.9)
  layer, variables = _params(name, options)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  tx = models.make_tx(name, optax.sgd(0.1), options)
  opt_state = tx.init(params)
  x = jax.random.normal(jax.random.key(1), (2, 5, 3))
  # |y|^2: the complex entries' states are complex (the loss stays real).
  grads = jax.grad(lambda p: jnp.sum(jnp.abs(layer.apply({"params": p, **rest}, x)) ** 2))(params)
  updates, _ = tx.update(grads, opt_state, params)
  new = optax.apply_updates(params, updates)
  spec = models.get(name)
  cell = models.make_cell(name, options)
  assert isinstance(cell, nn.RNNCellBase)
  if isinstance(cell, urnn_jax.UnitaryRNNCell):  # complex: W unitary after the step, and it moved
    kernel = layer.apply({"params": new, **rest}, method=lambda m: m.cell.transition_kernel())
    before = layer.apply(variables, method=lambda m: m.cell.transition_kernel())
    assert kernel.dtype == jnp.complex64 and float(orthogonal.orthogonality_error(kernel)) < 1e-5
    assert float(jnp.max(jnp.abs(kernel - before))) > 1e-4
  if spec.eq1:
    assert cell.activation == "tanh"
    kernel = layer.apply({"params": new, **rest}, method=lambda m: m.cell.transition_kernel())
    sigma = np.linalg.svd(np.asarray(kernel), compute_uv=False)
    if spec.orthogonal:
      assert float(orthogonal.orthogonality_error(kernel)) < 1e-5
    elif name == "contrnn":
      assert sigma.max() <= 0.9 + 1e-5
  assert isinstance(spec.description, str) and spec.description


def test_the_entries_match_the_seeds_models():
  o = models.ModelOptions(hidden=5)
  assert type(models.make_cell("rnn", o)) is urnn_jax.RNNCell
  urnn = models.make_cell("urnn", o)
  assert type(urnn) is urnn_jax.OrthogonalRNNCell and urnn.parametrization is None
  assert models.make_cell("urnn_param_cayley", o).parametrization == "cayley"
  assert type(models.make_cell("lstm", o)) is nn.LSTMCell
  assert models.get("urnn").constraint is not None and models.get("rnn").constraint is None
  assert models.get("urnn_param_expm").constraint is None
  assert models.adjusted_hidden("urnn", 8) == 4 and models.adjusted_hidden("rnn", 8) == 8
  assert not models.get("lstm").eq1 and models.get("contrnn").eq1


def test_the_complex_entries_and_their_default_constraint():
  o = models.ModelOptions(hidden=5)
  cell = models.make_cell("urnn_complex", o)
  assert type(cell) is urnn_jax.UnitaryRNNCell and cell.features == 5 and cell.parametrization is None
  assert models.make_cell("urnn_param_complex_expm", o).parametrization == "expm"
  assert models.make_cell("urnn_param_complex_cayley", o).parametrization == "cayley"
  for name in ("urnn_complex", "urnn_param_complex_expm", "urnn_param_complex_cayley"):
    assert not models.get(name).eq1 and not models.get(name).orthogonal
  assert models.get("urnn_param_complex_expm").constraint is None
  # constraint=None is each model's default: Cayley (full-capacity) for urnn_complex, SVD for urnn.
  w = urnn_jax.initializers.haar()(jax.random.key(0), (4, 4), jnp.complex64)
  params = {"recurrent_kernel": w}
  u = 0.05 * (jax.random.normal(jax.random.key(1), (4, 4)) + 0j).astype(jnp.complex64)

  def step(name, constraint):
    tx = models.get(name).constraint(models.ModelOptions(hidden=4, constraint=constraint))
    return tx.update({"recurrent_kernel": u}, tx.init(params), params)[0]["recurrent_kernel"]

  from urnn_jax import optim
  for name, default in (("urnn_complex", optim.cayley_retraction()), ("urnn", optim.orthogonal_projection())):
    want = default.update({"recurrent_kernel": u}, default.init(params), params)[0]["recurrent_kernel"]
    np.testing.assert_array_equal(step(name, None), want)
  np.testing.assert_array_equal(step("urnn_complex", "projection"), step("urnn", None))


def test_the_urnn_constraint_follows_the_option():
  # cayley / expm retractions carry a step counter; the projection is stateless.
  params = {"recurrent_kernel": jnp.eye(3)}
  for name in models.CONSTRAINTS:
    tx = models.orthogonal_constraint(name, reproject_every=2)
    tx.init(params)
  with pytest.raises(ValueError, match="constraint='qr'"):
    models.orthogonal_constraint("qr")


def test_bad_names_and_options_are_refused():
  with pytest.raises(ValueError, match="model='nope'; expected one of"):
    models.get("nope")
  with pytest.raises(ValueError, match=r"models=\['rnn', 'x'\]: unknown \['x'\]"):
    models.check_names(["rnn", "x"])
  with pytest.raises(ValueError, match="has duplicates"):
    models.check_names(["rnn", "rnn"])
  with pytest.raises(ValueError, match="unknown"):
    models.check_names([])
  for kw, match in [({"hidden": 0}, "hidden must be a positive int"),
                    ({"hidden": True}, "hidden must be a positive int"),
                    ({"activation": "gelu"}, "activation='gelu'"),
                    ({"rnn_init": "zeros"}, "rnn_init='zeros'"),
                    ({"constraint": "qr"}, "constraint='qr'"),
                    ({"reproject_every": -1}, "reproject_every must be an int >= 0"),
                    ({"contraction": 0.0}, "contraction must be a finite number > 0")]:
    with pytest.raises(ValueError, match=match):
      models.ModelOptions(**{"hidden": 4, **kw}).validate()


def test_a_new_entry_is_one_line(monkeypatch):
  spec = models.ModelSpec(lambda o: urnn_jax.RNNCell(o.hidden, activation="abs"), None, True, False, "abs RNN")
  monkeypatch.setitem(models.MODELS, "abs_rnn", spec)
  assert models.check_names(["abs_rnn"]) == ("abs_rnn",)
  assert models.make_cell("abs_rnn", models.ModelOptions(hidden=3)).activation == "abs"


# One entry, added the way a user would (before the binary defines its flags), runs in every
# training binary: the binaries take their models from the registry, nothing else to edit.
_REGISTER = (
    "import sys, urnn_jax\n"
    "from urnn_jax import models\n"
    "models.MODELS['abs_rnn'] = models.ModelSpec(\n"
    "    lambda o: urnn_jax.RNNCell(o.hidden, activation='abs'), None, True, False, 'abs RNN')\n"
    "from absl import app\n"
    "import importlib\n"
    "binary = importlib.import_module(sys.argv[1])\n"
    "binary.define_flags()\n"
    "sys.argv = sys.argv[1:]\n"
    "app.run(binary.main)\n"
)


@pytest.fixture(scope="module")
def tiny_idx(tmp_path_factory):
  import sys as _sys
  _sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from test_images import write_tiny_idx
  d = tmp_path_factory.mktemp("idx")
  write_tiny_idx(d, n_train=30, n_test=10)
  return str(d)


@pytest.mark.parametrize("binary,args,result", [
    ("train.system_id", ["--models=abs_rnn", "--hidden=2", "--realizations=2", "--train_sequences=4",
                         "--test_sequences=2", "--length=10", "--epochs=1", "--batch_size=2"],
     "results/abs_rnn_h02.json"),
    ("train.memory_tasks", ["--models=abs_rnn", "--task=first_term", "--length=4", "--hidden=4", "--steps=2",
                            "--eval_every=2", "--eval_size=4", "--eval_batch=4", "--batch_size=4",
                            "--nodiagnostics"], "first_term_L4/results.json"),
    ("train.permuted_mnist", ["--model=abs_rnn", "--source=idx", "--hidden=4", "--batch_size=5", "--epochs=1",
                              "--num_validation=5", "--max_steps_per_epoch=1", "--eval_batch=8"], "summary.json"),
])
def test_a_model_added_to_the_registry_runs_in_every_binary(tmp_path, tiny_idx, binary, args, result):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  extra = [f"--data_dir={tiny_idx}"] if binary == "train.permuted_mnist" else []
  proc = subprocess.run([sys.executable, "-c", _REGISTER, binary, *args, *extra, f"--workdir={tmp_path}"],
                        cwd=root, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "abs_rnn" in json.dumps(json.load(open(tmp_path / result)))
