"""Many small flows in one call: `solve_flows` over `--batch` starts against
`solve_flow` one start at a time, both warm (compiled), on the small two-layer
problem of the batching goal (m, d, n = 5, 10, 6; t from 0 to 1).

Reported (medians of `--repeats`, `jax.block_until_ready` through the NumPy
solutions):
- per-flow wall time of the batch and of the one-at-a-time loop, and their ratio;
- the batch's utilisation, sum of the members' own attempted steps over
  (batch x the most attempted by any member): the share of the vmapped loop's work
  that some member needed;
- the per-member cost of one attempted step in the batch against the bare vmapped
  vector field (the projected gradient of R, one evaluation per stage of the
  solver: Dopri8 makes 12 per attempted step; and the same with the retraction's
  Newton iterations) at the same batch size: what the loop adds around the
  mathematics.

Every member must end where its own solve ends (same result; end points within
1e-9) before a time is reported.

    python benchmarks/batch_speedup.py [--batch 1024] [--repeats 3]

Writes benchmarks/results/batch_speedup.json and .png.
"""

import argparse
import time

import jax


jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
from _common import machine, RESULTS, two_layer_data, write_json
from manifoldflow.models import TwoLayerManifold


def median_of(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--singles", type=int, default=128)
    args = parser.parse_args()
    m, d, n = 5, 10, 6
    X, y, net = two_layer_data(m, d, n, seed=0)
    manifold = TwoLayerManifold(net, X, y)
    key = jax.random.PRNGKey(1)
    theta = manifold.initial_point()
    starts = np.asarray(
        theta + 0.05 * jax.random.normal(key, (args.batch, theta.size), theta.dtype)
    )
    options = dict(t1=1.0, stationarity=0.0, throw=False)

    # Warm both paths (compilation), then time.
    mf.solve_flows(manifold, starts, **options)
    mf.solve_flow(manifold, starts[0], **options)
    batch_s, batch = median_of(
        lambda: mf.solve_flows(manifold, starts, **options), args.repeats
    )
    singles = min(args.singles, args.batch)
    single_s, single = median_of(
        lambda: [mf.solve_flow(manifold, s, **options) for s in starts[:singles]],
        max(1, args.repeats // 2),
    )
    for i in range(singles):
        a, b = batch[i], single[i]
        assert a.result_name == b.result_name, (i, a.result_name, b.result_name)
        gap = float(np.max(np.abs(np.asarray(a.theta_final) - b.theta_final)))
        assert gap <= 1e-9, (i, gap)
    per_batch = batch_s / args.batch
    per_single = single_s / singles
    attempts = np.array([s.num_steps + s.num_rejected_steps for s in batch])
    utilisation = float(attempts.sum() / (args.batch * attempts.max()))

    # The bare vmapped vector field at the same batch size.
    flow = mf.SharpnessFlow(manifold)
    field = jax.jit(jax.vmap(lambda y: flow(0.0, y, None)))
    retract = mf.GaussNewtonRetraction()
    ys = jax.jit(jax.vmap(lambda y: retract(manifold, flow.projector, y).theta))(
        jnp.asarray(starts)
    )
    jax.block_until_ready(field(ys))
    field_s, _ = median_of(lambda: jax.block_until_ready(field(ys)), 20)
    stages = 12  # Dopri8's evaluations per attempted step
    per_member_step = batch_s / (args.batch * attempts.max())
    bare_per_member_step = stages * field_s / args.batch
    row = dict(
        machine=machine(),
        m=m,
        d=d,
        n=n,
        D=m * d,
        batch=args.batch,
        singles_timed=singles,
        t1=1.0,
        results=batch.counts(),
        attempts_min=int(attempts.min()),
        attempts_median=float(np.median(attempts)),
        attempts_max=int(attempts.max()),
        batch_s=batch_s,
        per_flow_batch_ms=1e3 * per_batch,
        per_flow_solve_flow_ms=1e3 * per_single,
        speedup=per_single / per_batch,
        utilisation=utilisation,
        vector_field_batch_s=field_s,
        per_member_attempt_us=1e6 * per_member_step,
        bare_field_per_member_attempt_us=1e6 * bare_per_member_step,
        loop_overhead_factor=per_member_step / bare_per_member_step,
    )
    print(row)
    path = write_json("batch_speedup", row)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].bar(
        ["solve_flow\none at a time", f"solve_flows\nbatch {args.batch}"],
        [row["per_flow_solve_flow_ms"], row["per_flow_batch_ms"]],
        color=["C0", "C1"],
    )
    axes[0].set(ylabel="ms per flow (median)", title=f"speed-up {row['speedup']:.1f}x")
    axes[1].bar(
        ["bare vmapped\nvector field x 12", "solve_flows\nper attempt"],
        [row["bare_field_per_member_attempt_us"], row["per_member_attempt_us"]],
        color=["C2", "C1"],
    )
    axes[1].set(
        ylabel="us per member per attempted step",
        title=f"utilisation {utilisation:.2f}",
    )
    fig.tight_layout()
    fig.savefig(RESULTS / "batch_speedup.png", dpi=100)
    print("wrote", path)


if __name__ == "__main__":
    main()
