r"""The gradient-flow map $\Phi$ onto $\Gamma$: where gradient flow on the loss from an
off-manifold point ends, used as the retraction of a solve's initial point.

Label-noise SGD started off $\Gamma$ first follows gradient flow on $L$ until it
reaches $\Gamma$ (in $O(\log(1/\eta)/\eta)$ steps), and only then drifts along the
sharpness flow, from $\Phi(\theta_0) = \lim_{t\to\infty}\theta(t)$, $\dot\theta =
-\nabla L(\theta)$ (Lemma D.1 of Gatmiry et al. 2024; Li, Wang, Arora 2022, §4). So the
flow that SGD tracks starts at $\Phi(\theta_0)$, not at the nearest point of $\Gamma$.
"""

import diffrax
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, Scalar

from .._errors import InputError
from .._manifold import AbstractManifold
from .._projection import AbstractProjector
from .base import AbstractRetraction, RetractionSolution
from .gauss_newton import GaussNewtonRetraction


class GradientFlowRetractionSolution(RetractionSolution):
    r"""A [`manifoldflow.RetractionSolution`][] with the gradient-flow phase.

    **Extra fields:** `descent_time` (the time $t$ at which gradient flow reached
    $\max_i|F_i| \le$ `switch`), `descent_steps` (its accepted steps),
    `descent_residual` ($\max_i |F_i|$ there), `descent_loss_gradient`
    ($\|\nabla L\|$ there: tiny with a large residual means a critical point of $L$
    off $\Gamma$), `landed` (whether gradient flow reached the switch).
    `num_steps` counts the Gauss--Newton steps that follow.
    """

    descent_time: Scalar = float("nan")
    descent_steps: Int[Array, ""] | int = 0
    descent_residual: Scalar = float("nan")
    descent_loss_gradient: Scalar = float("nan")
    landed: Bool[Array, ""] | bool = False
    descent_result: diffrax.RESULTS | None = None

    @property
    def descent_message(self) -> str:
        """Why the gradient-flow solve ended, in diffrax's words."""
        if self.descent_result is None:
            return ""
        return diffrax.RESULTS[self.descent_result] or "t1 reached"


def curvature_weights(manifold: AbstractManifold, dtype) -> Float[Array, " n"]:
    """The manifold's weights $w_i$ (all ones for a manifold without them)."""
    weights = getattr(manifold, "weights", None)
    if weights is None:
        return jnp.ones(manifold.num_constraints, dtype)
    return jnp.asarray(weights, dtype)


class GradientFlowRetraction(AbstractRetraction):
    r"""$\Phi(\tilde\theta)$: gradient flow $\dot\theta = -\nabla L$ on $L = \frac12
    \sum_i w_i F_i^2$ (the loss whose Hessian on $\Gamma$ has trace $R$, with the
    manifold's curvature weights: for the mean squared loss $w_i = 2/n$ and $L =
    \frac1n\sum_i F_i^2$; a manifold without weights uses $w_i = 1$) from
    $\tilde\theta$ until $\max_i|F_i| \le$ `switch` $\times$
    `manifold.constraint_scale()`, then Gauss--Newton to $\max_i|F_i| \le
    \max($`atol`, `rtol` $\times$ scale$)$.

    Pass it as `solve_flow(..., initial_retraction=GradientFlowRetraction())` to start
    the sharpness flow where label-noise SGD from an off-manifold $\theta_0$ enters
    its second phase: from $\theta_0$ off $\Gamma$, SGD first follows gradient flow
    on $L$, and $\Phi(\theta_0) = \lim_{t\to\infty}\theta(t)$ is where it reaches
    $\Gamma$ (Gatmiry et al. 2024, Lemma D.1; Li, Wang, Arora 2022, Section 4).

    Near $\Gamma$ gradient flow converges linearly and its remaining displacement from
    a residual $\delta$ is normal to $\Gamma$ up to $O(\delta^2)$, as is the
    Gauss--Newton correction, so switching at $\delta$ moves the end point by
    $O(\delta^2)$ along $\Gamma$ ($10^{-14}$ for the default `switch`), besides the
    gradient-flow solve's own error (`flow_rtol`, `flow_atol`). The time scale of $L$
    does not change $\Phi$.

    **Arguments (all optional):**

    - `switch`: residual at which gradient flow hands over to Gauss--Newton (1e-7).
    - `solver`: the diffrax solver of the gradient flow (`Tsit5`); an implicit one
      (e.g. `Kvaerno5`) for a badly conditioned $JJ^\top$, where explicit steps are
      limited by stability.
    - `flow_rtol`, `flow_atol`: its PID tolerances (1e-10, 1e-12).
    - `max_steps`: gradient-flow steps at most (100 000).
    - `atol`, `rtol`, `max_gauss_newton_steps`: of the final Gauss--Newton retraction.
    """

    switch: float = 1e-7
    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    flow_rtol: float = 1e-10
    flow_atol: float = 1e-12
    max_steps: int = 100_000
    atol: float = 1e-13
    rtol: float = 1e-14
    max_gauss_newton_steps: int = 200

    def __check_init__(self):
        for name in ("switch", "flow_rtol", "flow_atol"):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not value > 0:
                raise InputError(
                    f"GradientFlowRetraction: {name} must be > 0, got {value}."
                )
        if self.max_steps < 1:
            raise InputError(
                f"GradientFlowRetraction: max_steps must be >= 1, got {self.max_steps}."
            )

    def __call__(
        self,
        manifold: AbstractManifold,
        projector: AbstractProjector,
        theta_tilde: Float[Array, " D"],
    ) -> GradientFlowRetractionSolution:
        dtype = theta_tilde.dtype
        weights = curvature_weights(manifold, dtype)
        scale = manifold.constraint_scale()
        switch = jnp.asarray(self.switch, dtype) * scale

        def loss_gradient(theta):
            F, pullback = jax.vjp(manifold.constraint, theta)
            return pullback(weights * F)[0]

        def vector_field(t, theta, args):
            return -loss_gradient(theta)

        def reached(t, theta, args, **kwargs):
            return jnp.max(jnp.abs(manifold.constraint(theta))) <= switch

        descent = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field),
            self.solver,
            t0=jnp.asarray(0.0, dtype),
            t1=jnp.asarray(jnp.inf, dtype),
            dt0=None,
            y0=theta_tilde,
            stepsize_controller=diffrax.PIDController(
                rtol=jnp.asarray(self.flow_rtol, dtype),
                atol=jnp.asarray(self.flow_atol, dtype),
            ),
            event=diffrax.Event(reached),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=self.max_steps,
            throw=False,
        )
        theta = descent.ys[-1]
        residual = jnp.max(jnp.abs(manifold.constraint(theta)))
        landed = (descent.result == diffrax.RESULTS.event_occurred) & (
            residual <= switch
        )
        finish = GaussNewtonRetraction(
            atol=self.atol, rtol=self.rtol, max_steps=self.max_gauss_newton_steps
        )(manifold, projector, theta)
        ran_out = descent.result == diffrax.RESULTS.max_steps_reached
        result = optx.RESULTS.where(
            landed,
            finish.outcome,
            optx.RESULTS.where(
                ran_out,
                optx.RESULTS.nonlinear_max_steps_reached,
                optx.RESULTS.nonlinear_divergence,
            ),
        )
        return GradientFlowRetractionSolution(
            theta=finish.theta,
            multipliers=finish.multipliers,
            residual=finish.residual,
            num_steps=finish.num_steps,
            converged=landed & finish.converged,
            tolerance=finish.tolerance,
            result=result,
            descent_time=descent.ts[-1],
            descent_steps=descent.stats["num_accepted_steps"],
            descent_residual=residual,
            descent_loss_gradient=jnp.linalg.norm(loss_gradient(theta)),
            landed=landed,
            descent_result=descent.result,
        )

    def failure_message(self, retracted: GradientFlowRetractionSolution) -> str:
        """Why the gradient flow from $\\theta_0$ did not land on $\\Gamma$."""
        where = (
            f"after {int(retracted.descent_steps)} steps to t = "
            f"{float(retracted.descent_time):.4g}: max|F| = "
            f"{float(retracted.descent_residual):.3e}, |grad L| = "
            f"{float(retracted.descent_loss_gradient):.3e}"
        )
        if bool(retracted.landed):
            return (
                f"Gradient flow on the loss from theta0 reached Gamma ({where}), but "
                "the final Gauss-Newton retraction stopped at max|F| = "
                f"{float(retracted.residual):.3e} after {int(retracted.num_steps)} "
                f"steps (tolerance {float(retracted.tolerance):.1e}): J J^T is "
                "numerically singular there, or the tolerance is below rounding."
            )
        return (
            "Gradient flow on the loss from theta0 did not reach max|F| <= "
            f"{self.switch:.1e} ({where}; {retracted.descent_message}). A tiny |grad "
            "L| with max|F| far from 0 means it converges to a critical point of L "
            "that is not a zero of the loss: no point of Gamma is reached from "
            "theta0. Otherwise raise GradientFlowRetraction(max_steps=...) (now "
            f"{self.max_steps}), or pass solver=diffrax.Kvaerno5() when J J^T is "
            "badly conditioned (explicit steps are then limited by stability)."
        )
