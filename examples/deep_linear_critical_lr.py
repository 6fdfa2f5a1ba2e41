"""The learning rate at which gradient descent stops converging, against depth, next
to 2/S_min (Marion & Chizat 2024, Figure 2 in spirit).

Residual initialisation W_k = I + s/sqrt(L d) N_k with s = 0.25 and a random unit p,
the paper's data (n = 50, d = 5, |w*| = 1), 1000 steps of GD per run, learning rates
logspace(-2, -0.3, 25), several seeds. A run converged only if over its last 100 steps
R - R_min stays below 1e-6 of its initial value (`manifoldflow.descent_converged`);
one that oscillates without diverging is not converged, and a diverged one is
counted as diverged. The measured critical rate is the largest rate at which at least
half of the seeds converged; 2/S_min lies between 2/S(balanced minimiser) and
2/(2 L a |w*|^(2-2/L)) = 1/(L a) (the paper's dashed line).

    python examples/deep_linear_critical_lr.py [--seeds 5] [--depths 5,10,20]

Writes examples/results/deep_linear_critical_lr.json and .png.
"""

import argparse
import json
import pathlib
import time

import jax


jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
from manifoldflow.experiments.deep_linear import DeepLinearRisk
from manifoldflow.models import deep_linear_data, residual_init
from manifoldflow.theory import marion_chizat as mc


RESULTS = pathlib.Path(__file__).parent / "results"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--depths", default="5,10,20")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--s", type=float, default=0.25)
    args = parser.parse_args()
    depths = [int(v) for v in args.depths.split(",")]
    lrs = np.logspace(-2, -0.3, 25)
    X, y, _ = deep_linear_data(50, 5, 0)
    c = mc.data_constants(X, y)
    rows = []
    start = time.perf_counter()
    for depth in depths:
        outcome = np.zeros((len(lrs), args.seeds), dtype="U13")
        p_norm_one = None
        for seed in range(args.seeds):
            net = residual_init(jax.random.PRNGKey(seed), depth, 5, args.s)
            loss = DeepLinearRisk(net.p, jnp.asarray(X), jnp.asarray(y))
            p_norm_one = np.asarray(net.p)
            for i, lr in enumerate(lrs):
                path = mf.gradient_descent(
                    loss,
                    net.weights,
                    lr=float(lr),
                    num_steps=args.steps,
                    record_every=args.steps // 10,
                )
                converged, _ = mf.descent_converged(path, c.R_min)
                outcome[i, seed] = (
                    "diverged"
                    if path.diverged
                    else "converged"
                    if converged
                    else "not_converged"
                )
        fraction = np.mean(outcome == "converged", axis=1)
        ok = np.flatnonzero(fraction >= 0.5)
        measured = float(lrs[ok[-1]]) if ok.size else None
        upper = 2 / mc.uniform_lower_bound(c, p_norm_one, depth)  # 1/(L a), |p| = 1
        lower = 2 / mc.balanced_sharpness(c, p_norm_one, depth)
        within = measured is not None and lower / 2 <= measured <= 2 * upper
        rows.append(
            dict(
                depth=depth,
                measured_critical_lr=measured,
                two_over_S_min_range=[lower, upper],
                within_factor_2=within,
                converged_fraction=fraction.tolist(),
                diverged_fraction=np.mean(outcome == "diverged", axis=1).tolist(),
                not_converged_fraction=np.mean(
                    outcome == "not_converged", axis=1
                ).tolist(),
            )
        )
        print(
            f"L={depth}: measured critical lr {measured}, 2/S_min in "
            f"[{lower:.4g}, {upper:.4g}], within a factor 2: {within}",
            flush=True,
        )
    payload = dict(
        setting=dict(
            init="residual",
            s=args.s,
            n=50,
            d=5,
            steps=args.steps,
            seeds=args.seeds,
            lrs=lrs.tolist(),
            a=c.a,
            w_star_norm=1.0,
        ),
        rows=rows,
        wall_seconds=time.perf_counter() - start,
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deep_linear_critical_lr.json").write_text(json.dumps(payload, indent=1))
    plot(lrs, rows, RESULTS / "deep_linear_critical_lr.png")


def plot(lrs, rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        (line,) = ax.semilogx(
            lrs, row["converged_fraction"], "o-", ms=3, label=f"L = {row['depth']}"
        )
        ax.semilogx(lrs, row["diverged_fraction"], "x:", color=line.get_color(), ms=4)
        ax.axvspan(*row["two_over_S_min_range"], color=line.get_color(), alpha=0.15)
    ax.set(
        xlabel="learning rate",
        ylabel="fraction of seeds",
        title="GD from residual init: converged (o) and diverged (x); bands: 2/S_min",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
