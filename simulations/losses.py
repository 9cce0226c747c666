"""Contrastive losses: the exact population spectral loss and sampled estimators.

Spectral contrastive loss (HaoChen et al. 2021):
    L = -2 E[f(x)^T f(x+)] + E[(f(x)^T f(x-))^2],
with x, x+ two views of one sample and x- a view of an independent sample.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simulations.models import LinearParams, end_to_end


def spectral_population_loss_of_map(W: jax.Array, pos_cov: jax.Array,
                                    second_moment: jax.Array) -> jax.Array:
    """Exact population spectral loss of a linear map W (k, d).

    L(W) = -2 tr(W A W^T) + tr((W B W^T)^2); gradient -4 W A + 4 W B W^T W B.
    """
    covariance = W @ second_moment @ W.T
    return -2.0 * jnp.trace(W @ pos_cov @ W.T) + jnp.sum(covariance * covariance)


def spectral_population_loss(params: LinearParams, pos_cov: jax.Array,
                             second_moment: jax.Array) -> jax.Array:
    """Exact population spectral loss of a deep linear network (A, B as d x d arrays)."""
    return spectral_population_loss_of_map(end_to_end(params), pos_cov, second_moment)


def spectral_loss(z: jax.Array, z_pos: jax.Array) -> jax.Array:
    """Unbiased minibatch estimator of the spectral contrastive loss.

    Args:
        z: representations of the first views, shape (n, k), n >= 2.
        z_pos: representations of the positive views, shape (n, k).

    Returns:
        -2/n sum_i z_i.z+_i + 1/(n(n-1)) sum_{i != j} (z_i.z+_j)^2.
        The negative term excludes the diagonal (pairs of one sample are not independent) and
        costs O(n k^2): sum_{i,j} (z_i.z+_j)^2 = tr((Z^T Z)(Z+^T Z+)).
    """
    n = z.shape[0]
    if n < 2:
        raise ValueError(f"z must hold at least 2 samples for the negative term, got {n}")
    positive = jnp.sum(z * z_pos, axis=1)
    all_pairs = jnp.sum((z.T @ z) * (z_pos.T @ z_pos))
    negatives = (all_pairs - jnp.sum(positive**2)) / (n * (n - 1))
    return -2.0 * jnp.mean(positive) + negatives


def info_nce_loss(z: jax.Array, z_pos: jax.Array, temperature: float = 0.5) -> jax.Array:
    """NT-Xent / InfoNCE loss (SimCLR) on a batch of n positive pairs.

    Each of the 2n views is classified against the other 2n - 1 by cosine similarity / temperature;
    its positive is the other view of its sample.

    Args:
        z, z_pos: shape (n, k).
        temperature: softmax temperature tau > 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    views = jnp.concatenate([z, z_pos], axis=0)
    views = views / jnp.maximum(jnp.linalg.norm(views, axis=1, keepdims=True), 1e-12)
    logits = views @ views.T / temperature
    two_n = views.shape[0]
    logits = jnp.where(jnp.eye(two_n, dtype=bool), -jnp.inf, logits)
    n = z.shape[0]
    partner = jnp.concatenate([jnp.arange(n, two_n), jnp.arange(0, n)])
    log_probs = jax.nn.log_softmax(logits, axis=1)
    return -jnp.mean(log_probs[jnp.arange(two_n), partner])


def weight_decay_penalty(params, weight_decay: float | jax.Array) -> jax.Array:
    """(weight_decay / 2) * sum of squared Frobenius norms of every parameter array."""
    squares = sum(jnp.sum(leaf * leaf) for leaf in jax.tree_util.tree_leaves(params))
    return 0.5 * weight_decay * squares
