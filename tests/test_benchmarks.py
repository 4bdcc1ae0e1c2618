"""The benchmark binaries run end to end on tiny shapes and write valid files.

No timing assertions: only that each binary runs, and that its JSON and
markdown hold what the tables and target checks need.
"""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common
from benchmarks import scan_throughput
from benchmarks import sweep_scaling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_binary(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def test_scan_throughput_binary(tmp_path):
  models = ("recurrence,recurrence_bm,projection,matmul_chain,urnn_rnn,urnn_orth_expm,urnn_lstm,"
            "flax_simple,torch_rnn")
  proc = _run_binary("benchmarks.scan_throughput", "--smoke", f"--models={models}",
                     f"--out_dir={tmp_path}")
  payload = json.loads((tmp_path / "scan_throughput.json").read_text())
  md = (tmp_path / "scan_throughput.md").read_text()
  assert payload["benchmark"] == "scan_throughput"
  assert payload["peak"]["gflops"] > 0
  timed = [r for r in payload["rows"] if "us_per_step" in r]
  ran = {r["model"] for r in timed}
  expected = set(models.split(","))
  if common.optional_torch() is None:
    expected.discard("torch_rnn")
  assert expected <= ran
  for r in timed:
    assert r["mode"] in ("fwd", "fwdbwd")
    assert r["us_per_step"] > 0 and r["steps_per_s"] > 0
    assert (r["compile_s"] is None) == r["model"].startswith("torch")
    assert r["frac_of_peak"] > 0
  for name in scan_throughput.FWD_ONLY_MODELS:  # the breakdown rows are forward only
    assert {r["mode"] for r in timed if r["model"] == name} == {"fwd"}
  assert len(payload["targets"]) == 4
  assert "# Scan throughput" in md and "| urnn_rnn |" in md and "## Targets" in md
  assert "target:" in proc.stdout


def test_sweep_scaling_binary(tmp_path):
  proc = _run_binary("benchmarks.sweep_scaling", "--smoke", "--models=rnn", f"--out_dir={tmp_path}")
  payload = json.loads((tmp_path / "sweep_scaling.json").read_text())
  md = (tmp_path / "sweep_scaling.md").read_text()
  rows = payload["rows"]
  assert [r["realizations"] for r in rows] == [1, 3]
  for r in rows:
    assert r["vmapped_ms_per_step"] > 0 and r["sequential_ms_per_step"] > 0 and r["speedup"] > 0
  assert "system_id" in payload["step_description"]
  assert "# Sweep scaling" in md and "| rnn |" in md
  assert "target:" in proc.stdout


def test_sweep_scaling_minimal_step_in_process(tmp_path):
  settings = sweep_scaling.Settings(realizations=(1, 2), models=("urnn",), step="minimal",
                                    hidden=3, seq_lens=(5,), batch_size=2, steps=2, repeats=1)
  payload = sweep_scaling.run(settings, str(tmp_path), log=lambda s: None)
  assert [r["realizations"] for r in payload["rows"]] == [1, 2]
  assert "minimal" in payload["step_description"]
  json.loads((tmp_path / "sweep_scaling.json").read_text())


def test_scan_throughput_breakdown_programs_compute_what_they_name():
  """The breakdown rows time the computation their names claim (checked by numpy)."""
  n, b, t, m = 4, 3, 5, 2
  fn, (kernel, bias, z) = scan_throughput._jax_programs("recurrence_bm", n, b, t, m, 1)["fwd"]
  k64, z64, b64 = (np.asarray(a, np.float64) for a in (kernel, z, bias))
  h, want = np.zeros((b, n)), []
  for k in range(t):
    h = np.maximum(h @ k64 + z64[:, k] + b64, 0.0)
    want.append(h)
  np.testing.assert_allclose(fn(kernel, bias, z), np.stack(want, 1), rtol=1e-5, atol=1e-5)

  fn, (params, x) = scan_throughput._jax_programs("projection", n, b, t, m, 1)["fwd"]
  np.testing.assert_allclose(fn(params, x), np.asarray(x) @ np.asarray(params["input"]["kernel"]),
                             rtol=1e-5, atol=1e-5)

  fn, (kernel, h0) = scan_throughput._jax_programs("matmul_chain", n, b, t, m, 1)["fwd"]
  want = np.asarray(h0, np.float64) @ np.linalg.matrix_power(np.asarray(kernel, np.float64), t)
  np.testing.assert_allclose(fn(kernel, h0), want, rtol=1e-4, atol=1e-5)
  assert scan_throughput.recurrent_flops("projection", "fwd", n, b, t, m) == 2.0 * b * t * m * n


def test_scan_throughput_target_logic():
  def row(model, mode, n, b, t, median_s, frac=0.1):
    return {"model": model, "mode": mode, "hidden": n, "batch": b, "seq_len": t,
            "us_per_step": 1e6 * median_s / t, "median_s": median_s, "frac_of_peak": frac,
            "recurrent_gflops": 1.0}

  rows = [
      row("urnn_rnn", "fwdbwd", 64, 32, 1000, 1.0), row("flax_simple", "fwdbwd", 64, 32, 1000, 1.5),
      row("urnn_rnn", "fwdbwd", 256, 32, 1000, 1.0), row("flax_simple", "fwdbwd", 256, 32, 1000, 1.2),
      row("torch_rnn", "fwdbwd", 64, 32, 1000, 0.9),
      row("recurrence", "fwd", 256, 256, 1000, 1.0, frac=0.6),
  ]
  targets = scan_throughput.evaluate_targets(rows)
  assert [t["met"] for t in targets] == [True, False, False, True]
  assert targets[0]["value"] == pytest.approx(1.5)
  assert targets[2]["value"] == pytest.approx(0.9)


def test_common_timing_and_output(tmp_path):
  t = common.time_jax(lambda a: a @ a, jnp.ones((8, 8)), warmup=1, repeats=3)
  assert t.repeats == 3 and t.compile_s > 0 and t.min_s <= t.median_s
  calls = {"a": lambda: jnp.ones(3) * 2, "b": lambda: jnp.ones(3) + 1}
  times = common.time_interleaved(calls, rounds=2)
  assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}
  rows = [{"x": 1, "y": 2.5, "z": None}, {"x": 2, "y": float("nan")}]
  md = common.markdown_table(rows, ["x", "y", "z"])
  assert md.splitlines()[0] == "| x | y | z |" and "–" in md
  j, m = common.write_results(str(tmp_path), "demo", {"rows": rows, "t": t}, md)
  data = json.loads(open(j).read())
  assert data["rows"][1]["y"] is None and data["t"]["repeats"] == 3
  assert common.parse_int_list(["16", "64,256"]) == [16, 64, 256]
  peak = common.matmul_peak(64, repeats=2)
  assert peak["gflops"] > 0
