"""Downstream probes: closed forms (theory.downstream), the probe (simulations.probe), trained nets.

Kinds of check: exact (closed form vs the population ridge formula, vs public weight-decay
functions, probe vs a NumPy reference, vmap vs loop), agreement (trained network + finite-sample
probe vs closed form), rate (training-sample error vs n), and the derived pre-vs-post condition vs
population risks (dense grid, near the boundary, every regime, every ridge).

Error model of the measured probe error (sizes the tolerances below):
- test-set noise: the MSE is a mean of n_test squared Gaussian residuals, so its std is
  sqrt(2) MSE / sqrt(n_test) <= 0.0045 at the default n_test = 100,000;
- training-sample error: with v* the population ridge solution and v_hat = v* + delta,
  delta = O(n^(-1/2)), the test error is R(v_hat) = R(v*) + grad R(v*) . delta + O(|delta|^2).
  The ridge solution does not minimize R (grad R(v*) = -2 ridge v* != 0), and the estimated
  normalization scale acts like an O(n^(-1/2)) perturbation of the ridge, so the error
  fluctuates at first order: mean |error| ~ n^(-1/2), not n^(-1) (ratio 2, not 4, per 4x n).
  At ridge = 0 the first-order term vanishes and, the target being an exact linear function of
  the representation, the error is exactly zero.
"""

import functools
import subprocess
import sys
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from simulations import probe
from simulations.__main__ import main as cli_main
from simulations.experiments import downstream as ds
from simulations.experiments import weighting
from theory import downstream as theory
from theory import linear as linear_theory
from theory import weight_decay as wd_theory

ROOT = Path(__file__).resolve().parent.parent

# Exact algebra in float64 (closed forms vs eigendecomposition-based ridge solves).
EXACT = 1e-10
# The same root finder called through two code paths: last-bit rounding.
ROUNDING = 1e-12
# The requirement for the measured probe error at n_train = 20,000 (observed <= 0.003:
# training-sample error ~0.0015 plus test noise <= 0.0045 at n_test = 100,000).
AGREEMENT_20K = 0.02
# Measured (fresh test set) vs the fitted probe's exact risk: pure test-set noise; 6 standard
# deviations of sqrt(2) MSE / sqrt(n_test), plus a floor for MSE ~ 0.
TEST_NOISE_SIGMAS = 6.0
# Rate: the log-log slope of mean |error| against n over 64 seeds (each mean has ~10% relative
# noise, so the slope fitted over a 16x range has std ~0.05); n^(-1/2) predicts -0.5, an
# n^(-1) error would give -1.
RATE_SLOPE, RATE_SLOPE_TOL = -0.5, 0.2
# Monte Carlo of the general (non-diagonal) population ridge risk: the fitted probe's exact risk
# at n = 200,000 has training-sample error ~ 0.3 / sqrt(n) < 1e-3; 3e-3 allows 4 sigma.
MONTE_CARLO_GENERAL = 3e-3
# Ridge 0 with an exactly linear target: least squares reproduces it up to float64 rounding.
EXACT_FIT = 1e-12

# Three features; the target is feature 0, the others fix the threshold
# sum_(k != 0) b_k w_k^2 / sum_(k != 0) b_k w_k = 1.047 on the target's post weight sqrt(r_0 / b_0).
OTHERS_A, OTHERS_B = (0.9, 0.5), (1.0, 0.6)
REGIMES = {
    # name: (a_0, b_0), expected winner
    "small_invariance": ((0.1, 1.0), "pre"),  # r_0 = 0.1: augmentation disrupts the target
    "large_strength": ((9.0, 10.0), "pre"),  # r_0 = 0.9 but b_0 = 10: w_0 = 0.3
    "post_wins": ((0.3, 0.3), "post"),  # r_0 = 1, b_0 = 0.3: w_0 = 1.83 > 1.047
}
RIDGE = 0.1
FAST = dict(init_scale=0.3)  # larger balanced init: shorter plateaus, same end point


def _moments(a0, b0):
    return np.array((a0, *OTHERS_A)), np.array((b0, *OTHERS_B))


def _run(**overrides):
    return ds.run_downstream(ds.DownstreamConfig(**{**FAST, **overrides}))


# --------------------------------------------------------------------------- closed forms


def test_probe_risk_equals_population_ridge_formula():
    """(ridge / (q_j + ridge))^2 equals the general ridge solve on the normalized covariance."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        d = int(rng.integers(2, 6))
        w = rng.uniform(0.0, 2.0, d)
        b_ds = rng.uniform(0.1, 3.0, d)
        j, ridge = int(rng.integers(d)), float(rng.choice([0.0, 1e-3, 0.1, 2.0]))
        total = np.sum(w**2 * b_ds)
        C = np.diag(w**2 * b_ds) / total
        c = np.zeros(d)
        c[j] = w[j] * np.sqrt(b_ds[j]) / np.sqrt(total)
        expected = theory.population_ridge_risk(C, c, 1.0, ridge)
        assert abs(theory.probe_risk(w, b_ds, j, ridge) - expected) < EXACT
        assert abs(theory.general_probe_risk(np.diag(w**2), b_ds, j, ridge) - expected) < EXACT
        assert abs(theory.decodability(w, b_ds, j, ridge) - (1 - expected)) < EXACT


def test_probe_risk_edge_cases():
    b = np.ones(3)
    assert theory.probe_risk(np.zeros(3), b, 0, 0.1) == 1.0  # empty layer decodes nothing
    assert theory.probe_risk(np.array([0.0, 1.0, 1.0]), b, 0, 0.1) == 1.0  # dead target
    assert theory.probe_risk(np.array([0.5, 0.0, 0.0]), b, 0, 0.1) == pytest.approx((0.1 / 1.1) ** 2)
    assert theory.probe_risk(np.array([0.5, 1.0, 1.0]), b, 0, 0.0) == 0.0  # ridge 0: exact decoding
    shares = theory.variance_shares(np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]), b)
    assert np.allclose(shares, [[0.2, 0.8, 0.0], [0.0, 0.0, 0.0]], atol=EXACT)


def test_general_probe_risk_rotation_and_diagonal_reduction():
    """general_layer_risks with diagonal (A, B) reproduces layer_risks; a general case matches the
    risk computed from an explicit P_l = R G^(l/2L) with a random rotation R."""
    a, b = np.array([0.9, 0.5, 0.8, 0.1]), np.array([1.0, 0.6, 2.0, 0.5])
    b_ds = np.array([1.5, 0.2, 1.0, 3.0])
    for target in range(4):
        general = theory.general_layer_risks(a, b, 3, b_ds, target, RIDGE)
        diagonal = theory.layer_risks(a, b, target, RIDGE, downstream_second_moment=b_ds, depth=3)
        assert np.max(np.abs(general - diagonal)) < EXACT


def test_general_probe_risk_matches_monte_carlo_probe():
    """Non-diagonal Gram and downstream covariance: closed form vs the finite-sample probe's exact
    risk (affine_predictor_risk) at n = 200,000."""
    rng = np.random.default_rng(1)
    d, n = 4, 200_000
    P = rng.standard_normal((3, d))  # a rank-3 layer map
    S = rng.standard_normal((d, d))
    sigma = S @ S.T / d + 0.2 * np.eye(d)
    u = rng.standard_normal(d)
    u = u / np.sqrt(u @ sigma @ u)  # y = u . x has variance 1
    predicted = theory.general_probe_risk(P.T @ P, sigma, u, RIDGE)
    root = np.linalg.cholesky(sigma)
    key_train, key_test = jax.random.split(jax.random.PRNGKey(3))
    x = jax.random.normal(key_train, (n, d)) @ root.T
    x_test = jax.random.normal(key_test, (1000, d)) @ root.T
    mean, scale = probe.representation_normalization(x @ P.T)
    fit = probe.ridge_probe((x @ P.T - mean[None, :]) / scale, x @ u, (x_test @ P.T - mean[None, :]) / scale,
                            x_test @ u, RIDGE)
    risk = probe.affine_predictor_risk(P.T @ fit.weights / scale, fit.intercept - fit.weights @ mean / scale, u, sigma)
    assert abs(float(risk) - predicted) < MONTE_CARLO_GENERAL


def test_fast_weight_decay_path_equals_public_functions():
    """feature_layer_weights' vectorized roots equal basin_weights / global_minimum_weights."""
    rng = np.random.default_rng(2)
    b = rng.uniform(0.3, 2.0, 40)
    a = np.clip(rng.uniform(-0.3, 1.0, 40), -b, b)
    for depth in (1, 2, 3):
        for wd in (0.0, 0.01, 0.1, 0.4):
            for init in (None, 0.05, 0.5, 2.0):
                ours = theory.feature_layer_weights(a, b, depth, weight_decay=wd, init_scale=init, escape=False)
                if wd == 0:
                    reference = np.vstack([np.ones(40), linear_theory.layer_weights(a, b, depth)])
                elif init is None:
                    reference = np.vstack([np.ones(40), wd_theory.global_minimum_weights(a, b, depth, wd)])
                else:
                    reference = np.vstack([np.ones(40), wd_theory.basin_weights(a, b, depth, wd, init)])
                assert np.max(np.abs(ours - reference)) < ROUNDING


def test_weights_follow_the_escape_from_basin_saddles():
    """With an init_scale, feature_layer_weights (vectorized over a grid) equals
    theory.weight_decay.stable_end_weights point by point, and differs from the basin exactly at
    the grid points where the basin is a saddle of the full network."""
    rng = np.random.default_rng(5)
    points, d = 60, 4
    b = rng.uniform(0.3, 2.0, (points, d))
    a = b * rng.uniform(0.05, 1.0, (points, d))
    wd = rng.uniform(0.005, 0.2, points)
    escaped = 0
    for depth, init in ((2, 0.1), (2, 0.6), (3, 0.4)):
        ours = theory.feature_layer_weights(a, b, depth, weight_decay=wd, init_scale=init)[-1]
        basin = theory.feature_layer_weights(a, b, depth, weight_decay=wd, init_scale=init, escape=False)[-1]
        saddle = theory.basin_is_saddle(a, b, basin)
        escaped += int(saddle.sum())
        for i in range(points):
            reference = wd_theory.stable_end_weights(a[i], b[i], depth, wd[i], init)[-1]
            assert np.max(np.abs(ours[i] - reference)) < ROUNDING
        assert np.array_equal(np.any(np.abs(ours - basin) > ROUNDING, axis=-1), saddle)
        assert not np.any(theory.basin_is_saddle(a, b, ours))
    assert escaped >= 5  # the draw must exercise the escape path (10 of 180 points do)


# --------------------------------------------------------------------------- the derived condition


def _risk_says_pre_wins(w, b_ds, j, ridge, depth, pre, post):
    """Ground truth from the population risks: layer `pre` strictly better than `post`."""
    layers = np.abs(w)[None] ** (np.array([pre, post]) / depth).reshape(2, *([1] * w.ndim))
    risks = theory.probe_risk(layers, b_ds, j, ridge)
    return risks[0] < risks[1], risks[1] - risks[0]


@pytest.mark.parametrize("ridge", [1e-3, 0.1, 1.0, 10.0])
def test_condition_matches_population_risks_on_dense_grid(ridge):
    """Depth 2, pre = 1, post = 2: pre wins iff w_j < sum_k b_ds_k w_k^2 / sum_k b_ds_k w_k, for
    every ridge; checked on a dense grid of w_j, including relative distances 1e-2..1e-9 from
    the boundary (population values: Monte Carlo noise would swamp gaps of that size)."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        d = int(rng.integers(2, 7))
        others = rng.uniform(0.05, 2.0, d - 1)
        b_ds = rng.uniform(0.05, 3.0, d)
        threshold = np.sum(b_ds[1:] * others**2) / np.sum(b_ds[1:] * others)
        offsets = np.concatenate([np.linspace(-1, 2, 3001), *(s * 10.0 ** -np.arange(2, 10) for s in (1, -1))])
        w_j = threshold * (1 + offsets)
        w_j = w_j[(w_j > 0) & (np.abs(w_j - threshold) > 0)]
        w = np.concatenate([w_j[:, None], np.broadcast_to(others, (w_j.size, d - 1))], axis=1)
        truth, gap = _risk_says_pre_wins(w, b_ds, 0, ridge, 2, 1, 2)
        assert np.all(np.abs(gap) > 0)  # the grid resolves the sign everywhere, even at 1e-9
        assert np.array_equal(theory.pre_beats_post(w, b_ds, 0), truth)
        assert np.array_equal(truth, w_j < threshold)
        # The statement with the target included in both sums is the same condition.
        full = np.sum(b_ds * w**2, axis=1) / np.sum(b_ds * w, axis=1)
        assert np.array_equal(truth, w_j < full)
        assert theory.pre_advantage_threshold(w[0], b_ds, 0) == pytest.approx(threshold, rel=EXACT)


def test_condition_any_depth_and_layer_pair_on_random_configurations():
    """Layer l beats layer m iff w_j^(2l/L) S_m > w_j^(2m/L) S_l: 20,000 random configurations,
    every (l, m) pair of depths 1..4 (layer 0 = raw input), dead features and dead targets."""
    rng = np.random.default_rng(4)
    n, d = 20_000, 4
    w = rng.uniform(0.0, 2.0, (n, d)) * (rng.random((n, d)) > 0.15)  # ~15% dead features
    b_ds = rng.uniform(0.05, 3.0, (n, d))
    for depth in (1, 2, 3, 4):
        for pre in range(depth + 1):
            for post in range(depth + 1):
                if pre == post:
                    continue
                for ridge in (0.05, 1.0):
                    truth, _ = _risk_says_pre_wins(w, b_ds, 1, ridge, depth, pre, post)
                    condition = theory.pre_beats_post(w, b_ds, 1, depth=depth, pre_layer=pre, post_layer=post)
                    assert np.array_equal(condition, truth), (depth, pre, post, ridge)


def test_target_downstream_strength_drops_out_of_the_condition():
    """b_ds_j cancels: it rescales the gap, never its sign."""
    w = np.array([0.6, 0.9, 1.2])
    signs = []
    for b_ds_j in np.geomspace(0.01, 100, 41):
        b_ds = np.array([b_ds_j, 1.0, 0.5])
        _, gap = _risk_says_pre_wins(w, b_ds, 0, RIDGE, 2, 1, 2)
        signs.append(np.sign(gap))
        assert theory.pre_beats_post(w, b_ds, 0)
    assert set(signs) == {1.0}


def test_ties():
    """Tie (no winner) when the target is the only live feature or is dead."""
    only = np.array([0.7, 0.0, 0.0])
    dead = np.array([0.0, 0.7, 1.1])
    for w in (only, dead):
        _, gap = _risk_says_pre_wins(w, np.ones(3), 0, RIDGE, 2, 1, 2)
        assert gap == 0.0 and not theory.pre_beats_post(w, np.ones(3), 0)
    # ...but the raw input (layer 0) still sees a dead target: it beats every trained layer.
    assert theory.pre_beats_post(dead, np.ones(3), 0, pre_layer=0)


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_regime_closed_form(regime):
    (a0, b0), winner = REGIMES[regime]
    a, b = _moments(a0, b0)
    gap = theory.pre_minus_post(a, b, 0, RIDGE)
    assert (gap < 0) == (winner == "pre")
    assert theory.pre_beats_post(np.sqrt(a) / b, b, 0) == (winner == "pre")
    for ridge in (1e-3, 0.1, 1.0, 10.0):  # the verdict does not depend on the ridge
        assert (theory.pre_minus_post(a, b, 0, ridge) < 0) == (winner == "pre")


# --------------------------------------------------------------------------- the probe


def _numpy_ridge(H, y, T, y_test, ridge):
    """Reference: augmented least squares with an unpenalized intercept (normal equations)."""
    n, k = H.shape
    X = np.hstack([np.ones((n, 1)), H])
    penalty = np.diag([0.0] + [ridge] * k)
    coef = np.linalg.solve(X.T @ X / n + penalty, X.T @ y / n)
    residual = y_test - coef[0] - T @ coef[1:]
    return np.mean(residual**2), coef[1:], coef[0]


def test_ridge_probe_matches_numpy_reference_and_vmap_equals_loop():
    rng = np.random.default_rng(5)
    H, T = rng.standard_normal((300, 4)) + 0.3, rng.standard_normal((200, 4))
    beta = rng.standard_normal(4)
    y, y_test = H @ beta + 0.5 * rng.standard_normal(300) + 1.0, T @ beta + 0.5 * rng.standard_normal(200) + 1.0
    fit = probe.ridge_probe(H, y, T, y_test, 0.3)
    mse, weights, intercept = _numpy_ridge(H, y, T, y_test, 0.3)
    assert abs(float(fit.mse) - mse) < EXACT
    assert np.max(np.abs(np.asarray(fit.weights) - weights)) < EXACT
    assert abs(float(fit.intercept) - intercept) < EXACT
    assert abs(float(fit.r2) - (1 - mse / np.var(y_test))) < EXACT
    ridges = jnp.asarray([0.0, 0.1, 1.0])
    batched = jax.vmap(lambda r: probe.ridge_probe(H, y, T, y_test, r))(ridges)
    for i, ridge in enumerate([0.0, 0.1, 1.0]):
        single = probe.ridge_probe(H, y, T, y_test, ridge)
        assert abs(float(batched.mse[i]) - float(single.mse)) < EXACT


def test_ridge_probe_zero_ridge_is_minimum_norm_least_squares():
    rng = np.random.default_rng(6)
    base = rng.standard_normal((100, 2))
    H = np.hstack([base, base[:, :1]])  # duplicated column: rank-deficient
    y = base @ np.array([1.0, -2.0])
    fit = probe.ridge_probe(H, y, H, y, 0.0)
    Hc, yc = H - H.mean(0), y - y.mean()
    expected = np.linalg.lstsq(Hc, yc, rcond=None)[0]
    assert np.max(np.abs(np.asarray(fit.weights) - expected)) < 1e-9
    assert float(fit.mse) < EXACT_FIT


def test_normalization_has_unit_total_variance_and_floor():
    rng = np.random.default_rng(7)
    train, test = rng.standard_normal((500, 3)) * [3.0, 0.1, 1.0] + 5.0, rng.standard_normal((50, 3))
    h_train, h_test = probe.normalize_representation(train, test)
    assert abs(float(jnp.sum(jnp.var(h_train, axis=0))) - 1.0) < EXACT
    assert np.max(np.abs(np.asarray(h_train.mean(0)))) < EXACT
    assert np.allclose(np.asarray(h_test), (test - train.mean(0)) / np.sqrt(np.sum(train.var(0))), atol=EXACT)
    empty_train, empty_test = probe.normalize_representation(1e-9 * train, test, min_total_variance=1e-12)
    assert float(jnp.max(jnp.abs(empty_train))) == 0.0 and float(jnp.max(jnp.abs(empty_test))) == 0.0


# --------------------------------------------------------------------------- trained networks


def test_training_is_shared_with_weighting():
    """The probed network is the `weighting` experiment's network (same weights, same flow)."""
    config = ds.DownstreamConfig(**FAST)
    result = ds.run_downstream(config)
    reference = weighting.run_weighting(config.weighting)
    assert result.diagnostics.converged
    assert np.array_equal(result.measured_weights[1:], reference.measured)
    assert np.array_equal(result.predicted_weights[1:], reference.predicted)


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_regime_on_trained_network(regime):
    """Each regime on a trained net at n = 20,000: measured within 0.02 of the closed form at every
    layer, and the measured winner is the predicted one."""
    (a0, b0), winner = REGIMES[regime]
    a, b = _moments(a0, b0)
    result = _run(pos_cov=tuple(a), second_moment=tuple(b), target=0)
    assert result.diagnostics.converged
    assert np.max(np.abs(result.measured - result.predicted)) < AGREEMENT_20K
    noise = TEST_NOISE_SIGMAS * np.sqrt(2.0 / result.diagnostics.n_test) * result.fitted_risk + 1e-12
    assert np.all(np.abs(result.measured - result.fitted_risk) < noise)
    assert result.pre_beats_post == (winner == "pre")
    measured_pre_wins = result.pre.measured < result.post.measured
    assert measured_pre_wins == (winner == "pre")


def test_downstream_strength_and_layer_choice_on_trained_network():
    """Downstream strengths differing from pretraining, and the raw input as the 'pre' layer."""
    result = _run(downstream_second_moment=(0.2, 3.0, 0.5), target=1, layer=0)
    assert result.pre.layer == 0 and result.post.layer == 2
    assert np.max(np.abs(result.measured - result.predicted)) < AGREEMENT_20K
    assert result.pre.predicted == pytest.approx(theory.probe_risk(np.ones(3), [0.2, 3.0, 0.5], 1, RIDGE))


def test_zero_ridge_decodes_exactly_on_trained_network():
    """ridge = 0: the target is an exact linear function of every live layer, so MSE = 0."""
    result = _run(ridge=0.0, n_train=200, n_test=200)
    assert np.all(result.predicted == 0.0)
    assert np.max(np.abs(result.measured)) < EXACT_FIT


def test_error_converges_at_rate_inverse_sqrt_n():
    """Mean |fitted risk - closed form| over 64 vmapped probe seeds at n = 1,000, 4,000, 16,000
    falls like n^(-1/2) (see the module docstring for why not n^(-1))."""
    config = ds.DownstreamConfig(**FAST)
    params, _ = ds.train_network(config.weighting)
    predicted = ds.predict(config).mse
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(11), s))(jnp.arange(64))
    sizes = np.array([1_000, 4_000, 16_000])
    errors = []
    for n in sizes:
        probe_n = functools.partial(probe.probe_layers, n_train=int(n), n_test=2)
        out = jax.vmap(lambda k, run=probe_n: run(params, k, jnp.asarray(config.downstream), config.ridge,
                                                  config.target))(keys)
        errors.append(np.mean(np.abs(np.asarray(out.fitted_risk) - predicted), axis=0))
    errors = np.asarray(errors)  # (sizes, layers)
    for layer in (1, 2):
        slope = np.polyfit(np.log(sizes), np.log(errors[:, layer]), 1)[0]
        assert abs(slope - RATE_SLOPE) < RATE_SLOPE_TOL, (layer, slope, errors[:, layer])


# --------------------------------------------------------------------------- weight decay

DEFAULT_A, DEFAULT_B = np.array([0.9, 0.5, 0.8]), np.array([1.0, 0.6, 2.0])


def test_weight_decay_advantage_is_non_monotone_closed_form():
    """Target 2 (r = 0.4, b = 2; pre wins). Gradient flow from above the unstable root (basin of a
    large init): the pre advantage MSE_post - MSE_pre grows from 0.072 at wd = 0 to 0.19 just
    below the target's survival threshold g_max = 0.551 (weaker features shrink relatively
    faster), then drops to 0 when the target dies (both layers MSE = 1). Global minimum: the
    target dies earlier, at the global threshold 0.389. From init 0.1 every feature dies once
    wd exceeds ~4 a eps^2 (0.02-0.036), so the advantage vanishes almost at once."""
    survival = wd_theory.survival_threshold(DEFAULT_A, DEFAULT_B, 2)[2]
    global_ = wd_theory.global_threshold(DEFAULT_A, DEFAULT_B, 2)[2]
    assert survival == pytest.approx(0.5508, abs=1e-4) and global_ == pytest.approx(0.3895, abs=1e-4)
    below = np.linspace(0.0, survival * (1 - 1e-6), 200)
    advantage = -theory.pre_minus_post(DEFAULT_A, DEFAULT_B, 2, RIDGE, weight_decay=below, init_scale=1.5)
    assert advantage[0] == pytest.approx(0.0718, abs=1e-4)
    assert np.all(np.diff(advantage) > 0)  # grows all the way to the fold
    assert advantage[-1] > 0.18
    above = theory.pre_minus_post(DEFAULT_A, DEFAULT_B, 2, RIDGE, weight_decay=survival * 1.001, init_scale=1.5)
    assert above == 0.0
    at_global = -theory.pre_minus_post(DEFAULT_A, DEFAULT_B, 2, RIDGE, weight_decay=[global_ * 0.999, global_ * 1.001])
    assert at_global[0] > 0.09 and at_global[1] == 0.0
    small_init = -theory.pre_minus_post(DEFAULT_A, DEFAULT_B, 2, RIDGE, weight_decay=[0.01, 0.04], init_scale=0.1)
    assert small_init[0] > 0.07 and small_init[1] == 0.0


def test_weight_decay_can_flip_the_winner_closed_form():
    """Target 0 (w = 0.95 above the threshold 0.77): post wins at wd = 0, but once feature 2 dies
    (basin, wd > 0.551) pre wins until the target's own neighbour dies at 0.907."""
    wd = np.array([0.0, 0.3, 0.6, 0.8])
    gap = theory.pre_minus_post(DEFAULT_A, DEFAULT_B, 0, RIDGE, weight_decay=wd, init_scale=1.5)
    assert gap[0] > 0 and gap[1] > 0 and gap[2] < 0 and gap[3] < 0


def test_weight_decay_on_trained_networks():
    """Simulation spot checks of the basin story (target 2): from init 1.5 the measured advantage
    at wd = 0.5 exceeds that at wd = 0 (closed form: 0.128 vs 0.072); from init 0.1, wd = 0.3
    kills every feature and both layers decode nothing."""
    base = _run(target=2)
    decayed = _run(target=2, weight_decay=0.5, init_scale=1.5)
    dead = _run(target=2, weight_decay=0.3, init_scale=0.1)
    for result in (base, decayed, dead):
        assert result.diagnostics.converged
        assert np.max(np.abs(result.measured - result.predicted)) < AGREEMENT_20K
    advantage = [r.post.measured - r.pre.measured for r in (base, decayed)]
    assert advantage[1] > advantage[0] + 0.03
    assert dead.predicted[1] == dead.predicted[2] == 1.0


# --------------------------------------------------------------------------- interfaces


@pytest.mark.parametrize("field, value", [("target", 3), ("target", -1), ("ridge", -0.1), ("layer", 3),
                                          ("layer", -1), ("n_train", 1), ("n_test", 1),
                                          ("downstream_second_moment", (1.0, 2.0))])
def test_config_rejects_bad_input_naming_the_argument(field, value):
    with pytest.raises(ValueError, match=field):
        ds.DownstreamConfig(**{field: value})


def test_theory_rejects_bad_input_naming_the_argument():
    w, b = np.ones(3), np.ones(3)
    with pytest.raises(ValueError, match="target"):
        theory.probe_risk(w, b, 3, 0.1)
    with pytest.raises(ValueError, match="ridge"):
        theory.probe_risk(w, b, 0, -1.0)
    with pytest.raises(ValueError, match="pre_layer"):
        theory.pre_beats_post(w, b, 0, depth=2, pre_layer=3)
    with pytest.raises(ValueError, match="downstream_second_moment"):
        theory.probe_risk(w, np.ones(2), 0, 0.1)
    with pytest.raises(ValueError, match="train"):
        probe.normalize_representation(np.ones((1, 3)), np.ones((4, 3)))


def test_cli_json_contract_in_subprocess():
    command = [sys.executable, "-m", "simulations", "downstream", "--pos-cov", "0.9,0.5,0.8",
               "--second-moment", "1,0.6,2", "--target", "2", "--n-train", "20000", "--init-scale", "0.3", "--json"]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import json

    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert {"pre", "post"} <= set(data)
    for name in ("pre", "post"):
        assert isinstance(data[name]["measured"], float) and isinstance(data[name]["predicted"], float)
        assert abs(data[name]["measured"] - data[name]["predicted"]) < AGREEMENT_20K
    assert data["pre"]["layer"] == 1 and data["post"]["layer"] == 2
    bad = subprocess.run(command[:-1] + ["--ridge", "-1", "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "ridge" in bad.stderr


@pytest.mark.parametrize("flags, name", [(["--target", "3"], "target"), (["--target", "0", "--ridge", "-1"], "ridge"),
                                         (["--target", "0", "--layer", "5"], "layer"),
                                         (["--target", "0", "--n-train", "1"], "n_train"),
                                         (["--target", "zero"], "target")])
def test_cli_bad_input_exit_2_one_line(flags, name, capsys, monkeypatch):
    monkeypatch.setattr("simulations.__main__.configure_entry_point", lambda **kwargs: None)
    argv = ["downstream", "--pos-cov", "0.9,0.5,0.8", "--second-moment", "1,0.6,2", *flags, "--json"]
    try:
        code = cli_main(argv)
    except SystemExit as exit_:  # argparse type errors
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and name in captured.err


def test_basin_prediction_is_a_saddle_when_a_dead_feature_is_more_invariant():
    """A disagreement, pinned rather than hidden. wd = 0.03 from init 0.1: the aligned per-feature
    basin (theory.weight_decay.basin_weights, used by weighting.predict) keeps features {0, 2} and
    kills feature 1 (its unstable root 0.122 exceeds the init). That state is a saddle of the full
    network: rotating feature 2's mode toward the dead, more invariant feature 1 lowers the loss
    (a_1 - a_2 = -0.3 > b_2 s_2^2 (b_1 - b_2) = -0.55). Training from a randomly oriented
    balanced init amplifies the rounding-level misalignment and ends at {0, 1} instead, at their
    stable roots. basin_weights alone therefore mispredicts the trained network there;
    theory.weight_decay.stable_end_weights (now behind weighting.predict) predicts the escape."""
    a, b, wd = DEFAULT_A, DEFAULT_B, 0.03
    predicted = wd_theory.basin_weights(a, b, 2, wd, 0.1)  # (2, d): sigma, sigma^2
    assert np.array_equal(predicted[-1] > 0, [True, False, True])
    # The predicted aligned state is a critical point with a negative Hessian eigenvalue.
    params = (jnp.diag(jnp.asarray(predicted[0])), jnp.diag(jnp.asarray(predicted[0])))
    args = (jnp.diag(jnp.asarray(a)), jnp.diag(jnp.asarray(b)), jnp.asarray(wd))
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    gradient = jax.grad(lambda v: weighting.population_loss(unravel(v), args))(flat)
    hessian = jax.hessian(lambda v: weighting.population_loss(unravel(v), args))(flat)
    assert float(jnp.max(jnp.abs(gradient))) < EXACT
    assert float(jnp.linalg.eigvalsh(hessian)[0]) < -0.4
    # The trained network: features {0, 1} at their stable roots, feature 2 dead, lower loss.
    result = _run(target=2, weight_decay=wd, init_scale=0.1)
    stable = wd_theory.fixed_points(a, b, 2, wd).stable ** 2
    assert result.diagnostics.converged
    assert np.allclose(result.measured_weights[-1], [stable[0], stable[1], 0.0], atol=1e-4)
    assert result.diagnostics.loss < float(weighting.population_loss(params, args)) - 0.5
    assert np.max(np.abs(result.measured_weights[-1] - predicted[-1])) > 1.0  # the basin is wrong
    assert result.diagnostics.max_weight_error < 1e-4  # the escape prediction is right


def test_saddle_criterion_matches_hessian_on_random_basin_states():
    """basin_is_saddle (rotation of a surviving mode into a dead feature) agrees with the sign of
    the smallest Hessian eigenvalue at the aligned basin state, both ways: random depth-2
    configurations, 20 the criterion calls saddles and 20 it does not (saddles are rare at
    random, ~5%, so candidates are drawn until both classes are filled)."""
    rng = np.random.default_rng(8)

    @jax.jit
    def smallest_eigenvalue(sigma, a, b, wd):
        params = (jnp.diag(sigma), jnp.diag(sigma))
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        hessian = jax.hessian(lambda v: weighting.population_loss(unravel(v), (jnp.diag(a), jnp.diag(b), wd)))(flat)
        return jnp.linalg.eigvalsh(hessian)[0]

    counts = {True: 0, False: 0}
    while min(counts.values()) < 20:
        b = np.exp(rng.uniform(np.log(0.1), np.log(4.0), 3))
        a = rng.uniform(-0.2, 1.0, 3) * b
        wd, init = np.exp(rng.uniform(np.log(0.002), np.log(0.5))), rng.choice([0.05, 0.1, 0.2, 1.5])
        sigma = wd_theory.basin_weights(a, b, 2, wd, init)[0]
        predicted = theory.basin_is_saddle(a, b, sigma**2)
        if counts[predicted] >= 20:
            continue
        counts[predicted] += 1
        eigenvalue = float(smallest_eigenvalue(jnp.asarray(sigma), jnp.asarray(a), jnp.asarray(b), wd))
        assert predicted == (eigenvalue < -1e-9), (a, b, wd, init, eigenvalue)


def test_quick_config_runs_and_agrees():
    result = ds.run_downstream(ds.DownstreamConfig.quick())
    # n_train = 2,000: training-sample error ~0.005 (1 / sqrt(n) from ~0.0015 at 20,000).
    assert np.max(np.abs(result.measured - result.predicted)) < AGREEMENT_20K
