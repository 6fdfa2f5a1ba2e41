"""`solve_flow`: integrate the sharpness flow on a manifold, like `diffrax.diffeqsolve`."""

import math
import time
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._flow import SharpnessFlow
from ._manifold import AbstractManifold
from ._projection import AbstractProjector, CholeskyProjector, SVDProjector
from ._results import RESULTS
from ._retraction import AbstractRetraction, ChordRetraction, GaussNewtonRetraction
from ._solution import FlowSolution
from ._solver import ProjectedSolver


def _diagnostics(flow: SharpnessFlow, theta):
    evaluation = flow.evaluate(theta)
    violation = jnp.max(jnp.abs(flow.manifold.constraint(theta)))
    return evaluation.sharpness, evaluation.gradient_norm, violation


_diagnostics_jit = eqx.filter_jit(_diagnostics)


@eqx.filter_jit
def _gram(manifold, theta):
    return manifold.linearise(theta).gram


@eqx.filter_jit
def _initialise(flow, psolver, controller, initial_retraction, theta0, t0, t1, dt0):
    retracted = initial_retraction(flow.manifold, flow.projector, theta0)
    theta = retracted.theta
    term = diffrax.ODETerm(flow)
    error_order = psolver.error_order(term)
    tnext, controller_state = controller.init(
        term, t0, t1, theta, dt0, None, psolver.func, error_order
    )
    solver_state = psolver.init(term, t0, tnext, theta, None)
    return retracted, solver_state, controller_state


@eqx.filter_jit
def _window(
    flow,
    psolver,
    controller,
    max_steps,
    theta,
    t0,
    t1,
    dt0,
    solver_state,
    controller_state,
    made_jump,
    threshold,
):
    def stop(t, y, args, **kwargs):
        del t, args, kwargs
        return flow.gradient_norm(y) <= threshold

    def save(t, y, args):
        del args
        return (y,) + _diagnostics(flow, y)

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(flow),
        psolver,
        t0,
        t1,
        dt0,
        theta,
        saveat=diffrax.SaveAt(
            steps=True,
            fn=save,
            solver_state=True,
            controller_state=True,
            made_jump=True,
        ),
        stepsize_controller=controller,
        event=diffrax.Event(stop),
        max_steps=max_steps,
        throw=False,
        solver_state=solver_state,
        controller_state=controller_state,
        made_jump=made_jump,
    )
    return (
        sol.ts,
        sol.ys,
        sol.result,
        sol.stats,
        sol.solver_state,
        sol.controller_state,
        sol.made_jump,
    )


def solve_flow(
    manifold: AbstractManifold,
    theta0: Float[ArrayLike, " D"] | None = None,
    *,
    solver: diffrax.AbstractSolver = diffrax.Dopri8(),
    projector: AbstractProjector = CholeskyProjector(),
    retraction: AbstractRetraction = ChordRetraction(),
    initial_retraction: AbstractRetraction = GaussNewtonRetraction(),
    constant: float = 1.0,
    t0: float = 0.0,
    t1: float = math.inf,
    dt0: float | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    stationarity: float = 1e-10,
    max_steps: int = 100_000,
    patience: int = 200,
    window: int | None = None,
    save_every: int = 1,
    retract_every: int = 1,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
    throw: bool = True,
) -> FlowSolution:
    r"""Solve the sharpness flow $\dot\theta = -c P_T\nabla R(\theta)$ on `manifold`.

    Retracts $\theta_0$ onto $\Gamma$, then integrates with `ProjectedSolver(solver)`
    until $\|P_T\nabla R\| \le$ `stationarity` (a `diffrax.Event` checked at every
    step end), `t1`, or `max_steps`. Steps run in jitted windows of `window` steps that
    carry the solver and controller state on: between windows the progress bar and
    `callback` see the state, and Ctrl-C returns what was computed so far.

    **Arguments:**

    - `manifold`: e.g. [`manifoldflow.ZeroLossManifold`][].
    - `theta0`: initial coordinates; default `manifold.initial_point()`.
    - `solver`: any diffrax ODE solver (default `Dopri8`; `Tsit5`, `Kvaerno5`, ...).
    - `projector`, `retraction`: how $P_T$ and the per-step retraction are computed.
    - `initial_retraction`: retraction of $\theta_0$ (Gauss--Newton: robust from far away).
    - `constant`: $c$ (see [`manifoldflow.SharpnessFlow`][]).
    - `t0`, `t1`, `dt0`: time interval and initial step (`None`: chosen by diffrax).
    - `rtol`, `atol`: tolerances of the default `PIDController`.
    - `stepsize_controller`: overrides the PID controller.
    - `stationarity`: $\varepsilon$ of the stopping event.
    - `patience`: if $\|P_T\nabla R\|$ has not halved within this many steps, the
      integrator's noise floor is reached: the default PID controller's tolerances are
      then tightened 100-fold (at most twice, down to rtol = 1e-14) and the solve goes
      on from where it is; otherwise it stops as `RESULTS.stagnated`.
    - `max_steps`: total step budget (rounded up to a multiple of `window`).
    - `window`: steps per jitted window (default from memory: states of all steps of a
      window are kept).
    - `save_every`: keep every k-th accepted state in `ys` (diagnostics keep all).
    - `retract_every`: retract after every k-th step.
    - `progress`: show a tqdm progress bar (in decades of $\|P_T\nabla R\|$).
    - `callback`: called with a dict after every window.
    - `throw`: raise if the solve fails (`max_steps` reached, a step failure, or
      stagnation); reaching `t1` or an interrupt is not a failure. With `throw=False`
      inspect `solution.result`.

    **Returns:** a [`manifoldflow.FlowSolution`][].
    """
    start = time.perf_counter()
    theta0 = manifold.initial_point() if theta0 is None else jnp.asarray(theta0)
    if theta0.shape != (manifold.dimension,):
        raise ValueError(
            f"theta0 has shape {theta0.shape}, the manifold has {manifold.dimension} "
            f"coordinates: expected shape ({manifold.dimension},)."
        )
    if theta0.dtype == jnp.float32 and min(rtol, atol, stationarity) < 1e-6:
        raise ValueError(
            "float32 coordinates cannot meet tolerances below float32 precision "
            f"(rtol={rtol}, atol={atol}, stationarity={stationarity}). Enable float64 "
            'first: jax.config.update("jax_enable_x64", True).'
        )
    if max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}.")
    flow = SharpnessFlow(manifold, projector, constant)
    psolver = ProjectedSolver(solver, manifold, projector, retraction, retract_every)
    controller = (
        diffrax.PIDController(rtol=rtol, atol=atol)
        if stepsize_controller is None
        else stepsize_controller
    )
    if window is None:
        window = int(min(128, max(16, 2**28 // (8 * manifold.dimension))))
    # One compiled window size: max_steps is rounded up to a multiple of it.
    window = min(window, max_steps)
    t0_ = jnp.asarray(t0, dtype=theta0.dtype)
    t1_ = jnp.asarray(t1, dtype=theta0.dtype)
    thr = jnp.asarray(stationarity, dtype=theta0.dtype)

    eigenvalues = np.linalg.eigvalsh(np.asarray(_gram(manifold, theta0)))
    if not isinstance(projector, SVDProjector) and not (
        eigenvalues[0] > 1e3 * np.finfo(eigenvalues.dtype).eps * eigenvalues[-1]
    ):
        raise ValueError(
            "The Jacobian J of the constraints is rank deficient at the initial point "
            f"(Gram eigenvalues from {eigenvalues[0]:.3e} to {eigenvalues[-1]:.3e}): "
            "repeated or linearly dependent data points, or an activation whose "
            "derivative vanishes there. Remove duplicates, or use "
            "projector=manifoldflow.SVDProjector() for a rank-deficient J."
        )
    retracted, solver_state, controller_state = _initialise(
        flow, psolver, controller, initial_retraction, theta0, t0_, t1_, dt0
    )
    if not bool(retracted.converged):
        raise ValueError(
            "The retraction of theta0 onto the manifold did not converge: "
            f"max|F| = {float(retracted.residual):.3e} after "
            f"{int(retracted.num_steps)} steps of {type(initial_retraction).__name__} "
            f"(tolerance max({initial_retraction.atol:g}, {initial_retraction.rtol:g} * "
            "scale)). Start closer to the manifold (a point with f(X) near y), or raise "
            "initial_retraction=GaussNewtonRetraction(max_steps=...)."
        )
    # Adaptive controllers choose each window's first step themselves (two vector-field
    # evaluations per window). Passing a traced dt0 instead would add a runtime check
    # (a host callback) that keeps the window out of the persistent compilation cache.
    adaptive = isinstance(controller, diffrax.AbstractAdaptiveStepSizeController)
    window_dt0 = None if adaptive else dt0
    theta = retracted.theta
    s0, g0, v0 = (float(x) for x in _diagnostics_jit(flow, theta))
    ys = [np.asarray(theta)[None]]
    step_ts, diag = [np.asarray([t0])], [np.asarray([[s0, g0, v0]])]
    t_cur, made_jump = t0_, jnp.array(False)
    num_steps = num_rejected = 0
    result = RESULTS.stationary if g0 <= stationarity else None
    bar = None
    if progress:
        import tqdm

        bar = tqdm.tqdm(
            total=max(0.0, math.log10(max(g0, 1e-300) / stationarity)),
            unit="decade",
            bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} decades "
            "of |P_T grad R| [{elapsed}]{postfix}",
        )
    since, tightened = 0, []
    try:
        while result is None:
            out = _window(
                flow,
                psolver,
                controller,
                window,
                theta,
                t_cur,
                t1_,
                window_dt0,
                solver_state,
                controller_state,
                made_jump,
                thr,
            )
            (
                w_ts,
                (w_ys, w_s, w_g, w_v),
                w_result,
                stats,
                solver_state,
                controller_state,
                made_jump,
            ) = out
            w_ts = np.asarray(w_ts)
            count = int(np.sum(np.isfinite(w_ts)))
            num_steps += int(stats["num_accepted_steps"])
            num_rejected += int(stats["num_rejected_steps"])
            if count > 0:
                w_ys = np.asarray(w_ys[:count])
                theta = jnp.asarray(w_ys[-1])
                step_ts.append(w_ts[:count])
                diag.append(
                    np.stack([np.asarray(a[:count]) for a in (w_s, w_g, w_v)], 1)
                )
                ys.append(w_ys)
                t_cur = jnp.asarray(w_ts[count - 1], theta0.dtype)
            g_last = float(diag[-1][-1, 1])
            if w_result == diffrax.RESULTS.event_occurred:
                result = RESULTS.stationary
            elif w_result == diffrax.RESULTS.successful:
                result = RESULTS.t1_reached
            elif w_result == diffrax.RESULTS.max_steps_reached:
                if num_steps >= max_steps:
                    result = RESULTS.max_steps_reached
            else:
                result = RESULTS.step_failure
            if not np.isfinite(g_last):
                result = RESULTS.step_failure
            history = np.concatenate([d[:, 1] for d in diag])[since:]
            if (
                result is None
                and history.size > patience
                and np.min(history[-patience:]) > 0.5 * np.min(history[:-patience])
            ):
                if stepsize_controller is None and controller.rtol > 1e-14:
                    controller = diffrax.PIDController(
                        rtol=max(controller.rtol / 100, 1e-14),
                        atol=max(controller.atol / 100, 1e-16),
                    )
                    tightened.append((float(t_cur), controller.rtol, controller.atol))
                    since += history.size
                else:
                    result = RESULTS.stagnated
            if bar is not None:
                bar.n = min(bar.total, max(0.0, math.log10(g0 / max(g_last, 1e-300))))
                bar.set_postfix(
                    t=f"{float(t_cur):.4g}", steps=num_steps, grad=f"{g_last:.2e}"
                )
                bar.refresh()
            if callback is not None:
                callback(
                    dict(
                        t=float(t_cur),
                        num_steps=num_steps,
                        gradient_norm=g_last,
                        sharpness=float(diag[-1][-1, 0]),
                    )
                )
    except KeyboardInterrupt:
        result = RESULTS.interrupted
    finally:
        if bar is not None:
            bar.close()
    step_ts_all = np.concatenate(step_ts)
    diag_all = np.concatenate(diag)
    ts_all, ys_all = step_ts_all, np.concatenate(ys)
    saved_index = np.arange(len(ts_all))
    if save_every > 1:
        keep = np.zeros(len(ts_all), bool)
        keep[::save_every] = True
        keep[-1] = True
        ts_all, ys_all, saved_index = ts_all[keep], ys_all[keep], saved_index[keep]
    solution = FlowSolution(
        ts=ts_all,
        ys=ys_all,
        step_ts=step_ts_all,
        sharpness=diag_all[:, 0],
        gradient_norm=diag_all[:, 1],
        constraint_violation=diag_all[:, 2],
        saved_index=saved_index,
        theta_final=theta,
        t_final=float(step_ts_all[-1]),
        num_steps=num_steps,
        num_rejected_steps=num_rejected,
        result=result,
        tightened=tightened,
        constant=float(constant),
        stationarity=float(stationarity),
        wall_seconds=time.perf_counter() - start,
        manifold=manifold,
    )
    failures = (RESULTS.max_steps_reached, RESULTS.step_failure, RESULTS.stagnated)
    if throw and any(bool(result == f) for f in failures):
        message = (
            f"solve_flow ended without stationarity: {RESULTS[result]}. It got to "
            f"t = {solution.t_final:.6g} after {num_steps} steps "
            f"({num_rejected} rejected) with |P_T grad R| = "
            f"{solution.gradient_norm[-1]:.3e} (threshold {stationarity:g}) and "
            f"R = {solution.sharpness[-1]:.12g}. Increase max_steps or t1, or pass "
            "throw=False to get this partial solution."
        )
        raise RuntimeError(message)
    return solution
