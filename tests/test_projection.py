import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings, strategies as st

from .helpers import PROJECTORS, random_linearisation


N, D = 4, 9
_EPS = np.finfo(np.float64).eps


@jax.jit
def _projection_matrix(projector, lin):
    project = lambda v: projector.project(lin, v)[0]
    return jax.vmap(project, out_axes=1)(jnp.eye(D))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), log_condition=st.floats(0.0, 3.0))
@pytest.mark.parametrize("projector", PROJECTORS, ids=lambda p: type(p).__name__)
def test_projector_properties(projector, seed, log_condition):
    condition = 10.0**log_condition
    lin, J = random_linearisation(N, D, condition, seed)
    P = np.asarray(_projection_matrix(projector, lin))
    # Reference: orthonormal basis of ker J from scipy.
    K = scipy.linalg.null_space(np.asarray(J))
    P_ref = K @ K.T
    tol = 1e3 * _EPS * condition**2
    np.testing.assert_allclose(P @ P, P, atol=tol)
    np.testing.assert_allclose(P, P.T, atol=tol)
    np.testing.assert_allclose(np.asarray(J) @ P, 0, atol=tol * condition)
    np.testing.assert_allclose(P, P_ref, atol=tol)
    # Multipliers: v - J^T lambda is the projection.
    v = np.random.default_rng(seed).standard_normal(D)
    Pv, lam = projector.project(lin, jnp.asarray(v))
    np.testing.assert_allclose(v - np.asarray(J).T @ lam, Pv, atol=tol)


def test_svd_projector_handles_rank_deficiency():
    rng = np.random.default_rng(0)
    J = rng.standard_normal((N, D))
    J[-1] = J[0] + 2 * J[1]  # a dependent row
    import lineax as lx

    lin = mf.Linearisation(
        lx.MatrixLinearOperator(jnp.asarray(J)),
        jnp.asarray(J @ J.T),
        jnp.asarray(0.0),
        jnp.zeros(D),
    )
    P = np.asarray(_projection_matrix(mf.SVDProjector(), lin))
    K = scipy.linalg.null_space(J)
    assert K.shape[1] == D - N + 1
    np.testing.assert_allclose(P, K @ K.T, atol=1e-12)


def test_svd_projector_keeps_constraints_that_j_still_sees():
    """Near a singular point of Gamma, sigma_min(J) = 1e-9 while sigma_max(J) = 1: J
    still has full rank to rounding, so P_T must remove that direction. A cut-off on
    sigma(J J^T) = sigma(J)^2 (1e-18 < n eps) would drop it, and the field would jump
    when the direction is dropped."""
    rng = np.random.default_rng(1)
    left, _ = np.linalg.qr(rng.standard_normal((N, N)))
    right, _ = np.linalg.qr(rng.standard_normal((D, N)))
    singular = np.array([1.0, 0.3, 1e-5, 1e-9])
    J = left @ np.diag(singular) @ right.T
    lin = mf.Linearisation(
        __import__("lineax").MatrixLinearOperator(jnp.asarray(J)),
        jnp.asarray(J @ J.T),
        jnp.asarray(0.0),
        jnp.zeros(D),
    )
    v = rng.standard_normal(D)
    Pv, lam = mf.SVDProjector().project(lin, jnp.asarray(v))
    Pv = np.asarray(Pv)
    # Every row-space direction is removed, the weakest included: J P v is rounding
    # (a dropped direction would leave J P v ~ sigma_min |v| = 1e-9).
    assert np.linalg.norm(J @ Pv) <= 1e2 * _EPS * np.linalg.norm(v)
    # An orthogonal projection onto a space of dimension D - N.
    assert abs(Pv @ (v - Pv)) <= 1e2 * _EPS * (v @ v)
    P = np.asarray(_projection_matrix(mf.SVDProjector(), lin))
    np.testing.assert_allclose(np.trace(P), D - N, atol=1e-12)
    # The multipliers reproduce the normal part to the accuracy kappa(J) allows.
    np.testing.assert_allclose(J.T @ np.asarray(lam), v - Pv, atol=1e-6)
