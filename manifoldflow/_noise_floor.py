r"""What [`manifoldflow.solve_flow`][] does at the integrator's noise floor.

With tolerances `rtol`, every step perturbs the point by local errors of about
`rtol * |theta|`, and the vector field itself is computed to about
$\epsilon\,\kappa(JJ^\top)\,\|\nabla R\|$. Once the distance to the stationary point is
that small, $\|P_T\nabla R\|$ stops decreasing and only fluctuates: more steps buy
nothing. A flow that is merely slow (a plateau of $\|P_T\nabla R\|$, a small step size
limit) is NOT at a noise floor: along the exact flow
$dR/dt = -c\|P_T\nabla R\|^2$, so while $R$ still decreases beyond its own noise the
solve is making progress; and while $\|P_T\nabla R\|$ keeps decreasing from step to step
(however slowly: near a singular point of $\Gamma$ it may take thousands of steps to
halve while $R - R^*$ is already below the rounding of $R$), so is the solve. The
evidence required is therefore all of, over the last `patience` accepted steps:

1. $\|P_T\nabla R\|$ has not halved;
2. $R$ has not decreased by more than ten times its noise level: the largest increase
   of $R$ between two accepted steps in that stretch (the exact flow never increases
   $R$, so every increase is noise), and at least $64\epsilon|R|$;
3. $\|P_T\nabla R\|$ fluctuates: it increased in at least a quarter of the steps (at a
   noise floor about half; along a slow but converging flow almost none).
"""

import abc

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, Scalar


def at_noise_floor(
    recent_gradient_norm: Float[Array, " P"],
    recent_sharpness: Float[Array, " P"],
    older_minimum: Scalar,
) -> Bool[Array, ""]:
    r"""Whether the last `patience + 1` values of $\|P_T\nabla R\|$ and $R$ (oldest
    first) show the noise floor (module docstring); `older_minimum` is the smallest
    $\|P_T\nabla R\|$ before them since the last response. Traced."""
    g, R = recent_gradient_norm, recent_sharpness
    not_halved = jnp.min(g[1:]) > 0.5 * older_minimum
    fluctuates = jnp.mean(jnp.diff(g) > 0) >= 0.25
    noise = jnp.maximum(
        jnp.max(jnp.diff(R), initial=0.0),
        64 * jnp.finfo(R.dtype).eps * jnp.max(jnp.abs(R)),
    )
    flat = R[0] - R[-1] <= 10 * noise
    return jnp.all(jnp.isfinite(R)) & not_halved & fluctuates & flat


class AbstractNoiseFloorPolicy(eqx.Module):
    r"""Detects the noise floor and says what to do there. The evidence, over the last
    `patience` accepted steps: $\|P_T\nabla R\|$ has not halved; $R$ has not
    decreased by more than ten times its noise (the largest increase of $R$ between
    two steps, at least $64\epsilon|R|$); $\|P_T\nabla R\|$ rose in at least a
    quarter of the steps. Then `respond(controller, times_responded)`
    returns the step size controller to go on with and whether to go on (else the
    solve ends as `stagnated`). Both are traced; `max_responses` (static) bounds how
    often it goes on."""

    patience: eqx.AbstractVar[int]

    @property
    def max_responses(self) -> int:
        return 0

    def detect(
        self,
        recent_gradient_norm: Float[Array, " P"],
        recent_sharpness: Float[Array, " P"],
        older_minimum: Scalar,
    ) -> Bool[Array, ""]:
        return at_noise_floor(recent_gradient_norm, recent_sharpness, older_minimum)

    @abc.abstractmethod
    def respond(
        self,
        controller: diffrax.AbstractStepSizeController,
        times_responded: Int[Array, ""],
    ) -> tuple[diffrax.AbstractStepSizeController, Bool[Array, ""]]:
        """The controller to go on with after the `times_responded + 1`-th detection,
        and whether to go on."""


class TightenTolerances(AbstractNoiseFloorPolicy):
    """Divides the `rtol` and `atol` of a `diffrax.PIDController` by `factor` (at most
    `max_times` times, never below `min_rtol`, `min_atol`) and goes on from where the
    solve is; stops as `stagnated` after that, or for other controllers (the
    default)."""

    patience: int = eqx.field(static=True, default=200)
    factor: float = 100.0
    max_times: int = eqx.field(static=True, default=2)
    min_rtol: float = 1e-14
    min_atol: float = 1e-16

    @property
    def max_responses(self) -> int:
        return self.max_times

    def respond(self, controller, times_responded):
        if not isinstance(controller, diffrax.PIDController):
            return controller, jnp.array(False)
        rtol = jnp.asarray(controller.rtol)
        atol = jnp.asarray(controller.atol)
        go_on = (times_responded < self.max_times) & (rtol > self.min_rtol)
        tighter = eqx.tree_at(
            lambda c: (c.rtol, c.atol),
            controller,
            (
                jnp.maximum(rtol / self.factor, self.min_rtol).astype(rtol.dtype),
                jnp.maximum(atol / self.factor, self.min_atol).astype(atol.dtype),
            ),
        )
        return tighter, go_on


class StopAtNoiseFloor(AbstractNoiseFloorPolicy):
    r"""Ends the solve as `stagnated` at the noise floor, without changing the
    controller (use it to see where a given tolerance stops making progress).

    **Arguments:** `patience`, the accepted steps of evidence: over them
    $\|P_T\nabla R\|$ has not halved, $R$ has not decreased by more than ten times
    its own noise, and $\|P_T\nabla R\|$ rose in at least a quarter of the steps.
    """

    patience: int = eqx.field(static=True, default=200)

    def respond(self, controller, times_responded):
        return controller, jnp.array(False)


class IgnoreNoiseFloor(AbstractNoiseFloorPolicy):
    """Never detects a noise floor: the solve runs on to its other stops
    (stationarity, `t1`, `max_steps`). For a flow you know to be merely slow."""

    patience: int = eqx.field(static=True, default=0)

    def detect(self, recent_gradient_norm, recent_sharpness, older_minimum):
        return jnp.array(False)

    def respond(self, controller, times_responded):
        return controller, jnp.array(False)
