r"""The linearisation of a per-example model without its Jacobian matrix.

For $F_i(\theta) = f_\theta(x_i) - y_i$ the flow needs products with $J$ and
$J^\top$, the sharpness $R = \sum_i w_i \|\nabla f_i\|^2$ and its gradient
$\nabla R = 2\sum_i w_i \nabla^2 f_i\, \nabla f_i$. Here

- $Jv$ and $J^\top u$ come from one `jax.linearize` of the batched model (its
  forward pass over the $n$ examples is stored once, then each product is one
  forward-mode or one reverse-mode pass): memory $O(n \cdot \text{activations})$;
- $R$ and $\nabla R$ come from per-example forward-over-reverse products
  $\nabla^2 f_i\,\nabla f_i$, `chunk` examples at a time in a `lax.scan` that sums
  them: memory $O(\text{chunk}\cdot D)$, never $O(n\cdot D)$;
- the Gram matrix $JJ^\top$ ($n \times n$) is formed block by block from two
  chunks of per-example gradients at a time, for a Cholesky solve of the
  multipliers. Conjugate gradients on $\lambda \mapsto J(J^\top\lambda)$ avoid it
  but need, at the accuracy of a Cholesky solve, several times $n$ iterations on
  the Jacobians of real networks (`benchmarks/generic_scaling.py`), each a
  forward and a reverse pass over all $n$ examples: more than forming $JJ^\top$.
"""

import math
import os
from collections.abc import Callable

import jax
import jax.lax as lax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, Scalar


_CHUNK_BYTES = 2**31
"""Most bytes of per-example vectors held at once (2 GiB; at most an eighth of the
memory available). Larger chunks are much faster: the per-example products of a
chunk are matrix products of width `chunk` (at D = 1e6, n = 256 one evaluation took
47 s in chunks of 4, 16 s in chunks of 33 and 4.1 s in chunks of 128)."""

DENSE_COPIES = 4
r"""Peak memory of the dense path in units of its $n \times D$ Jacobian: the matrix,
the reverse pass through the per-example gradients and its temporaries (measured:
about 3.4, `benchmarks/generic_scaling.py`)."""


def default_chunk(n: int, D: int, itemsize: int) -> int:
    """Examples per chunk: `_CHUNK_BYTES` (or an eighth of `available_memory()`, if
    less) of per-example vectors, four of size D per example (the gradient, its
    tangent and their residuals; measured about 3.1), at least 1."""
    budget = min(_CHUNK_BYTES, available_memory() // 8)
    return max(1, min(n, budget // max(1, 4 * D * itemsize)))


def available_memory() -> int:
    """Bytes the default device can hold: its allocator's limit on an accelerator,
    the host's available memory on CPU (`MemAvailable`, else total physical)."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"])
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def dense_fits(n: int, D: int, itemsize: int) -> bool:
    """Whether the dense path's `DENSE_COPIES` n x D arrays take at most half of
    `available_memory()`."""
    return DENSE_COPIES * n * D * itemsize <= available_memory() // 2


def jacobian_operator(
    constraint: Callable[[Array], Array], theta: Float[Array, " D"]
) -> lx.FunctionLinearOperator:
    r"""$J$ at `theta` as a lineax operator: `mv` is a forward-mode product through
    the stored linearisation, `transpose().mv` its reverse-mode transpose."""
    _, jvp = jax.linearize(constraint, theta)
    return lx.FunctionLinearOperator(
        jvp, jax.ShapeDtypeStruct(theta.shape, theta.dtype)
    )


def sharpness_and_gradient(
    output: Callable[[Array, Array], Scalar],
    theta: Float[Array, " D"],
    X: Array,
    weights: Float[Array, " n"],
    chunk: int,
) -> tuple[Scalar, Float[Array, " D"], Float[Array, " n"], Float[Array, "n n"]]:
    r"""$R = \sum_i w_i\|\nabla f_i\|^2$, $\nabla R = 2\sum_i w_i \nabla^2 f_i
    \nabla f_i$, the squared norms $\|\nabla f_i\|^2$ and the Gram matrix $G_{ij} =
    \nabla f_i \cdot \nabla f_j$, for
    `output(theta, x_i)` $= f_\theta(x_i)$, over chunks of `chunk` examples (the
    last chunk padded with weight 0).

    An outer scan over chunks $a$ takes each example's gradient and its
    forward-over-reverse product; an inner scan over chunks $b$ recomputes the
    gradients of chunk $b$ for the block $G_{ab}$ (one matrix product). So two
    chunks of gradients are held at a time, and the Gram matrix costs $n^2/c$
    per-example gradients on top of the $2n^2D$ flops of its products, which every
    way of forming it pays. Under `jax.jit`, an unused Gram matrix (an iterative
    projector) is never computed: its inner scan is dead code.
    """
    n = X.shape[0]
    num_chunks = math.ceil(n / chunk)
    pad = num_chunks * chunk - n
    if pad:
        X = jnp.concatenate([X, jnp.broadcast_to(X[:1], (pad,) + X.shape[1:])])
        weights = jnp.concatenate([weights, jnp.zeros(pad, weights.dtype)])
    X = X.reshape((num_chunks, chunk) + X.shape[1:])
    weights = weights.reshape(num_chunks, chunk)

    def per_example(x):
        gradient, hessian_product = jax.linearize(
            lambda t: jax.grad(output)(t, x), theta
        )
        return gradient, hessian_product(gradient)

    def gradients(xs):
        return jax.vmap(jax.grad(output), in_axes=(None, 0))(theta, xs)

    def outer(total, inputs):
        xs, ws = inputs
        grads, products = jax.vmap(per_example)(xs)
        squares = jnp.sum(grads**2, axis=1)
        value, gradient = total
        total = (value + ws @ squares, gradient + 2 * (ws @ products))
        if num_chunks == 1:
            return total, (squares, grads @ grads.T)
        _, row = lax.scan(lambda _, xb: (None, grads @ gradients(xb).T), None, X)
        return total, (squares, row)

    zero = (jnp.zeros((), theta.dtype), jnp.zeros_like(theta))
    (value, gradient), (squares, blocks) = lax.scan(outer, zero, (X, weights))
    size = num_chunks * chunk
    if num_chunks == 1:
        gram = blocks.reshape(size, size)
    else:  # blocks[a, b] = G_ab, of shape (chunk, chunk)
        gram = blocks.transpose(0, 2, 1, 3).reshape(size, size)
    return value, gradient, squares.reshape(-1)[:n], gram[:n, :n]
