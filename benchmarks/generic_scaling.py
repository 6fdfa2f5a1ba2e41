"""The generic path at scale: one flow evaluation (P_T grad R) and one retraction,
dense against matrix-free, for MLPs of growing width (D = 1e3 ... 1e6 parameters)
and n = 64 ... 1024 examples, with peak memory; against the cost of the n
per-example gradients that any evaluation must compute (the distance to the limit).

Each configuration runs in a fresh process (its peak RSS is its own). Configurations
whose memory or time would not fit are skipped and said so.

    python benchmarks/generic_scaling.py [--quick]

Writes benchmarks/results/generic_scaling.json and .png.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


FEATURES = 64
WIDTHS = (14, 71, 285, 967)  # D = w^2 + 67 w + 1: 1.1e3, 9.8e3, 1.0e5, 1.0e6
SIZES = (64, 256, 1024)
MEMORY = 24e9  # the mark: does a path fit in 24 GB?
LIMIT_BYTES = 16e9  # this machine has 23 GB: skip runs predicted above this
TIMEOUT = 420


def parameters(width):
    return width * width + (FEATURES + 3) * width + 1


def one(width, n, path):
    """Time one configuration in this process; print its JSON."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import manifoldflow as mf
    from _common import seconds

    key_model, key_x, key_v = jax.random.split(jax.random.PRNGKey(0), 3)
    model = eqx.nn.MLP(FEATURES, "scalar", width, 2, activation=jnp.tanh, key=key_model)
    model = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, model
    )
    X = jax.random.normal(key_x, (n, FEATURES), jnp.float64)
    y = jax.vmap(model)(X)  # the initial point is on the manifold
    manifold = mf.ZeroLossManifold(model, X, y, matrix_free=path != "dense")
    theta = manifold.initial_point()
    offset = 1e-7 * jax.random.normal(key_v, theta.shape, theta.dtype)
    projector = mf.CholeskyProjector()

    @eqx.filter_jit
    def evaluate(manifold, theta):
        return mf.SharpnessFlow(manifold, projector).evaluate(theta).riemannian_gradient

    @eqx.filter_jit
    def retract(manifold, theta):
        return mf.ChordRetraction()(manifold, projector, theta)

    @eqx.filter_jit
    def per_example_gradients(manifold, theta):
        # The n per-example gradients (squared norms summed), `chunk` at a time:
        # what every evaluation must at least compute.
        chunk = manifold.chunk_size
        Xc = manifold.X[: (n // chunk) * chunk].reshape((n // chunk, chunk, FEATURES))

        def body(total, xs):
            grads = jax.vmap(jax.grad(manifold._output), in_axes=(None, 0))(theta, xs)
            return total + jnp.sum(grads**2), None

        return jax.lax.scan(body, jnp.zeros((), theta.dtype), Xc)[0]

    out = dict(
        width=width, D=int(theta.size), n=n, path=path, chunk=manifold.chunk_size
    )
    for name, fn, args in (
        ("evaluation", evaluate, (manifold, theta)),
        ("retraction", retract, (manifold, theta + offset)),
        ("per_example_gradients", per_example_gradients, (manifold, theta)),
    ):
        if name == "per_example_gradients" and path == "dense":
            continue
        start = time.perf_counter()
        result = jax.block_until_ready(fn(*args))
        first = time.perf_counter() - start
        runs = seconds(lambda: fn(*args), 3)
        out[name] = float(np.median(runs))
        out[name + "_first_call"] = first
        if name == "retraction":
            out["retraction_steps"] = int(result.num_steps)
            out["retraction_converged"] = bool(result.converged)
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(out), flush=True)


def predicted_bytes(D, n, path):
    """A model of each path's memory (its scale is fitted to the measurements)."""
    if path == "dense":
        return 4 * 8 * n * D
    chunk = max(1, min(n, 2**31 // (4 * D * 8)))
    return 8 * (n * n + 4 * chunk * D + 4 * D)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs=3, metavar=("WIDTH", "N", "PATH"))
    parser.add_argument("--quick", action="store_true", help="the two small widths")
    args = parser.parse_args()
    if args.one:
        one(int(args.one[0]), int(args.one[1]), args.one[2])
        return
    from _common import machine, RESULTS, write_json

    widths = WIDTHS[:2] if args.quick else WIDTHS
    rows, skipped = [], []
    for width in widths:
        for n in SIZES:
            D = parameters(width)
            for path in ("dense", "matrix-free"):
                if n > D:
                    continue
                if predicted_bytes(D, n, path) > LIMIT_BYTES:
                    skipped.append(dict(D=D, n=n, path=path, why="memory"))
                    print(f"skip D={D} n={n} {path}: memory", flush=True)
                    continue
                if path == "matrix-free" and 2.0 * n * n * D > 1.5e12:
                    skipped.append(dict(D=D, n=n, path=path, why="time"))
                    print(
                        f"skip D={D} n={n} {path}: time (Gram {2 * n * n * D:.1e} flops)",
                        flush=True,
                    )
                    continue
                command = [sys.executable, __file__, "--one", str(width), str(n), path]
                try:
                    done = subprocess.run(
                        command, capture_output=True, text=True, timeout=TIMEOUT
                    )
                except subprocess.TimeoutExpired:
                    skipped.append(dict(D=D, n=n, path=path, why="timeout"))
                    print(f"timeout D={D} n={n} {path}", flush=True)
                    continue
                lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
                if not lines:
                    skipped.append(dict(D=D, n=n, path=path, why=done.stderr[-300:]))
                    print(
                        f"failed D={D} n={n} {path}: {done.stderr[-300:]}", flush=True
                    )
                    continue
                row = json.loads(lines[0][7:])
                rows.append(row)
                print(
                    f"D={D:>8} n={n:>5} {path:<11} eval {row['evaluation']:.4g} s "
                    f"retraction {row['retraction']:.4g} s "
                    f"peak {row['peak_rss_bytes'] / 1e9:.2f} GB",
                    flush=True,
                )
    fits = {}
    for path in ("dense", "matrix-free"):
        mine = [r for r in rows if r["path"] == path]
        if len(mine) < 3:
            continue
        logs = np.log([[r["D"], r["n"]] for r in mine])
        design = np.column_stack([np.ones(len(mine)), logs])
        big = [r for r in mine if r["D"] >= 5000]  # exponents where work dominates
        if len(big) >= 3:
            logs = np.log([[r["D"], r["n"]] for r in big])
            design = np.column_stack([np.ones(len(big)), logs])
            mine = big
        coef = np.linalg.lstsq(
            design, np.log([r["evaluation"] for r in mine]), rcond=None
        )[0]
        # Memory above the process's baseline, against the model's bytes.
        base = min(r["peak_rss_bytes"] for r in rows)
        model = np.array([predicted_bytes(r["D"], r["n"], path) for r in mine])
        extra = np.array([r["peak_rss_bytes"] - base for r in mine])
        ratio = float(np.median(extra / model))
        largest = {}
        for n in SIZES:
            D = 10**3
            while (
                D < 10**9 and ratio * predicted_bytes(D * 1.1, n, path) + base <= MEMORY
            ):
                D *= 1.1
            largest[n] = int(D)
        fits[path] = dict(
            evaluation_exponent_D=float(coef[1]),
            evaluation_exponent_n=float(coef[2]),
            memory_per_model_byte=ratio,
            largest_D_in_24GB=largest,
        )
    limit = [
        dict(D=r["D"], n=r["n"], ratio=r["evaluation"] / r["per_example_gradients"])
        for r in rows
        if r["path"] == "matrix-free" and r.get("per_example_gradients")
    ]
    payload = dict(
        machine=machine(),
        features=FEATURES,
        depth=2,
        rows=rows,
        skipped=skipped,
        fits=fits,
        evaluation_over_per_example_gradients=limit,
    )
    print(json.dumps(fits, indent=1))
    write_json("generic_scaling", payload)
    plot(rows, fits, RESULTS / "generic_scaling.png")


def plot(rows, fits, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    colours = dict(zip(SIZES, ("C0", "C1", "C2")))
    for kind, style in (("dense", "o-"), ("matrix-free", "s--")):
        for n in SIZES:
            mine = sorted(
                (r for r in rows if r["path"] == kind and r["n"] == n),
                key=lambda r: r["D"],
            )
            if not mine:
                continue
            D = [r["D"] for r in mine]
            label = f"{kind}, n={n}"
            axes[0].loglog(
                D, [r["evaluation"] for r in mine], style, color=colours[n], label=label
            )
            axes[1].loglog(
                D,
                [r["peak_rss_bytes"] / 1e9 for r in mine],
                style,
                color=colours[n],
                label=label,
            )
            if kind == "matrix-free":
                axes[2].semilogx(
                    D,
                    [r["evaluation"] / r["per_example_gradients"] for r in mine],
                    style,
                    color=colours[n],
                    label=f"n={n}",
                )
    axes[1].axhline(MEMORY / 1e9, color="grey", ls=":", label="24 GB")
    for kind, fit in fits.items():
        for n, D in fit["largest_D_in_24GB"].items():
            axes[1].plot([D], [MEMORY / 1e9], "x", color=colours[n])
    axes[0].set(
        xlabel="D (parameters)", ylabel="seconds", title="one evaluation of P_T grad R"
    )
    axes[1].set(
        xlabel="D", ylabel="peak RSS (GB)", title="memory (x: fitted 24 GB limit)"
    )
    axes[2].set(
        xlabel="D",
        ylabel="ratio",
        title="matrix-free evaluation / n per-example gradients",
    )
    for ax in axes:
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
