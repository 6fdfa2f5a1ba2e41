r"""The state of the step loop, split by concern like diffrax's: stepping (time,
point, solver and controller states, counts), the step records, the outputs at
requested times, the noise-floor policy's memory (owned by the policy: see
`_noise_floor.py`), and progress; with the pure functions that write the records and
the outputs, and the one that turns a final state into a `FlowSolution`.
"""

import equinox as eqx
import equinox.internal as eqxi
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from ._geometry import FlowEvaluation
from ._noise_floor import NoiseFloorMemory
from ._results import RESULTS
from ._retraction import RetractionSolution
from ._solution import FlowSolution
from ._stop import StationarityStop


class StepDiagnostics(eqx.Module):
    r"""What the loop records at an accepted point: the sharpness $R$, the
    stationarity $\|P_T\nabla R\|$, the constraint violation $\max_i|F_i|$, and
    the result of the projection's linear solve there (lineax's `RESULTS`)."""

    sharpness: Scalar
    gradient_norm: Scalar
    constraint_violation: Scalar
    projection_result: lx.RESULTS


class StepRecordBuffers(eqx.Module):
    """The step records: row k holds the (`record_start` + k)-th accepted point (row
    0 of a whole solve: the initial point). A host loop that empties them after each
    window moves `record_start` on, so that they need only hold one window.
    Write-only inside the loop."""

    record_start: Int[Array, ""]
    step_ts: Float[Array, " N"]
    sharpness: Float[Array, " N"]
    gradient_norm: Float[Array, " N"]
    constraint_violation: Float[Array, " N"]

    @staticmethod
    def empty(size: int, dtype) -> "StepRecordBuffers":
        nan = jnp.full(size, jnp.nan, dtype)
        return StepRecordBuffers(
            jnp.array(0), jnp.full(size, jnp.inf, dtype), nan, nan, nan
        )


class SavedStates(eqx.Module):
    """The outputs at the requested times `save_times`: `save_count` of them so far,
    the states and the indices of their accepted points."""

    save_times: Float[Array, " S"]
    save_count: Int[Array, ""]
    saved_ys: Float[Array, "S D"]
    saved_index: Int[Array, " S"]

    @staticmethod
    def empty(save_times, theta) -> "SavedStates":
        size = save_times.shape[0]
        return SavedStates(
            save_times.astype(theta.dtype),
            jnp.array(0),
            jnp.full((size,) + theta.shape, jnp.nan, theta.dtype),
            jnp.full(size, -1),
        )


class FlowState(eqx.Module):
    """Everything carried from one step to the next.

    `dt` is the controller's proposed size of the next step before any clipping to an
    output time, so that reaching an output time does not shrink the steps after it.
    `tolerances` is the array part of the step size controller (the noise-floor
    policy may tighten it). `records` and `saves` are write-only buffers;
    `noise_floor` is the policy's own memory.
    """

    t: Scalar
    dt: Scalar
    y: Float[Array, " D"]
    # The multipliers at `y`: the starting guess of an iterative projector.
    multipliers: Float[Array, " n"]
    solver_state: PyTree
    controller_state: PyTree
    tolerances: PyTree
    made_jump: Bool[Array, ""]
    result: RESULTS
    num_accepted: Int[Array, ""]
    num_rejected: Int[Array, ""]
    t0: Scalar
    t1: Scalar
    records: StepRecordBuffers
    saves: SavedStates
    noise_floor: NoiseFloorMemory
    # Progress: the meter's state (`flow_solve` only), the fraction done, and the
    # stationarity at the start it is measured from.
    meter_state: PyTree
    progress: Scalar
    initial_gradient_norm: Scalar


def buffers(state: FlowState):
    """The write-only buffers of a state (for `equinox.internal.while_loop`)."""
    return (
        state.records.step_ts,
        state.records.sharpness,
        state.records.gradient_norm,
        state.records.constraint_violation,
        state.saves.saved_ys,
        state.saves.saved_index,
        state.noise_floor.tightened,
    )


def diagnose(flow, theta, guess=None) -> tuple[FlowEvaluation, StepDiagnostics]:
    """The flow's evaluation at `theta` and the diagnostics recorded there."""
    evaluation = flow.evaluate(theta, guess)
    violation = jnp.max(jnp.abs(flow.manifold.constraint(theta)))
    diagnostics = StepDiagnostics(
        evaluation.sharpness, evaluation.gradient_norm, violation, evaluation.result
    )
    return evaluation, diagnostics


def point_result(stops, evaluation, diagnostics, theta) -> RESULTS:
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


def clip(tnext, t_end):
    """Ends the next step exactly at `t_end` when it would end after it or within 100
    ulp before it."""
    floor = t_end - 100 * jnp.finfo(t_end.dtype).eps * jnp.abs(t_end)
    return jnp.where(tnext > floor, t_end, tnext)


def record(state: FlowState, pred, diagnostics: StepDiagnostics) -> FlowState:
    """Write the point of `state` (the `num_accepted`-th) into the step records (at
    its row after `record_start`; nothing past their end)."""
    records = state.records
    i = state.num_accepted - records.record_start
    pred = pred & (i < records.step_ts.shape[0])
    put = lambda buffer, value: eqxi.buffer_at_set(buffer, i, value, pred=pred)
    # tree_at, not the constructor: inside the loop the buffers are not arrays.
    records = eqx.tree_at(
        lambda r: (r.step_ts, r.sharpness, r.gradient_norm, r.constraint_violation),
        records,
        (
            put(records.step_ts, state.t),
            put(records.sharpness, diagnostics.sharpness),
            put(records.gradient_norm, diagnostics.gradient_norm),
            put(records.constraint_violation, diagnostics.constraint_violation),
        ),
    )
    return eqx.tree_at(lambda s: s.records, state, records)


def save(state: FlowState, pred) -> FlowState:
    """Keep the point as the next output if it is at the next output time."""
    saves = state.saves
    num_saves = saves.save_times.shape[0]
    if num_saves == 0:
        return state
    index = jnp.minimum(saves.save_count, num_saves - 1)
    due = pred & (saves.save_count < num_saves) & (state.t == saves.save_times[index])
    saves = eqx.tree_at(
        lambda v: (v.save_count, v.saved_ys, v.saved_index),
        saves,
        (
            saves.save_count + due,
            eqxi.buffer_at_set(saves.saved_ys, index, state.y, pred=due),
            eqxi.buffer_at_set(saves.saved_index, index, state.num_accepted, pred=due),
        ),
    )
    return eqx.tree_at(lambda s: s.saves, state, saves)


def next_output_end(state: FlowState):
    """Where the next step must end at the latest: the next output time, or t1."""
    saves = state.saves
    num_saves = saves.save_times.shape[0]
    if num_saves == 0:
        return state.t1
    index = jnp.minimum(saves.save_count, num_saves - 1)
    return jnp.where(
        saves.save_count < num_saves,
        jnp.minimum(saves.save_times[index], state.t1),
        state.t1,
    )


def solution(
    state: FlowState, retracted: RetractionSolution, constant, stops
) -> FlowSolution:
    """The [`manifoldflow.FlowSolution`][] of a final state, with padded buffers:
    rows of `step_ts` (and friends) after `num_steps` hold `inf` (NaN), outputs not
    reached hold `inf` times (NaN states)."""
    thresholds = [s.threshold for s in stops if isinstance(s, StationarityStop)]
    stationarity = thresholds[0] if thresholds else 0.0
    dtype = state.y.dtype
    records, saves = state.records, state.saves
    if saves.save_times.shape[0] == 0:
        # Without output times: the initial and the final point.
        ts = jnp.stack([records.step_ts[0], state.t])
        ys = jnp.stack([retracted.theta, state.y])
        saved_index = jnp.stack([jnp.array(0), state.num_accepted])
    else:
        reached = jnp.arange(saves.save_times.shape[0]) < saves.save_count
        ts = jnp.where(reached, saves.save_times, jnp.inf)
        ys, saved_index = saves.saved_ys, saves.saved_index
    return FlowSolution(
        ts=ts,
        ys=ys,
        step_ts=records.step_ts,
        sharpness=records.sharpness,
        gradient_norm=records.gradient_norm,
        constraint_violation=records.constraint_violation,
        saved_index=saved_index,
        theta_final=state.y,
        t_final=state.t,
        num_steps=state.num_accepted,
        num_rejected_steps=state.num_rejected,
        result=state.result,
        tightened=state.noise_floor.tightened,
        num_tightened=state.noise_floor.num_tightened,
        constant=jnp.asarray(constant, dtype),
        stationarity=jnp.asarray(stationarity, dtype),
        retraction=retracted,
    )
