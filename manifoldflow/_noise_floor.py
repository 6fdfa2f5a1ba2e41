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
import numpy as np


def at_noise_floor(
    gradient_norm: np.ndarray, sharpness: np.ndarray, patience: int
) -> bool:
    """Whether the last `patience` values of `gradient_norm` and `sharpness` (host
    arrays over accepted steps, oldest first) show the noise floor (module
    docstring)."""
    g = np.asarray(gradient_norm)
    R = np.asarray(sharpness)
    if g.size <= patience or not np.all(np.isfinite(R[-patience - 1 :])):
        return False
    if np.min(g[-patience:]) <= 0.5 * np.min(g[:-patience]):
        return False
    if np.mean(np.diff(g[-patience - 1 :]) > 0) < 0.25:
        return False
    recent = R[-patience - 1 :]
    increases = np.diff(recent)
    noise = max(
        float(np.max(increases, initial=0.0)),
        64 * np.finfo(R.dtype).eps * float(np.max(np.abs(recent))),
    )
    return bool(recent[0] - recent[-1] <= 10 * noise)


class AbstractNoiseFloorPolicy(eqx.Module):
    """Detects the noise floor (`patience` accepted steps of evidence, see the module
    docstring) and says what to do there: `respond(controller)` returns the step size
    controller to continue with, or `None` to end the solve as `stagnated`."""

    patience: eqx.AbstractVar[int]

    def detect(self, gradient_norm: np.ndarray, sharpness: np.ndarray) -> bool:
        return at_noise_floor(gradient_norm, sharpness, self.patience)

    @abc.abstractmethod
    def respond(
        self, controller: diffrax.AbstractStepSizeController, times_responded: int
    ) -> diffrax.AbstractStepSizeController | None:
        """The controller to go on with after the `times_responded + 1`-th detection,
        or `None` to stop."""


class TightenTolerances(AbstractNoiseFloorPolicy):
    """Divides the `rtol` and `atol` of a `diffrax.PIDController` by `factor` (at most
    `max_times` times, never below `min_rtol`, `min_atol`) and goes on from where the
    solve is; stops as `stagnated` after that, or for other controllers. The default
    when `solve_flow` builds the controller itself."""

    patience: int = 200
    factor: float = 100.0
    max_times: int = 2
    min_rtol: float = 1e-14
    min_atol: float = 1e-16

    def respond(self, controller, times_responded):
        if not isinstance(controller, diffrax.PIDController):
            return None
        rtol = float(controller.rtol)
        if times_responded >= self.max_times or rtol <= self.min_rtol:
            return None
        new_rtol = max(rtol / self.factor, self.min_rtol)
        new_atol = max(float(controller.atol) / self.factor, self.min_atol)
        dtype = jnp.result_type(controller.rtol)
        return eqx.tree_at(
            lambda c: (c.rtol, c.atol),
            controller,
            (jnp.asarray(new_rtol, dtype), jnp.asarray(new_atol, dtype)),
        )


class StopAtNoiseFloor(AbstractNoiseFloorPolicy):
    """Ends the solve as `stagnated` at the noise floor (the default with a
    user-supplied step size controller, which is never changed)."""

    patience: int = 200

    def respond(self, controller, times_responded):
        return None


class IgnoreNoiseFloor(AbstractNoiseFloorPolicy):
    """Never detects a noise floor: the solve runs on to its other stops."""

    patience: int = 0

    def detect(self, gradient_norm, sharpness):
        return False

    def respond(self, controller, times_responded):
        return None
