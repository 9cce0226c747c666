"""Sweeps: any experiment over a grid of config values and seeds, chunked, sharded and resumable.

Run:  python -m simulations sweep weighting --out results/sweep-wd --set weight_decay=0,0.01 --seeds 8 --json
Expected runtime: one compilation per shape group (~5-15 s on 2 CPU cores), then seconds per chunk.

The points of a sweep are the cartesian product of the swept values (``--set``, ``--set-vector``,
``--preset``, in command-line order) and the seeds (``--seeds N``: 0..N-1, varying fastest).
Points whose configs share ``shape_key`` form a group; a group runs in fixed-size chunks of
``chunk_size`` points, the last one padded by repeating its last config, so every chunk of a
group is the same compiled program and changing values never recompiles. Each chunk is spread
over the devices along its point axis through the experiment's ``place`` hook, in one of two
placements (``PLACEMENTS``):

* ``"split"`` (default): the chunk is cut into one contiguous slice per device; each slice is
  placed on its device (a one-device ``Mesh`` with axis ``"points"``, ``NamedSharding`` on the
  leading axis) and the slices run concurrently, one thread per device. Every device runs the
  same single-device program, so results are bit-identical to a one-device run of the chunk
  (for batch programs whose per-point numbers do not depend on the batch size, as measured for
  the linear experiments on CPU), and devices never wait on each other inside a solve.
* ``"sharded"``: one ``NamedSharding`` over a ``Mesh`` of all devices; the chunk is one
  GSPMD-partitioned program. The partitioned adaptive solve differs from the one-device program
  in the last bits (measured: 1e-14 in trained weights, 1e-9 relative in t_final on CPU), and its
  while loops advance in lockstep across devices (an all-reduce per step).

Each finished chunk is written to ``DIR/chunk-gGGG-cCCCCC.{npz,json}`` (arrays, then a record with
the configs and provenance; each file atomically: temp file, fsync, ``os.replace``). ``DIR/
manifest.json`` records the sweep's arguments; a rerun with the same arguments skips chunks whose
two files exist and finishes the rest, one with different arguments is refused. A SIGKILL loses at
most the chunks in flight and can leave only hidden ``.*.tmp`` files, which the rerun removes.

Experiment protocol (what this module calls; see /work/notes/README_sweep.md):
    CONFIG: the frozen config dataclass (``CONFIG()`` is the base point, ``CONFIG.quick()`` with
        ``quick=True``).
    shape_key(config): hashable of the fields that change array shapes.
    run_<name>_batch(configs, *, place=None): one result dict per config; ``place`` is applied to
        every stacked per-point pytree before it enters the compiled program.
    SWEEP_OUTPUTS: dotted key paths of the numeric result entries to save (fixed shape per group).
    SWEEP_PRESETS (optional): name -> {field: value} for vector-valued fields (``--preset``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import itertools
import json
import math
import os
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from simulations.results import load_results, save_results, to_jsonable
from simulations.results import atomic_write

MANIFEST = "manifest.json"
#: Bumped when the on-disk layout changes; a directory of another format is refused.
FORMAT_VERSION = 1
#: Default points per chunk (rounded up to a multiple of the device count). Small enough that a
#: kill loses little, large enough to amortize the Python overhead of a batched flow on a CPU;
#: on a GPU pass a larger --chunk-size (hundreds), since a vmapped solve costs about the same there.
DEFAULT_CHUNK_POINTS = 8
#: The JAX monitoring event recorded once per XLA executable built in this process (a fresh compile
#: or a persistent-cache load), i.e. once per miss of the in-memory jit caches.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
PRESET_AXIS = "preset"
_PROTOCOL = ("CONFIG", "shape_key", "SWEEP_OUTPUTS")
PLACEMENTS = ("split", "sharded")


# ----------------------------------------------------------------------------------------------
# Compile counting


class CompileCounter(contextlib.AbstractContextManager):
    """Counts XLA executables built inside a ``with`` block (jit cache misses, any function).

    Listens to :data:`BACKEND_COMPILE_EVENT` through ``jax.monitoring``; ``names`` lists the
    compiled functions in order. Loads from the persistent compilation cache count too: they are
    also in-memory cache misses, which is what "never recompiles" is about.
    """

    def __init__(self):
        self.names: list[str] = []

    @property
    def count(self) -> int:
        return len(self.names)

    def _listener(self, event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            self.names.append(str(kwargs.get("fun_name", "?")))

    def __enter__(self) -> "CompileCounter":
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc_info) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)


# ----------------------------------------------------------------------------------------------
# The protocol and the plan


def experiment_name(module: types.ModuleType) -> str:
    """The short name of an experiment module (``simulations.experiments.weighting`` -> weighting)."""
    return module.__name__.rpartition(".")[2]


def implements_protocol(module: types.ModuleType) -> bool:
    """True when ``module`` defines everything :func:`run_sweep` calls."""
    return all(hasattr(module, attr) for attr in _PROTOCOL) and hasattr(
        module, f"run_{experiment_name(module)}_batch")


def _check_protocol(module: types.ModuleType) -> Callable:
    name = experiment_name(module)
    missing = [attr for attr in _PROTOCOL + (f"run_{name}_batch",) if not hasattr(module, attr)]
    if missing:
        raise ValueError(f"experiment {name!r} does not implement the sweep protocol: missing {missing}")
    return getattr(module, f"run_{name}_batch")


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One compiled call: ``points`` (indices into the sweep's point list) of shape group ``group``."""

    name: str
    group: int
    points: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """Every point's config and axis values, the shape groups and the chunks (in run order)."""

    experiment: str
    configs: tuple[Any, ...]
    assignments: tuple[dict[str, Any], ...]
    groups: tuple[Any, ...]  # shape keys, in order of first appearance
    chunks: tuple[Chunk, ...]
    chunk_size: int

    @property
    def total(self) -> int:
        return len(self.configs)


def _field_names(config_class) -> list[str]:
    return [field.name for field in dataclasses.fields(config_class)]


def plan_sweep(module: types.ModuleType, *, axes: Sequence[tuple[str, Sequence]] = (), seeds: int | None = None,
               quick: bool = False, chunk_size: int = DEFAULT_CHUNK_POINTS) -> SweepPlan:
    """Points (cartesian product of ``axes`` then seeds 0..seeds-1, seeds fastest), groups and chunks.

    Args:
        module: an experiment implementing the protocol.
        axes: ``(field, values)`` pairs in sweep order; field ``"preset"`` takes names from the
            module's ``SWEEP_PRESETS`` (each sets several fields at once).
        seeds: number of seeds (field ``seed`` = 0..seeds-1) or None to keep the base config's seed.
        quick: start from ``CONFIG.quick()`` instead of ``CONFIG()``.
        chunk_size: points per compiled call (>= 1).

    Raises:
        ValueError: unknown field, repeated axis, empty values, or a value the config rejects
            (naming the point).
    """
    _check_protocol(module)
    name = experiment_name(module)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    fields = _field_names(module.CONFIG)
    presets = getattr(module, "SWEEP_PRESETS", {})
    axes = [(str(field), list(values)) for field, values in axes]
    seen: set[str] = set()
    for field, values in axes:
        if field == PRESET_AXIS:
            unknown = [v for v in values if v not in presets]
            if unknown:
                raise ValueError(f"preset must be one of {sorted(presets)} for {name}, got {unknown}")
            touched = {key for v in values for key in presets[v]}
        elif field not in fields:
            raise ValueError(f"field {field!r} is not a field of {module.CONFIG.__name__}; expected one of {fields}")
        else:
            touched = {field}
        if not values:
            raise ValueError(f"field {field!r} needs at least one value")
        overlap = touched & seen
        if overlap or field in seen:
            raise ValueError(f"field {field!r} is swept twice (overlaps {sorted(overlap) or [field]}); "
                             f"give each field one --set / --set-vector / --preset axis")
        seen |= touched | {field}
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
        if "seed" not in fields:
            raise ValueError(f"seeds: {module.CONFIG.__name__} has no seed field")
        if "seed" in seen:
            raise ValueError("seed is swept twice: use either --seeds N or --set seed=...")
        axes.append(("seed", list(range(seeds))))
    base = module.CONFIG.quick() if quick else module.CONFIG()
    configs, assignments = [], []
    for index, combination in enumerate(itertools.product(*(values for _, values in axes))):
        assignment = {field: value for (field, _), value in zip(axes, combination)}
        overrides: dict[str, Any] = {}
        for field, value in assignment.items():
            overrides.update(presets[value] if field == PRESET_AXIS else {field: value})
        try:
            configs.append(dataclasses.replace(base, **overrides))
        except (ValueError, TypeError) as error:
            raise ValueError(f"point {index} ({_describe(assignment)}): {error}") from None
        assignments.append(assignment)
    groups: dict[Any, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(module.shape_key(config), []).append(index)
    chunks = []
    for group, members in enumerate(groups.values()):
        for start in range(0, len(members), chunk_size):
            chunks.append(Chunk(f"chunk-g{group:03d}-c{start // chunk_size:05d}", group,
                                tuple(members[start:start + chunk_size])))
    return SweepPlan(name, tuple(configs), tuple(assignments), tuple(groups), tuple(chunks), chunk_size)


def _describe(assignment: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in assignment.items()) or "base config"


# ----------------------------------------------------------------------------------------------
# Devices


def point_sharding(devices: Sequence, chunk_size: int):
    """NamedSharding of a chunk's leading (point) axis over the largest usable prefix of ``devices``.

    Uses the most devices that divide ``chunk_size`` evenly (all of them when the chunk size is a
    multiple of the device count, which :func:`default_chunk_size` ensures).
    """
    devices = list(devices)
    if not devices:
        raise ValueError("devices must hold at least one device")
    used = max(n for n in range(1, len(devices) + 1) if chunk_size % n == 0)
    mesh = jax.sharding.Mesh(np.asarray(devices[:used]), ("points",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("points"))


def make_place(sharding) -> Callable:
    """The ``place`` hook: put every leaf of a stacked per-point pytree on ``sharding``."""
    def place(tree):
        return jax.device_put(tree, sharding)
    return place


def _run_chunk(run_batch: Callable, configs: Sequence, devices: Sequence, placement: str, *,
               warm_first: bool = False) -> list:
    """Run one padded chunk over ``devices`` (a count dividing ``len(configs)``) in ``placement``.

    ``warm_first`` (split placement, first chunk of a group): run the first device's slice alone
    before the others, so that on GPUs (whose persistent-cache keys ignore the device) the other
    devices load its compiled program from the cache instead of compiling it again.
    """
    if placement == "sharded" or len(devices) == 1:
        return run_batch(list(configs), place=make_place(point_sharding(devices, len(configs))))
    size = len(configs) // len(devices)
    slices = [list(configs[i * size:(i + 1) * size]) for i in range(len(devices))]
    from concurrent.futures import ThreadPoolExecutor

    def run(index):
        return run_batch(slices[index], place=make_place(point_sharding([devices[index]], size)))

    first = [run(0)] if warm_first else []
    with ThreadPoolExecutor(max_workers=len(devices)) as pool:  # XLA releases the GIL while it runs
        rest = list(pool.map(run, range(len(first), len(devices))))
    return [result for part in first + rest for result in part]


def default_chunk_size(device_count: int) -> int:
    """DEFAULT_CHUNK_POINTS rounded up to a multiple of ``device_count``."""
    return device_count * math.ceil(DEFAULT_CHUNK_POINTS / device_count)


# ----------------------------------------------------------------------------------------------
# Running


@dataclasses.dataclass(frozen=True)
class SweepSummary:
    """Outcome of :func:`run_sweep`, counted in points (``as_json`` is the CLI's public contract).

    completed: points computed by this call; skipped: points found already done in DIR;
    total: points in the sweep. completed + skipped == total unless other processes
    (``process_count > 1``) own unfinished chunks.
    """

    completed: int
    skipped: int
    total: int
    chunks_run: int
    groups: int
    devices: int
    chunk_size: int
    compiles: int
    seconds: float

    def as_json(self) -> dict[str, int]:
        return {"completed": self.completed, "skipped": self.skipped, "total": self.total}


def _arguments(plan_args: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's canonical (JSON round-tripped) form of a sweep's arguments."""
    return json.loads(json.dumps(to_jsonable(dict(plan_args))))


def _read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"out: {path} is not a readable sweep manifest ({error})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"out: {path} has sweep format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
    return manifest


def _difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return "; ".join(f"{key}: {old.get(key)!r} there vs {new.get(key)!r} here" for key in keys)


def _chunk_done(out: Path, chunk: Chunk) -> bool:
    """Both files exist (each is written atomically, the record last) and the record is this chunk's."""
    npz, record = out / f"{chunk.name}.npz", out / f"{chunk.name}.json"
    if not (npz.exists() and record.exists()):
        return False
    try:
        points = [entry["point"] for entry in json.loads(record.read_text())["points"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return False
    return tuple(points) == chunk.points


def _get(result: Mapping[str, Any], path: str):
    value = result
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            raise ValueError(f"SWEEP_OUTPUTS entry {path!r} is not in the experiment's result dict")
        value = value[key]
    array = np.asarray(value)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"SWEEP_OUTPUTS entry {path!r} is not numeric (got {type(value).__name__})")
    return array


def _collect(results: Sequence[Mapping[str, Any]], outputs: Sequence[str]) -> dict[str, np.ndarray]:
    arrays = {}
    for path in outputs:
        values = [_get(result, path) for result in results]
        shapes = {value.shape for value in values}
        if len(shapes) != 1:
            raise ValueError(f"SWEEP_OUTPUTS entry {path!r} changes shape within one shape group: {sorted(shapes)}")
        arrays[path] = np.stack(values)
    return arrays


@contextlib.contextmanager
def _lock(out: Path, process_index: int):
    """Exclusive per-process lock on DIR (released by the kernel even on SIGKILL)."""
    path = out / f".lock-p{process_index}"
    handle = open(path, "a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"out: another sweep process is writing {out} (lock {path.name} is held)") from None
        yield
    finally:
        handle.close()


def run_sweep(module: types.ModuleType, out, *, axes: Sequence[tuple[str, Sequence]] = (),
              seeds: int | None = None, quick: bool = False, chunk_size: int | None = None,
              devices: Sequence | None = None, process_index: int | None = None,
              process_count: int | None = None, placement: str = "split", progress: bool = True) -> SweepSummary:
    """Run (or finish) a sweep of ``module`` into directory ``out``; see the module docstring.

    Args:
        module: experiment implementing the protocol.
        out: directory for the manifest and chunk files (created; must be empty or hold this sweep).
        axes, seeds, quick: the points (see :func:`plan_sweep`).
        chunk_size: points per compiled call; None means the manifest's on a rerun, else
            :func:`default_chunk_size` of the device count.
        devices: devices to shard each chunk over (default ``jax.local_devices()``).
        process_index, process_count: this process runs the chunks with
            ``chunk_number % process_count == process_index`` (default ``jax.process_index()`` /
            ``jax.process_count()``: one process per host after ``jax.distributed.initialize()``).
        placement: "split" (default; bit-identical to one device) or "sharded" (one GSPMD
            program over all devices); see the module docstring.
        progress: tqdm bar (points) on stderr.

    Returns:
        :class:`SweepSummary`.

    Raises:
        ValueError: bad arguments, or ``out`` holds a sweep with different arguments.
    """
    started = time.perf_counter()
    run_batch = _check_protocol(module)
    out = Path(out)
    devices = list(jax.local_devices() if devices is None else devices)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if isinstance(process_count, bool) or not isinstance(process_count, int) or process_count < 1:
        raise ValueError(f"process_count must be an integer >= 1, got {process_count!r}")
    if isinstance(process_index, bool) or not isinstance(process_index, int) or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be an integer in [0, {process_count - 1}], got {process_index!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a directory")
    manifest = _read_manifest(out) if out.exists() else None
    if chunk_size is None:
        chunk_size = manifest["arguments"]["chunk_size"] if manifest else default_chunk_size(len(devices))
    arguments = _arguments({"experiment": experiment_name(module), "quick": bool(quick),
                            "axes": [[field, list(values)] for field, values in axes],
                            "seeds": seeds, "chunk_size": chunk_size, "placement": placement})
    if manifest is not None and manifest["arguments"] != arguments:
        raise ValueError(f"out: {out} holds a sweep with different arguments ({_difference(manifest['arguments'], arguments)}); "
                         f"rerun with the original arguments to finish it, or choose a new --out")
    if manifest is None and out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise ValueError(f"out: {out} is not empty and holds no sweep manifest; choose a new or empty --out")
    plan = plan_sweep(module, axes=axes, seeds=seeds, quick=quick, chunk_size=chunk_size)
    out.mkdir(parents=True, exist_ok=True)
    used = point_sharding(devices, chunk_size).mesh.devices.size  # devices dividing the chunk evenly
    devices = devices[:used]
    mine = [chunk for number, chunk in enumerate(plan.chunks) if number % process_count == process_index]
    completed = skipped = chunks_run = 0
    from tqdm import tqdm

    with _lock(out, process_index), CompileCounter() as compiles:
        for chunk in mine:  # stale temp files of chunks this process owns (a killed earlier run)
            for stale in out.glob(f".{chunk.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        manifest = _read_manifest(out)  # again, under the lock
        if manifest is None:
            if process_index == 0:
                for stale in out.glob(f".{MANIFEST}.*.tmp"):
                    stale.unlink(missing_ok=True)
            manifest = {"format": FORMAT_VERSION, "arguments": arguments, "total": plan.total,
                        "groups": [repr(key) for key in plan.groups],
                        "chunks": [{"name": c.name, "group": c.group, "points": list(c.points)} for c in plan.chunks],
                        "outputs": list(module.SWEEP_OUTPUTS)}
            text = json.dumps(manifest, indent=1).encode()
            atomic_write(out / MANIFEST, lambda handle: handle.write(text))
        elif manifest["arguments"] != arguments:
            raise ValueError(f"out: {out} holds a sweep with different arguments "
                             f"({_difference(manifest['arguments'], arguments)}); choose a new --out")
        skipped = sum(len(chunk.points) for chunk in plan.chunks if _chunk_done(out, chunk))
        todo = [chunk for chunk in mine if not _chunk_done(out, chunk)]
        warmed: set[int] = set()
        with tqdm(total=plan.total, initial=skipped, unit="point", file=sys.stderr, disable=not progress,
                  desc=f"sweep {plan.experiment}", dynamic_ncols=True) as bar:
            for chunk in todo:
                configs = [plan.configs[i] for i in chunk.points]
                padded = configs + [configs[-1]] * (chunk_size - len(configs))
                results = _run_chunk(run_batch, padded, devices, placement, warm_first=chunk.group not in warmed)
                warmed.add(chunk.group)
                arrays = _collect(results[:len(configs)], module.SWEEP_OUTPUTS)
                record = {
                    "experiment": plan.experiment, "chunk": chunk.name, "group": chunk.group,
                    "shape_key": repr(plan.groups[chunk.group]), "chunk_size": chunk_size,
                    "devices": used, "placement": placement,
                    "points": [{"point": i, "axes": plan.assignments[i], "seed": getattr(plan.configs[i], "seed", None),
                                "config": dataclasses.asdict(plan.configs[i])} for i in chunk.points],
                }
                save_results(out, chunk.name, arrays, record, precision=getattr(configs[0], "precision", None))
                completed += len(chunk.points)
                chunks_run += 1
                bar.update(len(chunk.points))
    return SweepSummary(completed=completed, skipped=skipped, total=plan.total, chunks_run=chunks_run,
                        groups=len(plan.groups), devices=used, chunk_size=chunk_size,
                        compiles=compiles.count, seconds=time.perf_counter() - started)


# ----------------------------------------------------------------------------------------------
# Loading


def load_sweep(directory, *, allow_partial: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A finished sweep's arrays and per-point records, in point order (for figures).

    Returns:
        (arrays, records). ``arrays[path]`` for every SWEEP_OUTPUTS path: one array with a leading
        point axis when every point has the same shape, else a list of per-point arrays (sweeps
        over shape-changing fields). ``records[k]``: {point, axes, seed, config, group, chunk,
        provenance} of the k-th returned point.

    Raises:
        ValueError: no manifest, or unfinished chunks (unless ``allow_partial``, which returns the
            finished points only).
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    if manifest is None:
        raise ValueError(f"directory: {directory} holds no sweep ({MANIFEST} missing)")
    per_point: dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]] = {}
    missing = 0
    for entry in manifest["chunks"]:
        chunk = Chunk(entry["name"], entry["group"], tuple(entry["points"]))
        if not _chunk_done(directory, chunk):
            missing += len(chunk.points)
            continue
        arrays, record = load_results(directory, chunk.name)
        for row, point in enumerate(record["points"]):
            per_point[point["point"]] = ({key: value[row] for key, value in arrays.items()},
                                         {**point, "group": record["group"], "chunk": record["chunk"],
                                          "provenance": record["provenance"]})
    if missing and not allow_partial:
        raise ValueError(f"directory: the sweep in {directory} is unfinished ({missing} of {manifest['total']} points "
                         f"missing); rerun the same command to finish it, or pass allow_partial=True")
    order = sorted(per_point)
    arrays: dict[str, Any] = {}
    for path in manifest["outputs"]:
        values = [per_point[i][0][path] for i in order]
        arrays[path] = np.stack(values) if values and len({v.shape for v in values}) == 1 else values
    return arrays, [per_point[i][1] for i in order]


# ----------------------------------------------------------------------------------------------
# Command line


def sweepable(experiments: Mapping[str, types.ModuleType]) -> dict[str, types.ModuleType]:
    """The registered experiments that implement the protocol (discovered, never listed by hand)."""
    return {name: module for name, module in experiments.items() if implements_protocol(module)}


def add_arguments(parser: argparse.ArgumentParser, experiments: Mapping[str, types.ModuleType]) -> None:
    """The `sweep` subcommand's flags (public contract: --out, --set, --seeds, --json and the JSON keys)."""
    names = ", ".join(sorted(sweepable(experiments)))
    parser.add_argument("sweep_experiment", metavar="EXPERIMENT", help=f"experiment to sweep: {names}")
    parser.add_argument("--out", required=True, help="directory for the manifest and the chunk files")
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
                                             "SWEEP_PRESETS); repeat to sweep over several presets")
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object {"completed": C, "skipped": S, "total": T} (points)')


def _field_type(config_class, field: str):
    hints = typing.get_type_hints(config_class)
    kind, optional = hints[field], False
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(kind) if member is not type(None)]
        optional = len(members) < len(typing.get_args(kind))
        kind = members[0] if len(members) == 1 else str
    return kind, optional


def _scalar(field: str, text: str, kind, optional: bool):
    text = text.strip()
    if optional and text.lower() == "none":
        return None
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise ValueError(f"{field}: expected {'an integer' if kind is int else kind.__name__} value, got {text!r}") from None
    return text


def parse_axes(module: types.ModuleType, raw: Sequence[tuple[str, str]]) -> list[tuple[str, list]]:
    """Turn the CLI's tagged ``("set" | "vector" | "preset", text)`` flags into typed sweep axes.

    Fields keep the order of their first flag. ``--set FIELD=V1,V2`` takes scalar fields (int,
    float, bool, str, optional ones also ``none``); ``--set-vector FIELD=X1,X2,...`` gives one
    value of a tuple-valued field per flag; ``--preset NAME`` one preset per flag.
    """
    fields = _field_names(module.CONFIG)
    axes: dict[str, list] = {}
    for tag, text in raw:
        if tag == "preset":
            axes.setdefault(PRESET_AXIS, []).append(text.strip())
            continue
        flag = "--set" if tag == "set" else "--set-vector"
        field, sep, values = text.partition("=")
        field = field.strip().replace("-", "_")
        if not sep or not field or not values.strip():
            raise ValueError(f"{flag}: expected FIELD=VALUE,..., got {text!r}")
        if field not in fields:
            raise ValueError(f"{flag}: {field!r} is not a field of {module.CONFIG.__name__}; expected one of {fields}")
        kind, optional = _field_type(module.CONFIG, field)
        vector = typing.get_origin(kind) is tuple
        if tag == "set":
            if vector:
                raise ValueError(f"--set: {field} is vector-valued; give each value with --set-vector "
                                 f"{field}=X1,X2,... (repeat the flag) or use --preset")
            if field in axes:
                raise ValueError(f"--set: {field} is given twice; list all its values in one --set")
            axes[field] = [_scalar(field, value, kind, optional) for value in values.split(",")]
        else:
            if not vector:
                raise ValueError(f"--set-vector: {field} is a scalar field; use --set {field}=V1,V2,...")
            element = (typing.get_args(kind) or (float,))[0]
            if optional and values.strip().lower() == "none":
                value = None
            else:
                value = tuple(_scalar(field, item, element, False) for item in values.split(","))
            axes.setdefault(field, []).append(value)
    return list(axes.items())


def main(args: argparse.Namespace, experiments: Mapping[str, types.ModuleType]) -> int:
    """``python -m simulations sweep``: run or finish a sweep; ValueError for bad input (exit 2)."""
    available = sweepable(experiments)
    if args.sweep_experiment not in available:
        raise ValueError(f"EXPERIMENT must be one of {sorted(available)} (experiments implementing the sweep "
                         f"protocol), got {args.sweep_experiment!r}")
    module = available[args.sweep_experiment]
    axes = parse_axes(module, args.axes)
    devices = jax.local_devices()
    if args.devices is not None:
        if not 1 <= args.devices <= len(devices):
            raise ValueError(f"--devices must be in [1, {len(devices)}] (local devices), got {args.devices}")
        devices = devices[:args.devices]
    summary = run_sweep(module, args.out, axes=axes, seeds=args.seeds, quick=args.quick, chunk_size=args.chunk_size,
                        devices=devices, process_index=args.process_index, process_count=args.process_count,
                        placement=args.placement, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary.as_json()))
    else:
        print(f"{summary.completed} points computed, {summary.skipped} already done, {summary.total} in all "
              f"({summary.groups} shape group(s), chunks of {summary.chunk_size} on {summary.devices} device(s), "
              f"{summary.compiles} compilation(s), {summary.seconds:.1f} s) -> {args.out}")
    return 0
