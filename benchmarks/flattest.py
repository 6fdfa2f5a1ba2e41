"""Time to the flattest point: the flow, the flow then polish, Riemannian gradient
descent, the Riemannian trust region, and pymanopt's TrustRegions (if installed, the
`peers` extra), on the two-layer net, a deep linear net and digits MLPs.

Each method starts from the same point of the manifold. Reported: wall time (the
first call, compile included, and the median of repeated runs), the R reached,
|P_T grad R| there (recomputed independently of the method, by the flow's
evaluation), the constraint violation, gradient evaluations and Hessian products.
Writes `results/flattest.json` and `results/flattest.png`.

    python benchmarks/flattest.py            # all problems
    python benchmarks/flattest.py --quick    # small sizes, one repeat
"""

import argparse
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)

import manifoldflow as mf
from _common import machine, RESULTS, write_json
from manifoldflow.experiments.real_data import train_to_interpolation
from manifoldflow.models import load_dataset, TwoLayerManifold
from manifoldflow.theory import gatmiry


@eqx.filter_jit
def _check(manifold, theta):
    flow = mf.SharpnessFlow(manifold)
    evaluation = flow.evaluate(theta)
    return (
        evaluation.sharpness,
        evaluation.gradient_norm,
        jnp.max(jnp.abs(manifold.constraint(theta))),
    )


@eqx.filter_jit
def _dense(manifold, theta):
    """R, its plain gradient and J by autodiff of the constraint alone (no part of
    the library's geometry: no projector, no linearisation, no multipliers)."""
    jacobian = jax.jacrev(manifold.constraint)

    def sharpness(t):
        return jnp.sum(manifold.weights * jnp.sum(jacobian(t) ** 2, axis=1))

    return sharpness(theta), jax.grad(sharpness)(theta), jacobian(theta)


def independent_check(manifold, theta):
    """The library's R and |P_T grad R| at `theta`, and the same two recomputed
    independently: R and grad R by autodiff of the constraint, the projection by
    NumPy's least squares (SVD)."""
    theta = jnp.asarray(theta)
    R, g, F = _check(manifold, theta)
    R_dense, gradient, J = (np.asarray(a) for a in _dense(manifold, theta))
    multipliers = np.linalg.lstsq(J.T, gradient, rcond=None)[0]
    return dict(
        R=float(R),
        gradient_norm=float(g),
        constraint_violation=float(F),
        R_independent=float(R_dense),
        gradient_norm_independent=float(np.linalg.norm(gradient - J.T @ multipliers)),
    )


def two_layer(m, d, n, seed=0):
    from manifoldflow.models import initialise_on_manifold, two_layer_data

    X, y = two_layer_data(n, d, seed)
    net = initialise_on_manifold(jax.random.PRNGKey(seed), X, y, m)
    manifold = TwoLayerManifold(net, X, y)
    return manifold, manifold.initial_point(), gatmiry.minimum_sharpness(manifold)


def deep_linear(d, depth, seed=0):
    """Marion and Chizat's setting: minimisers of the risk of x -> p^T W_L..W_1 x on
    noisy Gaussian data (n = 50), from a residual initialisation retracted onto
    them; reference: the trace at the flattest aligned rank-one minimiser
    (`marion_chizat.flattest_trace`)."""
    from manifoldflow.models.deep_linear import (
        deep_linear_data,
        minimiser_manifold,
        residual_init,
    )
    from manifoldflow.theory import marion_chizat

    X, y, _ = deep_linear_data(50, d, seed)
    net = residual_init(jax.random.PRNGKey(seed), depth, d, 1.0)
    manifold = minimiser_manifold(net.weights, net.p, X, y)
    retracted = mf.GaussNewtonRetraction()(
        manifold, mf.CholeskyProjector(), manifold.initial_point()
    )
    constants = marion_chizat.data_constants(X, y)
    reference = marion_chizat.flattest_trace(constants, np.asarray(net.p), depth)
    return manifold, retracted.theta, reference


def digits_mlp(width, n, seed=0, matrix_free=False):
    data = load_dataset("digits", n, 1, seed)
    model = eqx.nn.MLP(
        64,
        "scalar",
        width,
        1,
        activation=jnp.tanh,
        use_bias=False,
        use_final_bias=False,
        key=jax.random.PRNGKey(seed),
    )
    trained, _, loss, _ = train_to_interpolation(
        model, data.X_train, data.y_train, learning_rate=1e-2, max_steps=20_000
    )
    manifold = mf.ZeroLossManifold(
        trained, data.X_train, data.y_train, matrix_free=matrix_free
    )
    retracted = mf.GaussNewtonRetraction()(
        manifold, mf.CholeskyProjector(), manifold.initial_point()
    )
    assert bool(retracted.converged), loss
    return manifold, retracted.theta, None


def run_flow(manifold, theta0, t1, stationarity):
    start = time.perf_counter()
    solution = mf.solve_flow(
        manifold, theta0, t1=t1, stationarity=stationarity, throw=False
    )
    seconds = time.perf_counter() - start
    return (
        solution.ys[-1],
        seconds,
        dict(
            steps=int(solution.num_steps),
            gradient_evaluations=int(solution.num_steps) * 13,  # Dopri8: 13 stages
            hessian_products=0,
            result=solution.result_name,
        ),
    )


def run_minimise(manifold, theta0, solver, tolerance, max_steps):
    start = time.perf_counter()
    solution = mf.minimise_sharpness(
        manifold,
        theta0,
        solver=solver,
        gradient_tolerance=tolerance,
        max_steps=max_steps,
        verdict=False,
        throw=False,
    )
    seconds = time.perf_counter() - start
    accepted = int(np.sum(solution.records.accepted[1:]))
    return (
        solution.theta,
        seconds,
        dict(
            steps=int(solution.num_steps),
            accepted=accepted,
            gradient_evaluations=int(solution.num_steps) + 1,
            hessian_products=solution.hessian_products,
            result=solution.result_name,
        ),
    )


def measure(name, fn, manifold, repeats):
    """First call (compile included), then the median of `repeats` more."""
    theta, first, info = fn()
    runs = [fn()[1] for _ in range(repeats)]
    row = dict(
        method=name,
        first_seconds=first,
        median_seconds=float(np.median(runs)) if runs else first,
        **info,
        **independent_check(manifold, theta),
    )
    print(
        f"  {name:>18}: R={row['R']:.10g} |grad|={row['gradient_norm']:.2e} "
        f"(independent {row['gradient_norm_independent']:.2e}) "
        f"|F|={row['constraint_violation']:.1e} steps={row['steps']} "
        f"Hv={row['hessian_products']} first={first:.2f}s "
        f"median={row['median_seconds']:.2f}s "
        f"({row['result']})",
        flush=True,
    )
    return row


def problem_rows(
    label,
    manifold,
    theta0,
    R_star,
    *,
    t1,
    tolerance,
    polish_t1,
    max_steps,
    repeats,
    peers,
):
    print(f"{label}: D={manifold.dimension} n={manifold.num_constraints}", flush=True)
    rows = [
        measure(
            "flow",
            lambda: run_flow(manifold, theta0, t1, tolerance),
            manifold,
            repeats,
        ),
        measure(
            "flow+polish",
            lambda: _flow_then_polish(
                manifold, theta0, polish_t1, tolerance, max_steps
            ),
            manifold,
            repeats,
        ),
        measure(
            "RGD",
            lambda: run_minimise(
                manifold, theta0, mf.RiemannianGradientDescent(), tolerance, max_steps
            ),
            manifold,
            repeats,
        ),
        measure(
            "RTR",
            lambda: run_minimise(
                manifold, theta0, mf.RiemannianTrustRegion(), tolerance, max_steps
            ),
            manifold,
            repeats,
        ),
        # Like pymanopt's: no Lanczos check of the curvature before stopping.
        measure(
            "RTR, no saddle check",
            lambda: run_minimise(
                manifold,
                theta0,
                mf.RiemannianTrustRegion(curvature_iterations=0),
                tolerance,
                max_steps,
            ),
            manifold,
            repeats,
        ),
    ]
    if peers:
        try:
            from _pymanopt_peer import run_pymanopt
        except ImportError as error:
            print(f"  pymanopt: not installed ({error})")
        else:
            rows.append(
                measure(
                    "pymanopt RTR",
                    lambda: run_pymanopt(manifold, theta0, tolerance, max_steps),
                    manifold,
                    repeats,
                )
            )
    return dict(
        problem=label,
        D=manifold.dimension,
        n=manifold.num_constraints,
        R_star=R_star,
        t1=t1,
        tolerance=tolerance,
        rows=rows,
    )


def _flow_then_polish(manifold, theta0, t1, tolerance, max_steps):
    start = time.perf_counter()
    early = mf.solve_flow(manifold, theta0, t1=t1, stationarity=tolerance, throw=False)
    theta, _, info = run_minimise(
        manifold, early.ys[-1], mf.RiemannianTrustRegion(), tolerance, max_steps
    )
    info = dict(
        info,
        steps=int(early.num_steps) + info["steps"],
        gradient_evaluations=int(early.num_steps) * 13 + info["gradient_evaluations"],
    )
    return theta, time.perf_counter() - start, info


def plot(payload, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = payload["problems"]
    figure, axes = plt.subplots(1, len(problems), figsize=(4.2 * len(problems), 4))
    axes = np.atleast_1d(axes)
    for axis, problem in zip(axes, problems):
        rows = problem["rows"]
        names = [r["method"] for r in rows]
        times = [r["median_seconds"] for r in rows]
        bars = axis.bar(names, times, color="tab:blue")
        axis.set_yscale("log")
        for bar, row in zip(bars, rows):
            axis.annotate(
                f"R={row['R']:.6g}\n|g|={row['gradient_norm']:.0e}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        axis.set_title(
            f"{problem['problem']} (D={problem['D']}, n={problem['n']})", fontsize=9
        )
        axis.set_ylabel("median wall time (s)")
        axis.tick_params(axis="x", labelrotation=30, labelsize=8)
        axis.margins(y=0.3)
    figure.suptitle("time to the flattest point reached (lower is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--problems", default="two-layer,deep-linear,digits,digits-wide"
    )
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument(
        "--name", default=None, help="results/NAME.json and .png (default flattest)"
    )
    args = parser.parse_args()
    repeats = args.repeats if args.repeats is not None else (0 if args.quick else 2)
    wanted = args.problems.split(",")
    problems = []
    if "two-layer" in wanted:
        m, d, n = (8, 16, 6) if args.quick else (64, 256, 64)
        manifold, theta0, R_star = two_layer(m, d, n)
        problems.append(
            problem_rows(
                f"two-layer m={m} d={d}",
                manifold,
                theta0,
                R_star,
                t1=math.inf,
                tolerance=1e-10,
                polish_t1=1.0,
                max_steps=1000,
                repeats=repeats,
                peers=not args.no_peers,
            )
        )
    if "deep-linear" in wanted:
        d, depth = (4, 2) if args.quick else (10, 4)
        manifold, theta0, reference = deep_linear(d, depth)
        problems.append(
            problem_rows(
                f"deep linear d={d} L={depth}",
                manifold,
                theta0,
                reference,
                t1=math.inf,
                tolerance=1e-10,
                polish_t1=1.0,
                max_steps=1000,
                repeats=repeats,
                peers=not args.no_peers,
            )
        )
    for key, width in (("digits", 16), ("digits-wide", 160)):
        if key not in wanted or (args.quick and key == "digits-wide"):
            continue  # --quick: one small digits MLP
        n = 32 if args.quick else 64
        width = 8 if args.quick else width
        manifold, theta0, _ = digits_mlp(width, n)
        t1 = 10.0 if args.quick else 1000.0
        problems.append(
            problem_rows(
                f"digits MLP 64-{width}-1 tanh",
                manifold,
                theta0,
                None,
                t1=t1,
                tolerance=1e-8,
                polish_t1=10.0,
                max_steps=500,
                repeats=repeats,
                peers=not args.no_peers,
            )
        )
    payload = dict(machine=machine(), quick=args.quick, problems=problems)
    name = args.name or ("flattest_quick" if args.quick else "flattest")
    print(write_json(name, payload))
    plot(payload, RESULTS / f"{name}.png")


if __name__ == "__main__":
    main()
