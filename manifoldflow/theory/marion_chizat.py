r"""Marion & Chizat (2024), "Deep linear networks for regression are implicitly
regularized towards flat minima": the data constants, the bounds on the sharpness of
minimisers, the critical learning rate, and the balancedness / rank-one structure of
gradient flow, as [`manifoldflow.theory.Check`][]s.

Conventions of `manifoldflow.models.deep_linear`: $R(W) = \frac1n\|y - X w_{\rm
prod}\|^2$, $\hat\Sigma = X^\top X/n$, $w^*$ the minimum-norm least-squares solution,
$S(W) = \lambda_{\max}(\nabla^2 R(W))$.

Provenance of each formula (the printed forms of the paper could not all be read):

- the paper's: the model, the risk without $\frac12$, $W_k(0) = I + \frac{s}{\sqrt{Ld}}
  N_k$, Lemma 1 (balancedness is conserved by gradient flow), the uniform lower bound
  $S_{\min} \ge 2La\|w^*\|^{2-2/L}$ with $a = w^{*\top}\hat\Sigma w^*/\|w^*\|^2$ (the
  authors' code and Figure 2), Corollary 2's $8L\Lambda\|w^*\|^{2-2/L}$ (the constant
  8 is the one the authors' code plots), $\eta_{\rm crit} = 2/S_{\min} \approx
  1/(La\|w^*\|^{2-2/L})$;
- derived here and checked numerically (tests): the factor $\|p\|^{2/L}$ for a general
  $p$, the per-minimiser lower bound $S(W) \ge 2a\|w^*\|^2\sum_k\|W_k\|_2^{-2}$, the
  exact sharpness of the balanced aligned rank-one minimiser, and Lemma 2 (i) in the
  form $\|W_k\|_F^2 - \|W_k\|_2^2 \le \sum_{j\ge k}(\|A_j\|_2 - \operatorname{tr}A_j)$
  for $d_L = 1$, and the trace $\operatorname{Tr}\nabla^2 R$ of the flattest aligned
  rank-one minimiser (`flattest_trace`), where the trace flow ends.
"""

import equinox as eqx
import numpy as np

from ._report import Check


class DataConstants(eqx.Module):
    r"""`Sigma` ($\hat\Sigma$), `w_star`, `a`, `Lambda` (largest eigenvalue of
    $\hat\Sigma$), `lambda_min` (smallest nonzero one), `full_rank`, `R_min`."""

    Sigma: np.ndarray
    w_star: np.ndarray
    a: float
    Lambda: float
    lambda_min: float
    full_rank: bool
    R_min: float


def data_constants(X, y) -> DataConstants:
    r"""The constants of the data that Marion & Chizat's theorems use:
    $\hat\Sigma = X^\top X/n$, $w^* = X^+ y$, $a = w^{*\top}\hat\Sigma w^*/\|w^*\|^2$,
    $\Lambda = \lambda_{\max}(\hat\Sigma)$, $R_{\min} = \frac1n\|Xw^* - y\|^2$.

    **Arguments:** `X` $(n, d)$, `y` $(n,)$. **Returns:** a `DataConstants`.
    """
    X, y = np.asarray(X, float), np.asarray(y, float)
    n = X.shape[0]
    Sigma = X.T @ X / n
    w_star = np.linalg.pinv(X) @ y
    eigenvalues = np.linalg.eigvalsh(Sigma)
    cutoff = eigenvalues[-1] * Sigma.shape[0] * np.finfo(float).eps * 10
    nonzero = eigenvalues[eigenvalues > cutoff]
    norm2 = float(w_star @ w_star)
    return DataConstants(
        Sigma=Sigma,
        w_star=w_star,
        a=float(w_star @ Sigma @ w_star / norm2) if norm2 > 0 else float("nan"),
        Lambda=float(eigenvalues[-1]),
        lambda_min=float(nonzero[0]) if nonzero.size else 0.0,
        full_rank=bool(nonzero.size == Sigma.shape[0]),
        R_min=float(np.mean((X @ w_star - y) ** 2)),
    )


def _scale(w_star, p, depth) -> float:
    r"""$\|w^*\|^{2-2/L}\|p\|^{2/L}$."""
    return float(
        np.linalg.norm(w_star) ** (2 - 2 / depth) * np.linalg.norm(p) ** (2 / depth)
    )


def uniform_lower_bound(c: DataConstants, p, depth: int) -> float:
    r"""$S_{\min} \ge 2La\|w^*\|^{2-2/L}\|p\|^{2/L}$ (Theorems 1--2)."""
    return 2 * depth * c.a * _scale(c.w_star, p, depth)


def layer_lower_bound(c: DataConstants, weights) -> float:
    r"""$S(W) \ge 2a\|w^*\|^2\sum_k\|W_k\|_2^{-2}$ at any minimiser $W$ (Theorem 2)."""
    norms = [float(spectral_norms(W)) for W in weights]
    if not all(s > 0 for s in norms):  # a zero layer: not a minimiser (w* != 0)
        return float("inf")
    return float(2 * c.a * (c.w_star @ c.w_star) * sum(1 / s**2 for s in norms))


def balanced_sharpness(c: DataConstants, p, depth: int) -> float:
    r"""The exact sharpness of the balanced aligned rank-one minimiser,
    $2\|w^*\|^{2-2/L}\|p\|^{2/L}\lambda_{\max}(\hat\Sigma + (L-1)\hat\Sigma^{1/2}
    ee^\top\hat\Sigma^{1/2})$, $e = w^*/\|w^*\|$: an upper bound on $S_{\min}$."""
    e = c.w_star / np.linalg.norm(c.w_star)
    values, vectors = np.linalg.eigh(c.Sigma)
    root = (vectors * np.sqrt(np.maximum(values, 0))) @ vectors.T
    g = root @ e
    matrix = c.Sigma + (depth - 1) * np.outer(g, g)
    return float(2 * _scale(c.w_star, p, depth) * np.linalg.eigvalsh(matrix)[-1])


def flattest_trace(c: DataConstants, p, depth: int) -> float:
    r"""The smallest $\operatorname{Tr}\nabla^2 R$ over the aligned rank-one
    minimisers, $2L\|w^*\|^{2-2/L}\|p\|^{2/L}(\operatorname{tr}\hat\Sigma\;
    a^{L-1})^{1/L}$ (derived here).

    At a minimiser $\operatorname{Tr}\nabla^2R = 2\sum_k\|p^\top W_{>k}\|^2
    \operatorname{tr}(W_{<k}\hat\Sigma W_{<k}^\top)$. On the chain $W_k = s_k u_{k+1}
    u_k^\top$ ($u_1 = w^*/\|w^*\|$, $u_{L+1} = p/\|p\|$, $\prod_k s_k =
    \|w^*\|/\|p\|$) it is $2\|p\|^2(\prod_k s_k)^2(\operatorname{tr}\hat\Sigma/s_1^2 +
    a\sum_{k\ge2}s_k^{-2})$ ($a = u_1^\top\hat\Sigma u_1$), least, by the AM--GM
    inequality, at $s_k^2 \propto$ its coefficient: the value above. The scales
    differ from layer to layer, so this minimiser is not balanced unless
    $\operatorname{tr}\hat\Sigma = a$. The trace flow on the minimisers is
    predicted to end there (checked by `trace_flow_at_flattest`)."""
    trace = float(np.trace(c.Sigma))
    return float(
        2
        * depth
        * _scale(c.w_star, p, depth)
        * (trace * c.a ** (depth - 1)) ** (1 / depth)
    )


def flattest_trace_check(
    c: DataConstants, p, depth: int, R: float, *, name: str, what: str
) -> Check:
    r"""`R` (the trace at `what`) against
    [`flattest_trace`][manifoldflow.theory.marion_chizat.flattest_trace], to a relative
    1e-9; not applicable unless $\hat\Sigma$ has full rank."""
    claim = (
        f"Tr Hess R at {what} is the least over aligned rank-one minimisers, "
        "2 L |w*|^(2-2/L) |p|^(2/L) (tr Sigma a^(L-1))^(1/L) (derived): relative gap"
    )
    if not c.full_rank:
        return Check.not_applicable(name, claim, full_rank_note(c))
    R_star = flattest_trace(c, p, depth)
    return Check.compare(name, claim, abs(R - R_star) / R_star, upper=1e-9)


def polish_checks(c: DataConstants, p, depth: int, polish, R_trace_flow=None) -> list:
    """The checks of a minimisation of the trace on the minimisers (`polish`, a
    [`manifoldflow.MinimiseSolution`][], or `None` when there was no minimiser to
    start from): stationary, still a minimiser, at [`flattest_trace`][
    manifoldflow.theory.marion_chizat.flattest_trace], and at the trace flow's end
    `R_trace_flow` when given."""
    if polish is None:
        return [
            Check.not_applicable(
                "polish_stationary",
                "the polished point is stationary",
                full_rank_note(c) or "no minimiser was reached to polish from",
            )
        ]
    checks = [
        Check.compare(
            "polish_stationary",
            "|P_T grad Tr Hess R| at the polished point <= 1e-10 (the optimiser's "
            f"ending: {polish.result_name})",
            polish.gradient_norm,
            upper=1e-10,
        ),
        Check.compare(
            "polish_constraint",
            "max |Sigma^(1/2) (w_prod - w*)| at the polished point (still a minimiser)",
            polish.constraint_violation,
            upper=1e-12,
        ),
        flattest_trace_check(
            c,
            p,
            depth,
            float(polish.sharpness),
            name="polish_at_flattest",
            what="the polished point",
        ),
    ]
    if R_trace_flow is not None:
        checks.append(
            Check.compare(
                "polish_is_trace_flow_end",
                "the polish and the trace flow from the same minimiser end at the "
                "same Tr Hess R: relative difference",
                abs(float(polish.sharpness) - R_trace_flow) / R_trace_flow,
                upper=1e-9,
            )
        )
    return checks


def balanced_minimiser(c: DataConstants, p, widths) -> list[np.ndarray]:
    r"""The balanced aligned rank-one minimiser: $W_k = s\,u_k v_k^\top$ with $v_1 =
    w^*/\|w^*\|$, $v_{k+1} = u_k$, $u_L = p/\|p\|$, $s = (\|w^*\|/\|p\|)^{1/L}$ (the
    inner unit vectors $u_k$ are the first basis vectors)."""
    depth = len(widths) - 1
    p = np.asarray(p, float)
    s = (np.linalg.norm(c.w_star) / np.linalg.norm(p)) ** (1 / depth)
    v = c.w_star / np.linalg.norm(c.w_star)
    weights = []
    for k in range(depth):
        if k == depth - 1:
            u = p / np.linalg.norm(p)
        else:
            u = np.zeros(widths[k + 1])
            u[0] = 1.0
        weights.append(s * np.outer(u, v))
        v = u
    return weights


def corollary_2_bound(c: DataConstants, depth: int) -> float:
    r"""$S(W^{SI}) \le 8L\Lambda\|w^*\|^{2-2/L}$ after gradient flow from small
    initialisation ($d_L = 1$, $p = 1$; Corollary 2; the 8 is the authors' code's)."""
    return 8 * depth * c.Lambda * np.linalg.norm(c.w_star) ** (2 - 2 / depth)


def critical_learning_rate(c: DataConstants, p, depth: int) -> float:
    r"""$2/S_{\min}$ estimated from the lower bound: $1/(La\|w^*\|^{2-2/L}\|p\|^{2/L})$;
    GD cannot converge to a minimiser above $2/S_{\min}$, which is below this."""
    return 2 / uniform_lower_bound(c, p, depth)


def spectral_norms(W) -> np.ndarray:
    r"""$\|W\|_2$ of a matrix or of a stack of matrices (NaN where not finite)."""
    W = np.asarray(W, float)
    finite = np.all(np.isfinite(W), axis=(-2, -1))
    norms = np.full(finite.shape, np.nan)
    if np.any(finite):
        # Scaled first: the SVD of a huge (diverging) matrix would overflow.
        M = W[finite]
        size = np.max(np.abs(M), axis=(-2, -1), keepdims=True)
        size = np.where(size > 0, size, 1.0)
        norms[finite] = np.linalg.norm(M / size, 2, axis=(-2, -1)) * size[..., 0, 0]
    return norms


def balancedness(weights) -> list[np.ndarray]:
    r"""$A_k = W_{k+1}^\top W_{k+1} - W_k W_k^\top$, $k = 1..L-1$ (for a stack of
    records, leaves with a leading axis, each $A_k$ has it too)."""
    weights = [np.asarray(W) for W in weights]
    return [
        np.swapaxes(weights[k + 1], -1, -2) @ weights[k + 1]
        - weights[k] @ np.swapaxes(weights[k], -1, -2)
        for k in range(len(weights) - 1)
    ]


def balancedness_drift(path_weights) -> np.ndarray:
    r"""Per record, $\max_k\|A_k(t) - A_k(0)\|_F / \max(1, \max_k\|W_k(t)\|_2^2)$ for
    weights with a leading record axis."""
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging path
        return _drift(path_weights)


def _drift(path_weights) -> np.ndarray:
    A = balancedness(path_weights)
    if not A:
        return np.zeros(np.asarray(path_weights[0]).shape[0])
    drift = np.max(
        np.stack([np.linalg.norm(Ak - Ak[:1], axis=(-2, -1)) for Ak in A]), axis=0
    )
    norms = np.max(np.stack([spectral_norms(W) for W in path_weights]), axis=0)
    return drift / np.maximum(1.0, norms**2)


def lemma_2_epsilon(weights) -> float:
    r"""$\varepsilon = \sum_k(\|A_k\|_2 + |\operatorname{tr}A_k|)$ (derived form): small
    means the gradient-flow iterates stay near rank one, balanced and aligned."""
    return float(
        sum(np.linalg.norm(A, 2) + abs(np.trace(A)) for A in balancedness(weights))
    )


def balancedness_size(weights) -> float:
    r"""$\max_k \|A_k\|_F$ (0 for a balanced network, or depth 1)."""
    A = balancedness(weights)
    return float(max((np.linalg.norm(Ak) for Ak in A), default=0.0))


def rank_one_ratios(weights) -> list[float]:
    r"""$\sigma_2(W_k)/\sigma_1(W_k)$ per layer (0 for a vector)."""
    ratios = []
    for W in weights:
        if not np.all(np.isfinite(np.asarray(W))):
            ratios.append(float("nan"))
            continue
        s = np.linalg.svd(np.asarray(W), compute_uv=False)
        ratios.append(float(s[1] / s[0]) if s.size > 1 and s[0] > 0 else 0.0)
    return ratios


def alignments(weights) -> list[float]:
    r"""$\langle u_k, v_{k+1}\rangle^2$: top left singular vector of $W_k$ against the
    top right singular vector of $W_{k+1}$, $k = 1..L-1$."""
    out = []
    for W, V in zip(weights[:-1], weights[1:]):
        if not (
            np.all(np.isfinite(np.asarray(W))) and np.all(np.isfinite(np.asarray(V)))
        ):
            out.append(float("nan"))
            continue
        u = np.linalg.svd(np.asarray(W))[0][:, 0]
        v = np.linalg.svd(np.asarray(V))[2][0]
        out.append(float((u @ v) ** 2))
    return out


# --- checks -------------------------------------------------------------------------


def lemma_1_balancedness(drift: float, *, gradient_flow: bool) -> Check:
    r"""Lemma 1 of Marion & Chizat (2024): gradient flow conserves
    $A_k = W_{k+1}^\top W_{k+1} - W_k W_k^\top$.

    **Arguments:** `drift`, the largest relative change of $A_k$ along the path
    ([`manifoldflow.theory.marion_chizat.balancedness_drift`][]); `gradient_flow`,
    whether the path is gradient flow (the lemma does not apply to GD).

    **Returns:** a [`manifoldflow.theory.Check`][]: the drift at most $10^{-9}$.
    """
    name = "lemma_1_balancedness"
    claim = (
        "max_k |A_k(t) - A_k(0)|_F / max(1, max_k |W_k|_2^2) along the path, "
        "A_k = W_(k+1)^T W_(k+1) - W_k W_k^T; 0 for gradient flow (Lemma 1); bound "
        "1e-9 for the float64 solve at rtol 1e-10"
    )
    if not gradient_flow:
        return Check.not_applicable(
            name, claim, f"gradient descent drifts by O(lr): measured {drift:.3e}"
        )
    return Check.compare(name, claim, drift, prediction=0.0, upper=1e-9)


FULL_RANK = (
    "needs a full-rank data covariance Sigma = X^T X / n; here it has rank {rank} < "
    "d = {d} (n < d or dependent inputs), so the minimisers are {{w_prod in w* + ker "
    "X}} and need not have w_prod = w*"
)


def full_rank_note(c: DataConstants) -> str:
    r"""`""` for a full-rank $\hat\Sigma$, else why the bounds do not apply."""
    if c.full_rank:
        return ""
    rank = (
        int(np.sum(np.linalg.eigvalsh(c.Sigma) >= c.lambda_min)) if c.lambda_min else 0
    )
    return FULL_RANK.format(rank=rank, d=c.Sigma.shape[0])


def theorem_2_layer_bound(c: DataConstants, weights, S: float, S_error: float) -> Check:
    r"""Theorem 2 of Marion & Chizat (2024): at any minimiser $W$,
    $S(W) \ge 2a\|w^*\|^2\sum_k \|W_k\|_2^{-2}$.

    **Arguments:** `c` ([`manifoldflow.theory.marion_chizat.data_constants`][]), the
    layers `weights` of the minimiser, its sharpness `S` and the error bound
    `S_error` of that estimate.

    **Returns:** a [`manifoldflow.theory.Check`][]; not applicable unless
    $\hat\Sigma$ has full rank.
    """
    name = "theorem_2_layer_bound"
    claim = "S(W) at the minimiser reached >= 2 a |w*|^2 sum_k |W_k|_2^-2 (Theorem 2)"
    if not c.full_rank:
        return Check.not_applicable(name, claim, full_rank_note(c))
    bound = layer_lower_bound(c, weights)
    return Check.compare(name, claim, S, lower=bound * (1 - 1e-6) - S_error)


def theorem_1_lower_bound(
    c: DataConstants, p, depth: int, S: float, S_error, *, name="theorem_1_lower_bound"
) -> Check:
    r"""Theorem 1 of Marion & Chizat (2024): every minimiser has
    $S \ge 2La\|w^*\|^{2-2/L}\|p\|^{2/L}$.

    **Arguments:** `c`, the output vector `p`, the depth $L$, the sharpness `S` and
    its error bound `S_error`; `name` of the check.

    **Returns:** a [`manifoldflow.theory.Check`][]; not applicable unless
    $\hat\Sigma$ has full rank.
    """
    claim = (
        "S(W) at the minimiser reached >= S_min >= 2 L a |w*|^(2-2/L) |p|^(2/L) "
        "(Theorems 1-2)"
    )
    if not c.full_rank:
        return Check.not_applicable(name, claim, full_rank_note(c))
    bound = uniform_lower_bound(c, p, depth)
    return Check.compare(name, claim, S, lower=bound * (1 - 1e-6) - S_error)


def corollary_2_upper_bound(
    c: DataConstants, depth: int, S: float, S_error: float, *, applicable: str
) -> Check:
    r"""Corollary 2 of Marion & Chizat (2024): after gradient flow from a small
    initialisation, $S \le 8L\Lambda\|w^*\|^{2-2/L}$.

    **Arguments:** `c`, the depth $L$, `S`, `S_error`; `applicable`, empty when the
    corollary's hypotheses hold, else the reason they do not.

    **Returns:** a [`manifoldflow.theory.Check`][].
    """
    name = "corollary_2_upper_bound"
    claim = (
        "S(W) after gradient flow from small initialisation <= 8 L Lambda "
        "|w*|^(2-2/L) (Corollary 2)"
    )
    applicable = applicable or full_rank_note(c)
    if applicable:
        return Check.not_applicable(name, claim, applicable)
    return Check.compare(
        name, claim, S, upper=corollary_2_bound(c, depth) * (1 + 1e-6) + S_error
    )


def lemma_2_rank_one(weights, *, applicable: str) -> Check:
    r"""Lemma 2 (i) for $d_L = 1$: $\|W_k\|_F^2 - \|W_k\|_2^2 \le \sum_{j=k}^{L-1}
    (\|A_j\|_2 - \operatorname{tr}A_j)$ with $A_j$ at the start (conserved)."""
    name = "lemma_2_rank_one"
    claim = (
        "max_k [|W_k|_F^2 - |W_k|_2^2 - sum_(j>=k) (|A_j|_2 - tr A_j)] <= 0 with the "
        "initial A_j (Lemma 2 (i), d_L = 1; derived form)"
    )
    if applicable:
        return Check.not_applicable(name, claim, applicable)
    final, initial = weights
    if len(final) < 2:
        return Check.not_applicable(name, claim, "depth 1: no A_j")
    A = balancedness(initial)
    slack = [float(np.linalg.norm(Aj, 2) - np.trace(Aj)) for Aj in A]
    excess = []
    for k, W in enumerate(final[:-1]):
        W = np.asarray(W)
        gap = np.linalg.norm(W) ** 2 - np.linalg.norm(W, 2) ** 2
        excess.append(gap - sum(slack[k:]))
    scale = max(1.0, max(np.linalg.norm(np.asarray(W)) ** 2 for W in final))
    return Check.compare(name, claim, max(excess), upper=1e-8 * scale)


def edge_of_stability(S: float, lr: float | None, converged: bool) -> Check:
    r"""Linear stability: gradient descent at rate `lr` converges to a minimiser only
    if its sharpness $S \le 2/\text{lr}$ (the check is named `linear_stability`).

    **Arguments:** `S`, `lr` (`None` for gradient flow: not applicable), and whether
    the run `converged`.

    **Returns:** a [`manifoldflow.theory.Check`][].
    """
    name = "linear_stability"
    claim = "gradient descent converged to a minimiser only if S(W) <= 2/lr"
    if lr is None:
        return Check.not_applicable(name, claim, "gradient flow (no learning rate)")
    if not converged:
        return Check.not_applicable(name, claim, "gradient descent did not converge")
    return Check.compare(name, claim, S, upper=2 / lr)
