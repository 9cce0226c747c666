"""Plumbing shared by the figure scripts: command line, saving with provenance, progress, drawing.

Every figure module defines a frozen ``Config`` (with ``quick()``), ``compute(config) -> (arrays,
record)`` (runs simulations and theory; nothing here is drawn) and ``plot(arrays, record) ->
Figure`` (draws only from what ``compute`` returned, so ``--redraw`` needs no training). ``main``
wires them to the command line through :func:`run_figure`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from tqdm import tqdm  # noqa: E402

from simulations.cli import OneLineArgumentParser, fail  # noqa: E402
from simulations.results import load_results, save_results  # noqa: E402

#: Where figures go unless --out says otherwise (the committed figures).
DEFAULT_OUT = Path(__file__).resolve().parent / "output"
#: Where --quick figures go unless --out says otherwise: smoke runs never replace the committed figures.
QUICK_OUT = Path("results") / "figures-quick"
#: Resolution of the saved PNGs.
DPI = 110
#: Figures train and compare in float64 (agreement at 1e-9 needs it).
PRECISION = "float64"


def pin_worker(shares) -> None:
    """Worker-process initializer: take the next share of the cores from ``shares`` (a queue of
    sets of core numbers, or None: no pinning) and run on those cores only.

    It runs before JAX starts its CPU client, whose thread pool is sized from (and runs on) the
    cores a process may use. XLA splits even small operations over that pool; in the long loops of
    a flow or a training run the hand-offs cost more than they save once two processes share the
    cores: the benchmark's adaptive flow took 3.0 s on 2 cores and 2.1-2.3 s on one.
    """
    share = shares.get()
    if share is not None:
        os.sched_setaffinity(0, share)


def build_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The flags every figure script takes: --quick, --out, --redraw."""
    parser = OneLineArgumentParser(prog=f"python -m figures.{name}", description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test variant: fewer runs and points (seconds instead of a minute)")
    parser.add_argument("--out", default=None,
                        help="directory for the .png, .npz and .json (default: figures/output, or "
                             "results/figures-quick with --quick)")
    parser.add_argument("--redraw", action="store_true",
                        help="redraw from the saved .npz/.json in --out without training")
    return parser


def run_figure(name: str, module_doc: str, config_class, compute: Callable, plot: Callable,
               argv: Iterable[str] | None = None) -> int:
    """Parse flags, compute and save (unless --redraw), then draw ``name.png`` into --out."""
    args = build_parser(name, module_doc).parse_args(argv)
    out = output_directory(args)
    start = time.perf_counter()
    if args.redraw:
        try:
            arrays, record = load_results(out, name)
        except FileNotFoundError:
            return fail(f"python -m figures.{name}", ValueError(
                f"--redraw needs saved results {name}.npz and {name}.json in --out {out}; "
                "run once without --redraw to compute them"))
    else:
        from simulations.runtime import configure_entry_point

        configure_entry_point(precision=PRECISION)  # float64 + compile cache, in main() only
        config = config_class.quick() if args.quick else config_class()
        arrays, record = compute(config)
        record = {**record, "quick": bool(args.quick)}
        save_results(out, name, arrays, record, precision=PRECISION)
        arrays, record = load_results(out, name)  # draw exactly what was saved
    figure = plot(arrays, record)
    png = out / f"{name}.png"
    figure.savefig(png, dpi=DPI)
    plt.close(figure)
    print(f"{name}: wrote {png} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


def draw(name: str, forwarded: list[str]) -> tuple[str, int, float]:
    """Run figure ``name``'s main with ``forwarded`` flags (importable, so worker processes can): (name, status, s)."""
    import importlib

    start = time.perf_counter()
    status = importlib.import_module(f"figures.{name}").main(forwarded)
    return name, status, time.perf_counter() - start


def output_directory(args) -> Path:
    """``--out``, or the default for the run's kind (full or --quick)."""
    if args.out is not None:
        return Path(args.out)
    return QUICK_OUT if args.quick else DEFAULT_OUT


def config_record(config) -> dict[str, Any]:
    """JSON-ready config (tuples become lists when saved)."""
    return dataclasses.asdict(config)


def progress(iterable, *, total: int | None = None, desc: str):
    """A tqdm progress bar on stderr (runs of a multi-run figure)."""
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def caption(figure, text: str, *, width: int = 150) -> None:
    """Write a wrapped caption under the axes (reserve room with ``figure.subplots_adjust``)."""
    figure.text(0.01, 0.01, textwrap.fill(text, width), ha="left", va="bottom", fontsize=8)


def feature_colors(count: int):
    """One distinguishable color per feature."""
    cmap = plt.get_cmap("tab10" if count <= 10 else "viridis")
    return [cmap(i if count <= 10 else i / max(count - 1, 1)) for i in range(count)]

