"""Matrix products that stay fast at the tiny sizes of population losses.

XLA's CPU backend runs every dot as a separate library call of about a microsecond, whatever
its size, while elementwise work is fused into the surrounding loop. A gradient flow on a
population loss of 7 x 7 weights evaluates a handful of such products per gradient, thousands of
times per solve, so those calls dominated its cost. :func:`matmul` writes a product small enough
as a broadcast multiply and a sum, which XLA fuses, and leaves larger ones to the dot.

Measured by ``python -m bench.matmul`` (2 cores of an AMD EPYC, float64, inside jitted loops;
``bench/results/20261207T122900Z_cpu_matmul.json``): one product of two 8 x 8 matrices 0.69 us as
a dot, 0.17 us fused; 12 x 12 1.02 against 0.42 us; 16 x 16 1.32 against 3.94 us, hence the
threshold. The gradient of the spectral population loss of a depth-2, 7-feature net: 11.1 us with
dots, 1.8 us fused; its Hessian-vector product 14.5 against 2.6 us; one whole flow of that net
(1,518 steps) 0.20 s against 0.043 s to solve, 3.7 against 3.3 s to compile. Results agree to
rounding (the sum runs in another order than the dot's).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

#: Largest m * k * n of an (m, k) @ (k, n) product written as a fused multiply and sum.
FUSED_MAX_SIZE = 2048


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` for 2-D arrays, fused into the surrounding program when m * k * n <= FUSED_MAX_SIZE."""
    if a.ndim == 2 and b.ndim == 2 and a.shape[0] * a.shape[1] * b.shape[1] <= FUSED_MAX_SIZE:
        return jnp.sum(a[:, :, None] * b[None, :, :], axis=1)
    return a @ b


def sandwich(w: jax.Array, m: jax.Array) -> jax.Array:
    """``w @ m @ w.T`` with :func:`matmul`."""
    return matmul(matmul(w, m), w.T)
