"""Sharpness after gradient descent against the initialisation scale, for several
learning rates, with the bounds (Marion & Chizat 2024, Figure 1(b) in spirit).

Gaussian initialisation (all entries N(0, scale^2), d_L = 1, p = 1), depth 10, width
5, the paper's data; learning rates 0.005, 0.02, 0.07 for 40000, 10000, 4000 steps.
A run counts only if it converged (`manifoldflow.descent_converged`); diverged and
not-converged runs are counted, not plotted. Lines: the lower bound 2 L a |w*|^(2-2/L)
on S_min, the balanced minimiser's sharpness, Corollary 2's 8 L Lambda |w*|^(2-2/L),
and 2/lr for each learning rate.

    python examples/deep_linear_sharpness_vs_scale.py [--seeds 5] [--quick] [--out DIR]

Writes deep_linear_sharpness_vs_scale.json and .png to --out (default
examples/results); --quick is a tiny run for the test suite.
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
from manifoldflow.models import deep_linear_data, gaussian_init
from manifoldflow.theory import marion_chizat as mc


RESULTS = pathlib.Path(__file__).parent / "results"
SCHEDULE = {0.005: 40_000, 0.02: 10_000, 0.07: 4_000}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    parser.add_argument(
        "--quick", action="store_true", help="a tiny run (one seed, two scales)"
    )
    args = parser.parse_args(argv)
    depth = 10
    scales = np.linspace(0.25, 0.6, 2 if args.quick else 10)
    schedule = {0.07: 400} if args.quick else SCHEDULE
    seeds = 1 if args.quick else args.seeds
    X, y, _ = deep_linear_data(50, 5, 0)
    c = mc.data_constants(X, y)
    p = np.ones(1)
    widths = (5, *[5] * (depth - 1), 1)
    runs = []
    start = time.perf_counter()
    for lr, steps in schedule.items():
        for scale in scales:
            for seed in range(seeds):
                net = gaussian_init(jax.random.PRNGKey(seed), widths, float(scale))
                loss = DeepLinearRisk(net.p, jnp.asarray(X), jnp.asarray(y))
                path = mf.gradient_descent(
                    loss, net.weights, lr=lr, num_steps=steps, record_every=steps // 10
                )
                converged, _ = mf.descent_converged(path, c.R_min)
                S = None
                if converged:
                    S = mf.hessian_max_eigenvalue(loss, list(path.final)).value
                runs.append(
                    dict(
                        lr=lr,
                        scale=float(scale),
                        seed=seed,
                        sharpness=S,
                        status="diverged"
                        if path.diverged
                        else "converged"
                        if converged
                        else "not_converged",
                    )
                )
        done = [r for r in runs if r["lr"] == lr]
        print(
            f"lr={lr}: "
            + ", ".join(
                f"{s} {sum(r['status'] == s for r in done)}"
                for s in ("converged", "not_converged", "diverged")
            ),
            flush=True,
        )
    bounds = dict(
        S_lower=mc.uniform_lower_bound(c, p, depth),
        S_balanced=mc.balanced_sharpness(c, p, depth),
        S_corollary2=mc.corollary_2_bound(c, depth),
    )
    converged = [r for r in runs if r["sharpness"] is not None]
    inside = int(
        sum(
            bounds["S_lower"] * (1 - 1e-9) <= r["sharpness"] <= bounds["S_corollary2"]
            for r in converged
        )
    )
    print(
        f"{inside} of {len(converged)} converged runs have S between the lower bound "
        f"{bounds['S_lower']:.4g} and Corollary 2's {bounds['S_corollary2']:.4g}"
    )
    payload = dict(
        setting=dict(
            depth=depth,
            width=5,
            n=50,
            d=5,
            init="gaussian",
            schedule={str(k): v for k, v in schedule.items()},
            scales=scales.tolist(),
            seeds=seeds,
        ),
        bounds=bounds,
        runs=runs,
        converged_between_bounds=[inside, len(converged)],
        wall_seconds=time.perf_counter() - start,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deep_linear_sharpness_vs_scale.json").write_text(
        json.dumps(payload, indent=1)
    )
    plot(runs, scales, bounds, args.out / "deep_linear_sharpness_vs_scale.png")


def plot(runs, scales, bounds, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for lr in SCHEDULE:
        means, lows, highs = [], [], []
        for scale in scales:
            values = [
                r["sharpness"]
                for r in runs
                if r["lr"] == lr
                and r["scale"] == float(scale)
                and r["sharpness"] is not None
            ]
            means.append(np.mean(values) if values else np.nan)
            lows.append(np.min(values) if values else np.nan)
            highs.append(np.max(values) if values else np.nan)
        (line,) = ax.plot(scales, means, "o-", label=f"lr = {lr}")
        ax.fill_between(scales, lows, highs, color=line.get_color(), alpha=0.2)
        if 2 / lr < 1.3 * bounds["S_corollary2"]:
            ax.axhline(2 / lr, color=line.get_color(), ls="-.", lw=0.8)
    ax.axhline(bounds["S_lower"], color="k", ls="--", label="2 L a (lower bound)")
    ax.axhline(bounds["S_balanced"], color="g", ls=":", label="balanced minimiser")
    ax.axhline(bounds["S_corollary2"], color="r", ls="--", label="8 L Lambda (Cor. 2)")
    ax.set(
        xlabel="initialisation scale",
        ylabel="sharpness after GD",
        title="depth 10: converged runs (mean, min-max); dash-dot: 2/lr",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
