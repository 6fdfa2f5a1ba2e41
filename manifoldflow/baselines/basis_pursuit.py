r"""Basis pursuit, the convex program the sparse-recovery flow is checked against: the
flattest interpolant of $f_z(u, v) = \langle u\odot u - v\odot v, z\rangle$ is the
minimum-$\ell_1$ interpolant (`manifoldflow.models.QuadraticLinearModel`)."""

import numpy as np
from jaxtyping import ArrayLike


def basis_pursuit(Z: ArrayLike, y: ArrayLike, tol: float = 1e-12):
    r"""The minimum-$\ell_1$ interpolant $\arg\min\{\|w\|_1 : Zw = y\}$ by
    `scipy.optimize.linprog` (HiGHS) on $w = p - q$, $p, q \ge 0$, then polished:
    on the support found, the interpolation equations are re-solved by least squares
    so that $Zw = y$ holds to rounding (the LP's own feasibility tolerance is about
    1e-9). Returns `(w, residual)` with `residual` $= \max|Zw - y|$; raises
    `RuntimeError` when the LP fails."""
    import scipy.optimize

    Z, y = np.asarray(Z, float), np.asarray(y, float)
    n, d = Z.shape
    result = scipy.optimize.linprog(
        np.ones(2 * d),
        A_eq=np.hstack([Z, -Z]),
        b_eq=y,
        bounds=(0, None),
        method="highs",
        options=dict(
            primal_feasibility_tolerance=1e-10, dual_feasibility_tolerance=1e-10
        ),
    )
    if result.status != 0:
        raise RuntimeError(f"basis pursuit LP failed: {result.message}")
    w = result.x[:d] - result.x[d:]
    support = np.abs(w) > tol * max(1.0, np.max(np.abs(w)))
    if 0 < support.sum() <= n:
        polished = np.zeros(d)
        polished[support] = np.linalg.lstsq(Z[:, support], y, rcond=None)[0]
        # Keep the polish only if it keeps the signs (it is the same vertex).
        if np.all(np.sign(polished[support]) == np.sign(w[support])):
            w = polished
    return w, float(np.max(np.abs(Z @ w - y)))


def l1_minimiser_spread(Z: ArrayLike, y: ArrayLike, l1: float, seed: int = 0) -> float:
    r"""How far apart the minimum-$\ell_1$ interpolants lie: the range of a random
    linear functional $c^\top w$ ($|c|_2 = 1$) over $\{w : Zw = y,\ \|w\|_1 \le
    \ell_1^*(1 + 10^{-10})\}$, from two LPs. About 0 when basis pursuit has a unique
    solution; with $\pm1$ measurements and small $d$ ties are common, and then any
    point of that face is a flattest interpolant."""
    import scipy.optimize

    Z, y = np.asarray(Z, float), np.asarray(y, float)
    n, d = Z.shape
    c = np.random.default_rng(seed).standard_normal(d)
    c /= np.linalg.norm(c)
    values = []
    for sign in (1.0, -1.0):
        result = scipy.optimize.linprog(
            sign * np.concatenate([c, -c]),
            A_ub=np.ones((1, 2 * d)),
            b_ub=[l1 * (1 + 1e-10)],
            A_eq=np.hstack([Z, -Z]),
            b_eq=y,
            bounds=(0, None),
            method="highs",
        )
        if result.status != 0:
            raise RuntimeError(f"l1-face LP failed: {result.message}")
        values.append(sign * result.fun)
    return float(values[1] - values[0])
