"""Fused small products against XLA's dots: the measurements behind simulations.matmul.

Run:  python -m bench.matmul [--json]
Expected runtime: ~1 min on 2 CPU cores.

Times, in float64 inside jitted loops (after one compile call, best of three):

* one (n x n) @ (n x n) product as a dot and fused (``simulations.matmul.matmul`` with its
  threshold lifted), for n in 4, 8, 12, 16, 24, 32;
* the gradient and the Hessian-vector product of the spectral population loss of a depth-2,
  7-feature linear net (the weighting figures' size), with dots and fused;
* one gradient-flow segment of that net (``simulations.flow``), compiled with dots and fused:
  its solve time and its compile time.

Prints one JSON object (``--json``: only the JSON) with the machine, and the two numbers per
row; nothing is saved.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp

from bench.report import machine
from simulations.cli import OneLineArgumentParser
from simulations.runtime import configure_entry_point

SIZES = (4, 8, 12, 16, 24, 32)
LOOP = 2000


def _best(fn, repeats=3) -> float:
    """Smallest wall time of ``fn()`` over ``repeats`` calls after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def _with_threshold(limit: int, build):
    """``build()`` traced with simulations.matmul.FUSED_MAX_SIZE set to ``limit``."""
    from simulations import matmul

    saved = matmul.FUSED_MAX_SIZE
    matmul.FUSED_MAX_SIZE = limit
    try:
        return build()
    finally:
        matmul.FUSED_MAX_SIZE = saved


def product_costs() -> dict:
    """Microseconds per product of two n x n matrices, dot and fused."""
    from simulations.matmul import matmul

    rows = {}
    for n in SIZES:
        a = jax.random.normal(jax.random.PRNGKey(n), (n, n)) / n
        row = {}
        for label, limit in (("dot_us", 0), ("fused_us", n**3)):
            def loop(x, a, limit=limit):
                def body(_, x):
                    return _with_threshold(limit, lambda: matmul(matmul(x, a), a.T)) * 0.5 + x * 0.5
                return jax.lax.fori_loop(0, LOOP, body, x)

            compiled = jax.jit(loop)
            row[label] = round(_best(lambda compiled=compiled, a=a: compiled(a, a)) / (2 * LOOP) * 1e6, 3)
        rows[f"{n}x{n}"] = row
    return rows


def _problem():
    from simulations import models

    params = models.init_linear(jax.random.PRNGKey(0), 7, (7, 7), init="gaussian", init_scale=0.1)
    args = (jnp.diag(jnp.linspace(0.1, 1.0, 7)), jnp.diag(jnp.linspace(0.5, 2.0, 7)), jnp.zeros(()))
    return params, args


def loss_costs() -> dict:
    """Microseconds per gradient and per Hessian-vector product of the weighting loss, d = 7, depth 2."""
    from simulations.experiments.weighting import population_loss

    params, args = _problem()
    grad = jax.grad(population_loss)
    pieces = {"gradient": lambda p: grad(p, args),
              "hessian_vector_product": lambda p: jax.jvp(lambda q: grad(q, args), (p,), (p,))[1]}
    out = {}
    for name, piece in pieces.items():
        for label, limit in (("dot_us", 0), ("fused_us", 10**9)):
            def loop(p, piece=piece, limit=limit):
                def body(_, p):
                    step = _with_threshold(limit, lambda: piece(p))
                    return jax.tree_util.tree_map(lambda a, b: a - 1e-4 * b, p, step)
                return jax.lax.fori_loop(0, LOOP, body, p)

            compiled = jax.jit(loop)
            out.setdefault(name, {})[label] = round(_best(lambda compiled=compiled: compiled(params)) / LOOP * 1e6, 3)
    return out


def solve_costs() -> dict:
    """One flow segment of the d = 7, depth-2 net: compile and solve seconds, dots and fused."""
    from simulations import flow
    from simulations.experiments.weighting import population_loss

    params, args = _problem()
    zero = jnp.zeros(())
    out = {}
    for label, limit in (("dot", 0), ("fused", 10**9)):
        # A new function per label, so that the second is traced afresh under its own threshold.
        segment = jax.jit(lambda *point: flow._segment(population_loss, flow.FlowOptions(), *point, None))
        start = time.perf_counter()
        compiled = _with_threshold(limit, lambda segment=segment: segment.lower(params, args, zero, zero).compile())
        compile_s = time.perf_counter() - start
        result = compiled(params, args, zero, zero)
        out[label] = {"compile_s": round(compile_s, 2),
                      "solve_s": round(_best(lambda compiled=compiled: compiled(params, args, zero, zero)), 4),
                      "steps": int(result["steps"])}
    return out


def main(argv=None) -> int:
    parser = OneLineArgumentParser(prog="python -m bench.matmul", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    args = parser.parse_args(argv)
    configure_entry_point(cache=False)
    report = {"machine": machine()}
    for name, measure in (("product", product_costs), ("loss", loss_costs), ("solve", solve_costs)):
        print(f"[bench.matmul] {name} ...", file=sys.stderr, flush=True)
        report[name] = measure()
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
