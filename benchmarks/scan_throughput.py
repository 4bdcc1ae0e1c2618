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
``urnn_rnn_copying`` ``Recurrent(RNNCell)`` compiled with the round-1 loops
                     (``urnn_jax.rnn._IN_PLACE = False``: separate zero-filled
                     output buffers instead of writing in place): the A/B row
                     of the round-2 change.
``urnn_rnn_remat``   ``Recurrent(RNNCell, remat=True)``: the opt-in
                     rematerialisation (segments of about sqrt(T) steps).
``urnn_unitary``     ``Recurrent(UnitaryRNNCell(n // 2))``: the complex cell
                     (modReLU with a learned bias) with n / 2 complex units,
                     the same real dimension n as ``urnn_orth`` (issue 20);
                     loss sum |y|^2. Only when ``urnn_jax.UnitaryRNNCell`` exists.
``urnn_unitary_remat`` the same with ``remat=True``.
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

(the torch rows only when torch is installed). A grid point is (n, B, T, m),
m the input size (``--input_sizes``; 0 means m = n). At each grid point all
models are compiled first (compile time reported apart), warmed up, then
timed round-robin, so that a noisy machine slows all of them alike (the JAX
models among themselves, then the torch ones, whose OpenMP workers spin
after each op); the tables report medians. A large
jnp matmul is timed in the same run, and the recurrence's achieved GFLOP/s
(``2 B n^2`` per step forward, ``6 B n^2`` forward+backward: the recurrent
matmuls only) is reported as a fraction of it.

Memory (``memory_mb`` in the rows): for a JAX program, the compiled
program's own account (``compiled.memory_analysis()``: temporaries plus
arguments plus outputs), i.e. the peak of its buffers, not timing-dependent;
for torch, the growth of the process's resident set during its first call
at the point, sampled every millisecond (``memory_method`` says which), which
undercounts memory the C heap reuses from before the call (e.g. from the
previous point's calls).

``--quick`` runs the issue-21 grid: T = 1000, B = 32, n = 64 and 256 with
m = 1, 2 and n; n = B = 256 (forward, the matmul-peak point); and the long
sequences T = 10^4 and 10^5 at n = 64, B = 32, m = 2 (fwd+bwd, two rounds;
the remat rows beside the default ones).

Writes ``scan_throughput.json`` and ``scan_throughput.md`` to ``--out_dir``.

Examples::

    python -m benchmarks.scan_throughput --quick            # ~6 minutes on 2 idle cores
    python -m benchmarks.scan_throughput                    # the full grid
    python -m benchmarks.scan_throughput --hidden=64 --batch=32 --seq_len=1000 \
        --models=urnn_rnn,flax_simple,torch_rnn
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import threading
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
    "urnn_rnn_copying",
    "urnn_rnn_remat",
    "urnn_unitary",
    "urnn_unitary_remat",
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
# Points are (hidden n, batch B, seq_len T, input size m).
QUICK_POINTS = ((64, 32, 1000, 64), (64, 32, 1000, 2), (64, 32, 1000, 1),
                (256, 32, 1000, 256), (256, 32, 1000, 2), (256, 32, 1000, 1),
                (256, 256, 1000, 256),
                (64, 32, 10_000, 2), (64, 32, 100_000, 2))
QUICK_NO_LSTM_MODELS = tuple(m for m in MODELS if m not in LSTM_MODELS + ("urnn_unitary_remat",))
QUICK_SMALL_M_MODELS = ("recurrence_bm", "projection", "urnn_rnn", "urnn_rnn_copying", "urnn_orth",
                        "urnn_unitary", "flax_simple", "torch_rnn")
QUICK_PEAK_POINT_MODELS = ("recurrence", "recurrence_bm", "projection", "matmul_chain",
                           "urnn_rnn", "flax_simple", "torch_rnn")
QUICK_LONG_MODELS = ("urnn_rnn", "urnn_rnn_remat", "urnn_unitary", "urnn_unitary_remat",
                     "flax_simple", "torch_rnn")
QUICK_PEAK_POINT_MODES = ("fwd",)
QUICK_LONG_MODES = ("fwdbwd",)
LONG_SEQ_LEN = 10_000  # T >= this: a long-sequence point (fewer rounds in --quick)
SMOKE_POINTS = ((8, 2, 10, 8), (8, 2, 10, 2))

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
  flags.DEFINE_list("input_sizes", ["0"], "Input features m, one or more (0: m = hidden, the usual"
                    " RNN benchmark shape); the paper's tasks have m = 1 or 2.")
  flags.DEFINE_integer("unroll", 1, "Scan unroll of the JAX models.")
  flags.DEFINE_integer("repeats", 5, "Timed rounds per grid point (median reported).")
  flags.DEFINE_integer("warmup", 1, "Untimed calls per model before timing.")
  flags.DEFINE_integer("peak_size", 2048, "Size of the square matmul that measures the machine peak.")
  flags.DEFINE_float("max_seconds_per_call", 30.0,
                     "Skip a (model, mode) at a point when its warm-up call takes longer than this"
                     " (--quick: at most 5).")


@dataclasses.dataclass(frozen=True)
class Settings:
  points: tuple[tuple[int, int, int, int], ...]  # (hidden, batch, seq_len, input_size)
  models: tuple[str, ...]
  modes: tuple[str, ...] = MODES
  unroll: int = 1
  repeats: int = 5
  warmup: int = 1
  peak_size: int = 2048
  max_seconds_per_call: float = 5.0
  point_models: dict | None = None  # optional per-point model subsets
  point_modes: dict | None = None  # optional per-point mode subsets
  long_repeats: int | None = None  # rounds at T >= LONG_SEQ_LEN (None: repeats)

  def repeats_at(self, point) -> int:
    if self.long_repeats is not None and point[2] >= LONG_SEQ_LEN:
      return self.long_repeats
    return self.repeats

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
  if name in ("urnn_rnn", "urnn_rnn_copying"):
    return urnn_jax.Recurrent(urnn_jax.RNNCell(hidden, **relu_cell), unroll=unroll)
  if name == "urnn_orth":
    return urnn_jax.Recurrent(urnn_jax.OrthogonalRNNCell(hidden, **relu_cell), unroll=unroll)
  if name == "urnn_orth_expm":
    return urnn_jax.Recurrent(
        urnn_jax.OrthogonalRNNCell(hidden, parametrization="expm", **relu_cell), unroll=unroll
    )
  if name == "urnn_rnn_remat":
    return urnn_jax.Recurrent(urnn_jax.RNNCell(hidden, **relu_cell), unroll=unroll, remat=True)
  if name in ("urnn_unitary", "urnn_unitary_remat"):  # n / 2 complex units = n real ones
    if not has_unitary_cell():
      raise ValueError("urnn_jax.UnitaryRNNCell is not available in this checkout")
    return urnn_jax.Recurrent(urnn_jax.UnitaryRNNCell(max(hidden // 2, 1)), unroll=unroll,
                              remat=name.endswith("_remat"))
  if name == "urnn_lstm":
    return urnn_jax.Recurrent(nn.LSTMCell(hidden), unroll=unroll)
  if name == "flax_simple":
    return nn.RNN(nn.SimpleCell(hidden, activation_fn=jax.nn.relu), unroll=unroll)
  if name == "flax_lstm":
    return nn.RNN(nn.LSTMCell(hidden), unroll=unroll)
  raise ValueError(f"not a JAX layer model: {name!r}")


def has_unitary_cell() -> bool:
  """Whether this checkout has the complex cell of issue 20 (``urnn_jax.UnitaryRNNCell``)."""
  return hasattr(urnn_jax, "UnitaryRNNCell")


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
    y = fwd(params, x)
    return jnp.sum(jnp.square(jnp.abs(y) if jnp.iscomplexobj(y) else y))

  return {"fwd": (fwd, (params, x)), "fwdbwd": (jax.grad(loss), (params, x))}


def jax_memory(compiled) -> dict:
  """The compiled program's buffers (``compiled.memory_analysis()``), MB: temp + arguments + outputs."""
  try:
    ma = compiled.memory_analysis()
  except Exception:  # pragma: no cover - backend dependent
    return {}
  if ma is None:  # pragma: no cover
    return {}
  parts = {"temp_mb": ma.temp_size_in_bytes / 1e6, "argument_mb": ma.argument_size_in_bytes / 1e6,
           "output_mb": ma.output_size_in_bytes / 1e6}
  return {**parts, "memory_mb": sum(parts.values()), "memory_method": "memory_analysis"}


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_growth(call: Callable[[], Any], interval_s: float = 1e-3) -> dict:
  """Peak growth of the resident set during ``call()``, sampled every ``interval_s`` (MB).

  For torch on CPU, whose allocator is the C heap. It undercounts memory the
  heap reuses from before the call, so it is a lower bound.
  """
  if not os.path.exists("/proc/self/statm"):  # pragma: no cover - not Linux
    return {}
  base = _rss_bytes()
  peak = [base]
  done = threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], _rss_bytes())
      time.sleep(interval_s)

  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  try:
    call()
  finally:
    done.set()
    thread.join()
  peak[0] = max(peak[0], _rss_bytes())
  return {"memory_mb": (peak[0] - base) / 1e6, "memory_method": "rss_growth"}


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
  hidden, batch, seq_len, m = point
  calls: dict[tuple[str, str], Callable[[], Any]] = {}
  compile_s: dict[tuple[str, str], float | None] = {}
  memory: dict[tuple[str, str], dict] = {}
  skipped: dict[tuple[str, str], str] = {}
  sync: dict[tuple[str, str], Any] = {}
  modes = settings.modes_at(point)
  for name in settings.models_at(point):
    if name.startswith("urnn_unitary") and not has_unitary_cell():
      log(f"  {name}: skipped, urnn_jax.UnitaryRNNCell is not in this checkout")
      continue
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
      saved = urnn_jax.rnn._IN_PLACE  # read when the loops are traced, i.e. in compile_jax
      urnn_jax.rnn._IN_PLACE = saved and name != "urnn_rnn_copying"
      try:
        compiled, secs = common.compile_jax(fn, *args)
      finally:
        urnn_jax.rnn._IN_PLACE = saved
      calls[(name, mode)] = functools.partial(compiled, *args)
      compile_s[(name, mode)] = secs
      memory[(name, mode)] = jax_memory(compiled)
      sync[(name, mode)] = jax.block_until_ready

  # Warm up (this also finds calls too slow for the budget).
  for key in list(calls):
    s = sync[key] or (lambda r: r)
    t0 = time.perf_counter()
    for i in range(max(settings.warmup, 1)):
      if i == 0 and key[0].startswith("torch"):  # the first call's resident-set growth
        memory[key] = rss_growth(lambda k=key, s=s: s(calls[k]()))
      else:
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
    for _ in range(settings.repeats_at(point)):
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
        **memory.get((name, mode), {}),
    })
    mem = memory.get((name, mode), {}).get("memory_mb")
    log(f"  {name:18s} {mode:6s} n={hidden:<5d} B={batch:<4d} T={seq_len:<6d} m={m:<4d} "
        f"{med / seq_len * 1e6:10.2f} us/step  (compile {compile_s[(name, mode)] or 0:.2f} s"
        + ("" if mem is None else f", {mem:.1f} MB") + ")")
  for (name, mode), why in skipped.items():
    rows.append({"model": name, "mode": mode, "hidden": hidden, "batch": batch,
                 "seq_len": seq_len, "input_size": m, "skipped": why,
                 **memory.get((name, mode), {})})
    log(f"  {name:15s} {mode:6s} skipped: {why}")
  return rows


def _point(r) -> tuple[int, int, int, int]:
  return (r["hidden"], r["batch"], r["seq_len"], r.get("input_size") or r["hidden"])


def _find(rows, model, mode, point, timed=True):
  """The row of ``model``/``mode`` at ``point`` (n, B, T, m); a 3-tuple means m = n."""
  point = tuple(point) if len(point) == 4 else (*point, point[0])
  for r in rows:
    if (r["model"], r["mode"]) == (model, mode) and _point(r) == point:
      if "us_per_step" in r or not timed:
        return r
  return None


def ratios(rows: Sequence[dict], baseline: str, model: str = "urnn_rnn") -> list[dict]:
  """Throughput of ``model`` over ``baseline`` (>1: ``model`` faster) at every shared point."""
  out = []
  points = sorted({_point(r) for r in rows})
  for point in points:
    for mode in MODES:
      a, b = _find(rows, model, mode, point), _find(rows, baseline, mode, point)
      if a and b:
        out.append({"model": model, "baseline": baseline, "mode": mode, "hidden": point[0],
                    "batch": point[1], "seq_len": point[2], "input_size": point[3],
                    "speedup": b["median_s"] / a["median_s"]})
  return out


def _target(name, value, threshold, met=None, detail=None, higher_is_better=True):
  if met is None and value is not None:
    met = value >= threshold if higher_is_better else value <= threshold
  out = {"target": name, "value": value, "threshold": threshold, "met": met}
  if detail:
    out["detail"] = detail
  return out


def evaluate_targets(rows: Sequence[dict]) -> list[dict]:
  """The issue-21 CPU targets (and issue 8's torch one), each with its measured value (None: not measured)."""
  targets = []
  for n in (64, 256):
    for m in (1, 2, n):
      a = _find(rows, "urnn_rnn", "fwdbwd", (n, 32, 1000, m))
      b = _find(rows, "flax_simple", "fwdbwd", (n, 32, 1000, m))
      value = b["median_s"] / a["median_s"] if a and b else None
      targets.append(_target(
          f"Recurrent fwd+bwd >= 1.5x flax nn.RNN(SimpleCell), T=1000 B=32 n={n} m={m}", value, 1.5))
  torch_ratios = [r for r in ratios(rows, "torch_rnn") if r["seq_len"] < LONG_SEQ_LEN]
  if torch_ratios:
    worst = min(torch_ratios, key=lambda r: r["speedup"])
    n_ok = sum(r["speedup"] >= 1.0 for r in torch_ratios)
    targets.append(_target(
        "Recurrent not slower than torch.nn.RNN(relu) (worst point at T=1000, fwd and fwd+bwd)",
        worst["speedup"], 1.0,
        detail=f"{n_ok}/{len(torch_ratios)} points >= 1; worst at n={worst['hidden']} "
               f"B={worst['batch']} m={worst['input_size']} {worst['mode']}"))
  else:
    targets.append(_target("Recurrent not slower than torch.nn.RNN(relu)", None, 1.0,
                           detail="torch not installed or not run"))
  rec = _find(rows, "recurrence", "fwd", (256, 256, 1000, 256))
  targets.append(_target(
      "forward recurrence >= 50% of matmul peak at n=256, B=256", rec and rec["frac_of_peak"], 0.5,
      detail=rec and f"T=1000: {rec['recurrent_gflops']:.1f} GFLOP/s"))
  lay = _find(rows, "urnn_rnn", "fwd", (256, 256, 1000, 256))
  targets.append(_target(
      "layer forward within 1.25x of its recurrence row at n=256, B=256",
      lay["median_s"] / rec["median_s"] if lay and rec else None, 1.25, higher_is_better=False))
  # Memory: Recurrent <= flax at T = 1000, at every point where both ran fwd+bwd.
  mem = []
  for r in rows:
    if r["model"] == "urnn_rnn" and r["mode"] == "fwdbwd" and r["seq_len"] == 1000:
      f = _find(rows, "flax_simple", "fwdbwd", _point(r), timed=False)
      if f and r.get("memory_mb") and f.get("memory_mb"):
        mem.append((r["memory_mb"] / f["memory_mb"], _point(r)))
  worst = max(mem) if mem else None
  targets.append(_target(
      "Recurrent fwd+bwd peak memory <= flax's at T=1000 (worst ratio over the points)",
      worst and worst[0], 1.0, higher_is_better=False,
      detail=worst and f"{sum(v <= 1 for v, _ in mem)}/{len(mem)} points <= 1; worst at "
                       f"n={worst[1][0]} m={worst[1][3]}"))
  # Long sequences: the layer (default and remat) runs fwd+bwd at T = 1e4 and 1e5.
  for t in (10_000, 100_000):
    for model in ("urnn_rnn", "urnn_rnn_remat"):
      r = _find(rows, model, "fwdbwd", (64, 32, t, 2), timed=False)
      ran = None if r is None else "us_per_step" in r
      detail = None
      if ran:
        detail = f"{r['us_per_step']:.1f} us/step, {r.get('memory_mb', float('nan')):.0f} MB"
      elif r is not None:
        detail = r.get("skipped")
      targets.append(_target(f"{model} fwd+bwd runs at T={t}, n=64, B=32, m=2", ran, True,
                             met=ran, detail=detail))
  # Compile time: Recurrent's not more than 2x flax's (worst over the points, fwd+bwd).
  comp = []
  for r in rows:
    if r["model"] == "urnn_rnn" and r["mode"] == "fwdbwd" and r.get("compile_s"):
      f = _find(rows, "flax_simple", "fwdbwd", _point(r))
      if f and f.get("compile_s"):
        comp.append((r["compile_s"] / f["compile_s"], _point(r)))
  worst = max(comp) if comp else None
  targets.append(_target(
      "Recurrent compile time <= 2x flax's (fwd+bwd, worst ratio over the points)",
      worst and worst[0], 2.0, higher_is_better=False,
      detail=worst and f"worst at n={worst[1][0]} T={worst[1][2]} m={worst[1][3]}"))
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
  points = sorted({_point(r) for r in rows}, key=lambda p: (p[2] >= LONG_SEQ_LEN, p[0], p[1], p[2], -p[3]))
  for point in points:
    flax_fb = _find(rows, "flax_simple", "fwdbwd", point)
    for name in MODELS:
      fw, fb = _find(rows, name, "fwd", point), _find(rows, name, "fwdbwd", point)
      if not fw and not fb:
        continue
      table.append({
          "n": point[0], "B": point[1], "T": point[2], "m": point[3], "model": name,
          "fwd µs/step": fw and fw["us_per_step"], "fwd steps/s": fw and fw["steps_per_s"],
          "fwd+bwd µs/step": fb and fb["us_per_step"], "fwd+bwd steps/s": fb and fb["steps_per_s"],
          "fwd+bwd vs flax_simple": (flax_fb["median_s"] / fb["median_s"]) if (fb and flax_fb) else None,
          "fwd % peak": fw and 100 * fw["frac_of_peak"],
          "fwd+bwd MB": fb and fb.get("memory_mb"),
          "compile fwd s": fw and fw["compile_s"], "compile fwd+bwd s": fb and fb["compile_s"],
      })
  lines.append(common.markdown_table(table))
  skipped = [r for r in payload["rows"] if "skipped" in r]
  if skipped:
    lines += ["Skipped:", ""]
    lines.append(common.markdown_table(skipped, ["model", "mode", "hidden", "batch", "seq_len",
                                                 "input_size", "skipped"]))
  lines += ["", "`fwd % peak`: recurrent matmul FLOPs (2·B·n² per step; ×4 for LSTMs) per second "
            "over the matmul peak. `fwd+bwd MB`: JAX, the compiled program's temp + argument + "
            "output buffers (`memory_analysis()`); torch, the resident-set growth during one call "
            "(a lower bound). m: input size."]
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
  settings_dict["points"] = [list(p) for p in settings.points]
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
  point_models = point_modes = long_repeats = None
  explicit = FLAGS.hidden or FLAGS.batch or FLAGS.seq_len
  input_sizes = common.parse_int_list(FLAGS.input_sizes) or [0]
  if FLAGS.smoke:
    points = SMOKE_POINTS
    repeats, warmup, peak_size = 1, 1, 128
  elif FLAGS.quick and not explicit:
    points = QUICK_POINTS
    point_models = {(64, 32, 1000, 64): tuple(m for m in MODELS if m != "urnn_unitary_remat"),
                    (256, 32, 1000, 256): QUICK_NO_LSTM_MODELS,
                    (256, 256, 1000, 256): QUICK_PEAK_POINT_MODELS}
    for p in QUICK_POINTS:
      if p[3] in (1, 2) and p[2] == 1000:
        point_models[p] = QUICK_SMALL_M_MODELS
      if p[2] >= LONG_SEQ_LEN:
        point_models[p] = QUICK_LONG_MODELS
    point_modes = {(256, 256, 1000, 256): QUICK_PEAK_POINT_MODES}
    point_modes.update({p: QUICK_LONG_MODES for p in QUICK_POINTS if p[2] >= LONG_SEQ_LEN})
    repeats, warmup, peak_size = min(FLAGS.repeats, 3), 1, FLAGS.peak_size
    long_repeats = 2
  else:
    hidden = common.parse_int_list(FLAGS.hidden) or FULL_GRID["hidden"]
    batch = common.parse_int_list(FLAGS.batch) or FULL_GRID["batch"]
    seq_len = common.parse_int_list(FLAGS.seq_len) or FULL_GRID["seq_len"]
    points = tuple((n, b, t, m or n) for n, b, t, m in
                   itertools.product(hidden, batch, seq_len, input_sizes))
    repeats, warmup, peak_size = FLAGS.repeats, FLAGS.warmup, FLAGS.peak_size
    if FLAGS.quick:
      repeats = min(repeats, 3)
  max_seconds = FLAGS.max_seconds_per_call
  if FLAGS.quick or FLAGS.smoke:
    max_seconds = min(max_seconds, 5.0)
    if FLAGS.quick and not explicit:  # a T = 1e5 fwd+bwd call takes seconds (torch: ~10 s)
      max_seconds = max(max_seconds, 30.0)
  return Settings(
      points=tuple(points), models=models, modes=modes,
      unroll=FLAGS.unroll, repeats=repeats, warmup=warmup, peak_size=peak_size,
      max_seconds_per_call=max_seconds, point_models=point_models,
      point_modes=point_modes, long_repeats=long_repeats,
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
