"""Fused small products against XLA's dots: the measurements behind simulations.matmul.

Run:  python -m bench.matmul [--json] [--out DIR] [--no-save]
Expected runtime: ~1 min on 2 CPU cores.

Times, in float64 inside jitted loops (after one compile call, best of three):

* one (n x n) @ (n x n) product as a dot and fused (``simulations.matmul.matmul`` with its
  threshold lifted), for n in 4, 8, 12, 16, 24, 32;
* the gradient and the Hessian-vector product of the spectral population loss of a depth-2,
  7-feature linear net (the weighting figures' size), with dots and fused;
* one gradient flow of that net (``simulations.flow.gradient_flow`` without certification),
  traced with dots and fused: its first call (compile and solve), its solve, and their difference.

Prints one JSON object (``--json``: only the JSON) with the machine, and saves it under
bench/results/ (``--out DIR``, ``--no-save``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from bench.report import code, machine, save_report
from simulations.cli import OneLineArgumentParser
from simulations.runtime import configure_entry_point

SIZES = (4, 8, 12, 16, 24, 32)
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"
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
    """One gradient flow of the d = 7, depth-2 net (no certification), traced with dots and fused:
    its first call (compiling and solving) and its solve alone, in seconds."""
    from simulations.experiments.weighting import population_loss
    from simulations.flow import FlowOptions, gradient_flow

    params, args = _problem()
    options = FlowOptions(certify=False)
    out = {}
    for label, limit in (("dot", 0), ("fused", 10**9)):
        # A new loss object per label: a new static argument, so the flow is traced under this threshold.
        loss = functools.partial(population_loss)
        run = lambda loss=loss: gradient_flow(loss, params, args, options=options)  # noqa: E731
        start = time.perf_counter()
        result = jax.block_until_ready(_with_threshold(limit, run))
        first_s = time.perf_counter() - start
        solve_s = _best(run)
        out[label] = {"first_call_s": round(first_s, 2), "solve_s": round(solve_s, 4),
                      "compile_s": round(first_s - solve_s, 2), "steps": int(result.steps)}
    return out


def main(argv=None) -> int:
    parser = OneLineArgumentParser(prog="python -m bench.matmul", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    parser.add_argument("--out", default=str(DEFAULT_RESULTS), help="directory for the saved JSON")
    parser.add_argument("--no-save", action="store_true", help="do not save the JSON")
    args = parser.parse_args(argv)
    configure_entry_point(cache=False)
    report = {"machine": machine(), "code": code()}
    for name, measure in (("product", product_costs), ("loss", loss_costs), ("solve", solve_costs)):
        print(f"[bench.matmul] {name} ...", file=sys.stderr, flush=True)
        report[name] = measure()
    if not args.no_save:
        print(f"[bench.matmul] saved {save_report(report, args.out, 'matmul')}", file=sys.stderr)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
