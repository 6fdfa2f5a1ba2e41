r"""Deep linear networks for regression (Marion & Chizat 2024): the model
$x \mapsto p^\top W_L \cdots W_1 x$, its risk, the paper's data and initialisations.

Conventions (the authors' code): $W_k \in \mathbb R^{d_k \times d_{k-1}}$, $d_0 = d$;
$w_{\rm prod} = W_1^\top \cdots W_L^\top p$; risk $R(W) = \frac1n\|y - X w_{\rm
prod}\|^2$ (no $\frac12$); $\hat\Sigma = X^\top X / n$; $w^*$ the minimum-norm
least-squares solution.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._errors import InputError


class DeepLinearNet(eqx.Module):
    r"""$f_W(x) = p^\top W_L \cdots W_1 x$ with trainable `weights` $(W_1, \ldots,
    W_L)$, $W_k$ of shape $(d_k, d_{k-1})$, and a fixed vector `p` of length $d_L$
    ($d_L = 1$, $p = 1$ for the fully connected network of the paper's Section 4).

    **Raises** `manifoldflow.InputError` for no matrices, non-matrices, consecutive
    shapes that do not chain, or `p` of the wrong length.
    """

    weights: tuple[Float[Array, "d_k d_km1"], ...]
    p: Float[Array, " d_L"]

    def __init__(self, weights, p: ArrayLike | None = None):
        weights = tuple(jnp.asarray(W) for W in weights)
        if not weights:
            raise InputError("A deep linear network needs depth >= 1 (no matrices).")
        for k, W in enumerate(weights, start=1):
            if W.ndim != 2:
                raise InputError(f"W_{k} must be a matrix, got shape {W.shape}.")
        for k in range(1, len(weights)):
            if weights[k].shape[1] != weights[k - 1].shape[0]:
                raise InputError(
                    f"W_{k + 1} has shape {weights[k].shape} but W_{k} has "
                    f"{weights[k - 1].shape}: W_k must be (d_k, d_(k-1)), so W_{k + 1} "
                    f"needs {weights[k - 1].shape[0]} columns."
                )
        d_last = weights[-1].shape[0]
        p = jnp.ones(d_last, weights[0].dtype) if p is None else jnp.asarray(p)
        if p.shape != (d_last,):
            raise InputError(
                f"p must have shape ({d_last},) to match W_L of shape "
                f"{weights[-1].shape}, got {p.shape}."
            )
        self.weights = weights
        self.p = p

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def widths(self) -> tuple[int, ...]:
        """$(d_0, d_1, \\ldots, d_L)$."""
        return (self.weights[0].shape[1], *(W.shape[0] for W in self.weights))

    def product(self) -> Float[Array, " d"]:
        r"""$w_{\rm prod} = W_1^\top \cdots W_L^\top p$."""
        return end_to_end(self.weights, self.p)

    def __call__(self, x: Float[Array, " d"]) -> Array:
        return self.product() @ x

    def filter_spec(self):
        """Train the matrices, not `p`."""
        spec = jax.tree_util.tree_map(lambda _: False, self)
        return eqx.tree_at(
            lambda net: net.weights, spec, tuple(True for _ in self.weights)
        )


def end_to_end(weights, p) -> Array:
    r"""$w_{\rm prod} = (W_L\cdots W_1)^\top p$, computed right to left as
    $W_1^\top(\cdots(W_L^\top p))$: $L$ matrix-vector products."""
    return functools.reduce(lambda v, W: W.T @ v, reversed(weights), p)


def risk(weights, p, X, y) -> Array:
    r"""The risk $R(W) = \frac1n\|y - X w_{\rm prod}\|^2$ of Marion & Chizat (2024)
    (no factor $\frac12$), $w_{\rm prod} = W_1^\top\cdots W_L^\top p$, for the list
    of layers `weights`, the output vector `p` and data `X` $(n, d)$, `y` $(n,)$."""
    return jnp.mean((X @ end_to_end(weights, p) - y) ** 2)


def deep_linear_data(
    n: int = 50, d: int = 5, seed: int = 0, *, noise: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The data of the paper's Appendix C: $X \sim \mathcal N(0, 1)^{n\times d}$,
    $\tilde y = X\tilde w + \text{noise}\cdot\varepsilon$ ($\tilde w, \varepsilon$
    standard Gaussian), then $y = \tilde y / \|\tilde w^*\|$ with $\tilde w^*$ the
    minimum-norm least-squares solution, so that $\|w^*\| = 1$.

    **Returns** NumPy arrays `(X (n, d), y (n,), w_star (d,))`.
    """
    if n < 1 or d < 1:
        raise InputError(f"n and d must be >= 1, got n = {n}, d = {d}.")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w_tilde = rng.standard_normal(d)
    y = X @ w_tilde + noise * rng.standard_normal(n)
    w_star = np.linalg.pinv(X) @ y
    norm = np.linalg.norm(w_star)
    if not norm > 0:
        raise InputError("The least-squares solution is 0: the theorems need w* != 0.")
    return X, y / norm, w_star / norm


def gaussian_init(
    key: jax.Array,
    widths,
    scale: float,
    *,
    zero: int | None = None,
    p: ArrayLike | None = None,
) -> DeepLinearNet:
    r"""All entries i.i.d. $\mathcal N(0, \text{scale}^2)$ (the paper's Figure 1), with
    `widths` $= (d_0, \ldots, d_L)$; `zero = k` sets $W_k$ to zero (1-based; the
    setting in which (A1) is known to hold)."""
    widths = _check_widths(widths)
    if not scale >= 0:
        raise InputError(f"scale must be >= 0, got {scale}.")
    keys = jax.random.split(key, len(widths) - 1)
    weights = [
        scale * np.asarray(jax.random.normal(k, (d_out, d_in), jnp.float64))
        for k, d_in, d_out in zip(keys, widths[:-1], widths[1:])
    ]
    if zero is not None:
        if not 1 <= zero <= len(weights):
            raise InputError(f"zero = {zero} must be a layer in 1..{len(weights)}.")
        weights[zero - 1] = np.zeros_like(weights[zero - 1])
    return DeepLinearNet(weights, p)


def residual_init(key: jax.Array, depth: int, d: int, s: float) -> DeepLinearNet:
    r"""$W_k = I_d + \frac{s}{\sqrt{Ld}} N_k$, $(N_k)_{ab} \sim \mathcal N(0, 1)$, and a
    random unit vector $p \in \mathbb R^d$ (the paper's eq. (2) and Section 5)."""
    if depth < 1:
        raise InputError(f"depth must be >= 1, got {depth}.")
    if d < 1:
        raise InputError(f"d must be >= 1, got {d}.")
    key_w, key_p = jax.random.split(key)
    noise = np.asarray(jax.random.normal(key_w, (depth, d, d), jnp.float64))
    weights = [np.eye(d) + s / np.sqrt(depth * d) * N for N in noise]
    p = np.asarray(jax.random.normal(key_p, (d,), jnp.float64))
    return DeepLinearNet(weights, p / np.linalg.norm(p))


def _check_widths(widths) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2:
        raise InputError(
            f"widths = {widths}: give (d_0, ..., d_L) with depth L >= 1 (at least two "
            "numbers)."
        )
    if min(widths) < 1:
        raise InputError(f"widths must be >= 1, got {widths}.")
    return widths


def _whitened_residual(weights, args):
    p, root, w_star = args
    return root @ (end_to_end(weights, p) - w_star)


def minimiser_manifold(weights, p, X, y):
    r"""The set of minimisers of the risk, $\{W : \hat\Sigma^{1/2}(w_{\rm prod}(W) -
    w^*) = 0\}$ ($d$ equations, $w^*$ the minimum-norm least-squares solution), as a
    [`manifoldflow.ConstraintManifold`][] through `weights` (any point near the set).

    With curvature weights 2 its $R$ is $2\operatorname{Tr}(J^\top\hat\Sigma J) =
    \operatorname{Tr}\nabla^2 R(W)$ at every minimiser ($J = \partial w_{\rm
    prod}/\partial W$; the Hessian there is $2J^\top\hat\Sigma J$ even with noisy
    labels, since $\nabla R^1(w^*) = 0$), so `solve_flow` on it runs the trace flow
    on the minimisers. For $\hat\Sigma$ of full rank the equations are exactly
    $w_{\rm prod} = w^*$.
    """
    from .._manifold import ConstraintManifold

    X, y = np.asarray(X, float), np.asarray(y, float)
    Sigma = X.T @ X / X.shape[0]
    values, vectors = np.linalg.eigh(Sigma)
    root = (vectors * np.sqrt(np.maximum(values, 0.0))) @ vectors.T
    w_star = np.linalg.pinv(X) @ y
    args = (jnp.asarray(p), jnp.asarray(root), jnp.asarray(w_star))
    return ConstraintManifold(
        _whitened_residual,
        tuple(jnp.asarray(W) for W in weights),
        args,
        weights=2.0 * np.ones(X.shape[1]),
    )


class DeepLinearRisk(eqx.Module):
    r"""$W \mapsto \frac1n\|y - X w_{\rm prod}(W)\|^2$ for fixed `p`, `X`, `y` (a
    module, so that the compiled gradient and Hessian products are reused)."""

    p: Float[Array, " dL"]
    X: Float[Array, "n d"]
    y: Float[Array, " n"]

    def __call__(self, weights):
        return risk(weights, self.p, self.X, self.y)
