"""Exact checks for simulations/models.py and simulations/losses.py.

Initializations against their defining identities, the network against its layer maps, the
population loss against its analytic gradient and finite differences, and the sampled estimators
against naive loops and (in expectation) against the population loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simulations import data, losses, models
from theory import linear as linear_theory

# Exact algebra in float64 (products of a few small matrices, QR): last-bit rounding only.
EXACT = 1e-12
# jit may fuse or reorder floating-point operations: a few ulps of the result.
JIT_ROUNDING = 1e-13
# Central finite differences with step FD_STEP on a quartic loss of O(1) parameters: truncation
# FD_STEP^2 |f'''| / 6 ~ 1e-12, rounding 1e-16 / FD_STEP ~ 1e-10, relative to the gradient's scale.
FD_STEP = 1e-6
FINITE_DIFFERENCE = 1e-8
# Monte Carlo agreement: |estimate - exact| <= MC_SIGMAS standard errors, the standard error measured
# from the same sample. Two-sided 5 sigma: false-alarm odds ~6e-7 per comparison (and the seeds are
# fixed, so a pass is reproducible).
MC_SIGMAS = 5.0
# Unbiasedness check: this many independent batches of BATCH_SIZE pairs (one compiled shape). The
# standard error of the mean of the batch losses is then ~9x (Gaussian pairs) to ~40x (diagonal)
# smaller than the O(1/n) bias of the estimator that keeps the i = j pairs in its negative term,
# so a biased estimator fails the check (asserted below: the test has power).
N_BATCHES = 50_000
BATCH_SIZE = 4
# Variance of N(0, s^2) entries: the sample variance of n draws has relative std sqrt(2 / n).
GAUSSIAN_INIT_DIM = 300

SEED = 0
EPS = 0.3


def _key(seed=SEED):
    return jax.random.PRNGKey(seed)


def _random_params(seed, input_dim, widths, scale=0.5):
    keys = jax.random.split(_key(seed), len(widths))
    dims = (input_dim, *widths)
    return tuple(scale * jax.random.normal(keys[l], (dims[l + 1], dims[l])) for l in range(len(widths)))


def _random_general_moments(rng, d):
    """Valid non-diagonal (A, B): B SPD, A = B^(1/2) C B^(1/2) with eig(C) in (-0.9, 0.9)."""

    def orthogonal():
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        return q * np.sign(np.diag(r))

    q = orthogonal()
    b = q @ np.diag(rng.uniform(0.5, 2.0, d)) @ q.T
    eig, vec = np.linalg.eigh(b)
    b_sqrt = (vec * np.sqrt(eig)) @ vec.T
    p = orthogonal()
    c = p @ np.diag(rng.uniform(-0.9, 0.9, d)) @ p.T
    return b_sqrt @ c @ b_sqrt, b


def _product(weights, dim):
    """W_k ... W_1 for weights = [W_1, ..., W_k] (the identity of size dim when empty)."""
    product = np.eye(dim) if not weights else weights[0]
    for weight in weights[1:]:
        product = weight @ product
    return product


def _relative_error(x, y):
    x, y = np.asarray(x), np.asarray(y)
    return np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-300)


# --------------------------------------------------------------------------- initialization

WIDTH_CASES = {
    "equal": (5, (5, 5, 5)),
    "wide-narrow-wide": (5, (7, 3, 6)),
    "expanding": (3, (6, 8)),
    "narrow-input": (6, (4, 4)),
}


@pytest.mark.parametrize("input_dim, widths", WIDTH_CASES.values(), ids=WIDTH_CASES.keys())
def test_init_balanced_is_exactly_balanced(input_dim, widths):
    params = models.init_balanced(_key(), input_dim, widths, EPS)
    dims = (input_dim, *widths)
    assert [w.shape for w in params] == [(dims[l + 1], dims[l]) for l in range(len(widths))]
    for lower, upper in zip(params[:-1], params[1:]):
        np.testing.assert_allclose(upper.T @ upper, lower @ lower.T, rtol=0, atol=EXACT)
    k = min(dims)
    for weight in params:
        singular_values = np.linalg.svd(np.asarray(weight), compute_uv=False)
        np.testing.assert_allclose(singular_values[:k], EPS, rtol=EXACT)
        np.testing.assert_allclose(singular_values[k:], 0.0, atol=EXACT)
    # The end-to-end map has singular values eps^L (k copies).
    end_to_end = np.linalg.svd(np.asarray(models.end_to_end(params)), compute_uv=False)
    np.testing.assert_allclose(end_to_end[:k], EPS ** len(widths), rtol=EXACT)


def test_init_balanced_is_not_aligned_with_the_features():
    """Random orientation: the first layer is not diagonal in the input basis."""
    (w1, _) = models.init_balanced(_key(), 4, (4, 4), EPS)
    off_diagonal = np.asarray(w1) - np.diag(np.diag(np.asarray(w1)))
    assert np.max(np.abs(off_diagonal)) > 0.1 * EPS


def test_init_gaussian_entries_have_variance_eps2_over_fan_in():
    d = GAUSSIAN_INIT_DIM
    widths = (2 * d, d // 2)
    params = models.init_gaussian(_key(), d, widths, EPS)
    fan_ins = (d, 2 * d)
    for weight, fan_in in zip(params, fan_ins):
        entries = np.asarray(weight).ravel()
        n = entries.size
        variance = EPS**2 / fan_in
        # Sample variance: relative standard error sqrt(2 / n); sample mean: sqrt(variance / n).
        assert abs(entries.var() / variance - 1.0) <= MC_SIGMAS * np.sqrt(2.0 / n)
        assert abs(entries.mean()) <= MC_SIGMAS * np.sqrt(variance / n)


def test_init_linear_dispatches_and_is_deterministic():
    balanced = models.init_linear(_key(), 4, (4, 4), init="balanced", init_scale=EPS)
    gaussian = models.init_linear(_key(), 4, (4, 4), init="gaussian", init_scale=EPS)
    for ours, reference in zip(balanced, models.init_balanced(_key(), 4, (4, 4), EPS)):
        np.testing.assert_array_equal(ours, reference)
    for ours, reference in zip(gaussian, models.init_gaussian(_key(), 4, (4, 4), EPS)):
        np.testing.assert_array_equal(ours, reference)
    other_seed = models.init_linear(_key(1), 4, (4, 4), init_scale=EPS)
    assert not np.allclose(other_seed[0], balanced[0])


@pytest.mark.parametrize("call, argument", [
    (lambda: models.init_linear(_key(), 4, (4,), init="orthogonal"), "init"),
    (lambda: models.init_balanced(_key(), 4, (4, 0)), "width"),
    (lambda: models.init_gaussian(_key(), 4, ()), "widths"),
    (lambda: models.init_balanced(_key(), 0, (4,)), "input_dim"),
    (lambda: models.init_balanced(_key(), 4, (4,), init_scale=0.0), "init_scale"),
    (lambda: models.init_gaussian(_key(), 4, (4,), init_scale=float("nan")), "init_scale"),
    (lambda: models.init_balanced(_key(), 4, (2.5,)), "width"),
], ids=["init", "width-0", "no-layers", "input_dim", "scale-0", "scale-nan", "width-float"])
def test_bad_model_input_raises_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


# --------------------------------------------------------------------------- the network


def test_apply_linear_equals_layer_maps():
    params = _random_params(1, 5, (7, 3, 6))
    x = jax.random.normal(_key(2), (11, 5))
    representations = models.apply_linear(params, x)
    maps = models.layer_maps(params)
    assert len(representations) == len(maps) == 3
    # Independent product of the weights, in NumPy.
    product = np.eye(5)
    for representation, layer_map, weight in zip(representations, maps, params):
        product = np.asarray(weight) @ product
        np.testing.assert_allclose(layer_map, product, rtol=EXACT, atol=EXACT)
        np.testing.assert_allclose(representation, np.asarray(x) @ product.T, rtol=EXACT, atol=EXACT)
    np.testing.assert_allclose(models.end_to_end(params), product, rtol=EXACT, atol=EXACT)


# --------------------------------------------------------------------------- population loss


@pytest.fixture(scope="module")
def general_problem():
    rng = np.random.default_rng(SEED)
    a, b = _random_general_moments(rng, 4)
    params = _random_params(3, 4, (5, 3))
    return jnp.asarray(a), jnp.asarray(b), params


def test_population_loss_matches_independent_formula(general_problem):
    a, b, params = general_problem
    w = np.asarray(models.end_to_end(params))
    expected = linear_theory.spectral_loss(w, np.asarray(a), np.asarray(b))
    assert float(losses.spectral_population_loss(params, a, b)) == pytest.approx(expected, rel=EXACT)


def test_population_loss_gradient_is_analytic(general_problem):
    """d/dW of -2 tr(W A W^T) + tr((W B W^T)^2) = -4 W A + 4 W B W^T W B (SPEC)."""
    a, b, params = general_problem
    w = models.end_to_end(params)
    gradient = jax.grad(losses.spectral_population_loss_of_map)(w, a, b)
    w, a_, b_ = np.asarray(w), np.asarray(a), np.asarray(b)
    analytic = -4.0 * w @ a_ + 4.0 * w @ b_ @ w.T @ w @ b_
    assert _relative_error(gradient, analytic) <= EXACT
    # Chain rule to every layer: dL/dW_l = (W_L ... W_(l+1))^T G (W_(l-1) ... W_1)^T.
    layer_gradients = jax.grad(losses.spectral_population_loss)(params, a, b)
    weights = [np.asarray(p) for p in params]
    for l, weight in enumerate(weights):
        above = _product(weights[l + 1:], weight.shape[0])
        below = _product(weights[:l], weight.shape[1])
        assert _relative_error(layer_gradients[l], above.T @ analytic @ below.T) <= EXACT


def test_population_loss_gradient_matches_finite_differences(general_problem):
    a, b, params = general_problem
    loss = lambda p: float(losses.spectral_population_loss(p, a, b))  # noqa: E731
    gradients = jax.grad(losses.spectral_population_loss)(params, a, b)
    for l, weight in enumerate(params):
        numeric = np.zeros(weight.shape)
        for index in np.ndindex(weight.shape):
            step = np.zeros(weight.shape)
            step[index] = FD_STEP
            plus = tuple(p + step if k == l else p for k, p in enumerate(params))
            minus = tuple(p - step if k == l else p for k, p in enumerate(params))
            numeric[index] = (loss(plus) - loss(minus)) / (2 * FD_STEP)
        assert _relative_error(gradients[l], numeric) <= FINITE_DIFFERENCE


def test_weight_decay_penalty_is_half_sum_of_squares():
    params = _random_params(4, 3, (4, 2))
    expected = 0.5 * 0.3 * sum(np.sum(np.asarray(p) ** 2) for p in params)
    assert float(losses.weight_decay_penalty(params, 0.3)) == pytest.approx(expected, rel=EXACT)
    gradient = jax.grad(losses.weight_decay_penalty)(params, 0.3)
    for g, p in zip(gradient, params):
        np.testing.assert_allclose(g, 0.3 * np.asarray(p), rtol=EXACT)


# --------------------------------------------------------------------------- sampled losses


def _naive_spectral_loss(z, z_pos):
    """-2/n sum_i z_i.z+_i + 1/(n(n-1)) sum_{i != j} (z_i.z+_j)^2 by an O(n^2) double loop."""
    z, z_pos = np.asarray(z), np.asarray(z_pos)
    n = z.shape[0]
    positive = sum(z[i] @ z_pos[i] for i in range(n)) / n
    negative = sum((z[i] @ z_pos[j]) ** 2 for i in range(n) for j in range(n) if i != j)
    return -2.0 * positive, negative / (n * (n - 1))


def _naive_info_nce(z, z_pos, temperature):
    """NT-Xent by an explicit loop over the 2n anchors."""
    views = np.concatenate([np.asarray(z), np.asarray(z_pos)])
    views = views / np.linalg.norm(views, axis=1, keepdims=True)
    two_n, n = views.shape[0], views.shape[0] // 2
    total = 0.0
    for i in range(two_n):
        partner = i + n if i < n else i - n
        others = [j for j in range(two_n) if j != i]
        logits = np.array([views[i] @ views[j] / temperature for j in others])
        log_normalizer = logits.max() + np.log(np.sum(np.exp(logits - logits.max())))
        total += -(views[i] @ views[partner] / temperature - log_normalizer)
    return total / two_n


@pytest.fixture(scope="module")
def batch():
    z = jax.random.normal(_key(5), (9, 3))
    z_pos = 0.6 * z + 0.8 * jax.random.normal(_key(6), (9, 3))
    return z, z_pos


def test_spectral_loss_equals_naive_double_loop(batch):
    z, z_pos = batch
    positive, negative = _naive_spectral_loss(z, z_pos)
    assert float(losses.spectral_loss(z, z_pos)) == pytest.approx(positive + negative, rel=EXACT)
    # The negative term on its own: the loss minus its positive term.
    only_negative = float(losses.spectral_loss(z, z_pos)) + 2.0 * float(jnp.mean(jnp.sum(z * z_pos, axis=1)))
    assert only_negative == pytest.approx(negative, rel=EXACT)


def test_spectral_loss_needs_two_samples():
    with pytest.raises(ValueError, match="z"):
        losses.spectral_loss(jnp.ones((1, 3)), jnp.ones((1, 3)))


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_info_nce_equals_naive_loop(batch, temperature):
    z, z_pos = batch
    expected = _naive_info_nce(z, z_pos, temperature)
    assert float(losses.info_nce_loss(z, z_pos, temperature)) == pytest.approx(expected, rel=EXACT)


def test_info_nce_is_scale_invariant_and_rejects_bad_temperature(batch):
    z, z_pos = batch
    assert float(losses.info_nce_loss(3.0 * z, 0.5 * z_pos)) == pytest.approx(
        float(losses.info_nce_loss(z, z_pos)), rel=EXACT)
    with pytest.raises(ValueError, match="temperature"):
        losses.info_nce_loss(z, z_pos, temperature=0.0)


# Our losses vs optax's where both define the same quantity: two float64 implementations with
# different summation orders and log-sum-exp shifts agree to rounding (~1e-15 relative per term).
OPTAX_AGREEMENT = 1e-10


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_info_nce_equals_optax_ntxent(batch, temperature):
    """SimCLR's NT-Xent: optax.losses.ntxent on the 2n views labelled by their sample."""
    z, z_pos = batch
    n = z.shape[0]
    labels = jnp.concatenate([jnp.arange(n), jnp.arange(n)])
    expected = optax.losses.ntxent(jnp.concatenate([z, z_pos]), labels, temperature)
    assert float(losses.info_nce_loss(z, z_pos, temperature)) == pytest.approx(float(expected), rel=OPTAX_AGREEMENT)


def test_supcon_equals_optax_ntxent_with_one_positive_per_anchor(batch):
    """With exactly one positive per anchor SupCon ("L_out") is NT-Xent; with several the two differ
    on purpose (optax leaves the other positives out of each denominator, L_out keeps them)."""
    z, z_pos = batch
    n = z.shape[0]
    views, labels = jnp.concatenate([z, z_pos]), jnp.concatenate([jnp.arange(n), jnp.arange(n)])
    assert float(losses.supcon_loss(views, labels, 0.5)) == pytest.approx(
        float(optax.losses.ntxent(views, labels, 0.5)), rel=OPTAX_AGREEMENT)
    coarse = labels % 2  # several positives per anchor
    assert abs(float(losses.supcon_loss(views, coarse, 0.5)) - float(optax.losses.ntxent(views, coarse, 0.5))) > 1e-3


def test_cross_entropy_equals_optax_softmax_cross_entropy(batch):
    z, _ = batch
    classifier = (jax.random.normal(_key(8), (4, 3)), jax.random.normal(_key(9), (4,)))
    labels = jnp.arange(z.shape[0]) % 4
    logits = losses.classifier_logits(classifier, z)
    ours = float(losses.cross_entropy_loss(classifier, z, labels))
    assert ours == pytest.approx(float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))),
                                 rel=OPTAX_AGREEMENT)
    assert ours == pytest.approx(float(jnp.mean(optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, 4)))),
                                 rel=OPTAX_AGREEMENT)


def test_losses_jit_equals_no_jit(batch, general_problem):
    z, z_pos = batch
    a, b, params = general_problem
    x = jax.random.normal(_key(7), (6, 4))
    pairs = [
        (losses.spectral_loss, (z, z_pos)),
        (losses.info_nce_loss, (z, z_pos)),
        (losses.spectral_population_loss, (params, a, b)),
        (lambda p, x_: models.apply_linear(p, x_)[-1], (params, x)),
    ]
    for function, arguments in pairs:
        eager = np.asarray(function(*arguments))
        compiled = np.asarray(jax.jit(function)(*arguments))
        assert _relative_error(compiled, eager) <= JIT_ROUNDING


def _batch_losses(distribution, params, seed):
    """Sampled spectral loss of the network's output on N_BATCHES independent batches."""
    keys = jax.random.split(_key(seed), N_BATCHES)

    def one(key):
        x, x_pos = distribution.sample_pairs(key, BATCH_SIZE)
        z, z_pos = models.apply_linear(params, x)[-1], models.apply_linear(params, x_pos)[-1]
        unbiased = losses.spectral_loss(z, z_pos)
        # The estimator that keeps the i = j (dependent) pairs in its negative term: biased.
        products = z @ z_pos.T
        biased = -2.0 * jnp.mean(jnp.diag(products)) + jnp.mean(products**2)
        return unbiased, biased

    unbiased, biased = jax.vmap(one)(keys)
    return np.asarray(unbiased), np.asarray(biased)


DISTRIBUTIONS = {
    "diagonal": lambda: data.diagonal_pairs(np.array([0.9, -0.3, 0.5]), np.array([1.0, 0.6, 1.5])),
    "gaussian": lambda: data.gaussian_pairs(*_random_general_moments(np.random.default_rng(1), 3)),
}


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_sampled_spectral_loss_is_unbiased(name):
    distribution = DISTRIBUTIONS[name]()
    params = _random_params(8, 3, (4, 2), scale=0.5)
    population = float(losses.spectral_population_loss(
        params, jnp.asarray(distribution.pos_cov), jnp.asarray(distribution.second_moment)))
    unbiased, biased = _batch_losses(distribution, params, seed=9)
    standard_error = unbiased.std(ddof=1) / np.sqrt(N_BATCHES)
    assert abs(unbiased.mean() - population) <= MC_SIGMAS * standard_error
    # Power: the same sample resolves the O(1/n) bias of the estimator with the diagonal pairs.
    biased_error = biased.std(ddof=1) / np.sqrt(N_BATCHES)
    assert abs(biased.mean() - population) > MC_SIGMAS * max(standard_error, biased_error)


def test_compiled_initialization_equals_the_eager_formulas_bit_for_bit():
    # init_linear runs as one compiled program; its numbers must stay those of sampling and then
    # scaling op by op (XLA would otherwise fuse the scaling into the sampler and round differently).
    key = jax.random.fold_in(jax.random.PRNGKey(3), 0)
    dims, eps = (5, 4, 3), 0.07
    keys = jax.random.split(key, len(dims) - 1)
    eager = [eps / jnp.sqrt(dims[l]) * jax.random.normal(keys[l], (dims[l + 1], dims[l])) for l in range(2)]
    for got, want in zip(models.init_linear(key, dims[0], dims[1:], init="gaussian", init_scale=eps), eager):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    keys = jax.random.split(key, len(dims))
    frames = []
    for l in range(len(dims)):
        q, r = jnp.linalg.qr(jax.random.normal(keys[l], (dims[l], dims[l])))
        frames.append((q * jnp.sign(jnp.diag(r))[None, :])[:, :min(dims)])
    eager = [eps * frames[l + 1] @ frames[l].T for l in range(2)]
    for got, want in zip(models.init_linear(key, dims[0], dims[1:], init="balanced", init_scale=eps), eager):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("shape", [((3, 4), (4, 5)), ((7, 7), (7, 7)), ((12, 12), (12, 12)), ((20, 30), (30, 10))])
def test_matmul_equals_the_dot_and_fuses_only_small_products(shape):
    from simulations import matmul

    a = jax.random.normal(jax.random.PRNGKey(0), shape[0])
    b = jax.random.normal(jax.random.PRNGKey(1), shape[1])
    np.testing.assert_allclose(np.asarray(matmul.matmul(a, b)), np.asarray(a @ b), rtol=1e-13, atol=1e-13)
    small = shape[0][0] * shape[0][1] * shape[1][1] <= matmul.FUSED_MAX_SIZE
    assert ("dot_general" in str(jax.make_jaxpr(matmul.matmul)(a, b))) != small
    w = a[:, : min(shape[0])]
    m = jnp.eye(w.shape[1]) + 0.1
    np.testing.assert_allclose(np.asarray(matmul.sandwich(w, m)), np.asarray(w @ m @ w.T), rtol=1e-13, atol=1e-13)
