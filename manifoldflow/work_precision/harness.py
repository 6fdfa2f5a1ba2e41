r"""Work--precision of the ways to integrate the sharpness flow, in the transient.

Every convergent scheme ends at the same stationary point, so errors are measured
before convergence: on $[0, T]$ with $T$ the first time at which
$|P_T\nabla R| \le 10^{-2}$ on a long solve, as the maximum over equally spaced times
of $|y(t) - y_{\rm ref}(t)|$ (Euclidean, the manifold's coordinates). Adaptive steps
are clipped to land on the output times (`diffrax.ClipStepSizeController`), so every
output is a step end (retracted), not an interpolant. The reference is projected
Dopri8 at rtol = atol = 1e-13, cross-checked against projected Tsit5 at 1e-13; no
error is reported when the two differ by more than 1e-10.

Strategies (all through `diffrax.diffeqsolve` on the same vector field, except SciPy):

- `projected`: `ProjectedSolver(solver)` (a retraction after every step), PID control;
- `projected-every-4`: a retraction after every 4th step;
- `constraint-aware`: `ProjectedSolver(..., correction_in_error=True)` (the size of
  the projection correction added to the error estimate);
- `no-projection`: the plain solver on $-P_T\nabla R$ (the drift off $\Gamma$ is the
  point);
- `stabilised`: the plain solver on $-P_T\nabla R - \gamma J^\top(JJ^\top)^{-1}F$,
  $\gamma = 1$ ([`manifoldflow.StabilisedSharpnessFlow`][]);
- `projected-fixed-euler`: projected explicit Euler with a constant step $T/N$ (the
  baseline people write first), and `projected-fixed` for the other explicit solvers
  at constant steps (their empirical orders);
- `scipy-<method>`: `scipy.integrate.solve_ivp` (DOP853, RK45, Radau, LSODA) on the
  hand-written NumPy closed form on the full $\theta$ (two-layer problems), with a
  Gauss--Newton projection of each output onto $\Gamma$.

Per configuration a row: the transient error, the error in $R$, $\max|F|$ over the
outputs, the distance to the Theorem 3.3 optimum at $T$ (two-layer), vector-field
evaluations (counted by a host callback in a separate, untimed run; a Jacobian of an
implicit solver counts once), accepted and rejected steps, wall time (minimum of
repeats, `block_until_ready`) and compile time (first call minus that; the solve is
compiled once per solver and strategy, tolerances and steps enter as arrays). A
configuration that fails is a row with `failed: true` and its reason; one not run
(over the time budget, or excluded for the problem's size) says so.
"""

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._flow import SharpnessFlow
from .._landscape import gradient_flow
from .._manifold import AbstractManifold
from .._retraction import GaussNewtonRetraction
from .._implicit import with_stepsize_tolerances
from .._solve import solve_flow
from .._solver import ProjectedSolver
from .._stabilised import StabilisedSharpnessFlow
from ..models import (
    deep_linear_data,
    gaussian_init,
    initialise_on_manifold,
    two_layer_data,
    TwoLayerManifold,
)
from ..models.deep_linear import DeepLinearRisk, minimiser_manifold
from ..theory import gatmiry
from ._numpy_peer import NumpyTwoLayerFlow
from .analysis import analyse as analyse, evaluation_rate
from .analysis import plot_work_precision as plot_work_precision


ADAPTIVE_SOLVERS = {
    "heun": diffrax.Heun,
    "bosh3": diffrax.Bosh3,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "kvaerno5": diffrax.Kvaerno5,
}
FIXED_SOLVERS = {
    "euler": diffrax.Euler,
    **{k: v for k, v in ADAPTIVE_SOLVERS.items() if k != "kvaerno5"},
}
STRATEGIES = (
    "projected",
    "projected-every-4",
    "constraint-aware",
    "no-projection",
    "stabilised",
    "projected-fixed-euler",
    "projected-fixed",
    "scipy",
)
SCIPY_METHODS = ("DOP853", "RK45", "Radau", "LSODA")
REFERENCE_TOLERANCE = 1e-13
NUM_TIMES = 16
"""Output intervals on [0, T]: fixed step counts must be multiples of it."""
CROSS_CHECK_LIMIT = 1e-10
"""The largest difference between the two reference solutions at which errors are
still reported."""


class BenchProblem(eqx.Module):
    """A problem of the harness: a manifold, a start on it, the Theorem 3.3 optimum in
    the manifold's coordinates (or `None`) and the NumPy peer for SciPy (or `None`)."""

    name: str
    manifold: AbstractManifold
    y0: jax.Array
    optimum: np.ndarray | None
    peer: Any = None
    large: bool = False


def two_layer_problem(m: int, d: int, n: int, seed: int = 0) -> BenchProblem:
    """The two-layer default of `manifoldflow two-layer` at width m, dimension d and
    n samples (its data and initialisation)."""

    X, y = two_layer_data(n, d, seed)
    net = initialise_on_manifold(jax.random.PRNGKey(seed), X, y, m)
    manifold = TwoLayerManifold(net, X, y)
    return BenchProblem(
        f"two-layer m={m} d={d} n={n}",
        manifold,
        manifold.initial_point(),
        gatmiry.optimum_point(manifold),
        NumpyTwoLayerFlow(manifold, np.asarray(net.theta)),
        large=m * d >= 50_000,
    )


def deep_linear_problem() -> BenchProblem:
    """The trace flow on the minimisers of a deep linear net (L = 3, d = 3, n = 20),
    from the minimiser that gradient flow reaches from a Gaussian start (scale 0.6)."""

    X, y, _ = deep_linear_data(20, 3, 0)
    net = gaussian_init(jax.random.PRNGKey(1), (3, 3, 3, 1), 0.6)
    loss = DeepLinearRisk(net.p, jnp.asarray(X), jnp.asarray(y))
    start = gradient_flow(loss, net.weights, gtol=1e-10).final
    manifold = minimiser_manifold(start, net.p, X, y)
    y0 = GaussNewtonRetraction()(
        manifold, SharpnessFlow(manifold).projector, manifold.initial_point()
    ).theta
    return BenchProblem("deep-linear minimisers L=3 d=3", manifold, y0, None, None)


PROBLEMS: dict[str, Callable[[], BenchProblem]] = {
    "small": lambda: two_layer_problem(32, 64, 16),
    "deep-linear": deep_linear_problem,
    "large": lambda: two_layer_problem(128, 1024, 64),
}
"""The harness's problems: the two-layer default size class (D = 2048), the deep
linear trace flow, and a larger two-layer net (D = 131072)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to run on a problem.

    - `tolerances`: the PID rtol values (atol = rtol / 100).
    - `adaptive`: `(strategy, solver)` pairs under PID control.
    - `fixed_steps`: the numbers of constant steps on $[0, T]$.
    - `fixed_solvers`: solvers at constant steps (`euler` is `projected-fixed-euler`).
    - `scipy_methods`, `scipy_tolerances`: the SciPy peers (a method's tolerances may be
      a shorter list, `scipy_limits[method]` entries from the loosest).
    - `budget_seconds`: a configuration line (strategy, solver) whose run took longer
      than this skips its tighter tolerances / finer steps (rows say so).
    - `repeats`: timed repeats (the minimum is reported).
    """

    tolerances: tuple[float, ...] = tuple(10.0**-k for k in range(3, 13))
    adaptive: tuple[tuple[str, str], ...] = tuple(
        [("projected", s) for s in ADAPTIVE_SOLVERS]
        + [
            (strategy, s)
            for strategy in (
                "no-projection",
                "stabilised",
                "constraint-aware",
                "projected-every-4",
            )
            for s in ("tsit5", "dopri8")
        ]
    )
    fixed_steps: tuple[int, ...] = tuple(2**k for k in range(4, 15))
    fixed_solvers: tuple[str, ...] = tuple(FIXED_SOLVERS)
    scipy_methods: tuple[str, ...] = SCIPY_METHODS
    scipy_limits: tuple[tuple[str, int], ...] = (("Radau", 4), ("LSODA", 6))
    budget_seconds: float = 30.0
    repeats: int = 3

    @classmethod
    def for_problem(cls, problem: BenchProblem, quick: bool = False) -> "Plan":
        """The default plan: all of it on small problems; on a large one no implicit
        solver (a dense Jacobian of size D^2) and fewer constant steps."""
        plan = cls()
        if problem.large:
            plan = dataclasses.replace(
                plan,
                adaptive=tuple(p for p in plan.adaptive if p[1] != "kvaerno5"),
                fixed_steps=tuple(2**k for k in range(4, 11)),
                scipy_methods=("DOP853", "RK45"),
                scipy_limits=(("RK45", 8),),
                repeats=1,
            )
        if quick:
            plan = dataclasses.replace(
                plan,
                tolerances=plan.tolerances[::3],
                fixed_steps=plan.fixed_steps[::4],
            )
        return plan


_COUNT = {"n": 0}


def _count(_):
    _COUNT["n"] += 1


class _Counted(eqx.Module):
    field: Any

    def __call__(self, t, y, args):
        jax.debug.callback(_count, t)
        return self.field(t, y, args)


def _vector_field(problem, strategy):
    flow = SharpnessFlow(problem.manifold)
    if strategy == "stabilised":
        return StabilisedSharpnessFlow(flow, 1.0)
    return flow


def _wrap(manifold, strategy, solver):
    if strategy in ("projected", "projected-fixed", "projected-fixed-euler"):
        return ProjectedSolver(solver, manifold)
    if strategy == "projected-every-4":
        return ProjectedSolver(solver, manifold, retract_every=4)
    if strategy == "constraint-aware":
        return ProjectedSolver(solver, manifold, correction_in_error=True)
    return solver


@eqx.filter_jit
def _integrate(field, inner, strategy, manifold, y0, ts, rtol, atol, dt0, adaptive):
    if adaptive:
        pid = diffrax.PIDController(rtol=rtol, atol=atol)
        # Steps land on the output times, so outputs are step ends (retracted), not
        # interpolants; an implicit solver's root finder takes the PID tolerances.
        controller = diffrax.ClipStepSizeController(pid, step_ts=ts)
        dt0 = None
        inner = with_stepsize_tolerances(inner, pid)
    else:
        controller = diffrax.ConstantStepSize()
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        _wrap(manifold, strategy, inner),
        ts[0],
        ts[-1],
        dt0,
        y0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=controller,
        max_steps=2**20,
        throw=False,
    )
    return (
        solution.ys,
        solution.result,
        solution.stats["num_accepted_steps"],
        solution.stats["num_rejected_steps"],
    )


def _solve(
    problem, strategy, name, ts, rtol=None, atol=None, dt=None, counted=False, repeats=3
):
    """`(ys, info)` of one configuration, timed: adaptive when `dt` is None."""
    adaptive = dt is None
    solver_cls = (ADAPTIVE_SOLVERS if adaptive else FIXED_SOLVERS)[name]
    field = _vector_field(problem, strategy)
    if counted:
        field = _Counted(field)
    dtype = problem.y0.dtype
    args = (
        field,
        solver_cls(),
        strategy,
        problem.manifold,
        problem.y0,
        jnp.asarray(ts, dtype),
        jnp.asarray(rtol if adaptive else 1.0, dtype),
        jnp.asarray(atol if adaptive else 1.0, dtype),
        jnp.asarray(1.0 if adaptive else dt, dtype),
        adaptive,
    )
    start = time.perf_counter()
    out = jax.block_until_ready(_integrate(*args))
    first = time.perf_counter() - start
    walls = []
    for _ in range(0 if counted else repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(_integrate(*args))
        walls.append(time.perf_counter() - start)
        if walls[-1] > 0.5:  # slow configurations: one timed run is enough
            break
    ys, result, accepted, rejected = out
    wall = min(walls) if walls else first
    return np.asarray(ys), dict(
        result=result,
        steps_accepted=int(accepted),
        steps_rejected=int(rejected),
        wall_seconds=wall,
        compile_seconds=max(0.0, first - wall),
    )


class Reference(eqx.Module):
    """The reference solution: output times `ts` on $[0, T]$, states `ys`, sharpness
    `R`, the difference `cross_check` between the two reference solvers, and
    $|P_T\\nabla R|$ at $T$."""

    ts: np.ndarray
    ys: np.ndarray
    R: np.ndarray
    T: float
    cross_check: float
    gradient_norm_at_T: float
    steps: int

    def to_dict(self) -> dict:
        return dict(
            T=self.T,
            cross_check=self.cross_check,
            gradient_norm_at_T=self.gradient_norm_at_T,
            reference_steps=self.steps,
            times=self.ts.tolist(),
        )


def reference_solution(
    problem: BenchProblem, num_times: int = NUM_TIMES, transient: float = 1e-2
) -> Reference:
    """The reference on $[0, T]$, $T$ the first time $|P_T\\nabla R| \\le$ `transient`
    (or the end of a long solve that never gets there)."""
    long = solve_flow(problem.manifold, problem.y0, stationarity=1e-3, throw=False)
    hit = np.flatnonzero(np.asarray(long.gradient_norm) <= transient)
    index = int(hit[0]) if hit.size else -1
    T = float(np.asarray(long.step_ts)[index]) if hit.size else float(long.t_final)
    ts = np.linspace(0.0, T, num_times + 1)
    tol = REFERENCE_TOLERANCE
    ys8, info8 = _solve(problem, "projected", "dopri8", ts, tol, tol, repeats=0)
    ys5, _ = _solve(problem, "projected", "tsit5", ts, tol, tol, repeats=0)
    R = np.asarray(jax.vmap(problem.manifold.sharpness)(jnp.asarray(ys8)))
    return Reference(
        ts=ts,
        ys=ys8,
        R=R,
        T=T,
        cross_check=float(np.max(np.linalg.norm(ys8 - ys5, axis=1))),
        gradient_norm_at_T=float(np.asarray(long.gradient_norm)[index]),
        steps=info8["steps_accepted"],
    )


def _errors(problem, reference, ys):
    manifold = problem.manifold
    R = np.asarray(jax.vmap(manifold.sharpness)(jnp.asarray(ys)))
    F = np.asarray(jax.vmap(manifold.constraint)(jnp.asarray(ys)))
    out = dict(
        error=float(np.max(np.linalg.norm(ys - reference.ys, axis=1))),
        R_error=float(np.max(np.abs(R - reference.R))),
        constraint_max=float(np.max(np.abs(F))),
    )
    if problem.optimum is not None:
        out["optimum_distance"] = float(np.linalg.norm(ys[-1] - problem.optimum))
    return out


def _row(problem, strategy, solver, rtol, dt):
    # Constant steps: rtol = atol = 0 and dt the step; adaptive: dt = 0.
    return dict(
        problem=problem.name,
        strategy=strategy,
        solver=solver,
        rtol=rtol or 0.0,
        atol=(rtol or 0.0) * 1e-2,
        dt=dt or 0.0,
    )


def measure(
    problem: BenchProblem,
    reference: Reference,
    strategy: str,
    solver: str,
    rtol: float | None = None,
    dt: float | None = None,
    repeats: int = 3,
    per_attempt: tuple[float, float] | None = None,
    count_limit: float = 1.0,
) -> dict:
    """One row: a diffrax configuration, adaptive (`rtol`, atol = rtol / 100) or at a
    constant step `dt`, measured against `reference`.

    Evaluations are counted in an extra, untimed run, except for configurations
    slower than `count_limit` seconds when `per_attempt = (fixed, per step)` is given
    (the same solver and strategy's counted evaluations per step attempt, exact for a
    fixed number of stages per step): then `fixed + per step * attempts`, and the
    row's `vf_evals_source` says so."""
    row = _row(problem, strategy, solver, rtol, dt)
    atol = None if rtol is None else rtol * 1e-2
    try:
        ys, info = _solve(
            problem, strategy, solver, reference.ts, rtol, atol, dt, repeats=repeats
        )
        attempts = info["steps_accepted"] + info["steps_rejected"]
        if info["wall_seconds"] <= count_limit or per_attempt is None:
            # Counted by a host callback (slow: about 100 us per evaluation).
            _COUNT["n"] = 0
            _solve(
                problem, strategy, solver, reference.ts, rtol, atol, dt, counted=True
            )
            evals, source = _COUNT["n"], "counted"
        else:
            evals = round(per_attempt[0] + per_attempt[1] * attempts)
            source = "from the counted rate per step of the same solver and strategy"
    except Exception as error:  # a failed configuration is a row, not a crash
        return dict(row, failed=True, reason=f"{type(error).__name__}: {error}")
    result = info.pop("result")
    if result != diffrax.RESULTS.successful:
        return dict(row, failed=True, reason=diffrax.RESULTS[result], **info)
    if not np.all(np.isfinite(ys)):
        return dict(row, failed=True, reason="non-finite state", **info)
    return dict(
        row,
        failed=False,
        vf_evals=evals,
        vf_evals_source=source,
        **info,
        **_errors(problem, reference, ys),
    )


def measure_scipy(
    problem: BenchProblem, reference: Reference, method: str, rtol: float, repeats=2
) -> dict:
    """One row of a SciPy peer: `solve_ivp(method, rtol, atol = rtol / 100)` on the
    NumPy closed form, outputs projected onto $\\Gamma$ (inside the timing)."""
    import scipy.integrate

    row = _row(problem, f"scipy-{method.lower()}", method, rtol, None)
    peer = problem.peer
    walls, result, ys = [], None, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = scipy.integrate.solve_ivp(
            peer,
            (reference.ts[0], reference.ts[-1]),
            peer.theta0.ravel(),
            method=method,
            t_eval=reference.ts,
            rtol=rtol,
            atol=rtol * 1e-2,
        )
        if result.status == 0:
            ys = np.stack([peer.reduced(peer.project(y)) for y in result.y.T])
        walls.append(time.perf_counter() - start)
        if walls[-1] > 5.0:
            break
    if result.status != 0:
        return dict(row, failed=True, reason=result.message)
    return dict(
        row,
        failed=False,
        # nfev: calls of the vector field by the method; Radau's finite-difference
        # Jacobians (njev of them, D calls each, vectorised) are not in it.
        vf_evals=int(result.nfev),
        jacobian_evals=int(result.njev),
        # solve_ivp reports no step counts: -1.
        steps_accepted=-1,
        steps_rejected=-1,
        wall_seconds=min(walls),
        compile_seconds=0.0,
        **_errors(problem, reference, ys),
    )


def _skipped(problem, strategy, solver, rtol, dt, reason):
    return dict(
        _row(problem, strategy, solver, rtol, dt),
        failed=True,
        reason=f"not run: {reason}",
    )


def run_problem(
    problem: BenchProblem,
    plan: Plan | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Every configuration of `plan` on `problem`: `{problem, reference, rows}` (and
    `refused` with no rows when the reference cross-check fails)."""
    plan = Plan.for_problem(problem) if plan is None else plan
    log(f"== {problem.name}")
    reference = reference_solution(problem)
    log(
        f"T = {reference.T:.4g} (|P_T grad R| = {reference.gradient_norm_at_T:.2e}), "
        f"reference cross-check {reference.cross_check:.2e}"
    )
    out = dict(problem=problem.name, reference=reference.to_dict(), rows=[])
    if not reference.cross_check <= CROSS_CHECK_LIMIT:
        out["refused"] = (
            f"the two reference solutions differ by {reference.cross_check:.2e} > "
            f"{CROSS_CHECK_LIMIT:.0e}: no errors reported"
        )
        log(out["refused"])
        return out
    rows = out["rows"]

    def line(configurations, run, key):
        """Run configurations in order, skipping the rest once one is over budget."""
        over = None
        counted = []
        for config in configurations:
            if over is not None:
                rows.append(key(config, over))
                continue
            rows.append(run(config, evaluation_rate(counted)))
            if rows[-1].get("vf_evals_source") == "counted":
                counted.append(rows[-1])
            _log_row(log, rows[-1])
            if rows[-1].get("wall_seconds", 0.0) > plan.budget_seconds:
                over = (
                    f"the previous configuration took {rows[-1]['wall_seconds']:.0f} s "
                    f"> budget {plan.budget_seconds:.0f} s"
                )

    for strategy, solver in plan.adaptive:
        line(
            plan.tolerances,
            lambda tol, rate: measure(
                problem,
                reference,
                strategy,
                solver,
                rtol=tol,
                repeats=plan.repeats,
                per_attempt=rate,
            ),
            lambda tol, why: _skipped(problem, strategy, solver, tol, None, why),
        )
    for solver in plan.fixed_solvers:
        strategy = "projected-fixed-euler" if solver == "euler" else "projected-fixed"
        line(
            [reference.T / count for count in plan.fixed_steps],
            lambda dt, rate: measure(
                problem, reference, strategy, solver, dt=dt, repeats=1, per_attempt=rate
            ),
            lambda dt, why: _skipped(problem, strategy, solver, None, dt, why),
        )
    if problem.peer is not None:
        limits = dict(plan.scipy_limits)
        for method in plan.scipy_methods:
            tolerances = plan.tolerances[: limits.get(method)]
            line(
                tolerances,
                lambda tol, _: measure_scipy(problem, reference, method, tol),
                lambda tol, why: _skipped(
                    problem, f"scipy-{method.lower()}", method, tol, None, why
                ),
            )
    return out


def _log_row(log, row):
    key = f"{row['strategy']:<22} {row['solver']:<8} " + (
        f"rtol={row['rtol']:.0e}" if row["rtol"] else f"dt={row['dt']:.2e}"
    )
    if row["failed"]:
        log(f"  {key}: failed ({row['reason'][:90]})")
    else:
        log(
            f"  {key}: error {row['error']:.2e}, |F| {row['constraint_max']:.1e}, "
            f"{row['vf_evals']} evals, {row['wall_seconds'] * 1e3:.1f} ms"
        )
