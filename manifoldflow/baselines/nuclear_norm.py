r"""The minimum-nuclear-norm interpolant, the convex program the matrix-sensing flows
are compared with (`manifoldflow.models.FactorisedSensingModel`)."""

import numpy as np
from jaxtyping import ArrayLike


def minimum_nuclear_norm(A: ArrayLike, y: ArrayLike, tol: float = 1e-8):
    r"""$\arg\min\{\|X\|_* : \langle X, A_i\rangle = y_i\}$ by cvxpy (Clarabel).
    Returns `(X, optimum, status)`; raises `ImportError` without cvxpy (install
    `manifoldflow[convex]`)."""
    import cvxpy as cp

    A, y = np.asarray(A, float), np.asarray(y, float)
    n, d, _ = A.shape
    X = cp.Variable((d, d))
    constraints = [A.reshape(n, d * d) @ cp.vec(X, order="C") == y]
    problem = cp.Problem(cp.Minimize(cp.normNuc(X)), constraints)
    problem.solve(solver="CLARABEL", tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol)
    value = None if X.value is None else np.asarray(X.value)
    optimum = None if problem.value is None else float(problem.value)
    return value, optimum, str(problem.status)
