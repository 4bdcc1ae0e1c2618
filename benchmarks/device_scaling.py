r"""Device scaling: training-step throughput against the number of devices.

For each device count in ``--device_counts`` (default 1, 2, 4, 8) a
subprocess with that many devices (on CPU: forced host devices,
``XLA_FLAGS=--xla_force_host_platform_device_count=N``) times two sharded
training steps (:mod:`urnn_jax.parallel`, sharded ``jax.jit``):

* ``data_parallel``: a memory-task-like step: ``SequenceRegressor(
  OrthogonalRNNCell(hidden))`` reading out logits over 10 symbols at every
  step, softmax cross-entropy against the input delayed by T/2 steps, Adam +
  the SVD projection of W (``urnn_jax.optim``), global batch ``--batch_size``
  (64) of length ``--seq_len`` (100) split over the ``"data"`` axis, the
  state replicated;
* ``realization_sweep``: the same step with ``--sweep_hidden`` (8, the size
  of the paper's system-identification sweeps) ``jax.vmap``-ed over
  ``--realizations`` (8) independent realizations, each with its own batch of
  ``--sweep_batch_size`` (16), the realizations split over the
  ``"realizations"`` axis.

Each is timed over ``--steps`` steps per call (one jitted step per Python
call, as ``urnn_jax.training.fit`` runs them; the batch is placed on the
devices once, so host-to-device transfer is not timed), the median of
``--repeats`` calls, after an untimed warm-up; compilation is timed apart.
``speedup`` is the one-device time over this one, ``efficiency`` the speedup
per device.

Forced host devices share the machine's cores: N forced devices on a C-core
CPU are N slices of the same C cores, so these numbers cannot show a speed-up
beyond C (on a 2-core CPU: beyond 2), and past C devices they mostly show the
cost of partitioning (and of the gradient all-reduce). On real accelerators
every device brings its own compute. The table measures that the sharded
program runs and what it costs here, not the scaling of a cluster.

A sweep row is skipped (and says why) where jaxlib 0.10's CPU runtime would
hang: forced host devices >= CPU cores, several realizations per device and
``--sweep_hidden`` > 16 (the batched SVD kernel waits on the thread pool that
the devices' programs occupy; see :mod:`urnn_jax.parallel`).

Writes ``device_scaling.json`` and ``device_scaling.md`` to ``--workdir``.

Example::

    python -m benchmarks.device_scaling --quick --workdir=runs/benchmarks
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

from benchmarks import common

MODES = ("data_parallel", "realization_sweep")
SYMBOLS = 10
RESULT = "RESULT "

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command-line flags (only when run as a binary)."""
  flags.DEFINE_string("workdir", "runs/benchmarks", "Directory for device_scaling.{json,md}.")
  flags.DEFINE_bool("quick", False, "Shorter sequences, fewer steps and repeats (about a minute).")
  flags.DEFINE_list("device_counts", ["1", "2", "4", "8"], "Numbers of devices, one subprocess each.")
  flags.DEFINE_list("modes", list(MODES), f"Steps to time, some of {list(MODES)}.")
  flags.DEFINE_integer("hidden", 64, "Hidden size n of the data-parallel step.")
  flags.DEFINE_integer("sweep_hidden", 8, "Hidden size n of the sweep step.")
  flags.DEFINE_integer("batch_size", 64, "Global batch of the data-parallel step.")
  flags.DEFINE_integer("seq_len", 100, "Sequence length T.")
  flags.DEFINE_integer("realizations", 8, "Realizations of the sweep step.")
  flags.DEFINE_integer("sweep_batch_size", 16, "Batch per realization of the sweep step.")
  flags.DEFINE_integer("steps", 10, "Training steps per timed call.")
  flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (median reported).")
  flags.DEFINE_integer("timeout_s", 600, "Time limit of each subprocess.")
  flags.DEFINE_integer("worker_devices", 0, "Internal: run as the subprocess for this device count.")


@dataclasses.dataclass(frozen=True)
class Settings:
  device_counts: tuple[int, ...] = (1, 2, 4, 8)
  modes: tuple[str, ...] = MODES
  hidden: int = 64
  sweep_hidden: int = 8
  batch_size: int = 64
  seq_len: int = 100
  realizations: int = 8
  sweep_batch_size: int = 16
  steps: int = 10
  repeats: int = 5
  timeout_s: int = 600


# ----------------------------------------------------------------------------
# The subprocess: one device count.


def _problem(settings: Settings, hidden: int):
  """``(init_params, tx, step_fn, make_batch)`` of the memory-task-like step."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  import urnn_jax  # pylint: disable=import-outside-toplevel
  from urnn_jax import optim, training  # pylint: disable=import-outside-toplevel

  model = urnn_jax.SequenceRegressor(urnn_jax.OrthogonalRNNCell(hidden), SYMBOLS)
  tx = optim.constrained(optax.adam(1e-3), optim.orthogonal_projection())
  lag = settings.seq_len // 2

  def loss_fn(params, batch):
    x, labels = batch
    logits = model.apply({"params": params}, x)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)), {}

  def init_params(key):
    return model.init(key, jnp.zeros((1, settings.seq_len, SYMBOLS)))["params"]

  def make_batch(key, shape):
    symbols = jax.random.randint(key, shape + (settings.seq_len,), 0, SYMBOLS)
    labels = jnp.roll(symbols, lag, axis=-1).at[..., :lag].set(0)
    return jax.nn.one_hot(symbols, SYMBOLS), labels

  return init_params, tx, training.make_train_step(loss_fn, tx), make_batch


def _time(step, state, batch, settings: Settings) -> dict:
  import jax  # pylint: disable=import-outside-toplevel

  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  carry = [state]

  def run():
    s = carry[0]
    for _ in range(settings.steps):
      s, metrics = compiled(s, batch)
    carry[0] = s
    return metrics

  t = common.time_callable(run, warmup=1, repeats=settings.repeats, sync=jax.block_until_ready,
                           compile_s=compile_s)
  return {"ms_per_step": 1e3 * t.median_s / settings.steps, "compile_s": compile_s,
          "times_s": t.times_s}


def measure(devices: int, settings: Settings) -> list[dict]:
  """The rows of one device count (run in a process with ``devices`` devices)."""
  import jax  # pylint: disable=import-outside-toplevel

  from urnn_jax import parallel, training  # pylint: disable=import-outside-toplevel

  if jax.device_count() < devices or (jax.default_backend() == "cpu" and jax.device_count() != devices):
    raise RuntimeError(f"device_scaling: expected {devices} devices, found {jax.device_count()}"
                       f" ({jax.devices()}); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count.")
  use = jax.devices()[:devices]  # real accelerators: the first `devices` of them
  rows = []
  if "data_parallel" in settings.modes:
    init_params, tx, step_fn, make_batch = _problem(settings, settings.hidden)
    mesh = parallel.make_mesh(data=devices, devices=use)
    state = parallel.replicate(mesh, training.create_train_state(init_params(jax.random.key(0)), tx))
    batch = parallel.shard_batch(mesh, make_batch(jax.random.key(1), (settings.batch_size,)))
    step = parallel.sharded_step(step_fn, mesh, parallel.replicated_sharding(mesh),
                                 parallel.batch_sharding(mesh))
    r = _time(step, state, batch, settings)
    rows.append({"mode": "data_parallel", "devices": devices, "mesh": parallel.describe(mesh)["axes"],
                 "work_per_step": settings.batch_size, **r,
                 "steps_per_s": 1e3 / r["ms_per_step"],
                 "work_per_s": settings.batch_size * 1e3 / r["ms_per_step"]})
  if "realization_sweep" in settings.modes:
    init_params, tx, step_fn, make_batch = _problem(settings, settings.sweep_hidden)
    mesh = parallel.make_mesh(data=1, realizations=devices, devices=use)
    axes = training.TrainState(None, 0, 0)
    params = jax.vmap(init_params)(jax.random.split(jax.random.key(0), settings.realizations))
    sweep = training.TrainState(jax.numpy.zeros((), jax.numpy.int32), params, jax.vmap(tx.init)(params))
    state = parallel.shard_realizations(mesh, sweep, axes)
    batch = parallel.shard_batch(
        mesh, make_batch(jax.random.key(1), (settings.realizations, settings.sweep_batch_size)),
        1, realization_axis=0)
    step = parallel.sharded_step(parallel.realization_step(step_fn, axes), mesh,
                                 parallel.realization_shardings(mesh, sweep, axes),
                                 parallel.batch_sharding(mesh, 1, realization_axis=0))
    r = _time(step, state, batch, settings)
    rows.append({"mode": "realization_sweep", "devices": devices, "mesh": parallel.describe(mesh)["axes"],
                 "work_per_step": settings.realizations, **r,
                 "steps_per_s": 1e3 / r["ms_per_step"],
                 "work_per_s": settings.realizations * 1e3 / r["ms_per_step"]})
  return rows


# ----------------------------------------------------------------------------
# The parent: one subprocess per device count.


def _worker_args(settings: Settings, devices: int) -> list[str]:
  return [f"--worker_devices={devices}", f"--modes={','.join(settings.modes)}",
          f"--hidden={settings.hidden}", f"--sweep_hidden={settings.sweep_hidden}",
          f"--batch_size={settings.batch_size}",
          f"--seq_len={settings.seq_len}", f"--realizations={settings.realizations}",
          f"--sweep_batch_size={settings.sweep_batch_size}", f"--steps={settings.steps}",
          f"--repeats={settings.repeats}"]


def _worker_env(devices: int) -> dict:
  env = dict(os.environ)
  xla = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(xla + [f"--xla_force_host_platform_device_count={devices}"])
  env.setdefault("JAX_PLATFORMS", "cpu")
  env.setdefault("OPENBLAS_NUM_THREADS", "1")
  return env


def sweep_would_hang(settings: Settings, devices: int, cpu_count: int | None, platforms: str) -> bool:
  """Whether jaxlib 0.10's CPU runtime hangs on this sweep (see the module docstring)."""
  return (platforms.startswith("cpu") and devices > 1 and devices >= (cpu_count or 1)
          and settings.realizations // devices > 1 and settings.sweep_hidden > 16)


def run_devices(devices: int, settings: Settings) -> list[dict]:
  """Runs :func:`measure` in a subprocess with ``devices`` forced host devices."""
  env = _worker_env(devices)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join([repo] + [p for p in [env.get("PYTHONPATH")] if p])
  cmd = [sys.executable, "-m", "benchmarks.device_scaling", *_worker_args(settings, devices)]
  proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True,
                        timeout=settings.timeout_s)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT)]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"device_scaling: the {devices}-device subprocess failed (rc {proc.returncode}):\n"
                       f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
  return json.loads(lines[-1][len(RESULT):])


def add_speedups(rows: list[dict]) -> list[dict]:
  """``speedup``: the time per step on the fewest devices of the same mode (1 by default) over
  this row's; ``efficiency``: the speedup over the ratio of the device counts."""
  for mode in {r["mode"] for r in rows}:
    mine = sorted((r for r in rows if r["mode"] == mode and "ms_per_step" in r), key=lambda r: r["devices"])
    if not mine:
      continue
    base = mine[0]
    for r in mine:
      r["speedup"] = base["ms_per_step"] / r["ms_per_step"]
      r["efficiency"] = r["speedup"] * base["devices"] / r["devices"]
  return rows


def markdown(payload: dict) -> str:
  env, s = payload["environment"], payload["settings"]
  lines = [
      "# Device scaling: sharded training steps against the device count", "",
      f"{env.get('processor', '')}, {env.get('cpu_count')} CPUs, jax {env['jax']}, backend"
      f" {env['backend']}; load average at start {env.get('load_average')}.",
      f"data_parallel: SequenceRegressor(OrthogonalRNNCell({s['hidden']})), 10-symbol memory-task-like"
      f" cross-entropy, Adam + SVD projection, global batch {s['batch_size']}, T = {s['seq_len']},"
      " batch over the 'data' axis, state replicated.",
      f"realization_sweep: the same step, OrthogonalRNNCell({s['sweep_hidden']}), vmapped over"
      f" {s['realizations']} realizations (batch {s['sweep_batch_size']} each) over the"
      " 'realizations' axis.",
      f"One jitted step per call, {s['steps']} steps per timed call, median of {s['repeats']} calls.",
      "",
      f"**{payload['caveat']}**", "",
      common.markdown_table(payload["rows"], [
          "mode", "devices", "ms_per_step", "steps_per_s", "work_per_s", "speedup", "efficiency",
          "compile_s", "skipped"], headers={
          "ms_per_step": "ms/step", "steps_per_s": "steps/s",
          "work_per_s": "sequences/s (sweep: realization-steps/s)", "compile_s": "compile s"}),
  ]
  return "\n".join(lines) + "\n"


def caveat(cpu_count: int | None, backend: str) -> str:
  if backend != "cpu":
    return "Devices are real accelerators here; each brings its own compute."
  return (f"Forced host devices share the machine's {cpu_count} CPU cores: the numbers cannot show a"
          f" speed-up beyond {cpu_count}, and past {cpu_count} devices they mostly show the cost of"
          " partitioning.")


def run(settings: Settings, workdir: str | None = None, log=print) -> dict:
  t_start = time.perf_counter()
  env = common.environment()
  rows = []
  platforms = _worker_env(1)["JAX_PLATFORMS"]
  for devices in settings.device_counts:
    t0 = time.perf_counter()
    modes = settings.modes
    hangs = sweep_would_hang(settings, devices, env.get("cpu_count"), platforms)
    if "realization_sweep" in modes and hangs:
      modes = tuple(m for m in modes if m != "realization_sweep")
      rows.append({"mode": "realization_sweep", "devices": devices,
                   "skipped": "jaxlib CPU thread-pool deadlock: batched SVD with forced host devices"
                              " >= cores (see urnn_jax.parallel)"})
      log(f"  realization_sweep devices={devices:<2d} skipped: {rows[-1]['skipped']}")
    got = run_devices(devices, dataclasses.replace(settings, modes=modes)) if modes else []
    rows.extend(got)
    for r in got:
      log(f"  {r['mode']:17s} devices={devices:<2d} {r['ms_per_step']:9.3f} ms/step"
          f"  (compile {r['compile_s']:.1f} s; subprocess {time.perf_counter() - t0:.0f} s)")
  add_speedups(rows)
  payload = {
      "benchmark": "device_scaling",
      "environment": env,
      "settings": dataclasses.asdict(settings),
      "caveat": caveat(env.get("cpu_count"), env["backend"]),
      "rows": rows,
      "wall_s": time.perf_counter() - t_start,
  }
  common.finish(workdir, "device_scaling", payload, markdown(payload), log)
  return payload


def settings_from_flags() -> Settings:
  modes = tuple(FLAGS.modes)
  if not modes or set(modes) - set(MODES):
    raise app.UsageError(f"--modes must be some of {list(MODES)}, got {list(modes)}.")
  counts = tuple(common.parse_int_list(FLAGS.device_counts))
  if not counts or min(counts) < 1:
    raise app.UsageError(f"--device_counts must be positive ints, got {FLAGS.device_counts}.")
  s = Settings(device_counts=counts, modes=modes, hidden=FLAGS.hidden, sweep_hidden=FLAGS.sweep_hidden,
               batch_size=FLAGS.batch_size,
               seq_len=FLAGS.seq_len, realizations=FLAGS.realizations,
               sweep_batch_size=FLAGS.sweep_batch_size, steps=FLAGS.steps, repeats=FLAGS.repeats,
               timeout_s=FLAGS.timeout_s)
  if FLAGS.quick and not FLAGS.worker_devices:
    s = dataclasses.replace(s, seq_len=min(s.seq_len, 20), steps=min(s.steps, 3), repeats=min(s.repeats, 3))
  for name, value in (("hidden", s.hidden), ("sweep_hidden", s.sweep_hidden), ("seq_len", s.seq_len),
                      ("steps", s.steps),
                      ("repeats", s.repeats), ("sweep_batch_size", s.sweep_batch_size)):
    if value < 1:
      raise app.UsageError(f"--{name}={value}; expected a positive int.")
  for name, value in (("batch_size", s.batch_size), ("realizations", s.realizations)):
    bad = [n for n in s.device_counts if value % n]
    if bad:
      raise app.UsageError(f"--{name}={value} is not a multiple of the device counts {bad};"
                           f" expected a multiple of every one of {list(s.device_counts)}.")
  return s


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.worker_devices:
    settings = dataclasses.replace(settings_from_flags(), device_counts=(FLAGS.worker_devices,))
    print(RESULT + json.dumps(measure(FLAGS.worker_devices, settings)), flush=True)
    return
  run(settings_from_flags(), FLAGS.workdir, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
  define_flags()
  app.run(main)
