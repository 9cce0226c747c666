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


def layer_covariance_eigenvalues(params: LinearParams, second_moment) -> list[np.ndarray]:
    """Eigenvalues of each layer's representation covariance P_l B P_l^T (descending)."""
    B = jnp.asarray(second_moment)
    B = jnp.diag(B) if B.ndim == 1 else B
    return [np.linalg.eigvalsh(np.asarray(P @ B @ P.T))[::-1] for P in layer_maps(params)]


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
