"""Many flows at once: `solve_flows` (one batched, sharded program) against the same
flows solved one after another in one process; its scaling over forced CPU devices;
and the peak memory of a large batch.

1. `--batch` two-layer flows (m, d, n = 8, 16, 8) from random starts (the command's
   initial point plus Gaussian noise of `--spread`, retracted onto the manifold),
   each to |P_T grad R| <= 1e-12: `solve_flows` (first call with compilation, then
   the median of `--repeats`) against `solve_flow` per start and the jitted
   `flow_solve` per start (compilation excluded). Every member must end with its
   separate solve's result, within 2 eps / r of its end point (r: the linear rate of
   Theorem 3.5), before any time is reported.
2. The same batch in a fresh process for 1, 2 and 4 devices forced with
   `XLA_FLAGS=--xla_force_host_platform_device_count=K` (this machine: 2 cores).
3. Peak RSS of a fresh process that solves 1024 flows at m, d, n = 32, 128, 32 (at
   most `--memory-steps` attempts each): the records stay bounded.

    python benchmarks/many_flows.py [--batch 1024]

Writes benchmarks/results/many_flows.json and .png.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import jax


jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
from _common import machine, median_seconds, RESULTS, two_layer_data, write_json
from manifoldflow.models import TwoLayerManifold
from manifoldflow.theory import gatmiry


EPS = 1e-12


def problem(m, d, n, batch, spread, seed=1):
    X, y, net = two_layer_data(m, d, n, seed=0)
    manifold = TwoLayerManifold(net, X, y)
    u0 = manifold.initial_point()
    noise = jax.random.normal(jax.random.PRNGKey(seed), (batch, u0.size))
    return manifold, np.asarray(u0 + spread * noise)


def child(args):
    """One measurement in this (fresh) process; prints a JSON line."""
    if args.child == "devices":
        manifold, starts = problem(8, 16, 8, args.batch, args.spread)
        start = time.perf_counter()
        mf.solve_flows(manifold, starts, stationarity=EPS)
        first = time.perf_counter() - start
        runs = median_seconds(
            lambda: mf.solve_flows(manifold, starts, stationarity=EPS).theta_final, 3
        )
        print(json.dumps(dict(devices=len(jax.devices()), first_s=first, run_s=runs)))
    else:
        manifold, starts = problem(32, 128, 32, 1024, args.spread)
        start = time.perf_counter()
        solutions = mf.solve_flows(manifold, starts, max_steps=args.memory_steps)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(
            json.dumps(
                dict(
                    D=manifold.dimension,
                    batch=len(solutions),
                    seconds=time.perf_counter() - start,
                    peak_rss_gib=peak,
                    steps_median=float(np.median(solutions.num_steps)),
                    results=solutions.counts(),
                    kept_states_max=int(max(s.ys.shape[0] for s in solutions)),
                )
            )
        )


def fresh(args, kind, devices=1):
    env = dict(
        os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"
    )
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--batch", str(args.batch)]
        + ["--memory-steps", str(args.memory_steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--spread", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-steps", type=int, default=400)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        return child(args)

    manifold, starts = problem(8, 16, 8, args.batch, args.spread)
    start = time.perf_counter()
    batch = mf.solve_flows(manifold, starts, stationarity=EPS)
    batched_first = time.perf_counter() - start
    batched = median_seconds(
        lambda: mf.solve_flows(manifold, starts, stationarity=EPS).theta_final,
        args.repeats,
    )

    # One after another, as a careful researcher would: solve_flow per start, and the
    # jitted pure solve per start (compiled once, before the clock).
    mf.solve_flow(manifold, starts[0], stationarity=EPS)
    start = time.perf_counter()
    singles = [mf.solve_flow(manifold, s, stationarity=EPS) for s in starts]
    one_by_one = time.perf_counter() - start
    single = jax.jit(lambda theta: mf.flow_solve(manifold, theta, stationarity=EPS))
    jax.block_until_ready(single(jnp.asarray(starts[0])))
    start = time.perf_counter()
    for s in starts:
        jax.block_until_ready(single(jnp.asarray(s)).theta_final)
    one_by_one_jit = time.perf_counter() - start

    rate = gatmiry.asymptotic_rate(manifold, 1.0)
    bound = 2 * EPS / rate
    difference = max(
        float(np.max(np.abs(b.theta_final - s.theta_final)))
        for b, s in zip(batch, singles)
    )
    same_result = all(b.result_name == s.result_name for b, s in zip(batch, singles))
    assert same_result, "a member ended differently from its separate solve"
    assert difference <= bound, (difference, bound)

    scaling = [fresh(args, "devices", k) for k in (1, 2, 4)]
    memory = fresh(args, "memory")
    row = dict(
        machine=machine(),
        m=8,
        d=16,
        n=8,
        D=manifold.dimension,
        batch=args.batch,
        stationarity=EPS,
        results=batch.counts(),
        steps_median=float(np.median(batch.num_steps)),
        max_abs_end_point_difference=difference,
        end_point_bound=bound,
        batched_first_call_s=batched_first,
        batched_s=batched,
        one_by_one_solve_flow_s=one_by_one,
        one_by_one_jit_s=one_by_one_jit,
        per_flow_batched_ms=1e3 * batched / args.batch,
        per_flow_solve_flow_ms=1e3 * one_by_one / args.batch,
        per_flow_jit_ms=1e3 * one_by_one_jit / args.batch,
        speedup_vs_solve_flow=one_by_one / batched,
        speedup_vs_jit=one_by_one_jit / batched,
        speedup_vs_solve_flow_first_call=one_by_one / batched_first,
        device_scaling=scaling,
        memory=memory,
    )
    write_json("many_flows", row)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    names = [
        "solve_flows\n(batch)",
        "flow_solve jit\n(one by one)",
        "solve_flow\n(one by one)",
    ]
    values = [
        row["per_flow_batched_ms"],
        row["per_flow_jit_ms"],
        row["per_flow_solve_flow_ms"],
    ]
    left.bar(names, values, color=["C0", "C1", "C2"])
    left.set(
        ylabel="ms per flow", title=f"{args.batch} two-layer flows (m=8, d=16, n=8)"
    )
    k = [s["devices"] for s in scaling]
    right.plot(
        k, [scaling[0]["run_s"] / s["run_s"] for s in scaling], "o-", label="measured"
    )
    right.plot(k, k, "--", color="grey", label="ideal")
    right.axhline(2, color="C3", ls=":", label="2 real cores")
    right.set(
        xlabel="forced CPU devices",
        ylabel="speed-up over 1 device",
        xticks=k,
        title="one batch over K devices",
    )
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(RESULTS / "many_flows.png", dpi=100)
    print(json.dumps({k: v for k, v in row.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
