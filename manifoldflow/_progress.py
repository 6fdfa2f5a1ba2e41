"""Progress meters of [`manifoldflow.solve_flow`][]: called on the host after every
jitted window of steps, with the time, the step count, $R$ and $\\|P_T\\nabla R\\|$."""

import abc
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx


class AbstractProgressMeter(eqx.Module):
    """`init(t, num_steps, sharpness, gradient_norm, threshold) -> state`, then
    `step(state, t, num_steps, sharpness, gradient_norm) -> state` after each window
    and `close(state)` at the end (also after an error or an interrupt)."""

    @abc.abstractmethod
    def init(self, t, num_steps, sharpness, gradient_norm, threshold) -> Any: ...

    @abc.abstractmethod
    def step(self, state, t, num_steps, sharpness, gradient_norm) -> Any: ...

    def close(self, state) -> None:
        del state


class NoProgressMeter(AbstractProgressMeter):
    """Shows nothing."""

    def init(self, t, num_steps, sharpness, gradient_norm, threshold):
        return None

    def step(self, state, t, num_steps, sharpness, gradient_norm):
        return None


class TqdmProgressMeter(AbstractProgressMeter):
    r"""A tqdm bar counting decades of $\|P_T\nabla R\|$ down to the threshold, with t,
    the number of steps, R and $\|P_T\nabla R\|$ beside it, so that a slow flow is
    seen to move."""

    def init(self, t, num_steps, sharpness, gradient_norm, threshold):
        import tqdm

        g0 = max(gradient_norm, 1e-300)
        total = math.log10(g0 / threshold) if threshold > 0 else 16.0
        bar = tqdm.tqdm(
            total=max(0.0, total),
            unit="decade",
            bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} decades of |P_T grad R| "
            "[{elapsed}]{postfix}",
        )
        state = (bar, g0)
        return self.step(state, t, num_steps, sharpness, gradient_norm)

    def step(self, state, t, num_steps, sharpness, gradient_norm):
        bar, g0 = state
        decades = math.log10(g0 / max(gradient_norm, 1e-300))
        bar.n = min(bar.total, max(0.0, decades))
        bar.set_postfix(
            t=f"{t:.4g}",
            steps=num_steps,
            R=f"{sharpness:.10g}",
            grad=f"{gradient_norm:.2e}",
        )
        bar.refresh()
        return state

    def close(self, state):
        state[0].close()


class CallbackProgressMeter(AbstractProgressMeter):
    """Calls `callback(dict(t=..., num_steps=..., sharpness=..., gradient_norm=...))`
    after every window."""

    callback: Callable[[dict], None]

    def init(self, t, num_steps, sharpness, gradient_norm, threshold):
        return self.step(None, t, num_steps, sharpness, gradient_norm)

    def step(self, state, t, num_steps, sharpness, gradient_norm):
        self.callback(
            dict(
                t=t,
                num_steps=num_steps,
                sharpness=sharpness,
                gradient_norm=gradient_norm,
            )
        )
        return state


class ProgressMeters(AbstractProgressMeter):
    """Several meters at once."""

    meters: tuple[AbstractProgressMeter, ...]

    def init(self, *args):
        return tuple(meter.init(*args) for meter in self.meters)

    def step(self, state, *args):
        return tuple(m.step(s, *args) for m, s in zip(self.meters, state))

    def close(self, state):
        for meter, s in zip(self.meters, state):
            meter.close(s)
