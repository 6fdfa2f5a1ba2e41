"""`minimise_sharpness`: Riemannian Hessian products, the optimisers' convergence, the
verdicts, the pure core under `jit`/`vmap`, and flow-then-polish."""

import equinox as eqx
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow.theory import gatmiry

from .helpers import (
    manifold_catalogue,
    mlp_problem,
    point_on,
    quadrics_problem,
    two_layer_problem,
)


def _ellipsoid(x, A):
    return jnp.stack([x @ (A * x) - 1.0])


def _ellipsoid_manifold(start):
    r"""$\{x^\top \mathrm{diag}(1, 2, 3) x = 1\}$, $R = 4|Ax|^2$: its axis points
    $\pm e_i/\sqrt{a_i}$ are the critical points, with $R = 4a_i$: the minimum at
    $a_1$, a saddle at $a_2$ (tangent Hessian eigenvalues $-8$ and $24$) and the
    maximum at $a_3$."""
    return mf.ConstraintManifold(_ellipsoid, jnp.asarray(start), jnp.array([1.0, 2, 3]))


def _tail(theta, args):
    r"""$F = a - \frac43 b^{3/4}$: $R = 1 + b^{-1/2}$ falls towards its infimum 1
    only as $b \to \infty$."""
    del args
    a, b = theta
    return jnp.stack([a - (4 / 3) * b**0.75])


def _tangent_basis(jacobian):
    _, s, vt = np.linalg.svd(jacobian)
    return vt[np.sum(s > 1e-12 * s[0]) :].T


def _random_tangent(geometry, theta, seed):
    evaluation = geometry.evaluate(theta)
    v = jax.random.normal(jax.random.PRNGKey(seed), theta.shape, theta.dtype)
    v = geometry.project(evaluation, v)
    return v / jnp.linalg.norm(v), evaluation


# The matrix-free MLP's products are checked by test_matrix_free_agrees_with_dense
# (the same trust-region steps as the dense path's).
_HESSIAN_CASES = ("quadrics", "mlp", "two-layer-structured")


@eqx.filter_jit
def _hessian_and_differences(geometry, theta, v, steps):
    evaluation = geometry.evaluate(theta)
    product = geometry.hessian_product(theta, v, evaluation)

    def gradient_at(t):
        return geometry.evaluate(geometry.step(theta, t * v).theta).riemannian_gradient

    differences = [
        geometry.project(evaluation, (gradient_at(t) - gradient_at(-t)) / (2 * t))
        for t in steps
    ]
    return product, differences


@pytest.mark.parametrize(
    "manifold",
    [
        pytest.param(m, id=name)
        for name, m in manifold_catalogue()
        if name in _HESSIAN_CASES
    ],
)
def test_hessian_is_the_derivative_of_the_gradient_along_the_retraction(manifold):
    r"""$P_\theta\,\frac{d}{dt} P_T\nabla R(R_\theta(tv))|_{t=0} = \operatorname{Hess}
    R[v]$: central differences converge to the product at second order."""
    projector = mf.CGProjector() if manifold.matrix_free else mf.CholeskyProjector()
    geometry = mf.Geometry(manifold, projector)
    theta = point_on(manifold)
    v, _ = _random_tangent(geometry, theta, 0)
    product, differences = _hessian_and_differences(geometry, theta, v, (1e-2, 5e-3))
    errors = [float(jnp.linalg.norm(d - product)) for d in differences]
    scale = float(jnp.linalg.norm(product)) + 1.0
    # Second order: halving t quarters the error (ratio ~4; at least 3), unless the
    # error is already at the level of rounding.
    assert errors[1] <= 1e-9 * scale or errors[0] / errors[1] > 3.0, errors
    assert errors[1] <= 1e-3 * scale


def test_hessian_matches_a_dense_independent_riemannian_hessian():
    r"""On intersecting quadrics $F_k = x^\top A_k x - c_k$ the Lagrangian Hessian is
    $8\sum_k w_k A_k^2 - 2\sum_k\lambda_k A_k$ in closed form: its tangent
    restriction has the spectrum the verdict's Lanczos finds."""
    weights = np.array([0.5, 2.0])
    manifold = quadrics_problem(weights=jnp.asarray(weights))
    x = np.asarray(point_on(manifold))
    A = np.asarray(manifold.args[0])
    J = np.stack([2 * Ak @ x for Ak in A])
    grad = 8 * sum(w * Ak @ Ak @ x for w, Ak in zip(weights, A))
    lam = np.linalg.solve(J @ J.T, J @ grad)
    lagrangian = 8 * sum(w * Ak @ Ak for w, Ak in zip(weights, A)) - 2 * sum(
        lk * Ak for lk, Ak in zip(lam, A)
    )
    Q = _tangent_basis(J)
    expected = np.linalg.eigvalsh(Q.T @ lagrangian @ Q)

    geometry = mf.Geometry(manifold)
    theta = jnp.asarray(x)
    evaluation = geometry.evaluate(theta)
    hessian = geometry.hessian_operator(theta, evaluation)
    columns = np.stack([np.asarray(hessian(jnp.asarray(q))) for q in Q.T], axis=1)
    np.testing.assert_allclose(Q.T @ columns, Q.T @ lagrangian @ Q, atol=1e-10)
    verdict = mf.classify_point(geometry, theta)
    assert verdict.kind == "not_stationary"
    np.testing.assert_allclose(
        verdict.smallest_eigenvalues[: expected.size], expected, rtol=1e-9, atol=1e-9
    )


def test_trust_region_reaches_the_two_layer_closed_form_quadratically():
    """Theorem 3.3: from a random start, every pre-activation ends at
    phi^{-1}(y_i/m); the trust region gets there with ||grad|| squaring."""
    _, _, _, _, structured = two_layer_problem(m=5, n=4, d=6, seed=1)
    solution = mf.minimise_sharpness(structured)
    assert solution.result_name == "stationary"
    assert solution.gradient_norm <= 1e-10
    u_star = gatmiry.optimum_point(structured)
    assert np.max(np.abs(solution.theta - u_star)) <= 1e-8
    assert abs(solution.sharpness - gatmiry.minimum_sharpness(structured)) <= 1e-10
    assert solution.constraint_violation <= 1e-12
    # Quadratic convergence: in the last steps above rounding, log10 |grad| at
    # least ~doubles per step (exactly 2 for Newton; 1.6 allows the constant).
    g = solution.records.gradient_norm
    tail = g[(g < 1e-2) & (g > 1e-13)]
    assert tail.size >= 2
    ratios = np.log10(tail[1:]) / np.log10(tail[:-1])
    assert np.all(ratios >= 1.6), tail
    assert solution.verdict.kind == "strict_minimiser"
    # The closed-form smallest eigenvalue of the rate (Theorem 3.5's asymptotic).
    rate = gatmiry.asymptotic_rate(structured)
    assert solution.verdict.smallest_eigenvalues[0] == pytest.approx(rate, rel=1e-8)


def test_gradient_descent_converges_and_is_never_called_stationary_above_tolerance():
    _, _, _, _, structured = two_layer_problem(m=5, n=4, d=6, seed=1)
    solution = mf.minimise_sharpness(structured, solver=mf.RiemannianGradientDescent())
    assert solution.result_name == "stationary"
    assert solution.gradient_norm <= 1e-10
    assert np.all(solution.records.accepted[1:])
    assert abs(solution.sharpness - gatmiry.minimum_sharpness(structured)) <= 1e-10
    # Armijo: R falls at every step while the decrease is above its rounding.
    R = solution.records.sharpness
    visible = R[:-1] - R.min() > 1e-12
    assert np.all(np.diff(R)[visible] < 0)
    start = mf.classify_point(mf.Geometry(structured), structured.initial_point())
    assert start.kind == "not_stationary"


def test_verdicts_strict_saddle_and_at_infinity():
    # A saddle: gradient descent cannot leave it; the verdict says what it is.
    saddle = _ellipsoid_manifold([0.0, 1 / np.sqrt(2.0), 0.0])
    stuck = mf.minimise_sharpness(saddle, solver=mf.RiemannianGradientDescent())
    assert stuck.result_name == "stationary" and stuck.num_steps == 0
    assert stuck.verdict.kind == "saddle"
    assert stuck.verdict.negative_directions == 1
    np.testing.assert_allclose(stuck.verdict.smallest_eigenvalues, [-8.0, 24.0])
    # The trust region escapes it along the negative curvature, to the minimum.
    escaped = mf.minimise_sharpness(saddle)
    assert escaped.result_name == "stationary"
    assert escaped.sharpness == pytest.approx(4.0, abs=1e-12)
    assert escaped.verdict.kind == "strict_minimiser"
    np.testing.assert_allclose(escaped.verdict.smallest_eigenvalues, [16.0, 48.0])
    # Flat: see test_polish_from_the_flow_reaches_the_flows_own_limit.
    # At infinity: R = 1 + b^{-1/2} falls while |theta| grows without bound.
    tail = mf.ConstraintManifold(_tail, jnp.array([4 / 3, 1.0]))
    away = mf.minimise_sharpness(tail)
    assert away.result_name == "minimum_at_infinity"
    assert away.verdict.kind == "minimum_at_infinity"
    assert away.gradient_norm > 1e-10
    trend = away.trend()
    assert trend["sharpness_per_step"] < 0 < trend["log_norm_per_step"]


def test_pure_core_under_jit_and_vmap_over_starts():
    _, _, _, _, structured = two_layer_problem(m=5, n=4, d=6, seed=1)
    base = structured.initial_point()
    starts = base + 0.05 * jax.random.normal(jax.random.PRNGKey(3), (3,) + base.shape)

    def sharpness(theta):
        solution = mf.minimise_sharpness(structured, theta, verdict=False)
        return solution.sharpness, solution.gradient_norm, solution.result._value

    values, gradients, results = jax.jit(jax.vmap(sharpness))(starts)
    R_star = gatmiry.minimum_sharpness(structured)
    np.testing.assert_allclose(np.asarray(values), R_star, atol=1e-10)
    assert np.all(np.asarray(gradients) <= 1e-10)
    assert np.all(np.asarray(results) == int(mf.RESULTS.stationary._value))


def test_matrix_free_agrees_with_dense():
    model, X, y = mlp_problem()
    dense = mf.ZeroLossManifold(model, X, y, matrix_free=False)
    free = mf.ZeroLossManifold(model, X, y, matrix_free=True, chunk_size=2)
    theta0 = point_on(dense)
    a = mf.minimise_sharpness(dense, theta0, max_steps=15, throw=False, verdict=False)
    b = mf.minimise_sharpness(
        free,
        theta0,
        projector=mf.CGProjector(),
        max_steps=15,
        throw=False,
        verdict=False,
    )
    assert a.num_steps == b.num_steps
    np.testing.assert_allclose(b.sharpness, a.sharpness, rtol=1e-9)
    np.testing.assert_allclose(b.records.sharpness, a.records.sharpness, rtol=1e-8)


def test_polish_from_the_flow_reaches_the_flows_own_limit():
    """On the generic two-layer manifold the minimisers form a flat set (the
    components orthogonal to the data span): polishing the flow at t = 1 must end at
    the point the flow itself converges to, not elsewhere on that set."""
    _, _, _, generic, _ = two_layer_problem(m=5, n=4, d=6, seed=1)
    early = mf.solve_flow(generic, t1=1.0)
    limit = mf.solve_flow(generic)
    assert limit.result_name == "stationary"
    polished = mf.minimise_sharpness(generic, early.ys[-1])
    assert polished.result_name == "stationary"
    assert np.max(np.abs(polished.theta - limit.ys[-1])) <= 1e-7
    assert polished.sharpness == pytest.approx(float(limit.sharpness[-1]), abs=1e-10)
    # Flat: the components of each neuron orthogonal to the data span move neither
    # F nor R, so the minimiser is flat in m (d - n) = 10 directions.
    assert polished.verdict.kind == "flat"
    assert polished.verdict.flat_directions == 10
    assert polished.verdict.negative_directions == 0


@pytest.mark.parametrize(
    "options, parameter",
    [
        (dict(gradient_tolerance=-1.0), "gradient_tolerance"),
        (dict(gradient_tolerance=float("nan")), "gradient_tolerance"),
        (dict(max_steps=10.5), "max_steps"),
        (dict(max_steps=0), "max_steps"),
        (dict(max_steps=True), "max_steps"),
        (dict(verdict_iterations=0), "verdict_iterations"),
        (dict(curvature_tolerance=0.0), "curvature_tolerance"),
        (dict(solver=mf.CholeskyProjector()), "solver"),
        (dict(minimum_at_infinity=3), "minimum_at_infinity"),
        (dict(theta0=jnp.zeros(3)), "theta0"),
        (dict(theta0=jnp.full(5, jnp.nan)), "theta0"),
    ],
)
def test_bad_input_is_an_input_error(options, parameter):
    manifold = quadrics_problem()
    theta0 = options.pop("theta0", None)
    # A value of the wrong type is refused by the annotations' checker first where
    # one runs (as in this suite: a TypeError), else by the InputError.
    with pytest.raises((mf.InputError, TypeError)) as error:
        mf.minimise_sharpness(manifold, theta0, **options)
    if isinstance(error.value, mf.InputError):
        assert error.value.parameter == parameter
    else:
        assert parameter in str(error.value)


def test_unreachable_start_is_an_input_error():
    manifold = _ellipsoid_manifold([0.0, 1 / np.sqrt(2.0), 0.0])
    with pytest.raises(mf.InputError, match="retracted"):
        mf.minimise_sharpness(manifold, jnp.zeros(3))
