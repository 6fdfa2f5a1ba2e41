r"""The quadratically over-parametrised linear model of sparse recovery (Li, Wang,
Arora 2022; Z. Li's open-problems slides): $f_z(u, v) = \langle u\odot u - v\odot v,
z\rangle$ with $z \in \{\pm1\}^d$, $L = \frac1{2n}\sum_i (f_{z_i} - y_i)^2$.

On the zero-loss manifold $\Gamma$, $\operatorname{Tr}\nabla^2 L = \frac1n\sum_i
\|\nabla f_{z_i}\|^2 = 4(\|u\|^2 + \|v\|^2) \ge 4\|u\odot u - v\odot v\|_1$ (equality
iff $u$ and $v$ have disjoint supports), so the flattest interpolant is the
minimum-$\ell_1$ interpolant $\arg\min\{\|w\|_1 : Zw = y\}$ (basis pursuit).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._errors import InputError


class QuadraticLinearModel(eqx.Module):
    r"""$z \mapsto \langle u\odot u - v\odot v, z\rangle$ with trainable `u`, `v`
    (each of length $d$); `w` is the linear predictor $u\odot u - v\odot v$."""

    u: Float[Array, " d"]
    v: Float[Array, " d"]

    def __init__(self, u: ArrayLike, v: ArrayLike):
        u, v = jnp.asarray(u, float), jnp.asarray(v, float)
        if u.ndim != 1 or u.shape != v.shape:
            raise InputError(
                f"u and v must be vectors of the same length, got shapes {u.shape} "
                f"and {v.shape}."
            )
        self.u, self.v = u, v

    @property
    def w(self) -> Float[Array, " d"]:
        return self.u**2 - self.v**2

    def __call__(self, z: Float[Array, " d"]) -> Float[Array, ""]:
        return jnp.dot(self.w, z)


def sparse_recovery_data(
    d: int, n: int, k: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""`(Z, y, w_star)`: $n$ rows $z_i$ uniform on $\{\pm1\}^d$, a $k$-sparse
    $w^*$ (support uniform, entries of random sign and size uniform in [0.5, 1.5]),
    $y = Z w^*$. NumPy float64; the same for a given seed everywhere."""
    if not (d >= 1 and n >= 1 and 1 <= k <= d):
        raise InputError(
            f"Need d >= 1, n >= 1 and 1 <= k <= d; got d={d}, n={n}, k={k}."
        )
    rng = np.random.default_rng(seed)
    Z = rng.choice([-1.0, 1.0], size=(n, d))
    w_star = np.zeros(d)
    support = rng.choice(d, size=k, replace=False)
    w_star[support] = rng.choice([-1.0, 1.0], size=k) * rng.uniform(0.5, 1.5, size=k)
    return Z, Z @ w_star, w_star


def sparse_init(key: jax.Array, d: int, scale: float = 1.0, spread: float = 0.5):
    r"""A start $u, v = $ `scale` $\cdot(1 + $ `spread` $\cdot\xi)$, $\xi$ uniform in
    $[-1, 1]$ (away from the singular points $u_k^2 + v_k^2 = 0$), as a
    [`QuadraticLinearModel`][manifoldflow.models.QuadraticLinearModel]; retract it
    onto $\Gamma$ before solving."""
    ku, kv = jax.random.split(key)
    u = scale * (1 + spread * jax.random.uniform(ku, (d,), minval=-1, maxval=1))
    v = scale * (1 + spread * jax.random.uniform(kv, (d,), minval=-1, maxval=1))
    return QuadraticLinearModel(u, v)


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
