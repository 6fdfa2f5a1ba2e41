r"""The two-layer model of Gatmiry et al. (2024), generic and structured."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._errors import InputError
from .._loss import AbstractLoss, MeanSquaredLoss
from .._manifold import AbstractManifold, check_data, Linearisation
from .activations import AbstractActivation, CubicLinear


class TwoLayerNet(eqx.Module):
    r"""$f_\theta(x) = \sum_{j=1}^m a_j\, \phi(\theta_j^\top x)$ with a FIXED second layer
    $a$ ($a_j = 1$ in Gatmiry et al.; no $1/m$).

    Only `theta` (shape `(m, d)`, row $j$ is $\theta_j$) is trained: build its manifold
    with `ZeroLossManifold(net, X, y, filter_spec=net.filter_spec())`, or use the
    structured [`manifoldflow.models.TwoLayerManifold`][].

    ??? cite "Reference"
        Gatmiry, Li, Reddi, Jegelka. Simplicity Bias via Global Convergence of
        Sharpness Minimization. ICML 2024, arXiv:2410.16401.
    """

    theta: Float[Array, "m d"]
    a: Float[Array, " m"]
    activation: AbstractActivation = CubicLinear()

    def __init__(self, theta, a=None, activation: AbstractActivation = CubicLinear()):
        self.theta = jnp.asarray(theta, dtype=jnp.result_type(float))
        if self.theta.ndim != 2:
            raise InputError(f"theta must have shape (m, d), got {self.theta.shape}.")
        m = self.theta.shape[0]
        a = jnp.asarray(np.ones(m) if a is None else a, dtype=self.theta.dtype)
        if a.shape != (m,):
            raise InputError(
                f"a must hold one second-layer weight per neuron: shape ({m},), got "
                f"{a.shape}."
            )
        self.a = a
        self.activation = activation

    def __call__(self, x: Float[Array, " d"]) -> Array:
        return jnp.dot(self.a, self.activation(self.theta @ x))

    def filter_spec(self):
        """The `filter_spec` that trains `theta` only."""
        spec = jtu.tree_map(lambda _: False, self)
        return eqx.tree_at(lambda net: net.theta, spec, True)


class TwoLayerManifold(AbstractManifold):
    r"""The zero-loss manifold of a [`manifoldflow.models.TwoLayerNet`][] in reduced
    coordinates, with closed forms for everything the flow needs.

    With $Q \in \mathbb R^{d\times k}$ an orthonormal basis of the data span
    ($X = L Q^\top$), each neuron is $\theta_j = \theta_j^\perp + Q u_j$. The part
    $\theta_j^\perp$ orthogonal to the span never moves under the flow (the gradients
    of $R$ and of every $F_i$, hence the normal space and $P_T\nabla R$, lie in the
    data span), so the flow lives on
    $U \in \mathbb R^{m\times k}$, $k = \min(n, d)$, in Euclidean coordinates: up to
    $d/n$ times cheaper than on $\Theta$. With $Z = U L^\top = \Theta X^\top$ (the
    feature matrix), $B = a \circ \phi'(Z)$, $G = XX^\top$ and weights $w_i$:

    - $F_i = \sum_j a_j\phi(Z_{ji}) - y_i$, $\;J V = \mathrm{colsum}(B \circ VL^\top)$,
      $\;J^\top\lambda = (B \circ \lambda^\top) L$;
    - Gram $JJ^\top = (B^\top B) \circ G$;
    - $R = \sum_i w_i G_{ii} \sum_j B_{ji}^2$, $\;\nabla_U R = \big(2 w_i G_{ii}\, a_j^2
      \phi'\phi''(Z_{ji})\big)_{ji} L$.

    **Arguments:** `net` (its `theta` is the initial point), `X` (`(n, d)`), `y`
    (`(n,)`), `loss` (default [`manifoldflow.MeanSquaredLoss`][]).
    """

    X: Array
    y: Array
    a: Array
    activation: AbstractActivation
    weights: Array
    basis: Array
    coefficients: Array
    data_gram: Array
    theta_perp: Array
    u0: Array

    def __init__(
        self,
        net: TwoLayerNet,
        X: ArrayLike,
        y: ArrayLike,
        *,
        loss: AbstractLoss = MeanSquaredLoss(),
    ):
        X, y = check_data(X, y)
        if X.ndim != 2 or X.shape[1] != net.theta.shape[1]:
            raise InputError(
                f"X must have shape (n, d) = (n, {net.theta.shape[1]}) to match theta "
                f"of shape {net.theta.shape}; got {X.shape}."
            )
        n, D = y.shape[0], net.theta.size
        if n > D:
            raise InputError(
                f"There are n = {n} data points but only m*d = {D} parameters: the "
                "zero-loss set is generically not a manifold of codimension n."
            )
        self.X, self.y = X, y
        self.a, self.activation = net.a, net.activation
        self.weights = loss.curvature_weights(y)
        # Host-side set-up in NumPy (eager jnp calls would each be traced), in jnp
        # for traced data (under jax.vmap or jax.grad).
        traced = isinstance(X, jax.core.Tracer) or isinstance(
            net.theta, jax.core.Tracer
        )
        xp = jnp if traced else np
        X_np, theta = xp.asarray(X), xp.asarray(net.theta)
        basis, _ = xp.linalg.qr(X_np.T)  # (d, k), X^T = Q R
        u0 = theta @ basis
        # (`device_put`: `jnp.array` and `jnp.asarray` may stage a program each.)
        put = (lambda a: a) if traced else jax.device_put
        self.basis = put(basis)
        self.coefficients = put(X_np @ basis)  # L, (n, k)
        self.data_gram = put(X_np @ X_np.T)
        self.u0 = put(u0)
        self.theta_perp = put(theta - u0 @ basis.T)

    @property
    def num_constraints(self) -> int:
        return self.y.shape[0]

    @property
    def dimension(self) -> int:
        return self.u0.size

    def initial_point(self):
        if isinstance(self.u0, jax.core.Tracer):
            return self.u0.reshape(-1)
        return jax.device_put(np.asarray(self.u0).reshape(-1))  # no staged reshape

    def constraint_scale(self):
        return jnp.maximum(1.0, jnp.max(jnp.abs(self.y)))

    def coordinates(self, theta: Float[Array, "m d"]) -> Float[Array, " D"]:
        """Reduced coordinates of a full `theta` (its off-span part is dropped)."""
        return (jnp.asarray(theta) @ self.basis).reshape(-1)

    def full_theta(self, u: Float[Array, " D"]) -> Float[Array, "m d"]:
        r"""$\Theta = \Theta^\perp + U Q^\top$."""
        return self.theta_perp + u.reshape(self.u0.shape) @ self.basis.T

    def to_parameters(self, u):
        return TwoLayerNet(self.full_theta(u), self.a, self.activation)

    def features(self, u: Float[ArrayLike, " D"]) -> Float[Array, "m n"]:
        r"""The feature matrix $Z = \Theta X^\top$, $Z_{ji} = \theta_j^\top x_i$."""
        return u.reshape(self.u0.shape) @ self.coefficients.T

    def constraint(self, u):
        Z = self.features(u)
        return self.a @ self.activation(Z) - self.y

    def linearise(self, u):
        Z = self.features(u)
        L = self.coefficients
        shape = self.u0.shape
        B = self.a[:, None] * self.activation.derivative(Z)
        diag = self.weights * jnp.diag(self.data_gram)
        sharpness = jnp.sum(diag * jnp.sum(B**2, axis=0))
        C = 2 * diag * B * self.a[:, None] * self.activation.second_derivative(Z)
        gradient = (C @ L).reshape(-1)

        def jacobian_mv(v):
            return jnp.sum(B * (v.reshape(shape) @ L.T), axis=0)

        jacobian = lx.FunctionLinearOperator(
            jacobian_mv, jax.ShapeDtypeStruct((self.dimension,), u.dtype)
        )
        return Linearisation(
            jacobian=jacobian,
            gram=(B.T @ B) * self.data_gram,
            sharpness=sharpness,
            gradient=gradient,
        )


@eqx.filter_jit
def _random_draws(key, m, n, d, init_scale):
    """The random shares (softmax over neurons) and off-span directions, in one
    compiled call; `key` may be an integer seed (made a key here, not eagerly)."""
    if key.ndim == 0 and jnp.issubdtype(key.dtype, jnp.integer):
        key = jax.random.PRNGKey(key)
    k_share, k_perp = jax.random.split(key)
    shares = jax.nn.softmax(init_scale * jax.random.normal(k_share, (m, n)), axis=0)
    return shares, jax.random.normal(k_perp, (m, d))


@eqx.filter_jit
def inverse_activation(activation, u):
    """`activation.inverse(u)`, compiled once per activation and shape."""
    return activation.inverse(u)


def initialise_on_manifold(
    key: jax.Array | int,
    X: ArrayLike,
    y: ArrayLike,
    m: int,
    *,
    a: ArrayLike | None = None,
    activation: AbstractActivation = CubicLinear(),
    init_scale: float = 1.0,
) -> TwoLayerNet:
    r"""A random network ON the zero-loss manifold, away from the optimum.

    Splits each label between the neurons with random positive shares
    $s_{ji} = \operatorname{softmax}_j(\text{init\_scale}\cdot\xi_{ji})$, sets
    $\theta_j^\top x_i = \phi^{-1}(s_{ji} y_i / a_j)$, hence
    $\sum_j a_j\phi(\theta_j^\top x_i) = y_i$ exactly; then adds a random part
    orthogonal to the data span (norm about `init_scale` per neuron). Signs of
    $\theta_j^\top x_i$ are those of $y_i/a_j$: the sign-consistent start that
    Theorem 3.3 needs for the `cube` activation. `init_scale = 0` gives the optimum
    of Theorem 3.3 (for equal $a$) plus nothing off the span. Needs `a > 0`
    elementwise and linearly independent rows of `X`. `key` is a PRNG key or an
    integer seed (the same draws as `jax.random.PRNGKey(seed)`).
    """
    if isinstance(key, (int, np.integer)):
        key = np.asarray(key, dtype=np.int64)
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = X.shape
    a = np.ones(m) if a is None else np.asarray(a, dtype=np.float64)
    if np.any(a <= 0):
        raise InputError(
            "initialise_on_manifold needs positive second-layer weights a."
        )
    shares, perp = (
        np.asarray(x) for x in _random_draws(key, m, n, d, np.float64(init_scale))
    )
    Z = np.asarray(inverse_activation(activation, shares * y[None, :] / a[:, None]))
    # Span part: Theta_span X^T = Z with Theta_span rows in span(X).
    coefficients = np.linalg.solve(X @ X.T, Z.T).T  # (m, n)
    theta = coefficients @ X
    perp = perp / np.sqrt(d)
    Qx, _ = np.linalg.qr(X.T)
    perp = perp - (perp @ Qx) @ Qx.T
    theta = theta + init_scale * perp
    return TwoLayerNet(theta, a, activation)


def two_layer_data(
    n: int, d: int, seed: int = 0, *, unit: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The default data of the two-layer experiment: `X` Gaussian with unit rows
    (`unit=False`: not normalised), labels of random sign and size uniform in
    [0.5, 1.5]. NumPy arrays `(X (n, d), y (n,))`; the same for a given seed
    everywhere (command line, tests, benchmarks)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if unit:
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.5, n)
    return X, y
