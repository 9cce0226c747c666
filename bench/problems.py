"""The benchmark problems: the pinned one and a small one for ``--quick``.

Pinned: d = 16, depth 3, width 16, invariance ratios r = linspace(0.9, 0.2, 16), strengths
b = linspace(0.5, 2.0, 16), a = r b, balanced initialization with per-layer singular value 0.05.
Every benchmark (library, NumPy baseline, sweep) starts from the same initial weights: the library's
own ``WeightingConfig(..., seed=s)`` initialization.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from theory.checks import check_float, check_int

# Historical name kept for bench.integrators and external scripts: the pinned sizes.
PINNED = dict(dim=16, depth=3, width=16, init_scale=0.05)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Problem:
    """A diagonal weighting problem: r = linspace(ratio_range), b = linspace(strength_range), a = r b.

    Attributes:
        name: label recorded in the JSON.
        dim: input dimension d.
        depth: number of layers L.
        width: every layer's width.
        ratio_range: (first, last) invariance ratio r_i = a_i / b_i.
        strength_range: (first, last) strength b_i = E[x_i^2].
        init_scale: per-layer singular value of the balanced initialization.
    """

    name: str
    dim: int
    depth: int
    width: int
    ratio_range: tuple[float, float]
    strength_range: tuple[float, float]
    init_scale: float

    def __post_init__(self):
        check_int("dim", self.dim, minimum=1)
        check_int("depth", self.depth, minimum=1)
        check_int("width", self.width, minimum=1)
        check_float("init_scale", self.init_scale, minimum=0.0, strict_minimum=True)
        for name, (low, high) in (("ratio_range", self.ratio_range), ("strength_range", self.strength_range)):
            check_float(name, low)
            check_float(name, high)
        if min(self.ratio_range) <= 0 or max(self.ratio_range) > 1:
            raise ValueError(f"ratio_range must lie in (0, 1] so every feature is learned, got {self.ratio_range}")
        if min(self.strength_range) <= 0:
            raise ValueError(f"strength_range must be positive, got {self.strength_range}")

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b), each shape (d,)."""
        ratios = np.linspace(*self.ratio_range, self.dim)
        strengths = np.linspace(*self.strength_range, self.dim)
        return ratios * strengths, strengths

    def config(self, seed: int = 0, **overrides):
        """The library's WeightingConfig for this problem and seed."""
        from simulations.experiments.weighting import WeightingConfig

        a, b = self.moments()
        return WeightingConfig(pos_cov=tuple(a), second_moment=tuple(b), depth=self.depth, width=self.width,
                               init="balanced", init_scale=self.init_scale, seed=seed, **overrides)

    def flow_args(self):
        """``(A, B, weight_decay)`` as passed to the library's population loss."""
        a, b = self.moments()
        return jnp.diag(jnp.asarray(a)), jnp.diag(jnp.asarray(b)), jnp.asarray(0.0)

    def describe(self) -> dict[str, Any]:
        """JSON description (what the ratios were measured on)."""
        return {"name": self.name, "dim": self.dim, "depth": self.depth, "width": self.width,
                "ratios": f"linspace({self.ratio_range[0]}, {self.ratio_range[1]}, {self.dim})",
                "strengths_b": f"linspace({self.strength_range[0]}, {self.strength_range[1]}, {self.dim})",
                "pos_cov_a": "r * b", "init": "balanced", "init_scale": self.init_scale,
                "parameters": self.dim * self.width + (self.depth - 1) * self.width**2}


PINNED_PROBLEM = Problem(name="pinned", dim=16, depth=3, width=16, ratio_range=(0.9, 0.2),
                         strength_range=(0.5, 2.0), init_scale=0.05)
# --quick: the same construction at d = 4 with a larger init (plateaus end near t = 1,600
# instead of 25,000: the last escape time scales like init_scale^(2 - 2L)), seconds per part.
QUICK_PROBLEM = Problem(name="quick", dim=4, depth=3, width=4, ratio_range=(0.9, 0.2),
                        strength_range=(0.5, 2.0), init_scale=0.1)


def pinned_moments() -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the pinned problem."""
    return PINNED_PROBLEM.moments()


def hessian_lambda_max(problem: Problem) -> float:
    """Largest Hessian eigenvalue of the population loss at the balanced optimum.

    Exact: the optimum's layers are W_l = diag(sigma) with sigma_i = (sqrt(a_i) / b_i)^(1/L) (any
    other balanced optimum is an orthogonal change of basis, with the same Hessian spectrum).
    Weights are largest there, so this is the sharpest curvature along the flow: gradient descent
    with a fixed step h is stable at the end only if h < 2 / lambda_max.
    """
    from simulations.experiments.weighting import population_loss

    with jax.enable_x64(True):
        a, b = problem.moments()
        sigma = (np.sqrt(a) / b) ** (1.0 / problem.depth)
        if problem.width != problem.dim:
            raise ValueError(f"hessian_lambda_max needs width == dim, got {problem.width} and {problem.dim}")
        params = tuple(jnp.diag(jnp.asarray(sigma)) for _ in range(problem.depth))
        flat, unravel = ravel_pytree(params)
        args = problem.flow_args()
        hessian = jax.hessian(lambda v: population_loss(unravel(v), args))(flat)
        return float(jnp.linalg.eigvalsh(hessian)[-1])


#: Fraction of the stability limit 2 / lambda_max used as "the largest stable step". GD at
#: 0.99 x 2 / lambda_max still contracts the stiffest mode by |1 - 1.98| = 0.98 a step near the
#: end (measured: no divergence over 2e6 steps on the pinned problem); at 1.0 it would not converge.
STABLE_FRACTION = 0.99


def largest_stable_step(problem: Problem, fraction: float = STABLE_FRACTION) -> float:
    """``fraction`` x 2 / lambda_max of the Hessian at the optimum."""
    return fraction * 2.0 / hessian_lambda_max(problem)
