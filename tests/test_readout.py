"""The readout-layer oracle: closed forms against independent computations, trained nets against theory."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from simulations.experiment import point
from simulations.experiments import readout as experiment
from theory import downstream as downstream_theory
from theory import readout as theory

# Exact algebra in float64 (eigendecompositions of 3x3 to 5x5 matrices).
EXACT = 1e-10
# Probe risk: test noise sqrt(2) MSE / sqrt(n_test) <= 0.002 at MSE <= 0.45 and n_test = 1e5, plus the
# O(1/sqrt(n_train)) training-sample error (~0.005 seen at n_train = 2e4): the agreement the command promises.
RISK_TOLERANCE = 0.02
# RankMe from n_train = 2e4 samples: singular values carry ~1/sqrt(n_train) = 0.7% relative error, the
# entropy averages it down; 5% is the promised agreement.
RANKME_RELATIVE = 0.05

INTERIOR = dict(pos_cov=(1.2, 0.4, 0.125), second_moment=(2.0, 4.0, 0.25), downstream_second_moment=(0.25, 4.0, 0.5))


def _rotated(seed=0):
    """A non-diagonal (A, B, Sigma_ds) with all invariance eigenvalues positive."""
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    a, b = np.array([0.9, 0.5, 0.3, 0.6]), np.array([1.0, 1.5, 2.0, 0.7])
    sigma = np.diag([1.0, 2.0, 0.5, 1.0])
    return q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T, sigma


def _brute_risk(gram, sigma, target, ridge):
    """Population ridge MSE from first principles: P = gram^(1/2), normalized covariance, solve."""
    P = np.real(scipy.linalg.sqrtm(gram))
    K = P @ sigma @ P.T
    total = np.trace(K)
    u = np.eye(len(sigma))[target]
    C = K / total
    c = P @ sigma @ u / np.sqrt(total * sigma[target, target])
    v = np.linalg.solve(C + ridge * np.eye(len(c)), c)
    return 1 - 2 * v @ c + v @ C @ v


# ----------------------------------------------------------------------------- closed forms


def test_grams_are_matrix_powers_of_the_optimum():
    A, B, _ = _rotated()
    depth = 5
    grams = theory.trained_layer_grams(A, B, depth)
    # G = B^(-1/2) C B^(-1/2) with C = B^(-1/2) A B^(-1/2) PSD here (all eigenvalues of C positive).
    c = np.real(scipy.linalg.inv(scipy.linalg.sqrtm(B)))
    gram = c @ (c @ A @ c) @ c
    np.testing.assert_allclose(grams[0], np.eye(4), atol=EXACT)
    for layer in range(1, depth + 1):
        expected = np.real(scipy.linalg.fractional_matrix_power(gram, layer / depth))
        np.testing.assert_allclose(grams[layer], expected, atol=EXACT)


def test_diagonal_grams_and_weight_decay_follow_the_per_feature_weights():
    a, b = np.array([0.9, 0.5, -0.2]), np.array([1.0, 0.6, 2.0])
    grams = theory.trained_layer_grams(a, b, 4)
    w = np.where(a > 0, np.sqrt(np.clip(a, 0, None)) / b, 0.0)
    for layer in range(5):
        np.testing.assert_allclose(np.diag(grams[layer]), w ** (2 * layer / 4) if layer else np.ones(3), atol=EXACT)
    decayed = theory.trained_layer_grams(a, b, 4, weight_decay=0.05, init_scale=0.8)
    weights = downstream_theory.feature_layer_weights(a, b, 4, weight_decay=0.05, init_scale=0.8)
    np.testing.assert_allclose(np.sqrt(np.diagonal(decayed, axis1=1, axis2=2)), weights, atol=EXACT)
    with pytest.raises(ValueError, match="weight_decay"):
        theory.trained_layer_grams(*_rotated()[:2], 4, weight_decay=0.1)


@pytest.mark.parametrize("rotated", [False, True])
def test_layer_risks_match_a_first_principles_ridge_solution(rotated):
    if rotated:
        A, B, sigma = _rotated()
    else:
        A, B, sigma = np.diag([0.9, 0.5, 0.3, 0.6]), np.diag([1.0, 1.5, 2.0, 0.7]), np.diag([1.0, 2.0, 0.5, 1.0])
    risks = theory.layer_risks(A, B, 6, 2, 0.1, downstream_second_moment=sigma)
    grams = theory.trained_layer_grams(A, B, 6)
    expected = [_brute_risk(g, sigma, 2, 0.1) for g in grams]
    np.testing.assert_allclose(risks, expected, atol=1e-8)


def test_rankme_is_the_entropy_of_normalized_singular_values_of_the_layer_map():
    A, B, _ = _rotated(1)
    depth = 4
    scores = theory.layer_rankme(A, B, depth)
    ranks = theory.layer_effective_rank(A, B, depth)
    for layer, gram in enumerate(theory.trained_layer_grams(A, B, depth)):
        P = np.real(scipy.linalg.sqrtm(gram))  # any factor P with P^T P = gram has the same spectrum
        singular = np.linalg.svd(P @ np.real(scipy.linalg.sqrtm(B)), compute_uv=False)
        assert scores[layer] == pytest.approx(np.exp(scipy.stats.entropy(singular / singular.sum())), abs=EXACT)
        assert ranks[layer] == pytest.approx(np.exp(scipy.stats.entropy(singular**2 / np.sum(singular**2))),
                                             abs=EXACT)


def test_diagonal_spectrum_interpolates_from_b_to_r():
    a, b = np.array([0.9, 0.5, 0.8]), np.array([1.0, 0.6, 2.0])
    spectra = theory.layer_spectra(theory.trained_layer_grams(a, b, 4), b)
    for layer in range(5):
        np.testing.assert_allclose(np.sort(spectra[layer]), np.sort(b ** (1 - layer / 4) * (a / b) ** (layer / 4)),
                                   atol=EXACT)


def test_derived_condition_gives_the_argmin_of_the_risks():
    rng = np.random.default_rng(3)
    checked = interior = 0
    for _ in range(400):
        d = rng.integers(2, 6)
        b = rng.uniform(0.1, 5.0, d)
        a = rng.uniform(-0.3, 1.0, d) * b
        b_ds = rng.uniform(0.0, 5.0, d)
        target = int(rng.integers(d))
        b_ds[target] = rng.uniform(0.1, 5.0)
        depth = int(rng.integers(2, 9))
        w = downstream_theory.feature_layer_weights(a, b, depth)[-1]
        from_weights = theory.best_layer_from_weights(w, b_ds, target, depth)
        for ridge in (1e-3, 0.1, 10.0):
            risks = theory.layer_risks(a, b, depth, target, ridge, downstream_second_moment=b_ds)
            assert theory.best_layer(risks) == from_weights
            checked += 1
        interior += theory.is_interior(w, b_ds, target, depth)
    assert checked == 1200 and interior >= 5  # the random draws do reach interior optima (10 with this seed)


def test_interior_optimum_example_and_ties():
    w = downstream_theory.feature_layer_weights(INTERIOR["pos_cov"], INTERIOR["second_moment"], 8)[-1]
    assert theory.is_interior(w, INTERIOR["downstream_second_moment"], 0, 8)
    risks = theory.layer_risks(INTERIOR["pos_cov"], INTERIOR["second_moment"], 8, 0, 0.1,
                               downstream_second_moment=INTERIOR["downstream_second_moment"])
    layer = theory.best_layer(risks)
    assert layer == 4 and risks[layer] < risks[1] - 0.05 and risks[layer] < risks[8] - 0.05
    # Dead target: risk 1 at every layer >= 1, a tie that goes to layer 1.
    dead = theory.layer_risks((0.9, -0.2), (1.0, 1.0), 5, 1, 0.1)
    np.testing.assert_allclose(dead[1:], 1.0, atol=EXACT)
    assert theory.best_layer(dead) == 1 and theory.best_layer_from_weights(np.array([0.9, 0.0]), (1, 1), 1, 5) == 1


def test_best_layer_map_matches_pointwise_risks():
    r, b_j = np.array([0.2, 0.6, 0.95]), np.array([[0.3], [1.0], [3.0]])
    maps = theory.best_layer_map((0.9, 0.5, 0.3), (1.0, 1.0, 1.0), 1, (2, 5, 8), 0.1, invariance=r, strength=b_j)
    assert maps.shape == (3, 3, 3)
    for k, depth in enumerate((2, 5, 8)):
        for i in range(3):
            for m in range(3):
                a = np.array([0.9, r[m] * b_j[i, 0], 0.3])
                b = np.array([1.0, b_j[i, 0], 1.0])
                assert maps[k, i, m] == theory.best_layer(theory.layer_risks(a, b, depth, 1, 0.1)) / depth


def test_regret_and_selectors():
    risks = np.array([0.5, 0.4, 0.2, 0.3])
    assert theory.best_layer(risks) == 2 and theory.regret(risks, 1) == pytest.approx(0.2)
    assert theory.selected_layer(np.array([9.0, 3.0, 3.0, 1.0])) == 1  # layer 0 is never chosen; ties: shallower
    prediction = theory.predict_readout((0.9, 0.5, 0.3), (1, 1, 1), 8, 0, 0.1)
    assert prediction.best_layer == 8 and prediction.rankme_layer == 1 and prediction.rankme_regret > 0.02


# ----------------------------------------------------------------------------- trained networks


@pytest.fixture(scope="module")
def trained():
    """Depth-8 nets, one vmapped solve: the interior case for every target, a second seed, and weight decay
    (0.03 from init 1.0 kills the weak feature 1, which moves the target's best layer from 4 to 1)."""
    configs = [experiment.ReadoutConfig(**INTERIOR, depth=8, target=j) for j in range(3)]
    configs += [experiment.ReadoutConfig(**INTERIOR, depth=8, target=0, seed=1),
                experiment.ReadoutConfig(**INTERIOR, depth=8, target=0, weight_decay=0.03, init_scale=1.0)]
    result = experiment.run_batch(configs)
    return [(config, experiment.report(point(result, i), config)) for i, config in enumerate(configs)]


def test_trained_nets_read_out_as_predicted(trained):
    for config, report in trained:
        assert report["diagnostics"]["converged"], config
        np.testing.assert_allclose(report["risk"]["measured"], report["risk"]["predicted"], atol=RISK_TOLERANCE)
        np.testing.assert_allclose(report["rankme"]["measured"], report["rankme"]["predicted"], rtol=RANKME_RELATIVE)
        assert report["best_layer"]["measured"] == report["best_layer"]["predicted"], config
        assert len(report["risk"]["measured"]) == config.depth + 1
    interior = trained[0][1]
    assert 1 < interior["best_layer"]["measured"] < 8
    assert trained[-1][1]["best_layer"]["predicted"] == 1  # weight decay moved it
    prediction = experiment.predict(trained[0][0])
    np.testing.assert_allclose(interior["risk"]["predicted"], prediction.risk, atol=1e-12)


def test_bad_input_is_one_line_with_exit_2(cli_environment):
    out = subprocess.run([sys.executable, "-m", "simulations", "readout", "--pos-cov", "0.9,0.5", "--second-moment",
                          "1,1,1", "--target", "0", "--json"], capture_output=True, text=True, timeout=120,
                         env=cli_environment)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "second_moment" in out.stderr
    with pytest.raises(ValueError, match="target"):
        experiment.ReadoutConfig(pos_cov=(0.9, 0.5), second_moment=(1.0, 1.0), target=2)


def test_command_saves_results_with_provenance(tmp_path, cli_environment):
    out = subprocess.run([sys.executable, "-m", "simulations", "readout", "--pos-cov", "0.9,0.5", "--second-moment",
                          "1,1", "--target", "1", "--depth", "2", "--quick", "--no-progress", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=cli_environment)
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "readout.json").read_text())
    arrays = np.load(tmp_path / "readout.npz")
    assert record["config"]["target"] == 1 and "risk" in arrays and arrays["risk"].shape == (3,)
    assert record["report"]["best_layer"]["predicted"] in (1, 2) and "provenance" in json.dumps(record)


# Gaussian small init is unbalanced by O(init_scale^2), conserved by the flow: at init 0.2 and depth 4 the layer
# weights miss the balanced ones by up to 0.015-0.028 (seeds 0-2), and the measured risks by up to 0.018 (seed 0).
# RISK_TOLERANCE's sampling error plus that imbalance.
UNBALANCED_RISK_TOLERANCE = 0.03


def test_gaussian_init_in_its_window_reads_out_at_the_balanced_layers():
    """Depth 4, Gaussian init 0.2: every feature is learned and each target's best layer is the balanced one
    (interior for target 0). Smaller inits stall the weak feature 1 on a high-order saddle, and larger ones
    keep an O(init_scale^2) imbalance. Both move l* (docs/readout.md), so this pins only the window."""
    configs = [experiment.ReadoutConfig(**INTERIOR, depth=4, target=j, init="gaussian", init_scale=0.2)
               for j in range(3)]
    result = experiment.run_batch(configs)
    for i, config in enumerate(configs):
        report = experiment.report(point(result, i), config)
        assert report["diagnostics"]["converged"], config
        np.testing.assert_allclose(report["risk"]["measured"], report["risk"]["predicted"],
                                   atol=UNBALANCED_RISK_TOLERANCE)
        assert report["best_layer"]["measured"] == report["best_layer"]["predicted"], config
    assert experiment.predict(configs[0]).best_layer == 2  # interior at depth 4
