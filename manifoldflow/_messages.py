"""What a failed or over-budget `solve_flow` says: the cause, the point reached and
the advice that names the fix."""

import math

import numpy as np

from ._loop import Integrator
from ._solution import FlowSolution
from ._validate import gram_matrix, on_device


ADVICE = {
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


def budget_message(solution: FlowSolution) -> str:
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


def failure_message(solution: FlowSolution, integrator: Integrator) -> str:
    R, g, violation = (
        solution.sharpness[-1],
        solution.gradient_norm[-1],
        solution.constraint_violation[-1],
    )
    gram = np.asarray(
        gram_matrix(integrator.flow.manifold, on_device(solution.theta_final))
    )
    eigenvalues = np.linalg.eigvalsh(gram)
    condition = eigenvalues[-1] / eigenvalues[0] if eigenvalues[0] > 0 else math.inf
    advice = ADVICE.get(solution.result_name, "")
    return (
        f"solve_flow ended without stationarity: {solution.message.rstrip('.')}. "
        "It got to "
        f"t = {solution.t_final:.6g} after {solution.num_steps} accepted steps "
        f"({solution.num_rejected_steps} rejected), with |P_T grad R| = {g:.3e} "
        f"(threshold {solution.stationarity:g}), R = {R:.12g}, "
        f"max|F| = {violation:.1e}, "
        f"Gram condition number {condition:.2e}. {advice}"
    )
