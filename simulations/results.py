"""Saving results with provenance: arrays as .npz plus a JSON record, written atomically."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from simulations import __version__

LIBRARY_VERSION = __version__
_PACKAGES = ("jax", "jaxlib", "numpy", "optax", "diffrax", "equinox", "matplotlib", "tqdm")


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (None when git is unavailable)."""
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10, check=False)
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(*, precision: str | None = None) -> dict[str, Any]:
    """Library version, git commit, package versions, device kind and precision of this process."""
    import jax

    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    device = jax.devices()[0]
    return {
        "library_version": LIBRARY_VERSION,
        "git_commit": _git_commit(),
        "git_dirty": _git_dirty(),
        "python": platform.python_version(),
        "packages": versions,
        "device": {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()},
        "precision": precision or ("float64" if jax.config.jax_enable_x64 else "float32"),
        # XLA's code-generation options (simulations.runtime.configure_xla_cpu): they can move last digits.
        "xla_flags": os.environ.get("XLA_FLAGS") or None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644 & ~_UMASK)  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_jsonable(value):
    """Convert NumPy/JAX scalars and arrays (nested in dicts/lists) to plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def save_results(directory, name: str, arrays: Mapping[str, Any], record: Mapping[str, Any], *,
                 precision: str | None = None) -> tuple[Path, Path]:
    """Write ``name.npz`` (arrays) and ``name.json`` (record + provenance) into ``directory``.

    Both files are written to a temporary name and renamed, so a reader never sees a partial file.
    """
    directory = Path(directory)
    npz_path, json_path = directory / f"{name}.npz", directory / f"{name}.json"
    numpy_arrays = {key: np.asarray(value) for key, value in arrays.items()}
    atomic_write(npz_path, lambda handle: np.savez(handle, **numpy_arrays))
    payload = {**to_jsonable(dict(record)), "provenance": provenance(precision=precision)}
    atomic_write(json_path, lambda handle: handle.write(json.dumps(payload, indent=2).encode()))
    return npz_path, json_path


def save_run(directory, name: str, arrays: Mapping[str, Any], record: Mapping[str, Any], *,
             precision: str | None = None) -> tuple[Path, Path]:
    """:func:`save_results` that never overwrites a different earlier run.

    Writes ``name.{npz,json}``; when ``name.json`` already holds a run with another record (config,
    seed or results), the files are written as ``name-2``, ``name-3``, ... instead and a line on stderr
    says so. Rerunning the same config replaces its own files.
    """
    import sys

    directory = Path(directory)
    candidate, number = name, 1
    payload = to_jsonable(dict(record))
    while (directory / f"{candidate}.json").exists():
        try:
            previous = json.loads((directory / f"{candidate}.json").read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
        if isinstance(previous, dict) and {k: v for k, v in previous.items() if k != "provenance"} == payload:
            break
        number += 1
        candidate = f"{name}-{number}"
    if candidate != name:
        print(f"note: {directory / name}.json holds a different run; writing {candidate}.{{npz,json}} instead",
              file=sys.stderr)
    return save_results(directory, candidate, arrays, record, precision=precision)


def load_results(directory, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read back what :func:`save_results` wrote: (arrays, record)."""
    directory = Path(directory)
    with np.load(directory / f"{name}.npz") as data:
        arrays = {key: data[key] for key in data.files}
    record = json.loads((directory / f"{name}.json").read_text())
    return arrays, record
