"""Training on sampled pairs: minibatch gradient descent on fresh (or fixed) samples.

Gradient flow on the exact population loss lives in :mod:`simulations.flow`. Losses that only
exist as sample estimates (the minibatch spectral estimator, InfoNCE, any loss of a non-linear
network) are trained here by gradient descent with fresh minibatches each step: one jitted
``lax.scan`` whose time axis is learning_rate x step, so it shares the axis of the flow and of the
closed-form trajectories. With ``fixed_samples`` the same batch is reused every step, which makes
the objective deterministic (and then :func:`simulations.flow.gradient_flow` applies too).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from theory.checks import check_float, check_int


class SampledTraining(NamedTuple):
    """Outcome of :func:`train_on_samples`.

    Attributes:
        params: final parameters.
        times: (R,) recording times (learning_rate x step).
        trajectory: parameters at ``times`` (leaves with a leading R axis).
        losses: (R,) minibatch loss at the recorded steps.
    """

    params: object
    times: jax.Array
    trajectory: object
    losses: jax.Array


def train_on_samples(loss_fn: Callable, params0, sample_pairs: Callable, key: jax.Array, *,
                     learning_rate: float, steps: int, batch_size: int, record_every: int = 100,
                     fixed_samples: bool = False, weight_decay: float = 0.0) -> SampledTraining:
    """Minibatch gradient descent on ``loss_fn(params, x, x_pos)`` with pairs from ``sample_pairs``.

    Args:
        loss_fn: loss of a batch, e.g. ``lambda p, x, xp: spectral_loss(f(p, x), f(p, xp))``.
        params0: initial parameter pytree.
        sample_pairs: ``sample_pairs(key, n) -> (x, x_pos)`` each (n, d), e.g.
            ``AugmentedPairs.sample_pairs``.
        key: PRNG key; step k uses ``fold_in(key, k)`` (or ``fold_in(key, 0)`` if fixed_samples).
        learning_rate: step size; time = learning_rate x step.
        steps: number of gradient steps (a multiple of ``record_every``).
        batch_size: pairs per step (>= 2 for the unbiased negative term).
        record_every: record parameters and loss every this many steps.
        fixed_samples: reuse one batch every step (deterministic objective).
        weight_decay: decoupled penalty (weight_decay / 2) ||params||^2 added to the loss.

    Raises:
        FloatingPointError: if the loss becomes non-finite, naming the step and a remedy.
    """
    learning_rate = check_float("learning_rate", learning_rate, minimum=0.0, strict_minimum=True)
    steps = check_int("steps", steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=2)
    record_every = check_int("record_every", record_every, minimum=1)
    if steps % record_every:
        raise ValueError(f"steps must be a multiple of record_every={record_every}, got {steps}")
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    result = _train(loss_fn, sample_pairs, params0, key, jnp.asarray(learning_rate), jnp.asarray(weight_decay),
                    steps // record_every, record_every, batch_size, fixed_samples)
    losses = result.losses
    finite = jnp.isfinite(losses)
    if not bool(jnp.all(finite)):
        first = int(jnp.argmin(finite)) * record_every + record_every
        raise FloatingPointError(
            f"training diverged: non-finite loss by step {first} (time {first * learning_rate:.6g}). "
            f"Remedy: lower learning_rate (now {learning_rate}) or init_scale, or add weight_decay."
        )
    return result


def _penalized(loss_fn, params, x, x_pos, weight_decay):
    squares = sum(jnp.sum(leaf * leaf) for leaf in jax.tree_util.tree_leaves(params))
    return loss_fn(params, x, x_pos) + 0.5 * weight_decay * squares


def _train_impl(loss_fn, sample_pairs, params0, key, learning_rate, weight_decay, records, record_every,
                batch_size, fixed_samples):
    optimizer = optax.sgd(learning_rate)
    value_and_grad = jax.value_and_grad(lambda p, x, xp: _penalized(loss_fn, p, x, xp, weight_decay))

    def step(carry, index):
        params, state = carry
        batch_key = jax.random.fold_in(key, 0 if fixed_samples else index)
        x, x_pos = sample_pairs(batch_key, batch_size)
        loss, grads = value_and_grad(params, x, x_pos)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    def record(carry, block):
        indices = block * record_every + jnp.arange(record_every)
        carry, losses = jax.lax.scan(step, carry, indices)
        return carry, (carry[0], losses[-1])

    carry = (params0, optimizer.init(params0))
    (params, _), (trajectory, losses) = jax.lax.scan(record, carry, jnp.arange(records))
    times = learning_rate * record_every * (jnp.arange(records) + 1)
    return SampledTraining(params=params, times=times, trajectory=trajectory, losses=losses)


_train = jax.jit(_train_impl, static_argnums=(0, 1, 6, 7, 8, 9))
