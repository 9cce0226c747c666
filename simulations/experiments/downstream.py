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

Sizes of the errors (derived in tests/test_downstream.py): test-set noise is about
sqrt(2) MSE / sqrt(n_test) (default n_test = 100,000: <= 0.0045); the training-sample error
shrinks like 1 / sqrt(n_train) (about 0.002 at n_train = 20,000) because the ridge solution
is not the minimizer of the test error, so its estimation error enters at first order.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simulations import models
from simulations.experiments import weighting
from simulations.flow import FlowOptions
from simulations.probe import affine_predictor_risk, representation_normalization, ridge_probe
from theory import downstream as downstream_theory
from theory.checks import as_finite_array, check_float, check_int

#: Fresh test samples per probe. Test-set noise in the MSE is about sqrt(2) MSE / sqrt(n_test):
#: 0.0045 at MSE = 1 (a dead target), so the 0.02 agreement holds with > 4 standard deviations.
DEFAULT_N_TEST = 100_000
#: Training samples per probe (the agreement tolerance 0.02 is stated at this size).
DEFAULT_N_TRAIN = 20_000
#: Probe penalty: the same order as a typical variance share q_j (1 / d), so errors are O(0.1).
DEFAULT_RIDGE = 0.1

# Named key streams (jax.random.fold_in): 0 is the network's initialization (used by `weighting`).
_PROBE_STREAM = 1
_TRAIN_STREAM, _TEST_STREAM = 0, 1
# A layer whose total variance is below this fraction of the input's counts as empty (decodes
# nothing). Dead features do not reach exactly zero: the flow's stopping rule leaves them at
# sigma^2 ~ loss_tol / weight_decay (< 1e-10 here), and normalizing an all-dead layer would blow
# that residue up to unit variance. Surviving features carry >= ~1e-3 of the input's variance.
_EMPTY_LAYER_FRACTION = 1e-8
# Trained vs predicted per-feature weights beyond this (converged flows agree to ~1e-4) mean the
# network ended somewhere the closed form does not describe; main() warns on stderr.
_WEIGHT_WARNING = 1e-2


@dataclasses.dataclass(frozen=True, kw_only=True)
class DownstreamConfig:
    """One downstream experiment (pretraining as in WeightingConfig, then a probe per layer).

    Attributes:
        pos_cov: a_i = E[x_i x+_i] per feature (pretraining).
        second_moment: b_i = E[x_i^2] per feature (pretraining; > 0, |a_i| <= b_i).
        target: index j of the downstream target y = x_ds_j / sqrt(b_ds_j).
        downstream_second_moment: b_ds per feature (>= 0, > 0 at the target); None means b.
        ridge: probe penalty (>= 0; on the normalized representation). Default 0.1.
        depth: number of layers L >= 1. Default 2.
        layer: the "pre" layer in [0, L] (0 = raw input); None means L - 1. Post is always L.
        n_train: probe training samples (>= 2). Default 20,000.
        n_test: fresh test samples (>= 2). Default 100,000.
        width: every layer's width; None means d.
        weight_decay: pretraining penalty (weight_decay / 2) sum_l ||W_l||_F^2 (not the ridge).
        init: "balanced" or "gaussian" (see WeightingConfig).
        init_scale: per-layer singular value of the init. Default 0.1 (with weight decay it
            decides the basin: features whose unstable root exceeds it die).
        seed: root seed (initialization, probe samples).
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
    init: str = models.DEFAULT_INIT
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

    @property
    def weighting(self) -> weighting.WeightingConfig:
        """The pretraining run, shared with the `weighting` experiment."""
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
    def quick(cls, **overrides) -> "DownstreamConfig":
        """A seconds-long smoke-test configuration."""
        return cls(**{"init_scale": 0.3, "n_train": 2_000, "n_test": 20_000, **overrides})


class LayerProbes(NamedTuple):
    """Probe outcomes at every layer 0..L (leading seed axis when vmapped).

    Attributes:
        mse: test MSE on n_test fresh samples, (L+1,).
        r2: 1 - mse / test variance of y, (L+1,).
        fitted_risk: exact risk of the fitted probe under N(0, diag(b_ds)) (an infinite test set;
            isolates the training-sample error), (L+1,).
    """

    mse: jax.Array
    r2: jax.Array
    fitted_risk: jax.Array


def train_network(config: weighting.WeightingConfig, *, options: FlowOptions | None = None):
    """Trained parameters and flow diagnostics from `weighting.run_weighting` (shared training).

    Returns:
        (params, diagnostics dict).
    """
    result = weighting.run_weighting(config, options=options)
    return result["params"], result["diagnostics"]


def sample_downstream(key: jax.Array, downstream_second_moment, n: int) -> jax.Array:
    """n inputs x_ds ~ N(0, diag(b_ds)), shape (n, d)."""
    b_ds = jnp.asarray(downstream_second_moment)
    return jnp.sqrt(b_ds) * jax.random.normal(key, (n, b_ds.shape[0]), b_ds.dtype)


def _probe_data(key, b_ds, target, n_train, n_test):
    """Probe inputs and standardized target x_j / sqrt(b_j) (train from stream 0, test from 1), and
    the normalization floor for an empty layer."""
    x_train = sample_downstream(jax.random.fold_in(key, _TRAIN_STREAM), b_ds, n_train)
    x_test = sample_downstream(jax.random.fold_in(key, _TEST_STREAM), b_ds, n_test)
    scale = jnp.sqrt(b_ds[target])
    return x_train, x_train[:, target] / scale, x_test, x_test[:, target] / scale, _EMPTY_LAYER_FRACTION * jnp.sum(b_ds)


@functools.partial(jax.jit, static_argnames=("n_train", "n_test"))
def probe_layers(params, key, downstream_second_moment, ridge, target, *, n_train: int,
                 n_test: int) -> LayerProbes:
    """Fit and score the normalized ridge probe at every layer 0..L of one network.

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
    maps = (jnp.eye(d, dtype=b_ds.dtype),) + models.layer_maps(params)
    u = jnp.zeros(d, b_ds.dtype).at[target].set(1.0 / jnp.sqrt(b_ds[target]))  # y = u . x
    mse, r2, fitted = [], [], []
    for P in maps:
        h_train, h_test = x_train @ P.T, x_test @ P.T
        mean, scale = representation_normalization(h_train, min_total_variance=floor)
        fit = ridge_probe((h_train - mean) / scale, y_train, (h_test - mean) / scale, y_test, ridge)
        beta = P.T @ fit.weights / scale
        offset = fit.intercept - fit.weights @ mean / scale
        mse.append(fit.mse)
        r2.append(fit.r2)
        fitted.append(affine_predictor_risk(beta, offset, u, jnp.diag(b_ds)))
    return LayerProbes(jnp.stack(mse), jnp.stack(r2), jnp.stack(fitted))


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
        mse.append(ridge_probe((h_train - mean) / scale, y_train, (h_test - mean) / scale, y_test, ridge).mse)
    return jnp.stack(mse)


def predict(config: DownstreamConfig) -> dict[str, np.ndarray]:
    """Closed-form per-layer weights (L+1, d), probe MSE and R^2 (L+1,) matching run_downstream."""
    layer_weights = weighting.predict(config.weighting)["weights"]
    weights = np.vstack([np.ones(config.weighting.dim), layer_weights])
    mse = np.asarray(downstream_theory.probe_risk(weights, config.downstream, config.target, config.ridge))
    return {"weights": weights, "mse": mse, "r2": 1.0 - mse}


def run_downstream(config: DownstreamConfig, *, options: FlowOptions | None = None) -> dict[str, Any]:
    """Train the network, probe every layer on fresh downstream samples, compare with theory.

    Returns a dict with ``layers`` (L+1,), ``measured`` / ``predicted`` test MSE (L+1,),
    ``measured_r2`` / ``predicted_r2`` (L+1,), ``fitted_risk`` (L+1,: the fitted probes' exact
    risk), ``pre`` and ``post`` ({layer, measured, predicted, measured_r2, predicted_r2}),
    ``pre_beats_post`` (the derived condition on the predicted weights), ``measured_weights`` /
    ``predicted_weights`` (L+1, d: |P_l e_i| of the trained net / theory; row 0 is the raw
    input), ``diagnostics`` and ``config``.
    """
    return run_downstream_batch([config], options=options)[0]


def shape_key(config: DownstreamConfig) -> tuple:
    """The fields that change array shapes: configs with equal keys run as one batch."""
    return (config.weighting.dim, config.weighting.widths, config.init, config.n_train, config.n_test)


@functools.partial(jax.jit, static_argnames=("n_train", "n_test"))
def _probe_layers_batch(params, keys, downstream_second_moments, ridges, targets, *, n_train: int,
                        n_test: int) -> LayerProbes:
    """:func:`probe_layers` vmapped over the leading (point) axis of every argument."""
    probe = functools.partial(probe_layers, n_train=n_train, n_test=n_test)
    return jax.vmap(probe)(params, keys, downstream_second_moments, ridges, targets)


def run_downstream_batch(configs, *, options: FlowOptions | None = None, place=None) -> list[dict[str, Any]]:
    """:func:`run_downstream` for many configs of one shape_key: one vmapped flow, one vmapped probe.

    Seeds, moments, ridges, targets, init scales and weight decays are traced (changing them
    never recompiles). ``place`` (sweep protocol) is applied to the stacked per-point arrays.
    """
    if not configs:
        raise ValueError("configs must hold at least one DownstreamConfig")
    shapes = {shape_key(c) for c in configs}
    if len(shapes) != 1:
        raise ValueError(f"configs must share d, widths, init, n_train and n_test to run as one batch, "
                         f"got {sorted(shapes)}")
    first = configs[0]
    trained = weighting.run_weighting_batch([c.weighting for c in configs], options=options, place=place)
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *[r["params"] for r in trained])
        keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(c.seed), _PROBE_STREAM) for c in configs])
        b_ds = jnp.stack([jnp.asarray(c.downstream) for c in configs])
        batch = (params, keys, b_ds, jnp.asarray([c.ridge for c in configs], dtype=b_ds.dtype),
                 jnp.asarray([c.target for c in configs]))
        if place is not None:
            batch = place(batch)
        probes = _probe_layers_batch(*batch, n_train=first.n_train, n_test=first.n_test)
        probes = LayerProbes(*(np.asarray(field) for field in probes))
    return [_downstream_result(config, run, LayerProbes(*(field[index] for field in probes)))
            for index, (config, run) in enumerate(zip(configs, trained))]


def _downstream_result(config: DownstreamConfig, trained: dict[str, Any], probes: LayerProbes) -> dict[str, Any]:
    """One point's result dict from its weighting run and its probes."""
    diagnostics = trained["diagnostics"]
    measured_weights = np.vstack([np.ones(config.weighting.dim), trained["measured"]])
    prediction = predict(config)
    end_to_end = prediction["weights"][-1]
    condition = downstream_theory.pre_beats_post(end_to_end, config.downstream, config.target,
                                                 depth=config.depth, pre_layer=config.pre_layer)

    def entry(layer):
        return {"layer": layer, "measured": float(probes.mse[layer]), "predicted": float(prediction["mse"][layer]),
                "measured_r2": float(probes.r2[layer]), "predicted_r2": float(prediction["r2"][layer])}

    return {
        "config": dataclasses.asdict(config),
        "layers": np.arange(config.depth + 1),
        "measured": probes.mse,
        "predicted": prediction["mse"],
        "measured_r2": probes.r2,
        "predicted_r2": prediction["r2"],
        "fitted_risk": probes.fitted_risk,
        "measured_weights": measured_weights,
        "predicted_weights": prediction["weights"],
        "pre": entry(config.pre_layer),
        "post": entry(config.depth),
        "pre_beats_post": bool(condition),
        "diagnostics": {**diagnostics, "n_train": config.n_train, "n_test": config.n_test,
                        "max_weight_error": float(np.max(np.abs(measured_weights - prediction["weights"]))),
                        "predicted_state_is_saddle": bool(downstream_theory.basin_is_saddle(
                            config.pos_cov, config.second_moment, end_to_end))},
    }


# Sweep protocol (simulations.sweep).
CONFIG = DownstreamConfig
SWEEP_OUTPUTS = ("measured", "predicted", "measured_r2", "predicted_r2", "fitted_risk", "measured_weights",
                 "predicted_weights", "pre_beats_post", "pre.layer", "pre.measured", "pre.predicted",
                 "post.measured", "post.predicted", "diagnostics.converged", "diagnostics.loss",
                 "diagnostics.steps", "diagnostics.max_weight_error")
#: ``--preset NAME``: the pretraining moments, shared with the weighting experiment.
SWEEP_PRESETS = weighting.SWEEP_PRESETS


def _floats(text: str) -> tuple[float, ...]:
    return weighting._floats(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `downstream` subcommand's flags (public contract: names and JSON keys are stable)."""
    defaults = DownstreamConfig()
    parser.add_argument("--pos-cov", type=_floats, required=True,
                        help="comma-separated a_i = E[x_i x+_i] (pretraining positive-pair covariance)")
    parser.add_argument("--second-moment", type=_floats, required=True,
                        help="comma-separated b_i = E[x_i^2] (pretraining; > 0, |a_i| <= b_i)")
    parser.add_argument("--target", type=int, required=True,
                        help="index j of the downstream target y = x_j / sqrt(b_ds_j)")
    parser.add_argument("--downstream-second-moment", type=_floats, default=None,
                        help="comma-separated b_ds_i of the downstream inputs (default: --second-moment)")
    parser.add_argument("--ridge", type=float, default=defaults.ridge,
                        help="probe ridge penalty on the variance-normalized representation (default %(default)s)")
    parser.add_argument("--depth", type=int, default=defaults.depth, help="number of layers L (default %(default)s)")
    parser.add_argument("--layer", type=int, default=None,
                        help="the 'pre' layer to compare with post = L; 0 is the raw input (default: L-1)")
    parser.add_argument("--n-train", type=int, default=defaults.n_train,
                        help="probe training samples (default %(default)s)")
    parser.add_argument("--n-test", type=int, default=defaults.n_test,
                        help="fresh test samples (default %(default)s)")
    parser.add_argument("--width", type=int, default=None, help="width of every layer (default: d)")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                        help="pretraining penalty (wd/2) sum ||W_l||_F^2 (default %(default)s)")
    parser.add_argument("--init-scale", type=float, default=defaults.init_scale,
                        help="per-layer singular value eps of the init (default %(default)s)")
    parser.add_argument("--init", choices=models.INITS, default=defaults.init,
                        help="network initialization (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the init and the probe samples (default %(default)s)")
    parser.add_argument("--out", default="results/downstream", help="where to save results without --json")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object {"pre": {...}, "post": {...}} and save nothing')


def main(args: argparse.Namespace) -> int:
    config = DownstreamConfig(pos_cov=args.pos_cov, second_moment=args.second_moment, target=args.target,
                              downstream_second_moment=args.downstream_second_moment, ridge=args.ridge,
                              depth=args.depth, layer=args.layer, n_train=args.n_train, n_test=args.n_test,
                              width=args.width, weight_decay=args.weight_decay, init=args.init,
                              init_scale=args.init_scale, seed=args.seed)
    result = run_downstream(config)
    if not result["diagnostics"]["converged"]:
        print("warning: gradient flow did not reach a certified steady state", file=sys.stderr)
    if result["diagnostics"]["max_weight_error"] > _WEIGHT_WARNING:
        print(f"warning: the trained layer weights differ from the closed form by up to "
              f"{result['diagnostics']['max_weight_error']:.3g}, so `predicted` does not describe this network "
              f"(predicted state is a saddle: {result['diagnostics']['predicted_state_is_saddle']}; see "
              f"theory.downstream.basin_is_saddle)", file=sys.stderr)
    if args.json:
        print(json.dumps({"pre": result["pre"], "post": result["post"]}))
        return 0
    from simulations.results import save_results

    print(format_table(result))
    npz, _ = save_results(args.out, "downstream", {k: result[k] for k in
                          ("layers", "measured", "predicted", "measured_r2", "predicted_r2", "fitted_risk",
                           "measured_weights", "predicted_weights")},
                          {"config": result["config"], "seed": config.seed, "pre": result["pre"],
                           "post": result["post"], "pre_beats_post": result["pre_beats_post"],
                           "diagnostics": result["diagnostics"]})
    print(f"saved {npz} and its .json record", file=sys.stderr)
    return 0


def format_table(result: dict[str, Any]) -> str:
    """Readable per-layer table of measured vs predicted probe error."""
    lines = ["layer  role    measured MSE  predicted MSE  measured R2  predicted R2"]
    pre, post = result["pre"]["layer"], result["post"]["layer"]
    for layer in result["layers"]:
        role = "post" if layer == post else "pre" if layer == pre else "input" if layer == 0 else ""
        lines.append(f"{layer:5d}  {role:5s}  {result['measured'][layer]:12.5f}  {result['predicted'][layer]:13.5f}"
                     f"  {result['measured_r2'][layer]:11.5f}  {result['predicted_r2'][layer]:12.5f}")
    verdict = "pre beats post" if result["pre_beats_post"] else "pre does not beat post"
    d = result["diagnostics"]
    lines.append(f"theory: {verdict}; n_train={d['n_train']} n_test={d['n_test']} converged={d['converged']}")
    return "\n".join(lines)
