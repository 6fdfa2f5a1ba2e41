r"""The stabilised vector field: the sharpness flow plus a continuous Gauss--Newton
pull-back onto $\Gamma$, for integrating without any projection step."""

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from ._flow import SharpnessFlow


class StabilisedSharpnessFlow(eqx.Module):
    r"""$\dot\theta = -c P_T\nabla R(\theta) - \gamma J^\top(JJ^\top)^{-1}F(\theta)$.

    On $\Gamma$ it is the sharpness flow; off it the second term makes $F$ decay like
    $\dot F = -\gamma F$ (to first order), so a plain ODE solver with no projection
    keeps $|F|$ at the size of its local errors divided by $\gamma$ instead of letting
    it drift (Baumgarte-style stabilisation). Larger $\gamma$ holds $F$ tighter but
    makes the system stiffer (eigenvalue $-\gamma$ in the normal directions).

    **Arguments:** `flow` (a [`manifoldflow.SharpnessFlow`][]), `gamma` ($\gamma > 0$).
    """

    flow: SharpnessFlow
    gamma: float = 1.0

    def __call__(self, t, theta: Float[Array, " D"], args) -> Float[Array, " D"]:
        del t
        manifold, projector = self.flow.manifold, self.flow.projector
        evaluation = self.flow.evaluate(theta, args)
        lin = evaluation.linearisation
        F = manifold.constraint(theta)
        lam, result = projector.solve_gram_with_result(lin, F)
        pull = lin.jacobian.transpose().mv(lam)
        ok = (evaluation.result == lx.RESULTS.successful) & (
            result == lx.RESULTS.successful
        )
        value = -self.flow.constant * evaluation.riemannian_gradient - self.gamma * pull
        return jnp.where(ok, value, jnp.nan)
