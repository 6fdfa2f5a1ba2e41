"""Problem generators and catalogues shared by the tests."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow import models
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
    return models.two_layer_data(n, d, seed, unit=unit)


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


def deep_linear_constraint(weights, args):
    r"""$F(W) = (W_L \cdots W_1)^\top p - w^*$ for `weights = (W_1, ..., W_L)` and
    `args = (p, w_star)`: the minimisers of a deep linear network's risk."""
    p, w_star = args
    product = functools.reduce(lambda acc, W: W @ acc, weights)
    return product.T @ p - w_star


def deep_linear_problem(widths=(3, 4, 4, 3), offset=1e-2, seed=0, weights=None):
    """A deep linear net (W_k of shape (d_k, d_{k-1})) near, not on, its minimiser
    set {W : (W_L ... W_1)^T p = w*} with a unit vector p (d_0 = 3 equations)."""
    rng = np.random.default_rng(seed)
    Ws = tuple(
        jnp.asarray(rng.standard_normal((d_out, d_in)) / np.sqrt(d_in))
        for d_in, d_out in zip(widths[:-1], widths[1:])
    )
    p = rng.standard_normal(widths[-1])
    p = jnp.asarray(p / np.linalg.norm(p))
    w_star = deep_linear_constraint(Ws, (p, 0.0)) + offset * jnp.asarray(
        rng.standard_normal(widths[0])
    )
    return mf.ConstraintManifold(
        deep_linear_constraint, Ws, (p, w_star), weights=weights
    )


def quadric_constraint(x, args):
    r"""$F(x) = [x^\top A_k x - c_k]_k$ for `args = (A, c)`, `A` of shape (n, D, D)."""
    A, c = args
    return jnp.einsum("i,kij,j->k", x, A, x) - c


def quadrics_problem(D=5, n=2, seed=0, weights=None):
    """The intersection of n quadrics {x^T A_k x = c_k} (the first an ellipsoid),
    with the initial point near it; closed forms: J_k = 2 A_k x,
    R = 4 sum_k w_k |A_k x|^2, grad R = 8 sum_k w_k A_k^2 x."""
    rng = np.random.default_rng(seed)
    A = []
    for k in range(n):
        M = rng.standard_normal((D, D))
        A.append(M @ M.T / D + np.eye(D) if k == 0 else (M + M.T) / 2)
    A = np.stack(A)
    x = rng.standard_normal(D)
    c = np.einsum("i,kij,j->k", x, A, x) + 1e-2 * rng.standard_normal(n)
    return mf.ConstraintManifold(
        quadric_constraint,
        jnp.asarray(x),
        (jnp.asarray(A), jnp.asarray(c)),
        weights=weights,
    )


def sparse_recovery_problem(d=8, n=4, k=2, seed=0):
    """The quadratic sparse model <u*u - v*v, z> with L = (1/2n) sum (f - y)^2, at a
    start away from its singular points u_k^2 + v_k^2 = 0."""
    from manifoldflow.models import sparse_init, sparse_recovery_data

    Z, y, _ = sparse_recovery_data(d, n, k, seed)
    model = sparse_init(jax.random.PRNGKey(seed), d, 1.0)
    return mf.ZeroLossManifold(model, Z, y, loss=mf.HalfMeanSquaredLoss())


def sensing_problem(d=3, rank=1, n=4, depth=2, seed=0):
    """Matrix sensing <W_1...W_L, A> with Gaussian A_i and L = (1/2n) sum (f - y)^2."""
    from manifoldflow.models.matrix_sensing import sensing_data, sensing_init

    A, y, _ = sensing_data(d, rank, n, seed)
    model = sensing_init(d, depth, 1.0, seed)
    return mf.ZeroLossManifold(model, A, y, loss=mf.HalfMeanSquaredLoss())


class SmoothTwoLayer(eqx.Module):
    """x -> sum_j a_j GELU(w_j^T x) with both layers trained (as in
    `examples/smooth_two_layer_barron.py`)."""

    W: jax.Array
    a: jax.Array

    def __call__(self, x):
        return jnp.dot(self.a, jax.nn.gelu(self.W @ x, approximate=False))


def smooth_two_layer_problem(h=3, d=3, n=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    model = SmoothTwoLayer(
        jnp.asarray(rng.standard_normal((h, d))), jnp.asarray(rng.standard_normal(h))
    )
    y = np.asarray(jax.vmap(model)(jnp.asarray(X))) + 0.1 * rng.standard_normal(n)
    return mf.ZeroLossManifold(model, X, y, loss=mf.HalfMeanSquaredLoss())


@functools.cache
def manifold_catalogue():
    """`(id, manifold)` for one manifold of every kind; the generic contract tests
    (`tests/test_manifold_contract.py`, `tests/test_retraction.py`) run on each."""
    _, _, _, generic, structured = two_layer_problem(m=5, n=4, d=6, seed=1)
    model, X, y = mlp_problem()
    return (
        ("two-layer-generic", generic),
        ("two-layer-structured", structured),
        ("mlp", mf.ZeroLossManifold(model, X, y)),
        ("deep-linear", deep_linear_problem()),
        ("quadrics", quadrics_problem(weights=jnp.array([0.5, 2.0]))),
        ("sparse-recovery", sparse_recovery_problem()),
        ("matrix-sensing", sensing_problem(depth=2)),
        ("deep-matrix-sensing", sensing_problem(depth=3)),
        ("smooth-two-layer", smooth_two_layer_problem()),
        # Matrix-free: J never formed, grad R in chunks (2 does not divide n = 3).
        (
            "mlp-matrix-free",
            mf.ZeroLossManifold(model, X, y, matrix_free=True, chunk_size=2),
        ),
    )


_POINTS = {}


def point_on(manifold):
    """The initial point retracted onto the manifold by Gauss--Newton, computed once
    per manifold object (the cache keeps the object alive, so its id stays unique)."""
    key = id(manifold)
    if key not in _POINTS:
        sol = mf.GaussNewtonRetraction()(
            manifold, mf.CholeskyProjector(), manifold.initial_point()
        )
        assert bool(sol.converged)
        _POINTS[key] = (manifold, sol.theta)
    return _POINTS[key][1]


def manifold_params():
    """The catalogue as `pytest.param`s with readable ids."""
    return [pytest.param(m, id=name) for name, m in manifold_catalogue()]


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
