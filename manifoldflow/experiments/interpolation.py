"""Training a model to interpolation: Adam on the mean squared loss until the
training loss is below a target, in compiled chunks of steps."""

import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp


def cast(tree, dtype):
    """The inexact arrays of `tree` in `dtype`."""
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree
    )


def mse(model, X, y):
    """The mean squared loss of `model` on `(X, y)`."""
    return jnp.mean((jax.vmap(model)(X) - y) ** 2)


@eqx.filter_jit
def _adam_chunk(params, static, moments, step, X, y, lr, length):
    """`length` Adam steps (beta 0.9, 0.999) on the mean squared loss."""

    def one(carry, _):
        params, (m, v), step = carry
        loss, grad = jax.value_and_grad(lambda p: mse(eqx.combine(p, static), X, y))(
            params
        )
        step = step + 1
        m = jax.tree_util.tree_map(lambda a, g: 0.9 * a + 0.1 * g, m, grad)
        v = jax.tree_util.tree_map(lambda a, g: 0.999 * a + 0.001 * g * g, v, grad)
        scale_m, scale_v = 1 - 0.9**step, 1 - 0.999**step
        params = jax.tree_util.tree_map(
            lambda p, a, b: p - lr * (a / scale_m) / (jnp.sqrt(b / scale_v) + 1e-15),
            params,
            m,
            v,
        )
        return (params, (m, v), step), loss

    (params, moments, step), losses = jax.lax.scan(
        one, (params, moments, step), None, length=length
    )
    return params, moments, step, losses


def train_to_interpolation(model, X, y, *, learning_rate, max_steps, target=1e-10):
    """Adam from `model` until the training loss is below `target` or `max_steps`:
    `(trained model, steps, final loss, seconds)`."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    moments, step = (zeros, zeros), jnp.array(0)
    X, y = jnp.asarray(X, dtype), jnp.asarray(y, dtype)
    lr = jnp.asarray(learning_rate, dtype)
    start = time.perf_counter()
    loss, done = math.inf, 0
    chunk = min(500, max_steps)
    while done < max_steps and not loss <= target:
        params, moments, step, losses = _adam_chunk(
            params, static, moments, step, X, y, lr, chunk
        )
        done += chunk
        loss = float(losses[-1])
        if not math.isfinite(loss):
            break
    return eqx.combine(params, static), done, loss, time.perf_counter() - start


class TrainingLoss(eqx.Module):
    """The training loss as a function of the trainable arrays (for Lanczos)."""

    X: jax.Array
    y: jax.Array

    def __call__(self, params, static):
        return mse(eqx.combine(params, static), self.X, self.y)
