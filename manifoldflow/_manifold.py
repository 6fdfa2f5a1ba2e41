r"""Constraint manifolds $\Gamma = \{\theta : F(\theta) = 0\}$ and their sharpness."""

import abc
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree, Scalar

from . import _matrix_free
from ._errors import InputError
from ._loss import AbstractLoss, MeanSquaredLoss


class Linearisation(eqx.Module):
    r"""Everything the flow needs at one point $\theta$ of a manifold.

    **Fields:**

    - `jacobian`: $J = \partial F / \partial \theta$ as a lineax operator, $n \times D$.
    - `gram`: $J J^\top$, a dense $n \times n$ array, or `None` for a manifold that
      cannot form it (then only iterative projectors apply).
    - `sharpness`: $R(\theta) = \sum_i w_i \|\nabla F_i\|^2$.
    - `gradient`: $\nabla R(\theta)$, shape $(D,)$.
    - `gram_diagonal`: optional, the diagonal $\|\nabla F_i\|^2$ of $JJ^\top$ (a
      Jacobi preconditioner for conjugate gradients).

    Under `jax.jit`, fields that a projector does not use are never computed.
    """

    jacobian: lx.AbstractLinearOperator
    gram: Float[Array, "n n"] | None
    sharpness: Scalar
    gradient: Float[Array, " D"]
    gram_diagonal: Float[Array, " n"] | None = None


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

    @property
    def matrix_free(self) -> bool:
        """Whether `linearise` works without the $n \times D$ Jacobian matrix
        (products with $J$ and $J^\top$ by automatic differentiation)."""
        return False

    def sharpness(self, theta: Float[Array, " D"]) -> Scalar:
        """$R(\\theta)$."""
        return self.linearise(theta).sharpness

    def to_parameters(self, theta: Float[ArrayLike, " D"]) -> PyTree:
        """The parameters (or model) at coordinates `theta`."""
        return theta


def _check_finite(name: str, array: np.ndarray) -> None:
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))
        raise InputError(
            f"{name} contains {len(bad)} non-finite value(s) (NaN or inf), the first "
            f"at index {tuple(int(i) for i in bad[0])}. Remove or impute them first."
        )


def _check_consistent_labels(X: np.ndarray, y: np.ndarray) -> None:
    """Identical rows of `X` with different labels: no model fits both, so the
    zero-loss set is empty. Sorting the rows costs O(n log n) comparisons."""
    if y.shape[0] < 2:
        return
    rows = X.reshape(X.shape[0], -1)
    _, first, group = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    representative = first[group.reshape(-1)]
    conflicts = np.flatnonzero(y != y[representative])
    if conflicts.size:
        j = int(conflicts[0])
        i = int(representative[j])
        raise InputError(
            f"Rows {i} and {j} of X are identical but their labels differ "
            f"(y[{i}] = {y[i].item()}, y[{j}] = {y[j].item()}): no model fits both, so "
            f"the zero-loss manifold is empty ({conflicts.size} conflicting row(s) in "
            "all). Remove one of the rows or fix the labels."
        )


def check_data(X: ArrayLike, y: ArrayLike) -> tuple[Array, Array]:
    """Validate a data set `(X, y)`: matching lengths, finite values, float dtype, and
    no identical inputs with different labels (an empty zero-loss manifold).

    Raises [`manifoldflow.InputError`][] naming what is wrong and the fix. Traced
    data (under `jax.vmap`, `jax.grad`) are checked for their shapes only.
    """
    dtype = jnp.result_type(float)
    if isinstance(X, jax.core.Tracer) or isinstance(y, jax.core.Tracer):
        X, y = jnp.asarray(X, dtype), jnp.asarray(y, dtype)
        if y.ndim != 1 or X.ndim < 1 or X.shape[0] != y.shape[0]:
            raise InputError(
                f"X has shape {X.shape} and y has shape {y.shape}: y must be a vector "
                "of n labels and X must have one row per label."
            )
        return X, y
    X_np = np.asarray(X)
    y_np = np.asarray(y)
    if y_np.ndim != 1:
        raise InputError(
            f"y must be a vector of n labels, got shape {y_np.shape}. "
            "Flatten it (y.reshape(-1)) if it holds one label per example."
        )
    if X_np.ndim < 1 or X_np.shape[0] != y_np.shape[0]:
        raise InputError(
            f"X has shape {X_np.shape} but y has shape {y_np.shape}: X must have one "
            f"row per label, i.e. leading dimension {y_np.shape[0]}."
        )
    if not np.issubdtype(X_np.dtype, np.number) or not np.issubdtype(
        y_np.dtype, np.number
    ):
        raise InputError(f"X and y must be numeric, got {X_np.dtype} and {y_np.dtype}.")
    _check_finite("X", X_np)
    _check_finite("y", y_np)
    _check_consistent_labels(X_np, y_np)
    return jnp.asarray(X_np, dtype=dtype), jnp.asarray(y_np, dtype=dtype)


def _partition_coordinates(
    tree: PyTree, filter_spec: PyTree[bool | Callable[[Any], bool]]
) -> tuple[PyTree, PyTree]:
    """`eqx.partition`, refusing a `filter_spec` of another structure and a partition
    with no coordinates."""
    try:
        parameters, static = eqx.partition(tree, filter_spec)
    except (ValueError, TypeError) as error:
        raise InputError(
            "filter_spec must be a pytree prefix of the model (as in eqx.partition): "
            "a bool or a callable per leaf or subtree; got "
            f"{type(filter_spec).__name__} for a {type(tree).__name__} "
            f"({str(error).splitlines()[0]}).",
            fix="Build it from the model, e.g. filter_spec = jax.tree_util.tree_map("
            "lambda _: False, model), then eqx.tree_at(lambda m: m.weight, "
            "filter_spec, replace=True).",
            parameter="filter_spec",
        ) from None
    if not jax.tree_util.tree_leaves(parameters):
        arrays = [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]
        if not arrays and callable(tree):
            raise InputError(
                f"The model {tree!r} holds no arrays: a plain function has no "
                "parameters to move along the manifold.",
                fix="Pass an Equinox module (e.g. eqx.nn.MLP(..., out_size='scalar')"
                ") or another pytree that holds its parameters as array leaves.",
                parameter="model",
            )
        raise InputError(
            "There are no trainable leaves under this filter_spec: nothing to move "
            "along the manifold.",
            fix="Pass a filter_spec that selects the floating-point arrays to train "
            "(the default eqx.is_inexact_array selects all of them).",
            parameter="filter_spec",
        )
    return parameters, static


class _AbstractPytreeManifold(AbstractManifold):
    r"""A manifold whose coordinates $\theta$ are the flattened leaves `parameters` of
    a pytree, the rest of which (`static`) stays fixed, and whose Jacobian is a dense
    matrix. $R = \sum_i w_i \|J_i\|^2$ and $\nabla R$ come from one
    `jax.value_and_grad` through `jacobian_matrix`.
    """

    parameters: eqx.AbstractVar[PyTree]
    static: eqx.AbstractVar[PyTree]
    weights: eqx.AbstractVar[Float[Array, " n"]]

    @abc.abstractmethod
    def jacobian_matrix(self, theta: Float[Array, " D"]) -> Float[Array, "n D"]:
        """$J = \\partial F / \\partial \\theta$ as a dense matrix."""

    @property
    def num_constraints(self) -> int:
        return self.weights.shape[0]

    @property
    def dimension(self) -> int:
        return sum(np.size(x) for x in jax.tree_util.tree_leaves(self.parameters))

    def initial_point(self) -> Float[Array, " D"]:
        return jfu.ravel_pytree(self.parameters)[0]

    def to_parameters(self, theta: Float[ArrayLike, " D"]) -> PyTree:
        """The pytree with its coordinate leaves set to `theta`."""
        unravel = jfu.ravel_pytree(self.parameters)[1]
        return eqx.combine(unravel(theta), self.static)

    def to_coordinates(self, tree: PyTree) -> Float[Array, " D"]:
        """The coordinates $\theta$ of a pytree of the same structure as the one the
        manifold was built from (e.g. a trained copy of the model): its coordinate
        leaves, flattened. The inverse of `to_parameters`."""
        mask = jax.tree_util.tree_map(
            lambda p: p is not None, self.parameters, is_leaf=lambda p: p is None
        )
        expected = jax.tree_util.tree_structure(
            eqx.combine(self.parameters, self.static)
        )
        if jax.tree_util.tree_structure(tree) != expected:
            raise InputError(
                f"Got a {type(tree).__name__} whose structure differs from the model "
                "the manifold was built from.",
                fix="Pass a pytree of the same structure (e.g. the model after "
                "training), or its flat coordinates.",
                parameter="theta0",
            )
        coordinates = eqx.filter(tree, mask)
        shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(coordinates)]
        wanted = [np.shape(x) for x in jax.tree_util.tree_leaves(self.parameters)]
        if shapes != wanted:
            raise InputError(
                f"The coordinate leaves have shapes {shapes}, the model's {wanted}.",
                parameter="theta0",
            )
        return jfu.ravel_pytree(coordinates)[0]

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


class ZeroLossManifold(_AbstractPytreeManifold):
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
    - `matrix_free`: `False` forms $J$ as a dense $n \times D$ matrix (fastest while
      it fits); `True` never forms it: products with $J$ and $J^\top$ are
      forward- and reverse-mode passes of the batched model, $\nabla R$ is summed
      over chunks of per-example forward-over-reverse products, and the $n \times
      n$ Gram matrix $JJ^\top$ is formed block by block from two chunks of
      per-example gradients at a time, so memory is $O(\text{chunk}\cdot D + n^2 +
      n\cdot\text{activations})$ rather than $O(nD)$, and every projector applies
      ([`manifoldflow.CGProjector`][] skips the Gram matrix altogether). Default
      `None`: matrix-free exactly when the dense path's memory (about four $n \times
      D$ arrays) exceeds half of the memory available (the accelerator's, or the
      host's free memory on CPU). `manifold.matrix_free` says which it is.
    - `chunk_size`: examples per chunk of the matrix-free $\nabla R$ and Gram matrix
      (default: up to 2 GiB of per-example vectors, at most an eighth of the memory
      available). Larger chunks are faster; the Gram matrix costs $n^2/\text{chunk}$
      extra per-example gradients.

    The manifold computes in the precision of the model's parameters: float32
    parameters (for an accelerator) make the data float32 too, and the solve then
    needs float32 tolerances (see [`manifoldflow.solve_flow`][]).

    Raises [`manifoldflow.InputError`][] for bad data (see `check_data`), a model
    that does not return a scalar, no trainable leaves, $n > D$, or a `chunk_size`
    below 1.
    """

    parameters: PyTree
    static: PyTree
    X: Array
    y: Array
    weights: Array
    use_matrix_free: bool = eqx.field(static=True)
    chunk_size: int = eqx.field(static=True)

    def __init__(
        self,
        model: PyTree,
        X: ArrayLike,
        y: ArrayLike,
        *,
        loss: AbstractLoss = MeanSquaredLoss(),
        filter_spec: PyTree[bool | Callable[[Any], bool]] = eqx.is_inexact_array,
        matrix_free: bool | None = None,
        chunk_size: int | None = None,
    ):
        self.X, self.y = check_data(X, y)
        self.parameters, self.static = _partition_coordinates(model, filter_spec)
        precision = self.initial_point().dtype
        if precision == jnp.float32 and self.X.dtype != precision:
            # float32 parameters (e.g. for an accelerator): the data follow them, so
            # that the whole flow runs in float32.
            self.X, self.y = self.X.astype(precision), self.y.astype(precision)
        example = jax.ShapeDtypeStruct(self.X.shape[1:], self.X.dtype)
        try:
            out = jax.eval_shape(model, example)
        except Exception as error:  # any failure of the model on one example
            hint = (
                " X is 1-D, so each example is a scalar: for n examples of one "
                "feature pass X[:, None]."
                if self.X.ndim == 1
                else ""
            )
            raise InputError(
                f"The model fails on one example of X: X has shape {self.X.shape}, so "
                f"an example has shape {self.X.shape[1:]} ({type(error).__name__}: "
                f"{(str(error).splitlines() or [''])[0]}).{hint}",
                fix="X must hold one example per row, each of the shape the model "
                "takes (e.g. (n, in_size) for eqx.nn.MLP).",
                parameter="X",
            ) from None
        if getattr(out, "shape", None) != ():
            raise InputError(
                f"The model must map one example of shape {self.X.shape[1:]} to a "
                f"scalar, but it returned shape {getattr(out, 'shape', type(out))}.",
                fix="Wrap it so that it returns a scalar while keeping its parameters "
                "in the pytree, e.g. jax.tree_util.Partial(lambda net, x: net(x)[0], "
                "net) (a bare lambda holds no parameters), or build eqx.nn.MLP with "
                "out_size='scalar'.",
                parameter="model",
            )
        n, D = self.y.shape[0], self.dimension
        if n > D:
            raise InputError(
                f"There are n = {n} data points but only D = {D} trainable parameters:"
                " the zero-loss set is generically empty or not a manifold of "
                "codimension n. Use fewer data points or a larger model."
            )
        self.weights = loss.curvature_weights(self.y)
        itemsize = self.initial_point().dtype.itemsize
        if matrix_free is None:
            matrix_free = not _matrix_free.dense_fits(n, D, itemsize)
        self.use_matrix_free = bool(matrix_free)
        if chunk_size is None:
            chunk_size = _matrix_free.default_chunk(n, D, itemsize)
        if (
            isinstance(chunk_size, bool)
            or int(chunk_size) != chunk_size
            or (chunk_size < 1)
        ):
            raise InputError(
                f"chunk_size must be an integer >= 1 (examples per chunk of the "
                f"matrix-free gradient of R), got {chunk_size!r}.",
                parameter="chunk_size",
            )
        self.chunk_size = min(int(chunk_size), n)

    @property
    def matrix_free(self) -> bool:
        return self.use_matrix_free

    def linearise(self, theta):
        if not self.use_matrix_free:
            return super().linearise(theta)
        value, gradient, squares, gram = _matrix_free.sharpness_and_gradient(
            self._output, theta, self.X, self.weights, self.chunk_size
        )
        return Linearisation(
            jacobian=_matrix_free.jacobian_operator(self.constraint, theta),
            gram=gram,
            sharpness=value,
            gradient=gradient,
            gram_diagonal=squares,
        )

    def constraint_scale(self) -> Scalar:
        return jnp.maximum(1.0, jnp.max(jnp.abs(self.y)))

    def _output(self, theta: Float[Array, " D"], x: Array) -> Scalar:
        return self.to_parameters(theta)(x)

    def constraint(self, theta):
        return jax.vmap(self._output, in_axes=(None, 0))(theta, self.X) - self.y

    def jacobian_matrix(self, theta: Float[Array, " D"]) -> Float[Array, "n D"]:
        """$J$ as a dense matrix, one per-example gradient per row."""
        return jax.vmap(jax.grad(self._output), in_axes=(None, 0))(theta, self.X)


class ConstraintManifold(_AbstractPytreeManifold):
    r"""The manifold $\Gamma = \{\theta : F(\theta) = 0\}$ of any constraint map
    $F : \mathbb R^D \to \mathbb R^n$ on the leaves of a pytree, with the sharpness

    $$R(\theta) = \sum_{i=1}^n w_i \|\nabla F_i(\theta)\|^2 .$$

    For constraints that are not "model outputs = labels": e.g. the minimisers of
    the risk of a deep linear network on noisy data, $\{W : (W_L \cdots W_1)^\top p =
    w^*\}$ ($d$ equations), where no zero-loss point exists.

    $\theta$ is the flat vector of the leaves of `params` selected by `filter_spec`
    (as in `eqx.partition`); every other leaf stays fixed. $J$ is a dense
    $n \times D$ matrix from `jax.jacrev` (cheap for $n \ll D$), and $R$ and
    $\nabla R$ come from one `jax.value_and_grad` through it.

    !!! example

        ```python
        def constraint(Ws, args):
            p, w_star = args
            product = functools.reduce(lambda A, W: W @ A, Ws)
            return product.T @ p - w_star

        manifold = ConstraintManifold(constraint, (W1, W2, W3), (p, w_star))
        ```

    **Arguments:**

    - `constraint`: $F$, called as `constraint(params, args)`; must return a 1-D
        floating-point array of $n \le D$ equations, finite at `params`. Under
        `eqx.filter_jit` it is static (compared by identity): define it once rather
        than as a new `lambda` per manifold, so that compiled code is reused.
    - `params`: a pytree (e.g. a tuple of arrays or an `eqx.Module`); its coordinate
        leaves are the initial point.
    - `args`: a pytree of arrays passed to `constraint`. It is a field of the
        manifold, so that under `jax.jit` data are traced arguments rather than
        constants folded into the compiled program: pass data here, not by closure.
    - `weights`: $w$, shape `(n,)`, finite and non-negative; default all ones.
    - `filter_spec`: which leaves of `params` are coordinates; default
        `eqx.is_inexact_array`.

    Raises [`manifoldflow.InputError`][] for an output that is not a 1-D
    floating-point vector, $n > D$, $F$ not finite at `params`, bad `weights`, or no
    coordinate leaves.
    """

    parameters: PyTree
    static: PyTree
    constraint_function: Callable[[PyTree, PyTree], Float[Array, " n"]]
    args: PyTree
    weights: Float[Array, " n"]

    def __init__(
        self,
        constraint: Callable[[PyTree, PyTree], Float[Array, " n"]],
        params: PyTree,
        args: PyTree = None,
        *,
        weights: ArrayLike | Sequence[float] | None = None,
        filter_spec: PyTree[bool | Callable[[Any], bool]] = eqx.is_inexact_array,
    ):
        self.parameters, self.static = _partition_coordinates(params, filter_spec)
        self.constraint_function = constraint
        self.args = args
        out = eqx.filter_eval_shape(constraint, params, args)
        shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
        if (
            shape is None
            or len(shape) != 1
            or not jnp.issubdtype(dtype, jnp.floating)
            or shape[0] == 0
        ):
            got = type(out).__name__ if shape is None else f"shape {shape}, {dtype}"
            raise InputError(
                "The constraint must return a 1-D floating-point array of n >= 1 "
                f"equations, but it returned {got}. Stack the equations into one "
                "vector (e.g. `jnp.concatenate([F1.ravel(), F2.ravel()])`) and use "
                "floating-point parameters."
            )
        n, D = shape[0], self.dimension
        if n > D:
            raise InputError(
                f"The constraint has n = {n} equations but there are only D = {D} "
                "coordinates: the solution set is generically empty or not a manifold "
                "of codimension n. Use fewer equations, or more coordinates (check "
                "filter_spec)."
            )
        value = constraint(params, args)
        if not isinstance(value, jax.core.Tracer):
            value = np.asarray(value)
            if not np.all(np.isfinite(value)):
                bad = np.flatnonzero(~np.isfinite(value))
                raise InputError(
                    f"The constraint is not finite at the initial point: {bad.size} of "
                    f"its n = {n} values are NaN or inf, the first F[{bad[0]}] = "
                    f"{value[bad[0]]}. Start from a point where it is defined."
                )
        dtype = self.initial_point().dtype
        if weights is None:
            self.weights = jnp.ones(n, dtype)
        else:
            self.weights = jnp.asarray(weights, dtype)
            if self.weights.shape != (n,):
                raise InputError(
                    f"weights must hold one weight per equation: shape ({n},), got "
                    f"{self.weights.shape}."
                )
            if not isinstance(self.weights, jax.core.Tracer):
                w = np.asarray(self.weights)
                if not np.all(np.isfinite(w)) or np.any(w < 0):
                    i = int(np.flatnonzero(~(np.isfinite(w) & (w >= 0)))[0])
                    raise InputError(
                        f"weights must be finite and non-negative, but weights[{i}] = "
                        f"{w[i]}. R = sum_i w_i |grad F_i|^2 needs w_i >= 0."
                    )

    def constraint(self, theta):
        return self.constraint_function(self.to_parameters(theta), self.args)

    def jacobian_matrix(self, theta: Float[Array, " D"]) -> Float[Array, "n D"]:
        """$J$ as a dense matrix, by `jax.jacrev` over the flat coordinates."""
        return jax.jacrev(self.constraint)(theta)
