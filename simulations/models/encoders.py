"""Small image encoders with a projection head, as init/apply pairs (float32 pytrees).

Encoders (ReLU everywhere; h, the "pre" representation, is taken after the last ReLU):

* ``mlp``: flatten -> Dense(width) -> ReLU -> Dense(rep_dim) -> ReLU.
* ``conv``: Conv 3x3 stride 2 (channels) -> ReLU -> Conv 3x3 stride 2 (2 channels) -> ReLU
  -> flatten -> Dense(rep_dim) -> ReLU.

Heads on h (z, the "post" representation, is what the loss sees):

* ``none``: z = h (no head);
* ``linear``: z = W h + b;
* ``mlp``: z = W2 relu(W1 h + b1) + b2 (SimCLR's head, hidden width rep_dim);
* ``fixed``: z = diag(1, 1/k, ..., 1/k^(rep_dim-1)) h, the paper's frozen reweighting head
  (:func:`simulations.models.heads.head_scales`; no parameters, k may be traced).

:func:`apply` returns every layer's representation, so "hidden", "pre" and "post" are indices.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from simulations import draws
from simulations.models.heads import head_scales

ENCODERS = ("mlp", "conv")
HEADS = ("none", "linear", "mlp", "fixed")
#: Layer names of :func:`apply`'s output, in order.
LAYERS = ("hidden", "pre", "post")


class Dense(NamedTuple):
    weight: jax.Array  # (in, out)
    bias: jax.Array  # (out,)


class Conv(NamedTuple):
    kernel: jax.Array  # (3, 3, in, out), HWIO
    bias: jax.Array  # (out,)


class Network(NamedTuple):
    """Encoder layers (a tuple of Dense/Conv) and the parameters of both learned heads.

    Both learned heads are always present, so the head kind can be chosen per run by a traced index
    (:func:`apply`); a head that is not used gets zero gradients and stays at its initialization.
    """

    encoder: tuple
    linear_head: Dense
    mlp_head: tuple


def _dense(key, fan_in, fan_out, gain):
    weight = jax.random.normal(key, (fan_in, fan_out), jnp.float32) * jnp.sqrt(gain / fan_in).astype(jnp.float32)
    return Dense(weight, jnp.zeros((fan_out,), jnp.float32))


def _conv(key, fan_in, fan_out):
    kernel = jax.random.normal(key, (3, 3, fan_in, fan_out), jnp.float32)
    return Conv(kernel * jnp.sqrt(2.0 / (9 * fan_in)).astype(jnp.float32), jnp.zeros((fan_out,), jnp.float32))


def init(key: jax.Array, *, encoder: str, image_size: int, width: int, channels: int, rep_dim: int) -> Network:
    """He-initialized float32 parameters (ReLU layers gain 2, the head's last layer gain 1).

    Args:
        key: PRNG key.
        encoder: one of ``ENCODERS``.
        image_size: side S of the (S, S, 3) inputs.
        width: hidden units of the MLP encoder.
        channels: first conv layer's channels (the second has twice as many).
        rep_dim: dimension of h (and of z).
    """
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {list(ENCODERS)}, got {encoder!r}")
    keys = draws.split(key, 5)
    if encoder == "mlp":
        layers = (_dense(keys[0], 3 * image_size**2, width, 2.0), _dense(keys[1], width, rep_dim, 2.0))
    else:
        side = -(-image_size // 4)  # ceil(S / 4) after two stride-2 'SAME' convolutions
        layers = (_conv(keys[0], 3, channels), _conv(keys[1], channels, 2 * channels),
                  _dense(keys[2], 2 * channels * side * side, rep_dim, 2.0))
    return Network(layers, _dense(keys[3], rep_dim, rep_dim, 1.0),
                   (_dense(keys[3], rep_dim, rep_dim, 2.0), _dense(keys[4], rep_dim, rep_dim, 1.0)))


def _convolve(layer: Conv, x):
    y = jax.lax.conv_general_dilated(x, layer.kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y + layer.bias[None, None, None, :])


def apply_head(params: Network, h: jax.Array, head, kappa=1.0) -> jax.Array:
    """z for h (n, rep_dim): ``head`` a name in ``HEADS`` (static) or its index there (may be traced)."""
    branches = (lambda: h, lambda: h @ params.linear_head.weight + params.linear_head.bias[None, :],
                lambda: jax.nn.relu(h @ params.mlp_head[0].weight + params.mlp_head[0].bias[None, :])
                @ params.mlp_head[1].weight + params.mlp_head[1].bias[None, :],
                lambda: h * head_scales(jnp.asarray(kappa, h.dtype), h.shape[1])[None, :])
    if isinstance(head, str):
        if head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")
        return branches[HEADS.index(head)]()
    return jax.lax.switch(head, branches)


def apply(params: Network, images: jax.Array, *, head, kappa=1.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(hidden, h, z) for images (n, S, S, 3) in [0, 1]: every layer's representation, each (n, .).

    ``hidden`` is the encoder's first layer (flattened), ``h`` the pre-projection representation,
    ``z`` the head's output (:func:`apply_head`; ``head`` a name or a traced index into ``HEADS``).
    """
    x = (images - 0.5) * 4.0  # pixels in [-2, 2]: unit-scale inputs for He-initialized layers
    if isinstance(params.encoder[0], Conv):
        first = _convolve(params.encoder[0], x)
        second = _convolve(params.encoder[1], first)
        hidden = first.reshape(first.shape[0], -1)
        dense = params.encoder[2]
        h = jax.nn.relu(second.reshape(second.shape[0], -1) @ dense.weight + dense.bias[None, :])
    else:
        dense_in, dense_out = params.encoder
        hidden = jax.nn.relu(x.reshape(x.shape[0], -1) @ dense_in.weight + dense_in.bias[None, :])
        h = jax.nn.relu(hidden @ dense_out.weight + dense_out.bias[None, :])
    return hidden, h, apply_head(params, h, head, kappa)
