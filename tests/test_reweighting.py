"""The fixed reweighting head: the head itself, its theory, the experiment and its CLI contract.

Exact checks: the head's algebra, encoders of every kind, the population loss's gradient. Agreement
checks: trained encoders' post-head weights equal the no-head optimum sqrt(a)/b; pre-head weights
follow the rank rule k^n sqrt(a)/b where the time scales separate, and converge to it as the init
shrinks (rate check) where they do not; k = 1 is no head. A pinned departure: the issue's claimed
regime (k >= 2, init <= 1e-4, ratio gaps >= 0.1) is not enough in general.

Compilation dominates (each (d, width, depth, init, batch size) compiles once), so the agreement
checks share module-scoped batched runs.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simulations import models
from simulations.experiment import point
from simulations.experiments.reweighting import ReweightingConfig, run_batch, run_reweighting, shape_key
from simulations.losses import spectral_population_loss_of_map
from simulations.models import heads, relu
from theory import reweighting as theory

# Exact algebra (float64, a few operations).
EXACT = 1e-12
# The brief's contract on post-head weights (measured <= 2e-7: the flow's steady state).
POST_RTOL = 1e-3
# Pre-head weights inside the measured regime (exchange margin >= 1.5, init <= 1e-4): the brief's
# 1e-3. Measured <= 7.8e-7 on 16 problems with ratio gaps 0.2 at k = 3, init 1e-4 (margin 1.89).
PRE_RTOL = 1e-3
# k = 1 is no head: pre = post to the flow's accuracy.
NO_HEAD_RTOL = 1e-6
# Finite differences of a quartic loss in float64 (central, step 1e-6): error ~ h^2 |f'''| ~ 1e-10.
FD_STEP, FD_RTOL = 1e-6, 1e-6
# Unlearned features (narrow width): rotated out exponentially; measured <= 1e-6.
UNLEARNED_ATOL = 1e-4


def random_problem(seed, dim, gap=0.2):
    """b ~ U(0.5, 2), ratios 0.95, 0.95 - gap, ... in random order."""
    rng = np.random.default_rng(seed)
    b = rng.uniform(0.5, 2.0, dim)
    r = rng.permutation(0.95 - gap * np.arange(dim))
    return tuple(r * b), tuple(b)


def _configs(seeds, gap=0.2, **fields):
    return [ReweightingConfig(pos_cov=random_problem(s, 4, gap)[0], second_moment=random_problem(s, 4, gap)[1],
                              seed=s, **fields) for s in seeds]


def _points(configs):
    """Per-point results of one batched run of ``configs``, in order."""
    result = run_batch(configs)
    return [point(result, index) for index in range(len(configs))]


def _pre_error(result):
    measured, predicted = result.pre.measured, result.pre.predicted
    learned = predicted > 0
    return float(np.max(np.abs(measured[learned] / predicted[learned] - 1)))


# --------------------------------------------------------------------------- the head itself


def test_head_scales_and_matrix():
    np.testing.assert_allclose(heads.head_scales(2.0, 4), [1, 0.5, 0.25, 0.125], rtol=EXACT)
    np.testing.assert_allclose(heads.fixed_head_matrix(1.0, 3), np.eye(3), rtol=EXACT)
    h = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    np.testing.assert_allclose(heads.apply_fixed_head(h, 1.5), h @ heads.fixed_head_matrix(1.5, 3), rtol=EXACT)


def test_fixed_head_works_with_every_encoder():
    key = jax.random.PRNGKey(1)
    x = jax.random.normal(key, (7, 3))
    linear = models.init_gaussian(key, 3, [4, 5], init_scale=0.5)
    h, z = heads.apply_with_fixed_head(linear, x, 1.2)
    np.testing.assert_allclose(h, models.apply_linear(linear, x)[-1], rtol=EXACT)
    np.testing.assert_allclose(z, h * (1.2 ** -np.arange(5))[None, :], rtol=EXACT)
    for params in (relu.init_relu(key, 3, 6, 2, bias=True), relu.init_diagonal_relu(key, 3, 2, 2)):
        encoder = heads.relu_encoder(params)
        assert encoder.head is None  # nothing left to train in a head
        h, z = heads.apply_with_fixed_head(encoder, x, 2.0)
        np.testing.assert_allclose(h, relu.apply_relu(params, x)[0], rtol=EXACT)
        np.testing.assert_allclose(z, h * (2.0 ** -np.arange(h.shape[1]))[None, :], rtol=EXACT)
    # Any loss on z; the gradient flows into the encoder only.
    grads = jax.grad(lambda p: jnp.sum(heads.apply_with_fixed_head(p, x, 2.0)[1] ** 2))(
        heads.relu_encoder(relu.init_relu(key, 3, 6, 2)))
    assert grads.head is None and grads.encoder.shape == (6, 3)


def test_population_loss_is_loss_of_head_map_and_gradient_matches_finite_differences():
    a, b = np.array([0.9, 0.5, 0.8]), np.array([1.0, 0.6, 2.0])
    A, B = jnp.diag(a), jnp.diag(b)
    W = jax.random.normal(jax.random.PRNGKey(2), (3, 3))
    D = heads.fixed_head_matrix(1.7, 3)
    value = heads.fixed_head_population_loss((W,), A, B, 1.7)
    np.testing.assert_allclose(value, spectral_population_loss_of_map(D @ W, A, B), rtol=EXACT)
    grad = jax.grad(lambda w: heads.fixed_head_population_loss((w,), A, B, 1.7))(W)
    M = D @ W
    np.testing.assert_allclose(grad, D @ (-4 * M @ A + 4 * M @ B @ M.T @ M @ B), rtol=1e-10)
    direction = jax.random.normal(jax.random.PRNGKey(3), W.shape)
    f = lambda s: heads.fixed_head_population_loss((W + s * direction,), A, B, 1.7)
    fd = (f(FD_STEP) - f(-FD_STEP)) / (2 * FD_STEP)
    np.testing.assert_allclose(fd, jnp.vdot(grad, direction), rtol=FD_RTOL)


# --------------------------------------------------------------------------- theory


def test_feature_ranks_and_weights():
    a, b = (0.76, 1.02, 0.325, 0.72), (0.8, 1.2, 0.5, 1.6)  # r = 0.95, 0.85, 0.65, 0.45
    np.testing.assert_array_equal(theory.feature_ranks(a, b), [0, 1, 2, 3])
    weights = theory.fixed_head_weights(a, b, 2.0)
    w = np.sqrt(a) / np.array(b)
    np.testing.assert_allclose(weights.post, w, rtol=EXACT)
    np.testing.assert_allclose(weights.pre, w * 2.0 ** np.arange(4), rtol=EXACT)
    # Narrow width and a negative ratio: unlearned features get rank -1 and weight 0.
    ranks = theory.feature_ranks((0.76, -0.3, 0.325, 0.72), b, width=2)
    np.testing.assert_array_equal(ranks, [0, -1, 1, -1])
    narrow = theory.fixed_head_weights((0.76, -0.3, 0.325, 0.72), b, 3.0, width=2)
    assert narrow.pre[1] == narrow.pre[3] == 0 and narrow.post[1] == 0
    # Deeper encoders: layer l of L carries the encoder-output weight to the power l/L.
    deep = theory.fixed_head_weights(a, b, 2.0, depth=2)
    np.testing.assert_allclose(deep.pre[1], weights.pre, rtol=EXACT)
    np.testing.assert_allclose(deep.pre[0], np.sqrt(weights.pre), rtol=EXACT)
    # k = 1: no head.
    np.testing.assert_allclose(theory.fixed_head_weights(a, b, 1.0).pre, w, rtol=EXACT)


def test_separation_and_regime():
    assert theory.separation(1.0, 1e-4) == 1.0
    np.testing.assert_allclose(theory.separation(2.0, 1e-4), 1e-4 ** 0.75, rtol=EXACT)
    assert theory.min_ratio_gap((0.9, 0.8, 0.7), (1, 1, 1)) == pytest.approx(0.1)
    # Relative gaps 0.1/0.9 and 0.1/0.8: margin k^2 / 9.
    np.testing.assert_allclose(theory.exchange_margin((0.9, 0.8, 0.7), (1, 1, 1), 3.0), 1.0, rtol=EXACT)
    assert theory.rank_rule_tolerance((0.9, 0.8, 0.7), (1, 1, 1), 3.0, 1e-8) == 5e-2
    assert theory.rank_rule_tolerance((0.9, 0.8, 0.7), (1, 1, 1), 4.0, 1e-4) == 1e-3
    assert theory.rank_rule_tolerance((0.9, 0.8, 0.7), (1, 1, 1), 3.0, 1e-2) is None  # init too large
    assert theory.rank_rule_tolerance((0.9, 0.8, 0.7), (1, 1, 1), 1.05, 1e-8) is None
    # The issue's regime (k >= 2, gaps >= 0.1) is not enough: margin 4 / 9.
    assert theory.rank_rule_tolerance((0.9, 0.8, 0.7), (1, 1, 1), 2.0, 1e-8) is None


@pytest.mark.parametrize("bad, match", [
    (dict(kappa=0.9), "kappa"), (dict(kappa=float("nan")), "kappa"), (dict(width=0), "width"),
    (dict(depth=0), "depth"), (dict(init="aligned"), "init"), (dict(init_scale=0.0), "init_scale"),
    (dict(seed=-1), "seed"), (dict(pos_cov=(1.5, 0.5, 0.8)), "pos_cov"),
])
def test_bad_config_raises_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        ReweightingConfig(**bad)
    with pytest.raises(ValueError, match="kappa"):
        theory.fixed_head_weights((0.9,), (1.0,), 0.5)


# --------------------------------------------------------------------------- agreement with theory


@pytest.fixture(scope="module")
def separated_runs():
    """Random problems (ratio gaps 0.2, b ~ U(0.5, 2)) at k = 3 from init 1e-4: margin 1.89, in regime."""
    return _points(_configs(range(6), kappa=3.0, init_scale=1e-4))


def test_post_head_weights_are_the_no_head_optimum(separated_runs):
    for result in separated_runs:
        assert result.diagnostics.converged
        np.testing.assert_allclose(result.post.measured, result.post.predicted, rtol=POST_RTOL)


def test_pre_head_weights_follow_the_rank_rule_when_time_scales_separate(separated_runs):
    for index, result in enumerate(separated_runs):
        config = _configs([index], kappa=3.0, init_scale=1e-4)[0]
        assert theory.rank_rule_tolerance(config.pos_cov, config.second_moment, config.kappa,
                                          config.init_scale) == PRE_RTOL
        assert _pre_error(result) < PRE_RTOL
        np.testing.assert_array_equal(result.coordinates, result.predicted_coordinates)
        assert abs(result.diagnostics.loss - result.diagnostics.predicted_loss) < 1e-8


def test_no_head_is_k_equal_one():
    # Batch of 2 at d = 4: the same compiled program as the batch-independence test.
    for result in _points(_configs([0, 1], kappa=1.0, init_scale=1e-3)):
        np.testing.assert_allclose(result.pre.measured, result.post.measured, rtol=NO_HEAD_RTOL)
        np.testing.assert_allclose(result.post.measured, result.post.predicted, rtol=POST_RTOL)


def test_rank_rule_is_the_small_init_limit_and_the_issue_regime_is_not_enough():
    """Seed 6's problem exchanges two features between coordinates 1 and 2 (a ranks them the other
    way round; exchange margin 0.42 at k = 2). Its deviation from the rank rule shrinks with the
    init (measured 0.93, 0.084, 3.2e-4 at 1e-4, 1e-8, 1e-12): the rule is the small-init limit, but
    init 1e-4 is far from it."""
    configs = [_configs([6], gap=0.1, kappa=2.0, init_scale=eps)[0] for eps in (1e-4, 1e-7, 1e-10)]
    assert theory.exchange_margin(configs[0].pos_cov, configs[0].second_moment, 2.0) < 0.5
    errors = [_pre_error(r) for r in _points(configs)]
    print("seed-6 deviations at init 1e-4, 1e-7, 1e-10:", errors)
    assert errors[0] > 0.5  # pinned departure from the issue's claimed 1e-3 at k >= 2, init <= 1e-4
    assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3


@pytest.mark.slow
def test_deeper_encoder_follows_the_rank_rule_where_depth_one_does_not():
    """Depth-2 encoder, k = 2, margin 0.42 (depth 1 fails by up to 0.93 here): measured <= 4.8e-4
    at per-layer init 1e-2, every encoder layer matching (k^n sqrt(a)/b)^(l/L)."""
    results = _points(_configs(range(2), gap=0.1, kappa=2.0, depth=2, init_scale=1e-2))
    for result in results:
        assert result.diagnostics.converged
        np.testing.assert_allclose(result.post.measured, result.post.predicted, rtol=POST_RTOL)
        np.testing.assert_allclose(result.pre_layers.measured, result.pre_layers.predicted,
                                   rtol=PRE_RTOL)


def test_narrow_width_learns_top_ratios_only():
    a, b = (0.76, 1.02, 0.325, 0.72), (0.8, 1.2, 0.5, 1.6)
    # Width 2 keeps r = 0.95, 0.85 (margin 16 x 0.105 = 1.7 at k = 4).
    result = run_reweighting(ReweightingConfig(pos_cov=a, second_moment=b, kappa=4.0, width=2, init_scale=1e-4))
    assert result.diagnostics.converged
    np.testing.assert_allclose(result.pre.measured[:2], result.pre.predicted[:2], rtol=PRE_RTOL)
    np.testing.assert_allclose(result.pre.measured[2:], 0.0, atol=UNLEARNED_ATOL)


def test_batch_results_do_not_depend_on_batch_companions(separated_runs):
    config = _configs([2], kappa=3.0, init_scale=1e-4)[0]
    alone = _points([config, config])[0]  # padding by repetition (shape (2, ...))
    np.testing.assert_allclose(alone.pre.measured, separated_runs[2].pre.measured, rtol=1e-6)
    assert shape_key(config) == shape_key(_configs([0], kappa=1.5, init_scale=1e-2)[0])
    with pytest.raises(ValueError, match="shape_key"):
        run_batch([config, ReweightingConfig(kappa=2.0)])


# --------------------------------------------------------------------------- CLI contract


def test_cli_json_contract(capsys):
    from simulations.__main__ import main

    # r = 0.95, 0.6, 0.3, 0.1: exchange margin 3.3 at k = 3, inside the measured regime.
    code = main(["reweighting", "--pos-cov", "0.95,0.6,0.3,0.05", "--second-moment", "1,1,1,0.5",
                 "--kappa", "3", "--init-scale", "1e-4", "--seed", "1", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for part in ("pre", "post"):
        assert len(out[part]["measured"]) == len(out[part]["predicted"]) == 4
    assert {"converged", "t_final", "steps"} <= set(out["diagnostics"])
    assert out["diagnostics"]["converged"] is True
    np.testing.assert_allclose(out["post"]["measured"], out["post"]["predicted"], rtol=POST_RTOL)
    np.testing.assert_allclose(out["pre"]["measured"], out["pre"]["predicted"], rtol=PRE_RTOL)


def test_cli_bad_input_exits_2(capsys):
    from simulations.__main__ import main

    code = main(["reweighting", "--pos-cov", "0.9,0.5", "--second-moment", "1,0.6", "--kappa", "0.5", "--json"])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "kappa" in captured.err and len(captured.err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- figures


@pytest.mark.parametrize("name", ["reweighting_pre_weights",
                                  pytest.param("reweighting_downstream", marks=pytest.mark.slow)])
def test_quick_figure_smoke(tmp_path, name):
    """--quick into tmp_path. The downstream figure compiles two flows and a probe (> 20 s): slow."""
    import importlib

    module = importlib.import_module(f"figures.{name}")
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record["quick"] is True and record["all_converged"] is True
