"""Deep linear networks trained by gradient flow on exact supervised population losses.

The linear theory's testbed (theory.supervised): a linear encoder and head (and, for the squared
loss, a classifier) on the coarse_to_fine mixture (simulations.data.mixtures), trained to a
certified steady state by simulations.flow.gradient_flow, and compared layer by layer with the
closed-form Grams: the class-mean directions are learned, the subclasses merged in every layer
(a linear network cannot separate subclasses at +-mu; docs/supervised.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from simulations import draws, models
from simulations import losses as slosses
from simulations.data import mixtures as sdata
from theory import supervised as supervised_theory
from theory.checks import check_choice, check_float, check_int

#: The exact population losses a linear network is trained on.
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
    def quick(cls, **overrides) -> LinearSupervisedConfig:
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
        params0 = models.init_balanced(draws.fold_in(jax.random.PRNGKey(config.seed), 0), config.dim,
                                       config.widths, init_scale=config.init_scale)
        flow = gradient_flow(loss_fn, params0, args, options=options)
        grams = np.stack([np.asarray(P.T @ P) for P in models.layer_maps(flow.params)])
    return {"config": dataclasses.asdict(config),
            "measured": _linear_measurements(grams, m, config.num_classes),
            "predicted": predict_linear(config),
            "params": flow.params,
            "diagnostics": {"converged": bool(flow.converged), "t_final": float(flow.t_final),
                            "loss": float(flow.loss)}}
