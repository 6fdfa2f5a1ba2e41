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
