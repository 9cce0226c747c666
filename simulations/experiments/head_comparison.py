"""Fixed reweighting head vs learned heads on the non-linear and supervised settings.

On the settings of the ``nonlinear`` and ``supervised`` experiments, three heads are put on the
same encoder init, trained on the same minibatches with the same loss, learning rate, weight
decay and steps (simulations.train), and probed the same way:

* the learned linear head: the experiment itself;
* the fixed reweighting head D_k = diag(1, 1/k, ..., 1/k^(m-1)) (simulations.models.heads; k = 1
  is no head), one vmapped program over the values of k;
* a learned two-layer ReLU head z = V relu(U h) (simulations.models.relu_head.init_head).

The linear-data comparison of the same heads is the ``reweighting`` experiment (docs/reweighting.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from simulations import data, draws
from simulations.data import mixtures as sdata
from simulations.experiment import run
from simulations.experiments import nonlinear, nonlinear_common, supervised
from simulations.experiments import supervised_common as common
from simulations.models import heads
from simulations.models.relu_head import apply_with_relu_head, init_head
from simulations.probe import normalized_ridge_probe
from simulations.train import descend

#: Key stream (under the init key) of the learned ReLU head's init.
RELU_HEAD_STREAM = 7


def compare_nonlinear(kappas: Sequence[float] = (1.0, 1.05, 1.5, 2.0, 3.0), *, config=None) -> dict[str, Any]:
    """Fixed head vs learned head on the non-linear (sign-flip) setting of `nonlinear`.

    The learned-head numbers are the ``nonlinear`` experiment run on ``config`` (ReLU encoder +
    learned linear head). The fixed-head runs use the same ReLU encoder init, data, minibatches
    (same key streams), loss, learning rate, weight decay and steps, with the learned head
    replaced by D_k (one vmapped program over ``kappas``; k = 1 is no head), then the same
    probes (normalized ridge, R^2 on fresh test data) of the value x_j and magnitude |x_j| of every
    feature at pre (h) and post (z = D_k h).

    A third arm puts a learned two-layer ReLU head z = V relu(U h) (hidden width m, output k,
    N(0, eps^2 / fan_in) init) on the same encoder init, trained the same way.

    Returns:
        dict with ``kappas`` (K,), ``fixed_r2`` (K, layers (pre, post), attributes (value,
        magnitude), d), ``learned_r2`` (layers, attributes, d; the linear head), ``relu_head_r2``
        (layers, attributes, d) and ``config``.
    """
    config = config or nonlinear.NonlinearConfig()
    kappas = tuple(heads.check_kappa(k) for k in kappas)
    learned = run(nonlinear.EXPERIMENT, config)
    kinds, batch, steps = config.kinds, config.batch_size, config.steps
    contrastive = nonlinear_common.pair_loss(config.loss, config.temperature)
    with jax.enable_x64(True):
        encoder0 = heads.relu_encoder(nonlinear.initialize(config).relu)
        key = jax.random.PRNGKey(config.seed)
        stds, strengths = jnp.asarray(config.stds), jnp.asarray(config.strengths)

        def train_and_probe(params0, represent):
            """Same minibatches and probes as `nonlinear`; represent(params, x) -> (h, z)."""
            train_key = draws.fold_in(key, 1)  # nonlinear's training stream

            def loss(params, pairs):
                x, x_pos = pairs
                return contrastive(represent(params, x)[1], represent(params, x_pos)[1])

            params = descend(loss, params0, steps=steps, learning_rate=config.learning_rate,
                             weight_decay=config.weight_decay, record_params=False,
                             batch=lambda index: data.sample_product(draws.fold_in(train_key, index), stds,
                                                                     strengths, n=batch, kinds=kinds)).params
            x_train = data.sample_product(draws.fold_in(key, 2), stds, strengths, n=config.n_train,
                                          kinds=kinds)[0]
            x_test = data.sample_product(draws.fold_in(key, 3), stds, strengths, n=config.n_test,
                                         kinds=kinds)[0]
            layers = []
            for reps_train, reps_test in zip(represent(params, x_train), represent(params, x_test)):
                layers.append(jnp.stack([jnp.stack([
                    normalized_ridge_probe(reps_train, f(x_train[:, j]), reps_test, f(x_test[:, j]), config.ridge).r2
                    for j in range(len(kinds))]) for f in (lambda v: v, jnp.abs)]))
            return jnp.stack(layers)

        def one(kappa):
            return train_and_probe(encoder0, lambda params, x: heads.apply_with_fixed_head(params, x, kappa))

        # Learned ReLU head on the same encoder: z = V relu(U h), U (m, m), V (k, m), N(0, eps^2/fan_in).
        head_key = draws.fold_in(draws.fold_in(key, 0), RELU_HEAD_STREAM)
        mlp0 = (encoder0, *init_head(head_key, config.hidden_width, config.hidden_width, config.head_width,
                                     init_scale=config.init_scale))
        relu_head_r2 = np.asarray(jax.jit(lambda p: train_and_probe(p, apply_with_relu_head))(mlp0))
        fixed = np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(kappas, dtype=jnp.float64)))
    return {"kappas": np.asarray(kappas), "fixed_r2": fixed, "learned_r2": np.asarray(learned.r2[0]),
            "relu_head_r2": relu_head_r2, "config": dataclasses.asdict(config)}


def compare_supervised(kappas: Sequence[float] = (1.0, 1.2, 1.5, 2.0), *, config=None) -> dict[str, Any]:
    """Fixed head vs learned head on a task of `supervised` (coarse-to-fine or shift).

    The learned-head numbers are the ``supervised`` experiment run on ``config``. The fixed-head
    runs train the same ReLU encoder (same init law, data, minibatch keys, loss, learning rate,
    weight decay, steps) with the head replaced by D_k of size ``config.width`` (one vmapped
    program over ``kappas``), then apply the same readouts (fine-label R^2 of the normalized ridge
    probe, fine accuracy, retrained last layer: worst-group and average accuracy) to the input,
    pre (h) and post (z = D_k h). Classifier losses (cross_entropy, squared) train a linear
    classifier on z = D_k h as the learned-head run trains one on its z; weight decay acts on the
    encoder only, as there.

    A third arm puts a learned two-layer ReLU head z = V relu(U h) (hidden width m, output
    ``config.head_dim``, N(0, init_scale^2 / fan_in) init) on the same encoder init, trained the
    same way (the classifier of a classifier loss reads its z).

    Returns:
        dict with ``kappas`` (K,), ``fixed`` ({layer: {readout: (K,) array}}), ``learned``
        ({layer: {readout: float}}; the linear head), ``relu_head`` ({layer: {readout: float}})
        and ``config``.
    """
    config = config or supervised.SupervisedConfig(task="coarse_to_fine", loss="spectral")
    if getattr(config, "network", "relu") != "relu":
        raise ValueError(f"compare_supervised needs the ReLU network, got network={config.network!r}")
    kappas = tuple(heads.check_kappa(k) for k in kappas)
    learned = run(supervised.EXPERIMENT, config)
    with jax.enable_x64(True):
        hp = {name: jnp.asarray(getattr(config, name), dtype=jnp.float64) for name in supervised.TRACED}
        key = jax.random.PRNGKey(config.seed)

        train_mixture, eval_mixture = sdata.task_mixtures(config.task, config.dim, config.num_classes, hp)
        init_key = draws.fold_in(key, common.INIT_STREAM)
        net, _ = common.init_networks(init_key, dim=config.dim, width=config.width, head_dim=config.head_dim,
                                      num_classes=config.num_classes, init_scale=hp["init_scale"],
                                      classifier_init_scale=hp["classifier_init_scale"])
        weights = sdata.class_weights(train_mixture, config.num_classes)
        num_groups = sdata.num_groups(config.task, config.dim, config.num_classes)

        def classifier0(width):
            """A linear classifier on z (width entries), drawn like the learned-head run's."""
            return common.init_classifier(init_key, width, config.num_classes, hp["classifier_init_scale"])

        def train_and_read(params0, represent):
            """Same minibatches and readouts as `supervised`; represent(encoder, x) -> (h, z)."""

            def objective(params, batch):
                encoder, classifier = params
                z = represent(encoder, batch.x)[1]
                return common.loss_value(config.loss, z, classifier, batch.coarse, weights, hp["temperature"])

            train_key = draws.fold_in(key, common.TRAIN_STREAM)
            encoder, _ = descend(objective, params0, steps=config.steps, learning_rate=hp["learning_rate"],
                                 weight_decay=hp["weight_decay"], decayed=lambda params: params[0],
                                 record_params=False,
                                 batch=lambda index: sdata.sample(train_mixture, draws.fold_in(train_key, index),
                                                                  config.batch_size, augment_std=hp["augment_std"])
                                 ).params
            train = sdata.sample(eval_mixture, draws.fold_in(key, common.PROBE_TRAIN_STREAM), config.n_probe)
            test = sdata.sample(eval_mixture, draws.fold_in(key, common.PROBE_TEST_STREAM), config.n_test)
            out = {}
            for name, (f_train, f_test) in zip(("input", "pre", "post"), (
                    (train.x, test.x), *zip(represent(encoder, train.x), represent(encoder, test.x)))):
                readouts, _ = common.layer_readouts(f_train, train, f_test, test, hp["ridge"], config.num_classes,
                                                    num_groups)
                out[name] = {k: v for k, v in readouts.items() if k != "group_accuracy"}
            return out

        def one(kappa):
            return train_and_read((heads.relu_encoder(net), classifier0(config.width)),
                                  lambda encoder, x: heads.apply_with_fixed_head(encoder, x, kappa))

        # Learned ReLU head: z = V relu(U h), U (m, m), V (head_dim, m), N(0, init_scale^2 / fan_in).
        mlp0 = (heads.relu_encoder(net), *init_head(draws.fold_in(init_key, RELU_HEAD_STREAM), config.width,
                                                    config.width, config.head_dim, init_scale=hp["init_scale"]))
        relu_head = jax.tree_util.tree_map(np.asarray, jax.jit(lambda p: train_and_read(p, apply_with_relu_head))(
            (mlp0, classifier0(config.head_dim))))
        fixed = jax.tree_util.tree_map(np.asarray, jax.jit(jax.vmap(one))(jnp.asarray(kappas, dtype=jnp.float64)))
    learned_summary = {layer: {k: float(getattr(getattr(learned, layer), k)) for k in fixed[layer]} for layer in fixed}
    return {"kappas": np.asarray(kappas), "fixed": fixed, "learned": learned_summary,
            "relu_head": {layer: {k: float(v) for k, v in values.items()} for layer, values in relu_head.items()},
            "config": dataclasses.asdict(config)}
