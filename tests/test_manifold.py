import equinox as eqx
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest

from .helpers import mlp_problem, two_layer_problem


def _on_manifold(manifold):
    sol = mf.GaussNewtonRetraction()(
        manifold, mf.CholeskyProjector(), manifold.initial_point()
    )
    assert sol.converged
    return sol.theta


def _full_trace(manifold, loss):
    def L(theta):
        model = manifold.to_parameters(theta)
        f = jax.vmap(model)(manifold.X)
        return jnp.mean(jax.vmap(loss)(f, manifold.y))

    return lambda theta: jnp.trace(jax.hessian(L)(theta))


@pytest.mark.parametrize("loss", [mf.MeanSquaredLoss(), mf.HalfMeanSquaredLoss()])
def test_sharpness_is_hessian_trace_on_manifold(loss):
    model, X, y = mlp_problem()
    manifold = mf.ZeroLossManifold(model, X, y, loss=loss)
    theta = _on_manifold(manifold)
    trace = _full_trace(manifold, loss)
    lin = manifold.linearise(theta)
    np.testing.assert_allclose(lin.sharpness, trace(theta), rtol=1e-12)
    # Off the manifold the full trace has the extra term sum_i w_i F_i Tr Hess f_i,
    # whose gradient on the manifold is normal: the Riemannian gradients agree.
    projector = mf.CholeskyProjector()
    g_gauss_newton, _ = projector.project(lin, lin.gradient)
    g_full, _ = projector.project(lin, jax.grad(trace)(theta))
    np.testing.assert_allclose(
        g_full, g_gauss_newton, rtol=0, atol=1e-11 * np.abs(g_full).max()
    )
    assert np.abs(g_full).max() > 1e-3  # not a trivial comparison
    # ... while the Euclidean gradients differ.
    assert np.abs(jax.grad(trace)(theta) - lin.gradient).max() > 1e-6


def test_curvature_weights():
    y = jnp.arange(4.0)
    np.testing.assert_allclose(mf.MeanSquaredLoss().curvature_weights(y), 2 / 4)
    np.testing.assert_allclose(mf.HalfMeanSquaredLoss().curvature_weights(y), 1 / 4)


def test_jacobian_and_gradient_against_independent_computations():
    model, X, y = mlp_problem()
    manifold = mf.ZeroLossManifold(model, X, y)
    theta = manifold.initial_point() + 0.1
    lin = manifold.linearise(theta)
    J = lin.jacobian.as_matrix()
    np.testing.assert_allclose(
        J, jax.jacrev(manifold.constraint)(theta), rtol=1e-12, atol=1e-14
    )
    np.testing.assert_allclose(lin.gram, J @ J.T, rtol=1e-12)
    # Central finite differences of R: error O(h^2).
    rng = np.random.default_rng(0)
    v = rng.standard_normal(theta.shape)
    h = 1e-5
    R = manifold.sharpness
    fd = (R(theta + h * v) - R(theta - h * v)) / (2 * h)
    np.testing.assert_allclose(fd, lin.gradient @ v, rtol=1e-8)


def test_fixed_leaves_stay_out_of_theta():
    net, X, y, generic, _ = two_layer_problem(m=5, d=6)
    assert generic.dimension == 5 * 6
    untrained = mf.ZeroLossManifold(net, X, y)  # default filter: trains a as well
    assert untrained.dimension == 5 * 6 + 5


def test_bad_input_errors():
    model, X, y = mlp_problem()
    Xn = np.array(X)
    Xn[1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        mf.ZeroLossManifold(model, Xn, y)
    with pytest.raises(ValueError, match="leading dimension 2"):
        mf.ZeroLossManifold(model, X, y[:2])
    with pytest.raises(ValueError, match="vector of n labels"):
        mf.ZeroLossManifold(model, X, y[:, None])
    with pytest.raises(ValueError, match="scalar"):
        mf.ZeroLossManifold(eqx.nn.Linear(2, 3, key=jax.random.PRNGKey(0)), X, y)
    big = np.random.default_rng(0).standard_normal((40, 2))
    with pytest.raises(ValueError, match="n = 40 data points but only D = 17"):
        mf.ZeroLossManifold(model, big, np.zeros(40))
