"""A CPU lowering of JAX's Threefry-2x32 hash that XLA compiles several times faster, same bits.

Every ``jax.random`` draw hashes its counters with Threefry-2x32 (Salmon et al. 2011, 20 rounds).
On the CPU, JAX lowers the hash as a 5-iteration loop of four rounds; XLA's CPU compiler spends
about 0.7 s on each draw written that way (0.76 s for one ``jax.random.bits`` call, 3.0 s for four
in one program, on 2 cores of an AMD EPYC), so a program that samples data, initial weights and
probe sets spends most of its compile time hashing. Written out round by round, the same hash
compiles in 0.15 s (0.42 s for four) and runs no slower. A normal draw, which also compiles the
inverse error function, goes from 1.06 s to 0.61 s (2.74 s to 1.69 s for four).

The hash is integer arithmetic modulo 2^32, so every random number is the same bit for bit
(tests/test_threefry.py checks the Random123 known answers and compares draws of every kind with
a process that uses JAX's own lowering). :func:`install` registers the lowering for the CPU
platform of this process; entry points call it through
:func:`simulations.runtime.configure_entry_point`, and a library user may call it once at the top
of a script. Other platforms keep JAX's lowering.
"""

from __future__ import annotations

import threading

import numpy as np
from jax import lax
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

#: Rotation constants of the even (0, 2, 4) and odd (1, 3) blocks of four rounds.
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
#: Threefry's key-schedule parity constant.
PARITY = 0x1BD11BDA

_lock = threading.Lock()
_installed = False


def _rotate_left(x, distance: int):
    return lax.shift_left(x, np.uint32(distance)) | lax.shift_right_logical(x, np.uint32(32 - distance))


def threefry2x32(key1, key2, x1, x2):
    """Threefry-2x32, 20 rounds, written out (uint32 arrays; keys broadcast against the counters)."""
    schedule = (key1, key2, key1 ^ key2 ^ np.uint32(PARITY))
    x1, x2 = x1 + schedule[0], x2 + schedule[1]
    for block in range(5):
        for rotation in ROTATIONS[block % 2]:
            x1 = x1 + x2
            x2 = _rotate_left(x2, rotation) ^ x1
        x1 = x1 + schedule[(block + 1) % 3]
        x2 = x2 + schedule[(block + 2) % 3] + np.uint32(block + 1)
    return x1, x2


def install() -> None:
    """Lower Threefry-2x32 on the CPU with :func:`threefry2x32` from now on in this process (idempotent)."""
    global _installed
    with _lock:
        if not _installed:
            mlir.register_lowering(threefry2x32_p, mlir.lower_fun(threefry2x32, multiple_results=True),
                                   platform="cpu")
            _installed = True


def installed() -> bool:
    """Whether :func:`install` ran in this process (part of every stored program's key)."""
    return _installed
