r"""The Riemannian geometry of $\Gamma = \{F = 0\}$ that the flow and the optimiser
share: evaluation of $R$ and $P_T\nabla R$, Riemannian Hessian products, retraction.

The Riemannian Hessian of $R$ on the embedded submanifold $\Gamma$ is the tangent part
of the Hessian of the Lagrangian $\mathcal L(\theta, \lambda) = R(\theta) -
\lambda^\top F(\theta)$ at the multipliers of the gradient:

$$\operatorname{Hess} R(\theta)[v] = P_T\Big(\nabla^2 R(\theta)\, v - \sum_i \lambda_i
\nabla^2 F_i(\theta)\, v\Big), \qquad \lambda = (JJ^\top)^{-1} J \nabla R,$$

for tangent $v$ (Absil, Mahony, Trumpf 2013, "An extrinsic look at the Riemannian
Hessian"; Absil, Trumpf, Mahony, Andrews 2009, "All roads lead to Newton"). Both
products are one forward-mode pass through $\theta \mapsto \nabla R(\theta) -
J(\theta)^\top\lambda$ with $\lambda$ held fixed, so no $D \times D$ matrix is ever
formed.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree, Scalar

from ._errors import InputError
from ._manifold import AbstractManifold, Linearisation
from ._projection import AbstractProjector, CholeskyProjector
from ._retraction import AbstractRetraction, ChordRetraction, RetractionSolution


class FlowEvaluation(eqx.Module):
    """The Riemannian gradient $g = P_T\\nabla R$ at a point, with its by-products and
    the result of the projection's linear solve (a lineax `RESULTS` item)."""

    riemannian_gradient: Float[Array, " D"]
    multipliers: Float[Array, " n"]
    linearisation: Linearisation
    result: lx.RESULTS

    @property
    def sharpness(self) -> Scalar:
        return self.linearisation.sharpness

    @property
    def gradient_norm(self) -> Scalar:
        return jnp.linalg.norm(self.riemannian_gradient)


class Geometry(eqx.Module):
    r"""A manifold with the projector and retraction that compute on it: everything
    about $\Gamma$ that the sharpness flow ([`manifoldflow.SharpnessFlow`][]), the
    projected solver and [`manifoldflow.minimise_sharpness`][] use, written once.

    **Arguments:**

    - `manifold`: an [`manifoldflow.AbstractManifold`][].
    - `projector`: how $P_T$ and Gram solves are computed (default
      [`manifoldflow.CholeskyProjector`][]; [`manifoldflow.CGProjector`][] on a
      matrix-free manifold).
    - `retraction`: how a point near $\Gamma$ is mapped onto it (default
      [`manifoldflow.ChordRetraction`][]).
    """

    manifold: AbstractManifold
    projector: AbstractProjector = CholeskyProjector()
    retraction: AbstractRetraction = ChordRetraction()

    def evaluate(
        self, theta: Float[Array, " D"], guess: Float[Array, " n"] | None = None
    ) -> FlowEvaluation:
        """$P_T \\nabla R$, its multipliers and the linearisation at `theta`.
        `guess`: a starting point for an iterative projector's multipliers (e.g.
        those of a nearby point); direct projectors ignore it."""
        lin = self.manifold.linearise(theta)
        g, lam, result = self.projector.project_with_result(lin, lin.gradient, guess)
        return FlowEvaluation(g, lam, lin, result)

    def project(
        self, evaluation: FlowEvaluation, vector: Float[Array, " D"]
    ) -> Float[Array, " D"]:
        r"""$P_T v$ at the point of `evaluation` (NaN where its linear solve failed)."""
        projected, _, result = self.projector.project_with_result(
            evaluation.linearisation, vector
        )
        return jnp.where(result == lx.RESULTS.successful, projected, jnp.nan)

    def lagrangian_gradient(
        self, theta: Float[Array, " D"], multipliers: Float[Array, " n"]
    ) -> Float[Array, " D"]:
        r"""$\nabla_\theta \mathcal L = \nabla R(\theta) - J(\theta)^\top\lambda$ for
        fixed multipliers $\lambda$ (equal to $P_T\nabla R$ at the point whose
        multipliers they are)."""
        gradient = self.manifold.linearise(theta).gradient
        _, pullback = jax.vjp(self.manifold.constraint, theta)
        (normal,) = pullback(multipliers.astype(theta.dtype))
        return gradient - normal

    def hessian_operator(
        self, theta: Float[Array, " D"], evaluation: FlowEvaluation
    ) -> Callable[[Float[Array, " D"]], Float[Array, " D"]]:
        r"""$v \mapsto \operatorname{Hess} R(\theta)[v] = P_T(\nabla^2 R\, v -
        \sum_i\lambda_i\nabla^2F_i\, v)$ for tangent $v$ at `theta`, with
        `evaluation = self.evaluate(theta)`.

        On a dense manifold the Lagrangian gradient is linearised once
        (`jax.linearize`: each product is then one forward pass through stored
        values); on a matrix-free one every product is a fresh `jax.jvp`, so that
        memory stays $O(\text{chunk}\cdot D)$.
        """
        lam = evaluation.multipliers
        gradient = lambda t: self.lagrangian_gradient(t, lam)
        if self.manifold.matrix_free:
            directional = lambda v: jax.jvp(gradient, (theta,), (v,))[1]
        else:
            _, directional = jax.linearize(gradient, theta)
        return lambda v: self.project(evaluation, directional(v))

    def hessian_product(
        self,
        theta: Float[Array, " D"],
        vector: Float[Array, " D"],
        evaluation: FlowEvaluation | None = None,
    ) -> Float[Array, " D"]:
        r"""$\operatorname{Hess} R(\theta)[v]$ for a tangent `vector` $v$ (see
        `hessian_operator`)."""
        evaluation = self.evaluate(theta) if evaluation is None else evaluation
        return self.hessian_operator(theta, evaluation)(vector)

    def retract(self, theta_tilde: Float[Array, " D"]) -> RetractionSolution:
        """`theta_tilde` mapped onto $\\Gamma$ by the retraction."""
        return self.retraction(self.manifold, self.projector, theta_tilde)

    def step(
        self, theta: Float[Array, " D"], tangent: Float[Array, " D"]
    ) -> RetractionSolution:
        r"""The retraction $R_\theta(v)$ of a tangent step: $\theta + v$ mapped onto
        $\Gamma$ (multiplier-form retractions agree with the exponential map to
        second order)."""
        return self.retract(theta + tangent)


def coordinates_of(
    manifold: AbstractManifold, theta0: Float[ArrayLike, " D"] | PyTree | None
) -> Array:
    """The flat coordinates of a start: `manifold.initial_point()` for `None`, arrays
    as they are, a pytree of the model's structure (e.g. a trained copy of the model)
    by the manifold's `to_coordinates`, other sequences of numbers as arrays;
    `InputError` otherwise or for a wrong size."""
    if theta0 is None:
        theta = manifold.initial_point()
    elif isinstance(theta0, jax.Array):  # concrete or traced
        theta = theta0
    elif isinstance(theta0, (np.ndarray, float, int)):
        theta = jax.device_put(np.asarray(theta0))
    else:
        theta = pytree_coordinates(manifold, theta0)
    dtype = jnp.promote_types(theta.dtype, manifold.initial_point().dtype)
    if theta.dtype != dtype:
        theta = theta.astype(dtype)
    if theta.shape != (manifold.dimension,):
        raise InputError(
            f"theta0 has shape {theta.shape}, the manifold has {manifold.dimension} "
            f"coordinates: expected shape ({manifold.dimension},).",
            parameter="theta0",
        )
    return theta


def pytree_coordinates(manifold: AbstractManifold, theta0: PyTree) -> Array:
    """The coordinates of a start that is not an array (see `coordinates_of`)."""
    to_coordinates = getattr(manifold, "to_coordinates", None)
    if to_coordinates is not None:
        try:
            return to_coordinates(theta0)
        except InputError:
            if not isinstance(theta0, (list, tuple)):
                raise  # a pytree of another structure: its message says so
    try:
        return jax.device_put(np.asarray(theta0, dtype=float))
    except (TypeError, ValueError):
        raise InputError(
            f"theta0 must be a vector of the manifold's {manifold.dimension} "
            f"coordinates, got a {type(theta0).__name__}.",
            fix="Pass e.g. manifold.initial_point() plus a displacement.",
            parameter="theta0",
        ) from None
