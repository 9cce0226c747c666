"""Command-line entry point: ``python -m simulations EXPERIMENT [flags]``.

Every experiment's flags are generated from its config fields (simulations.cli). Bad input
prints one line on stderr and exits with code 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import sys

from simulations import __version__, cli, sweep
from simulations.commands import add_experiment_command, run_experiment_command
from simulations.experiment import Experiment
from simulations.flow import FlowDivergenceError
from simulations.registry import EXPERIMENTS
from simulations.runtime import configure_entry_point

PROG = "python -m simulations"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"projection-head-theory {__version__}")
    subparsers = parser.add_subparsers(dest="experiment", parser_class=cli.OneLineArgumentParser)
    for name, entry in EXPERIMENTS.items():
        doc = entry.doc if isinstance(entry, Experiment) else entry.__doc__
        sub = subparsers.add_parser(name, help=doc.splitlines()[0], description=doc,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        if isinstance(entry, Experiment):
            add_experiment_command(sub, entry)
        else:
            entry.add_arguments(sub)
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
        entry = EXPERIMENTS[args.experiment]
        if isinstance(entry, Experiment):
            return run_experiment_command(entry, parser._subparsers._group_actions[0].choices[args.experiment], args)
        return entry.main(args)
    except ValueError as error:
        return cli.fail(f"{PROG} {args.experiment}", error, 2)
    except FlowDivergenceError as error:
        return cli.fail(f"{PROG} {args.experiment}", error, 1)


if __name__ == "__main__":
    sys.exit(main())
