"""Layer-wise progressive feature weighting: train a deep linear net, compare with theory.

Run:  python -m simulations weighting --pos-cov 0.9,0.5,0.8 --second-moment 1,0.6,2 --depth 2 --json
Expected runtime: a few seconds on 2 CPU cores (first call includes ~5-10 s of compilation).

The network is trained on the exact population spectral loss by gradient flow to a certified
steady state; the measured per-feature weights ||P_l e_i|| come from the trained network and are
compared with theory.linear.layer_weights (or the weight-decay basin prediction).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from simulations import measure, models
from simulations.draws import stream_key
from simulations.experiment import Command, Experiment, check_one_shape, per_distinct, run, stack
from simulations.flow import FlowOptions, gradient_flow
from simulations.losses import spectral_population_loss, weight_decay_penalty
from theory import linear as linear_theory
from theory import weight_decay as wd_theory
from theory.checks import check_choice, check_float, check_int
from theory.moments import validate_moments

PRECISIONS = ("float64", "float32")
#: The flow's default settings, built (and validated) once instead of on every solve.
DEFAULT_OPTIONS = FlowOptions()


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightingConfig:
    """One weighting experiment (diagonal features; every default documented here and in --help).

    Attributes:
        pos_cov: comma-separated a_i = E[x_i x+_i] (positive-pair covariance), one per feature.
        second_moment: comma-separated b_i = E[x_i^2] (> 0, |a_i| <= b_i).
        depth: number of layers L >= 1.
        width: width of every layer (default: d, wide enough to learn every positive feature).
        weight_decay: penalty (wd/2) sum_l ||W_l||_F^2.
        init: balanced: exact, random orientation; gaussian: N(0, eps^2/fan_in) entries; aligned:
            balanced and diagonal in the feature basis (the per-feature theory is exact).
        init_scale: per-layer singular value eps of the init (balanced) or its scale (gaussian).
        seed: initialization seed.
        precision: float64 (needed for 1e-3 agreement with theory) or float32.
    """

    pos_cov: tuple[float, ...] = (0.9, 0.5, 0.8)
    second_moment: tuple[float, ...] = (1.0, 0.6, 2.0)
    depth: int = 2
    width: int | None = None
    weight_decay: float = 0.0
    init: str = dataclasses.field(default=models.DEFAULT_INIT, metadata={"choices": models.INITS})
    init_scale: float = models.DEFAULT_INIT_SCALE
    seed: int = 0
    precision: str = dataclasses.field(default="float64", metadata={"choices": PRECISIONS})

    def __post_init__(self):
        moments = validate_moments(self.pos_cov, self.second_moment)
        if moments.pos_cov.ndim != 2 or np.asarray(self.pos_cov).ndim != 1:
            raise ValueError("pos_cov must be a vector of per-feature values")
        object.__setattr__(self, "pos_cov", tuple(float(v) for v in self.pos_cov))
        object.__setattr__(self, "second_moment", tuple(float(v) for v in self.second_moment))
        check_int("depth", self.depth, minimum=1)
        if self.width is not None:
            check_int("width", self.width, minimum=1)
        check_float("weight_decay", self.weight_decay, minimum=0.0)
        check_choice("init", self.init, models.INITS)
        check_float("init_scale", self.init_scale, minimum=0.0, strict_minimum=True)
        check_int("seed", self.seed, minimum=0)
        check_choice("precision", self.precision, PRECISIONS)

    @property
    def dim(self) -> int:
        return len(self.pos_cov)

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.width or self.dim,) * self.depth

    @classmethod
    def quick(cls, **overrides) -> WeightingConfig:
        """A seconds-long smoke-test configuration."""
        return cls(**{"depth": 2, "init_scale": 0.3, **overrides})


class Diagnostics(NamedTuple):
    """How each gradient flow ended (one entry per point when batched): converged (a certified steady
    state), flow time t_final, integrator steps, final loss, the predicted weights' closed-form
    predicted_loss, the smallest Hessian eigenvalue min_curvature, saddle-escape restarts, and
    at_saddle (ended on a certified saddle)."""

    converged: np.ndarray
    t_final: np.ndarray
    steps: np.ndarray
    loss: np.ndarray
    predicted_loss: np.ndarray
    min_curvature: np.ndarray
    restarts: np.ndarray
    at_saddle: np.ndarray


class WeightingResult(NamedTuple):
    """Measured and predicted per-feature weights of trained networks (leading point axis when batched).

    Attributes:
        measured, predicted: ||P_l e_i||, (L, d).
        measured_stds, predicted_stds: per-feature standard deviations weight * sqrt(b_i), (L, d).
        effective_rank: entropy effective rank of every layer's representation, (L,).
        predicted_effective_rank: its closed form, (L,) (NaN under weight decay: no closed form).
        diagnostics: :class:`Diagnostics`.
        trajectory: measured weights at ``times``, (T, L, d), or None without times.
        times: the recorded flow times, (T,), or None.
    """

    measured: np.ndarray
    predicted: np.ndarray
    measured_stds: np.ndarray
    predicted_stds: np.ndarray
    effective_rank: np.ndarray
    predicted_effective_rank: np.ndarray
    diagnostics: Diagnostics
    trajectory: np.ndarray | None
    times: np.ndarray | None

    #: Names of the array axes after the point axis (the sweep's labelled Dataset uses them).
    DIMS = {"measured": ("layer", "feature"), "predicted": ("layer", "feature"),
            "measured_stds": ("layer", "feature"), "predicted_stds": ("layer", "feature"),
            "effective_rank": ("layer",), "predicted_effective_rank": ("layer",),
            "trajectory": ("time", "layer", "feature"), "times": ("time",)}


class Prediction(NamedTuple):
    """Closed-form weights (L, d), standard deviations (L, d) and loss of :func:`predict`."""

    weights: np.ndarray
    stds: np.ndarray
    loss: float


def population_loss(params, args) -> jax.Array:
    """Exact population spectral loss plus weight decay; ``args = (A, B, weight_decay)``."""
    pos_cov, second_moment, weight_decay = args
    return spectral_population_loss(params, pos_cov, second_moment) + weight_decay_penalty(params, weight_decay)


def feature_losses(a, b, depth, weight_decay, sigma):
    """Per-feature loss -2 a s^2 + b^2 s^4 + (wd/2) L sigma^2 with s = sigma^L (sigma: per-layer weight)."""
    s = sigma**depth
    return -2 * a * s**2 + b**2 * s**4 + 0.5 * weight_decay * depth * sigma**2


def predict(config: WeightingConfig) -> Prediction:
    """Closed-form predictions matching :func:`run_weighting`'s measurements.

    Which features can be learned: the top-p positive ratios (p = narrowest width) for random
    orientations; for ``init="aligned"`` the modes are pinned to features 0..k-1 (k = min width),
    so those with r_i > 0 are learned. With weight decay each feature ends where the aligned scalar
    flow from per-layer singular value init_scale ends (:func:`theory.weight_decay.basin_weights`)
    for aligned init (and, approximately, narrow widths); for random orientations at width >= d,
    where that state is a saddle of the full network the flow escapes it
    (:func:`theory.weight_decay.stable_end_weights`).
    """
    a, b = np.asarray(config.pos_cov), np.asarray(config.second_moment)
    width = min(config.widths)
    if config.init == "aligned":
        learnable = (np.arange(config.dim) < width) & (a > 0)
    else:
        learnable = linear_theory.learned_features(a, b, width)
    if config.weight_decay > 0 and (config.init == "aligned" or width < config.dim):
        weights = wd_theory.basin_weights(a, b, config.depth, config.weight_decay, config.init_scale)
    elif config.weight_decay > 0:
        # Random orientations escape basin states that are saddles of the full network.
        weights = wd_theory.stable_end_weights(a, b, config.depth, config.weight_decay, config.init_scale)
    else:
        weights = linear_theory.layer_weights(a, b, config.depth)
    weights = np.asarray(weights) * learnable[None, :]
    loss = float(np.sum(feature_losses(a, b, config.depth, config.weight_decay, weights[0])))
    return Prediction(weights, weights * np.sqrt(b)[None, :], loss)


def predicted_effective_rank(config: WeightingConfig) -> np.ndarray:
    """Closed-form effective rank of every layer (NaN with weight decay, where none is derived)."""
    if config.weight_decay != 0:
        return np.full(config.depth, np.nan)
    return linear_theory.effective_rank(config.pos_cov, config.second_moment, config.depth, min(config.widths))


def shape_key(config: WeightingConfig) -> tuple:
    """The fields that change array shapes: configs with equal keys run as one batch."""
    return (config.dim, config.widths, config.init, config.precision)


def flow_diagnostics(flow, predicted_loss, *, converged=None) -> Diagnostics:
    """:class:`Diagnostics` of a batched flow result (``converged``, when given, replaces the flow's flag)."""
    converged = flow.converged if converged is None else converged
    floats = {name: np.asarray(getattr(flow, name), dtype=np.float64) for name in ("t_final", "loss", "min_curvature")}
    return Diagnostics(converged=np.asarray(converged, dtype=bool), steps=np.asarray(flow.steps, dtype=np.int64),
                       predicted_loss=np.asarray(predicted_loss, dtype=np.float64),
                       restarts=np.asarray(flow.restarts, dtype=np.int64),
                       at_saddle=np.asarray(flow.at_saddle, dtype=bool), **floats)


def initial_state(configs: Sequence) -> tuple[tuple, tuple[np.ndarray, np.ndarray]]:
    """Every config's initial network and diagonal moment matrices (A, B), stacked on a leading point
    axis as host arrays, in JAX's current default float.

    ``configs`` share one shape and carry ``seed``, ``dim``, ``widths``, ``init``, ``init_scale``,
    ``pos_cov`` and ``second_moment`` (the weighting and the reweighting experiments). The network
    of a seed comes from its named stream 0 (initialization). Host arrays (NumPy) between the
    programs hold the same values as stacking on the device, without a small compiled program per
    operation and batch size.
    """
    first = configs[0]
    params0 = stack([tuple(np.asarray(W) for W in models.init_linear(
        stream_key(c.seed, 0), first.dim, first.widths, init=first.init, init_scale=c.init_scale)) for c in configs])
    dtype = params0[0].dtype
    moments = (np.stack([np.diag(np.asarray(c.pos_cov, dtype)) for c in configs]),
               np.stack([np.diag(np.asarray(c.second_moment, dtype)) for c in configs]))
    return params0, moments


def fit(configs: Sequence[WeightingConfig], *, times=None, options: FlowOptions | None = None,
        place=None) -> tuple[WeightingResult, tuple]:
    """:func:`run_batch` plus the trained layers (a tuple of L arrays with a leading point axis).

    The downstream probes and figures that need the trained network call this; everything else
    calls :func:`run_batch`.
    """
    check_one_shape(EXPERIMENT, configs)
    first = configs[0]
    with jax.enable_x64(first.precision == "float64"):
        params0, moments = initial_state(configs)
        args = (*moments, np.asarray([c.weight_decay for c in configs], dtype=params0[0].dtype))
        if place is not None:
            params0, args = place(params0), place(args)
        flow = gradient_flow(population_loss, params0, args, times=times, options=options or DEFAULT_OPTIONS,
                             batched=True)
        measured = measure.feature_weights_batch(flow.params)
        trajectory = None if times is None else measure.trajectory_feature_weights(flow.trajectory)
        predictions = per_distinct(predict, configs)
        b = np.asarray([config.second_moment for config in configs])
        effective_rank = measure.effective_rank_batch(flow.params, b)
        predicted_rank = np.stack(per_distinct(predicted_effective_rank, configs))
    result = WeightingResult(
        measured=measured, predicted=np.stack([p.weights for p in predictions]),
        measured_stds=measured * np.sqrt(b)[:, None, :], predicted_stds=np.stack([p.stds for p in predictions]),
        effective_rank=effective_rank, predicted_effective_rank=predicted_rank,
        diagnostics=flow_diagnostics(flow, [p.loss for p in predictions]), trajectory=trajectory,
        times=None if times is None else np.broadcast_to(np.asarray(times), (len(configs), len(times))).copy())
    return result, flow.params


def run_batch(configs: Sequence[WeightingConfig], *, times=None, options: FlowOptions | None = None,
              place=None) -> WeightingResult:
    """Run many configurations of one shape (d, depth, width, init, precision) as one vmapped solve.

    Seeds, moments, init scales and weight decays vary freely across ``configs``; they are traced
    arguments of one compiled program, so changing them never recompiles. ``place`` (used by the
    sweep engine) is applied to the stacked initial parameters and arguments, e.g. to shard the
    point axis across devices. ``times``: record the weights along the flow (``trajectory``).
    """
    return fit(configs, times=times, options=options, place=place)[0]


def run_weighting(config: WeightingConfig, *, times=None, options: FlowOptions | None = None) -> WeightingResult:
    """Train one network to steady state and measure every layer's per-feature weights (one point)."""
    return run(EXPERIMENT, config, times=times, options=options)


def to_record(values: NamedTuple) -> dict:
    """A NamedTuple of one point's scalars (e.g. its diagnostics) as a dict of plain Python numbers."""
    return {key: np.asarray(value).item() for key, value in values._asdict().items()}


def report(result: WeightingResult, config: WeightingConfig) -> dict:
    """The JSON object of ``python -m simulations weighting --json``: measured, predicted, diagnostics."""
    return {"measured": result.measured.tolist(), "predicted": result.predicted.tolist(),
            "diagnostics": to_record(result.diagnostics)}


def table(result: WeightingResult, config: WeightingConfig) -> str:
    """Readable per-layer, per-feature table of measured vs predicted weights."""
    measured, predicted = result.measured, result.predicted
    lines = ["layer  feature    measured   predicted   rel.err"]
    for layer in range(measured.shape[0]):
        for feature in range(measured.shape[1]):
            m, p = measured[layer, feature], predicted[layer, feature]
            err = abs(m - p) / p if p > 0 else float("nan")
            lines.append(f"{layer + 1:5d}  {feature:7d}  {m:10.6f}  {p:10.6f}  {err:9.2e}")
    d = to_record(result.diagnostics)
    lines.append(f"converged={d['converged']} t_final={d['t_final']:.4g} steps={d['steps']} "
                 f"loss={d['loss']:.10f} predicted_loss={d['predicted_loss']:.10f}")
    return "\n".join(lines)


#: ``--preset NAME`` values for the vector-valued moments (pos_cov a_i, second_moment b_i).
PRESETS = {
    "default": {"pos_cov": (0.9, 0.5, 0.8), "second_moment": (1.0, 0.6, 2.0)},
    # sign_flip, flip probabilities q = 0, 0.25, 0.5 (simulations.data.preset_pairs): r = (1 - 2q)^2.
    "sign_flip": {"pos_cov": (1.0, 0.25, 0.0), "second_moment": (1.0, 1.0, 1.0)},
    # Four unit-variance features of decreasing invariance ratio (a larger d: its own shape group).
    "ratios4": {"pos_cov": (0.9, 0.7, 0.5, 0.3), "second_moment": (1.0, 1.0, 1.0, 1.0)},
}

EXPERIMENT = Experiment(
    name="weighting", config=WeightingConfig, run_batch=run_batch, result=WeightingResult, shape_key=shape_key,
    predict=predict, report=report, table=table, presets=PRESETS,
    command=Command(required=("pos_cov", "second_moment")), doc=__doc__)
