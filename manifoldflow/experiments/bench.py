r"""`manifoldflow bench`: the work--precision harness of `manifoldflow.work_precision` on the
two-layer flow (any size) and the deep-linear trace flow: every strategy, solver and
tolerance against a cross-checked reference, in the transient."""

import argparse
import dataclasses
import math
import sys
from typing import Any

import equinox as eqx
import numpy as np

from .. import work_precision
from .._errors import InputError
from ..theory import Check, Report
from ..work_precision import analyse, plot_work_precision
from ..work_precision.harness import (
    ADAPTIVE_SOLVERS,
    FIXED_SOLVERS,
    NUM_TIMES,
    SCIPY_METHODS,
)
from ._options import check_seed, positive_sizes
from .base import AbstractExperiment, Outcome


_PROBLEMS = ("two-layer", "deep-linear")
_ADAPTIVE_STRATEGIES = (
    "projected",
    "projected-every-4",
    "constraint-aware",
    "no-projection",
    "stabilised",
)
_TARGETS = tuple(10.0**-k for k in range(4, 11))


def _names(text: str, allowed, option: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in allowed]
    if not names or bad:
        raise InputError(
            f"{option} {text!r}: unknown {', '.join(bad) or 'empty list'}; choose from "
            f"{', '.join(allowed)} (comma-separated)."
        )
    return names


def _numbers(text: str, option: str, kind=float) -> tuple:
    try:
        values = tuple(kind(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise InputError(
            f"{option} {text!r}: expected comma-separated numbers, e.g. "
            f"{'1e-4,1e-8' if kind is float else '16,64,256'}."
        ) from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{option} {text!r}: every value must be finite and > 0.")
    return values


class BenchSettings(eqx.Module):
    problems: tuple[str, ...]
    sizes: tuple[int, int, int]
    seed: int
    plan_options: dict


class BenchExperiment(AbstractExperiment):
    """`manifoldflow bench` (see the module docstring)."""

    name = "bench"
    help = "work-precision of every way to integrate the flow (solvers, projections)"
    description = (
        "Benchmark the ways to integrate the sharpness flow: diffrax solvers (Heun, "
        "Bosh3, Tsit5, Dopri5, Dopri8, Kvaerno5) under PID control with a projection "
        "after every step, every 4 steps, constraint-aware error control, no "
        "projection, or the stabilised vector field; projected Euler and the explicit "
        "solvers at fixed steps; SciPy's solve_ivp (DOP853, RK45, Radau, LSODA) on the "
        "hand-written NumPy closed form. Errors are measured in the transient (up to "
        "the time T at which |P_T grad R| first reaches 1e-2) against projected "
        "Dopri8 at 1e-13, cross-checked with projected Tsit5. Writes every row "
        "(error, error in R, max|F|, evaluations, steps, wall and compile seconds) to "
        "summary.json and the work-precision diagrams; names the fastest "
        "configuration per target error. The full default takes minutes; --quick "
        "runs every third tolerance."
    )
    example_arguments = (
        "--m", "4", "--d", "6", "--n", "3",
        "--solvers", "tsit5,dopri8",
        "--strategies", "projected,no-projection,projected-fixed-euler,scipy",
        "--tolerances", "1e-4,1e-8", "--steps", "64,256",
        "--scipy-methods", "DOP853",
    )  # fmt: skip
    figure_name = "work_precision.png"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--problems",
            default="two-layer",
            help=f"comma-separated, from {', '.join(_PROBLEMS)}",
        )
        parser.add_argument("--m", type=int, default=32, help="two-layer width")
        parser.add_argument("--d", type=int, default=64, help="two-layer input size")
        parser.add_argument("--n", type=int, default=16, help="two-layer samples")
        parser.add_argument("--seed", type=int, default=0, help="two-layer data seed")
        parser.add_argument(
            "--solvers",
            default=None,
            help="comma-separated diffrax solvers under PID control, from heun, bosh3, "
            "tsit5, dopri5, dopri8, kvaerno5 (default: all with projection after "
            "every step, tsit5 and dopri8 for the other strategies)",
        )
        parser.add_argument(
            "--strategies",
            default=",".join(_ADAPTIVE_STRATEGIES)
            + ",projected-fixed-euler,projected-fixed,scipy",
            help="comma-separated strategies",
        )
        parser.add_argument(
            "--tolerances",
            default=",".join(f"1e-{k}" for k in range(3, 13)),
            help="PID rtol values (atol = rtol / 100)",
        )
        parser.add_argument(
            "--steps",
            default=",".join(str(2**k) for k in range(4, 15)),
            help="numbers of constant steps on [0, T] for the fixed-step solvers",
        )
        parser.add_argument(
            "--scipy-methods",
            default="DOP853,RK45,Radau,LSODA",
            help="solve_ivp methods (two-layer only)",
        )
        parser.add_argument(
            "--budget",
            type=float,
            default=30.0,
            help="seconds: a configuration slower than this skips its tighter "
            "tolerances (or finer steps)",
        )
        parser.add_argument(
            "--quick",
            action="store_true",
            help="every third tolerance and every fourth step count",
        )

    def build(self, args: argparse.Namespace) -> BenchSettings:

        problems = _names(args.problems, _PROBLEMS, "--problems")
        check_seed(args.seed)
        positive_sizes(m=args.m, d=args.d, n=args.n)
        strategies = _names(
            args.strategies,
            (
                *_ADAPTIVE_STRATEGIES,
                "projected-fixed-euler",
                "projected-fixed",
                "scipy",
            ),
            "--strategies",
        )
        solvers = (
            None
            if args.solvers is None
            else _names(args.solvers, tuple(ADAPTIVE_SOLVERS), "--solvers")
        )
        tolerances = _numbers(args.tolerances, "--tolerances")
        if any(t >= 1 for t in tolerances):
            raise InputError(f"--tolerances {args.tolerances!r}: each must be < 1.")
        steps = _numbers(args.steps, "--steps", int)

        if any(k % NUM_TIMES for k in steps):
            raise InputError(
                f"--steps {args.steps!r}: each count must be a multiple of "
                f"{NUM_TIMES}, so that the {NUM_TIMES} output intervals end on steps."
            )
        methods = _names(args.scipy_methods, SCIPY_METHODS, "--scipy-methods")
        if not args.budget > 0:
            raise InputError(f"--budget {args.budget}: must be > 0 seconds.")
        adaptive = []
        for strategy in _ADAPTIVE_STRATEGIES:
            if strategy not in strategies:
                continue
            names = solvers or (
                tuple(ADAPTIVE_SOLVERS)
                if strategy == "projected"
                else ("tsit5", "dopri8")
            )
            adaptive += [(strategy, s) for s in names]
        fixed = [
            s
            for s in FIXED_SOLVERS
            if (s == "euler" and "projected-fixed-euler" in strategies)
            or (s != "euler" and "projected-fixed" in strategies)
        ]
        if args.quick:
            tolerances, steps = tolerances[::3], steps[::4]
        plan = dict(
            tolerances=tuple(sorted(tolerances, reverse=True)),
            adaptive=tuple(adaptive),
            fixed_steps=tuple(sorted(steps)),
            fixed_solvers=tuple(fixed),
            scipy_methods=methods if "scipy" in strategies else (),
            budget_seconds=args.budget,
        )
        return BenchSettings(problems, (args.m, args.d, args.n), args.seed, plan)

    def run(self, problem: BenchSettings, *, progress: bool) -> list[dict]:

        results = []

        def log(text):
            if progress:
                print(text, file=sys.stderr, flush=True)

        for key in problem.problems:
            if key == "two-layer":
                built = work_precision.two_layer_problem(
                    *problem.sizes, seed=problem.seed
                )
            else:
                built = work_precision.deep_linear_problem()
            plan = work_precision.Plan.for_problem(built)
            options = dict(problem.plan_options)
            if (
                plan.adaptive != work_precision.Plan().adaptive
            ):  # a large problem's exclusions
                options["adaptive"] = tuple(
                    a for a in options["adaptive"] if a in plan.adaptive
                )
                options["scipy_methods"] = tuple(
                    m for m in options["scipy_methods"] if m in plan.scipy_methods
                )
            plan = dataclasses.replace(plan, **options)
            results.append(work_precision.run_problem(built, plan, log=log))
        return results

    def checks(self, problem: BenchSettings, result: list[dict]) -> Report:

        checks = []
        for res in result:
            label = res["problem"]
            cross = res["reference"]["cross_check"]
            checks.append(
                Check.compare(
                    "reference_cross_check",
                    f"{label}: projected Dopri8 and projected Tsit5 at 1e-13 agree on "
                    "the transient (else no error is reported)",
                    cross,
                    upper=1e-10,
                )
            )
            rows = [r for r in res["rows"] if not r["failed"]]
            checks.append(
                Check.compare(
                    "configurations_succeeded",
                    f"{label}: configurations that ran and succeeded (of "
                    f"{len(res['rows'])}; failed ones are rows with their reason)",
                    len(rows),
                    lower=1,
                )
            )
            on_gamma = [
                r["constraint_max"]
                for r in rows
                if r["strategy"]
                in (
                    "projected",
                    "constraint-aware",
                    "projected-fixed",
                    "projected-fixed-euler",
                )
            ]
            claim = (
                f"{label}: max|F| over the outputs of every configuration that "
                "retracts after every step"
            )
            checks.append(
                Check.compare(
                    "projection_holds_constraint", claim, max(on_gamma), upper=1e-12
                )
                if on_gamma
                else Check.not_applicable(
                    "projection_holds_constraint", claim, "no such configuration ran"
                )
            )
            analysis = analyse(res, targets=_TARGETS)
            at = {round(-math.log10(p["target"])): p for p in analysis["per_target"]}
            ratio = at[8]["evals_ratio"]
            claim = (
                f"{label}: at transient error <= 1e-8, the fewest vector-field "
                "evaluations on Gamma (max|F| <= 1e-12) vs projected-fixed-euler "
                "(extrapolated at first order when no Euler run got there)"
            )
            if ratio is None:
                checks.append(
                    Check.not_applicable(
                        "evals_vs_projected_euler",
                        claim,
                        "no configuration on Gamma reached 1e-8, or Euler was not run",
                    )
                )
            else:
                checks.append(
                    Check.compare("evals_vs_projected_euler", claim, ratio, lower=10.0)
                )
            speedups = [
                p["speedup"] for p in analysis["per_target"] if p["speedup"] is not None
            ]
            claim = (
                f"{label}: at every target error 1e-4..1e-10 reached by both, the "
                "fastest manifoldflow configuration holding max|F| <= 1e-12 vs the "
                "fastest SciPy one (outputs projected; SciPy wall / manifoldflow "
                "wall, compile excluded; the least over targets)"
            )
            if speedups:
                checks.append(
                    Check.compare(
                        "faster_than_scipy",
                        claim,
                        min(speedups),
                        lower=1.0,
                        note="wall times on this machine; noisy below a millisecond",
                    )
                )
            else:
                checks.append(
                    Check.not_applicable(
                        "faster_than_scipy",
                        claim,
                        "SciPy not run on this problem, or no target reached by both",
                    )
                )
        if len(result) > 1:  # one set of checks per problem: names stay unique
            keys = [k.replace("-", "_") for k in problem.problems]
            per = len(checks) // len(result)
            checks = [
                dataclasses.replace(c, name=f"{c.name}_{keys[i // per]}")
                for i, c in enumerate(checks)
            ]
        figures = {
            f"cross_check_{k}": r["reference"]["cross_check"]
            for k, r in zip(problem.problems, result)
        }
        return Report(tuple(checks), figures)

    def summarise(self, problem: BenchSettings, result: list[dict], report) -> Outcome:

        analyses = [analyse(r, targets=_TARGETS) for r in result]
        rows = [row for r in result for row in r["rows"]]
        lines = []
        for res, analysis in zip(result, analyses):
            ref = res["reference"]
            lines.append(
                f"{res['problem']}: T = {ref['T']:.4g}, reference cross-check "
                f"{ref['cross_check']:.1e}, {len(res['rows'])} configurations"
            )
            for p in analysis["per_target"]:
                if p["target"] not in (1e-6, 1e-10):
                    continue
                for key, words in (
                    ("fastest", "fastest"),
                    ("fastest_on_gamma", "fastest with max|F| <= 1e-12"),
                ):
                    best = p[key]
                    if best is None:
                        continue
                    setting = (
                        f"rtol {best['rtol']:.0e}"
                        if "rtol" in best
                        else f"dt {best['dt']:.2e}"
                    )
                    lines.append(
                        f"  {words} to error <= {p['target']:.0e}: {best['strategy']} "
                        f"{best['solver']} {setting} ({best['wall_seconds'] * 1e3:.2f} "
                        f"ms, {best['vf_evals']} evaluations)"
                    )
        numeric = (
            "rtol", "atol", "dt", "error", "R_error", "constraint_max", "vf_evals",
            "steps_accepted", "steps_rejected", "wall_seconds", "compile_seconds",
        )  # fmt: skip
        arrays = {
            key: np.asarray([r.get(key, np.nan) for r in rows], dtype=float)
            for key in numeric
        }
        arrays["failed"] = np.asarray([r["failed"] for r in rows])
        summary: dict[str, Any] = dict(
            problems=[
                dict(
                    problem=r["problem"],
                    reference=r["reference"],
                    refused=r.get("refused"),
                )
                for r in result
            ],
            analysis=analyses,
            rows=rows,
        )
        finished = not any(r.get("refused") for r in result)
        return Outcome(
            report=report,
            summary=summary,
            arrays=arrays,
            headline="\n".join(lines),
            finished=finished,
            figure_data=result,
        )

    def plot(self, outcome: Outcome, figure) -> None:

        plot_work_precision(outcome.figure_data, figure)
