r"""The optimiser family: `AbstractRiemannianMinimiser` (init/step/terminate) and the
`Iterate` it moves, a point of $\Gamma$ with $R$, $P_T\nabla R$ and its multipliers."""

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, Float, Int, Scalar

from .._geometry import FlowEvaluation, Geometry


class Iterate(eqx.Module):
    r"""A point of $\Gamma$ as the optimiser carries it from step to step.

    **Fields:** `theta` (coordinates), `sharpness` ($R$), `gradient`
    ($P_T\nabla R$, computed exactly as the flow computes it), `multipliers`
    ($\lambda = (JJ^\top)^{-1}J\nabla R$), `residual` ($\max_i|F_i|$ after the
    retraction that produced it), `merit` ($R - \lambda^\top F$, the Lagrangian:
    what line searches and trust-region ratios compare).

    The retraction leaves $|F|$ at its tolerance, not at zero, and $R$ changes by
    about $\lambda^\top F$ across such an offset: near a minimiser that is far more
    than the decrease a step makes. The Lagrangian's gradient $\nabla R -
    J^\top\lambda = P_T\nabla R$ is tangent, so its value is blind to the offset to
    first order, and equals $R$ on $\Gamma$.
    """

    theta: Float[Array, " D"]
    sharpness: Scalar
    gradient: Float[Array, " D"]
    multipliers: Float[Array, " n"]
    residual: Scalar
    merit: Scalar

    @property
    def gradient_norm(self) -> Scalar:
        return jnp.linalg.norm(self.gradient)


def iterate_at(
    geometry: Geometry,
    theta: Float[Array, " D"],
    residual: Scalar,
    guess: Float[Array, " n"] | None = None,
) -> tuple[Iterate, Bool[Array, ""]]:
    """The `Iterate` at a point of $\\Gamma$ and whether its evaluation succeeded
    (a finite $R$ and gradient, and a successful projection)."""
    evaluation = geometry.evaluate(theta, guess)
    offset = geometry.manifold.constraint(theta)
    iterate = Iterate(
        theta,
        evaluation.sharpness,
        evaluation.riemannian_gradient,
        evaluation.multipliers,
        residual,
        evaluation.sharpness - jnp.vdot(evaluation.multipliers, offset),
    )
    return iterate, evaluation_ok(evaluation) & jnp.isfinite(iterate.merit)


def evaluation_ok(evaluation: FlowEvaluation) -> Bool[Array, ""]:
    return (
        (evaluation.result == lx.RESULTS.successful)
        & jnp.isfinite(evaluation.sharpness)
        & jnp.all(jnp.isfinite(evaluation.riemannian_gradient))
    )


class StepRecord(eqx.Module):
    r"""What one optimiser step did, for the solution's per-iteration records.

    **Fields:** `step_size` (the trust-region radius used, or the line search's
    accepted step length $\alpha$), `inner_iterations` (truncated-CG or
    backtracking iterations), `hessian_products` (Riemannian Hessian-vector
    products), `accepted` (whether the point moved), `failed` (a non-finite value,
    or a projection or retraction that could not be recovered from), `stalled` (the
    step shrank to rounding: no progress is possible).
    """

    step_size: Scalar
    inner_iterations: Int[Array, ""]
    hessian_products: Int[Array, ""]
    accepted: Bool[Array, ""]
    failed: Bool[Array, ""]
    stalled: Bool[Array, ""]


class AbstractRiemannianMinimiser(eqx.Module):
    r"""A minimiser of $R$ on $\Gamma$, in the layout of optimistix's solvers: the
    object holds configuration, its state goes through `init` and `step`, and
    [`manifoldflow.minimise_sharpness`][] owns the loop.

    Subclasses implement `init(geometry, iterate, tolerance) -> state` (`tolerance`:
    the gradient tolerance of the solve),
    `step(geometry, iterate, state) -> (iterate, state, StepRecord)` and
    `terminate(geometry, iterate, state, tolerance) -> bool`: whether the current
    iterate may be called stationary (at least $\|P_T\nabla R\| \le$ `tolerance`;
    a second-order method may also ask for its curvature to have been checked).
    """

    @abc.abstractmethod
    def init(self, geometry: Geometry, iterate: Iterate, tolerance: Scalar) -> Any:
        """The solver's state at the first iterate."""

    @abc.abstractmethod
    def step(
        self, geometry: Geometry, iterate: Iterate, state: Any
    ) -> tuple[Iterate, Any, StepRecord]:
        """One iteration: the next iterate (the same one where a step was
        rejected), the new state and the record."""

    @abc.abstractmethod
    def terminate(
        self, geometry: Geometry, iterate: Iterate, state: Any, tolerance: Scalar
    ) -> Bool[Array, ""]:
        """Whether `iterate` is stationary to `tolerance`."""


def select(condition: Bool[Array, ""], a: Iterate, b: Iterate) -> Iterate:
    """`a` where `condition`, else `b` (leaf by leaf)."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(condition, x, y), a, b)


def no_progress_floor(theta: Float[Array, " D"]) -> Scalar:
    """A step below this length cannot change `theta` beyond rounding."""
    eps = jnp.finfo(theta.dtype).eps
    return 4 * eps * jnp.maximum(1.0, jnp.linalg.norm(theta))
