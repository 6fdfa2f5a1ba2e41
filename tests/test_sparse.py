"""The quadratically over-parametrised sparse-recovery model: Tr Hess L on Gamma,
basis pursuit, and the flow's limit against the LP."""

import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow.baselines import basis_pursuit, l1_minimiser_spread
from manifoldflow.models import (
    QuadraticLinearModel,
    sparse_init,
    sparse_recovery_data,
)


def _manifold(d, n, k, seed=0, start=0):
    Z, y, w_star = sparse_recovery_data(d, n, k, seed)
    model = sparse_init(jax.random.PRNGKey(start), d, 0.3)
    return mf.ZeroLossManifold(model, Z, y, loss=mf.HalfMeanSquaredLoss()), w_star


def test_trace_of_the_hessian_on_gamma_is_four_times_the_squared_norm():
    manifold, _ = _manifold(12, 6, 2)
    theta = mf.GaussNewtonRetraction()(
        manifold, mf.CholeskyProjector(), manifold.initial_point()
    ).theta
    model = manifold.to_parameters(theta)
    # The Hessian of L = (1/2n) sum (f - y)^2, by autodiff, at a point of Gamma.
    Z, y = manifold.X, manifold.y

    def loss(t):
        m = manifold.to_parameters(t)
        return 0.5 * jnp.mean((jax.vmap(m)(Z) - y) ** 2)

    trace = jnp.trace(jax.hessian(loss)(theta))
    expected = 4 * (model.u @ model.u + model.v @ model.v)
    assert abs(float(trace - expected)) <= 1e-12 * float(expected)
    assert abs(float(manifold.sharpness(theta) - expected)) <= 1e-12 * float(expected)


def test_basis_pursuit_recovers_a_sparse_vector_and_interpolates():
    Z, y, w_star = sparse_recovery_data(50, 30, 3, 0)
    w, residual = basis_pursuit(Z, y)
    assert residual <= 1e-12
    np.testing.assert_allclose(w, w_star, atol=1e-10)
    assert l1_minimiser_spread(Z, y, np.abs(w).sum()) <= 1e-6


def test_too_few_measurements_leave_a_face_of_minimisers():
    Z, y, w_star = sparse_recovery_data(50, 10, 3, 0)
    w, _ = basis_pursuit(Z, y)
    assert np.max(np.abs(w - w_star)) > 0.1
    assert l1_minimiser_spread(Z, y, np.abs(w).sum()) > 1e-3


def test_flow_lands_on_the_basis_pursuit_solution():
    manifold, w_star = _manifold(12, 6, 2)
    w_lp, _ = basis_pursuit(manifold.X, manifold.y)
    solution = mf.solve_flow(manifold, projector=mf.SVDProjector(), throw=False)
    assert solution.result_name in ("stationary", "stagnated")
    w = np.asarray(manifold.to_parameters(solution.theta_final).w)
    assert np.max(np.abs(w - w_lp)) <= 1e-9
    assert np.max(solution.constraint_violation) <= 1e-12
    # R ends at its minimum over Gamma, 4 |w_lp|_1.
    R_star = 4 * np.abs(w_lp).sum()
    assert abs(solution.sharpness[-1] - R_star) <= 1e-9 * R_star


def test_model_rejects_mismatched_vectors():
    with pytest.raises(mf.InputError, match="same length"):
        QuadraticLinearModel(np.ones(3), np.ones(4))


def test_command_summary_keeps_the_inputs_and_the_comparison(tmp_path):
    import json

    from manifoldflow import cli

    # d n = 1500 numbers: Z stays in summary.json (json_keys), not in summary.npz.
    code = cli.main(
        ["sparse-recovery", "--d", "50", "--n", "30", "--starts", "1"]
        + ["--no-progress", "--out", str(tmp_path)]
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["checks_passed"] is True
    assert np.asarray(summary["Z"]).shape == (30, 50)
    for key in ("y", "w_star", "w_flow", "w_lp"):
        assert len(summary[key]) in (30, 50), key
    assert summary["lp_distance"] <= 1e-9
    assert summary["constraint_violation_max"] <= 1e-12
    assert summary["lp_unique"] is True and summary["recovered"] is True
