"""The result of a flow solve."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, Shaped

from ._manifold import AbstractManifold
from ._results import is_result, result_name, RESULTS
from ._retraction import RetractionSolution


# Host (NumPy, trimmed) or traced (JAX, padded) values.
_Real = Float[Array, ""] | Float[np.ndarray, ""] | float
_Count = Int[Array, ""] | Int[np.ndarray, ""] | int
_Vector = Shaped[Array, " _"] | Shaped[np.ndarray, " _"]
_Matrix = Float[Array, "_ _"] | Float[np.ndarray, "_ _"]


class FlowSolution(eqx.Module):
    r"""The computed trajectory of a flow solve, on the manifold at every saved point.

    [`manifoldflow.solve_flow`][] returns it with NumPy arrays holding just the steps
    taken; [`manifoldflow.flow_solve`][] (jittable, vmappable) with JAX arrays of
    fixed size: rows of `step_ts` after `num_steps` hold `inf` (the diagnostics NaN),
    output times not reached `inf`, and rows of `tightened` after `num_tightened`
    NaN.

    **Fields:**

    - `ts`: times of the saved points: by default the initial point and every accepted
      step (thinned by `save_every`); with `solve_flow(..., saveat=times)` exactly
      those times (the ones reached before the solve ended).
    - `ys`: manifold coordinates at `ts`, shape `(len(ts), D)`.
    - `step_ts`: times of the initial point and of every accepted step.
    - `sharpness`, `gradient_norm`, `constraint_violation`: $R$,
      $\|P_T\nabla R\|$ and $\max_i |F_i|$ at every time of `step_ts`.
    - `saved_index`: the position of each of `ts` in `step_ts` (saved points are step
      ends), so `sharpness[saved_index]` are the saved points' values; see
      `saved_sharpness` and friends.
    - `theta_final`, `t_final`: the last point and its time.
    - `num_steps`, `num_rejected_steps`: accepted and rejected solver steps.
    - `result`: a [`manifoldflow.RESULTS`][] item; `message` is its text.
    - `tightened`: rows `(t, rtol, atol)`, one for each time the noise-floor policy
      tightened the tolerances (`num_tightened` of them).
    - `constant`, `stationarity`: the flow constant $c$ and the threshold used.
    - `wall_seconds`: time spent in `solve_flow` (compilation included; `None` from
      `flow_solve`; from `solve_flows`, the time of the whole batch).
    - `manifold`: the manifold, for `manifold.to_parameters(theta)` (`None` from
      `flow_solve`, which does not return its input).
    - `retraction`: how $\theta_0$ was brought onto $\Gamma$ (a
      [`manifoldflow.RetractionSolution`][]; its `theta` is the first point).
    """

    ts: _Vector
    ys: _Matrix
    step_ts: _Vector
    sharpness: _Vector
    gradient_norm: _Vector
    constraint_violation: _Vector
    saved_index: _Vector
    theta_final: _Vector
    t_final: _Real
    num_steps: _Count
    num_rejected_steps: _Count
    result: RESULTS
    tightened: _Matrix
    num_tightened: _Count
    constant: _Real
    stationarity: _Real
    retraction: RetractionSolution | None = None
    wall_seconds: float | None = None
    manifold: AbstractManifold | None = None

    @property
    def stationary(self) -> bool:
        """Whether the solve ended at $\\|P_T\\nabla R\\| \\le$ `stationarity`."""
        return is_result(self.result, RESULTS.stationary)

    @property
    def message(self) -> str:
        """The user-facing text of `result`."""
        return RESULTS[self.result]

    @property
    def result_name(self) -> str:
        """The name of `result`, e.g. `"stationary"`."""
        return result_name(self.result)

    @property
    def saved_sharpness(self) -> np.ndarray:
        return self.sharpness[self.saved_index]

    @property
    def saved_gradient_norm(self) -> np.ndarray:
        return self.gradient_norm[self.saved_index]

    @property
    def saved_constraint_violation(self) -> np.ndarray:
        return self.constraint_violation[self.saved_index]

    def parameters(self, index: int = -1) -> Any:
        """The model parameters at saved point `index` (default: the last)."""
        if self.manifold is None:
            raise ValueError(
                "This solution does not hold its manifold (flow_solve does not return "
                "its input): use manifold.to_parameters(solution.ys[index])."
            )
        return self.manifold.to_parameters(jnp.asarray(self.ys[index]))

    def summary(self) -> dict[str, Any]:
        """The scalars every report starts with: `result`, `result_message`,
        `t_final`, `num_steps`, `num_rejected_steps`, `R_initial`, `R_final`,
        `grad_norm_final`, `constraint_violation_max`, `solve_seconds` (host
        solutions)."""
        last = int(self.num_steps)  # the records of flow_solve are padded after it
        return dict(
            result=self.result_name,
            result_message=self.message,
            t_final=float(self.t_final),
            num_steps=last,
            num_rejected_steps=int(self.num_rejected_steps),
            R_initial=float(self.sharpness[0]),
            R_final=float(self.sharpness[last]),
            grad_norm_final=float(self.gradient_norm[last]),
            constraint_violation_max=float(
                np.max(np.asarray(self.constraint_violation)[: last + 1])
            ),
            solve_seconds=self.wall_seconds,
        )


class FlowSolutions(eqx.Module):
    r"""The solutions of a batch of flows ([`manifoldflow.solve_flows`][]): a sequence
    of [`manifoldflow.FlowSolution`][], one per member, each trimmed to its own steps
    like a solution of [`manifoldflow.solve_flow`][].

    `solutions[i]` is the i-th member, `len(solutions)` the batch size; iterating
    gives the members in order. The batch-wide views are NumPy arrays with one entry
    per member: `results` (names, e.g. `"stationary"`), `theta_final` (shape
    `(batch, D)`), `t_final`, `num_steps`, `num_rejected_steps`, `sharpness_final`
    ($R$ at the end), `gradient_norm_final` and `stationary`. `wall_seconds` is the
    time of the whole batched solve (compilation included), `devices` the number of
    devices the batch was laid out over.
    """

    members: tuple[FlowSolution, ...]
    wall_seconds: float
    devices: int = 1

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, index: int) -> FlowSolution:
        return self.members[index]

    def __iter__(self):
        return iter(self.members)

    def _each(self, get) -> np.ndarray:
        return np.asarray([get(member) for member in self.members])

    @property
    def results(self) -> list[str]:
        """Each member's result name."""
        return [member.result_name for member in self.members]

    @property
    def stationary(self) -> np.ndarray:
        return self._each(lambda s: s.stationary)

    @property
    def theta_final(self) -> np.ndarray:
        return np.stack([np.asarray(s.theta_final) for s in self.members])

    @property
    def t_final(self) -> np.ndarray:
        return self._each(lambda s: float(s.t_final))

    @property
    def num_steps(self) -> np.ndarray:
        return self._each(lambda s: int(s.num_steps))

    @property
    def num_rejected_steps(self) -> np.ndarray:
        return self._each(lambda s: int(s.num_rejected_steps))

    @property
    def sharpness_final(self) -> np.ndarray:
        return self._each(lambda s: float(s.sharpness[-1]))

    @property
    def gradient_norm_final(self) -> np.ndarray:
        return self._each(lambda s: float(s.gradient_norm[-1]))

    def counts(self) -> dict[str, int]:
        """How many members ended with each result, e.g. `{"stationary": 1024}`."""
        counts: dict[str, int] = {}
        for name in self.results:
            counts[name] = counts.get(name, 0) + 1
        return counts
