"""Which ODE solver should gradient flow use? Measures each on the pinned problem.

Run:  python -m bench.integrators [--kvaerno-steps N]
Expected runtime: about a minute on 2 CPU cores.

For each solver: wall time (compile excluded, measured separately), accepted steps, and the
max relative error of the end-to-end per-feature weights against sqrt(a)/b at the end. The
implicit solver is too slow to run to the end on the CPU, so it is run for a fixed number of
steps and its per-step cost is reported; the explicit adaptive solver is capped at --tsit5-steps
(its flow time reached shows how far it got).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from bench.problems import PINNED, pinned_moments
from simulations import measure, models
from simulations.experiments.weighting import population_loss
from simulations.flow import FlowOptions, gradient_flow
from simulations.runtime import configure_entry_point
from theory import linear


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree_util.tree_leaves(out))
    return out, time.perf_counter() - start


def largest_stable_step(args, depth, dim) -> float:
    """2 / lambda_max of the Hessian at the predicted optimum (balanced, aligned), times 0.9.

    The largest curvature along this flow is reached at the optimum; 0.9 keeps a margin for the
    transitions between plateaus."""
    a, b = np.diag(np.asarray(args[0])), np.diag(np.asarray(args[1]))
    sigma = (np.sqrt(np.maximum(a, 0)) / b) ** (1.0 / depth)
    params = tuple(jnp.diag(jnp.asarray(sigma)) for _ in range(depth))
    flat, unravel = ravel_pytree(params)
    hessian = jax.hessian(lambda v: population_loss(unravel(v), args))(flat)
    return 0.9 * 2.0 / float(jnp.linalg.eigvalsh(hessian)[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kvaerno-steps", type=int, default=20)
    parser.add_argument("--tsit5-steps", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args_cli = parser.parse_args(argv)
    configure_entry_point(cache=False)
    a, b = pinned_moments()
    args = (jnp.diag(jnp.asarray(a)), jnp.diag(jnp.asarray(b)), jnp.asarray(0.0))
    params0 = models.init_balanced(jax.random.PRNGKey(0), PINNED["dim"], [PINNED["width"]] * PINNED["depth"],
                                   PINNED["init_scale"])
    target = linear.end_to_end_weights(a, b)
    step = largest_stable_step(args, PINNED["depth"], PINNED["dim"])
    report = {"largest_stable_euler_step": step}
    for solver in ("euler", "rkc", "tsit5", "kvaerno5"):
        options = FlowOptions(solver=solver, euler_step=step, certify=False,
                              max_steps={"kvaerno5": args_cli.kvaerno_steps,
                                         "tsit5": args_cli.tsit5_steps}.get(solver, 10_000_000))
        run = lambda options=options: gradient_flow(population_loss, params0, args, options=options)
        _, first = _timed(run)
        result, wall = _timed(run)
        error = float(np.max(np.abs(np.asarray(measure.feature_weights(result.params))[-1] - target) / target))
        report[solver] = {"wall_s": wall, "compile_and_first_run_s": first, "steps": int(result.steps),
                          "t_final": float(result.t_final), "converged": bool(result.converged),
                          "max_rel_error": error, "s_per_step": wall / max(int(result.steps), 1)}
        print(solver, report[solver], flush=True)
    print(json.dumps(report, indent=None if args_cli.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
