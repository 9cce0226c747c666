"""``python -m simulations sweep``: run or finish a sweep, or summarize a finished one.

``python -m simulations sweep EXPERIMENT --out DIR [--set FIELD=V1,V2 ...] [--seeds N] [--json]``
runs a sweep; ``python -m simulations sweep summary DIR --metric PATH --by FIELD [--json]
[--plot FILE.png]`` tabulates the mean and standard deviation of a scalar output against a swept
field (``summary`` is not an experiment name).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from simulations.experiment import Experiment
from simulations.sweep.distributed import DEFAULT_RETRIES
from simulations.sweep.plan import DEFAULT_CHUNK_POINTS, parse_axes
from simulations.sweep.run import ENGINES, PLACEMENTS, run_sweep
from simulations.sweep.store import load_sweep_dataset

#: The word that selects the summary of a finished sweep instead of an experiment to run.
SUMMARY = "summary"


def sweepable(experiments: Mapping[str, object]) -> dict[str, Experiment]:
    """The registered experiments the sweep can run (every :class:`Experiment` in the registry)."""
    return {name: entry for name, entry in experiments.items() if isinstance(entry, Experiment)}


def add_arguments(parser: argparse.ArgumentParser, experiments: Mapping[str, object]) -> None:
    """The `sweep` subcommand's flags (stable: --out, --set, --seeds, --json and the JSON keys)."""
    names = ", ".join(sorted(sweepable(experiments)))
    parser.add_argument("sweep_experiment", metavar="EXPERIMENT",
                        help=f"experiment to sweep: {names}; or '{SUMMARY}' to tabulate a finished sweep")
    parser.add_argument("directory", metavar="DIR", nargs="?", default=None,
                        help=f"({SUMMARY} only) the directory of a finished sweep")
    parser.add_argument("--out", default=None, help="directory for the manifest and the chunk files (required "
                                                    "to run a sweep)")
    parser.add_argument("--set", dest="axes", action="append", type=lambda text: ("set", text), default=[],
                        metavar="FIELD=V1,V2,...",
                        help="sweep a scalar config field over comma-separated values (repeat for more "
                             "fields; their product is swept; 'none' for optional fields)")
    parser.add_argument("--set-vector", dest="axes", action="append", type=lambda text: ("vector", text),
                        metavar="FIELD=X1,X2,...",
                        help="one value of a vector-valued field (e.g. pos_cov=0.9,0.5,0.8); repeat the flag "
                             "with the same FIELD to sweep it over several vectors")
    parser.add_argument("--preset", dest="axes", action="append", type=lambda text: ("preset", text),
                        metavar="NAME", help="a named set of vector-valued fields (the experiment's "
                                             "presets); repeat to sweep over several presets")
    parser.add_argument("--seeds", type=int, default=None,
                        help="sweep seed over 0..N-1 (varies fastest; default: the base config's seed)")
    parser.add_argument("--quick", action="store_true", help="start from the experiment's quick() config")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help=f"points per compiled call (default: the manifest's on a rerun, else "
                             f"{DEFAULT_CHUNK_POINTS} rounded up to a multiple of the device count)")
    parser.add_argument("--devices", type=int, default=None,
                        help="shard each chunk over the first N local devices (default: all)")
    parser.add_argument("--placement", choices=PLACEMENTS, default="split",
                        help="split: one slice of each chunk per device, bit-identical to one device; "
                             "sharded: one GSPMD program over all devices (default %(default)s)")
    parser.add_argument("--process-index", type=int, default=None,
                        help="run chunks number %% process-count == process-index (default: jax.process_index())")
    parser.add_argument("--process-count", type=int, default=None, help="default: jax.process_count()")
    parser.add_argument("--engine", choices=ENGINES, default="inprocess",
                        help="inprocess: run the chunks here, one after another (default); dask: hand each chunk to "
                             "a Dask distributed cluster (same directory, manifest and results)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="(dask) a running scheduler, e.g. tcp://host:8786 (every worker must see --out); "
                             "default: start a local cluster of --workers processes")
    parser.add_argument("--workers", type=int, default=None,
                        help="(dask, no --scheduler) worker processes of the local cluster, one thread each "
                             "(default: the CPU count)")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                        help="(dask) reruns of a chunk that raised (a lost worker's chunks are rerun anyway; "
                             "default %(default)s)")
    parser.add_argument("--metric", default=None, metavar="PATH",
                        help=f"({SUMMARY}) a scalar output, e.g. diagnostics.loss or pre.measured")
    parser.add_argument("--by", default=None, metavar="FIELD", help=f"({SUMMARY}) a swept field, or seed")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help=f"({SUMMARY}) also draw mean +- std against the field into FILE.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object {"completed": C, "skipped": S, "total": T} (points); '
                             f'with {SUMMARY}: {{"metric", "by", "rows": [{{"value", "mean", "std", "count"}}]}}')


def summarize(dataset, metric: str, by: str) -> list[dict]:
    """Mean, standard deviation (ddof 1; 0 for one point) and count of a scalar output per value of ``by``.

    Rows follow the values' first appearance in the sweep (the command-line order); NaN entries
    (padding) are left out.

    Raises:
        ValueError: ``metric`` is not a scalar output of the sweep, or ``by`` is not a swept field.
    """
    if metric not in dataset.data_vars:
        raise ValueError(f"--metric: {metric!r} is not an output of this sweep; expected one of "
                         f"{sorted(dataset.data_vars)}")
    if dataset[metric].dims != ("point",):
        raise ValueError(f"--metric: {metric} has dimensions {dataset[metric].dims}, expected a scalar output "
                         f"(dimension 'point' only)")
    coordinates = [name for name in dataset.coords if name != "point"]
    if by not in coordinates:
        raise ValueError(f"--by: {by!r} is not a swept field of this sweep; expected one of {coordinates}")
    values = np.asarray(dataset[metric].values, dtype=np.float64)
    keys = dataset[by].values.tolist()
    rows = []
    for key in dict.fromkeys(keys):
        selected = values[[k == key for k in keys]]
        selected = selected[~np.isnan(selected)]
        count = int(selected.size)
        rows.append({"value": key, "mean": float(np.mean(selected)) if count else math.nan,
                     "std": float(np.std(selected, ddof=1)) if count > 1 else 0.0, "count": count})
    return rows


def plot_summary(rows: list[dict], metric: str, by: str, path) -> None:
    """Mean +- std of ``metric`` against ``by`` (numeric values on their own scale, labels otherwise)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 3.6))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    numeric = all(isinstance(row["value"], (int, float)) and not isinstance(row["value"], bool) for row in rows)
    x = [row["value"] for row in rows] if numeric else list(range(len(rows)))
    axis.errorbar(x, [row["mean"] for row in rows], yerr=[row["std"] for row in rows], fmt="o-", capsize=3)
    if not numeric:
        axis.set_xticks(x, [str(row["value"]) for row in rows])
    axis.set_xlabel(by)
    axis.set_ylabel(f"{metric} (mean +- std)")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def _summary(args: argparse.Namespace, experiments: Mapping[str, object]) -> int:
    usage = f"{SUMMARY} DIR --metric PATH --by FIELD"
    missing = [name for name, value in (("DIR", args.directory), ("--metric", args.metric), ("--by", args.by))
               if value is None]
    if missing:
        raise ValueError(f"{SUMMARY} needs {', '.join(missing)} ({usage})")
    rows = summarize(load_sweep_dataset(args.directory, experiments=experiments), args.metric, args.by)
    if args.plot:
        plot_summary(rows, args.metric, args.by, args.plot)
    if args.json:
        print(json.dumps({"metric": args.metric, "by": args.by, "rows": rows}))
        return 0
    width = max([len(args.by)] + [len(str(row["value"])) for row in rows])
    print(f"{args.by:>{width}}  {'mean':>14}  {'std':>12}  {'n':>5}   ({args.metric})")
    for row in rows:
        print(f"{row['value']!s:>{width}}  {row['mean']:14.8g}  {row['std']:12.4g}  {row['count']:5d}")
    return 0


def main(args: argparse.Namespace, experiments: Mapping[str, object]) -> int:
    """Run or finish a sweep, or summarize one; ValueError for bad input (exit 2)."""
    if args.sweep_experiment == SUMMARY:
        return _summary(args, experiments)
    available = sweepable(experiments)
    if args.sweep_experiment not in available:
        raise ValueError(f"EXPERIMENT must be one of {sorted(available)} (or '{SUMMARY}'), "
                         f"got {args.sweep_experiment!r}")
    if args.directory is not None:
        raise ValueError(f"unrecognized argument {args.directory!r} (DIR is for '{SUMMARY}'; "
                         f"a sweep writes to --out DIR)")
    if args.out is None:
        raise ValueError("the following arguments are required: --out")
    experiment = available[args.sweep_experiment]
    axes = parse_axes(experiment, args.axes)
    import jax

    devices = jax.local_devices()
    if args.devices is not None:
        if not 1 <= args.devices <= len(devices):
            raise ValueError(f"--devices must be in [1, {len(devices)}] (local devices), got {args.devices}")
        devices = devices[:args.devices]
    if args.engine != "dask" and (args.scheduler is not None or args.workers is not None):
        raise ValueError("--scheduler and --workers need --engine dask")
    summary = run_sweep(experiment, args.out, axes=axes, seeds=args.seeds, quick=args.quick,
                        chunk_size=args.chunk_size, devices=devices, process_index=args.process_index,
                        process_count=args.process_count, placement=args.placement, progress=not args.no_progress,
                        engine=args.engine, scheduler=args.scheduler, workers=args.workers, retries=args.retries)
    if args.json:
        print(json.dumps(summary.as_json()))
    else:
        print(f"{summary.completed} points computed, {summary.skipped} already done, {summary.total} in all "
              f"({summary.groups} shape group(s), chunks of {summary.chunk_size} on {summary.devices} device(s), "
              f"{summary.compiles} compilation(s), {summary.seconds:.1f} s) -> {args.out}")
    return 0
