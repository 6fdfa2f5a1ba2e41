r"""The limiting flow of label-noise SGD: $\dot\theta = -c\, P_T \nabla R(\theta)$."""

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, Scalar

from ._custom_types import RealScalarLike
from ._geometry import FlowEvaluation, Geometry
from ._manifold import AbstractManifold
from ._projection import AbstractProjector, CholeskyProjector


class SharpnessFlow(eqx.Module):
    r"""The Riemannian gradient flow of the sharpness on $\Gamma$,

    $$\frac{d\theta}{dt} = -c\, P_T \nabla R(\theta), \qquad
    P_T = I - J^\top (J J^\top)^{-1} J,$$

    callable as a diffrax vector field `flow(t, theta, args)`.

    **Arguments:**

    - `manifold`: an [`manifoldflow.AbstractManifold`][].
    - `projector`: how $P_T$ is applied (default [`manifoldflow.CholeskyProjector`][]).
    - `constant`: $c$. `1.0` is the plain Riemannian gradient flow; for label-noise GD
      with noise level $\sigma$ use `loss.label_noise_constant(sigma, n)`
      ($\sigma^2/(2n)$ for $L = \frac1n\sum_i (f_i - y_i)^2$), whose time is
      $\tau = \eta^2 \times$ (number of steps).
    """

    manifold: AbstractManifold
    projector: AbstractProjector = CholeskyProjector()
    constant: RealScalarLike = 1.0

    def evaluate(
        self, theta: Float[Array, " D"], guess: Float[Array, " n"] | None = None
    ) -> FlowEvaluation:
        """$P_T \\nabla R$, its multipliers and the linearisation at `theta`.
        `guess`: a starting point for an iterative projector's multipliers (e.g.
        those of a nearby point); direct projectors ignore it."""
        return self.geometry.evaluate(theta, guess)

    @property
    def geometry(self) -> Geometry:
        """The flow's [`manifoldflow.Geometry`][] (its manifold and projector)."""
        return Geometry(self.manifold, self.projector)

    def gradient_norm(self, theta: Float[Array, " D"]) -> Scalar:
        """$\\|P_T \\nabla R(\\theta)\\|$ (independent of `constant`)."""
        return self.evaluate(theta).gradient_norm

    def __call__(self, t, theta, args):
        """$-c P_T\\nabla R(\\theta)$; NaN where the projection's linear solve failed,
        so that the step fails (and an adaptive controller retries it smaller) instead
        of moving along an inaccurate direction. `args`: `None`, or the starting
        guess of the multipliers (a solve passes those of its last accepted point)."""
        del t
        evaluation = self.evaluate(theta, args)
        ok = evaluation.result == lx.RESULTS.successful
        return jnp.where(ok, -self.constant * evaluation.riemannian_gradient, jnp.nan)
