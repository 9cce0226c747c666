"""One experiment command for every registered experiment: parse, run, print or save.

``python -m simulations NAME [field flags] [--quick] [--config FILE] [--json] [--out DIR]``:
the config is built from ``--config FILE`` (a saved record), then the flags given (one per config
field, :mod:`simulations.cli`); ``--json`` prints the experiment's report as one JSON object and
saves nothing; otherwise its table is printed and the results are saved (``.npz`` arrays plus a
JSON record of config, seed and provenance) without overwriting a different earlier run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time

from simulations import cli
from simulations.experiment import Experiment, numeric_outputs, output_paths, point
from simulations.results import save_run, to_jsonable

#: Seconds before a running command says so on stderr (and whether it finished is printed after it).
PROGRESS_DELAY_S = 1.0


def add_experiment_command(parser: argparse.ArgumentParser, experiment: Experiment) -> None:
    """The flags of ``python -m simulations NAME``: every config field, then the shared run flags."""
    command = experiment.command
    cli.add_config_flags(parser, command.config_fields or experiment.config, hidden=command.hidden,
                         required=command.required, help=dict(command.help))
    cli.add_run_flags(parser, name=experiment.name)


def build_configs(experiment: Experiment, fields: dict, quick: bool) -> list:
    """The configs a command runs: ``command.build`` or one config from the fields."""
    if experiment.command.build is not None:
        return list(experiment.command.build(fields, quick))
    return [experiment.config.quick(**fields) if quick else experiment.config(**fields)]


def run_configs(experiment: Experiment, configs: list) -> list:
    """Per-point results of ``configs`` in order, one ``run_batch`` per shape key.

    Several shape keys run at the same time, one thread each (at most one per core): each is its
    own compiled program, and XLA compiles and runs programs called from different threads at
    once, so with an empty compilation cache two programs take about as long as the slower one.
    Every group's numbers are those it has alone; an error is raised for the first failing group.
    """
    from simulations.runtime import thread_map, worker_threads

    groups: dict = {}
    for index, config in enumerate(configs):
        groups.setdefault(experiment.shape_key(config), []).append(index)
    members = list(groups.values())
    results = thread_map(lambda indices: experiment.run_batch([configs[i] for i in indices]), members,
                         worker_threads())
    points: list = [None] * len(configs)
    for indices, result in zip(members, results):
        for row, index in enumerate(indices):
            points[index] = point(result, row)
    return points


def run_experiment_command(experiment: Experiment, parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the command that :func:`add_experiment_command` parsed; ValueError for bad input."""
    command = experiment.command
    fields = cli.config_fields(parser, args, command.config_fields or experiment.config,
                               required=command.required, hidden=command.hidden)
    configs = build_configs(experiment, fields, args.quick)
    progress = not args.no_progress
    started = time.perf_counter()
    # The start line waits a moment, so bad input found at once still ends as exactly one stderr line.
    notice = threading.Timer(PROGRESS_DELAY_S, print, args=(
        f"{experiment.name}: running {len(configs)} configuration(s) (the first run in a fresh process "
        f"includes compilation) ...",), kwargs={"file": sys.stderr, "flush": True})
    if progress:
        notice.start()
    try:
        points = run_configs(experiment, configs)
    finally:
        notice.cancel()
    single = len(configs) == 1
    subject, config = (points[0], configs[0]) if single else (points, configs)
    report = experiment.report(subject, config)
    if progress and time.perf_counter() - started > PROGRESS_DELAY_S:
        print(f"{experiment.name}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(to_jsonable(report)))
        return 0
    print(experiment.table(subject, config))
    paths = output_paths(experiment.result)
    if single:
        arrays = numeric_outputs(points[0], paths)
    else:
        arrays = {f"{index}.{key}": value for index, result in enumerate(points)
                  for key, value in numeric_outputs(result, paths).items()}
    # "config" is what --config FILE reads back: the full config, or for a command that builds several
    # configs the command's own fields (each built config is recorded under "configs").
    record = {"experiment": experiment.name,
              "config": dataclasses.asdict(configs[0]) if single else dict(fields),
              "seed": getattr(configs[0], "seed", None), "report": report}
    if not single:
        record["configs"] = [dataclasses.asdict(c) for c in configs]
    npz, _ = save_run(args.out, experiment.name, arrays, record, precision=getattr(configs[0], "precision", None))
    print(f"saved {npz} and its .json record", file=sys.stderr)
    return 0
