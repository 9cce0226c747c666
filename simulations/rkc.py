"""RKC: a second-order stabilized explicit Runge--Kutta--Chebyshev solver for diffrax.

Gradient flow d(theta)/dt = -grad L(theta) has Jacobian -Hess L: symmetric, so its spectrum is
real, and near a minimum it is stiff (curvatures from O(1) down to the slow plateau directions).
Implicit solvers handle stiffness but need a dense LU of the Jacobian every step (on the CPU a
768-parameter net spent 0.5 s per Kvaerno5 step); explicit solvers need steps below 2 / rho.
RKC (Sommeijer, Shampine & Verwer 1998, J. Comput. Appl. Math. 88:315) uses s stages whose
stability interval along the negative real axis grows like 0.65 s^2, so a step of size h costs
about sqrt(1.54 h rho) gradient evaluations instead of h rho / 2: only gradients and
Hessian-vector products, no linear algebra, and it vmaps. The spectral radius rho is tracked by a
warm-started power iteration with Hessian-vector products (jax.jvp of the vector field).

With a ``monitor`` (a function giving a scalar such as the loss, the vector field and minus its
Jacobian-vector product), the solver also measures what a steady-state test needs at the end
of every step: the state is ``(x, stats)`` and ``stats`` holds the loss, |f|^2 and -f^T J f at x.
The power iteration for the next step and these measurements then share one loop over one
Jacobian-vector product, so a compiled solve holds two copies of that product (start and step)
instead of four (the solver's start and step, and a diffrax event's start and step). Measured on
2 cores (JAX 0.10.2, three fresh processes each): the gradient flow of a two-layer ReLU head
compiles in 3.6-4.0 s instead of 4.1-4.6 s, of a depth-4 linear network in 1.7-1.8 s instead of
2.1-2.5 s. The steps taken are the same, except where a steady-state test sits on its threshold:
XLA may round the product along f in the last bit differently in the two programs, and such a
flow stops a step earlier or later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from diffrax import (
    RESULTS,
    AbstractAdaptiveSolver,
    AbstractTerm,
    ThirdOrderHermitePolynomialInterpolation,
)

_DAMPING = 2.0 / 13.0  # RKC's standard damping epsilon: keeps |R(z)| <= 1 - eps/3 inside the interval.


def _tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _tree_scale(tree, c):
    return jax.tree_util.tree_map(lambda x: c * x, tree)


def _normalized(w):
    """``(w / |w|, |w|)`` for a pytree w (w itself, norm 0, when w = 0): one power-iteration update."""
    norm = jnp.sqrt(_tree_vdot(w, w))
    return _tree_scale(w, 1.0 / jnp.where(norm > 0, norm, 1.0)), norm


def _chebyshev(w0, s, s_max):
    """T_s(w0), T_s'(w0), T_s''(w0) by the three-term recurrence (stable for w0 >= 1)."""

    def body(j, carry):
        t, tm, d, dm, dd, ddm = carry
        t_new = 2 * w0 * t - tm
        d_new = 2 * t + 2 * w0 * d - dm
        dd_new = 4 * d + 2 * w0 * dd - ddm
        return (t_new, t, d_new, d, dd_new, dd)

    one, zero = jnp.ones_like(w0), jnp.zeros_like(w0)
    # carry holds (T_j, T_{j-1}, T'_j, T'_{j-1}, T''_j, T''_{j-1}) starting at j = 1.
    carry = (w0, one, one, zero, zero, zero)
    carry = jax.lax.fori_loop(1, s, body, carry)
    return carry[0], carry[2], carry[4]


def state_norm(y):
    """RMS norm of the integrated part ``x`` of a monitored state ``(x, stats)`` (diffrax's default
    norm on x: the measured ``stats`` are not integrated and take no part in step-size control)."""
    return optx.rms_norm(y[0])


#: Power iterations at the start of a solve, before the per-step ones.
START_ITERATIONS = 30


class RKC2(AbstractAdaptiveSolver):
    """Second-order Runge--Kutta--Chebyshev solver for ODEs with a real, stiff spectrum.

    Args:
        max_stages: cap on the stage count s (stability interval ~0.65 s^2 / rho).
        power_iterations: Hessian-vector products per step refining the spectral-radius estimate.
        rho_safety: factor applied to the power-iteration estimate (it approaches rho from below).
        monitor: optional ``monitor(t, x, args) -> (value, f(x), product)``: a scalar of the state
            (for a gradient flow, the loss), the vector field, and ``product(u) = -J(x) u`` (for a
            gradient flow, the Hessian-vector product). With it the state is ``(x, stats)``: x is
            integrated (the term's vector field takes and returns ``(x, stats)``-shaped trees and
            must ignore stats), and ``stats`` = (value, f.f, -f.Jf) at x is measured at every
            step's end (build ``y0`` with :meth:`start`).
        started: the solver state :meth:`start` returned (then ``init`` returns it instead of
            computing it again).
    """

    max_stages: int = 512
    power_iterations: int = 2
    rho_safety: float = 1.2
    monitor: Callable | None = eqx.field(default=None, static=True)
    started: Any = None

    term_structure: ClassVar = AbstractTerm
    interpolation_cls: ClassVar = ThirdOrderHermitePolynomialInterpolation

    def order(self, terms):
        return 2

    def _jvp(self, terms, t, y, args, v):
        return jax.jvp(lambda z: terms.vf(t, z, args), (y,), (v,))[1]

    def _power(self, terms, t, y, args, v, iterations):
        def body(_, carry):
            return _normalized(self._jvp(terms, t, y, args, carry[0]))

        return jax.lax.fori_loop(0, iterations, body, (v, jnp.zeros((), dtype=jnp.result_type(t))))

    def _measure(self, terms, t, x, args, v, iterations, before=0):
        """At x: the monitor's (value, f), then ``iterations`` power-iteration products -J v and one
        product -J f, all from one loop over the monitor's product.

        Returns (f(x), v after the power iterations, the last norm |J v|, the norm after the
        first ``before`` products, stats (value, f.f, -f.Jf)).
        """
        value, f, product = self.monitor(t, x, args)
        dtype = jnp.result_type(value)
        # The solver's own f(x) comes from the vector field, as in every other step of RKC: the
        # monitor's may differ in the last bit (a loss's value_and_grad and grad need not round alike).
        f_state = terms.vf(t, (x, jnp.zeros(3, dtype)), args)[0]

        def body(i, carry):
            v, norm, norm_before, f_pf = carry
            along_f = i == iterations
            w = product(jax.tree_util.tree_map(lambda a, b: jnp.where(along_f, a, b), f, v))
            # -J v instead of J v: the iterates alternate in sign, their norms are the same.
            direction, new_norm = _normalized(w)
            v = jax.tree_util.tree_map(lambda old, new: jnp.where(along_f, old, new), v, direction)
            norm_before = jnp.where(i == before - 1, new_norm, norm_before)
            f_pf = jnp.where(along_f, _tree_vdot(f, w), f_pf)
            return v, jnp.where(along_f, norm, new_norm), norm_before, f_pf

        zero = jnp.zeros((), dtype)
        v, norm, norm_before, f_pf = jax.lax.fori_loop(0, iterations + 1, body, (v, zero, zero, zero))
        stats = jnp.stack([value, _tree_vdot(f, f), f_pf])
        return f_state, v, norm, norm_before, stats

    def start(self, terms, t0, x0, args):
        """The monitored start: ``((x0, stats0), state)``; pass ``state`` as ``started``."""
        v = self._start_direction(x0)
        f0, v, norm, norm_before, stats = self._measure(
            terms, t0, x0, args, v, START_ITERATIONS + self.power_iterations, before=START_ITERATIONS)
        # As if the first step refined the start's estimate: never below half of it.
        rho = jnp.maximum(norm, 0.5 * norm_before)
        return (x0, stats), ((f0, jnp.zeros_like(stats)), v, rho)

    @staticmethod
    def _start_direction(y0):
        # Start the power iteration from a fixed pseudo-random direction (deterministic).
        leaves, treedef = jax.tree_util.tree_flatten(y0)
        keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
        v = jax.tree_util.tree_unflatten(
            treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
        )
        return _tree_scale(v, 1.0 / jnp.sqrt(_tree_vdot(v, v)))

    def init(self, terms, t0, t1, y0, args):
        if self.monitor is not None:
            return self.started if self.started is not None else self.start(terms, t0, y0[0], args)[1]
        f0 = terms.vf(t0, y0, args)
        v, rho = self._power(terms, t0, y0, args, self._start_direction(y0), START_ITERATIONS)
        return (f0, v, rho)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        f0, v, rho = solver_state
        h = t1 - t0
        if self.monitor is None:
            v, rho_new = self._power(terms, t0, y0, args, v, self.power_iterations)
            rho = jnp.maximum(rho_new, 0.5 * rho)  # do not let one noisy estimate collapse the bound
        # (monitored: v and rho were refined at y0 when the step that ended there was taken.)
        rho_bound = self.rho_safety * rho
        s_needed = 1.0 + jnp.sqrt(1.0 + 1.54 * h * rho_bound)
        s = jnp.clip(jnp.ceil(s_needed), 2, self.max_stages).astype(jnp.int32)
        unstable = s_needed > self.max_stages

        w0 = 1.0 + _DAMPING / (s.astype(h.dtype) ** 2)
        _, ts_d, ts_dd = _chebyshev(w0, s, self.max_stages)
        w1 = ts_d / ts_dd
        # b_j = T_j''/T_j'^2 for j >= 2, b_0 = b_1 = b_2 (= 1/(4 w0^2) ... computed from T_2).
        t2, t2d, t2dd = 2 * w0**2 - 1, 4 * w0, 4.0
        b2 = t2dd / t2d**2
        b1 = b2
        mu1_tilde = b1 * w1
        y1 = jax.tree_util.tree_map(lambda y, f: y + mu1_tilde * h * f, y0, f0)

        def body(j, carry):
            y_prev, y_prev2, tj1, tj2, dj1, dj2, ddj1, ddj2, bj1, bj2 = carry
            # Chebyshev values at stage j from stages j-1, j-2.
            tj = 2 * w0 * tj1 - tj2
            dj = 2 * tj1 + 2 * w0 * dj1 - dj2
            ddj = 4 * dj1 + 2 * w0 * ddj1 - ddj2
            bj = ddj / dj**2
            aj1 = 1.0 - bj1 * tj1
            mu = 2 * w0 * bj / bj1
            nu = -bj / bj2
            mu_t = 2 * w1 * bj / bj1
            gamma_t = -aj1 * mu_t
            f_prev = terms.vf(t0, y_prev, args)
            y_new = jax.tree_util.tree_map(
                lambda y0_, yp, yp2, fp, f0_: (1 - mu - nu) * y0_ + mu * yp + nu * yp2
                + mu_t * h * fp + gamma_t * h * f0_,
                y0, y_prev, y_prev2, f_prev, f0,
            )
            return (y_new, y_prev, tj, tj1, dj, dj1, ddj, ddj1, bj, bj1)

        one, zero = jnp.ones_like(w0), jnp.zeros_like(w0)
        carry = (y1, y0, w0, one, one, zero, zero, zero, b1, b2)
        # The recurrence for T_j starts at j = 2 from (T_1, T_0) = (w0, 1), (T_1', T_0') = (1, 0),
        # (T_1'', T_0'') = (0, 0); b_1 = b_0 = b_2 by the RKC convention.
        del t2
        carry = jax.lax.fori_loop(2, s + 1, body, carry)
        y_end = carry[0]
        if self.monitor is None:
            f1 = terms.vf(t1, y_end, args)
            state = (f1, v, rho)
        else:
            f1, v, norm, _, stats = self._measure(terms, t1, y_end[0], args, v, self.power_iterations)
            f1 = (f1, jnp.zeros_like(stats))
            y_end = (y_end[0], stats)
            state = (f1, v, jnp.maximum(norm, 0.5 * rho))  # never below half the last estimate
        # Embedded error estimate of RKC: (12 (y0 - y1) + 6 h (f0 + f1)) / 15.
        y_error = jax.tree_util.tree_map(
            lambda a, b, fa, fb: (12 * (a - b) + 6 * h * (fa + fb)) / 15.0, y0, y_end, f0, f1
        )
        if self.monitor is not None:
            y_error = (y_error[0], jnp.zeros_like(y_error[1]))  # stats are measured, not integrated
        y_error = jax.tree_util.tree_map(lambda e: jnp.where(unstable, jnp.inf, e), y_error)
        dense_info = dict(y0=y0, y1=y_end, k0=_tree_scale(f0, h), k1=_tree_scale(f1, h))
        return y_end, y_error, dense_info, state, RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
