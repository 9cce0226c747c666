"""Time every figure and the README's example commands, cold and warm, against the speed targets.

Run:  python -m bench.figures [--json] [--skip quick,commands] [--out DIR] [--no-save]
Expected runtime: ~12 min on 2 CPU cores (the theory figures twice, all figures once, the quick
figures once, six commands twice each).

Each measurement is a fresh process, as a user runs it, with its default ``--jobs``:

* ``theory_cold``: ``python -m figures --only THEORY`` with the compilation cache pointed at an
  empty directory (``PROJECTION_HEAD_JAX_CACHE``); ``theory_warm``: the same command again on that
  cache; ``all_cold``: ``python -m figures`` on another empty cache.
  Per-figure times are the ones each figure prints (``NAME: wrote ... (S s)``); figures drawn at
  the same time by two workers share the cores, and a figure that reuses programs an earlier
  figure of its worker compiled is cheaper than it would be alone.
* ``quick_cold``: ``python -m figures --quick`` on another empty cache.
* ``commands``: each of :data:`COMMANDS` on an empty cache, then again on that cache.

Totals are the processes' wall times, compared with :data:`TARGETS` (seconds): the theory figures
(``figures.__main__.THEORY``) cold and warm, every figure cold, the quick figures cold, and the
slowest command cold and warm. Prints one JSON object (``--json``: only the JSON on stdout) and
saves it with the machine under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import code, machine, save_report
from figures.__main__ import THEORY, figure_names
from simulations.cli import OneLineArgumentParser
from simulations.runtime import CACHE_ENV

#: Targets in seconds on 2 CPU cores.
TARGETS = {"theory_cold": 120.0, "theory_warm": 45.0, "all_cold": 180.0, "quick_cold": 30.0,
           "command_cold": 10.0, "command_warm": 3.0}
#: The README's example commands (``python -m simulations`` arguments).
COMMANDS = {
    "weighting": ["weighting", "--pos-cov", "0.9,0.5,0.8", "--second-moment", "1,0.6,2", "--depth", "2", "--json"],
    "downstream": ["downstream", "--pos-cov", "0.9,0.5,0.8", "--second-moment", "1,0.6,2", "--target", "2",
                   "--json"],
    "reweighting": ["reweighting", "--pos-cov", "0.9,0.5,0.8", "--second-moment", "1,0.6,2", "--kappa", "2",
                    "--json"],
    "readout": ["readout", "--pos-cov", "0.9,0.5,0.8", "--second-moment", "1,0.6,2", "--depth", "3", "--target", "2",
                "--json"],
    "nonlinear_quick": ["nonlinear", "--quick", "--json"],
    "supervised_quick": ["supervised", "--quick", "--json"],
}
PARTS = ("figures", "quick", "commands")
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"
#: A figure's closing line; names are matched against the figure list, since another worker's
#: progress bar may end right before one on the same line.
_WROTE = re.compile("(" + "|".join(sorted(figure_names(), key=len, reverse=True)) + r"): wrote \S+ \(([0-9.]+) s\)")


def log(message: str) -> None:
    print(f"[bench.figures {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run(arguments: list[str], cache: Path) -> tuple[float, str]:
    """Run ``python ARGUMENTS`` with the compilation cache at ``cache``: (wall seconds, stderr)."""
    env = {**os.environ, CACHE_ENV: str(cache)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *arguments], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"python {' '.join(arguments)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stderr


def figure_times(stderr: str) -> dict[str, float]:
    """Per-figure seconds from the ``NAME: wrote PATH (S s)`` lines of ``python -m figures``, found
    anywhere in the text: two workers' progress bars may share a line with them."""
    return {match.group(1): float(match.group(2)) for match in _WROTE.finditer(stderr)}


def against_target(seconds: float, target: str) -> dict:
    """Seconds (rounded), the target and whether it was met."""
    return {"seconds": round(seconds, 1), "target_s": TARGETS[target], "met": seconds <= TARGETS[target]}


def bench_figures(scratch: Path) -> dict:
    """``python -m figures``: the theory figures cold then warm, and all figures cold on another
    empty cache. Totals are the processes' wall times (figures are drawn by parallel workers, so
    per-figure times overlap); per-figure times are kept for reference."""
    theory = ["-m", "figures", "--only", ",".join(THEORY), "--out", str(scratch / "figures")]
    runs = {}
    for label, arguments, cache in (("theory_cold", theory, "cache-theory"), ("theory_warm", theory, "cache-theory"),
                                    ("all_cold", ["-m", "figures", "--out", str(scratch / "all")], "cache-all")):
        log(f"python {' '.join(arguments[:3])} ... ({label.replace('_', ', ')} compilation cache)")
        wall, stderr = _run(arguments, scratch / cache)
        runs[label] = (wall, figure_times(stderr))
        log(f"  {wall:.1f} s")
    names = list(runs["all_cold"][1])
    per_figure = {name: {"cold_s": runs["all_cold"][1][name],
                         "theory_cold_s": runs["theory_cold"][1].get(name),
                         "theory_warm_s": runs["theory_warm"][1].get(name)} for name in names}
    return {"per_figure": per_figure, "theory_figures": list(THEORY),
            "process_wall_s": {label: round(wall, 1) for label, (wall, _) in runs.items()},
            "totals": {label: against_target(wall, label) for label, (wall, _) in runs.items()}}


def bench_quick(scratch: Path) -> dict:
    """``python -m figures --quick`` on an empty cache (the whole process, start-up included)."""
    log("python -m figures --quick (cold compilation cache)")
    wall, stderr = _run(["-m", "figures", "--quick", "--out", str(scratch / "quick")], scratch / "cache-quick")
    log(f"  {wall:.1f} s")
    return {"per_figure": figure_times(stderr), "totals": {"quick_cold": against_target(wall, "quick_cold")}}


def bench_commands(scratch: Path) -> dict:
    """Each example command cold (empty cache) and warm (the same cache), whole process."""
    per_command = {}
    for name, arguments in COMMANDS.items():
        cache = scratch / f"cache-{name}"
        cold, _ = _run(["-m", "simulations", *arguments], cache)
        warm, _ = _run(["-m", "simulations", *arguments], cache)
        per_command[name] = {"command": "python -m simulations " + " ".join(arguments),
                             "cold_s": round(cold, 2), "warm_s": round(warm, 2)}
        log(f"  {name}: cold {cold:.1f} s, warm {warm:.1f} s")
    return {"per_command": per_command,
            "totals": {"command_cold": against_target(max(c["cold_s"] for c in per_command.values()), "command_cold"),
                       "command_warm": against_target(max(c["warm_s"] for c in per_command.values()), "command_warm")}}


def summary_lines(report: dict) -> list[str]:
    """One line per total: seconds against the target."""
    lines = []
    for part in PARTS:
        for key, total in report.get(part, {}).get("totals", {}).items():
            verdict = "met" if total["met"] else "NOT met"
            lines.append(f"{key}: {total['seconds']:.1f} s (target <= {total['target_s']:g} s: {verdict})")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m bench.figures", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip, among {', '.join(PARTS)}")
    parser.add_argument("--out", default=str(DEFAULT_RESULTS), help="directory for the saved JSON")
    parser.add_argument("--no-save", action="store_true", help="do not save the JSON")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    if skip - set(PARTS):
        parser.error(f"--skip must name parts among {list(PARTS)}, got {args.skip!r}")
    started = time.perf_counter()
    report = {"machine": machine(), "code": code(), "targets_s": TARGETS}
    with tempfile.TemporaryDirectory(prefix="bench-figures-") as scratch:
        for part, run in (("figures", bench_figures), ("quick", bench_quick), ("commands", bench_commands)):
            if part not in skip:
                report[part] = run(Path(scratch))
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if not args.no_save:
        log(f"saved {save_report(report, args.out, 'figures')}")
    for line in summary_lines(report):
        log(line)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
