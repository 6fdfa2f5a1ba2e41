r"""One step of the discrete optimisers whose small-step limit the library solves.

Every simulator works on the flat coordinates $\theta$ of a manifold and its residuals
$F(\theta) = f_\theta(X) - y$ (`manifold.constraint`), with the loss
$L = \frac1n\sum_i F_i^2$ of Gatmiry et al. unless stated otherwise.

The constant $c$ of each simulator is derived in the docstring of
[`manifoldflow.sgd`][] (the package).
"""

import abc

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from .._errors import InputError
from .._manifold import AbstractManifold


def _mean_squared(manifold, theta, shift=0.0):
    residual = manifold.constraint(theta) - shift
    return jnp.mean(residual**2)


def _uniform_weight(manifold: AbstractManifold) -> float:
    weights = getattr(manifold, "weights", None)
    if weights is None:
        raise InputError(
            f"{type(manifold).__name__} has no curvature weights: the label-noise "
            "constant is defined relative to R = sum_i w_i |grad F_i|^2."
        )
    weights = np.asarray(weights)
    if weights.size == 0 or not np.allclose(weights, weights[0], rtol=1e-12, atol=0):
        raise InputError(
            "The label-noise constant needs equal curvature weights w_i, got "
            f"{weights.min():.3g} to {weights.max():.3g}."
        )
    return float(weights[0])


def _check_scale(name: str, value, *, positive: bool) -> None:
    value = float(value)
    if not np.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise InputError(f"{name} must be finite and {bound}, got {value}.")


class AbstractSimulator(eqx.Module):
    """One step `theta -> theta'` of a discrete optimiser on a manifold's residuals,
    and the constant `c` of its limiting flow where one is defined."""

    @abc.abstractmethod
    def step(
        self,
        manifold: AbstractManifold,
        theta: Float[Array, " D"],
        eta: Scalar,
        key: PRNGKeyArray,
    ) -> Float[Array, " D"]:
        """One step of size `eta` with the randomness of `key`."""

    def flow_constant(self, manifold: AbstractManifold) -> float | None:
        """`c` such that the steps follow `solve_flow(manifold, constant=c)` in the
        time $\\tau = \\eta^2 k$ as $\\eta \\to 0$; `None` where no such limit
        exists."""
        del manifold
        return None


class LabelNoiseGD(AbstractSimulator):
    r"""Full-batch label-noise GD (Gatmiry et al. 2024): $\theta \leftarrow \theta -
    \eta\nabla\frac1n\sum_i(F_i - \xi_i)^2$, $\xi_i \sim \mathcal N(0, \sigma^2)$;
    $c = \sigma^2/(2n)$ against the default $R$ (the derivation of $c$ is in the
    documentation of [`manifoldflow.sgd`][]).

    **Arguments:** `sigma`, $\sigma \ge 0$ (default 1).
    """

    sigma: float = 1.0

    def __check_init__(self):
        _check_scale("sigma", self.sigma, positive=False)

    def step(self, manifold, theta, eta, key):
        noise = self.sigma * jax.random.normal(key, (manifold.num_constraints,))
        noise = noise.astype(theta.dtype)
        return theta - eta * jax.grad(_mean_squared, 1)(manifold, theta, noise)

    def flow_constant(self, manifold):
        n = manifold.num_constraints
        return self.sigma**2 / (n**2 * _uniform_weight(manifold))


class LabelNoiseSGD(AbstractSimulator):
    r"""Single-sample label-noise SGD (Li, Wang, Arora 2022): pick $i$ uniformly and
    $s = \pm1$, step on $\frac12(F_i + \delta s)^2$; $c = \delta^2/8$ against the
    default $R$ (the derivation of $c$ is in the documentation of
    [`manifoldflow.sgd`][]).

    **Arguments:** `delta`, $\delta \ge 0$ (default 1).
    """

    delta: float = 1.0

    def __check_init__(self):
        _check_scale("delta", self.delta, positive=False)

    def step(self, manifold, theta, eta, key):
        k_index, k_sign = jax.random.split(key)
        i = jax.random.randint(k_index, (), 0, manifold.num_constraints)
        sign = jnp.where(jax.random.bernoulli(k_sign), 1.0, -1.0).astype(theta.dtype)

        def loss(theta):
            return 0.5 * (manifold.constraint(theta)[i] + self.delta * sign) ** 2

        return theta - eta * jax.grad(loss)(theta)

    def flow_constant(self, manifold):
        n = manifold.num_constraints
        return self.delta**2 / (4 * n * _uniform_weight(manifold))


class GradientDescent(AbstractSimulator):
    r"""Plain GD on $L = \frac1n\sum_i F_i^2$: without noise it converges to a point
    of $\Gamma$ and does not drift along it (no `flow_constant`). The control for
    the label-noise simulators."""

    def step(self, manifold, theta, eta, key):
        del key
        return theta - eta * jax.grad(_mean_squared, 1)(manifold, theta)


def _ascent(gradient, rho):
    r"""$\rho g/\|g\|$, 0 where $g = 0$ (on $\Gamma$), without a NaN gradient."""
    norm = jnp.sqrt(jnp.sum(gradient**2))
    safe = jnp.where(norm > 0, norm, 1.0)
    return lax.stop_gradient(jnp.where(norm > 0, rho * gradient / safe, 0.0))


class SAM(AbstractSimulator):
    r"""Full-batch SAM: $\theta \leftarrow \theta - \eta\nabla L(\theta + \rho
    \nabla L/\|\nabla L\|)$, no gradient through the perturbation, which is 0 where
    $\nabla L = 0$. Its limit is a $\lambda_{\max}$ flow: no `c`."""

    rho: float = 0.01

    def __check_init__(self):
        _check_scale("rho", self.rho, positive=True)

    def step(self, manifold, theta, eta, key):
        del key
        gradient = jax.grad(_mean_squared, 1)
        perturbed = theta + _ascent(gradient(manifold, theta), self.rho)
        return theta - eta * gradient(manifold, perturbed)


class OneSAM(AbstractSimulator):
    r"""1-SAM: SAM on one uniformly sampled $F_i^2$ per step. Its limit is the trace
    flow on the time scale $\eta\rho^2 k$, not $\eta^2 k$: no `c` here."""

    rho: float = 0.01

    def __check_init__(self):
        _check_scale("rho", self.rho, positive=True)

    def step(self, manifold, theta, eta, key):
        i = jax.random.randint(key, (), 0, manifold.num_constraints)

        def loss(theta):
            return manifold.constraint(theta)[i] ** 2

        perturbed = theta + _ascent(jax.grad(loss)(theta), self.rho)
        return theta - eta * jax.grad(loss)(perturbed)
