r"""Orthogonal projection onto the tangent space $T_\theta\Gamma = \ker J$.

Linear solves never throw inside the solve: a failed factorisation gives non-finite
values, which make the step fail (and be rejected) instead of aborting the program.

$P_T v = v - J^\top \lambda$ with multipliers $\lambda = (J J^\top)^{-1} J v$, i.e.
$\lambda$ minimises $\|v - J^\top \lambda\|$. Every projector returns $\lambda$ too: the
normal component $J^\top\lambda$ is what the retraction and the theory checks use.
"""

import abc

import equinox as eqx
import jax
import lineax as lx
from jaxtyping import Array, Float

from ._manifold import Linearisation


class AbstractProjector(eqx.Module):
    """Computes tangent projections and solves with the Gram matrix $JJ^\\top$."""

    @abc.abstractmethod
    def multipliers(
        self, linearisation: Linearisation, vector: Float[Array, " D"]
    ) -> Float[Array, " n"]:
        r"""$\lambda = \arg\min_\lambda \|v - J^\top \lambda\|$."""

    @abc.abstractmethod
    def solve_gram(
        self, linearisation: Linearisation, rhs: Float[Array, " n"]
    ) -> Float[Array, " n"]:
        r"""$(J J^\top)^{-1} r$ (a minimum-norm solution where the Gram is singular)."""

    def project(
        self, linearisation: Linearisation, vector: Float[Array, " D"]
    ) -> tuple[Float[Array, " D"], Float[Array, " n"]]:
        r"""$(P_T v, \lambda)$ with $P_T v = v - J^\top\lambda$."""
        lam = self.multipliers(linearisation, vector)
        return vector - linearisation.jacobian.transpose().mv(lam), lam


def _gram_operator(linearisation: Linearisation) -> lx.MatrixLinearOperator:
    return lx.MatrixLinearOperator(linearisation.gram, lx.positive_semidefinite_tag)


class CholeskyProjector(AbstractProjector):
    r"""Dense Cholesky factorisation of the Gram matrix $JJ^\top$ (the default).

    Cheapest for $n \ll D$ when the Gram has a closed form; accuracy degrades like
    $\kappa(JJ^\top) = \kappa(J)^2$.
    """

    def solve_gram(self, linearisation, rhs):
        return lx.linear_solve(
            _gram_operator(linearisation), rhs, lx.Cholesky(), throw=False
        ).value

    def multipliers(self, linearisation, vector):
        return self.solve_gram(linearisation, linearisation.jacobian.mv(vector))


class QRProjector(AbstractProjector):
    r"""Least squares $\min_\lambda \|v - J^\top\lambda\|$ by a QR factorisation of
    $J^\top$: accuracy like $\kappa(J)$ rather than $\kappa(J)^2$. Materialises $J$.
    """

    def solve_gram(self, linearisation, rhs):
        return lx.linear_solve(
            _gram_operator(linearisation), rhs, lx.Cholesky(), throw=False
        ).value

    def multipliers(self, linearisation, vector):
        jac_t = lx.MatrixLinearOperator(linearisation.jacobian.transpose().as_matrix())
        return lx.linear_solve(jac_t, vector, lx.QR(), throw=False).value


class CGProjector(AbstractProjector):
    r"""Matrix-free conjugate gradients on $\lambda \mapsto J(J^\top\lambda)$.

    Never forms $JJ^\top$; each iteration costs one product with $J$ and one with
    $J^\top$.

    **Arguments:**

    - `rtol`, `atol`: CG tolerances on the residual.
    - `max_steps`: iteration cap (default: `10 n`, set at trace time).
    """

    rtol: float = 1e-13
    atol: float = 1e-15
    max_steps: int | None = None

    def solve_gram(self, linearisation, rhs):
        jac = linearisation.jacobian
        if isinstance(jac, lx.MatrixLinearOperator):
            # Two products with the stored matrix: going through `jac.transpose()`
            # would copy the n x D matrix at every iteration (13x slower at D = 2.6e5).
            matrix = jac.as_matrix()
            gram_mv = lambda lam: matrix @ (lam @ matrix)
        else:
            gram_mv = lambda lam: jac.mv(jac.transpose().mv(lam))
        operator = lx.FunctionLinearOperator(
            gram_mv,
            jax.eval_shape(lambda: rhs),
            lx.positive_semidefinite_tag,
        )
        max_steps = 10 * rhs.shape[0] if self.max_steps is None else self.max_steps
        solver = lx.CG(rtol=self.rtol, atol=self.atol, max_steps=max_steps)
        return lx.linear_solve(operator, rhs, solver, throw=False).value

    def multipliers(self, linearisation, vector):
        return self.solve_gram(linearisation, linearisation.jacobian.mv(vector))


class SVDProjector(AbstractProjector):
    r"""Pseudo-inverse of the Gram matrix by an SVD: correct also where $J$ is rank
    deficient (repeated or linearly dependent data points), where it projects onto
    $\ker J$ exactly. Singular values below `rcond` times the largest are dropped
    (default: machine epsilon times $n$).
    """

    rcond: float | None = None

    def solve_gram(self, linearisation, rhs):
        return lx.linear_solve(
            lx.MatrixLinearOperator(linearisation.gram),
            rhs,
            lx.SVD(rcond=self.rcond),
            throw=False,
        ).value

    def multipliers(self, linearisation, vector):
        return self.solve_gram(linearisation, linearisation.jacobian.mv(vector))
