"""Regenerate every figure: ``python -m figures [--quick] [--out DIR] [--redraw] [--only NAMES]``.

Expected runtime on 2 CPU cores, cold compilation cache: the linear-theory figures take ~90 s, or
~35 s with --quick (see each module's docstring for its own share). Every
module of this package that does not start with an underscore is a figure; they run in one
process, the linear-theory ones first, so solves of the same shape share one compilation.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

from figures._common import build_parser

#: Drawn first, in this order (figures.weighting_layers compiles what figures.init_scale reuses).
FIRST = ("weighting_layers", "init_scale", "trajectories", "weight_decay")


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
    args = parser.parse_args(argv)
    names = figure_names()
    if args.only is not None:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown or not wanted:
            parser.error(f"--only must name figures among {names}, got {args.only!r}")
        names = [name for name in names if name in wanted]
    forwarded = ["--out", args.out] + (["--quick"] if args.quick else []) + (["--redraw"] if args.redraw else [])
    start = time.perf_counter()
    for name in names:
        status = importlib.import_module(f"figures.{name}").main(forwarded)
        if status:
            return status
    print(f"{len(names)} figures: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
