"""A learned two-layer ReLU projection head on a linear encoder, with its exact population loss.

    h = W x                      (encoder, "pre": shape (m,); used downstream)
    z = V relu(U h)              (head, "post": shape (k,); seen by the loss)

This is the head practitioners use (SimCLR's MLP head) put on the linear encoder of the theory,
so that it can be compared with no head, the learned linear head and the fixed reweighting head
on the same linear-data problems.

Exact population spectral loss on Gaussian pairs (x, x+) ~ N(0, [[B, A], [A, B]]). With
P = U W (q, d), the hidden pre-activations p = P x, p+ = P x+ are jointly Gaussian with
S = P B P^T (both views) and C = P A P^T (across views). With M = V^T V (q, q),

    L = -2 E[z^T z+] + E[(z^T z')^2] = -2 tr(M K+) + tr(M K M K),

    K_ab  = E[relu(p_a) relu(p'_b)] at covariance S_ab  (one view),
    K+_ab = E[relu(p_a) relu(p+_b)] at covariance C_ab  (the two views),

and for zero-mean Gaussians of variances s_a, s_b and covariance c (degree-1 arc-cosine kernel)

    E[relu(p) relu(q)] = (sqrt(s_a s_b - c^2) + c (pi - arccos(c / sqrt(s_a s_b)))) / (2 pi).

Only Gaussian pairs make this exact: unlike a linear head, a ReLU head sees more of the law than
(A, B). :func:`relu_gaussian_moment` has a custom derivative, finite at |correlation| = 1
(d/dc = (pi - arccos rho)/(2 pi)), where the textbook form gives inf - inf.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from simulations import draws
from simulations.matmul import matmul, sandwich
from theory.checks import check_float, check_int


class ReLUHeadParams(NamedTuple):
    """Linear encoder with a learned two-layer ReLU head.

    Attributes:
        encoder: W, (m, d).
        hidden: U, (q, m).
        head: V, (k, q).
    """

    encoder: jax.Array
    hidden: jax.Array
    head: jax.Array


def init_relu_head(key: jax.Array, input_dim: int, width: int, hidden_width: int, output_dim: int, *,
                   init_scale: float = 0.1) -> ReLUHeadParams:
    """Fan-in-scaled Gaussian init: entries of each layer are N(0, eps^2 / fan_in).

    Args:
        key: PRNG key.
        input_dim: d >= 1. width: m >= 1 (encoder outputs). hidden_width: q >= 1 (ReLU units).
        output_dim: k >= 1 (head outputs).
        init_scale: eps > 0.
    """
    d = check_int("input_dim", input_dim, minimum=1)
    m = check_int("width", width, minimum=1)
    q = check_int("hidden_width", hidden_width, minimum=1)
    k = check_int("output_dim", output_dim, minimum=1)
    eps = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
    keys = draws.split(key, 3)
    shapes = ((m, d), (q, m), (k, q))
    return ReLUHeadParams(*(eps / jnp.sqrt(shape[1]) * jax.random.normal(sub, shape)
                            for sub, shape in zip(keys, shapes)))


def init_head(key: jax.Array, width: int, hidden_width: int, output_dim: int, *,
              init_scale) -> tuple[jax.Array, jax.Array]:
    """(U (q, m), V (k, q)) of a ReLU head for any encoder of width m, N(0, eps^2 / fan_in) entries.

    ``init_scale`` may be traced. (:func:`init_relu_head` draws all three layers from one split.)
    """
    key_hidden, key_head = draws.split(key)
    return (init_scale / jnp.sqrt(width) * jax.random.normal(key_hidden, (hidden_width, width)),
            init_scale / jnp.sqrt(hidden_width) * jax.random.normal(key_head, (output_dim, hidden_width)))


def apply_with_relu_head(params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(h, z) for params = (encoder, U, V): h = any library encoder's output
    (simulations.models.heads.encode), z = V relu(U h)."""
    from simulations.models.heads import encode

    h = encode(params[0], x)
    return h, apply_head(h, params[1], params[2])


def apply_head(h: jax.Array, hidden: jax.Array, head: jax.Array) -> jax.Array:
    """z = V relu(U h) for a batch h (n, m): U (q, m), V (k, q); on any encoder's output."""
    return jax.nn.relu(h @ hidden.T) @ head.T


def apply_relu_head(params: ReLUHeadParams, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(h, z) for a batch x (n, d): h = W x (n, m), z = V relu(U h) (n, k)."""
    h = x @ params.encoder.T
    return h, apply_head(h, params.hidden, params.head)


@jax.custom_jvp
def _scaled_moment(product, covariance):
    """g(p, c) = sqrt(p - c^2) + c (pi - arccos(c / sqrt p)), p = s_a s_b >= c^2; 0 at p = 0."""
    positive = product > 0
    root = jnp.sqrt(jnp.where(positive, product, 1.0))
    rho = jnp.clip(covariance / root, -1.0, 1.0)
    value = root * jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0)) + covariance * (jnp.pi - jnp.arccos(rho))
    return jnp.where(positive, value, 0.0)


@_scaled_moment.defjvp
def _scaled_moment_jvp(primals, tangents):
    """dg/dc = pi - arccos(rho); dg/dp = sqrt(1 - rho^2) / (2 sqrt p) (both finite at |rho| = 1)."""
    product, covariance = primals
    d_product, d_covariance = tangents
    positive = product > 0
    root = jnp.sqrt(jnp.where(positive, product, 1.0))
    rho = jnp.clip(covariance / root, -1.0, 1.0)
    d_c = jnp.where(positive, jnp.pi - jnp.arccos(rho), 0.0)
    d_p = jnp.where(positive, jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0)) / (2.0 * root), 0.0)
    return _scaled_moment(product, covariance), d_c * d_covariance + d_p * d_product


def relu_gaussian_moment(variance_a, variance_b, covariance):
    """E[relu(p) relu(q)] for zero-mean jointly Gaussian (p, q) (broadcasts).

    Args:
        variance_a, variance_b: Var p, Var q >= 0.
        covariance: Cov(p, q), |c| <= sqrt(Var p Var q).
    """
    return _scaled_moment(variance_a * variance_b, covariance) / (2.0 * jnp.pi)


def hidden_kernels(params: ReLUHeadParams, pos_cov: jax.Array, second_moment: jax.Array):
    """(K, K+) of the hidden ReLU units, each (q, q): one view and across the two views.

    The diagonal of K is s_a / 2 exactly (correlation 1, computed without the arccos).
    """
    P = matmul(params.hidden, params.encoder)
    S = sandwich(P, second_moment)
    C = sandwich(P, pos_cov)
    s = jnp.diagonal(S)
    eye = jnp.eye(S.shape[0], dtype=bool)
    off = relu_gaussian_moment(s[:, None], s[None, :], jnp.where(eye, 0.0, S))
    K = jnp.where(eye, 0.5 * s[:, None], off)
    K_pos = relu_gaussian_moment(s[:, None], s[None, :], C)
    return K, K_pos


def relu_head_population_loss(params: ReLUHeadParams, pos_cov: jax.Array, second_moment: jax.Array) -> jax.Array:
    """Exact population spectral loss on Gaussian pairs: -2 tr(M K+) + tr(M K M K), M = V^T V."""
    K, K_pos = hidden_kernels(params, pos_cov, second_moment)
    M = matmul(params.head.T, params.head)
    MK = matmul(M, K)
    return -2.0 * jnp.sum(M * K_pos) + jnp.sum(MK * MK.T)


def _flow_loss(params: ReLUHeadParams, args) -> jax.Array:
    """Flow signature of :func:`relu_head_population_loss`: args = (A, B)."""
    return relu_head_population_loss(params, *args)


def train_relu_head(pos_cov, second_moment, seeds, *, width: int | None = None, hidden_width: int = 16,
                    output_dim: int | None = None, init_scale: float = 0.1, options=None):
    """Gradient flow on the exact population loss from one init per seed (one batched solve).

    Args:
        pos_cov, second_moment: A, B as (d,) diagonals or (d, d) matrices (Gaussian pairs:
            B - A and B + A must be PSD).
        seeds: init seeds (S,); the init is :func:`init_relu_head` with ``PRNGKey(seed)``.
        width: m (default d). hidden_width: q. output_dim: k (default d).
        init_scale: eps of every layer.
        options: simulations.flow.FlowOptions (default: the flow's defaults).

    Returns:
        simulations.flow.FlowResult with a leading seed axis (S,) on every field. The loss has
        several local minima (a ReLU head can learn a weak feature or leave it out), so
        different seeds can converge to different end points: compare them, do not average
        blindly.
    """
    from simulations.data.pairs import gaussian_pairs
    from simulations.experiment import stack
    from simulations.flow import gradient_flow

    pairs = gaussian_pairs(pos_cov, second_moment)  # validates A, B (joint covariance PSD)
    A, B = jnp.asarray(pairs.pos_cov), jnp.asarray(pairs.second_moment)
    d = A.shape[0]
    m = d if width is None else width
    k = d if output_dim is None else output_dim
    seeds = [check_int("seed", s, minimum=0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    inits = [init_relu_head(jax.random.PRNGKey(s), d, m, hidden_width, k, init_scale=init_scale) for s in seeds]
    params0 = stack(inits)
    args = (jnp.broadcast_to(A, (len(seeds),) + A.shape), jnp.broadcast_to(B, (len(seeds),) + B.shape))
    return gradient_flow(_flow_loss, params0, args, options=options, batched=True)
