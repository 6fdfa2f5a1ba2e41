"""Does warm-starting the CG projector from the previous step's multipliers pay?

Along a solved trajectory of the two-layer flow, counts the CG iterations needed for
the multipliers at each accepted step from a zero start and from the multipliers of
the previous accepted step, and times both solves.

    python benchmarks/cg_warm_start.py [--m 256 --d 1024 --n 128]

Writes benchmarks/results/cg_warm_start.json.
"""

import argparse

import jax


jax.config.update("jax_enable_x64", True)
import equinox as eqx
import lineax as lx
import manifoldflow as mf
import numpy as np
from _common import machine, time_call, two_layer_data, write_json
from manifoldflow.models import TwoLayerManifold


@eqx.filter_jit
def cg_multipliers(manifold, theta, guess, rtol):
    lin = manifold.linearise(theta)
    jac = lin.jacobian
    rhs = jac.mv(lin.gradient)
    operator = lx.FunctionLinearOperator(
        lambda lam: jac.mv(jac.transpose().mv(lam)),
        jax.eval_shape(lambda: rhs),
        lx.positive_semidefinite_tag,
    )
    solver = lx.CG(rtol=rtol, atol=1e-15, max_steps=10 * rhs.shape[0])
    sol = lx.linear_solve(operator, rhs, solver, options=dict(y0=guess), throw=False)
    return sol.value, sol.stats["num_steps"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--m", type=int, default=256)
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--rtol", type=float, default=1e-13)
    args = parser.parse_args()
    X, y, net = two_layer_data(args.m, args.d, args.n)
    manifold = TwoLayerManifold(net, X, y)
    sol = mf.solve_flow(manifold, stationarity=1e-8)
    cold, warm, cold_t, warm_t = [], [], [], []
    previous = None
    zero = np.zeros(args.n)
    for theta in sol.ys:
        lam, k_cold = cg_multipliers(manifold, theta, zero, args.rtol)
        cold.append(int(k_cold))
        if previous is not None:
            _, k_warm = cg_multipliers(manifold, theta, previous, args.rtol)
            warm.append(int(k_warm))
        previous = lam
    theta, guess = sol.ys[len(sol.ys) // 2], previous
    cold_t = time_call(cg_multipliers, manifold, theta, zero, args.rtol)[1]
    warm_t = time_call(cg_multipliers, manifold, theta, guess, args.rtol)[1]
    vector_field = eqx.filter_jit(lambda flow, theta: flow(0.0, theta, None))
    timings = {
        f"vector_field_seconds_{name}": time_call(
            vector_field, mf.SharpnessFlow(manifold, projector), theta
        )[1]
        for name, projector in [("cholesky", mf.CholeskyProjector()),
                                ("cg_cold", mf.CGProjector(rtol=args.rtol))]
    }
    result = dict(
        machine=machine(), m=args.m, d=args.d, n=args.n, cg_rtol=args.rtol,
        steps=len(sol.ys) - 1, iterations_cold_median=float(np.median(cold)),
        iterations_warm_median=float(np.median(warm)), iterations_cold=cold,
        iterations_warm=warm, solve_seconds_cold=cold_t, solve_seconds_warm=warm_t,
        **timings,
    )
    print({k: v for k, v in result.items() if not isinstance(v, list)})
    write_json("cg_warm_start", result)


if __name__ == "__main__":
    main()
