"""The ``dask`` engine: a sweep's chunks as tasks of a Dask distributed cluster (a laptop or many hosts).

Each unfinished chunk becomes one task. The worker that runs it configures JAX as the command
line does (:func:`simulations.runtime.configure_entry_point`: float64, the persistent compile
cache), runs the chunk over its own local devices exactly as the in-process engine does, and
writes the chunk's two files itself, each atomically (temp file, fsync, ``os.replace``), into the
sweep directory, which every worker must therefore see (a shared filesystem on a cluster). Workers
write rather than send arrays back because the client then never holds more than a chunk name and
a count per task: result sizes never pass through the scheduler, a finished chunk survives a lost
client, and a task that Dask happens to run twice (a worker declared dead while still running)
only replaces a file with identical bytes.

A worker that dies mid-chunk (killed, out of memory) loses only that chunk: the scheduler reruns
its task on another worker (up to ``distributed.scheduler.allowed-failures`` times, default 3) and
a task that raises is retried ``retries`` times. The directory's manifest is the in-process
engine's, and the engine is not one of the sweep's arguments: a sweep started with one engine can
be finished with the other, and both give bit-identical arrays.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Retries of a chunk whose task raised (a killed worker's task is rescheduled by Dask regardless).
DEFAULT_RETRIES = 2
#: Shape groups whose first chunk this worker process has run (the split placement's warm-up).
_WARMED: set[tuple[str, int]] = set()


def compute_chunk(payload: bytes) -> dict[str, Any]:
    """Run one chunk on this worker's local devices and write its files; returns {name, points, compiles}.

    ``payload``: the cloudpickled ``(experiment, task)`` (:class:`simulations.sweep.run.ChunkTask`),
    passed as bytes so that Dask never looks inside it. Configures JAX first (idempotent), since a
    worker is a fresh process that has not run the command line's entry point.
    """
    from simulations.runtime import configure_entry_point

    configure_entry_point()
    import cloudpickle
    import jax

    from simulations.sweep.plan import Chunk
    from simulations.sweep.run import CompileCounter, point_sharding, write_chunk
    from simulations.sweep.store import chunk_done

    experiment, task = cloudpickle.loads(payload)
    done = {"name": task.name, "points": len(task.configs), "compiles": 0}
    if chunk_done(Path(task.out), Chunk(task.name, task.group, tuple(point["point"] for point in task.points))):
        return done  # a rerun of a task whose result was lost with its worker after the files were written
    devices = list(jax.local_devices())
    used = point_sharding(devices, task.chunk_size).mesh.devices.size
    group = (task.out, task.group)
    with CompileCounter() as compiles:
        write_chunk(experiment, task, devices[:used], warm_first=group not in _WARMED)
    _WARMED.add(group)
    return {**done, "compiles": compiles.count}


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int | None):
    """A ``distributed.Client``: connected to ``scheduler``, or to a fresh LocalCluster of ``workers``
    worker processes (one thread each; default: the CPU count) that is shut down on exit."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError("engine 'dask' needs Dask distributed: pip install 'dask[distributed]'") from None
    if scheduler is not None:
        if workers is not None:
            raise ValueError("workers: give --workers only without --scheduler (a running cluster has its own)")
        with Client(scheduler) as client:
            yield client
        return
    count = (os.cpu_count() or 1) if workers is None else workers
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    import logging

    # Quiet: a lost worker's warnings and errors (the scheduler reruns its chunks, recomputing results
    # that lived only on it) would fill stderr; a chunk that fails for good still raises here.
    with LocalCluster(n_workers=count, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        yield client


def run_on_dask(experiment, tasks: Sequence, *, scheduler: str | None, workers: int | None,
                retries: int, on_done: Callable[[dict[str, Any]], None]) -> int:
    """Submit every task, call ``on_done`` with each result as it finishes; returns the compile count."""
    import cloudpickle
    from distributed import as_completed

    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if not tasks:
        return 0
    compiles = 0
    with dask_client(scheduler, workers) as client:
        token = uuid.uuid4().hex[:8]  # one sweep's task keys never collide with another's on a shared scheduler
        futures = [client.submit(compute_chunk, cloudpickle.dumps((experiment, task)), key=f"{task.name}-{token}",
                                 retries=retries) for task in tasks]
        for future in as_completed(futures):
            result = future.result()
            compiles += result["compiles"]
            on_done(result)
    return compiles
