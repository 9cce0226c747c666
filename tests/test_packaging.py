"""What a user installs: one version everywhere, and a wheel that ships only the importable library.

The wheel holds the packages ``theory`` and ``simulations`` (with every subpackage, found by
setuptools' package discovery); ``figures`` and ``bench`` run from a checkout only
(``python -m figures``, ``python -m bench``), so they must not land in site-packages.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from helpers import REPO

import simulations
import theory
from simulations import results
from simulations.__main__ import main as cli_main

SHIPPED = ("theory", "simulations")
CHECKOUT_ONLY = ("figures", "bench", "tests", "examples", "docs")
# Building a pure-Python wheel without isolation takes a few seconds; the limit only stops a hang.
BUILD_TIMEOUT_S = 300


def test_one_version_everywhere():
    version = theory.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert simulations.__version__ == version
    assert results.LIBRARY_VERSION == version
    pyproject = (REPO / "pyproject.toml").read_text()  # tomllib needs Python 3.11; the library supports 3.10
    assert re.search(r'^dynamic = \["version"\]$', pyproject, re.M)
    assert re.search(r'^version = \{attr = "theory.__version__"\}$', pyproject, re.M)
    assert not re.search(r'^version = "', pyproject, re.M), "the version is written in theory/__init__.py only"
    citation = (REPO / "CITATION.cff").read_text()
    assert re.search(r"^version: (\S+)$", citation, re.M).group(1) == version
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(r"^## (\S+)", changelog, re.M).group(1) == version, "the newest CHANGELOG entry is this version"


def test_version_flag_prints_the_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"projection-head-theory {theory.__version__}"


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    """File names inside a wheel built from a copy of the checkout (no stale build/ folder can leak in)."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "output", "results")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for name in (*SHIPPED, *CHECKOUT_ONLY):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    process = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                              "--no-index", "-q", "-w", str(out)], capture_output=True, text=True,
                             timeout=BUILD_TIMEOUT_S, check=False)
    assert process.returncode == 0, process.stderr[-3000:]
    (wheel,) = out.glob("projection_head_theory-*.whl")
    assert wheel.name.startswith(f"projection_head_theory-{theory.__version__}-py3-none-any")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_ships_theory_and_simulations_only(wheel_names):
    top_level = {name.split("/")[0] for name in wheel_names}
    assert top_level == {*SHIPPED, f"projection_head_theory-{theory.__version__}.dist-info"}


def test_wheel_ships_every_module_and_subpackage_of_the_library(wheel_names):
    expected = {path.relative_to(REPO).as_posix() for package in SHIPPED for path in (REPO / package).rglob("*.py")
                if "__pycache__" not in path.parts}
    assert expected - wheel_names == set()
    assert {"simulations/data/__init__.py", "simulations/models/__init__.py",
            "simulations/experiments/__init__.py"} <= wheel_names
