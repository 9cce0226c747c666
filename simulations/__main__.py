"""Command-line entry point: ``python -m simulations EXPERIMENT [flags]``.

Bad input prints one line on stderr and exits with code 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import sys

from simulations import sweep
from simulations.experiments import downstream, nonlinear, reweighting, supervised, weighting
from simulations.flow import FlowDivergenceError
from simulations.runtime import configure_entry_point

EXPERIMENTS = {"weighting": weighting, "downstream": downstream, "nonlinear": nonlinear,
               "supervised": supervised, "reweighting": reweighting}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m simulations", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="experiment", required=True, parser_class=_Parser)
    for name, module in EXPERIMENTS.items():
        sub = subparsers.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
    # `sweep` runs any registered experiment that implements the sweep protocol (simulations/sweep.py).
    sweep.add_arguments(subparsers.add_parser("sweep", help=sweep.__doc__.splitlines()[0], description=sweep.__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter), EXPERIMENTS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_entry_point(precision=getattr(args, "precision", "float64"))
    try:
        if args.experiment == "sweep":
            return sweep.main(args, EXPERIMENTS)
        return EXPERIMENTS[args.experiment].main(args)
    except ValueError as error:
        print(f"python -m simulations {args.experiment}: error: {error}", file=sys.stderr)
        return 2
    except FlowDivergenceError as error:
        print(f"python -m simulations {args.experiment}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
