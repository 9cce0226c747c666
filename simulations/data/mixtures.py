"""Labelled synthetic data for supervised (contrastive) learning: Gaussian mixtures of subclasses.

Every distribution here is a mixture of S Gaussian components ("subclasses")

    x = m_s + noise_std * e,   e ~ N(0, I_d),   s ~ Categorical(weights),

and each component carries three labels: its coarse class ``coarse[s]`` (what the network is
trained on), a fine code ``fine[s]`` in {+1, -1} (which subclass of its coarse class it is; 0 when
it has none) and a group ``group[s]`` (the unit of worst-group accuracy). An optional augmentation
adds independent N(0, augment_std^2 I) noise to every view, so two same-class samples are a
positive pair of supervised contrastive learning.

Presets:

* :func:`coarse_to_fine`: coarse class c is the union of two subclasses at +mu e_c and -mu e_c
  (c = 0..C-1). Every class mean is 0 along e_c, so no linear readout of x tells the classes
  apart or merges the subclasses: a ReLU layer must build relu(+x_c) and relu(-x_c), and a head
  that adds them sees |x_c| only. ``class_offset`` nu > 0 adds a weak linear class signal nu e_(C+c)
  (the class means that linear networks learn; see theory.supervised).
* :func:`spurious`: a binary label y and a binary spurious attribute a. The core feature is the
  label's own non-linear signature (y = 0: x_0 = +-mu_core, y = 1: x_0 ~ 0, as in coarse_to_fine),
  the spurious feature is linear, x_1 = +mu_spurious if a = 1 else -mu_spurious. Groups are
  (y, a), group = 2 y + a; ``agreement`` is P(a = y): 0.5 makes every group equally likely (the
  group-balanced test and retraining data), close to 1 is a strong spurious correlation.

Population moments of these mixtures (A, B of supervised contrastive learning) are closed forms
in :mod:`theory.supervised`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simulations import draws
from theory.checks import check_float, check_int


class Mixture(NamedTuple):
    """A labelled Gaussian mixture (a pytree of arrays: vmap/jit friendly).

    Attributes:
        means: m_s, (S, d).
        weights: P(s), (S,), sums to 1.
        noise_std: per-coordinate noise std, (d,).
        coarse: coarse class of each component, (S,) int in [0, C).
        fine: fine code within its coarse class, (S,) in {+1, -1, 0}.
        group: group of each component, (S,) int.
    """

    means: jax.Array
    weights: jax.Array
    noise_std: jax.Array
    coarse: jax.Array
    fine: jax.Array
    group: jax.Array


class Samples(NamedTuple):
    """n labelled samples: x (n, d), coarse (n,) int, fine (n,) float, group (n,) int."""

    x: jax.Array
    coarse: jax.Array
    fine: jax.Array
    group: jax.Array


def sample(mixture: Mixture, key: jax.Array, n: int, *, augment_std=0.0) -> Samples:
    """n i.i.d. samples of a mixture, each with its own augmentation noise.

    Args:
        mixture: the distribution.
        key: PRNG key (component choice and noise use named splits 0 and 1).
        n: sample count (static).
        augment_std: std of the additive Gaussian augmentation of each view (may be traced).

    Returns:
        Samples.
    """
    means = jnp.asarray(mixture.means)
    weights = jnp.asarray(mixture.weights)
    logits = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
    component = jax.random.categorical(draws.fold_in(key, 0), logits, shape=(n,))
    scale = jnp.sqrt(jnp.asarray(mixture.noise_std) ** 2 + jnp.asarray(augment_std) ** 2)
    noise = jax.random.normal(draws.fold_in(key, 1), (n, means.shape[1]), means.dtype)
    x = means[component] + scale.reshape((1,) * (noise.ndim - scale.ndim) + scale.shape) * noise
    return Samples(x, jnp.asarray(mixture.coarse)[component], jnp.asarray(mixture.fine)[component],
                   jnp.asarray(mixture.group)[component])


def _float_array(values) -> np.ndarray:
    return np.asarray(values, dtype=jax.dtypes.canonicalize_dtype(np.float64))


def coarse_to_fine(*, dim: int, num_classes: int = 2, separation: float = 1.0, noise_std: float = 0.2,
                   class_offset: float = 0.0) -> Mixture:
    """Coarse classes that are unions of two subclasses at +-separation e_c.

    Component 2c + j (j = 0: fine +1, j = 1: fine -1) has mean (+-separation) e_c + class_offset
    e_(C + c); all components are equally likely; group = component index.

    Args:
        dim: d >= C (>= 2C when class_offset > 0).
        num_classes: C >= 2 coarse classes.
        separation: mu > 0, the subclasses' distance from the origin.
        noise_std: isotropic noise std sigma >= 0.
        class_offset: nu >= 0, a linear class signal along e_(C + c).

    Returns:
        Mixture with S = 2C components.
    """
    C = check_int("num_classes", num_classes, minimum=2)
    d = check_int("dim", dim, minimum=C)
    mu = check_float("separation", separation, minimum=0.0, strict_minimum=True)
    sigma = check_float("noise_std", noise_std, minimum=0.0)
    nu = check_float("class_offset", class_offset, minimum=0.0)
    if nu > 0 and d < 2 * C:
        raise ValueError(f"dim must be >= 2 num_classes = {2 * C} when class_offset > 0, got {d}")
    means = np.zeros((2 * C, d))
    for c in range(C):
        means[2 * c, c], means[2 * c + 1, c] = mu, -mu
        if nu > 0:
            means[2 * c:2 * c + 2, C + c] = nu
    return Mixture(_float_array(means), _float_array(np.full(2 * C, 1.0 / (2 * C))), _float_array(np.full(d, sigma)),
                   np.repeat(np.arange(C), 2), _float_array(np.tile([1.0, -1.0], C)), np.arange(2 * C))


def spurious(*, dim: int, core: float = 1.0, spurious_strength: float = 1.0, noise_std: float = 0.3,
             agreement: float = 0.5) -> Mixture:
    """Binary label with a non-linear core feature and a linear spurious feature.

    Components (y, a, sign): y = 0 has x_0 = sign * core (two subclasses), y = 1 has x_0 = 0;
    x_1 = (2a - 1) spurious_strength; P(y) = 1/2, P(a = y | y) = agreement. Group = 2 y + a.

    Args:
        dim: d >= 2 (coordinates >= 2 are pure noise).
        core: mu_core > 0.
        spurious_strength: mu_spurious >= 0.
        noise_std: isotropic noise std >= 0.
        agreement: P(a = y) in [0, 1].

    Returns:
        Mixture with S = 6 components and 4 groups.
    """
    d = check_int("dim", dim, minimum=2)
    mu_core = check_float("core", core, minimum=0.0, strict_minimum=True)
    mu_sp = check_float("spurious_strength", spurious_strength, minimum=0.0)
    sigma = check_float("noise_std", noise_std, minimum=0.0)
    p = check_float("agreement", agreement, minimum=0.0, maximum=1.0)
    means, weights, coarse, fine, group = [], [], [], [], []
    for y in (0, 1):
        for a in (0, 1):
            p_group = 0.5 * (p if a == y else 1.0 - p)
            signs = (1.0, -1.0) if y == 0 else (0.0,)
            for sign in signs:
                mean = np.zeros(d)
                mean[0] = sign * mu_core
                mean[1] = (2 * a - 1) * mu_sp
                means.append(mean)
                weights.append(p_group / len(signs))
                coarse.append(y)
                fine.append(sign)
                group.append(2 * y + a)
    return Mixture(_float_array(means), _float_array(weights), _float_array(np.full(d, sigma)), np.asarray(coarse),
                   _float_array(fine), np.asarray(group))


def with_agreement(mixture: Mixture, agreement) -> Mixture:
    """The :func:`spurious` mixture with P(a = y) replaced (may be traced): same means, new weights."""
    group = jnp.asarray(mixture.group)
    y, a = group // 2, group % 2
    per_group = 0.5 * jnp.where(a == y, agreement, 1.0 - agreement)
    members = jnp.sum(group[:, None] == group[None, :], axis=1)
    return mixture._replace(weights=per_group / members)


def rotate(mixture: Mixture, rotation) -> Mixture:
    """The mixture of Q x (Q orthogonal, (d, d)); needs isotropic noise, which Q leaves unchanged."""
    rotation = jnp.asarray(rotation)
    noise = np.asarray(mixture.noise_std)
    if not np.allclose(noise, noise[0]):
        raise ValueError(f"rotate needs isotropic noise (equal noise_std), got {noise.tolist()}")
    return mixture._replace(means=jnp.asarray(mixture.means) @ rotation.T)


# ----------------------------------------------------------------------------------------------
# Traced strengths: the supervised experiment's two tasks with traced (vmapped) parameters

#: The supervised experiment's tasks.
TASKS = ("coarse_to_fine", "shift")


def task_templates(task: str, dim: int, num_classes: int):
    """(unit-strength mixture, (first, second) mean templates): the task's means are linear in its strengths.

    coarse_to_fine: means = separation * first + class_offset * second; shift: means = core *
    first + spurious_strength * second (the :func:`spurious` mixture at agreement 1/2).
    """
    if task == "coarse_to_fine":
        base = coarse_to_fine(dim=dim, num_classes=num_classes, separation=1.0, noise_std=0.0)
        offset = np.zeros_like(base.means)
        if dim >= 2 * num_classes:
            offset = np.asarray(coarse_to_fine(dim=dim, num_classes=num_classes, separation=1.0, noise_std=0.0,
                                               class_offset=1.0).means) - np.asarray(base.means)
        return base, (np.asarray(base.means), offset)
    base = spurious(dim=dim, core=1.0, spurious_strength=1.0, noise_std=0.0, agreement=0.5)
    means = np.asarray(base.means)
    core, spurious_part = means.copy(), means.copy()
    core[:, 1:] = 0.0
    spurious_part[:, :1] = 0.0
    spurious_part[:, 2:] = 0.0
    return base, (core, spurious_part)


def task_mixtures(task: str, dim: int, num_classes: int, strengths) -> tuple[Mixture, Mixture]:
    """(training mixture, group-balanced evaluation mixture) of a task at traced strengths.

    Args:
        task: "coarse_to_fine" or "shift".
        dim, num_classes: static shapes.
        strengths: mapping with (possibly traced) "noise_std", "separation" and "class_offset"
            (coarse_to_fine) or "spurious_strength" and "agreement" (shift).
    """
    base, (first, second) = task_templates(task, dim, num_classes)
    noise = strengths["noise_std"] * jnp.ones(dim)
    if task == "coarse_to_fine":
        means = strengths["separation"] * first + strengths["class_offset"] * second
        mixture = base._replace(means=means, noise_std=noise, weights=jnp.asarray(base.weights))
        return mixture, mixture
    means = strengths["separation"] * first + strengths["spurious_strength"] * second
    balanced = base._replace(means=means, noise_std=noise, weights=jnp.asarray(base.weights))
    return with_agreement(balanced, strengths["agreement"]), balanced


def num_groups(task: str, dim: int, num_classes: int) -> int:
    """Number of groups of a task's mixture (the unit of worst-group accuracy)."""
    return int(np.max(np.asarray(task_templates(task, dim, num_classes)[0].group))) + 1


def class_weights(mixture: Mixture, num_classes: int) -> jax.Array:
    """pi_c of a mixture (traceable), (C,)."""
    return jax.ops.segment_sum(jnp.asarray(mixture.weights), jnp.asarray(mixture.coarse), num_segments=num_classes)
