r"""`manifoldflow matrix-sensing` and `manifoldflow deep-matrix-sensing`: the sharpness
flow of $f_A = \langle W_1\cdots W_L, A\rangle$ (Gaussian $A_i$, low-rank truth,
$L = \frac1{2n}\sum_i(f_{A_i} - y_i)^2$), with the nuclear norm of the product it
lands on compared with the minimum-nuclear-norm interpolant solved by cvxpy (the
`convex` extra; without it the flow still runs and the comparison is skipped, saying
how to enable it).

What theory predicts: in expectation over $A$, $\operatorname{Tr}\nabla^2 L \approx
d(\|U\|_F^2 + \|V\|_F^2) \ge 2d\|UV^\top\|_*$ for depth 2 (and, for depth $> 2$ under
RIP, approximately the nuclear norm of the product), so the flattest interpolant is
near, not at, the minimum-nuclear-norm one for finite $n$: the relative gap
$(\|W\|_* - \min)/\min$ is measured, not asserted.
"""

import argparse
import dataclasses
from typing import Any, ClassVar

import equinox as eqx
import numpy as np

import manifoldflow as mf

from .._errors import InputError
from ..baselines import minimum_nuclear_norm
from ..models.matrix_sensing import sensing_data, sensing_init
from ..theory import Check, check_ending, check_stationarity, Report
from ._options import (
    add_flow_options,
    check_seed,
    flow_options,
    positive_sizes,
    progress_meter,
)
from ._polish import (
    accept_t1,
    excused,
    polish_checks,
    polish_end,
    POLISH_ENDING,
    polish_headline,
    polish_summary,
    renamed,
)
from .base import AbstractExperiment, Outcome


@dataclasses.dataclass(frozen=True)
class SensingRun:
    """The flow's solution, sigma(J) at its end, the factors and their product W, and
    the minimum-nuclear-norm comparison (X, its optimum and status; `skipped` says
    why it is missing)."""

    solution: Any  # a manifoldflow.FlowSolution
    singular_values_J: np.ndarray
    factors: list
    W: np.ndarray
    X: np.ndarray | None
    optimum: float | None
    status: str | None
    skipped: str | None
    polish: Any = None  # the MinimiseSolution from the flow's end (--polish)
    polished_factors: list | None = None
    polished_W: np.ndarray | None = None


class SensingProblem(eqx.Module):
    A: np.ndarray
    y: np.ndarray
    M: np.ndarray
    manifold: Any
    theta0: Any
    options: dict
    settings: dict
    args: argparse.Namespace


def _point_checks(problem, result, factors, W, R, what: str) -> list:
    """The closed-form trace and the nuclear norm against the minimum over
    interpolants, at one point of Gamma (the flow's limit or the polished point)."""
    closed = float(np.mean(_gradients(factors, problem.A)))
    nuclear = float(np.linalg.svd(W, compute_uv=False).sum())
    claim = (
        f"{what}'s product interpolates, so its nuclear norm is at least the "
        "minimum over interpolants (cvxpy, Clarabel): |W|_* / min - 1"
    )
    if result.optimum is None:
        bound = Check.not_applicable(
            "nuclear_norm_above_minimum", claim, result.skipped
        )
    else:
        bound = Check.compare(
            "nuclear_norm_above_minimum",
            claim,
            nuclear / result.optimum - 1,
            lower=-1e-6,
            note=f"cvxpy status {result.status} (solved to 1e-8); a "
            "consistency check of the two solutions: it fails only if one of "
            "them is wrong",
        )
    return [
        Check.compare(
            "trace_on_gamma",
            "Tr Hess L = (1/n) sum_i |grad f_i|^2 on Gamma, with the gradients "
            "(W_1..W_(k-1))^T A_i (W_(k+1)..W_L)^T in closed form: relative "
            f"difference from R at {what}",
            abs(R - closed) / closed,
            upper=1e-12,
        ),
        bound,
    ]


def _gradients(factors, A):
    """Per-measurement gradients of <W_1...W_L, A> w.r.t. each factor, by the
    closed form (W_1...W_{k-1})^T A (W_{k+1}...W_L)^T (NumPy, independent of
    autodiff): squared norms summed over factors, one per measurement."""
    d = factors[0].shape[0]
    total = np.zeros(A.shape[0])
    for k in range(len(factors)):
        left = np.eye(d)
        for W in factors[:k]:
            left = left @ W
        right = np.eye(d)
        for W in factors[k + 1 :]:
            right = right @ W
        G = np.einsum("ba,ibc,dc->iad", left, A, right)
        total += np.sum(G**2, axis=(1, 2))
    return total


class _SensingExperiment(AbstractExperiment):
    default_depth: ClassVar[int] = 2
    checkpoints = True
    figure_size: ClassVar[tuple[float, float]] = (15.0, 4.0)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--d", type=int, default=6, help="matrix size d x d")
        parser.add_argument("--rank", type=int, default=1, help="rank of the truth")
        parser.add_argument("--n", type=int, default=20, help="measurements")
        parser.add_argument("--seed", type=int, default=0, help="data and start seed")
        parser.add_argument(
            "--init-scale",
            type=float,
            default=1.0,
            help="factors start Gaussian with std init_scale / sqrt(d)",
        )
        if self.default_depth > 2:
            parser.add_argument(
                "--depth", type=int, default=self.default_depth, help="factors L"
            )
        add_flow_options(parser)

    def build(self, args: argparse.Namespace) -> SensingProblem:

        depth = getattr(args, "depth", self.default_depth)
        positive_sizes(d=args.d, rank=args.rank, n=args.n, depth=depth)
        check_seed(args.seed)
        if depth < 2:
            raise InputError(
                f"--depth {depth}: with one factor f_A(W) = <W, A> is linear, so "
                "Tr Hess L = (1/n) sum_i |A_i|^2 is the same at every interpolant "
                "and the flow does not move.",
                fix="Use --depth 2 or more (matrix-sensing is depth 2).",
                parameter="--depth",
            )
        if args.rank > args.d:
            raise InputError(f"--rank {args.rank} > --d {args.d}.")
        if args.n > args.d**2:
            raise InputError(
                f"--n {args.n} > d^2 = {args.d**2}: f depends on the factors only "
                "through their d x d product, so J has rank at most d^2 and the n "
                "constraints are dependent. Lower --n."
            )
        if not (args.init_scale > 0 and np.isfinite(args.init_scale)):
            raise InputError(f"--init-scale must be positive, got {args.init_scale}.")
        options = dict(flow_options(args), checkpoint=getattr(args, "checkpoint", None))
        A, y, M = sensing_data(args.d, args.rank, args.n, args.seed)
        model = sensing_init(args.d, depth, args.init_scale, args.seed)
        manifold = mf.ZeroLossManifold(model, A, y, loss=mf.HalfMeanSquaredLoss())
        settings = dict(
            d=args.d,
            rank=args.rank,
            n=args.n,
            depth=depth,
            seed=args.seed,
            init_scale=args.init_scale,
            projector=args.projector,
            polish=bool(args.polish),
        )
        return SensingProblem(
            A, y, M, manifold, manifold.initial_point(), options, settings, args
        )

    def run(self, problem: SensingProblem, *, progress: bool) -> SensingRun:

        solution = mf.solve_flow(
            problem.manifold,
            problem.theta0,
            progress_meter=progress_meter(progress),
            throw=False,
            **problem.options,
        )
        model = problem.manifold.to_parameters(solution.theta_final)
        singular = np.linalg.svd(
            np.asarray(problem.manifold.jacobian_matrix(solution.theta_final)),
            compute_uv=False,
        )
        factors = [np.asarray(W) for W in model.factors]
        W = np.asarray(model.product)
        polish = polish_end(
            problem.manifold, solution, problem.args, problem.options["projector"]
        )
        polished = None
        if polish is not None:
            polished = problem.manifold.to_parameters(polish.theta)
        try:
            X, optimum, status = minimum_nuclear_norm(problem.A, problem.y)
            skipped = None
        except ImportError:
            X, optimum, status = None, None, None
            skipped = (
                "cvxpy is not installed: the minimum-nuclear-norm comparison was "
                "skipped. Enable it with `pip install manifoldflow[convex]` (or "
                '`pip install -e ".[convex]"` in a checkout).'
            )
        except Exception as error:  # a convex solver's failure is reported, not raised
            X, optimum, status = None, None, None
            skipped = f"the cvxpy solve failed ({type(error).__name__}: {error})."
        if skipped is None and (X is None or not np.all(np.isfinite(X))):
            skipped = f"the cvxpy solve returned no solution (status {status})."
            X, optimum = None, None
        return SensingRun(
            solution=solution,
            singular_values_J=singular,
            factors=factors,
            W=W,
            X=X,
            optimum=optimum,
            status=status,
            skipped=skipped,
            polish=polish,
            polished_factors=None
            if polished is None
            else [np.asarray(W) for W in polished.factors],
            polished_W=None if polished is None else np.asarray(polished.product),
        )

    def checks(self, problem: SensingProblem, result: SensingRun) -> Report:
        solution = result.solution
        R = float(solution.sharpness[-1])
        nuclear = float(np.linalg.svd(result.W, compute_uv=False).sum())
        polish = result.polish
        limit = [
            check_stationarity(solution),
            *_point_checks(problem, result, result.factors, result.W, R, "the limit"),
        ]
        if polish is not None and solution.result_name != "stationary":
            limit = excused(limit, POLISH_ENDING)
        checks = [
            check_ending(
                solution,
                accept_t1(
                    {
                        "stationary": "|P_T grad R| reached the stationarity "
                        "threshold: the end point is a limit of the flow"
                    },
                    polish is not None,
                ),
                refused={
                    "ill_conditioned": "J J^T turned numerically singular before "
                    "stationarity (the flow approaches a singular point of Gamma, e.g. "
                    "a product of lower rank), and no independent route checks where "
                    "the flow is going"
                },
            ),
            limit[0],
            limit[1],
            Check.compare(
                "constraint_held",
                "max|F| = max_i |<W_1...W_L, A_i> - y_i| along the path",
                float(np.max(solution.constraint_violation)),
                upper=1e-12,
            ),
            *limit[2:],
        ]
        if polish is not None:
            checks += polish_checks(polish, solution, problem.args.stationarity)
            checks += [
                renamed(c)
                for c in _point_checks(
                    problem,
                    result,
                    result.polished_factors,
                    result.polished_W,
                    float(polish.sharpness),
                    "the polished point",
                )
            ]
        return Report(tuple(checks), dict(R_final=R, nuclear_norm=nuclear))

    def summarise(self, problem: SensingProblem, result: SensingRun, report) -> Outcome:
        solution = result.solution
        W, X, M = result.W, result.X, problem.M

        def nuc(Z):
            return float(np.linalg.svd(Z, compute_uv=False).sum())

        optimum = result.optimum
        gap = None if optimum is None else (nuc(W) - optimum) / optimum
        summary: dict[str, Any] = dict(
            problem.settings,
            A=problem.A,
            y=problem.y,
            M=M,
            W_flow=W,
            W_min_nuclear=X,
            **solution.summary(),
            nuclear_norm_flow=nuc(W),
            nuclear_norm_truth=nuc(M),
            nuclear_norm_minimum=optimum,
            relative_nuclear_gap=gap,
            distance_to_min_nuclear=(
                None if X is None else float(np.linalg.norm(W - X) / np.linalg.norm(X))
            ),
            distance_to_truth=float(np.linalg.norm(W - M) / np.linalg.norm(M)),
            singular_values_flow=np.linalg.svd(W, compute_uv=False),
            sigma_min_J=float(result.singular_values_J[-1]),
            sigma_max_J=float(result.singular_values_J[0]),
            frobenius_sum=float(sum(np.sum(F**2) for F in result.factors)),
            convex_comparison=(
                "skipped" if result.skipped else f"cvxpy {result.status}"
            ),
        )
        lines = [
            f"{self.name} d={problem.settings['d']}, rank={problem.settings['rank']}, "
            f"n={problem.settings['n']}, depth={problem.settings['depth']}: "
            f"{solution.result_name} after {solution.num_steps} steps "
            f"(t = {solution.t_final:.3g}), R {solution.sharpness[0]:.6g} -> "
            f"{solution.sharpness[-1]:.6g}, sigma_min(J) "
            f"{result.singular_values_J[-1]:.1e} of max "
            f"{result.singular_values_J[0]:.1e}",
            f"  |W_flow|_* = {nuc(W):.6g}, |M|_* = {nuc(M):.6g}"
            + (
                f", min over interpolants {optimum:.6g} (relative gap {gap:.2e}; "
                f"|W - X*|_F / |X*|_F = {summary['distance_to_min_nuclear']:.2e}); "
                f"|W - M|_F / |M|_F = {summary['distance_to_truth']:.2e}"
                if optimum is not None
                else f"; {result.skipped}"
            ),
        ]
        if result.polish is not None:
            polished = nuc(result.polished_W)
            summary.update(
                polish_summary(result.polish, solution),
                polish_nuclear_norm=polished,
                polish_relative_nuclear_gap=(
                    None if optimum is None else (polished - optimum) / optimum
                ),
            )
            lines.append(
                polish_headline(result.polish)
                + f"\n  polished |W|_* = {polished:.6g}"
                + (
                    ""
                    if optimum is None
                    else f" (relative gap {summary['polish_relative_nuclear_gap']:.2e})"
                )
            )
        return Outcome(
            report=report,
            summary=summary,
            arrays=dict(
                step_ts=np.asarray(solution.step_ts),
                sharpness=np.asarray(solution.sharpness),
                gradient_norm=np.asarray(solution.gradient_norm),
                constraint_violation=np.asarray(solution.constraint_violation),
            ),
            headline="\n".join(lines),
            # Only stationarity (the ending row says why).
            finished=bool(report["ending"].passed),
            interrupted=solution.result_name == "interrupted",
            figure_data=dict(
                sv_flow=np.linalg.svd(W, compute_uv=False),
                sv_min=None if X is None else np.linalg.svd(X, compute_uv=False),
                sv_truth=np.linalg.svd(M, compute_uv=False),
                step_ts=np.asarray(solution.step_ts),
                sharpness=np.asarray(solution.sharpness),
                gradient_norm=np.asarray(solution.gradient_norm),
            ),
        )

    def plot(self, outcome: Outcome, figure) -> None:
        data = outcome.figure_data
        axes = figure.subplots(1, 3)
        figure.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.9, wspace=0.3)
        k = np.arange(1, data["sv_flow"].size + 1)
        axes[0].semilogy(k, data["sv_truth"] + 1e-18, "s", mfc="none", label="truth")
        if data["sv_min"] is not None:
            axes[0].semilogy(k, data["sv_min"] + 1e-18, "x", label="min nuclear")
        axes[0].semilogy(k, data["sv_flow"] + 1e-18, ".", label="flow limit")
        axes[0].set(xlabel="index", ylabel="singular value", title="spectrum")
        axes[0].set_xticks(k)
        axes[0].legend(fontsize=7)
        # Log time: the sharpness falls within t ~ 1, the flow ends at t ~ 10-100.
        t = data["step_ts"]
        later = t > 0
        gap = data["sharpness"] - data["sharpness"][-1]
        axes[1].loglog(t[later], np.where(gap[later] > 0, gap[later], np.nan))
        axes[1].set(
            xlabel="t (log)", ylabel="R(t) - R(end)", title="sharpness above its end"
        )
        axes[2].loglog(t[later], data["gradient_norm"][later])
        axes[2].set(xlabel="t (log)", ylabel="|P_T grad R|", title="stationarity")


class MatrixSensingExperiment(_SensingExperiment):
    """`manifoldflow matrix-sensing` (see the module docstring)."""

    name = "matrix-sensing"
    help = "matrix sensing <U V^T, A>: flattest interpolant vs minimum nuclear norm"
    description = (
        "Solve the sharpness flow of f_A(U, V) = <U V^T, A> (Gaussian A_i, a low-rank "
        "truth, L = (1/2n) sum (f - y)^2) and compare the nuclear norm of U V^T with "
        "the minimum-nuclear-norm interpolant (cvxpy, `pip install "
        "manifoldflow[convex]`; skipped with a note without it)."
    )
    example_arguments = ("--d", "3", "--rank", "1", "--n", "5")
    figure_name = "matrix_sensing.png"
    default_depth = 2


class DeepMatrixSensingExperiment(_SensingExperiment):
    """`manifoldflow deep-matrix-sensing` (see the module docstring)."""

    name = "deep-matrix-sensing"
    help = "deep matrix sensing <W_1...W_L, A> (L = 3): vs minimum nuclear norm"
    description = (
        "Solve the sharpness flow of f_A = <W_1 W_2 ... W_L, A> (default L = 3, "
        "Gaussian A_i, low-rank truth, L = (1/2n) sum (f - y)^2) and compare the "
        "nuclear norm of the product with the minimum-nuclear-norm interpolant "
        "(cvxpy, the convex extra)."
    )
    example_arguments = ("--d", "3", "--rank", "1", "--n", "5")
    figure_name = "deep_matrix_sensing.png"
    default_depth = 3
