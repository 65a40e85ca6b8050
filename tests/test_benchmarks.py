"""Every benchmark script explains itself with --help, without running anything."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO, cli_env

SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py"))


def test_the_benchmark_scripts_are_all_here():
    assert {"bench_train.py", "peers.py", "threaded_step.py", "profile_step.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_usage_and_runs_nothing(script: str):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"],
                            capture_output=True, text=True, env=cli_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script}"), result.stdout[:300]
