"""Regenerate every figure: ``python -m figures [--quick] [--out DIR] [--redraw] [--only NAMES] [--jobs N]``.

Every module of this package that does not start with an underscore is a figure. By default they
run in this process, longest first, sharing compiled programs; batched flows and minibatch runs
already spread their points over every core (simulations.runtime.worker_threads). ``--jobs N``
draws independent figures in N worker processes instead, each compiling for itself (on 2 CPU
cores that was slower than one process). ``python -m bench.figures`` times every figure.
"""

from __future__ import annotations

import pkgutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from figures._common import build_parser, draw, output_directory

#: Drawn first, in this order: the slowest figures start first (so parallel workers finish together)
#: (measured cold times on 2 CPU cores, longest first); figures not listed follow alphabetically.
FIRST = ("reweighting_pre_weights", "reweighting_downstream", "nonlinear_knobs", "init_scale",
         "supervised_coarse_to_fine", "trajectories", "supervised_shift", "nonlinear_decodability", "weight_decay",
         "nonlinear_diagonal", "weighting_layers", "downstream_knobs", "downstream_weight_decay", "downstream_phase")


def figure_names() -> list[str]:
    """Every figure module's name: FIRST, then the others alphabetically."""
    found = sorted(info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)])
                   if not info.name.startswith("_"))
    return [name for name in FIRST if name in found] + [name for name in found if name not in FIRST]


def main(argv=None) -> int:
    parser = build_parser("", __doc__)
    parser.prog = "python -m figures"
    parser.add_argument("--only", default=None,
                        help="comma-separated figure names to draw (default: all of " + ", ".join(figure_names()) + ")")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes drawing independent figures (default 1: draw in this process)")
    args = parser.parse_args(argv)
    names = figure_names()
    if args.only is not None:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown or not wanted:
            parser.error(f"--only must name figures among {names}, got {args.only!r}")
        names = [name for name in names if name in wanted]
    jobs = args.jobs
    if jobs < 1:
        parser.error(f"--jobs must be an integer >= 1, got {jobs}")
    forwarded = (["--out", str(output_directory(args))] + (["--quick"] if args.quick else [])
                 + (["--redraw"] if args.redraw else []))
    start = time.perf_counter()
    jobs = min(jobs, len(names))
    if jobs == 1 or args.redraw:
        for name in names:
            if draw(name, forwarded)[1]:
                return 1
    else:
        # spawn: a forked JAX process is unsafe (its thread pools do not survive fork).
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(draw, name, forwarded) for name in names]
            for future in as_completed(futures):
                name, status, _ = future.result()
                if status:
                    for other in futures:
                        other.cancel()
                    return status
    print(f"{len(names)} figures: {time.perf_counter() - start:.1f} s ({jobs} process(es))", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
