"""The learning rate at which gradient descent stops converging, against depth, next
to 2/S_min (Marion & Chizat 2024, Figure 2 in spirit).

Residual initialisation W_k = I + s/sqrt(L d) N_k with s = 0.25 and a random unit p,
the paper's data (n = 50, d = 5, |w*| = 1). For each seed, the critical rate is found
by bisection (in log lr, to 0.1%): the largest rate at which GD converges within the
step budget, i.e. over its last 10% of steps R - R_min stays below 1e-6 of its
initial value (the test of `manifoldflow.descent_converged`). Near the critical rate
GD converges slowly (the sharpest direction contracts by |1 - lr S| per step), so a
small budget calls slow runs "not converged": the bisection is run with a budget of
1,000 steps and with 10,000 (the default), and both are reported. No minimiser is
stable above 2/S_min, and 2/S_min lies between 2/S(balanced minimiser) and
2/(2 L a |w*|^(2-2/L)) = 1/(L a) (the paper's dashed line).

All seeds of one depth run at once (`jax.vmap`), each with its own bracket.

    python examples/deep_linear_critical_lr.py [--seeds 10] [--depths 5,10,20] [--quick]

Writes deep_linear_critical_lr.json and .png to --out (default examples/results);
--quick is a tiny run for the test suite.
"""

import argparse
import json
import pathlib
import time

import jax


jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from manifoldflow.models import deep_linear_data, residual_init
from manifoldflow.models.deep_linear import risk
from manifoldflow.theory import marion_chizat as mc


RESULTS = pathlib.Path(__file__).parent / "results"


def converges(weights, p, X, y, R_min, lr, steps):
    """Whether GD at `lr` from `weights` (a (L, d, d) array) converges within
    `steps` steps, and whether it diverged (a non-finite value); one seed."""
    value_and_grad = jax.value_and_grad(lambda W: risk(list(W), p, X, y))
    tail = max(1, steps // 10)
    R0 = risk(list(weights), p, X, y)
    tolerance = jnp.maximum(1e-14, 1e-6 * (R0 - R_min))

    def step(k, carry):
        W, worst = carry
        R, g = value_and_grad(W)
        worst = jnp.where(k >= steps - tail, jnp.maximum(worst, R - R_min), worst)
        worst = jnp.where(jnp.isfinite(R), worst, jnp.inf)
        return W - lr * g, worst

    W, worst = jax.lax.fori_loop(0, steps, step, (weights, jnp.zeros(())))
    R = risk(list(W), p, X, y)
    worst = jnp.maximum(worst, jnp.where(jnp.isfinite(R), R - R_min, jnp.inf))
    diverged = ~jnp.all(jnp.isfinite(W))
    return (worst <= tolerance) & ~diverged, diverged


def critical_rates(weights, ps, X, y, R_min, steps, lo, hi, iterations):
    """Per seed: the bracket [lo, hi] (lo converges, hi does not) after bisection in
    log lr, and whether the run at hi diverged."""
    run = jax.jit(
        jax.vmap(
            lambda W, p, lr: converges(W, p, X, y, R_min, lr, steps),
            in_axes=(0, 0, 0),
        )
    )
    seeds = weights.shape[0]
    lo = np.full(seeds, lo)
    hi = np.full(seeds, hi)
    ok_lo, _ = run(weights, ps, jnp.asarray(lo))
    ok_hi, _ = run(weights, ps, jnp.asarray(hi))
    if not (np.all(ok_lo) and not np.any(ok_hi)):
        raise RuntimeError("The initial bracket does not bracket every seed.")
    diverged_hi = np.zeros(seeds, bool)
    for _ in range(iterations):
        mid = np.sqrt(lo * hi)
        ok, diverged = map(np.asarray, run(weights, ps, jnp.asarray(mid)))
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
        diverged_hi = np.where(ok, diverged_hi, diverged)
    return lo, hi, diverged_hi


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--depths", default="5,10,20")
    parser.add_argument("--budgets", default="1000,10000")
    parser.add_argument("--s", type=float, default=0.25)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    parser.add_argument(
        "--quick", action="store_true", help="a tiny run (L = 5, 2 seeds, 500 steps)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.depths, args.seeds, args.budgets = "5", 2, "500"
    depths = [int(v) for v in args.depths.split(",")]
    budgets = [int(v) for v in args.budgets.split(",")]
    X, y, _ = deep_linear_data(50, 5, 0)
    c = mc.data_constants(X, y)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    rows = []
    start = time.perf_counter()
    for depth in depths:
        nets = [
            residual_init(jax.random.PRNGKey(seed), depth, 5, args.s)
            for seed in range(args.seeds)
        ]
        weights = jnp.asarray(np.stack([np.stack(net.weights) for net in nets]))
        ps = jnp.asarray(np.stack([np.asarray(net.p) for net in nets]))
        p_unit = np.asarray(nets[0].p)  # |p| = 1 for every seed: same bounds
        upper = 2 / mc.uniform_lower_bound(c, p_unit, depth)  # 1/(L a)
        lower = 2 / mc.balanced_sharpness(c, p_unit, depth)
        row = dict(depth=depth, two_over_S_min_range=[lower, upper], budgets={})
        for steps in budgets:
            # 12 halvings of the log bracket [upper / 10, 2 upper]: 0.07% wide.
            lo, hi, diverged = critical_rates(
                weights, ps, Xj, yj, c.R_min, steps, upper / 10, 2 * upper, 12
            )
            row["budgets"][str(steps)] = dict(
                critical_lr=lo.tolist(),
                bracket_width=float(np.max(hi / lo - 1)),
                diverged_just_above=diverged.tolist(),
                median=float(np.median(lo)),
                min=float(np.min(lo)),
                max=float(np.max(lo)),
            )
            print(
                f"L={depth:<3d} {steps:>6d} steps: critical lr median "
                f"{np.median(lo):.4f} (seeds {np.min(lo):.4f}..{np.max(lo):.4f}); "
                f"2/S_min in [{lower:.4f}, {upper:.4f}]; median / (1/(L a)) = "
                f"{np.median(lo) / upper:.3f}; diverged just above: "
                f"{int(diverged.sum())}/{args.seeds}",
                flush=True,
            )
        rows.append(row)
    payload = dict(
        setting=dict(
            init="residual", s=args.s, n=50, d=5, seeds=args.seeds, a=c.a,
            w_star_norm=1.0, budgets=budgets,
            criterion="R - R_min <= max(1e-14, 1e-6 (R_0 - R_min)) over the last 10%",
        ),
        rows=rows,
        wall_seconds=time.perf_counter() - start,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deep_linear_critical_lr.json").write_text(
        json.dumps(payload, indent=1)
    )
    plot(rows, budgets, args.out / "deep_linear_critical_lr.png")


def plot(rows, budgets, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    positions = np.arange(len(rows))
    for k, steps in enumerate(budgets):
        for j, row in enumerate(rows):
            upper = row["two_over_S_min_range"][1]
            rates = np.asarray(row["budgets"][str(steps)]["critical_lr"]) / upper
            x = positions[j] + 0.15 * (k - (len(budgets) - 1) / 2)
            ax.plot(
                np.full(rates.size, x), rates, "o", ms=4, color=f"C{k}", alpha=0.6,
                label=f"per seed, budget {steps} steps" if j == 0 else None,
            )  # fmt: skip
    for j, row in enumerate(rows):
        low, high = row["two_over_S_min_range"]
        ax.plot(
            [j - 0.4, j + 0.4], [1, 1], "k-",
            label="1/(L a): upper end of 2/S_min" if j == 0 else None,
        )  # fmt: skip
        ax.plot(
            [j - 0.4, j + 0.4], [low / high] * 2, "k:",
            label="2/S(balanced minimiser)" if j == 0 else None,
        )  # fmt: skip
    ax.set_xticks(positions, [f"L = {row['depth']}" for row in rows])
    ax.set(
        ylabel="critical learning rate x L a",
        title="largest rate at which GD converges (bisection per seed), over 1/(L a)",
    )
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
