"""Random keys and draws made with fewer compiled programs, the same numbers bit for bit.

:func:`normals` makes several normal draws as one vmapped draw per shape. XLA's CPU compiler spends
a few tenths of a second on every ``jax.random.normal`` call in a program (the Threefry hash and
the inverse error function), and more than that in sum when a program holds several: five draws of
7 x 7 took 1.9 s to compile, the same five as one vmapped draw over their keys 0.4 s (2 cores, JAX
0.10.2). A vmapped draw hashes each key's counters exactly as the draw on its own does, so the
numbers are the same bit for bit (tests/test_draws.py).

:func:`stream_key` makes a named stream's key, ``fold_in(PRNGKey(seed), stream)``, as one small
program instead of three (each of which a process lowers and looks up in the compilation cache).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def normals(keys: Sequence[jax.Array], shapes: Sequence[tuple[int, ...]], dtypes=None) -> list[jax.Array]:
    """``[jax.random.normal(key, shape, dtype) for key, shape, dtype in zip(keys, shapes, dtypes)]``,
    drawn with one vmapped call per distinct (shape, dtype).

    Args:
        keys: one PRNG key per draw.
        shapes: the shape of each draw (as many as keys).
        dtypes: the float dtype of each draw (as many as keys), or None for JAX's default float.

    Returns:
        The draws, in the order of ``keys``.
    """
    dtypes = [None] * len(keys) if dtypes is None else list(dtypes)
    if not len(keys) == len(shapes) == len(dtypes):
        raise ValueError(f"keys, shapes and dtypes must have the same length, got {len(keys)}, {len(shapes)} "
                         f"and {len(dtypes)}")
    kinds = [(tuple(shape), None if dtype is None else jnp.dtype(dtype)) for shape, dtype in zip(shapes, dtypes)]
    draws: list[jax.Array | None] = [None] * len(keys)
    for kind in dict.fromkeys(kinds):  # distinct kinds, first-seen order
        indices = [index for index, other in enumerate(kinds) if other == kind]
        batch = jax.vmap(lambda key, kind=kind: jax.random.normal(key, *kind))(
            jnp.stack([keys[index] for index in indices]))
        for position, index in enumerate(indices):
            draws[index] = batch[position]
    return draws


@jax.jit
def _stream_key(seed, stream):
    return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


def stream_key(seed: int, stream: int) -> jax.Array:
    """The key of named stream ``stream`` under the root key of ``seed``:
    ``jax.random.fold_in(jax.random.PRNGKey(seed), stream)``, bit for bit, as one compiled program
    (made operation by operation it is three, each lowered and looked up in every process)."""
    return _stream_key(seed, stream)
