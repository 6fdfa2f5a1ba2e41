import equinox as eqx
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest

from .helpers import manifold_params, point_on, two_layer_problem


RETRACTIONS = [mf.ChordRetraction(), mf.NewtonRetraction(), mf.GaussNewtonRetraction()]


@pytest.mark.parametrize("retraction", RETRACTIONS, ids=lambda r: type(r).__name__)
@pytest.mark.parametrize("manifold", manifold_params())
def test_retraction_converges_from_distance_1e_2(manifold, retraction):
    theta = point_on(manifold)
    direction = np.random.default_rng(0).standard_normal(theta.shape)
    start = theta + 1e-2 * direction / np.linalg.norm(direction)
    sol = eqx.filter_jit(retraction.__call__)(manifold, mf.CholeskyProjector(), start)
    assert bool(sol.converged)
    # The retraction's tolerance, plus the rounding of evaluating F again (64 eps).
    held = float(sol.tolerance) + 64 * np.finfo(float).eps
    assert float(jnp.max(jnp.abs(manifold.constraint(sol.theta)))) <= held
    assert float(jnp.linalg.norm(sol.theta - start)) < 0.1


@pytest.mark.parametrize("manifold", manifold_params())
def test_retraction_is_second_order(manifold):
    """||R(x, t v) - (x + t v)|| = O(t^2) for tangent v (pymanopt's slope test)."""
    theta = point_on(manifold)
    lin = manifold.linearise(theta)
    v, _ = mf.CholeskyProjector().project(
        lin, jnp.asarray(np.random.default_rng(2).standard_normal(theta.shape))
    )
    v = v / jnp.linalg.norm(v)
    ts = np.geomspace(1e-4, 1e-2, 6)
    retract = eqx.filter_jit(mf.ChordRetraction().__call__)
    errors = [
        float(
            jnp.linalg.norm(
                retract(manifold, mf.CholeskyProjector(), theta + t * v).theta
                - (theta + t * v)
            )
        )
        for t in ts
    ]
    slope = np.polyfit(np.log(ts), np.log(errors), 1)[0]
    assert 1.9 < slope < 2.1, (slope, errors)


def test_retraction_derivative_is_not_silently_zero():
    _, _, _, _, manifold = two_layer_problem(m=5, n=4, d=6, seed=1)
    theta = point_on(manifold) + 1e-3
    v = jnp.asarray(np.random.default_rng(3).standard_normal(theta.shape))
    retract = lambda x: mf.ChordRetraction()(manifold, mf.CholeskyProjector(), x).theta
    _, tangent = jax.jvp(retract, (theta,), (v,))
    h = 1e-6
    fd = (retract(theta + h * v) - retract(theta - h * v)) / (2 * h)
    np.testing.assert_allclose(tangent, fd, atol=1e-7 * float(jnp.abs(fd).max()))
    assert float(jnp.abs(tangent - v).max()) > 1e-3  # the normal correction moves too
