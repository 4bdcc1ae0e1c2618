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
  models = ("recurrence,recurrence_bm,projection,matmul_chain,urnn_rnn,urnn_rnn_remat,urnn_lstm,"
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
    if r["mode"] == "fwdbwd" and not r["model"].startswith("torch"):  # the compiled program's buffers
      assert r["memory_method"] == "memory_analysis" and r["memory_mb"] > 0
  assert {r["input_size"] for r in timed} == {8, 2}  # the smoke points: m = n and m = 2
  for name in scan_throughput.FWD_ONLY_MODELS:  # the breakdown rows are forward only
    assert {r["mode"] for r in timed if r["model"] == name} == {"fwd"}
  assert len(payload["targets"]) == 15
  assert "# Scan throughput" in md and "| urnn_rnn |" in md and "## Targets" in md
  assert "| urnn_rnn_remat |" in md and "fwd+bwd MB" in md
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
  def row(model, mode, n, b, t, median_s, frac=0.1, m=None, mb=None, compile_s=None):
    r = {"model": model, "mode": mode, "hidden": n, "batch": b, "seq_len": t,
         "input_size": m or n, "us_per_step": 1e6 * median_s / t, "median_s": median_s,
         "frac_of_peak": frac, "recurrent_gflops": 1.0, "compile_s": compile_s}
    return r if mb is None else {**r, "memory_mb": mb}

  rows = [
      row("urnn_rnn", "fwdbwd", 64, 32, 1000, 1.0, mb=10, compile_s=1.0),
      row("flax_simple", "fwdbwd", 64, 32, 1000, 1.6, mb=12, compile_s=1.0),
      row("urnn_rnn", "fwdbwd", 64, 32, 1000, 1.0, m=2, mb=13, compile_s=3.0),
      row("flax_simple", "fwdbwd", 64, 32, 1000, 1.2, m=2, mb=12, compile_s=1.0),
      row("torch_rnn", "fwdbwd", 64, 32, 1000, 0.9),
      row("recurrence", "fwd", 256, 256, 1000, 1.0, frac=0.6),
      row("urnn_rnn", "fwd", 256, 256, 1000, 1.2),
      row("urnn_rnn", "fwdbwd", 64, 32, 10_000, 10.0, m=2),
      {"model": "urnn_rnn_remat", "mode": "fwdbwd", "hidden": 64, "batch": 32, "seq_len": 10_000,
       "input_size": 2, "skipped": "too slow"},
  ]
  targets = {t["target"]: t for t in scan_throughput.evaluate_targets(rows)}
  assert len(targets) == 15
  speed = lambda n, m: targets[f"Recurrent fwd+bwd >= 1.5x flax nn.RNN(SimpleCell), T=1000 B=32 n={n} m={m}"]
  assert speed(64, 64)["met"] is True and speed(64, 64)["value"] == pytest.approx(1.6)
  assert speed(64, 2)["met"] is False and speed(64, 1)["met"] is None
  torch_t = next(t for k, t in targets.items() if "torch" in k)
  assert torch_t["met"] is False and torch_t["value"] == pytest.approx(0.9)
  peak = targets["forward recurrence >= 50% of matmul peak at n=256, B=256"]
  assert peak["met"] is True
  layer = targets["layer forward within 1.25x of its recurrence row at n=256, B=256"]
  assert layer["met"] is True and layer["value"] == pytest.approx(1.2)
  mem = next(t for k, t in targets.items() if "memory" in k)
  assert mem["met"] is False and mem["value"] == pytest.approx(13 / 12)
  assert targets["urnn_rnn fwd+bwd runs at T=10000, n=64, B=32, m=2"]["met"] is True
  assert targets["urnn_rnn_remat fwd+bwd runs at T=10000, n=64, B=32, m=2"]["met"] is False
  assert targets["urnn_rnn fwd+bwd runs at T=100000, n=64, B=32, m=2"]["met"] is None
  comp = next(t for k, t in targets.items() if "compile" in k)
  assert comp["met"] is False and comp["value"] == pytest.approx(3.0)


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
