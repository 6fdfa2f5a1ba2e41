"""Gatmiry, Li, Reddi, Jegelka (ICML 2024), Figures 1--3 in spirit, from the flow.

Figure 1: the singular values of the feature matrix Theta X^T along the sharpness
flow and along label-noise GD from the same point of the zero-loss manifold (n <= d,
the theorem's setting): all but one go to zero (rank one, Theorem 3.3). The flow is
solved with the constant of label-noise GD, c = sigma^2 / (2 n), and both are drawn
against tau = eta^2 k.

Figures 2--3: n > d, outside the theorem, data uniform on [0, 1] as in the paper.
Figure 3: d = 3, n = 4, m = 10, where rank one cannot fit and rank two is the smallest
that can: the singular values beyond the second go to zero. Figure 2: d = 3, n = 5,
m = 10 from six starts: the final rank, the neurons' clusters (neurons whose feature
vectors X theta_j coincide), the minima reached, and for one start the neurons'
feature vectors over time in their first two principal components.

The network is written here as a researcher would: f(x) = sum_j a_j phi(theta_j . x)
with phi(z) = z + z^3/3 and a fixed second layer a = 1 (the paper's), on the data of
`manifoldflow.models.two_layer_data`.

    python examples/gatmiry_figures.py [--quick] [--out DIR]

Writes gatmiry_figures.json, gatmiry_figure_1.png and gatmiry_figures_2_3.png to
--out (default examples/results).
"""

import argparse
import json
import pathlib
import time

import equinox as eqx
import jax


jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
from manifoldflow.models import two_layer_data
from manifoldflow.sgd import LabelNoiseGD, simulate


RESULTS = pathlib.Path(__file__).parent / "results"


class TwoLayer(eqx.Module):
    theta: jax.Array  # (m, d), trained
    a: jax.Array  # (m,), fixed

    def __call__(self, x):
        z = self.theta @ x
        return self.a @ (z + z**3 / 3)


def manifold_for(X, y, m, key):
    net = TwoLayer(jax.random.normal(key, (m, X.shape[1])), jnp.ones(m))
    trained = eqx.tree_at(
        lambda n: n.a, jax.tree_util.tree_map(lambda _: True, net), False
    )
    return mf.ZeroLossManifold(net, X, y, filter_spec=trained)


def feature_singular_values(manifold, thetas, X):
    """Singular values of Theta X^T for each row of `thetas` (coordinates)."""
    m = manifold.to_parameters(thetas[0]).theta.shape[0]
    Theta = np.asarray(thetas).reshape(len(thetas), m, -1)
    return np.linalg.svd(Theta @ np.asarray(X).T, compute_uv=False)


def figure_1(quick):
    n, d, m = (3, 5, 4) if quick else (4, 8, 16)
    X, y = map(jnp.asarray, two_layer_data(n, d, 0))
    manifold = manifold_for(X, y, m, jax.random.PRNGKey(0))
    start = mf.GaussNewtonRetraction()(
        manifold, mf.CholeskyProjector(), manifold.initial_point()
    ).theta
    simulator = LabelNoiseGD(sigma=2.0)
    c = simulator.flow_constant(manifold)
    eta = 0.05 if quick else 0.02
    tau_end = 2.0 if quick else 30.0
    taus = np.linspace(0, tau_end, 41)[1:]
    flow = mf.solve_flow(
        manifold, start, constant=c, saveat=list(taus), stationarity=0.0, throw=False
    )
    sgd = simulate(
        manifold,
        start,
        simulator,
        eta=eta,
        num_steps=round(tau_end / eta**2),
        seeds=1,
        record_every=round(tau_end / eta**2) // 200,
    )
    return dict(
        n=n,
        d=d,
        m=m,
        sigma=2.0,
        c=c,
        eta=eta,
        flow_result=flow.result_name,
        flow_tau=np.asarray(flow.ts).tolist(),
        flow_singular_values=feature_singular_values(manifold, flow.ys, X).tolist(),
        sgd_tau=np.asarray(sgd.tau).tolist(),
        sgd_singular_values=feature_singular_values(
            manifold, sgd.thetas[0], X
        ).tolist(),
    )


def clusters(features, tolerance=1e-6):
    """Groups of neurons whose feature vectors coincide to `tolerance` (relative)."""
    scale = np.max(np.linalg.norm(features, axis=1))
    labels = -np.ones(len(features), int)
    for j in range(len(features)):
        if labels[j] < 0:
            close = np.linalg.norm(features - features[j], axis=1) <= tolerance * scale
            labels[close & (labels < 0)] = labels.max() + 1
    return labels


def _n_above_d(n, m, starts, quick):
    """Flows from `starts` random points for d = 3 < n, data uniform on [0, 1] (the
    paper's data process), labels uniform on [0, 1]."""
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.uniform(0, 1, (n, 3)))
    y = jnp.asarray(rng.uniform(0, 1, n))
    runs = []
    for start in range(starts):
        manifold = manifold_for(X, y, m, jax.random.PRNGKey(start))
        solution = mf.solve_flow(
            manifold, max_steps=2_000 if quick else 100_000, throw=False
        )
        path = np.asarray(
            [
                np.asarray(manifold.to_parameters(t).theta) @ np.asarray(X).T
                for t in solution.ys
            ]
        )  # (states, m, n): neuron j's feature vector X theta_j at each kept state
        singular = np.linalg.svd(path[-1], compute_uv=False)
        labels = clusters(path[-1])
        runs.append(
            dict(
                start=start,
                result=solution.result_name,
                num_steps=int(solution.num_steps),
                R_final=float(solution.sharpness[-1]),
                singular_values=singular.tolist(),
                rank=int(np.sum(singular > 1e-6 * singular[0])),
                clusters=int(labels.max() + 1),
                labels=labels.tolist(),
                ts=np.asarray(solution.ts).tolist(),
                singular_path=np.linalg.svd(path, compute_uv=False).tolist(),
                feature_path=path.tolist(),
            )
        )
        print(
            f"d = 3, n = {n}, m = {m}, start {start}: {solution.result_name} after "
            f"{solution.num_steps} steps, R = {solution.sharpness[-1]:.7g}, singular "
            "values "
            + ", ".join(f"{v:.1e}" for v in singular)
            + f"; {labels.max() + 1} clusters",
            flush=True,
        )
    return dict(n=n, d=3, m=m, runs=runs)


def figures_2_3(quick):
    """Figure 3: n = 4 > d = 3, where rank two is the smallest that fits. Figure 2:
    n = 5, the neurons' clusters, from several starts."""
    starts = 1 if quick else 4
    return dict(
        rank_two=_n_above_d(4, 10, starts, quick),
        clusters=_n_above_d(5, 10, 1 if quick else 6, quick),
    )


def plot(one, two_three, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, tau, values, title in (
        (axes[0], one["flow_tau"], one["flow_singular_values"], "sharpness flow"),
        (
            axes[1],
            one["sgd_tau"],
            one["sgd_singular_values"],
            f"label-noise GD, eta = {one['eta']:g}",
        ),
    ):
        values = np.asarray(values)
        for k in range(values.shape[1]):
            ax.semilogy(tau, values[:, k], lw=1.2, label=f"s_{k + 1}")
        ax.set(xlabel="tau = eta^2 k", title=title)
    axes[0].set_ylabel("singular values of Theta X^T")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Figure 1: the feature matrix goes to rank one (m={one['m']}, d={one['d']}, "
        f"n={one['n']}, sigma={one['sigma']:g}, c = sigma^2/(2n))"
    )
    fig.tight_layout()
    fig.savefig(out / "gatmiry_figure_1.png", dpi=110)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    rank_two = two_three["rank_two"]
    run = rank_two["runs"][0]
    values = np.asarray(run["singular_path"])
    for k in range(values.shape[1]):
        axes[0].semilogy(run["ts"], np.maximum(values[:, k], 1e-17), label=f"s_{k + 1}")
    axes[0].set(
        xlabel="t",
        ylabel="singular values of Theta X^T",
        title=f"Figure 3: d = 3 < n = 4, m = {rank_two['m']}: rank two "
        f"({len(rank_two['runs'])} starts: ranks "
        + ", ".join(str(r["rank"]) for r in rank_two["runs"])
        + ")",
    )
    axes[0].legend(fontsize=8)
    group = two_three["clusters"]
    for run in group["runs"]:
        axes[1].semilogy(
            np.arange(1, len(run["singular_values"]) + 1),
            np.maximum(run["singular_values"], 1e-17),
            "o-",
            label=f"start {run['start']}: rank {run['rank']}, "
            f"{run['clusters']} clusters, R = {run['R_final']:.6g}",
        )
    axes[1].set(
        xlabel="index",
        ylabel="singular value",
        title=f"d = 3 < n = {group['n']}, m = {group['m']}: final Theta X^T",
    )
    axes[1].set_xticks(np.arange(1, len(group["runs"][0]["singular_values"]) + 1))
    axes[1].legend(fontsize=7)
    run = group["runs"][0]
    path = np.asarray(run["feature_path"])  # (states, m, n)
    final = path[-1]
    mean = final.mean(axis=0)
    _, _, vt = np.linalg.svd(final - mean, full_matrices=False)
    projected = (path - mean) @ vt[:2].T  # (states, m, 2)
    for j in range(projected.shape[1]):
        colour = f"C{run['labels'][j] % 10}"
        axes[2].plot(projected[:, j, 0], projected[:, j, 1], "-", color=colour, lw=0.8)
        axes[2].plot(*projected[0, j], "o", color=colour, ms=4, mfc="none")
        axes[2].plot(*projected[-1, j], "*", color=colour, ms=10)
    axes[2].set(
        xlabel="PC 1",
        ylabel="PC 2",
        title="Figure 2: start 0, X theta_j per neuron (o start, * end)",
    )
    fig.tight_layout()
    fig.savefig(out / "gatmiry_figures_2_3.png", dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="small sizes, few steps")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    one = figure_1(args.quick)
    print(
        f"Figure 1: flow {one['flow_result']}; final singular values, flow "
        + ", ".join(f"{s:.1e}" for s in one["flow_singular_values"][-1])
        + "; label-noise GD "
        + ", ".join(f"{s:.1e}" for s in one["sgd_singular_values"][-1]),
        flush=True,
    )
    two_three = figures_2_3(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = dict(
        figure_1={k: v for k, v in one.items()},
        figures_2_3={
            name: dict(
                group,
                runs=[
                    {
                        k: v
                        for k, v in run.items()
                        if k not in ("feature_path", "singular_path", "ts")
                    }
                    for run in group["runs"]
                ],
            )
            for name, group in two_three.items()
        },
        wall_seconds=time.perf_counter() - started,
    )
    (args.out / "gatmiry_figures.json").write_text(json.dumps(summary, indent=1))
    plot(one, two_three, args.out)


if __name__ == "__main__":
    main()
