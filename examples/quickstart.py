"""Quickstart: train a depth-3 linear network by gradient flow and compare every layer with theory.

Run:  python examples/quickstart.py          (about 10-30 s on 2 CPU cores, mostly compilation)

Three input features with positive-pair covariance a = (0.9, 0.5, 0.8) and second moment
b = (1, 0.6, 2). Gradient flow on the population spectral loss
L(W) = -2 tr(W A W^T) + tr((W B W^T)^2) from a small, balanced, randomly oriented init ends where
theory.linear.layer_weights says: feature i has weight (sqrt(a_i) / b_i)^(l / L) at layer l of L,
so lower layers weight the features more equally ("progressive weighting").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simulations import losses, measure, models
from simulations.flow import gradient_flow
from theory import linear

POS_COV = np.array([0.9, 0.5, 0.8])
SECOND_MOMENT = np.array([1.0, 0.6, 2.0])
DEPTH = 3
INIT_SCALE = 0.1


def population_loss(params, args):
    """The exact population spectral loss; gradient_flow passes (A, B) as `args`."""
    pos_cov, second_moment = args
    return losses.spectral_population_loss(params, pos_cov, second_moment)


def main() -> dict:
    jax.config.update("jax_enable_x64", True)  # float64 for a theory-versus-simulation comparison
    dim = POS_COV.size
    params0 = models.init_balanced(jax.random.PRNGKey(0), dim, (dim,) * DEPTH, INIT_SCALE)
    args = (jnp.diag(jnp.asarray(POS_COV)), jnp.diag(jnp.asarray(SECOND_MOMENT)))
    result = gradient_flow(population_loss, params0, args)
    measured = np.asarray(measure.feature_weights(result.params))  # (depth, d): ||P_l e_i||
    predicted = linear.layer_weights(POS_COV, SECOND_MOMENT, DEPTH)
    error = float(np.max(np.abs(measured - predicted)))
    print(f"converged: {bool(result.converged)} at t = {float(result.t_final):.0f}")
    print("layer  " + "  ".join(f"feature {i} (trained / theory)" for i in range(dim)))
    for layer in range(DEPTH):
        cells = "".join(f"{measured[layer, i]:9.5f} / {predicted[layer, i]:.5f}{'':14}" for i in range(dim))
        print(f"{layer + 1:5d}  {cells.rstrip()}")
    print(f"largest difference: {error:.1e}")
    return {"converged": bool(result.converged), "measured": measured, "predicted": predicted, "error": error}


if __name__ == "__main__":
    main()
