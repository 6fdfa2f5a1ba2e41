"""Per-sample losses whose zero set defines the manifold, and their curvature."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float


class AbstractLoss(eqx.Module):
    r"""A per-sample loss $\ell(f, y)$, minimal (zero) at $f = y$.

    The training loss is $L(\theta) = \frac1n \sum_i \ell(f_\theta(x_i), y_i)$. On the
    zero-loss manifold its Hessian is $\nabla^2 L = \sum_i w_i \nabla f_i \nabla f_i^\top$
    with curvature weights $w_i = \frac1n \partial_f^2 \ell(y_i, y_i)$, so
    $\operatorname{Tr}\nabla^2 L = \sum_i w_i \|\nabla f_i\|^2$.
    """

    @abc.abstractmethod
    def __call__(self, prediction: ArrayLike, label: ArrayLike) -> Array:
        """The loss of one example."""

    def curvature_weights(self, labels: Float[Array, " n"]) -> Float[Array, " n"]:
        r"""$w_i = \frac1n \partial_f^2 \ell(f, y_i)|_{f = y_i}$, by autodiff."""
        second = jax.vmap(jax.grad(jax.grad(self.__call__)))(labels, labels)
        return second / labels.shape[0]

    def label_noise_constant(self, sigma: float, num_data: int) -> float:
        r"""Time-scale constant $c$ of the limiting flow of label-noise gradient descent.

        Full-batch gradient descent $\theta \leftarrow \theta - \eta \nabla \frac1n
        \sum_i \ell(f_i, y_i + \xi_i)$ with $\xi_i \sim \mathcal N(0, \sigma^2)$ drifts,
        in the time $\tau = k\eta^2$, along $d\theta/d\tau = -c\, P_T \nabla
        \operatorname{Tr}\nabla^2 L$. For a quadratic loss with curvature weight $w$
        the gradient noise has covariance $w\sigma^2 \nabla^2 L$ on the manifold, which
        gives $c = w\sigma^2/4$ (Li, Wang and Arora 2022).
        """
        del num_data
        raise NotImplementedError(
            f"{type(self).__name__} does not define the label-noise constant."
        )


class MeanSquaredLoss(AbstractLoss):
    r"""$\ell(f, y) = (f - y)^2$, so $L = \frac1n \sum_i (f_i - y_i)^2$ (the default).

    Curvature weights $w_i = 2/n$; label-noise constant $c = \sigma^2 / (2n)$.
    """

    def __call__(self, prediction, label):
        return (jnp.asarray(prediction) - label) ** 2

    def curvature_weights(self, labels):
        return jax.device_put(
            np.full(labels.shape[0], 2.0 / labels.shape[0], labels.dtype)
        )

    def label_noise_constant(self, sigma: float, num_data: int) -> float:
        return sigma**2 / (2 * num_data)


class HalfMeanSquaredLoss(AbstractLoss):
    r"""$\ell(f, y) = \frac12 (f - y)^2$, so $L = \frac1{2n} \sum_i (f_i - y_i)^2$.

    Curvature weights $w_i = 1/n$; label-noise constant $c = \sigma^2 / (4n)$.
    """

    def __call__(self, prediction, label):
        return 0.5 * (jnp.asarray(prediction) - label) ** 2

    def curvature_weights(self, labels):
        return jax.device_put(
            np.full(labels.shape[0], 1.0 / labels.shape[0], labels.dtype)
        )

    def label_noise_constant(self, sigma: float, num_data: int) -> float:
        return sigma**2 / (4 * num_data)
