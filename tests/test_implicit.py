"""Implicit diffrax solvers on the flow: the matrix-free Newton--Krylov root finder
(no dense D x D matrix anywhere in the step), agreement with Dopri8, and the
matrix-free manifold."""

import diffrax
import jax
import jax.numpy as jnp
import lineax as lx
import manifoldflow as mf
import numpy as np
import optimistix as optx
import pytest
from manifoldflow._implicit import matrix_free_implicit, with_stepsize_tolerances

from .helpers import mlp_problem, point_on


def _manifold(matrix_free=False):
    model, X, y = mlp_problem(n=3, seed=1)
    return mf.ZeroLossManifold(model, X, y, matrix_free=matrix_free)


def _step_jaxpr(solver, manifold, theta):
    projected = mf.ProjectedSolver(solver, manifold)
    term = diffrax.ODETerm(mf.SharpnessFlow(manifold))
    t0, t1 = jnp.array(0.0), jnp.array(0.1)
    state = projected.init(term, t0, t1, theta, None)
    step = lambda y: projected.step(term, t0, t1, y, None, state, False)[0]
    return str(jax.make_jaxpr(step)(theta))


def test_default_implicit_root_finder_becomes_newton_krylov():
    solver = matrix_free_implicit(diffrax.Kvaerno5())
    assert isinstance(solver.root_finder.linear_solver, lx.GMRES)
    # A root finder the user chose is kept; explicit solvers are untouched.
    own = diffrax.Kvaerno5(root_finder=mf.newton_krylov(restart=7))
    assert matrix_free_implicit(own) is own
    # Also one with lineax's dense default: its algorithm and tolerances are the
    # user's.
    chord = diffrax.Kvaerno5(root_finder=optx.Chord(rtol=1e-8, atol=1e-9))
    assert matrix_free_implicit(chord) is chord
    explicit = diffrax.Dopri8()
    assert matrix_free_implicit(explicit) is explicit
    with pytest.raises(mf.InputError, match="restart"):
        mf.newton_krylov(restart=0)


def test_newton_krylov_step_forms_no_dense_jacobian():
    manifold = _manifold()
    theta = point_on(manifold)
    D = theta.shape[0]
    square = f"f64[{D},{D}]"
    newton_krylov = matrix_free_implicit(diffrax.Kvaerno5())
    newton_krylov = _step_jaxpr(_with_tolerances(newton_krylov), manifold, theta)
    dense = _step_jaxpr(_with_tolerances(diffrax.Kvaerno5()), manifold, theta)
    # The control: diffrax's default root finder factors the D x D Jacobian.
    assert square in dense
    assert square not in newton_krylov


def _with_tolerances(solver):
    controller = diffrax.PIDController(rtol=1e-8, atol=1e-10)
    return with_stepsize_tolerances(solver, controller)


def test_kvaerno_newton_krylov_agrees_with_dopri8():
    controller = diffrax.PIDController(rtol=1e-9, atol=1e-11)
    runs = {
        name: mf.solve_flow(
            _manifold(matrix_free),
            t1=1.0,
            solver=solver,
            stepsize_controller=controller,
        )
        for name, matrix_free, solver in (
            ("dopri8", False, diffrax.Dopri8()),
            ("kv5", False, diffrax.Kvaerno5()),
            ("kv5 matrix-free", True, diffrax.Kvaerno5()),
        )
    }
    reference = runs["dopri8"]
    scale = np.abs(reference.theta_final - reference.ys[0]).max()
    assert scale > 1e-2  # the flow moves: agreement below is not trivial
    manifold = _manifold()
    R = float(manifold.sharpness(jnp.asarray(reference.theta_final)))
    for name, solution in runs.items():
        assert solution.result == mf.RESULTS.t1_reached, name
        assert solution.summary()["constraint_violation_max"] < 1e-12, name
        # Both to ~1e-9 local accuracy over a few dozen steps: the end points agree
        # far below the distance travelled, and R to ~1e-7 relative.
        drift = np.abs(solution.theta_final - reference.theta_final).max()
        assert drift < 1e-6, (name, drift)
        R_here = float(manifold.sharpness(jnp.asarray(solution.theta_final)))
        assert abs(R_here - R) < 1e-7 * abs(R), name
