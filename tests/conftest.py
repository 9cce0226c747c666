"""Settings for the whole test suite, applied before any test module imports JAX code.

float64 everywhere (theory-versus-simulation checks need it), and rank promotion is an error: an
(n,) array meeting an (n, 1) one must fail loudly instead of broadcasting to (n, n), as in
equinox's and neural-tangents' suites. The random-number hash uses the written-out CPU lowering
that entry points install (simulations.threefry: the same numbers, compiled several times
faster; tests/test_threefry.py compares it with JAX's own in a separate process), and XLA
generates CPU loops with the emitters entry points choose (simulations.runtime.configure_xla_cpu;
tests/test_runtime.py compares the numbers with XLA's default emitters). Warnings
raised from our own modules are errors (pyproject.toml, [tool.pytest.ini_options]
filterwarnings). Helpers shared by several test files live in tests/helpers.py; fixtures shared
by several files live here.
"""

import os

import jax
import pytest

from simulations import runtime, threefry

runtime.configure_xla_cpu()  # before JAX starts its CPU backend: entry points' code generation
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
threefry.install()


@pytest.fixture(scope="session")
def cli_environment(tmp_path_factory):
    """The caller's environment with a private compilation cache, for subprocess runs of our commands.

    Tests never write into the user's cache (~/.cache/projection-head-theory/jax).
    """
    return {**os.environ, "PROJECTION_HEAD_JAX_CACHE": str(tmp_path_factory.mktemp("jax-cache"))}
