"""The worked examples in examples/ run as a user runs them (a fresh process) and show what they claim."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.py"))
# The quickstart's flow stops at the library's default tolerances (rtol 1e-5 on the solver, a steady-
# state event on the loss): the trained layer weights sit ~1e-4 from the closed form, well inside this.
QUICKSTART_ATOL = 1e-3
TIMEOUT_S = 600


def _run(path, environment):
    return subprocess.run([sys.executable, str(path)], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)


def test_there_are_examples():
    assert [path.name for path in EXAMPLES if path.name == "quickstart.py"] == ["quickstart.py"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(path, cli_environment):
    process = _run(path, cli_environment)
    assert process.returncode == 0, process.stderr[-3000:]
    if path.name == "quickstart.py":
        assert "converged: True" in process.stdout
        error = float(re.search(r"largest difference: (\S+)", process.stdout)[1])
        assert error <= QUICKSTART_ATOL
