"""LAPACK decompositions that stay one matrix per call under vmap (avoids a jaxlib CPU deadlock).

jaxlib's CPU LAPACK kernels split a batch of matrices over XLA's intra-op thread pool
(``ParallelBatchMap`` in jaxlib/cpu/lapack_kernels.cc) and block the calling pool thread until
the pieces finish. The kernel itself already runs on a pool thread, so when independent batched
decompositions run concurrently (e.g. one ridge probe per layer, each vmapped over a sweep) every
pool thread can end up waiting for work that no free thread is left to run: the process hangs
with all threads idle. On 2 cores two concurrent batched ``eigh`` calls suffice; we hit it in
``compare_supervised`` (seen with gdb: both ``tf_XLAEigen`` threads parked in
``BlockingCounter::Wait`` under ``lapack_dsyevd_ffi``). A kernel called on one matrix runs inline.

:func:`eigh` and :func:`svd` therefore turn every vmap over it into a sequential ``lax.map`` (nested vmaps nest
the maps), so each LAPACK call sees exactly one matrix. Used for the probes' Gram matrices, the
flow's Hessian certification and the supervised head's SVD: a few decompositions per point, so
the lost batch parallelism costs little (results are bit-identical: the same LAPACK routine). No autodiff rule:
use it where no derivative is taken.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def one_matrix_per_call(decomposition):
    """Wrap ``decomposition(matrix) -> tuple of arrays`` so that vmap maps it sequentially."""
    wrapped = jax.custom_batching.custom_vmap(decomposition)

    @wrapped.def_vmap
    def _one_at_a_time(axis_size, in_batched, matrix):
        (batched,) = in_batched
        out = jax.lax.map(wrapped, matrix) if batched else wrapped(matrix)
        return out, tuple(batched for _ in out)

    return wrapped


def _eigh(matrix):
    eigenvalues, eigenvectors = jnp.linalg.eigh(matrix)
    return eigenvalues, eigenvectors


def _svd(matrix):
    return tuple(jnp.linalg.svd(matrix, full_matrices=False))


#: (eigenvalues (k,), eigenvectors (k, k)) of a symmetric (k, k) matrix, as jnp.linalg.eigh.
eigh = one_matrix_per_call(_eigh)

#: (u (m, r), s (r,), vt (r, n)) of an (m, n) matrix, r = min(m, n), as jnp.linalg.svd(full_matrices=False).
svd = one_matrix_per_call(_svd)
