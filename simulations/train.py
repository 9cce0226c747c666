"""The one descent trainer: a ``lax.scan`` over steps with an optax optimizer.

Gradient flow on an exact loss lives in :mod:`simulations.flow`; everything trained by discrete
steps goes through :func:`descend` (pure: call it inside ``jit`` and ``vmap``) or its checked
public form :func:`train`. The loop is optax's own training loop::

    loss, grads = value_and_grad(objective)(params, batch(step))
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)

with the default optimizer ``optax.sgd(learning_rate)`` (p <- p + (-learning_rate) g, which is
bit-for-bit p - learning_rate g). The objective is a population loss ``objective(params)`` or,
with ``batch``, a minibatch loss ``objective(params, batch(step))`` on a fresh batch per step
(``batch`` receives the global step index, so a caller folds it into its own key). Weight decay
is :func:`simulations.losses.weight_decay_penalty` added to the objective (on ``decayed(params)``
when only part of the parameters is decayed). Every ``record_every`` steps the parameters and the
last (or mean) objective value of the block are recorded: time = learning_rate x step, the axis
shared with the flow and the closed-form trajectories.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simulations.flow import FlowDivergenceError
from simulations.losses import weight_decay_penalty
from theory.checks import check_choice, check_float, check_int

#: How a block's objective values are recorded: the last step's value or the block mean.
RECORDS = ("last", "mean")


class TrainingDivergenceError(FlowDivergenceError, FloatingPointError):
    """Descent produced a non-finite loss (the message names the step and a remedy)."""


class Descent(NamedTuple):
    """Outcome of :func:`descend`.

    Attributes:
        params: final parameters.
        trajectory: parameters after every block (leaves with a leading R = steps / record_every
            axis), or None when ``record_params=False``.
        losses: (R,) objective (penalty included) of each block: its last or mean value.
        aux: the objective's auxiliary output recorded like ``losses`` (None without ``has_aux``).
    """

    params: Any
    trajectory: Any
    losses: jax.Array
    aux: Any


def descend(objective: Callable, params0, *, steps: int, record_every: int | None = None,
            learning_rate=None, optimizer: optax.GradientTransformation | None = None,
            batch: Callable | None = None, weight_decay=None, decayed: Callable | None = None,
            record: str = "last", record_params: bool = True, has_aux: bool = False) -> Descent:
    """Gradient descent as one ``lax.scan`` (pure, unvalidated: for use inside jit and vmap).

    Args:
        objective: ``objective(params)`` (population loss) or ``objective(params, batch(step))``;
            with ``has_aux`` it returns ``(value, aux)``.
        params0: initial parameter pytree.
        steps: number of steps (a Python int, a multiple of ``record_every``).
        record_every: steps per recorded block (default: ``steps``, one record at the end).
        learning_rate: step size (may be traced) of the default ``optax.sgd``.
        optimizer: any optax GradientTransformation instead of ``optax.sgd(learning_rate)``.
        batch: ``batch(step) -> data`` for a fresh minibatch each step (``step`` is the global
            step index); None for a population objective.
        weight_decay: adds ``losses.weight_decay_penalty(decayed(params), weight_decay)``; None: none.
        decayed: the part of the parameters that is decayed (default: all of them).
        record: "last" or "mean" objective value of each block.
        record_params: record the parameters after every block.
        has_aux: the objective returns ``(value, aux)``.

    Returns:
        :class:`Descent`.
    """
    record_every = steps if record_every is None else record_every
    if optimizer is None:
        optimizer = optax.sgd(learning_rate)
    decayed = decayed or (lambda params: params)

    def total(params, index):
        out = objective(params) if batch is None else objective(params, batch(index))
        value, aux = out if has_aux else (out, None)
        if weight_decay is not None:
            value = value + weight_decay_penalty(decayed(params), weight_decay)
        return value, aux

    value_and_grad = jax.value_and_grad(total, has_aux=True)
    reduce = (lambda values: values[-1]) if record == "last" else (lambda values: jnp.mean(values, axis=0))

    def step(carry, index):
        params, state = carry
        (value, aux), grads = value_and_grad(params, index)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), (value, aux)

    def block(carry, block_index):
        carry, (values, aux) = jax.lax.scan(step, carry, block_index * record_every + jnp.arange(record_every))
        return carry, (carry[0] if record_params else None, reduce(values),
                       None if aux is None else jax.tree_util.tree_map(reduce, aux))

    carry = (params0, optimizer.init(params0))
    (params, _), (trajectory, losses, aux) = jax.lax.scan(block, carry, jnp.arange(steps // record_every))
    return Descent(params=params, trajectory=trajectory, losses=losses, aux=aux)


def record_times(learning_rate: float, steps: int, record_every: int) -> np.ndarray:
    """(R,) times learning_rate x step of the records of :func:`descend`."""
    return learning_rate * record_every * (np.arange(steps // record_every) + 1)


def check_steps(steps, record_every) -> tuple[int, int]:
    """Validated (steps, record_every): positive integers, steps a multiple of record_every."""
    steps, record_every = check_int("steps", steps, minimum=1), check_int("record_every", record_every, minimum=1)
    if steps % record_every:
        raise ValueError(f"steps must be a multiple of record_every={record_every}, got {steps}")
    return steps, record_every


def check_finite(losses, *, record_every: int, learning_rate: float | None = None, what: str = "training",
                 remedy: str = "") -> None:
    """Raise :class:`TrainingDivergenceError` if a recorded loss is non-finite.

    Args:
        losses: (R,) recorded losses of one run.
        record_every: steps per record (the message names the first bad record's step).
        learning_rate: for the time and the remedy.
        what: the run's name in the message (e.g. "nonlinear training (seed 3)").
        remedy: extra remedy text (e.g. the init scale to lower).
    """
    finite = np.isfinite(np.asarray(losses))
    if finite.all():
        return
    step = (int(np.argmin(finite)) + 1) * record_every
    time = f" (time {step * learning_rate:.4g})" if learning_rate is not None else ""
    rate = f"lower learning_rate (now {learning_rate})" if learning_rate is not None else "lower the step size"
    raise TrainingDivergenceError(f"{what} diverged: non-finite loss by step {step}{time}. "
                                  f"Remedy: {rate}{', ' + remedy if remedy else ''} or add weight_decay.")


def train(objective: Callable, params0, *, steps: int, record_every: int = 100, learning_rate: float | None = None,
          optimizer: optax.GradientTransformation | None = None, batch: Callable | None = None,
          weight_decay: float | None = None, decayed: Callable | None = None, record: str = "last",
          record_params: bool = True, has_aux: bool = False) -> Descent:
    """:func:`descend`, validated, jitted and checked for divergence (the public entry point).

    Example (fresh minibatches of augmented pairs, sampled spectral loss)::

        pairs = data.preset_pairs("correlated", 3, strength=0.5)
        out = train(lambda p, xy: losses.spectral_loss(*(models.apply_linear(p, v)[-1] for v in xy)),
                    params0, steps=1000, learning_rate=0.01,
                    batch=lambda step: pairs.sample_pairs(draws.fold_in(key, step), 256))

    Raises:
        ValueError: a bad argument (named).
        TrainingDivergenceError: the loss became non-finite (names the step and a remedy).
    """
    steps, record_every = check_steps(steps, record_every)
    if optimizer is None:
        learning_rate = check_float("learning_rate", learning_rate, minimum=0.0, strict_minimum=True)
    if weight_decay is not None:
        weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    check_choice("record", record, RECORDS)
    run = jax.jit(lambda p: descend(objective, p, steps=steps, record_every=record_every, learning_rate=learning_rate,
                                    optimizer=optimizer, batch=batch, weight_decay=weight_decay, decayed=decayed,
                                    record=record, record_params=record_params, has_aux=has_aux))
    result = run(params0)
    check_finite(result.losses, record_every=record_every, learning_rate=learning_rate,
                 remedy="the init scale")
    return result
