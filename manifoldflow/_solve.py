"""`solve_flow`: integrate the sharpness flow on a manifold, like `diffrax.diffeqsolve`.

The driver validates its input, builds the projected solver and the policies, then runs
jitted windows of steps (`_loop.py`) towards each output time, asking the noise-floor
policy and the progress meter between windows, and assembles a `FlowSolution`.
"""

import math
import time
from collections.abc import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from diffrax._root_finder import use_stepsize_tol  # the tolerances diffeqsolve fills in
from jaxtyping import ArrayLike, Float

from ._errors import InputError
from ._flow import SharpnessFlow
from ._loop import Integrator, LoopState
from ._manifold import AbstractManifold
from ._noise_floor import AbstractNoiseFloorPolicy, StopAtNoiseFloor, TightenTolerances
from ._programs import persistent_jit
from ._progress import (
    AbstractProgressMeter,
    CallbackProgressMeter,
    NoProgressMeter,
    ProgressMeters,
    TqdmProgressMeter,
)
from ._projection import AbstractProjector, CholeskyProjector, QRProjector
from ._results import is_result, RESULTS
from ._retraction import AbstractRetraction, ChordRetraction, GaussNewtonRetraction
from ._solution import FlowSolution
from ._solver import ProjectedSolver
from ._stop import AbstractStopCondition, ConditionStop, StationarityStop
from ._trajectory import Trajectory


_ENDINGS = (RESULTS.stationary, RESULTS.t1_reached, RESULTS.interrupted)


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
    stop: Sequence[AbstractStopCondition] | None = None,
    saveat: Sequence[float] | None = None,
    noise_floor: AbstractNoiseFloorPolicy | None = None,
    max_steps: int = 100_000,
    patience: int = 200,
    window: int | None = None,
    save_every: int = 1,
    retract_every: int = 1,
    progress: bool | AbstractProgressMeter = False,
    callback: Callable[[dict], None] | None = None,
    throw: bool = True,
) -> FlowSolution:
    r"""Solve the sharpness flow $\dot\theta = -c P_T\nabla R(\theta)$ on `manifold`.

    Retracts $\theta_0$ onto $\Gamma$, then steps with `ProjectedSolver(solver)` until
    a stop condition holds (by default $\|P_T\nabla R\| \le$ `stationarity`, and
    the Gram matrix $JJ^\top$ turning numerically singular), `t1`, the noise floor, a
    failure, or `max_steps`. Steps run in jitted windows of `window` steps; between
    windows the progress meter runs and Ctrl-C returns what was computed so far.

    **Arguments:**

    - `manifold`: e.g. [`manifoldflow.ZeroLossManifold`][].
    - `theta0`: initial coordinates; default `manifold.initial_point()`.
    - `solver`: any diffrax ODE solver (default `Dopri8`; `Tsit5`, `Kvaerno5`, ...).
    - `projector`, `retraction`: how $P_T$ and the per-step retraction are computed.
    - `initial_retraction`: retraction of $\theta_0$ (Gauss--Newton: robust from far
      away). [`manifoldflow.GradientFlowRetraction`][] starts instead where gradient
      flow on the loss from an off-manifold $\theta_0$ ends: where label-noise SGD
      from $\theta_0$ begins to follow this flow.
    - `constant`: $c$ (see [`manifoldflow.SharpnessFlow`][]).
    - `t0`, `t1`, `dt0`: time interval and initial step (`None`: chosen by the
      controller; a constant step size needs it).
    - `rtol`, `atol`: tolerances of the default `PIDController`.
    - `stepsize_controller`: replaces the PID controller (it is never modified).
    - `stationarity`: $\varepsilon$ of the stationarity stop.
    - `stop`: stop conditions ([`manifoldflow.AbstractStopCondition`][]) in addition to
      stationarity; default `(ConditionStop(),)`, none with `SVDProjector`.
    - `saveat`: output times: the solve steps exactly to each of them, and `ts`, `ys`
      hold just those (the ones reached before a stop). `t1` defaults to the last.
    - `noise_floor`: what to do at the integrator's noise floor; default
      `TightenTolerances(patience)` with the default controller, else
      `StopAtNoiseFloor(patience)`. A slow flow whose $R$ still decreases is never
      taken for a noise floor.
    - `max_steps`: the most steps attempted (accepted and rejected); never exceeded.
    - `patience`: accepted steps of evidence before a noise floor is declared.
    - `window`: steps per jitted window (default from memory: states of all steps of a
      window are kept).
    - `save_every`: keep every k-th accepted state in `ys` (diagnostics keep all).
    - `retract_every`: retract after every k-th step.
    - `progress`: `True` for a tqdm bar (t, steps, R, $\|P_T\nabla R\|$), or a
      [`manifoldflow.AbstractProgressMeter`][].
    - `callback`: called with a dict (t, num_steps, sharpness, gradient_norm) after
      every window.
    - `throw`: raise `RuntimeError` if the solve fails (any result but `stationary`,
      `t1_reached`, `interrupted`); with `throw=False` inspect `solution.result`.

    **Returns:** a [`manifoldflow.FlowSolution`][].
    """
    start = time.perf_counter()
    theta0 = _check_inputs(manifold, theta0, rtol, atol, stationarity, max_steps)
    _check_float32(theta0, (retraction, initial_retraction))
    _check_counts(window=window, patience=patience, save_every=save_every, dt0=dt0)
    if saveat is not None and save_every != 1:
        raise InputError("save_every thins the default output; with saveat leave it 1.")
    targets, t1 = _output_times(saveat, t0, t1)
    integrator, noise_floor = _setup(
        manifold,
        theta0,
        solver=solver,
        projector=projector,
        retraction=retraction,
        constant=constant,
        rtol=rtol,
        atol=atol,
        stepsize_controller=stepsize_controller,
        stationarity=stationarity,
        stop=stop,
        noise_floor=noise_floor,
        patience=patience,
        retract_every=retract_every,
    )
    _check_rank(manifold, integrator.stops, theta0)
    retracted, state, diagnostics = _initialise(
        integrator, initial_retraction, theta0, t0, t1, dt0
    )
    if window is None:
        window = int(min(128, max(16, 2**28 // (8 * manifold.dimension))))
    trajectory = Trajectory(t0, state.y, diagnostics, keep_all=targets is None)
    meter = _progress_meter(progress, callback)
    meter_state = meter.init(
        t0,
        0,
        float(diagnostics.sharpness),
        float(diagnostics.gradient_norm),
        stationarity,
    )
    runner = _Runner(integrator, noise_floor, window, max_steps, trajectory, meter)
    try:
        state = runner.run(state, _segments(targets, t1), meter_state)
    except KeyboardInterrupt:
        state = _with_result(runner.state, RESULTS.interrupted)
    finally:
        meter.close(runner.meter_state)
    result = _final_result(state)
    solution = trajectory.solution(
        state=state,
        result=result,
        save_every=save_every,
        targets=targets,
        tightened=runner.tightened,
        constant=constant,
        stationarity=stationarity,
        wall_seconds=time.perf_counter() - start,
        manifold=manifold,
        retraction=retracted,
    )
    if throw and not any(bool(result == r) for r in _ENDINGS):
        raise RuntimeError(_failure_message(solution, runner.integrator))
    return solution


def _setup(
    manifold,
    theta0,
    *,
    solver,
    projector,
    retraction,
    constant,
    rtol,
    atol,
    stepsize_controller,
    stationarity,
    stop,
    noise_floor,
    patience,
    retract_every,
) -> tuple[Integrator, AbstractNoiseFloorPolicy]:
    """The integrator (flow, projected solver, controller, stops) and the noise-floor
    policy, with the defaults of `solve_flow`. Numbers enter as arrays."""
    dtype = theta0.dtype
    controller = stepsize_controller
    if controller is None:
        controller = diffrax.PIDController(
            rtol=_on_device(rtol, dtype), atol=_on_device(atol, dtype)
        )
    if noise_floor is None:
        default = TightenTolerances if stepsize_controller is None else StopAtNoiseFloor
        noise_floor = default(patience=patience)
    if stop is None:  # the condition stop costs one Cholesky of J J^T per step
        forms_gram = isinstance(projector, (CholeskyProjector, QRProjector))
        stop = (ConditionStop(),) if forms_gram else ()
    stops = (StationarityStop(_on_device(stationarity, dtype)), *stop)
    flow = SharpnessFlow(manifold, projector, _on_device(constant, dtype))
    psolver = ProjectedSolver(
        _with_stepsize_tolerances(solver, controller),
        manifold,
        projector,
        retraction,
        retract_every,
    )
    return Integrator(flow, psolver, controller, stops), noise_floor


def _check_inputs(manifold, theta0, rtol, atol, stationarity, max_steps):
    start = manifold.initial_point()
    if theta0 is None:
        theta0 = start
    elif not isinstance(theta0, jax.Array):
        theta0 = _on_device(theta0)
    # Coordinates in the precision of the manifold's own data, if that is wider.
    dtype = jnp.promote_types(theta0.dtype, start.dtype)
    if theta0.dtype != dtype:
        theta0 = theta0.astype(dtype)
    if theta0.shape != (manifold.dimension,):
        raise InputError(
            f"theta0 has shape {theta0.shape}, the manifold has {manifold.dimension} "
            f"coordinates: expected shape ({manifold.dimension},)."
        )
    if not np.all(np.isfinite(np.asarray(theta0))):
        raise InputError("theta0 contains non-finite values (NaN or inf).")
    if theta0.dtype == jnp.float32 and min(rtol, atol, stationarity) < 1e-6:
        raise InputError(
            "float32 coordinates cannot meet tolerances below float32 precision "
            f"(rtol={rtol}, atol={atol}, stationarity={stationarity}). Enable float64 "
            'first: jax.config.update("jax_enable_x64", True).'
        )
    for name, value in (("rtol", rtol), ("atol", atol), ("stationarity", stationarity)):
        if not value >= 0:
            raise InputError(f"{name} must be >= 0, got {value}.")
    if max_steps < 1:
        raise InputError(f"max_steps must be positive, got {max_steps}.")
    return theta0


def _check_float32(theta0, retractions) -> None:
    if theta0.dtype != jnp.float32:
        return
    for retraction in retractions:
        if max(retraction.atol, retraction.rtol) < 1e-6:
            raise InputError(
                f"float32 coordinates cannot meet the tolerance of {retraction!r}: "
                f"pass e.g. {type(retraction).__name__}(atol=1e-5, rtol=1e-6) as "
                "retraction and initial_retraction, or enable float64."
            )


def _check_counts(*, window, patience, save_every, dt0) -> None:
    for name, value in (("patience", patience), ("save_every", save_every)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}.")
    if window is not None and window < 1:
        raise InputError(f"window must be at least 1, got {window}.")
    if dt0 is not None and not dt0 > 0:
        raise InputError(f"dt0 must be positive, got {dt0}.")


def _output_times(saveat, t0, t1) -> tuple[list[float] | None, float]:
    """The validated output times and the end time (default: the last output time)."""
    if not t1 > t0:
        raise InputError(f"t1 = {t1} must be greater than t0 = {t0}.")
    if saveat is None:
        return None, t1
    times = np.asarray(saveat, dtype=float).reshape(-1)
    if times.size == 0 or not np.all(np.isfinite(times)):
        raise InputError(
            f"saveat must be a non-empty list of finite times, got {saveat}."
        )
    if np.any(np.diff(times) <= 0) or times[0] < t0:
        raise InputError(
            f"saveat must be strictly increasing and >= t0 = {t0}, got {saveat}."
        )
    if math.isinf(t1):
        t1 = float(times[-1])
    if times[-1] > t1:
        raise InputError(f"saveat has times after t1 = {t1}: {times[times > t1]}.")
    return [float(t) for t in times], t1


def _with_stepsize_tolerances(solver, controller):
    """Give an implicit solver's root finder the controller's tolerances where it asks
    for them, as `diffrax.diffeqsolve` does."""
    if not isinstance(solver, diffrax.AbstractImplicitSolver):
        return solver
    names = [
        a
        for a in ("rtol", "atol", "norm")
        if getattr(solver.root_finder, a) is use_stepsize_tol
    ]
    if not names:
        return solver
    if not isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
        raise InputError(
            f"{type(solver).__name__} with a constant step size needs explicit root "
            f"finder tolerances, e.g. {type(solver).__name__}(root_finder="
            "optimistix.Newton(rtol=1e-10, atol=1e-12)); or use an adaptive "
            "stepsize_controller."
        )
    return eqx.tree_at(
        lambda s: tuple(getattr(s.root_finder, a) for a in names),
        solver,
        tuple(getattr(controller, a) for a in names),
    )


def _check_rank(manifold, stops, theta0) -> None:
    """Refuse an initial point where a `ConditionStop` would stop at once."""
    bounds = [stop.max_condition for stop in stops if isinstance(stop, ConditionStop)]
    if not bounds:
        return
    eigenvalues = np.linalg.eigvalsh(np.asarray(_gram(manifold, theta0)))
    if not eigenvalues[0] * min(bounds) > eigenvalues[-1]:
        raise InputError(
            "The Gram matrix J J^T of the constraints is numerically singular at the "
            f"initial point (eigenvalues from {eigenvalues[0]:.3e} to "
            f"{eigenvalues[-1]:.3e}; condition bound {min(bounds):.1e}): repeated or "
            "linearly dependent constraints (e.g. duplicated data points), a singular "
            "point of the manifold, or an activation whose derivative vanishes there. "
            "Remove the dependent constraints, use projector=manifoldflow.SVDProjector(), "
            "or raise the bound with stop=[manifoldflow.ConditionStop(max_condition=...)]."
        )


@persistent_jit
def _gram(manifold, theta):
    return manifold.linearise(theta).gram


def _initialise(integrator, retraction, theta0, t0, t1, dt0):
    dtype = theta0.dtype
    if dt0 is None and not isinstance(
        integrator.controller, diffrax.AbstractAdaptiveStepSizeController
    ):
        raise InputError("A constant step size needs dt0 (the step), got dt0=None.")
    retracted, state, diagnostics = integrator.initialise(
        retraction,
        theta0,
        _on_device(t0, dtype),
        _on_device(t1, dtype),
        None if dt0 is None else _on_device(dt0, dtype),
    )
    if not bool(retracted.converged):
        raise InputError(_retraction_message(retracted, retraction))
    return retracted, state, diagnostics


def _retraction_message(retracted, retraction) -> str:
    failure_message = getattr(retraction, "failure_message", None)
    if failure_message is not None:
        return failure_message(retracted)
    steps, residual = int(retracted.num_steps), float(retracted.residual)
    where = (
        f"max|F| = {residual:.3e} after {steps} steps of {type(retraction).__name__} "
        f"(tolerance {float(retracted.tolerance):.1e})"
    )
    if steps >= retraction.max_steps:
        return (
            f"The retraction of theta0 onto the manifold ran out of steps: {where}. "
            f"Raise initial_retraction={type(retraction).__name__}(max_steps=...) "
            f"(now {retraction.max_steps}), or start closer to the manifold."
        )
    return (
        f"The retraction of theta0 onto the manifold stopped: {where}, and no damped "
        "step decreases max|F| further. No point of the manifold is near theta0, or "
        "the manifold is empty (e.g. identical inputs with different labels: no "
        "model fits both). Start from a point with F(theta0) close to 0."
    )


def _progress_meter(progress, callback) -> AbstractProgressMeter:
    meters = []
    if isinstance(progress, AbstractProgressMeter):
        meters.append(progress)
    elif progress:
        meters.append(TqdmProgressMeter())
    if callback is not None:
        meters.append(CallbackProgressMeter(callback))
    if not meters:
        return NoProgressMeter()
    return meters[0] if len(meters) == 1 else ProgressMeters(tuple(meters))


def _segments(targets: list[float] | None, t1: float) -> list[tuple[float, bool]]:
    """`(end time, save the point there)`: each output time, then on to `t1`."""
    segments = [(t, True) for t in targets or []]
    if not segments or t1 > segments[-1][0]:
        segments.append((t1, False))
    return segments


def _with_result(state: LoopState, result) -> LoopState:
    return eqx.tree_at(lambda s: s.result, state, result)


class _Runner:
    """Runs windows towards each output time; between windows: the step budget, the
    noise-floor policy, the progress meter. Keeps the latest state, so that an
    interrupt returns everything computed so far."""

    def __init__(self, integrator, policy, window, max_steps, trajectory, meter):
        self.integrator, self.policy = integrator, policy
        self.window, self.max_steps = window, max_steps
        self.trajectory, self.meter = trajectory, meter
        self.tightened: list[tuple[float, float, float]] = []
        self.state: LoopState | None = None
        self.meter_state = None
        # The first windows are short (4, 8, 16, ... attempts, with one compiled
        # program): progress shows and Ctrl-C acts early also when steps are slow.
        self.attempts = min(4, window)

    def run(self, state: LoopState, segments, meter_state) -> LoopState:
        """Step to the end time of each `(time, save)` segment in turn; mark the point
        reached as an output when `save`."""
        self.state, self.meter_state = state, meter_state
        for target, save in segments:
            # Compared in the state's dtype: float32(0.7) < 0.7.
            t_end = _on_device(target, state.y.dtype)
            while _running(self.state) and float(self.state.t) < float(t_end):
                self._window(t_end)
            if save and float(self.state.t) == float(t_end):
                self.trajectory.mark_saved()
            if not _running(self.state):
                break
        return self.state

    def _window(self, t_end) -> None:
        state = self.state
        used = int(state.num_accepted) + int(state.num_rejected)
        budget = min(self.attempts, self.max_steps - used)
        self.attempts = min(2 * self.attempts, self.window)
        if budget <= 0:
            self.state = _with_result(state, RESULTS.max_steps_reached)
            return
        state, records = self.integrator.window(
            state, t_end, _on_device(budget), self.window
        )
        self.trajectory.add(records)
        self.state = state
        R, g, _ = self.trajectory.last
        self.meter_state = self.meter.step(
            self.meter_state,
            float(state.t),
            int(state.num_accepted),
            float(R),
            float(g),
        )
        if _running(state) and self.policy.detect(*self.trajectory.history()):
            self._at_noise_floor()

    def _at_noise_floor(self) -> None:
        controller = self.policy.respond(
            self.integrator.controller, len(self.tightened)
        )
        if controller is None:
            self.state = _with_result(self.state, RESULTS.stagnated)
            return
        self.integrator = eqx.tree_at(
            lambda i: i.controller, self.integrator, controller
        )
        self.tightened.append(
            (float(self.state.t), float(controller.rtol), float(controller.atol))
        )
        self.trajectory.reset_history()


def _running(state: LoopState) -> bool:
    return is_result(state.result, RESULTS.successful)


def _on_device(value, dtype=None) -> jax.Array:
    """A host number or array as a JAX array, without staging a program (as
    `jnp.asarray` of a Python scalar and `jnp.array` do, each compiled once per
    process and shape)."""
    return jax.device_put(np.asarray(value, dtype))


def _final_result(state: LoopState) -> RESULTS:
    """Still `successful` after every segment: `t1` was reached."""
    if is_result(state.result, RESULTS.successful):
        return RESULTS.t1_reached
    return state.result


_ADVICE = {
    "max_steps_reached": (
        "Raise max_steps, or pass throw=False to get this partial solution."
    ),
    "stagnated": (
        "|P_T grad R| is at the integrator's noise floor: ask for a stationarity above "
        "the value reached, or use projector=QRProjector() (accuracy kappa(J) "
        "instead of kappa(J)^2); if you believe the flow is merely slow, raise "
        "patience or pass noise_floor=IgnoreNoiseFloor()."
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
        "Take smaller steps (lower rtol/atol or dt0), or give the retraction more "
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


def _failure_message(solution: FlowSolution, integrator: Integrator) -> str:
    R, g, violation = (
        solution.sharpness[-1],
        solution.gradient_norm[-1],
        solution.constraint_violation[-1],
    )
    gram = np.asarray(_gram(integrator.flow.manifold, _on_device(solution.theta_final)))
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
