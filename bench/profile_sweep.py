"""Where a vmapped sweep spends its time: the solve and the Hessian certification, single vs batched.

Run:  python -m bench.profile_sweep [--points 32] [--quick]
Expected runtime: ~3 min on 2 CPU cores for 32 points of the pinned problem (seconds on a GPU).

Times the two compiled pieces of gradient_flow separately (each after one compile call): the
diffrax segment (the ODE solve to the steady-state event) and the certification (dense Hessian and
its eigendecomposition), for one point and for ``--points`` points vmapped, plus a 16 x 16 matmul
micro-benchmark (what one op costs alone and per point inside a 256-point batch). Prints one JSON
object; per-point ratios near 1 mean vmap has nothing to amortize on this device.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from simulations.runtime import configure_entry_point


def _best_of(fn, repeats=2):
    """Min wall and CPU seconds over ``repeats`` calls after one compile call."""
    jax.block_until_ready(jax.tree_util.tree_leaves(fn()))
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(jax.tree_util.tree_leaves(fn()))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_s": min(walls), "cpu_s": min(cpus)}


def _matmul_costs(dim, batch, chain=1000):
    """Seconds per (dim x dim) matmul inside a jitted loop: alone, and per point in a batch."""
    def run(ws):
        def body(_, carry):
            a, b = carry
            return jnp.tanh(b @ a * 0.1), jnp.tanh(a @ b * 0.1)
        return jax.lax.fori_loop(0, chain, body, ws)

    out = {}
    compiled = jax.jit(jax.vmap(run))
    for points in (1, batch):
        ws = tuple(jax.random.normal(jax.random.PRNGKey(i), (points, dim, dim)) for i in range(2))
        timing = _best_of(lambda ws=ws: compiled(ws), 3)
        for key in ("wall_s", "cpu_s"):
            out[f"per_point_us_batch{points}_{key[:-2]}"] = timing[key] / (2 * chain * points) * 1e6
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="the --quick problem of python -m bench")
    args = parser.parse_args(argv)
    configure_entry_point(cache=False)
    from bench.problems import PINNED_PROBLEM, QUICK_PROBLEM
    from simulations import flow, models
    from simulations.experiment import stack
    from simulations.experiments.weighting import population_loss
    from simulations.flow import FlowOptions

    problem = QUICK_PROBLEM if args.quick else PINNED_PROBLEM
    options = FlowOptions()

    def init(seed):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
        return models.init_linear(key, problem.dim, (problem.width,) * problem.depth, init="balanced",
                                  init_scale=problem.init_scale)

    single_args = problem.flow_args()
    params = init(0)
    batch_params = stack([init(s) for s in range(args.points)])
    batch_args = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (args.points,) + x.shape), single_args)
    zero, zeros = jnp.zeros(()), jnp.zeros((args.points,))
    report = {"problem": problem.describe(), "points": args.points, "device": jax.devices()[0].device_kind,
              "jax_version": jax.__version__}
    segment, certify = flow.compiled_programs(batched=False)
    segment_batched, certify_batched = flow.compiled_programs(batched=True)
    report["single_segment"] = _best_of(
        lambda: segment(population_loss, options, params, single_args, zero, zero, None))
    report["single_certification"] = _best_of(lambda: certify(population_loss, params, single_args))
    report["batch_segment"] = _best_of(
        lambda: segment_batched(population_loss, options, batch_params, batch_args, zeros, zeros, None), 1)
    report["batch_certification"] = _best_of(
        lambda: certify_batched(population_loss, batch_params, batch_args), 1)
    for piece in ("segment", "certification"):
        single, batch = report[f"single_{piece}"], report[f"batch_{piece}"]
        report[f"{piece}_vmap_gain_per_point"] = {
            key: single[key] / (batch[key] / args.points) for key in ("wall_s", "cpu_s")}
    report["matmul"] = {f"{dim}x{dim}": _matmul_costs(dim, 256) for dim in (4, 16)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
