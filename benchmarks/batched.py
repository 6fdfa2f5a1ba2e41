"""Many flows at once: `jax.vmap` of `flow_solve` over starting points of one
two-layer problem, against the same flows solved one at a time.

Each start is the command's initial point plus Gaussian noise (`--spread`); the
initial retraction brings it onto the manifold, and each flow runs to
|P_T grad R| <= 1e-10 with the defaults (Dopri8, PID 1e-10/1e-12). Before any time
is reported, every member of the batch must end with the same result as its separate
solve, at the same point up to the distance that the stop leaves to the stationary
point: |P_T grad R| <= eps is reached within eps / r of it (r: the flow's asymptotic
linear rate, Theorem 3.5), so two solves that stop there differ by at most 2 eps / r.
Batched matrix products round differently from single ones, and an adaptive step
whose error estimate lies that close to the tolerance may then be accepted in one and
rejected in the other: the JSON records how many members took exactly the same
steps, and the largest difference.

Timed (compilation separate, `jax.block_until_ready`, medians of `--repeats`):
- batched: one jitted `vmap` over all starts;
- one at a time, jitted `flow_solve`: the compiled single solve called per start;
- one at a time, `solve_flow`: the host wrapper (windows, NumPy solution), per start.

    python benchmarks/batched.py [--batch 64] [--m 32 --d 64 --n 16]

Writes benchmarks/results/batched.json and .png.
"""

import argparse
import time

import jax


jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
from _common import machine, median_seconds, RESULTS, two_layer_data, write_json
from manifoldflow.models import TwoLayerManifold
from manifoldflow.theory import gatmiry


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--spread", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=4096)
    args = parser.parse_args()

    X, y, net = two_layer_data(args.m, args.d, args.n, seed=0)
    manifold = TwoLayerManifold(net, X, y)
    u0 = manifold.initial_point()
    noise = jax.random.normal(jax.random.PRNGKey(1), (args.batch, u0.size))
    starts = u0 + args.spread * noise

    def solve(theta):
        return mf.flow_solve(manifold, theta, max_steps=args.max_steps)

    batched = jax.jit(jax.vmap(solve))
    single = jax.jit(solve)

    start = time.perf_counter()
    batch = jax.block_until_ready(batched(starts))
    batched_compile = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(single(starts[0]))
    single_compile = time.perf_counter() - start

    # Correctness first.
    singles = [jax.block_until_ready(single(s)) for s in starts]
    difference = max(
        float(jnp.max(jnp.abs(batch.theta_final[i] - s.theta_final)))
        for i, s in enumerate(singles)
    )
    same_result = all(
        int(batch.result._value[i]) == int(s.result._value)
        for i, s in enumerate(singles)
    )
    same_steps = all(
        int(batch.num_steps[i]) == int(s.num_steps) for i, s in enumerate(singles)
    )
    identical = sum(
        int(batch.num_steps[i]) == int(s.num_steps)
        and bool(jnp.all(batch.step_ts[i] == s.step_ts))
        for i, s in enumerate(singles)
    )
    results = [mf.RESULTS[s.result] for s in singles]
    rate = gatmiry.asymptotic_rate(manifold, 1.0)
    bound = 2 * 1e-10 / rate
    assert same_result, "a member ended differently from its separate solve"
    assert difference <= bound, (difference, bound)

    batched_seconds = median_seconds(lambda: batched(starts), args.repeats)
    single_seconds = median_seconds(
        lambda: [jax.block_until_ready(single(s)) for s in starts], args.repeats
    )
    mf.solve_flow(manifold, starts[0])  # compile the host wrapper's programs
    host_seconds = median_seconds(
        lambda: [mf.solve_flow(manifold, s) for s in starts], args.repeats
    )
    steps = np.asarray(batch.num_steps)
    row = dict(
        machine=machine(),
        m=args.m,
        d=args.d,
        n=args.n,
        D=int(u0.size),
        batch=args.batch,
        spread=args.spread,
        max_abs_end_point_difference=difference,
        end_point_bound=bound,
        asymptotic_rate=rate,
        same_result=same_result,
        same_steps=same_steps,
        members_with_identical_steps=identical,
        results=sorted(set(results)),
        steps_min=int(steps.min()),
        steps_median=float(np.median(steps)),
        steps_max=int(steps.max()),
        batched_compile_s=batched_compile,
        single_compile_s=single_compile,
        batched_s=batched_seconds,
        one_at_a_time_jit_s=single_seconds,
        one_at_a_time_solve_flow_s=host_seconds,
        per_flow_batched_s=batched_seconds / args.batch,
        per_flow_jit_s=single_seconds / args.batch,
        per_flow_solve_flow_s=host_seconds / args.batch,
        speedup_vs_jit=single_seconds / batched_seconds,
        speedup_vs_solve_flow=host_seconds / batched_seconds,
    )
    path = write_json("batched", row)
    print(
        f"{args.batch} flows, D = {u0.size}, steps {steps.min()}-{steps.max()}: "
        f"batched {batched_seconds:.3f} s ({batched_seconds / args.batch * 1e3:.2f} "
        f"ms per flow), one at a time {single_seconds:.3f} s (jit) and "
        f"{host_seconds:.3f} s (solve_flow): {row['speedup_vs_jit']:.1f}x and "
        f"{row['speedup_vs_solve_flow']:.1f}x; compile {batched_compile:.1f} s "
        f"batched, {single_compile:.1f} s single; max end-point difference "
        f"{difference:.1e} (bound {bound:.1e}; {identical}/{args.batch} members took "
        f"identical steps); wrote {path}"
    )
    _plot(row, steps)


def _plot(row, steps):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = ["vmap batch", "jit, one\nat a time", "solve_flow, one\nat a time"]
    values = [
        row["per_flow_batched_s"],
        row["per_flow_jit_s"],
        row["per_flow_solve_flow_s"],
    ]
    bars = left.bar(labels, [v * 1e3 for v in values], color=["C2", "C0", "C1"])
    left.bar_label(bars, fmt="%.2f")
    left.set_ylabel("wall time per flow (ms, compile excluded)")
    left.set_title(
        f"{row['batch']} flows, two-layer m={row['m']}, d={row['d']}, n={row['n']}"
    )
    right.hist(steps, bins=np.arange(steps.min() - 0.5, steps.max() + 1.5), color="C2")
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_xlabel("accepted steps per member (each its own)")
    right.set_ylabel("members")
    right.set_title("steps to |P_T grad R| <= 1e-10")
    fig.tight_layout()
    fig.savefig(RESULTS / "batched.png", dpi=120)


if __name__ == "__main__":
    main()
