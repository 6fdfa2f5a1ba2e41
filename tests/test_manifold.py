import equinox as eqx
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow._manifold import check_data

from .helpers import (
    deep_linear_constraint,
    deep_linear_problem,
    mlp_problem,
    quadrics_problem,
    two_layer_problem,
)


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


def test_bad_input_errors_are_input_errors():
    model, X, y = mlp_problem()
    with pytest.raises(mf.InputError, match="leading dimension 2"):
        mf.ZeroLossManifold(model, X, y[:2])
    with pytest.raises(mf.InputError, match="no trainable leaves"):
        mf.ZeroLossManifold(model, X, y, filter_spec=False)


def test_models_and_data_that_do_not_fit_are_input_errors():
    """Each mistake gives an InputError naming the parameter, never a raw JAX error."""
    model, X, y = mlp_problem()  # model: x of shape (2,) -> scalar
    rng = np.random.default_rng(3)
    cases = [
        (lambda: mf.ZeroLossManifold(model, X[:, 0], y), "X", r"X\[:, None\]"),
        (
            lambda: mf.ZeroLossManifold(model, rng.standard_normal((y.size, 3)), y),
            "X",
            r"an example has shape \(3,\)",
        ),
        (
            lambda: mf.ZeroLossManifold(model, X, y, filter_spec=[True, False]),
            "filter_spec",
            "pytree prefix of the model",
        ),
        (
            lambda: mf.ZeroLossManifold(lambda x: jnp.sum(x), X, y),
            "model",
            "plain function has no parameters",
        ),
        (
            lambda: mf.ZeroLossManifold(
                eqx.nn.Linear(2, 3, key=jax.random.PRNGKey(0)), X, y
            ),
            "model",
            "returned shape \\(3,\\)",
        ),
        (
            lambda: mf.solve_flow(mf.ZeroLossManifold(model, X, y), model.layers[0]),
            "theta0",
            "structure differs",
        ),
    ]
    for make, parameter, words in cases:
        with pytest.raises(mf.InputError, match=words) as error:
            make()
        assert error.value.parameter == parameter


def test_the_suggested_scalar_wrapper_works_and_models_give_coordinates():
    """The fix the vector-output message suggests builds a manifold, and a model of
    the manifold's structure can be given as theta0."""
    _, X, y = mlp_problem()
    net = eqx.nn.Linear(2, 3, key=jax.random.PRNGKey(0))
    wrapped = jax.tree_util.Partial(lambda net, x: net(x)[0], net)
    manifold = mf.ZeroLossManifold(wrapped, X, y)
    assert manifold.dimension == 9  # the whole 2 -> 3 layer: weight and bias
    theta = manifold.to_coordinates(wrapped)
    np.testing.assert_array_equal(theta, manifold.initial_point())
    moved = manifold.to_parameters(theta + 1.0)
    np.testing.assert_array_equal(manifold.to_coordinates(moved), theta + 1.0)
    # f is linear in (weight, bias): R is constant on Gamma, every point stationary.
    solution = mf.solve_flow(manifold, moved, t1=0.01)
    assert solution.stationary and solution.num_steps == 0
    assert np.max(solution.constraint_violation) <= 1e-12


def test_identical_inputs_with_different_labels_mean_an_empty_manifold():
    X = np.array([[1.0, 2.0], [0.0, 1.0], [1.0, 2.0], [3.0, 1.0]])
    y = np.array([1.0, 0.5, -1.0, 2.0])
    with pytest.raises(mf.InputError, match=r"Rows 0 and 2 of X are identical") as info:
        check_data(X, y)
    message = str(info.value)
    assert "y[0] = 1.0" in message and "y[2] = -1.0" in message
    assert "empty" in message and "Remove one of the rows or fix the labels" in message
    model, _, _ = mlp_problem()
    with pytest.raises(mf.InputError, match="Rows 0 and 2"):
        mf.ZeroLossManifold(model, X, y)
    # Identical rows with equal labels are a redundant constraint, not an empty set.
    y[2] = y[0]
    check_data(X, y)


def test_constraint_manifold_closed_form():
    """Quadrics F_k(x) = x^T A_k x - c_k: J_k = 2 A_k x, R = 4 sum_k w_k |A_k x|^2,
    grad R = 8 sum_k w_k A_k^2 x, everywhere (here off the manifold)."""
    for manifold in [
        quadrics_problem(D=3, n=1, seed=1),
        quadrics_problem(weights=jnp.array([0.5, 2.0])),
    ]:
        x = manifold.initial_point() + 0.1
        A, c = map(np.asarray, manifold.args)
        w = np.asarray(manifold.weights)
        Ax = np.einsum("kij,j->ki", A, x)
        lin = eqx.filter_jit(manifold.linearise)(x)
        # Entries are short sums of products: rounding O(eps) relative.
        np.testing.assert_allclose(manifold.constraint(x), Ax @ x - c, rtol=1e-13)
        np.testing.assert_allclose(lin.jacobian.as_matrix(), 2 * Ax, rtol=1e-13)
        np.testing.assert_allclose(lin.gram, 4 * Ax @ Ax.T, rtol=1e-13)
        np.testing.assert_allclose(
            lin.sharpness, 4 * np.sum(w * np.sum(Ax**2, axis=1)), rtol=1e-13
        )
        np.testing.assert_allclose(
            lin.gradient, 8 * np.einsum("k,kij,kj->i", w, A, Ax), rtol=1e-12
        )


def test_constraint_manifold_pytree_and_filter_spec():
    full = deep_linear_problem()
    Ws, args = full.to_parameters(full.initial_point()), full.args
    assert full.dimension == 4 * 3 + 4 * 4 + 3 * 4
    assert full.num_constraints == 3
    np.testing.assert_array_equal(full.weights, np.ones(3))
    # Freeze the middle layer: it is not a coordinate, and it stays fixed.
    frozen = mf.ConstraintManifold(
        deep_linear_constraint, Ws, args, filter_spec=(True, False, True)
    )
    assert frozen.dimension == 4 * 3 + 3 * 4
    theta = frozen.initial_point() + 0.1
    W1, W2, W3 = frozen.to_parameters(theta)
    np.testing.assert_array_equal(W2, Ws[1])
    np.testing.assert_allclose(W1, Ws[0] + 0.1)
    np.testing.assert_allclose(
        frozen.constraint(theta),
        deep_linear_constraint((W1, W2, W3), args),
        rtol=1e-13,
    )
    # The Jacobian is the one over the trained leaves only.
    J_full = jax.jacfwd(full.constraint)(
        jnp.concatenate([W1.ravel(), W2.ravel(), W3.ravel()])
    )
    J = frozen.linearise(theta).jacobian.as_matrix()
    np.testing.assert_allclose(J, np.delete(J_full, np.s_[12:28], axis=1), rtol=1e-12)


def test_constraint_manifold_args_are_traced_not_constants():
    traces = []

    @eqx.filter_jit
    def constraint(manifold, theta):
        traces.append(None)
        return manifold.constraint(theta)

    near = deep_linear_problem(offset=1e-2)
    far = deep_linear_problem(offset=1.0)  # same W and p, another w*
    assert any(leaf is near.args[1] for leaf in jax.tree_util.tree_leaves(near))
    theta = near.initial_point()
    F_near, F_far = constraint(near, theta), constraint(far, theta)
    assert len(traces) == 1  # the data are arguments: no recompilation
    np.testing.assert_allclose(F_near - F_far, far.args[1] - near.args[1], rtol=1e-12)


def test_constraint_manifold_input_errors():
    x = jnp.array([0.5, -1.0, 2.0])
    identity = lambda x, args: x[:2]
    with pytest.raises(mf.InputError, match=r"1-D floating-point.*shape \(2, 3\)"):
        mf.ConstraintManifold(lambda x, args: jnp.stack([x, x]), x)
    with pytest.raises(mf.InputError, match=r"1-D floating-point.*shape \(\)"):
        mf.ConstraintManifold(lambda x, args: jnp.sum(x), x)
    with pytest.raises(mf.InputError, match="1-D floating-point.*int"):
        mf.ConstraintManifold(lambda x, args: jnp.zeros(2, int), x)
    with pytest.raises(mf.InputError, match="1-D floating-point.*tuple"):
        mf.ConstraintManifold(lambda x, args: (x, x), x)
    with pytest.raises(mf.InputError, match="n = 4 equations but .* only D = 3"):
        mf.ConstraintManifold(lambda x, args: jnp.concatenate([x, x[:1]]), x)
    with pytest.raises(mf.InputError, match=r"not finite .* F\[1\] = nan"):
        mf.ConstraintManifold(lambda x, args: jnp.sqrt(x), x)
    with pytest.raises(mf.InputError, match=r"shape \(2,\), got \(3,\)"):
        mf.ConstraintManifold(identity, x, weights=jnp.ones(3))
    with pytest.raises(mf.InputError, match=r"non-negative, but weights\[1\] = -1"):
        mf.ConstraintManifold(identity, x, weights=jnp.array([1.0, -1.0]))
    with pytest.raises(mf.InputError, match=r"weights\[0\] = nan"):
        mf.ConstraintManifold(identity, x, weights=jnp.array([jnp.nan, 1.0]))
    with pytest.raises(mf.InputError, match="no trainable leaves"):
        mf.ConstraintManifold(identity, jnp.arange(3))
    # Valid input passes, with args and weights.
    manifold = mf.ConstraintManifold(
        lambda x, args: x[:2] - args, x, jnp.ones(2), weights=[1.0, 0.0]
    )
    assert manifold.num_constraints == 2 and manifold.dimension == 3


def test_a_tuple_of_layers_is_taken_as_the_model_it_stands_for():
    """For a ConstraintManifold over a tuple of same-shape matrices, a tuple of that
    structure is the pytree, not a 3-d array."""
    manifold = deep_linear_problem(widths=(3, 3, 3, 3))
    layers = manifold.to_parameters(manifold.initial_point())
    assert isinstance(layers, tuple) and np.shape(np.asarray(layers)) == (3, 3, 3)
    np.testing.assert_array_equal(
        mf.solve_flow(manifold, layers, t1=0.01).ys[0],
        mf.solve_flow(manifold, t1=0.01).ys[0],
    )
