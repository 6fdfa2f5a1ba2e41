"""How a flow solve ended: an enumeration that extends `diffrax.RESULTS`."""

import diffrax
import numpy as np


class RESULTS(diffrax.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """How [`manifoldflow.solve_flow`][] ended. Each value is its user-facing message.

    Extends `diffrax.RESULTS` (and through it optimistix's and lineax's), so a failure
    inside a step keeps its cause: `RESULTS.promote(diffrax_result)` maps any of
    them here. `stationary` is success; `t1_reached`, `interrupted` and
    `max_steps_reached` end a solve without failing it.

    **Items:** `stationary`, `t1_reached`, `max_steps_reached` (from diffrax),
    `interrupted`, `stagnated` (the noise floor), `ill_conditioned` ($JJ^\top$
    numerically singular), `initial_retraction_failed`, `retraction_failed`,
    `projection_failed`, `step_failure` (non-finite values), `step_size_collapsed`,
    `minimum_at_infinity` and `no_progress` (of [`manifoldflow.minimise_sharpness`][]),
    `invalid_input` (of [`manifoldflow.flow_solve`][], for traced input it could not
    check before tracing),
    and the failures of diffrax, optimistix and lineax it extends. Compare with them
    (`solution.result == RESULTS.stationary`); `result_name(result)` gives the name.
    """

    stationary = "stationary: |P_T grad R| reached the stationarity threshold"
    t1_reached = "reached t1 (|P_T grad R| still above the stationarity threshold)"
    interrupted = (
        "interrupted (KeyboardInterrupt): the solution holds what was computed"
    )
    step_failure = (
        "a step reached non-finite values (NaN or inf): the model, its gradient or "
        "the sharpness is not finite there (with an adaptive step size, also not "
        "after shrinking the step)"
    )
    stagnated = (
        "stagnated: |P_T grad R| stopped decreasing while R stayed constant to within "
        "its rounding noise (the integrator's noise floor), and the noise-floor "
        "policy allowed no further tightening"
    )
    ill_conditioned = (
        "ill-conditioned: the Gram matrix J J^T became numerically singular (the "
        "manifold is close to a singular point, or constraints became dependent)"
    )
    initial_retraction_failed = (
        "the initial point could not be retracted onto the manifold"
    )
    retraction_failed = (
        "the retraction onto the manifold did not converge after a step (with a "
        "constant step size the step cannot be retried smaller)"
    )
    projection_failed = (
        "the linear solve of the tangent projection failed (e.g. CG reached its "
        "iteration cap, or the Gram matrix is singular)"
    )
    minimum_at_infinity = (
        "minimum at infinity likely: R kept falling while |theta| grew steadily and "
        "|P_T grad R| did not converge (the infimum of R on the manifold is "
        "approached as |theta| -> infinity; see the solution's trend)"
    )
    no_progress = (
        "no progress: the optimiser's step (trust-region radius or line-search step) "
        "shrank to rounding without decreasing R, with |P_T grad R| still above the "
        "gradient tolerance (the tolerance is below what R's rounding allows, or the "
        "Hessian products are inaccurate)"
    )
    step_size_collapsed = (
        "the step size collapsed: time stopped advancing although steps were accepted "
        "or kept being rejected"
    )
    invalid_input = (
        "invalid input, nothing solved: t1 <= t0, a constant c <= 0 or not finite, or "
        "a theta0 that is not finite (flow_solve checks traced values in the program; "
        "solve_flow refuses them before solving)"
    )


RESULTS.__module__ = "manifoldflow"  # its public name, in reprs


def result_name(result: RESULTS) -> str:
    """The name of a (concrete, non-traced) result, e.g. `"stationary"`."""
    value = int(result._value)
    for name, item in RESULTS._name_to_item.items():
        if int(item._value) == value:
            return name
    raise ValueError(f"{result!r} is not a concrete manifoldflow.RESULTS item.")


def is_result(result, item) -> bool:
    """`result == item` for a concrete (not traced) result, compared on the host:
    `==` on enumeration items is an eager JAX operation, staged and compiled once per
    process."""
    value = getattr(result, "_value", None)
    if value is None or getattr(item, "_value", None) is None:
        return bool(result == item)
    return int(np.asarray(value)) == int(np.asarray(item._value))
