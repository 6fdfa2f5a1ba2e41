"""The pure solve core: `flow_solve` under `jax.jit`, `jax.vmap` and `jax.grad`."""

import diffrax
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow.models import initialise_on_manifold, TwoLayerManifold

from .helpers import two_layer_data


@pytest.fixture(scope="module")
def problem():
    X, y = two_layer_data(n=4, d=8, seed=0)
    net = initialise_on_manifold(jax.random.PRNGKey(0), X, y, 6)
    manifold = TwoLayerManifold(net, X, y)
    u0 = manifold.initial_point()
    starts = u0 + 0.1 * jax.random.normal(jax.random.PRNGKey(1), (6, u0.size))
    return net, X, y, manifold, starts


def test_vmap_gives_each_member_its_own_solve(problem):
    """A batch of starts: every member takes its own steps and ends on its own
    condition, where it ends when solved alone. The host wrapper runs the same loop
    in windows: the same steps exactly."""
    _, _, _, manifold, starts = problem
    solve = lambda theta: mf.flow_solve(manifold, theta, max_steps=1000)
    batch = jax.jit(jax.vmap(solve))(starts)
    alone = jax.jit(solve)
    steps = set()
    for i, start in enumerate(starts):
        single = alone(start)
        assert int(batch.result._value[i]) == int(single.result._value)
        # Batched and single products round differently, and an adaptive step whose
        # error estimate is that close to the tolerance may go either way: the
        # members may take other steps, but they reach the same stationary point,
        # to well within the solve's tolerance (rtol = 1e-10).
        np.testing.assert_allclose(
            batch.theta_final[i], single.theta_final, rtol=0, atol=1e-10
        )
        assert abs(int(batch.num_steps[i]) - int(single.num_steps)) <= 3
        host = mf.solve_flow(manifold, start)
        assert host.result == mf.RESULTS.stationary
        n = host.num_steps + 1
        assert n == int(single.num_steps) + 1
        np.testing.assert_array_equal(host.step_ts, np.asarray(single.step_ts)[:n])
        np.testing.assert_allclose(
            host.sharpness, np.asarray(single.sharpness)[:n], rtol=1e-13
        )
        np.testing.assert_allclose(host.theta_final, single.theta_final, atol=1e-13)
        # Padding after the last step.
        assert np.all(np.isinf(np.asarray(single.step_ts)[n:]))
        assert np.all(np.isnan(np.asarray(single.sharpness)[n:]))
        steps.add(host.num_steps)
    assert len(steps) > 1  # the members really took different numbers of steps


def test_vmap_over_labels_and_constants(problem):
    """A batch of data sets of one shape and of flow constants: the constant only
    rescales time, so the end points agree and the final times scale by 1/c."""
    net, X, y, _, _ = problem
    labels = jnp.stack([y, 1.1 * y, 0.9 * y])

    def solve(labels, constant):
        manifold = TwoLayerManifold(net, X, labels)
        return mf.flow_solve(manifold, constant=constant, max_steps=2000)

    batch = jax.jit(jax.vmap(solve, in_axes=(0, None)))(labels, 1.0)
    assert np.all(np.asarray(batch.result._value) == mf.RESULTS.stationary._value)
    for i in range(3):
        manifold = TwoLayerManifold(net, X, np.asarray(labels[i]))
        host = mf.solve_flow(manifold)
        np.testing.assert_allclose(batch.theta_final[i], host.theta_final, atol=1e-11)
    scaled = jax.jit(jax.vmap(solve, in_axes=(None, 0)))(y, jnp.array([1.0, 2.0]))
    t = np.asarray(scaled.t_final)
    # Different steps, both to |P_T grad R| <= 1e-10: end times within a few steps.
    assert t[1] == pytest.approx(t[0] / 2, rel=0.05)
    np.testing.assert_allclose(scaled.theta_final[0], scaled.theta_final[1], atol=1e-9)


def test_grad_of_the_final_sharpness_matches_finite_differences(problem):
    """d R(theta(t1)) / d y through `RecursiveCheckpointAdjoint`: constant steps make
    the map smooth; central differences with h = 1e-5 are accurate to ~1e-9."""
    net, X, y, _, _ = problem

    def final_sharpness(labels):
        manifold = TwoLayerManifold(net, X, labels)
        solution = mf.flow_solve(
            manifold,
            solver=diffrax.Tsit5(),
            stepsize_controller=diffrax.ConstantStepSize(),
            dt0=0.05,
            t1=0.5,
            stationarity=0.0,
            max_steps=16,
        )
        return solution.sharpness[solution.num_steps]

    gradient = np.asarray(jax.jit(jax.grad(final_sharpness))(jnp.asarray(y)))
    value = jax.jit(final_sharpness)
    h = 1e-5
    finite = np.array(
        [(value(y + h * e) - value(y - h * e)) / (2 * h) for e in np.eye(y.size)]
    )
    assert np.max(np.abs(gradient)) > 0.1  # not trivially zero
    np.testing.assert_allclose(gradient, finite, rtol=1e-6, atol=1e-7)


def test_output_times_and_a_failed_start_in_graph(problem):
    _, _, _, manifold, starts = problem
    times = jnp.array([0.1, 0.2, 0.4])
    solution = jax.jit(lambda t: mf.flow_solve(manifold, starts[0], saveat=t))(times)
    assert solution.result == mf.RESULTS.t1_reached
    np.testing.assert_array_equal(solution.ts, times)
    host = mf.solve_flow(manifold, starts[0], saveat=[0.1, 0.2, 0.4])
    np.testing.assert_allclose(solution.ys, host.ys, atol=1e-11)
    # A start from which no retraction converges ends at once, with its cause.
    far = mf.flow_solve(
        manifold,
        100.0 * starts[0],
        initial_retraction=mf.GaussNewtonRetraction(max_steps=2),
    )
    assert far.result == mf.RESULTS.initial_retraction_failed
    assert int(far.num_steps) == 0


def test_grad_through_manifolds_with_static_leaves():
    """A `ZeroLossManifold` of an MLP (its activation is a static leaf) and a
    `ConstraintManifold` (its constraint is a function): derivatives of the final
    sharpness with respect to the labels / the constraint's data."""
    from .helpers import mlp_problem

    model, X, y = mlp_problem(n=3)
    constant_steps = dict(
        solver=diffrax.Tsit5(),
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=0.02,
        t1=0.1,
        stationarity=0.0,
        max_steps=8,
    )

    # Start on the manifold of the unperturbed labels, where the derivative of the
    # initial (Gauss--Newton) retraction is exact.
    base = mf.ZeroLossManifold(model, X, y)
    start = mf.GaussNewtonRetraction()(
        base, mf.CholeskyProjector(), base.initial_point()
    ).theta

    def mlp_sharpness(labels):
        manifold = mf.ZeroLossManifold(model, X, labels)
        solution = mf.flow_solve(manifold, start, **constant_steps)
        return solution.sharpness[solution.num_steps]

    def product_sharpness(target):
        def constraint(w, target):
            return jnp.stack([w[0] * w[1] - target[0], w[1] * w[2] - target[1]])

        weights = jnp.array([1.0, 1.2, 0.8])
        manifold = mf.ConstraintManifold(constraint, weights, target)
        solution = mf.flow_solve(manifold, **constant_steps)
        return solution.sharpness[solution.num_steps]

    h = 1e-5
    for f, x in (
        (mlp_sharpness, jnp.asarray(y)),
        (product_sharpness, jnp.array([1.2, 0.96])),
    ):
        gradient = np.asarray(jax.jit(jax.grad(f))(x))
        value = jax.jit(f)
        finite = np.array(
            [(value(x + h * e) - value(x - h * e)) / (2 * h) for e in np.eye(x.size)]
        )
        assert np.all(np.isfinite(gradient)) and np.max(np.abs(gradient)) > 1e-3
        np.testing.assert_allclose(gradient, finite, rtol=1e-5, atol=1e-7)


def test_types_are_checked_at_test_time(problem):
    """The suite runs under the jaxtyping import hook with beartype (pyproject's
    pytest options): a wrongly typed argument fails at the call."""
    _, _, _, manifold, _ = problem
    with pytest.raises(Exception, match="constant"):
        mf.SharpnessFlow(manifold, mf.CholeskyProjector(), "one")
