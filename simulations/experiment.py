"""The experiment protocol: every experiment is one small named bundle of pure functions.

An :class:`Experiment` is to this library what ``optax.GradientTransformation`` is to optax: a
typed bundle that the command line, the sweep engine and the figures all read the same way.

    Experiment(name, config, run_batch, result, shape_key, predict, report, table, presets, command)

* ``config``: a frozen, keyword-only dataclass with validated fields and a ``quick()`` classmethod.
* ``run_batch(configs, *, place=None) -> result``: every config of one shape key in one compiled
  program; the typed result has a leading point axis on every array leaf. ``place`` (used by the
  sweep engine) is applied to every stacked per-point pytree before it enters the program.
* ``result``: a NamedTuple class (nested NamedTuples allowed) naming every output; the sweep saves
  its numeric leaves under their field paths (``"diagnostics.converged"``), which
  :func:`output_paths` derives from the class, so no output is ever named by a hand-written string.
* ``predict(config)``: the closed-form prediction of the same quantities (where one exists).
* ``report(point, config) -> dict``: the JSON object ``python -m simulations NAME --json`` prints
  (its keys are the stable public interface); ``table(point, config) -> str`` the readable form.
* ``presets``: named sets of vector-valued fields for sweeps (``--preset NAME``).
* ``command``: :class:`Command`, how the generated command line presents the config.

:func:`run` runs one config through ``run_batch`` and returns the per-point result;
:func:`run_split` runs a batch as slices on every core of a CPU at once; the registry
(:mod:`simulations.registry`) lists every experiment.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Command:
    """How the generated command line presents an experiment's config.

    Attributes:
        required: fields that must be given (as a flag or in ``--config FILE``).
        hidden: fields without a flag (set by the command itself, e.g. per-arm fields).
        help: flag help per field (otherwise taken from the config's ``Attributes:`` docstring).
        config_fields: the config class whose fields become flags, when the command runs several
            configs at once (default: the experiment's config).
        build: ``build(fields: dict, quick: bool) -> configs`` turning the parsed fields into what
            ``run_batch`` takes (default: one config, ``config.quick(**fields)`` or ``config(**fields)``).
    """

    required: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()
    help: Mapping[str, str] = dataclasses.field(default_factory=dict)
    config_fields: type | None = None
    build: Callable | None = None


class Experiment(NamedTuple):
    """One experiment: see the module docstring for what each field must do."""

    name: str
    config: type
    run_batch: Callable
    result: type
    shape_key: Callable
    predict: Callable
    report: Callable
    table: Callable
    presets: Mapping[str, Mapping[str, Any]] = {}
    command: Command = Command()
    doc: str = ""


def output_paths(result_class: type, prefix: str = "") -> tuple[str, ...]:
    """Every leaf field path of a (nested) NamedTuple result class, e.g. ``("measured", "diagnostics.loss")``.

    Raises:
        TypeError: if ``result_class`` is not a NamedTuple class.
    """
    if not (isinstance(result_class, type) and issubclass(result_class, tuple) and hasattr(result_class, "_fields")):
        raise TypeError(f"result must be a NamedTuple class, got {result_class!r}")
    hints = typing.get_type_hints(result_class)
    paths: list[str] = []
    for field in result_class._fields:
        kind = hints.get(field)
        if isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields"):
            paths.extend(output_paths(kind, f"{prefix}{field}."))
        else:
            paths.append(f"{prefix}{field}")
    return tuple(paths)


def get_output(result, path: str):
    """The leaf of ``result`` at a path from :func:`output_paths`."""
    value = result
    for name in path.split("."):
        value = getattr(value, name)
    return value


def numeric_outputs(result, paths: Sequence[str]) -> dict[str, np.ndarray]:
    """The numeric leaves at ``paths`` as NumPy arrays (non-numeric leaves, e.g. None, are skipped)."""
    arrays = {}
    for path in paths:
        value = get_output(result, path)
        if value is None:
            continue
        array = np.asarray(value)
        if array.dtype != object and (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            arrays[path] = array
    return arrays


def point(result, index: int):
    """The ``index``-th point of a batched result (every array leaf indexed on its leading axis)."""
    return jax.tree_util.tree_map(lambda leaf: leaf[index], result)


def stack(trees: Sequence):
    """Stack per-point pytrees of one structure along a new leading axis (the batch of a program)."""
    if not trees:
        raise ValueError("trees must hold at least one pytree")
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves) if isinstance(leaves[0], np.ndarray)
                                  else jax.numpy.stack(leaves), *trees)


def per_distinct(function: Callable, configs: Sequence, *, ignore: tuple[str, ...] = ("seed",)) -> list:
    """``[function(config) for config in configs]``, calling ``function`` once per distinct config.

    Configs that differ only in the ``ignore`` fields share one call (the closed-form predictions
    do not depend on the seed): a batch of seeds of one configuration computes its theory once.
    ``function`` must not read the ignored fields. Configs with a field that cannot be hashed are
    each called on their own.
    """
    names = [field.name for field in dataclasses.fields(configs[0]) if field.name not in ignore] if configs else []
    done: dict = {}
    out = []
    for config in configs:
        key = (type(config), *(getattr(config, name) for name in names))
        try:
            hash(key)
        except TypeError:  # an unhashable field value
            out.append(function(config))
            continue
        if key not in done:
            done[key] = function(config)
        out.append(done[key])
    return out


def check_one_shape(experiment: Experiment, configs: Sequence) -> None:
    """Raise ValueError unless ``configs`` is non-empty and shares one shape key."""
    if not configs:
        raise ValueError(f"configs must hold at least one {experiment.config.__name__}")
    keys = {experiment.shape_key(config) for config in configs}
    if len(keys) != 1:
        raise ValueError(f"configs must share one shape_key to run as one batch, got {sorted(map(repr, keys))}")


def run(experiment: Experiment, config, **kwargs):
    """Run one config: ``run_batch([config])`` and the single point of its result."""
    if not isinstance(config, experiment.config):
        raise ValueError(f"config must be a {experiment.config.__name__}, got {type(config).__name__}")
    return point(experiment.run_batch([config], **kwargs), 0)


def split_batch(run_batch: Callable, configs: Sequence, devices: Sequence, *, first_alone: bool = False):
    """``run_batch`` on equal consecutive slices of ``configs`` (a multiple of ``len(devices)``), slice
    i placed on ``devices[i]`` (a device may repeat) and run in its own thread; the results
    concatenated in order.

    ``first_alone`` runs the first slice before the others start (on GPUs, whose persistent-cache
    keys ignore the device, the other devices then load its compiled program instead of compiling).
    """
    size = len(configs) // len(devices)
    if size * len(devices) != len(configs):
        raise ValueError(f"configs ({len(configs)}) must split evenly over {len(devices)} devices")
    from simulations.runtime import thread_map

    def run_slice(index):
        return run_batch(list(configs[index * size:(index + 1) * size]),
                         place=lambda tree, device=devices[index]: jax.device_put(tree, device))

    first = [run_slice(0)] if first_alone else []
    rest = thread_map(run_slice, range(len(first), len(devices)), len(devices))
    return jax.tree_util.tree_map(lambda *leaves: np.concatenate([np.asarray(leaf) for leaf in leaves]),
                                  *(first + rest))


def run_split(experiment: Experiment, configs: Sequence, *, workers: int | None = None):
    """``experiment.run_batch(configs)`` as equal slices run at the same time, one per core.

    On a CPU, XLA runs programs called from several threads at once, so the slices use every core
    (``workers``, default :func:`simulations.runtime.worker_threads`) with one compiled program.
    The batch is padded to a multiple of the slice count by repeating its last config; the padding
    is dropped from the result. Each point's numbers are those of ``run_batch`` (every
    experiment's points are independent of the rest of their batch). On an accelerator, or with
    one worker, it is ``run_batch``.
    """
    from simulations.runtime import worker_threads

    configs = list(configs)
    check_one_shape(experiment, configs)
    workers = min(len(configs), workers or worker_threads())
    if workers <= 1 or jax.default_backend() != "cpu":
        return experiment.run_batch(configs)
    size = math.ceil(len(configs) / workers)
    padded = configs + [configs[-1]] * (size * workers - len(configs))
    # Every slice on the default device: one thread each, one compiled program for all of them.
    result = split_batch(experiment.run_batch, padded, [jax.local_devices()[0]] * workers)
    return jax.tree_util.tree_map(lambda leaf: leaf[:len(configs)], result)


def validate(experiment: Experiment) -> Experiment:
    """Check an experiment's declared names at import: config fields named by its command and presets exist.

    Raises:
        TypeError: a malformed config or result class.
        ValueError: a field named by ``command`` or ``presets`` that the config does not have.
    """
    if not dataclasses.is_dataclass(experiment.config) or not hasattr(experiment.config, "quick"):
        raise TypeError(f"{experiment.name}: config must be a dataclass with quick(), got {experiment.config!r}")
    output_paths(experiment.result)
    fields = {field.name for field in dataclasses.fields(experiment.command.config_fields or experiment.config)}
    named = set(experiment.command.required) | set(experiment.command.hidden) | set(experiment.command.help)
    named |= {key for preset in experiment.presets.values() for key in preset}
    unknown = sorted(named - fields)
    if unknown:
        raise ValueError(f"{experiment.name}: command or presets name fields the config lacks: {unknown}")
    return experiment
