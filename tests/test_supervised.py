"""Supervised contrastive and supervised learning: data, losses, linear theory vs flow, ReLU collapse, CLI.

Runtime: ~60-90 s on 2 idle CPU cores (mostly compilation of the training programs and two flows);
figure smoke tests are marked slow.
"""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from simulations import losses
from simulations import losses as slosses
from simulations.__main__ import main as cli_main
from simulations.commands import run_configs
from simulations.data import mixtures as sdata
from simulations.experiment import point
from simulations.experiments import supervised, supervised_common
from simulations.experiments.linear_supervised import LinearSupervisedConfig, run_linear_supervised
from simulations.experiments.supervised import EXPERIMENT, SupervisedConfig, shape_key
from simulations.models import relu
from theory import supervised as st

# Exact algebra (vectorized vs naive loops, closed forms vs each other): float64 rounding.
EXACT = 1e-10
# Monte Carlo checks allow this many standard errors (false-failure rate ~6e-7 per check).
MC_SIGMAS = 5.0
# Converged gradient flow (certified to loss_tol 1e-13, rtol 1e-5) vs closed-form Grams: measured ~1e-6.
FLOW_GRAM_TOLERANCE = 1e-4
# Subclass separation |P_l (m_s - m_c)| after the flow: exact zero in theory; the rotated case carries
# ~1e-8 of rounding through the eigen-cutoff and the flow (measured 1e-8).
SUBCLASS_TOLERANCE = 1e-6
# The public contract's thresholds (issue 5): fine-label R^2 below / above the head.
PRE_MIN_R2, POST_MAX_R2 = 0.7, 0.2
CONTRACT_SEEDS = (0, 1, 2, 3, 4)


def _mixture(**kwargs):
    return sdata.coarse_to_fine(dim=6, num_classes=2, separation=1.0, noise_std=0.3, **kwargs)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def test_coarse_to_fine_class_means_have_no_subclass_component():
    m = _mixture(class_offset=0.5)
    class_means = st.class_means(m.means, m.weights, m.coarse, 2)
    np.testing.assert_allclose(class_means[:, :2], 0.0, atol=EXACT)  # no linear readout of the subclass axes
    np.testing.assert_allclose(class_means[:, 2:4], 0.5 * np.eye(2), atol=EXACT)
    offsets = st.subclass_offsets(m.means, m.weights, m.coarse, 2)
    np.testing.assert_allclose(np.abs(offsets[:, :2]).sum(axis=1), 1.0, atol=EXACT)


def test_spurious_groups_follow_agreement():
    m = sdata.spurious(dim=3, agreement=0.9)
    group_mass = np.bincount(np.asarray(m.group), weights=np.asarray(m.weights), minlength=4)
    np.testing.assert_allclose(group_mass, [0.45, 0.05, 0.05, 0.45], atol=EXACT)
    balanced = sdata.with_agreement(m, 0.5)
    np.testing.assert_allclose(np.bincount(np.asarray(m.group), weights=np.asarray(balanced.weights)), 0.25, atol=EXACT)


def test_sample_moments_match_supervised_moments():
    m = _mixture(class_offset=0.5)
    A, B = st.supervised_moments(m.means, m.weights, m.coarse, m.noise_std, 2, augment_std=0.2)
    n = 200_000
    first = sdata.sample(m, jax.random.PRNGKey(0), n, augment_std=0.2)
    x = np.asarray(first.x)
    B_hat = x.T @ x / n
    # Same-class positives: pair each sample with an independent sample of its class.
    order = np.argsort(np.asarray(first.coarse), kind="stable")
    coarse_sorted = np.asarray(first.coarse)[order]
    partner = np.empty(n, dtype=int)
    for c in range(2):
        idx = order[coarse_sorted == c]
        partner[idx] = np.roll(idx, 1)
    A_hat = (x.T @ x[partner] + x[partner].T @ x) / (2 * n)
    # Entry-wise standard error of a second moment: sqrt(E[x_i^2 x_j^2] / n) <= sqrt(max E x^4 / n).
    scale = math.sqrt(np.max(np.mean(x**4, axis=0)) / n)
    assert np.max(np.abs(B_hat - B)) < MC_SIGMAS * scale
    assert np.max(np.abs(A_hat - A)) < MC_SIGMAS * scale


def test_rotate_requires_isotropic_noise():
    m = _mixture()._replace(noise_std=np.arange(1.0, 7.0))
    with pytest.raises(ValueError, match="isotropic"):
        sdata.rotate(m, np.eye(6))


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def _naive_supervised_spectral(z, labels, pi):
    n = len(labels)
    positive, negative = 0.0, 0.0
    for c in range(len(pi)):
        members = [i for i in range(n) if labels[i] == c]
        pairs = [(i, j) for i in members for j in members if i != j]
        positive += pi[c] * np.mean([z[i] @ z[j] for i, j in pairs])
        for c2 in range(len(pi)):
            others = [i for i in range(n) if labels[i] == c2]
            cross = [(z[i] @ z[j]) ** 2 for i in members for j in others if i != j]
            negative += pi[c] * pi[c2] * np.mean(cross)
    return -2 * positive + negative


def test_supervised_spectral_loss_matches_naive_loop():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((11, 3))
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2])
    pi = np.array([0.5, 0.3, 0.2])
    fast = slosses.supervised_spectral_loss(jnp.asarray(z), jnp.asarray(labels), jnp.asarray(pi))
    assert abs(float(fast) - _naive_supervised_spectral(z, labels, pi)) < EXACT


def test_supervised_spectral_loss_is_unbiased_for_the_population_form():
    m = _mixture(class_offset=0.5)
    A, B = st.supervised_moments(m.means, m.weights, m.coarse, m.noise_std, 2)
    W = jnp.asarray(np.random.default_rng(1).standard_normal((3, 6)) * 0.5)
    population = float(slosses.supervised_spectral_population_loss(W, jnp.asarray(A), jnp.asarray(B)))
    pi = jnp.asarray(st.class_probabilities(m.weights, m.coarse, 2))

    def estimate(key):
        s = sdata.sample(m, key, 64)
        return slosses.supervised_spectral_loss(s.x @ W.T, s.coarse, pi)

    values = np.asarray(jax.vmap(estimate)(jax.random.split(jax.random.PRNGKey(2), 4000)))
    assert abs(values.mean() - population) < MC_SIGMAS * values.std() / math.sqrt(values.size)


def test_supcon_loss_matches_naive_loop():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((7, 4))
    labels = np.array([0, 1, 0, 1, 2, 0, 1])  # sample 4 has no positive: skipped
    tau = 0.7
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    total, anchors = 0.0, 0
    for i in range(7):
        positives = [p for p in range(7) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(np.exp(u[i] @ u[a] / tau) for a in range(7) if a != i)
        total += -np.mean([np.log(np.exp(u[i] @ u[p] / tau) / denominator) for p in positives])
        anchors += 1
    fast = slosses.supcon_loss(jnp.asarray(z), jnp.asarray(labels), tau)
    assert abs(float(fast) - total / anchors) < EXACT


def test_classifier_losses_match_naive_formulas():
    rng = np.random.default_rng(4)
    z, U, b = rng.standard_normal((5, 3)), rng.standard_normal((2, 3)), rng.standard_normal(2)
    labels = np.array([0, 1, 1, 0, 1])
    logits = z @ U.T + b
    ce = np.mean([-(logits[i, labels[i]] - np.log(np.exp(logits[i]).sum())) for i in range(5)])
    sq = np.mean([0.5 * np.sum((logits[i] - np.eye(2)[labels[i]]) ** 2) for i in range(5)])
    classifier = (jnp.asarray(U), jnp.asarray(b))
    assert abs(float(slosses.cross_entropy_loss(classifier, jnp.asarray(z), jnp.asarray(labels))) - ce) < EXACT
    assert abs(float(slosses.squared_loss(classifier, jnp.asarray(z), jnp.asarray(labels))) - sq) < EXACT


def test_supervised_spectral_population_loss_is_the_spectral_loss_with_class_moments():
    m = _mixture(class_offset=0.5)
    A, B = st.supervised_moments(m.means, m.weights, m.coarse, m.noise_std, 2)
    W = jnp.asarray(np.random.default_rng(5).standard_normal((2, 6)))
    expected = -2 * np.trace(W @ A @ W.T) + np.sum((W @ B @ W.T) ** 2)
    assert abs(float(slosses.supervised_spectral_population_loss(W, jnp.asarray(A), jnp.asarray(B))) - expected) < EXACT
    assert float(losses.spectral_population_loss_of_map(W, jnp.asarray(A), jnp.asarray(B))) == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------
# Linear theory
# ----------------------------------------------------------------------------------------------


def test_squared_loss_optimum_is_stationary():
    m = _mixture(class_offset=0.5)
    _, B = st.supervised_moments(m.means, m.weights, m.coarse, m.noise_std, 2)
    M = st.class_cross_moment(m.means, m.weights, m.coarse, 2)
    theta = st.squared_loss_end_to_end(M, B)
    gradient = jax.grad(slosses.squared_population_loss)(jnp.asarray(theta), jnp.asarray(M), jnp.asarray(B))
    assert float(jnp.max(jnp.abs(gradient))) < EXACT


def test_diagonal_case_reduces_to_theory_linear_layer_weights():
    m = _mixture(class_offset=0.5)
    A, B = st.supervised_moments(m.means, m.weights, m.coarse, m.noise_std, 2)
    assert np.allclose(A, np.diag(np.diag(A)), atol=EXACT) and np.allclose(B, np.diag(np.diag(B)), atol=EXACT)
    grams = st.contrastive_layer_grams(A, B, depth=2)
    weights = st.direction_weights(grams, np.eye(6))
    np.testing.assert_allclose(weights, theory.layer_weights(np.diag(A), np.diag(B), 2), atol=1e-8)
    assert st.learned_rank(A, B) == 2
    np.testing.assert_allclose(weights[:, :2], 0.0, atol=EXACT)  # subclass axes absent in both layers


@pytest.mark.parametrize("loss", ["spectral", "squared"])
def test_linear_theory_matches_gradient_flow(loss):
    result = run_linear_supervised(LinearSupervisedConfig(loss=loss, rotate=True, seed=1))
    assert result["diagnostics"]["converged"]
    measured, predicted = result["measured"], result["predicted"]
    assert np.max(np.abs(measured["grams"] - predicted["grams"])) < FLOW_GRAM_TOLERANCE
    assert np.max(np.abs(measured["class_mean_weights"] - predicted["class_mean_weights"])) < FLOW_GRAM_TOLERANCE
    assert np.all(predicted["class_mean_weights"] > 0.1)  # the class-mean directions are learned ...
    assert np.max(measured["subclass_separation"]) < SUBCLASS_TOLERANCE  # ... the subclasses are merged in every layer
    assert np.max(predicted["subclass_separation"]) < SUBCLASS_TOLERANCE


# ----------------------------------------------------------------------------------------------
# ReLU networks: the public contract
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contract_runs():
    """Per seed, the CLI's three runs (batched exactly as the CLI batches them)."""
    return {seed: dict(zip(supervised.ARMS, run_configs(EXPERIMENT, supervised.build({"seed": seed}, True))))
            for seed in CONTRACT_SEEDS}


def test_relu_fine_labels_survive_below_and_collapse_above_the_head(contract_runs):
    table = {name: {layer: np.array([getattr(contract_runs[s][name], layer).fine_r2 for s in CONTRACT_SEEDS])
                    for layer in ("pre", "post")} for name in ("supcon", "cross_entropy")}
    spread = {name: {layer: (v.min().round(3), v.max().round(3)) for layer, v in t.items()}
              for name, t in table.items()}
    print(f"fine-label R^2 (min, max) over seeds {CONTRACT_SEEDS}: {spread}")
    for name, layers in table.items():
        assert np.all(layers["pre"] >= PRE_MIN_R2), (name, layers["pre"])
        assert np.all(layers["post"] <= POST_MAX_R2), (name, layers["post"])


def test_shift_worst_group_is_higher_below_the_head(contract_runs):
    pre = np.array([contract_runs[s]["shift"].pre.worst_group for s in CONTRACT_SEEDS])
    post = np.array([contract_runs[s]["shift"].post.worst_group for s in CONTRACT_SEEDS])
    print(f"shift worst-group pre {pre.round(3)} post {post.round(3)}")
    assert np.all(pre > post)
    # The mechanism: z's retrained readout weighs the spurious feature like the head's top direction does.
    ratios = np.array([[contract_runs[s]["shift"].weights.pre_spurious_ratio,
                        contract_runs[s]["shift"].weights.post_spurious_ratio] for s in CONTRACT_SEEDS])
    assert np.all(ratios[:, 1] > 3 * ratios[:, 0])


def test_cli_prints_the_contract_json(contract_runs):
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert cli_main(["supervised", "--quick", "--seed", "2", "--json"]) == 0
    payload = json.loads(buffer.getvalue())
    assert set(payload) == {"supcon", "cross_entropy", "shift", "diagnostics"}
    for name in supervised.ARMS:  # whether each run's training settled
        diagnostics = payload["diagnostics"][name]
        assert diagnostics["steps"] == SupervisedConfig.quick().steps and np.isfinite(diagnostics["final_loss"])
    assert payload["diagnostics"]["supcon"]["classifier_worst_group"] is None  # no classifier is trained
    for name in ("supcon", "cross_entropy"):
        assert set(payload[name]) == {"pre", "post"}
        for layer in ("pre", "post"):
            assert set(payload[name][layer]) == {"fine"}
            assert payload[name][layer]["fine"] == pytest.approx(getattr(contract_runs[2][name], layer).fine_r2,
                                                                 abs=EXACT)
    for layer in ("pre", "post"):
        assert set(payload["shift"][layer]) == {"worst_group", "average"}
        assert 0.0 <= payload["shift"][layer]["worst_group"] <= payload["shift"][layer]["average"] <= 1.0


def test_cli_bad_input_exits_2(capsys):
    assert cli_main(["supervised", "--quick", "--agreement", "1.5", "--json"]) == 2
    assert "agreement" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Protocol: validation, shape keys, batch invariance
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [("task", "other"), ("loss", "hinge"), ("init_scale", 0.0),
                                          ("agreement", -0.1), ("steps", 75), ("dim", 1), ("noise_std", -1.0)])
def test_config_validation_names_the_argument(field, value):
    with pytest.raises(ValueError, match=field):
        SupervisedConfig(**{field: value})


def test_shape_key_ignores_traced_fields():
    base = SupervisedConfig()
    same = SupervisedConfig(seed=3, init_scale=0.2, weight_decay=1e-3, loss="cross_entropy", network="linear",
                            agreement=0.7, learning_rate=0.1)
    assert shape_key(base) == shape_key(same)
    assert shape_key(base) != shape_key(SupervisedConfig(loss="infonce"))
    assert shape_key(base) != shape_key(SupervisedConfig(task="shift"))


def test_batch_result_does_not_depend_on_the_rest_of_the_batch():
    tiny = dict(steps=50, n_probe=64, n_test=64, width=8, head_dim=4, batch_size=32)
    a = SupervisedConfig(seed=1, **tiny)
    b = SupervisedConfig(seed=2, loss="cross_entropy", init_scale=0.2, **tiny)
    alone = point(supervised.run_batch([a]), 0)
    together = point(supervised.run_batch([b, a]), 1)
    for layer in ("pre", "post"):
        for field in ("fine_r2", "worst_group"):
            assert getattr(getattr(alone, layer), field) == pytest.approx(getattr(getattr(together, layer), field),
                                                                          abs=1e-9)
    np.testing.assert_allclose(alone.losses, together.losses, atol=1e-9)


def test_apply_network_matches_relu_and_linear():
    net = relu.init_relu(jax.random.PRNGKey(0), 5, 7, 3, init_scale=1.0)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
    h, z = supervised_common.apply_network(net, x, "relu")
    h_ref, z_ref = relu.apply_relu(net, x)
    np.testing.assert_allclose(h, h_ref, atol=EXACT)
    np.testing.assert_allclose(z, z_ref, atol=EXACT)
    h_lin, z_lin = supervised_common.apply_network(net, x, "linear")
    np.testing.assert_allclose(h_lin, x @ net.encoder.T, atol=EXACT)
    np.testing.assert_allclose(z_lin, x @ net.encoder.T @ net.head.T, atol=EXACT)


# ----------------------------------------------------------------------------------------------
# Figures (slow: each compiles its own training program)
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("module", ["supervised_coarse_to_fine", "supervised_shift"])
def test_quick_figure_smoke(tmp_path, module, monkeypatch):
    import importlib

    from simulations.runtime import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, "off")
    figure = importlib.import_module(f"figures.{module}")
    assert figure.main(["--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / f"{module}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tmp_path / f"{module}.json").read_text())
    assert record["quick"] is True and record["summary"]
    assert figure.main(["--quick", "--out", str(tmp_path), "--redraw"]) == 0
