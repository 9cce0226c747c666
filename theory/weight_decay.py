"""Fixed points, thresholds and basins of the linear spectral loss with weight decay.

Aligned, balanced parameters (every layer diagonal in the feature basis, widths >= d): feature i
carries the same per-layer singular value sigma in every layer, end-to-end s = sigma^L, and the
per-feature objective (penalty (weight_decay / 2) sum_l ||W_l||_F^2) is

    l(sigma) = -2 a s^2 + b^2 s^4 + (wd / 2) L sigma^2,   s = sigma^L.

-dl/dsigma / L = sigma [4 v^(L-1) (a - b^2 v^L) - wd] with v = sigma^2, so the fixed points are
sigma = 0 and the roots of

    g(v) = 4 v^(L-1) (a - b^2 v^L) = wd.

L >= 2: g rises from 0 at v = 0 to g_max at v*^L = a (L-1) / (b^2 (2L-1)), g_max =
4 a L v*^(L-1) / (2L-1), then falls. For 0 < wd < g_max there are two roots: the smaller is
unstable, the larger stable, and zero is a local minimum. For wd = 0 (and a > 0) the smaller root
merges with zero, which is then unstable. L = 1: the only root is v = (a - wd/4) / b^2 when
positive, and zero is then unstable.

Zero is the global minimum once the stable root's loss reaches 0. Eliminating wd between
l = 0 and g(v) = wd gives the closed form v_g^L = 2 a (L-1) / (b^2 (2L-1)) (= 2 v*^L), hence

    global threshold = 4 a v_g^(L-1) / (2L-1) = g_max 2^((L-1)/L) / L   (< g_max for L >= 2).

Diagonal (feature-aligned) moments only; layer widths are assumed >= d (no top-p selection).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from theory._checks import check_float, check_int
from theory.linear import _diagonal_moments

__all__ = [
    "FixedPoints",
    "fixed_points",
    "survival_threshold",
    "global_threshold",
    "global_minimum_weights",
    "basin_weights",
]

# Bisection steps on log v: the bracket spans < 2^11 in log, so 100 halvings reach float64 spacing.
_BISECTION_STEPS = 100


class FixedPoints(NamedTuple):
    """Nonzero fixed points of the per-layer singular value, per feature (nan where absent).

    `unstable` is 0 where zero itself is the unstable fixed point (L = 1 with a root, or
    weight_decay = 0 with a > 0).
    """

    unstable: np.ndarray  # (d,)
    stable: np.ndarray  # (d,)


def _validate(pos_cov, second_moment, depth, weight_decay, function):
    a, b = _diagonal_moments(pos_cov, second_moment, function)
    depth = check_int("depth", depth, minimum=1)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    return a, b, depth, weight_decay


def _g(v, a, b, depth):
    """g(v) = 4 v^(L-1) (a - b^2 v^L)."""
    return 4.0 * v ** (depth - 1) * (a - b**2 * v**depth)


def _peak(a, b, depth):
    """(v*, g_max) of g on v > 0 for L >= 2; (0, 0) where a <= 0."""
    positive = a > 0
    a_pos = np.where(positive, a, 1.0)
    v_star = (a_pos * (depth - 1) / (b**2 * (2 * depth - 1))) ** (1.0 / depth)
    g_max = 4.0 * a_pos * depth * v_star ** (depth - 1) / (2 * depth - 1)
    return np.where(positive, v_star, 0.0), np.where(positive, g_max, 0.0)


def _bisect_log(function, lower, upper, increasing):
    """Vectorized bisection in log v for the root of a monotone `function` on [lower, upper]."""
    lo, hi = np.log(lower), np.log(upper)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        above = function(np.exp(mid)) > 0
        move_hi = above if increasing else ~above
        hi = np.where(move_hi, mid, hi)
        lo = np.where(move_hi, lo, mid)
    return np.exp(0.5 * (lo + hi))


def _roots_v(a, b, depth, weight_decay):
    """Roots of g(v) = wd in v = sigma^2: (v_unstable, v_stable, double).

    nan where absent. v_unstable = 0 where zero is the unstable fixed point. At wd = g_max
    (L >= 2) the two roots merge: both entries hold v* and `double` is True.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nan = np.full(a.shape, np.nan)
    if depth == 1:
        v1 = (a - weight_decay / 4.0) / b**2
        exists = v1 > 0
        return np.where(exists, 0.0, nan), np.where(exists, v1, nan), np.zeros(a.shape, bool)
    v_star, g_max = _peak(a, b, depth)
    exists = (a > 0) & (weight_decay < g_max)
    double = (a > 0) & (weight_decay == g_max)
    a_safe = np.where(a > 0, a, 1.0)
    v_top = (a_safe / b**2) ** (1.0 / depth)  # g(v_top) = 0 <= wd
    v_star_safe = np.where(a > 0, v_star, 1.0)

    def residual(v):
        return _g(v, a_safe, b, depth) - weight_decay

    if weight_decay > 0:
        # g(v) < 4 a v^(L-1), so this lower bound has g <= wd: a bracket for the rising branch.
        v_low = (weight_decay / (4.0 * a_safe)) ** (1.0 / (depth - 1))
        v_low = np.clip(v_low, np.finfo(np.float64).tiny, v_star_safe)
        v_unstable = _bisect_log(residual, v_low, v_star_safe, increasing=True)
    else:
        v_unstable = np.zeros(a.shape)
    v_stable = _bisect_log(residual, v_star_safe, v_top, increasing=False)
    v_unstable = np.where(exists, v_unstable, np.where(double, v_star, nan))
    v_stable = np.where(exists, v_stable, np.where(double, v_star, nan))
    return v_unstable, v_stable, double


def fixed_points(pos_cov, second_moment, depth, weight_decay) -> FixedPoints:
    """Nonzero fixed points of the per-layer singular value sigma under weight decay.

    Roots of 4 v^(L-1) (a - b^2 v^L) = wd, v = sigma^2 (zero is always a fixed point too). For
    L >= 2 roots exist iff wd < g_max (`survival_threshold`); at wd = g_max they merge into one
    semi-stable point, reported as absent.

    Args:
      pos_cov: a, (d,) (or a diagonal matrix).
      second_moment: b, (d,) (or a diagonal matrix).
      depth: number of layers L >= 1.
      weight_decay: wd >= 0.

    Returns:
      FixedPoints(unstable (d,), stable (d,)) per-layer sigma; nan where absent, unstable = 0
      where zero is the unstable fixed point.
    """
    a, b, depth, weight_decay = _validate(
        pos_cov, second_moment, depth, weight_decay, "fixed_points"
    )
    v_unstable, v_stable, double = _roots_v(a, b, depth, weight_decay)
    v_unstable = np.where(double, np.nan, v_unstable)
    v_stable = np.where(double, np.nan, v_stable)
    return FixedPoints(np.sqrt(v_unstable), np.sqrt(v_stable))


def survival_threshold(pos_cov, second_moment, depth) -> np.ndarray:
    """Weight decay above which a feature has no nonzero fixed point.

    L >= 2: g_max = max_v 4 v^(L-1) (a - b^2 v^L) = 4 a L v*^(L-1) / (2L-1),
    v*^L = a (L-1) / (b^2 (2L-1)). L = 1: 4a. Zero where a <= 0.

    Args:
      pos_cov: a, (d,).
      second_moment: b, (d,).
      depth: number of layers L >= 1.

    Returns:
      (d,) nonnegative.
    """
    a, b, depth, _ = _validate(pos_cov, second_moment, depth, 0.0, "survival_threshold")
    if depth == 1:
        return np.clip(4.0 * a, 0.0, None)
    return _peak(a, b, depth)[1]


def global_threshold(pos_cov, second_moment, depth) -> np.ndarray:
    """Weight decay above which sigma = 0 is the global minimum of the per-feature loss.

    Solves l(sigma_stable) = l(0) = 0 for l(sigma) = -2a sigma^(2L) + b^2 sigma^(4L)
    + (wd/2) L sigma^2; eliminating wd with the fixed-point equation gives
    v_g^L = 2 a (L-1) / (b^2 (2L-1)) and wd_g = 4 a v_g^(L-1) / (2L-1). L = 1: 4a (the stable root
    has negative loss whenever it exists). Zero where a <= 0. For L >= 2,
    wd_g = g_max 2^((L-1)/L) / L < g_max.

    Args:
      pos_cov: a, (d,).
      second_moment: b, (d,).
      depth: number of layers L >= 1.

    Returns:
      (d,) nonnegative.
    """
    a, b, depth, _ = _validate(pos_cov, second_moment, depth, 0.0, "global_threshold")
    if depth == 1:
        return np.clip(4.0 * a, 0.0, None)
    positive = a > 0
    a_pos = np.where(positive, a, 1.0)
    v_g = (2.0 * a_pos * (depth - 1) / (b**2 * (2 * depth - 1))) ** (1.0 / depth)
    return np.where(positive, 4.0 * a_pos * v_g ** (depth - 1) / (2 * depth - 1), 0.0)


def _powers(sigma, depth):
    """(depth, d) layer weights sigma^l, l = 1..L."""
    return sigma[None, :] ** np.arange(1, depth + 1)[:, None]


def global_minimum_weights(pos_cov, second_moment, depth, weight_decay) -> np.ndarray:
    """Layer weights sigma^l at the global minimum of each feature's loss.

    sigma = stable root if wd < global threshold, else 0 (at equality both are global minima;
    0 is returned).

    Args:
      pos_cov: a, (d,).
      second_moment: b, (d,).
      depth: number of layers L >= 1.
      weight_decay: wd >= 0.

    Returns:
      (depth, d); with wd = 0 equals `theory.linear.layer_weights`.
    """
    a, b, depth, weight_decay = _validate(
        pos_cov, second_moment, depth, weight_decay, "global_minimum_weights"
    )
    threshold = global_threshold(a, b, depth)
    stable = fixed_points(a, b, depth, weight_decay).stable
    sigma = np.where(weight_decay < threshold, stable, 0.0)
    return _powers(sigma, depth)


def basin_weights(pos_cov, second_moment, depth, weight_decay, init_scale) -> np.ndarray:
    """Layer weights sigma^l where gradient flow ends from aligned balanced initialization.

    Starting from per-layer singular value init_scale, sigma ends at the stable root if
    init_scale > unstable root (always, when the unstable fixed point is zero: L = 1 with a root,
    or wd = 0 with a > 0), else at 0. Starting exactly on the unstable root (a fixed point) is
    reported as 0.

    Args:
      pos_cov: a, (d,).
      second_moment: b, (d,).
      depth: number of layers L >= 1.
      weight_decay: wd >= 0.
      init_scale: per-layer singular value at t = 0, > 0.

    Returns:
      (depth, d).
    """
    a, b, depth, weight_decay = _validate(
        pos_cov, second_moment, depth, weight_decay, "basin_weights"
    )
    init_scale = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
    roots = fixed_points(a, b, depth, weight_decay)
    survives = np.isfinite(roots.stable) & (init_scale > roots.unstable)
    sigma = np.where(survives, roots.stable, 0.0)
    return _powers(sigma, depth)
