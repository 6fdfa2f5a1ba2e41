r"""The step loop of a flow solve: a pure function over pytrees, run in one
`while_loop` like `diffrax.diffeqsolve`.

A step is the projected solver's step followed by the step size controller's
decision, with the step end clipped to the next output time so that output times are
step ends. Each accepted step is evaluated once: the evaluation fills the step
records (fixed-size buffers of `max_steps + 1` rows, row 0 the initial point), the
stop conditions, the noise-floor policy (in-graph, over a ring of the last `patience`
steps) and the progress meter. The loop counts every attempted step against
`max_steps` and ends with a result when a step fails, a point is not finite, a stop
condition holds, the noise-floor policy gives up, `t1` is reached, or the step size
falls below the resolution of $t$.

Because the whole loop is traced, [`manifoldflow.flow_solve`][] works under `jax.jit`,
`jax.vmap` (each member with its own steps and its own ending) and `jax.grad`
(through `diffrax.RecursiveCheckpointAdjoint`); [`manifoldflow.solve_flow`][] runs the
same loop in windows, for Ctrl-C.
"""

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int

from ._flow import SharpnessFlow
from ._flow_state import (
    buffers,
    clip,
    diagnose,
    FlowState,
    next_output_end,
    point_result,
    record,
    save,
    SavedStates,
    solution,
    StepDiagnostics,
    StepRecordBuffers,
)
from ._noise_floor import AbstractNoiseFloorPolicy
from ._results import RESULTS
from ._retraction import AbstractRetraction, RetractionSolution
from ._solution import FlowSolution
from ._solver import ProjectedSolver
from ._stop import AbstractStopCondition, StationarityStop


class Integrator(eqx.Module):
    """One solve's configuration: the flow, the projected solver, the step size
    controller, the stop conditions, the noise-floor policy, the initial retraction,
    the progress meter, `max_steps` and `records` (rows of the step records: by
    default `max_steps + 1`, every point of a solve; a host loop that empties them
    after each window of `w` attempts needs `w + 1`). Its methods are pure: `init`
    retracts the initial point and builds the
    [`FlowState`][manifoldflow.FlowState], `run` steps it, `solve` does both
    and returns a [`manifoldflow.FlowSolution`][]."""

    flow: SharpnessFlow
    solver: ProjectedSolver
    controller: diffrax.AbstractStepSizeController
    stops: tuple[AbstractStopCondition, ...]
    noise_floor: AbstractNoiseFloorPolicy
    initial_retraction: AbstractRetraction
    progress_meter: diffrax.AbstractProgressMeter
    max_steps: int = eqx.field(static=True)
    records: int | None = eqx.field(static=True, default=None)

    def _controller(self, tolerances) -> diffrax.AbstractStepSizeController:
        _, static = eqx.partition(self.controller, eqx.is_array)
        return eqx.combine(tolerances, static)

    def init(
        self, theta0, t0, t1, dt0, save_times
    ) -> tuple[RetractionSolution, FlowState]:
        """Retract `theta0`, initialise the solver, the controller, the records and
        the meter, and evaluate the flow there (the initial point may already meet a
        stop condition). An initial retraction that does not converge ends the solve
        at once (`initial_retraction_failed`)."""
        retracted = self.initial_retraction(
            self.flow.manifold, self.flow.projector, theta0
        )
        theta = retracted.theta
        dtype = theta.dtype
        term = diffrax.ODETerm(self.flow)
        tnext, controller_state = self.controller.init(
            term,
            t0,
            t1,
            theta,
            dt0,
            None,
            self.solver.func,
            self.solver.error_order(term),
        )
        dt = jnp.asarray(tnext, dtype) - t0
        # One structure for the whole loop (PID's state starts with a bool).
        controller_state = jtu.tree_map(jnp.asarray, controller_state)
        solver_state = self.solver.init(term, t0, jnp.minimum(t0 + dt, t1), theta, None)
        evaluation, diagnostics = diagnose(self.flow, theta)
        result = point_result(self.stops, evaluation, diagnostics, theta)
        multipliers = evaluation.multipliers
        multipliers = jnp.where(
            jnp.all(jnp.isfinite(multipliers)), multipliers, jnp.zeros_like(multipliers)
        )
        result = RESULTS.where(
            retracted.converged, result, RESULTS.initial_retraction_failed
        )
        # What flow_solve could not check before tracing: nothing is solved.
        constant = self.flow.constant
        valid = (
            (t1 > t0)
            & jnp.isfinite(constant)
            & (constant > 0)
            & jnp.all(jnp.isfinite(theta0))
        )
        result = RESULTS.where(valid, result, RESULTS.invalid_input)
        size = self.max_steps + 1 if self.records is None else self.records
        state = FlowState(
            t=t0,
            dt=dt,
            y=theta,
            multipliers=multipliers,
            solver_state=solver_state,
            controller_state=controller_state,
            tolerances=eqx.filter(self.controller, eqx.is_array),
            made_jump=jnp.array(False),
            result=result,
            num_accepted=jnp.array(0),
            num_rejected=jnp.array(0),
            t0=t0,
            t1=t1,
            records=StepRecordBuffers.empty(size, dtype),
            saves=SavedStates.empty(save_times, theta),
            noise_floor=self.noise_floor.init(dtype),
            meter_state=self.progress_meter.init(),
            progress=jnp.zeros((), dtype),
            initial_gradient_norm=diagnostics.gradient_norm,
        )
        state = self._accepted(state, jnp.array(True), diagnostics)
        return retracted, save(state, jnp.array(True))

    def _accepted(self, state: FlowState, pred, diagnostics) -> FlowState:
        """Book-keeping at an accepted point (where `pred`): records, the noise-floor
        policy's memory, progress."""
        state = record(state, pred, diagnostics)
        g, R = diagnostics.gradient_norm, diagnostics.sharpness
        memory = self.noise_floor.observe(
            state.noise_floor, state.num_accepted, pred, g, R
        )
        progress = jnp.where(
            pred, self._progress(state, state.initial_gradient_norm, g), state.progress
        )
        return eqx.tree_at(
            lambda s: (s.noise_floor, s.progress),
            state,
            (memory, jnp.maximum(state.progress, progress)),
        )

    def _progress(self, state: FlowState, g0, g):
        """How far along the solve is, in [0, 1]: the larger of the fraction of
        $[t_0, t_1]$ covered (finite `t1`) and of the decades of
        $\\|P_T\\nabla R\\|$ descended towards the stationarity threshold."""
        dtype = state.t.dtype
        # A display, not part of the solution: no derivative flows through it.
        state, g0, g = lax.stop_gradient((state, g0, g))
        time = jnp.where(
            jnp.isfinite(state.t1), (state.t - state.t0) / (state.t1 - state.t0), 0.0
        )
        thresholds = [
            s.threshold for s in self.stops if isinstance(s, StationarityStop)
        ]
        if thresholds:
            threshold = jnp.asarray(thresholds[0], dtype)
            decades = jnp.log(g0 / g) / jnp.log(g0 / threshold)
            decades = jnp.where(jnp.isfinite(decades) & (g0 > threshold), decades, 0.0)
            time = jnp.maximum(time, decades)
        return jnp.clip(time, 0.0, 1.0).astype(dtype)

    def _noise_floor(self, state: FlowState, pred) -> FlowState:
        """At an accepted point: the noise-floor policy's response, if the last
        `patience` steps show the noise floor (tighter tolerances from here on, or
        `stagnated`)."""
        memory, controller, stagnated = self.noise_floor.update(
            state.noise_floor,
            state.num_accepted,
            pred & (state.result == RESULTS.successful),
            self._controller(state.tolerances),
            state.t,
        )
        return eqx.tree_at(
            lambda s: (s.noise_floor, s.tolerances, s.result),
            state,
            (
                memory,
                eqx.filter(controller, eqx.is_array),
                RESULTS.where(stagnated, RESULTS.stagnated, state.result),
            ),
        )

    def _evaluate_accepted(
        self, keep, y1, guess
    ) -> tuple[StepDiagnostics, RESULTS, Float[Array, " n"]]:
        """Diagnostics, stop/failure result and multipliers at an accepted end point
        (NaN, `successful` and `guess` for a rejected step, which costs no
        evaluation). `guess` starts an iterative projector."""

        def accepted(_):
            evaluation, diagnostics = diagnose(self.flow, y1, guess)
            result = point_result(self.stops, evaluation, diagnostics, y1)
            lam = evaluation.multipliers
            return (
                diagnostics,
                result,
                jnp.where(jnp.all(jnp.isfinite(lam)), lam, guess),
            )

        def rejected(_):
            nan = jnp.full((), jnp.nan, y1.dtype)
            return (
                StepDiagnostics(nan, nan, nan, lx.RESULTS.successful),
                RESULTS.successful,
                guess,
            )

        # Under vmap, evaluate once if any member kept its step (not for every
        # member as both branches of a batched `cond` would), then mask.
        evaluated = lax.cond(eqxi.unvmap_any(keep), accepted, rejected, None)
        return jtu.tree_map(
            lambda a, b: jnp.where(keep, a, b), evaluated, rejected(None)
        )

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
            _, start = diagnose(self.flow, y0)
            return RESULTS.where(
                start.projection_result == lx.RESULTS.successful,
                RESULTS.step_failure,
                RESULTS.projection_failed,
            )

        # Evaluated only when some member's step failed (also under vmap).
        at_start = lax.cond(
            eqxi.unvmap_any(nonfinite), cause_at_start, lambda _: cause, None
        )
        cause = RESULTS.where(nonfinite, at_start, cause)
        return RESULTS.where(failed, cause, RESULTS.successful)

    def _attempt(self, state: FlowState) -> tuple[FlowState, Bool[Array, ""]]:
        """One attempted step and its book-keeping: `(new state, committed?)`."""
        term = diffrax.ODETerm(self.flow)
        controller = self._controller(state.tolerances)
        t_end = next_output_end(state)
        t1 = clip(state.t + state.dt, t_end)
        y1, y_error, _, solver_state, step_result = self.solver.step(
            term,
            state.t,
            t1,
            state.y,
            state.multipliers,
            state.solver_state,
            state.made_jump,
        )
        if y_error is not None:
            y_error = jnp.where(jnp.isnan(y_error), jnp.inf, y_error)
        keep, t, tnext, made_jump, controller_state, controller_result = (
            controller.adapt_step_size(
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
        diagnostics, point_result, multipliers = self._evaluate_accepted(
            keep, y1, state.multipliers
        )
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
        result = RESULTS.where(
            (result == RESULTS.successful) & commit & (t >= state.t1),
            RESULTS.t1_reached,
            result,
        )
        select = lambda new, old: jnp.where(commit, new, old)
        state = eqx.tree_at(
            lambda s: (
                s.t,
                s.dt,
                s.y,
                s.multipliers,
                s.solver_state,
                s.controller_state,
                s.made_jump,
                s.result,
                s.num_accepted,
                s.num_rejected,
            ),
            state,
            (
                t,
                dt,
                select(y1, state.y),
                select(multipliers, state.multipliers),
                jtu.tree_map(select, solver_state, state.solver_state),
                controller_state,
                select(made_jump, state.made_jump),
                result,
                state.num_accepted + commit,
                state.num_rejected + (~commit),
            ),
        )
        state = self._accepted(state, commit, diagnostics)
        state = save(state, commit)
        state = self._noise_floor(state, commit)
        meter_state = self.progress_meter.step(state.meter_state, state.progress)
        state = eqx.tree_at(
            lambda s: s.meter_state, state, meter_state, is_leaf=lambda x: x is None
        )
        return state, commit

    def _next_step_size(self, state: FlowState, t1, t, tnext):
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

    def run(
        self,
        state: FlowState,
        max_attempts,
        *,
        window: int = 0,
        kind: str = "lax",
        checkpoints: int | None = None,
    ) -> tuple[FlowState, Float[Array, "W D"], Int[Array, ""]]:
        """At most `max_attempts` attempted steps, stopping early at a result other
        than `successful`; `max_steps_reached` once `max_steps` steps have been
        attempted in all. With `window > 0` (and `max_attempts <= window`), also the
        states of the accepted steps, in a `(window, D)` buffer, and their count.
        `kind`, `checkpoints`: as `equinox.internal.while_loop`."""
        ys = jnp.full((window,) + state.y.shape, jnp.nan, state.y.dtype)

        def used(state):
            return state.num_accepted + state.num_rejected

        def cond(carry):
            state, _, _, attempts = carry
            return (
                (attempts < max_attempts)
                & (state.result == RESULTS.successful)
                & (used(state) < self.max_steps)
            )

        def body(carry):
            state, ys, count, attempts = carry
            state, commit = self._attempt(state)
            if window > 0:
                ys = eqxi.buffer_at_set(ys, count, state.y, pred=commit)
                count = count + commit
            return state, ys, count, attempts + 1

        state, ys, count, _ = eqxi.while_loop(
            cond,
            body,
            (state, ys, jnp.array(0), jnp.array(0)),
            max_steps=None if kind == "lax" else self.max_steps,
            buffers=lambda carry: (*buffers(carry[0]), carry[1]),
            kind=kind,  # pyright: ignore
            checkpoints=checkpoints,
        )
        exhausted = (state.result == RESULTS.successful) & (
            used(state) >= self.max_steps
        )
        result = RESULTS.where(exhausted, RESULTS.max_steps_reached, state.result)
        return eqx.tree_at(lambda s: s.result, state, result), ys, count

    def run_window(
        self, state: FlowState, max_attempts, window: int
    ) -> tuple[FlowState, Int[Array, ""], Float[Array, "W D"], Int[Array, ""]]:
        """`run` for a host loop that empties the step records after each window:
        `(state, rows, states, count)`, where the first `rows` rows of the returned
        state's step records are the points accepted in this window (the initial
        point too, in the first), and the next window writes from row 0 again."""
        new, ys, count = self.run(state, max_attempts, window=window)
        rows = new.num_accepted + 1 - new.records.record_start
        new = eqx.tree_at(lambda s: s.records.record_start, new, new.num_accepted + 1)
        return new, rows, ys, count

    def solve(
        self,
        theta0,
        t0,
        t1,
        dt0,
        save_times,
        *,
        adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint(),
    ) -> FlowSolution:
        """`init`, then `run` to the end, in one traced function; the progress meter
        is closed at the end. `adjoint`: `diffrax.RecursiveCheckpointAdjoint`
        (reverse-mode differentiable, its `checkpoints`) or `diffrax.DirectAdjoint`
        (forward and reverse mode, slower)."""
        retracted, state = self.init(theta0, t0, t1, dt0, save_times)
        if isinstance(adjoint, diffrax.RecursiveCheckpointAdjoint):
            kind, checkpoints = "checkpointed", adjoint.checkpoints
        elif isinstance(adjoint, diffrax.DirectAdjoint):
            kind, checkpoints = "bounded", None
        else:
            raise ValueError(
                f"flow_solve supports RecursiveCheckpointAdjoint and DirectAdjoint, "
                f"got {type(adjoint).__name__}."
            )
        state, _, _ = self.run(
            state, self.max_steps, kind=kind, checkpoints=checkpoints
        )
        self.progress_meter.close(state.meter_state)
        return solution(state, retracted, self.flow.constant, self.stops)
