"""`manifoldflow <experiment>`: solve a flow, check the theory, write the results."""

import time


_PROCESS_START = time.perf_counter()

import argparse
import json
import math
import os
import pathlib
import sys


_SOLVERS = {
    "dopri8": "Dopri8",
    "dopri5": "Dopri5",
    "tsit5": "Tsit5",
    "bosh3": "Bosh3",
    "heun": "Heun",
    "kvaerno5": "Kvaerno5",
    "kvaerno3": "Kvaerno3",
}
_PROJECTORS = {
    "cholesky": "CholeskyProjector",
    "qr": "QRProjector",
    "cg": "CGProjector",
    "svd": "SVDProjector",
}


def _seconds_since_process_start() -> float:
    """Wall time since the interpreter started (Linux), else since this module loaded."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _PROCESS_START


def _cache_dir() -> pathlib.Path:
    if "MANIFOLDFLOW_CACHE_DIR" in os.environ:
        return pathlib.Path(os.environ["MANIFOLDFLOW_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "manifoldflow" / "jax"


def _configure_jax(cache: bool) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    if cache:
        path = _cache_dir()
        path.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="manifoldflow",
        description="Solve the Riemannian sharpness flow on a zero-loss manifold to "
        "high precision and check the theory's predictions.",
    )
    sub = parser.add_subparsers(dest="experiment", required=True)
    p = sub.add_parser(
        "two-layer",
        help="two-layer net f(x) = sum_j a_j phi(theta_j^T x) (Gatmiry et al. 2024)",
        description="Solve d theta/dt = -P_T grad Tr Hess L for the two-layer net of "
        "Gatmiry et al. (2024) from a random point of the zero-loss manifold until "
        "|P_T grad R| <= EPS, then check Theorem 3.3 / Lemma 4.6 / Theorem 3.5.",
    )
    p.add_argument("--m", type=int, default=32, help="neurons (default 32)")
    p.add_argument("--d", type=int, default=64, help="input dimension (default 64)")
    p.add_argument("--n", type=int, default=16, help="data points (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data", type=pathlib.Path, help=".npz with arrays X (n, d), y (n,)"
    )
    p.add_argument(
        "--a",
        type=str,
        default=None,
        help="fixed second-layer weights: one value, or m comma-separated",
    )
    p.add_argument(
        "--activation",
        default="cubic-linear",
        choices=["cubic-linear", "cube", "cube-beta"],
    )
    p.add_argument("--beta", type=float, default=1.0, help="beta of cube-beta")
    p.add_argument(
        "--init-scale",
        type=float,
        default=1.0,
        help="spread of the random initial point (0: start at the optimum)",
    )
    p.add_argument("--t1", type=float, default=math.inf, help="end time (default inf)")
    p.add_argument("--stationarity", type=float, default=1e-10, metavar="EPS")
    p.add_argument("--solver", default="dopri8", choices=sorted(_SOLVERS))
    p.add_argument("--rtol", type=float, default=1e-10)
    p.add_argument("--atol", type=float, default=1e-12)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--projector", default="cholesky", choices=sorted(_PROJECTORS))
    p.add_argument("--path", default="structured", choices=["structured", "generic"])
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("manifoldflow-out"))
    p.add_argument("--json", action="store_true", help="print summary.json to stdout")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="do not use the persistent compilation cache "
        "(default location ~/.cache/manifoldflow/jax, or "
        "$MANIFOLDFLOW_CACHE_DIR)",
    )
    return parser


def _load_data(args):
    import numpy as np

    if args.data is not None:
        with np.load(args.data) as f:
            if "X" not in f or "y" not in f:
                raise SystemExit(
                    f"{args.data} must contain arrays named X and y; "
                    f"found {sorted(f.files)}."
                )
            X, y = np.asarray(f["X"], float), np.asarray(f["y"], float)
        if X.ndim != 2:
            raise SystemExit(f"X in {args.data} must have shape (n, d), got {X.shape}.")
        return X, y
    if args.n < 1 or args.d < 1 or args.m < 1:
        raise SystemExit(
            f"--m, --d, --n must be positive (got {args.m}, {args.d}, {args.n})."
        )
    if args.n > args.d:
        raise SystemExit(
            f"--n {args.n} > --d {args.d}: the data points cannot be linearly "
            "independent (Assumption 3.2 needs n <= d)."
        )
    rng = np.random.default_rng(args.seed)
    X = rng.standard_normal((args.n, args.d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = rng.choice([-1.0, 1.0], args.n) * rng.uniform(0.5, 1.5, args.n)
    return X, y


def _second_layer(args, m):
    import numpy as np

    if args.a is None:
        return np.ones(m)
    values = np.asarray([float(v) for v in args.a.split(",")])
    if values.size == 1:
        return np.full(m, values[0])
    if values.size != m:
        raise SystemExit(
            f"--a has {values.size} values but --m is {m}: give one "
            "value or m comma-separated values."
        )
    return values


def _plot(path, step_ts, gradient_norm, sharpness, R_star, feature_ts, singular_values):
    # The object-oriented API without pyplot, and no mathtext: each saves a second or
    # more of start-up in a command that otherwise runs for a few seconds.
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    axes[0].semilogy(step_ts, gradient_norm, ".-")
    axes[0].set(xlabel="t", ylabel="|P_T grad R|", title="stationarity")
    if R_star is not None:
        gap = np.maximum(sharpness - R_star, np.finfo(float).tiny)
        axes[1].semilogy(step_ts, gap, ".-")
        axes[1].set(ylabel="R - R*", title="sharpness gap")
    else:
        axes[1].plot(step_ts, sharpness, ".-")
        axes[1].set(ylabel="R", title="sharpness (no closed-form R*)")
    axes[1].set_xlabel("t")
    top = singular_values[:, :8]
    axes[2].semilogy(feature_ts, np.maximum(top, 1e-300), ".-")
    axes[2].set(
        xlabel="t",
        ylabel="singular values of Theta X^T",
        title=f"feature-matrix singular values (top {top.shape[1]})",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def two_layer(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import manifoldflow as mf
    from manifoldflow.models import (
        activation_from_name,
        initialise_on_manifold,
        TwoLayerManifold,
        TwoLayerNet,
    )
    from manifoldflow.theory import gatmiry

    X, y = _load_data(args)
    n, d = X.shape
    m = args.m
    a = _second_layer(args, m)
    activation = activation_from_name(args.activation, args.beta)
    key = jax.random.PRNGKey(args.seed)
    if np.all(a > 0):
        net = initialise_on_manifold(
            key, X, y, m, a=a, activation=activation, init_scale=args.init_scale
        )
    else:
        theta = args.init_scale * jax.random.normal(key, (m, d)) / np.sqrt(d)
        net = TwoLayerNet(theta, a, activation)
    structured = TwoLayerManifold(net, X, y)
    if args.path == "structured":
        manifold = structured
    else:
        manifold = mf.ZeroLossManifold(net, X, y, filter_spec=net.filter_spec())
    import diffrax

    solver = getattr(diffrax, _SOLVERS[args.solver])()
    projector = getattr(mf, _PROJECTORS[args.projector])()
    retraction = mf.ChordRetraction()
    if args.activation == "cube":
        Z0 = np.asarray(net.theta) @ X.T
        if np.min(np.abs(Z0)) < 1e-8:
            raise SystemExit(
                "cube activation: the initial point has theta_j^T x_i = 0,"
                " where phi'(0) = 0 makes the Jacobian singular."
            )
    solution = mf.solve_flow(
        manifold,
        solver=solver,
        projector=projector,
        retraction=retraction,
        t1=args.t1,
        rtol=args.rtol,
        atol=args.atol,
        stationarity=args.stationarity,
        max_steps=args.max_steps,
        progress=not args.no_progress,
        throw=False,
    )

    def reduced(theta):
        if args.path == "structured":
            return jnp.asarray(theta)
        return structured.coordinates(jnp.asarray(theta).reshape(m, d))

    def full(theta):
        return np.asarray(manifold.to_parameters(jnp.asarray(theta)).theta)

    tol = max(retraction.atol, retraction.rtol * float(manifold.constraint_scale()))
    report = gatmiry.two_layer_checks(structured, solution, constraint_tolerance=tol)
    figures = report.figures
    passed = solution.stationary and report.passed
    stride = max(1, len(solution.ts) // 400)
    idx = np.unique(np.r_[np.arange(0, len(solution.ts), stride), len(solution.ts) - 1])
    features = np.stack(
        [np.asarray(structured.features(reduced(solution.ys[i]))) for i in idx]
    )
    singular_values = np.linalg.svd(features, compute_uv=False)
    theta0_full, theta_final_full = full(solution.ys[0]), full(solution.theta_final)
    summary = dict(
        experiment="two-layer",
        m=m,
        d=d,
        n=n,
        activation=args.activation,
        beta=args.beta if args.activation == "cube-beta" else None,
        a=a.tolist(),
        seed=args.seed,
        path=args.path,
        solver=args.solver,
        projector=args.projector,
        rtol=args.rtol,
        atol=args.atol,
        stationarity=args.stationarity,
        loss="mean squared: L = (1/n) sum_i (f_i - y_i)^2",
        flow_constant=1.0,
        result=solution.result_name,
        t_final=solution.t_final,
        num_steps=solution.num_steps,
        num_rejected_steps=solution.num_rejected_steps,
        solve_seconds=solution.wall_seconds,
        R_initial=float(solution.sharpness[0]),
        R_final=figures["R_final"],
        R_star=figures["R_star"],
        grad_norm_final=float(solution.gradient_norm[-1]),
        constraint_violation_max=float(np.max(solution.constraint_violation)),
        optimum_distance=figures["optimum_distance"],
        lemma_4_6_bound=figures["lemma_4_6_bound"],
        rank_one_ratio=figures["rank_one_ratio"],
        phi2_image_spread=figures["phi2_image_spread"],
        linear_rate=figures["linear_rate"],
        linear_rate_predicted=figures["linear_rate_predicted"],
        lambda_min_data_gram=figures["lambda_min_data_gram"],
        checks=[c.to_dict() for c in report.checks],
        checks_passed=bool(passed),
        X=X.tolist(),
        y=y.tolist(),
        theta0=theta0_full.tolist(),
        theta_final=theta_final_full.tolist(),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out / "trajectory.npz",
        step_ts=solution.step_ts,
        sharpness=solution.sharpness,
        gradient_norm=solution.gradient_norm,
        constraint_violation=solution.constraint_violation,
        feature_ts=solution.ts[idx],
        feature_singular_values=singular_values,
        features=features,
        X=X,
        y=y,
        a=a,
        theta0=theta0_full,
        theta_final=theta_final_full,
    )
    _plot(
        args.out / "convergence.png",
        solution.step_ts,
        solution.gradient_norm,
        solution.sharpness,
        figures["R_star"],
        solution.ts[idx],
        singular_values,
    )
    summary["wall_seconds"] = _seconds_since_process_start()
    # Compact: the C encoder is ~10x faster than the indenting one on the m x d arrays.
    text = json.dumps(summary)
    (args.out / "summary.json").write_text(text)
    stream = sys.stderr if args.json else sys.stdout
    print(
        f"two-layer: m={m} d={d} n={n} activation={args.activation} path={args.path} "
        f"solver={args.solver}\n{solution.message}: t={solution.t_final:.6g}, "
        f"{solution.num_steps} steps ({solution.num_rejected_steps} rejected), "
        f"solve {solution.wall_seconds:.2f} s, process {summary['wall_seconds']:.2f} s\n"
        f"R: {summary['R_initial']:.12g} -> {summary['R_final']:.12g}"
        + (f" (R* = {summary['R_star']:.12g})" if summary["R_star"] is not None else "")
        + f"\n\n{report.table()}\n\n"
        f"{'ALL CHECKS PASSED' if passed else 'SOME CHECKS FAILED'}; wrote "
        f"{args.out}/summary.json, trajectory.npz, convergence.png",
        file=stream,
    )
    if args.json:
        print(text)
    if solution.result == mf.RESULTS.interrupted:
        return 130
    return 0 if passed else 1


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    _configure_jax(cache=not args.no_cache)
    if args.experiment == "two-layer":
        return two_layer(args)
    raise AssertionError(args.experiment)


if __name__ == "__main__":
    sys.exit(main())
