"""Tests for urnn_jax.data.synthetic: the paper's teacher (seed 000 §5) and its data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import urnn_jax
from urnn_jax.data import synthetic

# Short sequences keep the module fast; the statistics tested do not need T = 1000.
SPEC = synthetic.TeacherSpec(seq_len=300)


@pytest.fixture(scope="module")
def gaussian_data():
  return synthetic.make_realizations(jax.random.key(0), SPEC, 4, 30, 20)


@pytest.fixture(scope="module")
def sparse_data():
  spec = synthetic.TeacherSpec(seq_len=500, inputs="sparse", snr_db=15.0)
  return synthetic.make_realizations(jax.random.key(1), spec, 3, 30, 20)


def test_teacher_singular_values_in_contractive_band():
  eps = 0.01
  keys = jax.random.split(jax.random.key(3), 16)
  w = jax.vmap(lambda k: synthetic.sample_teacher(k, SPEC).W)(keys)
  s = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
  # W = I - eps A^T A / ||A||^2: the singular values are 1 - eps * eig(A^T A)/||A||^2,
  # in [1 - eps, 1); the smallest equals 1 - eps. In float32 the largest can
  # round to 1 when A is nearly singular.
  assert s.max() <= 1.0 + 1e-6
  assert s.min() >= 1.0 - eps - 1e-6
  np.testing.assert_allclose(s.min(axis=-1), 1.0 - eps, atol=1e-6)
  assert np.all(s[..., :-1] > 1.0 - eps)


def test_teacher_transition_strictly_contractive_in_float64(x64):
  keys = jax.random.split(jax.random.key(4), 16)
  w = urnn_jax.initializers.contractive(0.01)(keys[0], (16, 4, 4), jnp.float64)
  s = np.linalg.svd(np.asarray(w), compute_uv=False)
  assert np.all(s < 1.0) and np.all(s >= 1.0 - 0.01 - 1e-12)


def test_teacher_shapes_and_gaussian_entries():
  t = synthetic.sample_teacher(jax.random.key(0))
  assert (t.W.shape, t.F.shape, t.b.shape, t.C.shape, t.h0.shape) == ((4, 4), (4, 2), (4,), (2, 4), (4,))
  urnn_jax.check_params(t)
  assert not np.any(np.asarray(t.h0))


@pytest.mark.parametrize("which", ["gaussian", "sparse"])
def test_bias_calibration_reaches_target(which, gaussian_data, sparse_data):
  data = gaussian_data if which == "gaussian" else sparse_data
  frac = np.asarray(data.on_fraction)  # measured on the generated data, not the calibration set
  assert frac.shape[-1] == 4
  np.testing.assert_array_less(np.abs(frac - 0.6), 0.05)
  # The teacher itself (not just its fit to these inputs) is on about 60% of
  # the time: check on fresh Gaussian inputs (sparse ones need far more data
  # for a stable estimate, see TeacherSpec.calibration_sequences).
  if which == "gaussian":
    x = synthetic.sample_inputs(jax.random.key(9), 100, 300, 2)
    for r in range(frac.shape[0]):
      teacher = jax.tree.map(lambda a: jnp.asarray(a)[r], data.teacher)
      fresh = np.asarray(synthetic.on_fraction(teacher, x))
      np.testing.assert_array_less(np.abs(fresh - 0.6), 0.05)


def test_calibration_handles_coupled_units():
  # A teacher whose units interact through W strongly enough that a per-unit
  # bisection ended with one unit on ~100% of the time (found during development).
  key = jax.random.fold_in(jax.random.key(0), 0)
  k_teacher, k_cal, _, _ = jax.random.split(key, 4)
  spec = synthetic.TeacherSpec()
  teacher = synthetic.sample_teacher(k_teacher, spec)
  x = synthetic.sample_inputs(k_cal, 40, 400, 2)
  _, frac = jax.jit(lambda t, x: synthetic.calibrate_bias(t, x, target=0.6))(teacher, x)
  np.testing.assert_allclose(np.asarray(frac), 0.6, atol=0.01)


@pytest.mark.parametrize("which,target", [("gaussian", 20.0), ("sparse", 15.0)])
def test_measured_snr_matches_target(which, target, gaussian_data, sparse_data):
  data = gaussian_data if which == "gaussian" else sparse_data
  np.testing.assert_array_less(np.abs(np.asarray(data.snr_db) - target), 0.5)


def test_snr_helpers_roundtrip():
  key = jax.random.key(5)
  y = 3.0 + 2.0 * jax.random.normal(key, (200, 50, 2))
  for power in ("variance", "mean_square"):
    std = synthetic.noise_std_for_snr(y, 10.0, power)
    noisy = y + std * jax.random.normal(jax.random.key(6), y.shape)
    np.testing.assert_allclose(synthetic.measured_snr_db(y, noisy, power), 10.0, atol=0.2)


def test_optimal_r2_and_oracle(gaussian_data):
  assert synthetic.optimal_r2(20.0) == pytest.approx(100.0 / 101.0)
  assert synthetic.optimal_r2(15.0) == pytest.approx(1 - 1 / (1 + 10 ** 1.5))
  # The teacher's own test R^2 estimates the optimum.
  np.testing.assert_allclose(np.asarray(gaussian_data.oracle_r2), synthetic.optimal_r2(20.0), atol=0.01)


def test_r2_score():
  y = jax.random.normal(jax.random.key(0), (5, 20, 2))
  assert float(synthetic.r2_score(y, y)) == pytest.approx(1.0)
  mean = jnp.broadcast_to(jnp.mean(y, axis=(0, 1)), y.shape)
  assert float(synthetic.r2_score(y, mean)) == pytest.approx(0.0, abs=1e-6)
  # Per-channel average: scaling one channel does not change it.
  pred = y + 0.1 * jax.random.normal(jax.random.key(1), y.shape)
  scale = jnp.asarray([1.0, 100.0])
  assert float(synthetic.r2_score(y * scale, pred * scale)) == pytest.approx(
      float(synthetic.r2_score(y, pred)), rel=1e-5)


def test_sparse_inputs_density():
  x = synthetic.sample_inputs(jax.random.key(2), 50, 400, 2, "sparse", sparsity=0.02)
  assert float(jnp.mean(x != 0)) == pytest.approx(0.02, abs=0.003)
  g = synthetic.sample_inputs(jax.random.key(2), 50, 400, 2)
  assert float(jnp.std(g)) == pytest.approx(1.0, abs=0.02)


def test_shapes_and_realization_prefix(gaussian_data):
  d = gaussian_data
  assert d.x_train.shape == (4, 30, 300, 2) and d.y_train.shape == (4, 30, 300, 2)
  assert d.x_test.shape == (4, 20, 300, 2) and d.y_test.shape == (4, 20, 300, 2)
  # Realization r depends on (key, r) only: asking for fewer gives a prefix.
  fewer = synthetic.make_realizations(jax.random.key(0), SPEC, 2, 30, 20)
  for a, b in zip(jax.tree.leaves(fewer), jax.tree.leaves(d)):
    np.testing.assert_array_equal(a, np.asarray(b)[:2])


def test_outputs_follow_the_teacher(gaussian_data):
  d = jax.tree.map(lambda a: np.asarray(a)[0], gaussian_data)
  clean = urnn_jax.simulate(d.teacher, d.x_test)
  noise = d.y_test - np.asarray(clean)
  np.testing.assert_allclose(noise.std(axis=(0, 1)), d.noise_std, rtol=0.1)


def test_spec_validation():
  with pytest.raises(ValueError, match="inputs"):
    synthetic.TeacherSpec(inputs="uniform")
  with pytest.raises(ValueError, match="eps"):
    synthetic.TeacherSpec(eps=1.5)
  with pytest.raises(ValueError, match="on_target"):
    synthetic.TeacherSpec(on_target=1.0)
  with pytest.raises(ValueError, match="kind"):
    synthetic.sample_inputs(jax.random.key(0), 1, 2, 2, "uniform")


def test_integer_arrays_are_promoted_to_float():
  # Issue 22: E[y^2] of int32 outputs of 1e5 wrapped around (noise std 3755
  # instead of 1e4), and an integer teacher ran in integer arithmetic.
  y = jnp.full((4, 2), 100000, jnp.int32)
  np.testing.assert_allclose(synthetic.noise_std_for_snr(y, 20.0, "mean_square"), [1e4, 1e4], rtol=1e-6)
  noisy = y + jnp.asarray([[1, 2], [3, 4], [5, 6], [7, 9]], jnp.int32)
  np.testing.assert_allclose(synthetic.measured_snr_db(y, noisy, "mean_square"),
                             synthetic.measured_snr_db(y.astype(jnp.float32), noisy.astype(jnp.float32),
                                                       "mean_square"))
  yt = jnp.asarray(np.arange(12).reshape(6, 2) * 100000, jnp.int32)
  np.testing.assert_allclose(synthetic.r2_score(yt, 2 * yt), synthetic.r2_score(yt * 1.0, 2.0 * yt))
  teacher = urnn_jax.RNNParams(jnp.zeros((2, 2), jnp.int32), jnp.asarray([[1, 0], [0, -1]], jnp.int32),
                               jnp.zeros(2, jnp.int32), jnp.eye(2, dtype=jnp.int32), jnp.zeros(2, jnp.int32))
  x = jnp.asarray([[[100000, 100000], [1, 2], [-3, -5]]], jnp.int32)
  np.testing.assert_allclose(synthetic.on_fraction(teacher, x), [2 / 3, 1 / 3])
  b, _ = synthetic.calibrate_bias(teacher, x * 1.0, iters=3)
  assert jnp.issubdtype(b.b.dtype, jnp.floating)


def test_complex_arrays_are_rejected():
  # Issue 22: r2_score of complex data returned a complex "R^2".
  z = 1j * jnp.ones((4, 2))
  for call in (lambda: synthetic.r2_score(z, z),
               lambda: synthetic.noise_std_for_snr(z, 20.0),
               lambda: synthetic.measured_snr_db(z, z),
               lambda: synthetic.on_fraction(synthetic.sample_teacher(jax.random.key(0)), z[None])):
    with pytest.raises(TypeError, match=r"complex dtype complex64; the synthetic data are real"):
      call()


def test_bad_counts_shapes_and_options_raise():
  # Issue 22: a negative count raised deep inside JAX, num_train=-5 silently
  # split the data wrong, mismatched shapes broadcast in r2_score, and an
  # unknown power fell back to "mean_square".
  key = jax.random.key(0)
  spec = synthetic.TeacherSpec(seq_len=5, calibration_iters=1)
  value_errors = [
      (lambda: synthetic.sample_inputs(key, -1, 10, 2), r"sample_inputs: num_sequences must be >= 1"),
      (lambda: synthetic.sample_inputs(key, 2, 0, 2), r"seq_len must be >= 1, got seq_len=0"),
      (lambda: synthetic.sample_inputs(key, 2, 3, 2, "sparse", sparsity=1.5), r"sparsity must be in \(0, 1\]"),
      (lambda: synthetic.make_realization(key, spec, -5, 10), r"make_realization: num_train must be >= 1"),
      (lambda: synthetic.make_realizations(key, spec, 0, 2, 2), r"num_realizations must be >= 1"),
      (lambda: synthetic.r2_score(jnp.ones((4, 2)), jnp.ones((1, 2))),
       r"r2_score: y_true and y_pred must have the same shape.*\(4, 2\) and \(1, 2\)"),
      (lambda: synthetic.measured_snr_db(jnp.ones((4, 2)), jnp.ones((4, 1))), r"same shape"),
      (lambda: synthetic.noise_std_for_snr(jnp.ones((4, 2)), 20.0, "varaince"), r"power='varaince'; expected one of"),
      (lambda: synthetic.calibrate_bias(synthetic.sample_teacher(key), jnp.ones((1, 3, 2)), iters=-1),
       r"calibrate_bias: iters must be >= 1"),
      (lambda: synthetic.calibrate_bias(synthetic.sample_teacher(key), jnp.ones((1, 3, 2)), target=1.5),
       r"target must be in \(0, 1\)"),
      (lambda: synthetic.on_fraction(synthetic.sample_teacher(key), jnp.ones((1, 3, 5))),
       r"on_fraction: x must have shape \(\.\.\., T, 2\)"),
      (lambda: synthetic.TeacherSpec(hidden_size=True), r"hidden_size must be a positive int, got True"),
  ]
  for call, match in value_errors:
    with pytest.raises(ValueError, match=match):
      call()
  for call, match in [
      (lambda: synthetic.sample_inputs(key, 2.5, 10, 2), r"num_sequences must be an int, got float"),
      (lambda: synthetic.make_realizations(key, spec, 2.5, 2, 2), r"num_realizations must be an int"),
      (lambda: synthetic.make_realization(key, "spec", 2, 2), r"spec must be a TeacherSpec"),
      (lambda: synthetic.TeacherSpec(eps="0.1"), r"TeacherSpec: eps must be a real number"),
  ]:
    with pytest.raises(TypeError, match=match):
      call()
