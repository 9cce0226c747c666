"""Exact population spectral loss and fixed points of the diagonal two-layer ReLU network.

Network (simulations.models.relu.DiagonalReLUParams): input coordinate j feeds g channels,
h_(j,a) = relu(u_ja x_j + c_ja), and a linear head z = V h with V of shape (k, d g) (channel
(j, a) is column j g + a). With M = V^T V the spectral loss is that of a linear head on h:

    L = -2 E[z . z+] + E[(z . z-)^2] = -2 tr(M A_h) + tr((M B_h)^2),
    A_h = sym E[h h+^T],  B_h = E[h h^T].

With independent features the entries split into one-dimensional moments of relu under each
feature's law: for channels of different features E[h_(j,a) h+_(l,b)] = m_ja m_lb (means), and
within feature j

    S_j(a, b) = E[relu(u_a x + c_a) relu(u_b x + c_b)]   (one view),
    P_j(a, b) = E[relu(u_a x + c_a) relu(u_b x+ + c_b)]  (the two views of one sample).

Closed forms (x = s t, t ~ N(0, 1)): a product of two ramps is a quadratic in t on an interval
[lo, hi], integrated with the Gaussian partial moments Phi(hi) - Phi(lo), phi(lo) - phi(hi) and
(Phi(hi) - Phi(lo)) + lo phi(lo) - hi phi(hi). The pair laws of the presets reduce P_j to these:

==============  ====================================================================  ======
kind            P_j(a, b)                                                             bias
==============  ====================================================================  ======
sign_flip q     p S(u_a, c_a; u_b, c_b) + (1 - p) S(u_a, c_a; -u_b, c_b),             yes
                p = (1 - q)^2 + q^2 (x+ = x or x+ = -x)
drop_replace p  (1 - p)^2 S + (1 - (1 - p)^2) m_a m_b (otherwise independent views)   yes
drop_to_zero p  mixture of N(0, s^2) (prob 1 - p) and 0 (prob p) for each view       yes
correlated phi  |u_a u_b| s^2 kappa(sign(u_a u_b) phi),                               no
                kappa(rho) = (sqrt(1 - rho^2) + (pi - arccos rho) rho) / (2 pi)
additive_noise  as correlated with marginal variance s^2 + t^2, rho = s^2 / (s^2 + t^2)  no
==============  ====================================================================  ======

(kappa is the degree-1 arc-cosine kernel; a bivariate Gaussian pair with biases would need the
bivariate normal CDF and is not supported.)

Fixed points (no bias, no weight decay): with fixed channel orientations sigma_ja = sign(u_ja),
h = D psi with psi_ja = relu(sigma_ja x_j) and D = diag(|u|), so z = W psi with W = V D and the
loss is the linear one in W with moments (A_psi, B_psi). Its minimum (head width k) is

    W^T W = G = B_psi^(-1/2) [C]_(top k, +) B_psi^(-1/2),   C = B_psi^(-1/2) A_psi B_psi^(-1/2),

loss -sum of the kept eigenvalues squared. Gradient flow conserves u_c^2 - |V_:,c|^2 per channel
(relu is positively homogeneous), so from small init |u_c|^2 = |W_:,c| = sqrt(G_cc): the encoder
predicted is |u_c| = G_cc^(1/4), the head Gram V^T V = D^(-1) G D^(-1). A channel is learned iff
G_cc > 0. For a sign-flipped feature with q = 1/2 the odd function x_j = psi_+ - psi_- has
eigenvalue 0 (E[x_j x+_j] = 0) while |x_j| = psi_+ + psi_- is invariant: both channels grow (h
holds x_j) and the head adds them (z holds only |x_j|). The decodability of any attribute from h
and z then follows from second moments (:func:`decodability`).

Functions here use jax.numpy so that the closed form is differentiable (its gradient feeds
simulations.flow); they compute in float64 when x64 is enabled and never change jax.config.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from theory.checks import as_finite_array, check_float, check_int
from theory.downstream import population_ridge_risk

#: Kinds of feature law with a closed form (data.FeatureAugmentation kinds).
SUPPORTED_KINDS = ("sign_flip", "drop_replace", "drop_to_zero", "correlated", "additive_noise")
#: Kinds whose pair law is a bivariate Gaussian: closed form only without bias.
_BIAS_FREE_KINDS = ("correlated", "additive_noise")
# Stand-in for infinite interval ends: phi(1e3) = 0 and Phi(1e3) = 1 exactly in float64.
_BIG = 1e3
# Eigenvalues of C within this (relative) of the k-th kept one make the optimum ambiguous.
_TIE_RTOL = 1e-9


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureLaws:
    """Independent per-feature laws (one data.FeatureAugmentation per coordinate, as arrays).

    Attributes:
        kinds: one of SUPPORTED_KINDS per feature (static).
        stds: s_j > 0, (d,) (may be traced inside jit).
        strengths: q / p / phi / t per feature, (d,) (may be traced).
    """

    kinds: tuple[str, ...]
    stds: object
    strengths: object

    def __post_init__(self):
        kinds = tuple(self.kinds)
        if not kinds:
            raise ValueError("kinds must name at least one feature law")
        for i, kind in enumerate(kinds):
            if kind not in SUPPORTED_KINDS:
                raise ValueError(f"kinds[{i}] must be one of {list(SUPPORTED_KINDS)}, got {kind!r}")
        object.__setattr__(self, "kinds", kinds)
        for name in ("stds", "strengths"):
            value = getattr(self, name)
            if not isinstance(value, jax.core.Tracer):
                value = as_finite_array(name, value, ndim=1)
                if value.shape != (len(kinds),):
                    raise ValueError(f"{name} must have shape ({len(kinds)},), got {value.shape}")
                object.__setattr__(self, name, value)
        if not isinstance(self.stds, jax.core.Tracer) and np.any(np.asarray(self.stds) <= 0):
            raise ValueError(f"stds must be > 0, got {np.asarray(self.stds).tolist()}")

    @property
    def dim(self) -> int:
        return len(self.kinds)

    @classmethod
    def from_features(cls, features) -> FeatureLaws:
        """From a sequence of objects with .kind, .std, .strength (data.FeatureAugmentation)."""
        features = tuple(features)
        return cls(kinds=tuple(f.kind for f in features), stds=[f.std for f in features],
                   strengths=[f.strength for f in features])


# ----------------------------------------------------------------------------------------------
# One-dimensional Gaussian moments of ramps
# ----------------------------------------------------------------------------------------------


def _normal_pdf(t):
    return jnp.exp(-0.5 * t * t) / jnp.sqrt(2.0 * jnp.pi)


def _ramp_interval(alpha, beta):
    """[lo, hi] where alpha t + beta > 0 (empty: lo = BIG > hi = -BIG)."""
    safe = jnp.where(alpha == 0, 1.0, alpha)
    root = jnp.clip(-beta / safe, -_BIG, _BIG)
    lo = jnp.where(alpha > 0, root, jnp.where((alpha == 0) & (beta <= 0), _BIG, -_BIG))
    hi = jnp.where(alpha < 0, root, jnp.where((alpha == 0) & (beta <= 0), -_BIG, _BIG))
    return lo, hi


def _partial_moments(lo, hi):
    """int_lo^hi t^n phi(t) dt for n = 0, 1, 2 (zero when hi <= lo)."""
    inside = hi > lo
    hi = jnp.where(inside, hi, lo)
    m0 = jax.scipy.special.ndtr(hi) - jax.scipy.special.ndtr(lo)
    m1 = _normal_pdf(lo) - _normal_pdf(hi)
    m2 = m0 + lo * _normal_pdf(lo) - hi * _normal_pdf(hi)
    return m0, m1, m2


def gaussian_ramp_product(alpha1, beta1, alpha2, beta2):
    """E[relu(alpha1 t + beta1) relu(alpha2 t + beta2)] for t ~ N(0, 1) (broadcasting).

    = int_lo^hi (alpha1 t + beta1)(alpha2 t + beta2) phi(t) dt on the interval where both ramps
    are positive.
    """
    lo1, hi1 = _ramp_interval(alpha1, beta1)
    lo2, hi2 = _ramp_interval(alpha2, beta2)
    m0, m1, m2 = _partial_moments(jnp.maximum(lo1, lo2), jnp.minimum(hi1, hi2))
    return alpha1 * alpha2 * m2 + (alpha1 * beta2 + alpha2 * beta1) * m1 + beta1 * beta2 * m0


def gaussian_ramp_mean(alpha, beta):
    """E[relu(alpha t + beta)] = beta Phi(beta/|alpha|) + |alpha| phi(beta/|alpha|), t ~ N(0, 1)."""
    return gaussian_ramp_product(alpha, beta, jnp.zeros_like(alpha), jnp.ones_like(beta))


def arccos_kernel(rho):
    """kappa(rho) = E[relu(t) relu(t')] for standard normals of correlation rho."""
    rho = jnp.clip(rho, -1.0, 1.0)
    return (jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0)) + (jnp.pi - jnp.arccos(rho)) * rho) / (2.0 * jnp.pi)


# ----------------------------------------------------------------------------------------------
# Per-feature moments of a group of ramps
# ----------------------------------------------------------------------------------------------


class RampMoments(NamedTuple):
    """Moments of g ramps r_a = relu(u_a x + c_a) of one feature.

    Attributes:
        mean: E[r_a], (g,).
        second: E[r_a r_b] (one view), (g, g).
        pair: E[r_a(x) r_b(x+)] (two views of one sample; not symmetrized), (g, g).
    """

    mean: jax.Array
    second: jax.Array
    pair: jax.Array


def _marginal(kind, s, strength, u, c):
    """(Gaussian part scale, mean, second) of ramps under the one-view marginal."""
    scale = jnp.sqrt(s * s + strength * strength) if kind == "additive_noise" else s
    mean_g = gaussian_ramp_mean(u * scale, c)
    second_g = gaussian_ramp_product((u * scale)[:, None], c[:, None], (u * scale)[None, :], c[None, :])
    if kind == "drop_to_zero":
        zero = jax.nn.relu(c)
        return scale, (1 - strength) * mean_g + strength * zero, \
            (1 - strength) * second_g + strength * zero[:, None] * zero[None, :]
    return scale, mean_g, second_g


def ramp_moments(kind: str, std, strength, encoder, bias=None) -> RampMoments:
    """Exact mean, second and pair moments of relu(u_a x + c_a), a = 1..g, for one feature.

    Args:
        kind: the feature's law (SUPPORTED_KINDS).
        std: s > 0; strength: its q / p / phi / noise std.
        encoder: u, (g,).
        bias: c, (g,), or None (no bias; required for correlated / additive_noise).

    Returns:
        RampMoments with (g,), (g, g), (g, g) fields.
    """
    if kind not in SUPPORTED_KINDS:
        raise ValueError(f"kind must be one of {list(SUPPORTED_KINDS)}, got {kind!r}")
    if bias is not None and kind in _BIAS_FREE_KINDS:
        raise ValueError(f"kind {kind!r} has a closed form only without bias (bias=None); "
                         f"use sign_flip, drop_replace or drop_to_zero with a bias")
    return _ramp_moments(kind, std, strength, _as_array(encoder), None if bias is None else _as_array(bias))


def _as_array(value):
    """``value`` as an array argument of a compiled program: JAX arrays and tracers as they are,
    anything else as a NumPy array (``jnp.asarray`` would run a small program of its own)."""
    return value if isinstance(value, jax.Array) else np.asarray(value)


def _traced(*values) -> bool:
    """Whether any of ``values`` (arrays or pytrees of them) is being traced by a JAX transformation."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(values))


def _block_diag(*blocks):
    """Block-diagonal matrix of square NumPy blocks: ``scipy.linalg.block_diag``, whose import
    (about 0.15 s) no process here otherwise pays."""
    size = sum(block.shape[0] for block in blocks)
    out = np.zeros((size, size), dtype=np.result_type(*blocks))
    start = 0
    for block in blocks:
        stop = start + block.shape[0]
        out[start:stop, start:stop] = block
        start = stop
    return out


@functools.partial(jax.jit, static_argnums=0)
def _ramp_moments(kind, std, strength, u, bias):
    """:func:`ramp_moments` as one compiled program per (kind, g): called eagerly on scalars by the
    closed forms, its ~100 small operations would each be dispatched on their own."""
    c = jnp.zeros_like(u) if bias is None else bias
    scale, mean, second = _marginal(kind, std, strength, u, c)
    if kind == "sign_flip":
        same = (1 - strength) ** 2 + strength**2
        flipped = gaussian_ramp_product((u * scale)[:, None], c[:, None], -(u * scale)[None, :], c[None, :])
        pair = same * second + (1 - same) * flipped
    elif kind == "drop_replace":
        kept = (1 - strength) ** 2
        pair = kept * second + (1 - kept) * mean[:, None] * mean[None, :]
    elif kind == "drop_to_zero":
        mean_g = gaussian_ramp_mean(u * scale, c)
        second_g = gaussian_ramp_product((u * scale)[:, None], c[:, None], (u * scale)[None, :], c[None, :])
        zero = jax.nn.relu(c)
        p = strength
        pair = ((1 - p) ** 2 * second_g
                + p * (1 - p) * (mean_g[:, None] * zero[None, :] + zero[:, None] * mean_g[None, :])
                + p * p * zero[:, None] * zero[None, :])
    else:  # correlated, additive_noise: bivariate Gaussian, no bias
        rho = strength if kind == "correlated" else std**2 / (std**2 + strength**2)
        sign = jnp.where(u[:, None] * u[None, :] >= 0, 1.0, -1.0)
        pair = jnp.abs(u)[:, None] * jnp.abs(u)[None, :] * scale**2 * arccos_kernel(sign * rho)
    return RampMoments(mean, second, pair)


def hidden_moments(laws: FeatureLaws, encoder, bias=None) -> tuple:
    """(A_h, B_h, mean) of the diagonal network's hidden layer h (d g channels, j-major).

    A_h = m m^T + blockdiag(sym P_j - m_j m_j^T), B_h = m m^T + blockdiag(S_j - m_j m_j^T).

    Args:
        laws: FeatureLaws of the d features.
        encoder: u, (d, g).
        bias: c, (d, g), or None.

    Returns:
        (A_h (dg, dg), B_h (dg, dg), m (dg,)): JAX arrays when traced, NumPy arrays otherwise.
    """
    # Traced (inside a loss being differentiated): JAX. Called on values: NumPy, which computes
    # the same elementwise IEEE operations without dispatching a small program for each.
    if _traced(encoder, bias, laws.stds, laws.strengths):
        xp, block_diag = jnp, jax.scipy.linalg.block_diag
    else:
        xp, block_diag = np, _block_diag
    encoder = xp.asarray(encoder)
    if encoder.ndim != 2 or encoder.shape[0] != laws.dim:
        raise ValueError(f"encoder must have shape ({laws.dim}, g), got {encoder.shape}")
    stds, strengths = xp.asarray(laws.stds), xp.asarray(laws.strengths)
    blocks = [ramp_moments(kind, stds[j], strengths[j], encoder[j], None if bias is None else bias[j])
              for j, kind in enumerate(laws.kinds)]
    blocks = [RampMoments(*(xp.asarray(field) for field in block)) for block in blocks]
    mean = xp.concatenate([b.mean for b in blocks])
    outer = mean[:, None] * mean[None, :]
    pos = block_diag(*[(b.pair + b.pair.T) / 2 - b.mean[:, None] * b.mean[None, :] for b in blocks])
    sec = block_diag(*[b.second - b.mean[:, None] * b.mean[None, :] for b in blocks])
    return outer + pos, outer + sec, mean


def population_loss(params, laws: FeatureLaws, weight_decay=0.0) -> jax.Array:
    """Exact population spectral loss of a diagonal ReLU network (plus (wd/2) |params|^2).

    L = -2 tr(V A_h V^T) + |V B_h V^T|_F^2 (+ weight_decay / 2 times the sum of squares).

    Args:
        params: any object with .encoder (d, g), .bias ((d, g) or None), .head (k, d g)
            (simulations.models.relu.DiagonalReLUParams).
        laws: FeatureLaws.
        weight_decay: >= 0.

    Returns:
        () loss.
    """
    A, B, _ = hidden_moments(laws, params.encoder, params.bias)
    V = params.head
    covariance = V @ B @ V.T
    loss = -2.0 * jnp.trace(V @ A @ V.T) + jnp.sum(covariance * covariance)
    squares = sum(jnp.sum(leaf * leaf) for leaf in jax.tree_util.tree_leaves(params))
    return loss + 0.5 * weight_decay * squares


def population_gradient(params, laws: FeatureLaws, weight_decay=0.0):
    """Gradient of :func:`population_loss` with respect to params (same pytree)."""
    return jax.grad(population_loss)(params, laws, weight_decay)


# ----------------------------------------------------------------------------------------------
# Fixed points and decodability
# ----------------------------------------------------------------------------------------------


class FixedPoint(NamedTuple):
    """Predicted end point of gradient flow from small init (no bias, no weight decay).

    Attributes:
        gram: G = W^T W in channel coordinates psi_ja = relu(sigma_ja x_j), (dg, dg).
        encoder: predicted u = sigma |u|, |u_c| = G_cc^(1/4), (d, g).
        head_gram: V^T V = D^-1 G D^-1 (zero rows/columns at dead channels), (dg, dg).
        learned: G_cc > 0 per channel, (d, g) bool.
        eigenvalues: all eigenvalues of C, descending, (dg,).
        loss: -sum of the kept eigenvalues squared.
        ambiguous: the k-th and (k+1)-th positive eigenvalues tie (the optimum is not unique).
    """

    gram: np.ndarray
    encoder: np.ndarray
    head_gram: np.ndarray
    learned: np.ndarray
    eigenvalues: np.ndarray
    loss: float
    ambiguous: bool


def symmetric_power(matrix, power):
    """matrix^power of the symmetric part of ``matrix`` (negative eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.clip(w, 0.0, None) ** power) @ v.T


def fixed_point(laws: FeatureLaws, signs, output_dim: int, *, imbalance=None) -> FixedPoint:
    """Closed-form end point of the bias-free diagonal network (see the module docstring).

    Args:
        laws: FeatureLaws (numeric stds and strengths).
        signs: channel orientations sigma_ja in {-1, +1}, (d, g); within a feature they must
            differ (two channels with one orientation compute the same function up to scale,
            and how gradient flow splits it between them depends on the init).
        output_dim: head width k >= 1.
        imbalance: delta_c = u_c^2 - |V_:,c|^2 at init, (d, g) (conserved by gradient flow without
            weight decay); None means 0 (balanced, the small-init limit). Then
            |u_c|^2 = (delta_c + sqrt(delta_c^2 + 4 G_cc)) / 2, since |u_c| |V_:,c| = sqrt(G_cc).

    Returns:
        FixedPoint.
    """
    signs = as_finite_array("signs", signs, ndim=2)
    if signs.shape[0] != laws.dim or not np.all(np.abs(signs) == 1):
        raise ValueError(f"signs must have shape ({laws.dim}, g) with entries +-1, got {signs.tolist()}")
    for j, row in enumerate(signs):
        if len(set(row.tolist())) != len(row):
            raise ValueError(f"signs[{j}] repeats an orientation ({row.tolist()}); the prediction needs "
                             f"distinct channel orientations per feature (g <= 2)")
    k = check_int("output_dim", output_dim, minimum=1)
    with jax.enable_x64(True):
        A, B, _ = (np.asarray(m, dtype=np.float64) for m in hidden_moments(laws, signs))
    root_inv = symmetric_power(B, -0.5)
    C = root_inv @ A @ root_inv
    w, v = np.linalg.eigh((C + C.T) / 2)
    order = np.argsort(w)[::-1]
    w, v = w[order], v[:, order]
    keep = (np.arange(w.size) < k) & (w > 0)
    ambiguous = bool(k < w.size and w[k - 1] > 0 and abs(w[k - 1] - w[k]) <= _TIE_RTOL * abs(w[k - 1]))
    gram = root_inv @ (v[:, keep] * w[keep]) @ v[:, keep].T @ root_inv
    gram = (gram + gram.T) / 2
    diagonal = np.clip(np.diag(gram), 0.0, None)
    delta = np.zeros(diagonal.size) if imbalance is None else as_finite_array("imbalance", imbalance).reshape(-1)
    if delta.size != diagonal.size:
        raise ValueError(f"imbalance must have shape {signs.shape}, got {np.shape(imbalance)}")
    magnitude = np.sqrt((delta + np.sqrt(delta**2 + 4.0 * diagonal)) / 2.0)
    scale = np.where(magnitude > 0, 1.0 / np.where(magnitude > 0, magnitude, 1.0), 0.0)
    head_gram = scale[:, None] * gram * scale[None, :]
    return FixedPoint(gram=gram, encoder=signs * magnitude.reshape(signs.shape), head_gram=head_gram,
                      learned=(diagonal > 1e-12 * max(diagonal.max(), 1e-300)).reshape(signs.shape),
                      eigenvalues=w, loss=float(-np.sum(w[keep] ** 2)), ambiguous=ambiguous)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _cross_moments(kind, s, strength, encoder, bias, attribute):
    """(Cov(r_a, y) (g,), Var(y)) for y = x_j ("value") or |x_j| ("magnitude") of one feature."""
    u = jnp.asarray(encoder)
    c = jnp.zeros_like(u) if bias is None else jnp.asarray(bias)
    both = jnp.concatenate([u, jnp.asarray([1.0, -1.0])])
    cb = jnp.concatenate([c, jnp.zeros(2)])
    scale, mean, second = _marginal(kind, s, strength, both, cb)
    g = u.shape[0]
    coefficients = jnp.asarray([1.0, -1.0] if attribute == "value" else [1.0, 1.0])
    cov = second - mean[:, None] * mean[None, :]
    cross = cov[:g, g:] @ coefficients
    target_var = coefficients @ cov[g:, g:] @ coefficients
    return cross, target_var


def decodability(params, laws: FeatureLaws, *, ridge: float, head_matrix=None) -> dict[str, np.ndarray]:
    """Population R^2 of the normalized ridge probe for every feature's value and magnitude.

    The representation r (h, or z = V h) is centred and divided by sqrt(tr Cov r), then the
    population ridge regression of y on it has risk theory.downstream.population_ridge_risk;
    R^2 = 1 - risk / Var(y). Targets: y = x_j ("value") and y = |x_j| ("magnitude").

    Args:
        params: object with .encoder (d, g), .bias or None, .head (k, d g).
        laws: FeatureLaws (numeric).
        ridge: probe penalty >= 0.
        head_matrix: overrides params.head (e.g. a square root of a predicted W^T W in channel
            coordinates scaled by 1/|u|; the probe is invariant to rotations of z).

    Returns:
        {"pre": {"value": (d,), "magnitude": (d,)}, "post": {...}}.
    """
    ridge = check_float("ridge", ridge, minimum=0.0)
    with jax.enable_x64(True):
        encoder = np.asarray(params.encoder, dtype=np.float64)
        bias = None if params.bias is None else np.asarray(params.bias, dtype=np.float64)
        head = np.asarray(params.head if head_matrix is None else head_matrix, dtype=np.float64)
        d, g = encoder.shape
        covs = []
        crosses = {"value": [], "magnitude": []}
        variances = {"value": [], "magnitude": []}
        stds, strengths = np.asarray(laws.stds), np.asarray(laws.strengths)
        for j, kind in enumerate(laws.kinds):
            m = ramp_moments(kind, stds[j], strengths[j], encoder[j], None if bias is None else bias[j])
            covs.append(np.asarray(m.second) - np.outer(m.mean, m.mean))
            for attribute in crosses:
                cross, var = _cross_moments(kind, stds[j], strengths[j], encoder[j],
                                            None if bias is None else bias[j], attribute)
                crosses[attribute].append(np.asarray(cross))
                variances[attribute].append(float(var))
    cov_h = _block_diag(*covs)
    out = {}
    for layer, P in (("pre", np.eye(d * g)), ("post", head)):
        cov = P @ cov_h @ P.T
        total = np.trace(cov)
        out[layer] = {}
        for attribute in crosses:
            r2 = np.zeros(d)
            for j in range(d):
                cross_h = np.zeros(d * g)
                cross_h[j * g:(j + 1) * g] = crosses[attribute][j]
                var_y = variances[attribute][j]
                if total <= 0 or var_y <= 0:
                    continue
                risk = population_ridge_risk(cov / total, P @ cross_h / np.sqrt(total), var_y, ridge)
                r2[j] = 1.0 - risk / var_y
            out[layer][attribute] = r2
    return out


def predicted_decodability(laws: FeatureLaws, signs, output_dim: int, *, ridge: float, imbalance=None) -> dict:
    """:func:`decodability` at the :func:`fixed_point` (h = D psi, z = G^(1/2) psi)."""
    point = fixed_point(laws, signs, output_dim, imbalance=imbalance)
    magnitude = np.abs(point.encoder).reshape(-1)
    # z = W psi = W D^-1 h; any W with W^T W = G gives the same probe: take W = G^(1/2).
    W = symmetric_power(point.gram, 0.5)
    scale = np.where(magnitude > 0, 1.0 / np.where(magnitude > 0, magnitude, 1.0), 0.0)
    params = _Params(point.encoder, None, W * scale[None, :])
    return decodability(params, laws, ridge=ridge)


class _Params(NamedTuple):
    encoder: np.ndarray
    bias: object
    head: np.ndarray
