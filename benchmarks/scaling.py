"""How the cost of the two-layer flow scales with model size D = m d and data size n.

For each size, each projector (Cholesky, QR, CG, SVD) and both paths (structured:
`TwoLayerManifold`, span-reduced closed forms; generic: `ZeroLossManifold` by
autodiff, J materialised), measures

- one vector-field evaluation -P_T grad R (median of repeats of a compiled loop of
  chained evaluations, per evaluation; compile separate);
- the multiplier solve alone (J J^T lam = J grad R) with CG from zero ("cold") and
  from the multipliers at a point one small step along the flow ("warm": what a
  solver could reuse between steps; the library's CGProjector starts cold), next to
  Cholesky;
- a full `solve_flow` to |P_T grad R| <= 1e-8 (second call, compile separate) with
  Cholesky and with CG, where the estimated cost (evaluations x time per evaluation)
  fits the time cap (at most 500 steps: slower flows report where they stopped);
- the peak resident memory of the process doing one size and path, and the size of
  the dense arrays each projector forms (J: n x D, Gram: n x n).

Each (size, path) runs in its own process (peak memory, and isolation from a size
that exhausts memory or time). Then fits exponents of time ~ D^a n^b and locates the
crossover where CG beats Cholesky.

    python benchmarks/scaling.py [--quick] [--solve-cap 60] [--generic-cap 4e7]

Writes benchmarks/results/scaling.json and scaling.png (scaling_<platform>.json with
--tag).
"""

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time


HERE = pathlib.Path(__file__).parent
# D = m d from 1e3 to 1e6, with d large enough for n up to 1024 (n <= d).
SHAPES = {1e3: (8, 128), 1e4: (16, 640), 1e5: (64, 1600), 1e6: (256, 4096)}
NS = (8, 32, 128, 512, 1024)
PROJECTORS = ("cholesky", "qr", "cg", "svd")
MAX_STEPS = (
    500  # a flow slower than this reports max_steps_reached and its |P_T grad R|
)
EVALS_PER_SOLVE = 13 * MAX_STEPS  # Dopri8's 13 stages: the cost bound for the solve cap
SOLVED = ("cholesky", "cg")  # full solves: the dense default and matrix-free CG


def worker(m, d, n, path, solve_cap, dtype):
    import jax

    jax.config.update("jax_enable_x64", dtype == "float64")
    import equinox as eqx
    import jax.numpy as jnp
    import lineax as lx
    import manifoldflow as mf
    import numpy as np
    from manifoldflow.models import (
        initialise_on_manifold,
        two_layer_data,
        TwoLayerManifold,
    )

    X, y = two_layer_data(n, d, 0)
    net = initialise_on_manifold(jax.random.PRNGKey(0), X, y, m)
    if path == "structured":
        manifold = TwoLayerManifold(net, X, y)
    else:
        manifold = mf.ZeroLossManifold(net, X, y, filter_spec=net.filter_spec())
    theta = manifold.initial_point().astype(dtype)
    projectors = dict(
        cholesky=mf.CholeskyProjector(),
        qr=mf.QRProjector(),
        cg=mf.CGProjector(rtol=1e-13 if dtype == "float64" else 1e-6),
        svd=mf.SVDProjector(),
    )
    out = dict(m=m, d=d, n=n, D=m * d, path=path, dtype=dtype, rows=[])

    def timed(fn, *args, repeats=5):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        first = time.perf_counter() - start
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            runs.append(time.perf_counter() - start)
            if sum(runs) > 20:
                break
        median = float(np.median(runs))
        return median, max(0.0, first - median)

    def chained(inner):
        @eqx.filter_jit
        def run(flow, x):
            def body(_, x):
                return x + 1e-300 * flow(0.0, x, None)

            return jax.lax.fori_loop(0, inner, body, x)

        return run

    # The multiplier solve alone: Cholesky, CG cold, CG warm.
    @eqx.filter_jit
    def multipliers(manifold, theta, guess, kind):
        lin = manifold.linearise(theta)
        rhs = lin.jacobian.mv(lin.gradient)
        if kind == "cholesky":
            return mf.CholeskyProjector().solve_gram(lin, rhs), jnp.array(0)
        jac = lin.jacobian
        operator = lx.FunctionLinearOperator(
            lambda lam: jac.mv(jac.transpose().mv(lam)),
            jax.eval_shape(lambda: rhs),
            lx.positive_semidefinite_tag,
        )
        solver = lx.CG(rtol=projectors["cg"].rtol, atol=1e-15, max_steps=10 * n)
        sol = lx.linear_solve(
            operator, rhs, solver, options=dict(y0=guess), throw=False
        )
        return sol.value, sol.stats["num_steps"]

    flow = mf.SharpnessFlow(manifold)
    velocity = eqx.filter_jit(lambda f, x: f(0.0, x, None))(flow, theta)
    # A nearby point one small step (dt = 0.01) along the flow, not retracted: its
    # multipliers stand in for those a solver has from its previous step.
    near = theta + 0.01 * velocity
    zero = jnp.zeros(n, theta.dtype)
    lam_near, _ = multipliers(manifold, near, zero, "cg")
    solves = {}
    for kind, guess in (("cholesky", zero), ("cg_cold", zero), ("cg_warm", lam_near)):
        seconds, _ = timed(
            multipliers,
            manifold,
            theta,
            guess,
            "cholesky" if kind == "cholesky" else "cg",
        )
        iterations = int(multipliers(manifold, theta, guess, kind.split("_")[0])[1])
        solves[kind] = dict(seconds=seconds, iterations=iterations)
    out["multiplier_solve"] = solves

    for name, projector in projectors.items():
        row = dict(projector=name)
        flow = mf.SharpnessFlow(manifold, projector)
        single, _ = timed(
            eqx.filter_jit(lambda f, x: f(0.0, x, None)), flow, theta, repeats=1
        )
        inner = int(min(20, max(1, 0.05 / max(single, 1e-6))))
        per, compile_s = timed(chained(inner), flow, theta, repeats=5)
        row.update(
            eval_seconds=per / inner, eval_compile_seconds=compile_s, inner=inner
        )
        # The generic path materialises J (n x D); both form the n x n Gram matrix.
        row["gram_bytes"] = 8 * n * n
        row["jacobian_bytes"] = 8 * n * m * d if path == "generic" else 0
        estimate = row["eval_seconds"] * EVALS_PER_SOLVE
        if name not in SOLVED:
            row["solve"] = dict(skipped="full solves only with " + ", ".join(SOLVED))
        elif estimate > solve_cap:
            row["solve"] = dict(
                skipped=f"estimated {estimate:.0f} s > cap {solve_cap} s"
            )
        else:
            try:
                walls = []
                for _ in range(2):  # the second call is the run time (compiled)
                    start = time.perf_counter()
                    sol = mf.solve_flow(
                        manifold,
                        projector=projector,
                        stationarity=1e-8,
                        throw=False,
                        max_steps=MAX_STEPS,
                    )
                    walls.append(time.perf_counter() - start)
                    if walls[0] > 20:  # slow: one call, compile included
                        break
                row["solve"] = dict(
                    seconds=walls[-1],
                    compile_seconds=walls[0] - walls[-1] if len(walls) == 2 else None,
                    includes_compile=len(walls) == 1,
                    result=sol.result_name,
                    steps=int(sol.num_steps),
                    gradient_norm=float(sol.gradient_norm[-1]),
                )
            except Exception as error:  # noqa: BLE001 - a failure is a row
                row["solve"] = dict(failed=f"{type(error).__name__}: {error}"[:300])
        out["rows"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))


def fit(points):
    """Least-squares exponents of log t = c + a log D + b log n."""
    import numpy as np

    if len(points) < 3:
        return None
    A = np.array([[1.0, np.log(D), np.log(n)] for D, n, _ in points])
    t = np.log([s for _, _, s in points])
    coef, *_ = np.linalg.lstsq(A, t, rcond=None)
    return dict(D_exponent=float(coef[1]), n_exponent=float(coef[2]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--solve-cap", type=float, default=60.0)
    parser.add_argument(
        "--generic-cap",
        type=float,
        default=4e7,
        help="largest n D for the generic path (J has n D numbers)",
    )
    parser.add_argument("--timeout", type=float, default=400.0)
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--tag", default="", help="suffix of the output names")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument(
        "--refit", action="store_true", help="refit and redraw from the written JSON"
    )
    args = parser.parse_args()
    if args.worker:
        m, d, n, path = args.worker
        worker(int(m), int(d), int(n), path, args.solve_cap, args.dtype)
        return
    from _common import machine, RESULTS

    if args.refit:
        old = json.loads((RESULTS / f"scaling{args.tag}.json").read_text())
        finish(args, old["machine"], old["results"], old["not_run"])
        return
    shapes = dict(list(SHAPES.items())[:2]) if args.quick else SHAPES
    results, caps = [], []
    for D, (m, d) in shapes.items():
        for n in NS:
            if n > d:
                continue
            for path in ("structured", "generic"):
                key = dict(m=m, d=d, n=n, D=m * d, path=path)
                if path == "generic" and n * m * d > args.generic_cap:
                    caps.append(dict(key, skipped=f"n D = {n * m * d:.1e} > cap"))
                    continue
                command = [
                    sys.executable, __file__, "--worker", str(m), str(d), str(n), path,
                    "--solve-cap", str(args.solve_cap), "--dtype", args.dtype,
                ]  # fmt: skip
                print(f"== m={m} d={d} n={n} D={m * d} {path}", flush=True)
                try:
                    done = subprocess.run(
                        command, capture_output=True, text=True, timeout=args.timeout
                    )
                except subprocess.TimeoutExpired as timeout:
                    # Keep the rows the worker finished (one JSON line each).
                    text = timeout.stderr or b""
                    text = text.decode() if isinstance(text, bytes) else text
                    rows = [
                        json.loads(line)
                        for line in text.splitlines()
                        if line.startswith('{"projector"')
                    ]
                    caps.append(
                        dict(
                            key, skipped=f"over {args.timeout:.0f} s", partial_rows=rows
                        )
                    )
                    print(f"   timed out after {len(rows)} projectors", flush=True)
                    continue
                if done.returncode != 0:
                    caps.append(dict(key, skipped=done.stderr.strip()[-300:]))
                    print("   failed:", done.stderr.strip()[-300:], flush=True)
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                for row in result["rows"]:
                    solve = row.get("solve", {})
                    print(
                        f"   {row['projector']:<8} eval {row['eval_seconds']:.3e} s"
                        f"  solve {solve.get('seconds', float('nan')):.3g} s "
                        f"{solve.get('result', solve.get('skipped', solve.get('failed', '')))}",
                        flush=True,
                    )
                results.append(result)
    finish(args, machine(), results, caps)


def finish(args, machine_info, results, caps):
    """Fits, crossovers, JSON and figure from the measured rows."""
    from _common import RESULTS, write_json

    fits = {}
    for path in ("structured", "generic"):
        for projector in PROJECTORS:
            points = [
                (r["D"], r["n"], row["eval_seconds"])
                for r in results
                if r["path"] == path
                for row in r["rows"]
                if row["projector"] == projector
            ]
            fits[f"{path}/{projector}/eval"] = fit(points)
            points = [
                (r["D"], r["n"], row["solve"]["seconds"])
                for r in results
                if r["path"] == path
                for row in r["rows"]
                if row["projector"] == projector
                and row.get("solve", {}).get("result") == "stationary"
                and not row["solve"].get("includes_compile")
            ]
            fits[f"{path}/{projector}/solve"] = fit(points)
    crossover = []
    for r in results:
        ev = {row["projector"]: row["eval_seconds"] for row in r["rows"]}
        ms = r["multiplier_solve"]
        crossover.append(
            dict(
                path=r["path"], D=r["D"], n=r["n"],
                cg_over_cholesky_eval=ev["cg"] / ev["cholesky"],
                cg_cold_over_cholesky_solve=ms["cg_cold"]["seconds"] / ms["cholesky"]["seconds"],
                cg_warm_over_cholesky_solve=ms["cg_warm"]["seconds"] / ms["cholesky"]["seconds"],
                cg_iterations_cold=ms["cg_cold"]["iterations"],
                cg_iterations_warm=ms["cg_warm"]["iterations"],
            )
        )  # fmt: skip
    name = f"scaling{args.tag}"
    payload = dict(
        machine=machine_info, dtype=args.dtype, solve_cap_seconds=args.solve_cap,
        generic_cap_nD=args.generic_cap, results=results, not_run=caps, fits=fits,
        crossover=crossover,
    )  # fmt: skip
    path = write_json(name, payload)
    plot(results, fits, RESULTS / f"{name}.png")
    print("wrote", path)


def _solved(row):
    """The solve's run time if it reached stationarity (compile excluded), else None."""
    solve = row.get("solve", {})
    if solve.get("result") == "stationary" and not solve.get("includes_compile"):
        return solve["seconds"]
    return None


def plot(results, fits, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 9))
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3)
    for row_axes, path_name in zip(axes, ("structured", "generic")):
        mine = [r for r in results if r["path"] == path_name]
        for axis, (key, label) in zip(
            row_axes, (("eval", "one evaluation"), ("solve", "solve to 1e-8"))
        ):
            for colour, projector in enumerate(PROJECTORS):
                for marker, n in zip("o^sDv", NS):
                    pts = sorted(
                        (r["D"], row["eval_seconds"] if key == "eval" else _solved(row))
                        for r in mine
                        if r["n"] == n
                        for row in r["rows"]
                        if row["projector"] == projector
                    )  # fmt: skip
                    pts = [p for p in pts if p[1] is not None]
                    if pts:
                        axis.loglog(
                            *zip(*pts),
                            marker=marker,
                            color=f"C{colour}",
                            ms=4,
                            lw=0.8,
                            label=projector if n == NS[0] else None,
                        )
            for marker, n in zip("o^sDv", NS):
                axis.plot([], [], marker, color="k", ms=4, label=f"n={n}")
            exponents = ", ".join(
                f"{p}: D^{f['D_exponent']:.2f} n^{f['n_exponent']:.2f}"
                for p in PROJECTORS
                if (f := fits.get(f"{path_name}/{p}/{key}"))
            )
            axis.set(
                xlabel="D = m d",
                ylabel="seconds",
                title=f"{path_name}: {label}\n{exponents}",
            )
            axis.title.set_fontsize(7)
            axis.legend(fontsize=5, ncol=2)
        axis = row_axes[2]
        for n in NS:
            pts = sorted(
                (r["D"], {row["projector"]: row["eval_seconds"] for row in r["rows"]})
                for r in mine
                if r["n"] == n
            )
            if pts:
                axis.loglog(
                    [D for D, _ in pts],
                    [e["cg"] / e["cholesky"] for _, e in pts],
                    marker="o",
                    label=f"n={n}",
                )
        axis.axhline(1.0, color="k", lw=0.5)
        axis.set(
            xlabel="D = m d",
            ylabel="CG eval / Cholesky eval",
            title=f"{path_name}: CG beats dense below 1",
        )
        axis.legend(fontsize=6)
    figure.subplots_adjust(
        left=0.05, right=0.98, top=0.93, bottom=0.06, hspace=0.35, wspace=0.25
    )
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
