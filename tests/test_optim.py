"""Tests of urnn_jax.optim: the optax orthogonality constraints."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see tests/test_orthogonal.py

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

import urnn_jax  # noqa: E402
from urnn_jax import initializers, optim, orthogonal  # noqa: E402

KEY = jax.random.key(0)

# Every constraint onto the group; retractions re-project against float32 drift.
GROUP_CONSTRAINTS = {
    "projection_svd": lambda: optim.orthogonal_projection("svd"),
    "projection_newton_schulz": lambda: optim.orthogonal_projection("newton_schulz"),
    "projection_qdwh": lambda: optim.orthogonal_projection("qdwh"),
    "cayley": lambda: optim.cayley_retraction(reproject_every=100),
    "expm": lambda: optim.expm_retraction(reproject_every=100),
}
ALL_CONSTRAINTS = dict(GROUP_CONSTRAINTS, spectral_norm=lambda: optim.spectral_norm_projection(1.0))


def _haar(shape, dtype=jnp.float32, seed=0):
  return initializers.haar()(jax.random.key(seed), shape, dtype)


def _random_adam_run(constraint, w0, steps, lr=1e-2):
  """``steps`` Adam steps with random N(0, 1) gradients, in one jitted scan."""
  tx = optax.chain(optax.adam(lr), constraint)

  @jax.jit
  def run(w):
    def body(carry, key):
      w, state = carry
      g = jax.random.normal(key, w.shape, w.dtype)
      u, state = tx.update(g, state, w)
      return (optax.apply_updates(w, u), state), None

    carry, _ = jax.lax.scan(body, (w, tx.init(w)), jax.random.split(KEY, steps))
    return carry[0]

  return run(w0)


def _tangent_projection(w, u):
  """P_W(u) = W skew(W^H u), the tangent-space projection at W."""
  return w @ orthogonal.skew(jnp.conj(w.T) @ u)


# --------------------------------------------------------------------------
# Long runs: the constraints hold after 10,000 float32 Adam steps.


@pytest.mark.parametrize("name", sorted(GROUP_CONSTRAINTS))
def test_stays_orthogonal_for_10000_adam_steps(name):
  w0 = _haar((64, 64))
  w = _random_adam_run(GROUP_CONSTRAINTS[name](), w0, 10_000)
  assert w.dtype == jnp.float32
  assert np.abs(np.asarray(w) - np.asarray(w0)).max() > 0.1  # it did move
  w64 = np.asarray(w, np.float64)
  assert np.linalg.norm(w64.T @ w64 - np.eye(64)) < 1e-5


def test_spectral_norm_stays_in_the_ball_for_10000_adam_steps():
  rho = 0.9
  w0 = rho * _haar((64, 64))
  w = _random_adam_run(optim.spectral_norm_projection(rho), w0, 10_000)
  norm = np.linalg.norm(np.asarray(w, np.float64), 2)
  assert norm <= rho * (1 + 1e-6)
  assert norm >= rho * (1 - 1e-3)  # the constraint was active
  assert orthogonal.orthogonality_error(w) > 1.0  # and W is not orthogonal


@pytest.mark.parametrize("name", ["cayley", "expm"])
def test_retractions_drift_without_reprojection_and_reprojection_removes_it(name):
  factory = {"cayley": optim.cayley_retraction, "expm": optim.expm_retraction}[name]
  w0 = _haar((64, 64))
  drift = orthogonal.orthogonality_error(_random_adam_run(factory(), w0, 1000))
  fixed = orthogonal.orthogonality_error(_random_adam_run(factory(reproject_every=50), w0, 1000))
  assert drift < 1e-3  # the retraction itself stays close to the group...
  assert fixed < 1e-5  # ...and the re-projection brings it back to rounding level.
  assert fixed < drift


# --------------------------------------------------------------------------
# One step: the exact maps.


def test_projection_step_is_the_polar_factor(x64):
  w = _haar((8, 8), jnp.float64)
  u = 0.1 * jax.random.normal(KEY, (8, 8), jnp.float64)
  for method in orthogonal.PROJECTION_METHODS:
    tx = optim.orthogonal_projection(method)
    out, state = tx.update(u, tx.init(w), w)
    assert state == optax.EmptyState()
    np.testing.assert_allclose(w + out, orthogonal.project(w + u, "svd"), rtol=0, atol=1e-12)


def test_spectral_norm_step_is_the_clip(x64):
  w = 0.5 * _haar((8, 8), jnp.float64)
  u = jax.random.normal(KEY, (8, 8), jnp.float64)
  tx = optim.spectral_norm_projection(0.7)
  out, _ = tx.update(u, tx.init(w), w)
  np.testing.assert_allclose(w + out, orthogonal.clip_singular_values(w + u, 0.7), rtol=0, atol=1e-12)
  # A step that stays inside the ball is passed through unchanged.
  small = 1e-3 * u
  out, _ = tx.update(small, tx.init(w), w)
  np.testing.assert_allclose(out, small, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["cayley", "expm"])
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.complex128])
def test_retraction_step(x64, name, dtype):
  factory = {"cayley": optim.cayley_retraction, "expm": optim.expm_retraction}[name]
  tx = factory()
  w = _haar((6, 6), dtype)
  u = jax.random.normal(KEY, (6, 6), jnp.float64).astype(dtype)
  if dtype == jnp.complex128:
    u = u + 1j * jax.random.normal(jax.random.key(1), (6, 6))
  a = orthogonal.skew(u @ jnp.conj(w.T))
  ref = orthogonal.cayley(a) @ w if name == "cayley" else orthogonal.expm_skew(a) @ w
  out, state = tx.update(u, tx.init(w), w)
  np.testing.assert_allclose(w + out, ref, rtol=0, atol=1e-12)
  assert orthogonal.orthogonality_error(w + out) < 1e-12
  assert int(state.count) == 1
  # First-order term = tangent projection of u (so the step descends with u):
  # the remainder is O(|u|^2), it shrinks 4x when u is halved.
  rem = []
  for scale in (1e-3, 5e-4):
    out, _ = tx.update(scale * u, tx.init(w), w)
    rem.append(np.linalg.norm(out - _tangent_projection(w, scale * u)))
  np.testing.assert_allclose(rem[0] / rem[1], 4.0, rtol=0.05)
  assert rem[0] < np.linalg.norm(1e-3 * u) ** 2
  assert np.real(np.vdot(out, u)) > 0


def test_reproject_every_counts_steps(x64):
  w = _haar((6, 6), jnp.float64)
  u = 0.1 * jax.random.normal(KEY, (6, 6), jnp.float64)
  tx = optim.cayley_retraction(reproject_every=3)
  plain = optim.cayley_retraction()
  state = tx.init(w)
  for step in range(1, 7):
    out, state = tx.update(u, state, w)
    ref, _ = plain.update(u, plain.init(w), w)
    assert int(state.count) == step
    expected = orthogonal.project(w + ref) if step % 3 == 0 else w + ref
    np.testing.assert_allclose(w + out, expected, rtol=0, atol=1e-13)


# --------------------------------------------------------------------------
# Orthogonal Procrustes: Adam + each constraint finds the SVD solution.


def _procrustes(dtype, n=8, num=32):
  complex_ = jnp.issubdtype(dtype, jnp.complexfloating)
  q = _haar((n, n), dtype, seed=1)
  k1, k2 = jax.random.split(jax.random.key(2))
  x = jax.random.normal(k1, (n, num))
  if complex_:
    x = x + 1j * jax.random.normal(k2, (n, num))
  x = x.astype(dtype)
  y = q @ x
  # Known solution: the polar factor of Y X^H.
  u, _, vh = np.linalg.svd(np.asarray(y @ jnp.conj(x.T)))
  return x, y, u @ vh


@pytest.mark.parametrize("name", sorted(ALL_CONSTRAINTS))
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.complex128])
def test_adam_plus_constraint_solves_procrustes(x64, name, dtype):
  x, y, w_star = _procrustes(dtype)
  n = w_star.shape[0]
  if name == "spectral_norm":
    w0 = jnp.zeros((n, n), dtype)
  else:
    # Start in the connected component of the solution (det = +-1 cannot be
    # crossed by small steps on O(n)).
    w0 = jnp.eye(n, dtype=dtype)
    if np.real(np.linalg.det(w_star)) < 0:
      w0 = w0.at[:, 0].multiply(-1)
  steps = 1000
  tx = optax.chain(optax.adam(optax.exponential_decay(1e-1, steps, 1e-3)), ALL_CONSTRAINTS[name]())

  def loss(w):
    return jnp.sum(jnp.abs(w @ x - y) ** 2) / x.shape[1]

  @jax.jit
  def run(w):
    def body(carry, _):
      w, state = carry
      g = jnp.conj(jax.grad(loss)(w))  # descent direction convention for complex
      u, state = tx.update(g, state, w)
      return (optax.apply_updates(w, u), state), None

    carry, _ = jax.lax.scan(body, (w, tx.init(w)), None, length=steps)
    return carry[0]

  w = run(w0)
  assert loss(w0) > 1.0
  np.testing.assert_allclose(np.asarray(w), w_star, rtol=0, atol=1e-8)
  if name != "spectral_norm":
    assert orthogonal.orthogonality_error(w) < 1e-12


# --------------------------------------------------------------------------
# Batched (stacked) leaves, jit, complex leaves.


@pytest.mark.parametrize("name", sorted(ALL_CONSTRAINTS))
def test_stacked_leaves_equal_per_matrix_updates(name):
  w = 1.01 * _haar((3, 2, 16, 16))
  u = 0.05 * jax.random.normal(KEY, w.shape)
  tx = ALL_CONSTRAINTS[name]()
  one_update = jax.jit(lambda u_, w_: tx.update(u_, tx.init(w_), w_)[0])
  batched = one_update(u, w)
  assert batched.shape == w.shape
  for i in range(3):
    for j in range(2):
      np.testing.assert_allclose(batched[i, j], one_update(u[i, j], w[i, j]), rtol=0, atol=2e-5)
  # Same under jax.vmap of the whole update (e.g. 30 realizations).
  vmapped = jax.jit(jax.vmap(one_update))(u, w)
  np.testing.assert_allclose(vmapped, batched, rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", sorted(ALL_CONSTRAINTS))
def test_jit_matches_eager(name):
  params = {"a": _haar((2, 8, 8)), "b": {"c": _haar((2, 8, 8), seed=3)}}
  updates = jax.tree.map(lambda p: 0.1 * jax.random.normal(KEY, p.shape), params)
  tx = ALL_CONSTRAINTS[name]()
  state = tx.init(params)
  eager, s1 = tx.update(updates, state, params)
  jitted, s2 = jax.jit(tx.update)(updates, state, params)
  jax.tree.map(lambda e, j: np.testing.assert_allclose(j, e, rtol=0, atol=1e-5), eager, jitted)
  assert jax.tree.structure(s1) == jax.tree.structure(s2)
  new = optax.apply_updates(params, jitted)
  if name != "spectral_norm":
    assert max(jax.tree.leaves(jax.tree.map(lambda w: jnp.max(orthogonal.orthogonality_error(w)), new))) < 1e-5


@pytest.mark.parametrize("name", sorted(GROUP_CONSTRAINTS))
def test_complex_unitary_leaves_stay_unitary(name):
  w0 = _haar((32, 32), jnp.complex64)
  tx = optax.chain(optax.adam(1e-2), GROUP_CONSTRAINTS[name]())

  @jax.jit
  def run(w):
    def body(carry, key):
      w, state = carry
      kr, ki = jax.random.split(key)
      g = jax.random.normal(kr, w.shape) + 1j * jax.random.normal(ki, w.shape)
      u, state = tx.update(g.astype(w.dtype), state, w)
      return (optax.apply_updates(w, u), state), None

    carry, _ = jax.lax.scan(body, (w, tx.init(w)), jax.random.split(KEY, 300))
    return carry[0]

  w = run(w0)
  assert w.dtype == jnp.complex64
  assert np.abs(np.asarray(w - w0)).max() > 0.05
  assert np.max(np.abs(np.imag(np.asarray(w)))) > 0.05
  assert orthogonal.orthogonality_error(w) < 1e-5


# --------------------------------------------------------------------------
# Labels, masks and constrained().


def _model_params():
  x = jnp.ones((2, 7, 2))
  model = urnn_jax.SequenceRegressor(urnn_jax.OrthogonalRNNCell(8), 2)
  return model, model.init(KEY, x)["params"], x


def test_recurrent_kernel_mask_and_labels():
  _, params, _ = _model_params()
  mask = optim.recurrent_kernel_mask(params)
  assert mask == {
      "rnn": {"cell": {"input": {"kernel": False, "bias": False}, "recurrent_kernel": True}},
      "readout": {"kernel": False},
  }
  labels = optim.recurrent_kernel_labels(params)
  assert labels["rnn"]["cell"]["recurrent_kernel"] == "constrained"
  assert labels["readout"]["kernel"] == "free"
  # A regex on the "/"-joined path, and a predicate.
  assert optim.recurrent_kernel_mask(params, match=r"^readout/")["readout"]["kernel"] is True
  assert optim.recurrent_kernel_mask(params, match=r"^readout/")["rnn"]["cell"]["recurrent_kernel"] is False
  pred = optim.recurrent_kernel_mask(params, match=lambda path, leaf: leaf.ndim == 1)
  assert pred["rnn"]["cell"]["input"]["bias"] is True
  assert sum(jax.tree.leaves(pred)) == 1


def test_constrained_touches_only_the_labelled_leaves():
  _, params, _ = _model_params()
  grads = jax.tree.map(lambda p: jax.random.normal(KEY, p.shape), params)
  adam = optax.adam(1e-1)
  tx = optim.constrained(optax.adam(1e-1), optim.orthogonal_projection())
  plain, _ = jax.jit(adam.update)(grads, adam.init(params), params)
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  # Unlabelled leaves get Adam's update (up to XLA fusion rounding).
  for path in [("rnn", "cell", "input", "kernel"), ("rnn", "cell", "input", "bias"), ("readout", "kernel")]:
    a, b = plain, out
    for k in path:
      a, b = a[k], b[k]
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=0)
  k_plain = plain["rnn"]["cell"]["recurrent_kernel"]
  k_out = out["rnn"]["cell"]["recurrent_kernel"]
  assert np.abs(np.asarray(k_out - k_plain)).max() > 1e-3
  new = optax.apply_updates(params, out)
  assert orthogonal.orthogonality_error(new["rnn"]["cell"]["recurrent_kernel"]) < 1e-5
  # Same as the optax.partition spelling with recurrent_kernel_labels.
  part = optax.partition(
      {"constrained": optax.chain(optax.adam(1e-1), optim.orthogonal_projection()), "free": optax.adam(1e-1)},
      optim.recurrent_kernel_labels,
  )
  out2, _ = part.update(grads, part.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), out, out2)


def test_constrained_training_of_the_model_stacked_over_realizations():
  """Paper setup in miniature: params vmapped over 3 realizations, SVD projection."""
  model, _, x = _model_params()
  params = jax.vmap(lambda k: model.init(k, x)["params"])(jax.random.split(KEY, 3))
  y = jnp.sin(jnp.cumsum(x, axis=-2))
  tx = optim.constrained(optax.adam(1e-2), optim.orthogonal_projection())

  def loss(p):
    return jnp.mean((model.apply({"params": p}, x) - y) ** 2)

  @jax.jit
  def step(p, s):
    l, g = jax.vmap(jax.value_and_grad(loss))(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, l

  state = tx.init(params)
  losses = []
  for _ in range(30):
    params, state, l = step(params, state)
    losses.append(l)
  assert np.all(np.asarray(losses[-1]) < np.asarray(losses[0]))
  k = params["rnn"]["cell"]["recurrent_kernel"]
  assert k.shape == (3, 8, 8)
  assert np.max(orthogonal.orthogonality_error(k)) < 1e-5


# --------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("name", sorted(ALL_CONSTRAINTS))
def test_missing_params_raises(name):
  tx = ALL_CONSTRAINTS[name]()
  w = _haar((4, 4))
  with pytest.raises(ValueError, match=r"params is None.*tx\.update\(updates, state, params\)"):
    tx.update(w, tx.init(w))


@pytest.mark.parametrize("name", sorted(ALL_CONSTRAINTS))
def test_non_square_leaf_raises(name):
  tx = ALL_CONSTRAINTS[name]()
  params = {"cell": {"input": jnp.zeros((3, 4))}}
  with pytest.raises(ValueError, match=r"params\['cell/input'\] has shape \(3, 4\); expected square"):
    tx.init(params)
  with pytest.raises(ValueError, match=r"params\['cell/input'\] has shape \(3, 4\)"):
    tx.update(params, optax.EmptyState(), params)
  with pytest.raises(ValueError, match=r"params\['b'\] has shape \(4,\)"):
    tx.init({"b": jnp.zeros(4)})


def test_update_shape_mismatch_and_integer_leaf_raise():
  tx = optim.orthogonal_projection()
  w = _haar((4, 4))
  with pytest.raises(ValueError, match=r"update for params has shape \(2, 4, 4\); expected .*\(4, 4\)"):
    tx.update(jnp.zeros((2, 4, 4)), tx.init(w), w)
  with pytest.raises(TypeError, match=r"params\['w'\] has dtype int32"):
    tx.init({"w": jnp.zeros((4, 4), jnp.int32)})


def test_mask_that_selects_nothing_raises():
  params = {"dense": {"kernel": jnp.zeros((4, 4))}}
  tx = optim.constrained(optax.adam(1e-3), optim.orthogonal_projection())
  with pytest.raises(ValueError, match=r"match=None selects no leaf.*'recurrent_kernel'.*\['dense/kernel'\]"):
    tx.init(params)
  tx = optim.constrained(optax.adam(1e-3), optim.orthogonal_projection(), match="lstm")
  with pytest.raises(ValueError, match=r"match='lstm' selects no leaf.*matching 'lstm'"):
    tx.init(params)
  with pytest.raises(ValueError, match="recurrent_kernel_mask: match=None selects no leaf"):
    optim.recurrent_kernel_mask(params)


def test_bad_options_raise():
  with pytest.raises(ValueError, match=r"method='eig'.*expected one of \('svd'"):
    optim.orthogonal_projection("eig")
  with pytest.raises(ValueError, match=r"tol=-1"):
    optim.orthogonal_projection("newton_schulz", tol=-1.0)
  with pytest.raises(ValueError, match=r"max_iters=0"):
    optim.orthogonal_projection("newton_schulz", max_iters=0)
  for factory in (optim.cayley_retraction, optim.expm_retraction):
    with pytest.raises(ValueError, match=r"reproject_every must be None or a positive int, got reproject_every=0"):
      factory(reproject_every=0)
    with pytest.raises(ValueError, match=r"reproject_method='qr'"):
      factory(reproject_method="qr")
    with pytest.raises(TypeError):
      factory(5)  # options are keyword-only
  for bad in (0.0, -1.0, float("inf"), True, "1"):
    with pytest.raises(ValueError, match=r"max_value must be a finite number > 0, got max_value="):
      optim.spectral_norm_projection(bad)
  with pytest.raises(TypeError, match=r"match must be None, a regular expression"):
    optim.constrained(optax.adam(1e-3), optim.orthogonal_projection(), match=3)
  with pytest.raises(ValueError, match=r"match='\(' is not a valid regular expression"):
    optim.constrained(optax.adam(1e-3), optim.orthogonal_projection(), match="(")
  with pytest.raises(TypeError, match=r"optimizer must be an optax.GradientTransformation"):
    optim.constrained("adam", optim.orthogonal_projection())
  with pytest.raises(TypeError, match=r"constraint must be an optax.GradientTransformation"):
    optim.constrained(optax.adam(1e-3), optim.orthogonal_projection)


def test_scale_recurrent_scales_only_the_recurrent_matrices():
  """Kernel and generator leaves get factor * update; every other leaf passes unchanged."""
  params = {
      "a": {"cell": {"recurrent_kernel": jnp.ones((3, 3)), "input": {"kernel": jnp.ones((2, 3))}}},
      "b": {"cell": {"recurrent_generator": jnp.ones((3, 3))}},
      "head": {"kernel": jnp.ones((3, 4)), "recurrent_kernel_scale": jnp.ones((3,))},
  }
  grads = jax.tree.map(lambda p: jnp.arange(p.size, dtype=p.dtype).reshape(p.shape) + 1.0, params)
  tx = optim.scale_recurrent(0.25)
  out, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(out["a"]["cell"]["recurrent_kernel"], 0.25 * grads["a"]["cell"]["recurrent_kernel"])
  np.testing.assert_array_equal(out["b"]["cell"]["recurrent_generator"], 0.25 * grads["b"]["cell"]["recurrent_generator"])
  for path in [("a", "cell", "input", "kernel"), ("head", "kernel"), ("head", "recurrent_kernel_scale")]:
    a, b = grads, out
    for k in path:
      a, b = a[k], b[k]
    np.testing.assert_array_equal(b, a)
  # A custom match.
  tx = optim.scale_recurrent(2.0, match="head/kernel")
  out, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(out["head"]["kernel"], 2.0 * grads["head"]["kernel"])
  np.testing.assert_array_equal(out["a"]["cell"]["recurrent_kernel"], grads["a"]["cell"]["recurrent_kernel"])


@pytest.mark.parametrize("factor", [0.0, -1.0, float("inf"), float("nan"), True, "0.1"])
def test_scale_recurrent_rejects_bad_factors(factor):
  with pytest.raises(ValueError, match="scale_recurrent: factor must be a finite number > 0"):
    optim.scale_recurrent(factor)


def test_scale_recurrent_without_a_recurrent_leaf():
  tx = optim.scale_recurrent(0.5)
  with pytest.raises(ValueError, match="scale_recurrent: match=.* selects no leaf.*Leaf paths: \\['w'\\]"):
    tx.init({"w": jnp.ones((2, 2))})


def test_integer_updates_raise():
  # Issue 22: an int32 update on a float W came back truncated to int32
  # (all zeros): u' = (W_new - W).astype(u.dtype).
  w = _haar((3, 3))
  u = jnp.ones((3, 3), jnp.int32)
  for name, make in ALL_CONSTRAINTS.items():
    tx = make()
    with pytest.raises(TypeError, match=r"the update for params has dtype int32; expected a floating dtype"):
      tx.update(u, tx.init(w), w)
  tx = optim.orthogonal_projection()
  with pytest.raises(TypeError, match=r"leaf params has dtype int32"):
    tx.init(jnp.eye(3, dtype=jnp.int32))


def test_update_and_parameter_must_agree_on_complex():
  # Issue 22: a complex update of a real W (or a real update of a complex W)
  # lost the imaginary part of W_new - W. Complex W with complex updates (the
  # unitary group) stay supported.
  w_real, w_complex = _haar((3, 3)), _haar((3, 3), jnp.complex64)
  for name, make in ALL_CONSTRAINTS.items():
    tx = make()
    with pytest.raises(TypeError, match=r"has dtype complex64 but the parameter has dtype float32"):
      tx.update(0.1j * jnp.ones((3, 3), jnp.complex64), tx.init(w_real), w_real)
    with pytest.raises(TypeError, match=r"has dtype float32 but the parameter has dtype complex64"):
      tx.update(0.1 * jnp.ones((3, 3)), tx.init(w_complex), w_complex)
    u, _ = tx.update(0.01j * jnp.ones((3, 3), jnp.complex64), tx.init(w_complex), w_complex)
    assert u.dtype == jnp.complex64
    if name != "spectral_norm":
      assert orthogonal.orthogonality_error(w_complex + u) < 1e-4


def test_degenerate_projection_raises_eagerly_and_is_documented_under_jit():
  # Issue 22: the Newton-Schulz projection of a singular W + u is not
  # orthogonal. On concrete arrays it raises; under jit it cannot be checked.
  w = _haar((3, 3))
  u = -w  # W + u = 0
  tx = optim.orthogonal_projection("newton_schulz")
  with pytest.raises(ValueError, match=r"project: W is singular to working precision"):
    tx.update(u, tx.init(w), w)
  u_jit, _ = jax.jit(tx.update)(u, tx.init(w), w)
  assert orthogonal.orthogonality_error(w + u_jit) > 1  # documented: not orthogonal
  svd = optim.orthogonal_projection("svd")
  u_svd, _ = svd.update(u, svd.init(w), w)
  assert orthogonal.orthogonality_error(w + u_svd) < 1e-5
  # numpy floats are numbers too
  optim.spectral_norm_projection(np.float32(0.5))
  optim.orthogonal_projection("newton_schulz", tol=np.float32(1e-3))


# --------------------------------------------------------------------------
# Complex parameters by default (issue 20): constrained() conjugates jax.grad itself.


def _complex_problem(n=6, m=3, num=40):
  """A complex least-squares problem: params {'w': unitary K, 'v': complex (m, n), 'c': real}."""
  k = jax.random.split(jax.random.key(5), 5)
  q = _haar((n, n), jnp.complex128, seed=7)
  v_true = (jax.random.normal(k[0], (m, n)) + 1j * jax.random.normal(k[1], (m, n))) / 2
  x = jax.random.normal(k[2], (num, n)) + 1j * jax.random.normal(k[3], (num, n))
  u = jax.random.normal(k[4], (num, m))
  y = x @ q + u @ v_true + 0.5

  def loss(p):
    return jnp.mean(jnp.abs(x @ p["cell"]["recurrent_kernel"] + u @ p["cell"]["v"] + p["c"] - y) ** 2)

  params = {"cell": {"recurrent_kernel": jnp.eye(n, dtype=jnp.complex128),
                     "v": jnp.zeros((m, n), jnp.complex128)}, "c": jnp.zeros((n,), jnp.float64)}
  return loss, params


def test_conjugate_complex_and_conjugated_touch_only_complex_leaves():
  g = {"w": jnp.array([[1 + 2j]], jnp.complex64), "b": jnp.array([3.0])}
  tx = optim.conjugate_complex()
  u, state = tx.update(g, tx.init(g))
  assert state == optax.EmptyState()
  np.testing.assert_array_equal(u["w"], [[1 - 2j]])
  np.testing.assert_array_equal(u["b"], [3.0])
  # conjugated(opt) keeps opt's state and, on real leaves, its updates exactly.
  params = {"cell": {"recurrent_kernel": _haar((4, 4)), "input": {"kernel": jnp.ones((2, 4))}}}
  grads = jax.tree.map(lambda p: jax.random.normal(KEY, p.shape), params)
  for inner in (optax.adam(1e-2), optim.constrained(optax.adam(1e-2), optim.cayley_retraction())):
    wrapped = optim.conjugated(inner)
    s0, s1 = inner.init(params), wrapped.init(params)
    assert jax.tree.structure(s0) == jax.tree.structure(s1)
    a, _ = inner.update(grads, s0, params)
    b, _ = wrapped.update(grads, s1, params)
    jax.tree.map(lambda p, q: np.testing.assert_array_equal(p, q), a, b)
  # constrained() on real params has the same state layout as chain(opt, masked(constraint)).
  tx = optim.constrained(optax.adam(1e-2), optim.cayley_retraction())
  old = optax.chain(optax.adam(1e-2), optax.masked(optim.cayley_retraction(), optim.recurrent_kernel_mask))
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(old.init(params))
  with pytest.raises(TypeError, match="conjugated: optimizer must be an optax.GradientTransformation"):
    optim.conjugated(lambda g: g)


def test_constrained_adam_descends_on_every_complex_leaf(x64):
  loss, params = _complex_problem()
  tx = optim.constrained(optax.adam(2e-2), optim.cayley_retraction())
  raw = optax.chain(optax.adam(2e-2), optax.masked(optim.cayley_retraction(), optim.recurrent_kernel_mask))

  def run(tx, steps=300):
    @jax.jit
    def go(p):
      def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(loss)(p), s, p)  # raw jax.grad: no conjugation here
        return (optax.apply_updates(p, u), s), loss(p)
      (p, _), curve = jax.lax.scan(body, (p, tx.init(p)), None, length=steps)
      return p, curve
    return go(params)

  p, curve = run(tx)
  assert float(curve[0]) > 1.0
  assert float(loss(p)) < 1e-3 * float(curve[0])
  assert orthogonal.orthogonality_error(p["cell"]["recurrent_kernel"]) < 1e-12
  # Without the conjugation (the same chain fed raw jax.grad) the complex leaves do not descend.
  p_raw, curve_raw = run(raw)
  assert float(loss(p_raw)) > 0.5 * float(curve_raw[0])


def test_constrained_update_is_a_descent_direction_matching_finite_differences(x64):
  loss, params = _complex_problem()
  # Move off the start so that no gradient entry is zero.
  params = jax.tree.map(lambda a: a + 0.1 * (1 + 1j if jnp.iscomplexobj(a) else 1.0) * jnp.cos(
      jnp.arange(a.size).reshape(a.shape)), params)
  params["cell"]["recurrent_kernel"] = orthogonal.project(params["cell"]["recurrent_kernel"])
  lr = 1e-3
  for constraint in (optim.cayley_retraction(), optim.orthogonal_projection()):
    tx = optim.constrained(optax.adam(lr), constraint)
    g = jax.jit(jax.grad(loss))(params)
    u, _ = jax.jit(tx.update)(g, tx.init(params), params)
    # First-order change along the applied update: Re <G, u> with G = conj(jax.grad).
    predicted = sum(float(jnp.sum(jnp.real(gi * ui))) for gi, ui in zip(jax.tree.leaves(g), jax.tree.leaves(u)))
    h = 1e-4
    shifted = jax.jit(lambda t: loss(jax.tree.map(lambda p, d: p + t * d, params, u)))
    fd = float((shifted(h) - shifted(-h)) / (2 * h))
    assert predicted < 0 and fd < 0
    np.testing.assert_allclose(fd, predicted, rtol=1e-6)
    # Adam's first step on a free complex leaf is -lr G / |G| per entry: its change is -lr sum |G|.
    gv, uv = g["cell"]["v"], u["cell"]["v"]
    np.testing.assert_allclose(float(jnp.sum(jnp.real(gv * uv))), -lr * float(jnp.sum(jnp.abs(gv))),
                               rtol=1e-6)


def test_constrained_solves_complex_procrustes_without_manual_conjugation(x64):
  # Cayley (Wisdom's update); every constraint with hand-conjugated gradients:
  # test_adam_plus_constraint_solves_procrustes.
  x, y, w_star = _procrustes(jnp.complex128)
  n = w_star.shape[0]
  steps = 1000
  tx = optim.constrained(optax.adam(optax.exponential_decay(1e-1, steps, 1e-3)), optim.cayley_retraction())

  def loss(p):
    return jnp.sum(jnp.abs(p["recurrent_kernel"] @ x - y) ** 2) / x.shape[1]

  @jax.jit
  def run(p):
    def body(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(body, (p, tx.init(p)), None, length=steps)[0][0]

  p = run({"recurrent_kernel": jnp.eye(n, dtype=jnp.complex128)})
  np.testing.assert_allclose(np.asarray(p["recurrent_kernel"]), w_star, rtol=0, atol=1e-8)


COMPLEX_LONG_RUN = dict(GROUP_CONSTRAINTS, parametrization_expm=None)


@pytest.mark.parametrize("name", sorted(COMPLEX_LONG_RUN))
def test_complex_stays_unitary_for_10000_float32_adam_steps(name):
  """Each constraint (and the parametrisation) through constrained()/conjugated(), complex64, n = 8."""
  n = 8
  w0 = _haar((n, n), jnp.complex64, seed=4)
  if name.startswith("parametrization"):
    kind = name.split("_")[1]
    to_w = lambda p: w0 @ (orthogonal.expm_skew if kind == "expm" else orthogonal.cayley)(
        orthogonal.skew(p["recurrent_generator"]))
    params = {"recurrent_generator": jnp.zeros((n, n), jnp.complex64)}
    tx = optim.conjugated(optax.adam(1e-2))
  else:
    to_w = lambda p: p["recurrent_kernel"]
    params = {"recurrent_kernel": w0}
    tx = optim.constrained(optax.adam(1e-2), GROUP_CONSTRAINTS[name]())

  @jax.jit
  def run(p):
    def body(carry, key):
      p, s = carry
      kr, ki = jax.random.split(key)
      g = jax.tree.map(lambda a: (jax.random.normal(kr, a.shape) + 1j * jax.random.normal(ki, a.shape)
                                  ).astype(a.dtype), p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(body, (p, tx.init(p)), jax.random.split(KEY, 10_000))[0][0]

  w = to_w(run(params))
  assert w.dtype == jnp.complex64
  assert np.abs(np.asarray(w) - np.asarray(w0)).max() > 0.1  # it did move
  w128 = np.asarray(w, np.complex128)
  assert np.linalg.norm(w128.conj().T @ w128 - np.eye(n)) < 1e-5


def test_svd_projection_falls_back_when_lapack_returns_nan(monkeypatch):
  """LAPACK's SVD can fail silently (NaN); project(method='svd') then uses Newton-Schulz."""
  def failing_svd(w, full_matrices=False):
    u, s, vh = jnp.linalg.svd(w, full_matrices=full_matrices)
    return u * jnp.nan, s, vh

  w = 1.001 * _haar((3, 8, 8), seed=2) + 1e-3 * jax.random.normal(KEY, (3, 8, 8))
  expected = np.stack([np.linalg.svd(m)[0] @ np.linalg.svd(m)[2] for m in np.asarray(w, np.float64)])
  monkeypatch.setattr(orthogonal, "_svd", failing_svd)
  assert not np.all(np.isfinite(np.asarray(failing_svd(w)[0])))
  project = jax.jit(orthogonal.project)
  for f in (project, jax.jit(jax.vmap(orthogonal.project))):
    got = f(w)
    assert np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    assert np.max(orthogonal.orthogonality_error(got)) < 1e-5
  # Through the optimiser-side constraint too (complex); non-finite inputs still propagate.
  wc = _haar((8, 8), jnp.complex64) + 1e-3
  tx = optim.orthogonal_projection()
  u, _ = jax.jit(tx.update)(jnp.zeros_like(wc), tx.init(wc), wc)
  assert float(orthogonal.orthogonality_error(wc + u)) < 1e-5
  assert not np.all(np.isfinite(np.asarray(project(w.at[0, 0, 0].set(jnp.nan)))))
