"""Tests for simulations/data.py: exact moments of the augmentation presets vs Monte Carlo."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simulations import data

# Monte Carlo agreement: |estimate - exact| <= MC_SIGMAS standard errors (the standard error is
# measured from the same sample). Two-sided 6 sigma: false-alarm odds ~2e-9 per comparison.
MC_SIGMAS = 6.0
# Rate checks: RMS error over RATE_CHUNKS independent batches of n and of RATE_FACTOR * n pairs.
# The error of a sample mean scales as n^(-1/2), so the ratio should be sqrt(16) = 4; with 32
# batches the RMS ratio fluctuates by ~18 %, so (2, 8) is > 3.5 sigma on the log scale. A bias
# (wrong formula) makes the ratio tend to 1.
RATE_SAMPLES = 512
RATE_FACTOR = 16
RATE_CHUNKS = 32
RATE_BOUNDS = (2.0, 8.0)
# One draw serves both checks (compilation, not sampling, dominates the runtime): 2 * 32 chunks
# of 16 * 512 pairs, ~5.2e5 pairs in all; agreement checks use every pair (standard errors
# ~3e-3 relative). One sample count everywhere lets tests share compiled samplers.
TOTAL_SAMPLES = 2 * RATE_CHUNKS * RATE_FACTOR * RATE_SAMPLES
# Exact algebra in float64 (jit/vmap may fuse or reorder floating-point operations).
EXACT_RTOL = 1e-12
EXACT_ATOL = 1e-12

STD = 1.5
# (constructor, strength, a, b) with (a, b) written out by hand from the formulas in the brief.
PRESETS = [
    (data.correlated, -0.4, -0.4 * STD**2, STD**2),
    (data.additive_noise, 0.8, STD**2, STD**2 + 0.8**2),
    (data.drop_replace, 0.3, 0.7**2 * STD**2, STD**2),
    (data.drop_to_zero, 0.3, 0.7**2 * STD**2, 0.7 * STD**2),
    (data.sign_flip, 0.2, 0.6**2 * STD**2, STD**2),
    (data.sign_flip, 0.5, 0.0, STD**2),  # a = 0 exactly
]
PRESET_IDS = [f"{c.__name__}-{s}" for c, s, _, _ in PRESETS]


def _mean_and_standard_error(values, axis=0):
    values = np.asarray(values)
    n = values.shape[axis]
    return values.mean(axis), values.std(axis, ddof=1) / np.sqrt(n)


def _rate_ratio(per_pair_terms, exact):
    """RMS error of chunk means at RATE_SAMPLES over that at RATE_FACTOR * RATE_SAMPLES."""
    chunks = np.asarray(per_pair_terms).reshape(2 * RATE_CHUNKS, RATE_FACTOR * RATE_SAMPLES,
                                                *np.shape(per_pair_terms)[1:])
    small = chunks[:RATE_CHUNKS, :RATE_SAMPLES].mean(axis=1) - exact
    large = chunks[RATE_CHUNKS:].mean(axis=1) - exact
    return np.sqrt(np.mean(small**2) / np.mean(large**2))


def _random_valid_moments(seed: int, dim: int):
    """General (A, B): B = Q diag(lam) Q^T, A = B^(1/2) C B^(1/2) with eig(C) in (-1, 1)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    eigenvalues = rng.uniform(0.5, 3.0, size=dim)
    B = (q * eigenvalues) @ q.T
    root = (q * np.sqrt(eigenvalues)) @ q.T
    p, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    C = (p * rng.uniform(-0.9, 0.9, size=dim)) @ p.T
    return root @ C @ root, B


# ---------------------------------------------------------------------------------------------
# Per-feature presets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("constructor, strength, a, b", PRESETS, ids=PRESET_IDS)
def test_preset_exact_moments(constructor, strength, a, b):
    feature = constructor(STD, strength)
    np.testing.assert_allclose(feature.pos_cov, a, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    np.testing.assert_allclose(feature.second_moment, b, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    np.testing.assert_allclose(feature.invariance_ratio, a / b, rtol=EXACT_RTOL, atol=EXACT_ATOL)


@pytest.fixture(scope="module", params=PRESETS, ids=PRESET_IDS)
def preset_draw(request):
    """(feature, exact a, exact b, x, x_pos) with TOTAL_SAMPLES pairs (one draw per preset)."""
    constructor, strength, a, b = request.param
    feature = constructor(STD, strength)
    x, x_pos = feature.sample_pairs(jax.random.key(0), TOTAL_SAMPLES)
    assert x.shape == x_pos.shape == (TOTAL_SAMPLES,)
    return feature, a, b, np.asarray(x), np.asarray(x_pos)


def test_preset_matches_monte_carlo(preset_draw):
    _, a, b, x, x_pos = preset_draw
    # Both views have the same zero-mean marginal with second moment b: check each separately.
    for view in (x, x_pos):
        mean, error = _mean_and_standard_error(view)
        assert abs(mean) <= MC_SIGMAS * error, "features must be zero-mean"
        second, error = _mean_and_standard_error(view**2)
        assert abs(second - b) <= MC_SIGMAS * error, (second, b, error)
    for terms, exact in ((x * x_pos, a), ((x**2 + x_pos**2) / 2, b)):
        estimate, error = _mean_and_standard_error(terms)
        assert abs(estimate - exact) <= MC_SIGMAS * error, (estimate, exact, error)


def test_preset_monte_carlo_rate(preset_draw):
    _, a, b, x, x_pos = preset_draw
    for moment, terms, exact in (("a", x * x_pos, a), ("b", (x**2 + x_pos**2) / 2, b)):
        ratio = _rate_ratio(terms, exact)
        assert RATE_BOUNDS[0] < ratio < RATE_BOUNDS[1], (moment, ratio)


def test_sign_flip_half_keeps_magnitude_and_decorrelates():
    x, x_pos = data.sign_flip(STD, 0.5).sample_pairs(jax.random.key(2), TOTAL_SAMPLES)
    np.testing.assert_array_equal(jnp.abs(x), jnp.abs(x_pos))
    flipped, error = _mean_and_standard_error(np.asarray(x) != np.asarray(x_pos))
    # The pair differs iff exactly one view flips: probability 2 q (1 - q) = 1/2.
    assert abs(flipped - 0.5) <= MC_SIGMAS * error


def test_drop_to_zero_zeros_only_dropped_views():
    p = 0.3
    x, x_pos = data.drop_to_zero(STD, p).sample_pairs(jax.random.key(3), TOTAL_SAMPLES)
    x, x_pos = np.asarray(x), np.asarray(x_pos)
    for view in (x, x_pos):
        fraction, error = _mean_and_standard_error(view == 0.0)
        assert abs(fraction - p) <= MC_SIGMAS * error
    both_zero, error = _mean_and_standard_error((x == 0.0) & (x_pos == 0.0))
    assert abs(both_zero - p**2) <= MC_SIGMAS * error  # views are dropped independently
    kept = (x != 0) & (x_pos != 0)
    np.testing.assert_array_equal(x[kept], x_pos[kept])


@pytest.mark.parametrize("constructor, strength, sign", [
    (data.correlated, 1.0, 1.0), (data.correlated, -1.0, -1.0), (data.additive_noise, 0.0, 1.0),
    (data.drop_replace, 0.0, 1.0), (data.drop_to_zero, 0.0, 1.0), (data.sign_flip, 0.0, 1.0),
    (data.sign_flip, 1.0, 1.0),  # both views always flip: still identical
])
def test_extreme_strengths_give_identical_or_opposite_views(constructor, strength, sign):
    x, x_pos = constructor(STD, strength).sample_pairs(jax.random.key(12), TOTAL_SAMPLES)
    np.testing.assert_array_equal(x_pos, sign * x)
    assert float(jnp.std(x)) > 0.5 * STD


def test_drop_to_zero_always_dropped():
    x, x_pos = data.drop_to_zero(STD, 1.0).sample_pairs(jax.random.key(13), TOTAL_SAMPLES)
    assert not np.any(np.asarray(x)) and not np.any(np.asarray(x_pos))


# ---------------------------------------------------------------------------------------------
# Pairs in R^d
# ---------------------------------------------------------------------------------------------


def _entrywise_standard_errors(x, x_pos):
    """Standard errors of the entries of estimate_moments, from the per-pair terms' variances.

    A term (x_i y_j + y_i x_j)/2 squares to (x_i^2 y_j^2 + 2 x_i y_i x_j y_j + y_i^2 x_j^2)/4, and
    (x_i x_j + y_i y_j)/2 to (x_i^2 x_j^2 + 2 x_i y_i x_j y_j + y_i^2 y_j^2)/4, so second moments
    of the terms are Gram matrices of x^2, y^2 and x y (no (n, d, d) array needed).
    """
    n = x.shape[0]
    xx, yy, xy = x**2, x_pos**2, x * x_pos
    gram = lambda u, v: u.T @ v / n  # noqa: E731
    cross = x.T @ x_pos / n
    mean_a, mean_b = (cross + cross.T) / 2, (x.T @ x + x_pos.T @ x_pos) / (2 * n)
    square_a = (gram(xx, yy) + 2 * gram(xy, xy) + gram(yy, xx)) / 4
    square_b = (gram(xx, xx) + 2 * gram(xy, xy) + gram(yy, yy)) / 4
    return np.sqrt((square_a - mean_a**2) / n), np.sqrt((square_b - mean_b**2) / n)


def _assert_estimate_matches(pairs, x, x_pos):
    """estimate_moments agrees entrywise with the exact (A, B) within MC_SIGMAS standard errors."""
    n = x.shape[0]
    assert x.shape == x_pos.shape == (n, pairs.dim)
    assert x.dtype == x_pos.dtype == jnp.float64
    A_hat, B_hat = data.estimate_moments(x, x_pos)
    errors = _entrywise_standard_errors(np.asarray(x), np.asarray(x_pos))
    for estimate, error, exact in zip((A_hat, B_hat), errors, (pairs.pos_cov, pairs.second_moment)):
        deviation = np.abs(np.asarray(estimate) - exact)
        assert np.all(deviation <= MC_SIGMAS * error), deviation / error


def test_entrywise_standard_errors_match_brute_force():
    rng = np.random.default_rng(5)
    x, x_pos = rng.normal(size=(50, 3)), rng.normal(size=(50, 3)) + 1.0
    cross = x[:, :, None] * x_pos[:, None, :]
    a_terms = (cross + cross.transpose(0, 2, 1)) / 2
    b_terms = (x[:, :, None] * x[:, None, :] + x_pos[:, :, None] * x_pos[:, None, :]) / 2
    for error, terms in zip(_entrywise_standard_errors(x, x_pos), (a_terms, b_terms)):
        np.testing.assert_allclose(error, terms.std(axis=0) / np.sqrt(50), rtol=1e-10)


def test_diagonal_pairs_estimates_converge():
    a = np.array([0.9, -0.5, 0.0, 2.0])
    b = np.array([1.0, 2.0, 0.5, 2.0])
    pairs = data.diagonal_pairs(a, b)
    assert pairs.is_diagonal and pairs.dim == 4
    np.testing.assert_array_equal(pairs.pos_cov_diag, a)
    np.testing.assert_array_equal(pairs.second_moment_diag, b)
    np.testing.assert_allclose(pairs.invariance_ratios, a / b, rtol=EXACT_RTOL)
    _assert_estimate_matches(pairs, *pairs.sample_pairs(jax.random.key(4), TOTAL_SAMPLES))


@pytest.fixture(scope="module")
def gaussian_draw():
    """General (A, B) in d = 3 and TOTAL_SAMPLES pairs drawn from it."""
    A, B = _random_valid_moments(seed=0, dim=3)
    pairs = data.gaussian_pairs(A, B)
    return (A, B, pairs, *pairs.sample_pairs(jax.random.key(5), TOTAL_SAMPLES))


def test_gaussian_pairs_estimates_converge(gaussian_draw):
    A, B, pairs, x, x_pos = gaussian_draw
    assert not pairs.is_diagonal and pairs.features is None
    np.testing.assert_allclose(pairs.pos_cov, A, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    np.testing.assert_allclose(pairs.second_moment, B, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    with pytest.raises(ValueError, match="diagonal"):
        _ = pairs.invariance_ratios  # the property access itself must raise
    _assert_estimate_matches(pairs, x, x_pos)


def test_gaussian_pairs_monte_carlo_rate(gaussian_draw):
    A, B, pairs, x, x_pos = gaussian_draw
    shape = (2 * RATE_CHUNKS, RATE_FACTOR * RATE_SAMPLES, pairs.dim)
    x, x_pos = x.reshape(shape), x_pos.reshape(shape)
    small = jax.vmap(data.estimate_moments)(x[:RATE_CHUNKS, :RATE_SAMPLES],
                                            x_pos[:RATE_CHUNKS, :RATE_SAMPLES])
    large = jax.vmap(data.estimate_moments)(x[RATE_CHUNKS:], x_pos[RATE_CHUNKS:])
    for moment, small_hat, large_hat, exact in zip("AB", small, large, (A, B)):
        ratio = np.sqrt(np.sum((np.asarray(small_hat) - exact) ** 2)
                        / np.sum((np.asarray(large_hat) - exact) ** 2))
        assert RATE_BOUNDS[0] < ratio < RATE_BOUNDS[1], (moment, ratio)


# The presets with kinds interleaved (sign_flip at 0 and 3), so the sampler's per-kind grouping
# is a non-trivial permutation that must be undone.
MIXED_PRESETS = [PRESETS[i] for i in (4, 0, 2, 5, 1, 3)]


@pytest.fixture(scope="module")
def product_draw():
    """One feature per preset (distinct stds) and TOTAL_SAMPLES pairs drawn from their product."""
    features = tuple(constructor(STD * (1 + i / 4), strength)
                     for i, (constructor, strength, _, _) in enumerate(MIXED_PRESETS))
    key = jax.random.key(7)
    pairs = data.product_pairs(features)
    return features, key, pairs, *pairs.sample_pairs(key, TOTAL_SAMPLES)


def test_product_pairs_mixed_kinds_estimates_converge(product_draw):
    features, _, pairs, x, x_pos = product_draw
    assert pairs.is_diagonal and pairs.features == features
    np.testing.assert_allclose(pairs.pos_cov_diag, [f.pos_cov for f in features], rtol=EXACT_RTOL)
    np.testing.assert_allclose(pairs.second_moment_diag, [f.second_moment for f in features],
                               rtol=EXACT_RTOL)
    # Off-diagonal entries of A and B are 0: the features are independent.
    _assert_estimate_matches(pairs, x, x_pos)


def test_product_column_is_its_feature_with_the_split_key(product_draw):
    features, key, _, x, x_pos = product_draw
    for i, (feature, feature_key) in enumerate(zip(features, jax.random.split(key, len(features)))):
        x_i, x_pos_i = feature.sample_pairs(feature_key, TOTAL_SAMPLES)
        np.testing.assert_allclose(x[:, i], x_i, rtol=EXACT_RTOL, atol=EXACT_ATOL)
        np.testing.assert_allclose(x_pos[:, i], x_pos_i, rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_preset_pairs_broadcasts():
    pairs = data.preset_pairs("sign_flip", 3, std=2.0, strength=[0.0, 0.25, 0.5])
    np.testing.assert_allclose(pairs.invariance_ratios, [1.0, 0.25, 0.0], rtol=EXACT_RTOL,
                               atol=EXACT_ATOL)
    np.testing.assert_allclose(pairs.second_moment_diag, [4.0, 4.0, 4.0], rtol=EXACT_RTOL)
    with pytest.raises(ValueError, match=r"^strength\b"):
        data.preset_pairs("sign_flip", 3, strength=[0.1, 0.2])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gaussian_pairs_singular_joint_covariance(sign):
    """A = +-B makes [[B, A], [A, B]] singular: then x+ = +-x exactly."""
    _, B = _random_valid_moments(seed=2, dim=3)
    x, x_pos = data.gaussian_pairs(sign * B, B).sample_pairs(jax.random.key(9), TOTAL_SAMPLES)
    np.testing.assert_allclose(x_pos, sign * x, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    assert np.all(np.isfinite(x)) and float(jnp.std(x)) > 0.1


def test_estimate_moments_matches_loop():
    rng = np.random.default_rng(3)
    x, x_pos = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    A_hat, B_hat = data.estimate_moments(jnp.asarray(x), jnp.asarray(x_pos))
    A_loop, B_loop = np.zeros((3, 3)), np.zeros((3, 3))
    for i in range(7):
        A_loop += (np.outer(x[i], x_pos[i]) + np.outer(x_pos[i], x[i])) / 14
        B_loop += (np.outer(x[i], x[i]) + np.outer(x_pos[i], x_pos[i])) / 14
    np.testing.assert_allclose(A_hat, A_loop, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    np.testing.assert_allclose(B_hat, B_loop, rtol=EXACT_RTOL, atol=EXACT_ATOL)


# ---------------------------------------------------------------------------------------------
# Invariances: determinism, jit
# ---------------------------------------------------------------------------------------------

# Same kinds and dimensions as the agreement tests above, so the un-jitted samplers are shared.
PAIRS = {
    "gaussian": lambda: data.gaussian_pairs(*_random_valid_moments(seed=4, dim=3)),
    "product": lambda: data.product_pairs([constructor(1.0, strength)
                                           for constructor, strength, _, _ in MIXED_PRESETS]),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_sampling_is_deterministic_and_jit_invariant(name):
    pairs, n = PAIRS[name](), TOTAL_SAMPLES
    key = jax.random.key(10)
    first = pairs.sample_pairs(key, n)
    again = pairs.sample_pairs(key, n)
    other = pairs.sample_pairs(jax.random.key(11), n)
    jitted = jax.jit(lambda k: pairs.sample_pairs(k, n))(key)
    for view, view_again, view_other, view_jitted in zip(first, again, other, jitted):
        np.testing.assert_array_equal(view, view_again)
        assert not np.allclose(view, view_other)
        np.testing.assert_allclose(view_jitted, view, rtol=EXACT_RTOL, atol=EXACT_ATOL)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

BAD_INPUTS = [
    ("negative b", lambda: data.diagonal_pairs([0.5, 0.5], [-1.0, 1.0]), "second_moment"),
    ("zero b", lambda: data.diagonal_pairs([0.0, 0.5], [0.0, 1.0]), "second_moment"),
    ("|a| > b", lambda: data.diagonal_pairs([1.5, 0.5], [1.0, 1.0]), "pos_cov"),
    ("a < -b", lambda: data.diagonal_pairs([-1.5, 0.5], [1.0, 1.0]), "pos_cov"),
    ("lengths", lambda: data.diagonal_pairs([0.5], [1.0, 1.0]), "pos_cov and second_moment"),
    ("nan a", lambda: data.diagonal_pairs([np.nan, 0.5], [1.0, 1.0]), "pos_cov"),
    ("inf b", lambda: data.diagonal_pairs([0.5, 0.5], [np.inf, 1.0]), "second_moment"),
    ("matrix to diagonal_pairs", lambda: data.diagonal_pairs(np.eye(2) / 2, np.eye(2)), "pos_cov"),
    ("non-PSD B", lambda: data.gaussian_pairs(np.zeros((2, 2)), [[1.0, 2.0], [2.0, 1.0]]),
     "second_moment"),
    ("B - A not PSD", lambda: data.gaussian_pairs(2 * np.eye(2), np.eye(2)), "pos_cov"),
    ("q > 1", lambda: data.sign_flip(1.0, 1.5), "q"),
    ("q < 0", lambda: data.sign_flip(1.0, -0.1), "q"),
    ("q nan", lambda: data.sign_flip(1.0, np.nan), "q"),
    ("p > 1 zero", lambda: data.drop_to_zero(1.0, 1.2), "p"),
    ("p < 0 replace", lambda: data.drop_replace(1.0, -0.5), "p"),
    ("correlation > 1", lambda: data.correlated(1.0, 1.5), "correlation"),
    ("noise_std < 0", lambda: data.additive_noise(1.0, -1.0), "noise_std"),
    ("std = 0", lambda: data.correlated(0.0, 0.5), "std"),
    ("std < 0", lambda: data.sign_flip(-1.0, 0.5), "std"),
    ("std inf", lambda: data.drop_to_zero(np.inf, 0.5), "std"),
    ("kind", lambda: data.FeatureAugmentation(kind="blur", std=1.0, strength=0.5), "kind"),
    ("b = 0 feature", lambda: data.product_pairs([data.drop_to_zero(1.0, 1.0)]), r"features\[0\]"),
    ("features vs pos_cov", lambda: data.AugmentedPairs(
        pos_cov=[0.1], second_moment=[1.0], features=(data.correlated(1.0, 0.5),)), "pos_cov"),
    ("features length", lambda: data.AugmentedPairs(
        pos_cov=[0.5, 0.5], second_moment=[1.0, 1.0], features=(data.correlated(1.0, 0.5),)),
     "features"),
    ("n = 0", lambda: data.sign_flip(1.0, 0.5).sample_pairs(jax.random.key(0), 0), "n"),
    ("pairs n = 0", lambda: PAIRS["gaussian"]().sample_pairs(jax.random.key(0), 0), "n"),
    ("x rank", lambda: data.estimate_moments(jnp.ones(5), jnp.ones(5)), "x"),
    ("x_pos shape", lambda: data.estimate_moments(jnp.ones((5, 2)), jnp.ones((5, 3))), "x_pos"),
]


@pytest.mark.parametrize("call, argument", [(c, a) for _, c, a in BAD_INPUTS],
                         ids=[i for i, _, _ in BAD_INPUTS])
def test_bad_input_raises_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=rf"^{argument}(?!\w)"):
        call()
