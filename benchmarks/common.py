"""Shared pieces of the benchmark binaries: timing, peak, environment, output.

Timing protocol (:func:`time_jax`): the function is jitted, lowered and
compiled explicitly, and that wall time is reported apart as
``compile_s``; then ``warmup`` calls run untimed; then ``repeats`` timed
calls, each ended by ``jax.block_until_ready``. A result holds every
repeat, their median (the number the tables report) and minimum.
:func:`time_callable` applies the same protocol to anything else (PyTorch:
``sync=None`` since its CPU ops are synchronous).

Output (:func:`write_results`): ``<out_dir>/<name>.json`` (environment,
settings, rows, derived ratios/targets) and ``<out_dir>/<name>.md`` (the same
as markdown tables), both written atomically.

Example::

    from benchmarks import common
    t = common.time_jax(lambda x: x @ x, jnp.ones((512, 512)), repeats=5)
    t.median_s, t.compile_s
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from urnn_jax import training


# ----------------------------------------------------------------------------
# Timing.


@dataclasses.dataclass
class Timing:
  """Wall times of one benchmarked function, in seconds."""

  times_s: list[float]
  compile_s: float | None = None
  warmup: int = 0

  @property
  def median_s(self) -> float:
    return float(statistics.median(self.times_s))

  @property
  def min_s(self) -> float:
    return float(min(self.times_s))

  @property
  def repeats(self) -> int:
    return len(self.times_s)

  def as_dict(self) -> dict:
    return {
        "median_s": self.median_s,
        "min_s": self.min_s,
        "compile_s": self.compile_s,
        "repeats": self.repeats,
        "warmup": self.warmup,
        "times_s": list(self.times_s),
    }


def _repeat(call: Callable[[], Any], repeats: int, min_time_s: float, max_repeats: int) -> list[float]:
  """Times ``call`` ``repeats`` times, more (up to ``max_repeats``) until ``min_time_s`` is spent."""
  times = []
  spent = 0.0
  while len(times) < repeats or (spent < min_time_s and len(times) < max_repeats):
    t0 = time.perf_counter()
    call()
    dt = time.perf_counter() - t0
    times.append(dt)
    spent += dt
  return times


def time_callable(
    fn: Callable[..., Any],
    *args,
    warmup: int = 1,
    repeats: int = 5,
    min_time_s: float = 0.0,
    max_repeats: int = 100,
    sync: Callable[[Any], Any] | None = jax.block_until_ready,
    compile_s: float | None = None,
) -> Timing:
  """Times ``fn(*args)`` after ``warmup`` untimed calls; ``sync`` ends each call.

  Args:
    fn: the function; already compiled if it is a JAX function.
    warmup: untimed calls first.
    repeats: timed calls (at least).
    min_time_s: keep repeating until this much time was measured (at most
      ``max_repeats`` calls), to steady short measurements.
    sync: applied to each result before the clock stops
      (``jax.block_until_ready``; ``None`` for synchronous code).
    compile_s: stored in the result as the compile time.
  """
  if repeats < 1:
    raise ValueError(f"time_callable: repeats must be >= 1, got {repeats}.")
  sync = sync or (lambda x: x)
  for _ in range(warmup):
    sync(fn(*args))
  times = _repeat(lambda: sync(fn(*args)), repeats, min_time_s, max_repeats)
  return Timing(times_s=times, compile_s=compile_s, warmup=warmup)


def compile_jax(fn: Callable[..., Any], *args, **jit_kwargs):
  """``(compiled, seconds)``: jit, lower and compile ``fn`` for ``args``."""
  jitted = fn if hasattr(fn, "lower") else jax.jit(fn, **jit_kwargs)
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def time_jax(
    fn: Callable[..., Any],
    *args,
    warmup: int = 1,
    repeats: int = 5,
    min_time_s: float = 0.0,
    max_repeats: int = 100,
) -> Timing:
  """Compiles ``fn`` for ``args`` (timed apart), then times the compiled call."""
  compiled, compile_s = compile_jax(fn, *args)
  return time_callable(
      compiled,
      *args,
      warmup=warmup,
      repeats=repeats,
      min_time_s=min_time_s,
      max_repeats=max_repeats,
      compile_s=compile_s,
  )


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    rounds: int = 5,
    warmup: int = 1,
    sync: Callable[[Any], Any] | None = jax.block_until_ready,
) -> dict[str, list[float]]:
  """Times zero-argument callables round-robin, ``rounds`` times each.

  Interleaving spreads a noisy machine's slow spells over all candidates, so
  their *ratios* are fairer than with back-to-back blocks.
  """
  sync = sync or (lambda x: x)
  for f in fns.values():
    for _ in range(warmup):
      sync(f())
  times: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(rounds):
    for k, f in fns.items():
      t0 = time.perf_counter()
      sync(f())
      times[k].append(time.perf_counter() - t0)
  return times


def median(values: Iterable[float]) -> float:
  return float(statistics.median(list(values)))


# ----------------------------------------------------------------------------
# Machine peak.


def matmul_peak(size: int = 2048, dtype=jnp.float32, *, repeats: int = 5) -> dict:
  """The machine's matmul throughput: a ``size x size`` jnp matmul, best of ``repeats``.

  Returns ``{"size", "dtype", "gflops", "median_gflops", "time_s"}``; ``gflops``
  (from the fastest call) is the peak that utilisation fractions divide by.
  """
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  t = time_jax(lambda x, y: x @ y, a, b, warmup=1, repeats=repeats)
  flops = 2.0 * size**3
  return {
      "size": size,
      "dtype": jnp.dtype(dtype).name,
      "gflops": flops / t.min_s / 1e9,
      "median_gflops": flops / t.median_s / 1e9,
      "time_s": t.min_s,
  }


# ----------------------------------------------------------------------------
# Environment.


def environment() -> dict:
  """What the numbers depend on: versions, devices, cores, load."""
  env = {
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "python": platform.python_version(),
      "machine": platform.machine(),
      "processor": platform.processor() or _cpu_model(),
      "cpu_count": os.cpu_count(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }
  try:
    env["load_average"] = list(os.getloadavg())
  except OSError:  # pragma: no cover - platform dependent
    pass
  for mod in ("flax", "optax", "numpy"):
    try:
      env[mod] = __import__(mod).__version__
    except Exception:  # pragma: no cover - optional
      pass
  torch = optional_torch()
  env["torch"] = None if torch is None else torch.__version__
  if torch is not None:
    env["torch_threads"] = torch.get_num_threads()
  return env


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:  # pragma: no cover
    pass
  return ""


def optional_torch():
  """The ``torch`` module, or None when it is not installed."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return torch


# ----------------------------------------------------------------------------
# Output.


# One implementation of the table helpers, the training binaries'.
format_value = training.format_value
markdown_table = training.markdown_table


def write_results(out_dir: str, name: str, payload: Mapping[str, Any], markdown: str) -> tuple[str, str]:
  """Writes ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``; returns the paths."""
  json_path = os.path.join(out_dir, f"{name}.json")
  md_path = os.path.join(out_dir, f"{name}.md")
  training.write_json(json_path, payload)
  training.atomic_write(md_path, markdown)
  return json_path, md_path


def finish(out_dir: str | None, name: str, payload: Mapping[str, Any], markdown: str,
           log: Callable[[str], None]) -> None:
  """Writes the results when ``out_dir`` is given and logs where they went."""
  if out_dir:
    paths = write_results(out_dir, name, payload, markdown)
    log(f"wrote {paths[0]} and {paths[1]} ({payload['wall_s']:.0f} s)")


def print_targets(payload: Mapping[str, Any]) -> None:
  """One line a target: its measured value and whether it is met."""
  for t in payload["targets"]:
    print(f"target: {t['target']}: {format_value(t['value'])} (met: {t['met']})")


def parse_int_list(values: Iterable[Any] | None) -> list[int]:
  """``["16", "64,256"]`` -> ``[16, 64, 256]`` (absl list flags, commas allowed)."""
  out: list[int] = []
  for v in values or ():
    for part in str(v).split(","):
      if part.strip():
        out.append(int(part))
  return out
