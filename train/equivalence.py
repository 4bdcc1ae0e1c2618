r"""The paper's theorems, run: ``python -m train.equivalence --workdir DIR``.

Prints and writes (to ``--workdir``):

* Theorem 3.1 on random contractive ReLU RNNs (n = 1 ... 64): the 2n-state
  construction's orthogonality error, the largest output difference over
  T = 1000 bounded inputs, the parameter counts of §3;
* the input bound at work (inputs above it break the equivalence);
* Theorem 3.2 and Theorem 4.1 demonstrations (numerical evidence, not
  proofs): see :func:`urnn_jax.theory.tightness_demo` and
  :func:`urnn_jax.theory.sigmoid_converse_demo`.

Files: ``results.json`` (everything), ``theorem31.csv`` (the main table),
``tables.md`` (all tables) and ``equivalence.png``. Runs in float64.
``--quick`` is a tiny configuration for tests.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines this binary's flags (called by ``__main__`` only, so the binaries
  can be imported together)."""
  flags.DEFINE_string("workdir", None, "Directory for results.json, tables and equivalence.png.")
  flags.DEFINE_integer("seed", 0, "PRNG seed; the run is deterministic given it.")
  flags.DEFINE_bool("quick", False, "Tiny configuration (for tests).")


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


def run(seed: int, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
  """Runs the three experiments; returns the results dict (JSON-able)."""
  import jax  # pylint: disable=g-import-not-at-top
  from urnn_jax import theory  # pylint: disable=g-import-not-at-top

  cfg = QUICK if quick else DEFAULT
  key = jax.random.PRNGKey(seed)
  k31, k32, k41 = jax.random.split(key, 3)
  timings = {}
  t0 = time.perf_counter()
  table = theory.equivalence_table(cfg["ns"], key=k31, steps=cfg["steps"],
                                   batch=cfg["batch"], log=log)
  bound = theory.bound_violation_demo()
  timings["theorem31"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  tight = theory.tightness_demo(key=k32, log=log, **cfg["tight"])
  timings["theorem32"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  converse = theory.sigmoid_converse_demo(key=k41, log=log, **cfg["sigmoid"])
  timings["theorem41"] = time.perf_counter() - t0
  return {"seed": seed, "quick": quick, "dtype": "float64",
          "theorem31": table, "input_bound_demo": bound,
          "theorem32_demo": tight, "theorem41_demo": converse, "seconds": timings}


# ---------------------------------------------------------------------------
# Tables.


def _fmt(v) -> str:
  if v is None:
    return "-"
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, int):
    return str(v)
  if isinstance(v, float):
    if v == 0.0:
      return "0"
    if math.isnan(v):
      return "nan"
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.2e}"
  return str(v)


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  cells = [[_fmt(c) for c in r] for r in rows]
  widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
  line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
  sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
  return "\n".join([line(header), sep] + [line(r) for r in cells])


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
  out.append(markdown(
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
  out.append(markdown(["c", "||x(k)||", "max|dy|"],
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
  out.append(markdown(["n", "decays", "URNN states", "how", "test NMSE", "best det +1",
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
  out.append(markdown(
      ["URNN states", "sigmoid NMSE", "relu NMSE", "rho(J_u)", "poles in URNN response (order n)",
       "pole gap", "||J_u J_u^T - D^2||", "lin. resp. rel. diff"], rows))
  out.append("\nThe 2n-state dilation of the *sigmoid* target with b2 = -B "
             "(urnn_jax.theory.unitary_dilation): exact equivalence fails for every B "
             "(Theorem 4.1), but the gap shrinks like e^-B.\n")
  out.append(markdown(
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
  """The six panels of equivalence.png (matplotlib imported here, lazily)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

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
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: Sequence[str]) -> None:
  del argv
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  import jax  # pylint: disable=g-import-not-at-top
  from urnn_jax import training  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_x64", True)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  start = time.perf_counter()

  def log(msg: str) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)

  log(f"float64, seed {FLAGS.seed}, {'quick' if FLAGS.quick else 'default'} configuration")
  res = run(FLAGS.seed, FLAGS.quick, log)
  res["seconds"]["total"] = time.perf_counter() - start
  text = tables(res)
  training.write_json(os.path.join(FLAGS.workdir, "results.json"), res)
  training.write_csv(os.path.join(FLAGS.workdir, "theorem31.csv"), res["theorem31"])
  training.atomic_write(os.path.join(FLAGS.workdir, "tables.md"), text)
  plot(res, os.path.join(FLAGS.workdir, "equivalence.png"))
  print(text, flush=True)
  log(f"wrote results.json, theorem31.csv, tables.md, equivalence.png to {FLAGS.workdir}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
