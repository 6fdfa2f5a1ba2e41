import equinox as eqx
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow.models import CubeBeta, TwoLayerManifold, TwoLayerNet

from .helpers import ACTIVATIONS, two_layer_problem


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: a.name)
def test_activation_derivatives_and_inverse(activation):
    z = jnp.linspace(-2.0, 2.0, 41)
    for f, df in [
        (activation, activation.derivative),
        (activation.derivative, activation.second_derivative),
        (activation.second_derivative, activation.third_derivative),
    ]:
        np.testing.assert_allclose(
            jax.vmap(jax.grad(f))(z), df(z), rtol=1e-13, atol=1e-13
        )
    u = jnp.concatenate([-jnp.geomspace(1e-6, 1e3, 30), jnp.geomspace(1e-6, 1e3, 30)])
    np.testing.assert_allclose(activation(activation.inverse(u)), u, rtol=1e-14)


def test_cube_beta_rejects_nonpositive_beta():
    with pytest.raises(ValueError, match="beta > 0"):
        CubeBeta(0.0)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: a.name)
@pytest.mark.parametrize("a", [None, "random"])
def test_structured_path_equals_generic_path(activation, a):
    m, n, d = 5, 4, 7
    if a == "random":
        a = np.random.default_rng(5).uniform(0.5, 2.0, m)
    net, X, y, generic, structured = two_layer_problem(
        m=m, n=n, d=d, seed=3, activation=activation, a=a, unit=False
    )
    theta = generic.initial_point()
    u = structured.initial_point()
    np.testing.assert_allclose(structured.full_theta(u), net.theta, atol=1e-14)
    np.testing.assert_allclose(
        generic.constraint(theta), structured.constraint(u), atol=1e-13
    )
    lg, ls = generic.linearise(theta), structured.linearise(u)
    np.testing.assert_allclose(ls.sharpness, lg.sharpness, rtol=1e-13)
    np.testing.assert_allclose(ls.gram, lg.gram, rtol=1e-12, atol=1e-13)
    # Gradients and the flow, mapped back to theta: Q U-gradient == theta-gradient.
    Q = structured.basis
    to_theta = lambda v: v.reshape(m, -1) @ Q.T
    scale = float(jnp.abs(lg.gradient).max())
    np.testing.assert_allclose(
        to_theta(ls.gradient), lg.gradient.reshape(m, d), atol=1e-12 * scale
    )
    vf_g = mf.SharpnessFlow(generic)(0.0, theta, None).reshape(m, d)
    vf_s = to_theta(mf.SharpnessFlow(structured)(0.0, u, None))
    np.testing.assert_allclose(vf_s, vf_g, atol=1e-12 * float(jnp.abs(vf_g).max()))
    # The flow direction lies in the data span for every neuron (seed-math 1.1).
    off_span = vf_g - (vf_g @ Q) @ Q.T
    assert float(jnp.abs(off_span).max()) <= 1e-13 * float(jnp.abs(vf_g).max())
    # Jacobian operator and its transpose against the dense generic Jacobian.
    Js = ls.jacobian.as_matrix()  # (n, m*k)
    Jg = lg.jacobian.as_matrix()  # (n, m*d)
    lift = jax.vmap(lambda row: to_theta(row).reshape(-1))
    np.testing.assert_allclose(lift(Js), Jg, atol=1e-12)


def test_initialisation_is_on_the_manifold_and_sign_consistent():
    net, X, y, generic, _ = two_layer_problem(m=6, n=4, d=8, activation=ACTIVATIONS[1])
    assert float(jnp.max(jnp.abs(generic.constraint(generic.initial_point())))) < 1e-13
    Z = np.asarray(net.theta @ X.T)
    assert np.all(np.sign(Z) == np.sign(y)[None, :])


def test_two_layer_input_errors():
    net = TwoLayerNet(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match=r"\(n, d\) = \(n, 4\)"):
        TwoLayerManifold(net, np.ones((2, 5)), np.ones(2))
    with pytest.raises(ValueError, match="one second-layer weight per neuron"):
        TwoLayerNet(jnp.ones((3, 4)), a=jnp.ones(2))
    assert isinstance(net(jnp.ones(4)), jax.Array)
    assert eqx.filter(net, net.filter_spec()).a is None


@pytest.mark.parametrize(
    "projector",
    [mf.QRProjector(), mf.CGProjector(), mf.SVDProjector()],
    ids=lambda p: type(p).__name__,
)
def test_projectors_agree_on_the_structured_jacobian(projector):
    _, _, _, _, structured = two_layer_problem(m=5, n=4, d=7, seed=3)
    lin = structured.linearise(structured.initial_point())
    reference, lam_ref = mf.CholeskyProjector().project(lin, lin.gradient)
    projected, lam = projector.project(lin, lin.gradient)
    scale = float(jnp.abs(lin.gradient).max())
    np.testing.assert_allclose(projected, reference, atol=1e-11 * scale)
    np.testing.assert_allclose(lam, lam_ref, rtol=1e-10, atol=1e-12 * scale)
