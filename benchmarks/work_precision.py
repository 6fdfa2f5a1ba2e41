"""Work-precision of the ways to integrate the sharpness flow, in the transient.

Every convergent scheme ends at the same stationary point, so errors are measured
before convergence: on [0, T] with T the first time at which |P_T grad R| <= 1e-2 on
the reference, as the maximum over 16 equally spaced times of |y(t) - y_ref(t)|
(Euclidean, manifold coordinates). Adaptive steps are clipped to land on
the output times (`diffrax.ClipStepSizeController(step_ts=...)`), so every output is a
step end, not an interpolant. Reference: projected Dopri8 at rtol = atol = 1e-13,
cross-checked against projected Tsit5 at 1e-13; no error is reported when the
two differ by more than 1e-10.

Strategies (all through `diffrax.diffeqsolve` on the same vector field, except SciPy):
- `projected`: `ProjectedSolver(solver)` (retraction after every step), PID control;
- `projected-every-4`: retraction after every 4th step;
- `constraint-aware`: `ProjectedSolver(..., correction_in_error=True)` (the size of the
  projection correction added to the error estimate);
- `no-projection`: the plain solver on -P_T grad R (the drift off Gamma is the point);
- `stabilised`: the plain solver on -P_T grad R - gamma J^T (J J^T)^-1 F, gamma = 1;
- `projected-fixed-euler` (and the other explicit solvers at fixed steps, for orders):
  `ProjectedSolver(solver)` with a constant step h = T / N;
- `scipy-<method>`: `scipy.integrate.solve_ivp` (DOP853, RK45, Radau, LSODA) on a
  hand-written NumPy closed form on the full theta (two-layer problems only), with a
  Gauss-Newton projection of each output onto Gamma.

Per row: the transient error, the error in R, max|F| over the outputs, the distance to
the Theorem 3.3 optimum at T (two-layer), vector-field evaluations (counted by a host
callback in a separate, untimed run; a Jacobian of an implicit solver counts once),
accepted and rejected steps, wall time (minimum of repeats, `block_until_ready`) and
compile time (first call minus that). A configuration that fails is a row with
`failed: true` and its reason.

    python benchmarks/work_precision.py [--quick] [--problems two-layer,...]

Writes benchmarks/results/work_precision.json and work_precision.png.
"""

import argparse
import pathlib
import sys
import time

import jax


jax.config.update("jax_enable_x64", True)
import diffrax
import equinox as eqx
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np


HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
from _common import machine, RESULTS, write_json  # noqa: E402


TOLERANCES = [10.0**-k for k in range(3, 13)]
ADAPTIVE = {
    "heun": diffrax.Heun,
    "bosh3": diffrax.Bosh3,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "kvaerno5": diffrax.Kvaerno5,
}
FIXED = {
    "euler": diffrax.Euler,
    **{k: v for k, v in ADAPTIVE.items() if k != "kvaerno5"},
}
NUM_TIMES = 16
COUNT = {"n": 0}


class Problem(eqx.Module):
    name: str
    manifold: mf.AbstractManifold
    y0: jax.Array
    optimum: np.ndarray | None
    scipy: object | None


def two_layer(m, d, n, seed=0) -> Problem:
    from manifoldflow.models import (
        initialise_on_manifold,
        two_layer_data,
        TwoLayerManifold,
    )
    from manifoldflow.theory import gatmiry

    X, y = two_layer_data(n, d, seed)
    net = initialise_on_manifold(jax.random.PRNGKey(seed), X, y, m)
    manifold = TwoLayerManifold(net, X, y)
    y0 = manifold.initial_point()
    return Problem(
        f"two-layer m={m} d={d} n={n}",
        manifold,
        y0,
        gatmiry.optimum_point(manifold),
        ScipyTwoLayer(manifold, np.asarray(net.theta)),
    )


def deep_linear_minimisers() -> Problem:
    from manifoldflow.experiments.deep_linear import DeepLinearRisk
    from manifoldflow.models import deep_linear_data, gaussian_init
    from manifoldflow.models.deep_linear import minimiser_manifold

    X, y, _ = deep_linear_data(20, 3, 0)
    net = gaussian_init(jax.random.PRNGKey(1), (3, 3, 3, 1), 0.6)
    loss = DeepLinearRisk(net.p, jnp.asarray(X), jnp.asarray(y))
    start = mf.gradient_flow(loss, net.weights, gtol=1e-10).final
    manifold = minimiser_manifold(start, net.p, X, y)
    y0 = mf.GaussNewtonRetraction()(
        manifold, mf.CholeskyProjector(), manifold.initial_point()
    ).theta
    return Problem("deep-linear minimisers L=3 d=3", manifold, y0, None, None)


class ScipyTwoLayer:
    """The hand-written NumPy closed form (cubic-linear activation, L = (1/n) sum
    (f - y)^2) on the full theta, as in `scipy_baseline.py`, with a Gauss-Newton
    projection of outputs and the map to the manifold's reduced coordinates."""

    def __init__(self, manifold, theta0):
        self.X = np.asarray(manifold.X)
        self.y = np.asarray(manifold.y)
        self.a = np.asarray(manifold.a)
        self.basis = np.asarray(manifold.basis)
        self.theta0 = theta0
        self.G = self.X @ self.X.T
        self.diag = np.asarray(manifold.weights) * np.diag(self.G)

    def vector_field(self, t, theta):
        X, G, a = self.X, self.G, self.a
        m, d = self.theta0.shape
        Z = theta.reshape(m, d) @ X.T
        B = a[:, None] * (1 + Z**2)
        C = (4 * self.diag) * B * a[:, None] * Z
        rhs = np.einsum("ji,ji->i", B, C @ G)
        factor = scipy.linalg.cho_factor((B.T @ B) * G, check_finite=False)
        lam = scipy.linalg.cho_solve(factor, rhs, check_finite=False)
        return -((C - B * lam) @ X).ravel()

    def project(self, theta):
        m, d = self.theta0.shape
        theta = theta.reshape(m, d)
        for _ in range(20):
            Z = theta @ self.X.T
            F = np.sum(self.a[:, None] * (Z + Z**3 / 3), axis=0) - self.y
            if np.max(np.abs(F)) <= 1e-14:
                break
            B = self.a[:, None] * (1 + Z**2)
            lam = np.linalg.solve((B.T @ B) * self.G, F)
            theta = theta - (B * lam) @ self.X
        return theta

    def reduced(self, theta):
        return (theta @ self.basis).ravel()


import scipy.integrate  # noqa: E402
import scipy.linalg  # noqa: E402


def _count(_):
    COUNT["n"] += 1


class Counted(eqx.Module):
    field: eqx.Module

    def __call__(self, t, y, args):
        jax.debug.callback(_count, t)
        return self.field(t, y, args)


def vector_field(problem, strategy):
    flow = mf.SharpnessFlow(problem.manifold)
    if strategy == "stabilised":
        return mf.StabilisedSharpnessFlow(flow, 1.0)
    return flow


def wrap(manifold, strategy, solver):
    if strategy in ("projected", "projected-fixed", "projected-fixed-euler"):
        return mf.ProjectedSolver(solver, manifold)
    if strategy == "projected-every-4":
        return mf.ProjectedSolver(solver, manifold, retract_every=4)
    if strategy == "constraint-aware":
        return mf.ProjectedSolver(solver, manifold, correction_in_error=True)
    return solver


@eqx.filter_jit
def integrate(field, inner, strategy, manifold, y0, ts, rtol, atol, dt0, adaptive):
    if adaptive:
        pid = diffrax.PIDController(rtol=rtol, atol=atol)
        # Steps land on the output times, so outputs are step ends (retracted), not
        # interpolants; an implicit solver's root finder takes the PID tolerances.
        controller = diffrax.ClipStepSizeController(pid, step_ts=ts)
        dt0 = None
        inner = mf._solve._with_stepsize_tolerances(inner, pid)
    else:
        controller = diffrax.ConstantStepSize()
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        wrap(manifold, strategy, inner),
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


def solve(
    problem, strategy, name, ts, tol=None, dt=None, counted=False, repeats=3, atol=None
):
    """`(ys, info)` for one configuration, timed (atol defaults to rtol / 100)."""
    adaptive = dt is None
    solver_cls = (ADAPTIVE if adaptive else FIXED)[name]
    field = vector_field(problem, strategy)
    if counted:
        field = Counted(field)
    dtype = problem.y0.dtype
    atol = (tol * 1e-2 if tol else 1.0) if atol is None else atol
    args = (
        field,
        solver_cls(),
        strategy,
        problem.manifold,
        problem.y0,
        jnp.asarray(ts, dtype),
        jnp.asarray(tol if tol else 1.0, dtype),
        jnp.asarray(atol, dtype),
        jnp.asarray(dt if dt else 1.0, dtype),
        adaptive,
    )
    start = time.perf_counter()
    out = jax.block_until_ready(integrate(*args))
    first = time.perf_counter() - start
    walls = []
    for _ in range(repeats if not counted else 0):
        start = time.perf_counter()
        out = jax.block_until_ready(integrate(*args))
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


def measure(problem, reference, strategy, name, tol=None, dt=None, repeats=3):
    # Fixed steps: rtol = atol = 0 and dt the step (all fields numeric).
    row = dict(
        problem=problem.name,
        strategy=strategy,
        solver=name,
        rtol=tol or 0.0,
        atol=0.0 if tol is None else tol * 1e-2,
        dt=dt or 0.0,
    )
    try:
        ys, info = solve(
            problem, strategy, name, reference["ts"], tol, dt, False, repeats
        )
        COUNT["n"] = 0
        solve(problem, strategy, name, reference["ts"], tol, dt, True, 0)
        evals = COUNT["n"]
    except Exception as error:  # a failed configuration is a row, not a crash
        return dict(row, failed=True, reason=f"{type(error).__name__}: {error}")
    result = info.pop("result")
    if result != diffrax.RESULTS.successful or not np.all(np.isfinite(ys)):
        return dict(row, failed=True, reason=diffrax.RESULTS[result] or "non-finite")
    return dict(
        row, failed=False, vf_evals=evals, **info, **errors(problem, reference, ys)
    )


def errors(problem, reference, ys):
    manifold = problem.manifold
    R = np.asarray(jax.vmap(manifold.sharpness)(jnp.asarray(ys)))
    F = np.asarray(jax.vmap(manifold.constraint)(jnp.asarray(ys)))
    out = dict(
        error=float(np.max(np.linalg.norm(ys - reference["ys"], axis=1))),
        R_error=float(np.max(np.abs(R - reference["R"]))),
        constraint_max=float(np.max(np.abs(F))),
    )
    if problem.optimum is not None:
        out["optimum_distance"] = float(np.linalg.norm(ys[-1] - problem.optimum))
    return out


def scipy_row(problem, reference, method, tol, repeats=2):
    row = dict(
        problem=problem.name,
        strategy=f"scipy-{method.lower()}",
        solver=method,
        rtol=tol,
        atol=tol * 1e-2,
        dt=0.0,
    )
    sp = problem.scipy
    walls, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = scipy.integrate.solve_ivp(
            sp.vector_field,
            (reference["ts"][0], reference["ts"][-1]),
            sp.theta0.ravel(),
            method=method,
            t_eval=reference["ts"],
            rtol=tol,
            atol=tol * 1e-2,
        )
        if result.status == 0:
            ys = np.stack([sp.reduced(sp.project(y)) for y in result.y.T])
        walls.append(time.perf_counter() - start)
    if result.status != 0:
        return dict(row, failed=True, reason=result.message)
    return dict(
        row,
        failed=False,
        vf_evals=int(result.nfev),
        # solve_ivp reports no step counts (nfev is exact): -1.
        steps_accepted=-1,
        steps_rejected=-1,
        wall_seconds=min(walls),
        compile_seconds=0.0,
        **errors(problem, reference, ys),
    )


def make_reference(problem):
    long = mf.solve_flow(problem.manifold, problem.y0, stationarity=1e-3, throw=False)
    hit = np.flatnonzero(long.gradient_norm <= 1e-2)
    T = float(long.step_ts[hit[0]]) if hit.size else float(long.t_final)
    ts = np.linspace(0.0, T, NUM_TIMES + 1)
    ys8, info8 = solve(problem, "projected", "dopri8", ts, 1e-13, atol=1e-13, repeats=1)
    ys5, _ = solve(problem, "projected", "tsit5", ts, 1e-13, atol=1e-13, repeats=1)
    gap = float(np.max(np.linalg.norm(ys8 - ys5, axis=1)))
    R = np.asarray(jax.vmap(problem.manifold.sharpness)(jnp.asarray(ys8)))
    return dict(
        ts=ts,
        ys=ys8,
        R=R,
        T=T,
        cross_check=gap,
        gradient_norm_at_T=float(long.gradient_norm[hit[0]]) if hit.size else None,
        reference_steps=info8["steps_accepted"],
    )


def skipped(problem, strategy, name, reason, **keys):
    return dict(
        problem=problem.name,
        strategy=strategy,
        solver=name,
        failed=True,
        reason=f"not run: {reason}",
        **keys,
    )


def run_problem(problem, quick, large=False):
    print(f"== {problem.name}", flush=True)
    reference = make_reference(problem)
    print(
        f"T = {reference['T']:.4g}, "
        f"reference cross-check {reference['cross_check']:.2e}",
        flush=True,
    )
    if not reference["cross_check"] <= 1e-10:
        return dict(
            problem=problem.name,
            reference=dict(T=reference["T"], cross_check=reference["cross_check"]),
            refused="the two reference solutions differ by more than 1e-10",
            rows=[],
        )
    tolerances = TOLERANCES[::3] if quick else TOLERANCES
    rows = []
    plan = [("projected", s) for s in ADAPTIVE]
    plan += [
        (strategy, s)
        for strategy in (
            "no-projection",
            "stabilised",
            "constraint-aware",
            "projected-every-4",
        )
        for s in ("tsit5", "dopri8")
    ]
    for strategy, name in plan:
        for tol in tolerances:
            rows.append(measure(problem, reference, strategy, name, tol=tol))
        report(rows[-len(tolerances) :])
    steps = [2**k for k in (range(4, 13, 4) if quick else range(4, 15))]
    for name in FIXED:
        strategy = "projected-fixed-euler" if name == "euler" else "projected-fixed"
        for count in steps:
            rows.append(
                measure(
                    problem,
                    reference,
                    strategy,
                    name,
                    dt=reference["T"] / count,
                    repeats=1,
                )
            )
        report(rows[-len(steps) :])
    if problem.scipy is not None:
        for method in ("DOP853", "RK45", "Radau", "LSODA"):
            for tol in tolerances[: 4 if method in ("Radau", "LSODA") else None]:
                rows.append(scipy_row(problem, reference, method, tol))
            report(
                rows[-len(tolerances[: 4 if method in ("Radau", "LSODA") else None]) :]
            )
    return dict(
        problem=problem.name,
        reference=dict(
            T=reference["T"],
            cross_check=reference["cross_check"],
            gradient_norm_at_T=reference["gradient_norm_at_T"],
            times=reference["ts"].tolist(),
        ),
        rows=rows,
    )


def report(rows):
    for row in rows:
        key = f"{row['strategy']:<22} {row['solver']:<8} " + (
            f"rtol={row['rtol']:.0e}" if row["rtol"] else f"dt={row['dt']:.2e}"
        )
        if row["failed"]:
            print(f"  {key}: failed ({row['reason'][:80]})", flush=True)
        else:
            print(
                f"  {key}: error {row['error']:.2e}, |F| {row['constraint_max']:.1e}, "
                f"{row['vf_evals']} evals, {row['wall_seconds'] * 1e3:.1f} ms",
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--problems", default="small,deep-linear,large")
    args = parser.parse_args()
    builders = {
        "small": lambda: two_layer(32, 64, 16),
        "deep-linear": deep_linear_minimisers,
        "large": lambda: two_layer(128, 1024, 64),
    }
    results = []
    for key in args.problems.split(","):
        results.append(run_problem(builders[key](), args.quick, large=key == "large"))
    payload = dict(machine=machine(), problems=results)
    path = write_json("work_precision", payload)
    plot(results, RESULTS / "work_precision.png")
    print(f"wrote {path}")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(results), 2, figsize=(13, 4.5 * len(results)), squeeze=False
    )
    for (left, right), problem in zip(axes, results):
        groups = {}
        for row in problem["rows"]:
            if not row["failed"] and row["error"] > 0:
                groups.setdefault((row["strategy"], row["solver"]), []).append(row)
        for (strategy, solver), rows in sorted(groups.items()):
            rows = sorted(rows, key=lambda r: r["wall_seconds"])
            style = (
                "--"
                if strategy.startswith("scipy")
                else (":" if strategy != "projected" else "-")
            )
            label = f"{strategy} {solver}"
            left.loglog(
                [r["wall_seconds"] for r in rows],
                [r["error"] for r in rows],
                style,
                marker="o",
                ms=3,
                label=label,
            )
            rows = sorted(rows, key=lambda r: r["vf_evals"])
            right.loglog(
                [r["vf_evals"] for r in rows],
                [r["error"] for r in rows],
                style,
                marker="o",
                ms=3,
                label=label,
            )
        left.set(
            xlabel="wall seconds (compile excluded)",
            ylabel="max transient error",
            title=problem["problem"],
        )
        right.set(
            xlabel="vector-field evaluations",
            ylabel="max transient error",
            title=problem["problem"],
        )
        right.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
