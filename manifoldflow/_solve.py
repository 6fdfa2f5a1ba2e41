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
from ._flow import SharpnessFlow
from ._implicit import matrix_free_implicit, with_stepsize_tolerances
from ._loop import FlowState, Integrator
from ._manifold import AbstractManifold
from ._noise_floor import AbstractNoiseFloorPolicy, TightenTolerances
from ._projection import AbstractProjector, CholeskyProjector, QRProjector
from ._results import is_result, RESULTS
from ._retraction import AbstractRetraction, ChordRetraction, GaussNewtonRetraction
from ._solution import FlowSolution
from ._solver import ProjectedSolver
from ._stop import AbstractStopCondition, ConditionStop, StationarityStop
from ._validate import (
    check_concrete_numbers,
    check_integer,
    check_rank,
    check_shape,
    gram_matrix,
    on_device,
    retraction_error,
    validated,
)


_ENDINGS = (RESULTS.stationary, RESULTS.t1_reached, RESULTS.interrupted)
# The marker of root-finder tolerances to be taken from the step size controller.


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
    integrator = _integrator(
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
      decades of $\|P_T\nabla R\|$ descended towards `stationarity`.
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
    integrator = _integrator(
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
        records=window + 1,
    )
    check_rank(manifold, integrator.stops, theta0)
    init_arguments = (
        on_device(t0, dtype),
        on_device(t1, dtype),
        None if dt0 is None else on_device(dt0, dtype),
        on_device(_padded(targets), dtype),
    )
    retracted, state = _init(integrator, theta0, *init_arguments)
    if not bool(retracted.converged):
        progress_meter.close(state.meter_state)
        raise retraction_error(retracted, initial_retraction)
    records = _Records()
    kept = (
        None
        if targets is not None
        else _KeptStates(np.asarray(state.y), save_every, max_states - 1)
    )
    attempts, on_window = min(4, window), None
    if checkpoint is not None:
        programs = (
            _program_text(_init, integrator, theta0, *init_arguments),
            _program_text(
                _run, integrator, state, on_device(attempts), 0 if kept is None else window
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
    state = _windows(integrator, state, window, records, kept, attempts, on_window)
    solution = _host_solution(
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
            warnings.warn(_budget_message(solution), RuntimeWarning, stacklevel=2)
    elif throw and not any(is_result(solution.result, r) for r in _ENDINGS):
        raise RuntimeError(_failure_message(solution, integrator))
    return solution


class _KeptStates:
    """The accepted states kept for `ys` without `saveat`: those whose index is a
    multiple of `stride` (from `save_every`), the stride doubling whenever more than
    `limit` would be kept, so that at most `limit` states (evenly spaced in steps)
    plus the last are kept, however many steps the solve takes."""

    def __init__(self, first: np.ndarray, stride: int, limit: int):
        self.stride, self.limit = stride, max(limit, 1)
        self.index = np.zeros(1, int)
        self.states = first[None]
        self.seen = 1

    def add(self, ys: np.ndarray) -> None:
        """Append the next accepted states (indices `seen`, `seen + 1`, ...)."""
        index = np.arange(self.seen, self.seen + ys.shape[0])
        keep = index % self.stride == 0
        self.index = np.concatenate([self.index, index[keep]])
        self.states = np.concatenate([self.states, ys[keep]])
        self.seen += ys.shape[0]
        while self.index.size > self.limit:
            self.stride *= 2
            keep = self.index % self.stride == 0
            self.index, self.states = self.index[keep], self.states[keep]

    def snapshot(self) -> dict[str, np.ndarray]:
        """What `restore` needs to continue from here."""
        return dict(
            kept_index=self.index,
            kept_states=self.states,
            kept_stride=np.asarray(self.stride),
            kept_seen=np.asarray(self.seen),
        )

    def restore(self, saved: dict[str, np.ndarray]) -> None:
        self.index, self.states = saved["kept_index"], saved["kept_states"]
        self.stride, self.seen = int(saved["kept_stride"]), int(saved["kept_seen"])

    def result(self, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(indices, states)`, with the last accepted state."""
        if self.index[-1] == self.seen - 1:
            return self.index, self.states
        return (
            np.append(self.index, self.seen - 1),
            np.concatenate([self.states, last[None]]),
        )


class _Records:
    """The step records taken off the device after each window: `sharpness`,
    `gradient_norm`, `constraint_violation` at `step_ts`, for every accepted point."""

    names = ("step_ts", "sharpness", "gradient_norm", "constraint_violation")

    def __init__(self):
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, state: FlowState, rows: int) -> None:
        """The first `rows` rows of `state`'s step records."""
        self.append(tuple(np.asarray(getattr(state, n)) for n in self.names), rows)

    def append(self, records: tuple[np.ndarray, ...], rows: int) -> None:
        """The first `rows` rows of `records` (in the order of `names`)."""
        if rows > 0:
            self.parts.append(tuple(r[:rows] for r in records))

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            name: np.concatenate([part[k] for part in self.parts])
            for k, name in enumerate(self.names)
        }

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.parts = [tuple(arrays[name] for name in self.names)]


def _program_text(function, integrator: Integrator, *arguments) -> str:
    """The lowered text of `function(integrator, *arguments)`, the program a solve
    runs, without its progress meter (which changes no number, and whose presence
    must not make a checkpoint another solve's). Without a meter this is the very
    program called, whose lowering JAX caches (0.01 s); with one it is traced and
    lowered once more (0.3 s on the two-layer command)."""
    quiet = eqx.tree_at(
        lambda i: i.progress_meter, integrator, diffrax.NoProgressMeter()
    )
    arguments = tuple(
        _checkpoint.without_meter(a) if isinstance(a, FlowState) else a
        for a in arguments
    )
    return function.lower(quiet, *arguments).as_text()


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


_WINDOW_SECONDS = 2.0
"""A window's target wall time (see `_windows`)."""


def _windows(
    integrator,
    state,
    window: int,
    records: _Records,
    kept: _KeptStates | None,
    attempts: int | None = None,
    on_window=None,
):
    """Run the loop in jitted windows until it ends, giving the step records to
    `records` and every accepted state to `kept` (if any); the final state. The
    first windows are short (4, 8, 16, ... attempts, one compiled program: the
    number of attempts is an argument), and a window grows only while it takes less
    than `_WINDOW_SECONDS` and shrinks when it takes more than four times that, so
    that Ctrl-C, the progress meter and checkpoints act every few seconds however
    slow a step is (a step of a large model can take a minute); Ctrl-C returns what
    was computed (`interrupted`). Window sizes change no number: the loop carries
    its whole state. After each window, `on_window(state, next attempts)` (a
    checkpoint). The progress meter is closed."""
    attempts = min(4, window) if attempts is None else attempts
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
            elapsed = time.perf_counter() - start
            if elapsed < _WINDOW_SECONDS:
                attempts = min(2 * attempts, window)
            elif elapsed > 4 * _WINDOW_SECONDS:
                attempts = max(1, attempts // 2)
            if on_window is not None:
                on_window(state, attempts)
    except KeyboardInterrupt:
        if not records.parts:  # in the first window: the initial point's records
            records.add(state, 1)
        state = eqx.tree_at(lambda s: s.result, state, RESULTS.interrupted)
    finally:
        integrator.progress_meter.close(state.meter_state)
    return state


def _padded(targets: list[float] | None) -> list[float]:
    """Output times padded with `inf` to a power of two (at least 8), so that a new
    number of output times rarely compiles a new program."""
    if not targets:
        return []
    size = max(8, 1 << (len(targets) - 1).bit_length())
    return targets + [math.inf] * (size - len(targets))


@eqx.filter_jit
def _init(integrator: Integrator, theta0, t0, t1, dt0, save_times):
    return integrator.init(theta0, t0, t1, dt0, save_times)


@eqx.filter_jit
def _run(integrator: Integrator, state: FlowState, attempts, window: int):
    return integrator.run_window(state, attempts, window)


def _host_solution(
    state: FlowState, retracted, records: _Records, kept, **fields
) -> FlowSolution:
    """The solution in NumPy, trimmed to the steps taken (no eager JAX operation:
    each would stage a program); with `kept`, the states it kept as `ys`, else the
    states at the output times."""
    arrays = records.arrays()
    step_ts = arrays["step_ts"]
    n = step_ts.size
    if kept is not None:
        saved_index, ys = kept.result(np.asarray(state.y))
    else:
        count = int(state.save_count)
        saved_index = np.asarray(state.saved_index)[:count]
        ys = np.asarray(state.saved_ys)[:count]
    k = int(state.num_tightened)
    return FlowSolution(
        ts=step_ts[saved_index],
        ys=ys,
        step_ts=step_ts,
        sharpness=arrays["sharpness"],
        gradient_norm=arrays["gradient_norm"],
        constraint_violation=arrays["constraint_violation"],
        saved_index=saved_index,
        theta_final=state.y,
        t_final=float(step_ts[-1]),
        num_steps=n - 1,
        num_rejected_steps=int(state.num_rejected),
        result=state.result,
        tightened=np.asarray(state.tightened)[:k],
        num_tightened=k,
        retraction=retracted,
        **fields,
    )


def _integrator(
    manifold,
    dtype,
    *,
    solver,
    projector,
    retraction,
    initial_retraction,
    constant,
    stepsize_controller,
    stationarity,
    stop,
    noise_floor,
    max_steps,
    retract_every,
    progress_meter,
    records=None,
) -> Integrator:
    """The flow, the projected solver and the policies of one solve, with the
    defaults of `solve_flow`. Numbers enter as arrays."""
    controller = _with_array_tolerances(stepsize_controller, dtype)
    if stop is None:  # the condition stop costs one Cholesky of J J^T per step
        forms_gram = isinstance(projector, (CholeskyProjector, QRProjector))
        stop = (ConditionStop(),) if forms_gram else ()
    stops = (StationarityStop(_as_array(stationarity, dtype)), *stop)
    flow = SharpnessFlow(manifold, projector, _as_array(constant, dtype))
    psolver = ProjectedSolver(
        with_stepsize_tolerances(matrix_free_implicit(solver), controller),
        manifold,
        projector,
        retraction,
        retract_every,
    )
    return Integrator(
        flow,
        psolver,
        controller,
        stops,
        noise_floor,
        initial_retraction,
        progress_meter,
        max_steps,
        records,
    )


def _as_array(value, dtype):
    """A number as an array of `dtype`: without staging a program for a host value,
    unchanged (but cast) for a traced one."""
    if isinstance(value, jax.Array):
        return value.astype(dtype)
    return on_device(value, dtype)


def _with_array_tolerances(controller, dtype):
    """A PID controller's `rtol` and `atol` as arrays: new values compile nothing, and
    the noise-floor policy can tighten them inside the loop."""
    if not isinstance(controller, diffrax.PIDController):
        return controller
    return eqx.tree_at(
        lambda c: (c.rtol, c.atol),
        controller,
        (_as_array(controller.rtol, dtype), _as_array(controller.atol, dtype)),
    )


_ADVICE = {
    "stagnated": (
        "|P_T grad R| is at the integrator's noise floor: ask for a stationarity above "
        "the value reached, or use projector=QRProjector() (accuracy kappa(J) "
        "instead of kappa(J)^2); if you believe the flow is merely slow, pass "
        "noise_floor=TightenTolerances(patience=...) with a larger patience, or "
        "noise_floor=IgnoreNoiseFloor()."
    ),
    "ill_conditioned": (
        "The manifold is close to a singular point (for a sparse-recovery model: "
        "coordinates decaying to 0). To go on anyway: stop=[ConditionStop("
        "max_condition=...)] with a larger bound (Cholesky accuracy degrades like "
        "condition x 1e-16), or projector=SVDProjector(), which drops the vanishing "
        "directions (it may need many steps); or remove the collapsed coordinates "
        "from the model."
    ),
    "retraction_failed": (
        "Take smaller steps (lower the tolerances of stepsize_controller, or dt0), or "
        "give the retraction more "
        "iterations (retraction=ChordRetraction(max_steps=...) or NewtonRetraction())."
    ),
    "projection_failed": (
        "For CGProjector raise max_steps or loosen rtol; or use CholeskyProjector or "
        "SVDProjector (for a rank-deficient J)."
    ),
    "step_failure": (
        "The model, its gradient or the sharpness is not finite at the point reached: "
        "check the model (e.g. log or sqrt of a quantity that reaches 0)."
    ),
    "step_size_collapsed": (
        "Every step from the point reached was rejected or had zero length: the vector "
        "field is not finite or not accurate near it (see the Gram condition above), "
        "or dt0 was not positive."
    ),
}


def _budget_message(solution: FlowSolution) -> str:
    """What a solve that used all of `max_steps` shows, and what to look at."""
    R, g = solution.sharpness, solution.gradient_norm
    half = R.size // 2
    fall = (R[half] - R[-1]) / max(abs(R[-1]), np.finfo(float).tiny)
    if fall > 1e3 * np.finfo(float).eps:
        trend = (
            f"R is still decreasing ({R[half]:.12g} -> {R[-1]:.12g} over the second "
            f"half of the steps, |P_T grad R| from {g[half]:.2e} to {g[-1]:.2e}): the "
            "flow may have no stationary point within reach (e.g. biases growing, "
            "units saturating: a minimum at infinity), so more steps may never reach "
            "the threshold. "
        )
    else:
        trend = (
            f"R is flat to rounding over the second half of the steps ({R[-1]:.12g}). "
        )
    return (
        "solve_flow used its budget of "
        f"{solution.num_steps + solution.num_rejected_steps} step attempts "
        f"(max_steps) before |P_T grad R| <= {solution.stationarity:g}: "
        f"it got to t = {solution.t_final:.6g} with |P_T grad R| = {g[-1]:.3e}. "
        + trend
        + "The solution is returned: look at R(t) and |P_T grad R|(t) "
        "(solution.sharpness and solution.gradient_norm against solution.step_ts). "
        "To go on, raise max_steps; to solve up to a time, pass t1=...; "
        "throw=False silences this warning."
    )


def _failure_message(solution: FlowSolution, integrator: Integrator) -> str:
    R, g, violation = (
        solution.sharpness[-1],
        solution.gradient_norm[-1],
        solution.constraint_violation[-1],
    )
    gram = np.asarray(gram_matrix(integrator.flow.manifold, on_device(solution.theta_final)))
    eigenvalues = np.linalg.eigvalsh(gram)
    condition = eigenvalues[-1] / eigenvalues[0] if eigenvalues[0] > 0 else math.inf
    advice = _ADVICE.get(solution.result_name, "")
    return (
        f"solve_flow ended without stationarity: {solution.message.rstrip('.')}. "
        "It got to "
        f"t = {solution.t_final:.6g} after {solution.num_steps} accepted steps "
        f"({solution.num_rejected_steps} rejected), with |P_T grad R| = {g:.3e} "
        f"(threshold {solution.stationarity:g}), R = {R:.12g}, "
        f"max|F| = {violation:.1e}, "
        f"Gram condition number {condition:.2e}. {advice}"
    )
