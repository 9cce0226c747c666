"""Downstream linear probes on pre- vs post-projection representations (closed forms).

Setting. Downstream inputs x_ds have independent zero-mean features with second moments b_ds
(`downstream_second_moment`; default: the pretraining b). The representation at layer l of a
trained depth-L linear net is h = P_l x_ds. In the diagonal case P_l^T P_l = diag(w_l^2), where
w_l (d,) holds each feature's weight at layer l (layer 0 is the raw input, w_0 = 1). The probe
sees h centred and divided by the square root of its total variance, so that tr Cov(h) = 1 and
layers of any scale are compared on equal terms. The target is the standardized feature
y = x_ds_j / sqrt(b_ds_j) (variance 1), and the probe is ridge regression

    v* = argmin_v E[(y - v . h)^2] + ridge |v|^2.

Closed form (diagonal case). Rotate h to the feature basis (ridge and the normalization are
rotation invariant); coordinate i then has variance share

    q_i = w_i^2 b_ds_i / sum_k w_k^2 b_ds_k          (sum_i q_i = 1),

and only coordinate j correlates with y, with Cov(y, h_j) = sqrt(q_j). Hence
v*_j = sqrt(q_j) / (q_j + ridge), all other entries 0, and the test mean squared error is

    MSE = E[(y - v* . h)^2] = (1 - q_j / (q_j + ridge))^2 = (ridge / (q_j + ridge))^2,

decreasing in q_j. Its explained variance R^2 = 1 - MSE is the library's *decodability* of the
attribute. A layer with zero total variance (every feature dead) decodes nothing: q = 0, MSE = 1.

When does pre beat post? Since MSE decreases in q_j, layer l beats layer m iff q_j^(l) >
q_j^(m), for every ridge > 0 (at ridge = 0 every layer with w_j > 0 decodes perfectly and they
tie). For balanced nets (P_l^T P_l = G^(l/L), also under weight decay: each layer carries
s^(1/L) of the end-to-end weight s) write w_k for the end-to-end (post) weight, so feature k
has weight w_k^(l/L) at layer l. Cross-multiplying q_j^(l) > q_j^(m) and cancelling the
target's own term b_ds_j w_j^(2l/L) w_j^(2m/L) from both sides:

    layer l beats layer m  <=>  w_j^(2l/L) S_m > w_j^(2m/L) S_l,
    S_l = sum_(k != j) b_ds_k w_k^(2l/L).

Pre (l = L-1) vs post (m = L), depth 2, w_j > 0: pre wins iff

    w_j < sum_(k != j) b_ds_k w_k^2 / sum_(k != j) b_ds_k w_k
        <=>  w_j < sum_k b_ds_k w_k^2 / sum_k b_ds_k w_k          (adding k = j to both sums),

with w_k = sqrt(a_k) / b_k = sqrt(r_k / b_k) at the optimum without weight decay. The right side
is a weighted mean of the *other* features' post weights, so the target's own downstream
strength b_ds_j drops out of the condition (it only scales the size of the gap). Regimes:

- pre wins when the target's post weight is small next to the others': small invariance r_j
  (augmentation disrupts it) or large pretraining strength b_j (w_j = sqrt(r_j / b_j));
- post wins when w_j exceeds that weighted mean (invariant, weak-in-pretraining targets);
- tie when w_j equals it, when no other feature survives (S = 0: the target fills every layer,
  q_j = 1), or when the target is dead (w_j = 0 and l >= 1: MSE = 1 in both).

Depth L, any l < m: with u = w_j^(2/L) the condition reads u^(m-l) < S_m / S_l.

Weight decay only changes the end-to-end weights (theory.weight_decay: basin or global minimum
of each feature's scalar problem); the condition is the same with those weights. Caveat (found in
simulation, pinned by tests/test_downstream.py): the per-feature basin assumes feature-aligned
dynamics. When it leaves a feature i dead while a feature k survives and rotating k's mode toward
i lowers the loss (`basin_is_saddle`: a_i - a_k > b_k s_k^2 (b_i - b_k), s_k the end-to-end
weight), the predicted end state is a saddle of the full network, and gradient flow from a randomly oriented
init (rounding-level misalignment grows) ends elsewhere. Example: a = (0.9, 0.5, 0.8),
b = (1, 0.6, 2), depth 2, wd = 0.03, init 0.1: the basin keeps features {0, 2}, which is a saddle
(Hessian eigenvalue -0.44); training keeps {0, 1} at their stable roots (lower loss). With an
init_scale, `feature_layer_weights` (and every map built on it) therefore follows that escape
(theory.weight_decay.stable_end_weights) by default, like the weighting experiment's prediction;
``escape=False`` gives the aligned basin.

Non-diagonal case: `general_probe_risk` takes P_l^T P_l (e.g. G^(l/L)) and a full downstream
covariance and evaluates the population ridge formula `population_ridge_risk` directly.

All functions are pure NumPy in float64.
"""

from __future__ import annotations

import numpy as np

from theory import linear as linear_theory
from theory import weight_decay as wd_theory
from theory.checks import as_finite_array, check_float, check_int
from theory.common import escape_end, fixed_point_peak, fixed_point_roots, rotation_saddle_mask, top_positive

__all__ = [
    "variance_shares",
    "probe_risk",
    "decodability",
    "population_ridge_risk",
    "general_probe_risk",
    "general_layer_risks",
    "feature_layer_weights",
    "layer_risks",
    "pre_advantage_threshold",
    "pre_beats_post",
    "pre_minus_post",
    "target_knobs",
    "basin_is_saddle",
]


# --------------------------------------------------------------------------- validation


def _check_ridge(ridge) -> float:
    return check_float("ridge", ridge, minimum=0.0)


def _check_target(target, dim: int) -> int:
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < dim:
        raise ValueError(f"target must be a feature index in [0, {dim - 1}], got {target!r}")
    return int(target)


def _check_downstream(downstream_second_moment, shape, target=None) -> np.ndarray:
    """b_ds broadcast to `shape` (..., d); nonnegative, positive at the target."""
    b_ds = as_finite_array("downstream_second_moment", downstream_second_moment)
    if b_ds.ndim == 0 or b_ds.shape[-1] != shape[-1]:
        raise ValueError(f"downstream_second_moment must have {shape[-1]} entries (one per feature) "
                         f"in its last axis, got shape {b_ds.shape}")
    if np.any(b_ds < 0):
        raise ValueError(f"downstream_second_moment must be >= 0, got {b_ds.tolist()}")
    if target is not None and np.any(b_ds[..., target] <= 0):
        raise ValueError(f"downstream_second_moment must be > 0 at the target feature {target}")
    return np.broadcast_to(b_ds, np.broadcast_shapes(b_ds.shape, shape))


def _check_layers(depth, pre_layer, post_layer) -> tuple[int, int, int]:
    depth = check_int("depth", depth, minimum=1)
    pre_layer = depth - 1 if pre_layer is None else pre_layer
    post_layer = depth if post_layer is None else post_layer
    for name, layer in (("pre_layer", pre_layer), ("post_layer", post_layer)):
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= depth:
            raise ValueError(f"{name} must be a layer index in [0, {depth}] (0 = raw input), got {layer!r}")
    return depth, int(pre_layer), int(post_layer)


# --------------------------------------------------------------------------- diagonal closed forms


def variance_shares(weights, downstream_second_moment) -> np.ndarray:
    """Share of the normalized representation's variance carried by each feature.

    q_i = w_i^2 b_ds_i / sum_k w_k^2 b_ds_k; all zeros where the representation is zero.

    Args:
      weights: (..., d) per-feature weights at one layer, |P_l e_i|.
      downstream_second_moment: b_ds, broadcastable to (..., d), >= 0.

    Returns:
      (..., d) nonnegative shares summing to 1 (or 0 for a zero representation).
    """
    w = _check_weights(weights)
    return _variance_shares(w, _check_downstream(downstream_second_moment, w.shape))


def _check_weights(weights) -> np.ndarray:
    w = as_finite_array("weights", weights)
    if w.ndim == 0:
        raise ValueError(f"weights must have a feature axis, got shape {w.shape}")
    return w


def _variance_shares(w, b_ds):
    variances = w**2 * b_ds
    total = variances.sum(axis=-1, keepdims=True)
    return np.where(total > 0, variances / np.where(total > 0, total, 1.0), 0.0)


def probe_risk(weights, downstream_second_moment, target, ridge) -> np.ndarray:
    """Population test MSE of the normalized ridge probe for y = x_j / sqrt(b_ds_j).

    MSE = (ridge / (q_j + ridge))^2 with q_j from `variance_shares` (1 when q_j = 0; 0 when
    ridge = 0 < q_j).

    Args:
      weights: (..., d) per-feature weights at the probed layer (leading axes: e.g. layers).
      downstream_second_moment: b_ds, broadcastable to (..., d), > 0 at the target.
      target: feature index j.
      ridge: probe penalty >= 0 (not the pretraining weight decay).

    Returns:
      (...) MSE in [0, 1]; a float for a single layer.
    """
    w = _check_weights(weights)
    target = _check_target(target, w.shape[-1])
    ridge = _check_ridge(ridge)
    risk = _probe_risk(w, _check_downstream(downstream_second_moment, w.shape, target), target, ridge)
    return float(risk) if risk.ndim == 0 else risk


def _probe_risk(w, b_ds, target, ridge):
    q = _variance_shares(w, b_ds)[..., target]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(q + ridge > 0, (ridge / np.where(q + ridge > 0, q + ridge, 1.0)) ** 2, 1.0)


def decodability(weights, downstream_second_moment, target, ridge) -> np.ndarray:
    """Explained variance R^2 = 1 - MSE of the normalized ridge probe (target variance is 1).

    Args and shapes as in `probe_risk`.
    """
    risk = probe_risk(weights, downstream_second_moment, target, ridge)
    return 1.0 - risk


# --------------------------------------------------------------------------- general closed forms


def population_ridge_risk(covariance, cross_cov, target_var, ridge) -> float:
    """Test MSE of the population ridge regression of y on a zero-mean feature vector h.

    v* = (C + ridge I)^(-1) c (minimum-norm pseudo-inverse when ridge = 0), and
    MSE = target_var - 2 v*.c + v*^T C v*, with C = Cov(h), c = Cov(h, y).

    Args:
      covariance: C, (k, k) symmetric PSD.
      cross_cov: c, (k,).
      target_var: Var(y) >= 0.
      ridge: >= 0.

    Returns:
      float >= 0 (up to rounding).
    """
    C = as_finite_array("covariance", covariance, ndim=2)
    c = as_finite_array("cross_cov", cross_cov, ndim=1)
    if C.shape != (c.size, c.size):
        raise ValueError(f"covariance must have shape ({c.size}, {c.size}) to match cross_cov, got {C.shape}")
    return _ridge_risk(C, c, check_float("target_var", target_var, minimum=0.0), _check_ridge(ridge))


def _ridge_risk(C, c, target_var, ridge):
    eigenvalues, vectors = np.linalg.eigh((C + C.T) / 2)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    shifted = eigenvalues + ridge
    # Ridge 0: directions without variance carry no covariance with y either; drop them.
    floor = 1e-13 * max(eigenvalues.max(initial=0.0), ridge, 1e-300)
    inverse = np.where(shifted > floor, 1.0 / np.where(shifted > floor, shifted, 1.0), 0.0)
    projected = vectors.T @ c
    v = vectors @ (inverse * projected)
    return float(target_var - 2.0 * v @ c + v @ C @ v)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def general_probe_risk(layer_gram, downstream_second_moment, target, ridge) -> float:
    """Probe MSE for a general layer map and general downstream covariance.

    With M = (P_l^T P_l)^(1/2) (P_l = R M for an orthonormal R, which neither the normalization
    nor the ridge sees), Sigma = E[x_ds x_ds^T], u the target direction and y = u.x / sqrt(u^T
    Sigma u):  C = M Sigma M / tr(M Sigma M),  c = M Sigma u / sqrt(tr(M Sigma M) u^T Sigma u),
    MSE = `population_ridge_risk`(C, c, 1, ridge); 1 when tr(M Sigma M) = 0. Reduces to
    `probe_risk` for diagonal inputs.

    Args:
      layer_gram: P_l^T P_l, (d, d) symmetric PSD (e.g. G^(l/L); identity for the raw input).
      downstream_second_moment: Sigma, (d,) or (d, d) symmetric PSD.
      target: feature index j (u = e_j) or a direction u of shape (d,).
      ridge: >= 0.

    Returns:
      float.
    """
    gram = as_finite_array("layer_gram", layer_gram, ndim=2)
    if gram.shape != (gram.shape[0],) * 2:
        raise ValueError(f"layer_gram must be square, got shape {gram.shape}")
    return _general_probe_risk(gram, *_check_general(gram.shape[0], downstream_second_moment, target, ridge))


def _check_general(d, downstream_second_moment, target, ridge):
    """(Sigma (d, d), u (d,), u^T Sigma u, ridge) for `general_probe_risk`."""
    sigma = as_finite_array("downstream_second_moment", downstream_second_moment)
    sigma = np.diag(sigma) if sigma.ndim == 1 else sigma
    if sigma.shape != (d, d):
        raise ValueError(f"downstream_second_moment must have shape ({d},) or ({d}, {d}), got {sigma.shape}")
    if np.linalg.eigvalsh((sigma + sigma.T) / 2).min() < -1e-10 * max(np.abs(sigma).max(), 1e-300):
        raise ValueError("downstream_second_moment must be positive semidefinite")
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        u = np.eye(d)[_check_target(target, d)]
    else:
        u = as_finite_array("target", target, ndim=1)
        if u.size != d:
            raise ValueError(f"target must be an index or a direction of shape ({d},), got shape {u.shape}")
    ridge = _check_ridge(ridge)
    target_var = float(u @ sigma @ u)
    if target_var <= 0:
        raise ValueError("target must have positive downstream variance")
    return sigma, u, target_var, ridge


def _general_probe_risk(gram, sigma, u, target_var, ridge):
    M = _psd_sqrt(gram)
    K = M @ sigma @ M
    total = float(np.trace(K))
    if total <= 0:
        return 1.0
    return _ridge_risk(K / total, M @ sigma @ u / np.sqrt(total * target_var), 1.0, ridge)


def general_layer_risks(pos_cov, second_moment, depth, downstream_second_moment, target, ridge,
                        width=None) -> np.ndarray:
    """Probe MSE at every layer 0..L of the balanced optimum, general (A, B) and Sigma_ds.

    Layer l uses P_l^T P_l = G^(l/L) (`theory.linear`); layer 0 is the raw input (identity).

    Returns:
      (depth + 1,) MSE per layer, layer 0 first.
    """
    grams = linear_theory.layer_grams(pos_cov, second_moment, depth, width)
    d = grams.shape[-1]
    checked = _check_general(d, downstream_second_moment, target, ridge)
    return np.asarray([_general_probe_risk(gram, *checked) for gram in (np.eye(d), *grams)])


# --------------------------------------------------------------------------- trained weights


def _sigma(a, b, depth, weight_decay, init_scale):
    """Per-layer singular value sigma (any shape) at one weight decay > 0.

    The same selection as theory.weight_decay.basin_weights (init_scale given) and
    global_minimum_weights (init_scale None), on the vectorized roots directly: those public
    functions validate (d,) moments through d x d matrices, which a 10^5-point map cannot afford.
    tests/test_downstream.py checks the two agree.
    """
    v_unstable, v_stable, double = fixed_point_roots(a, b, depth, weight_decay)
    stable = np.sqrt(np.where(double, np.nan, v_stable))
    if init_scale is not None:
        unstable = np.sqrt(np.where(double, np.nan, v_unstable))
        return np.where(np.isfinite(stable) & (init_scale > unstable), stable, 0.0)
    if depth == 1:
        threshold = np.clip(4.0 * a, 0.0, None)
    else:
        threshold = fixed_point_peak(a, b, depth)[1] * 2.0 ** ((depth - 1) / depth) / depth
    return np.where(weight_decay < threshold, np.nan_to_num(stable), 0.0)


def _end_to_end(a, b, depth, weight_decay, init_scale, width, escape=True):
    """End-to-end weights s (..., d) for broadcast a, b (..., d) and weight_decay (...)."""
    wd = np.asarray(weight_decay, dtype=np.float64)[..., None]
    a, b, wd = np.broadcast_arrays(a, b, wd)
    s = np.zeros(a.shape)
    for value in np.unique(wd):
        # Features are independent, so every grid point's features go through one flat call.
        index = wd == value
        if value == 0:
            s[index] = np.sqrt(np.clip(a[index], 0.0, None)) / b[index]
        else:
            s[index] = _sigma(a[index], b[index], depth, value, init_scale) ** depth
    if width is not None and width < a.shape[-1]:
        keep = np.apply_along_axis(lambda r: top_positive(r, width), -1, a / b)
        s = np.where(keep, s, 0.0)
    elif escape and init_scale is not None:
        # Randomly oriented flows leave basin states that are saddles of the full network; only
        # those (usually few) grid points need the sequential escape analysis.
        saddle = np.asarray(rotation_saddle_mask(a, b, s) & (wd[..., 0] > 0))
        for index in np.argwhere(saddle):
            index = tuple(index)
            s[index] = escape_end(a[index], b[index], depth, float(wd[index][0]), init_scale,
                                  "feature_layer_weights")[0][-1]
    return s


def feature_layer_weights(pos_cov, second_moment, depth, *, weight_decay=0.0, init_scale=None,
                          width=None, escape=True) -> np.ndarray:
    """Per-feature weight at every layer 0..L of the trained balanced net (row 0 = raw input).

    Row l is s^(l/L), s the end-to-end weight: sqrt(a)/b without weight decay (0 where a <= 0);
    with weight decay the stable root of theory.weight_decay, taken at the global minimum
    (init_scale None) or in the basin of an aligned balanced init of per-layer scale init_scale.

    Args:
      pos_cov: a, (..., d) (any leading grid axes, broadcast with second_moment).
      second_moment: b, (..., d), > 0, |a| <= b.
      depth: L >= 1.
      weight_decay: scalar or (...) array (one value per grid point), >= 0.
      init_scale: None (global minimum) or per-layer singular value of the init, > 0.
      width: narrowest layer width p (top-p features by r = a / b are kept), or None.
      escape: with init_scale and width >= d (or None), follow the escape of a randomly oriented
        flow from basin states that are saddles of the full network
        (theory.weight_decay.stable_end_weights), as simulations.experiments.weighting.predict
        does; False keeps the per-feature basin (exact for feature-aligned init).

    Returns:
      (depth + 1, ..., d).
    """
    checked = _check_trained(pos_cov, second_moment, check_int("depth", depth, minimum=1), weight_decay,
                             init_scale, width)
    return _trained_weights(*checked, bool(escape))


def _check_trained(pos_cov, second_moment, depth, weight_decay, init_scale, width):
    """Validated (a, b, depth, weight_decay, init_scale, width) of `feature_layer_weights` (depth checked)."""
    a = as_finite_array("pos_cov", pos_cov)
    b = as_finite_array("second_moment", second_moment)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("pos_cov and second_moment must have a feature axis")
    if np.any(b <= 0):
        raise ValueError("second_moment must be > 0")
    a, b = np.broadcast_arrays(a, b)
    if np.any(np.abs(a) > b * (1 + 1e-10)):
        raise ValueError("pos_cov must satisfy |a_i| <= b_i")
    wd = as_finite_array("weight_decay", weight_decay)
    if np.any(wd < 0):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if init_scale is not None:
        init_scale = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
    if width is not None:
        width = check_int("width", width, minimum=1)
    return a, b, depth, wd, init_scale, width


def _trained_weights(a, b, depth, wd, init_scale, width, escape):
    s = _end_to_end(a, b, depth, wd, init_scale, width, escape)
    exponents = np.arange(depth + 1) / depth
    return s[None] ** exponents.reshape((-1,) + (1,) * s.ndim)


def layer_risks(pos_cov, second_moment, target, ridge, *, downstream_second_moment=None, depth=2,
                weight_decay=0.0, init_scale=None, width=None, escape=True) -> np.ndarray:
    """Probe MSE at every layer 0..L of the trained net (`probe_risk` of `feature_layer_weights`).

    Returns:
      (depth + 1, ...) MSE, layer 0 (raw input) first.
    """
    depth = check_int("depth", depth, minimum=1)
    return _layer_risks(pos_cov, second_moment, target, ridge, downstream_second_moment, depth, weight_decay,
                        init_scale, width, escape)


def _layer_risks(pos_cov, second_moment, target, ridge, downstream_second_moment, depth, weight_decay,
                 init_scale, width, escape):
    """`layer_risks` with depth already checked; validates everything else once."""
    checked = _check_trained(pos_cov, second_moment, depth, weight_decay, init_scale, width)
    weights = _trained_weights(*checked, bool(escape))
    target = _check_target(target, weights.shape[-1])
    ridge = _check_ridge(ridge)
    b_ds = second_moment if downstream_second_moment is None else downstream_second_moment
    return _probe_risk(weights, _check_downstream(b_ds, weights.shape, target), target, ridge)


def basin_is_saddle(pos_cov, second_moment, end_to_end_weights) -> np.ndarray:
    """Whether a feature-aligned end state is a saddle of the full (unaligned) network.

    Same as `theory.weight_decay.rotation_saddle` (derivation there): rotating the input-side
    direction of a surviving feature k's mode toward a dead feature i (at fixed singular values, so
    the weight-decay penalty is unchanged) changes the loss by
    2 s_k^2 sin^2(theta) [-(a_i - a_k) + s_k^2 b_k (b_i - b_k)] + O(theta^4); the state is a saddle
    iff that is negative for some pair:

        a_i - a_k > s_k^2 b_k (b_i - b_k),   s_k > 0 = s_i,

    at any depth. Where the flow ends instead: `theory.weight_decay.stable_end_weights`.

    Args:
      pos_cov: a, (..., d).
      second_moment: b, (..., d).
      end_to_end_weights: s, (..., d) (e.g. row L of `feature_layer_weights`).

    Returns:
      (...) bool.
    """
    return wd_theory.rotation_saddle(pos_cov, second_moment, end_to_end_weights)


# --------------------------------------------------------------------------- pre vs post


def pre_advantage_threshold(end_to_end_weights, downstream_second_moment, target, *, depth=2,
                            pre_layer=None, post_layer=None) -> np.ndarray:
    """The bound u_j must stay below for layer `pre_layer` to beat `post_layer`.

    u_j = w_j^(2 (m - l) / L) < S_m / S_l with S_l = sum_(k != j) b_ds_k w_k^(2l/L). Depth 2,
    l = 1, m = 2: w_j < sum_(k != j) b_ds_k w_k^2 / sum_(k != j) b_ds_k w_k. inf where S_l = 0
    (no other feature present at the pre layer).

    Args:
      end_to_end_weights: w, (..., d) post (layer L) weights.
      downstream_second_moment: b_ds, broadcastable to (..., d).
      target: j.
      depth, pre_layer (default L-1), post_layer (default L): 0 <= layers <= L.

    Returns:
      (...) the threshold S_m / S_l.
    """
    w = as_finite_array("end_to_end_weights", end_to_end_weights)
    if w.ndim == 0:
        raise ValueError("end_to_end_weights must have a feature axis")
    target = _check_target(target, w.shape[-1])
    depth, l, m = _check_layers(depth, pre_layer, post_layer)
    b_ds = _check_downstream(downstream_second_moment, w.shape, target)
    others = np.ones(w.shape[-1], bool)
    others[target] = False
    s_pre = np.sum((b_ds * np.abs(w) ** (2 * l / depth))[..., others], axis=-1)
    s_post = np.sum((b_ds * np.abs(w) ** (2 * m / depth))[..., others], axis=-1)
    with np.errstate(divide="ignore"):
        return np.where(s_pre > 0, s_post / np.where(s_pre > 0, s_pre, 1.0), np.inf)


def pre_beats_post(end_to_end_weights, downstream_second_moment, target, *, depth=2, pre_layer=None,
                   post_layer=None) -> np.ndarray:
    """The derived condition: does layer `pre_layer` decode feature j strictly better?

    True iff w_j^(2l/L) S_m > w_j^(2m/L) S_l (module docstring), which for depth 2 and w_j > 0 is
    w_j < sum_k b_ds_k w_k^2 / sum_k b_ds_k w_k. Independent of the ridge (any ridge > 0) and of
    b_ds_j. Ties (False): w_j on the boundary, no other feature present, or w_j = 0 at l >= 1.
    An empty post layer (all w = 0) loses to the raw input (l = 0).

    Args:
      end_to_end_weights: w, (..., d) post (layer L) weights, e.g. sqrt(a)/b.
      downstream_second_moment: b_ds, broadcastable to (..., d).
      target: j.
      depth, pre_layer (default L-1), post_layer (default L).

    Returns:
      (...) bool.
    """
    w = as_finite_array("end_to_end_weights", end_to_end_weights)
    if w.ndim == 0:
        raise ValueError("end_to_end_weights must have a feature axis")
    target = _check_target(target, w.shape[-1])
    depth, l, m = _check_layers(depth, pre_layer, post_layer)
    b_ds = _check_downstream(downstream_second_moment, w.shape, target)
    others = np.ones(w.shape[-1], bool)
    others[target] = False
    w = np.abs(w)
    s_pre = np.sum((b_ds * w ** (2 * l / depth))[..., others], axis=-1)
    s_post = np.sum((b_ds * w ** (2 * m / depth))[..., others], axis=-1)
    w_j = w[..., target]
    result = w_j ** (2 * l / depth) * s_post > w_j ** (2 * m / depth) * s_pre
    # An empty post layer (every feature dead; only possible against the raw input, l = 0) has
    # q_j = 0, so the cross-multiplied form (which assumes nonzero totals) reads 0 > 0 there.
    empty_post = (s_post == 0) & (w_j == 0) & (m > 0)
    result = result | (empty_post & (w_j ** (2 * l / depth) > 0))
    return bool(result) if np.ndim(result) == 0 else result


def pre_minus_post(pos_cov, second_moment, target, ridge, *, downstream_second_moment=None, depth=2,
                   pre_layer=None, post_layer=None, weight_decay=0.0, init_scale=None,
                   escape=True) -> np.ndarray:
    """Pre error minus post error of the probe, MSE_pre - MSE_post (negative: pre wins).

    Vectorized over grids: pos_cov, second_moment, downstream_second_moment broadcast to
    (..., d) and weight_decay to (...). Build knob grids with `target_knobs`.

    Args:
      pos_cov, second_moment: a, b, (..., d).
      target: j.
      ridge: probe penalty >= 0.
      downstream_second_moment: b_ds (..., d); default b.
      depth: L; pre_layer (default L-1), post_layer (default L).
      weight_decay: pretraining weight decay, scalar or (...).
      init_scale: None (global minimum of the weight-decay problem) or the init's per-layer scale
        (basin of gradient flow); irrelevant at weight_decay = 0.
      escape: follow the escape from basin saddles (see `feature_layer_weights`).

    Returns:
      (...) float.
    """
    depth, l, m = _check_layers(depth, pre_layer, post_layer)
    risks = _layer_risks(pos_cov, second_moment, target, ridge, downstream_second_moment, depth, weight_decay,
                         init_scale, None, escape)
    difference = np.asarray(risks[l] - risks[m])
    return float(difference) if difference.ndim == 0 else difference


def target_knobs(pos_cov, second_moment, target, *, invariance=None, strength=None, downstream_ratio=None,
                 others_strength=None, downstream_second_moment=None):
    """Moments with the target's knobs set to (broadcast) grid values.

    Knobs: invariance r_j (a_j = r_j b_j), pretraining strength b_j (a_j = r_j b_j at fixed r_j),
    downstream_ratio b_ds_j / b_j, others_strength (a factor multiplying a_k and b_k of every
    k != j, which keeps their r_k and scales their post weights by 1/sqrt(factor)). Knob arrays
    broadcast against each other; a grid axis is added in front of the feature axis.

    Args:
      pos_cov, second_moment: base a, b, (d,).
      target: j.
      invariance, strength, downstream_ratio, others_strength: None (keep the base) or arrays.
      downstream_second_moment: base b_ds (d,); default b (pretraining), after the knobs.

    Returns:
      (a, b, b_ds), each (..., d).
    """
    a = as_finite_array("pos_cov", pos_cov, ndim=1)
    b = as_finite_array("second_moment", second_moment, ndim=1)
    d = a.size
    target = _check_target(target, d)
    knobs = {name: None if value is None else as_finite_array(name, value) for name, value in
             (("invariance", invariance), ("strength", strength), ("downstream_ratio", downstream_ratio),
              ("others_strength", others_strength))}
    shape = np.broadcast_shapes(*(v.shape for v in knobs.values() if v is not None)) if any(
        v is not None for v in knobs.values()) else ()

    def full(value, base):
        return np.broadcast_to(base if value is None else value, shape)

    r_j = full(knobs["invariance"], a[target] / b[target])
    b_j = full(knobs["strength"], b[target])
    factor = full(knobs["others_strength"], 1.0)
    if np.any(np.abs(r_j) > 1):
        raise ValueError("invariance must lie in [-1, 1]")
    if np.any(b_j <= 0) or np.any(factor <= 0):
        raise ValueError("strength and others_strength must be > 0")
    a_grid = np.broadcast_to(a, shape + (d,)) * factor[..., None]
    b_grid = np.broadcast_to(b, shape + (d,)) * factor[..., None]
    a_grid[..., target] = r_j * b_j
    b_grid[..., target] = b_j
    if downstream_second_moment is None:
        b_ds = b_grid.copy()
    else:
        b_ds = np.broadcast_to(_check_downstream(downstream_second_moment, (d,)), shape + (d,)).copy()
    if knobs["downstream_ratio"] is not None:
        if np.any(knobs["downstream_ratio"] <= 0):
            raise ValueError("downstream_ratio must be > 0")
        b_ds[..., target] = full(knobs["downstream_ratio"], 1.0) * b_j
    return a_grid, b_grid, b_ds
