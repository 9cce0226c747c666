"""What a benchmark run records besides its ratios: the machine, the pixels run, a summary of the ratios."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

#: The parts whose "ratio" is the benchmark's stable ``python -m bench --json`` keys.
CONTRACT_KEYS = ("vs_numpy_loop", "sweep_vs_python_loop", "adaptive_vs_fixed_time")


def machine() -> dict:
    """CPU model, cores, JAX version and device, and the load average (other jobs inflate times)."""
    import jax

    from simulations.runtime import usable_cores

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    devices = jax.devices()
    cores = usable_cores()
    return {
        "cpu_model": info.get("model name") or platform.processor() or None,
        # Hosts that print the same model name differ (a generation apart: about 1.7x in these
        # benchmarks); family/model numbers, clock and vector width tell them apart.
        "cpu_family_model": (f"{info['cpu family']}/{info['model']}" if "cpu family" in info and "model" in info
                             else None),
        "cpu_mhz": float(info["cpu MHz"]) if "cpu MHz" in info else None,
        "cpu_vector_extension": next((name for name in ("avx512f", "avx2", "avx", "sse4_2", "asimd")
                                      if name in flags), None),
        "cpu_cores_visible": os.cpu_count(),
        "cpu_cores_usable": None if cores is None else len(cores),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "device_platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def code() -> dict:
    """Which code ran: the library's version, its git commit and whether the checkout had uncommitted
    changes (runs of two versions on one host sit side by side under bench/results), and XLA_FLAGS."""
    from simulations.results import provenance

    record = provenance()
    return {key: record[key] for key in ("library_version", "git_commit", "git_dirty", "xla_flags")}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none, e.g. macOS)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def save_report(report: dict, directory: str | os.PathLike, kind: str, default=None) -> Path:
    """Write ``report`` as ``<UTC stamp>_<device platform>_<kind>.json`` under ``directory``."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(directory) / f"{stamp}_{report['machine']['device_platform']}_{kind}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, default=default, indent=2) + "\n")
    return path


def bench_pixels() -> dict:
    """The default ``pixels`` experiment (its registry entry, in this process): wall time and images/s.

    Its ``diagnostics`` are those ``python -m simulations pixels --json`` prints (the run's own wall,
    compile and run time and images per second); ``wall_s`` adds the call around it.
    """
    from simulations.experiment import run
    from simulations.registry import EXPERIMENTS

    experiment = EXPERIMENTS["pixels"]
    config = experiment.config()
    start = time.perf_counter()
    point = run(experiment, config)
    wall = time.perf_counter() - start
    report = experiment.report(point, config)
    return {"wall_s": wall, "images_per_second": report["diagnostics"]["images_per_second"],
            "diagnostics": report["diagnostics"], "config": "PixelsConfig() (python -m simulations pixels)"}


def summary_lines(report: dict) -> list[str]:
    """One line per measured part: its ratio, marked when it is only a lower bound."""
    lines = []
    for key in CONTRACT_KEYS:
        entry = report.get(key)
        if entry is None:
            continue
        bound = entry.get("ratio_is_lower_bound", False)
        lines.append(f"{key}: {'>= ' if bound else ''}{entry['ratio']:.3g}"
                     f"{' (LOWER BOUND: ratio_is_lower_bound, the NumPy loop hit its time cap)' if bound else ''}")
    if "pixels_run" in report:
        pixels = report["pixels_run"]
        lines.append(f"pixels_run: {pixels['wall_s']:.1f} s, {pixels['images_per_second']:.0f} images/s")
    host = report["machine"]
    lines.append(f"machine: {host.get('cpu_model')} (family/model {host.get('cpu_family_model')}, "
                 f"{host.get('cpu_vector_extension')}), {host.get('cpu_cores_usable')} cores, "
                 f"load average at start {host.get('load_average_1_5_15')}, jax {host.get('jax_version')}, "
                 f"{host.get('device_kind')} x {host.get('device_count')}")
    if "code" in report:
        ran = report["code"]
        commit = ran.get("git_commit")
        lines.append(f"code: projection-head-theory {ran.get('library_version')}, git commit "
                     f"{commit[:12] if commit else None}{' with uncommitted changes' if ran.get('git_dirty') else ''}")
    if "compilation_cache" in report:
        entries = report.get("compilation_cache_entries_at_start")
        if not report["compilation_cache"]:
            state = "off (every compile is timed)"
        elif entries == 0:
            state = "on, empty at start (every compile is timed)"
        else:
            state = f"on, {entries} files at start (times with compile may be cache loads; --cold times compiles)"
        lines.append(f"compilation cache: {state}")
    return lines
