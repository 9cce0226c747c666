"""Command-line entry point: ``python -m simulations EXPERIMENT [flags]``.

Every experiment's flags are generated from its config fields (simulations.cli). Bad input
prints one line on stderr and exits with code 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import sys

from simulations import __version__, cli, sweep
from simulations.commands import add_experiment_command, run_experiment_command
from simulations.flow import FlowDivergenceError
from simulations.registry import EXPERIMENTS
from simulations.runtime import configure_entry_point

PROG = "python -m simulations"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"projection-head-theory {__version__}")
    subparsers = parser.add_subparsers(dest="experiment", parser_class=cli.OneLineArgumentParser)
    for name, experiment in EXPERIMENTS.items():
        sub = subparsers.add_parser(name, help=experiment.doc.splitlines()[0], description=experiment.doc,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        add_experiment_command(sub, experiment)
        sub.set_defaults(command_parser=sub)  # errors found after parsing are reported by the right parser
    sweep.add_arguments(subparsers.add_parser("sweep", help=sweep.__doc__.splitlines()[0], description=sweep.__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter), EXPERIMENTS)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.experiment is None:
        parser.print_help()
        return 0
    configure_entry_point(precision=getattr(args, "precision", "float64"))
    try:
        if args.experiment == "sweep":
            return sweep.main(args, EXPERIMENTS)
        return run_experiment_command(EXPERIMENTS[args.experiment], args.command_parser, args)
    except ValueError as error:
        return cli.fail(f"{PROG} {args.experiment}", error, 2)
    except FlowDivergenceError as error:
        return cli.fail(f"{PROG} {args.experiment}", error, 1)


if __name__ == "__main__":
    sys.exit(main())
