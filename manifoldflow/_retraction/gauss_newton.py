r"""Minimum-norm Gauss--Newton onto $\Gamma$, for starts far from it."""

import equinox as eqx
import jax
import jax.numpy as jnp

from .base import (
    _damped_iteration,
    _no_tangent,
    _tangents,
    AbstractRetraction,
    RetractionSolution,
)


class GaussNewtonRetraction(AbstractRetraction):
    r"""Minimum-norm Gauss--Newton with backtracking, re-linearising at each iterate:
    $\theta_{k+1} = \theta_k - \alpha_k J(\theta_k)^\top (J J^\top)^{-1} F(\theta_k)$.

    Not confined to the affine space $\tilde\theta + \operatorname{range}
    J(\tilde\theta)^\top$, so it reaches $\Gamma$ from much farther away than the
    multiplier-form retractions: the default for the initial point of a solve. Its
    correction is not normal at $\tilde\theta$, so `multipliers` are zeros. The step
    $\alpha_k$ is halved from 1 until $\max|F|$ decreases.

    **Arguments:** `atol`, `rtol`: the iteration stops once $\max_i|F_i| \le
    \max(\text{atol}, \text{rtol}\cdot$ `manifold.constraint_scale()`$)$ (loosen
    them where the rounding of $F$ is larger, e.g. outputs that are differences of
    large terms); `max_steps`, its most iterations.
    """

    atol: float = 1e-13
    rtol: float = 1e-14
    max_steps: int = 200

    def __call__(self, manifold, projector, theta_tilde):
        return _gauss_newton_retraction(self, manifold, projector, theta_tilde)

    def iterate(self, manifold, projector, theta_tilde):
        """The iteration itself (its derivative is that of the loop, if any)."""
        tolerance = jnp.maximum(self.atol, self.rtol * manifold.constraint_scale())

        def direction(theta, F):
            lin = manifold.linearise(theta)
            lam, result = projector.solve_gram_with_result(lin, F)
            return -lin.jacobian.transpose().mv(lam), result

        theta, res, steps, result = _damped_iteration(
            manifold.constraint, direction, theta_tilde, tolerance, self.max_steps
        )
        return RetractionSolution(
            theta=theta,
            multipliers=jnp.zeros(manifold.num_constraints, theta.dtype),
            residual=res,
            num_steps=steps,
            converged=res <= tolerance,
            tolerance=tolerance,
            result=result,
        )


@eqx.filter_custom_jvp
def _gauss_newton_retraction(retraction, manifold, projector, theta_tilde):
    return retraction.iterate(manifold, projector, theta_tilde)


@_gauss_newton_retraction.def_jvp
def _gauss_newton_retraction_jvp(primals, tangents):
    r"""The derivative of the closest-point map at the limit $\theta$:
    $d\theta = d\tilde\theta - J^\top (JJ^\top)^{-1}(J\, d\tilde\theta +
    \partial_m F\, dm)$, the tangential part of $d\tilde\theta$ moved so that
    $F = 0$ keeps holding. Exact for a start on $\Gamma$ (e.g. a solve started on
    the manifold of the unperturbed data); from a start off $\Gamma$ the limit of the
    Gauss--Newton path also moves tangentially in a path-dependent way that this
    leaves out."""
    retraction, manifold, projector, theta_tilde = primals
    solution = _gauss_newton_retraction(retraction, manifold, projector, theta_tilde)
    m, static, dm = _tangents(manifold, tangents[1])
    dtheta_tilde = jnp.zeros_like(theta_tilde) if tangents[3] is None else tangents[3]
    theta = solution.theta
    _, dF = jax.jvp(
        lambda m, t: eqx.combine(m, static).constraint(t),
        (m, theta),
        (dm, dtheta_tilde),
    )
    jacobian = manifold.linearise(theta).jacobian.as_matrix()
    lam = jnp.linalg.solve(jacobian @ jacobian.T, dF)
    dtheta = dtheta_tilde - jacobian.T @ lam
    return solution, _no_tangent(solution, dtheta, jnp.zeros_like(lam))
