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
import equinox.internal as eqxi
import jax.numpy as jnp
import jax.tree_util as jtu
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


class NoiseFloorMemory(eqx.Module):
    r"""What a noise-floor policy carries from step to step: a ring of the last
    `patience + 1` accepted values of $\|P_T\nabla R\|$ and $R$, the smallest
    $\|P_T\nabla R\|$ before them since the last response (`older_minimum`, from
    accepted point `history_start` on), and the responses made: `tightened` rows
    `(t, rtol, atol)`, `num_tightened` of them."""

    recent_gradient_norm: Float[Array, " P"]
    recent_sharpness: Float[Array, " P"]
    history_start: Int[Array, ""]
    older_minimum: Scalar
    num_tightened: Int[Array, ""]
    tightened: Float[Array, "K 3"]


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

    def init(self, dtype) -> NoiseFloorMemory:
        """The memory of a solve that has not started."""
        nan = lambda shape: jnp.full(shape, jnp.nan, dtype)
        return NoiseFloorMemory(
            recent_gradient_norm=nan(self.patience + 1),
            recent_sharpness=nan(self.patience + 1),
            history_start=jnp.array(0),
            older_minimum=jnp.array(jnp.inf, dtype),
            num_tightened=jnp.array(0),
            tightened=nan((self.max_responses, 3)),
        )

    def observe(
        self,
        memory: NoiseFloorMemory,
        index: Int[Array, ""],
        pred: Bool[Array, ""],
        gradient_norm: Scalar,
        sharpness: Scalar,
    ) -> NoiseFloorMemory:
        """The memory after the `index`-th accepted point (where `pred`): its values
        join the ring, and the point `patience` before it the older history."""
        patience = self.patience
        ring = index % (patience + 1)
        recent_g = memory.recent_gradient_norm.at[ring].set(
            jnp.where(pred, gradient_norm, memory.recent_gradient_norm[ring])
        )
        recent_R = memory.recent_sharpness.at[ring].set(
            jnp.where(pred, sharpness, memory.recent_sharpness[ring])
        )
        oldest = recent_g[(ring + 1) % (patience + 1)]
        joins = pred & (index - patience >= memory.history_start) & (patience > 0)
        older = jnp.where(
            joins, jnp.minimum(memory.older_minimum, oldest), memory.older_minimum
        )
        return eqx.tree_at(
            lambda m: (m.recent_gradient_norm, m.recent_sharpness, m.older_minimum),
            memory,
            (recent_g, recent_R, older),
        )

    def update(
        self,
        memory: NoiseFloorMemory,
        index: Int[Array, ""],
        pred: Bool[Array, ""],
        controller: diffrax.AbstractStepSizeController,
        t: Scalar,
    ) -> tuple[NoiseFloorMemory, diffrax.AbstractStepSizeController, Bool[Array, ""]]:
        """At the `index`-th accepted point (where `pred`: accepted, and the solve
        still going), after `observe`: if the last `patience` steps show the noise
        floor, the response. `(memory, the controller to go on with, stagnated?)`."""
        patience = self.patience
        if patience == 0:
            return memory, controller, jnp.array(False)
        order = (index + 1 + jnp.arange(patience + 1)) % (patience + 1)
        enough = index - memory.history_start >= patience
        floor = (
            pred
            & enough
            & self.detect(
                memory.recent_gradient_norm[order],
                memory.recent_sharpness[order],
                memory.older_minimum,
            )
        )
        responded, go_on = self.respond(controller, memory.num_tightened)
        tighten = floor & go_on
        dynamic, static = eqx.partition(controller, eqx.is_array)
        chosen = jtu.tree_map(
            lambda new, old: jnp.where(tighten, new, old),
            eqx.filter(responded, eqx.is_array),
            dynamic,
        )
        record = jnp.stack(
            [
                t,
                jnp.asarray(getattr(responded, "rtol", jnp.nan), t.dtype),
                jnp.asarray(getattr(responded, "atol", jnp.nan), t.dtype),
            ]
        )
        tightened = memory.tightened
        if tightened.shape[0] > 0:
            row = jnp.minimum(memory.num_tightened, tightened.shape[0] - 1)
            tightened = eqxi.buffer_at_set(tightened, row, record, pred=tighten)
        # tree_at, not the constructor: inside the loop `tightened` is a buffer.
        memory = eqx.tree_at(
            lambda m: (m.history_start, m.older_minimum, m.num_tightened, m.tightened),
            memory,
            (
                jnp.where(tighten, index + 1, memory.history_start),
                jnp.where(tighten, jnp.inf, memory.older_minimum),
                memory.num_tightened + tighten,
                tightened,
            ),
        )
        return memory, eqx.combine(chosen, static), floor & ~go_on


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
