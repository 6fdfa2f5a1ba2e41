"""The hand-written NumPy closed form of the two-layer sharpness flow: what a
researcher writes for `scipy.integrate.solve_ivp` (the peer the harness compares
against)."""

import numpy as np


class NumpyTwoLayerFlow:
    r"""$-P_T\nabla R$ for the cubic-linear two-layer net on the full $\theta$
    ($m\times d$, flattened), $L = (1/n)\sum_i (f_i - y_i)^2$, in closed form:
    with $Z = \theta X^\top$, $B = a(1 + Z^2)$ (the Jacobian is
    $J_i = \sum_j B_{ji} e_j \otimes x_i$), $C = 4\,\mathrm{diag}(w_i G_{ii})\,aBZ$
    and the Gram matrix $(B^\top B)\odot G$, one linear solve per evaluation.
    `project` is a Gauss--Newton projection onto $\Gamma$; `reduced` maps to the
    manifold's reduced coordinates (so errors are measured in the same norm)."""

    def __init__(self, manifold, theta0):
        self.X = np.asarray(manifold.X)
        self.y = np.asarray(manifold.y)
        self.a = np.asarray(manifold.a)
        self.basis = np.asarray(manifold.basis)
        self.theta0 = np.asarray(theta0)
        self.G = self.X @ self.X.T
        self.diag = np.asarray(manifold.weights) * np.diag(self.G)

    def __call__(self, t, theta):
        X, G, a = self.X, self.G, self.a
        m, d = self.theta0.shape
        Z = theta.reshape(m, d) @ X.T
        B = a[:, None] * (1 + Z**2)
        C = (4 * self.diag) * B * a[:, None] * Z
        rhs = np.einsum("ji,ji->i", B, C @ G)
        # NumPy's solve, not SciPy's Cholesky: NumPy and SciPy each bring their own
        # OpenBLAS, and alternating between the two thread pools made each small
        # Cholesky 10-30 ms on a 2-core CPU.
        lam = np.linalg.solve((B.T @ B) * G, rhs)
        return -((C - B * lam) @ X).ravel()

    def project(self, theta, tol=1e-14, max_steps=20):
        m, d = self.theta0.shape
        theta = theta.reshape(m, d)
        for _ in range(max_steps):
            Z = theta @ self.X.T
            F = np.sum(self.a[:, None] * (Z + Z**3 / 3), axis=0) - self.y
            if np.max(np.abs(F)) <= tol:
                break
            B = self.a[:, None] * (1 + Z**2)
            lam = np.linalg.solve((B.T @ B) * self.G, F)
            theta = theta - (B * lam) @ self.X
        return theta

    def reduced(self, theta):
        return (theta.reshape(self.theta0.shape) @ self.basis).ravel()
