"""A smooth two-layer network with a trainable second layer, outside the theorems:
the sharpness flow's effect on the Barron-type norm sum_j |a_j| |w_j| (Z. Li's
open-problems slides: with L = (1/2n) sum (f - y)^2 and many unit-sphere inputs,
Tr Hess L ~ sum_j (|w_j|^2 / (2d) + a_j^2 / 2) >= (1/sqrt(d)) sum_j |a_j| |w_j| by
AM-GM, so the flattest interpolant should have a small Barron norm).

f(x) = sum_j a_j GELU(w_j^T x) (GELU as a smooth stand-in for ReLU), inputs uniform on
the sphere S^(d-1), labels from a random teacher of the same form, both layers
trained; several random starts, each retracted onto Gamma, solved to
|P_T grad R| <= 1e-8 (or stopped by the solver: reported).

    python examples/smooth_two_layer_barron.py [--h 16 --d 5 --n 12 --starts 4]

Writes examples/results/smooth_two_layer_barron.json.
"""

import argparse
import json
import pathlib

import jax


jax.config.update("jax_enable_x64", True)
import equinox as eqx
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np


class SmoothTwoLayer(eqx.Module):
    W: jax.Array  # (h, d)
    a: jax.Array  # (h,)

    def __call__(self, x):
        return jnp.dot(self.a, jax.nn.gelu(self.W @ x, approximate=False))


def barron(model):
    return float(jnp.sum(jnp.abs(model.a) * jnp.linalg.norm(model.W, axis=1)))


def heuristic(model, d):
    W, a = model.W, model.a
    return float(jnp.sum(jnp.sum(W**2, axis=1) / (2 * d) + a**2 / 2))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--h", type=int, default=16)
    parser.add_argument("--d", type=int, default=5)
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--starts", type=int, default=4)
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny run (h = 6, n = 4, one start, 300 steps)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.h, args.n, args.starts = 6, 4, 1
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.n, args.d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    teacher = SmoothTwoLayer(
        jnp.asarray(rng.standard_normal((3, args.d))), jnp.asarray([1.0, -1.0, 0.5])
    )
    y = np.asarray(jax.vmap(teacher)(jnp.asarray(X)))
    runs = []
    for start in range(args.starts):
        key_w, key_a = jax.random.split(jax.random.PRNGKey(start))
        model = SmoothTwoLayer(
            jax.random.normal(key_w, (args.h, args.d)),
            jax.random.normal(key_a, (args.h,)) / np.sqrt(args.h),
        )
        manifold = mf.ZeroLossManifold(model, X, y, loss=mf.HalfMeanSquaredLoss())
        solution = mf.solve_flow(
            manifold,
            stationarity=1e-8,
            max_steps=300 if args.quick else 100_000,
            throw=False,
        )
        first = manifold.to_parameters(jnp.asarray(solution.ys[0]))
        last = manifold.to_parameters(solution.theta_final)
        run = dict(
            start=start,
            **solution.summary(),
            barron_initial=barron(first),
            barron_final=barron(last),
            heuristic_initial=heuristic(first, args.d),
            heuristic_final=heuristic(last, args.d),
            amgm_bound_final=barron(last) / np.sqrt(args.d),
        )
        runs.append(run)
        print(
            f"start {start}: {run['result']} after {run['num_steps']} steps, R "
            f"{run['R_initial']:.4g} -> {run['R_final']:.4g}, Barron "
            f"{run['barron_initial']:.4g} -> {run['barron_final']:.4g}, "
            f"max|F| {run['constraint_violation_max']:.1e}",
            flush=True,
        )
    out = args.out / "smooth_two_layer_barron.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            dict(
                settings={k: v for k, v in vars(args).items() if k != "out"},
                barron_teacher=barron(teacher),
                runs=runs,
            ),
            indent=1,
        )
    )
    print(f"teacher Barron norm {barron(teacher):.4g}; wrote {out}")


if __name__ == "__main__":
    main()
