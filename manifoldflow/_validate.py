"""Checks of the drivers' input (`solve_flow`, `solve_flows`, `flow_solve`): each
bad value an `InputError` that names it and the fix, before any work where it can
be known, and the messages of a start that cannot be used."""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import InputError
from ._geometry import pytree_coordinates
from ._stop import ConditionStop


def validated(
    manifold,
    theta0,
    *,
    solver,
    stepsize_controller,
    retractions,
    stationarity,
    max_steps,
    window,
    save_every,
    max_states,
    saveat,
    t0,
    t1,
    dt0,
):
    """`(theta0, output times, t1)` after every check of `solve_flow`'s input."""
    for name, value, family, example in (
        ("solver", solver, diffrax.AbstractSolver, "diffrax.Dopri8()"),
        (
            "stepsize_controller",
            stepsize_controller,
            diffrax.AbstractStepSizeController,
            "diffrax.PIDController(rtol=1e-10, atol=1e-12)",
        ),
    ):
        if not isinstance(value, family):
            raise InputError(
                f"{name} must be a diffrax.{family.__name__[8:]}, got {value!r}.",
                fix=f"Pass e.g. {name}={example}.",
                parameter=name,
            )
    rtol, atol = tolerances(stepsize_controller)
    if rtol == 0 and atol == 0:
        raise InputError(
            "stepsize_controller has rtol = atol = 0: no step can meet that "
            "tolerance, and the solve would run to max_steps.",
            fix="Use e.g. diffrax.PIDController(rtol=1e-10, atol=1e-12).",
            parameter="stepsize_controller",
        )
    theta0 = check_inputs(manifold, theta0, rtol, atol, stationarity, max_steps)
    check_float32(theta0, retractions)
    check_counts(window=window, save_every=save_every, dt0=dt0)
    if max_states is not None and not (
        isinstance(max_states, (int, np.integer)) and max_states >= 2
    ):
        raise InputError(
            f"max_states must be an integer of at least 2 (the first and the last "
            f"state), got {max_states!r}.",
            parameter="max_states",
        )
    if saveat is not None and save_every != 1:
        raise InputError(
            "save_every thins the default output; with saveat leave it 1.",
            parameter="save_every",
        )
    if dt0 is None and not isinstance(
        stepsize_controller, diffrax.AbstractAdaptiveStepSizeController
    ):
        raise InputError(
            "A constant step size needs dt0 (the step), got dt0=None.", parameter="dt0"
        )
    return (theta0, *output_times(saveat, t0, t1))



def tolerances(controller) -> tuple[float, float]:
    """`(rtol, atol)` of a concrete PID controller, else `(inf, inf)`."""
    if isinstance(controller, diffrax.PIDController):
        return float(controller.rtol), float(controller.atol)
    return math.inf, math.inf


def check_inputs(manifold, theta0, rtol, atol, stationarity, max_steps):
    start = manifold.initial_point()
    if theta0 is None:
        theta0 = start
    elif not isinstance(theta0, jax.Array):
        theta0 = coordinates(manifold, theta0)
    # Coordinates in the precision of the manifold's own data, if that is wider.
    dtype = jnp.promote_types(theta0.dtype, start.dtype)
    if theta0.dtype != dtype:
        theta0 = theta0.astype(dtype)
    check_shape(manifold, theta0)
    if not np.all(np.isfinite(np.asarray(theta0))):
        raise InputError(
            "theta0 contains non-finite values (NaN or inf).", parameter="theta0"
        )
    if theta0.dtype == jnp.float32 and min(rtol, atol, stationarity) < 1e-6:
        raise InputError(
            "float32 coordinates cannot meet tolerances below float32 precision "
            f"(rtol={rtol}, atol={atol}, stationarity={stationarity}). Enable float64 "
            'first: jax.config.update("jax_enable_x64", True).',
            parameter="stepsize_controller",
        )
    for name, value in (("rtol", rtol), ("atol", atol), ("stationarity", stationarity)):
        if not value >= 0:
            raise InputError(f"{name} must be >= 0, got {value}.", parameter=name)
    check_integer("max_steps", max_steps, 1)
    return theta0


def coordinates(manifold, theta0) -> jax.Array:
    """`theta0` as an array: arrays as they are, anything else by
    `pytree_coordinates` (a pytree of the model's structure, or numbers)."""
    if isinstance(theta0, (np.ndarray, jax.Array, float, int)):
        return on_device(theta0)
    return pytree_coordinates(manifold, theta0)


def check_integer(name: str, value, minimum: int) -> None:
    """`value` is an integer (not a bool, not a float such as 10.5) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__}).",
            fix=f"Pass a Python int, e.g. {name}={_integer_example(value, minimum)}.",
            parameter=name,
        )
    if value < minimum:
        raise InputError(
            f"{name} must be at least {minimum}, got {value}.", parameter=name
        )


def _integer_example(value, minimum: int) -> int:
    if isinstance(value, float) and math.isfinite(value) and value >= minimum:
        return int(value)
    return max(minimum, 1)


def _concrete(value):
    """`value` as a NumPy array if it is known before tracing, else `None`."""
    if value is None or isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def check_concrete_numbers(*, t0, t1, constant, theta0=None) -> None:
    """The checks of `t0`, `t1`, `constant` and `theta0` that can be made before
    tracing (those that are traced are checked in the program)."""
    c = _concrete(constant)
    if c is not None and not (np.all(np.isfinite(c)) and np.all(c > 0)):
        raise InputError(
            f"constant must be positive and finite, got {constant}: it scales the "
            "flow's time (c = sigma^2 / (2 n) for label-noise GD), and c <= 0 would "
            "run the flow backwards or not at all.",
            fix="Pass e.g. constant=1.0, or loss.label_noise_constant(sigma, n).",
            parameter="constant",
        )
    start, end = _concrete(t0), _concrete(t1)
    if start is not None and not np.all(np.isfinite(start)):
        raise InputError(f"t0 must be finite, got {t0}.", parameter="t0")
    if start is not None and end is not None and not np.all(end > start):
        raise InputError(
            f"t1 = {t1} must be greater than t0 = {t0}: the flow runs forward in time.",
            parameter="t1",
        )
    theta = _concrete(theta0)
    if theta is not None and not np.all(np.isfinite(theta)):
        raise InputError(
            "theta0 contains non-finite values (NaN or inf).", parameter="theta0"
        )


def check_shape(manifold, theta0) -> None:
    """`theta0` has one entry per coordinate of the manifold (checked at trace time
    too: shapes are static)."""
    if theta0.shape != (manifold.dimension,):
        raise InputError(
            f"theta0 has shape {theta0.shape}, the manifold has {manifold.dimension} "
            f"coordinates: expected shape ({manifold.dimension},).",
            parameter="theta0",
        )


def check_float32(theta0, retractions) -> None:
    if theta0.dtype != jnp.float32:
        return
    for retraction in retractions:
        if max(retraction.atol, retraction.rtol) < 1e-6:
            raise InputError(
                f"float32 coordinates cannot meet the tolerance of {retraction!r}: "
                f"pass e.g. {type(retraction).__name__}(atol=1e-5, rtol=1e-6) as "
                "retraction and initial_retraction, or enable float64.",
                parameter="retraction",
            )


def check_counts(*, window, save_every, dt0) -> None:
    check_integer("save_every", save_every, 1)
    if window is not None:
        check_integer("window", window, 1)
    if dt0 is not None and not dt0 > 0:
        raise InputError(f"dt0 must be positive, got {dt0}.", parameter="dt0")


def output_times(saveat, t0, t1) -> tuple[list[float] | None, float]:
    """The validated output times and the end time (default: the last output time)."""
    if not t1 > t0:
        raise InputError(f"t1 = {t1} must be greater than t0 = {t0}.", parameter="t1")
    if saveat is None:
        return None, t1
    times = np.asarray(saveat, dtype=float).reshape(-1)
    if times.size == 0 or not np.all(np.isfinite(times)):
        raise InputError(
            f"saveat must be a non-empty list of finite times, got {saveat}.",
            parameter="saveat",
        )
    if np.any(np.diff(times) <= 0) or times[0] < t0:
        raise InputError(
            f"saveat must be strictly increasing and >= t0 = {t0}, got {saveat}.",
            parameter="saveat",
        )
    if math.isinf(t1):
        t1 = float(times[-1])
    if times[-1] > t1:
        raise InputError(
            f"saveat has times after t1 = {t1}: {times[times > t1]}.",
            parameter="saveat",
        )
    return [float(t) for t in times], t1


NOT_FINITE = (
    "The model's gradients at the data are not finite (NaN or inf) at theta0: the "
    "model evaluates to NaN or inf there, or its derivative does (e.g. log or sqrt "
    "of a non-positive number, an overflow). Check the model and its parameters at "
    "theta0, e.g. jax.vmap(model)(X)."
)


def check_rank(manifold, stops, theta0) -> None:
    """Refuse an initial point where a `ConditionStop` would stop at once."""
    bounds = [stop.max_condition for stop in stops if isinstance(stop, ConditionStop)]
    if not bounds:
        return
    gram = np.asarray(gram_matrix(manifold, theta0))
    if not np.all(np.isfinite(gram)):
        raise InputError(NOT_FINITE, parameter="theta0")
    eigenvalues = np.linalg.eigvalsh(gram)
    if not eigenvalues[0] * min(bounds) > eigenvalues[-1]:
        raise InputError(
            "The Gram matrix J J^T of the constraints is numerically singular at the "
            f"initial point (eigenvalues from {eigenvalues[0]:.3e} to "
            f"{eigenvalues[-1]:.3e}; condition bound {min(bounds):.1e}): repeated or "
            "linearly dependent constraints (e.g. duplicated data points), a singular "
            "point of the manifold, or an activation whose derivative vanishes there.",
            fix="Remove the dependent constraints, use "
            "projector=manifoldflow.SVDProjector(), or raise the bound with "
            "stop=[manifoldflow.ConditionStop(max_condition=...)].",
            parameter="projector",
        )


@eqx.filter_jit
def gram_matrix(manifold, theta):
    return manifold.linearise(theta).gram


_NEAR_MISS = 100.0
"""A retraction that stalls within this factor of its tolerance is stopped by the
rounding of F, not by the absence of a nearby point of the manifold."""


def retraction_error(retracted, retraction) -> InputError:
    if not math.isfinite(float(retracted.residual)):
        return InputError(
            "The retraction of theta0 onto the manifold reached non-finite values. "
            + NOT_FINITE.replace("at theta0", "at theta0 or near it"),
            parameter="theta0",
        )
    failure_message = getattr(retraction, "failure_message", None)
    if failure_message is not None:
        return InputError(failure_message(retracted), parameter="initial_retraction")
    steps, residual = int(retracted.num_steps), float(retracted.residual)
    where = (
        f"max|F| = {residual:.3e} after {steps} steps of {type(retraction).__name__} "
        f"(tolerance {float(retracted.tolerance):.1e})"
    )
    if steps >= retraction.max_steps:
        return InputError(
            f"The retraction of theta0 onto the manifold ran out of steps: {where}.",
            fix=f"Raise initial_retraction={type(retraction).__name__}(max_steps=...) "
            f"(now {retraction.max_steps}), or start closer to the manifold.",
            parameter="initial_retraction",
        )
    tolerance = float(retracted.tolerance)
    if residual <= _NEAR_MISS * tolerance:
        return InputError(
            f"The retraction of theta0 onto the manifold stopped just short of its "
            f"tolerance: {where}, and no damped step decreases max|F| further. That is "
            "the rounding error of evaluating F there, not a missing manifold: F is "
            "computed from terms much larger than itself (e.g. activations of size "
            "1e3 that cancel), and its rounding, about epsilon times their size, is "
            "above the tolerance.",
            fix="Loosen the retractions' tolerance to what rounding allows, e.g. "
            f"initial_retraction={type(retraction).__name__}(atol={10 * residual:.0e}) "
            f"and retraction=ChordRetraction(atol={10 * residual:.0e}), or rescale the "
            "model or the data so that its terms are of order 1.",
            parameter="initial_retraction",
        )
    return InputError(
        f"The retraction of theta0 onto the manifold stopped: {where}, and no damped "
        "step decreases max|F| further. No point of the manifold is near theta0, or "
        "the manifold is empty (e.g. identical inputs with different labels: no "
        "model fits both).",
        fix="Start from a point with F(theta0) close to 0.",
        parameter="theta0",
    )



def on_device(value, dtype=None) -> jax.Array:
    """A host number or array as a JAX array, without staging a program (as
    `jnp.asarray` of a Python scalar does, compiled once per process and shape)."""
    return jax.device_put(np.asarray(value, dtype))
