"""The written-out Threefry-2x32 lowering (simulations.threefry): the same random numbers as JAX's own."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simulations import threefry

#: Random123's known answers for Threefry-2x32, 20 rounds: (key, counter) -> output.
KNOWN_ANSWERS = (
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
)

#: Draws of every kind the library makes, in one jitted program and eagerly; printed as JSON.
DRAWS = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
if sys.argv[1] == "installed":
    from simulations import threefry
    threefry.install()

@jax.jit
def draws(key):
    k = jax.random.split(key, 6)
    return {"bits32": jax.random.bits(k[0], (7, 5), jnp.uint32), "bits64": jax.random.bits(k[1], (33,), jnp.uint64),
            "normal": jax.random.normal(k[2], (4, 3)), "uniform32": jax.random.uniform(k[3], (5,), jnp.float32),
            "categorical": jax.random.categorical(k[4], jnp.arange(4.0), shape=(50,)),
            "bernoulli": jax.random.bernoulli(k[5], 0.3, (40,)),
            "fold_in": jax.random.key_data(jax.random.fold_in(key, 7)), "permutation": jax.random.permutation(k[1], 20)}

out = {name: np.asarray(value) for name, value in draws(jax.random.PRNGKey(42)).items()}
out["eager_normal"] = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (5,)))
print(json.dumps({name: [value.dtype.str, value.view(np.uint8).tobytes().hex()] for name, value in out.items()}))
"""


@pytest.mark.parametrize(("key", "counter", "expected"), KNOWN_ANSWERS)
def test_threefry_matches_the_known_answers(key, counter, expected):
    words = [jnp.asarray(np.uint32(value)) for value in (*key, *counter)]
    assert [int(word) for word in threefry.threefry2x32(*words)] == list(expected)


def test_draws_are_bit_identical_with_and_without_the_lowering():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    outputs = {}
    for mode in ("default", "installed"):
        run = subprocess.run([sys.executable, "-c", DRAWS, mode], capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(outputs["default"]) == set(outputs["installed"])
    for name, value in outputs["default"].items():
        assert outputs["installed"][name] == value, name


def test_installed_lowering_writes_the_rounds_out():
    """JAX's CPU lowering is a loop over blocks of rounds; once installed, a draw lowers with no loop."""
    threefry.install()
    assert threefry.installed()
    text = jax.jit(lambda key: jax.random.bits(key, (8,), jnp.uint32)).lower(jax.random.PRNGKey(0)).as_text()
    assert "stablehlo.while" not in text
    assert text.count("stablehlo.xor") >= 20  # one per round
