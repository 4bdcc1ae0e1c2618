r"""The paper's theorems, run: ``python -m train.equivalence --workdir DIR``.

Prints and writes (to ``--workdir``):

* Theorem 3.1 on random contractive ReLU RNNs (n = 1 ... 64): the 2n-state
  construction's orthogonality error, the largest output difference over
  T = 1000 bounded inputs, the parameter counts of §3;
* the input bound at work (inputs above it break the equivalence);
* Theorem 3.2 and Theorem 4.1 demonstrations (numerical evidence, not
  proofs): see :func:`urnn_jax.experiments.equivalence.tightness_demo` and
  :func:`urnn_jax.experiments.equivalence.sigmoid_converse_demo`.

Files: ``results.json`` (everything), ``theorem31.csv`` (the main table),
``tables.md`` (all tables) and ``equivalence.png``. Runs in float64.
``--quick`` is a tiny configuration for tests. The logic lives in
:mod:`urnn_jax.experiments.equivalence`.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import jax
from absl import app
from absl import flags

from urnn_jax.experiments import equivalence

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines this binary's flags (called by ``__main__`` only, so the binaries
  can be imported together)."""
  flags.DEFINE_string("workdir", None, "Directory for results.json, tables and equivalence.png.")
  flags.DEFINE_integer("seed", 0, "PRNG seed; the run is deterministic given it.")
  flags.DEFINE_bool("quick", False, "Tiny configuration (for tests).")
  flags.mark_flags_as_required(["workdir"])


def main(argv: Sequence[str]) -> None:
  del argv
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  jax.config.update("jax_enable_x64", True)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  start = time.perf_counter()

  def log(msg: str) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)

  log(f"float64, seed {FLAGS.seed}, {'quick' if FLAGS.quick else 'default'} configuration")
  res = equivalence.run(FLAGS.seed, FLAGS.quick, log)
  res["seconds"]["total"] = time.perf_counter() - start
  text = equivalence.write_results(res, FLAGS.workdir)
  print(text, flush=True)
  log(f"wrote results.json, theorem31.csv, tables.md, equivalence.png to {FLAGS.workdir}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
