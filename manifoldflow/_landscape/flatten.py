"""The one flattening helper of the tools off the manifold: parameters as a flat
vector, checked, and the gradient of a loss in those coordinates."""

from collections.abc import Callable

import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, PyTree

from .._errors import InputError


def checked_parameters(params: PyTree) -> tuple[PyTree, Float[Array, " P"]]:
    """`params` with array leaves, and their flat vector; `InputError` unless they
    are non-empty floating-point arrays."""
    params = jtu.tree_map(jnp.asarray, params)
    flat, _ = jfu.ravel_pytree(params)
    if flat.size == 0:
        raise InputError(
            "The parameters are empty: there is nothing to train or measure."
        )
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise InputError(f"The parameters must be floating point, got {flat.dtype}.")
    return params, flat


def flat_gradient(
    loss: Callable[[PyTree], Array], params: PyTree
) -> tuple[Float[Array, " P"], Callable[[Array], Array]]:
    """The flat parameters and $x \\mapsto \\nabla L$ in flat coordinates."""
    flat, unravel = jfu.ravel_pytree(params)

    def gradient(x):
        return jfu.ravel_pytree(jax.grad(loss)(unravel(x)))[0]

    return flat, gradient
