r"""The Riemannian trust region with Steihaug--Toint truncated conjugate gradients
(Absil, Baker, Gallivan 2007), on exact Riemannian Hessian products of $R$."""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Int, PRNGKeyArray, Scalar

from .._geometry import Geometry
from .base import (
    AbstractRiemannianMinimiser,
    iterate_at,
    no_progress_floor,
    select,
    StepRecord,
)
from .lanczos import tangent_lanczos


class TrustRegionState(eqx.Module):
    """`radius` ($\\Delta$), `max_radius` ($\\bar\\Delta$), `curvature_checked`
    (whether the current iterate's smallest tangent curvature was checked and found
    not negative), `key` (for the Lanczos starts), `count` (iterations),
    `tolerance` (the gradient tolerance: below it the curvature is checked)."""

    radius: Scalar
    max_radius: Scalar
    curvature_checked: Bool[Array, ""]
    key: PRNGKeyArray
    count: Int[Array, ""]
    tolerance: Scalar


class _Inner(eqx.Module):
    eta: Array
    hessian_eta: Array
    residual: Array
    direction: Array
    residual_squared: Scalar
    iteration: Int[Array, ""]
    done: Bool[Array, ""]
    boundary: Bool[Array, ""]


def _to_boundary(eta, direction, radius):
    r"""$\tau \ge 0$ with $\|\eta + \tau\delta\| = \Delta$."""
    a = jnp.vdot(direction, direction)
    b = 2 * jnp.vdot(eta, direction)
    c = jnp.vdot(eta, eta) - radius**2
    disc = jnp.sqrt(jnp.maximum(b**2 - 4 * a * c, 0.0))
    return (-b + disc) / (2 * jnp.where(a > 0, a, 1))


def truncated_cg(
    hessian, gradient, radius, max_iterations: int, kappa: float, theta: float
) -> tuple[Array, Array, Int[Array, ""], Bool[Array, ""]]:
    r"""Steihaug--Toint: approximately minimise $m(\eta) = \langle g, \eta\rangle +
    \frac12\langle\eta, H\eta\rangle$ over $\|\eta\| \le \Delta$ by CG from
    $\eta = 0$, stopping at negative curvature or the boundary (then on the
    boundary), or once $\|r\| \le \|r_0\|\min(\|r_0\|^\theta, \kappa)$ (superlinear
    convergence of the outer iteration for $\theta = 1$).

    Returns `(eta, H eta, iterations, boundary)`.
    """
    r0 = jnp.linalg.norm(gradient)
    eps = jnp.finfo(gradient.dtype).eps
    target = r0 * jnp.maximum(jnp.minimum(r0**theta, kappa), 1e3 * eps)
    zero = jnp.zeros_like(gradient)
    init = _Inner(
        zero,
        zero,
        gradient,
        -gradient,
        jnp.vdot(gradient, gradient),
        jnp.array(0),
        r0 <= 0,
        jnp.array(False),
    )

    def cond(s):
        return ~s.done & (s.iteration < max_iterations)

    def body(s):
        Hd = hessian(s.direction)
        curvature = jnp.vdot(s.direction, Hd)
        alpha = s.residual_squared / jnp.where(curvature > 0, curvature, 1)
        trial = s.eta + alpha * s.direction
        outside = (curvature <= 0) | (jnp.linalg.norm(trial) >= radius)
        tau = _to_boundary(s.eta, s.direction, radius)
        step = jnp.where(outside, tau, alpha)
        eta = s.eta + step * s.direction
        hessian_eta = s.hessian_eta + step * Hd
        residual = s.residual + alpha * Hd
        residual_squared = jnp.vdot(residual, residual)
        small = jnp.sqrt(residual_squared) <= target
        beta = residual_squared / jnp.where(
            s.residual_squared > 0, s.residual_squared, 1
        )
        return _Inner(
            eta,
            hessian_eta,
            residual,
            -residual + beta * s.direction,
            residual_squared,
            s.iteration + 1,
            outside | small,
            outside,
        )

    final = lax.while_loop(cond, body, init)
    return final.eta, final.hessian_eta, final.iteration, final.boundary


class RiemannianTrustRegion(AbstractRiemannianMinimiser):
    r"""Riemannian trust region on $\Gamma$ with Steihaug--Toint truncated CG on the
    exact Riemannian Hessian $\operatorname{Hess} R[v] = P_T(\nabla^2 R\,v -
    \sum_i\lambda_i\nabla^2F_i\,v)$ (see [`manifoldflow.Geometry`][]).

    Each iteration minimises the quadratic model $m(\eta) = R + \langle g, \eta
    \rangle + \frac12\langle\eta, \operatorname{Hess}R[\eta]\rangle$ over tangent
    $\|\eta\| \le \Delta$, retracts $\theta + \eta$ onto $\Gamma$, and compares the
    actual decrease of $R$ with the model's: $\rho = (R(\theta) - R(\theta^+)) /
    (m(0) - m(\eta))$ ($R$ in the Lagrangian form $R - \lambda^\top F$, blind to the
    retraction's tolerance). A step with $\rho >$ `acceptance` is accepted; $\Delta$ is
    quartered for $\rho < 1/4$ and doubled (up to $\bar\Delta$) for $\rho > 3/4$ on
    the boundary (Absil, Baker, Gallivan 2007; Manopt's `trustregions`). A failed
    retraction or a non-finite value counts as $\rho = -\infty$. Near a minimiser
    the steps are Newton steps, so $\|P_T\nabla R\|$ converges quadratically.

    Saddles: truncated CG follows negative curvature to the boundary wherever it
    meets it; and before the iterate is called stationary, Lanczos
    (`curvature_iterations` products) checks its smallest tangent curvature. Where
    it is below $-$`curvature_tolerance` times the largest, the next step goes along
    that eigenvector to the trust-region boundary (downhill), so the optimiser
    leaves a saddle instead of stopping at it.

    **Arguments:**

    - `initial_radius`: $\Delta_0$; default $\bar\Delta / 8$.
    - `max_radius`: $\bar\Delta$; default $\max(1, \|\theta_0\|)$.
    - `acceptance`: $\rho'$, default 0.1.
    - `max_inner_iterations`: cap on truncated-CG iterations per step; default
      the tangent dimension $D - n$, at most 1000.
    - `kappa`, `theta`: the truncated-CG stopping rule $\|r\| \le \|r_0\|
      \min(\|r_0\|^\theta, \kappa)$ (defaults 0.1 and 1: quadratic convergence).
    - `curvature_iterations`: Lanczos iterations of the saddle check (default 10,
      at most the tangent dimension: Lanczos resolves the extreme eigenvalues
      first, so clearly negative curvature shows within a few); 0 turns it off.
    - `curvature_tolerance`: relative threshold of negative curvature (default
      1e-8).
    - `seed`: seed of the Lanczos starting vectors.
    """

    initial_radius: float | None = None
    max_radius: float | None = None
    acceptance: float = 0.1
    max_inner_iterations: int | None = eqx.field(static=True, default=None)
    kappa: float = 0.1
    theta: float = 1.0
    curvature_iterations: int = eqx.field(static=True, default=10)
    curvature_tolerance: float = 1e-8
    seed: int = eqx.field(static=True, default=0)

    def init(self, geometry, iterate, tolerance):
        dtype = iterate.theta.dtype
        if self.max_radius is None:
            max_radius = jnp.maximum(1.0, jnp.linalg.norm(iterate.theta))
        else:
            max_radius = jnp.asarray(self.max_radius, dtype)
        if self.initial_radius is None:
            radius = max_radius / 8
        else:
            radius = jnp.asarray(self.initial_radius, dtype)
        return TrustRegionState(
            radius.astype(dtype),
            max_radius.astype(dtype),
            jnp.array(False),
            jax.random.PRNGKey(self.seed),
            jnp.array(0),
            jnp.asarray(tolerance, dtype),
        )

    def _tangent_dimension(self, geometry: Geometry) -> int:
        manifold = geometry.manifold
        return max(1, manifold.dimension - manifold.num_constraints)

    def terminate(self, geometry, iterate, state, tolerance):
        small = iterate.gradient_norm <= tolerance
        if self.curvature_iterations == 0:
            return small
        return small & state.curvature_checked

    def step(self, geometry, iterate, state):
        evaluation = geometry.evaluate(iterate.theta, iterate.multipliers)
        hessian = geometry.hessian_operator(iterate.theta, evaluation)
        g = iterate.gradient
        dimension = self._tangent_dimension(geometry)
        max_inner = (
            min(dimension, 1000)
            if self.max_inner_iterations is None
            else self.max_inner_iterations
        )
        check = (
            (iterate.gradient_norm <= state.tolerance) & ~state.curvature_checked
            if self.curvature_iterations > 0
            else jnp.array(False)
        )

        def newton_like():
            eta, h_eta, inner, boundary = truncated_cg(
                hessian, g, state.radius, max_inner, self.kappa, self.theta
            )
            return eta, h_eta, inner, inner, boundary, jnp.array(False)

        def curvature():
            k = min(self.curvature_iterations, dimension)
            spectrum = tangent_lanczos(
                hessian,
                lambda v: geometry.project(evaluation, v),
                jax.random.fold_in(state.key, state.count),
                iterate.theta.shape[0],
                k,
            )
            smallest, vector = spectrum.values[0], spectrum.vectors[0]
            scale = jnp.max(jnp.abs(spectrum.values))
            negative = smallest < -self.curvature_tolerance * scale
            sign = jnp.where(jnp.vdot(g, vector) > 0, -1.0, 1.0)
            eta = jnp.where(negative, sign * state.radius * vector, 0.0)
            h_eta = jnp.where(negative, sign * state.radius * smallest * vector, 0.0)
            return eta, h_eta, jnp.array(0), jnp.array(k), negative, ~negative

        if self.curvature_iterations == 0:
            eta, h_eta, inner, products, boundary, confirmed = newton_like()
        else:
            eta, h_eta, inner, products, boundary, confirmed = lax.cond(
                check, curvature, newton_like
            )
        # Only the tangent part moves the point (rounding leaves a normal part).
        eta = geometry.project(evaluation, eta)
        model_decrease = -(jnp.vdot(g, eta) + 0.5 * jnp.vdot(eta, h_eta))
        retracted = geometry.step(iterate.theta, eta)
        candidate, ok = iterate_at(
            geometry, retracted.theta, retracted.residual, iterate.multipliers
        )
        ok = (
            ok
            & (retracted.outcome == optx.RESULTS.successful)
            & jnp.all(jnp.isfinite(eta))
        )
        moved = jnp.linalg.norm(eta) > 0
        regulariser = (
            1e3 * jnp.finfo(g.dtype).eps * jnp.maximum(1.0, jnp.abs(iterate.merit))
        )
        rho = (iterate.merit - candidate.merit + regulariser) / (
            model_decrease + regulariser
        )
        rho = jnp.where(ok & (model_decrease > 0), rho, -jnp.inf)
        radius = jnp.where(
            rho < 0.25,
            state.radius / 4,
            jnp.where(
                (rho > 0.75) & boundary,
                jnp.minimum(2 * state.radius, state.max_radius),
                state.radius,
            ),
        )
        accept = moved & (rho > self.acceptance)
        new = select(accept, candidate, iterate)
        stalled = ~accept & (radius <= no_progress_floor(iterate.theta))
        state = TrustRegionState(
            jnp.where(confirmed, state.radius, radius),
            state.max_radius,
            jnp.where(accept, jnp.array(False), state.curvature_checked | confirmed),
            state.key,
            state.count + 1,
            state.tolerance,
        )
        record = StepRecord(
            step_size=jnp.where(moved, jnp.linalg.norm(eta), state.radius),
            inner_iterations=inner,
            hessian_products=products,
            accepted=accept,
            failed=jnp.array(False),
            stalled=stalled & ~confirmed,
        )
        return new, state, record
