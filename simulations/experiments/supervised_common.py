"""Building blocks shared by the supervised experiment and the head comparison on its tasks.

Networks h = relu(W x) (or h = W x), z = V h with an optional linear classifier on z; the
training objective of every supervised loss on z; and the readouts of one layer (fine-label
probe, last-layer retraining on group-balanced data). Everything here is traceable: the
experiments vmap it over points whose float hyperparameters are arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simulations import draws, losses, serial_linalg
from simulations.data import mixtures as sdata
from simulations.models import relu
from simulations.probe import normalize_representation, ridge_probe
from theory.checks import check_choice

LOSSES = ("spectral", "infonce", "cross_entropy", "squared")
CONTRASTIVE = ("spectral", "infonce")
NETWORKS = ("relu", "linear")
#: Probed layers: the raw input, below the head (h) and above it (z, the head's output).
LAYERS = ("input", "pre", "post")
#: Named key streams (jax.random.fold_in of the root key).
INIT_STREAM, TRAIN_STREAM, PROBE_TRAIN_STREAM, PROBE_TEST_STREAM = 0, 1, 2, 3


def init_networks(key, *, dim: int, width: int, head_dim: int, num_classes: int, init_scale, classifier_init_scale):
    """(network, classifier) at init (init scales may be traced).

    The network is simulations.models.relu.init_relu at scale 1 times ``init_scale`` (entries
    N(0, eps^2 / fan_in)); the classifier (U (C, k), b (C,)) has U ~ N(0, scale^2 / k), b = 0.
    """
    net = relu.init_relu(draws.fold_in(key, 0), dim, width, head_dim, init_scale=1.0)
    net = jax.tree_util.tree_map(lambda leaf: init_scale * leaf, net)
    return net, init_classifier(key, head_dim, num_classes, classifier_init_scale)


def init_classifier(key, width: int, num_classes: int, classifier_init_scale):
    """A linear classifier on z of ``width`` entries, drawn from stream 1 of ``key``."""
    return (classifier_init_scale / np.sqrt(width)
            * jax.random.normal(draws.fold_in(key, 1), (num_classes, width)), jnp.zeros(num_classes))


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


def loss_value(loss: str, z, classifier, coarse, class_weights, temperature):
    """The training loss of representations z (n, k) against coarse labels (``loss`` static)."""
    if loss == "spectral":
        return losses.supervised_spectral_loss(z, coarse, class_weights)
    if loss == "infonce":
        return losses.supcon_loss(z, coarse, temperature)
    if loss == "cross_entropy":
        return losses.cross_entropy_loss(classifier, z, coarse)
    return losses.squared_loss(classifier, z, coarse)


def mixed_loss_value(loss_index, z, classifier, coarse, class_weights):
    """The spectral, cross-entropy or squared loss chosen by a traced index into LOSSES (batches mix them)."""
    values = jnp.stack([losses.supervised_spectral_loss(z, coarse, class_weights),
                        jnp.zeros((), z.dtype),
                        losses.cross_entropy_loss(classifier, z, coarse),
                        losses.squared_loss(classifier, z, coarse)])
    return jnp.sum(jax.nn.one_hot(loss_index, len(LOSSES), dtype=values.dtype) * values)


def layer_readouts(train_features, train, test_features, test, ridge, num_classes, num_groups):
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
    scores = b @ fits.weights.T + fits.intercept[None, :]  # (n, 1 + C)
    has_fine = test.fine != 0
    fine_accuracy = jnp.sum((jnp.sign(scores[:, 0]) == test.fine) * has_fine) / jnp.maximum(jnp.sum(has_fine), 1)
    correct = (jnp.argmax(scores[:, 1:], axis=1) == test.coarse).astype(a.dtype)
    members = jax.nn.one_hot(test.group, num_groups, dtype=a.dtype)
    group_accuracy = (members.T @ correct) / jnp.maximum(members.sum(axis=0), 1.0)
    present = members.sum(axis=0) > 0
    worst = jnp.min(jnp.where(present, group_accuracy, jnp.inf))
    return ({"fine_r2": fits.r2[0], "fine_accuracy": fine_accuracy, "worst_group": worst,
             "average": jnp.mean(correct), "group_accuracy": group_accuracy}, scores[:, 1:])


def pad(features, width):
    """Zero columns up to ``width`` (they change neither the normalization nor the ridge fit)."""
    return jnp.pad(features, ((0, 0), (0, width - features.shape[1])))


def effects(score, test):
    """Core and spurious effects of a scalar score on shift data (group means, groups 2y + a).

    core = mean over a of E[s | y=0, a] - E[s | y=1, a]; spurious = mean over y of
    E[s | y, a=0] - E[s | y, a=1]. A readout that ignores the spurious feature has spurious ~ 0.
    """
    members = jax.nn.one_hot(test.group, 4, dtype=score.dtype)
    means = (members.T @ score) / jnp.maximum(members.sum(axis=0), 1.0)  # groups (y, a) = 00, 01, 10, 11
    core = 0.5 * ((means[0] - means[2]) + (means[1] - means[3]))
    spurious = 0.5 * ((means[0] - means[1]) + (means[2] - means[3]))
    return core, spurious


class LayerReadouts(NamedTuple):
    """One layer's readouts: fine-label R^2 and sign accuracy; retrained last layer's worst-group,
    average and per-group (G,) accuracy on group-balanced test data."""

    fine_r2: np.ndarray
    fine_accuracy: np.ndarray
    worst_group: np.ndarray
    average: np.ndarray
    group_accuracy: np.ndarray


class HeadWeights(NamedTuple):
    """How collapsed the head is and what the readouts use (shift-only fields are NaN for coarse_to_fine).

    Attributes:
        head_singular_values: (k,) of V. head_top_share: s_1^2 / sum s^2.
        pre_/post_core_effect, pre_/post_spurious_effect: effects of the retrained readout
            (supervised_common.effects); *_spurious_ratio = |spurious| / |core|.
        head_top_spurious_ratio: the same ratio for h projected on V's top right-singular vector.
        encoder_core_norm, encoder_spurious_norm: |W[:, 0]|, |W[:, 1]|.
    """

    head_singular_values: np.ndarray
    head_top_share: np.ndarray
    pre_core_effect: np.ndarray
    pre_spurious_effect: np.ndarray
    pre_spurious_ratio: np.ndarray
    post_core_effect: np.ndarray
    post_spurious_effect: np.ndarray
    post_spurious_ratio: np.ndarray
    head_top_spurious_ratio: np.ndarray
    encoder_core_norm: np.ndarray
    encoder_spurious_norm: np.ndarray


class SupervisedDiagnostics(NamedTuple):
    """final_loss: the mean minibatch objective (penalty included) over the last record block;
    classifier_worst_group: worst-group accuracy of the trained classifier (NaN for contrastive losses);
    steps: gradient steps."""

    final_loss: np.ndarray
    classifier_worst_group: np.ndarray
    steps: np.ndarray


class SupervisedResult(NamedTuple):
    """Every output (a leading point axis when batched): readouts of each layer, head weights,
    losses (R,) (block means of the minibatch objective), times (R,) and diagnostics."""

    input: LayerReadouts
    pre: LayerReadouts
    post: LayerReadouts
    weights: HeadWeights
    losses: np.ndarray
    times: np.ndarray
    diagnostics: SupervisedDiagnostics


def measure(net, classifier, eval_mixture, key, hp, *, task, dim, num_classes, width, head_dim, n_probe, n_test):
    """Readouts of a trained network on fresh group-balanced data (probe and test streams of ``key``).

    Returns:
        (input, pre, post :class:`LayerReadouts`, :class:`HeadWeights`, worst-group accuracy of the
        trained classifier on z).
    """
    train = sdata.sample(eval_mixture, draws.fold_in(key, PROBE_TRAIN_STREAM), n_probe)
    test = sdata.sample(eval_mixture, draws.fold_in(key, PROBE_TEST_STREAM), n_test)
    h_train, z_train = apply_network(net, train.x, hp["linear"])
    h_test, z_test = apply_network(net, test.x, hp["linear"])
    num_groups = sdata.num_groups(task, dim, num_classes)
    widest = max(dim, width, head_dim)
    train_layers = jnp.stack([pad(f, widest) for f in (train.x, h_train, z_train)])
    test_layers = jnp.stack([pad(f, widest) for f in (test.x, h_test, z_test)])
    layers, scores = jax.vmap(lambda a, b: layer_readouts(a, train, b, test, hp["ridge"], num_classes,
                                                          num_groups))(train_layers, test_layers)
    out = [LayerReadouts(**jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], layers)) for i in range(len(LAYERS))]
    readouts = {name: scores[i, :, 1] - scores[i, :, 0] for i, name in enumerate(LAYERS)}  # evidence for class 1
    _, singular, vt = serial_linalg.svd(net.head)
    nan = jnp.asarray(jnp.nan)
    weights = dict.fromkeys(HeadWeights._fields, nan)
    weights.update(head_singular_values=singular, head_top_share=singular[0] ** 2 / jnp.sum(singular**2))
    if task == "shift":
        for name in ("pre", "post"):
            core, spurious = effects(readouts[name], test)
            weights.update({f"{name}_core_effect": core, f"{name}_spurious_effect": spurious,
                            f"{name}_spurious_ratio": jnp.abs(spurious) / jnp.maximum(jnp.abs(core), 1e-30)})
        core, spurious = effects(h_test @ vt[0], test)
        weights["head_top_spurious_ratio"] = jnp.abs(spurious) / jnp.maximum(jnp.abs(core), 1e-30)
        weights.update(encoder_core_norm=jnp.linalg.norm(net.encoder[:, 0]),
                       encoder_spurious_norm=jnp.linalg.norm(net.encoder[:, 1]))
    logits = losses.classifier_logits(classifier, z_test)  # untrained (ignored) for contrastive losses
    correct = (jnp.argmax(logits, axis=1) == test.coarse).astype(logits.dtype)
    members = jax.nn.one_hot(test.group, num_groups, dtype=logits.dtype)
    accuracy = (members.T @ correct) / jnp.maximum(members.sum(axis=0), 1.0)
    classifier_worst = jnp.min(jnp.where(members.sum(axis=0) > 0, accuracy, jnp.inf))
    return (*out, HeadWeights(**weights), classifier_worst)
