"""Time to reach a distance eps from the Theorem 3.3 optimum (Gatmiry et al.): solving
the limiting flow vs simulating label-noise GD, eps = 1e-2, 1e-4, 1e-6, 1e-8.

Problems: the `manifoldflow sgd-vs-flow` default (two-layer net, m=4, d=6, n=3, seed
0), theta0 on the zero-loss manifold, label-noise GD with sigma = 1, so the flow
constant is c = sigma^2/(2n) against the default R (flow time = eta^2 k):

- `theorem-3.3`: second-layer weights a = 1; theta* is the closed-form optimum of
  Theorem 3.3 (every neuron the same). Label noise moves all neurons alike, so it
  never excites the differences between neurons: a retracted SGD iterate can reach
  theta* exactly.
- `unequal-a`: a = (1, 0.7, 1.3, 1.1), the same data and start; no closed form, so
  theta* is the flow's own stationary point at |P_T grad R| <= 1e-13. The generic
  case: SGD's tangential fluctuations leave a floor.

- Flow: `solve_flow(constant=c)` to |P_T grad R| <= 1e-10 with every step kept gives
  the first step time t(eps) at which |theta - theta*| <= eps; the figure is the wall
  time of `solve_flow(constant=c, t1=t(eps))`, in-process, compilation excluded
  (median of `--repeats`); the first call's time (compilation included) beside it.
- SGD: for each eta of a halving sequence, `--seeds` seeds (vmapped) for
  min(tau_max/eta^2, what `--budget` seconds allow) steps, recorded about 4000 times;
  compilation excluded (a warm-up chunk first). At each record the distance of the
  iterate to theta* is taken raw and after a Gauss-Newton retraction onto the
  manifold (the iterate's O(sqrt eta) offset is almost all normal to it). eps counts
  as reached at the first record where the median over seeds is <= eps (a typical
  run is there); its time is that step count times the measured cost per step of the
  seed batch. For each eps, the largest eta that reaches it is reported.

    python benchmarks/flow_vs_sgd.py [--budget 60] [--quick]

Writes benchmarks/results/flow_vs_sgd.json and .png.
"""

import argparse
import math
import pathlib
import time

import jax


jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
from manifoldflow.models import TwoLayerManifold
from manifoldflow.sgd import LabelNoiseGD, simulate
from manifoldflow.theory import gatmiry


HERE = pathlib.Path(__file__).parent
from _common import machine, RESULTS, write_json


EPSILONS = (1e-2, 1e-4, 1e-6, 1e-8)
RECORDS = 4000


def flow_times(manifold, u_star, c, repeats):
    start = time.perf_counter()
    full = mf.solve_flow(manifold, constant=c)
    first_call = time.perf_counter() - start
    distances = np.linalg.norm(full.ys - u_star, axis=1)
    rows = []
    for eps in EPSILONS:
        hit = np.flatnonzero(distances <= eps)
        if hit.size == 0:
            rows.append(dict(eps=eps, reached=False))
            continue
        t_eps = float(full.step_ts[hit[0]])
        walls = []
        for _ in range(repeats):
            start = time.perf_counter()
            solution = mf.solve_flow(manifold, constant=c, t1=t_eps)
            jax.block_until_ready(solution.theta_final)
            walls.append(time.perf_counter() - start)
        rows.append(
            dict(
                eps=eps,
                reached=True,
                tau=t_eps,
                steps=int(solution.num_steps),
                distance=float(np.linalg.norm(solution.ys[-1] - u_star)),
                wall_seconds=float(np.median(walls)),
            )
        )
    return dict(
        rows=rows,
        first_call_seconds=first_call,
        stationary_tau=float(full.t_final),
        stationary_steps=int(full.num_steps),
        final_distance=float(distances[-1]),
        step_ts=full.step_ts.tolist(),
        distances=distances.tolist(),
    )


def sgd_run(manifold, u0, u_star, simulator, eta, args, retract):
    seeds = args.seeds
    # Per-step cost from a warm-up (which also compiles the chunk for this shape).
    probe = 20_000
    every = max(1, probe // 64)
    simulate(
        manifold,
        u0,
        simulator,
        eta=eta,
        num_steps=probe,
        seeds=seeds,
        record_every=every,
    )
    timed = simulate(
        manifold,
        u0,
        simulator,
        eta=eta,
        num_steps=probe,
        seeds=seeds,
        record_every=every,
    )
    per_step = timed.wall_seconds / probe
    wanted = math.ceil(args.tau_max / eta**2)
    steps = int(min(wanted, args.budget / per_step))
    every = max(1, steps // RECORDS)
    steps = every * (steps // every)
    # Compile the chunk of this record spacing first: the run below is then timed warm.
    simulate(
        manifold,
        u0,
        simulator,
        eta=eta,
        num_steps=every * 64,
        seeds=seeds,
        record_every=every,
    )
    result = simulate(
        manifold,
        u0,
        simulator,
        eta=eta,
        num_steps=steps,
        seeds=seeds,
        record_every=every,
    )
    per_step = result.wall_seconds / steps
    thetas = result.thetas
    raw = np.linalg.norm(thetas - u_star, axis=2)
    flat = jnp.asarray(np.nan_to_num(thetas.reshape(-1, thetas.shape[-1])))
    on = np.asarray(retract(flat)).reshape(thetas.shape)
    retracted = np.where(np.isfinite(raw), np.linalg.norm(on - u_star, axis=2), np.nan)
    median_raw = np.median(raw, axis=0)
    median_retracted = np.median(retracted, axis=0)
    rows = []
    for eps in EPSILONS:
        row = dict(eps=eps)
        for name, median in (("raw", median_raw), ("retracted", median_retracted)):
            hit = np.flatnonzero(median <= eps)
            if hit.size:
                k = int(result.steps[hit[0]])
                row[name] = dict(
                    reached=True, steps=k, tau=eta**2 * k, wall_seconds=k * per_step
                )
            else:
                row[name] = dict(reached=False)
        rows.append(row)
    tail = slice(len(result.steps) * 3 // 4, None)
    return dict(
        eta=eta,
        steps=steps,
        tau=eta**2 * steps,
        budget_limited=steps < wanted,
        seeds=seeds,
        seconds_per_step=per_step,
        wall_seconds=result.wall_seconds,
        diverged=int(result.diverged.sum()),
        rows=rows,
        final_quarter_median_raw=float(np.nanmedian(median_raw[tail])),
        final_quarter_median_retracted=float(np.nanmedian(median_retracted[tail])),
        record_tau=result.tau.tolist(),
        median_raw=median_raw.tolist(),
        median_retracted=median_retracted.tolist(),
    )


def best_sgd(runs, eps, which):
    """The largest eta that reaches eps, with its time."""
    for run in runs:  # etas in decreasing order
        row = next(r for r in run["rows"] if r["eps"] == eps)[which]
        if row["reached"]:
            return dict(eta=run["eta"], **row)
    return dict(reached=False)


PROBLEMS = {"theorem-3.3": None, "unequal-a": (1.0, 0.7, 1.3, 1.1)}


def build(a):
    from manifoldflow.models import initialise_on_manifold, two_layer_data

    X, y = two_layer_data(3, 6, 0)
    a = None if a is None else jnp.asarray(a)
    net = initialise_on_manifold(jax.random.PRNGKey(0), X, y, 4, a=a)
    manifold = TwoLayerManifold(net, X, y)
    u_star = gatmiry.optimum_point(manifold)
    if u_star is None:
        reference = mf.solve_flow(manifold, stationarity=1e-13)
        u_star = np.asarray(reference.theta_final)
    return manifold, u_star


def show(entry):
    if not entry["reached"]:
        return "not reached within the budget"
    eta = f" at eta={entry['eta']:g}" if "eta" in entry else ""
    return f"{entry['wall_seconds']:.3g} s{eta} (tau {entry['tau']:.3g})"


def run_problem(name, a, etas, args):
    manifold, u_star = build(a)
    u0 = manifold.initial_point()
    simulator = LabelNoiseGD(sigma=args.sigma)
    c = simulator.flow_constant(manifold)
    retract = jax.jit(
        jax.vmap(
            lambda t: (
                mf.GaussNewtonRetraction()(manifold, mf.CholeskyProjector(), t).theta
            )
        )
    )
    print(f"== {name}: flow constant c = {c:.6g}", flush=True)
    flow = flow_times(manifold, u_star, c, args.repeats)
    runs = []
    for eta in etas:
        run = sgd_run(manifold, u0, u_star, simulator, eta, args, retract)
        runs.append(run)
        print(
            f"eta={eta:g}: {run['steps']} steps ({run['tau']:.3g} in tau), "
            f"{run['seconds_per_step'] * 1e6:.2f} us/step for {args.seeds} seeds, "
            f"final-quarter median distance raw {run['final_quarter_median_raw']:.2e}"
            f", retracted {run['final_quarter_median_retracted']:.2e}",
            flush=True,
        )
    table = []
    for eps in EPSILONS:
        table.append(
            dict(
                eps=eps,
                flow=next(r for r in flow["rows"] if r["eps"] == eps),
                sgd_raw=best_sgd(runs, eps, "raw"),
                sgd_retracted=best_sgd(runs, eps, "retracted"),
            )
        )
    print(f"flow first call in this process {flow['first_call_seconds']:.2f} s")
    for row in table:
        print(
            f"eps={row['eps']:.0e}: flow {show(row['flow'])}; SGD raw "
            f"{show(row['sgd_raw'])}; SGD retracted {show(row['sgd_retracted'])}"
        )
    return dict(
        problem=dict(
            name=name,
            model="two-layer",
            m=4,
            d=6,
            n=3,
            seed=0,
            a=None if a is None else list(a),
            reference="Theorem 3.3 closed form"
            if a is None
            else "the flow's stationary point at |P_T grad R| <= 1e-13",
            sigma=args.sigma,
            simulator="label-noise GD (full batch, Gaussian)",
            flow_constant=c,
        ),
        table=table,
        flow=flow,
        sgd=runs,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--budget", type=float, default=60.0, help="seconds of SGD steps per eta"
    )
    parser.add_argument("--etas", default="0.08,0.04,0.02,0.01,0.005,0.0025,0.00125")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--tau-max", type=float, default=200.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="budget 2 s, 3 etas")
    args = parser.parse_args()
    etas = sorted((float(e) for e in args.etas.split(",")), reverse=True)
    if args.quick:
        args.budget, etas, args.repeats = 2.0, etas[:3], 2
    problems = [run_problem(name, a, etas, args) for name, a in PROBLEMS.items()]
    payload = dict(
        machine=machine(),
        settings=dict(
            budget_seconds=args.budget,
            seeds=args.seeds,
            etas=etas,
            tau_max=args.tau_max,
            repeats=args.repeats,
            records=RECORDS,
        ),
        problems=problems,
    )
    path = write_json("flow_vs_sgd", payload)
    plot(problems, RESULTS / "flow_vs_sgd.png")
    print(f"wrote {path}")


def plot(problems, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for (left, right), problem in zip(axes, problems):
        flow, runs, table = problem["flow"], problem["sgd"], problem["table"]
        name = problem["problem"]["name"]
        left.semilogy(flow["step_ts"], flow["distances"], "k-", lw=2, label="flow")
        for run in runs:
            (line,) = left.semilogy(
                run["record_tau"],
                run["median_retracted"],
                lw=0.8,
                label=f"SGD eta={run['eta']:g}",
            )
            left.semilogy(
                run["record_tau"],
                run["median_raw"],
                lw=0.6,
                ls=":",
                color=line.get_color(),
            )
        left.set(
            xlabel="tau (flow time = eta^2 k)",
            ylabel="|theta - theta*|",
            title=f"{name}: distance to theta* (SGD: median of seeds, "
            "solid retracted, dotted raw)",
        )
        left.title.set_fontsize(9)
        left.set_xlim(0, max(run["tau"] for run in runs))
        left.legend(fontsize=7)
        eps = [row["eps"] for row in table]
        for key, label, marker in (
            ("flow", "flow", "o-"),
            ("sgd_retracted", "SGD, retracted (largest eta reaching eps)", "s--"),
            ("sgd_raw", "SGD, raw (largest eta reaching eps)", "^:"),
        ):
            xs = [e for e, row in zip(eps, table) if row[key]["reached"]]
            ys = [row[key]["wall_seconds"] for row in table if row[key]["reached"]]
            right.loglog(xs, ys, marker, label=label)
        right.set_xlim(3e-2, 3e-9)
        right.set(
            xlabel="eps",
            ylabel="wall seconds to eps (compile excluded)",
            title=f"{name}: time to eps; no point: not reached within the budget",
        )
        right.title.set_fontsize(9)
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
