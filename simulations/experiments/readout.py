"""Which layer to read out: probe every layer of a trained deep linear net, against the closed-form oracle.

Run:  python -m simulations readout --pos-cov 1.2,0.4,0.125 --second-moment 2,4,0.25 --depth 8 --target 0 \\
          --downstream-second-moment 0.25,4,0.5 --json
Expected runtime: 10-30 s on 2 CPU cores for depth 8 (about half of it compilation).

A depth-L linear net is trained on the exact population spectral loss by gradient flow to a
certified steady state (balanced or small Gaussian init, optional weight decay). Then, at every
layer l = 0..L (0 = the input), n_train downstream inputs x_ds ~ N(0, Sigma_ds) are mapped through
P_l, centred, divided by the square root of their training total variance, and a ridge probe is
fitted to y = x_ds_j / sqrt(Sigma_ds_jj); `risk` is its test MSE on n_test fresh inputs. RankMe is
computed from n_train representations of pretraining inputs x ~ N(0, B): exp of the entropy of the
normalized singular values of the (n_train x width) embedding matrix. The predictions are the closed
forms of theory.readout (balanced flow: P_l^T P_l = G^(l/L)); for Gaussian init they are the
balanced prediction, which the unbalanced net misses by O(init_scale^2).

Errors: test noise ~ sqrt(2) MSE / sqrt(n_test), training-sample error O(1 / sqrt(n_train)). Features
with r_i <= 0 decay only algebraically in deep nets and linger near init scale in shallow layers;
`diagnostics.max_weight_error` reports the largest |measured - predicted| layer weight.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simulations import draws, models, serial_linalg
from simulations.experiment import Command, Experiment, check_one_shape
from simulations.experiments.weighting import population_loss  # the same loss: the same compiled flow
from simulations.flow import gradient_flow
from simulations.probe import normalize_representation, ridge_probe
from theory import readout as theory
from theory.checks import as_finite_array, check_choice, check_float, check_int
from theory.moments import validate_moments

INITS = ("balanced", "gaussian")
# Named key streams (jax.random.fold_in of the seed's root key).
_INIT_STREAM, _PROBE_STREAM, _RANKME_STREAM = 0, 1, 2
_TRAIN_STREAM, _TEST_STREAM = 0, 1
# A layer whose total variance is below this fraction of the input's decodes nothing (as in the
# downstream experiment): dead features linger at stopping-rule level, not at exactly zero.
_EMPTY_LAYER_FRACTION = 1e-8


def _matrix(name: str, values, d: int, matrices: bool) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.size != (d * d if matrices else d):
        expected = f"{d * d} entries (a {d} x {d} matrix, row by row)" if matrices else f"{d} entries (one per feature)"
        raise ValueError(f"{name} must have {expected}, got {array.size}")
    return array.reshape(d, d) if matrices else np.diag(array)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReadoutConfig:
    """One readout experiment: pretrain a depth-L linear net, probe and score every layer.

    Attributes:
        pos_cov: a_i = E[x_i x+_i] per feature (or, with --matrices, the d x d matrix A row by row).
        second_moment: b_i = E[x_i^2] per feature (> 0, |a_i| <= b_i; or the matrix B).
        depth: number of layers L >= 1. Default 4.
        target: index j of the downstream target y = x_ds_j / sqrt(Sigma_ds_jj).
        downstream_second_moment: b_ds per feature (or the matrix Sigma_ds); None means B.
        ridge: probe penalty on the variance-normalized representation (>= 0). Default 0.1.
        n_train: probe training samples, also the samples RankMe is measured on (>= 2). Default 20000.
        n_test: fresh probe test samples (>= 2). Default 100000.
        init: "balanced" (exact, random orientation; the closed form is exact) or "gaussian" (small
            N(0, init_scale^2 / fan_in) entries; unbalanced, measured against the balanced prediction).
        init_scale: per-layer singular value (balanced) or scale (gaussian) of the init. Default 0.5
            (the plateau lasts about 1 / (8 a (L-1) init_scale^(2L-2)), so deep nets need a large one).
        weight_decay: pretraining penalty (weight_decay / 2) sum_l ||W_l||_F^2 (diagonal moments only).
        seed: root seed (initialization, probe samples, RankMe samples).
        matrices: read pos_cov, second_moment and downstream_second_moment as d x d matrices.
    """

    pos_cov: tuple[float, ...] = (1.2, 0.4, 0.125)
    second_moment: tuple[float, ...] = (2.0, 4.0, 0.25)
    depth: int = 4
    target: int = 0
    downstream_second_moment: tuple[float, ...] | None = None
    ridge: float = 0.1
    n_train: int = 20_000
    n_test: int = 100_000
    init: str = dataclasses.field(default="balanced", metadata={"choices": INITS})
    init_scale: float = 0.5
    weight_decay: float = 0.0
    seed: int = 0
    matrices: bool = False

    def __post_init__(self):
        for name in ("pos_cov", "second_moment", "downstream_second_moment"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in as_finite_array(name, value).ravel()))
        size = len(self.pos_cov)
        d = int(round(np.sqrt(size))) if self.matrices else size
        if self.matrices and d * d != size:
            raise ValueError(f"pos_cov must hold a square matrix row by row with --matrices, got {size} entries")
        moments = validate_moments(_matrix("pos_cov", self.pos_cov, d, self.matrices),
                                   _matrix("second_moment", self.second_moment, d, self.matrices))
        check_int("depth", self.depth, minimum=1)
        if isinstance(self.target, bool) or not isinstance(self.target, (int, np.integer)) or not 0 <= self.target < d:
            raise ValueError(f"target must be a feature index in [0, {d - 1}], got {self.target!r}")
        if self.downstream_second_moment is not None:
            sigma = _matrix("downstream_second_moment", self.downstream_second_moment, d, self.matrices)
            scale = max(np.abs(sigma).max(), 1e-300)
            if not np.allclose(sigma, sigma.T, atol=1e-10 * scale) or np.linalg.eigvalsh(sigma).min() < -1e-10 * scale:
                raise ValueError("downstream_second_moment must be >= 0 (a symmetric PSD matrix)")
            if sigma[self.target, self.target] <= 0:
                raise ValueError(f"downstream_second_moment must be > 0 at the target {self.target}")
        check_float("ridge", self.ridge, minimum=0.0)
        check_int("n_train", self.n_train, minimum=2)
        check_int("n_test", self.n_test, minimum=2)
        check_choice("init", self.init, INITS)
        check_float("init_scale", self.init_scale, minimum=0.0, strict_minimum=True)
        check_float("weight_decay", self.weight_decay, minimum=0.0)
        if self.weight_decay > 0 and not moments.diagonal:
            raise ValueError("weight_decay > 0 needs diagonal pos_cov and second_moment (the weight-decay end "
                             "state is known per feature only)")
        check_int("seed", self.seed, minimum=0)

    @property
    def dim(self) -> int:
        return int(round(np.sqrt(len(self.pos_cov)))) if self.matrices else len(self.pos_cov)

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(A, B, Sigma_ds) as d x d matrices."""
        d = self.dim
        A = _matrix("pos_cov", self.pos_cov, d, self.matrices)
        B = _matrix("second_moment", self.second_moment, d, self.matrices)
        sigma = B if self.downstream_second_moment is None else _matrix(
            "downstream_second_moment", self.downstream_second_moment, d, self.matrices)
        return A, B, sigma

    @classmethod
    def quick(cls, **overrides) -> ReadoutConfig:
        """A seconds-long smoke-test configuration."""
        return cls(**{"n_train": 2_000, "n_test": 20_000, **overrides})


class FlowDiagnostics(NamedTuple):
    """How the pretraining flow ended (the fields of simulations.flow.FlowResult)."""
    converged: jax.Array; t_final: jax.Array; steps: jax.Array; loss: jax.Array  # noqa: E702
    min_curvature: jax.Array; restarts: jax.Array; at_saddle: jax.Array  # noqa: E702


class ReadoutResult(NamedTuple):
    """Measurements of one trained net (leading point axis in a batch).

    Attributes:
        risk: (L+1,) probe test MSE per layer, layer 0 (input) first.
        rankme: (L+1,) RankMe of n_train pretraining representations per layer.
        effective_rank: (L+1,) entropy effective rank of the same representations' covariance spectrum.
        layer_weights: (L+1, d) ||P_l e_i|| of the trained net (row 0: the input, ones).
        diagnostics: the flow's end state.
    """

    risk: jax.Array
    rankme: jax.Array
    effective_rank: jax.Array
    layer_weights: jax.Array
    diagnostics: FlowDiagnostics


def _root(matrix: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root F (F F^T = matrix): samples x = z F^T have second moment matrix."""
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def _entropy_rank(values):
    """exp(-sum p ln p), p = values / sum(values) (0 for a zero spectrum): RankMe of singular values."""
    p = values / jnp.maximum(values.sum(), jnp.finfo(values.dtype).tiny)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.where(values.sum() > 0, jnp.exp(entropy), 0.0)


@functools.partial(jax.jit, static_argnames=("n_train", "n_test"))
def _measure(params, key, downstream_root, pretraining_root, target, ridge, *, n_train, n_test):
    """Probe risk, RankMe and effective rank at every layer of one net (vmapped over points)."""
    d = downstream_root.shape[0]
    probe_key, rankme_key = draws.fold_in(key, _PROBE_STREAM), draws.fold_in(key, _RANKME_STREAM)
    dtype = downstream_root.dtype
    x_train = jax.random.normal(draws.fold_in(probe_key, _TRAIN_STREAM), (n_train, d), dtype) @ downstream_root.T
    x_test = jax.random.normal(draws.fold_in(probe_key, _TEST_STREAM), (n_test, d), dtype) @ downstream_root.T
    x_pre = jax.random.normal(rankme_key, (n_train, d), dtype) @ pretraining_root.T
    scale = jnp.sqrt(jnp.sum(downstream_root[target] ** 2))  # sqrt(Sigma_ds_jj)
    y_train, y_test = x_train[:, target] / scale, x_test[:, target] / scale
    floor = _EMPTY_LAYER_FRACTION * jnp.sum(downstream_root**2)
    maps = (jnp.eye(d, dtype=dtype),) + models.layer_maps(params)
    risks, spectra = [], []
    for P in maps:
        h_train, h_test = normalize_representation(x_train @ P.T, x_test @ P.T, min_total_variance=floor)
        risks.append(ridge_probe(h_train, y_train, h_test, y_test, ridge).mse)
        z = x_pre @ P.T  # uncentred embedding matrix, as RankMe uses it
        spectra.append(jnp.clip(serial_linalg.eigh(z.T @ z / n_train)[0], 0.0, None))
    rankmes = [_entropy_rank(jnp.sqrt(spectrum)) for spectrum in spectra]
    ranks = [_entropy_rank(spectrum) for spectrum in spectra]
    weights = jnp.stack([jnp.linalg.norm(P, axis=0) for P in maps])
    return jnp.stack(risks), jnp.stack(rankmes), jnp.stack(ranks), weights


def shape_key(config: ReadoutConfig) -> tuple:
    """Fields that change array shapes or the compiled program: equal keys run as one batch."""
    return (config.dim, config.depth, config.init, config.n_train, config.n_test)


def run_batch(configs, *, place=None) -> ReadoutResult:
    """Train every config's net in one vmapped gradient-flow solve, then probe all layers in one vmapped call."""
    configs = list(configs)
    check_one_shape(EXPERIMENT, configs)
    first = configs[0]
    d, depth = first.dim, first.depth
    with jax.enable_x64(True):
        roots = [jax.random.PRNGKey(c.seed) for c in configs]
        unit = jax.vmap(lambda key: models.init_linear(draws.fold_in(key, _INIT_STREAM), d, (d,) * depth,
                                                       init=first.init, init_scale=1.0))(jnp.stack(roots))
        scales = jnp.asarray([c.init_scale for c in configs])  # both inits are linear in their scale
        params0 = tuple(w * scales[:, None, None] for w in unit)
        moments = [c.moments() for c in configs]
        args = (jnp.asarray(np.stack([m[0] for m in moments])), jnp.asarray(np.stack([m[1] for m in moments])),
                jnp.asarray([c.weight_decay for c in configs], dtype=jnp.float64))
        batch = (jnp.stack(roots), jnp.asarray(np.stack([_root(m[2]) for m in moments])),
                 jnp.asarray(np.stack([_root(m[1]) for m in moments])), jnp.asarray([c.target for c in configs]),
                 jnp.asarray([c.ridge for c in configs], dtype=jnp.float64))
        if place is not None:
            params0, args, batch = place(params0), place(args), place(batch)
        flow = gradient_flow(population_loss, params0, args, batched=True)
        measure = functools.partial(_measure, n_train=first.n_train, n_test=first.n_test)
        risk, rankme, rank, weights = jax.vmap(measure)(flow.params, *batch)
        diagnostics = FlowDiagnostics(*(np.asarray(getattr(flow, name)) for name in FlowDiagnostics._fields))
        return ReadoutResult(np.asarray(risk), np.asarray(rankme), np.asarray(rank), np.asarray(weights), diagnostics)


def predict(config: ReadoutConfig) -> theory.ReadoutPrediction:
    """The closed-form readout quantities (theory.readout.predict_readout) of the trained balanced net."""
    A, B, sigma = config.moments()
    return theory.predict_readout(A, B, config.depth, config.target, config.ridge,
                                  downstream_second_moment=sigma if config.matrices else np.diag(sigma),
                                  weight_decay=config.weight_decay,
                                  init_scale=config.init_scale if config.weight_decay > 0 else None)


def report(point: ReadoutResult, config: ReadoutConfig) -> dict:
    """The JSON object of ``python -m simulations readout --json`` (stable keys)."""
    prediction = predict(config)
    risk, scores, ranks = (np.asarray(v, dtype=np.float64) for v in (point.risk, point.rankme, point.effective_rank))
    best, by_rankme, by_rank = theory.best_layer(risk), theory.selected_layer(scores), theory.selected_layer(ranks)
    diagnostics = {name: np.asarray(value).item() for name, value in point.diagnostics._asdict().items()}
    pair = lambda measured, predicted: {"measured": measured, "predicted": predicted}  # noqa: E731
    return {
        "risk": pair(risk.tolist(), prediction.risk.tolist()),
        "best_layer": pair(best, prediction.best_layer),
        "head_depth": pair(config.depth - best, prediction.head_depth),
        "rankme": pair(scores.tolist(), prediction.rankme.tolist()),
        "rankme_layer": pair(by_rankme, prediction.rankme_layer),
        "rankme_regret": pair(theory.regret(risk, by_rankme), prediction.rankme_regret),
        "effective_rank": pair(ranks.tolist(), prediction.effective_rank.tolist()),
        "effective_rank_layer": pair(by_rank, prediction.effective_rank_layer),
        "effective_rank_regret": pair(theory.regret(risk, by_rank), prediction.effective_rank_regret),
        "diagnostics": {**diagnostics, "n_train": config.n_train, "n_test": config.n_test,
                        "max_weight_error": float(np.max(np.abs(np.asarray(point.layer_weights)
                                                                - prediction.layer_weights)))},
    }


def table(point: ReadoutResult, config: ReadoutConfig) -> str:
    """Readable per-layer table: measured / predicted risk and RankMe, then the chosen layers."""
    result = report(point, config)
    risk, scores = result["risk"], result["rankme"]
    lines = ["layer  risk meas.  risk pred.  RankMe meas.  RankMe pred."]
    lines += [f"{l:5d}  {risk['measured'][l]:10.5f}  {risk['predicted'][l]:10.5f}  {scores['measured'][l]:12.5f}  "
              f"{scores['predicted'][l]:12.5f}" for l in range(config.depth + 1)]
    lines += [f"{key} (measured / predicted): {result[key]['measured']} / {result[key]['predicted']}"
              for key in ("best_layer", "rankme_layer", "rankme_regret")]
    lines.append(f"converged={result['diagnostics']['converged']} max_weight_error="
                 f"{result['diagnostics']['max_weight_error']:.2e}")
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="readout", config=ReadoutConfig, run_batch=run_batch, result=ReadoutResult, shape_key=shape_key,
    predict=predict, report=report, table=table,
    presets={"interior": {"pos_cov": (1.2, 0.4, 0.125), "second_moment": (2.0, 4.0, 0.25),
                          "downstream_second_moment": (0.25, 4.0, 0.5)},
             "ratios": {"pos_cov": (0.9, 0.5, 0.3), "second_moment": (1.0, 1.0, 1.0)}},
    command=Command(required=("pos_cov", "second_moment", "target")),
    doc=__doc__,
)
