"""Tests for urnn_jax.experiments.equivalence: the theorems' demonstrations (float64).

The constructions and bounds they use are tested in test_theory.py; the
binary ``python -m train.equivalence`` end to end in
test_equivalence_binary.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from urnn_jax import theory
from urnn_jax.experiments import equivalence


def _inputs(seed, m, bound, batch, steps):
  """Inputs with ||x(k)|| <= bound: half of the steps on the sphere, half inside."""
  rng = np.random.default_rng(1000 + seed)
  g = rng.standard_normal((batch, steps, m))
  g /= np.linalg.norm(g, axis=-1, keepdims=True)
  radius = np.where(rng.random((batch, steps, 1)) < 0.5, 1.0, rng.random((batch, steps, 1)))
  return jnp.asarray(bound * radius * g)


def test_bound_violation_demo_breaks_above_the_threshold(x64):
  demo = equivalence.bound_violation_demo()
  assert demo["threshold_factor"] == pytest.approx(2 / np.sqrt(3))
  for row in demo["rows"]:
    if row["factor"] <= 1.0:
      assert row["max_abs_dy"] == 0.0
    if row["factor"] > demo["threshold_factor"]:
      assert row["max_abs_dy"] > 0.1


def test_one_state_urnn_cannot_fit_scalar_relu_rnn(x64):
  """Theorem 3.2's n = 1 case, as a demonstration: W = +-1 leaves a residual."""
  target = theory.channel_rnn([0.5])
  x_train = _inputs(61, 1, 1.0, batch=16, steps=32)
  x_test = _inputs(62, 1, 1.0, batch=16, steps=32)
  fit = equivalence.fit_urnn(target, 1, x_train, x_test, key=jax.random.PRNGKey(0),
                             steps=300, restarts=4)
  np.testing.assert_array_equal(fit.restart_det, [1.0, -1.0, 1.0, -1.0])
  assert abs(abs(float(fit.params.W[0, 0])) - 1.0) < 1e-12
  assert np.all(fit.restart_test_nmse > 0.1)
  assert fit.history[-1] < fit.history[0]  # the optimiser did make progress
  u = theory.unitary_equivalent(target, 1.0)
  assert theory.equivalent(target, u, x_test) < 1e-12  # 2 states: exact


def test_fit_urnn_validates_its_arguments(x64):
  target = theory.channel_rnn([0.5])
  x = _inputs(63, 1, 1.0, batch=2, steps=4)
  with pytest.raises(ValueError, match="n_states and restarts must be >= 1"):
    equivalence.fit_urnn(target, 0, x, x, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="n_states and restarts must be >= 1"):
    equivalence.fit_urnn(target, 1, x, x, key=jax.random.PRNGKey(0), restarts=0)


def test_equivalence_table_rows_are_exact_with_live_states(x64):
  rows = equivalence.equivalence_table((1, 3), key=jax.random.PRNGKey(4), steps=60, batch=4)
  assert [r["n"] for r in rows] == [1, 3]
  for r in rows:
    assert r["urnn_states"] == 2 * r["n"]
    assert r["W_norm"] < 1.0
    assert r["orthogonality_error"] < 1e-12
    assert r["max_abs_dy"] < 1e-9
    assert r["max_abs_h2"] == 0.0
    assert r["max_abs_y"] > 0.0
    assert 0.3 < r["active_fraction"] < 0.9  # biases calibrated for ~60% activity
    assert r["max_state_norm"] <= r["state_bound"]
    assert r["max_input_norm"] <= 1.0 + 1e-12
    n, m, p = r["n"], r["m"], r["p"]
    assert r["d_rnn"] == theory.degrees_of_freedom(n, m, p, "rnn")
    assert r["d_urnn"] == theory.degrees_of_freedom(n, m, p, "urnn")
    assert r["seconds"] >= 0.0


def test_run_needs_float64():
  with jax.enable_x64(False):
    with pytest.raises(RuntimeError, match="jax_enable_x64"):
      equivalence.run(0, True)

