"""The plain baseline: fixed-step gradient descent on the exact population loss in NumPy.

Written the way a careful researcher writes it: float64 arrays, the analytic gradient (no
autodiff), diagonal moments applied by broadcasting instead of d x d matmuls, in-place updates,
and the agreement with the closed-form layer weights checked every ``check_every`` steps.

Loss and gradient (W = W_L ... W_1, A = diag(a), B = diag(b)):
    L = -2 tr(W A W^T) + ||W B W^T||_F^2,   G = dL/dW = 4 (W B W^T) W B - 4 W A,
    dL/dW_l = (W_L ... W_(l+1))^T G (W_(l-1) ... W_1)^T.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np


class DescentRun(NamedTuple):
    """Outcome of :func:`gradient_descent`.

    Attributes:
        reason: "agreed" (layer weights within tolerance), "floor" (end-to-end weights converged
            while the layer weights did not: the step's own fixed point), "budget" (wall-time cap),
            "max_steps" or "diverged".
        steps: gradient steps taken.
        wall_s: wall time of the loop, checks included.
        cpu_s: process CPU time of the loop.
        flow_time: step x steps (gradient-flow time).
        layer_error: max relative error of the per-layer feature weights at the last check.
        end_to_end_error: the same for the end-to-end weights (last layer).
        first_end_to_end_agreement_time: flow time at which the end-to-end weights first agreed to
            ``tolerance`` (None if never).
        first_end_to_end_agreement_wall_s: wall time of the loop at that check (None if never).
    """

    reason: str
    steps: int
    wall_s: float
    cpu_s: float
    flow_time: float
    layer_error: float
    end_to_end_error: float
    first_end_to_end_agreement_time: float | None
    first_end_to_end_agreement_wall_s: float | None


def feature_weights(layers) -> np.ndarray:
    """||P_l e_i|| for every layer l and feature i, shape (L, d) (as simulations.measure)."""
    rows, product = [], None
    for weight in layers:
        product = weight if product is None else weight @ product
        rows.append(np.sqrt(np.einsum("ij,ij->j", product, product)))
    return np.stack(rows)


def loss_gradient(layers, a, b) -> list[np.ndarray]:
    """dL/dW_l for every layer (the analytic gradient the loop uses), each shaped like W_l."""
    products = [layers[0]]
    for weight in layers[1:]:
        products.append(weight @ products[-1])
    w = products[-1]
    wb = w * b
    g = 4.0 * ((wb @ w.T) @ wb - w * a)
    grads = [None] * len(layers)
    for l in range(len(layers) - 1, 0, -1):
        grads[l] = g @ products[l - 1].T
        g = layers[l].T @ g
    grads[0] = g
    return grads


def gradient_descent(layers0, a, b, step: float, target: np.ndarray, *, tolerance: float = 1e-4,
                     check_every: int = 100, max_steps: int = 10**9, time_budget: float = float("inf"),
                     floor_tolerance: float = 1e-9) -> DescentRun:
    """Fixed-step gradient descent until the layer weights agree with ``target`` to ``tolerance``.

    Args:
        layers0: initial weights (W_1, ..., W_L), copied.
        a, b: diagonal moments, shape (d,).
        step: learning rate h (flow time advances by h a step).
        target: closed-form layer weights, shape (L, d) (theory.linear.layer_weights).
        tolerance: stop when max |measured - target| / target <= tolerance.
        check_every: steps between agreement checks.
        max_steps, time_budget: caps (the wall-time cap is checked with the agreement).
        floor_tolerance: stop with reason "floor" when the end-to-end weights agree to this while
            the layer weights still do not (fixed-step descent only conserves the balance
            W_(l+1)^T W_(l+1) = W_l W_l^T up to O(step), so its layers settle off the prediction).

    Returns:
        :class:`DescentRun`.
    """
    layers = [np.array(w, dtype=np.float64, copy=True) for w in layers0]
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    first_agreement = first_agreement_wall = None
    layer_error = end_error = float("inf")
    reason = "max_steps"
    start, cpu = time.perf_counter(), time.process_time()
    n = 0
    while n < max_steps:
        for _ in range(check_every):
            for weight, grad in zip(layers, loss_gradient(layers, a, b)):
                weight -= step * grad
        n += check_every
        errors = np.abs(feature_weights(layers) - target) / target
        layer_error, end_error = float(errors.max()), float(errors[-1].max())
        if not np.isfinite(layer_error):
            reason = "diverged"
            break
        if first_agreement is None and end_error <= tolerance:
            first_agreement, first_agreement_wall = n * step, time.perf_counter() - start
        if layer_error <= tolerance:
            reason = "agreed"
            break
        if end_error <= floor_tolerance:
            reason = "floor"
            break
        if time.perf_counter() - start > time_budget:
            reason = "budget"
            break
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return DescentRun(reason=reason, steps=n, wall_s=wall, cpu_s=cpu, flow_time=n * step, layer_error=layer_error,
                      end_to_end_error=end_error, first_end_to_end_agreement_time=first_agreement,
                      first_end_to_end_agreement_wall_s=first_agreement_wall)
