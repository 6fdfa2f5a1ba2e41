"""`solve_flow` and `flow_solve`: integrate the sharpness flow on a manifold, like
`diffrax.diffeqsolve`.

`flow_solve` is the pure function: one traced loop (`_loop.py`), under `jax.jit`,
`jax.vmap` and `jax.grad`. `solve_flow` is its host wrapper: it validates the input
with messages that name the fix, runs the same loop in jitted windows (Ctrl-C
returns what was computed), keeps every accepted state if asked, and returns a
trimmed NumPy `FlowSolution` (or raises with advice).
"""

import math
import os
import pathlib
import time
import warnings
from collections.abc import Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, PyTree

from . import _checkpoint
from ._loop import FlowState, Integrator
from ._manifold import AbstractManifold
from ._messages import budget_message, failure_message
from ._noise_floor import AbstractNoiseFloorPolicy, TightenTolerances
from ._projection import AbstractProjector, CholeskyProjector
from ._results import is_result, RESULTS
from ._retraction import AbstractRetraction, ChordRetraction, GaussNewtonRetraction
from ._setup import build_integrator
from ._solution import FlowSolution
from ._stop import AbstractStopCondition
from ._validate import (
    check_concrete_numbers,
    check_integer,
    check_rank,
    check_shape,
    on_device,
    retraction_error,
    validated,
)
from ._windows import (
    ENDINGS,
    first_attempts,
    host_solution,
    HostProgress,
    KeptStates,
    next_attempts,
    padded_times,
    StepRecords,
)


def flow_solve(
    manifold: AbstractManifold,
    theta0: Float[ArrayLike, " D"] | None = None,
    *,
    solver: diffrax.AbstractSolver = diffrax.Dopri8(),
    projector: AbstractProjector = CholeskyProjector(),
    retraction: AbstractRetraction = ChordRetraction(),
    initial_retraction: AbstractRetraction = GaussNewtonRetraction(),
    constant: Float[ArrayLike, ""] = 1.0,
    t0: Float[ArrayLike, ""] = 0.0,
    t1: Float[ArrayLike, ""] = math.inf,
    dt0: Float[ArrayLike, ""] | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController = diffrax.PIDController(
        rtol=1e-10, atol=1e-12
    ),
    stationarity: Float[ArrayLike, ""] = 1e-10,
    stop: Sequence[AbstractStopCondition] | None = None,
    saveat: Float[ArrayLike, " S"] | None = None,
    noise_floor: AbstractNoiseFloorPolicy = TightenTolerances(),
    max_steps: int = 100_000,
    retract_every: int = 1,
    progress_meter: diffrax.AbstractProgressMeter = diffrax.NoProgressMeter(),
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint(),
) -> FlowSolution:
    r"""Solve the sharpness flow $\dot\theta = -c P_T\nabla R(\theta)$ on `manifold`
    ($P_T$ and $R$ as in [`manifoldflow.solve_flow`][]; Li, Wang, Arora 2022;
    Gatmiry et al. 2024), as one pure function: it works under `jax.jit`,
    `jax.vmap` (over starting points, data or constants: each member takes its own
    adaptive steps and ends on its own condition) and `jax.grad` (through
    `adjoint`).

    The arguments are those of [`manifoldflow.solve_flow`][] (numbers may be traced
    arrays), without its host-side ones (`window`, `save_every`, `max_states`,
    `throw`), plus
    `adjoint`: `diffrax.RecursiveCheckpointAdjoint()` (reverse mode, the default) or
    `diffrax.DirectAdjoint()`. What is known when it is traced is checked then
    (`InputError`): the shape of `theta0`, integer counts (`max_steps`,
    `retract_every`), and `t1 > t0`, a positive finite `constant` and a finite
    `theta0` where they are concrete. Traced values are checked in the program:
    `t1 <= t0`, a constant that is not positive and finite, or a non-finite `theta0`
    end the solve at once with `RESULTS.invalid_input` (not `eqx.error_if`, whose
    host callback would keep the program out of JAX's persistent cache). Inspect
    `solution.result` (e.g. `initial_retraction_failed`, `max_steps_reached`), and
    give `saveat` strictly increasing, at or after `t0` (`solve_flow` checks it).

    **Returns:** a [`manifoldflow.FlowSolution`][] of JAX arrays of fixed size (the
    records padded after `num_steps`); `ts`, `ys` hold the states at `saveat`, or
    without it the initial and the final state.

    ```python
    solve = jax.jit(jax.vmap(lambda theta: mf.flow_solve(manifold, theta)))
    solutions = solve(starts)  # starts: (batch, D); solutions.result: (batch,)
    ```
    """
    if theta0 is None:
        theta0 = manifold.initial_point()
    theta0 = jnp.asarray(theta0)
    dtype = jnp.promote_types(theta0.dtype, manifold.initial_point().dtype)
    theta0 = theta0.astype(dtype)
    check_shape(manifold, theta0)
    check_integer("max_steps", max_steps, 1)
    check_integer("retract_every", retract_every, 1)
    check_concrete_numbers(t0=t0, t1=t1, constant=constant, theta0=theta0)
    save_times = jnp.zeros(0, dtype) if saveat is None else jnp.asarray(saveat, dtype)
    if saveat is not None and isinstance(t1, float) and math.isinf(t1):
        t1 = save_times.reshape(-1)[-1]
    integrator = build_integrator(
        manifold,
        dtype,
        solver=solver,
        projector=projector,
        retraction=retraction,
        initial_retraction=initial_retraction,
        constant=constant,
        stepsize_controller=stepsize_controller,
        stationarity=stationarity,
        stop=stop,
        noise_floor=noise_floor,
        max_steps=max_steps,
        retract_every=retract_every,
        progress_meter=progress_meter,
    )
    if dt0 is not None:
        dt0 = jnp.asarray(dt0, dtype)
    return integrator.solve(
        theta0,
        jnp.asarray(t0, dtype),
        jnp.asarray(t1, dtype),
        dt0,
        save_times.reshape(-1),
        adjoint=adjoint,
    )


def solve_flow(
    manifold: AbstractManifold,
    theta0: Float[ArrayLike, " D"] | PyTree | None = None,
    *,
    solver: diffrax.AbstractSolver = diffrax.Dopri8(),
    projector: AbstractProjector = CholeskyProjector(),
    retraction: AbstractRetraction = ChordRetraction(),
    initial_retraction: AbstractRetraction = GaussNewtonRetraction(),
    constant: float = 1.0,
    t0: float = 0.0,
    t1: float = math.inf,
    dt0: float | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController = diffrax.PIDController(
        rtol=1e-10, atol=1e-12
    ),
    stationarity: float = 1e-10,
    stop: Sequence[AbstractStopCondition] | None = None,
    saveat: Sequence[float] | None = None,
    noise_floor: AbstractNoiseFloorPolicy = TightenTolerances(),
    max_steps: int = 100_000,
    window: int | None = None,
    save_every: int = 1,
    max_states: int | None = None,
    retract_every: int = 1,
    progress_meter: diffrax.AbstractProgressMeter = diffrax.NoProgressMeter(),
    checkpoint: str | os.PathLike | None = None,
    throw: bool = True,
) -> FlowSolution:
    r"""Solve the sharpness flow $\dot\theta = -c P_T\nabla R(\theta)$ on `manifold`,
    with $P_T = I - J^\top(JJ^\top)^{-1}J$ and $R = \sum_i w_i\|\nabla F_i\|^2$ (the
    trace of the loss Hessian on $\Gamma$): the small-step limit of label-noise SGD in
    the time $\tau = \eta^2 k$ (Li, Wang, Arora 2022, Corollary 5.2; Gatmiry et al.
    2024, Theorem 1.1).

    Retracts $\theta_0$ onto $\Gamma$, then steps with `ProjectedSolver(solver)` until
    a stop condition holds (by default $\|P_T\nabla R\| \le$ `stationarity`, and
    the Gram matrix $JJ^\top$ turning numerically singular), `t1`, the noise floor, a
    failure, or `max_steps`. The loop is that of [`manifoldflow.flow_solve`][], run
    here in jitted windows of `window` steps: Ctrl-C between two windows returns what
    was computed so far.

    **Arguments:**

    - `manifold`: e.g. [`manifoldflow.ZeroLossManifold`][].
    - `theta0`: initial coordinates; default `manifold.initial_point()`. A pytree of
      the model's structure (e.g. a trained copy of the model) stands for its
      coordinates (`manifold.to_coordinates`).
    - `solver`: any diffrax ODE solver (default `Dopri8`; `Tsit5`, `Kvaerno5`, ...).
      An implicit solver with diffrax's default root finder gets the matrix-free
      [`manifoldflow.newton_krylov`][] instead (no dense $D\times D$ Jacobian); for
      long, stiff flows on real models `Kvaerno5()` is the choice (see the solvers
      how-to).
    - `projector`, `retraction`: how $P_T$ and the per-step retraction are computed.
    - `initial_retraction`: retraction of $\theta_0$ (Gauss--Newton: robust from far
      away). [`manifoldflow.GradientFlowRetraction`][] starts instead where gradient
      flow on the loss from an off-manifold $\theta_0$ ends: where label-noise SGD
      from $\theta_0$ begins to follow this flow.
    - `constant`: $c$ (see [`manifoldflow.SharpnessFlow`][]).
    - `t0`, `t1`, `dt0`: time interval and initial step (`None`: chosen by the
      controller; a constant step size needs it).
    - `stepsize_controller`: default `diffrax.PIDController(rtol=1e-10,
      atol=1e-12)`. Its tolerances enter the compiled loop as arrays: new values
      compile nothing.
    - `stationarity`: $\varepsilon$ of the stationarity stop.
    - `stop`: stop conditions ([`manifoldflow.AbstractStopCondition`][]) in addition to
      stationarity; default `(ConditionStop(),)`, none with `SVDProjector` and
      `CGProjector` (which form no Gram matrix).
    - `saveat`: output times: the solve steps exactly to each of them, and `ts`, `ys`
      hold just those (the ones reached before a stop). `t1` defaults to the last.
    - `noise_floor`: what to do at the integrator's noise floor; default
      [`manifoldflow.TightenTolerances`][] (its `patience`: accepted steps of
      evidence), which tightens a PID controller's tolerances; `StopAtNoiseFloor()`
      never changes the controller. A slow flow whose $R$ still decreases is never
      taken for a noise floor.
    - `max_steps`: the most steps attempted (accepted and rejected); never exceeded.
    - `window`: the most steps per jitted window (default from memory: the states of
      a window's steps are kept). Windows start at 4 attempts and grow while one
      takes under 2 s (shrinking when it takes over 8 s), so that Ctrl-C, the
      progress meter and checkpoints act every few seconds even when a step of a
      large model takes a minute.
    - `save_every`: keep every k-th accepted state in `ys` (diagnostics keep all).
    - `max_states`: without `saveat`, the most states kept in `ys`: when more steps
      are taken, every other kept state is dropped (so they stay evenly spaced in
      steps, the first and the last always kept). Default: 1024, fewer where they
      would take more than 1 GiB. The diagnostics (`sharpness`, `gradient_norm`,
      `constraint_violation` at `step_ts`) keep every step.
    - `retract_every`: retract after every k-th step.
    - `progress_meter`: a diffrax progress meter, e.g. `diffrax.TqdmProgressMeter()`;
      its progress is the larger of the fraction of $[t_0, t_1]$ covered and of the
      decades of $\|P_T\nabla R\|$ descended towards `stationarity`. It is drawn
      from the host after each window, not inside the compiled loop, so that the
      loop's programs stay in JAX's persistent compilation cache: a second run of
      the same solve compiles nothing. (In `flow_solve` the meter is inside the
      program, as in `diffrax.diffeqsolve`: leave it out for a cacheable program.)
    - `checkpoint`: a file to write the solve's state to after every window
      (atomically: a temporary file, then a rename). If it already holds a checkpoint
      of this same solve (same manifold, start, options, manifoldflow and JAX
      versions), the solve continues from it and ends exactly as the uninterrupted
      one would (CPU, float64: bit for bit); one of another solve, or a truncated or
      corrupt one, raises `InputError` and is never used. It is left in place at the
      end: a finished solve then returns at once.
    - `throw`: raise `RuntimeError` if the solve fails (any result but `stationary`,
      `t1_reached`, `interrupted` and `max_steps_reached`). Using up `max_steps` is a
      budget, not a failure: the solution comes back, with a `RuntimeWarning` that
      says whether $R$ was still decreasing (a flow with no stationary point within
      reach) and what to look at. With `throw=False` nothing is raised or warned:
      inspect `solution.result`.

    **Returns:** a [`manifoldflow.FlowSolution`][] of NumPy arrays.

    **Raises:** [`manifoldflow.InputError`][] for bad input (shapes, tolerances,
    `saveat`, `t0`/`t1`/`dt0`, a start where $JJ^\top$ is already singular, a
    retraction of $\theta_0$ that fails), each naming its `parameter` and the fix;
    `RuntimeError` for a failed solve when `throw=True`.
    """
    start = time.perf_counter()
    theta0, targets, t1 = validated(
        manifold,
        theta0,
        solver=solver,
        stepsize_controller=stepsize_controller,
        retractions=(retraction, initial_retraction),
        stationarity=stationarity,
        max_steps=max_steps,
        window=window,
        save_every=save_every,
        max_states=max_states,
        saveat=saveat,
        t0=t0,
        t1=t1,
        dt0=dt0,
    )
    check_integer("retract_every", retract_every, 1)
    check_concrete_numbers(t0=t0, t1=t1, constant=constant)
    if checkpoint is not None:
        _checkpoint.check_path(pathlib.Path(checkpoint))
    dtype = theta0.dtype
    if window is None:
        window = int(min(128, max(16, 2**28 // (8 * manifold.dimension))))
    if max_states is None:
        max_states = int(min(1024, max(16, 2**30 // (8 * manifold.dimension))))
    integrator = build_integrator(
        manifold,
        dtype,
        solver=solver,
        projector=projector,
        retraction=retraction,
        initial_retraction=initial_retraction,
        constant=constant,
        stepsize_controller=stepsize_controller,
        stationarity=stationarity,
        stop=stop,
        noise_floor=noise_floor,
        max_steps=max_steps,
        retract_every=retract_every,
        records=window + 1,
    )
    check_rank(manifold, integrator.stops, theta0)
    init_arguments = (
        on_device(t0, dtype),
        on_device(t1, dtype),
        None if dt0 is None else on_device(dt0, dtype),
        on_device(padded_times(targets), dtype),
    )
    retracted, state = _init(integrator, theta0, *init_arguments)
    if not bool(retracted.converged):
        raise retraction_error(retracted, initial_retraction)
    records = StepRecords()
    kept = (
        None
        if targets is not None
        else KeptStates(np.asarray(state.y), save_every, max_states - 1)
    )
    attempts, on_window = first_attempts(window), None
    if checkpoint is not None:
        programs = (
            _program_text(_init, integrator, theta0, *init_arguments),
            _program_text(
                _run,
                integrator,
                state,
                on_device(attempts),
                0 if kept is None else window,
            ),
        )
        state, attempts, on_window = _checkpointing(
            pathlib.Path(checkpoint),
            manifold,
            theta0,
            programs,
            state,
            records,
            kept,
            attempts,
            dict(
                solver=solver,
                projector=projector,
                retraction=retraction,
                initial_retraction=initial_retraction,
                constant=constant,
                t0=t0,
                t1=t1,
                dt0=dt0,
                stepsize_controller=stepsize_controller,
                stationarity=stationarity,
                stop=integrator.stops,
                saveat=targets,
                noise_floor=noise_floor,
                max_steps=max_steps,
                window=window,
                save_every=save_every,
                max_states=max_states,
                retract_every=retract_every,
            ),
        )
    progress = HostProgress(progress_meter)
    state = _windows(
        integrator, state, window, records, kept, progress, attempts, on_window
    )
    solution = host_solution(
        state,
        retracted,
        records,
        kept,
        constant=float(constant),
        stationarity=float(stationarity),
        wall_seconds=time.perf_counter() - start,
        manifold=manifold,
    )
    if is_result(solution.result, RESULTS.max_steps_reached):
        # A budget, not a failure: the solution comes back, with what it shows.
        if throw:
            warnings.warn(budget_message(solution), RuntimeWarning, stacklevel=2)
    elif throw and not any(is_result(solution.result, r) for r in ENDINGS):
        raise RuntimeError(failure_message(solution, integrator))
    return solution


def _program_text(function, *arguments) -> str:
    """The lowered text of `function(*arguments)`: the very program a solve runs
    (its progress is drawn on the host, so no display is in it), whose lowering JAX
    keeps for the call that follows."""
    return function.lower(*arguments).as_text()


def _checkpointing(
    path, manifold, theta0, programs, state, records, kept, attempts, options
):
    """`(state, attempts, after each window)` of a solve checkpointed at `path`:
    continued from the checkpoint there if it is this solve's (`programs`: the
    lowered texts of the programs it runs)."""
    marks = _checkpoint.fingerprint(manifold, theta0, options, programs)
    if path.exists():
        saved = _checkpoint.read(path, marks, state)
        state, attempts = saved.state, saved.attempts
        records.restore(saved.host)
        if kept is not None:
            kept.restore(saved.host)

    def on_window(state, attempts):
        host = records.arrays()
        if kept is not None:
            host.update(kept.snapshot())
        _checkpoint.write(path, marks, _checkpoint.Checkpoint(state, attempts, host))

    return state, attempts, on_window


def _windows(
    integrator,
    state,
    window: int,
    records: StepRecords,
    kept: KeptStates | None,
    progress: HostProgress,
    attempts: int | None = None,
    on_window=None,
):
    """Run the loop in jitted windows until it ends, giving the step records to
    `records` and every accepted state to `kept` (if any); the final state. The
    first windows are short and then grow (`next_attempts`; one compiled program:
    the number of attempts is an argument). Ctrl-C returns what was computed
    (`interrupted`). After each window, the progress display is redrawn and
    `on_window(state, next attempts)` called (a checkpoint). The display is closed
    at the end."""
    attempts = first_attempts(window) if attempts is None else attempts
    first = not records.parts  # a first window takes the initial point's records
    try:
        while first or is_result(state.result, RESULTS.successful):
            first = False
            start = time.perf_counter()
            new, rows, ys, count = _run(
                integrator,
                state,
                on_device(attempts),
                0 if kept is None else window,
            )
            # Wait for the window (dispatch is asynchronous) before taking it: an
            # interrupt while waiting returns the state of the windows before it.
            new, ys = jax.block_until_ready((new, ys))
            records.add(new, int(rows))
            if kept is not None:
                kept.add(np.asarray(ys)[: int(count)])
            state = new
            attempts = next_attempts(attempts, time.perf_counter() - start, window)
            progress.update(float(state.progress))
            if on_window is not None:
                on_window(state, attempts)
    except KeyboardInterrupt:
        if not records.parts:  # in the first window: the initial point's records
            records.add(state, 1)
        state = eqx.tree_at(lambda s: s.result, state, RESULTS.interrupted)
    finally:
        progress.close(
            finished=is_result(state.result, RESULTS.stationary)
            or is_result(state.result, RESULTS.t1_reached)
        )
    return state


@eqx.filter_jit
def _init(integrator: Integrator, theta0, t0, t1, dt0, save_times):
    return integrator.init(theta0, t0, t1, dt0, save_times)


@eqx.filter_jit
def _run(integrator: Integrator, state: FlowState, attempts, window: int):
    return integrator.run_window(state, attempts, window)
