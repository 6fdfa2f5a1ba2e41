"""Contract tests that every manifold of the catalogue passes, at a point ON it,
against independent dense computations: forward-mode autodiff of the constraint
(`jax.jacfwd`, a different path from the manifolds' `jacrev` / `vmap(grad)` /
closed forms), scipy's `null_space` for $P_T$, and finite differences."""

import equinox as eqx
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
import scipy.linalg

from .helpers import manifold_params, point_on, PROJECTORS


_EPS = np.finfo(np.float64).eps
_FD_STEP = 1e-5


class _Evaluation(eqx.Module):
    """What the library computes at a point, and the independent references."""

    linearisation: mf.Linearisation
    projections: tuple  # P_T as a D x D matrix, one per projector
    riemannian_gradients: tuple  # P_T grad R, one per projector
    jacobian: jax.Array  # jacfwd(F)
    sharpness: jax.Array  # sum_i w_i |jacfwd(F)_i|^2
    gradient: jax.Array  # 2 sum_i w_i (jacfwd(jacfwd(F))_i) J_i
    finite_difference_gradient: jax.Array  # central differences of that R


@eqx.filter_jit
def _evaluate(manifold, theta):
    """Everything at `theta` in one compilation per manifold. The references use
    forward mode only."""
    lin = manifold.linearise(theta)
    eye = jnp.eye(theta.shape[0], dtype=theta.dtype)
    projections, riemannian_gradients = [], []
    for projector in PROJECTORS:
        project = lambda v, projector=projector: projector.project(lin, v)[0]
        projections.append(jax.vmap(project, out_axes=1)(eye))
        riemannian_gradients.append(project(lin.gradient))

    weights = jnp.broadcast_to(manifold.weights, (manifold.num_constraints,))

    def sharpness(x):
        J = jax.jacfwd(manifold.constraint)(x)
        return jnp.sum(weights * jnp.sum(J**2, axis=1)), J

    R, J = sharpness(theta)
    H = jax.jacfwd(jax.jacfwd(manifold.constraint))(theta)
    gradient = 2 * jnp.einsum("i,ijk,ij->k", weights, H, J)

    def derivative(e):
        forward = sharpness(theta + _FD_STEP * e)[0]
        backward = sharpness(theta - _FD_STEP * e)[0]
        return (forward - backward) / (2 * _FD_STEP)

    return _Evaluation(
        linearisation=lin,
        projections=tuple(projections),
        riemannian_gradients=tuple(riemannian_gradients),
        jacobian=J,
        sharpness=R,
        gradient=gradient,
        finite_difference_gradient=jax.vmap(derivative)(eye),
    )


_CACHE = {}


def _evaluation_on(manifold):
    """`(theta, evaluation)` at the retracted initial point, computed once (the cache
    keeps the manifold alive, so its id stays unique)."""
    key = id(manifold)
    if key not in _CACHE:
        theta = point_on(manifold)
        evaluation = jax.tree_util.tree_map(
            lambda x: np.asarray(x) if eqx.is_array(x) else x,
            _evaluate(manifold, theta),
        )
        _CACHE[key] = manifold, theta, evaluation
    return _CACHE[key][1:]


def _unit_roundoff(projector):
    """Relative accuracy of a projector's Gram solve: machine epsilon, or CG's
    stopping tolerance where that is coarser."""
    return max(_EPS, getattr(projector, "rtol", 0.0))


def _tangent_projector(J):
    """Orthogonal projector onto ker J from an orthonormal basis (scipy)."""
    K = scipy.linalg.null_space(J)
    assert K.shape[1] == J.shape[1] - J.shape[0]  # full row rank: a manifold
    return K @ K.T


def _condition(J):
    singular = np.linalg.svd(J, compute_uv=False)
    return singular[0] / singular[-1], singular[0]


@pytest.mark.parametrize("manifold", manifold_params())
def test_linearisation_against_forward_mode(manifold):
    theta, ev = _evaluation_on(manifold)
    lin, J_ref = ev.linearisation, ev.jacobian
    n, D = manifold.num_constraints, manifold.dimension
    assert theta.shape == manifold.initial_point().shape == (D,)
    assert J_ref.shape == (n, D)
    # On the manifold (to the retraction's tolerance).
    assert float(jnp.max(jnp.abs(manifold.constraint(theta)))) <= 1e-12
    # J by two autodiff paths: each entry is a short sum of products, rounding
    # O(eps) relative to |J|; 1e3 eps leaves a wide margin.
    scale = np.abs(J_ref).max()
    J = np.asarray(lin.jacobian.as_matrix())
    np.testing.assert_allclose(J, J_ref, rtol=0, atol=1e3 * _EPS * scale)
    gram_ref = J_ref @ J_ref.T
    np.testing.assert_allclose(
        lin.gram, gram_ref, rtol=0, atol=1e3 * _EPS * D * scale**2
    )
    if lin.gram_diagonal is not None:
        np.testing.assert_allclose(
            lin.gram_diagonal, np.diag(gram_ref), rtol=0, atol=1e3 * _EPS * D * scale**2
        )
    # (iii) R = sum_i w_i |J_i|^2: a sum of n D non-negative terms, so a relative
    # rounding error of at most about n D eps.
    np.testing.assert_allclose(lin.sharpness, ev.sharpness, rtol=10 * n * D * _EPS)
    assert ev.sharpness > 0  # not a trivial comparison


@pytest.mark.parametrize("manifold", manifold_params())
def test_projector_identities_with_the_manifold_jacobian(manifold):
    _, ev = _evaluation_on(manifold)
    J = ev.jacobian
    condition, norm = _condition(J)
    P_ref = _tangent_projector(J)
    for projector, P in zip(PROJECTORS, ev.projections):
        # Gram-based projections err by O(u kappa(J)^2), u the solve's relative
        # accuracy; a factor 1e3 of margin.
        tol = 1e3 * _unit_roundoff(projector) * condition**2
        name = type(projector).__name__
        np.testing.assert_allclose(P @ P, P, rtol=0, atol=tol, err_msg=name)
        np.testing.assert_allclose(P, P.T, rtol=0, atol=tol, err_msg=name)
        np.testing.assert_allclose(J @ P / norm, 0, rtol=0, atol=tol, err_msg=name)
        np.testing.assert_allclose(P, P_ref, rtol=0, atol=tol, err_msg=name)


@pytest.mark.parametrize("manifold", manifold_params())
def test_riemannian_gradient_against_independent_computation(manifold):
    _, ev = _evaluation_on(manifold)
    J, R, grad_ref = ev.jacobian, ev.sharpness, ev.gradient
    grad_scale = np.abs(grad_ref).max()
    assert grad_scale > 1e-3  # not a trivial comparison
    # Euclidean grad R against forward-over-forward Hessians: exact up to rounding.
    np.testing.assert_allclose(
        ev.linearisation.gradient, grad_ref, rtol=0, atol=1e4 * _EPS * grad_scale
    )
    # ... and against central differences with step h: truncation h^2/6 |R'''| plus
    # rounding eps |R| / h, about 1e-11 (|R| + |R'''|) at h = 1e-5; allow 1e-7.
    np.testing.assert_allclose(
        ev.finite_difference_gradient,
        grad_ref,
        rtol=0,
        atol=1e-7 * max(1.0, R, grad_scale),
    )
    # The Riemannian gradient P_T grad R, with P_T from scipy's null space.
    condition, _ = _condition(J)
    g_ref = _tangent_projector(J) @ grad_ref
    assert np.abs(g_ref).max() > 1e-6 * grad_scale  # not zero: off stationarity
    for projector, g in zip(PROJECTORS, ev.riemannian_gradients):
        # Error O(u kappa^2 |grad R|) as for P_T itself; a factor 1e4 of margin.
        tol = 1e4 * _unit_roundoff(projector) * condition**2 * grad_scale
        np.testing.assert_allclose(
            g, g_ref, rtol=0, atol=tol, err_msg=type(projector).__name__
        )
