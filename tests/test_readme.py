"""README.md and CI must agree on how the tests are run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_test_command_the_readme_gives():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    command = ci_lines[ci_lines.index("# The test command, exactly as README.md gives it:") + 1]
    readme = (ROOT / "README.md").read_text()
    assert command.startswith("python -m pytest")
    assert f"The test command is `{command}`" in readme
    assert f"&& {command}\n" in readme


def test_every_relative_link_in_the_readme_exists():
    # CI runs on a fresh clone: a linked file that is not committed fails here.
    import re

    readme = (ROOT / "README.md").read_text()
    targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", readme)
               if not t.startswith(("http://", "https://", "#", "mailto:"))}
    assert targets  # the README does link to files
    missing = sorted(t for t in targets if not (ROOT / t).exists())
    assert not missing, f"README links to files that do not exist: {missing}"
