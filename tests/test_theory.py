import math

import diffrax
import jax
import manifoldflow as mf
import numpy as np
import pytest
import scipy.linalg
from manifoldflow.models import Cube, CubicLinear
from manifoldflow.theory import Check, gatmiry, Report

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


def test_check_passes_within_its_bounds_only():
    compare = lambda measured, **kwargs: Check.compare("c", "claim", measured, **kwargs)
    assert compare(1.0, upper=2.0).passed
    assert not compare(3.0, upper=2.0).passed
    assert compare(1.0, lower=0.5).passed
    assert not compare(0.1, lower=0.5).passed
    assert compare(1.0, lower=0.5, upper=2.0).passed
    assert compare(2.0, lower=0.5, upper=2.0).passed  # bounds are inclusive
    assert not compare(1.0, lower=0.5, upper=2.0, condition=False).passed
    assert compare(5.0).passed  # no bound: only finiteness
    for bad in (math.nan, math.inf, None):
        assert not compare(bad, upper=2.0).passed
    assert not compare(math.nan).passed
    check = compare(np.float64(1.5), prediction=np.float32(1.0), upper=np.array(2.0))
    assert check.applicable
    for value in (check.measured, check.prediction, check.upper):
        assert type(value) is float
    assert type(check.passed) is bool


def test_check_bound_text_and_dict():
    compare = lambda **kwargs: Check.compare("c", "claim", 0.0, **kwargs)
    assert compare(upper=1.2e-9).bound_text() == "<= 1.200e-09"
    assert compare(lower=0.95).bound_text() == ">= 9.500e-01"
    assert compare(lower=-1e-15, upper=1.2e-9).bound_text() == (
        "[-1.000e-15, 1.200e-09]"
    )
    assert compare().bound_text() == "-"
    data = compare(upper=1.2e-9, prediction=0.0).to_dict()
    assert data["bound_text"] == "<= 1.200e-09"
    assert data["lower"] is None and data["upper"] == 1.2e-9
    assert data["passed"] is True and data["applicable"] is True
    assert data["measured"] == 0.0 and data["prediction"] == 0.0


def test_not_applicable_needs_a_reason():
    with pytest.raises(ValueError, match="reason"):
        Check.not_applicable("c", "claim", "")
    check = Check.not_applicable("c", "claim", "because", measured=np.float64(2.0))
    assert not check.applicable and check.passed is None
    assert check.note == "because" and type(check.measured) is float
    assert check.bound_text() == "-"


def test_report_ignores_checks_that_do_not_apply():
    good = Check.compare("good", "a claim", 1.0, upper=2.0)
    skipped = Check.not_applicable("skipped", "another claim", "hypothesis fails")
    bad = Check.compare("bad", "a third claim", math.nan, upper=2.0)
    report = Report(checks=(good, skipped), figures=dict(x=1.0, y=None))
    assert report.passed and report.failed() == []
    assert report["skipped"] is skipped
    with pytest.raises(KeyError, match="good, skipped"):
        report["missing"]
    failing = Report(checks=(good, skipped, bad), figures={})
    assert not failing.passed and failing.failed() == [bad]
    data = failing.to_dict()
    assert data["passed"] is False and data["figures"] == {}
    assert [c["name"] for c in data["checks"]] == ["good", "skipped", "bad"]
    table = failing.table()
    header, _, *rows = table.splitlines()
    assert [cell.strip() for cell in header.split("|")] == [
        "check",
        "measured",
        "prediction",
        "bound",
        "result",
    ]
    assert "note: hypothesis fails" in table and "another claim" in table
    results = [r.split("|")[-1].strip() for r in rows if not r.startswith(" ")]
    assert results == ["PASS", "n/a", "FAIL"]


def test_assumption_and_lemma_g4_applicability():
    assert not gatmiry.assumption_3_1(Cube()).applicable
    assert "Lemma G.4" in gatmiry.assumption_3_1(Cube()).note
    assert gatmiry.assumption_3_1(CubicLinear()).passed
    _, _, _, _, manifold = two_layer_problem(m=3, n=2, d=4, activation=Cube())
    u = manifold.initial_point()
    check = gatmiry.lemma_g4_sign_consistency(manifold, u)
    assert check.applicable and check.passed  # the initial point is sign-consistent
    normality = gatmiry.assumption_3_4_normality(manifold, u)
    assert normality.passed and normality.prediction == 2.0
    _, _, _, _, manifold = two_layer_problem(m=3, n=2, d=4)
    check = gatmiry.lemma_g4_sign_consistency(manifold, manifold.initial_point())
    assert not check.applicable and "Assumption 3.1 holds" in check.note
    assert gatmiry.assumption_3_2(manifold).passed


def test_unequal_second_layer_checks_do_not_apply():
    _, _, _, _, manifold = two_layer_problem(m=4, a=np.array([1.0, 2.0, 1.0, 1.0]))
    u = manifold.initial_point()
    for theorem in (
        gatmiry.theorem_3_3_optimum,
        gatmiry.theorem_3_3_minimum_sharpness,
        gatmiry.theorem_3_3_rank_one,
    ):
        check = theorem(manifold, u, 1e-3)
        assert not check.applicable and "equal second-layer weights" in check.note
    assert gatmiry.lemma_4_6_phi2_image(manifold, u, 1e-3).applicable


def test_flow_reaches_theorem_3_3_optimum_checks():
    net, X, y, _, manifold = two_layer_problem(m=4, n=3, d=5, seed=2)
    solution = mf.solve_flow(
        manifold, solver=diffrax.Dopri8(), stationarity=1e-9, max_steps=4000
    )
    assert solution.stationary
    assert solution.gradient_norm[-1] <= 1e-9
    # Constraint held at every accepted step.
    # The retraction stops at max|F| <= 1e-13; evaluating F again in another compiled
    # program adds a few ulp of |f(x_i)| ~ 1 (64 eps leaves a margin).
    held = 1e-13 + 64 * np.finfo(float).eps
    assert np.max(solution.constraint_violation) <= held
    # The sharpness decreases along the flow (dR/dt = -|P_T grad R|^2), up to rounding.
    assert np.all(np.diff(solution.sharpness) <= 1e-11 * solution.sharpness[0])
    report = gatmiry.two_layer_checks(manifold, solution, constraint_tolerance=held)
    assert report.passed, report.table()
    assert all(
        c.applicable for c in report.checks if c.name != "lemma_g4_sign_consistency"
    )
    # Independently of the report's own arithmetic: eq. (4) within the derived bound.
    Z = np.asarray(manifold.features(solution.theta_final))
    z_star = np.asarray(manifold.activation.inverse(y / 4))
    optimum = report["theorem_3_3_optimum"]
    assert optimum.measured == pytest.approx(np.max(np.abs(Z - z_star)), rel=1e-12)
    assert np.max(np.abs(Z - z_star)) <= optimum.upper <= 1e-7
    # R_final - R* is tiny next to R*, and within the sharpness check's interval.
    figures = report.figures
    assert abs(figures["R_final"] - figures["R_star"]) <= 1e-9 * figures["R_star"]
    assert figures["linear_rate"] >= 0.95 * figures["linear_rate_predicted"] > 0
    assert report.to_dict()["passed"] is True
