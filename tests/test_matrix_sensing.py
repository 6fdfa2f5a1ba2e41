"""Matrix sensing by (deep) factorisations: Tr Hess L on Gamma in closed form, the
minimum-nuclear-norm comparison, and the command without cvxpy."""

import json
import sys

import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow import cli
from manifoldflow.experiments.matrix_sensing import _gradients
from manifoldflow.models.matrix_sensing import sensing_data, sensing_init


@pytest.mark.parametrize("depth", [2, 3])
def test_trace_on_gamma_matches_the_closed_form(depth):
    A, y, _ = sensing_data(4, 1, 6, seed=1)
    manifold = mf.ZeroLossManifold(
        sensing_init(4, depth, 1.0, seed=1), A, y, loss=mf.HalfMeanSquaredLoss()
    )
    theta = mf.GaussNewtonRetraction()(
        manifold, mf.CholeskyProjector(), manifold.initial_point()
    ).theta
    factors = [np.asarray(W) for W in manifold.to_parameters(theta).factors]
    closed = np.mean(_gradients(factors, A))
    R = float(manifold.sharpness(theta))
    assert abs(R - closed) <= 1e-12 * closed
    # The closed form is not the identity: dropping a factor's gradients changes it.
    assert abs(R - np.mean(_gradients(factors[1:], A))) > 1e-3 * closed


def test_minimum_nuclear_norm_recovers_a_low_rank_truth():
    cvxpy = pytest.importorskip("cvxpy")
    del cvxpy
    from manifoldflow.baselines import minimum_nuclear_norm

    A, y, M = sensing_data(5, 1, 20, seed=0)
    X, optimum, status = minimum_nuclear_norm(A, y)
    assert status == "optimal"
    np.testing.assert_allclose(X, M, atol=1e-6)
    assert abs(optimum - np.linalg.svd(M, compute_uv=False).sum()) <= 1e-6 * optimum


def test_matrix_sensing_without_cvxpy_runs_the_flow_and_says_how(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # import cvxpy -> ImportError
    code = cli.main(
        ["matrix-sensing", "--d", "3", "--n", "5", "--no-progress"]
        + ["--out", str(tmp_path)]
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["checks_passed"] is True
    assert summary["convex_comparison"] == "skipped"
    check = {c["name"]: c for c in summary["checks"]}["nuclear_norm_above_minimum"]
    assert check["result"] == "n/a" and "manifoldflow[convex]" in check["note"]


def test_an_ill_conditioned_end_is_not_a_pass(tmp_path):
    """deep-matrix-sensing on its defaults stops where J J^T turns singular, with
    |P_T grad R| far above the threshold: the table says so and the command fails."""
    code = cli.main(
        ["deep-matrix-sensing", "--no-progress", "--out", str(tmp_path)]
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["result"] == "ill_conditioned"
    assert code == 1 and summary["checks_passed"] is False
    checks = {c["name"]: c for c in summary["checks"]}
    assert checks["stationarity"]["passed"] is False
    ending = checks["ending"]
    assert ending["passed"] is False and ending["measured"] == 1
    assert "ill_conditioned is NOT accepted" in ending["note"]
    assert "no independent route" in ending["note"]


def test_depth_one_is_refused(capsys):
    argv = ["deep-matrix-sensing", "--depth", "1", "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--depth 1" in err and "does not move" in err and "--depth 2" in err
