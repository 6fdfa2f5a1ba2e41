r"""`minimise_sharpness`: the flattest point of $\Gamma$ near a start, by a Riemannian
optimiser of $R$, with per-iteration records and a verdict on the point reached."""

import math
import time
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree, Scalar

from .._errors import InputError
from .._geometry import coordinates_of, Geometry
from .._manifold import AbstractManifold
from .._projection import AbstractProjector, CholeskyProjector
from .._results import is_result, result_name, RESULTS
from .._retraction import AbstractRetraction, ChordRetraction, GaussNewtonRetraction
from .base import AbstractRiemannianMinimiser, Iterate, iterate_at
from .trust_region import RiemannianTrustRegion
from .verdict import classify, Verdict


class MinimumAtInfinity(eqx.Module):
    r"""The test that ends a minimisation as `RESULTS.minimum_at_infinity`: over
    each of the last two windows of `window` iterations, $\|\theta\|$ grew by more
    than `growth` (relative), the second window's growth was at least `persistence`
    times the first's (growth that does not die out, as it does, geometrically, on
    the way to a finite minimiser), and $R$ fell, but by less than `stall`
    (relative) in each: diminishing returns while $\|\theta\|$ keeps growing. A
    heuristic, so the result says "likely"; the solution's `trend()` gives the
    fitted rates.

    It is deliberately conservative: on the way to a finite minimiser $\|\theta\|$
    can grow for hundreds of iterations while $R$ falls slowly (a tanh MLP on 64
    digits: $\|\theta\|$ from 5 to 26 and $R$ falling 0.3% per 100 iterations
    before it converged), and a test with `window=20, stall=0.01` stopped that run
    at $R = 16.60$, 11% above the minimum it would have reached.

    **Arguments:** `window` (iterations, default 50), `growth` (default 0.01),
    `persistence` (default 0.9), `stall` (default 0.001).
    """

    window: int = eqx.field(static=True, default=50)
    growth: float = 0.01
    persistence: float = 0.9
    stall: float = 0.001

    def __check_init__(self):
        if not (isinstance(self.window, int) and self.window >= 1):
            raise InputError(
                f"MinimumAtInfinity(window={self.window!r}): window must be an "
                "integer >= 1.",
                parameter="minimum_at_infinity",
            )

    def __call__(
        self, records: "MinimiseRecords", step: Int[Array, ""]
    ) -> Bool[Array, ""]:
        W = self.window
        norm, sharpness = records.theta_norm, records.sharpness
        a, b, c = (jnp.maximum(step - k * W, 0) for k in (2, 1, 0))
        first, second = norm[b] - norm[a], norm[c] - norm[b]

        def falls_slowly(before, after):
            drop = sharpness[before] - sharpness[after]
            return (drop > 0) & (drop < self.stall * jnp.abs(sharpness[after]))

        return (
            (step >= 2 * W)
            & (first > self.growth * norm[a])
            & (second > self.growth * norm[b])
            & (second >= self.persistence * first)
            & falls_slowly(a, b)
            & falls_slowly(b, c)
        )


class MinimiseRecords(eqx.Module):
    r"""Per-iteration records of [`manifoldflow.minimise_sharpness`][], row 0 the
    start, row k after iteration k: `sharpness`, `gradient_norm` ($\|P_T\nabla
    R\|$), `theta_norm`, `constraint_violation` ($\max_i|F_i|$), `step_size` (the
    trust-region radius or line-search step used), `inner_iterations`
    (truncated-CG or backtracking iterations), `hessian_products`, `accepted`.
    Inside the pure loop these are buffers of `max_steps + 1` rows (NaN or 0 past
    the last iteration); on the host they are trimmed to the iterations taken."""

    sharpness: Float[Array, " S"]
    gradient_norm: Float[Array, " S"]
    theta_norm: Float[Array, " S"]
    constraint_violation: Float[Array, " S"]
    step_size: Float[Array, " S"]
    inner_iterations: Int[Array, " S"]
    hessian_products: Int[Array, " S"]
    accepted: Bool[Array, " S"]

    def at(self, row, iterate: Iterate, step_size, inner, products, accepted):
        def put(buffer, value):
            return buffer.at[row].set(jnp.asarray(value).astype(buffer.dtype))

        return MinimiseRecords(
            put(self.sharpness, iterate.sharpness),
            put(self.gradient_norm, iterate.gradient_norm),
            put(self.theta_norm, jnp.linalg.norm(iterate.theta)),
            put(self.constraint_violation, iterate.residual),
            put(self.step_size, step_size),
            put(self.inner_iterations, inner),
            put(self.hessian_products, products),
            put(self.accepted, accepted),
        )


def _empty_records(size: int, dtype) -> MinimiseRecords:
    nan = jnp.full(size, jnp.nan, dtype)
    zero = jnp.zeros(size, jnp.int32)
    return MinimiseRecords(nan, nan, nan, nan, nan, zero, zero, jnp.zeros(size, bool))


class _State(eqx.Module):
    iterate: Iterate
    solver_state: Any
    step: Int[Array, ""]
    result: RESULTS
    records: MinimiseRecords


class MinimiseSolution(eqx.Module):
    r"""The result of [`manifoldflow.minimise_sharpness`][].

    **Fields:**

    - `theta`: the coordinates of the point reached (on $\Gamma$).
    - `sharpness`, `gradient_norm` ($\|P_T\nabla R\|$, computed exactly as the
      flow computes it), `constraint_violation` ($\max_i|F_i|$).
    - `result`: a [`manifoldflow.RESULTS`][] item: `stationary`,
      `minimum_at_infinity`, `max_steps_reached`, `no_progress`, `step_failure`
      or `initial_retraction_failed`.
    - `num_steps`: iterations taken.
    - `records`: a [`manifoldflow.MinimiseRecords`][] of per-iteration arrays
      (`sharpness`, `gradient_norm`, `theta_norm`, `constraint_violation`,
      `step_size`, `inner_iterations`, `hessian_products`, `accepted`), row 0 the
      start;
      trimmed to `num_steps + 1` rows when returned on the host.
    - `verdict`: a [`manifoldflow.Verdict`][] (what the point is), or `None`
      (under `jax.jit`/`jax.vmap`, or `verdict=False`).
    - `wall_seconds`: the wall time of the call (NaN under a transformation).
    - `manifold`: the manifold, for `parameters()`.
    """

    theta: Float[Array, " D"] | np.ndarray
    sharpness: Scalar | float
    gradient_norm: Scalar | float
    constraint_violation: Scalar | float
    result: RESULTS
    num_steps: Int[Array, ""] | int
    records: MinimiseRecords
    verdict: Verdict | None
    wall_seconds: float
    manifold: AbstractManifold

    def parameters(self) -> PyTree:
        """The model (or parameter pytree) at the point reached."""
        return self.manifold.to_parameters(self.theta)

    @property
    def result_name(self) -> str:
        """The name of `result`, e.g. `"stationary"` (host results only)."""
        return result_name(self.result)

    @property
    def message(self) -> str:
        return RESULTS[self.result]

    @property
    def hessian_products(self) -> int:
        """All Riemannian Hessian-vector products of the iterations."""
        return int(np.sum(np.asarray(self.records.hessian_products)))

    def trend(self, window: int | None = None) -> dict[str, float]:
        r"""Fitted rates over the last `window` iterations (default: the last
        half, at least 2 rows): `sharpness_per_step` (mean change of $R$),
        `log_norm_per_step` (mean change of $\log\|\theta\|$),
        `sharpness_norm_exponent` ($p$ in $R - R_{\rm end} \propto
        \|\theta\|^{p}$ is not identifiable without $R_\infty$, so this is the
        slope of $\log R$ against $\log\|\theta\|$), `gradient_per_step` (mean
        change of $\log_{10}\|P_T\nabla R\|$)."""
        R = np.asarray(self.records.sharpness, float)
        norm = np.asarray(self.records.theta_norm, float)
        grad = np.asarray(self.records.gradient_norm, float)
        rows = R.size
        window = max(2, rows // 2) if window is None else max(2, min(window, rows))
        R, norm, grad = R[-window:], norm[-window:], grad[-window:]
        steps = np.arange(window, dtype=float)
        log_norm = np.log(norm)
        spread = np.ptp(log_norm)
        exponent = (
            float(np.polyfit(log_norm, np.log(np.abs(R)), 1)[0])
            if spread > 0
            else math.nan
        )
        return dict(
            sharpness_per_step=float(np.polyfit(steps, R, 1)[0]),
            log_norm_per_step=float(np.polyfit(steps, log_norm, 1)[0]),
            sharpness_norm_exponent=exponent,
            gradient_per_step=float(
                np.polyfit(steps, np.log10(np.maximum(grad, 1e-300)), 1)[0]
            ),
        )


def _run(
    geometry: Geometry,
    solver: AbstractRiemannianMinimiser,
    initial_retraction: AbstractRetraction,
    theta0: Float[Array, " D"],
    tolerance: Scalar,
    max_steps: int,
    test: MinimumAtInfinity | None,
) -> _State:
    """The pure loop: retract the start, then step until an ending."""
    retracted = initial_retraction(geometry.manifold, geometry.projector, theta0)
    iterate, ok = iterate_at(geometry, retracted.theta, retracted.residual)
    retracted_ok = retracted.outcome == optx.RESULTS.successful
    records = _empty_records(max_steps + 1, theta0.dtype).at(
        0, iterate, jnp.nan, 0, 0, True
    )
    solver_state = solver.init(geometry, iterate, tolerance)
    first = RESULTS.where(
        retracted_ok,
        RESULTS.where(ok, RESULTS.successful, RESULTS.step_failure),
        RESULTS.initial_retraction_failed,
    )
    first = RESULTS.where(
        (first == RESULTS.successful)
        & solver.terminate(geometry, iterate, solver_state, tolerance),
        RESULTS.stationary,
        first,
    )
    state = _State(iterate, solver_state, jnp.array(0), first, records)

    def cond(state):
        return state.result == RESULTS.successful

    def body(state):
        iterate, solver_state, record = solver.step(
            geometry, state.iterate, state.solver_state
        )
        step = state.step + 1
        records = state.records.at(
            step,
            iterate,
            record.step_size,
            record.inner_iterations,
            record.hessian_products,
            record.accepted,
        )
        stationary = solver.terminate(geometry, iterate, solver_state, tolerance)
        at_infinity = jnp.array(False) if test is None else test(records, step)
        result = RESULTS.where(
            record.failed,
            RESULTS.step_failure,
            RESULTS.where(
                stationary,
                RESULTS.stationary,
                RESULTS.where(
                    record.stalled,
                    RESULTS.no_progress,
                    RESULTS.where(
                        at_infinity,
                        RESULTS.minimum_at_infinity,
                        RESULTS.where(
                            step >= max_steps,
                            RESULTS.max_steps_reached,
                            RESULTS.successful,
                        ),
                    ),
                ),
            ),
        )
        return _State(iterate, solver_state, step, result, records)

    return lax.while_loop(cond, body, state)


_run_jit = eqx.filter_jit(_run)

_ENDINGS = ("stationary", "minimum_at_infinity", "max_steps_reached")


def minimise_sharpness(
    manifold: AbstractManifold,
    theta0: Float[ArrayLike, " D"] | PyTree | None = None,
    *,
    solver: AbstractRiemannianMinimiser = RiemannianTrustRegion(),
    projector: AbstractProjector = CholeskyProjector(),
    retraction: AbstractRetraction = ChordRetraction(),
    initial_retraction: AbstractRetraction = GaussNewtonRetraction(),
    gradient_tolerance: float = 1e-10,
    max_steps: int = 1000,
    minimum_at_infinity: MinimumAtInfinity | None = MinimumAtInfinity(),
    verdict: bool = True,
    verdict_iterations: int = 60,
    curvature_tolerance: float = 1e-8,
    throw: bool = True,
) -> MinimiseSolution:
    r"""Minimise the sharpness $R = \sum_i w_i\|\nabla F_i\|^2$ on $\Gamma = \{F =
    0\}$ from `theta0`: where the sharpness flow leads, found by a Riemannian
    optimiser instead of by integrating the flow.

    Retracts $\theta_0$ onto $\Gamma$ (`initial_retraction`), then iterates
    `solver` (default [`manifoldflow.RiemannianTrustRegion`][]: Newton steps in the
    tangent space, quadratic convergence) on the
    [`manifoldflow.Geometry`][]`(manifold, projector, retraction)` that the flow
    uses too, until $\|P_T\nabla R\| \le$ `gradient_tolerance` (a point is never
    called stationary above it), the minimum-at-infinity test, no progress, a
    failure, or `max_steps`. Then, unless `verdict=False`, Lanczos on the tangent
    Hessian says what the point is ([`manifoldflow.Verdict`][]).

    The loop is pure: under `jax.jit` or `jax.vmap` (e.g. over starts) the solution
    holds arrays, `verdict` is `None`, and `throw` raises through
    `eqx.error_if`.

    **Arguments:**

    - `manifold`: e.g. [`manifoldflow.ZeroLossManifold`][].
    - `theta0`: the start (default `manifold.initial_point()`), e.g. the end of a
      flow (`solution.ys[-1]`): optimising from the flow's end polishes it to the
      flow's own limit.
    - `solver`: [`manifoldflow.RiemannianTrustRegion`][] or
      [`manifoldflow.RiemannianGradientDescent`][].
    - `projector`, `retraction`, `initial_retraction`: as in
      [`manifoldflow.solve_flow`][] (use `CGProjector()` on a matrix-free
      manifold that should not form $JJ^\top$).
    - `gradient_tolerance`: stop once $\|P_T\nabla R\| \le$ this.
    - `max_steps`: the most iterations (the records' size).
    - `minimum_at_infinity`: the trend test that ends a run whose $R$ keeps falling
      while $\|\theta\|$ grows ([`manifoldflow.MinimumAtInfinity`][]); `None` to
      turn it off.
    - `verdict`, `verdict_iterations`, `curvature_tolerance`: whether to classify
      the end point, with how many Lanczos products per run, and the relative
      threshold of flat and negative curvature.
    - `throw`: raise `RuntimeError` when the optimiser failed (`no_progress`,
      `step_failure`). `stationary`, `minimum_at_infinity` and
      `max_steps_reached` are endings, never raised: inspect `solution.result`.

    **Returns:** a [`manifoldflow.MinimiseSolution`][].

    **Raises:** [`manifoldflow.InputError`][] for bad input or a start that cannot
    be retracted onto $\Gamma$.
    """
    start = time.perf_counter()
    _check_options(
        manifold,
        solver,
        gradient_tolerance,
        max_steps,
        verdict_iterations,
        curvature_tolerance,
        minimum_at_infinity,
    )
    theta0 = coordinates_of(manifold, theta0)
    traced = isinstance(theta0, jax.core.Tracer) or any(
        isinstance(leaf, jax.core.Tracer)
        for leaf in jax.tree_util.tree_leaves(manifold)
    )
    if not traced and not np.all(np.isfinite(np.asarray(theta0))):
        raise InputError(
            "theta0 contains non-finite values (NaN or inf).", parameter="theta0"
        )
    geometry = Geometry(manifold, projector, retraction)
    tolerance = jnp.asarray(gradient_tolerance, theta0.dtype)
    run = _run if traced else _run_jit
    state = run(
        geometry,
        solver,
        initial_retraction,
        theta0,
        tolerance,
        int(max_steps),
        minimum_at_infinity,
    )
    if traced:
        return _traced_solution(state, manifold, throw)
    return _host_solution(
        state,
        geometry,
        manifold,
        start,
        throw,
        verdict,
        float(gradient_tolerance),
        int(verdict_iterations),
        float(curvature_tolerance),
        initial_retraction,
    )


def _check_options(
    manifold, solver, tolerance, max_steps, verdict_iterations, curvature, test
) -> None:
    if not isinstance(manifold, AbstractManifold):
        raise InputError(
            f"manifold must be a manifoldflow manifold, got {type(manifold).__name__}.",
            fix="Build one, e.g. manifoldflow.ZeroLossManifold(model, X, y).",
            parameter="manifold",
        )
    if not isinstance(solver, AbstractRiemannianMinimiser):
        raise InputError(
            f"solver must be a Riemannian minimiser, got {type(solver).__name__}.",
            fix="Pass manifoldflow.RiemannianTrustRegion() or "
            "manifoldflow.RiemannianGradientDescent().",
            parameter="solver",
        )
    for name, value in (
        ("gradient_tolerance", tolerance),
        ("curvature_tolerance", curvature),
    ):
        if isinstance(value, bool) or not (
            isinstance(value, (int, float)) and value > 0 and math.isfinite(value)
        ):
            raise InputError(
                f"{name} must be a positive finite number, got {value!r}.",
                parameter=name,
            )
    for name, value in (
        ("max_steps", max_steps),
        ("verdict_iterations", verdict_iterations),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or value < 1
        ):
            raise InputError(
                f"{name} must be an integer >= 1, got {value!r}.", parameter=name
            )
    if test is not None and not isinstance(test, MinimumAtInfinity):
        raise InputError(
            f"minimum_at_infinity must be a MinimumAtInfinity or None, got "
            f"{type(test).__name__}.",
            parameter="minimum_at_infinity",
        )


def _traced_solution(state: _State, manifold, throw: bool) -> MinimiseSolution:
    result = state.result
    if throw:
        failed = (
            (result == RESULTS.no_progress)
            | (result == RESULTS.step_failure)
            | (result == RESULTS.initial_retraction_failed)
        )
        theta = eqx.error_if(
            state.iterate.theta, failed, "minimise_sharpness failed (see its result)"
        )
    else:
        theta = state.iterate.theta
    iterate = state.iterate
    return MinimiseSolution(
        theta=theta,
        sharpness=iterate.sharpness,
        gradient_norm=iterate.gradient_norm,
        constraint_violation=iterate.residual,
        result=result,
        num_steps=state.step,
        records=state.records,
        verdict=None,
        wall_seconds=math.nan,
        manifold=manifold,
    )


def _host_solution(
    state,
    geometry,
    manifold,
    start,
    throw,
    verdict,
    tolerance,
    iterations,
    curvature,
    initial_retraction,
) -> MinimiseSolution:
    state = jax.device_get(state)
    result = state.result
    if is_result(result, RESULTS.initial_retraction_failed):
        raise InputError(
            "theta0 could not be retracted onto the manifold by "
            f"{type(initial_retraction).__name__} (no zero of F near it).",
            fix="Start closer to the manifold (e.g. the end of a flow, or a model "
            "fitted to zero loss), or use manifoldflow.GradientFlowRetraction().",
            parameter="theta0",
        )
    steps = int(state.step)
    records = jax.tree_util.tree_map(
        lambda a: np.asarray(a)[: steps + 1], state.records
    )
    iterate = state.iterate
    theta = np.asarray(iterate.theta)
    gradient_norm = float(np.linalg.norm(np.asarray(iterate.gradient)))
    name = result_name(result)
    if throw and name not in _ENDINGS:
        raise RuntimeError(
            f"minimise_sharpness ended after {steps} iteration(s): "
            f"{RESULTS[result]}. R = {float(iterate.sharpness):.6e}, "
            f"|P_T grad R| = {gradient_norm:.3e}. Pass throw=False to get the "
            "solution back."
        )
    judged = None
    if verdict:
        judged = classify(
            geometry,
            jnp.asarray(theta),
            gradient_norm,
            tolerance,
            name == "minimum_at_infinity",
            iterations=iterations,
            relative_tolerance=curvature,
        )
    return MinimiseSolution(
        theta=theta,
        sharpness=float(iterate.sharpness),
        gradient_norm=gradient_norm,
        constraint_violation=float(iterate.residual),
        result=result,
        num_steps=steps,
        records=records,
        verdict=judged,
        wall_seconds=time.perf_counter() - start,
        manifold=manifold,
    )
