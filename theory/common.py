"""Numerical building blocks shared by the theory modules, on already validated float64 arrays.

Only `diagonal_moments` checks its input (it is the validation step); the public functions of the
other theory modules validate once and then call these. Derivations: `theory.linear` (which
features the optimum keeps) and `theory.weight_decay` (fixed points under weight decay, saddle
escapes of the full network).
"""

from __future__ import annotations

import numpy as np

from theory.moments import validate_moments

__all__ = [
    "diagonal_moments", "top_positive", "fixed_point_map", "fixed_point_peak", "fixed_point_roots",
    "GAIN_TOL", "rotation_gain", "rotation_saddle_mask", "escape_rates_of", "layer_powers", "scalar_loss",
    "escape_end",
]

# Bisection steps on log v: the bracket spans < 2^11 in log, so 100 halvings reach float64 spacing.
_BISECTION_STEPS = 100


def diagonal_moments(pos_cov, second_moment, function: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate (A, B) and return their diagonals (a, b); ValueError (naming `function`) unless diagonal."""
    moments = validate_moments(pos_cov, second_moment)
    if not moments.diagonal:
        raise ValueError(
            f"pos_cov and second_moment must be diagonal (vectors or diagonal matrices) for "
            f"{function}; got non-diagonal matrices"
        )
    return np.diag(moments.pos_cov).copy(), np.diag(moments.second_moment).copy()


def top_positive(values: np.ndarray, width: int | None) -> np.ndarray:
    """Boolean mask of the (at most `width`) largest strictly positive entries of a (d,) array.

    Ties at the width-th value are broken toward the lower index (stable sort).
    """
    keep = values > 0
    if width is not None and width < values.size:
        order = np.argsort(-values, kind="stable")
        top = np.zeros(values.size, dtype=bool)
        top[order[:width]] = True
        keep &= top
    return keep


def fixed_point_map(v, a, b, depth):
    """g(v) = 4 v^(L-1) (a - b^2 v^L): the nonzero fixed points of sigma solve g(sigma^2) = wd."""
    return 4.0 * v ** (depth - 1) * (a - b**2 * v**depth)


def fixed_point_peak(a, b, depth):
    """(v*, g_max) of g on v > 0 for L >= 2 (v*^L = a (L-1) / (b^2 (2L-1))); (0, 0) where a <= 0."""
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


def fixed_point_roots(a, b, depth, weight_decay):
    """Roots of g(v) = wd in v = sigma^2 for a, b of any (same) shape: (v_unstable, v_stable, double).

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
    v_star, g_max = fixed_point_peak(a, b, depth)
    exists = (a > 0) & (weight_decay < g_max)
    double = (a > 0) & (weight_decay == g_max)
    a_safe = np.where(a > 0, a, 1.0)
    v_top = (a_safe / b**2) ** (1.0 / depth)  # g(v_top) = 0 <= wd
    v_star_safe = np.where(a > 0, v_star, 1.0)

    def residual(v):
        return fixed_point_map(v, a_safe, b, depth) - weight_decay

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


# A rotation gain (a_i - a_k) - b_k (b_i - b_k) s_k^2 within this fraction of max |a| is treated as
# zero (degenerate, not a saddle): it absorbs the rounding of s_k^2 at an exact fixed point.
GAIN_TOL = 1e-12


def rotation_gain(a, b, s):
    """(..., k, i) gain (a_i - a_k) - b_k (b_i - b_k) s_k^2 of rotating mode k toward feature i."""
    a_gap = a[..., None, :] - a[..., :, None]
    b_gap = b[..., None, :] - b[..., :, None]
    return a_gap - (s**2 * b)[..., :, None] * b_gap


def _gain_scale(a):
    return GAIN_TOL * np.maximum(np.abs(a).max(axis=-1), 1e-300)[..., None, None]


def rotation_saddle_mask(a, b, s):
    """(...) bool: some alive k and dead i have a rotation gain above GAIN_TOL max|a| (a saddle)."""
    alive = s > 0
    unstable = (rotation_gain(a, b, s) > _gain_scale(a)) & alive[..., :, None] & ~alive[..., None, :]
    return unstable.any(axis=(-2, -1))


def escape_rates_of(a, b, depth, sigma):
    """(d, d) rates 4 sigma_k^(2L-2) gain_ki of alive k toward dead i; -inf elsewhere or where gain ~ 0."""
    alive = sigma > 0
    gain = rotation_gain(a, b, sigma**depth)
    rates = 4.0 * sigma[:, None] ** (2 * depth - 2) * gain
    valid = alive[:, None] & ~alive[None, :] & (np.abs(gain) > _gain_scale(a))
    return np.where(valid, rates, -np.inf)


def layer_powers(sigma, depth):
    """(depth, d) aligned balanced layer weights sigma^l, l = 1..L."""
    return sigma[None, :] ** np.arange(1, depth + 1)[:, None]


def scalar_loss(a, b, depth, weight_decay, sigma):
    """Per-feature loss -2 a s^2 + b^2 s^4 + (wd/2) L sigma^2, s = sigma^L."""
    s = sigma**depth
    return -2.0 * a * s**2 + b**2 * s**4 + 0.5 * weight_decay * depth * sigma**2


def escape_end(a, b, depth, weight_decay, init_scale, function):
    """Basin state, then the saddle escapes: (layer weights (depth, d), ((source, target, rate, sigma), ...))."""
    v_unstable, v_stable, double = fixed_point_roots(a, b, depth, weight_decay)
    unstable, stable = np.sqrt(np.where(double, np.nan, v_unstable)), np.sqrt(np.where(double, np.nan, v_stable))
    sigma = np.where(np.isfinite(stable) & (init_scale > unstable), stable, 0.0)
    steps = []
    # Each escape strictly lowers the loss over finitely many aligned states, so this terminates;
    # the bound only guards against a broken invariant.
    for _ in range(4 * a.size**2 + 1):
        rates = escape_rates_of(a, b, depth, sigma)
        if not np.any(rates > 0):
            return layer_powers(sigma, depth), tuple(steps)
        source, target = np.unravel_index(np.argmax(rates), rates.shape)
        landing = stable[target]
        current = scalar_loss(a[source], b[source], depth, weight_decay, sigma[source])
        lands = np.isfinite(landing) and scalar_loss(a[target], b[target], depth, weight_decay, landing) < current
        if not lands:  # the descent cannot reach i's stable root: the mode dies
            landing = 0.0
        steps.append((int(source), int(target), float(rates[source, target]), float(landing)))
        sigma = sigma.copy()
        sigma[source], sigma[target] = 0.0, landing
    raise RuntimeError(f"{function}: escapes did not terminate (a={a.tolist()}, b={b.tolist()})")
