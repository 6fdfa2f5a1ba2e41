r"""Matrix sensing by a (deep) factorisation (Ding et al. 2024; Gatmiry et al. 2023;
Z. Li's open-problems slides): $f_A(W_1, \ldots, W_L) = \langle W_1\cdots W_L, A\rangle$
with Gaussian measurement matrices $A_i$ and a low-rank ground truth,
$L = \frac1{2n}\sum_i (f_{A_i} - y_i)^2$.

On the zero-loss manifold $\operatorname{Tr}\nabla^2 L = \frac1n\sum_i\|\nabla
f_{A_i}\|^2$; for $L = 2$ that is $\frac1n\sum_i(\|A_iV\|_F^2 + \|A_i^\top U\|_F^2)$
(with $W_1 = U$, $W_2 = V^\top$), about $d(\|U\|_F^2 + \|V\|_F^2) \ge 2d\|UV^\top\|_*$
in expectation over $A$: the flattest interpolant is close to the minimum nuclear norm
one, not equal to it for finite $n$.
"""

import functools

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError


class FactorisedSensingModel(eqx.Module):
    r"""$A \mapsto \langle W_1 \cdots W_L, A\rangle$ with trainable square factors."""

    factors: tuple[Float[Array, "d d"], ...]

    def __init__(self, factors):
        factors = tuple(jnp.asarray(W, float) for W in factors)
        if not factors or any(
            W.ndim != 2 or W.shape != factors[0].shape for W in factors
        ):
            raise InputError(
                "factors must be one or more matrices of the same square shape, got "
                f"shapes {[tuple(W.shape) for W in factors]}."
            )
        self.factors = factors

    @property
    def product(self) -> Float[Array, "d d"]:
        return functools.reduce(jnp.matmul, self.factors)

    def __call__(self, A: Float[Array, "d d"]) -> Float[Array, ""]:
        return jnp.sum(self.product * A)


def sensing_data(d: int, rank: int, n: int, seed: int = 0):
    r"""`(A, y, M)`: $n$ Gaussian $d\times d$ matrices $A_i$, a rank-`rank` truth
    $M = PQ^\top / \sqrt{\rm rank}$ ($P, Q$ Gaussian $d\times$ rank), $y_i = \langle
    M, A_i\rangle$. NumPy float64; the same for a given seed everywhere."""
    if not (d >= 1 and n >= 1 and 1 <= rank <= d):
        raise InputError(
            f"Need d >= 1, n >= 1 and 1 <= rank <= d; got d={d}, rank={rank}, n={n}."
        )
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d, d))
    M = rng.standard_normal((d, rank)) @ rng.standard_normal((rank, d)) / np.sqrt(rank)
    return A, np.einsum("ijk,jk->i", A, M), M


def sensing_init(d: int, depth: int, scale: float, seed: int = 0):
    """Gaussian square factors of standard deviation `scale / sqrt(d)` (retract onto
    Gamma before solving)."""
    rng = np.random.default_rng(seed + 10_000)
    return FactorisedSensingModel(
        [scale * rng.standard_normal((d, d)) / np.sqrt(d) for _ in range(depth)]
    )
