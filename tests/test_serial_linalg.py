"""Decompositions that see one matrix per LAPACK call under vmap (the jaxlib CPU deadlock guard).

Two checks: the values equal jnp.linalg's under nested vmaps, and in the traced program of a
vmapped ridge probe / flow certification every eigh operand is a single matrix. (The hang itself
is timing-dependent, so a test cannot provoke it reliably; the structure that rules it out can be
checked exactly.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simulations import serial_linalg
from simulations.probe import ridge_probe


def _eigh_operand_ranks(jaxpr) -> list[int]:
    """Ranks of every eigh operand in a closed jaxpr, sub-jaxprs (scan, cond, pjit) included."""
    ranks = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "eigh":
            ranks.append(eqn.invars[0].aval.ndim)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    ranks.extend(_eigh_operand_ranks(inner))
    return ranks


def test_values_equal_jnp_linalg_under_nested_vmap():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 6, 6))
    symmetric = x + jnp.swapaxes(x, -1, -2)
    values, vectors = jax.jit(jax.vmap(jax.vmap(serial_linalg.eigh)))(symmetric)
    expected_values, expected_vectors = jnp.linalg.eigh(symmetric)
    np.testing.assert_allclose(values, expected_values, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jnp.abs(vectors), jnp.abs(expected_vectors), rtol=1e-10, atol=1e-10)
    rect = x[..., :4, :]
    u, s, vt = jax.vmap(jax.vmap(serial_linalg.svd))(rect)
    np.testing.assert_allclose(s, jnp.linalg.svd(rect, compute_uv=False), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(u * s[..., None, :] @ vt, rect, atol=1e-10)


def test_vmapped_ridge_probes_decompose_one_matrix_per_call():
    features = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 50, 5))
    target = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 50))
    probe = jax.vmap(jax.vmap(lambda h, y: ridge_probe(h, y, h, y, 0.1).mse))
    ranks = _eigh_operand_ranks(jax.make_jaxpr(probe)(features, target).jaxpr)
    assert ranks and set(ranks) == {2}
