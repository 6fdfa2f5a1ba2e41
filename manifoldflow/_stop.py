r"""Stop conditions: checked at the end of every accepted step of
[`manifoldflow.solve_flow`][], each ending the solve with its own result."""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Scalar

from ._geometry import FlowEvaluation
from ._results import RESULTS


# The largest condition number of J J^T that float64 solves with it are trusted at: the
# Cholesky solution then still has about three correct digits. The initial rank check
# of `solve_flow` uses the same bound.
DEFAULT_MAX_CONDITION = 1.0 / (1e3 * float(np.finfo(np.float64).eps))


class AbstractStopCondition(eqx.Module):
    """Decides from the flow's evaluation at an accepted point whether to stop there.

    Subclasses implement `__call__(evaluation) -> bool` (traced: use `jnp`) and the
    class attribute `result`, the [`manifoldflow.RESULTS`][] item the solve ends with.
    """

    result: eqx.AbstractClassVar[RESULTS]

    @abc.abstractmethod
    def __call__(self, evaluation: FlowEvaluation) -> Bool[Array, ""]:
        """Whether to stop at the point of `evaluation`."""


class StationarityStop(AbstractStopCondition):
    r"""Stops once $\|P_T\nabla R\| \le$ `threshold` (result `stationary`): the
    point is then an $\varepsilon$-stationary point of $R$ on $\Gamma$. `solve_flow`
    adds it from its `stationarity` argument (none for `stationarity=0`).

    **Arguments:** `threshold`, $\varepsilon \ge 0$.
    """

    threshold: Float[ArrayLike, ""]
    result: ClassVar[RESULTS] = RESULTS.stationary

    def __call__(self, evaluation):
        return evaluation.gradient_norm <= self.threshold


def gram_condition_estimate(gram: Float[Array, "n n"], iterations: int = 3) -> Scalar:
    r"""$\kappa(JJ^\top) = \lambda_{\max}/\lambda_{\min}$ estimated by Rayleigh
    quotients after `iterations` steps of power iteration and of inverse iteration (the
    latter with one Cholesky factorisation): $n^3/3 + 6n^2$ flops instead of an
    eigenvalue decomposition's $\approx 9n^3$. The inverse-iteration error decays like
    $(\lambda_{\min}/\lambda_2)^{2k}$, so the estimate is sharp exactly when the matrix
    approaches singularity; infinite where the factorisation fails."""
    n = gram.shape[0]
    start = 1.0 + 0.5 * jnp.sin(0.7 * jnp.arange(n, dtype=gram.dtype) + 0.3)
    factor = jnp.linalg.cholesky(gram)

    def rayleigh(step):
        v = start / jnp.linalg.norm(start)
        for _ in range(iterations):
            v = step(v)
            v = v / jnp.linalg.norm(v)
        return v @ gram @ v

    largest = rayleigh(lambda v: gram @ v)
    smallest = rayleigh(lambda v: jax.scipy.linalg.cho_solve((factor, True), v))
    estimate = largest / smallest
    return jnp.where(jnp.isfinite(estimate) & (smallest > 0), estimate, jnp.inf)


class ConditionStop(AbstractStopCondition):
    r"""Stops once the Gram matrix $JJ^\top$ becomes numerically singular (result
    `ill_conditioned`): its estimated condition number exceeds `max_condition`
    (default $1/(10^3\epsilon) \approx 4.5\cdot10^{12}$, where a Cholesky solve keeps
    about three digits).

    This happens near singular points of $\Gamma$ (e.g. the coordinates
    $u_k^2 + v_k^2 \to 0$ of the sparse-recovery model) or when constraints become
    dependent. [`manifoldflow.SVDProjector`][] projects exactly there, so
    `solve_flow` does not add this stop when it is used.
    """

    max_condition: Float[ArrayLike, ""] = DEFAULT_MAX_CONDITION
    result: ClassVar[RESULTS] = RESULTS.ill_conditioned

    def __call__(self, evaluation):
        condition = gram_condition_estimate(evaluation.linearisation.gram)
        return condition > self.max_condition
