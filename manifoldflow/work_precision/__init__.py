"""Work--precision comparisons of solvers for the sharpness flow: which solver, which projection strategy,
which tolerance, at what cost (`manifoldflow bench`, `benchmarks/work_precision.py`)."""

from .harness import (
    analyse as analyse,
    BenchProblem as BenchProblem,
    deep_linear_problem as deep_linear_problem,
    measure as measure,
    Plan as Plan,
    plot_work_precision as plot_work_precision,
    PROBLEMS as PROBLEMS,
    reference_solution as reference_solution,
    run_problem as run_problem,
    STRATEGIES as STRATEGIES,
    two_layer_problem as two_layer_problem,
)
