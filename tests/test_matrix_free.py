"""The matrix-free generic path against the dense one, and its conjugate gradients.

The two paths compute the same mathematics by different autodiff routes (dense: one
reverse pass through the n x D Jacobian; matrix-free: forward-mode and reverse-mode
products of the batched model, per-example forward-over-reverse products in chunks,
the Gram matrix in blocks), so they agree to rounding amplified by the conditioning of
J J^T. The contract tests of `test_manifold_contract.py` and `test_retraction.py`
also run on a matrix-free MLP of the catalogue.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow._projection import conjugate_gradients

from .helpers import two_layer_problem


def _mlp_problem(n=10, d=4, width=6, depth=2, seed=0):
    key_model, key_x, key_y = jax.random.split(jax.random.PRNGKey(seed), 3)
    model = eqx.nn.MLP(d, "scalar", width, depth, activation=jnp.tanh, key=key_model)
    X = jax.random.normal(key_x, (n, d))
    y = jax.random.normal(key_y, (n,))
    return model, X, y


def _pair(model, X, y, **kwargs):
    dense = mf.ZeroLossManifold(model, X, y, matrix_free=False, **kwargs)
    free = mf.ZeroLossManifold(model, X, y, matrix_free=True, chunk_size=3, **kwargs)
    return dense, free


def _problems():
    model, X, y = _mlp_problem()
    net, X2, y2, _, _ = two_layer_problem(m=6, n=5, d=7, seed=3)
    return [
        pytest.param(_pair(model, X, y), id="mlp"),
        pytest.param(_pair(net, X2, y2, filter_spec=net.filter_spec()), id="two-layer"),
    ]


@eqx.filter_jit
def _evaluate(manifold, projector, theta):
    return mf.SharpnessFlow(manifold, projector).evaluate(theta)


@pytest.mark.parametrize("pair", _problems())
def test_matrix_free_agrees_with_dense(pair):
    dense, free = pair
    assert not dense.matrix_free and free.matrix_free
    # A short trajectory of each, from the same start, to t = 0.2.
    solutions = [mf.solve_flow(m, t1=0.2) for m in (dense, free)]
    for sol in solutions:
        assert sol.result == mf.RESULTS.t1_reached, sol.result
        assert sol.num_steps >= 3  # several steps, not one
    drift = np.abs(solutions[0].theta_final - solutions[1].theta_final).max()
    # Each solve is within its PID tolerances (rtol 1e-10, atol 1e-12) of the exact
    # flow; the fields agree to ~1e-13 (below), so the two runs take the same steps
    # and differ by rounding: 1e-9 is about 1e4x the measured.
    assert drift <= 1e-9, drift
    theta = jnp.asarray(solutions[0].theta_final)
    # P_T grad R, by Cholesky on the block-formed Gram matrix and by CG (backward
    # error 1e-14 |G| |lambda|), against Cholesky on the dense J (about
    # eps kappa(G) |grad R|); the measured difference is ~1e-13.
    reference = _evaluate(dense, mf.CholeskyProjector(), theta)
    for projector in (mf.CholeskyProjector(), mf.CGProjector()):
        matrix_free = _evaluate(free, projector, theta)
        assert matrix_free.result == lx.RESULTS.successful
        difference = jnp.abs(
            matrix_free.riemannian_gradient - reference.riemannian_gradient
        ).max()
        assert float(difference) <= 1e-10, difference
        assert float(reference.gradient_norm) > 1e-2  # not a comparison of zeros
    # R and grad R themselves: sums of products, rounding only.
    lin_dense, lin_free = dense.linearise(theta), free.linearise(theta)
    np.testing.assert_allclose(lin_free.sharpness, lin_dense.sharpness, rtol=1e-13)
    scale = float(jnp.abs(lin_dense.gradient).max())
    np.testing.assert_allclose(
        lin_free.gradient, lin_dense.gradient, rtol=0, atol=1e-13 * scale
    )
    np.testing.assert_allclose(
        lin_free.gram_diagonal, jnp.diag(lin_dense.gram), rtol=1e-13
    )
    gram_scale = float(jnp.abs(lin_dense.gram).max())
    np.testing.assert_allclose(
        lin_free.gram, lin_dense.gram, rtol=0, atol=1e-13 * gram_scale
    )


def test_chunks_do_not_change_the_gradient():
    """Chunk sizes that do and do not divide n (the last chunk padded with weight
    zero) give the same R, grad R and Gram matrix."""
    model, X, y = _mlp_problem(n=7)
    theta = mf.ZeroLossManifold(model, X, y).initial_point()
    values = []
    for chunk in (1, 3, 7, 100):
        manifold = mf.ZeroLossManifold(model, X, y, matrix_free=True, chunk_size=chunk)
        assert manifold.chunk_size == min(chunk, 7)
        lin = manifold.linearise(theta)
        values.append((float(lin.sharpness), np.asarray(lin.gradient), lin.gram))
    for R, gradient, gram in values[1:]:
        np.testing.assert_allclose(R, values[0][0], rtol=1e-13)
        np.testing.assert_allclose(gradient, values[0][1], rtol=0, atol=1e-12)
        np.testing.assert_allclose(gram, values[0][2], rtol=0, atol=1e-12)
    np.testing.assert_allclose(gram, gram.T, rtol=0, atol=1e-13)  # blocks in place


def test_automatic_choice_is_dense_for_a_small_model():
    model, X, y = _mlp_problem()
    assert not mf.ZeroLossManifold(model, X, y).matrix_free


def test_conjugate_gradients_reach_a_backward_error_when_ill_conditioned():
    """At kappa(J J^T) = 1e10 a residual test on |b| alone cannot be met (rounding
    leaves eps kappa |b|); the backward-error test is, and the answer is as good as
    a Cholesky solve's."""
    rng = np.random.default_rng(4)
    n, D = 12, 30
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((D, n)))
    s = np.geomspace(1.0, 1e5, n)
    J = jnp.asarray(U @ np.diag(s) @ V.T)
    rhs = rng.standard_normal(n)
    exact = U @ ((U.T @ rhs) / s**2)  # from the factors: no kappa in its rounding
    lin = mf.Linearisation(
        lx.MatrixLinearOperator(J), J @ J.T, jnp.asarray(0.0), jnp.zeros(D)
    )
    value, result, steps = conjugate_gradients(
        lambda v: J @ (J.T @ v), jnp.asarray(rhs), jnp.zeros(n), None, 1e-14, 0.0, 1000
    )
    assert result == lx.RESULTS.successful
    cholesky = np.asarray(mf.CholeskyProjector().solve_gram(lin, jnp.asarray(rhs)))
    error, cholesky_error = (
        np.abs(np.asarray(x) - exact).max() for x in (value, cholesky)
    )
    # Both err by about eps kappa(G) |lambda| (the rounding of J itself moves the
    # solution that much); CG within 100x of Cholesky.
    assert cholesky_error > 0
    assert error <= 100 * cholesky_error, (error, cholesky_error)
    assert int(steps) > n  # the test exercises the iteration, with restarts


def test_warm_start_and_preconditioner_do_not_change_the_answer():
    """CG from zero, from the multipliers of a nearby point, with and without the
    Jacobi preconditioner: the same multipliers to the solve's accuracy, and all
    agree with the Cholesky solve on the block-formed Gram matrix."""
    model, X, y = _mlp_problem(n=16, width=12)
    manifold = mf.ZeroLossManifold(model, X, y, matrix_free=True, chunk_size=5)
    theta = manifold.initial_point()
    lin = manifold.linearise(theta)
    step = 1e-3 * lin.gradient / jnp.linalg.norm(lin.gradient)
    nearby = manifold.linearise(theta + step)
    guess = mf.CholeskyProjector().multipliers(nearby, nearby.gradient)
    reference = mf.CholeskyProjector().multipliers(lin, lin.gradient)
    assert float(jnp.abs(guess - reference).max()) > 1e-6  # a guess, not the answer
    for projector in (mf.CGProjector(), mf.CGProjector(precondition=False)):
        for start in (None, guess):
            lam, result = projector.multipliers_with_result(lin, lin.gradient, start)
            assert result == lx.RESULTS.successful
            # Both solves err by about eps kappa(G) |lambda| (kappa ~ 1e5 here).
            np.testing.assert_allclose(
                lam, reference, rtol=0, atol=1e-9 * float(jnp.abs(reference).max())
            )


def test_cholesky_refuses_a_linearisation_without_gram():
    model, X, y = _mlp_problem()
    lin = mf.ZeroLossManifold(model, X, y, matrix_free=True).linearise(
        mf.ZeroLossManifold(model, X, y).initial_point()
    )
    lin = eqx.tree_at(lambda l: l.gram, lin, None, is_leaf=lambda x: x is None)
    with pytest.raises(mf.InputError, match="CGProjector"):
        mf.CholeskyProjector().solve_gram(lin, jnp.ones(10))
    value, result = mf.CGProjector().solve_gram_with_result(lin, jnp.ones(10))
    assert result == lx.RESULTS.successful


@pytest.mark.parametrize("chunk", [0, -2, True])
def test_bad_chunk_size(chunk):
    model, X, y = _mlp_problem()
    with pytest.raises(mf.InputError, match="chunk_size"):
        mf.ZeroLossManifold(model, X, y, matrix_free=True, chunk_size=chunk)
