r"""Predictions of Gatmiry, Li, Reddi, Jegelka (ICML 2024) for the two-layer flow, and
checks of a computed solution against them: one function per assumption, lemma or
theorem, each returning a [`manifoldflow.theory.Check`][]; `two_layer_checks` runs them
all on a [`manifoldflow.FlowSolution`][] and returns a [`manifoldflow.theory.Report`][].

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
    Minimization. ICML 2024, arXiv:2410.16401. Assumptions 3.1, 3.2, 3.4 and
    Theorems 3.3, 3.5 (Section 3); the proof of Theorem 3.3 and the case of general
    second-layer weights (Section 4.2); inequality (15) (Appendix B.1.2) and Lemma 4.6
    (Appendix C.5); Lemma B.4 (Appendix C.4); Lemma G.4 (Appendix G).
"""

import jax.numpy as jnp
import numpy as np

from .._solution import FlowSolution
from ..models.activations import AbstractActivation, Cube
from ..models.two_layer import inverse_activation, TwoLayerManifold
from ._report import Check, Report
from ._solution_checks import check_constraint, check_stationarity
from .gatmiry_data import (
    derivatives,
    EPS,
    FeaturePoint,
    kkt_slack,
    lemma_4_6_a_priori_bound,
    optimum_distance_bounds,
    sharpness_at,
    TINY,
    TwoLayerData,
    unequal_a_reason,
)


def optimum_features(manifold: TwoLayerManifold) -> np.ndarray | None:
    r"""Theorem 3.3 / eq. (4): $\theta_j^\top x_i = \phi^{-1}(y_i / (m a))$ for equal
    second-layer weights $a_j = a$ ($a = 1$ in the paper), as a vector over $i$;
    `None` when the $a_j$ differ (the optimum is then not in closed form)."""
    a = np.asarray(manifold.a)
    if np.ptp(a) > 0 or a[0] == 0:
        return None
    return np.asarray(
        inverse_activation(
            manifold.activation, np.asarray(manifold.y) / (a.size * a[0])
        )
    )


def optimum_point(manifold: TwoLayerManifold) -> np.ndarray | None:
    r"""The Theorem 3.3 optimum in the manifold's reduced coordinates: every neuron
    $u_j = L^{-1} z^*$ (with $X = LQ^\top$), so that $\theta_j^\top x_i = z^*_i$.

    The set of optima in full coordinates, $\{\Theta : \Theta X^\top = 1 z^{*\top}\}$,
    is this point plus any $\Theta^\perp$ orthogonal to the data span, so $\|u -
    u^*\|$ is the Euclidean distance of $\Theta$ to that set. `None` for unequal
    second-layer weights, or when the $x_i$ are linearly dependent ($n > d$)."""
    z_star = optimum_features(manifold)
    L = np.asarray(manifold.coefficients)
    if z_star is None or L.shape[0] != L.shape[1]:
        return None
    u_star = np.linalg.solve(L, z_star)
    return np.tile(u_star, manifold.a.shape[0])


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
        np.sum(w * m * a**2 * derivatives(manifold.activation, z_star)[0] ** 2)
    )


def asymptotic_rate(manifold: TwoLayerManifold, constant: float = 1.0) -> float | None:
    r"""The exact linear rate of $\|P_T\nabla R(\theta(t))\|$ near the optimum
    (equal $a$, $m \ge 2$): $c\,\lambda_{\min}(H^{1/2} G H^{1/2})$, $G = XX^\top$,
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
        * derivatives(act, z_star)[0]
        * derivatives(act, z_star)[2]
    )
    root = np.sqrt(h)
    return float(constant * np.linalg.eigvalsh(root[:, None] * G * root[None, :])[0])


def fit_linear_rate(ts: np.ndarray, gradient_norm: np.ndarray) -> float:
    r"""Least-squares slope of $\log\|P_T\nabla R\|$ against $t$ in the linear phase,
    as a positive rate $r$ in $\|g\| \approx C e^{-r t}$.

    Near a non-degenerate minimum $\frac{d}{dt}\|g\|^2 = -2\operatorname{Hess}[g, g]
    < 0$, so the linear phase is a run of steps along which $\|g\|$ strictly
    decreases. The fit takes the run that covers the most decades and uses the three
    decades before its last two (less on short runs). Near the end, $\|g\|$ reaches the
    integrator's noise floor (local errors of size rtol$\cdot|\theta|$ move the point
    as much as its distance to the optimum): it slows down over the last two decades
    (on a small net at rtol $10^{-10}$, from rate 1.54 to 0.45 between
    $\|g\| = 2.6\cdot10^{-10}$ and $10^{-10}$) and then stops decreasing
    monotonically. Those steps measure the solver, not the flow, and are left out.
    `nan` with fewer than 3 points.
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
    # Leave out the last two decades, where the run bends towards the noise floor.
    window = run[(height >= 2.0) & (height <= 5.0)]
    if window.size < 3:
        window = run[height <= 3.0]
    if window.size < 3:
        window = np.arange(max(0, end - 2), end + 1)
    slope = np.polyfit(ts[window], np.log(g[window]), 1)[0]
    return float(-slope)


def assumption_3_1(activation: AbstractActivation) -> Check:
    r"""Assumption 3.1: $\rho_1 = \inf\phi' > 0$ and $\rho_2 = \inf\phi''' > 0$.

    Not applicable to activations with $\phi'(0) = 0$ (the cube): for those, Theorem
    3.3 rests on Lemma G.4 instead (see `lemma_g4_sign_consistency`).

    **Returns:** a [`manifoldflow.theory.Check`][] with `measured` $= \rho_1$.
    """
    rho1, rho2 = activation.rho()
    name = "assumption_3_1"
    claim = (
        f"rho1 = inf phi' must be > 0, and so must rho2 = inf phi''' (= {rho2:g}) "
        "(Assumption 3.1)"
    )
    if not rho1 > 0:
        return Check.not_applicable(
            name,
            claim,
            f"the {activation.name} activation has phi'(0) = 0, so Assumption 3.1 "
            "does not hold; Theorem 3.3 then needs sign-consistent features "
            "(Lemma G.4, checked separately)",
            measured=rho1,
        )
    return Check.compare(name, claim, rho1, lower=0.0, condition=rho1 > 0 and rho2 > 0)


def assumption_3_2(
    manifold: TwoLayerManifold,
    *,
    data: TwoLayerData | None = None,
    point: FeaturePoint | None = None,
) -> Check:
    r"""The data points are linearly independent: $\lambda_{\min}(XX^\top) >
    10^3\,\varepsilon_{\text{mach}}\,\lambda_{\max}(XX^\top)$.

    Assumption 3.2 (coherence) implies it, and it is all that Theorem 3.3 needs
    (Section 4.2).

    **Returns:** a [`manifoldflow.theory.Check`][] with `measured`
    $= \lambda_{\min}(XX^\top)$.
    """
    data = TwoLayerData(manifold) if data is None else data
    floor = 1e3 * EPS * data.lambda_max
    return Check.compare(
        "assumption_3_2",
        "lambda_min(X X^T), which must exceed 1e3 eps lambda_max(X X^T): linearly "
        "independent data (implied by Assumption 3.2; all Theorem 3.3 needs, "
        "Section 4.2)",
        data.lambda_min,
        lower=floor,
        condition=data.lambda_min > floor,
    )


def assumption_3_4_normality(
    manifold: TwoLayerManifold,
    u,
    *,
    data: TwoLayerData | None = None,
    point: FeaturePoint | None = None,
) -> Check:
    r"""Assumption 3.4 ($\alpha$-normality): $\phi''^2 \le \alpha\,\phi'\phi'''$ at the
    features $z_{ji} = \theta_j^\top x_i$ of the point with reduced coordinates `u`.

    **Returns:** a [`manifoldflow.theory.Check`][] with `measured`
    $= \max_{ji} \phi''^2 / (\phi'\phi''')$; `prediction` $= \alpha$ for the cube,
    where the ratio is identically $\alpha = 2$.
    """
    act = manifold.activation
    point = FeaturePoint(manifold, u) if point is None else point
    ratio = point.d2**2 / np.maximum(point.d1 * point.d3, TINY)
    alpha = act.normality()
    return Check.compare(
        "assumption_3_4_normality",
        "max_ji phi''^2 / (phi' phi''') at the final features, at most the normality "
        f"constant alpha = {alpha:g} (Assumption 3.4)",
        np.max(ratio),
        prediction=alpha if isinstance(act, Cube) else None,
        upper=alpha * (1 + 64 * EPS),
    )


def lemma_g4_sign_consistency(
    manifold: TwoLayerManifold,
    u,
    *,
    data: TwoLayerData | None = None,
    point: FeaturePoint | None = None,
) -> Check:
    r"""Lemma G.4 (cube activation): Theorem 3.3 holds for $\phi(z) = z^3$ along a flow
    with $\operatorname{sign}(\theta_j^\top x_i) = \operatorname{sign}(y_i / a_j)$ and
    $|\theta_j^\top x_i|$ away from 0; a point with some $\theta_j^\top x_i \to 0$ is a
    spurious stationary point.

    "Away from 0" is $\min|z_{ji}| > 10^{-3}\min_i|z^*_i|$ ($10^{-8}$ without a closed
    form). Applicable to the `Cube` activation only.

    **Returns:** a [`manifoldflow.theory.Check`][] with `measured` $= \min|z_{ji}|$.
    """
    act = manifold.activation
    data = TwoLayerData(manifold) if data is None else data
    Z = (FeaturePoint(manifold, u) if point is None else point).features
    min_abs = float(np.min(np.abs(Z)))
    name = "lemma_g4_sign_consistency"
    claim = (
        "min_ji |theta_j^T x_i| at the end, which must stay away from 0 with "
        "sign(theta_j^T x_i) = sign(y_i / a_j) (Lemma G.4, cube activation)"
    )
    if not isinstance(act, Cube):
        return Check.not_applicable(
            name,
            claim,
            f"inf phi' = {act.rho()[0]:g} > 0 for the {act.name} activation: "
            "Assumption 3.1 holds, so Theorem 3.3 does not need Lemma G.4",
            measured=min_abs,
        )
    z_star = optimum_features(manifold)
    floor = 1e-3 * float(np.min(np.abs(z_star))) if z_star is not None else 1e-8
    wrong = int(np.sum(np.sign(Z) != np.sign(data.y[None, :] / data.a[:, None])))
    if min_abs <= floor:
        note = (
            f"drifted to theta_j^T x_i -> 0 (min |z| = {min_abs:.2e}): a spurious "
            "stationary point of the cube activation, NOT the optimum"
        )
    else:
        note = "" if wrong == 0 else f"{wrong} features have the wrong sign"
    return Check.compare(
        name,
        claim,
        min_abs,
        lower=floor,
        condition=wrong == 0 and min_abs > floor,
        note=note,
    )


def lemma_4_6_phi2_image(
    manifold: TwoLayerManifold,
    u,
    delta: float,
    *,
    data: TwoLayerData | None = None,
    point: FeaturePoint | None = None,
) -> Check:
    r"""The $\phi''$-image of the features is rank one at stationarity: $a_j
    \phi''(z_{ji}) = \mu_i$ for every $j$ (Section 4.2, eq. (9), for any fixed $a$).

    At a $\delta$-stationary point, inequality (15) (as in Lemma 4.6) gives
    $\max_j - \min_j$ of $a_j\phi''(z_{ji})$ at most $2\max_j\varepsilon_{ji}$ (plus
    rounding), checked per data point $i$.

    **Arguments:** the manifold, reduced coordinates `u`, and
    $\delta = \|P_T\nabla R(u)\|$.

    **Returns:** a [`manifoldflow.theory.Check`][] with `measured` $= \max_i (\max_j -
    \min_j)\, a_j\phi''(z_{ji})$.
    """
    data = TwoLayerData(manifold) if data is None else data
    point = FeaturePoint(manifold, u) if point is None else point
    image = data.a[:, None] * point.d2
    spread = np.ptp(image, axis=0)
    bound = 2 * np.max(kkt_slack(data, point, delta), axis=0) + 64 * EPS * np.max(
        np.abs(image), axis=0
    )
    return Check.compare(
        "lemma_4_6_phi2_image",
        "max_i (max_j - min_j) a_j phi''(theta_j^T x_i), 0 at a stationary point "
        "(eq. (9)); bound: inequality (15) / Lemma 4.6 from the delta reached, per i",
        np.max(spread),
        prediction=0.0,
        upper=np.max(bound),
        condition=bool(np.all(spread <= bound)),
    )


def theorem_3_3_optimum(
    manifold: TwoLayerManifold,
    u,
    delta: float,
    *,
    data: TwoLayerData | None = None,
    point: FeaturePoint | None = None,
) -> Check:
    r"""Theorem 3.3, eq. (4): the stationary point has $\theta_j^\top x_i =
    z^*_i = \phi^{-1}(y_i / (m a))$ for equal second-layer weights $a_j = a$.

    The bound on $|z_{ji} - z^*_i|$ is Lemma 4.6 a posteriori, from the $\delta$
    reached and the constraint residual, checked per data point $i$.

    **Arguments:** the manifold, reduced coordinates `u`, and
    $\delta = \|P_T\nabla R(u)\|$.

    **Returns:** a [`manifoldflow.theory.Check`][] with `measured`
    $= \max_{ji}|z_{ji} - z^*_i|$; not applicable for unequal $a_j$.
    """
    name = "theorem_3_3_optimum"
    claim = (
        "max_ji |theta_j^T x_i - phi^{-1}(y_i / (m a))|, 0 at the optimum "
        "(Theorem 3.3, eq. (4)); bound: Lemma 4.6 from the delta reached, per i"
    )
    data = TwoLayerData(manifold) if data is None else data
    z_star = optimum_features(manifold)
    if z_star is None:
        return Check.not_applicable(name, claim, unequal_a_reason(data))
    point = FeaturePoint(manifold, u) if point is None else point
    distance = np.max(np.abs(point.features - z_star[None, :]), axis=0)
    bounds = optimum_distance_bounds(data, point, z_star, delta)
    lemma = lemma_4_6_a_priori_bound(data, delta)
    return Check.compare(
        name,
        claim,
        np.max(distance),
        prediction=0.0,
        upper=np.max(bounds),
        condition=bool(np.all(distance <= bounds)),
        note=""
        if lemma is None
        else "a-priori Lemma 4.6 bound n delta/(2 rho1 rho2 sqrt(lambda_min)) = "
        f"{lemma:.3e}",
    )


def theorem_3_3_minimum_sharpness(
    manifold: TwoLayerManifold,
    u,
    delta: float,
    *,
    data: TwoLayerData | None = None,
    point: FeaturePoint | None = None,
) -> Check:
    r"""Theorem 3.3: the stationary point is the global minimum of $R$ on the
    manifold, $R^* = \sum_i w_i\|x_i\|^2\, m a^2\phi'(z^*_i)^2$ (equal $a_j = a$).

    The upper bound on $R(u) - R^*$ integrates the slope of $R$ over the distance
    bound of `theorem_3_3_optimum`; the lower bound allows the dip below $R^*$ of a
    point off the manifold by the residual $F$, $|\lambda^*\cdot F|$ with the
    optimum's multipliers $\lambda^*_i = 2w_i\|x_i\|^2 a\phi''(z^*_i)$, plus rounding.

    **Returns:** a [`manifoldflow.theory.Check`][] with `measured` $= R(u) - R^*$;
    not applicable for unequal $a_j$.
    """
    name = "theorem_3_3_minimum_sharpness"
    claim = (
        "R_final - R* with R* = sum_i w_i |x_i|^2 m a^2 phi'(z*_i)^2, 0 at the global "
        "minimum (Theorem 3.3); lower bound: -(|lambda*.F| + rounding)"
    )
    data = TwoLayerData(manifold) if data is None else data
    z_star = optimum_features(manifold)
    if z_star is None:
        return Check.not_applicable(name, claim, unequal_a_reason(data))
    act = data.activation
    point = FeaturePoint(manifold, u) if point is None else point
    m, n = point.features.shape
    a0 = float(data.a[0])
    R_final = float(sharpness_at(manifold, jnp.asarray(u)))
    R_star = minimum_sharpness(manifold)
    curvature = 2 * data.weights * data.norms2
    slope = (
        curvature
        * a0**2
        * np.maximum(
            np.max(np.abs(point.d1 * point.d2), axis=0),
            np.abs(np.prod(derivatives(act, z_star)[:2], axis=0)),
        )
    )
    rounding = 4 * m * n * EPS * R_star
    bounds = optimum_distance_bounds(data, point, z_star, delta)
    upper = float(np.sum(m * slope * bounds)) + rounding
    multipliers = curvature * a0 * derivatives(act, z_star)[1]
    below = rounding + float(np.sum(np.abs(multipliers) * point.residual))
    return Check.compare(
        name, claim, R_final - R_star, prediction=0.0, lower=-below, upper=upper
    )


def theorem_3_3_rank_one(
    manifold: TwoLayerManifold,
    u,
    delta: float,
    *,
    data: TwoLayerData | None = None,
    point: FeaturePoint | None = None,
) -> Check:
    r"""Theorem 3.3: the feature matrix $Z = \Theta X^\top$ is rank one at the optimum
    (every row is $z^*$).

    Bound: $\sigma_2(Z) \le \|Z - \mathbf 1 z^{*\top}\|_F \le \sqrt{mn}\,d$ with $d$ the
    distance bound of `theorem_3_3_optimum`, divided by $\sigma_1(Z)$, plus rounding.

    **Returns:** a [`manifoldflow.theory.Check`][] with `measured`
    $= \sigma_2(Z)/\sigma_1(Z)$; not applicable (with the ratio) for unequal $a_j$.
    """
    name = "theorem_3_3_rank_one"
    claim = (
        "sigma_2 / sigma_1 of the feature matrix Theta X^T, 0 at the optimum "
        "(Theorem 3.3: rank one)"
    )
    data = TwoLayerData(manifold) if data is None else data
    point = FeaturePoint(manifold, u) if point is None else point
    Z = point.features
    ratio = _rank_one_ratio(Z)
    z_star = optimum_features(manifold)
    if z_star is None:
        return Check.not_applicable(name, claim, unequal_a_reason(data), measured=ratio)
    m, n = Z.shape
    distance = float(np.max(optimum_distance_bounds(data, point, z_star, delta)))
    sigma1 = float(np.linalg.norm(Z, 2))
    bound = np.sqrt(m * n) * distance / sigma1 + 16 * np.sqrt(m * n) * EPS
    return Check.compare(name, claim, ratio, prediction=0.0, upper=bound)


def theorem_3_5_linear_rate(
    manifold: TwoLayerManifold, solution: FlowSolution
) -> Check:
    r"""Theorem 3.5 (linear convergence): $\|P_T\nabla R(\theta(t))\|$ decays like
    $e^{-rt}$; the fitted rate $r$ (`fit_linear_rate`) must be at least $0.95$ times
    the exact asymptotic rate (`asymptotic_rate`, which Lemma B.4 bounds below).

    Without a closed form (unequal $a_j$, or $m = 1$) only $r > 0$ is required.

    **Arguments:** the manifold and the [`manifoldflow.FlowSolution`][] (its step
    times, gradient norms and flow constant $c$).

    **Returns:** a [`manifoldflow.theory.Check`][] with `measured` $= r$; not
    applicable with fewer than 3 points to fit.
    """
    name = "theorem_3_5_linear_rate"
    rate = fit_linear_rate(solution.step_ts, solution.gradient_norm)
    predicted = asymptotic_rate(manifold, solution.constant)
    claim = "fitted tail rate r of |P_T grad R| ~ C e^{-r t}, " + (
        "positive (Theorem 3.5: linear convergence)"
        if predicted is None
        else "at least 0.95 x the exact asymptotic rate c lambda_min(H^1/2 G H^1/2): "
        "a LOWER bound (Theorem 3.5: linear convergence)"
    )
    if not np.isfinite(rate):
        return Check.not_applicable(
            name,
            claim,
            "no trajectory to fit (fewer than 3 steps, e.g. stationary at the start)",
            prediction=predicted,
        )
    if predicted is None:
        return Check.compare(
            name,
            claim,
            rate,
            lower=0.0,
            condition=rate > 0,
            note="no closed-form rate (unequal a_j, or m = 1): checks only that the "
            "fitted rate is positive",
        )
    return Check.compare(
        name,
        claim,
        rate,
        prediction=predicted,
        lower=0.95 * predicted,
        condition=rate > 0,
    )


def _final_coordinates(manifold: TwoLayerManifold, solution: FlowSolution):
    """The reduced coordinates on `manifold` of the solution's last point."""
    if isinstance(solution.manifold, TwoLayerManifold):
        return solution.theta_final
    net = solution.manifold.to_parameters(solution.theta_final)
    return manifold.coordinates(net.theta)


def two_layer_checks(
    manifold: TwoLayerManifold, solution: FlowSolution, *, constraint_tolerance: float
) -> Report:
    r"""All the paper's predictions for a computed solution, with derived bounds.

    **Arguments:**

    - `manifold`: the structured [`manifoldflow.models.TwoLayerManifold`][] of the net.
    - `solution`: a [`manifoldflow.FlowSolution`][] on that manifold, or on a
      `ZeroLossManifold` of the same `TwoLayerNet` (the generic path).
    - `constraint_tolerance`: the largest acceptable $\max|F|$ along the trajectory.

    **Returns:** a [`manifoldflow.theory.Report`][]: the checks (stationarity,
    constraint, assumptions, lemmas, theorems) and the figures `R_final`, `R_star`,
    `optimum_distance`, `lemma_4_6_bound`, `rank_one_ratio`, `phi2_image_spread`,
    `linear_rate`, `linear_rate_predicted`, `lambda_min_data_gram`.
    """
    u = _final_coordinates(manifold, solution)
    delta = float(solution.gradient_norm[-1])
    # The manifold's arrays and the final point's, built once for every check.
    data, point = TwoLayerData(manifold), FeaturePoint(manifold, u)
    at = dict(data=data, point=point)
    checks = (
        check_stationarity(solution),
        check_constraint(solution, constraint_tolerance),
        assumption_3_1(manifold.activation),
        assumption_3_2(manifold, data=data),
        assumption_3_4_normality(manifold, u, **at),
        lemma_g4_sign_consistency(manifold, u, **at),
        lemma_4_6_phi2_image(manifold, u, delta, **at),
        theorem_3_3_optimum(manifold, u, delta, **at),
        theorem_3_3_minimum_sharpness(manifold, u, delta, **at),
        theorem_3_3_rank_one(manifold, u, delta, **at),
        theorem_3_5_linear_rate(manifold, solution),
    )
    by_name = {c.name: c for c in checks}
    figures = dict(
        R_final=float(sharpness_at(manifold, jnp.asarray(u))),
        R_star=minimum_sharpness(manifold),
        optimum_distance=by_name["theorem_3_3_optimum"].measured,
        lemma_4_6_bound=lemma_4_6_a_priori_bound(data, delta),
        rank_one_ratio=by_name["theorem_3_3_rank_one"].measured,
        phi2_image_spread=by_name["lemma_4_6_phi2_image"].measured,
        linear_rate=by_name["theorem_3_5_linear_rate"].measured,
        linear_rate_predicted=asymptotic_rate(manifold, solution.constant),
        lambda_min_data_gram=by_name["assumption_3_2"].measured,
    )
    return Report(checks=checks, figures=figures)


def _rank_one_ratio(Z: np.ndarray) -> float:
    s = np.linalg.svd(Z, compute_uv=False)
    return float(s[1] / s[0]) if s.size > 1 else 0.0
