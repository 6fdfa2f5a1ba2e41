"""Problem generators and catalogues shared by the tests."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
from manifoldflow.models import (
    Cube,
    CubeBeta,
    CubicLinear,
    initialise_on_manifold,
    TwoLayerManifold,
    TwoLayerNet,
)


ACTIVATIONS = [CubicLinear(), Cube(), CubeBeta(0.5)]
PROJECTORS = [
    mf.CholeskyProjector(),
    mf.QRProjector(),
    mf.CGProjector(),
    mf.SVDProjector(),
]


def two_layer_data(n=4, d=6, seed=0, unit=True):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if unit:
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.5, n)
    return X, y


def two_layer_problem(
    m=5, n=4, d=6, seed=0, activation=CubicLinear(), a=None, init_scale=1.0, unit=True
):
    """A two-layer net ON its zero-loss manifold, with both manifolds."""
    X, y = two_layer_data(n, d, seed, unit)
    net = initialise_on_manifold(
        jax.random.PRNGKey(seed),
        X,
        y,
        m,
        a=a,
        activation=activation,
        init_scale=init_scale,
    )
    generic = mf.ZeroLossManifold(net, X, y, filter_spec=net.filter_spec())
    structured = TwoLayerManifold(net, X, y)
    return net, X, y, generic, structured


def mlp_problem(n=3, seed=0):
    """A small tanh MLP (both layers and biases trained) and data."""
    key1, key2, key3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    model = eqx.nn.MLP(2, "scalar", 4, 1, activation=jnp.tanh, key=key1)
    X = jax.random.normal(key2, (n, 2))
    y = jax.random.normal(key3, (n,))
    return model, X, y


def random_linearisation(n, D, condition, seed):
    """A Linearisation with a random J whose singular values span [1, condition]."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((D, n)))
    s = np.geomspace(1.0, condition, n)
    J = jnp.asarray(U @ np.diag(s) @ V.T)
    import lineax as lx

    return mf.Linearisation(
        jacobian=lx.MatrixLinearOperator(J),
        gram=J @ J.T,
        sharpness=jnp.asarray(0.0),
        gradient=jnp.zeros(D),
    ), J


def solvers():
    return [diffrax.Tsit5(), diffrax.Dopri8(), diffrax.Kvaerno5()]


__all__ = ["TwoLayerNet"]
