"""Which layer to read out: the per-layer probe risk in closed form, its best layer, and RankMe.

Setting (as in theory.downstream). A depth-L linear net f(x) = W_L ... W_1 x is trained on the
spectral contrastive loss with moments (A, B). The layer-l representation is P_l x with
P_l = W_l ... W_1; layer 0 is the input itself (P_0 = I). Balanced gradient flow keeps
W_(l+1)^T W_(l+1) = W_l W_l^T, hence (theory.linear)

    P_l^T P_l = G^(l/L),    G = W^T W the end-to-end Gram at the end of training,

a matrix power. Without weight decay G is the optimum of theory.linear.optimal_gram; with weight
decay (diagonal moments) each feature's end-to-end weight s_k is the stable root where the flow
ends (theory.downstream.feature_layer_weights, through theory.weight_decay), and every layer
carries s_k^(1/L) of it, so G^(l/L) = diag(s^(2l/L)) again.

Probe risk per layer. The library's probe (simulations.probe) centres the layer-l representation,
divides it by the square root of its total variance and fits ridge regression with penalty
`ridge` to the standardized target y = x_ds_j / sqrt(Sigma_ds_jj). Its population test MSE is
theory.downstream.general_probe_risk(G^(l/L), Sigma_ds, j, ridge) (P_l = R (G^(l/L))^(1/2) for an
orthonormal R that neither the normalization nor the ridge sees). For diagonal moments and a
diagonal downstream second moment b_ds it reduces to

    risk_l = (ridge / (q_j(l) + ridge))^2,   q_j(l) = b_ds_j w_j^(2l/L) / sum_k b_ds_k w_k^(2l/L),

w_k = s_k the end-to-end weight (sqrt(a_k) / b_k without weight decay; 0 for unlearned k; 0^0 = 1
at the input). Since risk_l falls as q_j(l) rises, the best layer maximizes q_j(l), for every
ridge > 0.

Best layer and where it is interior. Write t = l / L and F(t) = ln sum_k b_ds_k w_k^(2t) (sum over
learned features, t > 0). Then

    ln q_j(t) = ln b_ds_j + 2 t ln w_j - F(t).

F is a log-sum-exp of functions linear in t, so it is convex and ln q_j(t) is concave in t. Its
slope is 2 (ln w_j - m(t)), where

    m(t) = F'(t) / 2 = sum_k q_k(t) ln w_k

is the variance-weighted mean log weight of layer t; m rises with t (m' = 2 Var_q(ln w) >= 0),
because deeper layers give strong features more of the variance (progressive weighting). So
q_j(t) rises while the target's log weight exceeds the layer's mean log weight and falls after:
the continuous optimum t* solves ln w_j = m(t*). On the grid of layers, one step from l to l+1
raises q_j iff ln w_j exceeds the chord slope

    mbar_l = (L / 2) (F((l+1)/L) - F(l/L)),   l = 1..L-1,   mbar_1 <= mbar_2 <= ... (F convex),

an average of m over the step. Hence, with ties broken toward the shallower layer,

    l* = min{ l in 1..L-1 : ln w_j <= mbar_l }, or L if there is none,

so the best layer is the first (l* = 1, head depth L-1) iff ln w_j <= mbar_1, the last (l* = L, no
head) iff ln w_j > mbar_(L-1), and interior iff mbar_1 < ln w_j <= mbar_(L-1): the target's
weight sits strictly between the mean log weights of the shallow and deep layers. A target weaker
than every other learned feature therefore reads best at layer 1, the strongest at layer L, and
only a target of middle rank can have an interior optimum; its position moves deeper as w_j
grows (larger invariance r_j, smaller pretraining strength b_j: w_j = sqrt(r_j / b_j)) and as the
downstream task weights strong features less. The target's own downstream strength b_ds_j
drops out: cross-multiplying q_j(l) > q_j(m) cancels the target's term (theory.downstream), so
layer l beats m iff w_j^(2l/L) S_m > w_j^(2m/L) S_l with S_l = sum_(k != j) b_ds_k w_k^(2l/L), and
l* depends on b_ds only through the other features. The best head depth is L - l*. Ties: a
dead target (w_j = 0) has risk 1 at every layer >= 1 and a lone target has q_j = 1 everywhere; `best_layer` then returns
layer 1.

Label-free selectors. RankMe (Garrido et al., 2023) scores an embedding matrix Z (n samples x k)
by exp(-sum_k p_k ln p_k), p_k = sigma_k(Z) / sum_i sigma_i(Z) (+ a 1e-7 guard, omitted here: it
changes the score by less than k 1.6e-6), the singular values of Z. On the pretraining
distribution (zero mean, second moment B), Z^T Z / n -> P_l B P_l^T, so sigma_k(Z) / sqrt(n) -> the
square roots of the eigenvalues of P_l B P_l^T, whose nonzero part equals that of
B^(1/2) G^(l/L) B^(1/2):

    RankMe(l) = exp H( sqrt(lambda) / sum sqrt(lambda) ),  lambda = eig(B^(1/2) G^(l/L) B^(1/2)),

i.e. the entropy effective rank of the singular values (theory.linear.entropy_effective_rank
applied to sqrt(lambda)). The second selector is the entropy effective rank of the covariance
spectrum lambda itself (theory.linear.effective_rank, extended here to layer 0). Diagonal case
without weight decay: lambda_k(l) = b_k w_k^(2l/L) = b_k^(1 - l/L) r_k^(l/L), a geometric path from
the input spectrum b (layer 0) to the invariance ratios r (layer L). Neither selector sees the
target: both pick one layer (argmax over l = 1..L, ties to the shallower) for every downstream task,
while l* moves with the target's weight. A selector is right only for targets whose l* happens to
match; elsewhere it costs regret = risk at the selector's layer - risk at l*. Because ln lambda_k
is linear in l, the selectors favour the end of the path whose spectrum is flatter: shallow layers
when the invariance ratios r are more spread than b, deep ones when b is more spread than r.

LiDAR (Thilak et al., 2024) is not a useful selector in this model: with the sample's
augmentations as its class, the between-class covariance at layer l is P_l A P_l^T and the
within-class covariance P_l (B - A) P_l^T, so for invertible P_l the eigenvalues of its LDA
matrix, (P_l (B - A) P_l^T)^(-1) P_l A P_l^T, are those of (B - A)^(-1) A at every layer: it
is layer-blind up to its regularizer delta and rank loss.

All functions are pure NumPy in float64.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from theory import downstream as downstream_theory
from theory.checks import as_finite_array, check_float, check_int
from theory.linear import entropy_effective_rank, optimal_gram
from theory.moments import validate_moments

__all__ = [
    "ReadoutPrediction",
    "trained_layer_grams",
    "layer_spectra",
    "rankme",
    "layer_risks",
    "layer_rankme",
    "layer_effective_rank",
    "best_layer",
    "selected_layer",
    "regret",
    "chord_mean_log_weights",
    "best_layer_from_weights",
    "is_interior",
    "best_layer_map",
    "predict_readout",
]

# Eigenvalues of G below this fraction of its largest are exact zeros lost to rounding: eigh returns
# them as +-1e-17, and a fractional power G^(1/L) would inflate them to ~1e-2 at L = 8.
_ZERO_EIGENVALUE = 1e-12
# Risks (in [0, 1]) or scores within this (relative) distance of the best count as tied; a tie goes to
# the shallower layer. Well above rounding of the closed forms (~1e-15), far below any real gap.
_TIE_TOLERANCE = 1e-12


class ReadoutPrediction(NamedTuple):
    """Closed-form readout quantities of one trained net (layer 0 = input first).

    Attributes:
        risk: (L+1,) probe test MSE per layer.
        best_layer: argmin of risk over layers 1..L (ties: shallower).
        head_depth: L - best_layer.
        rankme: (L+1,) RankMe on the pretraining distribution.
        rankme_layer: argmax of rankme over 1..L (ties: shallower).
        rankme_regret: risk[rankme_layer] - risk[best_layer] >= 0.
        effective_rank: (L+1,) entropy effective rank of the covariance spectrum.
        effective_rank_layer, effective_rank_regret: the same for the effective rank.
        layer_weights: (L+1, d) ||P_l e_i|| per layer and input direction.
    """

    risk: np.ndarray
    best_layer: int
    head_depth: int
    rankme: np.ndarray
    rankme_layer: int
    rankme_regret: float
    effective_rank: np.ndarray
    effective_rank_layer: int
    effective_rank_regret: float
    layer_weights: np.ndarray


def _end_to_end_diagonal(a, b, depth, weight_decay, init_scale) -> np.ndarray:
    """End-to-end weights s (d,) of the trained balanced net, diagonal moments."""
    return downstream_theory.feature_layer_weights(a, b, depth, weight_decay=weight_decay,
                                                   init_scale=init_scale)[-1]


def trained_layer_grams(pos_cov, second_moment, depth, *, weight_decay=0.0, init_scale=None) -> np.ndarray:
    """P_l^T P_l = G^(l/L) at every layer l = 0..L of the trained balanced net.

    Args:
      pos_cov: A, (d,) or (d, d).
      second_moment: B, (d,) or (d, d).
      depth: L >= 1.
      weight_decay: pretraining penalty (wd / 2) sum_l ||W_l||_F^2 >= 0; > 0 needs diagonal moments.
      init_scale: with weight decay, the per-layer scale of a balanced init (decides the basin);
        None: the global minimum of each feature's problem. Unused without weight decay.

    Returns:
      (L+1, d, d) symmetric PSD; entry 0 is the identity.
    """
    depth = check_int("depth", depth, minimum=1)
    moments = validate_moments(pos_cov, second_moment)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    exponents = np.arange(depth + 1) / depth
    if weight_decay > 0:
        if not moments.diagonal:
            raise ValueError("weight_decay > 0 needs diagonal pos_cov and second_moment (the weight-decay "
                             "end state is known per feature only)")
        s = _end_to_end_diagonal(np.diag(moments.pos_cov), np.diag(moments.second_moment), depth,
                                 weight_decay, init_scale)
        return np.stack([np.diag(s ** (2 * q)) for q in exponents])
    eigenvalues, vectors = np.linalg.eigh(optimal_gram(moments.pos_cov, moments.second_moment))
    eigenvalues = np.where(eigenvalues > _ZERO_EIGENVALUE * max(eigenvalues.max(), 1e-300), eigenvalues, 0.0)
    grams = [np.eye(moments.pos_cov.shape[0])]
    for q in exponents[1:]:
        gram = (vectors * eigenvalues**q) @ vectors.T
        grams.append((gram + gram.T) / 2)
    return np.stack(grams)


def layer_spectra(grams, second_moment) -> np.ndarray:
    """Eigenvalues of each layer's representation second moment P_l B P_l^T (descending, >= 0).

    Nonzero spectrum of B^(1/2) (P_l^T P_l) B^(1/2); diagonal case b_k w_k^(2l/L).

    Args:
      grams: (..., d, d) P_l^T P_l (e.g. `trained_layer_grams`).
      second_moment: B, (d,) or (d, d) (pretraining).

    Returns:
      (..., d).
    """
    grams = as_finite_array("grams", grams)
    b = as_finite_array("second_moment", second_moment)
    B = np.diag(b) if b.ndim == 1 else b
    eigenvalues, vectors = np.linalg.eigh((B + B.T) / 2)
    root = (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T
    moment = root @ grams @ root
    spectra = np.linalg.eigvalsh((moment + np.swapaxes(moment, -1, -2)) / 2)[..., ::-1]
    return np.clip(spectra, 0.0, None)


def rankme(singular_values) -> np.ndarray | float:
    """RankMe = exp(-sum_k p_k ln p_k), p_k = sigma_k / sum_i sigma_i (Garrido et al., 2023; no guard).

    The entropy effective rank of the singular values; 0 for an all-zero matrix.

    Args:
      singular_values: (..., k) >= 0 (reduced over the last axis).

    Returns:
      (...) in [1, k] (0 for zeros); a float for one spectrum.
    """
    return entropy_effective_rank(singular_values)


def layer_rankme(pos_cov, second_moment, depth, **trained) -> np.ndarray:
    """RankMe of every layer 0..L on the pretraining distribution: `rankme`(sqrt(`layer_spectra`)).

    Args:
      pos_cov, second_moment, depth: as `trained_layer_grams`; `trained`: its weight_decay, init_scale.

    Returns:
      (L+1,).
    """
    spectra = layer_spectra(trained_layer_grams(pos_cov, second_moment, depth, **trained), second_moment)
    return np.asarray(rankme(np.sqrt(spectra)))


def layer_effective_rank(pos_cov, second_moment, depth, **trained) -> np.ndarray:
    """Entropy effective rank of every layer's covariance spectrum, layers 0..L, (L+1,)."""
    spectra = layer_spectra(trained_layer_grams(pos_cov, second_moment, depth, **trained), second_moment)
    return np.asarray(entropy_effective_rank(spectra))


def layer_risks(pos_cov, second_moment, depth, target, ridge, *, downstream_second_moment=None,
                weight_decay=0.0, init_scale=None) -> np.ndarray:
    """Population test MSE of the normalized ridge probe at every layer 0..L (module docstring).

    Diagonal moments and b_ds: (ridge / (q_j(l) + ridge))^2; otherwise
    theory.downstream.general_probe_risk of G^(l/L).

    Args:
      pos_cov, second_moment, depth, weight_decay, init_scale: as `trained_layer_grams`.
      target: feature index j (y = x_ds_j / sqrt(Sigma_ds_jj)).
      ridge: probe penalty >= 0.
      downstream_second_moment: Sigma_ds, (d,) or (d, d); None means B.

    Returns:
      (L+1,) in [0, 1], layer 0 first.
    """
    moments = validate_moments(pos_cov, second_moment)
    sigma = moments.second_moment if downstream_second_moment is None else as_finite_array(
        "downstream_second_moment", downstream_second_moment)
    grams = trained_layer_grams(pos_cov, second_moment, depth, weight_decay=weight_decay, init_scale=init_scale)
    diagonal_grams = np.all(grams == np.stack([np.diag(np.diagonal(g)) for g in grams]))
    if sigma.ndim == 1 or np.all(sigma == np.diag(np.diagonal(sigma))):
        b_ds = sigma if sigma.ndim == 1 else np.diagonal(sigma).copy()
        if diagonal_grams:
            weights = np.sqrt(np.diagonal(grams, axis1=1, axis2=2))
            return np.asarray(downstream_theory.probe_risk(weights, b_ds, target, ridge))
    return np.asarray([downstream_theory.general_probe_risk(g, sigma, target, ridge) for g in grams])


def _extreme_layer(values, sign: float) -> np.ndarray | int:
    values = as_finite_array("values", values)
    if values.ndim == 0 or values.shape[0] < 2:
        raise ValueError(f"values must have a layer axis of length L+1 >= 2 first, got shape {values.shape}")
    inner = sign * values[1:]
    best = inner.min(axis=0)
    tolerance = _TIE_TOLERANCE * np.maximum(1.0, np.abs(best))
    layer = 1 + np.argmax(inner <= best + tolerance, axis=0)  # first (shallowest) of the tied layers
    return int(layer) if np.ndim(layer) == 0 else layer


def best_layer(risks) -> np.ndarray | int:
    """The oracle's layer: argmin of the risk over layers 1..L (ties within 1e-12: the shallower).

    Args:
      risks: (L+1, ...) per-layer risks, layer 0 first (any trailing grid axes).

    Returns:
      (...) layer index in 1..L; an int for one net.
    """
    return _extreme_layer(risks, 1.0)


def selected_layer(scores) -> np.ndarray | int:
    """A label-free selector's layer: argmax of its score over layers 1..L (ties: the shallower)."""
    return _extreme_layer(scores, -1.0)


def regret(risks, layer) -> np.ndarray | float:
    """Risk at `layer` minus the oracle's risk: risks[layer] - risks[best_layer(risks)] >= 0.

    Args:
      risks: (L+1, ...).
      layer: (...) chosen layer indices.

    Returns:
      (...) regret.
    """
    risks = as_finite_array("risks", risks)
    chosen = np.take_along_axis(risks, np.asarray(layer)[None, ...], axis=0)[0]
    oracle = np.take_along_axis(risks, np.asarray(best_layer(risks))[None, ...], axis=0)[0]
    value = chosen - oracle
    return float(value) if np.ndim(value) == 0 else value


def chord_mean_log_weights(end_to_end_weights, downstream_second_moment, depth) -> np.ndarray:
    """mbar_l = (L/2) (F((l+1)/L) - F(l/L)), F(t) = ln sum_k b_ds_k w_k^(2t), for l = 1..L-1.

    The mean log weight between layers l and l+1 (module docstring); nondecreasing in l.

    Args:
      end_to_end_weights: w, (..., d) >= 0 (dead features 0).
      downstream_second_moment: b_ds, broadcastable to (..., d), >= 0.
      depth: L >= 1.

    Returns:
      (L-1, ...) (empty first axis for L = 1); -inf where no feature survives.
    """
    depth = check_int("depth", depth, minimum=1)
    w = as_finite_array("end_to_end_weights", end_to_end_weights)
    b_ds = as_finite_array("downstream_second_moment", downstream_second_moment)
    if np.any(w < 0) or np.any(b_ds < 0):
        raise ValueError("end_to_end_weights and downstream_second_moment must be >= 0")
    alive = w > 0
    log_w = np.log(np.where(alive, w, 1.0))
    with np.errstate(divide="ignore"):
        F = np.stack([np.log(np.sum(np.where(alive, b_ds * np.exp(2 * (l / depth) * log_w), 0.0), axis=-1))
                      for l in range(1, depth + 1)])
    finite = np.isfinite(F[1:]) & np.isfinite(F[:-1])  # no live feature downstream: F = -inf
    return np.where(finite, (depth / 2) * (np.where(finite, F[1:], 0.0) - np.where(finite, F[:-1], 0.0)), -np.inf)


def best_layer_from_weights(end_to_end_weights, downstream_second_moment, target, depth) -> np.ndarray | int:
    """The best layer from the derived condition alone: min{l : ln w_j <= mbar_l}, else L.

    Equals `best_layer` of the risks for every ridge > 0 (tested); a dead target gives 1.

    Args:
      end_to_end_weights: w, (..., d).
      downstream_second_moment: b_ds, broadcastable to (..., d).
      target: j.
      depth: L.

    Returns:
      (...) in 1..L.
    """
    w = as_finite_array("end_to_end_weights", end_to_end_weights)
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < w.shape[-1]:
        raise ValueError(f"target must be a feature index in [0, {w.shape[-1] - 1}], got {target!r}")
    chords = chord_mean_log_weights(w, downstream_second_moment, depth)
    w_j = w[..., target]
    with np.errstate(divide="ignore"):
        log_w_j = np.where(w_j > 0, np.log(np.where(w_j > 0, w_j, 1.0)), -np.inf)
    # A tie within rounding (ln w_j = mbar_l up to 1e-12) goes to the shallower layer, like best_layer.
    slack = _TIE_TOLERANCE * np.maximum(1.0, np.abs(np.where(np.isfinite(chords), chords, 0.0)))
    stop = log_w_j[None] <= chords + slack
    stop = np.concatenate([stop, np.ones((1,) + stop.shape[1:], bool)], axis=0)
    layer = 1 + np.argmax(stop, axis=0)
    return int(layer) if np.ndim(layer) == 0 else layer


def is_interior(end_to_end_weights, downstream_second_moment, target, depth) -> np.ndarray | bool:
    """Whether the best layer is neither the first nor the last: mbar_1 < ln w_j <= mbar_(L-1)."""
    depth = check_int("depth", depth, minimum=1)
    layer = np.asarray(best_layer_from_weights(end_to_end_weights, downstream_second_moment, target, depth))
    inside = (layer > 1) & (layer < depth)
    return bool(inside) if inside.ndim == 0 else inside


def best_layer_map(pos_cov, second_moment, target, depths, ridge, *, invariance=None, strength=None,
                   downstream_ratio=None, downstream_second_moment=None) -> np.ndarray:
    """l* / L over a grid of the target's knobs, for several depths (diagonal moments, no weight decay).

    The knobs are theory.downstream.target_knobs' (r_j, b_j, b_ds_j / b_j); the map is
    `best_layer`(`layer_risks`) / L, vectorized over the grid.

    Args:
      pos_cov, second_moment: base a, b, (d,).
      target: j.
      depths: sequence of L >= 1.
      ridge: probe penalty > 0 (l* does not depend on it; it only scales the risks).
      invariance, strength, downstream_ratio: None or broadcastable knob arrays.
      downstream_second_moment: base b_ds (d,); default b.

    Returns:
      (len(depths), ...) l* / L in (0, 1].
    """
    ridge = check_float("ridge", ridge, minimum=0.0, strict_minimum=True)
    a, b, b_ds = downstream_theory.target_knobs(pos_cov, second_moment, target, invariance=invariance,
                                                strength=strength, downstream_ratio=downstream_ratio,
                                                downstream_second_moment=downstream_second_moment)
    maps = []
    for depth in depths:
        depth = check_int("depth", depth, minimum=1)
        weights = downstream_theory.feature_layer_weights(a, b, depth)
        maps.append(np.asarray(best_layer(downstream_theory.probe_risk(weights, b_ds, target, ridge))) / depth)
    return np.stack(maps)


def predict_readout(pos_cov, second_moment, depth, target, ridge, *, downstream_second_moment=None,
                    weight_decay=0.0, init_scale=None) -> ReadoutPrediction:
    """Every closed-form readout quantity of one trained balanced net (`ReadoutPrediction`).

    Args: as `layer_risks`.
    """
    trained = {"weight_decay": weight_decay, "init_scale": init_scale}
    grams = trained_layer_grams(pos_cov, second_moment, depth, **trained)
    risk = layer_risks(pos_cov, second_moment, depth, target, ridge,
                       downstream_second_moment=downstream_second_moment, **trained)
    spectra = layer_spectra(grams, second_moment)
    scores = np.asarray(rankme(np.sqrt(spectra)))
    ranks = np.asarray(entropy_effective_rank(spectra))
    oracle, by_rankme, by_rank = best_layer(risk), selected_layer(scores), selected_layer(ranks)
    return ReadoutPrediction(
        risk=risk, best_layer=oracle, head_depth=int(depth) - oracle, rankme=scores, rankme_layer=by_rankme,
        rankme_regret=regret(risk, by_rankme), effective_rank=ranks, effective_rank_layer=by_rank,
        effective_rank_regret=regret(risk, by_rank),
        layer_weights=np.sqrt(np.clip(np.diagonal(grams, axis1=1, axis2=2), 0.0, None)))
