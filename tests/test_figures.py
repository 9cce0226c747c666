"""Smoke tests of the figure scripts: --quick runs write PNG + .npz + .json; --redraw never trains.

All quick figures are generated once per module (through ``python -m figures``' main, in one
process, so solves of equal shape share their compilation); the tests then inspect the files.
Runtime: ~90 s on 2 CPU cores, almost all of it compilation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import figures.__main__ as figures_main
from figures import (
    downstream_knobs,
    downstream_phase,
    downstream_weight_decay,
    init_scale,
    trajectories,
    weight_decay,
    weighting_layers,
)
from simulations.runtime import CACHE_ENV

NAMES = ("weighting_layers", "init_scale", "trajectories", "weight_decay", "downstream_knobs",
         "downstream_phase", "downstream_weight_decay")
ROOT = Path(__file__).resolve().parent.parent

# Quick figures still compare simulation with theory; these bounds only catch gross breakage.
# Balanced weighting at the default integrator tolerance lands within ~1e-6 (measured 5e-7).
LAYERS_MAX_RELATIVE_ERROR = 1e-5
# Gaussian init error ~ eps^2: a fitted log-log slope within 0.3 of 2 (measured 2.02 on 3 points).
SLOPE_TOLERANCE = 0.3
# Along the trajectory the sim-theory gap peaks in the jumps, where a tiny time shift moves the
# weight a lot (measured 4e-4 at rtol 1e-5).
TRAJECTORY_MAX_ABS_ERROR = 1e-2
# Converged weight-decay end points: flow certified to loss_tol 1e-13 (measured ~1e-6).
WEIGHT_DECAY_MAX_ABS_ERROR = 1e-4
# Quick downstream figures probe with n_train = 5,000: training-sample error ~0.01 (measured
# <= 0.008); a gross break (wrong weights or layer) is >= 0.05.
DOWNSTREAM_MAX_ABS_ERROR = 0.03


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, "off")  # tests leave no compilation cache behind
        assert figures_main.main(["--quick", "--out", str(out), "--only", ",".join(NAMES)]) == 0
    return out


@pytest.mark.parametrize("name", NAMES)
def test_quick_figure_writes_png_arrays_and_record(quick_out, name):
    png = quick_out / f"{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    with np.load(quick_out / f"{name}.npz") as data:
        assert data.files
        assert all(np.asarray(data[key]).size > 0 for key in data.files)
    record = json.loads((quick_out / f"{name}.json").read_text())
    assert isinstance(record["config"], dict) and record["config"]
    assert "seed" in record
    assert record["quick"] is True
    provenance = record["provenance"]
    assert provenance["precision"] == "float64"
    assert provenance["packages"]["jax"] and provenance["packages"]["matplotlib"]
    assert "git_commit" in provenance and "created" in provenance


def test_quick_figures_agree_with_theory(quick_out):
    record = json.loads((quick_out / "weighting_layers.json").read_text())
    assert max(record["max_relative_error"].values()) < LAYERS_MAX_RELATIVE_ERROR
    record = json.loads((quick_out / "init_scale.json").read_text())
    assert abs(record["summary"]["gaussian_fitted_slope"] - 2.0) < SLOPE_TOLERANCE
    record = json.loads((quick_out / "trajectories.json").read_text())
    assert all(d["max_abs_error_aligned"] < TRAJECTORY_MAX_ABS_ERROR for d in record["diagnostics"])
    record = json.loads((quick_out / "weight_decay.json").read_text())
    assert all(d["max_abs_error"] < WEIGHT_DECAY_MAX_ABS_ERROR for d in record["diagnostics"])
    assert all(all(d["converged"]) for d in record["diagnostics"])


def test_quick_downstream_figures_agree_with_theory(quick_out):
    record = json.loads((quick_out / "downstream_knobs.json").read_text())
    assert max(record["max_abs_error"].values()) < DOWNSTREAM_MAX_ABS_ERROR
    record = json.loads((quick_out / "downstream_weight_decay.json").read_text())
    assert record["disagreements"] == []  # every trained net ends where basin + escape predicts
    assert record["max_abs_error"] < DOWNSTREAM_MAX_ABS_ERROR
    record = json.loads((quick_out / "downstream_phase.json").read_text())
    assert all(value == 1.0 for value in record["condition_agrees_with_risks"].values())
    assert record["residual_saddle_cells"] == 0
    assert max(record["max_abs_error_of_gap"].values()) < DOWNSTREAM_MAX_ABS_ERROR


def test_redraw_uses_saved_results_without_training(quick_out, monkeypatch):
    import simulations.experiments.downstream as downstream
    import simulations.experiments.weighting as weighting
    import simulations.flow as flow

    def refuse(*args, **kwargs):
        raise AssertionError("--redraw must not train")

    for module in (weighting_layers, init_scale, trajectories, weight_decay, downstream_knobs, downstream_phase,
                   downstream_weight_decay, weighting, downstream, flow):
        for attribute in ("gradient_flow", "run_weighting", "run_downstream"):
            if hasattr(module, attribute):
                monkeypatch.setattr(module, attribute, refuse)
    for name in NAMES:
        (quick_out / f"{name}.png").unlink()
    assert figures_main.main(["--redraw", "--out", str(quick_out), "--only", ",".join(NAMES)]) == 0
    for name in NAMES:
        assert (quick_out / f"{name}.png").stat().st_size > 10_000


def test_module_entry_point_redraws(quick_out):
    """``python -m figures.<name>`` runs as a script (here with --redraw: no compilation)."""
    completed = subprocess.run([sys.executable, "-m", "figures.weight_decay", "--redraw", "--out", str(quick_out)],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "weight_decay: wrote" in completed.stderr


def test_figure_list_finds_every_module_and_only_rejects_unknown_names():
    names = figures_main.figure_names()
    modules = sorted(path.stem for path in (ROOT / "figures").glob("*.py") if not path.stem.startswith("_"))
    assert sorted(names) == modules and len(names) == len(set(names))
    assert set(NAMES) <= set(names)
    # The slowest figures start first (figures_main.FIRST), so parallel workers finish together.
    listed = [name for name in figures_main.FIRST if name in modules]
    assert names[:len(listed)] == listed
    with pytest.raises(SystemExit):
        figures_main.main(["--redraw", "--only", "no_such_figure"])


def test_worker_processes_get_disjoint_shares_of_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 5}, raising=False)
    shares = figures_main.core_shares(2)
    assert shares == [{0, 2, 5}, {1, 3}]
    assert figures_main.core_shares(8) == [{0, 1, 2, 3, 5}] * 8  # more workers than cores: no pinning
    monkeypatch.delattr(os, "sched_getaffinity")
    assert figures_main.core_shares(2) == [None, None]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs a system that pins processes to cores, and two cores")
def test_pinned_worker_runs_on_its_share_only():
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from figures._common import pin_worker

    core = min(os.sched_getaffinity(0))
    context = get_context("spawn")
    shares = context.SimpleQueue()
    shares.put({core})
    with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=pin_worker, initargs=(shares,)) as pool:
        assert pool.submit(os.sched_getaffinity, 0).result(timeout=120) == {core}


def test_redraw_without_saved_results_fails_clearly(tmp_path, capsys):
    assert weight_decay.main(["--redraw", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--redraw" in error and "weight_decay.npz" in error
