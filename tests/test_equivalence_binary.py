"""Runs ``python -m train.equivalence --quick`` end to end and checks its files.

The binary is a thin absl main over urnn_jax.experiments.equivalence (whose
demonstrations are tested in test_equivalence.py).
"""

import csv
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "train.equivalence", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("equivalence")
  proc = _run(f"--workdir={workdir}", "--quick", "--seed=3")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return workdir, proc.stdout


def test_writes_files_and_a_valid_png(quick_run):
  workdir, _ = quick_run
  for name in ("results.json", "theorem31.csv", "tables.md", "equivalence.png"):
    assert os.path.getsize(workdir / name) > 0, name
  with open(workdir / "equivalence.png", "rb") as f:
    head = f.read(24)
  assert head[:8] == PNG_MAGIC
  assert head[12:16] == b"IHDR"
  width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
  assert width > 500 and height > 300


def test_results_hold_the_theorem_31_numbers(quick_run):
  workdir, stdout = quick_run
  with open(workdir / "results.json") as f:
    res = json.load(f)
  assert res["seed"] == 3 and res["quick"] is True and res["dtype"] == "float64"
  rows = res["theorem31"]
  assert [r["n"] for r in rows] == [1, 2]
  for r in rows:
    assert r["orthogonality_error"] < 1e-12
    assert r["max_abs_dy"] < 1e-9
    assert r["max_abs_h2"] == 0.0
    assert r["max_abs_y"] > 0.0 and r["active_fraction"] > 0.05  # states alive
    assert r["max_state_norm"] <= r["state_bound"]
    assert r["max_input_norm"] <= 1.0 + 1e-12
    n, m, p = r["n"], r["m"], r["p"]
    assert r["d_rnn"] == n * n + (p + m) * n
    assert r["d_urnn"] == n * (2 * n - 1) + 2 * n * (p + m)
  with open(workdir / "theorem31.csv") as f:
    csv_rows = list(csv.DictReader(f))
  assert [int(r["n"]) for r in csv_rows] == [1, 2]
  # The demonstrations ran: the constructions are exact, the bound demo breaks.
  tight = res["theorem32_demo"]["channels"][0]
  assert tight["construction"]["max_abs_dy"] < 1e-9
  assert [f["states"] for f in tight["fits"]] == [1, 2]
  conv = res["theorem41_demo"]
  assert conv["relu_construction"]["max_abs_dy"] < 1e-9
  assert conv["target_linearization"]["identified_eigenvalue_error"] < 1e-6
  dil = conv["sigmoid_dilation"]
  assert dil[0]["max_abs_dy"] > 1e-3 > 1e-12 > dil[-1]["max_abs_dy"]
  bound = res["input_bound_demo"]["rows"]
  assert bound[0]["max_abs_dy"] == 0.0 and bound[-1]["max_abs_dy"] > 1.0
  # The printed table.
  assert "## Theorem 3.1" in stdout and "| n | URNN states |" in stdout
  assert "demonstration, not a proof" in stdout


def test_tables_md_holds_every_table_and_is_what_was_printed(quick_run):
  workdir, stdout = quick_run
  text = (workdir / "tables.md").read_text()
  for heading in ("## Theorem 3.1", "## The input bound is real", "## Theorem 3.2",
                  "## Theorem 4.1"):
    assert heading in text, heading
  assert text in stdout


def test_workdir_is_required():
  proc = _run("--quick")
  assert proc.returncode != 0
  assert "workdir" in proc.stderr
