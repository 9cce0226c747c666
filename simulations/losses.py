"""Contrastive losses: the exact population spectral loss and sampled estimators.

Spectral contrastive loss (HaoChen et al. 2021):
    L = -2 E[f(x)^T f(x+)] + E[(f(x)^T f(x-))^2],
with x, x+ two views of one sample and x- a view of an independent sample.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simulations.matmul import matmul, sandwich
from simulations.models.linear import LinearParams, end_to_end


def spectral_population_loss_of_map(W: jax.Array, pos_cov: jax.Array,
                                    second_moment: jax.Array) -> jax.Array:
    """Exact population spectral loss of a linear map W (k, d).

    L(W) = -2 tr(W A W^T) + tr((W B W^T)^2); gradient -4 W A + 4 W B W^T W B.
    """
    covariance = sandwich(W, second_moment)
    return -2.0 * jnp.sum(matmul(W, pos_cov) * W) + jnp.sum(covariance * covariance)


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
    its positive is the other view of its sample. This is ``optax.losses.ntxent`` on the 2n views
    labelled by their sample (tested to agree); the default temperature here is 0.5 (optax: 0.07).

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


# ----------------------------------------------------------------------------------------------
# Supervised losses
#
# Supervised losses: supervised contrastive (spectral and SupCon/InfoNCE forms), cross-entropy, squared.
#
# Supervised spectral contrastive loss: positives are two independent samples of the same class,
# negatives two independent samples of the population:
#
#     L = -2 E_c E[f(x)^T f(x+) | x, x+ ~ class c] + E[(f(x)^T f(x-))^2]
#       = -2 sum_c pi_c |mu_c|^2 + tr(M^2),   mu_c = E[f(x) | c],  M = E[f(x) f(x)^T].
#
# For a linear map f(x) = W x it is the spectral loss with A = sum_c pi_c m_c m_c^T (m_c the input
# class means) and B = E[x x^T]: :func:`supervised_spectral_population_loss` (see
# theory.supervised.supervised_moments). Its optimum makes f constant within each class (any
# within-class spread only adds to M), which is class collapse.
#
# Cross-entropy and squared loss act on the head's output z through a linear classifier
# (logits = U z + b); the head output z, not the logits, is "post".


def supervised_spectral_loss(z: jax.Array, labels: jax.Array, class_weights: jax.Array) -> jax.Array:
    """Unbiased minibatch estimator of the supervised spectral contrastive loss.

    Within the batch, positives are all ordered same-class pairs i != j and negatives all ordered
    pairs i != j; each class's terms are averaged over its own pairs and reweighted by the known
    class probabilities pi_c, so the estimator is unbiased whatever the batch's class counts
    (classes with fewer than 2 samples in the batch contribute nothing; negligible at batch >= 64):

        -2 sum_c pi_c (|S_c|^2 - sum_(i in c) |z_i|^2) / (n_c (n_c - 1))
        + sum_(c, c') pi_c pi_c' (tr(G_c G_c') - [c = c'] sum_(i in c) |z_i|^4) / (n_c n_c' - [c = c'] n_c)

    with S_c = sum_(i in c) z_i and G_c = sum_(i in c) z_i z_i^T. Cost O(n k^2 + C^2 k^2).

    Args:
        z: representations, (n, k).
        labels: class of each sample, (n,) int in [0, C).
        class_weights: pi_c, (C,) (C is read from its shape).

    Returns:
        () loss.
    """
    class_weights = jnp.asarray(class_weights)
    onehot = jax.nn.one_hot(labels, class_weights.shape[0], dtype=z.dtype)  # (n, C)
    counts = onehot.sum(axis=0)
    squared_norms = jnp.sum(z * z, axis=1)
    sums = onehot.T @ z  # (C, k)
    same = jnp.sum(sums * sums, axis=1) - onehot.T @ squared_norms
    pairs = counts * (counts - 1.0)
    usable = pairs > 0
    positive = jnp.sum(class_weights * jnp.where(usable, same / jnp.where(usable, pairs, 1.0), 0.0))
    grams = jnp.einsum("nc,nk,nl->ckl", onehot, z, z)  # (C, k, k)
    cross = jnp.einsum("akl,blk->ab", grams, grams)  # tr(G_a G_b)
    cross = cross - jnp.diag(onehot.T @ squared_norms**2)
    pair_counts = counts[:, None] * counts[None, :] - jnp.diag(counts)
    usable_pairs = pair_counts > 0
    negative = jnp.sum(class_weights[:, None] * class_weights[None, :]
                       * jnp.where(usable_pairs, cross / jnp.where(usable_pairs, pair_counts, 1.0), 0.0))
    return -2.0 * positive + negative


def supervised_spectral_population_loss(W: jax.Array, class_pos_cov: jax.Array, second_moment: jax.Array) -> jax.Array:
    """Exact population supervised spectral loss of a linear map W (k, d).

    L(W) = -2 tr(W A W^T) + tr((W B W^T)^2) with A = sum_c pi_c m_c m_c^T (class-mean second
    moment) and B = E[x x^T]; A and B from theory.supervised.supervised_moments.
    """
    return spectral_population_loss_of_map(W, class_pos_cov, second_moment)


def supcon_loss(z: jax.Array, labels: jax.Array, temperature: float | jax.Array = 0.5) -> jax.Array:
    """SupCon loss (Khosla et al. 2020, "L_out"), the InfoNCE form of supervised contrastive learning.

    With u_i = z_i / |z_i| and P(i) the other samples of i's class,
        L = mean_i  -1/|P(i)| sum_(p in P(i)) log( exp(u_i.u_p / tau) / sum_(a != i) exp(u_i.u_a / tau) ).
    Anchors without a positive in the batch are skipped. The log sits outside the average over
    positives ("L_out", which Khosla et al. found better than "L_in", the log of the averaged
    probability), and every other sample, positives included, is in each denominator. With one
    positive per anchor this is NT-Xent (``optax.losses.ntxent``, tested to agree); with several it
    differs on purpose from ``optax.losses.ntxent``, which leaves the other positives out of each
    denominator and averages over positive pairs rather than anchors.

    Args:
        z: (n, k) representations.
        labels: (n,) int classes.
        temperature: tau > 0.
    """
    n = z.shape[0]
    u = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    logits = u @ u.T / temperature
    self_mask = jnp.eye(n, dtype=bool)
    log_probs = jax.nn.log_softmax(jnp.where(self_mask, -jnp.inf, logits), axis=1)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positives.sum(axis=1)
    per_anchor = -jnp.sum(jnp.where(positives, log_probs, 0.0), axis=1) / jnp.maximum(count, 1)
    has_positive = count > 0
    return jnp.sum(jnp.where(has_positive, per_anchor, 0.0)) / jnp.maximum(has_positive.sum(), 1)


def classifier_logits(classifier, z: jax.Array) -> jax.Array:
    """Logits U z + b of a linear classifier ``classifier = (U (C, k), b (C,))`` on z (n, k): (n, C)."""
    weights, bias = classifier
    return z @ weights.T + bias[None, :]


def cross_entropy_loss(classifier, z: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of the classifier's logits on z against integer labels.

    The same quantity as ``mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))``
    (tested to agree).
    """
    logits = classifier_logits(classifier, z)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], axis=1))


def squared_loss(classifier, z: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean (1/2) |U z + b - onehot(y)|^2 of the classifier's outputs against one-hot labels."""
    logits = classifier_logits(classifier, z)
    target = jax.nn.one_hot(labels, logits.shape[1], dtype=logits.dtype)
    return 0.5 * jnp.mean(jnp.sum((logits - target) ** 2, axis=1))


def squared_population_loss(end_to_end: jax.Array, class_cross: jax.Array, second_moment: jax.Array) -> jax.Array:
    """Exact E[(1/2) |Theta x - onehot(y)|^2] - 1/2 of a linear map Theta (C, d), no bias.

    = (1/2) tr(Theta B Theta^T) - tr(Theta M) with M = E[x onehot(y)^T] = [pi_c m_c]_c (d, C)
    (theory.supervised.class_cross_moment); the constant E|onehot|^2 / 2 = 1/2 is dropped.
    """
    return 0.5 * jnp.sum(matmul(end_to_end, second_moment) * end_to_end) - jnp.sum(end_to_end * class_cross.T)
