"""The README stays true: its quickstart runs, its commands are CI's."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
  match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
  assert match, f"README has no '## {title}' section"
  return match.group(1)


def test_quickstart_code_runs():
  blocks = re.findall(r"```python\n(.*?)```", _section("Quickstart"), re.S)
  assert len(blocks) >= 2
  namespace: dict = {}
  for block in blocks:  # later blocks build on earlier ones
    exec(compile(block, "README.md:quickstart", "exec"), namespace)
  err = namespace["urnn_jax"].orthogonal.orthogonality_error(namespace["W"])
  assert float(err) < 1e-4


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
  head = README.split("## ", 1)[0]
  commands = re.findall(r"```bash\n(.*?)\n```", head, re.S)
  assert len(commands) == 2, commands
  main_job, test_cmd = commands
  assert "train.system_id" in main_job and "venv" in main_job
  assert "pytest" in test_cmd and "venv" in test_cmd
  ci = (ROOT / ".ci" / "run").read_text()
  assert test_cmd in ci.splitlines(), "CI must run exactly the README's test command"


def test_readme_has_the_required_sections():
  for title in ("Quickstart", "Results", "Performance", "Architecture"):
    _section(title)
