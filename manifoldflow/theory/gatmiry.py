r"""Predictions of Gatmiry, Li, Reddi, Jegelka (ICML 2024) for the two-layer flow, and
checks of a computed solution against them.

Every pass/fail bound below is derived from the stationarity $\delta = \|P_T\nabla
R\|$ actually reached, for general row norms $\|x_i\|$, curvature weights $w_i$ and
fixed second-layer weights $a$ (the paper's unit rows, $a = 1$, $w_i = 2/n$ are special
cases). With $c_{ji} = a_j\phi'(z_{ji})\,e_{ji}$, $e_{ji} = 2w_i\|x_i\|^2 a_j
\phi''(z_{ji}) - \lambda_i$, one has $P_T\nabla R = (X^\top c_j)_j$, hence
$|c_{ji}| \le \delta/\sqrt{\lambda_{\min}(XX^\top)}$ and

$$\big|a_j\phi''(z_{ji}) - \mu_i\big| \le \varepsilon_{ji} :=
\frac{\delta}{2 w_i \|x_i\|^2 \sqrt{\lambda_{\min}}\,|a_j|\,\phi'(z_{ji})},$$

the a-posteriori form of inequality (15) / Lemma 4.6.

??? cite "Reference"
    Gatmiry, Li, Reddi, Jegelka. Simplicity Bias via Global Convergence of Sharpness
    Minimization. ICML 2024, arXiv:2410.16401. Formulas: `seed-math.md` §1.
"""

import numpy as np

from ..models.activations import Cube
from ..models.two_layer import TwoLayerManifold


_EPS = np.finfo(np.float64).eps


def _check(name, description, prediction, measured, bound, applicable, passed, note=""):
    return dict(
        name=name,
        description=description,
        prediction=None if prediction is None else float(prediction),
        measured=None if measured is None else float(measured),
        bound=None if bound is None else float(bound),
        applicable=bool(applicable),
        passed=bool(passed) if applicable else None,
        note=note,
    )


def optimum_features(manifold: TwoLayerManifold) -> np.ndarray | None:
    r"""Theorem 3.3 / eq. (4): $\theta_j^\top x_i = \phi^{-1}(y_i / (m a))$ for equal
    second-layer weights $a_j = a$ ($a = 1$ in the paper), as a vector over $i$;
    `None` when the $a_j$ differ (the optimum is then not in closed form)."""
    a = np.asarray(manifold.a)
    if np.ptp(a) > 0 or a[0] == 0:
        return None
    return np.asarray(
        manifold.activation.inverse(np.asarray(manifold.y) / (a.size * a[0]))
    )


def minimum_sharpness(manifold: TwoLayerManifold) -> float | None:
    r"""$R^* = \sum_i w_i \|x_i\|^2\, m a^2 \phi'(z^*_i)^2$; for unit rows, $a = 1$ and
    $w_i = 2/n$ this is $(2/n)\,m \sum_i \phi'(\phi^{-1}(y_i/m))^2$."""
    z_star = optimum_features(manifold)
    if z_star is None:
        return None
    a = float(np.asarray(manifold.a)[0])
    w = np.asarray(manifold.weights) * np.diag(np.asarray(manifold.data_gram))
    m = manifold.a.shape[0]
    return float(
        np.sum(w * m * a**2 * np.asarray(manifold.activation.derivative(z_star)) ** 2)
    )


def asymptotic_rate(manifold: TwoLayerManifold, constant: float = 1.0) -> float | None:
    r"""The exact linear rate of $\|P_T\nabla R(\theta(t))\|$ near the optimum (equal $a$,
    $m \ge 2$): $c\,\lambda_{\min}(H^{1/2} G H^{1/2})$, $G = XX^\top$,
    $H = \operatorname{diag}(2 w_i \|x_i\|^2 a^2 \phi'\phi'''(z^*_i))$.

    At the optimum the Riemannian Hessian on the data-span tangent directions is
    $\sum_{ij} H_i (v_j^\top x_i)^2$ under $\sum_j v_j^\top x_i = 0$, with metric
    $\sum_j s_j^\top G^{-1} s_j$ ($s_{ji} = v_j^\top x_i$); its spectrum is that of
    $G^{1/2} H G^{1/2}$, each eigenvalue $m - 1$ times. Lemma B.4's lower bound
    $c_L\rho_1\rho_2\lambda_{\min}(XX^\top)$ is below it.
    """
    z_star = optimum_features(manifold)
    m = manifold.a.shape[0]
    if z_star is None or m < 2:
        return None
    act = manifold.activation
    a = float(np.asarray(manifold.a)[0])
    G = np.asarray(manifold.data_gram)
    h = (
        2
        * np.asarray(manifold.weights)
        * np.diag(G)
        * a**2
        * np.asarray(act.derivative(z_star))
        * np.asarray(act.third_derivative(z_star))
    )
    root = np.sqrt(h)
    return float(constant * np.linalg.eigvalsh(root[:, None] * G * root[None, :])[0])


def fit_linear_rate(ts: np.ndarray, gradient_norm: np.ndarray) -> float:
    r"""Least-squares slope of $\log\|P_T\nabla R\|$ against $t$ in the linear phase,
    as a positive rate $r$ in $\|g\| \approx C e^{-r t}$.

    Near a non-degenerate minimum $\frac{d}{dt}\|g\|^2 = -2\operatorname{Hess}[g, g]
    < 0$, so the linear phase is a run of steps along which $\|g\|$ strictly
    decreases. The fit takes the run that covers the most decades and uses the three
    decades before its last one (less on short runs). Near the end, $\|g\|$ reaches the
    integrator's noise floor (local errors of size rtol$\cdot|\theta|$ move the point
    as much as its distance to the optimum) and stops decreasing monotonically: those
    steps measure the solver, not the flow, and are left out. `nan` with fewer than 3
    points.
    """
    ts, g = np.asarray(ts), np.asarray(gradient_norm)
    ok = np.isfinite(g) & (g > 0)
    ts, g = ts[ok], g[ok]
    if g.size < 3:
        return float("nan")
    log_g = np.log10(g)
    breaks = np.nonzero(np.diff(log_g) >= 0)[0]  # run boundaries: g did not decrease
    starts = np.r_[0, breaks + 1]
    ends = np.r_[breaks, g.size - 1]
    span = log_g[starts] - log_g[ends]
    best = int(np.argmax(span))
    start, end = starts[best], ends[best]
    run = np.arange(start, end + 1)
    height = log_g[run] - log_g[end]
    # Leave out the last decade, where the run already bends towards the noise floor.
    window = run[(height >= 1.0) & (height <= 4.0)]
    if window.size < 3:
        window = run[height <= 3.0]
    if window.size < 3:
        window = np.arange(max(0, end - 2), end + 1)
    slope = np.polyfit(ts[window], np.log(g[window]), 1)[0]
    return float(-slope)


def two_layer_checks(
    manifold: TwoLayerManifold,
    theta_final,
    *,
    gradient_norm: float,
    stationarity: float,
    constraint_history: np.ndarray,
    constraint_tolerance: float,
    ts: np.ndarray,
    gradient_history: np.ndarray,
    constant: float = 1.0,
) -> dict:
    """All predictions of the paper for a computed solution, with derived bounds.

    **Arguments:** the manifold, the final reduced coordinates, the $\\|P_T\\nabla R\\|$
    reached there, the target `stationarity`, the per-step $\\max|F|$ history and the
    retraction tolerance, the per-step times and gradient norms, the flow constant.

    **Returns:** a dict of summary figures and `checks` (a list of dicts with
    `prediction, measured, bound, applicable, passed`).
    """
    act = manifold.activation
    u = np.asarray(theta_final)
    Z = np.asarray(manifold.features(u))
    m, n = Z.shape
    a = np.asarray(manifold.a)
    y = np.asarray(manifold.y)
    G = np.asarray(manifold.data_gram)
    norms2 = np.diag(G)
    w = np.asarray(manifold.weights)
    lam_min = float(np.linalg.eigvalsh(G)[0])
    delta = float(gradient_norm)
    residual = np.abs(np.asarray(manifold.constraint(u)))
    d1 = np.asarray(act.derivative(Z))
    d2 = np.asarray(act.second_derivative(Z))
    d3 = np.asarray(act.third_derivative(Z))
    R_final = float(manifold.linearise(u).sharpness)
    rho1, rho2 = act.rho()
    checks = []
    out = dict(R_final=R_final, lambda_min_data_gram=lam_min)

    # Stationarity and the constraint.
    checks.append(
        _check(
            "stationarity",
            "|P_T grad R| at the end <= the requested threshold",
            stationarity,
            delta,
            stationarity,
            True,
            delta <= stationarity,
        )
    )
    cmax = float(np.max(constraint_history))
    checks.append(
        _check(
            "constraint",
            "max|F| = max_i |f(x_i) - y_i| along the whole trajectory",
            0.0,
            cmax,
            constraint_tolerance,
            True,
            cmax <= constraint_tolerance,
        )
    )

    # Assumptions.
    checks.append(
        _check(
            "assumption_3_1",
            f"rho1 = inf phi' > 0 and rho2 = inf phi''' > 0 "
            f"(rho1 = {rho1:g}, rho2 = {rho2:g})",
            None,
            rho1,
            0.0,
            rho1 > 0,
            rho1 > 0 and rho2 > 0,
            ""
            if rho1 > 0
            else "does not apply to this activation (phi'(0) = 0); "
            "Theorem 3.3 then needs sign-consistent features (Lemma G.4), checked below",
        )
    )
    checks.append(
        _check(
            "linear_independence",
            "lambda_min(X X^T) > 0 (Assumption 3.2 implies it)",
            None,
            lam_min,
            1e3 * _EPS * float(np.linalg.eigvalsh(G)[-1]),
            True,
            lam_min > 1e3 * _EPS * float(np.linalg.eigvalsh(G)[-1]),
        )
    )
    ratio = d2**2 / np.maximum(d1 * d3, np.finfo(float).tiny)
    checks.append(
        _check(
            "normality",
            "phi''^2 <= alpha phi' phi''' at the final features "
            "(Assumption 3.4, candidate N1; equality for cube)",
            act.normality(),
            float(np.max(ratio)),
            act.normality() * (1 + 64 * _EPS),
            True,
            float(np.max(ratio)) <= act.normality() * (1 + 64 * _EPS),
        )
    )
    signs_ok = bool(np.all(np.sign(Z) == np.sign(y[None, :] / a[:, None])))
    min_abs = float(np.min(np.abs(Z)))
    z_star = optimum_features(manifold)
    floor = 1e-3 * float(np.min(np.abs(z_star))) if z_star is not None else 1e-8
    sign_note = (
        ""
        if min_abs > floor
        else f"drifted to theta_j^T x_i -> 0 (min |z| = {min_abs:.2e}): a spurious "
        "stationary point of the cube activation, NOT the optimum"
    )
    checks.append(
        _check(
            "sign_consistency",
            "sign(theta_j^T x_i) = sign(y_i / a_j) and |theta_j^T x_i| "
            "away from 0 (Lemma G.4)",
            None,
            min_abs,
            floor,
            isinstance(act, Cube),
            signs_ok and min_abs > floor,
            sign_note,
        )
    )

    # Stationarity of the phi''-image: a_j phi''(z_ji) equal over j (any fixed a).
    eps_ji = delta / (
        2
        * w[None, :]
        * norms2[None, :]
        * np.sqrt(lam_min)
        * np.abs(a)[:, None]
        * np.maximum(d1, np.finfo(float).tiny)
    )
    image = a[:, None] * d2
    spread = np.ptp(image, axis=0)
    spread_bound = 2 * np.max(eps_ji, axis=0) + 64 * _EPS * np.max(
        np.abs(image), axis=0
    )
    out["phi2_image_spread"] = float(np.max(spread))
    checks.append(
        _check(
            "phi2_image_rank_one",
            "max_i (max_j - min_j) a_j phi''(theta_j^T x_i): the "
            "phi''-image of the features is rank one at stationarity",
            0.0,
            np.max(spread),
            np.max(spread_bound),
            True,
            bool(np.all(spread <= spread_bound)),
        )
    )

    # Measured linear rate of |P_T grad R|.
    rate = fit_linear_rate(ts, gradient_history)
    predicted_rate = asymptotic_rate(manifold, constant)
    rate_applicable = bool(np.isfinite(rate))
    out["linear_rate"] = rate
    out["linear_rate_predicted"] = predicted_rate
    checks.append(
        _check(
            "linear_rate",
            "fitted tail rate r of |P_T grad R| ~ e^{-r t} >= 0.95 x the "
            "exact asymptotic rate c lambda_min(H^1/2 G H^1/2) (Theorem 3.5: linear "
            "convergence)",
            predicted_rate,
            rate,
            None if predicted_rate is None else 0.95 * predicted_rate,
            rate_applicable,
            rate > 0 and (predicted_rate is None or rate >= 0.95 * predicted_rate),
            "no trajectory to fit (fewer than 3 steps, e.g. stationary at the start)"
            if not rate_applicable
            else ""
            if predicted_rate is not None
            else "no closed-form rate for unequal a: checks only that the fitted rate is positive",
        )
    )

    if z_star is None:
        out.update(R_star=None, optimum_distance=None)
        na = "Theorem 3.3's closed form needs equal second-layer weights a_j"
        for name in ("optimum_distance", "minimum_sharpness", "rank_one"):
            checks.append(_check(name, na, None, None, None, False, False, na))
        out["rank_one_ratio"] = _rank_one_ratio(Z)
        out["checks"] = checks
        return out

    a0 = float(a[0])
    dist = np.abs(Z - z_star[None, :])
    measured_dist = float(np.max(dist))
    rho2_local = float(np.min(d3))
    residual_term = residual / (m * abs(a0) * np.asarray(act.derivative(z_star)))
    dist_bound_i = (
        2 * np.max(eps_ji, axis=0) / (abs(a0) * rho2_local)
        + residual_term
        + 64 * _EPS * np.maximum(np.abs(z_star), np.max(np.abs(Z), axis=0))
    )
    dist_bound = float(np.max(dist_bound_i))
    out["optimum_distance"] = measured_dist
    lemma = None
    if rho1 > 0 and np.allclose(norms2, 1) and np.ptp(w) == 0 and a0 == 1:
        lemma = delta / (w[0] * rho1 * rho2 * np.sqrt(lam_min))
    out["lemma_4_6_bound"] = lemma
    checks.append(
        _check(
            "optimum_distance",
            "max_ij |theta_j^T x_i - phi^{-1}(y_i / (m a))| "
            "(Theorem 3.3, eq. (4)); bound: Lemma 4.6 from the delta reached",
            0.0,
            measured_dist,
            dist_bound,
            True,
            bool(np.all(np.max(dist, 0) <= dist_bound_i)),
            ""
            if lemma is None
            else f"a-priori Lemma 4.6 bound n delta/(2 rho1 rho2 "
            f"sqrt(lambda_min)) = {lemma:.3e}",
        )
    )

    R_star = minimum_sharpness(manifold)
    out["R_star"] = R_star
    slope = (
        2
        * w
        * norms2
        * a0**2
        * np.maximum(
            np.max(np.abs(d1 * d2), axis=0),
            np.abs(np.asarray(act.derivative(z_star) * act.second_derivative(z_star))),
        )
    )
    rounding = 4 * m * n * _EPS * R_star
    R_bound = float(np.sum(m * slope * dist_bound_i)) + rounding
    # Off the manifold by the residual F, R may dip below R* by about lambda* . F,
    # lambda*_i = 2 w_i |x_i|^2 a phi''(z*_i) the optimum's multipliers.
    multipliers = 2 * w * norms2 * a0 * np.asarray(act.second_derivative(z_star))
    below = rounding + float(np.sum(np.abs(multipliers) * residual))
    checks.append(
        _check(
            "minimum_sharpness",
            "R_final - R* with R* = sum_i w_i |x_i|^2 m a^2 "
            "phi'(z*_i)^2 (global minimum, Theorem 3.3); R_final >= R* - |lambda*.F| - "
            "rounding",
            R_star,
            R_final - R_star,
            R_bound,
            True,
            -below <= R_final - R_star <= R_bound,
        )
    )
    ratio_rank = _rank_one_ratio(Z)
    out["rank_one_ratio"] = ratio_rank
    sigma1 = float(np.linalg.norm(Z, 2))
    rank_bound = np.sqrt(m * n) * dist_bound / sigma1 + 16 * np.sqrt(m * n) * _EPS
    checks.append(
        _check(
            "rank_one",
            "sigma_2 / sigma_1 of the feature matrix Theta X^T (rank one at "
            "the optimum)",
            0.0,
            ratio_rank,
            rank_bound,
            True,
            ratio_rank <= rank_bound,
        )
    )
    out["checks"] = checks
    return out


def _rank_one_ratio(Z: np.ndarray) -> float:
    s = np.linalg.svd(Z, compute_uv=False)
    return float(s[1] / s[0]) if s.size > 1 else 0.0
