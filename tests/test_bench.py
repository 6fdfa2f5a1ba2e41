"""The work-precision harness (`manifoldflow.work_precision`) on a tiny two-layer net: rows,
evaluation counts, the analysis, and what the numbers must say."""

import manifoldflow.work_precision as harness
import numpy as np
import pytest
from manifoldflow.work_precision import harness as wp


@pytest.fixture(scope="module")
def setup():
    problem = harness.two_layer_problem(4, 6, 3)
    return problem, harness.reference_solution(problem)


def test_reference_is_cross_checked_in_the_transient(setup):
    _, reference = setup
    assert reference.cross_check <= wp.CROSS_CHECK_LIMIT
    # T is where |P_T grad R| first reaches 1e-2: still in the transient.
    assert 1e-3 < reference.gradient_norm_at_T <= 1e-2
    assert reference.ts[0] == 0.0 and reference.ts[-1] == reference.T


def test_evaluations_from_the_rate_per_step_equal_the_counted_ones(setup):
    problem, reference = setup
    rows = [
        harness.measure(problem, reference, "projected", "tsit5", rtol=tol, repeats=1)
        for tol in (1e-4, 1e-6)
    ]
    rate = wp.evaluation_rate(rows)
    estimated = harness.measure(
        problem,
        reference,
        "projected",
        "tsit5",
        rtol=1e-8,
        repeats=1,
        per_attempt=rate,
        count_limit=0.0,
    )
    counted = harness.measure(problem, reference, "projected", "tsit5", rtol=1e-8)
    assert estimated["vf_evals_source"] != "counted"
    assert counted["vf_evals_source"] == "counted"
    # Projected steps re-evaluate every stage (made_jump): a fixed count per attempt.
    assert estimated["vf_evals"] == counted["vf_evals"]


def test_rows_say_what_the_mathematics_says(setup):
    problem, reference = setup
    plan = harness.Plan(
        tolerances=(1e-4, 1e-8),
        adaptive=(("projected", "dopri8"), ("no-projection", "tsit5")),
        fixed_steps=(32, 128),
        fixed_solvers=("euler",),
        scipy_methods=("DOP853",),
        repeats=1,
    )
    result = harness.run_problem(problem, plan, log=lambda _: None)
    rows = {(r["strategy"], r["rtol"] or r["dt"]): r for r in result["rows"]}
    assert not any(r["failed"] for r in rows.values())
    for key in ("error", "R_error", "constraint_max", "vf_evals", "wall_seconds"):
        assert all(isinstance(r[key], (int, float)) for r in rows.values())
    # Retracted after every step: on Gamma at the retraction's tolerance.
    assert rows["projected", 1e-4]["constraint_max"] <= 1e-12
    assert rows["projected", 1e-8]["constraint_max"] <= 1e-12
    # Without projection the drift off Gamma grows with the tolerance (Tsit5: at
    # rtol 1e-4 its steps are not limited by the output times).
    assert (
        rows["no-projection", 1e-4]["constraint_max"]
        > 10 * rows["no-projection", 1e-8]["constraint_max"]
    )
    # Errors fall with the tolerance, and projected Euler is first order (x4 steps,
    # error / 4 within a factor 1.5).
    assert rows["projected", 1e-8]["error"] < rows["projected", 1e-4]["error"]
    e32, e128 = (
        rows["projected-fixed-euler", reference.T / k]["error"] for k in (32, 128)
    )
    assert 4 / 1.5 < e32 / e128 < 4 * 1.5
    analysis = harness.analyse(result, targets=(1e-6,))
    at = analysis["per_target"][0]
    fastest = at["fastest"]
    reached = [r for r in result["rows"] if r["error"] <= 1e-6]
    assert fastest["wall_seconds"] == min(r["wall_seconds"] for r in reached)
    # No Euler run reached 1e-6: the first-order extrapolation is flagged.
    assert at["euler_extrapolated"] is True and at["evals_ratio"] > 10
    assert np.isfinite(at["speedup"])


def test_a_failed_configuration_is_a_row(setup):
    problem, reference = setup
    row = harness.measure(problem, reference, "projected", "no-such-solver", rtol=1e-4)
    assert row["failed"] is True and "KeyError" in row["reason"]
