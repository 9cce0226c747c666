"""Deep linear networks as (init, apply) pairs over a tuple of weight matrices.

Parameters are a tuple ``(W_1, ..., W_L)`` with ``W_l`` of shape ``(m_l, m_{l-1})`` and
``m_0 = d``. The network is f(x) = W_L ... W_1 x; the representation at layer l is
P_l x with P_l = W_l ... W_1, so "pre" (layer L-1) and "post" (layer L) are indices.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simulations import draws
from simulations.matmul import matmul
from simulations.programs import stored_jit
from theory.checks import check_choice, check_float, check_int

LinearParams = tuple  # tuple[jax.Array, ...], one (m_l, m_{l-1}) matrix per layer

#: Default per-layer singular value (balanced) / per-layer scale (Gaussian) of the initialization.
DEFAULT_INIT_SCALE = 0.1
#: Default initialization: exactly balanced (W_{l+1}^T W_{l+1} = W_l W_l^T), random orientation.
DEFAULT_INIT = "balanced"
INITS = ("balanced", "gaussian", "aligned")


def layer_dims(input_dim: int, widths: Sequence[int]) -> tuple[int, ...]:
    """Validate and return ``(d, m_1, ..., m_L)``."""
    check_int("input_dim", input_dim, minimum=1)
    if len(widths) < 1:
        raise ValueError(f"widths must name at least one layer (depth >= 1), got {list(widths)!r}")
    for width in widths:
        check_int("width", width, minimum=1)
    return (int(input_dim), *(int(w) for w in widths))


def _random_orthonormal(gaussian: jax.Array, cols: int) -> jax.Array:
    """A Haar-random (rows, cols) matrix with orthonormal columns (cols <= rows) from a standard
    Gaussian (rows, rows) matrix."""
    q, r = jnp.linalg.qr(gaussian)
    q = q * jnp.sign(jnp.diag(r))[None, :]  # sign fix makes the distribution Haar
    return q[:, :cols]


def init_balanced(key: jax.Array, input_dim: int, widths: Sequence[int],
                  init_scale: float = DEFAULT_INIT_SCALE) -> LinearParams:
    """Exactly balanced init: every layer has singular values ``init_scale`` (k = min width copies).

    W_l = eps U_l U_{l-1}^T with U_l (m_l, k) Haar-orthonormal and k = min(d, m_1, ..., m_L), so
    W_{l+1}^T W_{l+1} = W_l W_l^T = eps^2 U_l U_l^T: balanced, with a random orientation that is
    not aligned with the input features. The end-to-end map has singular values eps^L.

    Returns:
        Tuple of L arrays, W_l of shape (m_l, m_{l-1}).
    """
    return init_linear(key, input_dim, widths, init="balanced", init_scale=init_scale)


def init_gaussian(key: jax.Array, input_dim: int, widths: Sequence[int],
                  init_scale: float = DEFAULT_INIT_SCALE) -> LinearParams:
    """Small Gaussian init scaled by fan-in: entries of W_l are N(0, eps^2 / m_{l-1}).

    The fan-in scaling makes each layer's singular values O(eps) whatever the width, so
    ``init_scale`` means the same thing here as for :func:`init_balanced`. The layers are not
    balanced: the imbalance W_{l+1}^T W_{l+1} - W_l W_l^T is O(eps^2) and is conserved by gradient
    flow without weight decay, which is why the trained weights deviate from the balanced
    prediction by O(eps^2).
    """
    return init_linear(key, input_dim, widths, init="gaussian", init_scale=init_scale)


def init_aligned(key: jax.Array, input_dim: int, widths: Sequence[int],
                 init_scale: float = DEFAULT_INIT_SCALE) -> LinearParams:
    """Balanced init aligned with the input features: W_l = eps [I_k 0; 0 0] (k = min width).

    Mode j of every layer sits on input feature j < k, so with diagonal moments each feature
    evolves as its own scalar ODE (theory.dynamics and theory.weight_decay.basin_weights are then
    exact); features j >= k are never learned. ``key`` is unused (kept for a uniform signature).
    """
    return init_linear(key, input_dim, widths, init="aligned", init_scale=init_scale)


def init_linear(key: jax.Array, input_dim: int, widths: Sequence[int], *,
                init: str = DEFAULT_INIT, init_scale: float = DEFAULT_INIT_SCALE) -> LinearParams:
    """Initialize a deep linear network; ``init`` is "balanced" (default), "gaussian" or "aligned".

    One compiled program per (init, layer sizes, dtype): dispatching its dozens of small operations
    one by one cost a command about 0.8 s of lowering and cache look-ups.
    """
    check_choice("init", init, INITS)
    dims = layer_dims(input_dim, widths)
    eps = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
    # The scales in NumPy, in JAX's default float (the same IEEE operations as in JAX, no program).
    dtype = jax.dtypes.canonicalize_dtype(np.float64)
    if init == "gaussian":  # eps / sqrt(fan-in) outside the program (as earlier versions computed it)
        scales = np.asarray([dtype.type(eps) / np.sqrt(dtype.type(fan_in)) for fan_in in dims[:-1]], dtype)
    else:
        scales = np.full(len(dims) - 1, eps, dtype)
    return _init_program(key, scales, dims, init)


@functools.partial(stored_jit, static_argnums=(2, 3))
def _init_program(key: jax.Array, scales: jax.Array, dims: tuple[int, ...], init: str) -> LinearParams:
    layers = range(len(dims) - 1)
    if init == "balanced":
        k = min(dims)
        keys = draws.split(key, len(dims))
        gaussians = draws.normals(list(keys), [(rows, rows) for rows in dims])
        frames = [_random_orthonormal(gaussian, k) for gaussian in gaussians]
        return tuple(scales[l] * frames[l + 1] @ frames[l].T for l in layers)
    if init == "gaussian":
        keys = draws.split(key, len(dims) - 1)
        gaussians = draws.normals(list(keys), [(dims[l + 1], dims[l]) for l in layers])
        # The barrier keeps XLA from fusing the scaling into the sampler, which rounds differently
        # from sampling and then scaling (the numbers of earlier versions, which ran them apart).
        return tuple(scales[l] * jax.lax.optimization_barrier(gaussians[l]) for l in layers)
    return tuple(scales[l] * jnp.eye(dims[l + 1], dims[l]) for l in layers)


def layer_maps(params: LinearParams) -> tuple[jax.Array, ...]:
    """The maps P_l = W_l ... W_1 for l = 1..L, each of shape (m_l, d)."""
    maps, product = [], None
    for weight in params:
        product = weight if product is None else matmul(weight, product)
        maps.append(product)
    return tuple(maps)


def end_to_end(params: LinearParams) -> jax.Array:
    """The end-to-end map W = W_L ... W_1, shape (m_L, d)."""
    return layer_maps(params)[-1]


def apply_linear(params: LinearParams, x: jax.Array) -> tuple[jax.Array, ...]:
    """Every layer's representation of a batch.

    Args:
        params: tuple of L weight matrices.
        x: inputs, shape (n, d).

    Returns:
        Tuple of L arrays; entry l-1 has shape (n, m_l) and holds P_l x for each row.
    """
    representations, h = [], x
    for weight in params:
        h = h @ weight.T
        representations.append(h)
    return tuple(representations)
