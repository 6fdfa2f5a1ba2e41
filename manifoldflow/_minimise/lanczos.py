r"""The extreme eigenvalues of the Riemannian Hessian on the tangent space, by
Lanczos with full reorthogonalisation: a pure function (it runs under `jax.jit` and
`jax.vmap`), matrix-free (one Hessian-vector product per iteration)."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class TangentSpectrum(eqx.Module):
    r"""Ritz pairs of $\operatorname{Hess} R$ restricted to $T_\theta\Gamma$.

    **Fields:** `values` (ascending Ritz values), `residuals` ($\|Hs - \vartheta
    s\|$ of each Ritz pair: an eigenvalue lies within it), `vectors` (the Ritz
    vectors, rows of unit norm, tangent), `iterations` (Hessian-vector products).
    """

    values: Float[Array, " k"]
    residuals: Float[Array, " k"]
    vectors: Float[Array, "k D"]
    iterations: int = eqx.field(static=True)


def tangent_lanczos(
    hessian: Callable[[Array], Array],
    project: Callable[[Array], Array],
    key: PRNGKeyArray,
    dimension: int,
    num_iterations: int,
    locked: Float[Array, "m D"] | None = None,
) -> TangentSpectrum:
    r"""`num_iterations` steps of Lanczos on $v \mapsto$ `hessian(v)` over the tangent
    space (`project`: $P_T$), from a random tangent start, with every new vector
    orthogonalised twice against all earlier ones (and against the rows of `locked`,
    which are deflated: unit tangent vectors already found).

    Where the Krylov space becomes invariant (an exact breakdown), Lanczos goes on
    from a new random vector orthogonal to everything found so far, so the Ritz
    values are always eigenvalues of genuine blocks, and repeated eigenvalues appear
    as often as the restarts reach them. `num_iterations` must not exceed the
    tangent dimension less the locked vectors.
    """
    dtype = jnp.result_type(float)
    k = num_iterations
    basis = jnp.zeros((k, dimension), dtype)
    locked = jnp.zeros((0, dimension), dtype) if locked is None else locked

    def orthogonalise(w, basis):
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
            w = w - locked.T @ (locked @ w)
        return w

    def fresh(j, basis):
        z = jax.random.normal(jax.random.fold_in(key, j), (dimension,), dtype)
        z = orthogonalise(project(z), basis)
        return z / jnp.linalg.norm(z)

    def body(j, carry):
        basis, alphas, betas = carry
        v = basis[j]
        w = hessian(v)
        alpha = jnp.vdot(v, w)
        w = orthogonalise(w, basis)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(jnp.max(jnp.abs(alphas)), jnp.abs(alpha))
        breakdown = beta <= 1e3 * jnp.finfo(dtype).eps * jnp.maximum(scale, 1e-300)
        nxt = lax.cond(
            breakdown,
            lambda: fresh(j + 1, basis),
            lambda: w / jnp.where(beta > 0, beta, 1),
        )
        # Within a block, beta couples v_j and v_{j+1}; across a restart it is 0.
        beta = jnp.where(breakdown, 0.0, beta)
        row = jnp.minimum(j + 1, k - 1)
        basis = jnp.where(j + 1 < k, basis.at[row].set(nxt), basis)
        return basis, alphas.at[j].set(alpha), betas.at[j].set(beta)

    basis = basis.at[0].set(fresh(0, basis))
    zeros = jnp.zeros(k, dtype)
    basis, alphas, betas = lax.fori_loop(0, k, body, (basis, zeros, zeros))
    T = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    values, vectors = jnp.linalg.eigh(T)
    # The residual of Ritz pair s: |beta_k * s[k-1]| (the last coupling, to the
    # vector that was never added).
    residuals = jnp.abs(betas[-1] * vectors[-1, :])
    ritz = vectors.T @ basis
    ritz = ritz / jnp.linalg.norm(ritz, axis=1, keepdims=True)
    return TangentSpectrum(values, residuals, ritz, k)
