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
