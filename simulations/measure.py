"""Measurements on trained linear networks: how every layer weights every input feature.

Each function returns the same shape as its closed-form twin in :mod:`theory.linear`, so a test
or a figure compares them with one call.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from simulations.models.linear import LinearParams, layer_maps


def feature_weights(params: LinearParams) -> jnp.ndarray:
    """Per-feature weight at every layer: ||P_l e_i||, shape (L, d)."""
    return jnp.stack([jnp.linalg.norm(P, axis=0) for P in layer_maps(params)])


def representation_stds(params: LinearParams, second_moment) -> jnp.ndarray:
    """Std of the representation component carried by each feature: ||P_l e_i|| sqrt(B_ii), (L, d)."""
    B = jnp.asarray(second_moment)
    diagonal = jnp.diag(B) if B.ndim == 2 else B
    return feature_weights(params) * jnp.sqrt(diagonal)[None, :]


def feature_weights_batch(params: LinearParams) -> np.ndarray:
    """:func:`feature_weights` of every point of a batch (a leading point axis on every layer),
    shape (N, L, d), computed in NumPy on the host, point by point.

    A point's numbers do not depend on the batch it came in (a compiled batch program's reductions
    can: XLA vectorizes them by batch size), and no program is compiled. They may differ from
    :func:`feature_weights` in the last bit (another summation order).
    """
    return np.stack([np.stack([np.linalg.norm(P, axis=0) for P in _host_layer_maps(layers)])
                     for layers in _host_points(params)])


def trajectory_feature_weights(trajectory: LinearParams) -> np.ndarray:
    """:func:`feature_weights_batch` along recorded trajectories (leading point and time axes on
    every layer), shape (N, T, L, d)."""
    layers = [np.asarray(W) for W in trajectory]
    points, steps = layers[0].shape[:2]
    weights = feature_weights_batch(tuple(W.reshape((points * steps,) + W.shape[2:]) for W in layers))
    return weights.reshape((points, steps) + weights.shape[1:])


def _host_points(params: LinearParams) -> list[list[np.ndarray]]:
    """Each point's layers of a batched network, as NumPy arrays."""
    layers = [np.asarray(W) for W in params]
    return [[W[index] for W in layers] for index in range(layers[0].shape[0])]


def _host_layer_maps(layers: list[np.ndarray]) -> list[np.ndarray]:
    """The maps P_l = W_l ... W_1 of one network (NumPy)."""
    maps, product = [], None
    for weight in layers:
        product = weight if product is None else weight @ product
        maps.append(product)
    return maps


def layer_covariance_eigenvalues(params: LinearParams, second_moment) -> list[np.ndarray]:
    """Eigenvalues of each layer's representation covariance P_l B P_l^T (descending; NumPy)."""
    B = np.asarray(second_moment)
    B = np.diag(B) if B.ndim == 1 else B
    return [np.linalg.eigvalsh(P @ B @ P.T)[::-1] for P in _host_layer_maps([np.asarray(W) for W in params])]


def effective_rank(params: LinearParams, second_moment, *, relative_floor: float = 1e-6) -> np.ndarray:
    """Entropy effective rank (Roy & Vetterli 2007) of each layer's covariance, shape (L,).

    exp(-sum_k p_k log p_k) with p_k = lambda_k / sum lambda. Eigenvalues below
    ``relative_floor`` x the largest are treated as zero: unlearned directions decay only
    algebraically under gradient flow from small init and would otherwise count as a sliver.
    """
    from theory.linear import entropy_effective_rank

    ranks = []
    for eigenvalues in layer_covariance_eigenvalues(params, second_moment):
        kept = np.where(eigenvalues > relative_floor * eigenvalues.max(), eigenvalues, 0.0)
        ranks.append(entropy_effective_rank(kept))
    return np.asarray(ranks)


def effective_rank_batch(params: LinearParams, second_moments, *, relative_floor: float = 1e-6) -> np.ndarray:
    """:func:`effective_rank` of every point of a batch (a leading point axis on every layer and on
    ``second_moments``), shape (N, L)."""
    moments = np.asarray(second_moments)
    return np.stack([effective_rank(layers, moments[index], relative_floor=relative_floor)
                     for index, layers in enumerate(_host_points(params))])
