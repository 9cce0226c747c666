"""The points of a sweep: typed axes from the command line, the cartesian product, shape groups, chunks."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from simulations import cli
from simulations.experiment import Experiment

#: The axis whose values are preset names (each sets several fields at once).
PRESET_AXIS = "preset"
#: Default points per chunk (rounded up to a multiple of the device count). Small enough that a
#: kill loses little, large enough to amortize the Python overhead of a batched flow on a CPU;
#: on a GPU pass a larger --chunk-size (hundreds), since a vmapped solve costs about the same there.
DEFAULT_CHUNK_POINTS = 8


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


def field_names(config_class: type) -> list[str]:
    """The config's field names, in declaration order."""
    return [field.name for field in dataclasses.fields(config_class)]


def describe(assignment: Mapping[str, Any]) -> str:
    """``field=value, ...`` of one point's axis values (for error messages)."""
    return ", ".join(f"{key}={value}" for key, value in assignment.items()) or "base config"


def plan_sweep(experiment: Experiment, *, axes: Sequence[tuple[str, Sequence]] = (), seeds: int | None = None,
               quick: bool = False, chunk_size: int = DEFAULT_CHUNK_POINTS) -> SweepPlan:
    """Points (cartesian product of ``axes`` then seeds 0..seeds-1, seeds fastest), groups and chunks.

    Args:
        experiment: a registered :class:`simulations.experiment.Experiment`.
        axes: ``(field, values)`` pairs in sweep order; field ``"preset"`` takes names from the
            experiment's ``presets`` (each sets several fields at once).
        seeds: number of seeds (field ``seed`` = 0..seeds-1) or None to keep the base config's seed.
        quick: start from ``config.quick()`` instead of ``config()``.
        chunk_size: points per compiled call (>= 1).

    Raises:
        ValueError: unknown field, repeated axis, empty values, or a value the config rejects
            (naming the point).
    """
    name, config_class = experiment.name, experiment.config
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    fields = field_names(config_class)
    presets = experiment.presets
    axes = [(str(field), list(values)) for field, values in axes]
    seen: set[str] = set()
    for field, values in axes:
        if field == PRESET_AXIS:
            unknown = [v for v in values if v not in presets]
            if unknown:
                raise ValueError(f"preset must be one of {sorted(presets)} for {name}, got {unknown}")
            touched = {key for v in values for key in presets[v]}
        elif field not in fields:
            raise ValueError(f"field {field!r} is not a field of {config_class.__name__}; expected one of {fields}")
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
            raise ValueError(f"seeds: {config_class.__name__} has no seed field")
        if "seed" in seen:
            raise ValueError("seed is swept twice: use either --seeds N or --set seed=...")
        axes.append(("seed", list(range(seeds))))
    base = config_class.quick() if quick else config_class()
    configs, assignments = [], []
    for index, combination in enumerate(itertools.product(*(values for _, values in axes))):
        assignment = {field: value for (field, _), value in zip(axes, combination)}
        overrides: dict[str, Any] = {}
        for field, value in assignment.items():
            overrides.update(presets[value] if field == PRESET_AXIS else {field: value})
        try:
            configs.append(dataclasses.replace(base, **overrides))
        except (ValueError, TypeError) as error:
            raise ValueError(f"point {index} ({describe(assignment)}): {error}") from None
        assignments.append(assignment)
    groups: dict[Any, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(experiment.shape_key(config), []).append(index)
    chunks = []
    for group, members in enumerate(groups.values()):
        for start in range(0, len(members), chunk_size):
            chunks.append(Chunk(f"chunk-g{group:03d}-c{start // chunk_size:05d}", group,
                                tuple(members[start:start + chunk_size])))
    return SweepPlan(name, tuple(configs), tuple(assignments), tuple(groups), tuple(chunks), chunk_size)


def parse_axes(experiment: Experiment, raw: Sequence[tuple[str, str]]) -> list[tuple[str, list]]:
    """Turn the command line's tagged ``("set" | "vector" | "preset", text)`` flags into typed sweep axes.

    Fields keep the order of their first flag. ``--set FIELD=V1,V2`` takes scalar fields (int,
    float, bool, str, optional ones also ``none``); ``--set-vector FIELD=X1,X2,...`` gives one
    value of a tuple-valued field per flag; ``--preset NAME`` one preset per flag. Values are
    parsed as the experiment command's flags are (:func:`simulations.cli.parse_value`).
    """
    config_class = experiment.config
    fields = field_names(config_class)
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
            raise ValueError(f"{flag}: {field!r} is not a field of {config_class.__name__}; expected one of {fields}")
        vector = cli.is_vector(config_class, field)
        if tag == "set":
            if vector:
                raise ValueError(f"--set: {field} is vector-valued; give each value with --set-vector "
                                 f"{field}=X1,X2,... (repeat the flag) or use --preset")
            if field in axes:
                raise ValueError(f"--set: {field} is given twice; list all its values in one --set")
            axes[field] = [cli.parse_value(config_class, field, value) for value in values.split(",")]
        else:
            if not vector:
                raise ValueError(f"--set-vector: {field} is a scalar field; use --set {field}=V1,V2,...")
            axes.setdefault(field, []).append(cli.parse_value(config_class, field, values))
    return list(axes.items())
