"""`minimise_sharpness` matrix-free at the sizes `real-data` runs (D ~ 1e5): a bias-free
tanh MLP 64-W-1 on n digits, put on the manifold, then a fixed number of trust-region
steps with the CG projector and jvp-of-vjp Hessian products (no dense J).

Reported: the time of the first call (compile included) and of a second one, per
step and per Hessian product; R and |P_T grad R| before and after; the constraint
violation; and, as an independent check, |P_T grad R| recomputed with a dense J
(autodiff of the constraint, NumPy least squares). Writes
`results/flattest_matrix_free.json` and `.png`.

    python benchmarks/flattest_matrix_free.py                # W = 1500: D = 97,500
    python benchmarks/flattest_matrix_free.py --width 100    # D = 6,500
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)

import manifoldflow as mf
from _common import machine, RESULTS, write_json
from flattest import digits_mlp, independent_check


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    manifold, theta0, _ = digits_mlp(args.width, args.n, matrix_free=True)
    theta0 = jnp.asarray(theta0)
    print(f"D = {manifold.dimension}, n = {manifold.num_constraints}", flush=True)

    def solve():
        start = time.perf_counter()
        solution = mf.minimise_sharpness(
            manifold,
            theta0,
            projector=mf.CGProjector(),
            max_steps=args.steps,
            minimum_at_infinity=None,
            verdict=False,
            throw=False,
        )
        jax.block_until_ready(solution.theta)
        return solution, time.perf_counter() - start

    first, first_seconds = solve()
    second, second_seconds = solve()
    assert np.array_equal(np.asarray(first.theta), np.asarray(second.theta))
    records = second.records
    before = independent_check(manifold, theta0)
    after = independent_check(manifold, second.theta)
    row = dict(
        D=manifold.dimension,
        n=manifold.num_constraints,
        steps=int(second.num_steps),
        result=second.result_name,
        hessian_products=int(second.hessian_products),
        first_seconds=first_seconds,
        second_seconds=second_seconds,
        seconds_per_step=second_seconds / max(1, int(second.num_steps)),
        seconds_per_hessian_product=second_seconds
        / max(1, int(second.hessian_products)),
        before=before,
        after=after,
        R=np.asarray(records.sharpness).tolist(),
        gradient_norm=np.asarray(records.gradient_norm).tolist(),
    )
    print(
        f"{row['steps']} steps, {row['hessian_products']} Hessian products: first "
        f"{first_seconds:.1f} s, second {second_seconds:.1f} s "
        f"({row['seconds_per_hessian_product'] * 1e3:.0f} ms per product)\n"
        f"R {before['R']:.8g} -> {after['R']:.8g}; |P_T grad R| "
        f"{before['gradient_norm']:.3e} -> {after['gradient_norm']:.3e} (independent "
        f"{after['gradient_norm_independent']:.3e}); |F| "
        f"{after['constraint_violation']:.1e}",
        flush=True,
    )
    payload = dict(machine=machine(), **row)
    print(write_json("flattest_matrix_free", payload))
    _plot(row, RESULTS / "flattest_matrix_free.png")


def _plot(row, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].plot(row["R"], ".-")
    axes[0].set(xlabel="trust-region iteration", ylabel="R", title="sharpness")
    axes[1].semilogy(row["gradient_norm"], ".-")
    axes[1].set(xlabel="trust-region iteration", ylabel="|P_T grad R|")
    axes[1].set_title("stationarity")
    figure.suptitle(
        f"matrix-free trust region, digits MLP, D = {row['D']:,}, n = {row['n']}: "
        f"{row['seconds_per_step']:.2f} s per step",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
