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
