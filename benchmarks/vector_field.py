"""Time of one evaluation of the flow's vector field -P_T grad R for the two-layer net:
structured path (span-reduced closed form) vs generic autodiff path vs a plain jnp
closed form of the same maths on the full theta (m x d). float64, CPU.

Each timing is of a compiled loop of `--inner` chained evaluations (the output feeds
the next input, so nothing is hoisted), divided by `--inner`: the cost inside a solve,
without the per-call Python dispatch that dominates tiny sizes.

    python benchmarks/vector_field.py [--quick]

Writes benchmarks/results/vector_field.json and .png.
"""

import argparse

import jax


jax.config.update("jax_enable_x64", True)
import equinox as eqx
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
from _common import machine, RESULTS, time_call, two_layer_data, write_json
from manifoldflow.models import TwoLayerManifold


def plain_closed_form(theta, a, X, y_weights, gram_data):
    """-P_T grad R on the full theta, cubic-linear activation, written out in jnp."""
    Z = theta @ X.T  # (m, n)
    B = a[:, None] * (1 + Z**2)
    diag = y_weights * jnp.diag(gram_data)
    grad = (2 * diag * B * a[:, None] * (2 * Z)) @ X  # (m, d)
    rhs = jnp.sum(B * (grad @ X.T), axis=0)
    gram = (B.T @ B) * gram_data
    lam = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(gram), rhs)
    return -(grad - (B * lam[None, :]) @ X)


SIZES = [  # (m, d, n): D = m d from 1e3 to 1e6
    (16, 64, 16),
    (32, 320, 32),
    (64, 512, 64),
    (128, 800, 128),
    (256, 1024, 128),
    (256, 1024, 256),
    (512, 2048, 512),
]


def chained(evaluate, inner):
    """x -> `inner` chained evaluations of `evaluate(static, x)`, compiled."""

    @eqx.filter_jit
    def run(static, x):
        def body(_, x):
            return x + 1e-300 * evaluate(static, x)

        return jax.lax.fori_loop(0, inner, body, x)

    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--inner", type=int, default=10)
    parser.add_argument(
        "--generic-limit-gb",
        type=float,
        default=3.0,
        help="skip the generic path when J (n x D) exceeds this",
    )
    args = parser.parse_args()
    sizes = SIZES[:3] if args.quick else SIZES
    rows = []
    for m, d, n in sizes:
        X, y, net = two_layer_data(m, d, n)
        structured = TwoLayerManifold(net, X, y)
        u = structured.initial_point()
        theta = jnp.asarray(net.theta)
        weights = structured.weights
        gram_data = jnp.asarray(X @ X.T)
        Xj = jnp.asarray(X)

        flow_s = mf.SharpnessFlow(structured)
        f_s = eqx.filter_jit(lambda flow, u: flow(0.0, u, None))
        f_plain = jax.jit(plain_closed_form)
        k = args.inner
        row = dict(m=m, d=d, n=n, D=m * d, inner=k)

        def per_eval(times):
            return times[0], times[1] / k, times[2] / k

        row["structured_compile_s"], row["structured_s"], row["structured_min_s"] = (
            per_eval(
                time_call(chained(lambda flow, u: flow(0.0, u, None), k), flow_s, u)
            )
        )
        plain_static = (net.a, Xj, weights, gram_data)
        row["plain_compile_s"], row["plain_s"], row["plain_min_s"] = per_eval(
            time_call(
                chained(lambda st, t: plain_closed_form(t, *st), k), plain_static, theta
            )
        )
        # Correctness before timing is reported: same vector field on theta.
        v_s = np.asarray(
            structured.full_theta(f_s(flow_s, u)) - structured.full_theta(0 * u)
        )
        v_p = np.asarray(f_plain(theta, net.a, Xj, weights, gram_data))
        row["structured_vs_plain_max_abs_diff"] = float(np.max(np.abs(v_s - v_p)))
        assert row["structured_vs_plain_max_abs_diff"] <= 1e-10 * np.max(np.abs(v_p))
        if n * m * d * 8 * 3 / 1e9 <= args.generic_limit_gb:
            generic = mf.ZeroLossManifold(net, X, y, filter_spec=net.filter_spec())
            flow_g = mf.SharpnessFlow(generic)
            f_g = eqx.filter_jit(lambda flow, t: flow(0.0, t, None))
            th = generic.initial_point()
            row["generic_compile_s"], row["generic_s"], row["generic_min_s"] = per_eval(
                time_call(
                    chained(lambda flow, t: flow(0.0, t, None), k),
                    flow_g,
                    th,
                    repeats=3,
                )
            )
            v_g = np.asarray(f_g(flow_g, th)).reshape(m, d)
            row["generic_vs_plain_max_abs_diff"] = float(np.max(np.abs(v_g - v_p)))
            assert row["generic_vs_plain_max_abs_diff"] <= 1e-10 * np.max(np.abs(v_p))
            row["generic_over_plain"] = row["generic_s"] / row["plain_s"]
        else:
            row["generic_s"] = None
            row["generic_skipped"] = f"J would need {n * m * d * 8 / 1e9:.1f} GB"
        row["structured_over_plain"] = row["structured_s"] / row["plain_s"]
        print(
            {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()},
            flush=True,
        )
        rows.append(row)
    name = "vector_field_quick" if args.quick else "vector_field"
    path = write_json(
        name,
        dict(machine=machine(), dtype="float64", activation="cubic-linear", rows=rows),
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    D = [r["D"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in [
        ("structured_s", "structured (span-reduced)"),
        ("plain_s", "plain jnp closed form"),
        ("generic_s", "generic autodiff"),
    ]:
        pts = [(r["D"], r[key]) for r in rows if r.get(key) is not None]
        ax.loglog(*zip(*pts), "o-", label=label)
    ax.set(
        xlabel="D = m d",
        ylabel="seconds per evaluation (median)",
        title="vector field -P_T grad R, float64 CPU",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    print("wrote", path, "and", RESULTS / f"{name}.png")
    del D


if __name__ == "__main__":
    main()
