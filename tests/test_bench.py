"""The benchmark (bench/): its NumPy baseline, its step rule, and a smoke run of the CLI contract.

The benchmark is a script, not a timed test: nothing here asserts a speed. The smoke test checks
the public contract of ``python -m bench --quick --json`` (one JSON object on stdout, the three
keys, each with a positive finite ratio and the problem it was measured on).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simulations
from bench.numpy_baseline import feature_weights, gradient_descent, loss_gradient
from bench.problems import PINNED_PROBLEM, QUICK_PROBLEM, hessian_lambda_max, largest_stable_step
from bench.report import CONTRACT_KEYS
from simulations import measure, models
from simulations.experiments.weighting import population_loss
from simulations.flow import FlowOptions, gradient_flow
from theory import linear

ROOT = Path(__file__).resolve().parent.parent

# The NumPy gradient and jax.grad compute the same float64 algebra in a different order.
GRADIENT_RTOL = 1e-10
# Fixed-step GD stability: the stiffest mode at the optimum is multiplied by (1 - h lambda_max)
# a step, so 0.95 x 2 / lambda_max must shrink a perturbation and 1.05 x must grow it; 400 steps
# amplify a 1.05 growth factor ((1 - 2.1) = -1.1 a step) by 1.1^400 ~ 1e16.
STABILITY_STEPS = 400
# The layer-weight floor of fixed-step GD is first order in the step (the balance drifts by
# O(h^2) a step over O(1/h) steps): halving the step must halve it, within 15 %.
FLOOR_RATIO_BOUNDS = (1.7, 2.3)
# Euler at the largest stable step vs the default solver, end-to-end weights at the steady state
# (both stop when the loss left to gain is ~1e-13; distance ~ sqrt(1e-13 / curvature) ~ 1e-6).
EULER_E2E_RTOL = 1e-5


def _layers0(problem, seed=0):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    return [np.asarray(w) for w in models.init_linear(key, problem.dim, (problem.width,) * problem.depth,
                                                       init="balanced", init_scale=problem.init_scale)]


def test_numpy_gradient_matches_autodiff():
    """Exact check: the baseline's analytic gradient equals jax.grad of the library's loss."""
    a, b = PINNED_PROBLEM.moments()
    layers = _layers0(PINNED_PROBLEM, seed=3)
    layers = [w * 20.0 for w in layers]  # away from the tiny init, where every term matters
    expected = jax.grad(population_loss)(tuple(jnp.asarray(w) for w in layers), PINNED_PROBLEM.flow_args())
    for mine, theirs in zip(loss_gradient(layers, a, b), expected):
        np.testing.assert_allclose(mine, np.asarray(theirs), rtol=GRADIENT_RTOL,
                                   atol=GRADIENT_RTOL * float(np.abs(theirs).max()))


def test_feature_weights_match_library_measure():
    layers = _layers0(QUICK_PROBLEM, seed=1)
    np.testing.assert_allclose(feature_weights(layers),
                               np.asarray(measure.feature_weights(tuple(jnp.asarray(w) for w in layers))),
                               rtol=1e-12)


def _perturbed_optimum_growth(problem, step):
    a, b = problem.moments()
    sigma = (np.sqrt(a) / b) ** (1.0 / problem.depth)
    rng = np.random.default_rng(0)
    optimum = [np.diag(sigma) for _ in range(problem.depth)]
    layers = [w + 1e-8 * rng.standard_normal(w.shape) for w in optimum]
    start = max(np.abs(w - o).max() for w, o in zip(layers, optimum))
    for _ in range(STABILITY_STEPS):
        for weight, grad in zip(layers, loss_gradient(layers, a, b)):
            weight -= step * grad
    return max(np.abs(w - o).max() for w, o in zip(layers, optimum)) / start


def test_largest_stable_step_is_the_stability_limit():
    """Just below 2 / lambda_max GD settles at the optimum; just above, it is thrown off."""
    lam = hessian_lambda_max(QUICK_PROBLEM)
    assert _perturbed_optimum_growth(QUICK_PROBLEM, 0.95 * 2 / lam) < 10.0  # flat directions may drift
    assert _perturbed_optimum_growth(QUICK_PROBLEM, 1.05 * 2 / lam) > 1e6
    assert largest_stable_step(QUICK_PROBLEM) < 2 / lam


def test_fixed_step_layer_floor_is_first_order():
    """Rate check: GD's end-to-end weights converge, its layer weights stall at an O(step) error."""
    a, b = QUICK_PROBLEM.moments()
    target = linear.layer_weights(a, b, QUICK_PROBLEM.depth)
    step = largest_stable_step(QUICK_PROBLEM)
    floors = []
    for h in (step, step / 2):
        run = gradient_descent(_layers0(QUICK_PROBLEM), a, b, h, target)
        assert run.reason == "floor", run
        floors.append(run.layer_error)
    assert floors[1] > 1e-4  # the reason the baseline must shrink its step below the stable one
    assert FLOOR_RATIO_BOUNDS[0] < floors[0] / floors[1] < FLOOR_RATIO_BOUNDS[1], floors


def test_euler_flow_reaches_the_steady_state_with_default_max_time():
    """Regression: diffrax counted max_time / euler_step fixed steps in int32 (overflowed at 1e12)."""
    problem = QUICK_PROBLEM
    params0 = tuple(jnp.asarray(w) for w in _layers0(problem))
    step = largest_stable_step(problem)
    fixed = gradient_flow(population_loss, params0, problem.flow_args(),
                          options=FlowOptions(solver="euler", euler_step=step, certify=False))
    assert bool(fixed.converged)
    assert int(fixed.steps) == pytest.approx(float(fixed.t_final) / step, abs=2)
    a, b = problem.moments()
    weights = np.asarray(measure.feature_weights(fixed.params))[-1]
    np.testing.assert_allclose(weights, linear.end_to_end_weights(a, b), rtol=EULER_E2E_RTOL)


def test_cli_quick_json_contract(tmp_path):
    """Smoke: ``python -m bench --quick --json`` prints one JSON object with the contract keys.

    Shrunk to seconds (4 sweep points, NumPy capped at 1 s, the quick problem for the adaptive part):
    the contract and the lower-bound marking are checked, not the speed.
    """
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", "--out", str(tmp_path), "--sweep-points", "4",
         "--numpy-budget", "1", "--adaptive-problem", "quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout)  # stdout holds exactly the JSON object
    for key in CONTRACT_KEYS:
        entry = report[key]
        assert isinstance(entry["ratio"], float) and math.isfinite(entry["ratio"]) and entry["ratio"] > 0, entry
        assert entry["problem"]["dim"] == QUICK_PROBLEM.dim and entry["problem"]["depth"] == QUICK_PROBLEM.depth
        assert isinstance(entry["ratio_is_lower_bound"], bool)
    # 1 s cannot reach 1e-4 agreement on the quick problem (~1.8e6 steps): a bound, and marked as one.
    assert report["vs_numpy_loop"]["ratio_is_lower_bound"] is True
    assert "vs_numpy_loop: >= " in completed.stderr and "LOWER BOUND" in completed.stderr
    # One CPU device: the batch's flows run point by point on every core, with the single-run program.
    assert report["sweep_vs_python_loop"]["devices"] == 1 == report["machine"]["device_count"]
    assert "every core" in report["sweep_vs_python_loop"]["placement"]
    assert "pixels_run" not in report  # full mode only
    machine = report["machine"]
    assert machine["jax_version"] == jax.__version__
    assert machine["cpu_model"] and machine["cpu_cores_usable"] >= 1 and len(machine["load_average_1_5_15"]) == 3
    assert {"cpu_family_model", "cpu_mhz", "cpu_vector_extension"} <= set(machine)
    # which code ran: runs of two versions on one host sit side by side under bench/results
    assert report["code"]["library_version"] == simulations.__version__
    assert set(report["code"]) == {"library_version", "git_commit", "git_dirty", "xla_flags"}
    assert f"code: projection-head-theory {simulations.__version__}" in completed.stderr
    # --quick uses the compilation cache and says how full it was (a warm cache turns "with compile" into loads).
    assert report["compilation_cache"] is True and report["compilation_cache_entries_at_start"] >= 0
    assert "compilation cache: on, " in completed.stderr
    saved = list(tmp_path.glob("*_quick.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["vs_numpy_loop"] == report["vs_numpy_loop"]


def test_summary_names_the_compilation_cache_state():
    from bench.report import summary_lines

    def cache_line(used, entries):
        report = {"machine": {}, "compilation_cache": used, "compilation_cache_entries_at_start": entries}
        return summary_lines(report)[-1]

    assert cache_line(False, None) == "compilation cache: off (every compile is timed)"
    assert "empty at start" in cache_line(True, 0)
    assert "12 files at start" in cache_line(True, 12) and "--cold" in cache_line(True, 12)


def test_cli_rejects_bad_input():
    completed = subprocess.run([sys.executable, "-m", "bench", "--quick", "--python-calls", "0", "--no-save"],
                               cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and "--python-calls" in completed.stderr


def test_figure_timer_reads_every_figure_line_and_compares_totals():
    """bench.figures reads the per-figure times python -m figures prints (progress bars of either
    worker included)."""
    from bench import figures as bench_figures

    stderr = ("reweighting_pre_weights: post max rel error 1.8e-07\n"
              "reweighting_pre_weights: wrote /tmp/x/reweighting_pre_weights.png (10.6 s)\n"
              "trajectories: 100%|##| 2/2 [00:13<00:00]\rtrajectories: wrote /tmp/x/trajectories.png (19.6 s)\n"
              "init_scale:  33%|#  | 1/3 [00:12<00:25]weighting_layers: wrote /tmp/x/weighting_layers.png (9.7 s)\n"
              "17 figures: 290.7 s (2 process(es))\n")
    assert bench_figures.figure_times(stderr) == {"reweighting_pre_weights": 10.6, "trajectories": 19.6,
                                                  "weighting_layers": 9.7}
    total = bench_figures.against_target(31.0, "quick_cold")
    lines = bench_figures.summary_lines({"quick": {"totals": {"quick_cold": total}}})
    assert lines == ["quick_cold: 31.0 s (target <= 30 s: NOT met)"]


def test_figure_timer_rejects_unknown_parts():
    completed = subprocess.run([sys.executable, "-m", "bench.figures", "--skip", "figures,nothing"], cwd=ROOT,
                               capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 2 and "--skip" in completed.stderr


def test_fused_product_benchmark_switches_between_dots_and_fused_products():
    # bench.matmul times the same loss traced with dots and fused: the fused trace has no dot left,
    # and both flows take the same steps (the products agree to rounding).
    from bench import matmul as bench_matmul

    seen = []

    def lowered(limit):
        params, args = bench_matmul._problem()
        return bench_matmul._with_threshold(
            limit, lambda: str(jax.make_jaxpr(jax.grad(population_loss))(params, args)))

    for limit in (0, 10**9):
        seen.append("dot_general" in lowered(limit))
    assert seen == [True, False]
    solve = bench_matmul.solve_costs()
    assert solve["dot"]["steps"] == solve["fused"]["steps"] > 0
