"""The two-phase solve: gradient flow on the loss onto Gamma, then the flow."""

import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow.theory import gatmiry
from scipy.integrate import solve_ivp

from .helpers import two_layer_problem


def _off_manifold(manifold, scale=0.3, seed=1):
    u0 = np.asarray(manifold.initial_point())
    return u0 + scale * np.random.default_rng(seed).standard_normal(u0.shape)


@pytest.fixture(scope="module")
def two_phase():
    _, _, _, _, manifold = two_layer_problem(m=4, n=3, d=6)
    theta0 = _off_manifold(manifold)
    solution = mf.solve_flow(
        manifold, theta0, initial_retraction=mf.GradientFlowRetraction()
    )
    return manifold, theta0, solution


def test_lands_on_gamma_at_the_gradient_flow_limit(two_phase):
    manifold, theta0, solution = two_phase
    assert np.max(np.abs(np.asarray(manifold.constraint(theta0)))) > 0.1
    start = solution.ys[0]
    assert np.max(np.abs(np.asarray(manifold.constraint(start)))) <= 1e-12
    assert bool(solution.retraction.landed)
    assert float(solution.retraction.descent_residual) <= 1e-7
    # An independent integration of dtheta/dt = -grad L, L = 1/2 sum_i w_i F_i^2, far
    # past the time where |F| ~ 1e-14: the limit Phi(theta0). Both solves are at
    # tolerances ~1e-10 relative, and the switch at |F| = 1e-7 costs O(1e-14).
    weights = np.asarray(manifold.weights)

    def gradient(theta):
        F, pullback = jax.vjp(manifold.constraint, jnp.asarray(theta))
        return np.asarray(pullback(weights * F)[0])

    reference = solve_ivp(
        lambda t, theta: -gradient(theta),
        (0.0, 40 * float(solution.retraction.descent_time)),
        theta0,
        method="DOP853",
        rtol=1e-12,
        atol=1e-14,
    ).y[:, -1]
    assert np.max(np.abs(np.asarray(manifold.constraint(reference)))) <= 1e-12
    assert np.linalg.norm(start - reference) <= 1e-8


def test_gradient_flow_limit_is_not_the_nearest_point(two_phase):
    """Phi(theta0) differs from the Gauss-Newton retraction of theta0 at first order
    in the distance to Gamma: the start matters for which flow SGD follows."""
    manifold, theta0, solution = two_phase
    retracted = mf.solve_flow(manifold, theta0, t1=1e-3).ys[0]
    assert np.linalg.norm(retracted - solution.ys[0]) > 1e-3


def test_two_phase_converges_to_theorem_3_3_optimum(two_phase):
    manifold, _, solution = two_phase
    assert solution.stationary
    assert np.max(solution.constraint_violation) <= 1e-12
    u_star = gatmiry.optimum_point(manifold)
    # Lemma 4.6: |z - z*| <= C delta at ||P_T grad R|| = delta = 1e-10; C is O(10)
    # here (the theorem_3_3_optimum check's own bound is asserted below).
    assert np.linalg.norm(np.asarray(solution.theta_final) - u_star) <= 1e-8
    delta = float(solution.gradient_norm[-1])
    check = gatmiry.theorem_3_3_optimum(manifold, solution.theta_final, delta)
    assert check.passed


def test_optimum_point_has_the_optimum_features():
    _, _, _, _, manifold = two_layer_problem(m=3, n=4, d=6)
    u_star = gatmiry.optimum_point(manifold)
    Z = np.asarray(manifold.features(jnp.asarray(u_star)))
    z_star = gatmiry.optimum_features(manifold)
    np.testing.assert_allclose(Z, np.tile(z_star, (3, 1)), rtol=0, atol=1e-12)
    assert np.max(np.abs(np.asarray(manifold.constraint(jnp.asarray(u_star))))) < 1e-12


def _no_zero(x, args):
    return jnp.stack([x @ x + 1.0])


def test_critical_point_off_gamma_is_a_clear_error():
    """F = |x|^2 + 1 has no zero: gradient flow converges to x = 0 with |F| = 1."""
    manifold = mf.ConstraintManifold(_no_zero, jnp.ones(3))
    with pytest.raises(mf.InputError, match="critical point of L"):
        mf.solve_flow(
            manifold, initial_retraction=mf.GradientFlowRetraction(max_steps=300)
        )


@pytest.mark.parametrize("field", ["switch", "flow_rtol", "flow_atol"])
def test_bad_settings(field):
    with pytest.raises(mf.InputError, match=field):
        mf.GradientFlowRetraction(**{field: 0.0})
    with pytest.raises(mf.InputError, match="max_steps"):
        mf.GradientFlowRetraction(max_steps=0)
