r"""Scan throughput: urnn_jax.Recurrent beside flax.linen.RNN and PyTorch.

Measures forward (``fwd``) and forward+backward (``fwdbwd``: the gradient of
``sum(y**2)`` with respect to all parameters) time per time step, for every
model on the same shapes and dtype, in one process:

===================  =========================================================
``recurrence``       ``urnn_jax.recurrence`` alone (the scan kernel, on
                     pre-projected inputs z): the "forward recurrence".
``urnn_rnn``         ``urnn_jax.Recurrent(RNNCell)`` (ReLU).
``urnn_orth``        ``Recurrent(OrthogonalRNNCell)``, free ``recurrent_kernel``
                     (kept orthogonal by projection in the optimiser).
``urnn_orth_expm``   ``Recurrent(OrthogonalRNNCell(parametrization="expm"))``.
``urnn_lstm``        ``Recurrent(flax.linen.LSTMCell)``.
``flax_simple``      ``flax.linen.RNN(SimpleCell(activation_fn=relu))``.
``flax_lstm``        ``flax.linen.RNN(LSTMCell)``.
``torch_rnn``        ``torch.nn.RNN(nonlinearity="relu", batch_first=True)``.
``torch_lstm``       ``torch.nn.LSTM(batch_first=True)``.
===================  =========================================================

and three forward-only rows that break the layer's time down, to explain
where a target is missed:

===================  =========================================================
``recurrence_bm``    ``recurrence`` on batch-major z (B, T, n) with the bias
                     added per step: the loop ``Recurrent`` runs (strided
                     per-step slabs).
``projection``       the layer's hoisted input projection alone: x F^T over
                     all steps as one (B*T, m) x (m, n) matmul, through
                     ``RNNCell.project_inputs`` as the layer calls it.
``matmul_chain``     T dependent (B, n) x (n, n) matmuls in a ``fori_loop``
                     (h <- h K): the recurrence without inputs or
                     activation, i.e. the rate XLA reaches at the per-step
                     matmul's own shape, the ceiling for any sequential
                     recurrence.
===================  =========================================================

(the torch rows only when torch is installed). At each grid point all
models are compiled first (compile time reported apart), warmed up, then
timed round-robin, so that a noisy machine slows all of them alike (the JAX
models among themselves, then the torch ones, whose OpenMP workers spin
after each op); the tables report medians. A large
jnp matmul is timed in the same run, and the recurrence's achieved GFLOP/s
(``2 B n^2`` per step forward, ``6 B n^2`` forward+backward: the recurrent
matmuls only) is reported as a fraction of it.

Writes ``scan_throughput.json`` and ``scan_throughput.md`` to ``--out_dir``.

Examples::

    python -m benchmarks.scan_throughput --quick            # < 2 minutes
    python -m benchmarks.scan_throughput                    # the full grid
    python -m benchmarks.scan_throughput --hidden=64 --batch=32 --seq_len=1000 \
        --models=urnn_rnn,flax_simple,torch_rnn
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import urnn_jax
from benchmarks import common

MODELS = (
    "recurrence",
    "recurrence_bm",
    "projection",
    "matmul_chain",
    "urnn_rnn",
    "urnn_orth",
    "urnn_orth_expm",
    "urnn_lstm",
    "flax_simple",
    "flax_lstm",
    "torch_rnn",
    "torch_lstm",
)
MODES = ("fwd", "fwdbwd")
FWD_ONLY_MODELS = ("recurrence_bm", "projection", "matmul_chain")
LSTM_MODELS = ("urnn_lstm", "flax_lstm", "torch_lstm")

FULL_GRID = dict(hidden=(16, 64, 256, 1024), batch=(1, 32, 256), seq_len=(100, 1000))
# --quick: the target points (T = 1000, batch 32, hidden 64 and 256; the LSTMs,
# in no target, only at hidden 64), plus hidden 256 x batch 256 for the
# matmul-peak target (forward only, fewer models).
QUICK_POINTS = ((64, 32, 1000), (256, 32, 1000), (256, 256, 1000))
QUICK_NO_LSTM_MODELS = tuple(m for m in MODELS if m not in LSTM_MODELS)
QUICK_PEAK_POINT_MODELS = ("recurrence", "recurrence_bm", "projection", "matmul_chain",
                           "urnn_rnn", "flax_simple", "torch_rnn")
QUICK_PEAK_POINT_MODES = ("fwd",)
SMOKE_POINTS = ((8, 2, 10),)

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command-line flags (only when run as a binary, so that
  several benchmark modules can be imported together, e.g. by the tests)."""
  flags.DEFINE_string("out_dir", "runs/benchmarks", "Directory for scan_throughput.{json,md}.")
  flags.DEFINE_bool("quick", False, "The target points only (under 2 minutes).")
  flags.DEFINE_bool("smoke", False, "A seconds-long run on tiny shapes (tests).")
  flags.DEFINE_list("hidden", None, "Hidden sizes (default: the full grid 16,64,256,1024).")
  flags.DEFINE_list("batch", None, "Batch sizes (default 1,32,256).")
  flags.DEFINE_list("seq_len", None, "Sequence lengths T (default 100,1000).")
  flags.DEFINE_list("models", None, f"Models, some of {list(MODELS)} (default all).")
  flags.DEFINE_list("modes", list(MODES), "fwd and/or fwdbwd.")
  flags.DEFINE_integer("input_size", 0, "Input features m (0: m = hidden, the usual RNN benchmark shape).")
  flags.DEFINE_integer("unroll", 1, "Scan unroll of the JAX models.")
  flags.DEFINE_integer("repeats", 5, "Timed rounds per grid point (median reported).")
  flags.DEFINE_integer("warmup", 1, "Untimed calls per model before timing.")
  flags.DEFINE_integer("peak_size", 2048, "Size of the square matmul that measures the machine peak.")
  flags.DEFINE_float("max_seconds_per_call", 30.0,
                     "Skip a (model, mode) at a point when its warm-up call takes longer than this"
                     " (--quick: at most 5).")


@dataclasses.dataclass(frozen=True)
class Settings:
  points: tuple[tuple[int, int, int], ...]  # (hidden, batch, seq_len)
  models: tuple[str, ...]
  modes: tuple[str, ...] = MODES
  input_size: int = 0
  unroll: int = 1
  repeats: int = 5
  warmup: int = 1
  peak_size: int = 2048
  max_seconds_per_call: float = 5.0
  point_models: dict | None = None  # optional per-point model subsets
  point_modes: dict | None = None  # optional per-point mode subsets

  def models_at(self, point) -> tuple[str, ...]:
    if self.point_models and point in self.point_models:
      allowed = self.point_models[point]
      return tuple(m for m in self.models if m in allowed)
    return self.models

  def modes_at(self, point) -> tuple[str, ...]:
    if self.point_modes and point in self.point_modes:
      allowed = self.point_modes[point]
      return tuple(m for m in self.modes if m in allowed)
    return self.modes


# ----------------------------------------------------------------------------
# Models.


def _jax_module(name: str, hidden: int, unroll: int):
  relu_cell = dict(activation="relu")
  if name == "urnn_rnn":
    return urnn_jax.Recurrent(urnn_jax.RNNCell(hidden, **relu_cell), unroll=unroll)
  if name == "urnn_orth":
    return urnn_jax.Recurrent(urnn_jax.OrthogonalRNNCell(hidden, **relu_cell), unroll=unroll)
  if name == "urnn_orth_expm":
    return urnn_jax.Recurrent(
        urnn_jax.OrthogonalRNNCell(hidden, parametrization="expm", **relu_cell), unroll=unroll
    )
  if name == "urnn_lstm":
    return urnn_jax.Recurrent(nn.LSTMCell(hidden), unroll=unroll)
  if name == "flax_simple":
    return nn.RNN(nn.SimpleCell(hidden, activation_fn=jax.nn.relu), unroll=unroll)
  if name == "flax_lstm":
    return nn.RNN(nn.LSTMCell(hidden), unroll=unroll)
  raise ValueError(f"not a JAX layer model: {name!r}")


def _jax_programs(name: str, hidden: int, batch: int, seq_len: int, m: int, unroll: int):
  """``{mode: (fn, args)}`` with ``fn`` jittable, for a JAX model."""
  x = jax.random.normal(jax.random.key(0), (batch, seq_len, m), jnp.float32)
  if name in ("recurrence", "recurrence_bm"):
    k = jax.random.split(jax.random.key(1), 2)
    kernel = urnn_jax.initializers.haar()(k[0], (hidden, hidden), jnp.float32)
    h0 = jnp.zeros((hidden,), jnp.float32)
    if name == "recurrence_bm":  # a forward-only breakdown row: the layer's loop, bias included
      z = jax.random.normal(k[1], (batch, seq_len, hidden), jnp.float32)
      bias = jax.random.normal(jax.random.key(2), (hidden,), jnp.float32)

      def fwd_bm(kernel, bias, z):
        return urnn_jax.recurrence(kernel, z, h0, "relu", bias=bias, unroll=unroll,
                                   batch_major=True)[1]

      return {"fwd": (fwd_bm, (kernel, bias, z))}

    z = jax.random.normal(k[1], (seq_len, batch, hidden), jnp.float32)

    def fwd(kernel, z):
      return urnn_jax.recurrence(kernel, z, h0, "relu", unroll=unroll)[1]

    def loss(kernel, z):
      return jnp.sum(jnp.square(fwd(kernel, z)))

    return {"fwd": (fwd, (kernel, z)), "fwdbwd": (jax.grad(loss, argnums=(0, 1)), (kernel, z))}
  if name == "projection":
    cell = urnn_jax.RNNCell(hidden)
    params = cell.init(jax.random.key(1), jnp.zeros((batch, hidden)), x[:, 0])["params"]

    def project(params, x):
      return cell.apply({"params": params}, x, custom_gradient=True, separate_bias=True,
                        method="project_inputs")[0]

    return {"fwd": (project, (params, x))}
  if name == "matmul_chain":
    kernel = urnn_jax.initializers.haar()(jax.random.key(1), (hidden, hidden), jnp.float32)
    h0 = jax.random.normal(jax.random.key(2), (batch, hidden), jnp.float32)

    def chain(kernel, h0):
      return jax.lax.fori_loop(0, seq_len, lambda _, h: h @ kernel, h0, unroll=unroll)

    return {"fwd": (chain, (kernel, h0))}

  module = _jax_module(name, hidden, unroll)
  variables = module.init(jax.random.key(1), x)
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}

  def fwd(params, x):
    return module.apply({"params": params, **rest}, x)

  def loss(params, x):
    return jnp.sum(jnp.square(fwd(params, x)))

  return {"fwd": (fwd, (params, x)), "fwdbwd": (jax.grad(loss), (params, x))}


def _torch_programs(name: str, hidden: int, batch: int, seq_len: int, m: int):
  torch = common.optional_torch()
  if torch is None:
    return None
  torch.manual_seed(0)
  if name == "torch_rnn":
    module = torch.nn.RNN(m, hidden, nonlinearity="relu", batch_first=True)
  else:
    module = torch.nn.LSTM(m, hidden, batch_first=True)
  x = torch.randn(batch, seq_len, m)

  def fwd():
    with torch.no_grad():
      return module(x)[0]

  def fwdbwd():
    for p in module.parameters():
      p.grad = None
    y = module(x)[0]
    y.square().sum().backward()
    return y

  return {"fwd": fwd, "fwdbwd": fwdbwd}


def recurrent_flops(model: str, mode: str, hidden: int, batch: int, seq_len: int,
                    input_size: int | None = None) -> float:
  """FLOPs of the recurrent matmuls (h @ W) alone: 2 B n^2 per step and matmul.

  Forward has one such matmul per step, forward+backward three (the forward
  one, delta @ W^T and the dW accumulation); LSTMs have four gates. The
  ``projection`` row counts its own matmul instead: 2 B m n per step.
  """
  per = 2.0 * batch * hidden * hidden * seq_len
  if model == "projection":  # the input projection's matmul: 2 B m n per step
    return per * (input_size or hidden) / hidden
  per *= 1 if mode == "fwd" else 3
  return per * (4 if model in LSTM_MODELS else 1)


# ----------------------------------------------------------------------------
# Running.


def run_point(settings: Settings, point, peak_gflops: float, log=logging.info) -> list[dict]:
  hidden, batch, seq_len = point
  m = settings.input_size or hidden
  calls: dict[tuple[str, str], Callable[[], Any]] = {}
  compile_s: dict[tuple[str, str], float | None] = {}
  skipped: dict[tuple[str, str], str] = {}
  sync: dict[tuple[str, str], Any] = {}
  modes = settings.modes_at(point)
  for name in settings.models_at(point):
    if name.startswith("torch"):
      progs = _torch_programs(name, hidden, batch, seq_len, m)
      if progs is None:
        continue
      for mode in modes:
        calls[(name, mode)] = progs[mode]
        compile_s[(name, mode)] = None
        sync[(name, mode)] = None
      continue
    progs = _jax_programs(name, hidden, batch, seq_len, m, settings.unroll)
    for mode in modes:
      if mode not in progs:  # the forward-only breakdown rows
        continue
      fn, args = progs[mode]
      compiled, secs = common.compile_jax(fn, *args)
      calls[(name, mode)] = functools.partial(compiled, *args)
      compile_s[(name, mode)] = secs
      sync[(name, mode)] = jax.block_until_ready

  # Warm up (this also finds calls too slow for the budget).
  for key in list(calls):
    s = sync[key] or (lambda r: r)
    t0 = time.perf_counter()
    for _ in range(max(settings.warmup, 1)):
      s(calls[key]())
    if (time.perf_counter() - t0) / max(settings.warmup, 1) > settings.max_seconds_per_call:
      skipped[key] = f"one call took more than {settings.max_seconds_per_call} s"
      del calls[key]

  # JAX models round-robin among themselves, then the torch ones: torch's
  # OpenMP workers keep spinning for a while after each op, which would slow
  # down whichever JAX call came next.
  times: dict[tuple[str, str], list[float]] = {}
  for group in ([k for k in calls if not k[0].startswith("torch")],
                [k for k in calls if k[0].startswith("torch")]):
    for key in group:
      times[key] = []
    for _ in range(settings.repeats):
      for key in group:
        s = sync[key] or (lambda r: r)
        t0 = time.perf_counter()
        s(calls[key]())
        times[key].append(time.perf_counter() - t0)

  rows = []
  for (name, mode), ts in times.items():
    med = common.median(ts)
    flops = recurrent_flops(name, mode, hidden, batch, seq_len, m)
    gflops = flops / med / 1e9
    rows.append({
        "model": name,
        "mode": mode,
        "hidden": hidden,
        "batch": batch,
        "seq_len": seq_len,
        "input_size": m,
        "us_per_step": med / seq_len * 1e6,
        "steps_per_s": seq_len / med,
        "median_s": med,
        "min_s": min(ts),
        "compile_s": compile_s[(name, mode)],
        "repeats": len(ts),
        "recurrent_gflops": gflops,
        "frac_of_peak": gflops / peak_gflops if peak_gflops else None,
        "times_s": ts,
    })
    log(f"  {name:15s} {mode:6s} n={hidden:<5d} B={batch:<4d} T={seq_len:<5d} "
        f"{med / seq_len * 1e6:10.2f} us/step  (compile {compile_s[(name, mode)] or 0:.2f} s)")
  for (name, mode), why in skipped.items():
    rows.append({"model": name, "mode": mode, "hidden": hidden, "batch": batch,
                 "seq_len": seq_len, "input_size": m, "skipped": why})
    log(f"  {name:15s} {mode:6s} skipped: {why}")
  return rows


def _find(rows, model, mode, point):
  for r in rows:
    if (r["model"], r["mode"], r["hidden"], r["batch"], r["seq_len"]) == (model, mode, *point):
      if "us_per_step" in r:
        return r
  return None


def ratios(rows: Sequence[dict], baseline: str, model: str = "urnn_rnn") -> list[dict]:
  """Throughput of ``model`` over ``baseline`` (>1: ``model`` faster) at every shared point."""
  out = []
  points = sorted({(r["hidden"], r["batch"], r["seq_len"]) for r in rows})
  for point in points:
    for mode in MODES:
      a, b = _find(rows, model, mode, point), _find(rows, baseline, mode, point)
      if a and b:
        out.append({"model": model, "baseline": baseline, "mode": mode, "hidden": point[0],
                    "batch": point[1], "seq_len": point[2],
                    "speedup": b["median_s"] / a["median_s"]})
  return out


def evaluate_targets(rows: Sequence[dict]) -> list[dict]:
  """The issue's CPU targets, each with its measured value (None: not measured)."""
  targets = []
  for n in (64, 256):
    a = _find(rows, "urnn_rnn", "fwdbwd", (n, 32, 1000))
    b = _find(rows, "flax_simple", "fwdbwd", (n, 32, 1000))
    value = b["median_s"] / a["median_s"] if a and b else None
    targets.append({
        "target": f"Recurrent fwd+bwd >= 1.3x flax nn.RNN(SimpleCell), T=1000 B=32 n={n}",
        "value": value, "threshold": 1.3,
        "met": None if value is None else value >= 1.3,
    })
  torch_ratios = [r for r in ratios(rows, "torch_rnn")]
  if torch_ratios:
    worst = min(torch_ratios, key=lambda r: r["speedup"])
    n_ok = sum(r["speedup"] >= 1.0 for r in torch_ratios)
    targets.append({
        "target": "Recurrent not slower than torch.nn.RNN(relu) (worst point over the grid, fwd and fwd+bwd)",
        "value": worst["speedup"], "threshold": 1.0, "met": worst["speedup"] >= 1.0,
        "detail": f"{n_ok}/{len(torch_ratios)} points >= 1; worst at n={worst['hidden']} "
                  f"B={worst['batch']} T={worst['seq_len']} {worst['mode']}",
    })
  else:
    targets.append({"target": "Recurrent not slower than torch.nn.RNN(relu)", "value": None,
                    "threshold": 1.0, "met": None, "detail": "torch not installed or not run"})
  peak_rows = [r for r in rows if r["model"] == "recurrence" and r["mode"] == "fwd"
               and r["hidden"] == 256 and r["batch"] == 256 and "frac_of_peak" in r]
  if peak_rows:
    best = max(peak_rows, key=lambda r: r["seq_len"])
    targets.append({
        "target": "forward recurrence >= 50% of matmul peak at n=256, B=256",
        "value": best["frac_of_peak"], "threshold": 0.5, "met": best["frac_of_peak"] >= 0.5,
        "detail": f"T={best['seq_len']}: {best['recurrent_gflops']:.1f} GFLOP/s",
    })
  else:
    targets.append({"target": "forward recurrence >= 50% of matmul peak at n=256, B=256",
                    "value": None, "threshold": 0.5, "met": None, "detail": "point not run"})
  return targets


def markdown(payload: dict) -> str:
  rows = [r for r in payload["rows"] if "us_per_step" in r]
  lines = ["# Scan throughput", ""]
  env = payload["environment"]
  peak = payload["peak"]
  lines.append(
      f"{env.get('processor', '')}, {env.get('cpu_count')} CPUs, jax {env['jax']} "
      f"({env['backend']}), flax {env.get('flax')}, torch {env.get('torch')}; "
      f"load average at start {env.get('load_average')}."
  )
  lines.append(
      f"Matmul peak (f32 {peak['size']}x{peak['size']}, same run): {peak['gflops']:.1f} GFLOP/s. "
      f"Times are medians of {payload['settings']['repeats']} interleaved rounds; µs per time "
      "step of the whole batch; compile time apart."
  )
  lines += ["", "## Targets", ""]
  lines.append(common.markdown_table(payload["targets"], ["target", "value", "threshold", "met", "detail"]))
  lines += ["## Per time step", ""]
  table = []
  points = sorted({(r["hidden"], r["batch"], r["seq_len"]) for r in rows})
  for point in points:
    flax_fb = _find(rows, "flax_simple", "fwdbwd", point)
    for name in MODELS:
      fw, fb = _find(rows, name, "fwd", point), _find(rows, name, "fwdbwd", point)
      if not fw and not fb:
        continue
      table.append({
          "n": point[0], "B": point[1], "T": point[2], "model": name,
          "fwd µs/step": fw and fw["us_per_step"], "fwd steps/s": fw and fw["steps_per_s"],
          "fwd+bwd µs/step": fb and fb["us_per_step"], "fwd+bwd steps/s": fb and fb["steps_per_s"],
          "fwd+bwd vs flax_simple": (flax_fb["median_s"] / fb["median_s"]) if (fb and flax_fb) else None,
          "fwd % peak": fw and 100 * fw["frac_of_peak"],
          "compile fwd s": fw and fw["compile_s"], "compile fwd+bwd s": fb and fb["compile_s"],
      })
  lines.append(common.markdown_table(table))
  skipped = [r for r in payload["rows"] if "skipped" in r]
  if skipped:
    lines += ["Skipped:", ""]
    lines.append(common.markdown_table(skipped, ["model", "mode", "hidden", "batch", "seq_len", "skipped"]))
  lines += ["", "`fwd % peak`: recurrent matmul FLOPs (2·B·n² per step; ×4 for LSTMs) per second "
            "over the matmul peak. Input size m = " + str(payload["settings"]["input_size"] or "hidden") + "."]
  return "\n".join(lines) + "\n"


def run(settings: Settings, out_dir: str | None = None, log=logging.info) -> dict:
  """Runs the benchmark; writes the files when ``out_dir`` is given; returns the payload."""
  t_start = time.perf_counter()
  env = common.environment()
  # Best of 10: the peak is the machine's, not a noisy moment's.
  peak = common.matmul_peak(settings.peak_size, repeats=10)
  log(f"matmul peak: {peak['gflops']:.1f} GFLOP/s ({settings.peak_size}^2 f32)")
  rows = []
  for point in settings.points:
    rows.extend(run_point(settings, point, peak["gflops"], log=log))
  settings_dict = dataclasses.asdict(settings)
  for key in ("point_models", "point_modes"):
    if settings_dict.get(key):
      settings_dict[key] = {"x".join(map(str, k)): list(v) for k, v in settings_dict[key].items()}
  payload = {
      "benchmark": "scan_throughput",
      "environment": env,
      "settings": settings_dict,
      "peak": peak,
      "rows": rows,
      "ratios_vs_flax_simple": ratios(rows, "flax_simple"),
      "ratios_vs_torch_rnn": ratios(rows, "torch_rnn"),
      "targets": evaluate_targets(rows),
      "wall_s": time.perf_counter() - t_start,
  }
  common.finish(out_dir, "scan_throughput", payload, markdown(payload), log)
  return payload


def settings_from_flags() -> Settings:
  models = tuple(FLAGS.models or MODELS)
  unknown = sorted(set(models) - set(MODELS))
  if unknown:
    raise app.UsageError(f"--models: unknown {unknown}; expected some of {list(MODELS)}.")
  modes = tuple(FLAGS.modes)
  if not modes or set(modes) - set(MODES):
    raise app.UsageError(f"--modes must be some of {list(MODES)}, got {modes}.")
  point_models = point_modes = None
  explicit = FLAGS.hidden or FLAGS.batch or FLAGS.seq_len
  if FLAGS.smoke:
    points = SMOKE_POINTS
    repeats, warmup, peak_size = 1, 1, 128
  elif FLAGS.quick and not explicit:
    points = QUICK_POINTS
    point_models = {(256, 32, 1000): QUICK_NO_LSTM_MODELS,
                    (256, 256, 1000): QUICK_PEAK_POINT_MODELS}
    point_modes = {(256, 256, 1000): QUICK_PEAK_POINT_MODES}
    repeats, warmup, peak_size = min(FLAGS.repeats, 3), 1, FLAGS.peak_size
  else:
    hidden = common.parse_int_list(FLAGS.hidden) or FULL_GRID["hidden"]
    batch = common.parse_int_list(FLAGS.batch) or FULL_GRID["batch"]
    seq_len = common.parse_int_list(FLAGS.seq_len) or FULL_GRID["seq_len"]
    points = tuple(itertools.product(hidden, batch, seq_len))
    repeats, warmup, peak_size = FLAGS.repeats, FLAGS.warmup, FLAGS.peak_size
    if FLAGS.quick:
      repeats = min(repeats, 3)
  max_seconds = FLAGS.max_seconds_per_call
  if FLAGS.quick or FLAGS.smoke:
    max_seconds = min(max_seconds, 5.0)
  return Settings(
      points=tuple(points), models=models, modes=modes, input_size=FLAGS.input_size,
      unroll=FLAGS.unroll, repeats=repeats, warmup=warmup, peak_size=peak_size,
      max_seconds_per_call=max_seconds, point_models=point_models,
      point_modes=point_modes,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  settings = settings_from_flags()
  payload = run(settings, FLAGS.out_dir, log=lambda s: print(s, flush=True))
  common.print_targets(payload)


if __name__ == "__main__":
  define_flags()
  app.run(main)
