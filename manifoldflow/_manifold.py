"""Constraint manifolds: $\\Gamma = \\{\\theta : F(\\theta) = 0\\}$ with the on-manifold sharpness."""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree, Scalar

from ._loss import AbstractLoss, MeanSquaredLoss


class Linearisation(eqx.Module):
    r"""Everything the flow needs at one point $\theta$ of a manifold.

    **Fields:**

    - `jacobian`: $J = \partial F / \partial \theta$ as a lineax operator, $n \times D$.
    - `gram`: $J J^\top$, a dense $n \times n$ array.
    - `sharpness`: $R(\theta) = \sum_i w_i \|\nabla F_i\|^2$.
    - `gradient`: $\nabla R(\theta)$, shape $(D,)$.

    Under `jax.jit`, fields that a projector does not use are never computed.
    """

    jacobian: lx.AbstractLinearOperator
    gram: Float[Array, "n n"]
    sharpness: Scalar
    gradient: Float[Array, " D"]


class AbstractManifold(eqx.Module):
    r"""A manifold $\Gamma = \{\theta \in \mathbb R^D : F(\theta) = 0\}$ in flat
    Euclidean coordinates $\theta$, with the sharpness
    $R(\theta) = \sum_i w_i \|\nabla F_i(\theta)\|^2$.

    For $F(\theta) = f_\theta(X) - y$ and curvature weights $w_i$ of the loss, $R$ is
    the trace of the loss Hessian on $\Gamma$. Off $\Gamma$ the full trace has the
    extra term $\sum_i w_i F_i \operatorname{Tr}\nabla^2 F_i$, whose gradient on
    $\Gamma$ is normal, so both give the same Riemannian gradient $P_T\nabla R$.
    """

    @abc.abstractmethod
    def constraint(self, theta: Float[Array, " D"]) -> Float[Array, " n"]:
        """$F(\\theta)$."""

    @abc.abstractmethod
    def linearise(self, theta: Float[Array, " D"]) -> Linearisation:
        """The Jacobian, Gram matrix, sharpness and its gradient at `theta`."""

    @abc.abstractmethod
    def initial_point(self) -> Float[Array, " D"]:
        """The coordinates of the point the manifold was built from (not retracted)."""

    @property
    @abc.abstractmethod
    def num_constraints(self) -> int:
        """$n$."""

    @property
    @abc.abstractmethod
    def dimension(self) -> int:
        """$D$, the number of coordinates."""

    def constraint_scale(self) -> Scalar:
        """A scale for $|F|$ against which retraction tolerances are relative."""
        return jnp.asarray(1.0)

    def sharpness(self, theta: Float[Array, " D"]) -> Scalar:
        """$R(\\theta)$."""
        return self.linearise(theta).sharpness

    def to_parameters(self, theta: Float[Array, " D"]) -> PyTree:
        """The parameters (or model) at coordinates `theta`."""
        return theta


def _check_finite(name: str, array: np.ndarray) -> None:
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))
        raise ValueError(
            f"{name} contains {len(bad)} non-finite value(s) (NaN or inf), the first at "
            f"index {tuple(int(i) for i in bad[0])}. Remove or impute them first."
        )


def check_data(X: ArrayLike, y: ArrayLike) -> tuple[Array, Array]:
    """Validate a data set `(X, y)`: matching lengths, finite values, float dtype."""
    X_np = np.asarray(X)
    y_np = np.asarray(y)
    if y_np.ndim != 1:
        raise ValueError(
            f"y must be a vector of n labels, got shape {y_np.shape}. "
            "Flatten it (y.reshape(-1)) if it holds one label per example."
        )
    if X_np.ndim < 1 or X_np.shape[0] != y_np.shape[0]:
        raise ValueError(
            f"X has shape {X_np.shape} but y has shape {y_np.shape}: X must have one "
            f"row per label, i.e. leading dimension {y_np.shape[0]}."
        )
    if not np.issubdtype(X_np.dtype, np.number) or not np.issubdtype(
        y_np.dtype, np.number
    ):
        raise ValueError(f"X and y must be numeric, got {X_np.dtype} and {y_np.dtype}.")
    _check_finite("X", X_np)
    _check_finite("y", y_np)
    dtype = jnp.result_type(float)
    return jnp.asarray(X_np, dtype=dtype), jnp.asarray(y_np, dtype=dtype)


class ZeroLossManifold(AbstractManifold):
    r"""The zero-loss manifold $\Gamma = \{\theta : f_\theta(x_i) = y_i\ \forall i\}$ of
    any Equinox model that maps ONE example to a scalar.

    $\theta$ is the flat vector of the model's trainable leaves, chosen by
    `filter_spec` (as in `eqx.partition`); every other leaf (e.g. a fixed second
    layer) stays fixed. Jacobian rows are per-example gradients (`vmap(grad)`), the
    sharpness is $R = \sum_i w_i \|\nabla f_i\|^2$ with the loss's curvature weights
    ($w_i = 2/n$ for the default $L = \frac1n \sum_i (f_i - y_i)^2$), and
    $\nabla R$ comes from one reverse pass through the per-example gradients.

    **Arguments:**

    - `model`: an `eqx.Module` (or any callable pytree) with `model(X[i])` a scalar.
    - `X`: inputs, shape `(n, ...)`.
    - `y`: labels, shape `(n,)`.
    - `loss`: the per-sample loss, default [`manifoldflow.MeanSquaredLoss`][].
    - `filter_spec`: which leaves are trained; default `eqx.is_inexact_array`.
    """

    parameters: PyTree
    static: PyTree
    X: Array
    y: Array
    weights: Array

    def __init__(
        self,
        model: PyTree,
        X: ArrayLike,
        y: ArrayLike,
        *,
        loss: AbstractLoss = MeanSquaredLoss(),
        filter_spec: PyTree[bool | Callable[[Any], bool]] = eqx.is_inexact_array,
    ):
        self.X, self.y = check_data(X, y)
        self.parameters, self.static = eqx.partition(model, filter_spec)
        if not jax.tree_util.tree_leaves(self.parameters):
            raise ValueError(
                "The model has no trainable leaves under this filter_spec: nothing "
                "to move along the manifold."
            )
        out = jax.eval_shape(
            model, jax.ShapeDtypeStruct(self.X.shape[1:], self.X.dtype)
        )
        if getattr(out, "shape", None) != ():
            raise ValueError(
                f"The model must map one example of shape {self.X.shape[1:]} to a "
                f"scalar, but it returned shape {getattr(out, 'shape', type(out))}. "
                "Wrap it so that it returns a scalar (e.g. `lambda x: net(x)[0]`)."
            )
        n, D = self.y.shape[0], self.dimension
        if n > D:
            raise ValueError(
                f"There are n = {n} data points but only D = {D} trainable parameters:"
                " the zero-loss set is generically empty or not a manifold of "
                "codimension n. Use fewer data points or a larger model."
            )
        self.weights = loss.curvature_weights(self.y)

    @property
    def num_constraints(self) -> int:
        return self.y.shape[0]

    @property
    def dimension(self) -> int:
        return sum(np.size(x) for x in jax.tree_util.tree_leaves(self.parameters))

    def initial_point(self) -> Float[Array, " D"]:
        return jfu.ravel_pytree(self.parameters)[0]

    def constraint_scale(self) -> Scalar:
        return jnp.maximum(1.0, jnp.max(jnp.abs(self.y)))

    def to_parameters(self, theta: Float[Array, " D"]) -> PyTree:
        """The model with its trainable leaves set to `theta`."""
        unravel = jfu.ravel_pytree(self.parameters)[1]
        return eqx.combine(unravel(theta), self.static)

    def _output(self, theta: Float[Array, " D"], x: Array) -> Scalar:
        return self.to_parameters(theta)(x)

    def constraint(self, theta):
        return jax.vmap(self._output, in_axes=(None, 0))(theta, self.X) - self.y

    def jacobian_matrix(self, theta: Float[Array, " D"]) -> Float[Array, "n D"]:
        """$J$ as a dense matrix, one per-example gradient per row."""
        return jax.vmap(jax.grad(self._output), in_axes=(None, 0))(theta, self.X)

    def linearise(self, theta):
        def sharpness(theta):
            jac = self.jacobian_matrix(theta)
            return jnp.sum(self.weights * jnp.sum(jac**2, axis=1)), jac

        (value, jac), gradient = jax.value_and_grad(sharpness, has_aux=True)(theta)
        return Linearisation(
            jacobian=lx.MatrixLinearOperator(jac),
            gram=jac @ jac.T,
            sharpness=value,
            gradient=gradient,
        )
