r"""diffrax's implicit solvers on the sharpness flow: a matrix-free Newton--Krylov root
finder, and the controller's tolerances handed to root finders that ask for them.

Far into a flow on a real model the flow is stiff: the Riemannian Hessian of $R$
spans several decades, explicit solvers sit at their stability limit
$h \approx 6/(c\lambda_{\max})$ whatever the tolerance, and an L-stable implicit
solver (`diffrax.Kvaerno5`) can take steps set by accuracy on the slow modes alone.
diffrax's default root finder solves each stage's Newton system with a dense LU of
the $D\times D$ Jacobian (materialised by $D$ Jacobian-vector products); here each
Newton step is a GMRES solve on Jacobian-vector products of the vector field, whose
tangent block is $-c\operatorname{Hess}R$ and whose normal blocks come with it
exactly (`jax.linearize`). No $D \times D$ matrix is formed, so the same solver runs
on matrix-free manifolds.
"""

import diffrax
import equinox as eqx
import lineax as lx
import optimistix as optx

from ._errors import InputError

_USE_STEPSIZE_TOL = diffrax.with_stepsize_controller_tols(optx.Newton)().rtol


def newton_krylov(
    *,
    linear_rtol: float = 1e-3,
    linear_atol: float = 1e-12,
    restart: int = 20,
    max_linear_steps: int = 400,
) -> optx.AbstractRootFinder:
    r"""A matrix-free Newton--Krylov root finder for diffrax's implicit solvers:
    `diffrax.Kvaerno5(root_finder=newton_krylov())`.

    Newton's method (`optimistix.Newton`, relinearised at every iterate) with the
    step's tolerances taken from the flow's step-size controller, each Newton system
    $(I - \gamma h\,\partial v)\,\delta = r$ solved inexactly by restarted GMRES
    (`lineax.GMRES`) on Jacobian-vector products: to `linear_rtol` relative to the
    Newton residual (inexact Newton: the outer iteration absorbs the rest), with an
    absolute floor `linear_atol`.

    [`manifoldflow.solve_flow`][] (and the other drivers) give an implicit solver
    with diffrax's default root finder (a dense LU of the Jacobian) this root finder
    instead; a root finder you pass is kept as it is.

    **Arguments:** `linear_rtol`, `linear_atol` (GMRES tolerances), `restart` (the
    Krylov subspace size between restarts), `max_linear_steps` (GMRES iterations
    allowed; beyond them the Newton step fails and the controller retries the step
    shorter).
    """
    for name, value in (("linear_rtol", linear_rtol), ("linear_atol", linear_atol)):
        if isinstance(value, bool) or not isinstance(value, float | int) or value < 0:
            raise InputError(f"{name} must be a number >= 0, got {value!r}.")
    if linear_rtol == 0 and linear_atol == 0:
        raise InputError("linear_rtol and linear_atol cannot both be 0.")
    for name, value in (("restart", restart), ("max_linear_steps", max_linear_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value!r}.")
    gmres = lx.GMRES(
        rtol=linear_rtol,
        atol=linear_atol,
        restart=restart,
        stagnation_iters=restart,
        max_steps=max_linear_steps,
    )
    return diffrax.with_stepsize_controller_tols(optx.Newton)(linear_solver=gmres)


def _is_diffrax_default(root_finder) -> bool:
    """Whether `root_finder` is diffrax's default for its implicit solvers (VeryChord
    with the controller's tolerances and lineax's dense `AutoLinearSolver`), not one
    a user chose."""
    default = diffrax.Kvaerno5().root_finder
    return (
        type(root_finder) is type(default)
        and getattr(root_finder, "rtol", None) is _USE_STEPSIZE_TOL
        and getattr(root_finder, "atol", None) is _USE_STEPSIZE_TOL
        and isinstance(getattr(root_finder, "linear_solver", None), lx.AutoLinearSolver)
    )


def matrix_free_implicit(solver: diffrax.AbstractSolver) -> diffrax.AbstractSolver:
    """`solver` with [`manifoldflow.newton_krylov`][] as its root finder if it is an
    implicit solver with diffrax's default root finder (which would factor a dense
    Jacobian); any other solver, and any root finder a user passed, unchanged (give
    it `linear_solver=lineax.GMRES(...)` to make it matrix-free)."""
    if not isinstance(solver, diffrax.AbstractImplicitSolver):
        return solver
    if not _is_diffrax_default(solver.root_finder):
        return solver
    return eqx.tree_at(lambda s: s.root_finder, solver, newton_krylov())


def with_stepsize_tolerances(solver, controller):
    """Give an implicit solver's root finder the controller's tolerances where it asks
    for them (`diffrax.with_stepsize_controller_tols`), as `diffeqsolve` does."""
    if not isinstance(solver, diffrax.AbstractImplicitSolver):
        return solver
    names = [
        a
        for a in ("rtol", "atol", "norm")
        if getattr(solver.root_finder, a, None) is _USE_STEPSIZE_TOL
    ]
    if not names:
        return solver
    if not isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
        raise InputError(
            f"{type(solver).__name__} with a constant step size needs explicit root "
            f"finder tolerances, e.g. {type(solver).__name__}(root_finder="
            "optimistix.Newton(rtol=1e-10, atol=1e-12, linear_solver=lineax.GMRES("
            "rtol=1e-3, atol=1e-12))); or use an adaptive stepsize_controller.",
            parameter="solver",
        )
    return eqx.tree_at(
        lambda s: tuple(getattr(s.root_finder, a) for a in names),
        solver,
        tuple(getattr(controller, a) for a in names),
    )
