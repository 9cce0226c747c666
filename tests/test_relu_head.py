"""The learned ReLU head on a linear encoder: its exact population loss, training and probe.

Exact checks: the loss reduces to the linear head's when the ReLU head is linear in disguise
(relu(u) - relu(-u) = u), its gradient matches finite differences, and it stays finite where two
hidden units align (correlation 1, where the textbook arc-cosine formula gives inf - inf).
Statistical check: the exact loss equals the sampled spectral loss on Gaussian pairs within 4
standard errors. Flow check: two integrators (adaptive RKC, fixed-step Euler) reach the same
weights at a fixed time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from simulations import data, losses
from simulations.flow import FlowOptions
from simulations.models import relu_head as rh
from simulations.probe import probe_layers, probe_representations

A_DIAG, B_DIAG = (1.9, 0.8, 0.3, 0.1), (2.0, 1.0, 0.5, 0.5)
# Float64 algebra of a few dozen operations.
EXACT = 1e-10
# Central differences (step 1e-6) of a smooth loss: error ~ h^2 |f'''| ~ 1e-10, relative to O(1).
FD_STEP, FD_RTOL = 1e-6, 1e-6
# Monte Carlo: 20 batches of 20,000 pairs; the exact value must sit within 4 standard errors.
MC_BATCHES, MC_PAIRS, MC_SIGMAS = 20, 20_000, 4.0
# RKC (rtol 1e-5) vs Euler (step 0.02) at t = 300: the Euler error is O(h) ~ 1e-3 relative.
INTEGRATOR_RTOL = 1e-2


def _params(seed=0, scale=1.0, hidden=16):
    return rh.init_relu_head(jax.random.PRNGKey(seed), 4, 4, hidden, 4, init_scale=scale)


def _moments():
    return jnp.diag(jnp.asarray(A_DIAG)), jnp.diag(jnp.asarray(B_DIAG))


def test_loss_reduces_to_the_linear_head_when_the_relu_head_is_linear():
    A, B = _moments()
    V0 = jax.random.normal(jax.random.PRNGKey(3), (4, 4))
    W = jax.random.normal(jax.random.PRNGKey(4), (4, 4))
    linear_in_disguise = rh.ReLUHeadParams(W, jnp.vstack([jnp.eye(4), -jnp.eye(4)]), jnp.hstack([V0, -V0]))
    exact = float(losses.spectral_population_loss_of_map(V0 @ W, A, B))
    assert abs(float(rh.relu_head_population_loss(linear_in_disguise, A, B)) - exact) <= EXACT * abs(exact)


def test_loss_matches_the_sampled_loss_on_gaussian_pairs():
    A, B = _moments()
    params = _params()
    pairs = data.gaussian_pairs(A_DIAG, B_DIAG)
    samples = []
    for i in range(MC_BATCHES):
        x, x_pos = pairs.sample_pairs(jax.random.PRNGKey(100 + i), MC_PAIRS)
        samples.append(float(losses.spectral_loss(rh.apply_relu_head(params, x)[1],
                                                  rh.apply_relu_head(params, x_pos)[1])))
    error = np.std(samples, ddof=1) / np.sqrt(MC_BATCHES)
    exact = float(rh.relu_head_population_loss(params, A, B))
    print(f"exact {exact:.5f}, sampled {np.mean(samples):.5f} +- {error:.5f}")
    assert abs(np.mean(samples) - exact) <= MC_SIGMAS * error


def test_gradient_matches_finite_differences():
    A, B = _moments()
    flat, unravel = ravel_pytree(_params(seed=1))
    loss = lambda v: rh.relu_head_population_loss(unravel(v), A, B)
    direction = jax.random.normal(jax.random.PRNGKey(9), flat.shape)
    numeric = (loss(flat + FD_STEP * direction) - loss(flat - FD_STEP * direction)) / (2 * FD_STEP)
    analytic = jnp.vdot(jax.grad(loss)(flat), direction)
    assert abs(float(numeric - analytic)) <= FD_RTOL * max(1.0, abs(float(analytic)))


def test_gradient_is_finite_where_hidden_units_align():
    A, B = _moments()
    params = _params(seed=2)
    aligned = params._replace(hidden=params.hidden.at[1].set(2.0 * params.hidden[0]).at[2].set(-params.hidden[0]))
    grads = jax.grad(rh.relu_head_population_loss)(aligned, A, B)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(grads))
    # d/dc E[relu(p) relu(q)] = (pi - arccos rho) / (2 pi): 1/2 at rho = 1, 0 at rho = -1.
    d_cov = jax.grad(rh.relu_gaussian_moment, argnums=2)
    assert abs(float(d_cov(2.0, 2.0, 2.0)) - 0.5) <= EXACT
    assert abs(float(d_cov(2.0, 2.0, -2.0))) <= EXACT


def test_moment_matches_known_values():
    # rho = 0: s_a s_b / (2 pi); rho = 1: s/2 (E[relu(p)^2] = Var p / 2).
    assert abs(float(rh.relu_gaussian_moment(2.0, 3.0, 0.0)) - np.sqrt(6.0) / (2 * np.pi)) <= EXACT
    assert abs(float(rh.relu_gaussian_moment(2.0, 2.0, 2.0)) - 1.0) <= EXACT


def test_integrators_agree_at_a_fixed_time():
    times = (300.0,)
    adaptive = rh.train_relu_head(A_DIAG, B_DIAG, [0], options=FlowOptions(max_time=times[0], certify=False))
    euler = rh.train_relu_head(A_DIAG, B_DIAG, [0], options=FlowOptions(solver="euler", euler_step=0.02,
                                                                        max_time=times[0], certify=False))
    for a, b in zip(jax.tree_util.tree_leaves(adaptive.params), jax.tree_util.tree_leaves(euler.params)):
        assert float(jnp.linalg.norm(a - b)) <= INTEGRATOR_RTOL * float(jnp.linalg.norm(b))
    assert float(adaptive.t_final[0]) == pytest.approx(times[0])


def test_probe_representations_equals_probe_layers_on_a_linear_network():
    W = jax.random.normal(jax.random.PRNGKey(5), (4, 4))
    key, b_ds = jax.random.PRNGKey(7), jnp.asarray(B_DIAG)
    linear = probe_layers((W,), key, b_ds, 0.1, 2, n_train=500, n_test=800).mse
    general = probe_representations(lambda x: (x, x @ W.T), key, b_ds, 0.1, 2, n_train=500, n_test=800)
    np.testing.assert_allclose(np.asarray(general), np.asarray(linear), rtol=1e-10)


@pytest.mark.parametrize("kwargs, name", [
    ({"seeds": []}, "seeds"),
    ({"seeds": [-1]}, "seed"),
    ({"hidden_width": 0}, "hidden_width"),
    ({"init_scale": 0.0}, "init_scale"),
    ({"pos_cov": (3.0, 0.8, 0.3, 0.1)}, "pos_cov"),
])
def test_bad_input_names_the_argument(kwargs, name):
    arguments = {"pos_cov": A_DIAG, "second_moment": B_DIAG, "seeds": [0], **kwargs}
    with pytest.raises(ValueError, match=name):
        rh.train_relu_head(arguments.pop("pos_cov"), arguments.pop("second_moment"), arguments.pop("seeds"),
                           **arguments)
