"""Simulators: label-noise GD and SGD converge to the library's flow with their
constant c (not 2c, not c/2) as the step size halves; GD and SAM are still on the
zero-loss manifold; chunking does not change the randomness; bad input is refused."""

import equinox as eqx
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow.sgd import (
    GradientDescent,
    LabelNoiseGD,
    LabelNoiseSGD,
    OneSAM,
    SAM,
    simulate,
)
from manifoldflow.sgd._simulators import _ascent

from .helpers import two_layer_problem


def _problem():
    net, X, y, generic, structured = two_layer_problem(m=4, n=3, d=6, seed=0)
    return structured, jnp.asarray(structured.initial_point())


@pytest.mark.parametrize(
    "simulator", [LabelNoiseGD(sigma=1.0), LabelNoiseSGD(delta=1.0)]
)
def test_label_noise_tracks_the_flow_with_its_constant(simulator):
    manifold, theta0 = _problem()
    tau = 1.0
    c = simulator.flow_constant(manifold)
    flows = {
        factor: np.asarray(
            mf.solve_flow(
                manifold, theta0, constant=factor * c, saveat=[tau], stationarity=0.0
            ).ys[-1]
        )
        for factor in (0.5, 1.0, 2.0)
    }
    retract = jax.jit(
        jax.vmap(
            lambda t: mf.GaussNewtonRetraction()(manifold, mf.CholeskyProjector(), t)
        )
    )
    etas = [0.04, 0.02, 0.01, 0.005, 0.0025]
    distances = {factor: [] for factor in flows}
    for eta in etas:
        result = simulate(
            manifold, theta0, simulator, eta=eta, num_steps=round(tau / eta**2)
        )
        assert not result.diverged.any()
        retracted = retract(jnp.asarray(result.final))
        assert bool(jnp.all(retracted.converged))
        for factor, flow in flows.items():
            gaps = np.linalg.norm(np.asarray(retracted.theta) - flow, axis=1)
            distances[factor].append(float(np.mean(gaps)))
    exact = np.asarray(distances[1.0])
    # The mean distance to the flow with c shrinks at every halving of eta ...
    assert np.all(np.diff(exact) < 0), exact
    slope = np.polyfit(np.log(etas), np.log(exact), 1)[0]
    assert 0.3 < slope < 1.5, slope  # between O(sqrt(eta)) and O(eta)
    # ... while the flows with 2c and c/2 stay a flow-sized distance away.
    for factor in (0.5, 2.0):
        assert exact[-1] < 0.1 * distances[factor][-1], (factor, distances)


def test_constants_against_the_default_and_other_normalisations():
    net, X, y, generic, structured = two_layer_problem(m=4, n=3, d=6, seed=0)
    n = 3
    for manifold in (generic, structured):  # default loss: w = 2/n
        assert LabelNoiseGD(sigma=0.7).flow_constant(manifold) == pytest.approx(
            0.49 / (2 * n), rel=1e-14
        )
        assert LabelNoiseSGD(delta=0.7).flow_constant(manifold) == pytest.approx(
            0.49 / 8, rel=1e-14
        )
    half = mf.ZeroLossManifold(
        net, X, y, loss=mf.HalfMeanSquaredLoss(), filter_spec=net.filter_spec()
    )  # R is half as large: the same drift needs twice the constant
    assert LabelNoiseGD(sigma=0.7).flow_constant(half) == pytest.approx(0.49 / n)
    assert LabelNoiseSGD(delta=0.7).flow_constant(half) == pytest.approx(0.49 / 4)
    for simulator in (GradientDescent(), SAM(rho=0.1), OneSAM(rho=0.1)):
        assert simulator.flow_constant(structured) is None


def test_gradient_descent_stays_on_the_manifold():
    manifold, theta0 = _problem()
    result = simulate(manifold, theta0, GradientDescent(), eta=0.01, num_steps=50)
    # grad L = (2/n) J^T F with |F| ~ 1e-15 at the start: no move beyond rounding.
    assert not result.diverged.any()
    start = np.broadcast_to(np.asarray(theta0), result.final.shape)
    np.testing.assert_allclose(result.final, start, rtol=0, atol=1e-13)


@pytest.mark.parametrize("simulator", [SAM(rho=0.05), OneSAM(rho=0.05)])
def test_sam_is_finite_at_and_near_a_minimum(simulator):
    # The ascent direction g/|g| at g = 0 is taken as 0, with a finite gradient ...
    zero = jnp.zeros(3)
    assert bool(jnp.all(_ascent(zero, 0.1) == 0))
    gradient = jax.grad(lambda g: jnp.sum(_ascent(g, 0.1)))(zero)
    assert bool(jnp.all(jnp.isfinite(gradient)))
    # ... and SAM started on Gamma (where g is rounding noise) stays finite and near.
    manifold, theta0 = _problem()
    result = simulate(manifold, theta0, simulator, eta=0.01, num_steps=200, seeds=2)
    assert not result.diverged.any()
    assert float(np.max(result.loss)) < 1e-2, np.max(result.loss)


def test_chunking_does_not_change_the_randomness():
    manifold, theta0 = _problem()
    options = dict(eta=0.02, num_steps=101, seeds=[3, 5], record_every=4)
    small = simulate(manifold, theta0, LabelNoiseGD(), chunk_records=3, **options)
    large = simulate(manifold, theta0, LabelNoiseGD(), chunk_records=64, **options)
    np.testing.assert_array_equal(small.final, large.final)
    np.testing.assert_array_equal(small.thetas, large.thetas)
    assert small.steps[-1] == 101 and small.steps[1] == 4
    np.testing.assert_array_equal(small.thetas[:, -1], small.final)
    assert not np.array_equal(small.final[0], small.final[1])  # seeds differ
    np.testing.assert_allclose(small.tau, 0.02**2 * small.steps)


def test_divergence_is_reported_not_returned_as_a_number():
    manifold, theta0 = _problem()
    result = simulate(manifold, theta0, LabelNoiseGD(sigma=1.0), eta=5.0, num_steps=200)
    assert result.diverged.all()
    assert np.all(result.diverged_step > 0)
    assert not np.isfinite(result.final).all()


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(eta=0.0), "eta must be finite and > 0"),
        (dict(eta=-1e-3), "eta must be finite and > 0"),
        (dict(num_steps=0), "num_steps must be an integer >= 1"),
        (dict(seeds=0), "seeds must be a count >= 1"),
        (dict(num_steps=10**9, record_every=1), "raise record_every to at least"),
    ],
)
def test_bad_input(options, message):
    manifold, theta0 = _problem()
    arguments = dict(eta=0.01, num_steps=10) | options
    with pytest.raises(mf.InputError, match=message):
        simulate(manifold, theta0, LabelNoiseGD(), **arguments)


def test_bad_simulator_options_and_start():
    manifold, theta0 = _problem()
    with pytest.raises(mf.InputError, match="sigma must be finite and >= 0"):
        LabelNoiseGD(sigma=-1.0)
    with pytest.raises(mf.InputError, match="rho must be finite and > 0"):
        SAM(rho=0.0)
    with pytest.raises(mf.InputError, match=r"theta0 has shape \(3,\)"):
        simulate(manifold, theta0[:3], LabelNoiseGD(), eta=0.01, num_steps=10)


class _WrongConstantGD(LabelNoiseGD):
    """Label-noise GD that claims a flow constant `factor` times the right one."""

    factor: float = 0.75

    def flow_constant(self, manifold):
        return self.factor * super().flow_constant(manifold)


@pytest.mark.parametrize("factor", [1.0, 0.75])
def test_sgd_vs_flow_fits_the_constant_and_fails_a_wrong_one(factor):
    """The command's checks must fail when the flow is solved with a constant off by
    25%: the fitted c' (the flow time that best matches the seeds' mean) is then
    about 1/0.75 of the constant claimed."""
    import argparse

    from manifoldflow.experiments import SGDVersusFlowExperiment

    experiment = SGDVersusFlowExperiment()
    parser = argparse.ArgumentParser()
    experiment.add_arguments(parser)
    args = parser.parse_args(["--etas", "0.04,0.02,0.01", "--seeds", "4"])
    problem = experiment.build(args)
    problem = eqx.tree_at(
        lambda p: p.simulator, problem, _WrongConstantGD(factor=factor)
    )
    result = experiment.run(problem, progress=False)
    report = experiment.checks(problem, result)
    fitted = report["fitted_constant"].measured
    # Bias O(eta) (c'/c = 1.02 at eta = 0.01 with 16 seeds) and seed noise.
    assert abs(fitted * factor - 1) <= 0.08
    assert report["fitted_constant"].passed is (factor == 1.0)
    assert report.passed is (factor == 1.0)
