r"""Retractions onto $\Gamma$ in multiplier form: $\theta = \tilde\theta + J(\tilde\theta)^\top
\lambda$ with $\lambda \in \mathbb R^n$ solving $F(\theta) = 0$.

The correction is normal at $\tilde\theta$, so for a tangent step $v$ the retraction
$R(\theta, v) = \theta + v + J^\top\lambda$ agrees with $\theta + v$ to second order.

The iteration is written out with `lax.while_loop` (no optimistix root find), and
its derivative comes from the implicit function theorem at the solution (a custom
JVP, so forward and reverse mode both work, also when the loop took no step): with
$g(\tilde\theta, \text{data}, \lambda) = F(\tilde\theta + J(\tilde\theta)^\top\lambda)$,
$d\lambda = -(\partial_\lambda g)^{-1}(\partial_{\tilde\theta} g\, d\tilde\theta +
\partial_{\text{data}} g\, d\,\text{data})$. This avoids the silent zero-derivative
trap of passing $\tilde\theta$ as a root finder's initial guess, and costs nothing
when no derivative is taken.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from .._manifold import AbstractManifold, Linearisation
from .._projection import AbstractProjector
from .base import (
    _damped_iteration,
    _no_tangent,
    _tangents,
    AbstractRetraction,
    RetractionSolution,
)


class AbstractMultiplierRetraction(AbstractRetraction):
    r"""Retraction along $\operatorname{range} J(\tilde\theta)^\top$:
    $\theta = \tilde\theta + J(\tilde\theta)^\top\lambda$, iterating on $\lambda$.

    **Arguments:** `atol`, `rtol`: the iteration stops once $\max_i|F_i| \le
    \max(\text{atol}, \text{rtol}\cdot$ `manifold.constraint_scale()`$)$;
    `max_steps`, its most iterations (not reaching the tolerance is a failure).
    """

    @abc.abstractmethod
    def correction(
        self,
        manifold: AbstractManifold,
        projector: AbstractProjector,
        base: Linearisation,
        theta: Float[Array, " D"],
        residual: Float[Array, " n"],
    ) -> tuple[Float[Array, " n"], lx.RESULTS] | Float[Array, " n"]:
        r"""The multiplier update $\delta\lambda$ for the current iterate, and the
        result of its linear solve (or the update alone)."""

    def __call__(
        self,
        manifold: AbstractManifold,
        projector: AbstractProjector,
        theta_tilde: Float[Array, " D"],
    ) -> RetractionSolution:
        return _multiplier_retraction(self, manifold, projector, theta_tilde)

    def iterate(
        self,
        manifold: AbstractManifold,
        projector: AbstractProjector,
        theta_tilde: Float[Array, " D"],
    ) -> RetractionSolution:
        """The iteration itself (its derivative is that of the loop, if any)."""
        base = manifold.linearise(theta_tilde)
        normal = base.jacobian.transpose().mv
        tolerance = jnp.maximum(self.atol, self.rtol * manifold.constraint_scale())

        def point(lam):
            return theta_tilde + normal(lam)

        def direction(lam, F):
            delta = self.correction(manifold, projector, base, point(lam), F)
            # A correction may return just the update (no linear solve result).
            return delta if isinstance(delta, tuple) else (delta, lx.RESULTS.successful)

        lam0 = jnp.zeros(manifold.num_constraints, theta_tilde.dtype)
        lam, res, steps, result = _damped_iteration(
            lambda lam: manifold.constraint(point(lam)),
            direction,
            lam0,
            tolerance,
            self.max_steps,
        )
        return RetractionSolution(
            theta=point(lam),
            multipliers=lam,
            residual=res,
            num_steps=steps,
            converged=res <= tolerance,
            tolerance=tolerance,
            result=result,
        )


class ChordRetraction(AbstractMultiplierRetraction):
    r"""Simplified Newton: $\delta\lambda = -(J(\tilde\theta)J(\tilde\theta)^\top)^{-1} F$
    with one Gram matrix for all iterations (the default).

    Each iteration costs one evaluation of $F$; convergence is linear with a ratio
    proportional to the distance to $\Gamma$, so from a step's $O(\text{tol})$ offset
    one or two iterations suffice.

    **Arguments:** as [`manifoldflow.AbstractMultiplierRetraction`][].
    """

    atol: float = 1e-13
    rtol: float = 1e-14
    max_steps: int = 100

    def correction(self, manifold, projector, base, theta, residual):
        delta, result = projector.solve_gram_with_result(base, residual)
        return -delta, result


class NewtonRetraction(AbstractMultiplierRetraction):
    r"""Newton on $\lambda$: $\delta\lambda = -(J(\theta_k)J(\tilde\theta)^\top)^{-1} F$,
    quadratically convergent, re-linearising at every iterate (LU of an $n\times n$
    matrix formed from $n$ products with $J$). Prefer it for far-away starts.

    **Arguments:** as [`manifoldflow.AbstractMultiplierRetraction`][].
    """

    atol: float = 1e-13
    rtol: float = 1e-14
    max_steps: int = 50

    def correction(self, manifold, projector, base, theta, residual):
        del projector
        current = manifold.linearise(theta).jacobian
        operator = lx.MatrixLinearOperator(
            jax.vmap(lambda e: current.mv(base.jacobian.transpose().mv(e)), out_axes=1)(
                jnp.eye(residual.shape[0], dtype=residual.dtype)
            )
        )
        solution = lx.linear_solve(operator, residual, lx.LU(), throw=False)
        finite = jnp.all(jnp.isfinite(solution.value))
        result = lx.RESULTS.where(finite, solution.result, lx.RESULTS.singular)
        return -solution.value, result


@eqx.filter_custom_jvp
def _multiplier_retraction(retraction, manifold, projector, theta_tilde):
    return retraction.iterate(manifold, projector, theta_tilde)


@_multiplier_retraction.def_jvp
def _multiplier_retraction_jvp(primals, tangents):
    r"""Implicit function theorem at the solution $\lambda$ of
    $g(\tilde\theta, m, \lambda) = F_m(\tilde\theta + J_m(\tilde\theta)^\top\lambda) = 0$
    ($m$: the manifold's arrays, its data)."""
    retraction, manifold, projector, theta_tilde = primals
    solution = _multiplier_retraction(retraction, manifold, projector, theta_tilde)
    m, static, dm = _tangents(manifold, tangents[1])
    dtheta_tilde = jnp.zeros_like(theta_tilde) if tangents[3] is None else tangents[3]
    lam = solution.multipliers

    def point(theta_tilde, m, lam):
        jacobian = eqx.combine(m, static).linearise(theta_tilde).jacobian
        return theta_tilde + jacobian.transpose().mv(lam)

    def g(theta_tilde, m, lam):
        return eqx.combine(m, static).constraint(point(theta_tilde, m, lam))

    _, dg = jax.jvp(lambda t, m: g(t, m, lam), (theta_tilde, m), (dtheta_tilde, dm))
    dg_dlam = jax.jacfwd(lambda lam: g(theta_tilde, m, lam))(lam)
    dlam = -jnp.linalg.solve(dg_dlam, dg)
    _, dtheta = jax.jvp(point, (theta_tilde, m, lam), (dtheta_tilde, dm, dlam))
    return solution, _no_tangent(solution, dtheta, dlam)
