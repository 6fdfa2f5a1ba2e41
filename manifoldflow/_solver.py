"""A diffrax solver wrapper that keeps every step on the manifold."""

import diffrax
import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Float, Int, PyTree, Scalar

from ._errors import InputError
from ._geometry import Geometry
from ._manifold import AbstractManifold
from ._projection import AbstractProjector, CholeskyProjector
from ._retraction import AbstractRetraction, ChordRetraction


class RetractedInterpolation(diffrax.AbstractLocalInterpolation):
    r"""Dense output of a projected step: the inner solver's interpolant plus the
    retraction's correction $y_1^{\rm retracted} - y_1$, added linearly in time.

    It starts at the step's (retracted) start point and ends exactly at the retracted
    end point, so output at a step end (e.g. `SaveAt(ts=...)` with the steps clipped to
    `ts`) is the point on $\Gamma$, not the unprojected $y_1$ that interpolants built
    from the stages alone (Tsit5's, Dopri8's) would give; inside a step it is within
    the step's local error of $\Gamma$.
    """

    t0: Scalar
    t1: Scalar
    inner: diffrax.AbstractLocalInterpolation
    correction: PyTree[Array]

    def evaluate(self, t0, t1=None, left: bool = True) -> PyTree[Array]:
        if t1 is not None:
            return jtu.tree_map(
                lambda b, a: b - a,
                self.evaluate(t1, left=left),
                self.evaluate(t0, left=left),
            )
        s = (t0 - self.t0) / (self.t1 - self.t0)
        return jtu.tree_map(
            lambda y, c: y + s * c, self.inner.evaluate(t0, left=left), self.correction
        )


def _retracted_interpolation(inner_cls):
    def build(*, t0, t1, correction, **dense_info):
        inner = inner_cls(t0=t0, t1=t1, **dense_info)
        return RetractedInterpolation(t0, t1, inner, correction)

    return build


class ProjectedSolverState(eqx.Module):
    """The inner solver's state and a record of the last retraction.

    **Fields:** `inner` (the wrapped solver's state), `num_steps` (steps taken, for
    `retract_every`), `residual` ($\\max|F|$ after the last retraction, NaN if the last
    step was not retracted), `retraction_steps`, `retraction_result` (an optimistix
    `RESULTS` item), `correction` ($\\|y_1^{\\rm retracted} - y_1\\|$).
    """

    inner: PyTree
    num_steps: Int[Array, ""]
    residual: Scalar
    retraction_steps: Int[Array, ""]
    retraction_result: optx.RESULTS
    correction: Scalar


class ProjectedSolver(diffrax.AbstractWrappedSolver):
    r"""Wraps ANY diffrax ODE solver (explicit or implicit) and retracts onto $\Gamma$.

    Each step calls the inner solver with `made_jump=True`, so FSAL solvers evaluate
    the vector field afresh at the retracted start point instead of re-using the value
    at the unprojected end of the previous step; the end point $y_1$ is then retracted
    (after every step, or every `retract_every` steps) and the retracted point is what
    diffrax sees and saves; its dense output is the inner solver's plus the correction
    (a [`manifoldflow.RetractedInterpolation`][]), so it ends at the retracted point.

    A retraction that does not converge fails the step the way diffrax's implicit
    solvers fail a step whose root find fails: the error estimate becomes infinite (an
    adaptive controller rejects the step and retries it smaller) and the step returns
    the retraction's result (`nonlinear_max_steps_reached`, `nonlinear_divergence`, or
    a linear solve's failure), which ends the solve if the step is kept anyway (a
    constant step size). A step whose inner solve gave non-finite values returns
    `nonfinite` (the vector field's failure, not the retraction's). The state records
    the last retraction.

    **Arguments:**

    - `solver`: the diffrax solver to wrap, e.g. `diffrax.Dopri8()`.
    - `manifold`, `projector`, `retraction`: as in [`manifoldflow.solve_flow`][].
    - `retract_every`: retract after every k-th step (default 1).
    - `correction_in_error`: add $|y_1^{\rm retracted} - y_1|$ to the error estimate.
    """

    solver: diffrax.AbstractSolver
    manifold: AbstractManifold
    projector: AbstractProjector = CholeskyProjector()
    retraction: AbstractRetraction = ChordRetraction()
    retract_every: int = eqx.field(static=True, default=1)
    correction_in_error: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if self.retract_every < 1:
            raise InputError(f"retract_every must be >= 1, got {self.retract_every}.")

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return _retracted_interpolation(self.solver.interpolation_cls)

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    # Forwarded so that diffeqsolve can set the tolerances of implicit solvers.
    @property
    def root_finder(self):
        return self.solver.root_finder  # pyright: ignore

    @property
    def root_find_max_steps(self):
        return self.solver.root_find_max_steps  # pyright: ignore

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args) -> ProjectedSolverState:
        zero = jnp.zeros((), jnp.result_type(y0))
        return ProjectedSolverState(
            inner=self.solver.init(terms, t0, t1, y0, args),
            num_steps=jnp.array(0),
            residual=zero,
            retraction_steps=jnp.array(0),
            retraction_result=optx.RESULTS.successful,
            correction=zero,
        )

    @property
    def geometry(self) -> Geometry:
        """The solver's [`manifoldflow.Geometry`][]: manifold, projector, retraction."""
        return Geometry(self.manifold, self.projector, self.retraction)

    def retract(self, y):
        """Retract `y` onto the manifold (a `RetractionSolution`)."""
        return self.geometry.retract(y)

    def _retract_record(self, y: Float[Array, " D"]) -> tuple:
        retracted = self.retract(y)
        return (
            retracted.theta,
            retracted.residual,
            retracted.num_steps,
            retracted.outcome,
        )

    def _keep_record(self, y: Float[Array, " D"]) -> tuple:
        nan = jnp.full((), jnp.nan, y.dtype)
        return y, nan, jnp.array(0), optx.RESULTS.successful

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, y_error, dense_info, inner_state, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state.inner, made_jump=True
        )
        num_steps = solver_state.num_steps + 1
        if self.retract_every == 1:
            record = self._retract_record(y1)
        else:
            record = lax.cond(
                num_steps % self.retract_every == 0,
                lambda y: self._retract_record(y),
                lambda y: self._keep_record(y),
                y1,
            )
        new_y1, residual, retraction_steps, retraction_result = record
        # Non-finite values (the inner step's, or F's at the end point) are the
        # model's or the vector field's failure, not the retraction's.
        retraction_failed = retraction_result != optx.RESULTS.successful
        finite = jnp.all(jnp.isfinite(y1)) & ~(
            retraction_failed & ~jnp.isfinite(residual)
        )
        failed = retraction_failed & finite
        if y_error is not None:
            if self.correction_in_error:
                y_error = jtu.tree_map(
                    lambda e, a, b: jnp.abs(e) + jnp.abs(a - b), y_error, new_y1, y1
                )
            bad = failed | ~finite
            y_error = jtu.tree_map(lambda e: jnp.where(bad, jnp.inf, e), y_error)
        retraction = diffrax.RESULTS.where(
            failed,
            diffrax.RESULTS.promote(retraction_result),
            diffrax.RESULTS.successful,
        )
        own = diffrax.RESULTS.where(finite, retraction, diffrax.RESULTS.nonfinite)
        result = diffrax.RESULTS.where(
            result == diffrax.RESULTS.successful, own, result
        )
        state = ProjectedSolverState(
            inner=inner_state,
            num_steps=num_steps,
            residual=residual,
            retraction_steps=retraction_steps,
            retraction_result=optx.RESULTS.where(
                finite, retraction_result, optx.RESULTS.successful
            ),
            correction=jnp.linalg.norm(new_y1 - y1),
        )
        inner_end = self.solver.interpolation_cls(t0=t0, t1=t1, **dense_info).evaluate(
            t1
        )
        correction = jtu.tree_map(lambda a, b: a - b, new_y1, inner_end)
        dense_info = dict(dense_info, correction=correction)
        return new_y1, y_error, dense_info, state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)
