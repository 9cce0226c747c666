"""Running a sweep: chunks spread over devices (split or sharded), written atomically, resumable."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from simulations.experiment import Experiment, numeric_outputs, output_paths, split_batch
from simulations.results import atomic_write, save_results
from simulations.sweep.plan import DEFAULT_CHUNK_POINTS, plan_sweep
from simulations.sweep.store import (
    FORMAT_VERSION,
    MANIFEST,
    canonical_arguments,
    chunk_done,
    difference,
    directory_lock,
    read_manifest,
)

#: The JAX monitoring event recorded once per XLA executable built in this process (a fresh compile
#: or a persistent-cache load), i.e. once per miss of the in-memory jit caches.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
PLACEMENTS = ("split", "sharded")
#: Where chunks run: "inprocess" (this process, over its devices) or "dask" (tasks of a Dask cluster).
ENGINES = ("inprocess", "dask")


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

    def __enter__(self) -> CompileCounter:
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc_info) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)


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


def run_chunk(run_batch: Callable, configs: Sequence, devices: Sequence, placement: str, *,
              warm_first: bool = False):
    """Run one padded chunk over ``devices`` (a count dividing ``len(configs)``) in ``placement``.

    Returns the batched result of ``run_batch`` for every config in order (the split placement's
    per-device results concatenated along the point axis). ``warm_first`` (split placement, first
    chunk of a group): run the first device's slice alone before the others, so that on GPUs
    (whose persistent-cache keys ignore the device) the other devices load its compiled program
    from the cache instead of compiling it again.
    """
    if placement == "sharded" or len(devices) == 1:
        return run_batch(list(configs), place=make_place(point_sharding(devices, len(configs))))
    return split_batch(run_batch, list(configs), list(devices), first_alone=warm_first)


def default_chunk_size(device_count: int) -> int:
    """DEFAULT_CHUNK_POINTS rounded up to a multiple of ``device_count``."""
    return device_count * math.ceil(DEFAULT_CHUNK_POINTS / device_count)


@dataclasses.dataclass(frozen=True)
class SweepSummary:
    """Outcome of :func:`run_sweep`, counted in points (``as_json`` is what ``--json`` prints).

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


@dataclasses.dataclass(frozen=True)
class ChunkTask:
    """One chunk to compute and write, as plain picklable data (what a Dask worker receives)."""

    out: str
    experiment: str
    name: str
    group: int
    shape_key: str
    chunk_size: int
    placement: str
    points: tuple[dict, ...]  # {point, axes, seed} per point, in order
    configs: tuple  # the chunk's configs (unpadded)


def chunk_task(plan, chunk, out: Path, placement: str) -> ChunkTask:
    """The :class:`ChunkTask` of ``chunk`` of ``plan``."""
    return ChunkTask(out=str(out), experiment=plan.experiment, name=chunk.name, group=chunk.group,
                     shape_key=repr(plan.groups[chunk.group]), chunk_size=plan.chunk_size, placement=placement,
                     points=tuple({"point": i, "axes": plan.assignments[i],
                                   "seed": getattr(plan.configs[i], "seed", None)} for i in chunk.points),
                     configs=tuple(plan.configs[i] for i in chunk.points))


def write_chunk(experiment: Experiment, task: ChunkTask, devices: Sequence, *, warm_first: bool = False) -> None:
    """Run ``task``'s chunk (padded to its chunk size by repeating the last config) over ``devices``
    and write ``chunk-*.{npz,json}`` atomically into its directory (both engines call this)."""
    configs = list(task.configs)
    padded = configs + [configs[-1]] * (task.chunk_size - len(configs))
    result = run_chunk(experiment.run_batch, padded, devices, task.placement, warm_first=warm_first)
    arrays = {path: value[:len(configs)]
              for path, value in numeric_outputs(result, output_paths(experiment.result)).items()}
    record = {
        "experiment": task.experiment, "chunk": task.name, "group": task.group, "shape_key": task.shape_key,
        "chunk_size": task.chunk_size, "devices": len(devices), "placement": task.placement,
        "points": [{**point, "config": dataclasses.asdict(config)} for point, config in zip(task.points, configs)],
    }
    save_results(Path(task.out), task.name, arrays, record, precision=getattr(configs[0], "precision", None))


def _check_processes(process_index, process_count) -> tuple[int, int]:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if isinstance(process_count, bool) or not isinstance(process_count, int) or process_count < 1:
        raise ValueError(f"process_count must be an integer >= 1, got {process_count!r}")
    if isinstance(process_index, bool) or not isinstance(process_index, int) or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be an integer in [0, {process_count - 1}], got {process_index!r}")
    return process_index, process_count


def run_sweep(experiment: Experiment, out, *, axes: Sequence[tuple[str, Sequence]] = (),
              seeds: int | None = None, quick: bool = False, chunk_size: int | None = None,
              devices: Sequence | None = None, process_index: int | None = None,
              process_count: int | None = None, placement: str = "split", progress: bool = True,
              engine: str = "inprocess", scheduler: str | None = None, workers: int | None = None,
              retries: int = 2) -> SweepSummary:
    """Run (or finish) a sweep of ``experiment`` into directory ``out``; see :mod:`simulations.sweep`.

    Args:
        experiment: a registered :class:`simulations.experiment.Experiment`.
        out: directory for the manifest and chunk files (created; must be empty or hold this sweep).
        axes, seeds, quick: the points (see :func:`simulations.sweep.plan_sweep`).
        chunk_size: points per compiled call; None means the manifest's on a rerun, else
            :func:`default_chunk_size` of the device count.
        devices: devices to shard each chunk over (default ``jax.local_devices()``).
        process_index, process_count: this process runs the chunks with
            ``chunk_number % process_count == process_index`` (default ``jax.process_index()`` /
            ``jax.process_count()``: one process per host after ``jax.distributed.initialize()``).
        placement: "split" (default; bit-identical to one device) or "sharded" (one GSPMD
            program over all devices).
        progress: tqdm bar (points) on stderr.
        engine: "inprocess" (default: chunks run in this process, in order) or "dask" (each chunk a
            task of a Dask distributed cluster; see :mod:`simulations.sweep.distributed`).
        scheduler: (dask) address of a running scheduler, e.g. ``"tcp://host:8786"``; None starts a
            LocalCluster of ``workers`` worker processes (one thread each; default: the CPU count).
        retries: (dask) reruns of a chunk whose task raised (a lost worker's chunks are rerun anyway).

    Returns:
        :class:`SweepSummary`.

    Raises:
        ValueError: bad arguments, or ``out`` holds a sweep with different arguments.
    """
    started = time.perf_counter()
    if not isinstance(experiment, Experiment):
        raise ValueError(f"experiment must be an Experiment (simulations.registry), got {experiment!r}")
    out = Path(out)
    devices = list(jax.local_devices() if devices is None else devices)
    if engine == "dask" and process_index is None and process_count is None:
        process_index, process_count = 0, 1
    process_index, process_count = _check_processes(process_index, process_count)
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "inprocess" and (scheduler is not None or workers is not None):
        raise ValueError("scheduler and workers need engine 'dask'")
    if engine == "dask" and process_count != 1:
        raise ValueError("engine 'dask' runs every chunk of the sweep: leave process_index/process_count out")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if workers is not None and scheduler is not None:
        raise ValueError("workers: give workers only without a scheduler (a running cluster has its own)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a directory")
    manifest = read_manifest(out) if out.exists() else None
    if chunk_size is None:
        chunk_size = manifest["arguments"]["chunk_size"] if manifest else default_chunk_size(len(devices))
    arguments = canonical_arguments({"experiment": experiment.name, "quick": bool(quick),
                                     "axes": [[field, list(values)] for field, values in axes],
                                     "seeds": seeds, "chunk_size": chunk_size, "placement": placement})
    if manifest is not None and manifest["arguments"] != arguments:
        raise ValueError(f"out: {out} holds a sweep with different arguments "
                         f"({difference(manifest['arguments'], arguments)}); "
                         f"rerun with the original arguments to finish it, or choose a new --out")
    if manifest is None and out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise ValueError(f"out: {out} is not empty and holds no sweep manifest; choose a new or empty --out")
    plan = plan_sweep(experiment, axes=axes, seeds=seeds, quick=quick, chunk_size=chunk_size)
    out.mkdir(parents=True, exist_ok=True)
    used = point_sharding(devices, chunk_size).mesh.devices.size  # devices dividing the chunk evenly
    devices = devices[:used]
    mine = [chunk for number, chunk in enumerate(plan.chunks) if number % process_count == process_index]
    paths = output_paths(experiment.result)
    completed = skipped = chunks_run = 0
    from tqdm import tqdm

    with directory_lock(out, process_index), CompileCounter() as compiles:
        for chunk in mine:  # stale temp files of chunks this process owns (a killed earlier run)
            for stale in out.glob(f".{chunk.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        manifest = read_manifest(out)  # again, under the lock
        if manifest is None:
            if process_index == 0:
                for stale in out.glob(f".{MANIFEST}.*.tmp"):
                    stale.unlink(missing_ok=True)
            manifest = {"format": FORMAT_VERSION, "arguments": arguments, "total": plan.total,
                        "groups": [repr(key) for key in plan.groups],
                        "chunks": [{"name": c.name, "group": c.group, "points": list(c.points)} for c in plan.chunks],
                        "outputs": list(paths)}
            text = json.dumps(manifest, indent=1).encode()
            atomic_write(out / MANIFEST, lambda handle: handle.write(text))
        elif manifest["arguments"] != arguments:
            raise ValueError(f"out: {out} holds a sweep with different arguments "
                             f"({difference(manifest['arguments'], arguments)}); choose a new --out")
        skipped = sum(len(chunk.points) for chunk in plan.chunks if chunk_done(out, chunk))
        todo = [chunk for chunk in mine if not chunk_done(out, chunk)]
        tasks = [chunk_task(plan, chunk, out.resolve(), placement) for chunk in todo]  # absolute: workers' cwd
        with tqdm(total=plan.total, initial=skipped, unit="point", file=sys.stderr, disable=not progress,
                  desc=f"sweep {plan.experiment}", dynamic_ncols=True) as bar:
            if engine == "dask":
                from simulations.sweep.distributed import run_on_dask

                def done(result):
                    nonlocal completed, chunks_run
                    completed += result["points"]
                    chunks_run += 1
                    bar.update(result["points"])

                compiles.names.extend(["(dask worker)"] * run_on_dask(experiment, tasks, scheduler=scheduler,
                                                                      workers=workers, retries=retries,
                                                                      on_done=done))
            else:
                warmed: set[int] = set()
                for task in tasks:
                    write_chunk(experiment, task, devices, warm_first=task.group not in warmed)
                    warmed.add(task.group)
                    completed += len(task.configs)
                    chunks_run += 1
                    bar.update(len(task.configs))
    return SweepSummary(completed=completed, skipped=skipped, total=plan.total, chunks_run=chunks_run,
                        groups=len(plan.groups), devices=used, chunk_size=chunk_size,
                        compiles=compiles.count, seconds=time.perf_counter() - started)
