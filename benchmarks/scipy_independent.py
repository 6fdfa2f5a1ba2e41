"""Independent SciPy baseline: projected Riemannian gradient flow of the sharpness.

This is a separate, independently written version of the mathematics that the
project's other SciPy baseline implements, written from the equations only. It is
meant as a cross-check of that baseline.

Model (float64): f_theta(x) = sum_j a_j phi(theta_j . x), phi(z) = z + z^3/3,
with data X (n, d), targets y (n,), fixed weights a (m,), start theta0 (m, d).
Constraint manifold M = {theta : F(theta) = 0}, F_i = f_theta(x_i) - y_i.
Sharpness R(theta) = (2/n) sum_i sum_j a_j^2 phi'(theta_j . x_i)^2 ||x_i||^2.
Flow: dtheta/dt = -P_T grad R, P_T = I - J^T (J J^T)^{-1} J (J = dF/dtheta),
integrated with solve_ivp(DOP853, rtol=1e-11, atol=1e-13) on t in (0, 1e7) and
stopped by a terminal event when ||P_T grad R|| <= eps. J is never formed as a
matrix: J J^T = (B^T B) * (X X^T) elementwise with B_ji = a_j phi'(theta_j . x_i).

Run:  python benchmarks/scipy_independent.py DATA.npz [--stationarity 1e-8]
(DATA.npz holds keys X, y, a, theta0). Prints one JSON line with the results.
"""
import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402


def phi(z):
    return z + z ** 3 / 3.0


def dphi(z):
    return 1.0 + z ** 2


class Problem:
    def __init__(self, X, y, a, shape):
        self.X, self.y, self.a, self.shape = X, y, a, shape
        self.n = X.shape[0]
        self.gram = X @ X.T                      # (n, n)
        self.sq = np.einsum("id,id->i", X, X)    # ||x_i||^2
        self._key = None                         # cache of the last evaluation
        self._val = None

    def residual(self, theta):
        z = theta @ self.X.T                     # (m, n), z_ji
        return self.a @ phi(z) - self.y

    def sharpness(self, theta):
        z = theta @ self.X.T
        return (2.0 / self.n) * np.sum((self.a ** 2)[:, None] * dphi(z) ** 2 * self.sq[None, :])

    def grad_sharpness(self, theta):
        # dR/dtheta_j = (2/n) sum_i a_j^2 * 2 phi'(z) phi''(z) ||x_i||^2 x_i, phi'' = 2z
        z = theta @ self.X.T
        w = (self.a ** 2)[:, None] * 4.0 * z * dphi(z) * self.sq[None, :]
        return (2.0 / self.n) * (w @ self.X)

    def jac(self, theta):
        """B (m, n) with J[i, (j, :)] = B_ji x_i."""
        return self.a[:, None] * dphi(theta @ self.X.T)

    def projected_grad(self, theta):
        """P_T grad R at theta (m, d), cached on the exact point."""
        key = theta.tobytes()
        if key == self._key:
            return self._val
        g = self.grad_sharpness(theta)
        B = self.jac(theta)
        Jg = np.sum(B * (g @ self.X.T), axis=0)          # (n,)
        JJt = (B.T @ B) * self.gram                      # (n, n)
        lam = np.linalg.solve(JJt, Jg)
        v = g - (B * lam[None, :]) @ self.X              # g - J^T lam
        self._key, self._val = key, v
        return v

    def rhs(self, t, y):
        return -self.projected_grad(y.reshape(self.shape)).ravel()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--stationarity", type=float, default=1e-8)
    args = ap.parse_args()

    D = np.load(args.data)
    X = np.asarray(D["X"], dtype=np.float64)
    y = np.asarray(D["y"], dtype=np.float64)
    a = np.asarray(D["a"], dtype=np.float64)
    theta0 = np.asarray(D["theta0"], dtype=np.float64)
    prob = Problem(X, y, a, theta0.shape)
    eps = args.stationarity

    def event(t, y):
        return np.linalg.norm(prob.projected_grad(y.reshape(prob.shape))) - eps

    event.terminal = True
    event.direction = -1

    t_setup = time.perf_counter()
    sol = solve_ivp(prob.rhs, (0.0, 1e7), theta0.ravel(), method="DOP853",
                    rtol=1e-11, atol=1e-13, events=event)
    t_solve = time.perf_counter()

    theta = sol.y[:, -1].reshape(prob.shape)
    prob._key = None  # recompute at the final point
    out = {
        "status": int(sol.status),
        "t_final": float(sol.t[-1]),
        "nfev": int(sol.nfev),
        "num_steps": int(len(sol.t) - 1),
        "grad_norm_final": float(np.linalg.norm(prob.projected_grad(theta))),
        "R_final": float(prob.sharpness(theta)),
        "constraint_violation_final": float(np.max(np.abs(prob.residual(theta)))),
        "setup_seconds": t_setup - _T0,
        "solve_seconds": t_solve - t_setup,
        "script_seconds": time.perf_counter() - _T0,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
