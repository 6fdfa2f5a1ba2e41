"""Numerical checks that every experiment makes of a [`manifoldflow.FlowSolution`][]."""

import numpy as np

from .._solution import FlowSolution
from ._report import Check


def check_stationarity(solution: FlowSolution) -> Check:
    r"""The final $\|P_T\nabla R\|$ is at most the requested `stationarity`.

    **Arguments:** `solution`, a [`manifoldflow.FlowSolution`][].

    **Returns:** a [`manifoldflow.theory.Check`][] named `"stationarity"`.
    """
    return Check.compare(
        "stationarity",
        "|P_T grad R| at the last step, at most the stationarity threshold the solve "
        "was asked to reach",
        solution.gradient_norm[-1],
        upper=solution.stationarity,
    )


def check_constraint(solution: FlowSolution, tolerance: float) -> Check:
    r"""The constraint $F = 0$ held along the whole trajectory:
    $\max_t \max_i |F_i(\theta(t))| \le$ `tolerance`.

    **Arguments:** `solution`, a [`manifoldflow.FlowSolution`][]; `tolerance`, the
    largest acceptable residual (e.g. the retraction's tolerance).

    **Returns:** a [`manifoldflow.theory.Check`][] named `"constraint"`.
    """
    return Check.compare(
        "constraint",
        "max|F| = max_i |f(x_i) - y_i| over every step of the trajectory, 0 on the "
        "zero-loss manifold up to the retraction tolerance",
        np.max(solution.constraint_violation),
        prediction=0.0,
        upper=tolerance,
    )
