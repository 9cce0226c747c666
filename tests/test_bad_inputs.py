"""Table-driven bad-input checks across the public API and every command line.

API: each public function or config raises ValueError whose message names the offending argument.
CLI: each entry point turns bad input into exactly one line on stderr and exit status 2 (never a
traceback); the command lines run in-process through their ``main(argv)`` (the subprocess path,
interpreter start-up included, is covered by tests/test_cli.py and the experiment CLI tests).
"""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest

from simulations import data, losses, models, probe, train
from simulations.experiments import downstream, weighting
from simulations.flow import FlowOptions
from simulations.models import relu
from theory import downstream as downstream_theory
from theory import dynamics, linear
from theory import weight_decay as wd_theory

A, B = (0.9, 0.5, 0.8), (1.0, 0.6, 2.0)
KEY = np.zeros(2, dtype=np.uint32)  # a raw PRNG key (validation happens before any use)
X = np.ones((4, 3))


def _pairs(key, n):
    return np.ones((n, 3)), np.ones((n, 3))


# (id, callable, the argument's name, which the message must open with)
API_CASES = [
    ("linear-negative-b", lambda: linear.layer_weights(A, (1.0, -0.6, 2.0), 2), "second_moment"),
    ("linear-a-above-b", lambda: linear.layer_weights((1.5, 0.5, 0.8), B, 2), "pos_cov"),
    ("linear-length-mismatch", lambda: linear.optimal_gram((0.9, 0.5), B), "pos_cov"),
    ("linear-depth-0", lambda: linear.layer_weights(A, B, 0), "depth"),
    ("linear-width-0", lambda: linear.learned_features(A, B, 0), "width"),
    ("linear-nan", lambda: linear.end_to_end_weights((np.nan, 0.5, 0.8), B), "pos_cov"),
    ("dynamics-init-0", lambda: dynamics.plateau_time(A, B, 2, 0.0), "init_scale"),
    ("dynamics-negative-time", lambda: dynamics.feature_trajectories(A, B, 2, 0.1, [-1.0, 1.0]), "times"),
    ("wd-negative", lambda: wd_theory.fixed_points(A, B, 2, -0.1), "weight_decay"),
    ("wd-depth-0", lambda: wd_theory.survival_threshold(A, B, 0), "depth"),
    ("wd-basin-init-0", lambda: wd_theory.basin_weights(A, B, 2, 0.1, 0.0), "init_scale"),
    ("wd-stable-end-init-negative", lambda: wd_theory.stable_end_weights(A, B, 2, 0.1, -1.0), "init_scale"),
    ("downstream-target-range", lambda: downstream_theory.probe_risk(np.ones((2, 3)), B, 3, 0.1), "target"),
    ("downstream-negative-ridge", lambda: downstream_theory.probe_risk(np.ones((2, 3)), B, 0, -0.1), "ridge"),
    ("downstream-layer-range", lambda: downstream_theory.pre_minus_post(A, B, 0, 0.1, pre_layer=3), "pre_layer"),
    ("downstream-knob-invariance", lambda: downstream_theory.target_knobs(A, B, 0, invariance=1.5), "invariance"),
    ("data-drop-p", lambda: data.drop_replace(1.0, 1.5), "p"),
    ("data-sign-flip-q", lambda: data.sign_flip(1.0, -0.1), "q"),
    ("data-correlation", lambda: data.correlated(1.0, 1.2), "correlation"),
    ("data-noise-std", lambda: data.additive_noise(1.0, -1.0), "noise_std"),
    ("data-preset-kind", lambda: data.preset_pairs("rotate", 3, strength=0.5), "kind"),
    ("data-diagonal-mismatch", lambda: data.diagonal_pairs((0.9, 0.5), B), "pos_cov"),
    ("models-width-0", lambda: models.init_linear(KEY, 3, (3, 0)), "width"),
    ("models-init-kind", lambda: models.init_linear(KEY, 3, (3, 3), init="orthogonal"), "init"),
    ("models-init-scale", lambda: models.init_linear(KEY, 3, (3, 3), init_scale=0.0), "init_scale"),
    ("relu-width-0", lambda: relu.init_relu(KEY, 3, 0, 2), "width"),
    ("relu-group-0", lambda: relu.init_diagonal_relu(KEY, 3, 0, 2), "group"),
    ("loss-one-sample", lambda: losses.spectral_loss(np.ones((1, 3)), np.ones((1, 3))), "z"),
    ("loss-temperature", lambda: losses.info_nce_loss(X, X, temperature=0.0), "temperature"),
    ("probe-negative-ridge", lambda: probe.ridge_probe(X, np.ones(4), X, np.ones(4), -1.0), "ridge"),
    ("probe-one-sample", lambda: probe.ridge_probe(X[:1], np.ones(1), X, np.ones(4), 0.1), "train_features"),
    ("probe-target-shape", lambda: probe.ridge_probe(X, np.ones(3), X, np.ones(4), 0.1), "train_target"),
    ("training-learning-rate", lambda: train.train(
        lambda p, pair: 0.0, X, batch=_pairs, learning_rate=0.0, steps=10, record_every=10), "learning_rate"),
    ("training-steps-multiple", lambda: train.train(
        lambda p, pair: 0.0, X, batch=_pairs, learning_rate=0.1, steps=15, record_every=10), "steps"),
    ("training-record", lambda: train.train(lambda p: 0.0, X, learning_rate=0.1, steps=10, record_every=5,
                                                   record="max"), "record"),
    ("flow-solver", lambda: FlowOptions(solver="rk4"), "solver"),
    ("flow-rtol", lambda: FlowOptions(rtol=0.0), "rtol"),
    ("weighting-depth", lambda: weighting.WeightingConfig(depth=0), "depth"),
    ("weighting-precision", lambda: weighting.WeightingConfig(precision="float16"), "precision"),
    ("weighting-seed", lambda: weighting.WeightingConfig(seed=-1), "seed"),
    ("downstream-config-target", lambda: downstream.DownstreamConfig(target=5), "target"),
    ("downstream-config-n-train", lambda: downstream.DownstreamConfig(n_train=1), "n_train"),
    ("downstream-config-layer", lambda: downstream.DownstreamConfig(layer=3), "layer"),
    ("downstream-config-ridge", lambda: downstream.DownstreamConfig(ridge=-0.5), "ridge"),
    ("downstream-config-b-ds", lambda: downstream.DownstreamConfig(downstream_second_moment=(1.0, 1.0)),
     "downstream_second_moment"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[case[0] for case in API_CASES])
def test_api_bad_input_raises_value_error_naming_the_argument(case):
    _, call, name = case
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}\b"):  # the message opens with the name
        call()


WEIGHTING = ["weighting", "--pos-cov", "0.9,0.5,0.8", "--second-moment", "1,0.6,2"]
REWEIGHTING = ["reweighting", "--pos-cov", "0.9,0.5,0.8", "--second-moment", "1,0.6,2"]
DOWNSTREAM = ["downstream", "--pos-cov", "0.9,0.5,0.8", "--second-moment", "1,0.6,2", "--target", "0"]

# (id, entry-point module, argv, expected fragment of the one stderr line)
CLI_CASES = [
    ("simulations-unknown-experiment", "simulations.__main__", ["rotate"], "rotate"),
    ("weighting-negative-b", "simulations.__main__",
     ["weighting", "--pos-cov", "0.9,0.5,0.8", "--second-moment", "1,-0.6,2"], "second_moment"),
    ("weighting-depth-0", "simulations.__main__", WEIGHTING + ["--depth", "0"], "depth"),
    ("weighting-init", "simulations.__main__", WEIGHTING + ["--init", "orthogonal"], "--init"),
    ("weighting-non-numeric", "simulations.__main__",
     ["weighting", "--pos-cov", "0.9,x,0.8", "--second-moment", "1,0.6,2"], "--pos-cov"),
    ("downstream-target-range", "simulations.__main__", DOWNSTREAM[:-1] + ["7"], "target"),
    ("downstream-negative-ridge", "simulations.__main__", DOWNSTREAM + ["--ridge", "-1"], "ridge"),
    ("downstream-layer-range", "simulations.__main__", DOWNSTREAM + ["--layer", "5"], "layer"),
    ("downstream-n-train", "simulations.__main__", DOWNSTREAM + ["--n-train", "1"], "n_train"),
    ("downstream-wd", "simulations.__main__", DOWNSTREAM + ["--weight-decay", "-1"], "weight_decay"),
    ("nonlinear-flip-probability", "simulations.__main__", ["nonlinear", "--flip-probability", "1.5"],
     "flip_probability"),
    ("nonlinear-network", "simulations.__main__", ["nonlinear", "--network", "deep"], "--network"),
    ("nonlinear-steps", "simulations.__main__", ["nonlinear", "--steps", "0"], "steps"),
    ("nonlinear-weight-decay", "simulations.__main__", ["nonlinear", "--weight-decay", "-1"], "weight_decay"),
    ("supervised-agreement", "simulations.__main__", ["supervised", "--agreement", "1.5"], "agreement"),
    ("supervised-init-scale", "simulations.__main__", ["supervised", "--init-scale", "0"], "init_scale"),
    ("supervised-form", "simulations.__main__", ["supervised", "--contrastive-form", "triplet"], "--contrastive-form"),
    ("reweighting-kappa", "simulations.__main__", REWEIGHTING + ["--kappa", "0.5"], "kappa"),
    ("reweighting-init-scale", "simulations.__main__", REWEIGHTING + ["--kappa", "2", "--init-scale", "1e-12"],
     "init_scale"),
    ("reweighting-missing-kappa", "simulations.__main__", REWEIGHTING, "--kappa"),
    ("reweighting-width", "simulations.__main__", REWEIGHTING + ["--kappa", "2", "--width", "0"], "width"),
    ("readout-missing-target", "simulations.__main__", ["readout", "--pos-cov", "0.9,0.5", "--second-moment", "1,1"],
     "--target"),
    ("readout-target-range", "simulations.__main__",
     ["readout", "--pos-cov", "0.9,0.5", "--second-moment", "1,1", "--target", "2"], "target"),
    ("readout-depth-0", "simulations.__main__",
     ["readout", "--pos-cov", "0.9,0.5", "--second-moment", "1,1", "--target", "0", "--depth", "0"], "depth"),
    ("pixels-p-drop", "simulations.__main__", ["pixels", "--p-drop", "1.5"], "p_drop"),
    ("pixels-encoder", "simulations.__main__", ["pixels", "--encoder", "resnet"], "--encoder"),
    ("pixels-missing-data-dir", "simulations.__main__", ["pixels", "--data-dir", "/no/such/cifar"], "/no/such/cifar"),
    ("underscore-flag", "simulations.__main__", ["weighting", "--pos_cov", "0.9", "--second-moment", "1"],
     "unrecognized arguments: --pos_cov"),
    ("config-file-missing", "simulations.__main__", WEIGHTING + ["--config", "no-such-record.json"],
     "no-such-record.json"),
    ("sweep-unknown-experiment", "simulations.__main__", ["sweep", "rotate", "--out", "unused-dir"], "rotate"),
    ("sweep-unknown-field", "simulations.__main__",
     ["sweep", "weighting", "--out", "unused-dir", "--set", "colour=1,2"], "colour"),
    ("sweep-seeds-0", "simulations.__main__", ["sweep", "weighting", "--out", "unused-dir", "--seeds", "0"], "seeds"),
    ("sweep-bad-value", "simulations.__main__", ["sweep", "weighting", "--out", "unused-dir", "--set", "depth=0,2"],
     "depth"),
    ("sweep-missing-out", "simulations.__main__", ["sweep", "weighting"], "--out"),
    ("bench-unknown-part", "bench.__main__", ["--only", "everything"], "--only"),
    ("bench-negative-budget", "bench.__main__", ["--numpy-budget", "-1"], "--numpy-budget"),
    ("bench-sweep-points", "bench.__main__", ["--sweep-points", "0"], "--sweep-points"),
    ("figures-unknown-flag", "figures.__main__", ["--bogus"], "--bogus"),
    ("figures-only-unknown", "figures.__main__", ["--only", "no_such_figure"], "--only"),
    ("figure-unknown-flag", "figures.weight_decay", ["--fast"], "--fast"),
]


def _main_of(module_name):
    return importlib.import_module(module_name).main


@pytest.mark.parametrize("case", CLI_CASES, ids=[case[0] for case in CLI_CASES])
def test_cli_bad_input_prints_one_line_and_exits_2(case, capsys, tmp_path, monkeypatch):
    _, module_name, argv, fragment = case
    monkeypatch.chdir(tmp_path)  # nothing may be written, but never into the repository
    try:
        status = _main_of(module_name)(argv)
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.count("\n") == 1, captured.err
    assert "error" in captured.err and fragment in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_table_is_large_enough_and_covers_every_cli():
    assert len(API_CASES) + len(CLI_CASES) >= 40
    from simulations.__main__ import EXPERIMENTS

    covered = {argv[0] for _, module, argv, _ in CLI_CASES if module == "simulations.__main__" and argv}
    assert set(EXPERIMENTS) | {"sweep"} <= covered
    assert {"bench.__main__", "figures.__main__"} <= {module for _, module, _, _ in CLI_CASES}


def test_sweep_bad_input_writes_nothing(tmp_path, capsys):
    from simulations.__main__ import main

    out = tmp_path / "sweep"
    assert main(["sweep", "weighting", "--out", str(out), "--set", "depth=0,2"]) == 2
    assert not out.exists() or not any(out.iterdir())


def test_bare_simulations_command_prints_help(capsys):
    """No experiment is not an error: the command lists the experiments and exits 0."""
    from simulations.__main__ import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: python -m simulations" in out
    for name in ("weighting", "downstream", "nonlinear", "supervised", "reweighting", "sweep"):
        assert name in out
