"""Downstream probes: when the pre-projection representation beats the post-projection one.

Run:  python -m simulations downstream --pos-cov 0.9,0.5,0.8 --second-moment 1,0.6,2 --target 2 --json
Expected runtime: a few seconds on 2 CPU cores (first call includes ~5-10 s of compilation).

The network is trained exactly as in the `weighting` experiment (same config, init, loss, flow and
weight-decay handling). Then n_train downstream inputs x_ds ~ N(0, diag(b_ds)) go through it; at
every layer (0 = raw input, L-1 = pre, L = post) the representation is centred and divided by
the square root of its training total variance, and a ridge probe (simulations.probe) is fitted
to the standardized target y = x_ds_j / sqrt(b_ds_j). Its test mean squared error on n_test fresh
samples is `measured`; the closed form (theory.downstream.probe_risk) of the trained weights is
`predicted`: (ridge / (q_j + ridge))^2 with q_j = w_j^2 b_ds_j / sum_k w_k^2 b_ds_k.

Pre beats post (any ridge > 0) iff w_j < sum_k b_ds_k w_k^2 / sum_k b_ds_k w_k with w the post
(end-to-end) weights, sqrt(a_k) / b_k without weight decay; see theory.downstream.

Sizes of the errors: test-set noise ~ sqrt(2) MSE / sqrt(n_test) (<= 0.0045 at the default
100,000); the training-sample error shrinks like 1 / sqrt(n_train) (~0.002 at 20,000): the ridge
solution does not minimize the test error, so its estimation error enters at first order.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import NamedTuple

import jax
import numpy as np

from simulations import models
from simulations.draws import stream_key
from simulations.experiment import Command, Experiment, check_one_shape, point, run
from simulations.experiments import weighting
from simulations.flow import FlowOptions
from simulations.probe import LayerProbes, probe_layers_batch
from theory import downstream as downstream_theory
from theory.checks import as_finite_array, check_float, check_int

#: Fresh test samples per probe. Test-set noise in the MSE is about sqrt(2) MSE / sqrt(n_test):
#: 0.0045 at MSE = 1 (a dead target), so the 0.02 agreement holds with > 4 standard deviations.
DEFAULT_N_TEST = 100_000
#: Training samples per probe (the agreement tolerance 0.02 is stated at this size).
DEFAULT_N_TRAIN = 20_000
#: Probe penalty: the same order as a typical variance share q_j (1 / d), so errors are O(0.1).
DEFAULT_RIDGE = 0.1

_PROBE_STREAM = 1  # named key stream (fold_in) of the probe samples; 0 is the network's init
# Trained vs predicted per-feature weights beyond this (converged flows agree to ~1e-4) mean the
# network ended somewhere the closed form does not describe; the report warns on stderr.
_WEIGHT_WARNING = 1e-2


@dataclasses.dataclass(frozen=True, kw_only=True)
class DownstreamConfig:
    """One downstream experiment (pretraining as in WeightingConfig, then a probe per layer).

    Attributes:
        pos_cov: comma-separated a_i = E[x_i x+_i] (pretraining positive-pair covariance).
        second_moment: comma-separated b_i = E[x_i^2] (pretraining; > 0, |a_i| <= b_i).
        target: index j of the downstream target y = x_j / sqrt(b_ds_j).
        downstream_second_moment: comma-separated b_ds_i of the downstream inputs (>= 0, > 0 at
            the target) (default: second_moment).
        ridge: probe ridge penalty on the variance-normalized representation (>= 0).
        depth: number of layers L >= 1.
        layer: the 'pre' layer to compare with post = L; 0 is the raw input (default: L-1).
        n_train: probe training samples (>= 2).
        n_test: fresh test samples (>= 2).
        width: width of every layer (default: d).
        weight_decay: pretraining penalty (wd/2) sum_l ||W_l||_F^2 (not the ridge).
        init: network initialization (see the weighting experiment).
        init_scale: per-layer singular value eps of the init (with weight decay it decides the
            basin: features whose unstable root exceeds it die).
        seed: seed of the init and the probe samples.
    """

    pos_cov: tuple[float, ...] = (0.9, 0.5, 0.8)
    second_moment: tuple[float, ...] = (1.0, 0.6, 2.0)
    target: int = 2
    downstream_second_moment: tuple[float, ...] | None = None
    ridge: float = DEFAULT_RIDGE
    depth: int = 2
    layer: int | None = None
    n_train: int = DEFAULT_N_TRAIN
    n_test: int = DEFAULT_N_TEST
    width: int | None = None
    weight_decay: float = 0.0
    init: str = dataclasses.field(default=models.DEFAULT_INIT, metadata={"choices": models.INITS})
    init_scale: float = models.DEFAULT_INIT_SCALE
    seed: int = 0

    def __post_init__(self):
        pretraining = self.weighting  # validates the shared fields with WeightingConfig's rules
        d = pretraining.dim
        object.__setattr__(self, "pos_cov", pretraining.pos_cov)
        object.__setattr__(self, "second_moment", pretraining.second_moment)
        if isinstance(self.target, bool) or not isinstance(self.target, (int, np.integer)) \
                or not 0 <= self.target < d:
            raise ValueError(f"target must be a feature index in [0, {d - 1}], got {self.target!r}")
        object.__setattr__(self, "target", int(self.target))
        if self.downstream_second_moment is not None:
            b_ds = as_finite_array("downstream_second_moment", self.downstream_second_moment, ndim=1)
            if b_ds.size != d:
                raise ValueError(f"downstream_second_moment must have {d} entries (one per feature), "
                                 f"got {b_ds.size}")
            if np.any(b_ds < 0) or b_ds[self.target] <= 0:
                raise ValueError(f"downstream_second_moment must be >= 0 and > 0 at the target "
                                 f"{self.target}, got {b_ds.tolist()}")
            object.__setattr__(self, "downstream_second_moment", tuple(float(v) for v in b_ds))
        object.__setattr__(self, "ridge", check_float("ridge", self.ridge, minimum=0.0))
        if self.layer is not None:
            if isinstance(self.layer, bool) or not isinstance(self.layer, (int, np.integer)) \
                    or not 0 <= self.layer <= self.depth:
                raise ValueError(f"layer must be an index in [0, {self.depth}] (0 = raw input, "
                                 f"{self.depth} = post), got {self.layer!r}")
            object.__setattr__(self, "layer", int(self.layer))
        check_int("n_train", self.n_train, minimum=2)
        check_int("n_test", self.n_test, minimum=2)

    @functools.cached_property
    def weighting(self) -> weighting.WeightingConfig:
        """The pretraining run, shared with the `weighting` experiment (built and validated once)."""
        return weighting.WeightingConfig(pos_cov=self.pos_cov, second_moment=self.second_moment,
                                         depth=self.depth, width=self.width, weight_decay=self.weight_decay,
                                         init=self.init, init_scale=self.init_scale, seed=self.seed)

    @property
    def pre_layer(self) -> int:
        return self.depth - 1 if self.layer is None else self.layer

    @property
    def downstream(self) -> np.ndarray:
        """b_ds, (d,)."""
        return np.asarray(self.downstream_second_moment or self.second_moment, dtype=np.float64)

    @classmethod
    def quick(cls, **overrides) -> DownstreamConfig:
        """A seconds-long smoke-test configuration."""
        return cls(**{"init_scale": 0.3, "n_train": 2_000, "n_test": 20_000, **overrides})


class LayerResult(NamedTuple):
    """One compared layer (pre or post): its index, measured and predicted test MSE and R^2."""

    layer: np.ndarray
    measured: np.ndarray
    predicted: np.ndarray
    measured_r2: np.ndarray
    predicted_r2: np.ndarray


#: The pretraining flow's :class:`weighting.Diagnostics` fields, the probe sizes, the largest
#: |trained - predicted| per-feature weight and whether the predicted state is a saddle
#: (theory.downstream.basin_is_saddle); one entry per point when batched.
Diagnostics = NamedTuple("Diagnostics", [(name, np.ndarray) for name in weighting.Diagnostics._fields + (
    "n_train", "n_test", "max_weight_error", "predicted_state_is_saddle")])


class DownstreamResult(NamedTuple):
    """Probe errors at every layer 0..L of trained networks (leading point axis when batched).

    Attributes:
        layers: 0..L; measured, predicted: test MSE of the probe and its closed form; measured_r2,
            predicted_r2: 1 - MSE / Var(y); fitted_risk: the fitted probes' exact risk (an infinite
            test set); all (L+1,).
        measured_weights, predicted_weights: |P_l e_i| of the trained net / theory (row 0: the raw
            input), (L+1, d).
        pre, post: :class:`LayerResult` of the compared layers; pre_beats_post: the derived
            condition on the predicted weights (bool); diagnostics: :class:`Diagnostics`.
    """

    layers: np.ndarray
    measured: np.ndarray
    predicted: np.ndarray
    measured_r2: np.ndarray
    predicted_r2: np.ndarray
    fitted_risk: np.ndarray
    measured_weights: np.ndarray
    predicted_weights: np.ndarray
    pre: LayerResult
    post: LayerResult
    pre_beats_post: np.ndarray
    diagnostics: Diagnostics

    #: Names of the array axes after the point axis (the sweep's labelled Dataset uses them).
    DIMS = {**{name: ("layer",) for name in ("layers", "measured", "predicted", "measured_r2", "predicted_r2",
                                             "fitted_risk")},
            "measured_weights": ("layer", "feature"), "predicted_weights": ("layer", "feature")}


class Prediction(NamedTuple):
    """Closed-form per-layer weights (L+1, d), probe MSE and R^2 (L+1,) of :func:`predict`."""

    weights: np.ndarray
    mse: np.ndarray
    r2: np.ndarray


def train_network(config: weighting.WeightingConfig, *, options: FlowOptions | None = None):
    """(trained layers: tuple of L matrices, :class:`weighting.Diagnostics`) of the `weighting` network."""
    result, params = weighting.fit([config], options=options)
    return point(params, 0), point(result.diagnostics, 0)


def _prediction(config: DownstreamConfig, layer_weights) -> Prediction:
    weights = np.vstack([np.ones(config.weighting.dim), layer_weights])
    mse = np.asarray(downstream_theory.probe_risk(weights, config.downstream, config.target, config.ridge))
    return Prediction(weights, mse, 1.0 - mse)


def predict(config: DownstreamConfig) -> Prediction:
    """Closed-form per-layer weights (L+1, d), probe MSE and R^2 (L+1,) matching run_downstream."""
    return _prediction(config, weighting.predict(config.weighting).weights)


def shape_key(config: DownstreamConfig) -> tuple:
    """The fields that change array shapes: configs with equal keys run as one batch."""
    return (config.weighting.dim, config.weighting.widths, config.init, config.n_train, config.n_test)


def run_batch(configs, *, options: FlowOptions | None = None, place=None) -> DownstreamResult:
    """Train and probe many configs of one shape_key: one vmapped flow, one vmapped probe.

    Seeds, moments, ridges, targets, init scales and weight decays are traced (changing them
    never recompiles). ``place`` (sweep engine) is applied to the stacked per-point arrays.
    """
    check_one_shape(EXPERIMENT, configs)
    trained, params = weighting.fit([c.weighting for c in configs], options=options, place=place)
    with jax.enable_x64(True):
        keys = np.stack([np.asarray(stream_key(c.seed, _PROBE_STREAM)) for c in configs])
        b_ds = np.stack([np.asarray(c.downstream, np.float64) for c in configs])
        batch = (params, keys, b_ds, np.asarray([c.ridge for c in configs], dtype=b_ds.dtype),
                 np.asarray([c.target for c in configs]))
        if place is not None:
            batch = place(batch)
        probes = LayerProbes(*(np.asarray(field) for field in probe_layers_batch(
            *batch, n_train=configs[0].n_train, n_test=configs[0].n_test)))
    points = [_point(config, trained, probes, index) for index, config in enumerate(configs)]
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *points)  # NumPy: no dtype change


def _point(config: DownstreamConfig, trained: weighting.WeightingResult, probes: LayerProbes,
           index: int) -> DownstreamResult:
    """One point's result from the batch's weighting run and probes."""
    measured_weights = np.vstack([np.ones(config.weighting.dim), trained.measured[index]])
    prediction = _prediction(config, trained.predicted[index])
    end_to_end, mse, r2 = prediction.weights[-1], probes.mse[index], probes.r2[index]
    condition = downstream_theory.pre_beats_post(end_to_end, config.downstream, config.target,
                                                 depth=config.depth, pre_layer=config.pre_layer)
    saddle = downstream_theory.basin_is_saddle(config.pos_cov, config.second_moment, end_to_end)
    entry = lambda layer: LayerResult(np.int64(layer), mse[layer], prediction.mse[layer], r2[layer],
                                      prediction.r2[layer])
    return DownstreamResult(
        layers=np.arange(config.depth + 1), measured=mse, predicted=prediction.mse, measured_r2=r2,
        predicted_r2=prediction.r2, fitted_risk=probes.fitted_risk[index], measured_weights=measured_weights,
        predicted_weights=prediction.weights, pre=entry(config.pre_layer), post=entry(config.depth),
        pre_beats_post=np.bool_(condition), diagnostics=Diagnostics(
            **point(trained.diagnostics, index)._asdict(), n_train=np.int64(config.n_train),
            n_test=np.int64(config.n_test), predicted_state_is_saddle=np.bool_(saddle),
            max_weight_error=np.float64(np.max(np.abs(measured_weights - prediction.weights)))))


def run_downstream(config: DownstreamConfig, *, options: FlowOptions | None = None) -> DownstreamResult:
    """Train the network, probe every layer on fresh downstream samples, compare with theory (one point)."""
    return run(EXPERIMENT, config, options=options)


def report(result: DownstreamResult, config: DownstreamConfig) -> dict:
    """The JSON of ``python -m simulations downstream --json`` ({"pre": {...}, "post": {...}}); warns on
    stderr when the flow did not converge or the trained weights are not the predicted ones."""
    d = weighting.to_record(result.diagnostics)
    if not d["converged"]:
        print("warning: gradient flow did not reach a certified steady state", file=sys.stderr)
    if d["max_weight_error"] > _WEIGHT_WARNING:
        print(f"warning: the trained layer weights differ from the closed form by up to "
              f"{d['max_weight_error']:.3g}, so `predicted` does not describe this network "
              f"(predicted state is a saddle: {d['predicted_state_is_saddle']}; see "
              f"theory.downstream.basin_is_saddle)", file=sys.stderr)
    return {"pre": weighting.to_record(result.pre), "post": weighting.to_record(result.post)}


def table(result: DownstreamResult, config: DownstreamConfig) -> str:
    """Readable per-layer table of measured vs predicted probe error."""
    lines = ["layer  role    measured MSE  predicted MSE  measured R2  predicted R2"]
    pre, post = int(result.pre.layer), int(result.post.layer)
    for layer in result.layers:
        role = "post" if layer == post else "pre" if layer == pre else "input" if layer == 0 else ""
        lines.append(f"{layer:5d}  {role:5s}  {result.measured[layer]:12.5f}  {result.predicted[layer]:13.5f}"
                     f"  {result.measured_r2[layer]:11.5f}  {result.predicted_r2[layer]:12.5f}")
    verdict = "pre beats post" if result.pre_beats_post else "pre does not beat post"
    d = weighting.to_record(result.diagnostics)
    lines.append(f"theory: {verdict}; n_train={d['n_train']} n_test={d['n_test']} converged={d['converged']}")
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="downstream", config=DownstreamConfig, run_batch=run_batch, result=DownstreamResult, shape_key=shape_key,
    predict=predict, report=report, table=table, presets=weighting.PRESETS,
    command=Command(required=("pos_cov", "second_moment", "target")), doc=__doc__)
