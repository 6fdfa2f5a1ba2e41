"""The retraction family: `AbstractRetraction`, its `RetractionSolution`, the damped
iteration the members share, and the tangent helpers of their implicit derivatives."""

import abc

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, Scalar

from .._manifold import AbstractManifold
from .._projection import AbstractProjector


def _damped_iteration(constraint_at, direction, x0, tolerance, max_steps):
    r"""$x_{k+1} = x_k + \alpha_k \delta_k$ with `(delta_k, linear_result)` =
    `direction(x_k, F_k)`, halving $\alpha_k$ from 1 until $\max|F|$ decreases (so that
    a far-away start cannot diverge); stops at `tolerance`, after `max_steps`, when no
    step decreases the residual (its rounding floor, or no zero nearby), or when a
    linear solve fails. Returns `(x, residual, steps, result)`, `result` an optimistix
    `RESULTS` item: `successful`, `nonlinear_max_steps_reached`,
    `nonlinear_divergence` (stalled above the tolerance) or the linear solve's
    failure."""

    def max_abs(F):
        return jnp.max(jnp.abs(F))

    def cond(carry):
        _, _, res, step, stalled, linear_result = carry
        return (
            (res > tolerance)
            & (step < max_steps)
            & ~stalled
            & (linear_result == lx.RESULTS.successful)
        )

    def body(carry):
        x, F, res, step, _, _ = carry
        delta, linear_result = direction(x, F)

        def shrink_cond(c):
            alpha, _, new_res = c
            return (new_res > (1 - 1e-4 * alpha) * res) & (alpha > 2.0**-30)

        def shrink_body(c):
            alpha = c[0] / 2
            new_F = constraint_at(x + alpha * delta)
            return alpha, new_F, max_abs(new_F)

        F1 = constraint_at(x + delta)
        alpha, new_F, new_res = lax.while_loop(
            shrink_cond, shrink_body, (jnp.asarray(1.0, res.dtype), F1, max_abs(F1))
        )
        improved = new_res < res
        x = jnp.where(improved, x + alpha * delta, x)
        F = jnp.where(improved, new_F, F)
        res = jnp.where(improved, new_res, res)
        return x, F, res, step + 1, ~improved, linear_result

    F0 = constraint_at(x0)
    init = (x0, F0, max_abs(F0), jnp.array(0), jnp.array(False), lx.RESULTS.successful)
    x, _, res, steps, stalled, linear_result = lax.while_loop(cond, body, init)
    result = optx.RESULTS.where(
        res <= tolerance,
        optx.RESULTS.successful,
        optx.RESULTS.where(
            linear_result != lx.RESULTS.successful,
            optx.RESULTS.promote(linear_result),
            optx.RESULTS.where(
                stalled,
                optx.RESULTS.nonlinear_divergence,
                optx.RESULTS.nonlinear_max_steps_reached,
            ),
        ),
    )
    return x, res, steps, result


class RetractionSolution(eqx.Module):
    """The retracted point and how the iteration went.

    **Fields:** `theta` (the point), `multipliers` ($\\lambda$), `residual`
    ($\\max_i |F_i(\\theta)|$), `num_steps`, `converged` (residual within tolerance),
    `tolerance` (the tolerance used), `result` (optional, an optimistix `RESULTS` item:
    `successful`; `nonlinear_max_steps_reached` when `max_steps` ran out;
    `nonlinear_divergence` when the residual stopped decreasing above the tolerance,
    i.e. no zero of $F$ near the start; or the failure of a linear solve).
    """

    theta: Float[Array, " D"]
    multipliers: Float[Array, " n"]
    residual: Scalar
    num_steps: Int[Array, ""]
    converged: Bool[Array, ""]
    tolerance: Scalar = float("nan")
    result: optx.RESULTS | None = None

    @property
    def outcome(self) -> optx.RESULTS:
        """`result`, or for a retraction that does not report one, `successful`
        exactly when `converged` (else `nonlinear_divergence`)."""
        if self.result is not None:
            return self.result
        return optx.RESULTS.where(
            self.converged, optx.RESULTS.successful, optx.RESULTS.nonlinear_divergence
        )


class AbstractRetraction(eqx.Module):
    r"""Maps a point near $\Gamma$ onto $\Gamma$.

    Stops once $\max_i |F_i| \le \max($`atol`, `rtol * manifold.constraint_scale()`$)$,
    after `max_steps`, or when a step no longer decreases the residual (rounding floor).
    """

    atol: eqx.AbstractVar[float]
    rtol: eqx.AbstractVar[float]
    max_steps: eqx.AbstractVar[int]

    @abc.abstractmethod
    def __call__(
        self,
        manifold: AbstractManifold,
        projector: AbstractProjector,
        theta_tilde: Float[Array, " D"],
    ) -> RetractionSolution:
        """Retract `theta_tilde` onto the manifold."""


def _tangents(primal, tangent):
    """The tangent of the floating-point arrays of `primal`: `(arrays, static,
    tangents)`, with zeros where `tangent` has none."""
    dynamic, static = eqx.partition(primal, eqx.is_inexact_array)
    if tangent is None:
        return dynamic, static, jtu.tree_map(jnp.zeros_like, dynamic)
    tangent = jtu.tree_map(
        lambda p, t: None if p is None else (jnp.zeros_like(p) if t is None else t),
        dynamic,
        tangent,
        is_leaf=lambda x: x is None,
    )
    return dynamic, static, tangent


def _no_tangent(solution: RetractionSolution, theta, multipliers):
    """The tangent of a `RetractionSolution`: `theta`, `multipliers`, no others."""
    nones = jtu.tree_map(lambda _: None, solution)
    return eqx.tree_at(
        lambda s: (s.theta, s.multipliers),
        nones,
        (theta, multipliers),
        is_leaf=lambda x: x is None,
    )
