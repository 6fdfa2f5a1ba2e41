import re
import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest

from .helpers import mlp_problem, two_layer_problem


# The retraction's tolerance (1e-13 for labels of size ~1) plus the rounding of
# evaluating F again in another compiled program (a few ulp of |f(x_i)| ~ 1): holding
# the constraint "to ~1e-13" means below 1e-12 here, with margin.
CONSTRAINT_HELD = 1e-12


@pytest.mark.parametrize(
    "solver",
    [diffrax.Tsit5(), diffrax.Dopri8(), diffrax.Kvaerno5()],
    ids=lambda s: type(s).__name__,
)
def test_solvers_reach_stationarity_on_the_manifold(solver):
    _, _, _, _, manifold = two_layer_problem(m=4, n=3, d=5, seed=2)
    sol = mf.solve_flow(manifold, solver=solver, stationarity=1e-9, max_steps=4000)
    assert sol.stationary and sol.result_name == "stationary"
    assert sol.gradient_norm[-1] <= 1e-9
    assert np.max(sol.constraint_violation) <= CONSTRAINT_HELD
    # dR/dt = -|P_T grad R|^2 <= 0 along the flow, up to rounding.
    assert np.all(np.diff(sol.sharpness) <= 1e-11 * sol.sharpness[0])
    assert sol.num_steps + sol.num_rejected_steps <= 4000


def test_generic_path_keeps_off_span_part_and_matches_structured():
    net, X, y, generic, structured = two_layer_problem(m=4, n=3, d=5, seed=4)
    pid = diffrax.PIDController(rtol=1e-11, atol=1e-13)
    kwargs = dict(t1=2.0, stationarity=0.0, throw=False, stepsize_controller=pid)
    sol_g = mf.solve_flow(generic, **kwargs)
    sol_s = mf.solve_flow(structured, **kwargs)
    assert sol_g.result == mf.RESULTS.t1_reached
    theta_g = np.asarray(sol_g.theta_final).reshape(4, 5)
    theta_s = np.asarray(structured.full_theta(sol_s.theta_final))
    np.testing.assert_allclose(theta_g, theta_s, atol=1e-9)
    Q = np.asarray(structured.basis)
    perp = lambda t: t - (t @ Q) @ Q.T
    np.testing.assert_allclose(perp(theta_g), perp(np.asarray(net.theta)), atol=1e-13)


def test_fixed_step_convergence_order():
    """Heun (order 2) stays order 2 when every step is retracted onto the manifold."""
    _, _, _, _, manifold = two_layer_problem(m=4, n=3, d=5, seed=6)
    T = 0.5
    reference = mf.solve_flow(
        manifold,
        t1=T,
        stationarity=0.0,
        throw=False,
        stepsize_controller=diffrax.PIDController(rtol=1e-13, atol=1e-14),
    ).theta_final
    dts = [T / 8, T / 16, T / 32, T / 64]
    errors = []
    for dt in dts:
        sol = mf.solve_flow(
            manifold,
            solver=diffrax.Heun(),
            t1=T,
            dt0=dt,
            stationarity=0.0,
            stepsize_controller=diffrax.ConstantStepSize(),
            throw=False,
            window=128,
        )
        errors.append(float(jnp.linalg.norm(sol.theta_final - reference)))
    slope = np.polyfit(np.log(dts), np.log(errors), 1)[0]
    assert 1.8 < slope < 2.3, (slope, errors)


def test_flow_constant_rescales_time():
    _, _, _, _, manifold = two_layer_problem(m=4, n=3, d=5, seed=2)
    c = mf.MeanSquaredLoss().label_noise_constant(sigma=0.5, num_data=3)
    assert c == pytest.approx(0.25 / 6)
    a = mf.solve_flow(manifold, t1=1.0, stationarity=0.0, throw=False)
    b = mf.solve_flow(manifold, t1=1.0 / c, constant=c, stationarity=0.0, throw=False)
    np.testing.assert_allclose(b.theta_final, a.theta_final, atol=1e-8)


def test_general_model_flow_decreases_sharpness_on_manifold():
    model, X, y = mlp_problem()
    manifold = mf.ZeroLossManifold(model, X, y)
    sol = mf.solve_flow(
        manifold,
        t1=5.0,
        stationarity=0.0,
        throw=False,
        solver=diffrax.Tsit5(),
        projector=mf.QRProjector(),
    )
    assert sol.result == mf.RESULTS.t1_reached
    assert np.max(sol.constraint_violation) <= CONSTRAINT_HELD
    assert sol.sharpness[-1] < sol.sharpness[0]
    assert np.all(np.diff(sol.sharpness) <= 1e-11 * sol.sharpness[0])


def test_failures_are_clear():
    _, X, y, _, manifold = two_layer_problem(m=4, n=3, d=5, seed=2)
    # A budget is not a failure: the solution comes back, with a warning that says
    # R is still decreasing and what to look at.
    with pytest.warns(RuntimeWarning, match="budget of 3 step.*still decreasing"):
        budget = mf.solve_flow(manifold, max_steps=3, window=3)
    assert budget.result == mf.RESULTS.max_steps_reached
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        partial = mf.solve_flow(manifold, max_steps=3, window=3, throw=False)
    assert partial.result == mf.RESULTS.max_steps_reached
    assert partial.num_steps + partial.num_rejected_steps == 3
    with pytest.raises(ValueError, match=r"expected shape \(12,\)"):
        mf.solve_flow(manifold, jnp.zeros(3))
    # float32 coordinates on a float64 manifold are promoted to its precision.
    promoted = mf.solve_flow(
        manifold, manifold.initial_point().astype(jnp.float32), t1=0.1
    )
    assert promoted.theta_final.dtype == jnp.float64


def test_rank_deficient_data_needs_svd_projector():
    from manifoldflow.models import initialise_on_manifold, TwoLayerManifold

    _, X, y, _, _ = two_layer_problem(m=4, n=3, d=5, seed=2)
    net = initialise_on_manifold(jax.random.PRNGKey(0), X, y, 4)
    X2, y2 = np.vstack([X, X[:1]]), np.concatenate([y, y[:1]])
    duplicated = TwoLayerManifold(net, X2, y2)
    with pytest.raises(ValueError, match="numerically singular.*SVDProjector"):
        mf.solve_flow(duplicated)
    # With the SVD projector the duplicate is a redundant constraint: same flow as
    # without it, up to the weight of the duplicated point in R (kept equal here).
    sol = mf.solve_flow(
        duplicated, projector=mf.SVDProjector(), t1=0.5, stationarity=0.0, throw=False
    )
    assert sol.result == mf.RESULTS.t1_reached
    assert np.max(sol.constraint_violation) <= CONSTRAINT_HELD


def test_noise_floor_tightens_tolerances():
    """Below the integrator's noise floor the PID tolerances are tightened and the
    solve still reaches stationarity (here 1e-12 with the default rtol=1e-10)."""
    from manifoldflow.models import Cube, initialise_on_manifold, TwoLayerManifold

    rng = np.random.default_rng(0)
    X = rng.standard_normal((2, 4))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = rng.choice([-1.0, 1.0], 2) * rng.uniform(0.5, 1.5, 2)
    net = initialise_on_manifold(jax.random.PRNGKey(0), X, y, 3, activation=Cube())
    manifold = TwoLayerManifold(net, X, y)
    sol = mf.solve_flow(manifold, stationarity=1e-12)
    assert sol.stationary and sol.gradient_norm[-1] <= 1e-12
    assert sol.num_tightened >= 1 and sol.tightened[0][1] == pytest.approx(1e-12)
    stuck = mf.solve_flow(
        manifold,
        stationarity=1e-12,
        throw=False,
        noise_floor=mf.StopAtNoiseFloor(patience=50),
    )
    assert stuck.result == mf.RESULTS.stagnated


def test_reaching_t1_is_not_a_failure():
    _, _, _, _, manifold = two_layer_problem(m=4, n=3, d=5, seed=2)
    sol = mf.solve_flow(manifold, t1=0.5)
    assert sol.result == mf.RESULTS.t1_reached
    assert sol.t_final == pytest.approx(0.5)
    assert sol.gradient_norm[-1] > 1e-9


def test_states_are_thinned_to_a_bound_and_diagnostics_kept():
    """Without saveat, ys keeps at most max_states states, evenly spaced in steps,
    the first and the last among them; every step keeps its diagnostics."""
    _, X, y, _, manifold = two_layer_problem(m=4, n=3, d=5, seed=2)
    full = mf.solve_flow(manifold, stationarity=1e-9)
    assert full.ys.shape[0] == full.num_steps + 1 > 20
    for max_states, save_every in ((8, 1), (5, 3)):
        thin = mf.solve_flow(
            manifold, stationarity=1e-9, max_states=max_states, save_every=save_every
        )
        index = thin.saved_index
        assert 2 <= thin.ys.shape[0] <= max_states
        assert index[0] == 0 and index[-1] == full.num_steps
        stride = index[1] - index[0]
        assert stride % save_every == 0 and np.all(np.diff(index[:-1]) == stride)
        np.testing.assert_array_equal(thin.ys, full.ys[index])
        np.testing.assert_array_equal(thin.ts, full.step_ts[index])
        np.testing.assert_array_equal(thin.sharpness, full.sharpness)
    with pytest.raises(mf.InputError, match="max_states"):
        mf.solve_flow(manifold, max_states=1)


class _Cancelling(eqx.Module):
    """Outputs that are differences of terms of size 1e3: F's rounding is ~1e-13."""

    u: jax.Array
    a: jax.Array

    def __call__(self, x):
        return jnp.dot(self.a, 1e3 * jnp.tanh(self.u @ x))


def test_a_retraction_stopped_by_rounding_says_so_and_its_fix_works():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((3, 4)), rng.standard_normal(3)
    signs = np.tile([1.0, -1.0], 8)
    model = _Cancelling(jnp.asarray(rng.standard_normal((16, 4))), jnp.asarray(signs))
    manifold = mf.ZeroLossManifold(model, X, y)
    with pytest.raises(mf.InputError, match="rounding error of evaluating F") as error:
        mf.solve_flow(manifold, t1=0.01)
    assert error.value.parameter == "initial_retraction"
    assert "missing manifold" in str(error.value)
    atol = float(
        re.search(r"GaussNewtonRetraction\(atol=([0-9.e-]+)\)", str(error.value))[1]
    )
    solution = mf.solve_flow(
        manifold,
        t1=0.01,
        initial_retraction=mf.GaussNewtonRetraction(atol=atol),
        retraction=mf.ChordRetraction(atol=atol),
    )
    assert solution.result == mf.RESULTS.t1_reached
    assert np.max(solution.constraint_violation) <= atol
