"""Numerical checks that every experiment makes of a [`manifoldflow.FlowSolution`][]."""

from collections import Counter
from collections.abc import Mapping, Sequence

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


def check_ending(
    solutions: FlowSolution | Sequence[FlowSolution],
    accepted: Mapping[str, str],
    refused: Mapping[str, str] | None = None,
    *,
    name: str = "ending",
    what: str = "the solve",
) -> Check:
    r"""How the solves ended, and whether each ending is accepted here, and why.

    **Arguments:**

    - `solutions`: one [`manifoldflow.FlowSolution`][] or several (one per start).
    - `accepted`: the endings (result names, e.g. `"stationary"`) the experiment
      accepts, each with the reason it is accepted (what makes the end point
      trustworthy for the claims checked).
    - `refused`: optionally, why particular other endings are not accepted (by
      default the solution's own message says how it ended).
    - `name`, `what`: the check's name and what ended (for the claim).

    **Returns:** a [`manifoldflow.theory.Check`][] named `name`: the number of
    solves whose ending is not accepted, at most 0. Its note says, for each ending,
    why it is or is not accepted, and when the noise-floor policy tightened the
    tolerances.
    """
    if isinstance(solutions, FlowSolution):
        solutions = [solutions]
    endings = [s.result_name for s in solutions]
    counts = Counter(endings)
    ended = ", ".join(
        ending if count == 1 else f"{ending} ({count} solves)"
        for ending, count in counts.items()
    )
    reasons = []
    for ending in counts:
        if ending in accepted:
            reasons.append(f"{ending} is accepted: {accepted[ending]}")
        else:
            why = (refused or {}).get(ending) or next(
                s.message for s in solutions if s.result_name == ending
            )
            reasons.append(f"{ending} is NOT accepted: {why}")
    for i, s in enumerate(solutions):
        count = int(s.num_tightened)
        if count:
            rows = np.asarray(s.tightened)[:count]
            when = ", ".join(f"t = {t:.3g} (rtol {r:.0e})" for t, r, _ in rows)
            who = "" if len(solutions) == 1 else f"solve {i}: "
            reasons.append(
                f"{who}the integrator reached its noise floor and the tolerances "
                f"were tightened at {when}"
            )
    return Check.compare(
        name,
        f"how {what} ended: {ended}; solves whose ending is not accepted",
        sum(ending not in accepted for ending in endings),
        upper=0,
        note="; ".join(reasons),
    )
