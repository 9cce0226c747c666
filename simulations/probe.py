"""The library's linear probe: variance-normalized ridge regression, fitted on samples.

A representation (any layer, any network, any attribute) is probed the same way:

1. :func:`normalize_representation` centres the features with the *training* mean and divides
   them by the square root of the training total variance (mean squared distance to the mean,
   i.e. the trace of the covariance), so tr Cov = 1 on the training set. The test features get
   the same affine map. This makes layers of different scale comparable.
2. :func:`ridge_probe` fits an intercept and weights v by minimizing
   (1/n) sum_i (y_i - c - v . h_i)^2 + ridge |v|^2 (the intercept is not penalized), the
   empirical twin of the population objective E[(y - v . h)^2] + ridge |v|^2, and reports the
   test mean squared error and R^2 = 1 - MSE / Var_test(y) ("decodability").

Its population twins are :func:`theory.downstream.population_ridge_risk` (any covariance) and
:func:`theory.downstream.probe_risk` (feature-aligned layers). :func:`affine_predictor_risk` gives
the exact risk of a *fitted* probe under a known Gaussian input law (an infinite test set), which
separates training-sample error from test-sample noise.

Per-layer probing of trained networks on fresh Gaussian inputs x ~ N(0, diag(b_ds)):
:func:`probe_layers` (every layer 0..L of a deep linear net, with the fitted probes' exact risks),
:func:`probe_layers_batch` (the same, vmapped over a leading point axis) and
:func:`probe_representations` (any network's representations, same samples and probe).

All functions are pure JAX (jit/vmap friendly); they compute in float64 when x64 is enabled, which
the experiments do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from simulations import draws, serial_linalg
from simulations.models import layer_maps
from theory.checks import check_float
from theory.downstream import population_ridge_risk  # noqa: F401  (re-exported population twin)

__all__ = [
    "Normalization",
    "ProbeResult",
    "representation_normalization",
    "normalize_representation",
    "ridge_probe",
    "normalized_ridge_probe",
    "affine_predictor_risk",
    "population_ridge_risk",
    "LayerProbes",
    "sample_downstream",
    "probe_layers",
    "probe_layers_batch",
    "probe_representations",
]

# Eigenvalues of the (ridge-shifted) training Gram below this fraction of the largest are treated
# as exactly zero (pseudo-inverse); only matters at ridge = 0 with rank-deficient features.
_PINV_RCOND = 1e-12
# Named key streams (jax.random.fold_in) of the probe's samples under the caller's probe key.
_TRAIN_STREAM, _TEST_STREAM = 0, 1
# A layer whose total variance is below this fraction of the input's counts as empty (decodes
# nothing). Dead features do not reach exactly zero: the flow's stopping rule leaves them at
# sigma^2 ~ loss_tol / weight_decay (< 1e-10 here), and normalizing an all-dead layer would blow
# that residue up to unit variance. Surviving features carry >= ~1e-3 of the input's variance.
_EMPTY_LAYER_FRACTION = 1e-8


class Normalization(NamedTuple):
    """Affine map h -> (h - mean) / scale estimated on training features.

    scale = sqrt(total variance); when the total variance is at or below the caller's floor the
    representation counts as empty and ``scale`` is inf (every normalized feature is 0).
    """

    mean: jax.Array  # (k,)
    scale: jax.Array  # ()


class ProbeResult(NamedTuple):
    """A fitted probe and its test performance (leading batch axes when vmapped).

    Attributes:
        mse: test mean squared error, ().
        r2: 1 - mse / (test variance of the target), ().
        weights: v, (k,), acting on the features as passed to :func:`ridge_probe`.
        intercept: c, ().
    """

    mse: jax.Array
    r2: jax.Array
    weights: jax.Array
    intercept: jax.Array


def _as_matrix(name: str, value) -> jax.Array:
    value = jnp.asarray(value)
    if value.ndim != 2:
        raise ValueError(f"{name} must have shape (n, k), got shape {value.shape}")
    return value


def _as_vector(name: str, value, n: int) -> jax.Array:
    value = jnp.asarray(value)
    if value.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got shape {value.shape}")
    return value


def representation_normalization(train, *, min_total_variance=0.0) -> Normalization:
    """Training mean and sqrt(total variance) of a representation.

    Args:
        train: (n, k) training features, n >= 2.
        min_total_variance: total variances at or below this count as an empty representation
            (scale inf). Useful when dead directions linger at rounding or stopping-rule level
            and normalization would otherwise blow them up to unit variance.

    Returns:
        Normalization(mean (k,), scale ()).
    """
    train = _as_matrix("train", train)
    if train.shape[0] < 2:
        raise ValueError(f"train must hold at least 2 samples, got {train.shape[0]}")
    mean = train.mean(axis=0)
    total_variance = jnp.sum(jnp.mean((train - mean[None, :]) ** 2, axis=0))
    empty = total_variance <= min_total_variance
    scale = jnp.where(empty, jnp.inf, jnp.sqrt(jnp.where(empty, 1.0, total_variance)))
    return Normalization(mean, scale)


def normalize_representation(train, test, *, min_total_variance=0.0) -> tuple[jax.Array, jax.Array]:
    """Centre and scale train and test features by the training mean and total variance.

    After the map the training features have tr Cov = 1 (covariance with 1/n).

    Args:
        train: (n, k) training features.
        test: (m, k) test features (same k).
        min_total_variance: see :func:`representation_normalization`.

    Returns:
        (train (n, k), test (m, k)) normalized.
    """
    train, test = _as_matrix("train", train), _as_matrix("test", test)
    if test.shape[1] != train.shape[1]:
        raise ValueError(f"test must have {train.shape[1]} features like train, got shape {test.shape}")
    mean, scale = representation_normalization(train, min_total_variance=min_total_variance)
    return (train - mean[None, :]) / scale, (test - mean[None, :]) / scale


def ridge_probe(train_features, train_target, test_features, test_target, ridge) -> ProbeResult:
    """Closed-form ridge regression with an unpenalized intercept, scored on test data.

    Minimizes (1/n) sum_i (y_i - c - v . h_i)^2 + ridge |v|^2:
    v = (H_c^T H_c / n + ridge I)^(+) H_c^T y_c / n (H_c, y_c centred), c = mean(y) - v . mean(h).
    The solve goes through the eigendecomposition of the k x k Gram, so ridge = 0 gives the
    minimum-norm least-squares fit even for rank-deficient features.

    Args:
        train_features: (n, k), n >= 2.
        train_target: (n,).
        test_features: (m, k).
        test_target: (m,).
        ridge: penalty >= 0 (a Python number).

    Returns:
        ProbeResult(mse, r2, weights (k,), intercept).
    """
    H = _as_matrix("train_features", train_features)
    n, k = H.shape
    if n < 2:
        raise ValueError(f"train_features must hold at least 2 samples, got {n}")
    y = _as_vector("train_target", train_target, n)
    T = _as_matrix("test_features", test_features)
    if T.shape[1] != k:
        raise ValueError(f"test_features must have {k} features like train_features, got shape {T.shape}")
    y_test = _as_vector("test_target", test_target, T.shape[0])
    if not isinstance(ridge, jax.Array):  # traced under jit/vmap: validated by the caller
        check_float("ridge", ridge, minimum=0.0)
    return _ridge_probe(H, y, T, y_test, ridge)


@jax.jit
def _ridge_probe(H, y, T, y_test, ridge):
    n = H.shape[0]
    h_mean, y_mean = H.mean(axis=0), y.mean()
    Hc, yc = H - h_mean[None, :], y - y_mean
    gram = Hc.T @ Hc / n
    eigenvalues, vectors = serial_linalg.eigh((gram + gram.T) / 2)  # one matrix per LAPACK call
    shifted = jnp.clip(eigenvalues, 0.0, None) + ridge
    floor = _PINV_RCOND * jnp.maximum(jnp.max(shifted), jnp.finfo(shifted.dtype).tiny)
    inverse = jnp.where(shifted > floor, 1.0 / jnp.where(shifted > floor, shifted, 1.0), 0.0)
    weights = vectors @ (inverse * (vectors.T @ (Hc.T @ yc / n)))
    intercept = y_mean - weights @ h_mean
    residual = y_test - intercept - T @ weights
    mse = jnp.mean(residual**2)
    r2 = 1.0 - mse / jnp.var(y_test)
    return ProbeResult(mse, r2, weights, intercept)


def normalized_ridge_probe(train_features, train_target, test_features, test_target, ridge, *,
                           min_total_variance=0.0) -> ProbeResult:
    """:func:`normalize_representation` followed by :func:`ridge_probe` (weights act on normalized h)."""
    train, test = normalize_representation(train_features, test_features, min_total_variance=min_total_variance)
    return ridge_probe(train, train_target, test, test_target, ridge)


def affine_predictor_risk(coefficients, offset, target_coefficients, covariance) -> jax.Array:
    """Exact E[(y - c - beta . x)^2] for zero-mean x with E[x x^T] = Sigma and y = u . x.

    = c^2 + (u - beta)^T Sigma (u - beta): the test error of a fitted probe on an infinite test
    set (a probe on P x with normalization (mean, scale) has beta = P^T v / scale and
    c = intercept - v . mean / scale).

    Args:
        coefficients: beta, (d,).
        offset: c, ().
        target_coefficients: u, (d,).
        covariance: Sigma, (d, d).

    Returns:
        () risk.
    """
    difference = jnp.asarray(target_coefficients) - jnp.asarray(coefficients)
    return jnp.asarray(offset) ** 2 + difference @ jnp.asarray(covariance) @ difference


# ----------------------------------------------------------------------------------------------
# Probing every layer of a network on fresh downstream samples


class LayerProbes(NamedTuple):
    """Probe outcomes at every layer 0..L (leading point or seed axis when vmapped).

    Attributes:
        mse: test MSE on n_test fresh samples, (L+1,).
        r2: 1 - mse / test variance of y, (L+1,).
        fitted_risk: exact risk of the fitted probe under N(0, diag(b_ds)) (an infinite test set;
            isolates the training-sample error), (L+1,).
    """

    mse: jax.Array
    r2: jax.Array
    fitted_risk: jax.Array


def sample_downstream(key: jax.Array, downstream_second_moment, n: int) -> jax.Array:
    """n inputs x_ds ~ N(0, diag(b_ds)), shape (n, d)."""
    b_ds = jnp.asarray(downstream_second_moment)
    return jnp.sqrt(b_ds)[None, :] * jax.random.normal(key, (n, b_ds.shape[0]), b_ds.dtype)


def _probe_data(key, b_ds, target, n_train, n_test):
    """Probe inputs and standardized target x_j / sqrt(b_j) (train from stream 0, test from 1), and
    the normalization floor for an empty layer."""
    x_train = sample_downstream(draws.fold_in(key, _TRAIN_STREAM), b_ds, n_train)
    x_test = sample_downstream(draws.fold_in(key, _TEST_STREAM), b_ds, n_test)
    scale = jnp.sqrt(b_ds[target])
    return x_train, x_train[:, target] / scale, x_test, x_test[:, target] / scale, _EMPTY_LAYER_FRACTION * jnp.sum(b_ds)


@functools.partial(jax.jit, static_argnames=("n_train", "n_test"))
def probe_layers(params, key, downstream_second_moment, ridge, target, *, n_train: int,
                 n_test: int) -> LayerProbes:
    """Fit and score the normalized ridge probe at every layer 0..L of one deep linear network.

    Args:
        params: tuple of L weight matrices.
        key: probe key; training inputs use fold_in(key, 0), test inputs fold_in(key, 1).
        downstream_second_moment: b_ds, (d,).
        ridge: probe penalty >= 0.
        target: feature index j (traced: changing it does not recompile).
        n_train, n_test: sample counts (static).

    Returns:
        LayerProbes with (L+1,) fields. vmap over `key` for several seeds.
    """
    b_ds = jnp.asarray(downstream_second_moment)
    d = b_ds.shape[0]
    x_train, y_train, x_test, y_test, floor = _probe_data(key, b_ds, target, n_train, n_test)
    maps = (jnp.eye(d, dtype=b_ds.dtype),) + layer_maps(params)
    u = jnp.zeros(d, b_ds.dtype).at[target].set(1.0 / jnp.sqrt(b_ds[target]))  # y = u . x
    mse, r2, fitted = [], [], []
    for P in maps:
        h_train, h_test = x_train @ P.T, x_test @ P.T
        mean, scale = representation_normalization(h_train, min_total_variance=floor)
        fit = ridge_probe((h_train - mean[None, :]) / scale, y_train, (h_test - mean[None, :]) / scale, y_test, ridge)
        beta = P.T @ fit.weights / scale
        offset = fit.intercept - fit.weights @ mean / scale
        mse.append(fit.mse)
        r2.append(fit.r2)
        fitted.append(affine_predictor_risk(beta, offset, u, jnp.diag(b_ds)))
    return LayerProbes(jnp.stack(mse), jnp.stack(r2), jnp.stack(fitted))


@functools.partial(jax.jit, static_argnames=("n_train", "n_test"))
def probe_layers_batch(params, keys, downstream_second_moments, ridges, targets, *, n_train: int,
                       n_test: int) -> LayerProbes:
    """:func:`probe_layers` vmapped over the leading (point) axis of every argument (one program)."""
    probe = functools.partial(probe_layers, n_train=n_train, n_test=n_test)
    return jax.vmap(probe)(params, keys, downstream_second_moments, ridges, targets)


def probe_representations(represent: Callable, key, downstream_second_moment, ridge, target, *, n_train: int,
                          n_test: int) -> jax.Array:
    """Test MSE of the normalized ridge probe on each representation of any (non-linear) network.

    The same inputs, target, normalization and probe as :func:`probe_layers` (same key streams),
    for networks that are not a product of matrices (e.g. a learned ReLU head).

    Args:
        represent: ``x (n, d) -> tuple of (n, m_l) representations`` (traceable).
        key, downstream_second_moment, ridge, target, n_train, n_test: as :func:`probe_layers`.

    Returns:
        (number of representations,) test MSEs.
    """
    x_train, y_train, x_test, y_test, floor = _probe_data(key, jnp.asarray(downstream_second_moment), target,
                                                          n_train, n_test)
    mse = []
    for h_train, h_test in zip(represent(x_train), represent(x_test)):
        mean, scale = representation_normalization(h_train, min_total_variance=floor)
        mse.append(ridge_probe((h_train - mean[None, :]) / scale, y_train, (h_test - mean[None, :]) / scale, y_test,
                               ridge).mse)
    return jnp.stack(mse)
