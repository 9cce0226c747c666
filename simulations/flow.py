"""Gradient flow d(theta)/dt = -grad L(theta) to a certified steady state.

One call integrates the flow with an adaptive ODE solver (diffrax; default :class:`RKC2`, chosen
from the measurements in bench/ and the README) until a steady-state event fires, records the
parameters on a user-given time grid, and certifies the end point:

* Steady-state event (cheap, every step): along the flow direction g = -grad L, the curvature
  kappa = g^T H g / |g|^2 (one Hessian-vector product, which the default RKC solver computes in
  the loop of its own power iteration, :class:`simulations.rkc.RKC2` ``monitor``) must be
  positive, and the loss still to be gained under the quadratic model along g, |g|^2 / (2 kappa),
  must be below ``loss_tol * max(|L|, 1)``. On a saddle plateau the flow runs along an escape
  direction, so kappa < 0 and the event cannot fire however small the gradient is.
* Certification (once, after the solve): the smallest Hessian eigenvalue. A clearly negative one
  (below ``-saddle_tol * lambda_max``) means the flow stopped near a saddle whose escape direction
  had not yet taken over; the flow then continues for at least ``escape_factor / |lambda_min|``
  before the event may fire again. This repeats up to ``max_restarts`` times.

Time is gradient-flow time, which equals learning rate x steps for gradient descent, so
simulations and closed-form trajectories share one axis.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from simulations import serial_linalg
from simulations.programs import stored_jit
from simulations.runtime import worker_threads
from theory.checks import check_choice, check_float, check_int

SOLVERS = ("rkc", "kvaerno5", "tsit5", "euler")
#: How a batched flow runs its points: "vmap" (one vectorized solve), "points" (each point's own
#: solve, spread over the CPU cores) or "auto" (points on a CPU, vmap on accelerators).
BATCHING = ("auto", "vmap", "points")


class FlowDivergenceError(RuntimeError):
    """Gradient flow produced NaN/inf or blew up."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowOptions:
    """Integrator settings (hashable: a change recompiles, so sweeps vary ``args`` instead).

    Attributes:
        solver: "rkc" (default: stabilized explicit, gradients only), "kvaerno5" (implicit, dense
            LU per step), "tsit5" (explicit adaptive), "euler" (fixed step ``euler_step``).
        rtol, atol: local error tolerances of the adaptive step-size controller.
        loss_tol: steady state when the loss still to be gained is below loss_tol * max(|L|, 1).
        max_time: stop (converged=False) if no steady state by this time.
        max_steps: cap on solver steps per segment.
        euler_step: step of the fixed-step solver.
        max_stages: stage cap of the RKC solver (its stable step grows like 0.65 s^2 / rho). A
            high cap matters on algebraically slow tails (features with r <= 0 decay like a power
            of t): a d = 4, depth-2 case with two such features took 2,131 steps / 68 s at 4096
            against 93,664 steps / 470 s at 512 (same end point); the pinned bench problem is
            unaffected (5,392 steps either way).
        certify: run the Hessian certification (parameter count up to ``certify_max_params``).
        saddle_tol: relative size of a negative Hessian eigenvalue that counts as a saddle.
        escape_factor: after a saddle, integrate escape_factor / |lambda_min| longer (capped at
            the time elapsed so far) before the steady-state event may fire again.
        max_restarts: how many saddles the certification may push the flow past.
        stuck_tol: a saddle whose parameters moved less than this (relative) along its escape
            direction during an escape wait is declared exactly invariant (``at_saddle``) instead
            of being waited on again.
        restart_horizon: restarts stop once the time exceeds restart_horizon x the time the
            steady-state event first fired (default: never). A finite value bounds the cost of
            slight negative curvature that never turns into an escape, at the price of stopping on
            a plateau longer than that factor (then reported as ``at_saddle``).
        batching: how a batched flow runs (:data:`BATCHING`). Under vmap an adaptive solve runs
            as long as its slowest point, at the largest stage count of any point, every step; a
            GPU absorbs that, a CPU pays it in full. "points" solves each point with the
            single-point program instead, one point per core at a time (the figure
            reweighting_pre_weights on 2 cores: 93 s vmapped, 10 s by points, the same numbers
            bit for bit). The results do not depend on this choice.
    """

    solver: str = "rkc"
    rtol: float = 1e-5
    atol: float = 1e-8
    loss_tol: float = 1e-13
    max_time: float = 1e12
    max_steps: int = 1_000_000
    euler_step: float = 1e-2
    max_stages: int = 4096
    certify: bool = True
    certify_max_params: int = 4096
    saddle_tol: float = 1e-10
    escape_factor: float = 2.0
    max_restarts: int = 64
    stuck_tol: float = 1e-10
    restart_horizon: float = float("inf")
    batching: str = "auto"

    def __post_init__(self):
        check_choice("solver", self.solver, SOLVERS)
        check_choice("batching", self.batching, BATCHING)
        check_float("rtol", self.rtol, minimum=0.0, strict_minimum=True)
        check_float("atol", self.atol, minimum=0.0, strict_minimum=True)
        check_float("loss_tol", self.loss_tol, minimum=0.0, strict_minimum=True)
        check_float("max_time", self.max_time, minimum=0.0, strict_minimum=True)
        check_int("max_steps", self.max_steps, minimum=1)
        check_float("euler_step", self.euler_step, minimum=0.0, strict_minimum=True)
        check_int("max_stages", self.max_stages, minimum=2)
        check_float("saddle_tol", self.saddle_tol, minimum=0.0)
        check_float("escape_factor", self.escape_factor, minimum=0.0, strict_minimum=True)
        check_int("max_restarts", self.max_restarts, minimum=0)


class FlowResult(NamedTuple):
    """Outcome of :func:`gradient_flow` (leading batch axis on every field when batched).

    Attributes:
        params: final parameters (pytree like the initial ones).
        times: the recording grid, shape (T,), or None.
        trajectory: parameters at ``times`` (pytree, leaves with a leading T axis), or None.
            Grid points after the steady state hold the steady state.
        converged: steady-state event fired and certification found no saddle.
        t_final: time at which the flow stopped.
        steps: accepted solver steps (all segments).
        loss: final loss.
        min_curvature: smallest Hessian eigenvalue at the end (nan when not certified).
        restarts: how many saddles certification pushed the flow past.
        at_saddle: the end point is a stationary saddle the flow cannot leave (an exactly
            invariant manifold, such as feature-aligned init); it is still a steady state.
    """

    params: Any
    times: Any
    trajectory: Any
    converged: Any
    t_final: Any
    steps: Any
    loss: Any
    min_curvature: Any
    restarts: Any
    at_saddle: Any


def _solver(options: FlowOptions, monitor=None):
    """The diffrax solver of ``options.solver`` (RKC with ``monitor``, see :class:`simulations.rkc.RKC2`)."""
    import diffrax  # imported when a program is traced: a stored program needs neither it nor rkc

    from simulations.rkc import RKC2

    if options.solver == "rkc":
        return RKC2(max_stages=options.max_stages, monitor=monitor)
    return {
        "kvaerno5": diffrax.Kvaerno5,
        "tsit5": diffrax.Tsit5,
        "euler": diffrax.Euler,
    }[options.solver]()


def _steady_event(t, t_arm, value, g2, curvature_times_g2, options):
    """The steady-state event from the loss, |g|^2 and g^T H g (g = -grad L): from ``t_arm`` on,
    the loss still to be gained under the quadratic model along g is below
    ``loss_tol * max(|L|, 1)``; or at once, divergence."""
    gain = g2 * g2 / (2.0 * jnp.where(curvature_times_g2 > 0, curvature_times_g2, 1.0))
    steady = (curvature_times_g2 > 0) & (gain <= options.loss_tol * jnp.maximum(jnp.abs(value), 1.0))
    steady = steady | (g2 == 0)
    # Stop at once on divergence, so the error names the time it happened.
    diverged = ~jnp.isfinite(value) | ~jnp.isfinite(g2)
    return (steady & (t >= t_arm)) | diverged


def _steady_condition(loss_fn, options):
    """The event of the solvers other than RKC: measures the loss, gradient and g^T H g itself."""
    grad_fn, value_and_grad_fn = _derivatives(loss_fn)

    def condition(t, y, args, **kwargs):
        user_args, t_arm = args
        value, grad = value_and_grad_fn(y, user_args)
        flow = jax.tree_util.tree_map(jnp.negative, grad)
        g2 = sum(jnp.vdot(g, g) for g in jax.tree_util.tree_leaves(flow))
        hvp = jax.jvp(lambda p: grad_fn(p, user_args), (y,), (flow,))[1]
        curvature_times_g2 = sum(
            jnp.vdot(g, h) for g, h in zip(jax.tree_util.tree_leaves(flow), jax.tree_util.tree_leaves(hvp))
        )
        return _steady_event(t, t_arm, value, g2, curvature_times_g2, options)

    return condition


def _monitored_condition(options):
    """The event of RKC, which measured (loss, |g|^2, g^T H g) at the step's end: y = (params, stats)."""
    def condition(t, y, args, **kwargs):
        return _steady_event(t, args[1], y[1][0], y[1][1], y[1][2], options)

    return condition


@functools.cache
def _derivatives(loss_fn):
    """``(grad, value_and_grad)`` of ``loss_fn``, jitted once per loss: diffrax traces a solver step
    several times (shape passes and the loop itself), and each trace then reuses their jaxprs."""
    return jax.jit(jax.grad(loss_fn)), jax.jit(jax.value_and_grad(loss_fn))


def _monitor(loss_fn):
    """RKC's monitor: the loss, the flow -grad L and the Hessian-vector product at the parameters."""
    grad_fn, value_and_grad_fn = _derivatives(loss_fn)

    def monitor(t, params, args):
        value, grad = value_and_grad_fn(params, args[0])
        hessian_product = lambda u: jax.jvp(lambda p: grad_fn(p, args[0]), (params,), (u,))[1]
        return value, jax.tree_util.tree_map(jnp.negative, grad), hessian_product

    return monitor


def _segment(loss_fn, options: FlowOptions, params0, user_args, t_start, t_arm, times):
    """One diffrax solve from t_start to max_time, ending at the steady-state event.

    With RKC (the default) the solver itself measures the steady-state test's quantities at each
    step's end (:class:`simulations.rkc.RKC2` ``monitor``): the state is (params, stats).
    """
    import diffrax

    monitored = options.solver == "rkc"

    grad_fn = _derivatives(loss_fn)[0]

    def vector_field(t, y, args):
        if monitored:
            return (jax.tree_util.tree_map(jnp.negative, grad_fn(y[0], args[0])), jnp.zeros_like(y[1]))
        return jax.tree_util.tree_map(jnp.negative, grad_fn(y, args[0]))

    term = diffrax.ODETerm(vector_field)
    solver = _solver(options, _monitor(loss_fn) if monitored else None)
    if monitored:
        # The start's measurements are both y0's stats (the event reads them) and the solver's state.
        y0, started = solver.start(term, t_start, params0, (user_args, t_arm))
        solver, condition = dataclasses.replace(solver, started=started), _monitored_condition(options)
    else:
        y0, condition = params0, _steady_condition(loss_fn, options)
    t_end = options.max_time
    if options.solver == "euler":
        controller, dt0 = diffrax.ConstantStepSize(), options.euler_step
        # diffrax counts the fixed steps to t_end in int32: (max_time - t) / euler_step would
        # overflow (1e14 steps by default), so end where max_steps would stop the solve anyway.
        t_end = jnp.minimum(options.max_time, t_start + options.max_steps * options.euler_step)
    else:
        from simulations.rkc import state_norm

        controller = diffrax.PIDController(rtol=options.rtol, atol=options.atol,
                                           **({"norm": state_norm} if monitored else {}))
        dt0 = None
    subs = [diffrax.SubSaveAt(t1=True)]
    if times is not None:
        subs.append(diffrax.SubSaveAt(ts=jnp.clip(times, t_start, t_end)))
    solution = diffrax.diffeqsolve(
        term, solver, t_start, t_end, dt0, y0, args=(user_args, t_arm),
        stepsize_controller=controller, saveat=diffrax.SaveAt(subs=subs), max_steps=options.max_steps,
        event=diffrax.Event(condition), throw=False,
    )
    states = [ys[0] if monitored else ys for ys in solution.ys]
    final = jax.tree_util.tree_map(lambda leaf: leaf[-1], states[0])
    t_final = solution.ts[0][-1]
    trajectory = None
    if times is not None:
        # Grid points past the event are inf in diffrax; the flow is at steady state there.
        trajectory = jax.tree_util.tree_map(
            lambda leaf, last: jnp.where((times > t_final).reshape((-1,) + (1,) * last.ndim), last, leaf),
            states[1], final,
        )
    event_fired = solution.event_mask if solution.event_mask is not None else jnp.array(False)
    return dict(
        params=final, t_final=t_final, trajectory=trajectory,
        steps=solution.stats["num_accepted_steps"], event=jnp.asarray(event_fired),
        failed=(solution.result != diffrax.RESULTS.successful) & (solution.result != diffrax.RESULTS.event_occurred),
        loss=loss_fn(final, user_args),
    )


def _segment_vmapped(loss_fn, options, params0, user_args, t_start, t_arm, times):
    """:func:`_segment` vmapped over every argument but ``times``."""
    return jax.vmap(lambda *point: _segment(loss_fn, options, *point, times))(params0, user_args, t_start, t_arm)


_segment_jit = stored_jit(_segment, static_argnums=(0, 1))
_segment_batched = stored_jit(_segment_vmapped, static_argnums=(0, 1))


def _over_points(program, static: tuple, batched: tuple, shared: tuple = ()):
    """``program(*static, *point, *shared)`` for every point of ``batched`` (leading axis), outputs stacked.

    Worker threads (one per core, :func:`simulations.runtime.worker_threads`) each take the next
    unsolved point until none is left; XLA runs their calls at the same time and releases the GIL
    meanwhile. The compiled program is the single-point one, whatever the batch size. Points stay
    on the device their arrays were placed on (the sweep's placement), else go to the default one:
    always placed, never host arrays, since JAX compiles a program separately for placed and for
    host arguments (a restart, whose inputs are the host outputs of this function, would compile
    the solver a second time).
    """
    leaf = jax.tree_util.tree_leaves(batched)[0]
    device = next(iter(leaf.sharding.device_set)) if getattr(leaf, "committed", False) else _default_device()
    host = jax.tree_util.tree_map(np.asarray, batched)
    count = np.shape(jax.tree_util.tree_leaves(host)[0])[0]
    shared = jax.device_put(shared, device)
    x64 = bool(jax.config.jax_enable_x64)  # a thread-local setting: carried into the workers
    pending = iter(range(count))
    lock = threading.Lock()
    outputs = [None] * count

    def work():
        with jax.enable_x64(x64):
            while True:
                with lock:
                    index = next(pending, None)
                if index is None:
                    return
                point = jax.device_put(jax.tree_util.tree_map(lambda leaf, index=index: leaf[index], host), device)
                out = program(*static, *point, *shared)
                outputs[index] = jax.tree_util.tree_map(np.asarray, out)

    workers = min(count, worker_threads())
    if workers == 1:
        work()
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(work) for _ in range(workers)]:
                future.result()
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *outputs)


def _default_device():
    """The device JAX places uncommitted arrays on (``jax_default_device``, else the first one)."""
    default = jax.config.jax_default_device
    if isinstance(default, str):  # a platform name
        return jax.devices(default)[0]
    return default if default is not None else jax.devices()[0]


def _segment_points(loss_fn, options, params0, user_args, t_start, t_arm, times):
    """A batched segment as one single-point solve per point (same outputs as the vmapped program)."""
    return _over_points(_segment_jit, (loss_fn, options), (params0, user_args, t_start, t_arm), (times,))


def _points_mode(options: FlowOptions) -> bool:
    """Whether :data:`FlowOptions.batching` runs a batch point by point here."""
    return options.batching == "points" or (options.batching == "auto" and jax.default_backend() == "cpu")


def _hessian_extremes(loss_fn, params, user_args):
    """Smallest and largest Hessian eigenvalues, the smallest one's eigenvector (flat), and the
    size of Hessian perturbations expected from not sitting exactly at the fixed point.

    Minima of these losses come in flat manifolds (W_{l+1} R^-1, R W_l): at a distance delta from
    one, its flat directions pick up curvature of order lambda_max delta / |theta| of either sign.
    delta is estimated by the Newton step along the gradient, |g| / (g^T H g / |g|^2).
    """
    flat, unravel = ravel_pytree(params)
    loss_of_flat = lambda v: loss_fn(unravel(v), user_args)
    hessian = jax.hessian(loss_of_flat)(flat)
    eigenvalues, eigenvectors = serial_linalg.eigh(hessian)
    g = jax.grad(loss_of_flat)(flat)
    g2 = jnp.vdot(g, g)
    curvature = jnp.vdot(g, hessian @ g) / jnp.where(g2 > 0, g2, 1.0)
    distance = jnp.sqrt(g2) / jnp.where(curvature > 0, curvature, jnp.inf)
    noise = eigenvalues[-1] * distance / jnp.maximum(jnp.linalg.norm(flat), 1e-300)
    return eigenvalues[0], eigenvalues[-1], eigenvectors[:, 0], noise


def _hessian_vmapped(loss_fn, params, user_args):
    """:func:`_hessian_extremes` vmapped over the points."""
    return jax.vmap(lambda p, a: _hessian_extremes(loss_fn, p, a))(params, user_args)


_hessian_jit = stored_jit(_hessian_extremes, static_argnums=0)
_hessian_batched = stored_jit(_hessian_vmapped, static_argnums=0)


def _hessian_points(loss_fn, params, user_args):
    """The batched certification as one single-point program per point (see :func:`_over_points`)."""
    return _over_points(_hessian_jit, (loss_fn,), (params, user_args))


def compiled_programs(batched: bool = False):
    """The two jitted programs a flow runs, ``(segment, hessian)``: for profilers that time them apart."""
    return (_segment_batched, _hessian_batched) if batched else (_segment_jit, _hessian_jit)


def gradient_flow(loss_fn: Callable, params0, args=None, *, times=None, options: FlowOptions | None = None,
                  batched: bool = False) -> FlowResult:
    """Integrate d(theta)/dt = -grad_theta loss_fn(theta, args) to a certified steady state.

    Args:
        loss_fn: ``loss_fn(params, args) -> scalar``; must be a stable (module-level or cached)
            callable, since it is a static argument of the compiled solve.
        params0: initial parameter pytree (leading batch axis on every leaf if ``batched``).
        args: array pytree passed to ``loss_fn`` (hyperparameters, moments); batched like params0.
            Varying its values never recompiles.
        times: optional increasing grid (T,) at which to record the parameters.
        options: :class:`FlowOptions` (defaults documented there).
        batched: vmap the solve over the leading axis of ``params0`` and ``args``.

    Returns:
        :class:`FlowResult`.

    Raises:
        FlowDivergenceError: NaN/inf in the parameters or loss, naming the time and step.
    """
    options = options or FlowOptions()
    if times is not None:
        times = jnp.asarray(times)
        grid = np.asarray(times)
        if grid.ndim != 1 or not np.all(np.isfinite(grid)) or np.any(np.diff(grid) < 0) or np.any(grid < 0):
            raise ValueError("times must be a finite, non-negative, non-decreasing 1-D grid")
    leaves = jax.tree_util.tree_leaves(params0)
    batch = leaves[0].shape[0] if batched else None
    dtype = leaves[0].dtype
    by_points = batched and _points_mode(options)
    run = (_segment_points if by_points else _segment_batched) if batched else _segment_jit
    hessian = (_hessian_points if by_points else _hessian_batched) if batched else _hessian_jit

    # The bookkeeping between segments (a handful of scalars per point) runs in NumPy: as JAX
    # operations each would be a small program of its own, lowered and looked up in the
    # compilation cache in every process (about 20 ms apiece for a command's few dozen).
    zeros = np.zeros((batch,) if batched else (), dtype)
    t_start = t_arm = jax.device_put(zeros)
    params, steps, restarts = params0, np.zeros(zeros.shape, np.int32), np.zeros(zeros.shape, np.int32)
    trajectory, min_curvature = None, np.full_like(zeros, np.nan)
    n_params = sum(int(np.prod(leaf.shape[1:] if batched else leaf.shape)) for leaf in leaves)
    saddle = np.zeros(zeros.shape, bool)
    escape_direction, first_event, last_loss = None, None, np.full_like(zeros, np.inf)
    for _ in range(options.max_restarts + 1):  # Python loop over saddles, not steps
        out = run(loss_fn, options, params, args, t_start, t_arm, times)
        _check_finite(out, steps, batched)
        _check_blow_up(params0, out, steps, batched)
        if times is not None:
            trajectory = out["trajectory"] if trajectory is None else jax.tree_util.tree_map(
                lambda old, new, t_start=t_start: jnp.where(
                    _expand(times[None] if batched else times, old, t_start, batched), old, new),
                trajectory, out["trajectory"])
        loss, t_final = np.asarray(out["loss"]), np.asarray(out["t_final"])
        # Motion along the last escape direction, or any loss decrease: a slowly growing plateau
        # feature may escape along its own (not the most negative) direction.
        moved = (_escape_motion(params, out["params"], escape_direction, batched) > options.stuck_tol) | (
            last_loss - loss > options.loss_tol * np.maximum(np.abs(loss), 1.0))
        last_loss = loss
        previously_saddle = saddle
        params, steps = out["params"], steps + np.asarray(out["steps"])
        converged = np.asarray(out["event"]) & ~np.asarray(out["failed"])
        if not (options.certify and n_params <= options.certify_max_params):
            break
        first_event = t_final if first_event is None else first_event
        lam_min, lam_max, escape_direction, curvature_noise = (
            np.asarray(value) for value in hessian(loss_fn, params, args))
        min_curvature = lam_min
        saddle = converged & (lam_min < -options.saddle_tol * np.maximum(np.abs(lam_max), 1e-300))
        # A saddle whose escape direction a full escape wait did not move along is held by an exactly
        # invariant manifold (e.g. feature-aligned init): the flow is stationary there; report it.
        stuck = (previously_saddle & ~moved) | (t_final > options.restart_horizon * first_event)
        escaping = saddle & ~stuck
        if not escaping.any():
            # Stuck points are stationary; call them saddles only if the negative curvature is
            # beyond what the distance to a flat manifold of minima explains.
            saddle = saddle & (lam_min < -10.0 * curvature_noise)
            break
        restarts = restarts + escaping.astype(np.int32)
        t_start = out["t_final"]
        # Wait out the escape (~1/|lambda_min| on a degenerate plateau), but at most the time elapsed
        # so far: plateaus of saddle-to-saddle dynamics scale with it, so at worst time doubles.
        with np.errstate(divide="ignore"):  # lam_min = 0 only where not escaping, as in JAX: no warning
            wait = np.minimum(options.escape_factor / np.abs(lam_min), t_final)
        t_arm = jax.device_put(np.where(escaping, t_final + wait, t_final))
    else:
        converged = converged & ~saddle
    return FlowResult(params=params, times=times, trajectory=trajectory, converged=converged,
                      t_final=out["t_final"], steps=steps, loss=out["loss"], min_curvature=min_curvature,
                      restarts=restarts, at_saddle=saddle)


def _check_blow_up(params0, out, steps_before, batched, factor=1e6):
    """A solve that failed (step size collapsed / ran out of steps) while the parameters grew by
    ``factor`` is a blow-up (finite-time or exponential): raise instead of returning it."""
    growth = np.atleast_1d(np.asarray(_escape_motion(params0, out["params"], None, batched, relative_norm=True)))
    failed = np.atleast_1d(np.asarray(out["failed"]))
    bad = failed & (growth > factor)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        t_final, steps, where = _failure_point(out, steps_before, index, batched)
        raise FlowDivergenceError(
            f"gradient flow blew up{where}: parameters grew {growth[index]:.3g}-fold and the solver stalled at "
            f"t = {t_final:.6g} after {steps} steps. Remedy: the loss is probably unbounded below (check "
            f"weight_decay >= 0 and the loss); otherwise reduce init_scale or raise max_steps."
        )


def _failure_point(out, steps_before, index, batched):
    """(time, total steps, " (batch point i)" or "") of the point an error message names."""
    t_final = float(np.atleast_1d(np.asarray(out["t_final"]))[index])
    steps = int(np.atleast_1d(np.asarray(steps_before + out["steps"]))[index])
    return t_final, steps, f" (batch point {index})" if batched else ""


def _escape_motion(old, new, direction, batched, relative_norm=False):
    """Per-point |<new - old, direction>| / |old|: motion along the last saddle's escape direction
    (or |new| / |old| with ``relative_norm``), in NumPy; like JAX, 0/0 is a quiet nan."""
    before, after = _flat(old, batched), _flat(new, batched)
    with np.errstate(divide="ignore", invalid="ignore"):
        if relative_norm:
            return np.linalg.norm(after, axis=-1) / np.maximum(np.linalg.norm(before, axis=-1), 1e-300)
        if direction is None:
            return np.inf
        along = np.abs(np.sum((after - before) * np.asarray(direction), axis=-1))
        return along / np.maximum(np.linalg.norm(before, axis=-1), 1e-300)


def _flat(tree, batched):
    """Every leaf raveled and concatenated (per point when ``batched``): ravel_pytree's order, on the host."""
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]
    if batched:
        return np.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=-1)
    return np.concatenate([leaf.ravel() for leaf in leaves])


def _expand(times, leaf, t_start, batched):
    """Mask (broadcastable to ``leaf``) of grid points already recorded by earlier segments."""
    if batched:
        mask = times < t_start[:, None]
    else:
        mask = times < t_start
    return mask.reshape(mask.shape + (1,) * (leaf.ndim - mask.ndim))


def _check_finite(out, steps_before, batched):
    """Raise FlowDivergenceError if any point's parameters or loss are non-finite."""
    per_point = [np.isfinite(np.asarray(leaf)).reshape(leaf.shape[0] if batched else 1, -1).all(axis=1)
                 for leaf in jax.tree_util.tree_leaves(out["params"])]
    finite = np.all(per_point, axis=0) & np.isfinite(np.atleast_1d(np.asarray(out["loss"])))
    if finite.all():
        return
    t_final, steps, where = _failure_point(out, steps_before, int(np.flatnonzero(~finite)[0]), batched)
    raise FlowDivergenceError(
        f"gradient flow diverged{where}: non-finite parameters or loss at t = {t_final:.6g} after "
        f"{steps} steps. Remedy: check that the loss is bounded below (weight_decay >= 0, finite "
        f"moments), reduce init_scale, or tighten rtol/atol (or reduce euler_step for the fixed-step solver)."
    )
