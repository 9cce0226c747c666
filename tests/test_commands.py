"""The generated experiment command: every config field is a flag, --config repeats a saved run,
and no run overwrites a different run's results silently."""

from __future__ import annotations

import dataclasses
import json

import pytest

from simulations import cli
from simulations.__main__ import build_parser, main
from simulations.registry import EXPERIMENTS
from simulations.runtime import CACHE_ENV

WEIGHTING = ["weighting", "--pos-cov", "0.9,0.5,0.8", "--second-moment", "1,0.6,2", "--init-scale", "0.3"]


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "off")  # in-process runs never write the user's compilation cache


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_config_field_is_a_flag(name):
    experiment = EXPERIMENTS[name]
    command = experiment.command
    config_class = command.config_fields or experiment.config
    parser = build_parser().parse_args([name]).command_parser
    flags = {option for action in parser._actions for option in action.option_strings}
    for field in dataclasses.fields(config_class):
        if field.name not in command.hidden:
            assert cli.flag(field.name) in flags, (name, field.name)


def test_config_file_repeats_a_saved_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(WEIGHTING + ["--seed", "3", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(WEIGHTING + ["--seed", "3", "--json", "--no-progress"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert main(["weighting", "--config", str(out / "weighting.json"), "--json", "--no-progress"]) == 0
    repeated = json.loads(capsys.readouterr().out)
    assert repeated == direct
    # A flag given with --config overrides the file.
    assert main(["weighting", "--config", str(out / "weighting.json"), "--depth", "3", "--json",
                 "--no-progress"]) == 0
    assert len(json.loads(capsys.readouterr().out)["measured"]) == 3


def test_a_different_run_never_overwrites_silently(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(WEIGHTING + ["--out", str(out), "--no-progress"]) == 0
    first = (out / "weighting.json").read_text()
    capsys.readouterr()
    assert main(WEIGHTING + ["--seed", "1", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert (out / "weighting.json").read_text() == first  # the first run's record is untouched
    assert json.loads((out / "weighting-2.json").read_text())["seed"] == 1
    assert "weighting-2" in err
    # Repeating the same run replaces its own files without a new name.
    assert main(WEIGHTING + ["--seed", "1", "--out", str(out), "--no-progress"]) == 0
    assert not (out / "weighting-3.json").exists()


def _fake_experiment(run_batch):
    """The two things run_configs asks of an experiment: its shape key and its batch runner."""
    from types import SimpleNamespace

    return SimpleNamespace(shape_key=lambda config: config["group"], run_batch=run_batch)


def test_shape_groups_run_at_the_same_time_and_points_keep_their_order(monkeypatch):
    # Each shape group is its own compiled program; run one after the other, an empty cache made a
    # command compile them one after the other too (supervised --quick: 25 s, now 19-20 s).
    import threading

    import numpy as np

    from simulations import commands, runtime

    monkeypatch.setattr(runtime, "worker_threads", lambda: 2)
    both_running = threading.Barrier(2, timeout=60)

    def run_batch(configs):
        both_running.wait()  # raises BrokenBarrierError unless the other group runs meanwhile
        return (np.asarray([config["value"] for config in configs]),)

    configs = [{"group": group, "value": value} for group, value in [("a", 1), ("b", 2), ("a", 3)]]
    points = commands.run_configs(_fake_experiment(run_batch), configs)
    assert [int(p[0]) for p in points] == [1, 2, 3]


def test_shape_groups_run_in_the_callers_precision(monkeypatch):
    # JAX keeps the float64 setting per thread; a group run on another thread must see the caller's.
    import jax
    import numpy as np

    from simulations import commands, runtime

    monkeypatch.setattr(runtime, "worker_threads", lambda: 2)

    def run_batch(configs):
        return (np.asarray([bool(jax.config.jax_enable_x64)] * len(configs)),)

    configs = [{"group": "a", "value": 1}, {"group": "b", "value": 2}]
    with jax.enable_x64(False):  # the suite runs in float64: the opposite of the threads' default
        points = commands.run_configs(_fake_experiment(run_batch), configs)
    assert [bool(p[0]) for p in points] == [False, False]


def test_a_failing_shape_group_raises_its_error(monkeypatch):
    import numpy as np

    from simulations import commands, runtime

    monkeypatch.setattr(runtime, "worker_threads", lambda: 2)

    def run_batch(configs):
        if configs[0]["group"] == "b":
            raise ValueError("learning_rate: group b diverged")
        return (np.asarray([config["value"] for config in configs]),)

    configs = [{"group": "a", "value": 1}, {"group": "b", "value": 2}]
    with pytest.raises(ValueError, match="group b diverged"):
        commands.run_configs(_fake_experiment(run_batch), configs)
