"""Regenerate every figure: ``python -m figures [--quick] [--out DIR] [--redraw] [--only NAMES] [--jobs N]``.

Every module of this package that does not start with an underscore is a figure. By default they
are drawn by two worker processes (one on a single-core machine), longest first, each taking the
next figure when it finishes one. With an empty compilation cache most of a figure's time is
compiling, which XLA does on one core, so two processes compile two figures at once: on 2 CPU
cores all 17 figures took 220 s with ``--jobs 2`` against 285 s in one process (108 s against
134 s warm). Each worker runs on its own share of the cores (one core each on a 2-core machine):
XLA otherwise splits small operations over every core, and two processes doing so get in each
other's way. ``--jobs 1`` draws them in this process, whose batched flows and minibatch runs
then spread their points over every core (simulations.runtime.worker_threads).
``python -m bench.figures`` times every figure.
"""

from __future__ import annotations

import pkgutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from figures._common import build_parser, draw, output_directory, pin_worker
from simulations.runtime import usable_cores, worker_threads

#: The theory figures: the closed forms against simulations on synthetic features (the others
#: show real pixels and the readout oracle).
THEORY = ("reweighting_pre_weights", "reweighting_downstream", "nonlinear_knobs", "init_scale",
          "supervised_coarse_to_fine", "trajectories", "supervised_shift", "nonlinear_decodability", "weight_decay",
          "nonlinear_diagonal", "weighting_layers", "downstream_knobs", "downstream_weight_decay", "downstream_phase")
#: Drawn first, in this order: longest first (cold times on 2 CPU cores), so that worker processes
#: finish together; figures not listed follow alphabetically.
FIRST = ("pixels", "reweighting_downstream", "nonlinear_knobs", "supervised_coarse_to_fine", "init_scale",
         "trajectories", "readout_risk", "supervised_shift", "weight_decay", "nonlinear_diagonal",
         "downstream_weight_decay", "weighting_layers", "downstream_knobs", "nonlinear_decodability",
         "reweighting_pre_weights", "downstream_phase", "readout_map")


def core_shares(jobs: int) -> list[set[int] | None]:
    """The cores this process may use, dealt into ``jobs`` disjoint non-empty shares (one per
    worker; None each where the system does not let a process choose its cores)."""
    usable = usable_cores()
    if usable is None:
        return [None] * jobs
    cores = sorted(usable)
    if jobs > len(cores):
        return [set(cores)] * jobs  # more workers than cores: every worker may use every core
    return [set(cores[index::jobs]) for index in range(jobs)]


def default_jobs() -> int:
    """Worker processes by default: two, or one on a single-core machine."""
    return min(2, worker_threads())


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
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes drawing independent figures (default: 2, or 1 on a single core; "
                             "1 draws in this process)")
    args = parser.parse_args(argv)
    names = figure_names()
    if args.only is not None:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown or not wanted:
            parser.error(f"--only must name figures among {names}, got {args.only!r}")
        names = [name for name in names if name in wanted]
    jobs = default_jobs() if args.jobs is None else args.jobs
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
        context = get_context("spawn")
        shares = context.SimpleQueue()
        for share in core_shares(jobs):
            shares.put(share)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=pin_worker,
                                 initargs=(shares,)) as pool:
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
