r"""The jitted step loop of [`manifoldflow.solve_flow`][]: windows of steps that carry
one state record, each accepted step evaluated once for its records and stops.

A step is the projected solver's step followed by the step size controller's
decision (as in `diffrax.diffeqsolve`), with the step end clipped to the window's end
time so that requested output times are step ends. The loop owns the step size
between windows (no re-initialisation), counts every attempted step against the
budget, and ends a window with a result when a step fails, a point is not finite, a
stop condition holds, or the step size falls below the resolution of $t$.
"""

import diffrax
import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from ._flow import FlowEvaluation, SharpnessFlow
from ._programs import persistent_jit
from ._results import RESULTS
from ._retraction import AbstractRetraction, RetractionSolution
from ._solver import ProjectedSolver
from ._stop import AbstractStopCondition


class StepDiagnostics(eqx.Module):
    """$R$, $\\|P_T\\nabla R\\|$, $\\max|F|$ at a point and the projection's result."""

    sharpness: Scalar
    gradient_norm: Scalar
    constraint_violation: Scalar
    projection_result: lx.RESULTS


class LoopState(eqx.Module):
    """Everything carried from one step (and one window) to the next. `dt` is the
    controller's proposed size of the next step before any clipping to an output time,
    so that reaching an output time does not shrink the steps after it."""

    t: Scalar
    dt: Scalar
    y: Float[Array, " D"]
    solver_state: PyTree
    controller_state: PyTree
    made_jump: Bool[Array, ""]
    result: RESULTS
    num_accepted: Int[Array, ""]
    num_rejected: Int[Array, ""]


class StepRecords(eqx.Module):
    """The accepted steps of one window: the first `count` rows are filled."""

    ts: Float[Array, " W"]
    ys: Float[Array, "W D"]
    sharpness: Float[Array, " W"]
    gradient_norm: Float[Array, " W"]
    constraint_violation: Float[Array, " W"]
    correction: Float[Array, " W"]
    count: Int[Array, ""]


def _diagnose(flow: SharpnessFlow, theta) -> tuple[FlowEvaluation, StepDiagnostics]:
    evaluation = flow.evaluate(theta)
    violation = jnp.max(jnp.abs(flow.manifold.constraint(theta)))
    diagnostics = StepDiagnostics(
        evaluation.sharpness, evaluation.gradient_norm, violation, evaluation.result
    )
    return evaluation, diagnostics


def _point_result(stops, evaluation, diagnostics, theta) -> RESULTS:
    """`projection_failed` if the projection's linear solve failed (CG at its cap:
    finite but inaccurate), `step_failure` if a value is not finite, else the first
    stop condition that holds, else `successful`."""
    finite = (
        jnp.isfinite(diagnostics.sharpness)
        & jnp.isfinite(diagnostics.gradient_norm)
        & jnp.all(jnp.isfinite(theta))
    )
    result = RESULTS.successful
    for stop in reversed(stops):
        result = RESULTS.where(stop(evaluation), stop.result, result)
    result = RESULTS.where(finite, result, RESULTS.step_failure)
    projected = diagnostics.projection_result == lx.RESULTS.successful
    return RESULTS.where(projected, result, RESULTS.projection_failed)


def _clip(tnext, t_end):
    """Ends the next step exactly at `t_end` when it would end after it or within 100
    ulp before it."""
    floor = t_end - 100 * jnp.finfo(t_end.dtype).eps * jnp.abs(t_end)
    return jnp.where(tnext > floor, t_end, tnext)


class Integrator(eqx.Module):
    """The flow, the projected solver, the step size controller and the stop
    conditions of one solve: the static part of every jitted call."""

    flow: SharpnessFlow
    solver: ProjectedSolver
    controller: diffrax.AbstractStepSizeController
    stops: tuple[AbstractStopCondition, ...]

    @persistent_jit
    def initialise(
        self, retraction: AbstractRetraction, theta0, t0, t_end, dt0
    ) -> tuple[RetractionSolution, LoopState, StepDiagnostics]:
        """Retract `theta0`, initialise the solver and controller, evaluate there."""
        retracted = retraction(self.flow.manifold, self.flow.projector, theta0)
        theta = retracted.theta
        term = diffrax.ODETerm(self.flow)
        error_order = self.solver.error_order(term)
        tnext, controller_state = self.controller.init(
            term, t0, t_end, theta, dt0, None, self.solver.func, error_order
        )
        dt = jnp.asarray(tnext, t0.dtype) - t0
        # One structure from the first window on (PID's state starts with a bool).
        controller_state = jtu.tree_map(jnp.asarray, controller_state)
        solver_state = self.solver.init(
            term, t0, jnp.minimum(t0 + dt, t_end), theta, None
        )
        evaluation, diagnostics = _diagnose(self.flow, theta)
        state = LoopState(
            t=t0,
            dt=dt,
            y=theta,
            solver_state=solver_state,
            controller_state=controller_state,
            made_jump=jnp.array(False),
            result=_point_result(self.stops, evaluation, diagnostics, theta),
            num_accepted=jnp.array(0),
            num_rejected=jnp.array(0),
        )
        return retracted, state, diagnostics

    def _evaluate_accepted(self, keep, y1) -> tuple[StepDiagnostics, RESULTS]:
        """Diagnostics and stop/failure result at an accepted end point (NaN and
        `successful` for a rejected step, which costs no evaluation)."""

        def accepted(_):
            evaluation, diagnostics = _diagnose(self.flow, y1)
            return diagnostics, _point_result(self.stops, evaluation, diagnostics, y1)

        def rejected(_):
            nan = jnp.full((), jnp.nan, y1.dtype)
            return (
                StepDiagnostics(nan, nan, nan, lx.RESULTS.successful),
                RESULTS.successful,
            )

        return lax.cond(keep, accepted, rejected, None)

    def _step_failure(self, keep, step_result, solver_state, y0) -> RESULTS:
        """The cause of a kept step's failure: the retraction's; for non-finite values,
        the projection if its linear solve fails at the start point `y0`, else
        `step_failure`; any other inner failure (an implicit solver's root find)
        promoted; `successful` if the step did not fail."""
        failed = keep & (step_result != diffrax.RESULTS.successful)
        nonfinite = failed & (step_result == diffrax.RESULTS.nonfinite)
        cause = RESULTS.where(
            solver_state.retraction_result != optx.RESULTS.successful,
            RESULTS.retraction_failed,
            RESULTS.promote(step_result),
        )

        def cause_at_start(_):
            _, start = _diagnose(self.flow, y0)
            return RESULTS.where(
                start.projection_result == lx.RESULTS.successful,
                RESULTS.step_failure,
                RESULTS.projection_failed,
            )

        cause = lax.cond(nonfinite, cause_at_start, lambda _: cause, None)
        return RESULTS.where(failed, cause, RESULTS.successful)

    def _attempt(self, state: LoopState, t_end):
        """One attempted step: `(new state, accepted?, diagnostics, correction)`."""
        term = diffrax.ODETerm(self.flow)
        t1 = _clip(state.t + state.dt, t_end)
        y1, y_error, _, solver_state, step_result = self.solver.step(
            term,
            state.t,
            t1,
            state.y,
            None,
            state.solver_state,
            state.made_jump,
        )
        if y_error is not None:
            y_error = jnp.where(jnp.isnan(y_error), jnp.inf, y_error)
        keep, t, tnext, made_jump, controller_state, controller_result = (
            self.controller.adapt_step_size(
                state.t,
                t1,
                state.y,
                y1,
                None,
                y_error,
                self.solver.error_order(term),
                state.controller_state,
            )
        )
        keep = jnp.asarray(keep)
        t = jnp.minimum(t, t_end)
        dt = self._next_step_size(state, t1, t, tnext)
        diagnostics, point_result = self._evaluate_accepted(keep, y1)
        failure = self._step_failure(keep, step_result, solver_state, state.y)
        result = RESULTS.where(
            failure == RESULTS.successful, RESULTS.promote(controller_result), failure
        )
        result = RESULTS.where(result == RESULTS.successful, point_result, result)
        # A kept step that failed (or reached a non-finite point) is not committed:
        # the last point stays the last good one.
        bad_point = (point_result == RESULTS.step_failure) | (
            point_result == RESULTS.projection_failed
        )
        commit = keep & (failure == RESULTS.successful) & ~bad_point
        t = jnp.where(commit | ~keep, t, state.t)
        collapsed = dt <= 4 * jnp.finfo(t.dtype).eps * jnp.abs(t)
        result = RESULTS.where(
            (result == RESULTS.successful) & collapsed,
            RESULTS.step_size_collapsed,
            result,
        )
        select = lambda new, old: jnp.where(commit, new, old)
        new_state = LoopState(
            t=t,
            dt=dt,
            y=select(y1, state.y),
            solver_state=jtu.tree_map(select, solver_state, state.solver_state),
            controller_state=controller_state,
            made_jump=select(made_jump, state.made_jump),
            result=result,
            num_accepted=state.num_accepted + commit,
            num_rejected=state.num_rejected + (~commit),
        )
        return new_state, commit, diagnostics, solver_state.correction

    def _next_step_size(self, state: LoopState, t1, t, tnext):
        """The size of the next step before clipping. Adaptive: the controller's
        proposal; after a step shortened to end at an output time, the longer size
        from before it, scaled down if the controller asked for a smaller step.
        Constant: the step `dt0`, whatever the controller's own counter says."""
        if not isinstance(self.controller, diffrax.AbstractAdaptiveStepSizeController):
            return state.dt
        proposal = tnext - t
        shortened = t1 < state.t + state.dt
        factor = proposal / (t1 - state.t)
        return jnp.where(
            shortened,
            jnp.maximum(proposal, state.dt * jnp.minimum(factor, 1.0)),
            proposal,
        )

    @persistent_jit
    def window(
        self, state: LoopState, t_end, max_attempts, size: int
    ) -> tuple[LoopState, StepRecords]:
        """At most `max_attempts` (<= `size`) attempted steps towards `t_end`, stopping
        early at a result other than `successful` or on reaching `t_end`."""
        dtype = state.y.dtype
        full = lambda shape: jnp.full(shape, jnp.nan, dtype)
        records = StepRecords(
            ts=full(size),
            ys=full((size,) + state.y.shape),
            sharpness=full(size),
            gradient_norm=full(size),
            constraint_violation=full(size),
            correction=full(size),
            count=jnp.array(0),
        )

        def cond(carry):
            state, _, attempts = carry
            return (
                (attempts < max_attempts)
                & (state.result == RESULTS.successful)
                & (state.t < t_end)
            )

        def body(carry):
            state, records, attempts = carry
            state, keep, diagnostics, correction = self._attempt(state, t_end)
            # Rejected steps write out of bounds, which `mode="drop"` discards.
            i = jnp.where(keep, records.count, size)
            put = lambda array, value: array.at[i].set(value, mode="drop")
            records = StepRecords(
                ts=put(records.ts, state.t),
                ys=put(records.ys, state.y),
                sharpness=put(records.sharpness, diagnostics.sharpness),
                gradient_norm=put(records.gradient_norm, diagnostics.gradient_norm),
                constraint_violation=put(
                    records.constraint_violation, diagnostics.constraint_violation
                ),
                correction=put(records.correction, correction),
                count=records.count + keep,
            )
            return state, records, attempts + 1

        state, records, _ = lax.while_loop(cond, body, (state, records, jnp.array(0)))
        return state, records
