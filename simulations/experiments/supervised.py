"""Supervised contrastive and supervised learning: class collapse above the head, subclasses below it.

Run:  python -m simulations supervised [--quick] [--seed S] --json
Expected runtime: --quick ~25 s of CPU time from a cold compile cache (two compiled programs:
coarse_to_fine with both losses in one batch, and shift), a few seconds once cached; the default
(3,000 steps) about twice the training time. Wall time is longer on shared cores.

Two tasks, each training a two-layer ReLU network h = relu(W x), z = V h (head) by minibatch
gradient descent on fresh samples (one jitted lax.scan; time = learning_rate x step):

* ``coarse_to_fine``: coarse classes that are unions of two subclasses at +-mu e_c
  (simulations.data.mixtures.coarse_to_fine). The network is trained on the coarse label with
  the supervised spectral contrastive loss (or SupCon/InfoNCE) on z, or with cross-entropy
  (or squared loss) through a linear classifier on z. The fine label (subclass, coded +1/-1
  within its coarse class) is then probed at the input, below the head (h, "pre") and above it
  (z, "post": the head's output, not the logits) with the library's normalized ridge probe
  (simulations.probe), R^2 on fresh test data.
* ``shift``: a binary label with a non-linear core feature and a linear spurious feature that
  agrees with the label with probability ``agreement`` in training
  (simulations.data.mixtures.spurious). The last layer is retrained on group-balanced data
  (a normalized ridge probe per class on one-hot targets, prediction = argmax) at every layer,
  and worst-group and average accuracy are measured on fresh group-balanced test data.

Why the init scale matters: the head's untrained directions keep an init-scale copy of h. The
spectral loss removes it (its negative term shrinks every direction of z that does not help), but
cross-entropy only trains the directions its classifier reads, so with cross-entropy the collapse
seen by the probe needs a small init (default 0.05) or weight decay (see the README section).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simulations import models, serial_linalg
from simulations.models import relu
from simulations.data import mixtures as sdata
from simulations import losses as slosses
from simulations.flow import FlowDivergenceError
from simulations.probe import normalize_representation, ridge_probe
from theory import supervised as supervised_theory
from theory.checks import check_choice, check_float, check_int

TASKS = ("coarse_to_fine", "shift")
LOSSES = ("spectral", "infonce", "cross_entropy", "squared")
CONTRASTIVE = ("spectral", "infonce")
NETWORKS = ("relu", "linear")
#: Probed layers: the raw input, below the head (h) and above it (z, the head's output).
LAYERS = ("input", "pre", "post")
#: Steps between two recorded minibatch losses (steps must be a multiple).
RECORD_EVERY = 50
#: Default noise std per task (the shift task's core feature must be imperfect for the spurious
#: one to matter: at 0.3 the core alone classifies ~90% of the minority groups).
DEFAULT_NOISE = {"coarse_to_fine": 0.2, "shift": 0.3}

# Named key streams (jax.random.fold_in of the root key).
_INIT_STREAM, _TRAIN_STREAM, _PROBE_TRAIN_STREAM, _PROBE_TEST_STREAM = 0, 1, 2, 3

# Traced per-point hyperparameters (changing them never recompiles).
_TRACED = ("separation", "spurious_strength", "agreement", "noise_std", "class_offset", "augment_std",
           "init_scale", "classifier_init_scale", "weight_decay", "learning_rate", "temperature", "ridge")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SupervisedConfig:
    """One supervised run: a task, a loss and a network, trained and probed.

    Attributes:
        task: "coarse_to_fine" or "shift".
        loss: "spectral" (supervised spectral contrastive on z), "infonce" (SupCon on z),
            "cross_entropy" or "squared" (through a linear classifier on z).
        network: "relu" (h = relu(W x)) or "linear" (h = W x).
        dim: input dimension d (>= num_classes, >= 2 num_classes with class_offset; >= 2 for shift).
        num_classes: coarse classes C >= 2 (coarse_to_fine; shift is binary).
        separation: mu > 0, subclass distance from the origin (the core strength for shift).
        spurious_strength: the spurious feature's mean magnitude (shift).
        agreement: P(spurious attribute = label) in training, in [0, 1] (shift).
        noise_std: isotropic input noise; None means DEFAULT_NOISE[task].
        class_offset: nu >= 0, linear class signal nu e_(C + c) (coarse_to_fine).
        augment_std: additive Gaussian augmentation of every training view.
        width: ReLU channels m. head_dim: head outputs k.
        init_scale: eps, fan-in-scaled Gaussian init of W and V (entries N(0, eps^2 / fan_in)).
        classifier_init_scale: entries of the classifier U are N(0, scale^2 / k).
        weight_decay: (wd / 2) (||W||^2 + ||V||^2) (the classifier is not decayed).
        learning_rate, steps, batch_size: gradient descent on fresh minibatches.
        temperature: SupCon temperature.
        ridge: probe penalty on the variance-normalized representation.
        n_probe: probe / last-layer-retraining samples. n_test: fresh test samples.
        seed: root seed (init, training batches, probe data).
    """

    task: str = "coarse_to_fine"
    loss: str = "spectral"
    network: str = "relu"
    dim: int = 6
    num_classes: int = 2
    separation: float = 1.0
    spurious_strength: float = 1.0
    agreement: float = 0.95
    noise_std: float | None = None
    class_offset: float = 0.0
    augment_std: float = 0.0
    width: int = 32
    head_dim: int = 8
    init_scale: float = 0.05
    classifier_init_scale: float = 1.0
    weight_decay: float = 0.0
    learning_rate: float = 0.3
    steps: int = 3000
    batch_size: int = 256
    temperature: float = 0.5
    ridge: float = 0.01
    n_probe: int = 4000
    n_test: int = 10000
    seed: int = 0

    def __post_init__(self):
        check_choice("task", self.task, TASKS)
        check_choice("loss", self.loss, LOSSES)
        check_choice("network", self.network, NETWORKS)
        C = check_int("num_classes", self.num_classes, minimum=2)
        if self.task == "shift" and C != 2:
            raise ValueError(f"num_classes must be 2 for task 'shift' (binary label), got {C}")
        minimum_dim = 2 if self.task == "shift" else (2 * C if self.class_offset > 0 else C)
        check_int("dim", self.dim, minimum=minimum_dim)
        noise = DEFAULT_NOISE[self.task] if self.noise_std is None else self.noise_std
        object.__setattr__(self, "noise_std", check_float("noise_std", noise, minimum=0.0))
        for name in ("separation", "init_scale", "classifier_init_scale", "learning_rate", "temperature"):
            object.__setattr__(self, name, check_float(name, getattr(self, name), minimum=0.0, strict_minimum=True))
        for name in ("spurious_strength", "class_offset", "augment_std", "weight_decay", "ridge"):
            object.__setattr__(self, name, check_float(name, getattr(self, name), minimum=0.0))
        object.__setattr__(self, "agreement", check_float("agreement", self.agreement, minimum=0.0, maximum=1.0))
        check_int("width", self.width, minimum=1)
        check_int("head_dim", self.head_dim, minimum=1)
        check_int("steps", self.steps, minimum=RECORD_EVERY)
        if self.steps % RECORD_EVERY:
            raise ValueError(f"steps must be a multiple of {RECORD_EVERY}, got {self.steps}")
        check_int("batch_size", self.batch_size, minimum=4 * C)
        check_int("n_probe", self.n_probe, minimum=10)
        check_int("n_test", self.n_test, minimum=10)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @classmethod
    def quick(cls, **overrides) -> "SupervisedConfig":
        """A seconds-long configuration (fewer steps and probe samples; the same conclusions)."""
        return cls(**{"steps": 2000, "n_probe": 2000, "n_test": 4000, **overrides})


#: The config class (the sweep engine builds CONFIG() and CONFIG.quick()); its defaults are the base point.
CONFIG = SupervisedConfig

#: Numeric result entries of fixed shape per shape_key, saved by the sweep engine.
SWEEP_OUTPUTS = (
    "input.fine_r2", "pre.fine_r2", "post.fine_r2",
    "pre.fine_accuracy", "post.fine_accuracy",
    "input.worst_group", "pre.worst_group", "post.worst_group",
    "pre.average", "post.average",
    "diagnostics.final_loss", "weights.head_top_share", "weights.post_spurious_ratio",
    "weights.pre_spurious_ratio",
)


def shape_key(config: SupervisedConfig) -> tuple:
    """Fields that change array shapes or the compiled program (equal keys can share a batch).

    The network kind and the choice among the spectral, cross-entropy and squared losses are
    traced (all three are evaluated and the chosen one kept; the ReLU is selected against the
    identity), so such runs share a batch. SupCon/InfoNCE (O(n^2) exponentials per step) gets its
    own program.
    """
    return (config.task, config.loss == "infonce", config.dim, config.num_classes, config.width, config.head_dim,
            config.steps, config.batch_size, config.n_probe, config.n_test)


# ----------------------------------------------------------------------------------------------
# Data, model and loss (traced hyperparameters)
# ----------------------------------------------------------------------------------------------


def _templates(task: str, dim: int, num_classes: int):
    """Unit-strength mixtures whose means are linear in the traced strengths."""
    if task == "coarse_to_fine":
        base = sdata.coarse_to_fine(dim=dim, num_classes=num_classes, separation=1.0, noise_std=0.0)
        offset = np.zeros_like(base.means)
        if dim >= 2 * num_classes:
            offset = np.asarray(sdata.coarse_to_fine(dim=dim, num_classes=num_classes, separation=1.0, noise_std=0.0,
                                                     class_offset=1.0).means) - np.asarray(base.means)
        return base, (np.asarray(base.means), offset)
    base = sdata.spurious(dim=dim, core=1.0, spurious_strength=1.0, noise_std=0.0, agreement=0.5)
    means = np.asarray(base.means)
    core, spurious_part = means.copy(), means.copy()
    core[:, 1:] = 0.0
    spurious_part[:, :1] = 0.0
    spurious_part[:, 2:] = 0.0
    return base, (core, spurious_part)


def _mixtures(task, dim, num_classes, hp):
    """(training mixture, group-balanced evaluation mixture) for traced hyperparameters ``hp``."""
    base, (first, second) = _templates(task, dim, num_classes)
    noise = hp["noise_std"] * jnp.ones(dim)
    if task == "coarse_to_fine":
        means = hp["separation"] * first + hp["class_offset"] * second
        mixture = base._replace(means=means, noise_std=noise, weights=jnp.asarray(base.weights))
        return mixture, mixture
    means = hp["separation"] * first + hp["spurious_strength"] * second
    balanced = base._replace(means=means, noise_std=noise, weights=jnp.asarray(base.weights))
    return sdata.with_agreement(balanced, hp["agreement"]), balanced


def _init(key, config, init_scale, classifier_init_scale):
    net = relu.init_relu(jax.random.fold_in(key, 0), config.dim, config.width, config.head_dim, init_scale=1.0)
    net = jax.tree_util.tree_map(lambda leaf: init_scale * leaf, net)
    classifier = (classifier_init_scale / np.sqrt(config.head_dim)
                  * jax.random.normal(jax.random.fold_in(key, 1), (config.num_classes, config.head_dim)),
                  jnp.zeros(config.num_classes))
    return net, classifier


def apply_network(net: relu.ReLUParams, x: jax.Array, network="relu") -> tuple[jax.Array, jax.Array]:
    """(h, z) of a ReLU ("relu", as simulations.models.relu.apply_relu) or linear ("linear": h = W x) network.

    ``network`` may also be a traced flag (1.0 = linear, 0.0 = ReLU), which is how batches mix them.
    """
    if isinstance(network, str):
        check_choice("network", network, NETWORKS)
        if network == "relu":
            return relu.apply_relu(net, x)
        network = 1.0
    pre = relu.encoder_preactivation(net, x)
    h = jnp.where(network > 0.5, pre, jax.nn.relu(pre))
    return h, h @ net.head.T


def _objective(config, params, samples, hp, class_weights):
    net, classifier = params
    _, z = apply_network(net, samples.x, hp["linear"])
    if config.loss == "infonce":  # static: see shape_key
        value = slosses.supcon_loss(z, samples.coarse, hp["temperature"])
    else:
        values = jnp.stack([slosses.supervised_spectral_loss(z, samples.coarse, class_weights),
                            jnp.zeros((), z.dtype),
                            slosses.cross_entropy_loss(classifier, z, samples.coarse),
                            slosses.squared_loss(classifier, z, samples.coarse)])
        value = jnp.sum(jax.nn.one_hot(hp["loss_index"], len(LOSSES), dtype=values.dtype) * values)
    squares = sum(jnp.sum(leaf * leaf) for leaf in jax.tree_util.tree_leaves(net))
    return value + 0.5 * hp["weight_decay"] * squares


def _train(config, params, mixture, key, hp):
    """Gradient descent on fresh minibatches: one lax.scan. Returns (params, recorded losses)."""
    class_weights = sdata_class_weights(mixture, config.num_classes)
    grad = jax.value_and_grad(lambda p, s: _objective(config, p, s, hp, class_weights))

    def step(params, index):
        batch = sdata.sample(mixture, jax.random.fold_in(key, index), config.batch_size, augment_std=hp["augment_std"])
        value, grads = grad(params, batch)
        return jax.tree_util.tree_map(lambda p, g: p - hp["learning_rate"] * g, params, grads), value

    def record(params, block):
        params, values = jax.lax.scan(step, params, block * RECORD_EVERY + jnp.arange(RECORD_EVERY))
        return params, jnp.mean(values)

    return jax.lax.scan(record, params, jnp.arange(config.steps // RECORD_EVERY))


def sdata_class_weights(mixture: sdata.Mixture, num_classes: int) -> jax.Array:
    """pi_c of a mixture (traceable), (C,)."""
    return jax.ops.segment_sum(jnp.asarray(mixture.weights), jnp.asarray(mixture.coarse), num_segments=num_classes)


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------


def _layer_readouts(train_features, train, test_features, test, ridge, num_classes, num_groups):
    """Every probe of one layer from one normalization and one ridge solve (targets share the Gram).

    Targets: the fine code (R^2 and sign accuracy over samples that have a subclass) and the
    one-hot coarse label (last-layer retraining on group-balanced data: a ridge fit per class,
    prediction = argmax; worst-group and average accuracy).

    Returns:
        (dict of measurements, test scores (n, C) of the retrained last layer).
    """
    a, b = normalize_representation(train_features, test_features)
    onehot = jax.nn.one_hot(train.coarse, num_classes, dtype=a.dtype)
    onehot_test = jax.nn.one_hot(test.coarse, num_classes, dtype=a.dtype)
    targets = jnp.concatenate([train.fine[:, None], onehot], axis=1)
    test_targets = jnp.concatenate([test.fine[:, None], onehot_test], axis=1)
    fits = jax.vmap(lambda y, y_test: ridge_probe(a, y, b, y_test, ridge), in_axes=(1, 1))(targets, test_targets)
    scores = b @ fits.weights.T + fits.intercept  # (n, 1 + C)
    has_fine = test.fine != 0
    fine_accuracy = jnp.sum((jnp.sign(scores[:, 0]) == test.fine) * has_fine) / jnp.maximum(jnp.sum(has_fine), 1)
    correct = (jnp.argmax(scores[:, 1:], axis=1) == test.coarse).astype(a.dtype)
    members = jax.nn.one_hot(test.group, num_groups, dtype=a.dtype)
    group_accuracy = (members.T @ correct) / jnp.maximum(members.sum(axis=0), 1.0)
    present = members.sum(axis=0) > 0
    worst = jnp.min(jnp.where(present, group_accuracy, jnp.inf))
    return ({"fine_r2": fits.r2[0], "fine_accuracy": fine_accuracy, "worst_group": worst,
             "average": jnp.mean(correct), "group_accuracy": group_accuracy}, scores[:, 1:])


def _pad(features, width):
    """Zero columns up to ``width`` (they change neither the normalization nor the ridge fit)."""
    return jnp.pad(features, ((0, 0), (0, width - features.shape[1])))


def _effects(score, test):
    """Core and spurious effects of a scalar score on shift data (group means, groups 2y + a).

    core = mean over a of E[s | y=0, a] - E[s | y=1, a]; spurious = mean over y of
    E[s | y, a=0] - E[s | y, a=1]. A readout that ignores the spurious feature has spurious ~ 0.
    """
    members = jax.nn.one_hot(test.group, 4, dtype=score.dtype)
    means = (members.T @ score) / jnp.maximum(members.sum(axis=0), 1.0)  # groups (y, a) = 00, 01, 10, 11
    core = 0.5 * ((means[0] - means[2]) + (means[1] - means[3]))
    spurious = 0.5 * ((means[0] - means[1]) + (means[2] - means[3]))
    return core, spurious


def _point(config, key, hp):
    """Train one network and measure it (traced in key and hp; vmapped over points)."""
    train_mixture, eval_mixture = _mixtures(config.task, config.dim, config.num_classes, hp)
    params0 = _init(jax.random.fold_in(key, _INIT_STREAM), config, hp["init_scale"], hp["classifier_init_scale"])
    params, losses = _train(config, params0, train_mixture, jax.random.fold_in(key, _TRAIN_STREAM), hp)
    net, classifier = params
    train = sdata.sample(eval_mixture, jax.random.fold_in(key, _PROBE_TRAIN_STREAM), config.n_probe)
    test = sdata.sample(eval_mixture, jax.random.fold_in(key, _PROBE_TEST_STREAM), config.n_test)
    h_train, z_train = apply_network(net, train.x, hp["linear"])
    h_test, z_test = apply_network(net, test.x, hp["linear"])
    num_groups = int(np.max(np.asarray(_templates(config.task, config.dim, config.num_classes)[0].group))) + 1
    widest = max(config.dim, config.width, config.head_dim)
    train_layers = jnp.stack([_pad(f, widest) for f in (train.x, h_train, z_train)])
    test_layers = jnp.stack([_pad(f, widest) for f in (test.x, h_test, z_test)])
    layers, scores = jax.vmap(lambda a, b: _layer_readouts(a, train, b, test, hp["ridge"], config.num_classes,
                                                           num_groups))(train_layers, test_layers)
    out = {name: jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], layers) for i, name in enumerate(LAYERS)}
    readouts = {name: scores[i, :, 1] - scores[i, :, 0] for i, name in enumerate(LAYERS)}  # evidence for class 1
    # Weights: how collapsed the head is and what its readouts use.
    _, singular, vt = serial_linalg.svd(net.head)
    head_direction = h_test @ vt[0]
    weights = {"head_singular_values": singular, "head_top_share": singular[0] ** 2 / jnp.sum(singular**2)}
    if config.task == "shift":
        for name in ("pre", "post"):
            core, spurious = _effects(readouts[name], test)
            weights[f"{name}_core_effect"] = core
            weights[f"{name}_spurious_effect"] = spurious
            weights[f"{name}_spurious_ratio"] = jnp.abs(spurious) / jnp.maximum(jnp.abs(core), 1e-30)
        core, spurious = _effects(head_direction, test)
        weights["head_top_spurious_ratio"] = jnp.abs(spurious) / jnp.maximum(jnp.abs(core), 1e-30)
        encoder = net.encoder
        weights["encoder_core_norm"] = jnp.linalg.norm(encoder[:, 0])
        weights["encoder_spurious_norm"] = jnp.linalg.norm(encoder[:, 1])
    else:
        for key_name in ("pre_spurious_ratio", "post_spurious_ratio", "head_top_spurious_ratio"):
            weights[key_name] = jnp.asarray(jnp.nan)
    logits = slosses.classifier_logits(classifier, z_test)  # untrained (ignored) for contrastive losses
    correct = (jnp.argmax(logits, axis=1) == test.coarse).astype(logits.dtype)
    members = jax.nn.one_hot(test.group, num_groups, dtype=logits.dtype)
    accuracy = (members.T @ correct) / jnp.maximum(members.sum(axis=0), 1.0)
    classifier_worst = jnp.min(jnp.where(members.sum(axis=0) > 0, accuracy, jnp.inf))
    return out, weights, losses, classifier_worst


@functools.lru_cache(maxsize=None)
def _program(config_template: SupervisedConfig):
    """The jitted, vmapped program of one shape_key (a config with that key stands for it)."""
    return jax.jit(jax.vmap(lambda key, hp: _point(config_template, key, hp)))


def _template(config: SupervisedConfig) -> SupervisedConfig:
    """A canonical config of the same shape_key (traced fields at their defaults) to key the cache."""
    traced = {name: getattr(CONFIG, name) for name in _TRACED}
    traced["noise_std"] = 0.2
    loss = "infonce" if config.loss == "infonce" else CONFIG.loss
    return dataclasses.replace(config, seed=0, loss=loss, network=CONFIG.network, **traced)


def run_supervised_batch(configs: Sequence[SupervisedConfig], *, place=None) -> list[dict[str, Any]]:
    """Run configurations sharing a shape_key as one vmapped, jitted program.

    Seeds and every float hyperparameter (data strengths, init scales, weight decay, learning
    rate, temperature, ridge) are traced, so changing them never recompiles; each point's numbers
    do not depend on what else is in the batch.

    Args:
        configs: non-empty sequence of SupervisedConfig with equal shape_key.
        place: optional function applied to every pytree of stacked per-point arrays (keys and
            hyperparameters) before the program (the sweep engine uses it to shard points).

    Returns:
        One dict per config: ``input``/``pre``/``post`` ({fine_r2, fine_accuracy, worst_group,
        average, group_accuracy (G,)}), ``weights`` (head singular values and top share; for
        shift the core and spurious effects of each layer's retrained readout), ``losses``
        (recorded minibatch losses, (steps / RECORD_EVERY,)), ``times`` (learning_rate x step),
        ``diagnostics`` and ``config``.

    Raises:
        FlowDivergenceError: if a training loss became non-finite (names the step and a remedy).
    """
    if not configs:
        raise ValueError("configs must hold at least one SupervisedConfig")
    keys = {shape_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError(f"configs must share one shape_key to run as one batch, got {sorted(keys, key=str)}")
    place = place or (lambda tree: tree)
    dtype = jax.dtypes.canonicalize_dtype(np.float64)
    root_keys = place(jnp.stack([jax.random.PRNGKey(c.seed) for c in configs]))
    hp = {name: jnp.asarray([getattr(c, name) for c in configs], dtype=dtype) for name in _TRACED}
    hp["loss_index"] = jnp.asarray([LOSSES.index(c.loss) for c in configs])
    hp["linear"] = jnp.asarray([float(c.network == "linear") for c in configs], dtype=dtype)
    hp = place(hp)
    out, weights, losses, classifier_worst = _program(_template(configs[0]))(root_keys, hp)
    out, weights = jax.tree_util.tree_map(np.asarray, (out, weights))
    losses, classifier_worst = np.asarray(losses), np.asarray(classifier_worst)
    results = []
    for index, config in enumerate(configs):
        if not np.all(np.isfinite(losses[index])):
            first = (int(np.argmin(np.isfinite(losses[index]))) + 1) * RECORD_EVERY
            raise FlowDivergenceError(
                f"supervised training diverged: non-finite loss by step {first} (seed {config.seed}, loss "
                f"{config.loss}). Remedy: lower learning_rate (now {config.learning_rate}) or init_scale, "
                f"or add weight_decay.")

        def pick(tree):
            return jax.tree_util.tree_map(lambda leaf: leaf[index], tree)

        layers = pick(out)
        result = {name: {k: (float(v) if np.ndim(v) == 0 else v) for k, v in layers[name].items()}
                  for name in ("input", "pre", "post")}
        result.update({
            "config": dataclasses.asdict(config),
            "weights": {k: (float(v) if np.ndim(v) == 0 else v) for k, v in pick(weights).items()},
            "losses": losses[index],
            "times": config.learning_rate * RECORD_EVERY * (np.arange(losses.shape[1]) + 1),
            "diagnostics": {"final_loss": float(losses[index, -1]),
                            "classifier_worst_group": (float("nan") if config.loss in CONTRASTIVE
                                                       else float(classifier_worst[index]))},
        })
        results.append(result)
    return results


def run_supervised(config: SupervisedConfig, *, place=None) -> dict[str, Any]:
    """``run_supervised_batch([config])[0]``."""
    return run_supervised_batch([config], place=place)[0]


# ----------------------------------------------------------------------------------------------
# Linear networks on the exact population losses (the linear theory's testbed)
# ----------------------------------------------------------------------------------------------

LINEAR_LOSSES = ("spectral", "squared")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearSupervisedConfig:
    """A deep linear network trained by gradient flow on an exact supervised population loss.

    Attributes:
        loss: "spectral" (supervised spectral contrastive, depth 2: encoder and head) or "squared"
            (squared loss to one-hot labels, depth 3: encoder, head and classifier).
        dim, num_classes, separation, noise_std, class_offset: the coarse_to_fine mixture
            (class_offset > 0 gives the class means a linear network can learn).
        rotate: apply a Haar-random rotation (from the seed) to the inputs, so A and B are not diagonal.
        width: hidden widths; None means num_classes (the learned rank).
        init_scale: balanced init, per-layer singular value.
        seed: root seed (rotation: stream 1, init: stream 0).
    """

    loss: str = "spectral"
    dim: int = 6
    num_classes: int = 2
    separation: float = 1.0
    noise_std: float = 0.2
    class_offset: float = 0.5
    rotate: bool = True
    width: int | None = None
    init_scale: float = 0.05
    seed: int = 0

    def __post_init__(self):
        check_choice("loss", self.loss, LINEAR_LOSSES)
        self.mixture_numpy()  # validates the data fields
        if self.width is not None:
            check_int("width", self.width, minimum=1)
        object.__setattr__(self, "init_scale", check_float("init_scale", self.init_scale, minimum=0.0,
                                                           strict_minimum=True))

    @property
    def depth(self) -> int:
        return 2 if self.loss == "spectral" else 3

    @property
    def widths(self) -> tuple[int, ...]:
        p = self.width or self.num_classes
        return (p, p) if self.loss == "spectral" else (p, p, self.num_classes)

    def mixture_numpy(self) -> sdata.Mixture:
        """The (optionally rotated) mixture as NumPy arrays."""
        mixture = sdata.coarse_to_fine(dim=self.dim, num_classes=self.num_classes, separation=self.separation,
                                       noise_std=self.noise_std, class_offset=self.class_offset)
        if self.rotate:
            q, r = np.linalg.qr(np.random.default_rng([self.seed, 1]).standard_normal((self.dim, self.dim)))
            mixture = sdata.rotate(mixture, q * np.sign(np.diag(r)))
        return sdata.Mixture(*(np.asarray(leaf) for leaf in mixture))

    @classmethod
    def quick(cls, **overrides) -> "LinearSupervisedConfig":
        return cls(**{"init_scale": 0.1, **overrides})


def _linear_spectral_loss(params, args):
    pos_cov, second_moment = args
    return slosses.supervised_spectral_population_loss(models.end_to_end(params), pos_cov, second_moment)


def _linear_squared_loss(params, args):
    class_cross, second_moment = args
    return slosses.squared_population_loss(models.end_to_end(params), class_cross, second_moment)


def predict_linear(config: LinearSupervisedConfig) -> dict[str, np.ndarray]:
    """Closed-form layer Grams (L, d, d), class-mean-direction weights (L, C) and subclass
    separations (L, S) of theory.supervised for this configuration."""
    m = config.mixture_numpy()
    A, B = supervised_theory.supervised_moments(m.means, m.weights, m.coarse, m.noise_std, config.num_classes)
    if config.loss == "spectral":
        grams = supervised_theory.contrastive_layer_grams(A, B, config.depth, min(config.widths))
    else:
        M = supervised_theory.class_cross_moment(m.means, m.weights, m.coarse, config.num_classes)
        grams = supervised_theory.squared_loss_layer_grams(M, B, config.depth)
    return _linear_measurements(grams, m, config.num_classes)


def _linear_measurements(grams, mixture, num_classes):
    class_means = supervised_theory.class_means(mixture.means, mixture.weights, mixture.coarse, num_classes)
    return {"grams": grams,
            "class_mean_weights": supervised_theory.direction_weights(grams, class_means),
            "subclass_separation": supervised_theory.subclass_separation(grams, mixture.means, mixture.weights,
                                                                         mixture.coarse, num_classes)}


def run_linear_supervised(config: LinearSupervisedConfig, *, options=None) -> dict[str, Any]:
    """Train the linear network to a certified steady state and compare its layers with theory.supervised.

    Returns a dict with ``measured`` and ``predicted`` (each {grams (L, d, d), class_mean_weights
    (L, C), subclass_separation (L, S)}), ``diagnostics`` (flow: converged, t_final, loss) and
    ``config``.
    """
    from simulations.flow import gradient_flow

    m = config.mixture_numpy()
    with jax.enable_x64(True):
        A, B = supervised_theory.supervised_moments(m.means, m.weights, m.coarse, m.noise_std, config.num_classes)
        if config.loss == "spectral":
            loss_fn, args = _linear_spectral_loss, (jnp.asarray(A), jnp.asarray(B))
        else:
            M = supervised_theory.class_cross_moment(m.means, m.weights, m.coarse, config.num_classes)
            loss_fn, args = _linear_squared_loss, (jnp.asarray(M), jnp.asarray(B))
        params0 = models.init_balanced(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0), config.dim,
                                       config.widths, init_scale=config.init_scale)
        flow = gradient_flow(loss_fn, params0, args, options=options)
        grams = np.stack([np.asarray(P.T @ P) for P in models.layer_maps(flow.params)])
    return {"config": dataclasses.asdict(config),
            "measured": _linear_measurements(grams, m, config.num_classes),
            "predicted": predict_linear(config),
            "params": flow.params,
            "diagnostics": {"converged": bool(flow.converged), "t_final": float(flow.t_final),
                            "loss": float(flow.loss)}}


def contract_configs(*, quick: bool, seed: int, **overrides) -> dict[str, SupervisedConfig]:
    """The three runs behind the CLI's JSON: supervised contrastive and cross-entropy on
    coarse_to_fine, cross-entropy on shift."""
    make = SupervisedConfig.quick if quick else SupervisedConfig
    return {
        "supcon": make(task="coarse_to_fine", loss="spectral", seed=seed, **overrides),
        "cross_entropy": make(task="coarse_to_fine", loss="cross_entropy", seed=seed, **overrides),
        "shift": make(task="shift", loss="cross_entropy", seed=seed, **overrides),
    }


def run_contract(configs: dict[str, SupervisedConfig]) -> dict[str, dict[str, Any]]:
    """Run named configs, batching those that share a shape_key (one compiled program per key)."""
    groups: dict[tuple, list[str]] = {}
    for name, config in configs.items():
        groups.setdefault(shape_key(config), []).append(name)
    results = {}
    for names in groups.values():
        for name, result in zip(names, run_supervised_batch([configs[n] for n in names])):
            results[name] = result
    return {name: results[name] for name in configs}


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The CLI's public JSON object from the three runs of :func:`contract_configs`."""
    return {
        "supcon": {layer: {"fine": results["supcon"][layer]["fine_r2"]} for layer in ("pre", "post")},
        "cross_entropy": {layer: {"fine": results["cross_entropy"][layer]["fine_r2"]} for layer in ("pre", "post")},
        "shift": {layer: {"worst_group": results["shift"][layer]["worst_group"],
                          "average": results["shift"][layer]["average"]} for layer in ("pre", "post")},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `supervised` subcommand's flags (public contract: --quick, --seed, --json and the JSON keys)."""
    parser.add_argument("--quick", action="store_true", help="fewer steps and probe samples (seconds)")
    parser.add_argument("--seed", type=int, default=0, help="root seed of init, batches and probes (default 0)")
    parser.add_argument("--contrastive-form", choices=CONTRASTIVE, default="spectral",
                        help="supervised contrastive loss behind the 'supcon' entry (default %(default)s)")
    parser.add_argument("--init-scale", type=float, default=CONFIG.init_scale,
                        help="init scale eps of encoder and head (default %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=CONFIG.weight_decay,
                        help="(wd/2)(||W||^2 + ||V||^2) during training (default %(default)s)")
    parser.add_argument("--agreement", type=float, default=CONFIG.agreement,
                        help="P(spurious = label) in training for the shift task (default %(default)s)")
    parser.add_argument("--out", default="results/supervised", help="where to save results without --json")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object {"supcon", "cross_entropy", "shift"} and save nothing')


def main(args: argparse.Namespace) -> int:
    configs = contract_configs(quick=args.quick, seed=args.seed, init_scale=args.init_scale,
                               weight_decay=args.weight_decay, agreement=args.agreement)
    configs["supcon"] = dataclasses.replace(configs["supcon"], loss=args.contrastive_form)
    results = run_contract(configs)
    summary = summarize(results)
    if args.json:
        print(json.dumps(summary))
        return 0
    from simulations.results import save_results

    print(format_table(results))
    arrays = {f"{name}_{layer}_{field}": results[name][layer][field] for name in results
              for layer in ("input", "pre", "post") for field in ("fine_r2", "worst_group", "average")}
    npz, _ = save_results(args.out, "supervised", arrays,
                          {"summary": summary, "seed": args.seed,
                           "configs": {name: results[name]["config"] for name in results},
                           "weights": {name: results[name]["weights"] for name in results},
                           "diagnostics": {name: results[name]["diagnostics"] for name in results}})
    print(f"saved {npz} and its .json record", file=sys.stderr)
    return 0


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Readable table: fine-label R^2 and retrained worst-group / average accuracy per layer."""
    lines = ["run            layer  fine R2  fine acc  worst-group  average"]
    for name, result in results.items():
        for layer in ("input", "pre", "post"):
            r = result[layer]
            lines.append(f"{name:13s}  {layer:5s}  {r['fine_r2']:7.3f}  {r['fine_accuracy']:8.3f}  "
                         f"{r['worst_group']:11.3f}  {r['average']:7.3f}")
    return "\n".join(lines)
