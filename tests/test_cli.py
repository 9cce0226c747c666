"""The command line (python -m simulations weighting) as a user runs it: in a subprocess.

Contract: --json prints exactly one JSON object; without it a table is printed and the results
are saved (.npz + .json with provenance); bad input exits with code 2 and one line on stderr
(never a traceback); --help documents every default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "simulations", "weighting"]
GOOD_FLAGS = ["--pos-cov", "0.9,0.5,0.8", "--second-moment", "1,0.6,2", "--depth", "2"]
DEPTH, DIM = 2, 3
# The weighting contract (README): measured vs predicted, relative, on learned features.
WEIGHT_RTOL = 1e-3
# A subprocess imports JAX and compiles the solver (~10 s on 2 loaded cores); generous cap.
TIMEOUT_S = 300

BAD_INPUTS = {
    "negative-second-moment": (["--pos-cov", "0.9,0.5,0.8", "--second-moment", "1,-0.6,2"], "second_moment"),
    "a-above-b": (["--pos-cov", "1.5,0.5,0.8", "--second-moment", "1,0.6,2"], "pos_cov"),
    "mismatched-lengths": (["--pos-cov", "0.9,0.5", "--second-moment", "1,0.6,2"], "same length"),
    "depth-0": (GOOD_FLAGS[:4] + ["--depth", "0"], "depth"),
    "width-0": (GOOD_FLAGS + ["--width", "0"], "width"),
    "nan-value": (["--pos-cov", "nan,0.5,0.8", "--second-moment", "1,0.6,2"], "pos_cov"),
    "non-numeric-list": (["--pos-cov", "0.9,abc,0.8", "--second-moment", "1,0.6,2"], "--pos-cov"),
    "negative-weight-decay": (GOOD_FLAGS + ["--weight-decay", "-0.1"], "weight_decay"),
    "bad-init": (GOOD_FLAGS + ["--init", "orthogonal"], "--init"),
    "missing-second-moment": (["--pos-cov", "0.9,0.5,0.8"], "--second-moment"),
}
# One ValueError from the configuration and one argparse error, as real processes (exit status,
# nothing else written to stderr by the interpreter or JAX at start-up).
SUBPROCESS_BAD_INPUTS = ("negative-second-moment", "non-numeric-list")


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    """The caller's environment with a private compilation cache (never the user's home)."""
    env = dict(os.environ)
    env["PROJECTION_HEAD_JAX_CACHE"] = str(tmp_path_factory.mktemp("jax-cache"))
    return env


def _run(flags, environment, **kwargs):
    return subprocess.run(COMMAND + flags, cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=TIMEOUT_S, **kwargs)


@pytest.fixture(scope="module")
def json_run(environment, tmp_path_factory):
    out = tmp_path_factory.mktemp("json-run") / "never-written"
    return out, _run(GOOD_FLAGS + ["--json", "--out", str(out)], environment)


@pytest.fixture(scope="module")
def table_run(environment, tmp_path_factory, json_run):
    # After json_run, so it reuses the compilation cache the first run filled.
    out = tmp_path_factory.mktemp("table-run") / "results"
    return out, _run(GOOD_FLAGS + ["--out", str(out)], environment)


@pytest.fixture(scope="module")
def bad_subprocess_runs(environment):
    """Two bad inputs as real processes, in parallel (they fail before any compilation)."""
    processes = {name: subprocess.Popen(COMMAND + BAD_INPUTS[name][0], cwd=REPO, env=environment,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name in SUBPROCESS_BAD_INPUTS}
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        results[name] = (process.returncode, stdout, stderr)
    return results


def _check_weights(measured, predicted):
    measured, predicted = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    assert measured.shape == predicted.shape == (DEPTH, DIM)
    learned = predicted[-1] > 0
    assert learned.all()  # every ratio here is positive and the width is d
    np.testing.assert_allclose(measured[:, learned], predicted[:, learned], rtol=WEIGHT_RTOL, atol=0)


def test_json_mode_prints_exactly_one_object(json_run):
    out, process = json_run
    assert process.returncode == 0, process.stderr
    payload = json.loads(process.stdout)  # fails on any extra text around the object
    assert isinstance(payload, dict)
    assert {"measured", "predicted", "diagnostics"} <= set(payload)
    for key in ("measured", "predicted"):
        assert len(payload[key]) == DEPTH and all(len(row) == DIM for row in payload[key])
        assert all(isinstance(value, float) for row in payload[key] for value in row)
    _check_weights(payload["measured"], payload["predicted"])
    diagnostics = payload["diagnostics"]
    assert {"converged", "t_final", "steps", "loss", "predicted_loss"} <= set(diagnostics)
    assert diagnostics["converged"] is True
    assert isinstance(diagnostics["steps"], int) and diagnostics["steps"] > 0
    assert diagnostics["t_final"] > 0
    assert diagnostics["loss"] == pytest.approx(diagnostics["predicted_loss"], rel=1e-6)
    assert not out.exists()  # --json saves nothing


def test_table_mode_prints_a_table_and_saves_results_with_provenance(table_run):
    out, process = table_run
    assert process.returncode == 0, process.stderr
    lines = process.stdout.strip().splitlines()
    assert lines[0].split() == ["layer", "feature", "measured", "predicted", "rel.err"]
    rows = [line.split() for line in lines[1:1 + DEPTH * DIM]]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(l, i) for l in range(1, DEPTH + 1) for i in range(DIM)]
    assert "converged=True" in lines[-1]
    arrays = np.load(out / "weighting.npz")
    _check_weights(arrays["measured"], arrays["predicted"])
    np.testing.assert_allclose([float(r[2]) for r in rows], arrays["measured"].ravel(), rtol=1e-5)
    record = json.loads((out / "weighting.json").read_text())
    assert record["config"]["pos_cov"] == [0.9, 0.5, 0.8]
    assert record["config"]["second_moment"] == [1.0, 0.6, 2.0]
    assert record["config"]["depth"] == DEPTH
    assert record["seed"] == 0
    packages = record["provenance"]["packages"]
    for package in ("jax", "numpy", "diffrax"):
        assert packages[package] == metadata.version(package)
    assert record["provenance"]["precision"] == "float64"


def _check_one_line_error(returncode, stdout, stderr, name):
    assert returncode == 2, (stdout, stderr)
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert BAD_INPUTS[name][1] in stderr
    assert "error" in stderr
    assert stdout == ""


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(name, capsys, monkeypatch):
    """In process (a subprocess per case would cost ~2 s of imports each)."""
    from simulations.__main__ import main
    from simulations.runtime import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, "off")
    try:
        returncode = main(COMMAND[3:] + BAD_INPUTS[name][0])
    except SystemExit as exit_:  # argparse errors exit from inside parse_args
        returncode = exit_.code
    captured = capsys.readouterr()
    _check_one_line_error(returncode, captured.out, captured.err, name)


@pytest.mark.parametrize("name", SUBPROCESS_BAD_INPUTS)
def test_bad_input_in_a_real_process_has_no_traceback(bad_subprocess_runs, name):
    _check_one_line_error(*bad_subprocess_runs[name], name)


def test_help_mentions_every_default(environment):
    process = _run(["--help"], environment)
    assert process.returncode == 0
    text = " ".join(process.stdout.split())  # argparse wraps lines
    for default in ("default balanced", "default 0.1", "default: d", "default float64", "default 2",
                    "default 0.0", "default 0)"):
        assert default in text, default
