"""The baseline a careful researcher writes by hand: the two-layer sharpness flow as a
NumPy closed form on the full theta (m x d), integrated with SciPy's DOP853 until
|P_T grad R| <= eps (no retraction). Standalone: NumPy and SciPy only.

Profiled: two (m, n, d) matrix products per evaluation (grad R = C X, and J grad R
through the n x n data Gram), and a stop event that re-uses the step end's (FSAL)
evaluation. The n x n system is solved with NumPy (`numpy.linalg.solve`), not
`scipy.linalg.cho_factor`: NumPy and SciPy each bring their own OpenBLAS, and
alternating between the two thread pools (NumPy's matrix products, SciPy's Cholesky)
made each 128 x 128 Cholesky take 33 ms on a 2-core CPU (the profile: 14.7 s of a
30.6 s solve), where the whole solve takes a few ms.

    python benchmarks/scipy_baseline.py DATA.npz [--stationarity 1e-8]

DATA.npz holds X (n, d), y (n,), a (m,), theta0 (m, d); cubic-linear activation,
L = (1/n) sum (f - y)^2. Prints one JSON line.
"""

import time


START = time.perf_counter()
import argparse
import json

import numpy as np
import scipy.integrate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--stationarity", type=float, default=1e-8)
    parser.add_argument("--rtol", type=float, default=1e-11)
    parser.add_argument("--atol", type=float, default=1e-13)
    args = parser.parse_args()
    with np.load(args.data) as f:
        X, y, a, theta0 = f["X"], f["y"], f["a"], f["theta0"]
    m, d = theta0.shape
    n = y.size
    G = X @ X.T
    diag = (2.0 / n) * np.diag(G)
    cache = {}

    def riemannian_gradient(theta):
        # grad R = C X, so J grad R = colsum(B * (C X X^T)) uses the n x n data Gram:
        # two (m, n, d) products per evaluation instead of four; no finiteness scans.
        Z = theta.reshape(m, d) @ X.T
        B = a[:, None] * (1 + Z**2)  # a_j phi'(z_ji)
        C = (4 * diag) * B * a[:, None] * Z  # 2 w_i |x_i|^2 a_j phi' a_j phi''
        rhs = np.einsum("ji,ji->i", B, C @ G)
        lam = np.linalg.solve((B.T @ B) * G, rhs)
        return (C - B * lam) @ X

    def vector_field(t, theta):
        g = riemannian_gradient(theta)
        cache["y"], cache["norm"] = theta, np.linalg.norm(g)
        return -g.ravel()

    def stationary(t, theta):
        # Re-use the FSAL evaluation at the step end when it is the same point.
        if cache.get("y") is not theta and not np.array_equal(cache.get("y"), theta):
            vector_field(t, theta)
        return np.log(cache["norm"]) - np.log(args.stationarity)

    stationary.terminal = True
    stationary.direction = -1
    setup = time.perf_counter() - START
    t0 = time.perf_counter()
    sol = scipy.integrate.solve_ivp(
        vector_field,
        (0.0, 1e7),
        theta0.ravel(),
        method="DOP853",
        rtol=args.rtol,
        atol=args.atol,
        events=stationary,
    )
    solve = time.perf_counter() - t0
    theta = sol.y[:, -1].reshape(m, d)
    Z = theta @ X.T
    F = np.sum(a[:, None] * (Z + Z**3 / 3), axis=0) - y
    R = np.sum(diag * np.sum((a[:, None] * (1 + Z**2)) ** 2, axis=0))
    print(
        json.dumps(
            dict(
                status=int(sol.status),
                message=sol.message,
                t_final=float(sol.t[-1]),
                nfev=int(sol.nfev),
                num_steps=int(sol.t.size - 1),
                grad_norm_final=float(
                    np.linalg.norm(riemannian_gradient(theta.ravel()))
                ),
                R_final=float(R),
                constraint_violation_final=float(np.max(np.abs(F))),
                setup_seconds=setup,
                solve_seconds=solve,
                script_seconds=time.perf_counter() - START,
            )
        )
    )


if __name__ == "__main__":
    main()
