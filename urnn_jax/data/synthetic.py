"""The paper's synthetic teacher and its data (seed 000, §5, Figs 2 and 3).

The "true system" is a contractive ReLU RNN, eq. (1), with

* ``m = 2`` inputs, ``p = 2`` outputs and ``n = 4`` hidden units;
* ``F``, ``C`` and ``b`` i.i.d. standard Gaussian;
* ``W = I - eps A^T A / ||A||_2^2`` with ``A`` i.i.d. Gaussian and
  ``eps = 0.01`` (eq. 6, :func:`urnn_jax.initializers.contractive`), so the
  singular values of ``W`` lie in ``[1 - eps, 1)``: slowly varying states with
  a time constant of about ``1/eps`` steps;
* biases re-set so that each hidden unit is *on* (positive pre-activation) a
  target fraction of the time, 60% in the paper (:func:`calibrate_bias`,
  iterated on the realization's own simulated inputs);
* zero initial state ``h(-1) = 0``.

Inputs are i.i.d. standard Gaussian or *sparse* Gaussian (each entry nonzero
with probability 0.02). Outputs get white Gaussian noise at a target SNR:
``noise power = signal power / 10^(SNR/10)`` per output channel, with the
signal power taken as the variance of the clean output over the realization's
data (``power="variance"``, the default; ``"mean_square"`` uses E[y^2]).

With ``power="variance"`` the best achievable test R^2 (predicting the clean
output exactly) is ``snr / (1 + snr)``, ``snr = 10^(SNR/10)``:
:func:`optimal_r2`, the paper's red dashed line. Each realization also
reports the R^2 of the teacher itself on its noisy test data
(``oracle_r2``), the empirical version of the same number.

Everything here is a pure function of a PRNG key: realization ``r`` of
:func:`make_realizations` uses ``jax.random.fold_in(key, r)``, so asking for
more realizations only appends new ones.

Input checks: counts and sizes must be positive ints (TypeError for a
non-int, ValueError below 1, naming the argument); the data are real, so
complex arrays raise TypeError and integer arrays are promoted to float
(never integer arithmetic); ``power`` must be one of
:data:`POWER_DEFINITIONS`; arrays compared elementwise must have the same
shape. The checks inspect Python values, shapes and dtypes only (free under
``jit``); values that are traced are not checked.

Example:
  >>> import jax
  >>> from urnn_jax.data import synthetic
  >>> spec = synthetic.TeacherSpec(seq_len=50, calibration_sequences=8)
  >>> data = synthetic.make_realization(jax.random.key(0), spec, 6, 4)
  >>> data.x_train.shape, data.y_test.shape
  ((6, 50, 2), (4, 50, 2))
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from urnn_jax import initializers
from urnn_jax.rnn import RNNParams, check_int, get_activation, recurrence

Array = jax.Array

INPUT_KINDS = ("gaussian", "sparse")
POWER_DEFINITIONS = ("variance", "mean_square")


# ---------------------------------------------------------------------------
# Argument checks.


def _check_count(fn: str, name: str, value, low: int = 1) -> int:
  """``value`` as an int >= ``low`` (:func:`urnn_jax.rnn.check_int`)."""
  return check_int(fn, name, value, low)


def _check_real_number(fn: str, name: str, value) -> None:
  """TypeError unless ``value`` is a real Python/NumPy number (or a traced array)."""
  if isinstance(value, jax.core.Tracer):
    return
  real_scalar_array = (
      hasattr(value, "dtype") and np.ndim(value) == 0
      and (jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating)))
  if isinstance(value, (bool, np.bool_)) or not (isinstance(value, numbers.Real) or real_scalar_array):
    raise TypeError(
        f"{fn}: {name} must be a real number, got {type(value).__name__}: {name}={value!r}."
    )


def _real_array(fn: str, name: str, x) -> Array:
  """``x`` checked to be real: complex raises TypeError, integers (and bools) are
  promoted to the default float dtype; real floating arrays pass unchanged."""
  if getattr(x, "dtype", None) is None or getattr(x, "shape", None) is None:
    x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    raise TypeError(
        f"{fn}: {name} has complex dtype {x.dtype}; the synthetic data are real."
    )
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    x = jnp.asarray(x, jnp.result_type(float))
  return x


def _real_params(fn: str, params: RNNParams) -> RNNParams:
  """``params`` with real floating fields (complex: TypeError; integers promoted)."""
  if not isinstance(params, RNNParams):
    raise TypeError(f"{fn}: params must be urnn_jax.RNNParams, got {type(params).__name__}.")
  promoted = {}
  for name, v in zip(RNNParams._fields, params):
    dtype = getattr(v, "dtype", None)
    dtype = jnp.dtype(jnp.asarray(v).dtype if dtype is None else dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      raise TypeError(
          f"{fn}: params.{name} has complex dtype {dtype}; the synthetic teacher is real."
      )
    if not jnp.issubdtype(dtype, jnp.inexact):
      promoted[name] = jnp.asarray(v, jnp.result_type(float))
  return params._replace(**promoted) if promoted else params


def _check_power(fn: str, power) -> None:
  if power not in POWER_DEFINITIONS:
    raise ValueError(f"{fn}: power={power!r}; expected one of {POWER_DEFINITIONS}.")


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
  """Settings of the synthetic system and its data (defaults: the paper's).

  Attributes:
    input_size: m.
    output_size: p.
    hidden_size: n of the true system.
    eps: contraction of W (eq. 6).
    on_target: target fraction of time each hidden unit is on.
    inputs: ``"gaussian"`` or ``"sparse"``.
    sparsity: probability that a sparse input entry is nonzero.
    snr_db: output signal-to-noise ratio in dB.
    power: how the signal power is measured, ``"variance"`` or
      ``"mean_square"``.
    seq_len: T, time steps per sequence.
    activation: the teacher's activation (ReLU in the paper).
    calibration_sequences: ``None`` (default): calibrate the biases on the
      realization's own inputs (train and test), so that the target holds on
      the data the models see; an int: on that many independent sequences
      instead. (With sparse inputs a unit's on-fraction varies a lot from
      sequence to sequence, since the states move only at the rare nonzero
      inputs, so a separate calibration set of a few hundred sequences can
      miss the target on the data by a few percent.)
    calibration_iters: steps of the bias calibration.
  """

  input_size: int = 2
  output_size: int = 2
  hidden_size: int = 4
  eps: float = 0.01
  on_target: float = 0.6
  inputs: str = "gaussian"
  sparsity: float = 0.02
  snr_db: float = 20.0
  power: str = "variance"
  seq_len: int = 1000
  activation: str = "relu"
  calibration_sequences: int | None = None
  calibration_iters: int = 50

  def __post_init__(self):
    for name in ("input_size", "output_size", "hidden_size", "seq_len",
                 "calibration_sequences", "calibration_iters"):
      value = getattr(self, name)
      if value is None and name == "calibration_sequences":
        continue
      if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
          or value < 1):
        raise ValueError(f"TeacherSpec.{name} must be a positive int, got {value!r}.")
    for name in ("eps", "on_target", "sparsity", "snr_db"):
      _check_real_number("TeacherSpec", name, getattr(self, name))
    if not 0.0 < self.eps < 1.0:
      raise ValueError(f"TeacherSpec.eps must be in (0, 1), got {self.eps!r}.")
    if not 0.0 < self.on_target < 1.0:
      raise ValueError(f"TeacherSpec.on_target must be in (0, 1), got {self.on_target!r}.")
    if self.inputs not in INPUT_KINDS:
      raise ValueError(
          f"TeacherSpec.inputs={self.inputs!r}; expected one of {INPUT_KINDS}."
      )
    if not 0.0 < self.sparsity <= 1.0:
      raise ValueError(f"TeacherSpec.sparsity must be in (0, 1], got {self.sparsity!r}.")
    if self.power not in POWER_DEFINITIONS:
      raise ValueError(
          f"TeacherSpec.power={self.power!r}; expected one of {POWER_DEFINITIONS}."
      )
    if not math.isfinite(self.snr_db):
      raise ValueError(f"TeacherSpec.snr_db must be finite, got {self.snr_db!r}.")
    get_activation(self.activation)



class Realization(NamedTuple):
  """One realization of the teacher and its data (a pytree; stackable).

  Attributes:
    teacher: the calibrated true system, :class:`~urnn_jax.RNNParams`.
    x_train, y_train: ``(N_train, T, m)`` inputs and noisy ``(N_train, T, p)``
      outputs.
    x_test, y_test: the same for the test sequences.
    on_fraction: ``(n,)`` fraction of time each teacher unit is on, measured on
      this realization's train and test inputs (the fraction achieved).
    noise_std: ``(p,)`` standard deviation of the added output noise.
    snr_db: ``(p,)`` SNR measured on the generated data (clean signal power /
      realized noise power, the same power definition as the target).
    oracle_r2: test R^2 of the teacher itself (clean output as prediction).
  """

  teacher: RNNParams
  x_train: Array
  y_train: Array
  x_test: Array
  y_test: Array
  on_fraction: Array
  noise_std: Array
  snr_db: Array
  oracle_r2: Array


def optimal_r2(snr_db: float) -> float:
  """The best expected R^2 at an SNR (variance power): snr / (1 + snr)."""
  _check_real_number("optimal_r2", "snr_db", snr_db)
  snr = 10.0 ** (float(snr_db) / 10.0)
  return snr / (1.0 + snr)


def sample_teacher(key: Array, spec: TeacherSpec = TeacherSpec()) -> RNNParams:
  """A random, *uncalibrated* teacher: W by eq. (6), F, C, b i.i.d. N(0, 1), h0 = 0."""
  n, m, p = spec.hidden_size, spec.input_size, spec.output_size
  kw, kf, kc, kb = jax.random.split(key, 4)
  w = initializers.contractive(spec.eps)(kw, (n, n), jnp.float32)
  f = jax.random.normal(kf, (n, m), jnp.float32)
  c = jax.random.normal(kc, (p, n), jnp.float32)
  b = jax.random.normal(kb, (n,), jnp.float32)
  return RNNParams(W=w, F=f, b=b, C=c, h0=jnp.zeros((n,), jnp.float32))


def sample_inputs(
    key: Array,
    num_sequences: int,
    seq_len: int,
    input_size: int,
    kind: str = "gaussian",
    *,
    sparsity: float = 0.02,
) -> Array:
  """``(num_sequences, seq_len, input_size)`` i.i.d. N(0, 1) or sparse inputs.

  ``kind="sparse"``: each entry is N(0, 1) with probability ``sparsity`` and 0
  otherwise.

  Raises:
    TypeError / ValueError: for sizes that are not positive ints, an unknown
      ``kind`` or a ``sparsity`` outside (0, 1].
  """
  fn = "sample_inputs"
  num_sequences = _check_count(fn, "num_sequences", num_sequences)
  seq_len = _check_count(fn, "seq_len", seq_len)
  input_size = _check_count(fn, "input_size", input_size)
  if kind not in INPUT_KINDS:
    raise ValueError(f"sample_inputs: kind={kind!r}; expected one of {INPUT_KINDS}.")
  _check_real_number(fn, "sparsity", sparsity)
  if not isinstance(sparsity, jax.core.Tracer) and not 0.0 < sparsity <= 1.0:
    raise ValueError(f"sample_inputs: sparsity must be in (0, 1], got sparsity={sparsity!r}.")
  shape = (num_sequences, seq_len, input_size)
  kx, km = jax.random.split(key)
  x = jax.random.normal(kx, shape, jnp.float32)
  if kind == "sparse":
    x = jnp.where(jax.random.bernoulli(km, sparsity, shape), x, 0.0)
  return x


def _states(params: RNNParams, x: Array, activation, fn: str = "_states") -> tuple[Array, Array]:
  """Pre-activations and states, both ``(N, T, n)``, of the teacher on ``x``."""
  params = _real_params(fn, params)
  x = _real_array(fn, "x", x)
  m = params.F.shape[-1]
  if x.ndim < 2 or x.shape[-1] != m:
    raise ValueError(f"{fn}: x must have shape (..., T, {m}) (m = F's columns), got {x.shape}.")
  phi = get_activation(activation)
  z = jnp.moveaxis(x @ params.F.T + params.b, -2, 0)  # (T, N, n)
  _, hs = recurrence(params.W.T, z, params.h0, phi)
  h_prev = jnp.concatenate(
      [jnp.broadcast_to(params.h0, hs.shape[1:])[None], hs[:-1]], axis=0
  )
  pre = h_prev @ params.W.T + z
  return jnp.moveaxis(pre, 0, -2), jnp.moveaxis(hs, 0, -2)


def on_fraction(params: RNNParams, x: Array, activation="relu") -> Array:
  """``(n,)`` fraction of (sequence, step) pairs where each unit's pre-activation is > 0."""
  pre, _ = _states(params, x, activation, "on_fraction")
  return jnp.mean(pre > 0, axis=tuple(range(pre.ndim - 1)))


def input_scale(params: RNNParams, spec: TeacherSpec) -> Array:
  """``(n,)`` standard deviation of the input drive (F x)_i, the bias's natural unit."""
  q = spec.sparsity if spec.inputs == "sparse" else 1.0
  return jnp.linalg.norm(params.F, axis=-1) * jnp.sqrt(q)


def calibrate_bias(
    params: RNNParams,
    x: Array,
    *,
    target: float = 0.6,
    iters: int = 50,
    scale: Array | None = None,
    activation="relu",
) -> tuple[RNNParams, Array]:
  """Sets ``b`` so that each unit is on a ``target`` fraction of the time on ``x``.

  All units are adjusted together on the same simulated inputs (common random
  numbers, so the measured fraction is a deterministic function of ``b``),
  by a sign-based step with per-unit adaptive step sizes (Rprop): unit i
  moves its bias up when it is on less often than ``target`` and down
  otherwise; its step grows by 1.2 while the direction holds and halves when
  it flips. The start is ``b_i = -0.25 s_i`` with step ``0.25 s_i``, where
  ``s_i`` is the standard deviation of the unit's input drive (``scale``,
  default ``||F_i||``). Unlike a per-unit bisection this follows the
  coupling of the units through W's off-diagonal entries (raising one unit's
  bias changes the others' fractions). jit/vmap safe.

  Returns:
    ``(params with the new b, (n,) on-fractions measured on x at that b)``.

  Raises:
    TypeError / ValueError: for complex params or x, an ``iters`` that is not
      an int >= 1, or a ``target`` outside (0, 1) (Python values only; traced
      values are not checked).
  """
  fn = "calibrate_bias"
  params = _real_params(fn, params)
  x = _real_array(fn, "x", x)
  if not isinstance(iters, jax.core.Tracer):
    _check_count(fn, "iters", iters)
  _check_real_number(fn, "target", target)
  if not isinstance(target, jax.core.Tracer) and not 0.0 < target < 1.0:
    raise ValueError(f"{fn}: target must be in (0, 1), got target={target!r}.")
  s = jnp.linalg.norm(params.F, axis=-1) if scale is None else jnp.asarray(scale)
  s = jnp.where(s > 0, s, 1.0).astype(params.b.dtype)

  def frac_at(b):
    return on_fraction(params._replace(b=b), x, activation)

  def body(_, carry):
    b, step, prev_dir = carry
    direction = jnp.sign(target - frac_at(b))
    flipped = direction * prev_dir < 0
    step = jnp.where(flipped, 0.5 * step, jnp.minimum(1.2 * step, 2.0 * s))
    return b + direction * step, step, direction

  init = (-0.25 * s, 0.25 * s, jnp.zeros_like(s))
  b, _, _ = lax.fori_loop(0, iters, body, init)
  return params._replace(b=b), frac_at(b)


def _power(y: Array, power: str) -> Array:
  _check_power("_power", power)
  axes = tuple(range(y.ndim - 1))
  if power == "variance":
    return jnp.var(y, axis=axes)
  return jnp.mean(jnp.square(y), axis=axes)


def noise_std_for_snr(y_clean: Array, snr_db: float, power: str = "variance") -> Array:
  """``(p,)`` noise standard deviation giving ``snr_db`` on each output channel."""
  _check_power("noise_std_for_snr", power)
  _check_real_number("noise_std_for_snr", "snr_db", snr_db)
  y_clean = _real_array("noise_std_for_snr", "y_clean", y_clean)
  return jnp.sqrt(_power(y_clean, power) / 10.0 ** (snr_db / 10.0))


def measured_snr_db(y_clean: Array, y_noisy: Array, power: str = "variance") -> Array:
  """``(p,)`` SNR in dB of ``y_noisy = y_clean + noise``, per output channel."""
  fn = "measured_snr_db"
  _check_power(fn, power)
  y_clean = _real_array(fn, "y_clean", y_clean)
  y_noisy = _real_array(fn, "y_noisy", y_noisy)
  if y_clean.shape != y_noisy.shape:
    raise ValueError(
        f"{fn}: y_clean and y_noisy must have the same shape, got {y_clean.shape}"
        f" and {y_noisy.shape}."
    )
  noise = y_noisy - y_clean
  return 10.0 * jnp.log10(_power(y_clean, power) / _power(noise, power))


def r2_score(y_true: Array, y_pred: Array) -> Array:
  """R^2 per output channel, averaged over channels (sklearn's ``uniform_average``).

  The last axis holds the channels; all other axes (realization excluded:
  call under ``vmap``) are pooled. 1 is perfect, 0 is predicting the mean.

  Raises:
    ValueError: if ``y_true`` and ``y_pred`` differ in shape (no
      broadcasting) or are 0-d.
    TypeError: for complex arrays (integer arrays are promoted to float).
  """
  y_true = _real_array("r2_score", "y_true", y_true)
  y_pred = _real_array("r2_score", "y_pred", y_pred)
  if y_true.shape != y_pred.shape or y_true.ndim < 1:
    raise ValueError(
        "r2_score: y_true and y_pred must have the same shape (..., channels),"
        f" got {y_true.shape} and {y_pred.shape}."
    )
  axes = tuple(range(y_true.ndim - 1))
  sse = jnp.sum(jnp.square(y_true - y_pred), axis=axes)
  sst = jnp.sum(jnp.square(y_true - jnp.mean(y_true, axis=axes)), axis=axes)
  return jnp.mean(1.0 - sse / sst)


def make_realization(
    key: Array,
    spec: TeacherSpec = TeacherSpec(),
    num_train: int = 700,
    num_test: int = 300,
) -> Realization:
  """One teacher (calibrated) and its noisy train/test data.

  The teacher is drawn (:func:`sample_teacher`), its inputs are drawn, its
  biases are calibrated (:func:`calibrate_bias`, on those inputs unless
  ``spec.calibration_sequences`` asks for a separate set), then the clean
  outputs are simulated and noise at ``spec.snr_db`` is added.

  Raises:
    TypeError / ValueError: for a ``spec`` that is not a TeacherSpec, or
      ``num_train`` / ``num_test`` that are not ints >= 1.
  """
  _check_sizes("make_realization", spec, num_train=num_train, num_test=num_test)
  k_teacher, k_cal, k_x, k_noise = jax.random.split(key, 4)
  teacher = sample_teacher(k_teacher, spec)
  x = sample_inputs(
      k_x, num_train + num_test, spec.seq_len, spec.input_size, spec.inputs,
      sparsity=spec.sparsity,
  )
  if spec.calibration_sequences is None:
    x_cal = x
  else:
    x_cal = sample_inputs(
        k_cal, spec.calibration_sequences, spec.seq_len, spec.input_size, spec.inputs,
        sparsity=spec.sparsity,
    )
  teacher, _ = calibrate_bias(
      teacher, x_cal, target=spec.on_target, iters=spec.calibration_iters,
      scale=input_scale(teacher, spec), activation=spec.activation,
  )
  pre, h = _states(teacher, x, spec.activation, "make_realization")
  frac = jnp.mean(pre > 0, axis=(0, 1))
  y_clean = h @ teacher.C.T
  noise_std = noise_std_for_snr(y_clean, spec.snr_db, spec.power)
  y = y_clean + noise_std * jax.random.normal(k_noise, y_clean.shape, y_clean.dtype)
  return Realization(
      teacher=teacher,
      x_train=x[:num_train],
      y_train=y[:num_train],
      x_test=x[num_train:],
      y_test=y[num_train:],
      on_fraction=frac,
      noise_std=noise_std,
      snr_db=measured_snr_db(y_clean, y, spec.power),
      oracle_r2=r2_score(y[num_train:], y_clean[num_train:]),
  )


def _check_sizes(fn: str, spec, **counts) -> None:
  if not isinstance(spec, TeacherSpec):
    raise TypeError(f"{fn}: spec must be a TeacherSpec, got {type(spec).__name__}: {spec!r}.")
  for name, value in counts.items():
    _check_count(fn, name, value)


@functools.lru_cache(maxsize=16)
def _realization_fn(spec: TeacherSpec, num_train: int, num_test: int):
  """``make_realization`` jitted for fixed settings (cached: compiled once per process)."""
  return jax.jit(lambda k: make_realization(k, spec, num_train, num_test))


def make_realizations(
    key: Array,
    spec: TeacherSpec = TeacherSpec(),
    num_realizations: int = 30,
    num_train: int = 700,
    num_test: int = 300,
) -> Realization:
  """Realizations ``0..R-1`` stacked on a leading axis (realization r: ``fold_in(key, r)``).

  Generated one at a time by one compiled function (memory stays at one
  realization's simulation), then stacked as host (numpy) arrays.
  """
  _check_sizes("make_realizations", spec, num_realizations=num_realizations,
               num_train=num_train, num_test=num_test)
  one = _realization_fn(spec, num_train, num_test)
  parts = [jax.device_get(one(jax.random.fold_in(key, r))) for r in range(num_realizations)]
  return jax.tree.map(lambda *xs: np.stack(xs), *parts)


def summary(data: Realization, spec: TeacherSpec) -> dict:
  """Host-side description of (stacked) realizations, for results files."""
  frac = np.asarray(data.on_fraction)
  snr = np.asarray(data.snr_db)
  oracle = np.atleast_1d(np.asarray(data.oracle_r2))
  sv = np.linalg.svd(np.asarray(data.teacher.W), compute_uv=False)
  return {
      "spec": dataclasses.asdict(spec),
      "num_realizations": int(oracle.shape[0]),
      "on_fraction_target": spec.on_target,
      "on_fraction_mean": float(frac.mean()),
      "on_fraction_min": float(frac.min()),
      "on_fraction_max": float(frac.max()),
      "snr_db_target": spec.snr_db,
      "snr_db_measured_mean": float(snr.mean()),
      "snr_db_measured_min": float(snr.min()),
      "snr_db_measured_max": float(snr.max()),
      "teacher_singular_value_min": float(sv.min()),
      "teacher_singular_value_max": float(sv.max()),
      "optimal_r2": optimal_r2(spec.snr_db) if spec.power == "variance" else None,
      "oracle_r2_median": float(np.median(oracle)),
      "oracle_r2": oracle.tolist(),
  }
