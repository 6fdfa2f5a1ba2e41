"""Every way a solve can end is a named result, and none loops forever."""

import subprocess
import sys

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
import scipy.optimize

from .helpers import two_layer_problem


def _small_manifold():
    return two_layer_problem(m=4, n=3, d=5, seed=2)[-1]


class _Hyperbola(eqx.Module):
    """f(x) = a b x: for X = [[1]], y = [1] the manifold is the hyperbola a b = 1 and
    the flow of R = 2 (a^2 + b^2) runs from (2, 1/2) towards (1, 1). The log makes
    every value NaN once a < 1.2, which the flow crosses at t ~ 0.3."""

    a: jax.Array
    b: jax.Array

    def __call__(self, x):
        return self.a * self.b * x[0] + 0.0 * jnp.log(self.a - 1.2)


def _hyperbola():
    model = _Hyperbola(jnp.asarray(2.0), jnp.asarray(0.5))
    return mf.ZeroLossManifold(model, np.ones((1, 1)), np.ones(1))


def test_slow_flow_is_not_a_noise_floor():
    """A tanh MLP has a plateau where |P_T grad R| does not halve for hundreds of steps
    while R keeps falling: a slow flow, not a noise floor. It runs on to t1 without any
    tightening, with R non-increasing."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    model = eqx.nn.MLP(4, "scalar", 12, 2, activation=jnp.tanh, key=k1)
    X, y = jax.random.normal(k2, (8, 4)), jax.random.normal(k3, (8,))
    manifold = mf.ZeroLossManifold(model, X, y)
    sol = mf.solve_flow(
        manifold, t1=12.0, noise_floor=mf.TightenTolerances(patience=50)
    )
    g = sol.gradient_norm
    # The plateau: some 50-step stretch on which |P_T grad R| does not halve.
    windows = np.lib.stride_tricks.sliding_window_view(g, 51)
    assert np.any(windows[:, -1] > 0.5 * windows[:, 0])
    assert sol.result == mf.RESULTS.t1_reached and sol.t_final == 12.0
    assert sol.num_tightened == 0 and sol.tightened.shape == (0, 3)
    assert np.all(np.diff(sol.sharpness) <= 1e-12 * sol.sharpness[0])


def test_failed_retraction_with_constant_step_size_is_a_result():
    """Without an adaptive controller nothing rejects a step with an infinite error
    estimate: the step's own result must end the solve."""
    manifold = _small_manifold()
    kwargs = dict(
        solver=diffrax.Heun(),
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=0.01,
        t1=1.0,
        retraction=mf.ChordRetraction(max_steps=0),
    )
    sol = mf.solve_flow(manifold, throw=False, **kwargs)
    assert sol.result == mf.RESULTS.retraction_failed
    # The failed step is not kept: the solution ends at the last point on the manifold.
    assert sol.num_steps == 0 and sol.num_rejected_steps == 1 and sol.t_final == 0.0
    assert np.max(sol.constraint_violation) <= 1e-12
    with pytest.raises(RuntimeError, match="retraction onto the manifold did not"):
        mf.solve_flow(manifold, **kwargs)


def test_cg_at_its_iteration_cap_is_a_result():
    sol = mf.solve_flow(
        _small_manifold(), projector=mf.CGProjector(max_steps=1), throw=False
    )
    assert sol.result == mf.RESULTS.projection_failed
    assert sol.num_steps == 0


@pytest.mark.parametrize(
    "solver,max_steps,window",
    [(diffrax.Kvaerno5(), 2, 2), (diffrax.Dopri8(), 7, 3), (diffrax.Tsit5(), 20, 16)],
    ids=["Kvaerno5-2-2", "Dopri8-7-3", "Tsit5-20-16"],
)
def test_max_steps_is_never_exceeded(solver, max_steps, window):
    sol = mf.solve_flow(
        _small_manifold(),
        solver=solver,
        max_steps=max_steps,
        window=window,
        throw=False,
    )
    assert sol.result == mf.RESULTS.max_steps_reached
    assert sol.num_steps + sol.num_rejected_steps == max_steps


def test_nan_with_constant_step_size_is_a_step_failure():
    sol = mf.solve_flow(
        _hyperbola(),
        solver=diffrax.Heun(),
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=0.05,
        t1=5.0,
        throw=False,
    )
    assert sol.result == mf.RESULTS.step_failure
    assert 0.0 < sol.t_final < 1.0
    # The step into the NaN region is not kept: everything returned is finite.
    assert np.all(np.isfinite(sol.theta_final)) and np.all(np.isfinite(sol.ys))
    assert np.all(np.isfinite(sol.sharpness))


def test_nan_with_adaptive_steps_ends_instead_of_looping():
    """Every step into the NaN region is rejected and the step size shrinks towards 0:
    the solve ends when the step falls below the resolution of t, well within
    max_steps, at a point just before the region."""
    sol = mf.solve_flow(_hyperbola(), t1=5.0, max_steps=5000, throw=False)
    assert sol.result in (mf.RESULTS.step_size_collapsed, mf.RESULTS.step_failure)
    assert sol.num_steps + sol.num_rejected_steps < 5000
    a = float(sol.theta_final[0])
    assert 1.2 < a < 1.21


def test_interrupt_returns_what_was_computed(monkeypatch):
    """Ctrl-C between two windows returns the steps of the windows before it."""
    from manifoldflow import _solve

    calls = []
    run = _solve._run

    def interrupt_on_third_window(*args):
        calls.append(run(*args))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return calls[-1]

    monkeypatch.setattr(_solve, "_run", interrupt_on_third_window)
    sol = mf.solve_flow(_small_manifold(), window=4)
    assert sol.result == mf.RESULTS.interrupted
    state = calls[1][0]  # the last state returned before the interrupt
    assert sol.num_steps == int(state.num_accepted) >= 4
    assert sol.t_final == float(state.t)
    assert len(sol.ts) == sol.num_steps + 1


def test_interrupt_while_waiting_for_a_window(monkeypatch):
    """Dispatch is asynchronous: Ctrl-C usually lands while waiting for a window's
    results. The solution then holds the windows before it, states and records
    alike."""
    from manifoldflow import _solve

    calls = []
    wait = _solve.jax.block_until_ready

    def interrupt_on_third_wait(tree):
        calls.append(None)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return wait(tree)

    monkeypatch.setattr(_solve.jax, "block_until_ready", interrupt_on_third_wait)
    sol = mf.solve_flow(_small_manifold(), window=4)
    assert sol.result == mf.RESULTS.interrupted
    assert sol.num_steps >= 4  # two windows of 4 and 8 attempts, at least
    assert len(sol.ts) == len(sol.ys) == len(sol.step_ts) == sol.num_steps + 1


def test_saveat_agrees_with_separate_solves_and_lies_on_the_manifold():
    manifold = _small_manifold()
    times = [0.2, 0.4, 0.6, 0.8, 1.0]
    sol = mf.solve_flow(manifold, saveat=times, stationarity=0.0)
    assert sol.result == mf.RESULTS.t1_reached
    np.testing.assert_array_equal(sol.ts, times)
    assert sol.ys.shape == (5, manifold.dimension)
    assert np.max(sol.saved_constraint_violation) <= 1e-12
    np.testing.assert_array_equal(sol.step_ts[sol.saved_index], times)
    for t, y in zip(times, sol.ys):
        separate = mf.solve_flow(manifold, t1=t, stationarity=0.0)
        # Both follow the flow to a global error of about rtol = 1e-10 in |theta| ~ 1.
        np.testing.assert_allclose(y, separate.theta_final, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="strictly increasing"):
        mf.solve_flow(manifold, saveat=[0.4, 0.2])


def test_sparse_recovery_stops_ill_conditioned_near_basis_pursuit():
    """u*u - v*v over Gaussian unit columns: the off-support coordinates decay
    exponentially and J J^T turns singular. With the default projector the solve ends
    with a named result (never a false noise floor), already close to the
    basis-pursuit solution, the flattest interpolant."""
    rng = np.random.default_rng(0)
    d, n = 16, 8
    Z = rng.standard_normal((n, d))
    Z /= np.linalg.norm(Z, axis=0, keepdims=True)
    w_star = np.zeros(d)
    w_star[:2] = [1.0, -0.5]
    y = Z @ w_star

    class Quadratic(eqx.Module):
        u: jax.Array
        v: jax.Array

        def __call__(self, x):
            return jnp.dot(self.u**2 - self.v**2, x)

    start = Quadratic(*(jnp.asarray(rng.uniform(0.5, 1.0, d)) for _ in range(2)))
    manifold = mf.ZeroLossManifold(start, Z, y)
    sol = mf.solve_flow(manifold, stationarity=1e-8, throw=False)
    assert sol.result in (mf.RESULTS.stationary, mf.RESULTS.ill_conditioned)
    assert sol.num_tightened == 0 and sol.tightened.shape == (0, 3)
    lp = scipy.optimize.linprog(
        np.ones(2 * d), A_eq=np.hstack([Z, -Z]), b_eq=y, bounds=(0, None)
    )
    w_lp = lp.x[:d] - lp.x[d:]
    theta = np.asarray(sol.theta_final)
    w = theta[:d] ** 2 - theta[d:] ** 2
    # Stopped at |P_T grad R| ~ 5e-6 on a flow with rates of order 1: the distance
    # left is of the same order.
    assert sol.gradient_norm[-1] <= 1e-4
    np.testing.assert_allclose(w, w_lp, atol=1e-4)


def test_retract_every_k_steps_with_and_without_output_times():
    """Retracting only every 3rd attempted step: the constraint drifts in between (the
    point of the strategy; rtol = 1e-6 makes the drift visible) and is restored at
    the retracted steps."""
    manifold = _small_manifold()
    for saveat in (None, [0.3, 0.6]):
        sol = mf.solve_flow(
            manifold,
            retract_every=3,
            t1=0.6,
            saveat=saveat,
            stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8),
            stationarity=0.0,
        )
        assert sol.result == mf.RESULTS.t1_reached
        violation = sol.constraint_violation[1:]
        assert np.min(violation) <= 1e-12
        assert np.max(violation) > 1e-10


def test_output_times_after_an_early_end():
    """Ending before the first output time gives an empty, well-formed solution;
    an explicit t1 after the last output time is reached."""
    manifold = _small_manifold()
    early = mf.solve_flow(manifold, saveat=[5.0, 6.0], max_steps=3, throw=False)
    assert early.result == mf.RESULTS.max_steps_reached
    assert early.ts.shape == (0,) and early.ys.shape == (0, manifold.dimension)
    start = mf.solve_flow(manifold, stationarity=1e-9).theta_final
    at_rest = mf.solve_flow(manifold, start, saveat=[1.0], stationarity=1e-9)
    assert at_rest.stationary and at_rest.num_steps == 0 and at_rest.ys.shape[0] == 0
    beyond = mf.solve_flow(manifold, saveat=[0.5, 1.0], t1=2.0, stationarity=0.0)
    assert beyond.result == mf.RESULTS.t1_reached and beyond.t_final == 2.0
    np.testing.assert_array_equal(beyond.ts, [0.5, 1.0])


def test_constant_steps_stay_constant_across_output_times():
    sol = mf.solve_flow(
        _small_manifold(),
        solver=diffrax.Heun(),
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=0.3,
        saveat=[0.5, 1.0, 1.7],
        t1=3.0,
        stationarity=0.0,
    )
    steps = np.diff(sol.step_ts)
    assert np.max(steps) <= 0.3 * (1 + 1e-12)
    # 0.3, clipped to end at 0.5, then 0.3 again (not the controller's runaway).
    np.testing.assert_allclose(steps[:4], [0.3, 0.2, 0.3, 0.2])
    np.testing.assert_array_equal(sol.ts, [0.5, 1.0, 1.7])


_FLOAT32_SCRIPT = """
import diffrax, jax, jax.numpy as jnp, manifoldflow as mf
from tests.helpers import two_layer_problem
manifold = two_layer_problem(m=4, n=3, d=5, seed=2)[-1]
assert manifold.initial_point().dtype == jnp.float32
loose = dict(atol=1e-5, rtol=1e-6)
sol = mf.solve_flow(manifold, t1=0.7, stationarity=1e-5,
    stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-6),
    retraction=mf.ChordRetraction(**loose),
    initial_retraction=mf.GaussNewtonRetraction(**loose), max_steps=500)
print(sol.result_name, sol.num_steps, sol.theta_final.dtype)
try:
    mf.solve_flow(manifold, stationarity=1e-5,
        stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-6))
except mf.InputError as error:
    assert "float32" in str(error) and "atol=1e-5" in str(error), error
else:
    raise AssertionError("float32 with the default retraction tolerance 1e-13")
"""


def test_float32_reaches_an_end_time_it_cannot_represent():
    """With float64 off, float32(0.7) < 0.7: the end time is compared in the state's
    dtype, so the solve ends instead of looping with zero attempts."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).parent.parent
    env = dict(__import__("os").environ, JAX_ENABLE_X64="0")
    out = subprocess.run(
        [sys.executable, "-c", _FLOAT32_SCRIPT],
        capture_output=True, text=True, env=env, cwd=root, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    name, steps, dtype = out.stdout.split()
    assert name == "t1_reached" and dtype == "float32" and 0 < int(steps) < 500


class _OldStyleProjector(mf.AbstractProjector):
    """A projector written against the first API: only solve_gram."""

    def solve_gram(self, linearisation, rhs):
        return jnp.linalg.solve(linearisation.gram, rhs)


def test_projectors_written_for_the_first_api_still_work():
    sol = mf.solve_flow(_small_manifold(), projector=_OldStyleProjector(), t1=0.5)
    reference = mf.solve_flow(_small_manifold(), t1=0.5)
    np.testing.assert_allclose(sol.theta_final, reference.theta_final, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        (dict(max_steps=0), "max_steps"),
        (dict(window=0), "window"),
        (dict(saveat=[0.4, 0.2]), "saveat"),
        (dict(t1=-1.0), "t1"),
        (dict(dt0=-0.1), "dt0"),
        (dict(stationarity=-1.0), "stationarity"),
        (dict(theta0=np.zeros(3)), "theta0"),
    ],
)
def test_input_errors_name_their_parameter(kwargs, parameter):
    with pytest.raises(mf.InputError) as caught:
        mf.solve_flow(_small_manifold(), **kwargs)
    assert caught.value.parameter == parameter
    assert str(caught.value).startswith(caught.value.problem)


def test_tolerances_of_zero_and_a_solver_by_name_are_refused():
    with pytest.raises(mf.InputError, match="rtol = atol = 0") as caught:
        mf.solve_flow(
            _small_manifold(),
            stepsize_controller=diffrax.PIDController(rtol=0.0, atol=0.0),
        )
    assert caught.value.parameter == "stepsize_controller"
    # Without the test-time type checker (which refuses it first), as a user runs it.
    code = (
        "import jax; jax.config.update('jax_enable_x64', True)\n"
        "import manifoldflow as mf\n"
        "from tests.helpers import two_layer_problem\n"
        "manifold = two_layer_problem(m=4, n=3, d=5, seed=2)[-1]\n"
        "try:\n"
        "    mf.solve_flow(manifold, solver='dopri8')\n"
        "except mf.InputError as error:\n"
        "    print(error.parameter, '|', error)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("solver |") and "diffrax.Dopri8()" in out.stdout
