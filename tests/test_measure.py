"""simulations.measure: batch measurements point by point, whatever the batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simulations import measure

#: NumPy and XLA sum the products of a layer map in different orders: a few ulp apart.
ROUNDING = 1e-14


def _batch(rng, points, dims, dtype):
    return tuple(rng.normal(size=(points, dims[l + 1], dims[l])).astype(dtype) for l in range(len(dims) - 1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_feature_weights_batch_of_a_point_does_not_depend_on_its_batch(dtype):
    rng = np.random.default_rng(3)
    for dims, points in [((4, 6, 5, 3), 37), ((7, 7), 64), ((3, 8, 8, 8, 2), 5)]:
        params = _batch(rng, points, dims, dtype)
        batch = measure.feature_weights_batch(params)
        assert batch.shape == (points, len(dims) - 1, dims[0]) and batch.dtype == dtype
        for index in range(points):
            alone = measure.feature_weights_batch(tuple(W[index:index + 1] for W in params))[0]
            np.testing.assert_array_equal(batch[index], alone)


def test_feature_weights_batch_agrees_with_the_jax_measurement():
    rng = np.random.default_rng(4)
    params = _batch(rng, 9, (5, 4, 6), np.float64)
    with jax.enable_x64(True):
        expected = np.asarray(jax.vmap(measure.feature_weights)(tuple(jnp.asarray(W) for W in params)))
    np.testing.assert_allclose(measure.feature_weights_batch(params), expected, rtol=ROUNDING, atol=0)


def test_effective_rank_batch_is_the_effective_rank_of_every_point():
    rng = np.random.default_rng(5)
    params = _batch(rng, 6, (4, 3, 4), np.float64)
    moments = rng.uniform(0.5, 2.0, size=(6, 4))
    batch = measure.effective_rank_batch(params, moments)
    assert batch.shape == (6, 2)
    for index in range(6):
        np.testing.assert_array_equal(batch[index],
                                      measure.effective_rank(tuple(W[index] for W in params), moments[index]))
    # a rank-one layer map has effective rank 1
    rank_one = (np.outer(rng.normal(size=3), rng.normal(size=4))[None],)
    np.testing.assert_allclose(measure.effective_rank_batch(rank_one, moments[:1]), [[1.0]], rtol=1e-12)


def test_trajectory_feature_weights_measure_every_recorded_time():
    rng = np.random.default_rng(6)
    trajectory = tuple(rng.normal(size=(3, 5, m, n)) for m, n in [(4, 3), (2, 4)])  # (points, times, m, n)
    weights = measure.trajectory_feature_weights(trajectory)
    assert weights.shape == (3, 5, 2, 3)
    for time in range(5):
        expected = measure.feature_weights_batch(tuple(W[:, time] for W in trajectory))
        np.testing.assert_array_equal(weights[:, time], expected)
