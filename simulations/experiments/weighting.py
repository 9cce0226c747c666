"""Layer-wise progressive feature weighting: train a deep linear net, compare with theory.

Run:  python -m simulations weighting --pos-cov 0.9,0.5,0.8 --second-moment 1,0.6,2 --depth 2 --json
Expected runtime: a few seconds on 2 CPU cores (first call includes ~5-10 s of compilation).

The network is trained on the exact population spectral loss by gradient flow to a certified
steady state; the measured per-feature weights ||P_l e_i|| come from the trained network and are
compared with theory.linear.layer_weights (or the weight-decay basin prediction).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simulations import measure, models
from simulations.flow import FlowOptions, gradient_flow
from simulations.losses import spectral_population_loss, weight_decay_penalty
from theory import linear as linear_theory
from theory import weight_decay as wd_theory
from theory.checks import check_choice, check_float, check_int
from theory.moments import validate_moments

PRECISIONS = ("float64", "float32")


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightingConfig:
    """One weighting experiment (diagonal features; every default documented here and in --help).

    Attributes:
        pos_cov: a_i = E[x_i x+_i] per feature.
        second_moment: b_i = E[x_i^2] per feature (> 0, |a_i| <= b_i).
        depth: number of layers L >= 1.
        width: every layer's width; None means d (wide enough to learn every positive feature).
        weight_decay: penalty (weight_decay / 2) sum_l ||W_l||_F^2.
        init: "balanced" (exact, random orientation), "gaussian" (N(0, eps^2 / fan_in) entries) or
            "aligned" (balanced and diagonal in the feature basis: the per-feature theory is exact).
        init_scale: per-layer singular value eps (balanced) or scale (gaussian). Default 0.1.
        seed: root seed of the initialization.
        precision: "float64" (default; needed for 1e-3 agreement) or "float32".
    """

    pos_cov: tuple[float, ...] = (0.9, 0.5, 0.8)
    second_moment: tuple[float, ...] = (1.0, 0.6, 2.0)
    depth: int = 2
    width: int | None = None
    weight_decay: float = 0.0
    init: str = models.DEFAULT_INIT
    init_scale: float = models.DEFAULT_INIT_SCALE
    seed: int = 0
    precision: str = "float64"

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
    def quick(cls, **overrides) -> "WeightingConfig":
        """A seconds-long smoke-test configuration."""
        return cls(**{"depth": 2, "init_scale": 0.3, **overrides})


def population_loss(params, args) -> jax.Array:
    """Exact population spectral loss plus weight decay; ``args = (A, B, weight_decay)``."""
    pos_cov, second_moment, weight_decay = args
    return spectral_population_loss(params, pos_cov, second_moment) + weight_decay_penalty(params, weight_decay)


def predict(config: WeightingConfig) -> dict[str, Any]:
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
    loss = float(np.sum(_feature_losses(a, b, config.depth, config.weight_decay, weights[0])))
    return {"weights": weights, "stds": weights * np.sqrt(b)[None, :], "loss": loss}


def _feature_losses(a, b, depth, weight_decay, sigma):
    """Per-feature loss -2 a s^2 + b^2 s^4 + (wd/2) L sigma^2 with s = sigma^L."""
    s = sigma**depth
    return -2 * a * s**2 + b**2 * s**4 + 0.5 * weight_decay * depth * sigma**2


def run_weighting(config: WeightingConfig, *, times=None, options: FlowOptions | None = None) -> dict[str, Any]:
    """Train the network to steady state and measure every layer's per-feature weights.

    Returns a dict with ``measured`` and ``predicted`` ((L, d) weights), ``measured_stds`` /
    ``predicted_stds`` ((L, d)), ``effective_rank`` ((L,)), ``diagnostics`` (converged, t_final,
    steps, loss, predicted_loss, min_curvature, restarts), ``trajectory`` ((T, L, d) weights at
    ``times``, or None) and ``params`` (the trained layers, for downstream probes).
    """
    return run_weighting_batch([config], times=times, options=options)[0]


def run_weighting_batch(configs: Sequence[WeightingConfig], *, times=None,
                        options: FlowOptions | None = None, place=None) -> list[dict[str, Any]]:
    """Run many configurations of one shape (d, depth, width, init, precision) as one vmapped solve.

    Seeds, moments, init scales and weight decays vary freely across ``configs``; they are traced
    arguments of one compiled program, so changing them never recompiles. ``place`` (sweep
    protocol, simulations.sweep) is applied to the stacked initial parameters and arguments, e.g.
    to shard the point axis across devices.
    """
    if not configs:
        raise ValueError("configs must hold at least one WeightingConfig")
    shape = {shape_key(c) for c in configs}
    if len(shape) != 1:
        raise ValueError(f"configs must share d, widths, init and precision to run as one batch, got {sorted(shape)}")
    first = configs[0]
    with jax.enable_x64(first.precision == "float64"):
        def initialize(seed, init_scale):
            init_key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)  # named split: 0 = initialization
            return models.init_linear(init_key, first.dim, first.widths, init=first.init, init_scale=init_scale)

        params0 = [initialize(c.seed, c.init_scale) for c in configs]
        params0 = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *params0)
        args = (jnp.stack([jnp.diag(jnp.asarray(c.pos_cov)) for c in configs]),
                jnp.stack([jnp.diag(jnp.asarray(c.second_moment)) for c in configs]),
                jnp.asarray([c.weight_decay for c in configs], dtype=params0[0].dtype))
        if place is not None:
            params0, args = place(params0), place(args)
        result = gradient_flow(population_loss, params0, args, times=times, options=options, batched=True)
        measured = np.asarray(jax.vmap(measure.feature_weights)(result.params))
        trajectory = None
        if times is not None:
            trajectory = np.asarray(jax.vmap(jax.vmap(measure.feature_weights))(result.trajectory))
        outputs = []
        for index, config in enumerate(configs):
            params = jax.tree_util.tree_map(lambda leaf: leaf[index], result.params)
            prediction = predict(config)
            b = np.asarray(config.second_moment)
            outputs.append({
                "config": dataclasses.asdict(config),
                "params": params,
                "measured": measured[index],
                "predicted": prediction["weights"],
                "measured_stds": measured[index] * np.sqrt(b)[None, :],
                "predicted_stds": prediction["stds"],
                "effective_rank": measure.effective_rank(params, np.diag(b)),
                "predicted_effective_rank": linear_theory.effective_rank(
                    config.pos_cov, config.second_moment, config.depth, min(config.widths))
                if config.weight_decay == 0 else None,
                "trajectory": None if trajectory is None else trajectory[index],
                "times": None if times is None else np.asarray(times),
                "diagnostics": {
                    "converged": bool(result.converged[index]),
                    "t_final": float(result.t_final[index]),
                    "steps": int(result.steps[index]),
                    "loss": float(result.loss[index]),
                    "predicted_loss": prediction["loss"],
                    "min_curvature": float(result.min_curvature[index]),
                    "restarts": int(result.restarts[index]),
                    "at_saddle": bool(result.at_saddle[index]),
                },
            })
    return outputs


def shape_key(config: WeightingConfig) -> tuple:
    """The fields that change array shapes: configs with equal keys run as one batch."""
    return (config.dim, config.widths, config.init, config.precision)


# Sweep protocol (simulations.sweep): the config class, the saved outputs and named moment presets.
CONFIG = WeightingConfig
SWEEP_OUTPUTS = ("measured", "predicted", "measured_stds", "predicted_stds", "effective_rank",
                 "diagnostics.converged", "diagnostics.t_final", "diagnostics.steps", "diagnostics.loss",
                 "diagnostics.predicted_loss", "diagnostics.min_curvature", "diagnostics.restarts",
                 "diagnostics.at_saddle")
#: ``--preset NAME`` values for the vector-valued moments (pos_cov a_i, second_moment b_i).
SWEEP_PRESETS = {
    "default": {"pos_cov": (0.9, 0.5, 0.8), "second_moment": (1.0, 0.6, 2.0)},
    # sign_flip, flip probabilities q = 0, 0.25, 0.5 (simulations.data.preset_pairs): r = (1 - 2q)^2.
    "sign_flip": {"pos_cov": (1.0, 0.25, 0.0), "second_moment": (1.0, 1.0, 1.0)},
    # Four unit-variance features of decreasing invariance ratio (a larger d: its own shape group).
    "ratios4": {"pos_cov": (0.9, 0.7, 0.5, 0.3), "second_moment": (1.0, 1.0, 1.0, 1.0)},
}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `weighting` subcommand's flags (public contract: names and JSON keys are stable)."""
    defaults = WeightingConfig()
    parser.add_argument("--pos-cov", type=_floats, required=True,
                        help="comma-separated a_i = E[x_i x+_i] (positive-pair covariance)")
    parser.add_argument("--second-moment", type=_floats, required=True,
                        help="comma-separated b_i = E[x_i^2] (> 0, |a_i| <= b_i)")
    parser.add_argument("--depth", type=int, default=defaults.depth, help="number of layers L (default %(default)s)")
    parser.add_argument("--width", type=int, default=None, help="width of every layer (default: d)")
    parser.add_argument("--weight-decay", type=float, default=0.0,
                        help="penalty (wd/2) sum ||W_l||_F^2 (default %(default)s)")
    parser.add_argument("--init-scale", type=float, default=defaults.init_scale,
                        help="per-layer singular value eps of the init (default %(default)s)")
    parser.add_argument("--init", choices=models.INITS, default=defaults.init,
                        help="balanced: exact, random orientation; gaussian: N(0, eps^2/fan_in) entries; "
                             "aligned: balanced and diagonal in the feature basis (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="initialization seed (default %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float64", help="default %(default)s")
    parser.add_argument("--out", default="results/weighting", help="where to save results without --json")
    parser.add_argument("--json", action="store_true", help="print one JSON object and save nothing")


def main(args: argparse.Namespace) -> int:
    config = WeightingConfig(pos_cov=args.pos_cov, second_moment=args.second_moment, depth=args.depth,
                             width=args.width, weight_decay=args.weight_decay, init=args.init,
                             init_scale=args.init_scale, seed=args.seed, precision=args.precision)
    result = run_weighting(config)
    if args.json:
        print(json.dumps({
            "measured": result["measured"].tolist(),
            "predicted": result["predicted"].tolist(),
            "diagnostics": result["diagnostics"],
        }))
        return 0
    from simulations.results import save_results

    print(format_table(result))
    npz, _ = save_results(args.out, "weighting", {k: result[k] for k in
                          ("measured", "predicted", "measured_stds", "predicted_stds", "effective_rank")},
                          {"config": result["config"], "seed": config.seed, "diagnostics": result["diagnostics"]},
                          precision=config.precision)
    print(f"saved {npz} and its .json record", file=sys.stderr)
    return 0


def format_table(result: dict[str, Any]) -> str:
    """Readable per-layer, per-feature table of measured vs predicted weights."""
    measured, predicted = result["measured"], result["predicted"]
    lines = ["layer  feature    measured   predicted   rel.err"]
    for layer in range(measured.shape[0]):
        for feature in range(measured.shape[1]):
            m, p = measured[layer, feature], predicted[layer, feature]
            err = abs(m - p) / p if p > 0 else float("nan")
            lines.append(f"{layer + 1:5d}  {feature:7d}  {m:10.6f}  {p:10.6f}  {err:9.2e}")
    d = result["diagnostics"]
    lines.append(f"converged={d['converged']} t_final={d['t_final']:.4g} steps={d['steps']} "
                 f"loss={d['loss']:.10f} predicted_loss={d['predicted_loss']:.10f}")
    return "\n".join(lines)
