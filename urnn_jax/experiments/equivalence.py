r"""The paper's theorems, run (seed 000 §3-4): the logic behind ``python -m train.equivalence``.

:mod:`urnn_jax.theory` holds the constructions and bounds; this module holds
the numerical experiments built on them:

* :func:`equivalence_table`: Theorem 3.1 on random contractive ReLU RNNs
  (n = 1 ... 64): the 2n-state construction's orthogonality error, the
  largest output difference over bounded inputs, the parameter counts of §3.
* :func:`bound_violation_demo`: the input bound at work (constant inputs
  above it break the equivalence).
* :func:`tightness_demo`: Theorem 3.2 (2n is tight), a *numerical
  demonstration, not a proof*: for the scalar RNN
  y(k) = relu(y(k-1)/2 + x(k)), 1-state URNNs (W = +-1) fitted by gradient
  descent (:func:`fit_urnn`) from several restarts leave a residual that
  stays away from zero, while the 2-state construction is exact; likewise
  for n independent channels with n states. The (n+1)-state family
  :func:`urnn_jax.theory.near_equivalent_channel_urnn` shows that the
  tightness is about *exact* equivalence.
* :func:`sigmoid_converse_demo`: Theorem 4.1 (sigmoid converse), likewise a
  *demonstration*, built on :func:`urnn_jax.theory.linearize`,
  :func:`~urnn_jax.theory.small_signal_response` and
  :func:`~urnn_jax.theory.response_eigenvalues`, and on the 2n-state
  dilation :func:`~urnn_jax.theory.unitary_dilation`, which matches a
  sigmoid RNN up to O(e^-B) but never exactly.

:func:`run` runs all of them for a configuration (:data:`DEFAULT`, or the tiny
:data:`QUICK` for tests), :func:`tables` formats the results as markdown and
:func:`write_results` writes ``results.json`` (everything),
``theorem31.csv`` (the main table), ``tables.md`` (all tables) and
``equivalence.png`` (:func:`plot`). The experiments expect float64
(``jax.config.update('jax_enable_x64', True)``).
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from urnn_jax import orthogonal
from urnn_jax import training
from urnn_jax.rnn import Activation
from urnn_jax.rnn import RNNParams
from urnn_jax.rnn import simulate
from urnn_jax.theory import bounded_inputs
from urnn_jax.theory import channel_rnn
from urnn_jax.theory import check_input_bound
from urnn_jax.theory import decay_rate
from urnn_jax.theory import degrees_of_freedom
from urnn_jax.theory import equivalent
from urnn_jax.theory import linearize
from urnn_jax.theory import near_equivalent_channel_urnn
from urnn_jax.theory import random_contractive_rnn
from urnn_jax.theory import response_eigenvalues
from urnn_jax.theory import small_signal_response
from urnn_jax.theory import spectral_norm
from urnn_jax.theory import state_bound
from urnn_jax.theory import unitary_dilation
from urnn_jax.theory import unitary_equivalent

__all__ = [
    "DEFAULT",
    "QUICK",
    "URNNFit",
    "bound_violation_demo",
    "equivalence_table",
    "fit_urnn",
    "plot",
    "run",
    "sigmoid_converse_demo",
    "tables",
    "tightness_demo",
    "write_results",
]

# simulate as one compiled computation per shape (eager simulate compiles each
# of its ops separately).
_simulate = jax.jit(simulate, static_argnames=("activation", "unroll", "return_states"))


# ---------------------------------------------------------------------------
# Fitting URNNs by gradient descent (the demonstrations).


class URNNFit(NamedTuple):
  """A URNN fitted to a target RNN's input-output map (best restart).

  Attributes:
    params: the best restart's ``RNNParams`` (W orthogonal).
    train_nmse: its normalised MSE on the training inputs.
    test_nmse: its normalised MSE on held-out inputs; NMSE = mean squared
      error / variance of the target outputs.
    test_max_abs: its largest absolute output error on the held-out inputs.
    restart_train_nmse: every restart's training NMSE.
    restart_test_nmse: every restart's held-out NMSE.
    restart_det: det(W) = +-1 of every restart (half the restarts search each
      component of O(N)).
    history: the best restart's training NMSE per step.
  """

  params: RNNParams
  train_nmse: float
  test_nmse: float
  test_max_abs: float
  restart_train_nmse: np.ndarray
  restart_test_nmse: np.ndarray
  restart_det: np.ndarray
  history: np.ndarray


def _urnn_params(raw, sign) -> RNNParams:
  """W = cayley(skew(A)) diag(sign, 1, ..., 1), dense in O(N) over sign = +-1.

  The Cayley transform (I - S/2)^-1 (I + S/2) of the skew part S reaches every
  rotation without eigenvalue -1, and compiles much faster under ``grad``
  than ``expm``.
  """
  W = orthogonal.cayley(orthogonal.skew(raw["A"]))
  flip = jnp.ones(W.shape[-1], W.dtype).at[0].set(sign)
  return RNNParams(W * flip[None, :], raw["F"], raw["b"], raw["C"], raw["h0"])


def _init_raw(key, n_states, m, p, dtype):
  ka, kf, kb, kc = jax.random.split(key, 4)
  return {
      "A": jax.random.normal(ka, (n_states, n_states), dtype) / math.sqrt(n_states),
      "F": jax.random.normal(kf, (n_states, m), dtype) / math.sqrt(max(m, 1)),
      "b": 0.1 * jax.random.normal(kb, (n_states,), dtype),
      "C": jax.random.normal(kc, (p, n_states), dtype) / math.sqrt(n_states),
      "h0": jnp.zeros((n_states,), dtype),
  }


@functools.partial(jax.jit, static_argnames=("n_states", "m", "p", "dtype"))
def _init_raws(keys, *, n_states, m, p, dtype):
  return jax.vmap(lambda k: _init_raw(k, n_states, m, p, dtype))(keys)


@functools.partial(jax.jit, static_argnames=("activation", "steps", "learning_rate"))
def _fit_restarts(raws, signs, x, y, scale, *, activation, steps, learning_rate):
  schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=1e-2)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))

  def loss_fn(raw, sign):
    y_hat = _simulate(_urnn_params(raw, sign), x, activation)
    return jnp.mean((y_hat - y) ** 2) / scale

  def one(raw, sign):
    def step(carry, _):
      raw, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(raw, sign)
      updates, opt_state = tx.update(grads, opt_state, raw)
      return (optax.apply_updates(raw, updates), opt_state), loss

    (raw, _), history = lax.scan(step, (raw, tx.init(raw)), None, length=steps)
    return raw, history, loss_fn(raw, sign)

  return jax.vmap(one)(raws, signs)


@functools.partial(jax.jit, static_argnames=("activation",))
def _eval_restarts(raws, signs, x, y, *, activation):
  def one(raw, sign):
    params = _urnn_params(raw, sign)
    y_hat = simulate(params, x, activation)
    return jnp.mean((y_hat - y) ** 2), jnp.max(jnp.abs(y_hat - y)), params

  return jax.vmap(one)(raws, signs)


def _nmse(y_hat, y):
  y = np.asarray(y, np.float64)
  var = np.mean((y - y.mean(axis=tuple(range(y.ndim - 1)))) ** 2)
  return float(np.mean((np.asarray(y_hat, np.float64) - y) ** 2) / max(var, 1e-300))


def fit_urnn(target: RNNParams, n_states: int, x_train, x_test, *, key,
             activation: Activation = "relu", target_activation: Activation | None = None,
             steps: int = 2000, restarts: int = 4, learning_rate: float = 1e-2) -> URNNFit:
  """Fits an N-state URNN to a target RNN's input-output map by gradient descent.

  The URNN's transition is ``W = cayley((A - A^T)/2) diag(s, 1, ..., 1)``
  (:func:`urnn_jax.orthogonal.cayley`) with s = +1 for half the restarts and
  s = -1 for the other half, so both connected components of O(N) are
  searched (for N = 1 these are exactly
  W = +1 and W = -1). W, F, b, C and h0 are trained with Adam (cosine
  learning-rate decay, gradient clipping) on the normalised MSE against the
  target's outputs; the restarts run in parallel under ``jax.vmap``.

  This is a numerical experiment: a residual that stays away from zero
  across restarts is evidence, not proof, that no N-state URNN matches.

  Args:
    target: the RNN to imitate.
    n_states: N, the URNN's hidden size.
    x_train, x_test: inputs ``(batch, T, m)``.
    key: PRNG key for the initialisations.
    activation: the URNN's activation.
    target_activation: the target's (default: ``activation``).
    steps: Adam steps.
    restarts: random initialisations (>= 1).
    learning_rate: peak learning rate.
  """
  if int(n_states) < 1 or int(restarts) < 1:
    raise ValueError(
        f"fit_urnn: n_states and restarts must be >= 1, got n_states={n_states},"
        f" restarts={restarts}."
    )
  target_activation = activation if target_activation is None else target_activation
  x_train = jnp.asarray(x_train)
  x_test = jnp.asarray(x_test)
  dtype = x_train.dtype
  y_train = _simulate(target, x_train, target_activation)
  y_test = _simulate(target, x_test, target_activation)
  y_np = np.asarray(y_train, np.float64)
  scale = float(np.mean((y_np - y_np.mean(axis=(0, 1))) ** 2))
  scale = max(scale, 1e-300)
  keys = jax.random.split(key, restarts)
  m, p = target.input_size, target.output_size
  raws = _init_raws(keys, n_states=int(n_states), m=m, p=p, dtype=jnp.dtype(dtype))
  signs = jnp.asarray(np.where(np.arange(restarts) % 2 == 0, 1.0, -1.0), dtype)
  raws, history, final = _fit_restarts(
      raws, signs, x_train, y_train, jnp.asarray(scale, dtype), activation=activation,
      steps=int(steps), learning_rate=float(learning_rate))
  final = np.asarray(final, np.float64)
  final = np.where(np.isfinite(final), final, np.inf)
  sq_err, max_abs, params_all = _eval_restarts(raws, signs, x_test, y_test, activation=activation)
  y_t = np.asarray(y_test, np.float64)
  var = max(float(np.mean((y_t - y_t.mean(axis=tuple(range(y_t.ndim - 1)))) ** 2)), 1e-300)
  test = np.asarray(sq_err, np.float64) / var
  max_abs = np.asarray(max_abs, np.float64)
  best = int(np.argmin(final))
  best_params = jax.tree.map(lambda v: v[best], params_all)
  return URNNFit(
      params=best_params, train_nmse=float(final[best]), test_nmse=float(test[best]),
      test_max_abs=float(max_abs[best]), restart_train_nmse=final,
      restart_test_nmse=test, restart_det=np.asarray(signs, np.float64),
      history=np.asarray(history[best], np.float64))


# ---------------------------------------------------------------------------
# The demonstrations.


def _noop(msg: str) -> None:
  del msg


def _eig_list(eig) -> list[list[float]]:
  return [[float(np.real(e)), float(np.imag(e))] for e in np.asarray(eig)]


@functools.partial(jax.jit, static_argnames=("iterations",))
def _calibrate_bias(params: RNNParams, x, active_fraction: float = 0.6,
                    iterations: int = 30) -> RNNParams:
  """Sets b so that each ReLU state is on about ``active_fraction`` of the time.

  A light version of the paper's §5 procedure (so that no state is dead and
  the outputs are not all zero): a simultaneous bisection on every b_i, each
  moved by its own state's activity on the calibration inputs ``x``.
  """
  span = jnp.sum(jnp.abs(params.F), axis=1) * jnp.max(jnp.abs(x)) + jnp.abs(params.b) + 1.0

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    _, h = simulate(params._replace(b=mid), x, "relu", return_states=True)
    frac = jnp.mean(h > 0, axis=tuple(range(h.ndim - 1)))
    too_active = frac > active_fraction
    return jnp.where(too_active, lo, mid), jnp.where(too_active, mid, hi)

  lo, hi = lax.fori_loop(0, iterations, body, (-span, span))
  return params._replace(b=0.5 * (lo + hi))


@jax.jit
def _table_metrics(params, urnn, x):
  n = params.W.shape[-1]
  y = simulate(params, x, "relu")
  y_u, h_u = simulate(urnn, x, "relu", return_states=True)
  return (jnp.max(jnp.abs(y_u - y)), jnp.max(jnp.abs(y)), jnp.max(jnp.abs(h_u[..., n:])),
          jnp.mean(h_u[..., :n] > 0), jnp.max(jnp.linalg.norm(h_u[..., :n], axis=-1)))


def _orth_error(w) -> float:
  """||W^T W - I||_F in NumPy float64 (as urnn_jax.orthogonal.orthogonality_error)."""
  w = np.asarray(w, np.float64)
  return float(np.linalg.norm(w.T @ w - np.eye(w.shape[-1])))


def equivalence_table(ns: Sequence[int] = (1, 2, 4, 8, 16, 64), *, key, m: int = 2,
                      p: int = 2, steps: int = 1000, batch: int = 32,
                      input_bound: float = 1.0, eps: float = 0.01,
                      log: Callable[[str], None] = _noop) -> list[dict[str, Any]]:
  """Theorem 3.1 on random contractive ReLU RNNs, one row per n.

  Each RNN has the paper's teacher transition (eq. 6, ``eps``), Gaussian F,
  C and h0 (exercising the h0 != 0 extension), and biases shifted so that
  each state is active about 60% of the time (as in the paper's §5). The row holds
  the construction's orthogonality error ``||W_u^T W_u - I||_F``, the largest
  output difference over ``batch`` input sequences of ``steps`` steps
  (half the steps on the sphere ``||x(k)|| = input_bound``, half inside), the
  largest magnitude of the extra states h2 (exactly 0 in theory), the state
  bound, and the parameter counts of §3.
  """
  rows = []
  for i, n in enumerate(ns):
    t0 = time.perf_counter()
    k_rnn, k_x = jax.random.split(jax.random.fold_in(key, i))
    params = random_contractive_rnn(k_rnn, int(n), m, p, eps=eps, h0_scale=1.0)
    x = bounded_inputs(k_x, (batch, steps, m), input_bound)
    params = _calibrate_bias(params, x[: max(1, batch // 4)])
    urnn = unitary_equivalent(params, input_bound)
    max_norm = check_input_bound(x, input_bound)
    dy, max_y, max_h2, active, max_h = _table_metrics(params, urnn, x)
    row = {
        "n": int(n), "m": m, "p": p, "urnn_states": 2 * int(n),
        "W_norm": spectral_norm(params.W),
        "state_bound": state_bound(params, input_bound),
        "max_state_norm": float(max_h),
        "orthogonality_error": _orth_error(urnn.W),
        "max_abs_dy": float(dy),
        "max_abs_y": float(max_y),
        "max_abs_h2": float(max_h2),
        "active_fraction": float(active),
        "negative_biases": int(jnp.sum(params.b < 0)),
        "max_input_norm": max_norm,
        "d_rnn": degrees_of_freedom(int(n), m, p, "rnn"),
        "d_urnn": degrees_of_freedom(int(n), m, p, "urnn"),
        "rnn_raw": degrees_of_freedom(int(n), m, p, "rnn_raw"),
        "urnn_raw": degrees_of_freedom(int(n), m, p, "urnn_raw"),
    }
    row["seconds"] = time.perf_counter() - t0
    rows.append(row)
    log(f"theorem 3.1  n={n:3d}: orth err {row['orthogonality_error']:.2e},"
        f" max|dy| {row['max_abs_dy']:.2e} (|y| <= {row['max_abs_y']:.3g}),"
        f" {row['seconds']:.1f}s")
  return rows


def bound_violation_demo(decay: float = 0.5, input_bound: float = 1.0,
                         factors: Sequence[float] = (1.0, 1.1, 1.15, 1.2, 1.5, 3.0),
                         steps: int = 50) -> dict[str, Any]:
  """The input bound is real: constant inputs above it break Theorem 3.1.

  For the scalar RNN ``y(k) = relu(w y(k-1) + x(k))`` and the constant input
  ``x(k) = c M``, the state settles at ``c M / (1 - w)`` and the garbage
  pre-activation of the construction at ``(sqrt(1 - w^2) c - 1) M / (1 - w)``,
  which turns positive, and the outputs part, once
  ``c > 1 / sqrt(1 - w^2)`` (1.1547 for w = 1/2). Below that the bound has
  slack (it uses ||W3|| <= 1).
  """
  params = channel_rnn([decay])
  urnn = unitary_equivalent(params, input_bound)
  rows = []
  for c in factors:
    x = jnp.full((1, steps, 1), c * input_bound, params.W.dtype)
    rows.append({"factor": float(c), "max_input_norm": float(c * input_bound),
                 "max_abs_dy": equivalent(params, urnn, x, "relu")})
  return {"decay": float(decay), "input_bound": float(input_bound),
          "threshold_factor": 1.0 / math.sqrt(1.0 - decay ** 2), "rows": rows}


def _default_decays(n: int) -> list[float]:
  return [0.5] if n == 1 else [float(v) for v in np.linspace(0.5, 0.8, n)]


def tightness_demo(*, key, channels: Sequence[int] = (1, 2), steps: int = 32,
                   batch: int = 32, test_batch: int = 64, fit_steps: int = 1500,
                   restarts: int = 8, input_bound: float = 1.0,
                   scales: Sequence[float] = (1.0, 0.1, 0.01, 0.001),
                   log: Callable[[str], None] = _noop) -> dict[str, Any]:
  """Theorem 3.2 (2n states are needed): a numerical demonstration, not a proof.

  For each n in ``channels`` the target is :func:`channel_rnn`: n independent
  scalar ReLU channels ``h_i = relu(w_i h_i + x_i)`` (n = 1: the scalar RNN
  ``y(k) = relu(y(k-1)/2 + x(k))``). For N = n, ..., 2n, URNNs with N states
  are fitted by gradient descent (:func:`fit_urnn`, ``restarts`` restarts
  over both components of O(N); for N = 1 that is W = +1 and W = -1) and
  their held-out NMSE is reported, per sign of det W for N = n. The 2n-state
  construction of :func:`unitary_equivalent` is checked to be exact. For
  n >= 2 the (n+1)-state family :func:`near_equivalent_channel_urnn` is
  evaluated over ``scales``: its error falls like the scale, i.e. fewer than
  2n states can approximate the map arbitrarily well, though (as far as these
  experiments show) never exactly.
  """
  out = []
  for n in channels:
    n = int(n)
    decays = _default_decays(n)
    target = channel_rnn(decays)
    kn = jax.random.fold_in(key, n)
    k_tr, k_te, k_fit = jax.random.split(kn, 3)
    x_train = bounded_inputs(k_tr, (batch, steps, n), input_bound)
    x_test = bounded_inputs(k_te, (test_batch, steps, n), input_bound)
    y_test = _simulate(target, x_test, "relu")
    urnn = unitary_equivalent(target, input_bound)
    exact = {"states": 2 * n,
             "max_abs_dy": equivalent(target, urnn, x_test, "relu"),
             "nmse": _nmse(_simulate(urnn, x_test, "relu"), y_test),
             "orthogonality_error": _orth_error(urnn.W)}
    fits = []
    for n_states in range(n, 2 * n + 1):
      t0 = time.perf_counter()
      fit = fit_urnn(target, n_states, x_train, x_test, key=jax.random.fold_in(k_fit, n_states),
                     activation="relu", steps=fit_steps, restarts=restarts)
      per_sign = {}
      for det in (1.0, -1.0):
        idx = np.nonzero(fit.restart_det == det)[0]
        if idx.size:
          j = idx[np.argmin(fit.restart_train_nmse[idx])]
          per_sign["plus" if det > 0 else "minus"] = float(fit.restart_test_nmse[j])
      row = {"states": n_states, "test_nmse": fit.test_nmse, "train_nmse": fit.train_nmse,
             "test_max_abs": fit.test_max_abs,
             "restart_test_nmse": fit.restart_test_nmse.tolist(),
             "best_test_nmse_det_plus": per_sign.get("plus"),
             "best_test_nmse_det_minus": per_sign.get("minus"),
             "seconds": time.perf_counter() - t0}
      fits.append(row)
      log(f"theorem 3.2  n={n} channels, N={n_states} URNN fitted: test NMSE"
          f" {fit.test_nmse:.3e} (restarts {np.array2string(fit.restart_test_nmse, precision=3)}),"
          f" {row['seconds']:.1f}s")
    near = []
    if n >= 2:
      for s in scales:
        approx = near_equivalent_channel_urnn(decays, s, input_bound)
        near.append({"scale": float(s), "states": n + 1,
                     "max_abs_dy": equivalent(target, approx, x_test, "relu"),
                     "nmse": _nmse(_simulate(approx, x_test, "relu"), y_test),
                     "C_norm": spectral_norm(approx.C)})
    out.append({"n": n, "decays": decays, "construction": exact, "fits": fits,
                "near_equivalent": near})
    log(f"theorem 3.2  n={n}: 2n-state construction max|dy| {exact['max_abs_dy']:.2e}")
  return {"channels": out, "input_bound": float(input_bound), "steps": steps,
          "fit_steps": fit_steps, "restarts": restarts}


def _match(eig, ref):
  """Greedy nearest matching of ``ref`` into ``eig``: (matched, unmatched)."""
  eig = list(np.asarray(eig))
  matched = []
  for r in np.asarray(ref):
    j = int(np.argmin([abs(e - r) for e in eig]))
    matched.append(eig.pop(j))
  return np.asarray(matched), np.asarray(eig)


def _matched(eig, ref):
  return _match(eig, ref)[0]


def _unmatched(eig, ref):
  return _match(eig, ref)[1]


def sigmoid_converse_demo(*, key, n: int = 2, m: int = 1, p: int = 1,
                          factors: Sequence[int] = (1, 2, 4, 8), steps: int = 32,
                          batch: int = 32, test_batch: int = 64, fit_steps: int = 1500,
                          restarts: int = 4, input_bound: float = 1.0, gain: float = 3.0,
                          norm: float = 0.9, delta: float = 1e-4, response_steps: int = 16,
                          garbage_biases: Sequence[float] = (0.0, 5.0, 10.0, 20.0, 30.0, 40.0),
                          log: Callable[[str], None] = _noop) -> dict[str, Any]:
  """Theorem 4.1 (no URNN matches a sigmoid RNN exactly): a demonstration.

  The target has ``||W||_2 = norm`` (Gaussian, rescaled), Gaussian b and
  F, C with ``gain`` (so the sigmoid works in its nonlinear range). The same
  weights are used once with the sigmoid and once with ReLU. URNNs with
  ``f n`` states, f in ``factors``, are fitted to each by gradient descent;
  the ReLU target also gets the exact 2n-state construction.

  Then, at x* = 0, the linearization (:func:`linearize`):

  * the target's Jacobian eigenvalues, and the same eigenvalues identified
    from its measured small-signal input-output response alone
    (:func:`response_eigenvalues`, order n), plus the response's decay rate
    against the spectral radius: the eigenvalues are *in* the map;
  * for every fitted sigmoid URNN, its own ``J_u = diag(phi'(z_u*)) W_u``
    (spectral radius, leading eigenvalues), the residual of
    ``J_u J_u^T = diag(phi')^2`` (holds for every URNN, fails for the
    target), the order-n poles identified from *its* response and their gap
    to the target's, and the relative distance of the linear responses;
  * for the ReLU construction (linearised at the candidate x* in
    {0, +-M e_i} with the most active states), the eigenvalues of J_u against
    those of J plus n zeros: ReLU zeroes the extra states and hides their
    eigenvalues, which a sigmoid (phi' > 0) cannot.

  * the 2n-state dilation with ``b2 = -B`` for B in ``garbage_biases``
    (:func:`unitary_dilation`), run with the sigmoid: its error falls like
    e^-B and reaches float64 rounding near B ~ 37, while its extra Jacobian
    eigenvalues shrink like e^-B without ever vanishing. Theorem 4.1 is a
    statement about *exact* equivalence; the approximation gap of a 2n-state
    URNN to a sigmoid RNN can be made numerically invisible.

  Gradient descent conflates "not representable" with "hard to optimise"; the
  fitted NMSEs are evidence, not proof, and (as the paper notes) the sigmoid
  error may keep falling as the number of states grows.
  """
  k_rnn, k_tr, k_te, k_fit = jax.random.split(key, 4)
  base = random_contractive_rnn(k_rnn, n, m, p, norm=norm)
  target = base._replace(F=gain * base.F, C=gain * base.C)
  x_train = bounded_inputs(k_tr, (batch, steps, m), input_bound)
  x_test = bounded_inputs(k_te, (test_batch, steps, m), input_bound)
  x_star = jnp.zeros((m,), target.W.dtype)
  lin = linearize(target, x_star, "sigmoid")
  measured, predicted = small_signal_response(target, x_star, "sigmoid", delta=delta,
                                              steps=response_steps, lin=lin)
  d_phi = lin.h_star * (1.0 - lin.h_star)  # sigmoid'(z*) = h*(1 - h*)
  target_lin = {
      "x_star": np.asarray(x_star).tolist(),
      "h_star": lin.h_star.tolist(),
      "eigenvalues": _eig_list(lin.eigenvalues),
      "spectral_radius": lin.spectral_radius,
      "identified_eigenvalues": _eig_list(response_eigenvalues(measured, n)),
      "identified_eigenvalue_error": float(np.max(np.abs(
          np.sort_complex(response_eigenvalues(measured, n)) - np.sort_complex(lin.eigenvalues)))),
      "measured_decay_rate": decay_rate(measured),
      "predicted_decay_rate": decay_rate(predicted),
      "response_max_abs_diff": float(np.max(np.abs(measured - predicted))),
      "response_max_abs": float(np.max(np.abs(predicted))),
      "gram_residual": float(np.linalg.norm(lin.jacobian @ lin.jacobian.T - np.diag(d_phi ** 2))),
      "measured_response": measured.tolist(),
      "predicted_response": predicted.tolist(),
  }
  log(f"theorem 4.1  target eig(J) = {np.round(lin.eigenvalues, 4)}, identified from its"
      f" input-output response to {target_lin['identified_eigenvalue_error']:.1e}")
  fits = {"sigmoid": [], "relu": []}
  for act in ("sigmoid", "relu"):
    y_test = _simulate(target, x_test, act)
    for f in factors:
      t0 = time.perf_counter()
      n_states = int(f) * n
      fit = fit_urnn(target, n_states, x_train, x_test, key=jax.random.fold_in(k_fit, n_states),
                     activation=act, steps=fit_steps, restarts=restarts)
      row = {"states": n_states, "test_nmse": fit.test_nmse, "train_nmse": fit.train_nmse,
             "test_max_abs": fit.test_max_abs,
             "restart_test_nmse": fit.restart_test_nmse.tolist()}
      if act == "sigmoid":
        ulin = linearize(fit.params, x_star, "sigmoid")
        u_dphi = ulin.h_star * (1.0 - ulin.h_star)
        u_meas, u_pred = small_signal_response(fit.params, x_star, "sigmoid", delta=delta,
                                               steps=response_steps, lin=ulin)
        u_ident = response_eigenvalues(u_meas, n)
        row.update({
            "spectral_radius": ulin.spectral_radius,
            "leading_eigenvalues": _eig_list(ulin.eigenvalues[:4]),
            "identified_eigenvalues": _eig_list(u_ident),
            "identified_eigenvalue_gap": float(np.max(np.abs(
                np.sort_complex(u_ident) - np.sort_complex(lin.eigenvalues)))),
            "gram_residual": float(np.linalg.norm(
                ulin.jacobian @ ulin.jacobian.T - np.diag(u_dphi ** 2))),
            "linear_response_rel_diff": float(
                np.linalg.norm(u_pred - predicted) / np.linalg.norm(predicted)),
            "predicted_response": u_pred.tolist(),
        })
      row["seconds"] = time.perf_counter() - t0
      fits[act].append(row)
      log(f"theorem 4.1  {act:7s} N={n_states:2d} URNN fitted: test NMSE {fit.test_nmse:.3e},"
          f" {row['seconds']:.1f}s")
  # The 2n-state dilation with b2 = -B, run with the sigmoid: error ~ e^-B.
  y_sig = _simulate(target, x_test, "sigmoid")
  dilations = []
  for B in garbage_biases:
    dil = unitary_dilation(target, B)
    dlin = linearize(dil, x_star, "sigmoid")
    extra = _unmatched(dlin.eigenvalues, lin.eigenvalues)
    dilations.append({
        "garbage_bias": float(B), "states": 2 * n,
        "max_abs_dy": equivalent(target, dil, x_test, "sigmoid"),
        "nmse": _nmse(_simulate(dil, x_test, "sigmoid"), y_sig),
        "max_abs_h2": float(np.max(dlin.h_star[n:])),
        "extra_eigenvalue_max_abs": float(np.max(np.abs(extra))) if extra.size else 0.0,
        "target_eigenvalue_shift": float(np.max(np.abs(
            np.sort_complex(_matched(dlin.eigenvalues, lin.eigenvalues))
            - np.sort_complex(lin.eigenvalues)))),
    })
    log(f"theorem 4.1  sigmoid 2n dilation, b2 = -{B:g}: max|dy| {dilations[-1]['max_abs_dy']:.2e},"
        f" extra eigenvalues up to {dilations[-1]['extra_eigenvalue_max_abs']:.1e}")
  urnn = unitary_equivalent(target, input_bound)
  # Linearise the ReLU pair where the most states are active.
  candidates = [x_star] + [s * input_bound * jnp.eye(m, dtype=x_star.dtype)[i]
                           for i in range(m) for s in (1.0, -1.0)]
  relu_x = max(candidates, key=lambda c: int(np.sum(linearize(target, c, "relu").z_star > 0)))
  relu_lin = linearize(target, relu_x, "relu")
  urnn_lin = linearize(urnn, relu_x, "relu")
  expected = np.concatenate([relu_lin.eigenvalues, np.zeros(n)])
  got = urnn_lin.eigenvalues
  eig_gap = float(np.max(np.abs(np.sort_complex(got) - np.sort_complex(expected))))
  construction = {
      "states": 2 * n,
      "max_abs_dy": equivalent(target, urnn, x_test, "relu"),
      "nmse": _nmse(_simulate(urnn, x_test, "relu"), _simulate(target, x_test, "relu")),
      "x_star": np.asarray(relu_x).tolist(),
      "active_states": int(np.sum(relu_lin.z_star > 0)),
      "rnn_eigenvalues": _eig_list(relu_lin.eigenvalues),
      "urnn_eigenvalues": _eig_list(got),
      "eigenvalue_gap_to_rnn_plus_zeros": eig_gap,
  }
  log(f"theorem 4.1  relu 2n-state construction: max|dy| {construction['max_abs_dy']:.2e},"
      f" eig(J_u) = eig(J) + {n} zeros up to {eig_gap:.1e}")
  return {"n": n, "m": m, "p": p, "gain": gain, "norm": norm,
          "target_linearization": target_lin, "fits": fits, "relu_construction": construction,
          "sigmoid_dilation": dilations,
          "fit_steps": fit_steps, "restarts": restarts, "steps": steps}


# ---------------------------------------------------------------------------
# The run behind ``python -m train.equivalence``: configurations, tables, files.

DEFAULT = {
    "ns": (1, 2, 4, 8, 16, 64), "steps": 1000, "batch": 32,
    "tight": {"channels": (1, 2), "fit_steps": 1500, "restarts": 8},
    "sigmoid": {"n": 2, "factors": (1, 2, 4, 8), "fit_steps": 1500, "restarts": 4},
}
QUICK = {
    "ns": (1, 2), "steps": 50, "batch": 4,
    "tight": {"channels": (1,), "fit_steps": 30, "restarts": 2},
    "sigmoid": {"n": 2, "factors": (1,), "fit_steps": 30, "restarts": 2},
}


def run(seed: int, quick: bool, log: Callable[[str], None] = _noop) -> dict[str, Any]:
  """Runs the three experiments; returns the results dict (JSON-able).

  ``quick`` picks :data:`QUICK` instead of :data:`DEFAULT`. The run is
  deterministic given ``seed`` (timings aside) and needs float64.

  Raises:
    RuntimeError: if ``jax_enable_x64`` is off (the results say float64).
  """
  if jnp.result_type(float) != jnp.float64:
    raise RuntimeError(
        "equivalence.run: the experiments run in float64; call"
        " jax.config.update('jax_enable_x64', True) first."
    )
  cfg = QUICK if quick else DEFAULT
  key = jax.random.PRNGKey(seed)
  k31, k32, k41 = jax.random.split(key, 3)
  timings = {}
  t0 = time.perf_counter()
  table = equivalence_table(cfg["ns"], key=k31, steps=cfg["steps"],
                            batch=cfg["batch"], log=log)
  bound = bound_violation_demo()
  timings["theorem31"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  tight = tightness_demo(key=k32, log=log, **cfg["tight"])
  timings["theorem32"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  converse = sigmoid_converse_demo(key=k41, log=log, **cfg["sigmoid"])
  timings["theorem41"] = time.perf_counter() - t0
  return {"seed": seed, "quick": quick, "dtype": "float64",
          "theorem31": table, "input_bound_demo": bound,
          "theorem32_demo": tight, "theorem41_demo": converse, "seconds": timings}


# ---------------------------------------------------------------------------
# Tables.


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """One markdown table (:func:`urnn_jax.training.markdown_table`), no trailing newline."""
  return training.markdown_table([dict(zip(header, r)) for r in rows], header).rstrip("\n")


def _eig_str(eigs) -> str:
  parts = []
  for re, im in eigs:
    parts.append(f"{re:+.4f}" if abs(im) < 1e-12 else f"{re:+.4f}{im:+.4f}i")
  return " ".join(parts)


def tables(res: dict[str, Any]) -> str:
  """All tables as markdown, with headings."""
  out = []
  t31 = res["theorem31"]
  out.append("## Theorem 3.1: the 2n-state unitary equivalent of a contractive ReLU RNN")
  out.append(f"Teacher W = I - eps A^T A/||A||^2 (eps = 0.01), Gaussian F, C, h0, biases "
             "set for ~60% activity (as in §5); "
             f"{t31[0]['m']} inputs, {t31[0]['p']} outputs; inputs with ||x(k)|| <= 1 "
             "(half on the bound), float64.\n")
  out.append(_markdown(
      ["n", "URNN states", "||W||_2", "bound B", "||W_u^T W_u - I||_F", "max|dy|",
       "max||h||", "max|y|", "max|h2|", "active", "d_rnn", "d_urnn (paper)", "urnn incl. bias", "s"],
      [[r["n"], r["urnn_states"], r["W_norm"], r["state_bound"], r["orthogonality_error"],
        r["max_abs_dy"], r["max_state_norm"], r["max_abs_y"], r["max_abs_h2"], r["active_fraction"], r["d_rnn"], r["d_urnn"],
        r["urnn_raw"], r["seconds"]] for r in t31]))
  b = res["input_bound_demo"]
  out.append("\n## The input bound is real")
  out.append(f"Scalar RNN y(k) = relu({b['decay']} y(k-1) + x(k)), its 2-state construction "
             f"for M = {b['input_bound']}, constant input x(k) = c M; predicted break at "
             f"c > 1/sqrt(1-w^2) = {b['threshold_factor']:.4f}.\n")
  out.append(_markdown(["c", "||x(k)||", "max|dy|"],
                      [[r["factor"], r["max_input_norm"], r["max_abs_dy"]] for r in b["rows"]]))
  t = res["theorem32_demo"]
  out.append("\n## Theorem 3.2 (2n is tight): demonstration, not a proof")
  out.append(f"Target: n independent channels h_i = relu(w_i h_i + x_i); URNNs fitted by Adam "
             f"({t['fit_steps']} steps, {t['restarts']} restarts over both signs of det W), "
             "held-out NMSE = MSE / Var(y).\n")
  rows = []
  for ch in t["channels"]:
    for f in ch["fits"]:
      rows.append([ch["n"], ", ".join(f"{w:.2f}" for w in ch["decays"]), f["states"],
                   "gradient descent", f["test_nmse"], f["best_test_nmse_det_plus"],
                   f["best_test_nmse_det_minus"], f["test_max_abs"]])
    c = ch["construction"]
    rows.append([ch["n"], "", c["states"], "construction (Thm 3.1)", c["nmse"], None, None,
                 c["max_abs_dy"]])
    for ne in ch["near_equivalent"]:
      rows.append([ch["n"], "", ne["states"], f"near-equivalent, scale {ne['scale']:g}",
                   ne["nmse"], None, None, ne["max_abs_dy"]])
  out.append(_markdown(["n", "decays", "URNN states", "how", "test NMSE", "best det +1",
                       "best det -1", "max|dy|"], rows))
  s = res["theorem41_demo"]
  tl = s["target_linearization"]
  out.append("\n## Theorem 4.1 (sigmoid converse): demonstration, not a proof")
  out.append(f"Target: contractive sigmoid RNN, n = {s['n']}, ||W|| = {s['norm']}, gain "
             f"{s['gain']}; the same weights with ReLU for comparison. Adam, {s['fit_steps']} "
             f"steps, {s['restarts']} restarts.\n")
  out.append(f"Target at x* = 0: eig(J) = {_eig_str(tl['eigenvalues'])}; identified from the "
             f"measured input-output response: {_eig_str(tl['identified_eigenvalues'])} "
             f"(error {tl['identified_eigenvalue_error']:.1e}); response vs C J^k B: "
             f"{tl['response_max_abs_diff']:.1e}; ||J J^T - diag(phi')^2|| = "
             f"{tl['gram_residual']:.3g}.\n")
  rows = []
  for sig, rel in zip(s["fits"]["sigmoid"], s["fits"]["relu"]):
    rows.append([sig["states"], sig["test_nmse"], rel["test_nmse"], sig["spectral_radius"],
                 _eig_str(sig["identified_eigenvalues"]), sig["identified_eigenvalue_gap"],
                 sig["gram_residual"], sig["linear_response_rel_diff"]])
  c = s["relu_construction"]
  rows.append([c["states"], None, c["nmse"], None, "ReLU construction (exact)", None, None, None])
  out.append(_markdown(
      ["URNN states", "sigmoid NMSE", "relu NMSE", "rho(J_u)", "poles in URNN response (order n)",
       "pole gap", "||J_u J_u^T - D^2||", "lin. resp. rel. diff"], rows))
  out.append("\nThe 2n-state dilation of the *sigmoid* target with b2 = -B "
             "(urnn_jax.theory.unitary_dilation): exact equivalence fails for every B "
             "(Theorem 4.1), but the gap shrinks like e^-B.\n")
  out.append(_markdown(
      ["B", "URNN states", "max|dy|", "NMSE", "max h2 at x*", "extra |eig(J_u)|",
       "shift of eig(J)"],
      [[d["garbage_bias"], d["states"], d["max_abs_dy"], d["nmse"], d["max_abs_h2"],
        d["extra_eigenvalue_max_abs"], d["target_eigenvalue_shift"]]
       for d in s["sigmoid_dilation"]]))
  out.append(f"\nReLU construction at x* = {c['x_star']} ({c['active_states']} active states): "
             f"eig(J) = {_eig_str(c['rnn_eigenvalues'])}, eig(J_u) = "
             f"{_eig_str(c['urnn_eigenvalues'])} (gap to eig(J) + zeros "
             f"{c['eigenvalue_gap_to_rnn_plus_zeros']:.1e}); max|dy| = {c['max_abs_dy']:.1e}.")
  return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# Files.


def plot(res: dict[str, Any], path: str) -> None:
  """The eight panels of equivalence.png (matplotlib imported lazily)."""
  plt = training.pyplot()
  floor = 1e-18
  fig, axes = plt.subplots(2, 4, figsize=(21, 9.5))
  ax = axes[0, 0]
  t31 = res["theorem31"]
  ns = [r["n"] for r in t31]
  ax.loglog(ns, [max(r["orthogonality_error"], floor) for r in t31], "o-", label="||W_u^T W_u - I||_F")
  ax.loglog(ns, [max(r["max_abs_dy"], floor) for r in t31], "s-", label="max |dy| (T = 1000)")
  ax.loglog(ns, [max(r["max_abs_dy"] / max(r["max_abs_y"], 1e-300), floor) for r in t31], "^--",
            label="max |dy| / max |y|")
  ax.axhline(1e-9, color="k", lw=0.8, ls=":", label="1e-9")
  ax.set(xlabel="RNN states n (URNN: 2n)", ylabel=f"error (0 plotted at {floor:g})",
         title="Thm 3.1: exact 2n-state unitary equivalent")
  ax.legend(fontsize=8)

  ax = axes[0, 1]
  for ch in res["theorem32_demo"]["channels"]:
    n = ch["n"]
    states = [f["states"] for f in ch["fits"]]
    ax.semilogy(states, [max(f["test_nmse"], floor) for f in ch["fits"]], "o-",
                label=f"n = {n}: fitted URNN")
    ax.semilogy([2 * n], [max(ch["construction"]["nmse"], floor)], "k*", ms=12)
  ax.semilogy([], [], "k*", label="2n construction (exact)")
  ax.set(xlabel="URNN states N", ylabel="held-out NMSE",
         title="Thm 3.2 demo: n channels, N < 2n vs 2n")
  ax.legend(fontsize=8)

  ax = axes[0, 2]
  for ch in res["theorem32_demo"]["channels"]:
    if ch["near_equivalent"]:
      sc = [r["scale"] for r in ch["near_equivalent"]]
      ax.loglog(sc, [r["max_abs_dy"] for r in ch["near_equivalent"]], "o-",
                label=f"n = {ch['n']}: {ch['n'] + 1}-state URNN, max|dy|")
      ax.loglog(sc, [r["C_norm"] for r in ch["near_equivalent"]], "x:",
                label=f"n = {ch['n']}: ||C_u||")
  ax.set(xlabel="scale s", title="(n+1)-state URNNs approach the n-channel map\n"
         "(error ~ s, never 0; weights grow)")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  else:
    ax.text(0.5, 0.5, "(needs n >= 2)", ha="center", transform=ax.transAxes)

  s = res["theorem41_demo"]
  ax = axes[1, 0]
  for act, mark in (("sigmoid", "o-"), ("relu", "s-")):
    rows = s["fits"][act]
    ax.semilogy([r["states"] for r in rows], [max(r["test_nmse"], floor) for r in rows], mark,
                label=f"{act}: fitted URNN")
  c = s["relu_construction"]
  ax.semilogy([c["states"]], [max(c["nmse"], floor)], "k*", ms=12, label="relu: 2n construction")
  ax.set(xlabel="URNN states N", ylabel="held-out NMSE",
         title=f"Thm 4.1 demo: sigmoid vs ReLU target (n = {s['n']})")
  ax.legend(fontsize=8)

  ax = axes[1, 1]
  tl = s["target_linearization"]
  meas = np.linalg.norm(np.asarray(tl["measured_response"]), axis=-1)
  pred = np.linalg.norm(np.asarray(tl["predicted_response"]), axis=-1)
  k = np.arange(len(meas))
  ax.semilogy(k, np.where(meas > 1e-13, meas, np.nan), "ko", label="target, measured (nonlinear)")
  ax.semilogy(k, np.maximum(pred, floor), "k-", label="target, C J^k B")
  ax.semilogy(k, pred[0] * tl["spectral_radius"] ** k, "k:", label="rate |lambda|max")
  for r in s["fits"]["sigmoid"]:
    g = np.linalg.norm(np.asarray(r["predicted_response"]), axis=-1)
    ax.semilogy(k, np.maximum(g, floor), "--", label=f"URNN N = {r['states']}")
  ax.set(xlabel="step k", ylabel="|dy(k)| / |dx(0)|", title="small-signal impulse response at x*")
  ax.legend(fontsize=7)

  ax = axes[1, 2]
  th = np.linspace(0, 2 * np.pi, 200)
  ax.plot(np.cos(th), np.sin(th), color="0.7", lw=0.8)
  ax.plot(0.25 * np.cos(th), 0.25 * np.sin(th), color="0.7", lw=0.8, ls=":")
  for r in s["fits"]["sigmoid"]:
    e = np.asarray(r["identified_eigenvalues"])
    ax.plot(e[:, 0], e[:, 1], "x", ms=8, label=f"poles of URNN N = {r['states']}")
  e = np.asarray(tl["eigenvalues"])
  ax.plot(e[:, 0], e[:, 1], "ko", mfc="none", ms=10, label="eig(J) of target")
  e = np.asarray(tl["identified_eigenvalues"])
  ax.plot(e[:, 0], e[:, 1], "k+", ms=10, label="poles identified from target I/O")
  ax.set(xlim=(-0.45, 0.45), ylim=(-0.35, 0.55), aspect="equal",
         title="linearised poles at x* (|z| = 1/4 dotted)")
  ax.legend(fontsize=7, loc="upper center", ncol=2)
  ax = axes[0, 3]
  dil = s["sigmoid_dilation"]
  bs = [d["garbage_bias"] for d in dil]
  ax.semilogy(bs, [max(d["max_abs_dy"], floor) for d in dil], "o-", label="max |dy|, sigmoid")
  ax.semilogy(bs, [max(d["extra_eigenvalue_max_abs"], floor) for d in dil], "x:",
              label="extra |eig(J_u)| at x*")
  ax.semilogy(bs, np.exp(-np.asarray(bs)), "k--", lw=0.8, label="e^-B")
  ax.axhline(np.finfo(np.float64).eps, color="0.5", lw=0.8, ls=":", label="float64 eps")
  ax.set(xlabel="garbage bias B (b2 = -B)",
         title="sigmoid RNN vs its 2n-state dilation:\nnever exact, error ~ e^-B")
  ax.legend(fontsize=8)

  ax = axes[1, 3]
  ts = res["theorem31"]
  ax.loglog([r["n"] for r in ts], [r["d_rnn"] for r in ts], "o-", label="d_rnn (n states)")
  ax.loglog([r["n"] for r in ts], [r["d_urnn"] for r in ts], "s-", label="d_urnn (2n states, paper)")
  ax.loglog([r["n"] for r in ts], [r["urnn_raw"] for r in ts], "^:", label="2n-state URNN incl. bias")
  ax.set(xlabel="n", ylabel="degrees of freedom", title="§3 parameter counts")
  ax.legend(fontsize=8)
  fig.tight_layout()
  training.save_figure(fig, path)
  plt.close(fig)


def write_results(res: dict[str, Any], workdir: str) -> str:
  """Writes results.json, theorem31.csv, tables.md and equivalence.png to ``workdir``.

  Returns:
    The markdown of :func:`tables` (also written to tables.md).
  """
  os.makedirs(workdir, exist_ok=True)
  text = tables(res)
  training.write_json(os.path.join(workdir, "results.json"), res)
  training.write_csv(os.path.join(workdir, "theorem31.csv"), res["theorem31"])
  training.atomic_write(os.path.join(workdir, "tables.md"), text)
  plot(res, os.path.join(workdir, "equivalence.png"))
  return text
