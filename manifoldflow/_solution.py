"""The result of a flow solve."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._manifold import AbstractManifold
from ._results import is_result, result_name, RESULTS
from ._retraction import RetractionSolution


class FlowSolution(eqx.Module):
    r"""The computed trajectory of a flow solve, on the manifold at every saved point.

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
    - `tightened`: `(t, rtol, atol)` for each time the noise-floor policy tightened the
      tolerances.
    - `constant`, `stationarity`: the flow constant $c$ and the threshold used.
    - `wall_seconds`: time spent in `solve_flow` (compilation included).
    - `manifold`: the manifold, for `manifold.to_parameters(theta)`.
    - `retraction`: how $\theta_0$ was brought onto $\Gamma$ (a
      [`manifoldflow.RetractionSolution`][]; its `theta` is the first point).
    """

    ts: np.ndarray
    ys: np.ndarray
    step_ts: np.ndarray
    sharpness: np.ndarray
    gradient_norm: np.ndarray
    constraint_violation: np.ndarray
    saved_index: np.ndarray
    theta_final: Array
    t_final: float
    num_steps: int
    num_rejected_steps: int
    result: RESULTS
    tightened: list
    constant: float
    stationarity: float
    wall_seconds: float
    manifold: AbstractManifold
    retraction: RetractionSolution | None = None

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
        return self.manifold.to_parameters(jnp.asarray(self.ys[index]))
