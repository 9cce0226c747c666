"""A linear encoder behind the fixed reweighting head: which feature lands where, and its weights.

Setting. Encoder h = W x (W: m x d; deeper encoders W = W_L ... W_1, see below), frozen head
z = D_k h with D_k = diag(1, 1/k, ..., 1/k^(m-1)), k >= 1, trained by gradient flow on the
population spectral loss of the head's output, L(D_k W) with
L(M) = -2 tr(M A M^T) + tr((M B M^T)^2). Diagonal (feature-aligned) moments a_i, b_i,
ratios r_i = a_i / b_i.

Post-head weights (fixed by the loss). L depends on M = D_k W only through M^T M, and its
minimizers are M^T M = G* (theory.linear.optimal_gram). The head is invertible, so every optimal
M is reachable: the post-head weight of feature i is ||D_k W e_i|| = sqrt(a_i) / b_i when it is
learned (r_i > 0 and among the top p = m ratios), 0 otherwise -- exactly the no-head optimum,
whatever k. What the head changes is *which* optimum: M = R diag(sqrt(a)/b) on the learned
features, with R any m x m orthogonal matrix (a manifold of global minima, all with equal loss),
and the pre-head weights ||W e_i|| = ||D_k^(-1) R e_i|| sqrt(a_i)/b_i depend on R.

Pre-head weights (chosen by the implicit bias of small initialization). In M the flow reads
dM/dt = -D_k^2 grad L(M): row j of M (coordinate j of the encoder) learns with rate k^(-2j).

1. Linear phase. From init eps, entry (j, i) grows like exp(4 a_i k^(-2j) t): the first row
   escapes first, at t_0 ~ ln(1/eps) / (4 a_max), and by then row j has grown only by
   eps^(-k^(-2j)), i.e. it is still at size eps^(1 - k^(-2j)).
2. Time-scale separation (k -> infinity, or eps -> 0 at fixed k > 1). Each row then evolves while
   the rows above it have converged and the rows below it are still ~0, so row j solves a rank-one
   problem deflated by rows 0..j-1: minimize -2 u A u^T + (u B u^T)^2 + (cross terms with the
   learned rows) over u. Its only stable point is the top remaining eigenvector of
   C = B^(-1/2) A B^(-1/2): in the diagonal case the feature with the largest remaining r_i,
   with |u_i| = sqrt(a_i) / b_i. The order is by r, not by a: the feature with the largest a grows
   first (linear rate 4 a_i), but once row j carries feature g at its optimum, the row's own
   saturation (u B u^T = r_g) damps every other component i at rate 4 k^(-2j) b_i (r_i - r_g), so a
   feature with a higher ratio keeps growing and takes the row over, pushing g down to the next
   row (an exchange, not a stable state: a row holding g while r_i > r_g is a saddle of the
   deflated rank-one problem). Components of lower rows on an already learned feature are neutral
   at linear order (rotations inside the minimum manifold), so nothing moves a feature back up.
3. Hence, for k > 1 and eps -> 0: the feature ranked n-th by r (n = 0 for the largest, among the
   learned ones) ends on coordinate n, M e_i = (sqrt(a_i)/b_i) e_n, and

       pre-head weight  ||W e_i|| = k^n sqrt(a_i) / b_i,   post-head weight sqrt(a_i) / b_i.

   k = 1 is no head: then R stays random and the pre-head weights equal the post-head ones.

Where it fails (measured: docs/reweighting.md and the figure figures/reweighting_pre_weights.py;
the margins below are order-of-magnitude estimates, checked against simulation only as trends,
not derived to the constant):
- Relative ratio gaps below 1/k^2 (:func:`exchange_margin` < 1). An exchange in row n between the
  feature g that should win it and a feature f of larger a but smaller ratio runs at rate
  4 k^(-2n) b_g (r_g - r_f), while row n+1 captures g at rate 4 k^(-2n-2) a_g; the exchange wins
  iff (r_g - r_f) / r_g > 1/k^2. At equal log head starts this comparison does not depend on eps,
  so the error falls only slowly as the init shrinks. Measured at init 1e-4, d = 4, b ~ U(0.5, 2),
  16 problems each: margin k^2 min_n (r_n - r_(n+1)) / r_n below 0.5: 6% within 1e-3 (worst
  0.93, median 0.06); margin 0.84-0.95: 94% within 1e-3 (worst 1.1e-2); margin 1.9: all within
  1e-6.
- The init's orientation (a lottery at finite eps): a coordinate whose random initial overlap with
  its feature is small starts late by ln(1/overlap), which the separation must outweigh; the same
  problem at k = 2, eps = 1e-8 measured 0.59 with one seed and 7.6e-4 with another.
- k close to 1: the separation of step 1 is eps^(1 - 1/k^2) = exp(-(1 - 1/k^2) ln(1/eps)). At
  k = 1.05 and eps = 1e-4 that is 0.42, so the next row is not small when a row saturates and
  features mix across coordinates (the paper's self-supervised value k = 1.05 lies here).
  :func:`separation` returns this number.
- Small gaps between ratios: the exchange of step 2 runs at rate 4 k^(-2j) b_i (r_i - r_g); when
  r_i - r_g is small it is slower than the growth of the next row (rate 4 a_i k^(-2j-2)), the next
  row captures part of feature i first, and the assignment freezes mixed (R not a permutation).
- Large init: no linear phase, R stays close to its random start.
- Ties (r_i = r_g): any rotation inside the tied block is an optimum of every deflated problem, so
  the assignment inside the block is set by the init; only the block's coordinates are predicted.

Deeper encoders (h = W_L ... W_1 x, head on top). Post-head weights are unchanged (the loss still
sees one linear map). The rank rule at the encoder's output carries over (time-scale separation
acts on the rows of W_L in the same way); pre-head weights are then k^n sqrt(a_i)/b_i at the
encoder output and, with balanced layers, (k^n sqrt(a_i)/b_i)^(l/L) at encoder layer l
(:func:`fixed_head_weights` takes ``depth``). It holds much better than at depth 1: from small
init a depth-L >= 2 mode escapes its plateau in a time that grows like a power of 1/eps (not
ln(1/eps)), so when one coordinate escapes, the next one is still at its init scale and no head
start accumulates. Measured (depth 2, k = 2, the random problems of margin 0.42 on which depth 1
fails by up to 0.93): within 4.8e-4 at per-layer init 1e-2 and within 9e-6 at 1e-3, every
encoder layer within 6e-5.

All functions are pure NumPy in float64.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from theory import downstream as downstream_theory
from theory.checks import check_float, check_int
from theory.common import diagonal_moments, top_positive

__all__ = [
    "FixedHeadWeights",
    "feature_ranks",
    "fixed_head_weights",
    "separation",
    "min_ratio_gap",
    "exchange_margin",
    "rank_rule_tolerance",
    "RANK_RULE_REGIME",
    "probe_risks",
]

#: Regime in which the rank rule was measured to hold (tests/test_reweighting.py, docs/reweighting.md):
#: from init_scale <= max_init_scale, exchange_margin -> relative tolerance on the pre-head
#: weights. Not the naive regime "k >= 2 and ratio gaps >= 0.1 at init <= 1e-4": that one was
#: measured to fail (0 of 16 random problems within 1e-3 at k = 2, gaps 0.1; worst 0.93).
RANK_RULE_REGIME = {"max_init_scale": 1e-4, "margins": ((1.5, 1e-3), (0.8, 5e-2))}


class FixedHeadWeights(NamedTuple):
    """Per-feature weights of a linear encoder behind the fixed head.

    Attributes:
        pre: (d,) or (depth, d): ||P_l e_i|| of the encoder (rows l = 1..depth when depth > 1).
        post: (d,) ||D_k W e_i||.
    """

    pre: np.ndarray
    post: np.ndarray


def _check_kappa(kappa) -> float:
    return check_float("kappa", kappa, minimum=1.0)


def feature_ranks(pos_cov, second_moment, width=None) -> np.ndarray:
    """Coordinate n each feature lands on: its rank by r = a / b among the learned features.

    n = 0 for the largest ratio. Ties are broken toward the lower index (the assignment inside a
    tied block is set by the initialization, see the module docstring). Unlearned features
    (r_i <= 0, or beyond the top ``width``) get -1.

    Args:
      pos_cov: a, (d,).
      second_moment: b, (d,).
      width: encoder width m (None: unconstrained).

    Returns:
      (d,) int.
    """
    a, b = diagonal_moments(pos_cov, second_moment, "feature_ranks")
    return _ranks(a, b, _check_width(width))


def _check_width(width) -> int | None:
    return None if width is None else check_int("width", width, minimum=1)


def _ranks(a, b, width):
    r = a / b
    learned = top_positive(r, width)
    order = [i for i in np.argsort(-r, kind="stable") if learned[i]]
    ranks = np.full(r.size, -1)
    ranks[order] = np.arange(len(order))
    return ranks


def fixed_head_weights(pos_cov, second_moment, kappa, width=None, depth: int = 1) -> FixedHeadWeights:
    """Predicted pre- and post-head weights from small initialization (the rank rule).

        post_i = sqrt(a_i) / b_i,    pre_i = k^(n_i) sqrt(a_i) / b_i     (learned features),

    n_i = :func:`feature_ranks`; both 0 for unlearned features. With ``depth`` > 1 (encoder
    W_L ... W_1, balanced layers) ``pre`` has one row per encoder layer, pre_i^(l/L).

    Args:
      pos_cov: a, (d,).
      second_moment: b, (d,).
      kappa: k >= 1.
      width: encoder width m (None: d).
      depth: encoder layers L >= 1.

    Returns:
      FixedHeadWeights(pre (d,) or (depth, d), post (d,)).
    """
    a, b = diagonal_moments(pos_cov, second_moment, "fixed_head_weights")
    kappa = _check_kappa(kappa)
    depth = check_int("depth", depth, minimum=1)
    ranks = _ranks(a, b, _check_width(width))
    learned = ranks >= 0
    post = np.where(learned, np.sqrt(np.clip(a, 0.0, None)) / b, 0.0)
    pre = np.where(learned, kappa ** np.maximum(ranks, 0) * post, 0.0)
    if depth > 1:
        pre = pre[None, :] ** (np.arange(1, depth + 1)[:, None] / depth)
    return FixedHeadWeights(pre, post)


def separation(kappa, init_scale) -> float:
    """eps^(1 - 1/k^2): the size (relative to its final value) of the next coordinate when one saturates.

    Small means well separated learning times (the rank rule's regime); k = 1 gives 1 (no
    separation, no head). Depth-1 encoder, linear phase.
    """
    kappa = _check_kappa(kappa)
    eps = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
    return float(eps ** (1.0 - kappa**-2))


def min_ratio_gap(pos_cov, second_moment) -> float:
    """Smallest gap between consecutive positive ratios r = a / b (inf with fewer than two)."""
    a, b = diagonal_moments(pos_cov, second_moment, "min_ratio_gap")
    r = np.sort((a / b)[a > 0])
    return float(np.min(np.diff(r))) if r.size > 1 else float("inf")


def exchange_margin(pos_cov, second_moment, kappa, width=None) -> float:
    """k^2 min_n (r_(n) - r_(n+1)) / r_(n) over consecutive learned ratios (descending); inf if < 2.

    The exchange between neighbouring coordinates completes before the next coordinate captures
    the feature when this exceeds ~1 (module docstring); the rank rule was measured to fail
    in 94% of random problems whenever it is below 0.5 at init 1e-4 (RANK_RULE_REGIME).
    """
    kappa = _check_kappa(kappa)
    a, b = diagonal_moments(pos_cov, second_moment, "exchange_margin")
    ranks = _ranks(a, b, _check_width(width))
    r = np.sort((a / b)[ranks >= 0])[::-1]
    if r.size < 2:
        return float("inf")
    return float(kappa**2 * np.min((r[:-1] - r[1:]) / r[:-1]))


def rank_rule_tolerance(pos_cov, second_moment, kappa, init_scale, width=None) -> float | None:
    """Relative accuracy of the rank rule's pre-head weights where it was measured to hold, else None.

    From init_scale <= 1e-4: 1e-3 when :func:`exchange_margin` >= 1.5, 5e-2 when it is >= 0.8
    (:data:`RANK_RULE_REGIME`); None otherwise (no claim: the rule is then only the small-init
    limit, approached slowly).
    """
    eps = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
    margin = exchange_margin(pos_cov, second_moment, kappa, width)
    if eps > RANK_RULE_REGIME["max_init_scale"]:
        return None
    for minimum, tolerance in RANK_RULE_REGIME["margins"]:
        if margin >= minimum * (1 - 1e-9):  # slack: margins written as round numbers
            return tolerance
    return None


def probe_risks(pos_cov, second_moment, kappa, target, ridge, *, downstream_second_moment=None,
                width=None) -> dict[str, float]:
    """Downstream probe MSE (theory.downstream.probe_risk) of every representation we compare.

    ``fixed_pre``: the encoder behind the fixed head (rank rule weights k^n sqrt(a)/b);
    ``fixed_post``: its head output (sqrt(a)/b, identical to ``no_head``); ``no_head``: a one-layer
    encoder trained without head; ``learned_pre`` / ``learned_post``: layer 1 / 2 of a two-layer
    linear net (balanced: (sqrt(a)/b)^(1/2) and sqrt(a)/b).

    Under the rank rule the target's variance share at the fixed head's pre layer is
    q_j(k) = k^(2 n_j) w_j^2 b_ds_j / sum_i k^(2 n_i) w_i^2 b_ds_i: it grows with k for the
    lowest-ratio learned feature (toward 1) and shrinks for the highest-ratio one, so the fixed
    head favours augmentation-disrupted (low r) targets whatever their strength b, whereas the
    learned head flattens the post weights w = sqrt(r / b) and so also favours strong (large b)
    targets.

    Args:
      pos_cov, second_moment: a, b (d,).
      kappa: k >= 1.
      target: feature index j.
      ridge: probe penalty >= 0.
      downstream_second_moment: b_ds (d,); None means b.
      width: encoder width (None: d).

    Returns:
      dict of floats with the keys above.
    """
    weights = fixed_head_weights(pos_cov, second_moment, kappa, width=width)
    b_ds = second_moment if downstream_second_moment is None else downstream_second_moment
    # One probe call on the stacked representations validates b_ds, target and ridge once.
    names = ("fixed_pre", "fixed_post", "no_head", "learned_pre", "learned_post")
    stacked = np.stack([weights.pre, weights.post, weights.post, np.sqrt(weights.post), weights.post])
    return dict(zip(names, map(float, downstream_theory.probe_risk(stacked, b_ds, target, ridge)), strict=True))
