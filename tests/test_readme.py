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


def test_readme_has_an_api_section():
  api = _section("API")
  for name in ("optim", "orthogonal", "initializers", "theory", "training", "models"):
    assert f"urnn_jax.{name}" in api or f"`{name}`" in api, name


_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _relative_links(text: str) -> list[str]:
  text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks are not links
  text = re.sub(r"`[^`\n]*`", "", text)
  links = []
  for target in _LINK.findall(text):
    if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
      continue  # a URL, or an anchor within the page
    links.append(target.split("#", 1)[0])
  return links


def test_every_relative_link_points_to_an_existing_file():
  pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
  broken = []
  for page in pages:
    for target in _relative_links(page.read_text()):
      if not (page.parent / target).exists():
        broken.append(f"{page.relative_to(ROOT)}: {target}")
  assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme_and_links_back():
  linked = {(ROOT / t).resolve() for t in _relative_links(README)}
  pages = sorted((ROOT / "docs").glob("*.md"))
  assert pages, "docs/ has no pages"
  for page in pages:
    assert page.resolve() in linked, f"README does not link {page.relative_to(ROOT)}"
    targets = {(page.parent / t).resolve() for t in _relative_links(page.read_text())}
    assert (ROOT / "README.md").resolve() in targets, f"{page.relative_to(ROOT)} has no link to the README"
