"""Closed-form optimum of the spectral contrastive loss for deep linear networks.

Population loss of the end-to-end map W = P_L = W_L ... W_1 (k x d):

    L(W) = -2 tr(W A W^T) + tr((W B W^T)^2),

with A = `pos_cov` (positive-pair covariance) and B = `second_moment`. With M = W B^(1/2) and
K = M^T M (PSD, rank <= p, the narrowest layer width) the loss is ||K - C||_F^2 - ||C||_F^2 for
C = B^(-1/2) A B^(-1/2), so the optimum is the best rank-p PSD approximation of C (Eckart-Young):

    K* = [C]_(top p, positive part),    G = W^T W = B^(-1/2) K* B^(-1/2),
    L* = -sum of the squares of the kept eigenvalues of C.

Balanced gradient flow keeps W_(l+1)^T W_(l+1) = W_l W_l^T, so the layer-l map P_l = W_l ... W_1
satisfies P_l^T P_l = G^(l/L) (matrix power). The weight of input direction e_i at layer l is
||P_l e_i|| = sqrt(e_i^T G^(l/L) e_i); the representation std along it is that weight times
sqrt(B_ii). In the diagonal case (a_i, b_i) feature i is learned iff r_i = a_i / b_i > 0 and r_i
is among the p largest ratios, and then its layer-l weight is (a_i / b_i^2)^(l / 2L).

All functions are pure NumPy in float64. `pos_cov` / `second_moment` may be length-d vectors
(diagonal case) or d x d matrices; see `theory.moments.validate_moments`. `width` is the
narrowest layer width p; None (or any p >= d) means unconstrained.
"""

from __future__ import annotations

import numpy as np

from theory.checks import as_finite_array, check_int
from theory.common import diagonal_moments, top_positive
from theory.moments import Moments, validate_moments

__all__ = [
    "optimal_gram",
    "learned_features",
    "end_to_end_weights",
    "layer_weights",
    "layer_grams",
    "representation_stds",
    "optimal_loss",
    "effective_rank",
    "entropy_effective_rank",
    "spectral_loss",
]

# Eigenvalues of a measured covariance may dip below zero by rounding; beyond this fraction of the
# largest eigenvalue the input is rejected as not PSD.
_NEGATIVE_EIGENVALUE_SLACK = 1e-8


def _check_width(width) -> int | None:
    if width is None:
        return None
    return check_int("width", width, minimum=1)


def _kept_spectrum(moments: Moments, width: int | None):
    """Eigen-decomposition of C = B^(-1/2) A B^(-1/2) restricted to the kept eigenvalues.

    Returns (kept eigenvalues (k,), their eigenvectors (d, k), B^(-1/2) (d, d)).
    """
    eig_b, vec_b = np.linalg.eigh(moments.second_moment)
    b_inv_sqrt = (vec_b / np.sqrt(eig_b)) @ vec_b.T
    b_inv_sqrt = (b_inv_sqrt + b_inv_sqrt.T) / 2
    c = b_inv_sqrt @ moments.pos_cov @ b_inv_sqrt
    eigenvalues, vectors = np.linalg.eigh((c + c.T) / 2)
    # eigh sorts ascending; reversing makes the stable top-p choice take the last columns of
    # eigh's order among tied eigenvalues.
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
    keep = top_positive(eigenvalues, width)
    return eigenvalues[keep], vectors[:, keep], b_inv_sqrt


def _optimal_factor(moments: Moments, width: int | None) -> np.ndarray:
    """X (d, k) with G = X X^T and full column rank k = number of kept eigenvalues.

    Working with the factor keeps G's zero eigenvalues exactly zero: an eigendecomposition of G
    itself returns them as +-1e-17, which fractional powers G^(l/L) would inflate to ~1e-6.
    """
    if moments.diagonal:
        a, b = np.diag(moments.pos_cov), np.diag(moments.second_moment)
        keep = top_positive(a / b, width)
        return np.diag(np.sqrt(np.where(keep, a, 0.0)) / b)[:, keep]
    kept, vectors, b_inv_sqrt = _kept_spectrum(moments, width)
    return (b_inv_sqrt @ vectors) * np.sqrt(kept)


def _gram_power_basis(moments: Moments, width: int | None):
    """(P (d, k), s (k,)) with G = P diag(s^2) P^T, P orthonormal: G^q = P diag(s^(2q)) P^T."""
    factor = _optimal_factor(moments, width)
    basis, singular_values, _ = np.linalg.svd(factor, full_matrices=False)
    return basis, singular_values


def optimal_gram(pos_cov, second_moment, width=None) -> np.ndarray:
    """End-to-end Gram matrix G = W^T W at the global minimum of the spectral loss.

    G = B^(-1/2) [C]_(top p, positive part) B^(-1/2),  C = B^(-1/2) A B^(-1/2)  (symmetric roots).

    Ties: when the p-th and (p+1)-th largest eigenvalues of C are equal (and positive) the optimum
    is not unique (any p-dimensional subspace of the tied eigenspace is optimal). Diagonal inputs
    then keep the lower-index features; general inputs keep the eigenvectors that come last in
    `numpy.linalg.eigh`'s ascending order, which is an arbitrary but deterministic choice.

    Args:
      pos_cov: A, (d,) or (d, d).
      second_moment: B, (d,) or (d, d), positive definite.
      width: narrowest layer width p >= 1, or None for unconstrained.

    Returns:
      (d, d) symmetric PSD matrix of rank <= p.
    """
    return _gram(validate_moments(pos_cov, second_moment), _check_width(width))


def _gram(moments: Moments, width: int | None) -> np.ndarray:
    factor = _optimal_factor(moments, width)
    gram = factor @ factor.T
    return (gram + gram.T) / 2


def learned_features(pos_cov, second_moment, width=None) -> np.ndarray:
    """Which features the optimum learns (diagonal case only).

    Feature i is learned iff r_i = a_i / b_i > 0 and r_i is among the p largest ratios (ties at
    the p-th ratio broken toward the lower index).

    Args:
      pos_cov: a, (d,) or a diagonal (d, d) matrix.
      second_moment: b, (d,) or a diagonal (d, d) matrix.
      width: narrowest layer width p >= 1, or None.

    Returns:
      (d,) bool.
    """
    a, b = diagonal_moments(pos_cov, second_moment, "learned_features")
    return top_positive(a / b, _check_width(width))


def end_to_end_weights(pos_cov, second_moment, width=None) -> np.ndarray:
    """Weight of each input direction in the optimal end-to-end map: sqrt(diag(G)).

    Diagonal case: sqrt(a_i) / b_i for learned features, 0 otherwise.

    Args:
      pos_cov: A, (d,) or (d, d).
      second_moment: B, (d,) or (d, d).
      width: narrowest layer width p >= 1, or None.

    Returns:
      (d,) nonnegative.
    """
    gram = _gram(validate_moments(pos_cov, second_moment), _check_width(width))
    return np.sqrt(np.clip(np.diag(gram), 0.0, None))


def layer_weights(pos_cov, second_moment, depth, width=None) -> np.ndarray:
    """Weight of each input direction at every layer of the balanced optimum.

    Row l-1 is sqrt(diag(G^(l/L))) for l = 1..L, since P_l^T P_l = G^(l/L).
    Diagonal case: (a_i / b_i^2)^(l / 2L) for learned features, 0 otherwise.

    Args:
      pos_cov: A, (d,) or (d, d).
      second_moment: B, (d,) or (d, d).
      depth: number of layers L >= 1.
      width: narrowest layer width p >= 1, or None.

    Returns:
      (depth, d) nonnegative; the last row equals `end_to_end_weights`.
    """
    depth = check_int("depth", depth, minimum=1)
    moments = validate_moments(pos_cov, second_moment)
    return _layer_weights(moments, depth, _check_width(width))


def _layer_weights(moments: Moments, depth: int, width: int | None) -> np.ndarray:
    exponents = np.arange(1, depth + 1) / depth
    if moments.diagonal:
        weights = np.sqrt(np.diag(_gram(moments, width)))
        return weights[None, :] ** exponents[:, None]
    basis, singular_values = _gram_power_basis(moments, width)
    # diag(P diag(s^(2q)) P^T)_i = sum_k P_ik^2 s_k^(2q)
    powers = singular_values[None, :] ** (2 * exponents[:, None])  # (depth, k)
    return np.sqrt(powers @ (basis**2).T)


def layer_grams(pos_cov, second_moment, depth, width=None) -> np.ndarray:
    """Gram matrix P_l^T P_l = G^(l/L) of the map up to every layer of the balanced optimum.

    G^q = P diag(s^(2q)) P^T from the thin SVD G = P diag(s^2) P^T of the optimal factor, so the
    zero eigenvalues of G stay exactly zero in every power.

    Args:
      pos_cov: A, (d,) or (d, d).
      second_moment: B, (d,) or (d, d).
      depth: number of layers L >= 1.
      width: narrowest layer width p >= 1, or None.

    Returns:
      (depth, d, d) symmetric PSD, layer 1 first; the last equals `optimal_gram` up to rounding.
    """
    depth = check_int("depth", depth, minimum=1)
    moments = validate_moments(pos_cov, second_moment)
    basis, singular_values = _gram_power_basis(moments, _check_width(width))
    return np.stack([(basis * singular_values ** (2 * layer / depth)) @ basis.T for layer in range(1, depth + 1)])


def representation_stds(pos_cov, second_moment, depth, width=None) -> np.ndarray:
    """Std of the layer-l representation along each input direction: weight * sqrt(B_ii).

    Diagonal case: (a_i / b_i^2)^(l / 2L) sqrt(b_i); two layers: pre a_i^(1/4), post sqrt(r_i).

    Args:
      pos_cov: A, (d,) or (d, d).
      second_moment: B, (d,) or (d, d).
      depth: number of layers L >= 1.
      width: narrowest layer width p >= 1, or None.

    Returns:
      (depth, d) nonnegative.
    """
    moments = validate_moments(pos_cov, second_moment)
    weights = _layer_weights(moments, check_int("depth", depth, minimum=1), _check_width(width))
    return weights * np.sqrt(np.diag(moments.second_moment))[None, :]


def optimal_loss(pos_cov, second_moment, width=None) -> float:
    """Minimum of the population spectral loss: L* = -sum_(kept) lambda_k(C)^2.

    Follows from L(W) = ||K - C||_F^2 - ||C||_F^2 with K = B^(1/2) W^T W B^(1/2) and K* the kept
    part of C. Diagonal case: -sum over learned features of r_i^2.

    Args:
      pos_cov: A, (d,) or (d, d).
      second_moment: B, (d,) or (d, d).
      width: narrowest layer width p >= 1, or None.

    Returns:
      float <= 0.
    """
    moments = validate_moments(pos_cov, second_moment)
    width = _check_width(width)
    if moments.diagonal:
        r = np.diag(moments.pos_cov) / np.diag(moments.second_moment)
        return float(-np.sum(r[top_positive(r, width)] ** 2))
    kept, _, _ = _kept_spectrum(moments, width)
    return float(-np.sum(kept**2))


def entropy_effective_rank(eigenvalues) -> np.ndarray | float:
    """Entropy effective rank exp(H(p)) of a PSD spectrum (Roy & Vetterli, 2007).

    p_k = lambda_k / sum_j lambda_j over the nonzero eigenvalues, H(p) = -sum_k p_k ln p_k.
    Reduces over the last axis, so a stack of spectra (e.g. one per seed or layer) works.
    An all-zero spectrum has effective rank 0 by convention. Rounding negatives down to
    -1e-8 x the largest eigenvalue are treated as zeros; larger negatives raise.

    Args:
      eigenvalues: (..., k) eigenvalues of a covariance matrix.

    Returns:
      (...) effective rank in [1, k] (0 for a zero spectrum); a float for a single spectrum.
    """
    lam = as_finite_array("eigenvalues", eigenvalues)
    if lam.ndim == 0:
        raise ValueError(f"eigenvalues must have at least one dimension, got {eigenvalues!r}")
    scale = np.max(np.abs(lam), axis=-1, keepdims=True)
    if np.any(lam < -_NEGATIVE_EIGENVALUE_SLACK * scale):
        raise ValueError(
            f"eigenvalues must be nonnegative (a PSD spectrum), got minimum {lam.min()!r}"
        )
    lam = np.clip(lam, 0.0, None)
    total = lam.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(total > 0, lam / np.where(total > 0, total, 1.0), 0.0)
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    rank = np.where(total[..., 0] > 0, np.exp(terms.sum(axis=-1)), 0.0)
    return float(rank) if rank.ndim == 0 else rank


def effective_rank(pos_cov, second_moment, depth, width=None) -> np.ndarray:
    """Entropy effective rank of the layer-l representation covariance at the optimum.

    Cov(P_l x) = P_l B P_l^T has the same nonzero eigenvalues as B^(1/2) G^(l/L) B^(1/2). Zero
    when no feature is learned.

    Args:
      pos_cov: A, (d,) or (d, d).
      second_moment: B, (d,) or (d, d).
      depth: number of layers L >= 1.
      width: narrowest layer width p >= 1, or None.

    Returns:
      (depth,) effective ranks, layer 1 first (`entropy_effective_rank` of each spectrum).
    """
    depth = check_int("depth", depth, minimum=1)
    moments = validate_moments(pos_cov, second_moment)
    basis, singular_values = _gram_power_basis(moments, _check_width(width))
    if singular_values.size == 0:
        return np.zeros(depth)
    projected = basis.T @ moments.second_moment @ basis  # (k, k)
    spectra = []
    for layer in range(1, depth + 1):
        # Nonzero spectrum of B^(1/2) G^q B^(1/2) = that of s^q P^T B P s^q (k x k).
        root = singular_values ** (layer / depth)
        cov = root[:, None] * projected * root[None, :]
        spectra.append(np.linalg.eigvalsh((cov + cov.T) / 2))
    return np.asarray(entropy_effective_rank(np.stack(spectra)))


def spectral_loss(end_to_end, pos_cov, second_moment) -> float:
    """Population spectral contrastive loss of an end-to-end linear map.

    L(W) = -2 tr(W A W^T) + tr((W B W^T)^2).

    Args:
      end_to_end: W, (k, d) for any output dimension k.
      pos_cov: A, (d,) or (d, d).
      second_moment: B, (d,) or (d, d).

    Returns:
      float.
    """
    moments = validate_moments(pos_cov, second_moment)
    w = as_finite_array("end_to_end", end_to_end, ndim=2)
    d = moments.pos_cov.shape[0]
    if w.shape[1] != d:
        raise ValueError(f"end_to_end must have {d} columns (one per input), got shape {w.shape}")
    wbw = w @ moments.second_moment @ w.T
    return float(-2.0 * np.trace(w @ moments.pos_cov @ w.T) + np.sum(wbw * wbw.T))
