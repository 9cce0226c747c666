"""Closed forms for supervised (contrastive) learning with linear networks: class collapse in every layer.

Data: a mixture of components s with means m_s, probabilities w_s, coarse classes c(s) and noise
covariance Sigma (simulations.data.mixtures). Class probabilities pi_c = sum_(c(s) = c) w_s and
class means m_c = E[x | c].

Supervised spectral contrastive loss (positives: two independent samples of one class). For a
linear map W it is the self-supervised spectral loss with

    A = E[x x+^T] = sum_c pi_c m_c m_c^T,   B = E[x x^T] = sum_s w_s m_s m_s^T + Sigma,

so (theory.linear) its optimum is G = W^T W = B^(-1/2) [C]_(top p, +) B^(-1/2),
C = B^(-1/2) A B^(-1/2). A has rank <= C (number of classes): a linear network learns only the
directions B^(-1) m_c ("class-mean directions"), and with balanced layers (gradient flow from
small or balanced init) the map up to layer l of L has Gram P_l^T P_l = G^(l/L).

Squared loss to one-hot labels through a linear classifier (a depth-L linear net whose last
layer is the classifier): E (1/2)|Theta x - onehot(y)|^2 is minimized by
Theta = M^T B^(-1), M = E[x onehot(y)^T] = [pi_c m_c]_c, again spanned by the class means, and
balanced layers have P_l^T P_l = (Theta^T Theta)^(l/L).

Either way, any input direction u with m_c^T B^(-1) u = 0 for every class (within-class,
subclass-separating directions when B does not mix them with the class means) has P_l u = 0 in
every layer: subclass features are absent from both layers of a linear network, below the head
as well as above it. A ReLU layer is what lets the pre-head representation keep them.
"""

from __future__ import annotations

import numpy as np

from theory import linear as linear_theory
from theory.checks import as_finite_array, check_float, check_int

# Eigenvalues of a PSD Gram below this fraction of its largest are exact zeros (their computed
# values are rounding, +-1e-17, which a fractional power would inflate to ~1e-6).
_RANK_RTOL = 1e-10


def _mixture(means, weights, coarse, num_classes):
    means = as_finite_array("means", means, ndim=2)
    weights = as_finite_array("weights", weights, ndim=1)
    coarse = np.asarray(coarse)
    S = means.shape[0]
    if weights.shape != (S,) or np.any(weights < 0) or not np.isclose(weights.sum(), 1.0, atol=1e-9):
        raise ValueError(f"weights must be {S} probabilities summing to 1, got {weights.tolist()}")
    C = check_int("num_classes", num_classes, minimum=1)
    if coarse.shape != (S,) or not np.issubdtype(coarse.dtype, np.integer) or coarse.min() < 0 or coarse.max() >= C:
        raise ValueError(f"coarse must be {S} integer classes in [0, {C - 1}], got {coarse.tolist()}")
    return means, weights, coarse, C


def class_probabilities(weights, coarse, num_classes) -> np.ndarray:
    """pi_c = sum_(s in c) w_s, shape (C,)."""
    weights = as_finite_array("weights", weights, ndim=1)
    return _class_probabilities(weights, np.asarray(coarse), num_classes)


def _class_probabilities(weights, coarse, num_classes):
    return np.bincount(coarse, weights=weights, minlength=num_classes)


def class_means(means, weights, coarse, num_classes) -> np.ndarray:
    """m_c = E[x | c] = sum_(s in c) w_s m_s / pi_c, shape (C, d) (zero rows for empty classes)."""
    return _class_means(*_mixture(means, weights, coarse, num_classes))


def _class_means(means, weights, coarse, C):
    pi = _class_probabilities(weights, coarse, C)
    sums = np.zeros((C, means.shape[1]))
    np.add.at(sums, coarse, weights[:, None] * means)
    return sums / np.where(pi > 0, pi, 1.0)[:, None]


def _noise_covariance(noise_std, d, augment_std):
    noise_std = as_finite_array("noise_std", noise_std)
    if noise_std.ndim == 0:
        noise_std = np.full(d, float(noise_std))
    if noise_std.shape != (d,) or np.any(noise_std < 0):
        raise ValueError(f"noise_std must be a scalar or {d} values >= 0, got {noise_std.tolist()}")
    augment_std = check_float("augment_std", augment_std, minimum=0.0)
    return np.diag(noise_std**2 + augment_std**2)


def supervised_moments(means, weights, coarse, noise_std, num_classes, *, augment_std=0.0):
    """(A, B) of supervised spectral contrastive learning on a Gaussian mixture.

    A = sum_c pi_c m_c m_c^T (same-class positives are independent given the class; an additive
    zero-mean augmentation leaves A unchanged), B = sum_s w_s m_s m_s^T + diag(noise^2 + aug^2).

    Args:
        means: (S, d) component means.
        weights: (S,) component probabilities.
        coarse: (S,) int classes in [0, num_classes).
        noise_std: scalar or (d,) per-coordinate noise std.
        num_classes: C.
        augment_std: std of the per-view additive Gaussian augmentation.

    Returns:
        (A (d, d), B (d, d)).
    """
    means, weights, coarse, C = _mixture(means, weights, coarse, num_classes)
    pi = _class_probabilities(weights, coarse, C)
    mc = _class_means(means, weights, coarse, C)
    A = (mc * pi[:, None]).T @ mc
    B = (means * weights[:, None]).T @ means + _noise_covariance(noise_std, means.shape[1], augment_std)
    return (A + A.T) / 2, (B + B.T) / 2


def class_cross_moment(means, weights, coarse, num_classes) -> np.ndarray:
    """M = E[x onehot(y)^T] = [pi_c m_c]_c, shape (d, C)."""
    means, weights, coarse, C = _mixture(means, weights, coarse, num_classes)
    return (_class_means(means, weights, coarse, C) * _class_probabilities(weights, coarse, C)[:, None]).T


def gram_power(gram, exponent: float) -> np.ndarray:
    """G^q of a symmetric PSD matrix (eigenvalues below 1e-10 x the largest are exact zeros)."""
    return _gram_power(as_finite_array("gram", gram, ndim=2), exponent)


def _gram_power(gram, exponent):
    values, vectors = np.linalg.eigh((gram + gram.T) / 2)
    top = max(float(values.max()), 0.0)
    values = np.where(values > _RANK_RTOL * top, values, 0.0)
    powered = (vectors * np.where(values > 0, values, 0.0) ** exponent * (values > 0)) @ vectors.T
    return (powered + powered.T) / 2


def _layer_grams(end_to_end_gram, depth):
    depth = check_int("depth", depth, minimum=1)
    return np.stack([_gram_power(end_to_end_gram, l / depth) for l in range(1, depth + 1)])


def contrastive_layer_grams(pos_cov, second_moment, depth: int = 2, width: int | None = None) -> np.ndarray:
    """P_l^T P_l = G^(l/L) (l = 1..L) at the supervised spectral optimum, balanced layers.

    Args:
        pos_cov: A (d, d) (from :func:`supervised_moments`).
        second_moment: B (d, d).
        depth: L (layer L - 1 is "pre", L is "post").
        width: narrowest width p (None: unconstrained).

    Returns:
        (L, d, d).
    """
    return _layer_grams(linear_theory.optimal_gram(pos_cov, second_moment, width), depth)


def squared_loss_end_to_end(class_cross, second_moment) -> np.ndarray:
    """Theta = M^T B^(-1) (C, d), the minimizer of E (1/2)|Theta x - onehot(y)|^2 (no bias)."""
    M = as_finite_array("class_cross", class_cross, ndim=2)
    B = as_finite_array("second_moment", second_moment, ndim=2)
    return np.linalg.solve(B, M).T


def squared_loss_layer_grams(class_cross, second_moment, depth: int = 3) -> np.ndarray:
    """P_l^T P_l = (Theta^T Theta)^(l/L), l = 1..L, for a balanced depth-L linear net with squared loss.

    With L = 3 (encoder, head, classifier), layer 1 is "pre" and layer 2 "post" (the head's output).

    Returns:
        (L, d, d).
    """
    theta = squared_loss_end_to_end(class_cross, second_moment)
    return _layer_grams(theta.T @ theta, depth)


def direction_weights(layer_grams, directions) -> np.ndarray:
    """|P_l u| = sqrt(u^T (P_l^T P_l) u) for each layer and each (unnormalized) direction u.

    Args:
        layer_grams: (L, d, d).
        directions: (n, d) directions (rows; used as given, not normalized).

    Returns:
        (L, n).
    """
    grams = as_finite_array("layer_grams", layer_grams, ndim=3)
    directions = as_finite_array("directions", directions, ndim=2)
    quadratic = np.einsum("nd,lde,ne->ln", directions, grams, directions)
    return np.sqrt(np.clip(quadratic, 0.0, None))


def subclass_offsets(means, weights, coarse, num_classes) -> np.ndarray:
    """m_s - m_(c(s)): how far each component sits from its class mean, (S, d)."""
    means, weights, coarse, C = _mixture(means, weights, coarse, num_classes)
    return means - _class_means(means, weights, coarse, C)[coarse]


def subclass_separation(layer_grams, means, weights, coarse, num_classes) -> np.ndarray:
    """|P_l (m_s - m_c(s))| per layer and component, (L, S): 0 means the subclass is merged.

    Zero in every layer exactly when the offsets satisfy m_c^T B^(-1) (m_s - m_c(s)) = 0 for all
    classes (the learned directions B^(-1) m_c never see them), as in
    simulations.data.mixtures.coarse_to_fine.
    """
    return direction_weights(layer_grams, subclass_offsets(means, weights, coarse, num_classes))


def learned_rank(pos_cov, second_moment, width: int | None = None) -> int:
    """Number of directions the supervised spectral optimum learns: positive eigenvalues of C, <= classes."""
    gram = linear_theory.optimal_gram(pos_cov, second_moment, width)
    values = np.linalg.eigvalsh(gram)
    return int(np.sum(values > _RANK_RTOL * max(values.max(), 0.0)))
