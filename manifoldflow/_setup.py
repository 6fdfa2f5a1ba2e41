"""The configuration of one solve: the flow, the projected solver and the policies
with the defaults of `solve_flow`, numbers entering the compiled loop as arrays (new
values compile nothing). Shared by `flow_solve`, `solve_flow` and `solve_flows`."""

import diffrax
import equinox as eqx
import jax

from ._flow import SharpnessFlow
from ._implicit import matrix_free_implicit, with_stepsize_tolerances
from ._loop import Integrator
from ._projection import CholeskyProjector, QRProjector
from ._solver import ProjectedSolver
from ._stop import ConditionStop, StationarityStop
from ._validate import on_device


def build_integrator(
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
    progress_meter=diffrax.NoProgressMeter(),
    records=None,
) -> Integrator:
    """The flow, the projected solver and the policies of one solve, with the
    defaults of `solve_flow`. Numbers enter as arrays."""
    controller = with_array_tolerances(stepsize_controller, dtype)
    if stop is None:  # the condition stop costs one Cholesky of J J^T per step
        forms_gram = isinstance(projector, (CholeskyProjector, QRProjector))
        stop = (ConditionStop(),) if forms_gram else ()
    stops = (StationarityStop(as_array(stationarity, dtype)), *stop)
    flow = SharpnessFlow(manifold, projector, as_array(constant, dtype))
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


def as_array(value, dtype):
    """A number as an array of `dtype`: without staging a program for a host value,
    unchanged (but cast) for a traced one."""
    if isinstance(value, jax.Array):
        return value.astype(dtype)
    return on_device(value, dtype)


def with_array_tolerances(controller, dtype):
    """A PID controller's `rtol` and `atol` as arrays: new values compile nothing, and
    the noise-floor policy can tighten them inside the loop."""
    if not isinstance(controller, diffrax.PIDController):
        return controller
    return eqx.tree_at(
        lambda c: (c.rtol, c.atol),
        controller,
        (as_array(controller.rtol, dtype), as_array(controller.atol, dtype)),
    )
