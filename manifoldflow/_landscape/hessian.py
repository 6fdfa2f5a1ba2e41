r"""Sharpness of any loss at any parameters, from Hessian-vector products: the largest
Hessian eigenvalue $\lambda_{\max}(\nabla^2 L)$ by Lanczos with a convergence test
and an error bound, and the trace $\operatorname{Tr}\nabla^2 L$ exactly or by
Hutchinson's estimator with a confidence interval.

The loss is a function `loss(params) -> scalar` of a pytree of floating-point arrays
(the coordinates the Hessian is taken in); pass the same function object (or an
`equinox.Module` whose arrays may change) on every call, and the Hessian-vector product
is compiled once per shape.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from .._errors import InputError
from .flatten import checked_parameters, flat_gradient


class EigenEstimate(eqx.Module):
    r"""The largest eigenvalue of a Hessian, as Lanczos found it.

    **Fields:** `value` (the top Ritz value $\theta$), `error` (the residual $r =
    \|Hs - \theta s\|$ of the Ritz pair, floored at the rounding level $64\epsilon
    \max|\text{Ritz values}|$: for a symmetric $H$ some eigenvalue lies within $r$ of
    $\theta$, and with a random start that eigenvalue is the largest one except with
    probability zero), `residual` ($r$), `iterations` (Hessian-vector products),
    `converged` (`error <= rtol |value|`, or an invariant subspace found), `vector`
    (the Ritz vector, flat, unit norm).

    The eigenvalue itself is usually far more accurate than $r$ (its error is about
    $r^2/\text{gap}$), but the gap is not known, so $r$ is what is reported.
    """

    value: float
    error: float
    residual: float
    iterations: int
    converged: bool
    vector: np.ndarray


class TraceEstimate(eqx.Module):
    r"""A Hutchinson estimate of $\operatorname{Tr}\nabla^2 L$: `value` (the sample mean
    of $z^\top H z$ over Rademacher $z$), `standard_error`, `interval` (the
    `confidence` interval from the normal approximation), `num_samples`."""

    value: float
    standard_error: float
    interval: tuple[float, float]
    confidence: float
    num_samples: int


def _product(loss, params, vector):
    flat, gradient = flat_gradient(loss, params)
    return jax.jvp(gradient, (flat,), (vector,))[1]


@eqx.filter_jit
def _hvp(loss, params, vector):
    return _product(loss, params, vector)


@eqx.filter_jit
def _hvp_batch(loss, params, vectors):
    return jax.vmap(lambda v: _product(loss, params, v))(vectors)


def hessian_vector_product(loss, params: PyTree, vector) -> np.ndarray:
    r"""$\nabla^2 L(\text{params})\, v$ (forward over reverse mode).

    **Arguments:** `loss`, a function of the pytree `params`; `vector`, a flat vector
    with one entry per floating-point leaf entry of `params` (ravelled in pytree
    order).

    **Returns:** the product, a flat NumPy vector of the same size.
    """
    params, flat = checked_parameters(params)
    return np.asarray(_hvp(loss, params, jnp.asarray(vector, flat.dtype)))


def hessian_matrix(loss, params: PyTree) -> np.ndarray:
    """The dense Hessian in the flat coordinates of `params` ($P$ products: small
    models only)."""
    params, flat = checked_parameters(params)
    basis = jnp.eye(flat.size, dtype=flat.dtype)
    H = np.asarray(_hvp_batch(loss, params, basis))
    return (H + H.T) / 2


def hessian_trace(loss, params: PyTree, *, batch: int = 256) -> float:
    r"""$\operatorname{Tr}\nabla^2 L$ exactly, as $\sum_i e_i^\top H e_i$ ($P$
    Hessian-vector products, `batch` at a time): for models up to ~$10^4$ parameters;
    use [`manifoldflow.hutchinson_trace`][] beyond."""
    params, flat = checked_parameters(params)
    size = flat.size
    total = 0.0
    for start in range(0, size, batch):
        stop = min(size, start + batch)
        basis = jnp.zeros((batch, size), flat.dtype)
        rows = jnp.arange(stop - start)
        basis = basis.at[rows, start + rows].set(1.0)
        products = np.asarray(_hvp_batch(loss, params, basis))
        total += float(np.sum(products[rows, start + np.asarray(rows)]))
    return total


def hutchinson_trace(
    loss,
    params: PyTree,
    *,
    num_samples: int = 100,
    key: jax.Array | None = None,
    confidence: float = 0.95,
) -> TraceEstimate:
    r"""Hutchinson's estimator $\frac1N\sum_s z_s^\top H z_s$, $z_s$ Rademacher, with
    a `confidence` interval $\pm q\,\hat s/\sqrt N$ ($q$ the normal quantile; the
    estimator's variance is $2\sum_{i\ne j}H_{ij}^2$, estimated by the sample
    variance $\hat s^2$). Needs `num_samples >= 2`."""
    if num_samples < 2:
        raise InputError(
            f"num_samples must be >= 2 for an interval, got {num_samples}."
        )
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence}.")
    params, flat = checked_parameters(params)
    key = jax.random.PRNGKey(0) if key is None else key
    z = jax.random.rademacher(key, (num_samples, flat.size), flat.dtype)
    samples = np.einsum(
        "sp,sp->s", np.asarray(z), np.asarray(_hvp_batch(loss, params, z))
    )
    mean = float(np.mean(samples))
    error = float(np.std(samples, ddof=1) / math.sqrt(num_samples))
    from statistics import NormalDist

    q = NormalDist().inv_cdf(0.5 + confidence / 2)
    return TraceEstimate(
        value=mean,
        standard_error=error,
        interval=(mean - q * error, mean + q * error),
        confidence=confidence,
        num_samples=num_samples,
    )


def hessian_max_eigenvalue(
    loss,
    params: PyTree,
    *,
    rtol: float = 1e-8,
    max_iterations: int | None = None,
    key: jax.Array | None = None,
) -> EigenEstimate:
    r"""$\lambda_{\max}(\nabla^2 L)$ (the largest, not the largest in modulus) by
    Lanczos with full reorthogonalisation from a random start, stopped when the
    residual bound is below `rtol` $|\theta|$ (see [`manifoldflow.EigenEstimate`][]),
    when the Krylov space is invariant (then exact), or after `max_iterations` (default
    $\min(P, 300)$; `converged` is then false). A non-finite Hessian-vector product
    (overflow) gives `value = nan`, not converged.
    """
    if not rtol > 0:
        raise InputError(f"rtol must be > 0, got {rtol}.")
    params, flat = checked_parameters(params)
    if flat.dtype != jnp.float64 and rtol < 1e-6:
        raise InputError(
            f"{flat.dtype} parameters cannot meet rtol = {rtol:g}: pass rtol >= 1e-6 "
            'or enable float64 (jax.config.update("jax_enable_x64", True)).'
        )
    size = flat.size
    limit = min(size, 300) if max_iterations is None else int(max_iterations)
    if limit < 1:
        raise InputError(f"max_iterations must be >= 1, got {max_iterations}.")
    key = jax.random.PRNGKey(0) if key is None else key
    start = np.asarray(jax.random.normal(key, (size,), flat.dtype))
    basis = np.zeros((limit + 1, size))
    basis[0] = start / np.linalg.norm(start)
    alphas, betas = [], []
    value = error = residual = math.nan
    vector = basis[0]
    converged = False
    for k in range(limit):
        w = np.asarray(_hvp(loss, params, jnp.asarray(basis[k], flat.dtype)))
        if not np.all(np.isfinite(w)):  # overflow, e.g. on a diverged path
            value = error = residual = math.nan
            break
        alpha = float(basis[k] @ w)
        w = w - alpha * basis[k] - (betas[-1] * basis[k - 1] if k else 0.0)
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - basis[: k + 1].T @ (basis[: k + 1] @ w)
        beta = float(np.linalg.norm(w))
        alphas.append(alpha)
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        ritz, vectors = np.linalg.eigh(T)
        value = float(ritz[-1])
        residual = beta * abs(vectors[-1, -1])
        error = max(residual, 64 * np.finfo(float).eps * float(np.max(np.abs(ritz))))
        vector = basis[: k + 1].T @ vectors[:, -1]
        scale = max(abs(value), np.finfo(float).tiny)
        if beta <= 1e3 * np.finfo(float).eps * scale or k + 1 == size:
            converged = True
            break
        if error <= rtol * scale:
            converged = True
            break
        betas.append(beta)
        basis[k + 1] = w / beta
    return EigenEstimate(
        value=value,
        error=float(error),
        residual=float(residual),
        iterations=len(alphas),
        converged=converged,
        vector=vector / np.linalg.norm(vector),
    )
