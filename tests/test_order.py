"""Empirical order of the explicit solvers with a retraction after every step: the
projection does not lower the order (the issue's "order test")."""

import diffrax
import equinox as eqx
import manifoldflow as mf
import numpy as np
import pytest

from .helpers import two_layer_problem


T = 2.0
# (solver, order, step counts): counts where the error is in its asymptotic range,
# above the reference's and the retraction's 1e-13 and below O(1).
CASES = [
    (diffrax.Euler(), 1, [64, 128, 256]),
    (diffrax.Heun(), 2, [16, 32, 64]),
    (diffrax.Bosh3(), 3, [8, 16, 32]),
    (diffrax.Tsit5(), 5, [16, 24, 32]),
    (diffrax.Dopri5(), 5, [16, 24, 32]),
    (diffrax.Dopri8(), 8, [6, 8, 10]),
]


@pytest.fixture(scope="module")
def problem():
    _, _, _, _, manifold = two_layer_problem(m=4, n=3, d=6)
    reference = mf.solve_flow(
        manifold,
        saveat=[T],
        stepsize_controller=diffrax.PIDController(rtol=1e-14, atol=1e-15),
        stationarity=0.0,
    ).ys[-1]
    return manifold, reference


@eqx.filter_jit
def _end(manifold, solver, steps, project):
    solver = mf.ProjectedSolver(solver, manifold) if project else solver
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(mf.SharpnessFlow(manifold)),
        solver,
        0.0,
        T,
        T / steps,
        manifold.initial_point(),
        stepsize_controller=diffrax.ConstantStepSize(),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=1024,
    )
    return solution.ys[-1]


def _slope(manifold, reference, solver, counts, project):
    errors = [
        float(
            np.linalg.norm(np.asarray(_end(manifold, solver, n, project)) - reference)
        )
        for n in counts
    ]
    return np.polyfit(np.log(T / np.asarray(counts)), np.log(errors), 1)[0]


@pytest.mark.parametrize("solver,order,counts", CASES, ids=lambda c: str(c)[:12])
def test_projection_keeps_the_order(problem, solver, order, counts):
    manifold, reference = problem
    projected = _slope(manifold, reference, solver, counts, True)
    plain = _slope(manifold, reference, solver, counts, False)
    # At least the nominal order (higher where the next term still dominates), and
    # the same slope as without projection over the same steps.
    assert projected >= order - 0.5, (projected, plain)
    assert abs(projected - plain) <= 0.5, (projected, plain)


@pytest.mark.parametrize(
    "solver", [diffrax.Tsit5(), diffrax.Dopri5(), diffrax.Dopri8()], ids=str
)
def test_dense_output_ends_on_the_manifold(problem, solver):
    # Tsit5's and Dopri8's interpolants are built from the stages alone: without the
    # retraction's correction, output at a step end is the unprojected y1 (|F| ~ the
    # local error, ~1e-7 at rtol 1e-4).
    manifold, _ = problem
    ts = np.linspace(0.0, T, 5)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(mf.SharpnessFlow(manifold)),
        mf.ProjectedSolver(solver, manifold),
        0.0,
        T,
        None,
        manifold.initial_point(),
        stepsize_controller=diffrax.ClipStepSizeController(
            diffrax.PIDController(rtol=1e-4, atol=1e-6), step_ts=ts
        ),
        saveat=diffrax.SaveAt(ts=ts, dense=True),
    )
    F = np.asarray(eqx.filter_vmap(manifold.constraint)(solution.ys))
    assert np.max(np.abs(F)) <= 1e-12
    # The dense interpolant is continuous and passes through the saved points.
    dense = np.stack([np.asarray(solution.evaluate(t)) for t in ts[1:]])
    np.testing.assert_allclose(dense, np.asarray(solution.ys)[1:], atol=1e-13)
    middle = 0.5 * (ts[1] + ts[2])
    assert (
        np.max(np.abs(np.asarray(manifold.constraint(solution.evaluate(middle)))))
        < 1e-4
    )
