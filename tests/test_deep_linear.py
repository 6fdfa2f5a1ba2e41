"""Deep linear networks (Marion & Chizat 2024): model, sharpness routines, gradient
flow and descent, and the paper's bounds."""

import equinox as eqx
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow.experiments.deep_linear import DeepLinearRisk
from manifoldflow.models import (
    deep_linear_data,
    DeepLinearNet,
    end_to_end,
    gaussian_init,
    residual_init,
)
from manifoldflow.theory import marion_chizat as mc


def _problem(depth=3, d=3, n=20, scale=0.5, seed=0, init="gaussian"):
    X, y, _ = deep_linear_data(n, d, seed)
    key = jax.random.PRNGKey(seed + 1)
    if init == "gaussian":
        net = gaussian_init(key, (d, *([d] * (depth - 1)), 1), scale)
    else:
        net = residual_init(key, depth, d, scale)
    return net, DeepLinearRisk(net.p, jnp.asarray(X), jnp.asarray(y)), X, y


def _tanh_mlp_loss():
    model = eqx.nn.MLP(
        2, "scalar", 3, 1, activation=jnp.tanh, key=jax.random.PRNGKey(3)
    )
    X = jax.random.normal(jax.random.PRNGKey(4), (5, 2))
    y = jax.random.normal(jax.random.PRNGKey(5), (5,))
    params, static = eqx.partition(model, eqx.is_array)

    class Loss(eqx.Module):
        static: eqx.Module = eqx.field(static=True)

        def __call__(self, params):
            net = eqx.combine(params, self.static)
            return jnp.mean((jax.vmap(net)(X) - y) ** 2)

    return Loss(static), params


def test_data_has_unit_least_squares_solution():
    X, y, w_star = deep_linear_data(50, 5, 0)
    np.testing.assert_allclose(np.linalg.norm(w_star), 1.0, rtol=1e-14)
    np.testing.assert_allclose(w_star, np.linalg.lstsq(X, y, rcond=None)[0], atol=1e-12)


def test_network_output_and_shapes():
    net, _, X, _ = _problem(depth=4, d=3)
    product = np.linalg.multi_dot([np.asarray(W) for W in net.weights[::-1]])
    np.testing.assert_allclose(
        np.asarray(net.product()), product.T @ np.asarray(net.p), rtol=1e-13
    )
    assert net.widths == (3, 3, 3, 3, 1)
    with pytest.raises(mf.InputError, match="columns"):
        DeepLinearNet([np.ones((3, 2)), np.ones((1, 4))])
    with pytest.raises(mf.InputError, match="depth"):
        DeepLinearNet([])
    with pytest.raises(mf.InputError, match="p must have shape"):
        DeepLinearNet([np.ones((3, 2))], p=np.ones(2))


@pytest.mark.parametrize("where", ["random", "minimiser", "mlp"])
def test_lanczos_matches_dense_eigvalsh(where):
    if where == "mlp":
        loss, params = _tanh_mlp_loss()
    else:
        net, loss, X, y = _problem(scale=0.8)
        params = list(net.weights)
        if where == "minimiser":
            c = mc.data_constants(X, y)
            params = [
                jnp.asarray(W) for W in mc.balanced_minimiser(c, net.p, net.widths)
            ]
    dense = np.linalg.eigvalsh(mf.hessian_matrix(loss, params))
    estimate = mf.hessian_max_eigenvalue(loss, params)
    assert estimate.converged
    assert abs(estimate.value - dense[-1]) <= 1e-8 * abs(dense[-1])
    # The reported residual bound holds (up to the dense solver's own rounding).
    assert abs(estimate.value - dense[-1]) <= estimate.error + 1e-13 * abs(dense[-1])


def test_exact_and_hutchinson_trace():
    loss, params = _tanh_mlp_loss()
    dense = np.trace(mf.hessian_matrix(loss, params))
    assert abs(mf.hessian_trace(loss, params, batch=7) - dense) <= 1e-10 * abs(dense)
    estimate = mf.hutchinson_trace(loss, params, num_samples=400)
    # Unbiased, with a standard error from the sample: 5 errors is a 6e-7 tail.
    assert abs(estimate.value - dense) <= 5 * estimate.standard_error
    # The 95% interval is the normal quantile 1.96 times the standard error.
    half = (estimate.interval[1] - estimate.interval[0]) / 2
    assert abs(half / estimate.standard_error - 1.959964) <= 1e-5


def test_lanczos_near_degenerate_top_eigenvalues():
    """Top eigenvalues 1 and 1 - 1e-6 of a 200 x 200 quadratic: the residual bound
    holds and the value is the largest eigenvalue to 1e-8."""
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    values = np.concatenate([[1.0, 1.0 - 1e-6], rng.uniform(-1, 0.9, 198)])
    H = jnp.asarray((Q * values) @ Q.T)

    def loss(x):
        return 0.5 * x @ H @ x

    for seed in range(3):
        estimate = mf.hessian_max_eigenvalue(
            loss, jnp.zeros(200), key=jax.random.PRNGKey(seed)
        )
        assert estimate.converged
        assert abs(estimate.value - 1.0) <= max(estimate.error, 1e-8)
        assert abs(estimate.value - 1.0) <= 1e-8


def test_one_dimensional_example_has_sharpness_2L():
    """R(w) = (1 - w_1 ... w_L)^2 has sharpness exactly 2L at w = 1 (the paper's
    illustration)."""
    for depth in (2, 5, 10):
        loss = DeepLinearRisk(jnp.ones(1), jnp.ones((1, 1)), jnp.ones(1))
        weights = [jnp.ones((1, 1))] * depth
        value = mf.hessian_max_eigenvalue(loss, weights).value
        assert abs(value - 2 * depth) <= 1e-10 * depth


@pytest.mark.parametrize("p_kind", ["one", "random"])
def test_balanced_minimiser_sharpness_formula(p_kind):
    X, y, _ = deep_linear_data(30, 4, 2)
    c = mc.data_constants(X, y)
    depth = 5
    if p_kind == "one":
        p, widths = np.ones(1), (4, 4, 4, 4, 4, 1)
    else:
        p = np.random.default_rng(0).standard_normal(3)
        widths = (4, 3, 3, 3, 3, 3)
    weights = mc.balanced_minimiser(c, p, widths)
    np.testing.assert_allclose(
        np.asarray(end_to_end([jnp.asarray(W) for W in weights], jnp.asarray(p))),
        c.w_star,
        atol=1e-14,
    )
    loss = DeepLinearRisk(jnp.asarray(p), jnp.asarray(X), jnp.asarray(y))
    measured = mf.hessian_max_eigenvalue(loss, [jnp.asarray(W) for W in weights])
    exact = mc.balanced_sharpness(c, p, depth)
    assert abs(measured.value - exact) <= 1e-9 * exact
    assert mc.uniform_lower_bound(c, p, depth) <= exact


def test_lower_bounds_hold_on_unbalanced_minimisers():
    """Rescaling W_k -> C W_k, W_(k+1) -> W_(k+1)/C and rotating between layers keeps
    w_prod = w*: every such minimiser obeys both lower bounds of Theorem 2."""
    X, y, _ = deep_linear_data(30, 3, 4)
    c = mc.data_constants(X, y)
    p = np.ones(1)
    widths = (3, 3, 3, 3, 1)
    rng = np.random.default_rng(1)
    loss = DeepLinearRisk(jnp.asarray(p), jnp.asarray(X), jnp.asarray(y))
    for _ in range(6):
        weights = mc.balanced_minimiser(c, p, widths)
        for k in range(len(weights) - 1):
            Q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
            C = np.exp(rng.uniform(-1, 1))
            weights[k] = C * Q @ weights[k]
            weights[k + 1] = weights[k + 1] @ Q.T / C
        params = [jnp.asarray(W) for W in weights]
        np.testing.assert_allclose(
            np.asarray(end_to_end(params, jnp.asarray(p))), c.w_star, atol=1e-12
        )
        S = mf.hessian_max_eigenvalue(loss, params).value
        assert S >= mc.layer_lower_bound(c, weights) * (1 - 1e-9)
        assert S >= mc.uniform_lower_bound(c, p, 4) * (1 - 1e-9)


def test_gradient_flow_conserves_balancedness_and_converges():
    net, loss, X, y = _problem(depth=4, d=3, scale=0.6)
    path = mf.gradient_flow(loss, net.weights, gtol=1e-9)
    assert path.converged
    c = mc.data_constants(X, y)
    assert path.loss[-1] - c.R_min <= 1e-12
    # Lemma 1, at rtol 1e-10 (the conserved quantities are O(1) here).
    assert np.max(mc.balancedness_drift(path.params)) <= 1e-9
    w = np.asarray(end_to_end(path.final, net.p))
    assert np.linalg.norm(w - c.w_star) <= 1e-7


def test_gradient_descent_balancedness_drift_shrinks_with_lr():
    net, loss, _, _ = _problem(depth=4, d=3, scale=0.6)
    drifts = []
    for lr in (0.04, 0.02, 0.01):
        path = mf.gradient_descent(loss, net.weights, lr=lr, num_steps=int(40 / lr))
        assert not path.diverged
        drifts.append(np.max(mc.balancedness_drift(path.params)))
    # O(lr) drift: halving lr about halves it.
    assert drifts[0] > drifts[1] > drifts[2] > 0
    assert drifts[2] / drifts[0] < 0.5


def test_gradient_descent_divergence_is_reported():
    net, loss, _, _ = _problem(depth=4, d=3, scale=1.0)
    path = mf.gradient_descent(loss, net.weights, lr=50.0, num_steps=2000)
    assert path.diverged


@pytest.mark.parametrize("seed", [0, 1])
def test_small_initialisation_lands_between_the_bounds(seed):
    """The paper's setting: L = 10, d = 5, n = 50, Gaussian init of scale 0.3."""
    X, y, _ = deep_linear_data(50, 5, 0)
    net = gaussian_init(jax.random.PRNGKey(seed), (5, *[5] * 9, 1), 0.3)
    loss = DeepLinearRisk(net.p, jnp.asarray(X), jnp.asarray(y))
    path = mf.gradient_flow(loss, net.weights, gtol=1e-8)
    assert path.converged
    c = mc.data_constants(X, y)
    S = mf.hessian_max_eigenvalue(loss, list(path.final)).value
    assert mc.uniform_lower_bound(c, net.p, 10) <= S <= mc.corollary_2_bound(c, 10)


def test_bad_input():
    with pytest.raises(mf.InputError, match="depth"):
        residual_init(jax.random.PRNGKey(0), 0, 3, 0.25)
    with pytest.raises(mf.InputError, match="widths"):
        gaussian_init(jax.random.PRNGKey(0), (3,), 0.3)
    with pytest.raises(mf.InputError, match="zero"):
        gaussian_init(jax.random.PRNGKey(0), (3, 3, 1), 0.3, zero=3)
    net, loss, _, _ = _problem()
    with pytest.raises(mf.InputError, match="learning rate"):
        mf.gradient_descent(loss, net.weights, lr=0.0, num_steps=10)
    with pytest.raises(mf.InputError, match="rtol"):
        mf.hessian_max_eigenvalue(loss, net.weights, rtol=0.0)
    with pytest.raises(mf.InputError, match="num_samples"):
        mf.hutchinson_trace(loss, net.weights, num_samples=1)


def test_rank_deficient_data_gives_no_full_rank():
    X = np.ones((10, 3))
    c = mc.data_constants(X, np.arange(10.0))
    assert not c.full_rank and c.lambda_min > 0


def test_critical_learning_rate_within_a_factor_2():
    """Residual init, s = 0.25, L = 5, 1000 steps: GD converges at half the estimate
    2/S_min ~ 1/(L a) and does not at twice it."""
    X, y, _ = deep_linear_data(50, 5, 0)
    c = mc.data_constants(X, y)
    depth = 5
    net = residual_init(jax.random.PRNGKey(0), depth, 5, 0.25)
    loss = DeepLinearRisk(net.p, jnp.asarray(X), jnp.asarray(y))
    estimate = mc.critical_learning_rate(c, net.p, depth)
    outcomes = []
    for lr in (estimate / 2, 2 * estimate):
        path = mf.gradient_descent(loss, net.weights, lr=lr, num_steps=1000)
        outcomes.append(mf.descent_converged(path, c.R_min)[0])
    assert outcomes == [True, False]
