"""Contrastive pretraining of an image encoder and the classification probes that read it.

* :func:`pretrain`: minibatch descent with an optax optimizer (Adam) through the library's one
  trainer (:func:`simulations.train.descend`: one ``lax.scan`` over steps), a fresh batch of view
  pairs each step, the loss recorded every ``record_every`` steps. Pure and
  traceable (learning rate and every data knob may be traced), so seeds and sweep points vmap.
* :func:`ridge_classifier_accuracy`: the library's variance-normalized ridge probe
  (:func:`simulations.probe.normalized_ridge_probe`) fitted to one-hot class targets, one probe
  per class, predicting the argmax; test accuracy.
* :func:`logistic_accuracy`: multinomial logistic regression on the same normalized features
  (an L2 penalty, full-batch Adam from optax for a fixed number of steps); test accuracy.

Both probes centre the features and divide them by the square root of their total variance (not
per coordinate), so a diagonal rescaling of a representation (the fixed reweighting head) changes
what they read, as it changes what the loss sees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from simulations import draws
from simulations.probe import normalize_representation, ridge_probe
from simulations.train import descend


class Pretraining(NamedTuple):
    """Outcome of :func:`pretrain`: final parameters and the loss at every ``record_every``-th step (R,)."""

    params: object
    losses: jax.Array


def pretrain(loss_fn: Callable, params0, sample_pairs: Callable, key: jax.Array, *, learning_rate, steps: int,
             batch_size: int, record_every: int) -> Pretraining:
    """Adam on ``loss_fn(params, x, x_pos)``, with ``sample_pairs(key, n) -> (x, x_pos)`` fresh each step.

    Step t draws its batch from ``fold_in(key, t)``. ``steps`` must be a multiple of ``record_every``
    (static, like ``batch_size``); ``learning_rate`` may be traced. Runs the library's one descent
    loop, :func:`simulations.train.descend`.
    """
    descent = descend(lambda params, pair: loss_fn(params, *pair), params0, steps=steps, record_every=record_every,
                      optimizer=optax.adam(learning_rate), record_params=False,
                      batch=lambda step: sample_pairs(draws.fold_in(key, step), batch_size))
    return Pretraining(descent.params, descent.losses)


def _normalized(train, test):
    return normalize_representation(train, test, min_total_variance=1e-12)


def ridge_classifier_accuracy(train, train_labels, test, test_labels, num_classes: int, ridge: float) -> jax.Array:
    """Test accuracy of one-hot ridge probes (one per class, argmax): () in [0, 1].

    Args:
        train, test: (n, k) and (m, k) features; train_labels, test_labels: (n,), (m,) ints.
        num_classes: C (static); ridge: penalty on the normalized features (tr Cov = 1).
    """
    train_n, test_n = _normalized(train, test)
    targets = jax.nn.one_hot(train_labels, num_classes, dtype=train.dtype)
    test_targets = jax.nn.one_hot(test_labels, num_classes, dtype=train.dtype)
    fits = jax.vmap(lambda y, y_test: ridge_probe(train_n, y, test_n, y_test, ridge), in_axes=(1, 1))(
        targets, test_targets)
    scores = test_n @ fits.weights.T + fits.intercept[None, :]
    return jnp.mean(jnp.argmax(scores, axis=1) == test_labels)


def logistic_accuracy(train, train_labels, test, test_labels, num_classes: int, *, penalty: float = 1e-4,
                      iterations: int = 150, learning_rate: float = 0.1) -> jax.Array:
    """Test accuracy of multinomial logistic regression on normalized features: () in [0, 1].

    Minimizes mean cross-entropy + penalty |W|^2 (bias unpenalized) over features scaled to
    tr Cov = k (unit variance per coordinate on average) by ``iterations`` full-batch Adam steps
    from zero (a fixed, short program: it compiles in a fraction of a second under vmap).
    """
    train_n, test_n = _normalized(train, test)
    scale = jnp.sqrt(jnp.asarray(train.shape[1], train.dtype))
    train_n, test_n = train_n * scale, test_n * scale
    targets = jax.nn.one_hot(train_labels, num_classes, dtype=train.dtype)

    def objective(params):
        weights, bias = params
        log_probs = jax.nn.log_softmax(train_n @ weights + bias[None, :], axis=1)
        return -jnp.mean(jnp.sum(targets * log_probs, axis=1)) + penalty * jnp.sum(weights * weights)

    params = (jnp.zeros((train.shape[1], num_classes), train.dtype), jnp.zeros((num_classes,), train.dtype))
    weights, bias = descend(objective, params, steps=iterations, optimizer=optax.adam(learning_rate),
                            record_params=False).params
    return jnp.mean(jnp.argmax(test_n @ weights + bias[None, :], axis=1) == test_labels)
