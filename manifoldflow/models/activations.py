r"""Activations of the two-layer model $f_\theta(x) = \sum_j a_j \phi(\theta_j^\top x)$,
with the derivatives and inverse that the closed forms and theory checks need."""

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from .._errors import InputError


def _solve_depressed_cubic(p: float, q: Array) -> Array:
    r"""The real root of $z^3 + p z = q$ for $p \ge 0$ (Cardano, cancellation-free,
    then two Newton steps)."""
    q = jnp.asarray(q)
    s = jnp.sqrt(q**2 / 4 + p**3 / 27)
    A = jnp.cbrt(jnp.abs(q) / 2 + s)
    safe_A = jnp.where(A > 0, A, 1.0)
    z = jnp.sign(q) * jnp.where(A > 0, A - p / (3 * safe_A), 0.0)
    for _ in range(2):
        derivative = 3 * z**2 + p
        z = jnp.where(
            derivative > 0,
            z - (z**3 + p * z - q) / jnp.where(derivative > 0, derivative, 1.0),
            z,
        )
    return z


class AbstractActivation(eqx.Module):
    r"""A strictly increasing activation $\phi$ with $\phi''' > 0$.

    `rho` returns the constants of Gatmiry et al.'s Assumption 3.1,
    $\rho_1 = \inf\phi'$ and $\rho_2 = \inf\phi'''$ ($\rho_1 = 0$ means the assumption
    does not hold); `normality` the constant $\alpha$ of the normality condition
    $\phi''^2 \le \alpha\,\phi'\phi'''$ (candidate N1 in the reconstructed statement).
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def __call__(self, z: ArrayLike) -> Array: ...

    @abc.abstractmethod
    def derivative(self, z: ArrayLike) -> Array: ...

    @abc.abstractmethod
    def second_derivative(self, z: ArrayLike) -> Array: ...

    @abc.abstractmethod
    def third_derivative(self, z: ArrayLike) -> Array: ...

    @abc.abstractmethod
    def inverse(self, u: ArrayLike) -> Array:
        """$\\phi^{-1}(u)$."""

    @abc.abstractmethod
    def rho(self) -> tuple[float, float]:
        """$(\\inf \\phi', \\inf \\phi''')$."""

    def normality(self) -> float:
        """$\\alpha = \\sup \\phi''^2 / (\\phi'\\phi''')$."""
        return 2.0


class CubicLinear(AbstractActivation):
    r"""$\phi(z) = z + z^3/3$: $\phi' = 1 + z^2 \ge 1$, $\phi''' = 2$ (the default)."""

    name: ClassVar[str] = "cubic-linear"

    def __call__(self, z):
        return z + z**3 / 3

    def derivative(self, z):
        return 1 + z**2

    def second_derivative(self, z):
        return 2 * jnp.asarray(z)

    def third_derivative(self, z):
        return jnp.full_like(jnp.asarray(z, dtype=float), 2.0)

    def inverse(self, u):
        return _solve_depressed_cubic(3.0, 3 * jnp.asarray(u))

    def rho(self):
        return 1.0, 2.0


class Cube(AbstractActivation):
    r"""$\phi(z) = z^3$. $\phi'(0) = 0$ violates Assumption 3.1: Theorem 3.3 holds only
    with $\operatorname{sign}(\theta_j^\top x_i) = \operatorname{sign}(y_i)$ and labels
    away from 0 (Lemma G.4), and points with some $\theta_j^\top x_i = 0$ are spurious
    stationary points."""

    name: ClassVar[str] = "cube"

    def __call__(self, z):
        return jnp.asarray(z) ** 3

    def derivative(self, z):
        return 3 * jnp.asarray(z) ** 2

    def second_derivative(self, z):
        return 6 * jnp.asarray(z)

    def third_derivative(self, z):
        return jnp.full_like(jnp.asarray(z, dtype=float), 6.0)

    def inverse(self, u):
        return jnp.cbrt(jnp.asarray(u))

    def rho(self):
        return 0.0, 6.0


class CubeBeta(AbstractActivation):
    r"""$\phi(z) = z^3 + \beta z$ with $\beta > 0$: $\rho_1 = \beta$, $\rho_2 = 6$."""

    name: ClassVar[str] = "cube-beta"
    beta: float = 1.0

    def __check_init__(self):
        if not self.beta > 0:
            raise InputError(
                f"cube-beta needs beta > 0 (got {self.beta}); beta <= 0 makes phi "
                "non-monotone. Use the `cube` activation for beta = 0."
            )

    def __call__(self, z):
        return jnp.asarray(z) ** 3 + self.beta * jnp.asarray(z)

    def derivative(self, z):
        return 3 * jnp.asarray(z) ** 2 + self.beta

    def second_derivative(self, z):
        return 6 * jnp.asarray(z)

    def third_derivative(self, z):
        return jnp.full_like(jnp.asarray(z, dtype=float), 6.0)

    def inverse(self, u):
        return _solve_depressed_cubic(self.beta, jnp.asarray(u))

    def rho(self):
        return float(self.beta), 6.0


def activation_from_name(name: str, beta: float = 1.0) -> AbstractActivation:
    r"""The activation of a command-line name: `"cubic-linear"` ($z + z^3/3$, the
    default of `manifoldflow two-layer`), `"cube"` ($z^3$) or `"cube-beta"`
    ($z^3 + \beta z$, with `beta`); `InputError` for another name."""
    table = {"cubic-linear": CubicLinear(), "cube": Cube()}
    if name == "cube-beta":
        return CubeBeta(beta)
    if name not in table:
        raise InputError(
            f"Unknown activation {name!r}: choose cubic-linear, cube or cube-beta."
        )
    return table[name]
