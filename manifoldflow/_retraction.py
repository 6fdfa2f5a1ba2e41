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
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, Scalar

from ._manifold import AbstractManifold, Linearisation
from ._projection import AbstractProjector


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


class AbstractMultiplierRetraction(AbstractRetraction):
    r"""Retraction along $\operatorname{range} J(\tilde\theta)^\top$:
    $\theta = \tilde\theta + J(\tilde\theta)^\top\lambda$, iterating on $\lambda$."""

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


class GaussNewtonRetraction(AbstractRetraction):
    r"""Minimum-norm Gauss--Newton with backtracking, re-linearising at each iterate:
    $\theta_{k+1} = \theta_k - \alpha_k J(\theta_k)^\top (J J^\top)^{-1} F(\theta_k)$.

    Not confined to the affine space $\tilde\theta + \operatorname{range}
    J(\tilde\theta)^\top$, so it reaches $\Gamma$ from much farther away than the
    multiplier-form retractions: the default for the initial point of a solve. Its
    correction is not normal at $\tilde\theta$, so `multipliers` are zeros.
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


def _tangents(primal, tangent):
    """The tangent of the floating-point arrays of `primal`: `(arrays, static,
    tangents)`, with zeros where `tangent` has none."""
    dynamic, static = eqx.partition(primal, eqx.is_inexact_array)
    if tangent is None:
        return dynamic, static, jtu.tree_map(jnp.zeros_like, dynamic)
    tangent = jtu.tree_map(
        lambda p, t: jnp.zeros_like(p) if t is None else t,
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


@eqx.filter_custom_jvp
def _gauss_newton_retraction(retraction, manifold, projector, theta_tilde):
    return retraction.iterate(manifold, projector, theta_tilde)


@_gauss_newton_retraction.def_jvp
def _gauss_newton_retraction_jvp(primals, tangents):
    r"""The derivative of the closest-point map at the limit $\theta$:
    $d\theta = d\tilde\theta - J^\top (JJ^\top)^{-1}(J\, d\tilde\theta +
    \partial_m F\, dm)$, the tangential part of $d\tilde\theta$ moved so that
    $F = 0$ keeps holding (exact for a start on or near $\Gamma$)."""
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
