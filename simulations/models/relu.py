"""Two-layer ReLU networks: a ReLU encoder and a linear head, as (init, apply) pairs.

    h = relu(W x + c)        (encoder, "pre": shape (m,))
    z = V h                  (head, "post": shape (k,))

Two structures share :func:`apply_relu`:

* full (:class:`ReLUParams`): W is (m, d), every channel sees every input coordinate.
* diagonal (:class:`DiagonalReLUParams`): input coordinate j feeds its own group of g channels,
  channel (j, a) computing relu(u_{ja} x_j + c_{ja}); the head V is (k, d g) and mixes all
  channels. With independent features the population loss then reduces to one-dimensional
  moments of relu under each feature's law (see theory.relu_diagonal), which is what makes the
  non-linear case solvable; g >= 2 lets a feature be represented by relu(+x_j) and relu(-x_j).
  Channel (j, a) is column j * g + a of V (j-major order).

The bias c is optional: ``bias=False`` stores ``None`` (an empty pytree node), so it is neither
trained nor decayed. Representations are returned as a tuple (h, z), so "pre" and "post" are
indices 0 and 1 as for the deep linear networks of :mod:`simulations.models`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simulations import draws
from theory.checks import check_float, check_int

#: Default per-layer scale of the small Gaussian initialization (fan-in scaled, as for linear nets).
DEFAULT_RELU_INIT_SCALE = 0.1


class ReLUParams(NamedTuple):
    """Full two-layer ReLU network.

    Attributes:
        encoder: W, (m, d).
        bias: c, (m,), or None (no bias).
        head: V, (k, m).
    """

    encoder: jax.Array
    bias: jax.Array | None
    head: jax.Array


class DiagonalReLUParams(NamedTuple):
    """Diagonal two-layer ReLU network (each input coordinate owns g channels).

    Attributes:
        encoder: u, (d, g); channel (j, a) computes relu(u[j, a] x_j + c[j, a]).
        bias: c, (d, g), or None (no bias).
        head: V, (k, d g), channel (j, a) is column j * g + a.
    """

    encoder: jax.Array
    bias: jax.Array | None
    head: jax.Array


def init_relu(key: jax.Array, input_dim: int, width: int, output_dim: int, *,
              init_scale: float = DEFAULT_RELU_INIT_SCALE, bias: bool = False) -> ReLUParams:
    """Small fan-in-scaled Gaussian init of a full network.

    Entries of W are N(0, eps^2 / d), entries of V are N(0, eps^2 / m); the bias starts at 0.

    Args:
        key: PRNG key.
        input_dim: d >= 1.
        width: m >= 1 (ReLU channels).
        output_dim: k >= 1 (head outputs).
        init_scale: eps > 0.
        bias: train a bias c (initialized at 0).

    Returns NumPy arrays for a concrete key (drawn in one program, scaled on the host: the same
    numbers as the JAX operations) and JAX arrays inside a traced program.
    """
    d = check_int("input_dim", input_dim, minimum=1)
    m = check_int("width", width, minimum=1)
    k = check_int("output_dim", output_dim, minimum=1)
    eps = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
    if isinstance(key, jax.core.Tracer):
        key_encoder, key_head = draws.split(key)
        xp, encoder_draw, head_draw = jnp, jax.random.normal(key_encoder, (m, d)), jax.random.normal(key_head, (k, m))
    else:  # on values: one program draws, NumPy scales (the same IEEE operations)
        xp, (encoder_draw, head_draw) = np, (np.asarray(x) for x in draws.split_normals(key, [(m, d), (k, m)]))
    real = encoder_draw.dtype.type  # the draws' float
    encoder = real(eps) / xp.sqrt(real(d)) * encoder_draw
    head = real(eps) / xp.sqrt(real(m)) * head_draw
    return ReLUParams(encoder, xp.zeros(m, encoder.dtype) if bias else None, head)


def init_diagonal_relu(key: jax.Array, input_dim: int, group: int, output_dim: int, *,
                       init_scale: float = DEFAULT_RELU_INIT_SCALE, bias: bool = False) -> DiagonalReLUParams:
    """Small Gaussian init of a diagonal network: u ~ N(0, eps^2) (fan-in 1), V ~ N(0, eps^2 / (d g)).

    Args:
        key: PRNG key.
        input_dim: d >= 1.
        group: g >= 1 channels per input coordinate.
        output_dim: k >= 1.
        init_scale: eps > 0.
        bias: train a bias c (initialized at 0).
    """
    d = check_int("input_dim", input_dim, minimum=1)
    g = check_int("group", group, minimum=1)
    k = check_int("output_dim", output_dim, minimum=1)
    eps = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
    key_encoder, key_head = draws.split(key)
    encoder = eps * jax.random.normal(key_encoder, (d, g))
    head = eps / jnp.sqrt(d * g) * jax.random.normal(key_head, (k, d * g))
    return DiagonalReLUParams(encoder, jnp.zeros((d, g)) if bias else None, head)


def encoder_preactivation(params, x: jax.Array) -> jax.Array:
    """W x + c for a batch x (n, d): shape (n, m) (m = d g for the diagonal structure)."""
    if isinstance(params, DiagonalReLUParams):
        pre = x[:, :, None] * params.encoder[None]  # (n, d, g)
        if params.bias is not None:
            pre = pre + params.bias[None]
        return pre.reshape(x.shape[0], -1)
    pre = x @ params.encoder.T
    return pre if params.bias is None else pre + params.bias[None, :]


def apply_relu(params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Both representations of a batch.

    Args:
        params: :class:`ReLUParams` or :class:`DiagonalReLUParams`.
        x: inputs, (n, d).

    Returns:
        (h, z): h = relu(W x + c), (n, m); z = V h, (n, k).
    """
    h = jax.nn.relu(encoder_preactivation(params, x))
    return h, h @ params.head.T


def as_full(params: DiagonalReLUParams) -> ReLUParams:
    """The full network equal to a diagonal one (W[j g + a, j] = u[j, a], zeros elsewhere)."""
    d, g = params.encoder.shape
    encoder = (jnp.eye(d)[:, None, :] * params.encoder[:, :, None]).reshape(d * g, d)
    bias = None if params.bias is None else params.bias.reshape(-1)
    return ReLUParams(encoder, bias, params.head)


def init_diagonal_relu_paired(key: jax.Array, input_dim: int, group: int, output_dim: int, *,
                              init_scale: float = DEFAULT_RELU_INIT_SCALE,
                              bias: bool = False) -> DiagonalReLUParams:
    """Diagonal network whose channels alternate orientation: u[j, a] = (+eps, -eps, +eps, ...).

    With random signs (:func:`init_diagonal_relu`) both channels of a g = 2 group share an
    orientation with probability 1/2 and the group can then only compute relu(+x_j) or relu(-x_j),
    never x_j itself; gradient flow cannot flip a sign (u_c^2 - |V_:,c|^2 is conserved), so the
    orientation chosen at init is permanent. Fixed magnitudes eps also keep every channel the
    same distance above the unstable root that weight decay creates near zero. The head is
    N(0, eps^2 / (d g)) as in :func:`init_diagonal_relu`. Like :func:`init_relu`, it returns NumPy
    arrays for a concrete key and JAX arrays inside a traced program, with the same numbers.
    """
    d = check_int("input_dim", input_dim, minimum=1)
    g = check_int("group", group, minimum=1)
    k = check_int("output_dim", output_dim, minimum=1)
    eps = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
    head_draw = jax.random.normal(key, (k, d * g))
    traced = isinstance(key, jax.core.Tracer)  # on values: NumPy scales (the same IEEE operations)
    xp, head_draw = (jnp, head_draw) if traced else (np, np.asarray(head_draw))
    real = head_draw.dtype.type  # the draw's float
    signs = xp.where(xp.arange(g) % 2 == 0, real(1.0), real(-1.0))
    encoder = real(eps) * xp.broadcast_to(signs, (d, g))
    head = real(eps) / xp.sqrt(real(d * g)) * head_draw
    return DiagonalReLUParams(encoder, xp.zeros((d, g), encoder.dtype) if bias else None, head)
