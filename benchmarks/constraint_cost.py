r"""What the orthogonality constraints cost: ``python -m benchmarks.constraint_cost``.

Two measurements, both in float32, jitted, with compile time reported apart
(``compile_s``), one untimed warm-up call, ``jax.block_until_ready`` on every
call and the median over ``--repeats`` rounds. Within a size, the candidates
are timed round-robin (``benchmarks.common.time_interleaved``), so a shared
machine's slow spells hit all of them and the overheads stay comparable.

1. **Optimizer step** on one n x n matrix, n in ``--sizes`` (default 16, 64,
   256, 1024): plain ``optax.adam`` against Adam chained with each
   constraint of :mod:`urnn_jax.optim` (projection by SVD, Newton-Schulz and
   QDWH; Cayley and exp retractions; spectral-norm clipping). Each timed call
   runs a few steps in a ``lax.scan`` (the per-step time is divided out) so
   dispatch overhead does not swamp the small sizes.
2. **Training step** of the paper's model, ``urnn_jax.SequenceRegressor``
   (m = 2, p = 2, T = ``--seq_len`` = 1000, batch ``--batch_size`` = 10, MSE):
   ``value_and_grad`` plus the optimizer update, for n in ``--model_sizes``
   (default 16, 64, 256). Baseline: ``RNNCell`` with plain Adam. The
   constrained rows use ``OrthogonalRNNCell`` (same parameters and compute)
   with ``urnn_jax.optim.constrained(optax.adam, constraint)``; two more rows
   use the parametrised cells (``parametrization="expm"|"cayley"``) with plain
   Adam. ``overhead_%`` is the extra time over the baseline; the target is
   under 5% at n <= 256.

Writes ``<out_dir>/constraint_cost.json`` and ``constraint_cost.md`` and
prints the tables. ``--quick`` (optimizer step at n = 16, 64; training step
at n = 64) runs in under two minutes.

SciPy's OpenBLAS, which jaxlib's CPU LAPACK kernels (SVD, solve) call, is
limited to one thread unless ``OPENBLAS_NUM_THREADS`` is set: on a shared or
oversubscribed machine its spinning threads make a 64 x 64 SVD up to 100x
slower. The setting is recorded in the JSON.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks import common  # noqa: E402
import urnn_jax  # noqa: E402
from urnn_jax import initializers  # noqa: E402
from urnn_jax import optim  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Optimizer step at n = 16, 64 and training step at n = 64 only (under 2 minutes).")
flags.DEFINE_string("out_dir", "runs/benchmarks", "Directory for constraint_cost.{json,md}.")
flags.DEFINE_list("sizes", None, "Matrix sizes n of the optimizer-step benchmark (default 16,64,256,1024).")
flags.DEFINE_list("model_sizes", None, "Hidden sizes n of the training-step benchmark (default 16,64,256).")
flags.DEFINE_list("methods", None, "Constraints to time (default all): projection_svd,"
                  " projection_newton_schulz, projection_qdwh, cayley, expm, spectral_norm.")
flags.DEFINE_integer("seq_len", 1000, "T of the training-step benchmark.")
flags.DEFINE_integer("batch_size", 10, "Batch of the training-step benchmark.")
flags.DEFINE_integer("repeats", 15, "Timed rounds per candidate (interleaved; the median is reported).")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")

DEFAULT_SIZES = (16, 64, 256, 1024)
DEFAULT_MODEL_SIZES = (16, 64, 256)
QUICK_SIZES = (16, 64)
QUICK_MODEL_SIZES = (64,)
TARGET_OVERHEAD_PCT = 5.0
TARGET_MAX_N = 256
INPUT_SIZE = 2  # m
OUTPUT_SIZE = 2  # p

CONSTRAINTS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "projection_svd": lambda: optim.orthogonal_projection("svd"),
    "projection_newton_schulz": lambda: optim.orthogonal_projection("newton_schulz"),
    "projection_qdwh": lambda: optim.orthogonal_projection("qdwh"),
    "cayley": optim.cayley_retraction,
    "expm": optim.expm_retraction,
    "spectral_norm": lambda: optim.spectral_norm_projection(1.0),
}
PARAMETRIZED = ("param_expm", "param_cayley")


def _steps_per_call(n: int) -> int:
  """Optimizer steps per timed call: enough to hide dispatch at small n."""
  return 20 if n <= 64 else (5 if n <= 256 else 1)


# ----------------------------------------------------------------------------
# 1. One optimizer step on an n x n matrix.


def optimizer_step_rows(n: int, methods, repeats: int, lr: float, log=logging.info) -> list[dict]:
  w = initializers.haar()(jax.random.key(0), (n, n), jnp.float32)
  g = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  inner = _steps_per_call(n)
  candidates = {"adam": optax.adam(lr)}
  for name in methods:
    candidates[name] = optax.chain(optax.adam(lr), CONSTRAINTS[name]())

  compiled, compile_s = {}, {}
  for name, tx in candidates.items():

    def steps(w, state, tx=tx):
      def body(carry, _):
        w, state = carry
        u, state = tx.update(g, state, w)
        return (optax.apply_updates(w, u), state), None

      return jax.lax.scan(body, (w, state), None, length=inner)[0]

    state = tx.init(w)
    fn, compile_s[name] = common.compile_jax(steps, w, state)
    compiled[name] = (lambda fn=fn, state=state: fn(w, state))
    log(f"optimizer step n={n} {name}: compiled in {compile_s[name]:.2f}s")

  times = common.time_interleaved(compiled, rounds=repeats, warmup=1)
  base = common.median(times["adam"]) / inner
  rows = []
  for name in candidates:
    t = common.median(times[name]) / inner
    rows.append({
        "n": n,
        "method": name,
        "step_ms": 1e3 * t,
        "constraint_ms": None if name == "adam" else 1e3 * (t - base),
        "x_adam": t / base,
        "compile_s": compile_s[name],
        "steps_per_call": inner,
        "times_s": times[name],
    })
  return rows


# ----------------------------------------------------------------------------
# 2. One training step of the paper's model.


def _model_variant(name: str, n: int, lr: float):
  """(model, optimizer) of a training-step candidate."""
  adam = optax.adam(lr)
  if name == "adam":
    return urnn_jax.SequenceRegressor(urnn_jax.RNNCell(n), OUTPUT_SIZE), adam
  if name in PARAMETRIZED:
    cell = urnn_jax.OrthogonalRNNCell(n, parametrization=name.split("_", 1)[1])
    return urnn_jax.SequenceRegressor(cell, OUTPUT_SIZE), adam
  model = urnn_jax.SequenceRegressor(urnn_jax.OrthogonalRNNCell(n), OUTPUT_SIZE)
  return model, optim.constrained(adam, CONSTRAINTS[name]())


def training_step_rows(n: int, methods, repeats: int, lr: float, seq_len: int, batch: int,
                       log=logging.info) -> list[dict]:
  kx, ky = jax.random.split(jax.random.key(2))
  x = jax.random.normal(kx, (batch, seq_len, INPUT_SIZE), jnp.float32)
  y = jax.random.normal(ky, (batch, seq_len, OUTPUT_SIZE), jnp.float32)
  names = ["adam", *methods, *PARAMETRIZED]
  compiled, compile_s = {}, {}
  for name in names:
    model, tx = _model_variant(name, n, lr)
    variables = model.init(jax.random.key(0), x)
    params = variables["params"]
    consts = {k: v for k, v in variables.items() if k != "params"}

    def train_step(params, state, model=model, tx=tx, consts=consts):
      def loss(p):
        return jnp.mean((model.apply({"params": p, **consts}, x) - y) ** 2)

      value, grads = jax.value_and_grad(loss)(params)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state, value

    state = tx.init(params)
    fn, compile_s[name] = common.compile_jax(train_step, params, state)
    compiled[name] = (lambda fn=fn, params=params, state=state: fn(params, state))
    log(f"training step n={n} {name}: compiled in {compile_s[name]:.2f}s")

  times = common.time_interleaved(compiled, rounds=repeats, warmup=1)
  base = common.median(times["adam"])
  rows = []
  for name in names:
    t = common.median(times[name])
    overhead = 100.0 * (t - base) / base
    rows.append({
        "n": n,
        "method": name,
        "cell": "RNNCell" if name == "adam" else (
            f"OrthogonalRNNCell({name.split('_', 1)[1]})" if name in PARAMETRIZED else "OrthogonalRNNCell"),
        "step_ms": 1e3 * t,
        "overhead_%": None if name == "adam" else overhead,
        "under_5%": None if name == "adam" or n > TARGET_MAX_N else overhead < TARGET_OVERHEAD_PCT,
        "compile_s": compile_s[name],
        "times_s": times[name],
    })
  return rows


# ----------------------------------------------------------------------------
# Output.


def markdown(payload: dict) -> str:
  s = payload["settings"]
  env = payload["environment"]
  out = [
      "# Constraint cost",
      "",
      f"{env.get('time', '')}, jax {env.get('jax')}, backend {env.get('backend')},"
      f" {env.get('cpu_count')} CPUs, load average {env.get('load_average')},"
      f" OPENBLAS_NUM_THREADS={s['openblas_num_threads']}"
      f"{' (--quick)' if s['quick'] else ''}. Medians of {s['repeats']} interleaved rounds.",
      "",
      "## Optimizer step on one n x n matrix (float32)",
      "",
      common.markdown_table(
          payload["optimizer_step"],
          ["n", "method", "step_ms", "constraint_ms", "x_adam", "compile_s"],
          {"step_ms": "step (ms)", "constraint_ms": "constraint (ms)", "x_adam": "x Adam",
           "compile_s": "compile (s)"},
      ),
      f"## Training step: SequenceRegressor, m={INPUT_SIZE}, p={OUTPUT_SIZE},"
      f" T={s['seq_len']}, batch {s['batch_size']}, MSE, value_and_grad + update",
      "",
      common.markdown_table(
          payload["training_step"],
          ["n", "method", "cell", "step_ms", "overhead_%", "under_5%", "compile_s"],
          {"step_ms": "step (ms)", "overhead_%": "overhead vs Adam (%)",
           "under_5%": f"< {TARGET_OVERHEAD_PCT:g}% (n <= {TARGET_MAX_N})", "compile_s": "compile (s)"},
      ),
  ]
  return "\n".join(out)


def run(*, quick: bool, sizes, model_sizes, methods, repeats, lr, seq_len, batch,
        log=logging.info) -> dict[str, Any]:
  t0 = time.perf_counter()
  payload: dict[str, Any] = {
      "environment": common.environment(),
      "settings": {
          "quick": quick, "sizes": list(sizes), "model_sizes": list(model_sizes),
          "methods": list(methods), "repeats": repeats, "learning_rate": lr,
          "seq_len": seq_len, "batch_size": batch, "input_size": INPUT_SIZE,
          "output_size": OUTPUT_SIZE, "dtype": "float32",
          "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
          "target": f"constraint overhead < {TARGET_OVERHEAD_PCT}% of a training step at n <= {TARGET_MAX_N}",
      },
      "optimizer_step": [],
      "training_step": [],
  }
  for n in sizes:
    payload["optimizer_step"] += optimizer_step_rows(n, methods, repeats, lr, log)
  for n in model_sizes:
    payload["training_step"] += training_step_rows(n, methods, repeats, lr, seq_len, batch, log)
  payload["wall_s"] = time.perf_counter() - t0
  return payload


def main(argv):
  del argv
  methods = FLAGS.methods or list(CONSTRAINTS)
  unknown = [m for m in methods if m not in CONSTRAINTS]
  if unknown:
    raise app.UsageError(f"--methods: unknown {unknown}; expected some of {list(CONSTRAINTS)}.")
  sizes = common.parse_int_list(FLAGS.sizes) or list(QUICK_SIZES if FLAGS.quick else DEFAULT_SIZES)
  model_sizes = common.parse_int_list(FLAGS.model_sizes) or list(
      QUICK_MODEL_SIZES if FLAGS.quick else DEFAULT_MODEL_SIZES)
  if any(n < 1 for n in sizes + model_sizes):
    raise app.UsageError(f"--sizes/--model_sizes must be positive, got {sizes} and {model_sizes}.")
  repeats = FLAGS.repeats
  if repeats < 1:
    raise app.UsageError(f"--repeats must be >= 1, got {repeats}.")
  payload = run(quick=FLAGS.quick, sizes=sizes, model_sizes=model_sizes, methods=methods,
                repeats=repeats, lr=FLAGS.learning_rate, seq_len=FLAGS.seq_len,
                batch=FLAGS.batch_size)
  md = markdown(payload)
  print(md)
  common.finish(FLAGS.out_dir, "constraint_cost", payload, md, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
  app.run(main)
