"""Gradient-flow trajectories of aligned, balanced deep linear nets, closed form up to a quadrature.

Aligned, balanced initialization: every layer is diagonal in the feature basis with per-layer
singular value init_scale = eps, so each feature evolves independently with the same per-layer
singular value sigma_i(t) in every layer (end-to-end s = sigma^L). The per-feature objective is

    l(sigma) = -2 a s^2 + b^2 s^4 + (wd / 2) L sigma^2,   s = sigma^L,

(spectral loss restricted to feature i, plus weight decay (wd/2) sum_l ||W_l||_F^2). Each layer's
singular value follows its own partial derivative: d/dsigma_l of -2 a s^2 + b^2 s^4 is
(-4 a s^2 + 4 b^2 s^4) / sigma_l = -4 a sigma^(2L-1) + 4 b^2 sigma^(4L-1) at balance, and the
penalty adds wd sigma_l, so balance is preserved and

    d sigma / dt = F(sigma) = 4 sigma^(2L-1) (a - b^2 sigma^(2L)) - wd sigma.

Time t is gradient-flow time (learning rate x steps). In v = sigma^2 the flow is dv/dt = h(v) with
the polynomial h(v) = 8 a v^L - 8 b^2 v^(2L) - 2 wd v, hence t(v) = int_(v0)^v dv' / h(v'). The flow
stays between two consecutive roots lo < v < hi of h (0 and the fixed points of
`theory.weight_decay`), moving toward the stable one. The substitution z = ln(v - lo) - ln(hi - v)
(z = ln(v - lo) when there is no root above) maps that interval onto the real line. The roots are
then divided out of h exactly: the root at 0 (order m = L without weight decay, 1 with it) by
shifting exponents, h(v) = v^m p(v), and the positive roots as divided differences,
p(v) = (v - lo)(v - hi) p[v, lo, hi], whose coefficients are complete homogeneous symmetric
polynomials of nonnegative numbers, so nothing cancels. The integrand dt/dz is then smooth:
bounded near simple roots and exponential in z near the multiple root at 0 (the plateau).
Composite Gauss-Legendre on a uniform grid in z gives t at the grid points; each requested time is
inverted inside its panel by safeguarded Newton (bisection whenever a Newton step leaves the
bracket) in z, a monotone reparametrization of sigma. Times past the end of the grid, where v is
within float64 resolution of a nonzero fixed point (or below 1e-40 v0 for a decay to zero), return
the fixed point itself. Accuracy: the time at which sigma is reached is exact to a few ulps of t
(relative ~1e-15), so sigma(t) is as accurate as the conditioning d sigma/dt * t * 1e-16 allows.

Diagonal (feature-aligned) moments only; layer widths are assumed >= d.
"""

from __future__ import annotations

import numpy as np

from theory.checks import as_finite_array, check_float, check_int
from theory.common import diagonal_moments, fixed_point_roots

__all__ = ["feature_trajectories", "plateau_time"]

# 16 Gauss-Legendre nodes on panels of width <= ~0.5 in z integrate exp(k z) (k <= 2L - 1, the
# plateau behaviour) to float64 precision for any depth used in practice.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)
_PANELS = 512
# Inversion inside one panel (width <= ~1 in z): safeguarded Newton, stopped when t is matched to
# a few ulps or z moves by less than a few of its ulps; the cap covers the all-bisection worst case.
_INVERSION_STEPS = 80
_Z_ULPS = 4
_T_TOLERANCE = 4 * np.finfo(np.float64).eps
# Times x features per inversion block (bounds memory at ~16 x 8 bytes x this per temporary).
_BLOCK_ELEMENTS = 1 << 15
# Nonzero targets: stop where |v - target| = target * 2^-58, below float64 spacing of target.
_TARGET_RESOLUTION = 2.0**-58
# Decay to zero: stop at v = 1e-40 v0 (sigma = 1e-20 eps) and return 0 beyond.
_DECAY_CUTOFF = 1e-40


def _complete_homogeneous(nodes, max_degree):
    """h_m(x_0, ..., x_k) for m = 0..max_degree (list), by h_m(X, y) = h_m(X) + y h_(m-1)(X, y)."""
    first = nodes[0]
    table = [first**m for m in range(max_degree + 1)]
    for node in nodes[1:]:
        for m in range(1, max_degree + 1):
            table[m] = table[m] + node * table[m - 1]
    return table


def _divided_difference(v, nodes, terms):
    """p[v, r_1, ..., r_k] for the polynomial p(v) = sum over (n, c) in `terms` of c v^n.

    The divided difference of v^n at k+1 nodes is h_(n-k) of the nodes (complete homogeneous
    symmetric polynomial; zero if n < k). With nonnegative nodes every term of h_m is positive.
    """
    k = len(nodes)
    table = _complete_homogeneous([v, *nodes], max(n for n, _ in terms))
    total = 0.0
    for degree, coefficient in terms:
        if degree >= k:
            total = total + coefficient * table[degree - k]
    return total


class _Flow:
    """Per-feature geometry of the flow in v: bracketing roots, direction and the z variable."""

    def __init__(self, a, b, depth, weight_decay, v0):
        # h(v) = v^m p(v): the root at 0 has order m = L without weight decay, 1 with it.
        # Dividing it out by shifting exponents (not numerically) keeps the plateau accurate.
        self.zero_order = depth if weight_decay == 0 else 1
        m = self.zero_order
        self.terms = [(depth - m, 8.0 * a), (2 * depth - m, -8.0 * b**2)]
        if weight_decay > 0:
            self.terms.append((0, np.full_like(a, -2.0 * weight_decay)))
        v_unstable, v_stable, double = fixed_point_roots(a, b, depth, weight_decay)
        roots = np.stack([np.zeros_like(a), v_unstable, v_stable])  # (3, d), nan = absent
        with np.errstate(invalid="ignore"):
            below = np.where(roots < v0, roots, -np.inf)
            above = np.where(roots > v0, roots, np.inf)
            self.at_rest = np.any(roots == v0, axis=0)
        self.lo = below.max(axis=0)
        hi = above.min(axis=0)
        self.finite = np.isfinite(hi)
        self.up = self.finite & (hi == v_stable) & ~double
        # Placeholders where a branch does not apply keep the arithmetic finite.
        self.hi = np.where(self.finite, hi, self.lo + 1.0)
        self.span = self.hi - self.lo
        self.target = np.where(self.up, self.hi, self.lo)
        self.z0 = self.z_of_v(v0)
        delta = np.where(self.target > 0, self.target * _TARGET_RESOLUTION, v0 * _DECAY_CUTOFF)
        z_up = np.log(self.span) - np.log(delta)
        z_down = np.where(self.finite, np.log(delta) - np.log(self.span), np.log(delta))
        self.z_end = np.where(self.up, np.maximum(z_up, self.z0), np.minimum(z_down, self.z0))

    def z_of_v(self, v):
        with np.errstate(divide="ignore", invalid="ignore"):
            ln_lo = np.log(v - self.lo)
            return np.where(self.finite, ln_lo - np.log(self.hi - v), ln_lo)

    def v_of_z(self, z):
        # lo + span sigmoid(z) for z < 0 and hi - span sigmoid(-z) for z >= 0 share
        # q = e / (1 + e), e = exp(-|z|), and keep full relative precision near each root.
        e = np.exp(-np.abs(z))
        q = e / (1.0 + e)
        v = np.where(z < 0, self.lo + self.span * q, self.hi - self.span * q)
        if not np.all(self.finite):
            open_cols = ~self.finite
            v[..., open_cols] = self.lo[open_cols] + np.exp(np.minimum(z[..., open_cols], 700.0))
        return v

    def dt_dz(self, z):
        """dt/dz = (dv/dz) / h(v), with every bracketing root divided out of h exactly.

        With h(v) = v^m p(v): dv/dz = (v - lo)(hi - v) / (hi - lo) (or v - lo with no root above),
        and the positive roots lo, hi are removed from p as divided differences p[v, lo, hi].
        Each feature's case is evaluated on its own columns (the feature axis is last).
        """
        v = self.v_of_z(z)
        m = self.zero_order
        out = np.empty(v.shape)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            for finite in (True, False):
                for lo_positive in (True, False):
                    cols = (self.finite == finite) & ((self.lo > 0) == lo_positive)
                    if not np.any(cols):
                        continue
                    x, lo, hi = v[..., cols], self.lo[cols], self.hi[cols]
                    terms = [(n, c[cols]) for n, c in self.terms]
                    if finite and lo_positive:
                        q = _divided_difference(x, [lo, hi], terms)
                        out[..., cols] = -1.0 / ((hi - lo) * x**m * q)
                    elif finite:
                        q = _divided_difference(x, [hi], terms)
                        out[..., cols] = -(x ** (1 - m)) / (hi * q)
                    elif lo_positive:
                        out[..., cols] = 1.0 / (x**m * _divided_difference(x, [lo], terms))
                    else:
                        out[..., cols] = x ** (1 - m) / _divided_difference(x, [], terms)
        return out

    def integral(self, z_start, z_stop):
        """Gauss-Legendre int_(z_start)^(z_stop) dt/dz dz, vectorized over leading axes."""
        half = 0.5 * (z_stop - z_start)
        # Quadrature nodes on a new leading axis, so the feature axis stays last for broadcasting.
        shape = (-1,) + (1,) * half.ndim
        values = self.dt_dz(z_start + half + half * _GL_NODES.reshape(shape))
        with np.errstate(invalid="ignore"):
            result = half * np.sum(_GL_WEIGHTS.reshape(shape) * values, axis=0)
        return np.where(half == 0, 0.0, result)


def feature_trajectories(pos_cov, second_moment, depth, init_scale, times, weight_decay=0.0):
    """Per-feature layer weights sigma_i(t)^l along gradient flow from aligned balanced init.

    d sigma / dt = 4 sigma^(2L-1) (a - b^2 sigma^(2L)) - wd sigma,  sigma(0) = init_scale,
    solved as t(sigma) = int_eps^sigma d sigma' / F(sigma') (quadrature) and inverted for sigma
    (see the module docstring).
    Grows to the stable fixed point when init_scale lies above the unstable one, otherwise decays to
    0 (algebraically for wd = 0 and L >= 2); starting above the stable point it decays to it.

    Args:
      pos_cov: a, (d,) (or a diagonal matrix).
      second_moment: b, (d,) (or a diagonal matrix).
      depth: number of layers L >= 1.
      init_scale: per-layer singular value eps > 0 at t = 0 (every layer, every feature).
      times: (T,) nonnegative gradient-flow times (learning rate x steps).
      weight_decay: wd >= 0, penalty (wd / 2) sum_l ||W_l||_F^2.

    Returns:
      (T, depth, d): entry [k, l-1, i] = sigma_i(times[k])^l, the weight of feature i at layer l.
    """
    a, b = diagonal_moments(pos_cov, second_moment, "feature_trajectories")
    depth = check_int("depth", depth, minimum=1)
    eps = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
    times = as_finite_array("times", times, ndim=1)
    if np.any(times < 0):
        raise ValueError(f"times must be nonnegative, got minimum {times.min()!r}")
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)

    v0 = eps**2
    flow = _Flow(a, b, depth, weight_decay, v0)
    # t at the panel boundaries of a uniform grid in z from z0 to z_end: (panels + 1, d).
    fractions = np.linspace(0.0, 1.0, _PANELS + 1)[:, None]
    grid = flow.z0 + (flow.z_end - flow.z0) * fractions
    cumulative = np.concatenate(
        [np.zeros((1, a.size)), np.cumsum(flow.integral(grid[:-1], grid[1:]), axis=0)]
    )

    # Invert in blocks of times to bound the (nodes, times, d) temporaries.
    block = max(1, _BLOCK_ELEMENTS // a.size)
    starts = range(0, times.size, block)
    v = np.concatenate([_solve_times(flow, grid, cumulative, times[i : i + block]) for i in starts])
    v = np.where(flow.at_rest, v0, v)
    sigma = np.sqrt(v)  # (T, d)
    return sigma[:, None, :] ** np.arange(1, depth + 1)[None, :, None]


def _solve_times(flow, grid, cumulative, times):
    """v at each time (T, d) from the tabulated t(z) on the grid (panels + 1, d)."""
    # cumulative is nondecreasing in each column: locate each time's panel by binary search.
    panel = np.stack(
        [np.searchsorted(cumulative[:, i], times, side="right") - 1 for i in range(grid.shape[1])],
        axis=1,
    )  # (T, d)
    beyond = panel >= _PANELS
    panel = np.minimum(panel, _PANELS - 1)
    columns = np.arange(grid.shape[1])[None, :]
    z_left, z_right = grid[panel, columns], grid[panel + 1, columns]
    t_left, t_right = cumulative[panel, columns], cumulative[panel + 1, columns]
    z = _invert(flow, times[:, None], z_left, z_right, t_left, t_right)
    return np.where(beyond, flow.target, flow.v_of_z(z))


def _invert(flow, t, z_left, z_right, t_left, t_right):
    """Solve t_left + int_(z_left)^z dt/dz = t for z in each panel (safeguarded Newton).

    Position s in [0, 1] along the panel; the residual is increasing in s. Newton steps that leave
    the current bracket are replaced by bisection, so convergence is guaranteed.
    """
    width = z_right - z_left
    resolution = _Z_ULPS * np.finfo(np.float64).eps * np.maximum(
        1.0, np.maximum(np.abs(z_left), np.abs(z_right))
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.clip(np.nan_to_num((t - t_left) / (t_right - t_left), nan=0.5), 0.0, 1.0)
    lower, upper = np.zeros(s.shape), np.ones(s.shape)
    for _ in range(_INVERSION_STEPS):
        z = z_left + s * width
        residual = t_left + flow.integral(z_left, z) - t
        slope = flow.dt_dz(z) * width
        upper = np.where(residual >= 0, s, upper)
        lower = np.where(residual <= 0, s, lower)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            newton = s - residual / slope
        inside = np.isfinite(newton) & (newton >= lower) & (newton <= upper)
        s_next = np.where(inside, newton, 0.5 * (lower + upper))
        # Done once t is matched to its own rounding, or the position stops moving.
        solved = np.abs(residual) <= _T_TOLERANCE * t
        s_next = np.where(solved, s, s_next)
        # z = z_left + s width cannot resolve s more finely than float64 spacing of z.
        stalled = np.minimum(np.abs(s_next - s), upper - lower) * np.abs(width) <= resolution
        s = s_next
        if np.all(solved | stalled):
            break
    return z_left + s * width


def plateau_time(pos_cov, second_moment, depth, init_scale) -> np.ndarray:
    """Time at which a feature escapes the small-initialization plateau (no weight decay).

    L >= 2: 1 / (8 a (L-1) eps^(2L-2)), the blow-up time of the small-sigma approximation
    d sigma / dt = 4 a sigma^(2L-1) (whose solution is sigma^-(2L-2) = eps^-(2L-2) - 8 a (L-1) t);
    the exact crossing time of any fixed fraction of the fixed point differs from it by O(1), a
    relative error O(eps^(2L-2)). L = 1: the exact time at which the logistic
    v(t) = v* / (1 + (v*/v0 - 1) e^(-8 a t)), v = sigma^2, v* = a / b^2, reaches sigma = sigma*/2:
    ln((v*/v0 - 1) / 3) / (8 a) (0 where eps >= sigma*/2). Infinite where a <= 0.

    Args:
      pos_cov: a, (d,) (or a diagonal matrix).
      second_moment: b, (d,) (or a diagonal matrix).
      depth: number of layers L >= 1.
      init_scale: per-layer singular value eps > 0 at t = 0.

    Returns:
      (d,) times.
    """
    a, b = diagonal_moments(pos_cov, second_moment, "plateau_time")
    depth = check_int("depth", depth, minimum=1)
    eps = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
    positive = a > 0
    a_pos = np.where(positive, a, 1.0)
    if depth >= 2:
        time = 1.0 / (8.0 * a_pos * (depth - 1) * eps ** (2 * depth - 2))
    else:
        ratio = (a_pos / b**2) / eps**2
        with np.errstate(invalid="ignore", divide="ignore"):
            time = np.where(ratio > 4.0, np.log((ratio - 1.0) / 3.0) / (8.0 * a_pos), 0.0)
    return np.where(positive, time, np.inf)
