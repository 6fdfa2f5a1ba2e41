"""A diffrax solver wrapper that keeps every step on the manifold."""

from typing import Any

import diffrax
import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._manifold import AbstractManifold
from ._projection import AbstractProjector, CholeskyProjector
from ._retraction import AbstractRetraction, ChordRetraction


class ProjectedSolver(diffrax.AbstractWrappedSolver):
    r"""Wraps ANY diffrax ODE solver (explicit or implicit) and retracts onto $\Gamma$.

    Each step calls the inner solver with `made_jump=True`, so FSAL solvers evaluate
    the vector field afresh at the retracted start point instead of re-using the value
    at the unprojected end of the previous step; the end point $y_1$ is then retracted
    (after every step, or every `retract_every` steps) and the retracted point is what
    diffrax sees, saves and interpolates from. A retraction that does not reach its
    tolerance sets the error estimate to infinity, so adaptive controllers reject the
    step and shrink it.

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
            raise ValueError(f"retract_every must be >= 1, got {self.retract_every}.")

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

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

    def init(self, terms, t0, t1, y0, args) -> tuple[Any, Any]:
        return self.solver.init(terms, t0, t1, y0, args), jnp.array(0)

    def retract(self, y):
        """Retract `y` onto the manifold (a `RetractionSolution`)."""
        return self.retraction(self.manifold, self.projector, y)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner_state, counter = solver_state
        y1, y_error, dense_info, inner_state, result = self.solver.step(
            terms, t0, t1, y0, args, inner_state, made_jump=True
        )
        counter = counter + 1
        if self.retract_every == 1:
            retracted = self.retract(y1)
            new_y1, converged = retracted.theta, retracted.converged
        else:
            new_y1, converged = lax.cond(
                counter % self.retract_every == 0,
                lambda y: (lambda r: (r.theta, r.converged))(self.retract(y)),
                lambda y: (y, jnp.array(True)),
                y1,
            )
        if y_error is not None:
            if self.correction_in_error:
                y_error = jtu.tree_map(
                    lambda e, a, b: jnp.abs(e) + jnp.abs(a - b), y_error, new_y1, y1
                )
            y_error = jtu.tree_map(lambda e: jnp.where(converged, e, jnp.inf), y_error)
        dense_info = dict(dense_info, y1=new_y1)
        return new_y1, y_error, dense_info, (inner_state, counter), result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)
