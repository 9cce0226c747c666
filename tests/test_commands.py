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
