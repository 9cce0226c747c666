"""Exactness checks for the closed forms in theory/ (linear optimum, dynamics, weight decay).

Every oracle here is computed independently of the implementation: elementary closed forms,
finite differences, generalized eigenvalues, brute-force grids and test-local bisection.
"""

import numpy as np
import pytest
from helpers import psd_sqrt, random_general_moments, random_orthogonal

from theory import (
    FixedPoints,
    basin_weights,
    effective_rank,
    end_to_end_weights,
    entropy_effective_rank,
    feature_trajectories,
    fixed_points,
    global_minimum_weights,
    global_threshold,
    layer_grams,
    layer_weights,
    learned_features,
    optimal_gram,
    optimal_loss,
    plateau_time,
    representation_stds,
    spectral_loss,
    survival_threshold,
)

# Exact algebra in float64 (eigh, matrix powers of well-conditioned 6 x 6 matrices).
EXACT = 1e-10
# Root finding by bisection to float64 spacing; residuals are relative to the equation's scale.
ROOT = 1e-12
# Quadrature trajectories vs elementary closed forms, as a relative *time* error: sigma(t) can only
# be as accurate as t itself (|d sigma/dt| t 1e-16), so errors are compared after dividing by
# |d sigma/dt| t. Measured ~3e-15; the margin covers the closed forms' own rounding.
TIME_SHIFT = 1e-12
# Same, directly on sigma, where the problem is well conditioned (eps >= 0.1, t = O(1)).
TRAJECTORY = 1e-9
# Five-point finite difference in time with step h = 1e-3: truncation h^4 |sigma^(5)| / 30
# (<~1e-10 here), rounding ~1e-16 / h = 1e-13; relative to max |d sigma/dt| over the window.
FINITE_DIFFERENCE = 1e-8
# Same computation vectorized differently (features jointly vs one at a time): last-bit rounding.
ROUNDING = 1e-14
# Test-local trapezoid quadrature (400k points in log u, error O(h^2) ~ 1e-10 relative).
TRAPEZOID = 1e-9

RNG_SEED = 0


# --------------------------------------------------------------------------- helpers


def _loss_gradient(w, a, b):
    """Analytic gradient of the spectral loss (SPEC): -4 W A + 4 W B W^T W B."""
    return -4.0 * w @ a + 4.0 * w @ b @ w.T @ w @ b


def _diagonal_problem():
    """Distinct ratios, including a zero and a negative one (never learned)."""
    a = np.array([0.45, -0.2, 0.3, 0.0, 0.7, 0.12])
    b = np.array([0.9, 0.5, 1.2, 0.8, 1.0, 0.3])
    return a, b


def _flow_rhs(sigma, a, b, depth, weight_decay):
    return 4.0 * sigma ** (2 * depth - 1) * (a - b**2 * sigma ** (2 * depth)) - weight_decay * sigma


def _logistic_v(times, a, b, v0, weight_decay):
    """Depth 1: dv/dt = k v - 8 b^2 v^2, k = 8a - 2wd (Bernoulli: w = 1/v is linear)."""
    k = 8.0 * a - 2.0 * weight_decay
    w0 = 1.0 / v0
    if k == 0:
        return 1.0 / (w0 + 8.0 * b**2 * times)
    w_inf = 8.0 * b**2 / k
    return 1.0 / (w_inf + (w0 - w_inf) * np.exp(-k * times))


def _depth2_time(u, a, b, u0):
    """Depth 2, no weight decay: time to go from u0 to u (u = sigma^2).

    du/dt = 8 u^2 (a - b^2 u^2); 1/(u^2 (a - b^2 u^2)) = 1/(a u^2) + b^2 / (a (a - b^2 u^2)).
    """
    if a > 0:
        sa = np.sqrt(a)
        log_term = np.log((sa + b * u) * (sa - b * u0) / ((sa - b * u) * (sa + b * u0)))
        return (1.0 / u0 - 1.0 / u + b / (2.0 * sa) * log_term) / (8.0 * a)
    sa = np.sqrt(-a)
    arctan_term = np.arctan(b * u / sa) - np.arctan(b * u0 / sa)
    return (1.0 / u0 - 1.0 / u - b / sa * arctan_term) / (8.0 * a)


def _trapezoid_time(u, a, b, depth, u0, points=400_001):
    """Independent t(u) = int du / (8 u^L (a - b^2 u^L)) by the trapezoid rule in x = ln u."""
    x = np.linspace(np.log(u0), np.log(u), points)
    uu = np.exp(x)
    f = uu / (8.0 * uu**depth * (a - b**2 * uu**depth))
    return np.sum((f[1:] + f[:-1]) * np.diff(x)) / 2.0


# --------------------------------------------------------------------------- linear optimum


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_diagonal_layer_weights_match_per_feature_formula(depth):
    a, b = _diagonal_problem()
    learned = a / b > 0
    layers = np.arange(1, depth + 1)[:, None]
    expected = np.where(learned, np.abs(a / b**2) ** (layers / (2 * depth)), 0.0)
    np.testing.assert_allclose(layer_weights(a, b, depth), expected, rtol=EXACT, atol=0)
    np.testing.assert_allclose(
        end_to_end_weights(a, b), np.where(learned, np.sqrt(np.abs(a)) / b, 0.0), rtol=EXACT
    )
    np.testing.assert_allclose(
        representation_stds(a, b, depth), expected * np.sqrt(b), rtol=EXACT, atol=0
    )


def test_two_layer_pre_and_post_stds():
    """SPEC: pre std = a^(1/4), post std = sqrt(r), pre weight = sqrt(post weight)."""
    a, b = _diagonal_problem()
    learned = a / b > 0
    stds = representation_stds(a, b, 2)
    weights = layer_weights(a, b, 2)
    np.testing.assert_allclose(stds[0], np.where(learned, np.abs(a) ** 0.25, 0.0), rtol=EXACT)
    np.testing.assert_allclose(stds[1], np.where(learned, np.sqrt(np.abs(a / b)), 0.0), rtol=EXACT)
    np.testing.assert_allclose(weights[0], np.sqrt(weights[1]), rtol=EXACT)


@pytest.mark.parametrize("width", [None, 3])
def test_rotated_problem_rotates_the_optimum(width):
    """A' = Q A Q^T, B' = Q B Q^T (general path) gives G' = Q G Q^T (diagonal path)."""
    rng = np.random.default_rng(RNG_SEED)
    a, b = _diagonal_problem()
    q = random_orthogonal(rng, a.size)
    a_rot, b_rot = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    gram = optimal_gram(a, b, width)
    np.testing.assert_allclose(optimal_gram(a_rot, b_rot, width), q @ gram @ q.T, atol=EXACT)
    assert optimal_loss(a_rot, b_rot, width) == pytest.approx(optimal_loss(a, b, width), abs=EXACT)
    np.testing.assert_allclose(
        effective_rank(a_rot, b_rot, 3, width), effective_rank(a, b, 3, width), rtol=EXACT
    )
    # Layer-l weight of direction e_i: sqrt(sum_k Q_ik^2 g_k^(l/L)) with g = diag(G).
    depth = 3
    g = np.diag(gram)
    powers = g[None, :] ** (np.arange(1, depth + 1)[:, None] / depth)
    expected = np.sqrt(powers @ (q**2).T)
    np.testing.assert_allclose(layer_weights(a_rot, b_rot, depth, width), expected, atol=EXACT)


@pytest.mark.parametrize("width", [None, 2, 4])
def test_optimal_gram_is_a_stationary_minimum(width):
    rng = np.random.default_rng(RNG_SEED + 1)
    d = 6
    a, b = random_general_moments(rng, d)
    gram = optimal_gram(a, b, width)
    eig, vec = np.linalg.eigh(gram)
    rank = int(np.sum(eig > EXACT))
    assert rank <= (width or d)
    # A W with W^T W = G and as many rows as the width (W = diag(sqrt(mu)) V^T on the top pairs).
    # (Eigenvalues of G below EXACT are rounding of exact zeros: they get zero rows.)
    rows = width or d
    top = eig[::-1][:rows]
    w = (vec[:, ::-1][:, :rows] * np.sqrt(np.where(top > EXACT, top, 0.0))).T
    np.testing.assert_allclose(w.T @ w, gram, atol=EXACT)
    np.testing.assert_allclose(_loss_gradient(w, a, b), 0.0, atol=EXACT)
    best = optimal_loss(a, b, width)
    assert spectral_loss(w, a, b) == pytest.approx(best, abs=EXACT)
    # No random perturbation lowers the loss (local check), at two scales.
    for scale in (1e-3, 1e-1):
        perturbations = scale * rng.standard_normal((200, rows, d))
        losses = [spectral_loss(w + e, a, b) for e in perturbations]
        assert min(losses) >= best - EXACT
    # Random rank-constrained maps never beat it either (global sanity check).
    random_maps = rng.standard_normal((200, rows, d)) * 0.5
    assert min(spectral_loss(m, a, b) for m in random_maps) >= best


def test_optimal_loss_equals_top_generalized_eigenvalues():
    """Eigenvalues of C = B^(-1/2) A B^(-1/2) are those of B^(-1) A (a different computation)."""
    rng = np.random.default_rng(RNG_SEED + 2)
    a, b = random_general_moments(rng, 6)
    generalized = np.sort(np.linalg.eigvals(np.linalg.solve(b, a)).real)[::-1]
    for width in (None, 1, 2, 3, 6):
        kept = generalized[: width or 6]
        kept = kept[kept > 0]
        assert optimal_loss(a, b, width) == pytest.approx(-np.sum(kept**2), abs=EXACT)
        w = psd_sqrt(optimal_gram(a, b, width))
        assert spectral_loss(w, a, b) == pytest.approx(-np.sum(kept**2), abs=EXACT)


def test_diagonal_optimal_loss_is_minus_sum_of_squared_ratios():
    a, b = _diagonal_problem()
    r = a / b
    assert optimal_loss(a, b) == pytest.approx(-np.sum(r[r > 0] ** 2), rel=EXACT)
    assert optimal_loss(a, b, width=1) == pytest.approx(-np.max(r) ** 2, rel=EXACT)


def test_spectral_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(RNG_SEED + 3)
    a, b = random_general_moments(rng, 4)
    w = rng.standard_normal((3, 4))
    step = 1e-6
    numeric = np.zeros_like(w)
    for index in np.ndindex(w.shape):
        e = np.zeros_like(w)
        e[index] = step
        numeric[index] = (spectral_loss(w + e, a, b) - spectral_loss(w - e, a, b)) / (2 * step)
    # Central differences: O(step^2) truncation, O(1e-16 / step) rounding.
    np.testing.assert_allclose(numeric, _loss_gradient(w, a, b), rtol=1e-7, atol=1e-7)


def test_narrow_width_keeps_only_top_ratios_and_never_negative_ones():
    a = np.array([0.9, -0.5, 0.3, 0.6, 0.0, 0.1])
    b = np.ones(6)
    assert learned_features(a, b, width=2).tolist() == [True, False, False, True, False, False]
    unconstrained = [True, False, True, True, False, True]
    assert learned_features(a, b).tolist() == unconstrained
    assert learned_features(a, b, width=6).tolist() == unconstrained
    assert learned_features(a, b, width=100).tolist() == unconstrained
    # Negative and zero ratios stay unlearned however wide: weight exactly 0 at every layer.
    assert np.all(layer_weights(a, b, 3, width=6)[:, [1, 4]] == 0.0)
    # The narrow optimum has rank p.
    assert np.linalg.matrix_rank(optimal_gram(a, b, width=2)) == 2


def test_tie_at_the_width_keeps_the_lower_index():
    a = np.array([0.3, 0.5, 0.5, 0.1])
    assert learned_features(a, np.ones(4), width=2).tolist() == [False, True, True, False]
    assert learned_features(a, np.ones(4), width=1).tolist() == [False, True, False, False]


def test_learned_features_requires_diagonal_moments():
    a, b = random_general_moments(np.random.default_rng(RNG_SEED), 3)
    with pytest.raises(ValueError, match="pos_cov"):
        learned_features(a, b)


def test_effective_rank_diagonal_closed_form():
    """Layer-l covariance eigenvalues are b_i (a_i / b_i^2)^(l/L) on learned features."""
    a, b = _diagonal_problem()
    depth = 3
    learned = a / b > 0
    for layer, measured in enumerate(effective_rank(a, b, depth), start=1):
        lam = b[learned] * (a[learned] / b[learned] ** 2) ** (layer / depth)
        p = lam / lam.sum()
        assert measured == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=EXACT)


def test_entropy_effective_rank_basic_values():
    assert entropy_effective_rank([2.0, 2.0, 2.0, 0.0]) == pytest.approx(3.0, rel=EXACT)
    assert entropy_effective_rank([5.0, 0.0, 0.0]) == pytest.approx(1.0, rel=EXACT)
    assert entropy_effective_rank([0.0, 0.0]) == 0.0
    stacked = entropy_effective_rank(np.array([[1.0, 1.0], [1.0, 0.0]]))
    np.testing.assert_allclose(stacked, [2.0, 1.0], rtol=EXACT)
    # Between 1 and the number of nonzero eigenvalues; rounding negatives are ignored.
    assert 1.0 < entropy_effective_rank([1.0, 0.1, -1e-12]) < 2.0
    with pytest.raises(ValueError, match="eigenvalues"):
        entropy_effective_rank([1.0, -0.5])


# --------------------------------------------------------------------------- dynamics


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
@pytest.mark.parametrize("init_scale", [1e-3, 0.5, 1.5])
def test_depth1_trajectory_is_the_logistic(weight_decay, init_scale):
    a = np.array([0.5, 0.2, -0.1, 0.0])
    b = np.array([1.0, 0.5, 0.3, 1.0])
    times = np.concatenate([[0.0], np.geomspace(1e-3, 50.0, 40)])
    sigma = feature_trajectories(a, b, 1, init_scale, times, weight_decay)[:, 0, :]
    for i in range(a.size):
        expected = _logistic_v(times, a[i], b[i], init_scale**2, weight_decay)
        np.testing.assert_allclose(sigma[:, i] ** 2, expected, rtol=TRAJECTORY, atol=0)


@pytest.mark.parametrize("init_scale", [1e-4, 1e-2, 0.3, 1.2])
@pytest.mark.parametrize("a, b", [(0.5, 1.0), (0.04, 0.3), (-0.2, 0.6), (0.0, 0.8)])
def test_depth2_trajectory_is_the_elementary_closed_form(init_scale, a, b):
    u0 = init_scale**2
    u_star = np.sqrt(a) / b if a > 0 else 0.0
    # Points strictly between the start and the fixed point (growth, decay from above, decay to 0).
    end = u_star if a > 0 else u0 * 1e-3
    u = np.linspace(u0, end, 12)[1:-1]
    if a == 0.0:  # du/dt = -8 b^2 u^4: t = (u^-3 - u0^-3) / (24 b^2)
        times = (u**-3 - u0**-3) / (24 * b**2)
    else:
        times = _depth2_time(u, a, b, u0)
    weights = feature_trajectories([a], [b], 2, init_scale, times)
    np.testing.assert_allclose(weights[:, 1, 0], weights[:, 0, 0] ** 2, rtol=EXACT)
    du_dt = 8 * u**2 * (a - b**2 * u**2)
    time_shift = np.abs(weights[:, 1, 0] - u) / (np.abs(du_dt) * times)
    assert np.max(time_shift) < TIME_SHIFT
    if init_scale >= 0.3:
        np.testing.assert_allclose(weights[:, 1, 0], u, rtol=TRAJECTORY)


@pytest.mark.parametrize(
    "depth, weight_decay, init_scale",
    [(3, 0.0, 0.2), (3, 0.05, 0.6), (3, 0.05, 0.3), (4, 0.02, 1.3), (2, 0.1, 0.8)],
)
def test_trajectory_satisfies_the_ode(depth, weight_decay, init_scale):
    a = np.array([0.5, 0.3, -0.1, 0.2])
    b = np.array([1.0, 0.6, 0.3, 0.5])
    times = np.linspace(0.5, 40.0, 30)
    step = 1e-3
    offsets = np.array([-2, -1, 0, 1, 2]) * step
    shifted = (times[None, :] + offsets[:, None]).ravel()
    sigma = feature_trajectories(a, b, depth, init_scale, shifted, weight_decay)[:, 0, :]
    back2, back1, now, ahead1, ahead2 = sigma.reshape(5, times.size, a.size)
    derivative = (8 * (ahead1 - back1) - (ahead2 - back2)) / (12 * step)
    expected = _flow_rhs(now, a, b, depth, weight_decay)
    scale = np.max(np.abs(expected), axis=0) + 1e-12
    assert np.max(np.abs(derivative - expected) / scale) < FINITE_DIFFERENCE
    # Layer l carries sigma^l.
    weights = feature_trajectories(a, b, depth, init_scale, times, weight_decay)
    np.testing.assert_allclose(weights[:, -1, :], weights[:, 0, :] ** depth, rtol=EXACT)


def test_trajectory_is_computed_per_feature():
    """Vectorized over features equals one feature at a time (features are independent)."""
    a = np.array([0.5, 0.3, -0.1, 0.2, 0.0])
    b = np.array([1.0, 0.6, 0.3, 0.5, 0.4])
    times = np.geomspace(1e-2, 1e4, 25)
    joint = feature_trajectories(a, b, 3, 0.4, times, 0.05)
    for i in range(a.size):
        single = feature_trajectories(a[i : i + 1], b[i : i + 1], 3, 0.4, times, 0.05)
        np.testing.assert_allclose(joint[:, :, i : i + 1], single, rtol=ROUNDING, atol=0)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("init_scale", [1e-2, 0.3, 0.6, 1.4])
def test_long_time_limit_is_the_basin_fixed_point(weight_decay, init_scale):
    a = np.array([0.5, 0.3, -0.1, 0.2, 0.0])
    b = np.array([1.0, 0.6, 0.3, 0.5, 0.4])
    depth = 3
    limit = feature_trajectories(a, b, depth, init_scale, [1e300], weight_decay)[0]
    np.testing.assert_allclose(
        limit, basin_weights(a, b, depth, weight_decay, init_scale), rtol=EXACT, atol=0
    )
    if weight_decay == 0.0:
        np.testing.assert_allclose(limit, layer_weights(a, b, depth), rtol=EXACT, atol=0)
    # Monotone approach: the distance to the limit never grows along the trajectory.
    times = np.geomspace(1e-2, 1e8, 60)
    sigma = feature_trajectories(a, b, depth, init_scale, times, weight_decay)[:, 0, :]
    distance = np.abs(sigma - limit[0])
    assert np.all(np.diff(distance, axis=0) <= 1e-15)


def test_plateau_time_depth1_is_exact_half_time():
    a, b = np.array([0.5, 0.2]), np.array([1.0, 0.5])
    eps = 1e-3
    half = 0.5 * np.sqrt(a) / b  # sigma*/2, sigma* = sqrt(a) / b for L = 1
    t_half = plateau_time(a, b, 1, eps)
    for i in range(2):
        sigma = feature_trajectories(a[i : i + 1], b[i : i + 1], 1, eps, t_half[i : i + 1])
        assert sigma[0, 0, 0] == pytest.approx(half[i], rel=TRAJECTORY)


def test_plateau_time_depth2_relative_error_shrinks_like_eps_squared():
    a, b = 0.3, 0.7
    u_star = np.sqrt(a) / b
    errors = []
    for eps in (1e-1, 5e-2, 2.5e-2, 1.25e-2):
        t_half = _depth2_time(u_star / 4, a, b, eps**2)  # sigma = sigma*/2  <=>  u = u*/4
        predicted = plateau_time([a], [b], 2, eps)[0]
        assert predicted == pytest.approx(1.0 / (8 * a * eps**2), rel=EXACT)
        errors.append(abs(t_half - predicted) / t_half)
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    # Relative error O(eps^(2L-2)) = O(eps^2): halving eps divides it by ~4.
    np.testing.assert_allclose(ratios, 4.0, rtol=0.05)


def test_plateau_time_depth3_rate_and_quadrature_agreement():
    a, b, depth = 0.4, 0.9, 3
    u_star = (a / b**2) ** (1.0 / depth)
    sigma_half = np.sqrt(u_star) / 2
    errors = []
    for eps in (0.1, 0.05, 0.025):
        t_half = _trapezoid_time(u_star / 4, a, b, depth, eps**2)
        sigma = feature_trajectories([a], [b], depth, eps, [t_half])[0, 0, 0]
        # Compared as a time shift (see TIME_SHIFT): t_half ~ 1e5 makes sigma ill-conditioned.
        slope = _flow_rhs(sigma_half, a, b, depth, 0.0)
        assert abs(sigma - sigma_half) / (slope * t_half) < TRAPEZOID
        errors.append(abs(t_half - plateau_time([a], [b], depth, eps)[0]) / t_half)
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    # Relative error O(eps^4) for L = 3.
    np.testing.assert_allclose(ratios, 16.0, rtol=0.05)


def test_plateau_time_is_infinite_without_signal():
    assert np.all(np.isinf(plateau_time([0.0, -0.2], [1.0, 1.0], 2, 1e-2)))
    assert np.all(np.isinf(plateau_time([0.0, -0.2], [1.0, 1.0], 1, 1e-2)))


# --------------------------------------------------------------------------- weight decay


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("fraction", [1e-6, 0.1, 0.5, 0.9, 0.999])
def test_roots_solve_the_fixed_point_equation_with_the_right_stability(depth, fraction):
    a = np.array([0.5, 0.2, 0.35])
    b = np.array([1.0, 0.5, 0.6])
    wd = fraction * np.min(survival_threshold(a, b, depth))
    roots = fixed_points(a, b, depth, wd)
    assert isinstance(roots, FixedPoints)
    for sigma in (roots.stable, roots.unstable) if depth > 1 else (roots.stable,):
        v = sigma**2
        residual = 4 * v ** (depth - 1) * (a - b**2 * v**depth) - wd
        assert np.max(np.abs(residual) / (4 * a)) < ROOT
    # Stability from the sign of dF/dsigma (central difference of the flow's right-hand side).
    h = 1e-7

    def slope(s):
        return (_flow_rhs(s + h, a, b, depth, wd) - _flow_rhs(s - h, a, b, depth, wd)) / (2 * h)

    assert np.all(slope(roots.stable) < 0)
    if depth > 1:
        assert np.all(roots.unstable < roots.stable)
        assert np.all(slope(roots.unstable) > 0)
    else:
        assert np.all(roots.unstable == 0.0)  # zero is the unstable fixed point for L = 1


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_survival_threshold_is_where_the_roots_disappear(depth):
    a = np.array([0.5, 0.2, -0.1, 0.0])
    b = np.array([1.0, 0.5, 0.3, 1.0])
    threshold = survival_threshold(a, b, depth)
    assert np.all(threshold[2:] == 0.0)
    below = fixed_points(a[:2], b[:2], depth, 0.0).stable  # exists for every wd < threshold
    assert np.all(np.isfinite(below))
    for i in range(2):
        ai, bi = a[i : i + 1], b[i : i + 1]
        assert np.isfinite(fixed_points(ai, bi, depth, threshold[i] * (1 - 1e-6)).stable[0])
        assert np.isnan(fixed_points(ai, bi, depth, threshold[i] * (1 + 1e-6)).stable[0])
    # Independent maximum of g(v) = 4 v^(L-1) (a - b^2 v^L) on a dense grid.
    v = np.linspace(0.0, 2.0, 400_001)[:, None]
    g_max = np.max(4 * v ** (depth - 1) * (a[:2] - b[:2] ** 2 * v**depth), axis=0)
    np.testing.assert_allclose(threshold[:2], g_max, rtol=1e-8)


def _loss_at_stable_root(a, b, depth, wd):
    sigma = fixed_points([a], [b], depth, wd).stable[0]
    s = sigma**depth
    return -2 * a * s**2 + b**2 * s**4 + 0.5 * wd * depth * sigma**2


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_global_threshold_by_bisection_and_ordering(depth):
    a, b = 0.4, 0.8
    survival = survival_threshold([a], [b], depth)[0]
    threshold = global_threshold([a], [b], depth)[0]
    if depth == 1:
        assert threshold == pytest.approx(survival, rel=EXACT)
        return
    assert 0 < threshold < survival
    # Test-local bisection on wd of "loss at the stable root = loss at zero = 0".
    lo, hi = 0.0, survival * (1 - 1e-9)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _loss_at_stable_root(a, b, depth, mid) < 0:
            lo = mid
        else:
            hi = mid
    assert threshold == pytest.approx(0.5 * (lo + hi), rel=1e-9)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_global_minimum_matches_brute_force_grid(depth):
    a = np.array([0.5, 0.2, 0.35, -0.1])
    b = np.array([1.0, 0.5, 0.6, 0.3])
    sigma_grid = np.linspace(0.0, 1.5, 300_001)[:, None]
    for wd in (0.0, 0.05, 0.15, 0.3, 1.0):
        s = sigma_grid**depth
        loss = -2 * a * s**2 + b**2 * s**4 + 0.5 * wd * depth * sigma_grid**2
        brute = sigma_grid[np.argmin(loss, axis=0), 0]
        predicted = global_minimum_weights(a, b, depth, wd)
        # Grid spacing 5e-6; the minimum is quadratic so argmin is within a few spacings.
        np.testing.assert_allclose(predicted[0], brute, atol=1e-4)
        np.testing.assert_allclose(predicted[-1], predicted[0] ** depth, rtol=EXACT)


@pytest.mark.parametrize("depth", [2, 3])
def test_basin_picks_stable_root_above_the_unstable_one(depth):
    a, b = np.array([0.5, 0.3]), np.array([1.0, 0.6])
    wd = 0.5 * survival_threshold(a, b, depth).min()
    roots = fixed_points(a, b, depth, wd)
    above = basin_weights(a, b, depth, wd, init_scale=float(roots.unstable.max() * 1.01))
    below = basin_weights(a, b, depth, wd, init_scale=float(roots.unstable.min() * 0.99))
    np.testing.assert_allclose(above[0], roots.stable, rtol=EXACT)
    assert np.all(below == 0.0)
    high = basin_weights(a, b, depth, wd, init_scale=5.0)  # above the stable root: decays to it
    np.testing.assert_allclose(high[0], roots.stable, rtol=EXACT)
    # Between the global and the survival thresholds a large init keeps a nonzero feature even
    # though zero is the global minimum.
    between = 0.5 * (global_threshold(a, b, depth) + survival_threshold(a, b, depth))
    for i in range(a.size):
        ai, bi = a[i : i + 1], b[i : i + 1]
        assert np.all(global_minimum_weights(ai, bi, depth, between[i]) == 0.0)
        assert np.all(basin_weights(ai, bi, depth, between[i], init_scale=1.0) > 0.0)


def test_depth1_basin_survives_from_any_init():
    a, b = np.array([0.5, 0.3]), np.array([1.0, 0.6])
    wd = 0.5
    expected = np.sqrt((a - wd / 4) / b**2)
    np.testing.assert_allclose(basin_weights(a, b, 1, wd, 1e-8)[0], expected, rtol=EXACT)
    assert np.all(basin_weights(a, b, 1, 4.0 * a.max(), 1.0) == 0.0)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_zero_weight_decay_reduces_to_linear_theory(depth):
    a, b = _diagonal_problem()
    expected = layer_weights(a, b, depth)
    np.testing.assert_allclose(global_minimum_weights(a, b, depth, 0.0), expected, rtol=EXACT)
    np.testing.assert_allclose(basin_weights(a, b, depth, 0.0, 1e-6), expected, rtol=EXACT)
    stable = fixed_points(a, b, depth, 0.0).stable
    np.testing.assert_allclose(np.nan_to_num(stable) ** depth, expected[-1], rtol=EXACT)


# --------------------------------------------------------------------------- bad input

_A, _B = np.array([0.4, 0.1]), np.array([1.0, 0.5])

_CALLS = {
    "optimal_gram": lambda **k: optimal_gram(k["a"], k["b"], k["width"]),
    "layer_weights": lambda **k: layer_weights(k["a"], k["b"], k["depth"], k["width"]),
    "effective_rank": lambda **k: effective_rank(k["a"], k["b"], k["depth"], k["width"]),
    "feature_trajectories": lambda **k: feature_trajectories(
        k["a"], k["b"], k["depth"], k["init_scale"], k["times"], k["weight_decay"]
    ),
    "plateau_time": lambda **k: plateau_time(k["a"], k["b"], k["depth"], k["init_scale"]),
    "fixed_points": lambda **k: fixed_points(k["a"], k["b"], k["depth"], k["weight_decay"]),
    "basin_weights": lambda **k: basin_weights(
        k["a"], k["b"], k["depth"], k["weight_decay"], k["init_scale"]
    ),
    "global_minimum_weights": lambda **k: global_minimum_weights(
        k["a"], k["b"], k["depth"], k["weight_decay"]
    ),
}
_GOOD = dict(a=_A, b=_B, depth=2, width=None, init_scale=0.1, times=[0.0, 1.0], weight_decay=0.0)
_USES = {  # arguments that only some functions take
    "depth": [name for name in _CALLS if name != "optimal_gram"],
    "width": ["optimal_gram", "layer_weights", "effective_rank"],
    "init_scale": ["feature_trajectories", "plateau_time", "basin_weights"],
    "weight_decay": [
        "feature_trajectories", "fixed_points", "basin_weights", "global_minimum_weights"
    ],
    "times": ["feature_trajectories"],
}
_BAD = [
    ("a", [0.4, 0.1, 0.2], "pos_cov"),  # wrong length
    ("b", [1.0, -0.5], "second_moment"),  # negative second moment
    ("a", [0.4, 0.7], "pos_cov"),  # |a| > b
    ("a", [np.nan, 0.1], "pos_cov"),
    ("b", [1.0, np.inf], "second_moment"),
    ("depth", 0, "depth"),
    ("depth", 2.0, "depth"),
    ("width", 0, "width"),
    ("init_scale", 0.0, "init_scale"),
    ("init_scale", -1.0, "init_scale"),
    ("init_scale", np.inf, "init_scale"),
    ("weight_decay", -0.1, "weight_decay"),
    ("weight_decay", np.nan, "weight_decay"),
    ("times", [0.0, -1.0], "times"),
    ("times", [0.0, np.inf], "times"),
]
_BAD_CASES = [
    (function, field, value, name)
    for function in sorted(_CALLS)
    for field, value, name in _BAD
    if field not in _USES or function in _USES[field]
]


@pytest.mark.parametrize("function, field, value, name", _BAD_CASES)
def test_bad_input_raises_naming_the_argument(function, field, value, name):
    _CALLS[function](**_GOOD)  # the unmodified call is valid
    kwargs = dict(_GOOD, **{field: value})
    with pytest.raises(ValueError, match=name):
        _CALLS[function](**kwargs)


@pytest.mark.parametrize(
    "function",
    [
        lambda a, b: feature_trajectories(a, b, 2, 0.1, [1.0]),
        lambda a, b: plateau_time(a, b, 2, 0.1),
        lambda a, b: fixed_points(a, b, 2, 0.1),
        lambda a, b: survival_threshold(a, b, 2),
        lambda a, b: global_threshold(a, b, 2),
    ],
)
def test_dynamics_and_weight_decay_require_diagonal_moments(function):
    a, b = random_general_moments(np.random.default_rng(RNG_SEED), 3)
    with pytest.raises(ValueError, match="pos_cov"):
        function(a, b)


def test_spectral_loss_rejects_a_map_of_the_wrong_width():
    with pytest.raises(ValueError, match="end_to_end"):
        spectral_loss(np.ones((2, 3)), _A, _B)


# --------------------------------------------------------------------------- layer Grams and module layout


@pytest.mark.parametrize("width", [None, 2])
def test_layer_grams_are_gram_powers_whose_diagonals_are_the_layer_weights(width):
    a, b = random_general_moments(np.random.default_rng(RNG_SEED), 4)
    depth = 3
    grams = layer_grams(a, b, depth, width)
    assert grams.shape == (depth, 4, 4)
    np.testing.assert_allclose(grams[-1], optimal_gram(a, b, width), atol=EXACT)
    np.testing.assert_allclose(grams[0] @ grams[1], grams[-1], atol=EXACT)  # G^(1/3) G^(2/3) = G
    np.testing.assert_allclose(np.sqrt(np.clip(np.einsum("lii->li", grams), 0.0, None)),
                               layer_weights(a, b, depth, width), atol=EXACT)


def test_no_theory_module_imports_another_modules_private_name():
    import ast
    from pathlib import Path

    import theory

    offenders = []
    for path in sorted(Path(theory.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id.endswith(
                    "_theory"):
                names = [node.attr]
            offenders += [f"{path.name}:{node.lineno} {name}" for name in names
                          if name.startswith("_") and not name.startswith("__")]
    assert offenders == []
