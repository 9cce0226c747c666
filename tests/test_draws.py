"""simulations.draws: several normal draws as one vmapped draw per shape, the same numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simulations.draws import fold_in, normals, split, stream_key


@pytest.mark.parametrize("x64", [False, True])
def test_normals_equal_one_draw_per_key_bit_for_bit(x64):
    shapes = [(3, 3), (4, 2), (3, 3), (5,), (4, 2), (3, 3)]
    with jax.enable_x64(x64):
        keys = list(jax.random.split(jax.random.PRNGKey(11), len(shapes)))
        expected = jax.jit(lambda keys: [jax.random.normal(key, shape) for key, shape in zip(keys, shapes)])(keys)
        drawn = jax.jit(lambda keys: normals(keys, shapes))(keys)
    for want, got in zip(expected, drawn):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_normals_keep_each_draws_dtype():
    keys = list(jax.random.split(jax.random.PRNGKey(0), 3))
    with jax.enable_x64(True):
        drawn = normals(keys, [(2,), (2,), (2,)], [jnp.float32, jnp.float64, jnp.float32])
        assert [d.dtype for d in drawn] == [jnp.float32, jnp.float64, jnp.float32]
        np.testing.assert_array_equal(np.asarray(drawn[1]), np.asarray(jax.random.normal(keys[1], (2,), jnp.float64)))


def test_normals_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="keys, shapes and dtypes"):
        normals([jax.random.PRNGKey(0)], [(2,), (3,)])


@pytest.mark.parametrize("x64", [False, True])
def test_stream_key_equals_fold_in_of_the_root_key_bit_for_bit(x64):
    seeds = [0, 1, 12345, 2**31 - 1, -3] + ([2**31 + 5, 2**40 + 3] if x64 else [])
    with jax.enable_x64(x64):
        for seed in seeds:
            for stream in (0, 1, 7):
                np.testing.assert_array_equal(np.asarray(stream_key(seed, stream)),
                                              np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed), stream)))


@pytest.mark.parametrize(("ours", "theirs", "argument"), [(split, jax.random.split, 3),
                                                      (fold_in, jax.random.fold_in, 11)])
def test_split_and_fold_in_equal_jax_random_and_keep_keys_apart_in_programs(ours, theirs, argument):
    key = jax.random.PRNGKey(5)
    want = np.asarray(theirs(key, argument))
    np.testing.assert_array_equal(np.asarray(ours(key, argument)), want)  # eagerly
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda k: ours(k, argument))(key)), want)
    batch = jnp.stack([key, jax.random.PRNGKey(6)])
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(lambda k: ours(k, argument)))(batch)),
                                  np.asarray(jax.vmap(lambda k: theirs(k, argument))(batch)))
    # inside a program the keys sit behind an optimization barrier (what makes the draws compile faster)
    assert "optimization_barrier" in str(jax.make_jaxpr(lambda k: ours(k, argument))(key))
    assert "optimization_barrier" not in str(jax.make_jaxpr(lambda k: theirs(k, argument))(key))


@pytest.mark.parametrize("x64", [False, True])
def test_split_normals_equal_a_split_and_one_draw_per_key_bit_for_bit(x64):
    from simulations.draws import split_normals

    shapes = [(3, 2), (4,), (3, 2)]
    with jax.enable_x64(x64):
        key = jax.random.PRNGKey(7)
        expected = [jax.random.normal(k, shape) for k, shape in zip(jax.random.split(key, len(shapes)), shapes)]
        drawn = split_normals(key, shapes)
    for want, got in zip(expected, drawn):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
