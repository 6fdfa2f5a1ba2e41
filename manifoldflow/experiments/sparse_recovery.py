r"""`manifoldflow sparse-recovery`: the sharpness flow of the quadratically
over-parametrised linear model $f_z(u, v) = \langle u\odot u - v\odot v, z\rangle$
(Li, Wang, Arora 2022; Z. Li's open-problems slides) lands on the minimum-$\ell_1$
interpolant, checked against basis pursuit solved independently by
`scipy.optimize.linprog`.

The singular points of $\Gamma$: along the flow the coordinates off the support of
the limit decay exponentially ($u_k^2 + v_k^2 \to 0$), and once the limit has fewer
than $n$ non-zeros the constraints become dependent, so $J$ turns singular (its
smallest singular value falls towards rounding). The default projector is therefore
the SVD of $J$, which keeps every direction that $J$ still sees above rounding (the
field stays continuous) and drops only those below it; the solves end stationary
with $\sigma_{\min}(J) \approx 10^{-9}$, and the conditioning reached is reported.
With `--projector cholesky` or `qr` the solve stops instead by the condition-number
event (result `ill_conditioned`), and the comparison is made where it stopped; an
ending at the integrator's noise floor (`stagnated`) is accepted too. Those endings
are accepted only because the limit is checked by another route: against basis
pursuit, solved by linear programming.
"""

import argparse
from typing import Any

import equinox as eqx
import jax
import numpy as np

import manifoldflow as mf

from .._errors import InputError
from ..baselines import basis_pursuit, l1_minimiser_spread
from ..models.sparse import sparse_init, sparse_recovery_data
from ..theory import Check, check_ending, Report
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


LP_TOLERANCE = 1e-9
"""How close the flow's limit must be to the basis-pursuit solution (max-norm)."""
UNIQUE_SPREAD = 1e-6
"""Basis pursuit counts as having a unique solution when the minimum-l1 face is
narrower than this (`manifoldflow.models.sparse.l1_minimiser_spread`)."""


_ENDINGS = {
    "stationary": "|P_T grad R| reached the stationarity threshold, and the limit is "
    "checked against basis pursuit (LP) besides",
    "ill_conditioned": "J J^T turned singular as the off-support coordinates "
    "collapse (--projector cholesky or qr); the end point is checked against basis "
    "pursuit (LP), an independent route to the limit",
    "stagnated": "the integrator's noise floor near the singular limit; the end "
    "point is checked against basis pursuit (LP), an independent route to the limit",
}
"""How a start may end, and why each ending is accepted: the checks against basis
pursuit say whether the end point is the right limit."""


class SparseProblem(eqx.Module):
    Z: np.ndarray
    y: np.ndarray
    w_star: np.ndarray
    w_lp: np.ndarray
    lp_residual: float
    lp_spread: float
    manifold: Any
    starts: tuple
    options: dict
    settings: dict
    args: argparse.Namespace


class _Point(eqx.Module):
    """A point of Gamma: its sharpness and model."""

    R: float
    u: np.ndarray
    v: np.ndarray
    w: np.ndarray

    @classmethod
    def of(cls, manifold, theta, R) -> "_Point":
        model = manifold.to_parameters(theta)
        return cls(
            float(R), np.asarray(model.u), np.asarray(model.v), np.asarray(model.w)
        )


class _Run(eqx.Module):
    solution: Any
    start: Any  # the model before the initial retraction
    u: np.ndarray
    v: np.ndarray
    w: np.ndarray
    singular_values: np.ndarray
    polish: Any = None  # the MinimiseSolution from the flow's end (--polish)
    polished: _Point | None = None


class SparseRecoveryExperiment(AbstractExperiment):
    """`manifoldflow sparse-recovery` (see the module docstring)."""

    name = "sparse-recovery"
    help = "quadratic sparse model <u*u - v*v, z>: the flow lands on basis pursuit"
    description = (
        "Solve the sharpness flow of f_z(u, v) = <u*u - v*v, z> with z uniform on "
        "{-1,1}^d, L = (1/2n) sum (f - y)^2 and labels from a k-sparse w*, from "
        "several random starts, and check that its limit w = u*u - v*v is the "
        "minimum-l1 interpolant (basis pursuit, solved by scipy's linprog) to 1e-9, "
        "that Tr Hess L = 4(|u|^2 + |v|^2) on the manifold and equals 4 |w_lp|_1 at "
        "the limit, and that u and v end with disjoint supports; report whether "
        "w* was recovered and how ill-conditioned J became."
    )
    example_arguments = ("--d", "12", "--n", "6", "--k", "2", "--starts", "2")
    figure_name = "sparse_recovery.png"
    headline_keys = (
        "lp_distance",
        "w_star_distance",
        "l1_lp",
        "constraint_violation_max",
    )
    """What a sweep records: how far the flow's limit is from the LP's and the planted solution."""
    json_keys = ("Z", "y", "w_star", "w_flow", "w_lp")
    figure_size = (16.0, 4.0)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--d", type=int, default=50, help="dimension of w")
        parser.add_argument("--n", type=int, default=30, help="measurements")
        parser.add_argument("--k", type=int, default=3, help="non-zeros of w*")
        parser.add_argument("--seed", type=int, default=0, help="data seed")
        parser.add_argument(
            "--starts",
            type=int,
            default=3,
            help="random initialisations (seeds 0, 1, ...), each retracted onto Gamma",
        )
        parser.add_argument(
            "--init-scale",
            type=float,
            default=0.3,
            help="u, v start at scale * (1 + U[-1/2, 1/2]) before the retraction",
        )
        add_flow_options(parser)
        parser.set_defaults(projector="svd")

    def build(self, args: argparse.Namespace) -> SparseProblem:

        positive_sizes(d=args.d, n=args.n, k=args.k, starts=args.starts)
        check_seed(args.seed)
        if args.k > args.d:
            raise InputError(
                f"--k {args.k} > --d {args.d}: w* has at most d non-zeros."
            )
        if args.n > args.d:
            raise InputError(
                f"--n {args.n} > --d {args.d}: J = 2[Z diag(u), -Z diag(v)] has rank "
                "at most d, so the n constraints are dependent and Gamma is not a "
                "manifold of codimension n. Lower --n (compressed sensing has n < d)."
            )
        if not (args.init_scale > 0 and np.isfinite(args.init_scale)):
            raise InputError(f"--init-scale must be positive, got {args.init_scale}.")
        options = flow_options(args)
        Z, y, w_star = sparse_recovery_data(args.d, args.n, args.k, args.seed)
        w_lp, residual = basis_pursuit(Z, y)
        spread = l1_minimiser_spread(Z, y, float(np.sum(np.abs(w_lp))), args.seed)
        starts = tuple(
            sparse_init(jax.random.PRNGKey(s), args.d, args.init_scale)
            for s in range(args.starts)
        )
        manifold = mf.ZeroLossManifold(starts[0], Z, y, loss=mf.HalfMeanSquaredLoss())
        settings = dict(
            d=args.d,
            n=args.n,
            k=args.k,
            seed=args.seed,
            starts=args.starts,
            init_scale=args.init_scale,
            projector=args.projector,
            solver=args.solver,
            stationarity=args.stationarity,
            polish=bool(args.polish),
        )
        return SparseProblem(
            Z,
            y,
            w_star,
            w_lp,
            residual,
            spread,
            manifold,
            starts,
            options,
            settings,
            args,
        )

    def run(self, problem: SparseProblem, *, progress: bool) -> list[_Run]:

        runs = []
        for start in problem.starts:
            theta0 = mf.ZeroLossManifold(
                start, problem.Z, problem.y, loss=mf.HalfMeanSquaredLoss()
            ).initial_point()
            solution = mf.solve_flow(
                problem.manifold,
                theta0,
                progress_meter=progress_meter(progress),
                throw=False,
                **problem.options,
            )
            theta = solution.theta_final
            model = problem.manifold.to_parameters(theta)
            J = np.asarray(problem.manifold.jacobian_matrix(theta))
            polish = polish_end(
                problem.manifold, solution, problem.args, problem.options["projector"]
            )
            runs.append(
                _Run(
                    solution,
                    start,
                    np.asarray(model.u),
                    np.asarray(model.v),
                    np.asarray(model.w),
                    np.linalg.svd(J, compute_uv=False),
                    polish,
                    None
                    if polish is None
                    else _Point.of(problem.manifold, polish.theta, polish.sharpness),
                )
            )
            if solution.result_name == "interrupted":
                break
        return runs

    def checks(self, problem: SparseProblem, result: list[_Run]) -> Report:
        l1 = float(np.sum(np.abs(problem.w_lp)))
        flows = [_Point(float(r.solution.sharpness[-1]), r.u, r.v, r.w) for r in result]
        violation = max(float(np.max(r.solution.constraint_violation)) for r in result)
        polished = [r for r in result if r.polish is not None]
        limit = _limit_checks(problem, flows, "the flow's limit")
        if polished and any(r.solution.result_name == "t1_reached" for r in result):
            limit = excused(limit, POLISH_ENDING)
        checks = [
            check_ending(
                [r.solution for r in result], accept_t1(_ENDINGS, bool(polished))
            ),
            *limit,
            Check.compare(
                "constraint_held",
                "max|F| = max_i |f(z_i) - y_i| along every path",
                violation,
                upper=1e-12,
            ),
        ]
        if polished:
            checks += polish_checks(
                [r.polish for r in polished],
                [r.solution for r in polished],
                problem.args.stationarity,
            )
            checks += [
                renamed(c)
                for c in _limit_checks(
                    problem, [r.polished for r in polished], "the polished point"
                )
            ]
        distance = max(float(np.max(np.abs(p.w - problem.w_lp))) for p in flows)
        return Report(
            tuple(checks),
            dict(l1_lp=l1, lp_distance=distance, lp_residual=problem.lp_residual),
        )

    def summarise(self, problem: SparseProblem, result: list[_Run], report) -> Outcome:
        w_lp, w_star = problem.w_lp, problem.w_star
        tol = 1e-9
        recovered = bool(np.max(np.abs(w_lp - w_star)) <= tol)
        per_start = []
        for i, r in enumerate(result):
            s = r.solution
            smin, smax = float(r.singular_values[-1]), float(r.singular_values[0])
            per_start.append(
                dict(
                    start=i,
                    result=s.result_name,
                    num_steps=int(s.num_steps),
                    t_final=float(s.t_final),
                    wall_seconds=float(s.wall_seconds),
                    R_final=float(s.sharpness[-1]),
                    grad_norm_final=float(s.gradient_norm[-1]),
                    lp_distance=float(np.max(np.abs(r.w - w_lp))),
                    w_star_distance=float(np.max(np.abs(r.w - w_star))),
                    sigma_min_J=smin,
                    sigma_max_J=smax,
                    numerical_rank_J=int(
                        np.sum(r.singular_values > smax * 1e3 * np.finfo(float).eps)
                    ),
                    collapsed_coordinates=int(np.sum(r.u**2 + r.v**2 <= 1e-12)),
                )
            )
            if r.polish is not None:
                per_start[-1].update(
                    polish_summary(r.polish, s),
                    polish_lp_distance=float(np.max(np.abs(r.polished.w - w_lp))),
                )
        first = result[0]
        finished = bool(report["ending"].passed)
        interrupted = any(r.solution.result_name == "interrupted" for r in result)
        summary: dict[str, Any] = dict(
            problem.settings,
            Z=problem.Z,
            y=problem.y,
            w_star=w_star,
            w_lp=w_lp,
            lp_residual=problem.lp_residual,
            lp_unique=bool(problem.lp_spread <= UNIQUE_SPREAD),
            lp_face_width=problem.lp_spread,
            l1_lp=float(np.sum(np.abs(w_lp))),
            l1_w_star=float(np.sum(np.abs(w_star))),
            recovered=recovered,
            w_flow=first.w,
            u_final=first.u,
            v_final=first.v,
            w_flow_all=[r.w for r in result],
            lp_distance=max(p["lp_distance"] for p in per_start),
            w_star_distance=max(p["w_star_distance"] for p in per_start),
            constraint_violation_max=max(
                float(np.max(r.solution.constraint_violation)) for r in result
            ),
            sigma_min_J=min(p["sigma_min_J"] for p in per_start),
            runs=per_start,
            result=first.solution.result_name,
        )
        sol = first.solution
        support = np.flatnonzero(np.abs(w_lp) > tol)
        off = np.setdiff1d(np.arange(w_lp.size), support)
        ys = np.asarray(sol.ys)
        energy = np.stack(
            [
                np.asarray(m.u**2 + m.v**2)
                for m in map(problem.manifold.to_parameters, sol.ys)
            ]
        )
        d = w_lp.size
        arrays = dict(
            ts=np.asarray(sol.ts),
            step_ts=np.asarray(sol.step_ts),
            sharpness=np.asarray(sol.sharpness),
            gradient_norm=np.asarray(sol.gradient_norm),
            constraint_violation=np.asarray(sol.constraint_violation),
            ys=ys,
        )
        lines = [
            f"sparse recovery d={d}, n={problem.y.size}, k={int(np.sum(w_star != 0))}: "
            f"basis pursuit {'recovers' if recovered else 'does NOT recover'} w* "
            f"(|w_lp - w*|_inf = {np.max(np.abs(w_lp - w_star)):.1e}); its solution "
            + (
                "is unique"
                if problem.lp_spread <= UNIQUE_SPREAD
                else f"is NOT unique (face width {problem.lp_spread:.2g})"
            ),
        ]
        for p in per_start:
            lines.append(
                f"  start {p['start']}: {p['result']} after {p['num_steps']} steps "
                f"(t = {p['t_final']:.3g}, {p['wall_seconds']:.1f} s): "
                f"max|w - w_lp| = {p['lp_distance']:.1e}, max|w - w*| = "
                f"{p['w_star_distance']:.1e}\n    sigma_min(J) = "
                f"{p['sigma_min_J']:.1e} (rank {p['numerical_rank_J']} of "
                f"{problem.y.size}), {p['collapsed_coordinates']} coordinates collapsed"
            )
        for i, r in enumerate(result):
            if r.polish is not None:
                lines.append(
                    f"  start {i} {polish_headline(r.polish)}; max|w - w_lp| = "
                    f"{per_start[i]['polish_lp_distance']:.1e}"
                )
        return Outcome(
            report=report,
            summary=summary,
            arrays=arrays,
            headline="\n".join(lines),
            finished=finished,
            interrupted=interrupted,
            figure_data=dict(
                w_flow=first.w,
                w_lp=w_lp,
                w_star=w_star,
                step_ts=np.asarray(sol.step_ts),
                ts=np.asarray(sol.ts),
                sharpness=np.asarray(sol.sharpness),
                gradient_norm=np.asarray(sol.gradient_norm),
                R_star=4 * float(np.sum(np.abs(w_lp))),
                energy_off=energy[:, off] if off.size else None,
                energy_on=energy[:, support],
                shown=f"start 0 of {len(result)}",
            ),
        )

    def plot(self, outcome: Outcome, figure) -> None:
        data = outcome.figure_data
        axes = figure.subplots(1, 4)
        figure.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.9, wspace=0.3)
        index = np.arange(data["w_lp"].size)
        axes[0].plot(index, data["w_star"], "s", mfc="none", ms=7, label="w*")
        axes[0].plot(index, data["w_lp"], "x", ms=6, label="basis pursuit")
        axes[0].plot(index, data["w_flow"], ".", ms=4, label="flow limit")
        axes[0].set(
            xlabel="coordinate k", ylabel="w_k", title=f"limit vs LP ({data['shown']})"
        )
        axes[0].legend(fontsize=7)
        gap = data["sharpness"] - data["R_star"]
        axes[1].semilogy(data["step_ts"], np.where(gap > 0, gap, np.nan))
        axes[1].set(
            xlabel="t", ylabel="R - 4|w_lp|_1", title=f"sharpness gap ({data['shown']})"
        )
        axes[2].semilogy(data["step_ts"], data["gradient_norm"])
        axes[2].set(
            xlabel="t", ylabel="|P_T grad R|", title=f"stationarity ({data['shown']})"
        )
        if data["energy_off"] is not None:
            axes[3].semilogy(data["ts"], data["energy_off"], color="0.6", lw=0.6)
        axes[3].semilogy(data["ts"], data["energy_on"], color="C3", lw=1.2)
        axes[3].set(
            xlabel="t",
            ylabel="u_k^2 + v_k^2",
            title=f"support red, rest grey ({data['shown']})",
        )


def _limit_checks(problem: SparseProblem, points: list[_Point], what: str) -> list:
    """The flattest interpolant is basis pursuit's: the checks at `points` (one per
    start), worst start reported."""
    w_lp = problem.w_lp
    l1 = float(np.sum(np.abs(w_lp)))
    trace_gap = max(
        abs(p.R - 4 * float(p.u @ p.u + p.v @ p.v)) / (4 * float(p.u @ p.u + p.v @ p.v))
        for p in points
    )
    distance = max(float(np.max(np.abs(p.w - w_lp))) for p in points)
    sharpness_gap = max(abs(p.R - 4 * l1) / (4 * l1) for p in points)
    overlap = max(float(np.max(np.minimum(p.u**2, p.v**2))) for p in points)
    l1_gap = max(abs(float(np.sum(np.abs(p.w))) - l1) / l1 for p in points)
    claim = f"the flattest interpolant is the minimum-l1 one: max|w - w_lp| at {what}"
    return [
        Check.compare(
            "trace_on_gamma",
            "Tr Hess L = 4(|u|^2 + |v|^2) on Gamma (L = (1/2n) sum (f - y)^2, "
            f"z in {{-1,1}}^d): relative difference at {what}, every start",
            trace_gap,
            upper=1e-12,
        ),
        (
            Check.compare(
                "flow_limit_is_basis_pursuit",
                claim + " over starts, w_lp from scipy's linprog (unique here)",
                distance,
                upper=LP_TOLERANCE,
            )
            if problem.lp_spread <= UNIQUE_SPREAD
            else Check.not_applicable(
                "flow_limit_is_basis_pursuit",
                claim + " over starts",
                f"basis pursuit has many solutions here (the minimum-l1 face is "
                f"{problem.lp_spread:.2g} wide): the flow may land on any of them; "
                "see l1_of_limit",
                measured=distance,
            )
        ),
        Check.compare(
            "l1_of_limit",
            f"{what} is a minimum-l1 interpolant: | |w|_1 - |w_lp|_1 | / "
            "|w_lp|_1, every start",
            l1_gap,
            prediction=0.0,
            upper=LP_TOLERANCE,
        ),
        Check.compare(
            "sharpness_at_l1_minimum",
            "min over Gamma of Tr Hess L is 4 |w_lp|_1: relative gap of R at "
            f"{what}, every start",
            sharpness_gap,
            prediction=0.0,
            upper=LP_TOLERANCE,
        ),
        Check.compare(
            "disjoint_supports",
            "equality in |u|^2 + |v|^2 >= |u*u - v*v|_1 needs disjoint supports: "
            f"max_k min(u_k^2, v_k^2) at {what}",
            overlap,
            upper=LP_TOLERANCE,
        ),
    ]
