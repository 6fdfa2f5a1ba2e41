import jax
import manifoldflow as mf
import numpy as np
import pytest
import scipy.linalg
from manifoldflow.theory import gatmiry

from .helpers import ACTIVATIONS, two_layer_problem


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: a.name)
def test_optimum_is_stationary_with_minimum_sharpness(activation):
    m, n, d = 4, 3, 6
    # init_scale = 0: theta_j^T x_i = phi^{-1}(y_i / (m a)) exactly, nothing off-span.
    _, X, y, _, manifold = two_layer_problem(
        m=m,
        n=n,
        d=d,
        activation=activation,
        a=np.full(m, 1.5),
        init_scale=0.0,
        unit=False,
    )
    u = manifold.initial_point()
    R_star = gatmiry.minimum_sharpness(manifold)
    flow = mf.SharpnessFlow(manifold)
    evaluation = flow.evaluate(u)
    np.testing.assert_allclose(evaluation.sharpness, R_star, rtol=1e-13)
    assert float(evaluation.gradient_norm) <= 1e-12 * R_star
    # Other points of the manifold are flatter nowhere (global minimum).
    for seed in range(3):
        _, _, _, _, other = two_layer_problem(
            m=m,
            n=n,
            d=d,
            activation=activation,
            a=np.full(m, 1.5),
            seed=0,
            init_scale=0.5 + seed,
            unit=False,
        )
        assert float(other.sharpness(other.initial_point())) > R_star


def test_asymptotic_rate_is_the_riemannian_hessian_minimum():
    m, n, d = 3, 3, 5
    _, X, y, _, manifold = two_layer_problem(m=m, n=n, d=d, init_scale=0.0, unit=False)
    u = manifold.initial_point()
    lin = manifold.linearise(u)
    _, lam = mf.CholeskyProjector().project(lin, lin.gradient)
    lagrangian = lambda v: manifold.sharpness(v) - lam @ manifold.constraint(v)
    H = np.asarray(jax.hessian(lagrangian)(u))
    K = scipy.linalg.null_space(np.asarray(lin.jacobian.as_matrix()))
    independent = np.linalg.eigvalsh(K.T @ H @ K)[0]
    np.testing.assert_allclose(
        gatmiry.asymptotic_rate(manifold), independent, rtol=1e-9
    )
    np.testing.assert_allclose(
        gatmiry.asymptotic_rate(manifold, 0.5), independent / 2, rtol=1e-9
    )


def test_fit_linear_rate_ignores_the_noise_floor():
    t = np.linspace(0, 40, 200)
    g = 3 * np.exp(-0.7 * t)
    rng = np.random.default_rng(0)
    noisy = np.maximum(g, 1e-11 * (1 + rng.uniform(0, 3, t.size)))
    assert gatmiry.fit_linear_rate(t, g) == pytest.approx(0.7, rel=1e-10)
    stop = np.argmax(noisy < 2e-11) + 1
    assert gatmiry.fit_linear_rate(t[:stop], noisy[:stop]) == pytest.approx(
        0.7, rel=1e-2
    )


def test_unequal_second_layer_has_no_closed_form():
    _, _, _, _, manifold = two_layer_problem(m=4, a=np.array([1.0, 2.0, 1.0, 1.0]))
    assert gatmiry.optimum_features(manifold) is None
    assert gatmiry.minimum_sharpness(manifold) is None
    assert gatmiry.asymptotic_rate(manifold) is None
