r"""Sweep scaling: R realizations trained together under vmap vs one at a time.

System-identification-like training, as in the paper's Figs 2 and 3: a
``SequenceRegressor`` (``RNNCell`` = ``rnn``, or ``OrthogonalRNNCell`` kept
orthogonal by the SVD projection after every Adam step = ``urnn``) with
m = 2 inputs and p = 2 outputs, MSE loss, on short sequences, each
realization on its own data (a random teacher RNN per realization).

For R in ``--realizations`` (default 1, 8, 30) it times

* ``vmapped``: ONE compiled program training all R realizations, its
  training step ``jax.vmap``-ed over the stacked parameters, optimiser
  states and data;
* ``sequential``: the R = 1 program called R times, one realization after
  the other (each call waited for before the next starts),

each for ``--steps`` optimiser steps per call (a jitted ``lax.scan`` over
steps, as the experiment trains), and reports the time per optimiser step (of
all R realizations) and the speedup sequential/vmapped (the target's ratio).
For reference it also times the naive sequential loop, one jitted optimiser
step per Python call (``speedup_vs_per_step_dispatch``).

The training step is the system-identification experiment's own
(``urnn_jax.experiments.system_id.programs``: a jitted ``lax.scan`` over
steps of :func:`urnn_jax.training.make_train_step` under ``jax.vmap``, with
the per-realization divergence guards) when ``--step=system_id`` (the default); ``--step=minimal`` uses the
self-contained vmapped step written here (plain ``value_and_grad`` + optax,
no guards), for comparison or if the experiment module changes.

Writes ``sweep_scaling.json`` and ``sweep_scaling.md`` to ``--out_dir``.

Example::

    python -m benchmarks.sweep_scaling --quick
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import urnn_jax
from benchmarks import common

MODELS = ("rnn", "urnn")
STEPS = ("system_id", "minimal")

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command-line flags (only when run as a binary, so that
  several benchmark modules can be imported together, e.g. by the tests)."""
  flags.DEFINE_string("out_dir", "runs/benchmarks", "Directory for sweep_scaling.{json,md}.")
  flags.DEFINE_bool("quick", False, "Fewer steps and repeats (under 2 minutes).")
  flags.DEFINE_bool("smoke", False, "A seconds-long run on tiny shapes (tests).")
  flags.DEFINE_list("realizations", ["1", "8", "30"], "Numbers of realizations R.")
  flags.DEFINE_list("models", list(MODELS), f"Models, some of {list(MODELS)}.")
  flags.DEFINE_enum("step", "system_id", list(STEPS),
                    "Training step: the system-id experiment's, or the minimal one here.")
  flags.DEFINE_integer("hidden", 8, "Hidden size n of the student.")
  flags.DEFINE_list("seq_len", ["20", "100"], "Sequence lengths T (short: the issue's 'small T').")
  flags.DEFINE_integer("batch_size", 10, "Sequences per optimiser step.")
  flags.DEFINE_integer("steps", 20, "Optimiser steps per timed call.")
  flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (median reported).")
  flags.DEFINE_float("learning_rate", 0.01, "Adam learning rate.")


INPUTS, OUTPUTS = 2, 2


@dataclasses.dataclass(frozen=True)
class Settings:
  realizations: tuple[int, ...] = (1, 8, 30)
  models: tuple[str, ...] = MODELS
  step: str = "system_id"
  hidden: int = 8
  seq_lens: tuple[int, ...] = (20, 100)
  batch_size: int = 10
  steps: int = 20
  repeats: int = 5
  learning_rate: float = 0.01


# ----------------------------------------------------------------------------
# Data: one random teacher RNN (n = 4, eq. 1) per realization.


def make_data(key, realizations: int, num_sequences: int, seq_len: int):
  """``x (R, N, T, 2)`` Gaussian inputs and ``y (R, N, T, 2)`` teacher outputs."""

  def one(k):
    kw, kf, kc, kx = jax.random.split(k, 4)
    w = jax.random.normal(kw, (4, 4))
    theta = urnn_jax.RNNParams.create(
        W=0.9 * w / jnp.linalg.norm(w, 2),
        F=jax.random.normal(kf, (4, INPUTS)),
        C=jax.random.normal(kc, (OUTPUTS, 4)),
    )
    x = jax.random.normal(kx, (num_sequences, seq_len, INPUTS))
    return x, urnn_jax.simulate(theta, x, "relu")

  return jax.vmap(one)(jax.random.split(key, realizations))


# ----------------------------------------------------------------------------
# Training programs: (init(R) -> carry, run(carry, x, y) -> carry).


class Trainer(NamedTuple):
  init: Callable[[int], Any]  # R -> carry stacked over R realizations
  run: Callable[[Any, jax.Array, jax.Array], Any]  # (carry, x, y) -> carry; `steps` steps
  run_one: Callable[[Any, jax.Array, jax.Array], Any]  # the same, one step per call
  description: str


def _system_id_trainer(model: str, settings: Settings, seq_len: int) -> Trainer:
  from urnn_jax.experiments import system_id  # pylint: disable=import-outside-toplevel

  progs = system_id.programs(model, settings.hidden, OUTPUTS, learning_rate=settings.learning_rate,
                             optimizer="adam", constraint="projection")
  idx = jnp.tile(jnp.arange(settings.batch_size)[None], (settings.steps, 1))

  def init(r):
    config = system_id.Config(models=(model,), hidden=(settings.hidden,), realizations=r,
                              epochs=1, length=seq_len, batch_size=settings.batch_size,
                              learning_rate=settings.learning_rate)
    x_example = jnp.zeros((settings.batch_size, seq_len, INPUTS))
    return system_id.init_carry(progs, config, settings.hidden, x_example)  # (carry, constants)

  def run(carry, x, y):
    return progs.chunk(carry[0], carry[1], x, y, idx), carry[1]

  def run_one(carry, x, y):
    return progs.chunk(carry[0], carry[1], x, y, idx[:1]), carry[1]

  return Trainer(init, run, run_one, "urnn_jax.experiments.system_id.programs(...).chunk "
                 "(jitted lax.scan over steps of training.make_train_step under vmap)")


def _minimal_trainer(model: str, settings: Settings, seq_len: int) -> Trainer:
  if model == "rnn":
    cell = urnn_jax.RNNCell(settings.hidden, activation="relu")
    tx = optax.adam(settings.learning_rate)
  else:
    from urnn_jax import optim  # pylint: disable=import-outside-toplevel

    cell = urnn_jax.OrthogonalRNNCell(settings.hidden, activation="relu")
    tx = optim.constrained(optax.adam(settings.learning_rate), optim.orthogonal_projection())
  regressor = urnn_jax.SequenceRegressor(cell, OUTPUTS)
  x_example = jnp.zeros((settings.batch_size, seq_len, INPUTS))

  def init_one(key):
    params = regressor.init(key, x_example)["params"]
    return params, tx.init(params)

  def loss_fn(params, xb, yb):
    return jnp.mean(jnp.square(regressor.apply({"params": params}, xb) - yb))

  def one_step(params, opt_state, xb, yb):
    grads = jax.grad(loss_fn)(params, xb, yb)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  vstep = jax.vmap(one_step)

  @functools.partial(jax.jit, donate_argnums=(0,), static_argnums=(3,))
  def _run(carry, x, y, steps):
    xb, yb = x[:, : settings.batch_size], y[:, : settings.batch_size]

    def body(c, _):
      return vstep(*c, xb, yb), None

    return lax.scan(body, carry, None, length=steps)[0]

  run = lambda carry, x, y: _run(carry, x, y, settings.steps)
  run_one = lambda carry, x, y: _run(carry, x, y, 1)

  init_v = jax.jit(jax.vmap(init_one))

  def init(r):
    return init_v(jax.random.split(jax.random.key(0), r))

  return Trainer(init, run, run_one, "benchmarks.sweep_scaling minimal step (jitted lax.scan over steps "
                 "of a vmapped grad + optax update)")


def make_trainer(model: str, settings: Settings, seq_len: int) -> Trainer:
  if settings.step == "system_id":
    return _system_id_trainer(model, settings, seq_len)
  return _minimal_trainer(model, settings, seq_len)


# ----------------------------------------------------------------------------
# Measurement.


def _block(tree):
  return jax.block_until_ready(tree)


def measure(model: str, settings: Settings, seq_len: int, log=logging.info) -> list[dict]:
  trainer = make_trainer(model, settings, seq_len)
  r_max = max(settings.realizations)
  x_all, y_all = make_data(jax.random.key(1), r_max, settings.batch_size, seq_len)

  # Sequential: the R = 1 program, realization after realization.
  t0 = time.perf_counter()
  singles = [trainer.init(1) for _ in range(r_max)]
  x1 = [x_all[r:r + 1] for r in range(r_max)]
  y1 = [y_all[r:r + 1] for r in range(r_max)]
  singles[0] = _block(trainer.run(singles[0], x1[0], y1[0]))  # compiles
  compile_single = time.perf_counter() - t0
  singles[0] = _block(trainer.run_one(singles[0], x1[0], y1[0]))  # compiles the 1-step program

  rows = []
  for r in settings.realizations:
    t0 = time.perf_counter()
    carry = trainer.init(r)
    xr, yr = x_all[:r], y_all[:r]
    carry = _block(trainer.run(carry, xr, yr))  # compiles (first call)
    compile_v = time.perf_counter() - t0

    def vmapped():
      nonlocal carry
      carry = trainer.run(carry, xr, yr)
      return carry

    def sequential():
      # Strictly one at a time: without the block, JAX's asynchronous dispatch
      # could overlap independent realizations on different cores.
      for i in range(r):
        singles[i] = _block(trainer.run(singles[i], x1[i], y1[i]))
      return singles[:r]

    def sequential_per_step():
      # The naive loop: one jitted optimiser step per Python call.
      for i in range(r):
        for _ in range(settings.steps):
          singles[i] = trainer.run_one(singles[i], x1[i], y1[i])
        _block(singles[i])
      return singles[:r]

    times = common.time_interleaved(
        {"vmapped": vmapped, "sequential": sequential, "per_step": sequential_per_step},
        rounds=settings.repeats, warmup=1)
    t_v = common.median(times["vmapped"]) / settings.steps
    t_s = common.median(times["sequential"]) / settings.steps
    t_d = common.median(times["per_step"]) / settings.steps
    rows.append({
        "model": model, "seq_len": seq_len, "realizations": r,
        "vmapped_ms_per_step": 1e3 * t_v, "sequential_ms_per_step": 1e3 * t_s,
        "speedup": t_s / t_v,
        "per_step_dispatch_ms_per_step": 1e3 * t_d, "speedup_vs_per_step_dispatch": t_d / t_v,
        "vmapped_realization_steps_per_s": r / t_v,
        "sequential_realization_steps_per_s": r / t_s,
        "compile_vmapped_s": compile_v, "compile_single_s": compile_single,
        "times_vmapped_s": times["vmapped"], "times_sequential_s": times["sequential"],
        "times_per_step_dispatch_s": times["per_step"],
    })
    log(f"  {model:5s} T={seq_len:<4d} R={r:<3d} vmapped {1e3 * t_v:8.3f} ms/step  sequential "
        f"{1e3 * t_s:8.3f} ms/step  speedup {t_s / t_v:6.2f}x  (vs per-step dispatch "
        f"{t_d / t_v:6.2f}x; compile {compile_v:.1f} s)")
  return rows, trainer.description


def evaluate_targets(rows) -> list[dict]:
  """The issue's target at every (model, T) measured with R = 30."""
  out = []
  for row in rows:
    if row["realizations"] != 30:
      continue
    value = row["speedup"]
    out.append({
        "target": f"30 vmapped realizations train >= 10x faster than 30 sequential "
                  f"({row['model']}, T={row['seq_len']})",
        "value": value, "threshold": 10.0, "met": value >= 10.0,
    })
  if not out:
    out.append({"target": "30 vmapped realizations train >= 10x faster than 30 sequential",
                "value": None, "threshold": 10.0, "met": None, "detail": "R = 30 not run"})
  return out


def markdown(payload: dict) -> str:
  env, s = payload["environment"], payload["settings"]
  lines = [
      "# Sweep scaling: vmapped vs sequential realizations", "",
      f"{env.get('processor', '')}, {env.get('cpu_count')} CPUs, jax {env['jax']}; load average "
      f"at start {env.get('load_average')}.",
      f"SequenceRegressor, hidden {s['hidden']}, m = p = 2, T in {s['seq_lens']}, batch "
      f"{s['batch_size']}, Adam (urnn: + SVD projection), {s['steps']} steps per timed call, "
      f"medians of {s['repeats']} interleaved calls.",
      f"Training step: {payload['step_description']}.", "",
      "## Targets", "",
      common.markdown_table(payload["targets"], ["target", "value", "threshold", "met"]),
      "## Time per optimiser step (all R realizations)", "",
      common.markdown_table(payload["rows"], [
          "model", "seq_len", "realizations", "vmapped_ms_per_step", "sequential_ms_per_step", "speedup",
          "per_step_dispatch_ms_per_step", "speedup_vs_per_step_dispatch",
          "vmapped_realization_steps_per_s", "compile_vmapped_s", "compile_single_s"], headers={
          "seq_len": "T", "realizations": "R", "vmapped_ms_per_step": "vmapped ms/step",
          "sequential_ms_per_step": "sequential ms/step", "speedup": "speedup (seq/vmap)",
          "per_step_dispatch_ms_per_step": "seq., 1 step/call ms/step",
          "speedup_vs_per_step_dispatch": "speedup vs 1 step/call",
          "vmapped_realization_steps_per_s": "vmapped realization-steps/s",
          "compile_vmapped_s": "compile vmapped s", "compile_single_s": "compile R=1 s"}),
  ]
  return "\n".join(lines) + "\n"


def run(settings: Settings, out_dir: str | None = None, log=logging.info) -> dict:
  t_start = time.perf_counter()
  env = common.environment()
  rows, description = [], ""
  for model in settings.models:
    for seq_len in settings.seq_lens:
      model_rows, description = measure(model, settings, seq_len, log=log)
      rows.extend(model_rows)
  payload = {
      "benchmark": "sweep_scaling",
      "environment": env,
      "settings": dataclasses.asdict(settings),
      "step_description": description,
      "rows": rows,
      "targets": evaluate_targets(rows),
      "wall_s": time.perf_counter() - t_start,
  }
  common.finish(out_dir, "sweep_scaling", payload, markdown(payload), log)
  return payload


def settings_from_flags() -> Settings:
  models = tuple(FLAGS.models)
  if not models or set(models) - set(MODELS):
    raise app.UsageError(f"--models must be some of {list(MODELS)}, got {list(models)}.")
  realizations = tuple(common.parse_int_list(FLAGS.realizations))
  if not realizations or min(realizations) < 1:
    raise app.UsageError(f"--realizations must be positive ints, got {FLAGS.realizations}.")
  seq_lens = tuple(common.parse_int_list(FLAGS.seq_len))
  if not seq_lens or min(seq_lens) < 1:
    raise app.UsageError(f"--seq_len must be positive ints, got {FLAGS.seq_len}.")
  s = Settings(realizations=realizations, models=models, step=FLAGS.step, hidden=FLAGS.hidden,
               seq_lens=seq_lens, batch_size=FLAGS.batch_size, steps=FLAGS.steps,
               repeats=FLAGS.repeats, learning_rate=FLAGS.learning_rate)
  if FLAGS.smoke:
    s = dataclasses.replace(s, realizations=(1, 3), hidden=4, seq_lens=(10,), batch_size=2, steps=2,
                            repeats=1)
  elif FLAGS.quick:
    s = dataclasses.replace(s, steps=min(s.steps, 10), repeats=min(s.repeats, 3))
  return s


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  payload = run(settings_from_flags(), FLAGS.out_dir, log=lambda s: print(s, flush=True))
  common.print_targets(payload)


if __name__ == "__main__":
  define_flags()
  app.run(main)
