"""Process settings of entry points (simulations.runtime): XLA's CPU code generation.

Entry points ask XLA for its classic CPU loop emitters (faster to compile and to run here). A
minibatch experiment trains to the same parameters and measurements bit for bit either way.
"""

import os

import numpy as np

from simulations import runtime
from simulations.results import load_results
from tests.helpers import run_command

OPTION = runtime.CPU_EMITTER_OPTION
CLASSIC, DEFAULT = f"--{OPTION}=false", f"--{OPTION}=true"


def test_option_is_added_once_and_a_users_choice_is_kept(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    if runtime.configure_xla_cpu():
        assert runtime._jaxlib_knows(OPTION)
        assert runtime.configure_xla_cpu()  # already there: not added twice
        assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {CLASSIC}"
    else:  # a jaxlib without the option: XLA would stop the process, so nothing is set
        assert not runtime._jaxlib_knows(OPTION)
    monkeypatch.setenv("XLA_FLAGS", DEFAULT)
    assert runtime.configure_xla_cpu() is False
    assert os.environ["XLA_FLAGS"] == DEFAULT
    assert runtime._jaxlib_knows("xla_cpu_option_that_does_not_exist_anywhere") is False


def test_minibatch_numbers_are_the_same_with_either_emitters(cli_environment, tmp_path):
    """The nonlinear experiment (minibatch sampling, ReLU and linear training, probes), saved by the
    command with the entry point's setting and with XLA's default emitters."""
    runs = {}
    for name, flags in (("classic", None), ("default", DEFAULT)):
        env = {key: value for key, value in cli_environment.items() if key != "XLA_FLAGS"}
        if flags is not None:
            env["XLA_FLAGS"] = flags
        process = run_command(["nonlinear", "--quick", "--no-progress", "--out", tmp_path / name], env)
        assert process.returncode == 0, process.stderr[-2000:]
        runs[name] = load_results(tmp_path / name, "nonlinear")
    (classic, classic_record), (default, default_record) = runs["classic"], runs["default"]
    if runtime._jaxlib_knows(OPTION):
        assert classic_record["provenance"]["xla_flags"] == CLASSIC
    assert default_record["provenance"]["xla_flags"] == DEFAULT
    assert classic.keys() == default.keys() and classic
    # The recorded losses are means over blocks of steps, a sum XLA may order differently: they
    # agree to rounding (seen: 1 unit in the last place). Everything else is identical.
    block_means = {"losses", "losses_by_net"}
    for name in classic:
        if name in block_means:
            np.testing.assert_allclose(classic[name], default[name], rtol=1e-14, atol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(classic[name], default[name], err_msg=name)
    assert classic_record["report"] == default_record["report"]
