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

Saddles of the full network and where the flow really ends (`escape_rates`, `rotation_saddle`,
`is_local_minimum`, `stable_end_weights`). An aligned state is a critical point of the full
(unaligned) network, but not always a minimum. Rotating the input-side direction of a surviving
feature k's mode toward a dead feature i by angle theta (one entry (W_1)_ki = sigma_k theta, at fixed
singular values, so the penalty is unchanged) gives the mode effective moments
a(u) = a_k + u (a_i - a_k), b(u) = b_k + u (b_i - b_k), u = sin^2 theta, and loss

    l(sigma, u) = -2 a(u) s^2 + b(u)^2 s^4 + (wd / 2) L sigma^2,   s = sigma^L.

At u = 0 this is an exact Hessian eigenvector of the parameter loss, with eigenvalue -rate_ki,

    rate_ki = 4 sigma_k^(2L-2) [(a_i - a_k) - b_k (b_i - b_k) s_k^2]         (any L >= 1),

and the aligned state is a saddle iff some alive k, dead i has rate_ki > 0 (`rotation_saddle`;
the sign does not depend on L or wd beyond s_k). No other direction can be unstable at an aligned
state whose alive features sit at stable roots and whose dead features have zero as a local
minimum of their scalar loss (L >= 2 with wd > 0: dead-dead directions have curvature wd; L = 1:
4 a_i <= wd): the rotation mixing two alive modes has
curvature proportional to b_1 b_2 (s_1^2 - s_2^2) - (wd/4) (s_2^(-2r) - s_1^(-2r)) (s_1 > s_2,
r = (L-1)/L), which the stable-root condition (L-1)(a - b^2 s^2) < L b^2 s^2 makes positive
(it reduces to r sinh(y) > sinh(r y)).

Escape. From a balanced, randomly oriented init with width >= d, W^T W = eps^(2L) I is diagonal,
the balanced flow keeps it diagonal, and in exact arithmetic the flow ends at `basin_weights`. If
that state is a saddle, rounding errors seed every unstable rotation; the pair with the largest
rate (the most negative Hessian eigenvalue) escapes first. The rank-one, balanced manifold
{(sigma, theta)} is invariant under the flow (A, B diagonal keep the mode's input direction in
span(e_k, e_i) and the other layers on e_k e_k^T), so the escape follows the 2-D gradient flow
sigma' = -(1/L) dl/dsigma, theta' = -(1/sigma^2) dl/dtheta from (sigma_k, 0+). It cannot stop
in between: at any interior critical point (0 < u < 1), det Hess_(sigma, u) l =
-16 L (L-1) (b_i - b_k)^2 s^4 sigma^(2L-2) (a(u) - b(u)^2 s^2) < 0 since
a(u) - b(u)^2 s^2 = wd / (4 sigma^(2L-2)) > 0, so every interior critical point is a saddle. The
end is therefore u = 1 at feature i's stable root, or sigma = 0 (the mode dies). Integrating the
2-D flow (LSODA) from ~1300 random saddles (L = 2..4, b in [0.05, 5], a/b in [0.01, 1]), it always
ended at i's stable root when i has one and died when i has none; on ~1.8e4 more (b in
[0.01, 10], a/b in [1e-3, 1]), whenever i has a root, sigma_k was above i's unstable root and i's
stable loss below k's, and whenever i has none, k's loss was positive (wd above k's global
threshold), so dying is the only descent. Modes on disjoint features do not interact (their
columns of W are orthogonal), so the new aligned state is checked again and the rule repeats until
no rotation is unstable; every step lowers the loss, so it terminates at a local minimum
(`is_local_minimum`).
Checked against trained networks (simulations.experiments.weighting, init "balanced") in
tests/test_weight_decay_escape.py.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from theory.checks import as_finite_array, check_float, check_int
from theory.common import (
    diagonal_moments,
    escape_end,
    escape_rates_of,
    fixed_point_map,
    fixed_point_peak,
    fixed_point_roots,
    layer_powers,
    rotation_gain,
    rotation_saddle_mask,
)

__all__ = [
    "FixedPoints",
    "fixed_points",
    "survival_threshold",
    "global_threshold",
    "global_minimum_weights",
    "basin_weights",
    "EscapeStep",
    "escape_rates",
    "rotation_saddle",
    "is_local_minimum",
    "escape_sequence",
    "stable_end_weights",
]


class FixedPoints(NamedTuple):
    """Nonzero fixed points of the per-layer singular value, per feature (nan where absent).

    `unstable` is 0 where zero itself is the unstable fixed point (L = 1 with a root, or
    weight_decay = 0 with a > 0).
    """

    unstable: np.ndarray  # (d,)
    stable: np.ndarray  # (d,)


def _validate(pos_cov, second_moment, depth, weight_decay, function):
    a, b = diagonal_moments(pos_cov, second_moment, function)
    depth = check_int("depth", depth, minimum=1)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    return a, b, depth, weight_decay


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
    return _fixed_points(a, b, depth, weight_decay)


def _fixed_points(a, b, depth, weight_decay) -> FixedPoints:
    v_unstable, v_stable, double = fixed_point_roots(a, b, depth, weight_decay)
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
    return fixed_point_peak(a, b, depth)[1]


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
    return _global_threshold(a, b, depth)


def _global_threshold(a, b, depth):
    if depth == 1:
        return np.clip(4.0 * a, 0.0, None)
    positive = a > 0
    a_pos = np.where(positive, a, 1.0)
    v_g = (2.0 * a_pos * (depth - 1) / (b**2 * (2 * depth - 1))) ** (1.0 / depth)
    return np.where(positive, 4.0 * a_pos * v_g ** (depth - 1) / (2 * depth - 1), 0.0)


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
    threshold = _global_threshold(a, b, depth)
    stable = _fixed_points(a, b, depth, weight_decay).stable
    sigma = np.where(weight_decay < threshold, stable, 0.0)
    return layer_powers(sigma, depth)


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
    roots = _fixed_points(a, b, depth, weight_decay)
    survives = np.isfinite(roots.stable) & (init_scale > roots.unstable)
    sigma = np.where(survives, roots.stable, 0.0)
    return layer_powers(sigma, depth)


# --------------------------------------------------------------------------- saddles and escapes


class EscapeStep(NamedTuple):
    """One saddle escape: the mode on feature `source` rotates onto the dead feature `target`.

    `rate` is the growth rate of the rotation at the saddle (minus the parameter-loss Hessian
    eigenvalue along it, the most negative one at that saddle); `sigma` the per-layer singular
    value the mode ends with (0 if it dies).
    """

    source: int
    target: int
    rate: float
    sigma: float


def _check_layer_weights(layer_weights, depth, dim, rtol):
    """Per-layer sigma from aligned balanced layer weights (row l = sigma^(l+1)); ValueError otherwise."""
    weights = as_finite_array("layer_weights", layer_weights, ndim=2)
    if weights.shape != (depth, dim):
        raise ValueError(f"layer_weights must have shape (depth, d) = {(depth, dim)}, got {weights.shape}")
    if np.any(weights < 0):
        raise ValueError("layer_weights must be >= 0")
    sigma = weights[0]
    expected = layer_powers(sigma, depth)
    if not np.allclose(weights, expected, rtol=max(rtol, 1e-12), atol=0.0):
        raise ValueError("layer_weights must be aligned balanced weights: row l must equal row 0 ** (l + 1)")
    return sigma


def escape_rates(pos_cov, second_moment, depth, layer_weights) -> np.ndarray:
    """Growth rates of the unstable rotations at an aligned balanced state (width >= d).

    Entry (k, i), for feature k alive and feature i dead, is

        rate_ki = 4 sigma_k^(2L-2) [(a_i - a_k) - b_k (b_i - b_k) s_k^2],   s_k = sigma_k^L:

    at a critical point, minus the Hessian eigenvalue (of the parameter loss, any depth) along the
    rotation of k's mode toward i, i.e. the rate at which gradient flow leaves the state that way.
    Other entries (and pairs whose gain is zero to rounding) are -inf. The state is a saddle iff
    some rate is > 0; the largest positive rate is the most negative Hessian eigenvalue.

    Args:
      pos_cov: a, (d,).
      second_moment: b, (d,).
      depth: L >= 1.
      layer_weights: (depth, d) aligned balanced weights, row l = sigma^(l+1) (e.g. basin_weights).

    Returns:
      (d, d) rates, rows = surviving source feature k, columns = dead target feature i.
    """
    a, b, depth, _ = _validate(pos_cov, second_moment, depth, 0.0, "escape_rates")
    sigma = _check_layer_weights(layer_weights, depth, a.size, 1e-9)
    return escape_rates_of(a, b, depth, sigma)


def rotation_saddle(pos_cov, second_moment, end_to_end_weights) -> np.ndarray:
    """Whether an aligned state is a saddle of the full network via a mode rotating into a dead feature.

    Saddle iff some surviving k and dead i satisfy a_i - a_k > s_k^2 b_k (b_i - b_k) (the sign of
    `escape_rates`, which does not depend on the depth). Without weight decay this never holds at
    the optimum (s_k^2 = a_k / b_k^2 turns it into a_i / b_i > a_k / b_k with i unlearned). Gains
    within 1e-12 max|a| of zero count as degenerate, not saddles.

    Args:
      pos_cov: a, (..., d).
      second_moment: b, (..., d).
      end_to_end_weights: s, (..., d) (row L of the layer weights).

    Returns:
      (...) bool (a Python bool for a single state).
    """
    a = as_finite_array("pos_cov", pos_cov)
    b = as_finite_array("second_moment", second_moment)
    s = as_finite_array("end_to_end_weights", end_to_end_weights)
    result = rotation_saddle_mask(*np.broadcast_arrays(a, b, s))
    return bool(result) if result.ndim == 0 else result


def is_local_minimum(pos_cov, second_moment, depth, weight_decay, layer_weights, *, rtol=1e-6) -> bool:
    """Whether aligned balanced layer weights are a local minimum of the full network's loss.

    Widths >= d, penalty (wd/2) sum ||W_l||^2. True iff (i) every feature is a fixed point of its
    scalar flow, (ii) every alive feature sits on a stable root (v above the peak of g for L >= 2),
    (iii) every dead feature's zero is a local minimum (L >= 2: wd > 0 or a <= 0; L = 1: 4a <= wd),
    and (iv) no rotation of an alive mode into a dead feature is unstable (`escape_rates`).
    Rotations between alive modes at stable roots are always stable (module docstring), so these
    are all the conditions. Degenerate states (double roots, zero rotation gains) are reported as
    minima only when their second-order conditions hold within `rtol`.

    Args:
      pos_cov: a, (d,).
      second_moment: b, (d,).
      depth: L >= 1.
      weight_decay: wd >= 0.
      layer_weights: (depth, d), row l = sigma^(l+1) (e.g. `basin_weights`); trained, measured
        weights work too: a feature is dead where sigma <= rtol * max(1, max sigma).
      rtol: relative tolerance of the fixed-point and stability checks.

    Returns:
      bool.
    """
    a, b, depth, weight_decay = _validate(pos_cov, second_moment, depth, weight_decay, "is_local_minimum")
    rtol = check_float("rtol", rtol, minimum=0.0)
    sigma = _check_layer_weights(layer_weights, depth, a.size, rtol)
    alive = sigma > rtol * max(1.0, float(sigma.max()))
    sigma = np.where(alive, sigma, 0.0)
    v = sigma**2
    # (i) fixed points: g(v) = wd on alive features.
    residual = np.abs(fixed_point_map(v, a, b, depth) - weight_decay)
    scale = 4.0 * v ** (depth - 1) * (np.abs(a) + b**2 * v**depth) + weight_decay
    if np.any(alive & (residual > rtol * scale)):
        return False
    # (ii) alive features on the stable branch.
    if depth >= 2 and np.any(alive & ~(v > fixed_point_peak(a, b, depth)[0] * (1.0 + rtol))):
        return False
    # (iii) dead features: zero is a local minimum of the scalar loss.
    dead_ok = (weight_decay > 0) | (a <= 0) if depth >= 2 else 4.0 * a <= weight_decay * (1.0 + rtol)
    if np.any(~alive & ~dead_ok):
        return False
    # (iv) no unstable rotation of an alive mode into a dead feature.
    gain = rotation_gain(a, b, sigma**depth)
    unstable = (gain > rtol * np.abs(a).max()) & alive[:, None] & ~alive[None, :]
    return not bool(unstable.any())


def escape_sequence(pos_cov, second_moment, depth, weight_decay, init_scale) -> tuple[EscapeStep, ...]:
    """The saddle escapes of the flow from a balanced, randomly oriented init (width >= d).

    Starts at `basin_weights`; while the state is a saddle, the pair (k, i) with the largest
    `escape_rates` entry escapes (ties: lowest k, then lowest i): the mode leaves feature k (now
    dead) and lands on feature i's stable root, or dies if i has none or its stable loss is not
    below the mode's current loss (descent). See the module docstring for the derivation.

    Args:
      pos_cov: a, (d,).
      second_moment: b, (d,).
      depth: L >= 1.
      weight_decay: wd >= 0.
      init_scale: per-layer singular value at t = 0, > 0.

    Returns:
      tuple of EscapeStep, in order (empty when the basin state is a local minimum).
    """
    return _escape(pos_cov, second_moment, depth, weight_decay, init_scale, "escape_sequence")[1]


def stable_end_weights(pos_cov, second_moment, depth, weight_decay, init_scale) -> np.ndarray:
    """Layer weights sigma^l where gradient flow from balanced random-orientation init really ends.

    Equals `basin_weights` unless that state is a saddle of the full network (`rotation_saddle`);
    then the escapes of `escape_sequence` are applied until no rotation is unstable, giving a
    local minimum (`is_local_minimum`). Widths >= d (the init's W^T W = init_scale^(2L) I).

    Args:
      pos_cov: a, (d,).
      second_moment: b, (d,).
      depth: L >= 1.
      weight_decay: wd >= 0.
      init_scale: per-layer singular value at t = 0, > 0.

    Returns:
      (depth, d).
    """
    return _escape(pos_cov, second_moment, depth, weight_decay, init_scale, "stable_end_weights")[0]


def _escape(pos_cov, second_moment, depth, weight_decay, init_scale, function):
    a, b, depth, weight_decay = _validate(pos_cov, second_moment, depth, weight_decay, function)
    init_scale = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
    weights, steps = escape_end(a, b, depth, weight_decay, init_scale, function)
    return weights, tuple(EscapeStep(*step) for step in steps)
