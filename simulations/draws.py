"""Random keys and draws made with fewer compiled programs, the same numbers bit for bit.

:func:`normals` makes several normal draws as one vmapped draw per shape. XLA's CPU compiler spends
a few tenths of a second on every ``jax.random.normal`` call in a program (the Threefry hash and
the inverse error function), and more than that in sum when a program holds several: five draws of
7 x 7 took 1.9 s to compile, the same five as one vmapped draw over their keys 0.4 s (2 cores, JAX
0.10.2). A vmapped draw hashes each key's counters exactly as the draw on its own does, so the
numbers are the same bit for bit (tests/test_draws.py).

:func:`split` and :func:`fold_in` are ``jax.random.split`` and ``jax.random.fold_in`` whose keys,
inside a compiled program, stay out of the fusions of the draws that use them (an optimization
barrier; outside one they are JAX's own). Fused, XLA repeats a key's hash in its consumers and
spends the more compiling: the supervised experiment's two quick programs took 3.6 s and 5.1 s to
compile with JAX's own functions and 2.0 s and 3.1-3.3 s with these, for the same numbers (keys are
integers, so where they are computed cannot change a bit; tests/test_draws.py).

:func:`stream_key` makes a named stream's key, ``fold_in(PRNGKey(seed), stream)``, as one small
program instead of three (each of which a process lowers and looks up in the compilation cache);
:func:`split_normals` splits a key and draws one normal array per part, also as one program.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from simulations.programs import stored_jit


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
        # The barrier keeps the keys' own computation (e.g. a split) out of the draw's fusion:
        # integers either way, the same numbers, but XLA compiled a split of 3 keys followed by
        # their 3 x 3 draws in 0.83 s with it fused and 0.22 s without.
        stacked = jax.lax.optimization_barrier(jnp.stack([keys[index] for index in indices]))
        batch = jax.vmap(lambda key, kind=kind: jax.random.normal(key, *kind))(stacked)
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


def split_normals(key: jax.Array, shapes: Sequence[tuple[int, ...]]) -> list[jax.Array]:
    """``[jax.random.normal(k, shape) for k, shape in zip(jax.random.split(key, len(shapes)), shapes)]``
    in JAX's default float, bit for bit, as one compiled program (made operation by operation, the
    split and every draw are programs of their own, each lowered and looked up in every process)."""
    return list(_split_normals(key, tuple(tuple(shape) for shape in shapes)))


@functools.partial(stored_jit, static_argnums=1)
def _split_normals(key, shapes):
    return tuple(normals(list(split(key, len(shapes))), shapes))


def split(key: jax.Array, num: int = 2) -> jax.Array:
    """``jax.random.split(key, num)``, kept out of its consumers' fusions inside a compiled program."""
    return _kept_apart(jax.random.split(key, num))


def fold_in(key: jax.Array, data) -> jax.Array:
    """``jax.random.fold_in(key, data)``, kept out of its consumers' fusions inside a compiled program."""
    return _kept_apart(jax.random.fold_in(key, data))


def _kept_apart(keys: jax.Array) -> jax.Array:
    """An optimization barrier on keys being traced (eager keys are already computed: left alone)."""
    return jax.lax.optimization_barrier(keys) if isinstance(keys, jax.core.Tracer) else keys
