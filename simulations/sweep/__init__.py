"""Sweeps: any experiment over a grid of config values and seeds, chunked, sharded and resumable.

Run:  python -m simulations sweep weighting --out results/sweep-wd --set weight_decay=0,0.01 --seeds 8 --json
      python -m simulations sweep summary results/sweep-wd --metric diagnostics.loss --by weight_decay
Expected runtime: one compilation per shape group (~5-15 s on 2 CPU cores), then seconds per chunk.

Every experiment of the registry (simulations.registry) can be swept: the engine reads its
config class, shape key, batched program, typed result and presets from its Experiment. The
points of a sweep are the cartesian product of the swept values (``--set``, ``--set-vector``,
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

Each finished chunk is written to ``DIR/chunk-gGGG-cCCCCC.{npz,json}``: the numeric leaves of the
experiment's typed result under their output paths (``"measured"``, ``"diagnostics.converged"``),
then a record with the configs and provenance; each file atomically (temp file, fsync,
``os.replace``). ``DIR/manifest.json`` records the sweep's arguments; a rerun with the same
arguments skips chunks whose two files exist and finishes the rest, one with different arguments
is refused. A SIGKILL loses at most the chunks in flight and can leave only hidden ``.*.tmp``
files, which the rerun removes.

Engines (``--engine``): ``inprocess`` (default) runs the chunks in this process, one after
another; ``dask`` hands each chunk to a Dask distributed cluster (``--scheduler tcp://host:8786``,
or a local cluster of ``--workers N`` processes), whose workers configure JAX as the command line
does, compute their chunks and write the same files into DIR (a shared filesystem on a cluster);
a lost worker's chunks are rerun elsewhere. Same manifest, same bit-identical arrays, and a sweep
started with one engine can be finished with the other (:mod:`simulations.sweep.distributed`).

Reading a sweep back: :func:`load_sweep` (arrays by output path, per-point records) or
:func:`load_sweep_dataset` (an ``xarray.Dataset`` with a ``point`` dimension, the swept fields and
the seed as its coordinates and named array dimensions such as ``layer`` and ``feature``);
``python -m simulations sweep summary DIR --metric PATH --by FIELD [--json] [--plot FILE.png]``
tabulates the mean and standard deviation of a scalar output against a swept field.
"""

from simulations.sweep.command import SUMMARY, add_arguments, main, plot_summary, summarize, sweepable
from simulations.sweep.distributed import DEFAULT_RETRIES
from simulations.sweep.plan import (
    DEFAULT_CHUNK_POINTS,
    PRESET_AXIS,
    Chunk,
    SweepPlan,
    field_names,
    parse_axes,
    plan_sweep,
)
from simulations.sweep.run import (
    BACKEND_COMPILE_EVENT,
    ENGINES,
    PLACEMENTS,
    ChunkTask,
    CompileCounter,
    SweepSummary,
    default_chunk_size,
    make_place,
    point_sharding,
    run_chunk,
    run_sweep,
    write_chunk,
)
from simulations.sweep.store import FORMAT_VERSION, MANIFEST, load_sweep, load_sweep_dataset, read_manifest

__all__ = [
    "BACKEND_COMPILE_EVENT", "DEFAULT_CHUNK_POINTS", "DEFAULT_RETRIES", "ENGINES", "FORMAT_VERSION", "MANIFEST",
    "PLACEMENTS", "PRESET_AXIS", "SUMMARY", "Chunk", "ChunkTask", "CompileCounter", "SweepPlan", "SweepSummary",
    "add_arguments", "default_chunk_size", "field_names", "load_sweep", "load_sweep_dataset", "main", "make_place",
    "parse_axes", "plan_sweep", "plot_summary", "point_sharding", "read_manifest", "run_chunk", "run_sweep",
    "summarize", "sweepable", "write_chunk",
]
