"""Validation and normalisation of the two moment matrices every closed form starts from.

A = sym E[x x+^T] (positive-pair covariance, `pos_cov`) and B = E[x x^T] (second moment of one
view, `second_moment`). Both may be given as length-d vectors (the diagonal, feature-aligned
case: a_i, b_i) or as d x d matrices (the general case).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from theory.checks import as_finite_array

# Relative slack for the PSD / |a| <= b checks: rounding in user-given matrices.
_PSD_SLACK = 1e-10


class Moments(NamedTuple):
    """Validated moments: full d x d matrices plus whether both are diagonal."""

    pos_cov: np.ndarray  # (d, d) A
    second_moment: np.ndarray  # (d, d) B
    diagonal: bool


def validate_moments(pos_cov, second_moment) -> Moments:
    """Check (A, B) and return them as d x d float64 matrices.

    Requirements: same size; B symmetric positive definite; A symmetric; the joint second moment
    of a pair [[B, A], [A, B]] positive semidefinite, i.e. B - A and B + A PSD (diagonal case:
    |a_i| <= b_i). Raises ValueError naming the offending argument.
    """
    a = as_finite_array("pos_cov", pos_cov)
    b = as_finite_array("second_moment", second_moment)
    if a.ndim not in (1, 2):
        raise ValueError(f"pos_cov must be a vector or a square matrix, got shape {a.shape}")
    if b.ndim not in (1, 2):
        raise ValueError(f"second_moment must be a vector or a square matrix, got shape {b.shape}")
    if a.ndim == 2 and a.shape[0] != a.shape[1]:
        raise ValueError(f"pos_cov must be square, got shape {a.shape}")
    if b.ndim == 2 and b.shape[0] != b.shape[1]:
        raise ValueError(f"second_moment must be square, got shape {b.shape}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"pos_cov and second_moment must have the same length, got {a.shape[0]} and {b.shape[0]}"
        )
    if b.ndim == 1 and np.any(b <= 0):
        raise ValueError(f"second_moment must be positive, got {b.tolist()}")
    A = np.diag(a) if a.ndim == 1 else a
    B = np.diag(b) if b.ndim == 1 else b
    if not np.allclose(A, A.T, rtol=0, atol=_PSD_SLACK * max(1.0, np.abs(A).max())):
        raise ValueError("pos_cov must be symmetric")
    if not np.allclose(B, B.T, rtol=0, atol=_PSD_SLACK * max(1.0, np.abs(B).max())):
        raise ValueError("second_moment must be symmetric")
    A = (A + A.T) / 2
    B = (B + B.T) / 2
    scale = max(np.abs(B).max(), 1e-300)
    if np.linalg.eigvalsh(B).min() <= _PSD_SLACK * scale:
        raise ValueError("second_moment must be positive definite (non-PSD or singular B)")
    if a.ndim == 1 and b.ndim == 1:
        bad = np.abs(a) > b * (1 + _PSD_SLACK)
        if np.any(bad):
            raise ValueError(
                f"pos_cov must satisfy |a_i| <= b_i (a view cannot correlate with its positive "
                f"more than with itself); violated at indices {np.flatnonzero(bad).tolist()}"
            )
    elif min(np.linalg.eigvalsh(B - A).min(), np.linalg.eigvalsh(B + A).min()) < -_PSD_SLACK * scale:
        raise ValueError(
            "pos_cov is incompatible with second_moment: B - A and B + A must be positive "
            "semidefinite for a pair distribution to exist"
        )
    diagonal = bool(np.all(A == np.diag(np.diag(A))) and np.all(B == np.diag(np.diag(B))))
    return Moments(A, B, diagonal)
