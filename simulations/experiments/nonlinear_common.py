"""Building blocks of the non-linear experiment shared with the head comparison and the figures.

Both networks' representations, the sampled contrastive loss, the per-layer probes, and descent
on the diagonal ReLU net's exact population loss (the deterministic twin of the sampled training).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simulations import data, draws
from simulations.losses import info_nce_loss, spectral_loss
from simulations.models import relu
from simulations.probe import normalized_ridge_probe
from simulations.train import check_steps, descend, record_times
from theory import relu_diagonal
from theory.checks import check_float

ATTRIBUTES = ("value", "magnitude")
LAYERS = ("pre", "post")
NETS = ("relu", "linear")

#: Probe penalty on the variance-normalized representation (as in the downstream experiment): a
#: feature holding a share q of the layer's variance is decoded with R^2 ~ 1 - (0.1 / (q + 0.1))^2,
#: so a learned feature (q ~ 0.3) gives ~0.94 and an init-scale remnant (q ~ 1e-4) ~ 0.002.
DEFAULT_RIDGE = 0.1
#: Probe training / fresh test inputs. The R^2 of a dead target on n_test fresh samples has
#: standard deviation ~ sqrt(2 / n_test) ~ 0.014 (and a bias of -k / n_train from fitting noise).
DEFAULT_N_TRAIN = 10_000
DEFAULT_N_TEST = 10_000

# Named key streams under the root key PRNGKey(seed).
INIT_STREAM, TRAIN_STREAM, PROBE_TRAIN_STREAM, PROBE_TEST_STREAM = 0, 1, 2, 3



class NonlinearParams(NamedTuple):
    """Both trained networks: the ReLU net (DiagonalReLUParams or ReLUParams) and the linear net."""

    relu: relu.DiagonalReLUParams
    linear: relu.ReLUParams


def linear_apply(params, x):
    h = x @ params.encoder.T
    return h, h @ params.head.T


APPLY = {"relu": relu.apply_relu, "linear": linear_apply}


def pair_loss(kind: str, temperature=None):
    """The sampled contrastive loss of representations (z, z_pos): spectral or InfoNCE."""
    return spectral_loss if kind == "spectral" else functools.partial(info_nce_loss, temperature=temperature)


def probe_all(params, key, stds, strengths, ridge, *, kinds, n_train, n_test):
    """R^2 (nets, layers, attributes, d) of the normalized ridge probe on fresh test inputs."""
    x_train = data.sample_product(draws.fold_in(key, PROBE_TRAIN_STREAM), stds, strengths,
                                  n=n_train, kinds=kinds)[0]
    x_test = data.sample_product(draws.fold_in(key, PROBE_TEST_STREAM), stds, strengths,
                                 n=n_test, kinds=kinds)[0]
    # Targets (attributes, d): one vmapped probe per representation keeps the compiled program small.
    targets_train = jnp.stack([x_train.T, jnp.abs(x_train).T])
    targets_test = jnp.stack([x_test.T, jnp.abs(x_test).T])
    out = []
    for net, p in zip(NETS, params):
        per_layer = []
        for r_train, r_test in zip(APPLY[net](p, x_train), APPLY[net](p, x_test)):
            probe = jax.vmap(jax.vmap(lambda y_train, y_test, r_train=r_train, r_test=r_test: normalized_ridge_probe(
                r_train, y_train, r_test, y_test, ridge).r2))
            per_layer.append(probe(targets_train, targets_test))
        out.append(jnp.stack(per_layer))
    return jnp.stack(out)


def population_descent(params0, laws: relu_diagonal.FeatureLaws, *, learning_rate: float, steps: int,
                       record_every: int = 100, weight_decay: float = 0.0):
    """Gradient descent on the exact population loss of a diagonal net (simulations.train, jitted).

    The deterministic twin of the sampled training (same step, same time axis): with a small
    step it follows gradient flow, whose end point theory.relu_diagonal.fixed_point predicts.

    Returns:
        (params, trajectory (leaves with a leading steps // record_every axis), times).
    """
    learning_rate = check_float("learning_rate", learning_rate, minimum=0.0, strict_minimum=True)
    steps, record_every = check_steps(steps, record_every)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    out = _population_descent(params0, jnp.asarray(laws.stds), jnp.asarray(laws.strengths), learning_rate,
                              weight_decay, kinds=laws.kinds, steps=steps, record_every=record_every)
    return out.params, out.trajectory, record_times(learning_rate, steps, record_every)


@functools.partial(jax.jit, static_argnames=("kinds", "steps", "record_every"))
def _population_descent(params0, stds, strengths, learning_rate, weight_decay, *, kinds, steps, record_every):
    laws = relu_diagonal.FeatureLaws(kinds=kinds, stds=stds, strengths=strengths)
    return descend(lambda p: relu_diagonal.population_loss(p, laws, weight_decay), params0, steps=steps,
                   record_every=record_every, learning_rate=learning_rate)


def as_array(values) -> np.ndarray:
    return np.asarray([[values[layer][a] for a in ATTRIBUTES] for layer in LAYERS])


class NonlinearDiagnostics(NamedTuple):
    """Did training settle? Minibatch losses at the last step (the last record).

    Attributes:
        final_loss: the trained objective: both nets' losses plus the weight-decay penalty.
        final_loss_by_net: (nets,) each net's loss without the penalty, in NETS order.
        steps: gradient steps. time: learning_rate x steps.
    """

    final_loss: np.ndarray
    final_loss_by_net: np.ndarray
    steps: np.ndarray
    time: np.ndarray


class NonlinearResult(NamedTuple):
    """Every output of :data:`EXPERIMENT` (a leading point axis P on every leaf when batched).

    Attributes:
        r2: (nets (relu, linear), layers (pre, post), attributes (value, magnitude), d) R^2 of
            the normalized ridge probe on fresh test data.
        predicted_r2: (layers, attributes, d) closed form at the diagonal net's fixed point (no
            weight decay, population probe); NaN without one (full net, or group > 2).
        population_r2: the same population probe applied to the trained ReLU net (NaN likewise).
        times: (R,) learning_rate x step at the records. losses: (R,) the objective at the records.
        losses_by_net: (R, nets) each net's loss at the records.
        trajectory, head_trajectory: the ReLU net's encoder and head at the records.
        params: final :class:`NonlinearParams`. diagnostics: :class:`NonlinearDiagnostics`.
    """

    r2: np.ndarray
    predicted_r2: np.ndarray
    population_r2: np.ndarray
    times: np.ndarray
    losses: np.ndarray
    losses_by_net: np.ndarray
    trajectory: np.ndarray
    head_trajectory: np.ndarray
    params: NonlinearParams
    diagnostics: NonlinearDiagnostics


def initialize(config) -> NonlinearParams:
    """Both nets at init; the linear net uses the full ReLU net's init law."""
    key = draws.stream_key(config.seed, INIT_STREAM)
    key_relu, key_linear = draws.split(key)
    if config.network == "diagonal":
        relu_params = relu.init_diagonal_relu_paired(key_relu, config.dim, config.group, config.head_width,
                                                     init_scale=config.init_scale)
    else:
        relu_params = relu.init_relu(key_relu, config.dim, config.hidden_width, config.head_width,
                                     init_scale=config.init_scale)
    linear_params = relu.init_relu(key_linear, config.dim, config.hidden_width, config.head_width,
                                   init_scale=config.init_scale)
    return NonlinearParams(relu_params, linear_params)


def predict(config) -> np.ndarray:
    """Closed-form R^2 (layers, attributes, d) of the diagonal ReLU net at its predicted fixed point
    (no weight decay, population probe; theory.relu_diagonal); NaN without a closed form."""
    if config.network != "diagonal" or config.group > 2:
        return np.full((len(LAYERS), len(ATTRIBUTES), config.dim), np.nan)
    signs = np.where(np.arange(config.group) % 2 == 0, 1.0, -1.0)[None, :].repeat(config.dim, 0)
    return as_array(relu_diagonal.predicted_decodability(config.laws(), signs, config.head_width, ridge=config.ridge))


def theory_r2(config, relu_params) -> tuple[np.ndarray, np.ndarray]:
    """(predicted R^2, population-probe R^2 of the trained ReLU net)."""
    predicted = predict(config)
    if np.isnan(predicted).all():
        return predicted, predicted
    return predicted, as_array(relu_diagonal.decodability(relu_params, config.laws(), ridge=config.ridge))
