"""The fixed reweighting head: a frozen diagonal map g(h) = diag(1, 1/k, ..., 1/k^(m-1)) h.

The paper's interpretable alternative to a learned projection head: the loss sees z = g(h), the
downstream task uses h. k >= 1 is the only knob (k = 1 means no head). The head has no
parameters, so it works with every encoder of the library and every loss that takes
representations:

* deep linear encoders (:mod:`simulations.models`, params a tuple of matrices): h = P_L x;
* ReLU encoders (:mod:`simulations.models.relu`, full or diagonal): h = relu(W x + c). The learned head
  ``params.head`` of those networks is ignored; set it to None (:func:`relu_encoder`) so that it
  is neither trained nor decayed.

Any loss on (z, z_pos) (``losses.spectral_loss``, ``losses.info_nce_loss``, supervised losses on
z) applies to the output of :func:`apply_with_fixed_head`; for linear encoders the exact
population spectral loss is :func:`fixed_head_population_loss`. ``kappa`` may be a traced array,
so sweeping k never recompiles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simulations.losses import spectral_population_loss_of_map
from simulations.models import relu
from simulations.models.linear import end_to_end


def head_scales(kappa, width: int) -> jax.Array:
    """The diagonal of the fixed head, (1, 1/k, ..., 1/k^(width-1)), shape (width,).

    Args:
        kappa: k >= 1 (a float or a traced scalar; not validated here, see
            :func:`check_kappa`).
        width: m, the encoder's output width (static).
    """
    kappa = jnp.asarray(kappa)
    return kappa ** (-jnp.arange(width, dtype=kappa.dtype if jnp.issubdtype(kappa.dtype, jnp.floating)
                                 else jnp.result_type(float)))


def check_kappa(kappa) -> float:
    """Validate k (a finite number >= 1) and return it as a float."""
    from theory.checks import check_float

    return check_float("kappa", kappa, minimum=1.0)


def fixed_head_matrix(kappa, width: int) -> jax.Array:
    """D_k = diag(1, 1/k, ..., 1/k^(width-1)), shape (width, width)."""
    return jnp.diag(head_scales(kappa, width))


def apply_fixed_head(h: jax.Array, kappa) -> jax.Array:
    """z = g(h) for a batch h (n, m): coordinate j is divided by k^j."""
    return h * head_scales(kappa, h.shape[-1]).reshape((1,) * (h.ndim - 1) + (-1,))


def encode(params, x: jax.Array) -> jax.Array:
    """The encoder's output h (n, m) for any encoder of the library.

    Linear: h = P_L x (params a tuple of matrices). ReLU: h = relu(W x + c) (``params.head`` is
    not used).
    """
    if isinstance(params, (relu.ReLUParams, relu.DiagonalReLUParams)):
        return jax.nn.relu(relu.encoder_preactivation(params, x))
    h = x
    for weight in params:
        h = h @ weight.T
    return h


def apply_with_fixed_head(params, x: jax.Array, kappa) -> tuple[jax.Array, jax.Array]:
    """(h, z): the encoder's output ("pre", used downstream) and g(h) ("post", seen by the loss)."""
    h = encode(params, x)
    return h, apply_fixed_head(h, kappa)


def relu_encoder(params):
    """The same ReLU network with its learned head removed (head = None: not trained, not decayed)."""
    return params._replace(head=None)


def fixed_head_population_loss(params, pos_cov: jax.Array, second_moment: jax.Array, kappa) -> jax.Array:
    """Exact population spectral loss of a linear encoder behind the fixed head: L(D_k P_L).

    L(M) = -2 tr(M A M^T) + tr((M B M^T)^2) with M = D_k W_L ... W_1.
    """
    encoder = end_to_end(params)
    return spectral_population_loss_of_map(head_scales(kappa, encoder.shape[0])[:, None] * encoder,
                                           pos_cov, second_moment)
