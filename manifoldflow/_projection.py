r"""Orthogonal projection onto the tangent space $T_\theta\Gamma = \ker J$.

$P_T v = v - J^\top \lambda$ with multipliers $\lambda = (J J^\top)^{-1} J v$, i.e.
$\lambda$ minimises $\|v - J^\top \lambda\|$. Every projector returns $\lambda$ too: the
normal component $J^\top\lambda$ is what the retraction and the theory checks use.

Linear solves never throw inside a solve: the `..._with_result` methods return
lineax's `RESULTS` item beside the value (`singular` where a factorisation produced
non-finite values, `max_steps_reached` where CG hit its cap), and the caller turns a
failure into a failed step with that cause.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, Int

from ._custom_types import RealScalarLike
from ._errors import InputError
from ._manifold import Linearisation


def _checked(solution: lx.Solution) -> tuple[Array, lx.RESULTS]:
    """The value of a lineax solve and its result, `singular` if it is not finite."""
    finite = jnp.all(jnp.isfinite(solution.value))
    result = lx.RESULTS.where(
        finite | (solution.result != lx.RESULTS.successful),
        solution.result,
        lx.RESULTS.singular,
    )
    return solution.value, result


class AbstractProjector(eqx.Module):
    r"""Computes tangent projections and solves with the Gram matrix $JJ^\top$:
    $P_T v = v - J^\top\lambda$ with $\lambda = (JJ^\top)^{-1}Jv = \arg\min_\lambda
    \|v - J^\top\lambda\|$, the orthogonal projector onto $T_\theta\Gamma = \ker J$.

    Subclasses implement `solve_gram` (and may override `multipliers`, e.g. by a
    least-squares solve). Projectors whose linear solves report a result (CG's
    iteration cap) override the `..._with_result` methods too; by default a result
    is `singular` exactly when the value is not finite.
    """

    @abc.abstractmethod
    def solve_gram(
        self, linearisation: Linearisation, rhs: Float[Array, " n"]
    ) -> Float[Array, " n"]:
        r"""$(J J^\top)^{-1} r$ (a minimum-norm solution where the Gram is singular)."""

    def multipliers(
        self, linearisation: Linearisation, vector: Float[Array, " D"]
    ) -> Float[Array, " n"]:
        r"""$\lambda = \arg\min_\lambda \|v - J^\top \lambda\|$; by default
        $(JJ^\top)^{-1} J v$."""
        return self.solve_gram(linearisation, linearisation.jacobian.mv(vector))

    def solve_gram_with_result(
        self, linearisation: Linearisation, rhs: Float[Array, " n"]
    ) -> tuple[Float[Array, " n"], lx.RESULTS]:
        """`solve_gram` and the linear solve's result."""
        return _finite(self.solve_gram(linearisation, rhs))

    def multipliers_with_result(
        self,
        linearisation: Linearisation,
        vector: Float[Array, " D"],
        guess: Float[Array, " n"] | None = None,
    ) -> tuple[Float[Array, " n"], lx.RESULTS]:
        """`multipliers` and the linear solve's result. `guess` is a starting point
        for an iterative solve (e.g. the multipliers at a nearby point); direct
        solves ignore it."""
        del guess
        return _finite(self.multipliers(linearisation, vector))

    def project_with_result(
        self,
        linearisation: Linearisation,
        vector: Float[Array, " D"],
        guess: Float[Array, " n"] | None = None,
    ) -> tuple[Float[Array, " D"], Float[Array, " n"], lx.RESULTS]:
        r"""$(P_T v, \lambda, \text{result})$ with $P_T v = v - J^\top\lambda$;
        `guess` as in `multipliers_with_result`."""
        lam, result = self.multipliers_with_result(linearisation, vector, guess)
        return vector - linearisation.jacobian.transpose().mv(lam), lam, result

    def project(
        self, linearisation: Linearisation, vector: Float[Array, " D"]
    ) -> tuple[Float[Array, " D"], Float[Array, " n"]]:
        r"""$(P_T v, \lambda)$ with $P_T v = v - J^\top\lambda$."""
        projected, lam, _ = self.project_with_result(linearisation, vector)
        return projected, lam


def _finite(value: Array) -> tuple[Array, lx.RESULTS]:
    finite = jnp.all(jnp.isfinite(value))
    return value, lx.RESULTS.where(finite, lx.RESULTS.successful, lx.RESULTS.singular)


def _dense_gram(linearisation: Linearisation, projector: str) -> Array:
    """The Gram matrix; an error at trace time for a linearisation without one."""
    if linearisation.gram is None:
        raise InputError(
            f"{projector} factorises the Gram matrix J J^T, which this manifold's "
            "linearisation does not hold (gram is None).",
            fix="Use projector=manifoldflow.CGProjector().",
            parameter="projector",
        )
    return linearisation.gram


def _gram_operator(linearisation: Linearisation) -> lx.MatrixLinearOperator:
    gram = _dense_gram(linearisation, "This projector")
    return lx.MatrixLinearOperator(gram, lx.positive_semidefinite_tag)


def _cholesky_solve(linearisation, rhs):
    operator = _gram_operator(linearisation)
    return lx.linear_solve(operator, rhs, lx.Cholesky(), throw=False).value


class CholeskyProjector(AbstractProjector):
    r"""Dense Cholesky factorisation of the Gram matrix $JJ^\top$ (the default).

    Cheapest for $n \ll D$ when the Gram has a closed form; accuracy degrades like
    $\kappa(JJ^\top) = \kappa(J)^2$.
    """

    def solve_gram(self, linearisation, rhs):
        return _cholesky_solve(linearisation, rhs)


class QRProjector(AbstractProjector):
    r"""Least squares $\min_\lambda \|v - J^\top\lambda\|$ by a QR factorisation of
    $J^\top$, $P_T v = v - J^\top\lambda$: accuracy like $\kappa(J)$ rather than
    $\kappa(J)^2$. Materialises $J$. Its Gram solves (`solve_gram`, used by the
    retractions) are Cholesky's: only the projections get the $\kappa(J)$ accuracy.
    """

    def solve_gram(self, linearisation, rhs):
        return _cholesky_solve(linearisation, rhs)

    def multipliers(self, linearisation, vector):
        jac_t = lx.MatrixLinearOperator(linearisation.jacobian.transpose().as_matrix())
        return lx.linear_solve(jac_t, vector, lx.QR(), throw=False).value


def conjugate_gradients(
    matvec: Callable[[Array], Array],
    rhs: Float[Array, " n"],
    guess: Float[Array, " n"],
    inverse_diagonal: Float[Array, " n"] | None,
    rtol: RealScalarLike,
    atol: RealScalarLike,
    max_steps: int,
) -> tuple[Float[Array, " n"], lx.RESULTS, Int[Array, ""]]:
    r"""Preconditioned conjugate gradients for $A\lambda = b$, $A$ symmetric positive
    (semi)definite, from `guess`, with the Jacobi preconditioner `inverse_diagonal`
    (or none).

    Stops when the residual is within its backward-error tolerance,
    $\|b - A\lambda\| \le \text{atol} + \text{rtol}\,(\|b\| + \|A\|\,
    \|\lambda\|)$, where $\|A\|$ is estimated from below by the largest Rayleigh
    quotient $p^\top A p / p^\top p$ of the search directions: rounding in $A\lambda$
    is of size $\epsilon\|A\|\|\lambda\|$, so this is reachable whatever the
    condition of $A$ (a test on $\|b\|$ alone stalls at $\epsilon\,\kappa(A)$),
    and it is what a direct solve achieves. The residual is recomputed from its
    definition every 8 steps (rounding drift). Returns `(lambda, result,
    num_steps)`: `max_steps_reached` at the cap, `singular` where a curvature
    $p^\top A p$ was not positive before convergence.
    """
    precondition = (
        (lambda r: r) if inverse_diagonal is None else (lambda r: inverse_diagonal * r)
    )
    rhs_norm = jnp.linalg.norm(rhs)

    def converged(r, x, norm_estimate):
        return jnp.linalg.norm(r) <= atol + rtol * (
            rhs_norm + norm_estimate * jnp.linalg.norm(x)
        )

    r0 = rhs - matvec(guess)
    z0 = precondition(r0)
    zero = jnp.zeros((), rhs.dtype)
    init = (guess, r0, z0, jnp.vdot(r0, z0), jnp.array(0), zero, jnp.array(False))

    def cond(carry):
        x, r, _, gamma, step, norm_estimate, broke = carry
        return (
            ~converged(r, x, norm_estimate) & (step < max_steps) & ~broke & (gamma > 0)
        )

    def body(carry):
        x, r, p, gamma, step, norm_estimate, _ = carry
        Ap = matvec(p)
        curvature = jnp.vdot(p, Ap)
        broke = ~(curvature > 0)
        alpha = jnp.where(broke, 0, gamma / jnp.where(broke, 1, curvature))
        norm_estimate = jnp.maximum(
            norm_estimate, jnp.where(broke, 0, curvature / jnp.vdot(p, p))
        )
        x = x + alpha * p
        step = step + 1
        r = lax.cond(step % 8 == 0, lambda: rhs - matvec(x), lambda: r - alpha * Ap)
        z = precondition(r)
        gamma_new = jnp.vdot(r, z)
        p = z + (gamma_new / jnp.where(gamma > 0, gamma, 1)) * p
        return x, r, p, gamma_new, step, norm_estimate, broke

    x, r, _, _, steps, norm_estimate, broke = lax.while_loop(cond, body, init)
    done = converged(r, x, norm_estimate) | (jnp.linalg.norm(r) == 0)
    result = lx.RESULTS.where(
        done,
        lx.RESULTS.successful,
        lx.RESULTS.where(broke, lx.RESULTS.singular, lx.RESULTS.max_steps_reached),
    )
    return x, result, steps


class CGProjector(AbstractProjector):
    r"""Matrix-free conjugate gradients on $\lambda \mapsto J(J^\top\lambda)$.

    Never forms $JJ^\top$; each iteration costs one product with $J$ and one with
    $J^\top$. Reaching `max_steps` is a failure (`max_steps_reached`), never a silent
    inaccurate answer. On a matrix-free manifold it never forms the Gram matrix
    (that part of the linearisation is dead code under `jax.jit`).

    A solve passes the multipliers of the last accepted point as the starting guess
    (`guess`): they change slowly along the flow, so CG starts close to the answer.
    Where the linearisation carries the diagonal $\|\nabla F_i\|^2$ of $JJ^\top$
    (a matrix-free [`manifoldflow.ZeroLossManifold`][] does), it is a Jacobi
    preconditioner. The stopping rule is a backward error: the residual of $JJ^\top
    \lambda = b$ within `atol + rtol (|b| + |JJ^T| |lambda|)` (2-norms; $\|JJ^\top\|$
    estimated from below by the Rayleigh quotients of the search directions), as
    accurate as a Cholesky solve, and reachable however ill-conditioned $JJ^\top$
    is; a test on $|b|$ alone stalls at $\epsilon\,\kappa(JJ^\top)$.

    **Arguments:**

    - `rtol`, `atol`: the tolerances of the stopping rule (2-norms).
    - `max_steps`: iteration cap (default: `10 n`, set at trace time).
    - `precondition`: use the Jacobi preconditioner where available (default
      `True`).
    """

    rtol: float = 1e-14
    atol: float = 1e-300
    max_steps: int | None = None
    precondition: bool = eqx.field(static=True, default=True)

    def solve_gram_with_result(self, linearisation, rhs, guess=None):
        jac = linearisation.jacobian
        if isinstance(jac, lx.MatrixLinearOperator):
            # Two products with the stored matrix: going through `jac.transpose()`
            # would copy the n x D matrix at every iteration (13x slower at D = 2.6e5).
            matrix = jac.as_matrix()
            gram_mv = lambda lam: matrix @ (lam @ matrix)
        else:
            transpose = jac.transpose()
            gram_mv = lambda lam: jac.mv(transpose.mv(lam))
        inverse = None
        diagonal = linearisation.gram_diagonal
        if self.precondition and diagonal is not None:
            # An all-zero row (a constraint with zero gradient) is left unscaled.
            positive = diagonal > 0
            inverse = jnp.where(positive, 1 / jnp.where(positive, diagonal, 1), 1)
        guess = jnp.zeros_like(rhs) if guess is None else guess
        max_steps = 10 * rhs.shape[0] if self.max_steps is None else self.max_steps
        value, result, _ = conjugate_gradients(
            gram_mv, rhs, guess, inverse, self.rtol, self.atol, max_steps
        )
        return _checked(lx.Solution(value, result, {}, {}))

    def solve_gram(self, linearisation, rhs):
        return self.solve_gram_with_result(linearisation, rhs)[0]

    def multipliers_with_result(self, linearisation, vector, guess=None):
        return self.solve_gram_with_result(
            linearisation, linearisation.jacobian.mv(vector), guess
        )


class SVDProjector(AbstractProjector):
    r"""Pseudo-inverse by an SVD of $J$ itself: correct also where $J$ is rank
    deficient (repeated or linearly dependent data points, singular points of the
    manifold), where it projects onto $\ker J$ exactly.

    With the thin SVD $J^\top = U S V^\top$, $P_T v = v - U_k U_k^\top v$ over the
    $k$ singular values kept, so the projection is accurate to rounding in $v$
    whatever $\kappa(J)$. Singular values of $J$ below `rcond` times the largest are
    dropped (default: machine epsilon times $\max(n, D)$). The threshold is on
    $\sigma(J)$, not on $\sigma(JJ^\top) = \sigma(J)^2$: a direction that moves $F$
    by more than rounding stays a constraint, so the field stays continuous until a
    direction's effect on $F$ is below rounding.

    **Arguments:**

    - `rcond`: relative cut-off on the singular values of $J$.
    """

    rcond: float | None = None

    def _factors(self, linearisation: Linearisation):
        jac_t = linearisation.jacobian.transpose().as_matrix()
        u, s, vt = jnp.linalg.svd(jac_t, full_matrices=False)
        rcond = self.rcond
        if rcond is None:
            rcond = jnp.finfo(s.dtype).eps * max(jac_t.shape)
        # Not >=: an all-zero J keeps nothing.
        keep = s > rcond * s[0] if s.size > 0 else s > 0
        inverse = jnp.where(keep, 1 / jnp.where(keep, s, 1), 0)
        return u, inverse, vt, keep

    def solve_gram(self, linearisation, rhs):
        _, inverse, vt, _ = self._factors(linearisation)
        return vt.T @ (inverse**2 * (vt @ rhs))

    def multipliers(self, linearisation, vector):
        u, inverse, vt, _ = self._factors(linearisation)
        return vt.T @ (inverse * (u.T @ vector))

    def project_with_result(self, linearisation, vector, guess=None):
        del guess
        u, inverse, vt, keep = self._factors(linearisation)
        coefficients = jnp.where(keep, u.T @ vector, 0)
        projected = vector - u @ coefficients
        lam = vt.T @ (inverse * coefficients)
        finite = jnp.all(jnp.isfinite(projected)) & jnp.all(jnp.isfinite(lam))
        result = lx.RESULTS.where(finite, lx.RESULTS.successful, lx.RESULTS.singular)
        return projected, lam, result
