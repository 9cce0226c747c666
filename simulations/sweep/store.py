"""A sweep on disk: the manifest, atomic chunk files, the lock, and loading (plain arrays or a Dataset).

``DIR/manifest.json`` records the sweep's arguments, chunks and output paths; each finished chunk
is ``DIR/chunk-gGGG-cCCCCC.{npz,json}`` (arrays under the result's output paths, e.g.
``"diagnostics.converged"``, with a leading point axis; then a record with every point's config,
seed, axis values and provenance). :func:`load_sweep` returns the arrays; :func:`load_sweep_dataset`
the same as an ``xarray.Dataset`` with a ``point`` dimension, the swept fields and the seed as its
coordinates, and named dimensions for the array axes (from the result class's ``DIMS`` table).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from simulations.results import load_results, to_jsonable
from simulations.sweep.plan import Chunk

MANIFEST = "manifest.json"
#: Bumped when the on-disk layout changes; a directory of another format is refused.
FORMAT_VERSION = 1


def canonical_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's canonical (JSON round-tripped) form of a sweep's arguments."""
    return json.loads(json.dumps(to_jsonable(dict(arguments))))


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest in ``out`` (None when there is none); ValueError for an unreadable or foreign one."""
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"out: {path} is not a readable sweep manifest ({error})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"out: {path} has sweep format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
    return manifest


def difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``key: old there vs new here`` for every argument that differs (for error messages)."""
    keys = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return "; ".join(f"{key}: {old.get(key)!r} there vs {new.get(key)!r} here" for key in keys)


def chunk_done(out: Path, chunk: Chunk) -> bool:
    """Both files exist (each is written atomically, the record last) and the record is this chunk's."""
    npz, record = out / f"{chunk.name}.npz", out / f"{chunk.name}.json"
    if not (npz.exists() and record.exists()):
        return False
    try:
        points = [entry["point"] for entry in json.loads(record.read_text())["points"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return False
    return tuple(points) == chunk.points


@contextlib.contextmanager
def directory_lock(out: Path, process_index: int):
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


def load_sweep(directory, *, allow_partial: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A finished sweep's arrays and per-point records, in point order (for figures).

    Returns:
        (arrays, records). ``arrays[path]`` for every saved output path: one array with a leading
        point axis when every point has the same shape, else a list of per-point arrays (sweeps
        over shape-changing fields). ``records[k]``: {point, axes, seed, config, group, chunk,
        provenance} of the k-th returned point.

    Raises:
        ValueError: no manifest, or unfinished chunks (unless ``allow_partial``, which returns the
            finished points only).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise ValueError(f"directory: {directory} holds no sweep ({MANIFEST} missing)")
    per_point: dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]] = {}
    missing = 0
    for entry in manifest["chunks"]:
        chunk = Chunk(entry["name"], entry["group"], tuple(entry["points"]))
        if not chunk_done(directory, chunk):
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
        values = [per_point[i][0][path] for i in order if path in per_point[i][0]]
        if order and not values:
            continue  # declared by the result class but never saved (a None output, e.g. no trajectory)
        arrays[path] = np.stack(values) if values and len({v.shape for v in values}) == 1 else values
    return arrays, [per_point[i][1] for i in order]


def _coordinate(values: list) -> np.ndarray:
    """Axis values as a coordinate: numbers stay numbers; vectors and None become labels."""
    if any(value is None or isinstance(value, (list, tuple)) for value in values):
        return np.asarray(["none" if value is None else ",".join(map(str, value)) if isinstance(value, (list, tuple))
                           else str(value) for value in values])
    return np.asarray(values)


def _padded(values: list) -> np.ndarray:
    """Per-point arrays of different shapes (shape-changing sweeps) padded with NaN to one array."""
    shape = tuple(max(sizes) for sizes in zip(*(np.shape(v) for v in values)))
    out = np.full((len(values), *shape), np.nan)
    for index, value in enumerate(values):
        out[(index, *(slice(0, n) for n in np.shape(value)))] = value
    return out


def load_sweep_dataset(directory, *, allow_partial: bool = False, experiments: Mapping | None = None):
    """A sweep as a labelled ``xarray.Dataset`` (what :func:`load_sweep` returns, with names).

    Every saved output path is a variable (``ds["diagnostics.converged"]``) with dimensions
    ``("point", *names)``: the names of its array axes come from the experiment's result class
    (its ``DIMS`` table: ``"layer"``, ``"feature"``, ...; ``dim_0``-style names for axes it does
    not list). The ``point`` dimension carries the point index, every swept field (``preset`` for
    presets; vectors and None as text labels) and ``seed`` as coordinates, so
    ``ds.groupby("weight_decay")`` works. Outputs whose shape changes between points (a sweep over
    depth or width) are padded with NaN to the largest shape.

    Args:
        directory: the sweep's directory.
        allow_partial: load the finished points of an unfinished sweep.
        experiments: name -> Experiment (default: :data:`simulations.registry.EXPERIMENTS`).
    """
    import xarray as xr

    arrays, records = load_sweep(directory, allow_partial=allow_partial)
    manifest = read_manifest(Path(directory))
    if experiments is None:
        from simulations.registry import EXPERIMENTS as experiments
    experiment = experiments.get(manifest["arguments"]["experiment"])
    table = getattr(getattr(experiment, "result", None), "DIMS", {})
    variables = {}
    for path, values in arrays.items():
        data = _padded(values) if isinstance(values, list) and values else np.asarray(values)
        names = tuple(table.get(path, ()))
        if len(names) != data.ndim - 1:
            names = tuple(f"{path.replace('.', '_')}_dim_{k}" for k in range(data.ndim - 1))
        variables[path] = (("point", *names), data)
    fields = [field for field, _ in manifest["arguments"]["axes"]]
    if manifest["arguments"]["seeds"] is not None:
        fields.append("seed")
    coordinates = {"point": ("point", np.asarray([r["point"] for r in records], dtype=np.int64))}
    for field in fields:
        coordinates[field] = ("point", _coordinate([r["axes"][field] for r in records]))
    if "seed" not in coordinates:
        coordinates["seed"] = ("point", _coordinate([r["seed"] for r in records]))
    attributes = {"experiment": manifest["arguments"]["experiment"], "quick": int(manifest["arguments"]["quick"]),
                  "swept": ",".join(fields)}
    return xr.Dataset(variables, coords=coordinates, attrs=attributes)
