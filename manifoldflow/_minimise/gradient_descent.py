r"""Riemannian gradient descent with Armijo backtracking along the retraction."""

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Scalar

from .base import (
    AbstractRiemannianMinimiser,
    iterate_at,
    no_progress_floor,
    select,
    StepRecord,
)


class GradientDescentState(eqx.Module):
    """`step_size`: the step length $\\alpha$ the next line search starts from;
    `tolerance`: the solve's gradient tolerance."""

    step_size: Scalar
    tolerance: Scalar


class RiemannianGradientDescent(AbstractRiemannianMinimiser):
    r"""$\theta_{k+1} = R_{\theta_k}(-\alpha_k P_T\nabla R(\theta_k))$ with Armijo
        backtracking: $\alpha_k$ is the first of $\alpha, \alpha\beta, \alpha\beta^2,
        \ldots$ with $R(\theta_{k+1}) \le R(\theta_k) - c\,\alpha_k\|P_T\nabla R\|^2$
        (in the Lagrangian form $R - \lambda^\top F$, blind to the retraction's
        tolerance),
        where $\alpha$ is `growth` times the last accepted step (Manopt's adaptive line
        search), so the step size follows the local curvature. Where the predicted
        decrease $lpha\|P_T
    abla R\|^2$ is below the rounding of $R$ ($64\epsilon|R|$),
        a step that does not raise $R$ beyond that rounding is accepted: Armijo cannot
        see such decreases, and the gradient still can. Linear convergence at the rate
        of the Hessian's condition on the tangent space, like the flow itself.

        **Arguments:**

        - `initial_step`: $\alpha$ of the first line search (default 1).
        - `armijo`: $c$ (default $10^{-4}$).
        - `shrink`: $\beta$ (default 0.5).
        - `growth`: factor on the last accepted step at the next search (default 2).
        - `max_backtracks`: most reductions in one line search (default 40).
    """

    initial_step: float = 1.0
    armijo: float = 1e-4
    shrink: float = 0.5
    growth: float = 2.0
    max_backtracks: int = eqx.field(static=True, default=40)

    def init(self, geometry, iterate, tolerance):
        dtype = iterate.theta.dtype
        return GradientDescentState(
            jnp.asarray(self.initial_step, dtype), jnp.asarray(tolerance, dtype)
        )

    def terminate(self, geometry, iterate, state, tolerance):
        return iterate.gradient_norm <= tolerance

    def step(self, geometry, iterate, state):
        g = iterate.gradient
        squared = jnp.vdot(g, g)
        eps = jnp.finfo(g.dtype).eps
        rounding = 64 * eps * jnp.maximum(jnp.abs(iterate.merit), 1e-300)

        def trial(alpha):
            retracted = geometry.step(iterate.theta, -alpha * g)
            candidate, ok = iterate_at(
                geometry, retracted.theta, retracted.residual, iterate.multipliers
            )
            ok = ok & (retracted.outcome == optx.RESULTS.successful)
            armijo = candidate.merit <= (iterate.merit - self.armijo * alpha * squared)
            # Below R's rounding the Armijo decrease cannot be seen (and noise
            # would pass it at random); the gradient norm still can, so there the
            # step must decrease it instead, with R not rising beyond rounding.
            unseen = alpha * squared <= rounding
            descent = (candidate.merit <= iterate.merit + rounding) & (
                candidate.gradient_norm < iterate.gradient_norm
            )
            return candidate, ok & jnp.where(unseen, descent, armijo), ok

        def cond(carry):
            _, _, passed, _, count = carry
            return ~passed & (count < self.max_backtracks)

        def body(carry):
            alpha, _, _, _, count = carry
            alpha = alpha * self.shrink
            candidate, passed, ok = trial(alpha)
            return alpha, candidate, passed, ok, count + 1

        alpha0 = state.step_size
        candidate0, passed0, ok0 = trial(alpha0)
        alpha, candidate, passed, ok, count = lax.while_loop(
            cond, body, (alpha0, candidate0, passed0, ok0, jnp.array(0))
        )
        new = select(passed, candidate, iterate)
        stalled = ~passed | (
            alpha * jnp.sqrt(squared) <= no_progress_floor(iterate.theta)
        )
        step_size = jnp.where(passed, self.growth * alpha, alpha)
        record = StepRecord(
            step_size=alpha,
            inner_iterations=count + 1,
            hessian_products=jnp.array(0),
            accepted=passed,
            failed=jnp.array(False),
            stalled=stalled,
        )
        return new, GradientDescentState(step_size, state.tolerance), record
