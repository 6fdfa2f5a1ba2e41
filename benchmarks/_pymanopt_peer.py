"""The peer a researcher would reach for: pymanopt's TrustRegions on a hand-written
embedded submanifold class for Gamma = {F = 0} (projection, multiplier-form chord
retraction, Weingarten map), with jitted cost, Euclidean gradient and Hessian-vector
products from JAX. Written independently of manifoldflow's Geometry: it uses only the
problem's definition (`manifold.constraint`, `manifold.sharpness`)."""

import functools
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pymanopt
from pymanopt.manifolds.manifold import RiemannianSubmanifold
from pymanopt.optimizers import TrustRegions


@eqx.filter_jit
def _constraint(manifold, x):
    return manifold.constraint(x)


@eqx.filter_jit
def _jacobian(manifold, x):
    return jax.jacrev(manifold.constraint)(x)


@eqx.filter_jit
def _weingarten(manifold, x, v, mu):
    # The derivative of J(x)^T mu along v: sum_i mu_i Hess F_i v (the Weingarten
    # map is minus its tangent part).
    pull = lambda y: jax.vjp(manifold.constraint, y)[1](mu)[0]
    return -jax.jvp(pull, (x,), (v,))[1]


@eqx.filter_jit
def _sharpness(manifold, x):
    return manifold.sharpness(x)


@eqx.filter_jit
def _gradient(manifold, x):
    return jax.grad(manifold.sharpness)(x)


@eqx.filter_jit
def _product(manifold, x, v):
    return jax.jvp(jax.grad(manifold.sharpness), (x,), (v,))[1]


class ZeroSet(RiemannianSubmanifold):
    """{x in R^D : F(x) = 0} with the metric of R^D."""

    def __init__(self, manifold):
        D, n = manifold.dimension, manifold.num_constraints
        self._F = functools.partial(_constraint, manifold)
        self._J = functools.partial(_jacobian, manifold)
        self._second = functools.partial(_weingarten, manifold)
        self._D, self._n = D, n
        super().__init__(f"zero set of F (D={D}, n={n})", D - n)

    def _factor(self, x):
        J = np.asarray(self._J(x))
        return J, np.linalg.cholesky(J @ J.T)

    def _solve(self, L, r):
        return np.linalg.solve(L.T, np.linalg.solve(L, r))

    def projection(self, point, vector):
        J, L = self._factor(point)
        return vector - J.T @ self._solve(L, J @ vector)

    to_tangent_space = projection

    def weingarten(self, point, tangent_vector, normal_vector):
        J, L = self._factor(point)
        mu = self._solve(L, J @ normal_vector)
        return self.projection(
            point, np.asarray(self._second(point, tangent_vector, mu))
        )

    def retraction(self, point, tangent_vector):
        J, L = self._factor(point + tangent_vector)
        base = point + tangent_vector
        lam = np.zeros(self._n)
        x, best = base, np.inf
        for _ in range(50):
            x = base + J.T @ lam
            residual = float(np.max(np.abs(np.asarray(self._F(x)))))
            if not residual < best:  # diverging (a step too long): give up
                break
            best = residual
            if residual <= 1e-13:
                break
            lam = lam - self._solve(L, np.asarray(self._F(x)))
        return x

    def inner_product(self, point, a, b):
        return float(a @ b)

    def norm(self, point, v):
        return float(np.linalg.norm(v))

    def random_point(self):
        raise NotImplementedError

    def random_tangent_vector(self, point):
        v = self.projection(point, np.random.default_rng(0).standard_normal(self._D))
        return v / np.linalg.norm(v)

    def zero_vector(self, point):
        return np.zeros(self._D)

    def transport(self, point_a, point_b, tangent_vector_a):
        return self.projection(point_b, tangent_vector_a)

    @property
    def typical_dist(self):
        return np.sqrt(self._D)


def run_pymanopt(manifold, theta0, tolerance, max_steps):
    """`(theta, seconds, info)` of TrustRegions from `theta0` to `tolerance`."""
    sharpness = functools.partial(_sharpness, manifold)
    gradient = functools.partial(_gradient, manifold)
    product = functools.partial(_product, manifold)
    gamma = ZeroSet(manifold)
    counts = dict(hessian=0, gradient=0)

    @pymanopt.function.numpy(gamma)
    def cost(x):
        # A failed retraction (far off Gamma) costs +inf: the step is rejected.
        if not np.max(np.abs(np.asarray(gamma._F(x)))) <= 1e-8:
            return np.inf
        return float(sharpness(x))

    @pymanopt.function.numpy(gamma)
    def euclidean_gradient(x):
        counts["gradient"] += 1
        return np.asarray(gradient(x))

    @pymanopt.function.numpy(gamma)
    def euclidean_hessian(x, v):
        counts["hessian"] += 1
        return np.asarray(product(x, v))

    problem = pymanopt.Problem(
        gamma,
        cost,
        euclidean_gradient=euclidean_gradient,
        euclidean_hessian=euclidean_hessian,
    )
    optimizer = TrustRegions(
        min_gradient_norm=tolerance,
        max_iterations=max_steps,
        max_time=600,
        verbosity=0,
    )
    start = time.perf_counter()
    # The same largest radius as manifoldflow's default, max(1, |theta0|).
    radius = max(1.0, float(np.linalg.norm(np.asarray(theta0))))
    result = optimizer.run(
        problem, initial_point=np.asarray(theta0), Delta_bar=radius, Delta0=radius / 8
    )
    seconds = time.perf_counter() - start
    return (
        jnp.asarray(result.point),
        seconds,
        dict(
            steps=int(result.iterations),
            gradient_evaluations=counts["gradient"],
            hessian_products=counts["hessian"],
            result=str(result.stopping_criterion)[:60],
        ),
    )
