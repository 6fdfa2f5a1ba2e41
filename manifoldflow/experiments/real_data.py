r"""`manifoldflow real-data`: the flattest interpolant of an MLP on a real dataset,
and its test error (Open Questions 1 and 2 of Li 2024, "open problems" slides).

An `equinox.nn.MLP` with its standard initialisation is trained by Adam on the
mean squared loss to interpolation, then put exactly on the zero-loss manifold by
Gauss--Newton. From that interpolant the sharpness flow runs toward flatter
interpolants, and label-noise GD runs at several step sizes $\eta$ to the matched
time $\tau = \eta^2 k$. Along the flow and at every end point it measures $R =
\operatorname{Tr}\nabla^2 L$, the stationarity, the test error, the parameter norm,
the largest Hessian eigenvalue (Lanczos) and the distance from the interpolant.
Whether the flatter interpolant generalises better is what it measures, not what it
assumes.
"""

import argparse
import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import manifoldflow as mf

from .._errors import InputError
from ..models.datasets import DATASETS, load_dataset
from ..sgd import LabelNoiseGD, simulate
from ..theory import Check, check_ending, Report
from ._options import (
    add_flow_options,
    check_seed,
    flow_options,
    positive_sizes,
    progress_meter,
    result_text,
)
from .base import AbstractExperiment, Outcome
from .interpolation import cast, train_to_interpolation as train_to_interpolation
from .real_data_records import (
    Measure,
    num_parameters,
    plot_real_data,
    point_row,
    RealDataProblem,
    RealDataResult,
)


_ACTIVATIONS = {
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "softplus": jax.nn.softplus,
}
_REPORT_FRACTIONS = (0.0, 1 / 64, 1 / 16, 1 / 4, 1 / 2, 1.0)
"""Where along [0, t1] the flow's point is measured."""
_INTERPOLATION_LOSS = {"float64": 1e-10, "float32": 1e-8}
"""Adam stops at this training loss; Gauss--Newton then goes to the retraction's
tolerance."""
_FLOAT32 = dict(rtol=1e-6, atol=1e-6, stationarity=1e-5, constraint=1e-5)
"""float32 floors: PID tolerances, stationarity and the retractions' atol."""
_HELD = {"float64": 1e-10, "float32": 1e-4}
"""The largest max|F| along the flow that the `on_manifold` check accepts."""


def _etas(text: str) -> list[float]:
    try:
        etas = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(
            f"--etas must be comma-separated numbers, got {text!r}."
        ) from None
    if not etas or not all(math.isfinite(e) and e > 0 for e in etas):
        raise InputError(f"--etas must be positive numbers, got {text!r}.")
    return sorted(set(etas), reverse=True)


class RealDataExperiment(AbstractExperiment):
    name = "real-data"
    help = "an MLP on a real dataset: the flow toward the flattest interpolant"
    description = __doc__.split("\n\n", 1)[1].strip()
    example_arguments = (
        "--n-train",
        "24",
        "--n-test",
        "40",
        "--width",
        "12",
        "--t1",
        "0.05",
        "--etas",
        "0.04,0.03,0.02",
        "--sigma",
        "1",
    )
    figure_name = "real_data.png"
    json_keys = ("report_times",)
    batch_options = ()
    headline_keys = (
        "R_final",
        "num_steps",
        "t_final",
        "grad_norm_final",
        "test_error_interpolant",
        "test_error_flow",
        "test_error_sgd",
        "test_error_change_flow",
        "test_error_change_sgd",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("data and model")
        group.add_argument(
            "--dataset",
            default="digits",
            help=f"one of {', '.join(sorted(DATASETS))} (scikit-learn's bundled "
            "copies; needs the data extra)",
        )
        group.add_argument("--n-train", type=int, default=256, help="training examples")
        group.add_argument("--n-test", type=int, default=500, help="test examples")
        group.add_argument("--width", type=int, default=64, help="hidden width")
        group.add_argument("--depth", type=int, default=2, help="hidden layers")
        group.add_argument(
            "--activation",
            default="tanh",
            choices=sorted(_ACTIVATIONS),
            help="hidden activation (smooth: the flow needs second derivatives)",
        )
        group.add_argument(
            "--seed", type=int, default=0, help="data split and initialisation"
        )
        group = parser.add_argument_group("training to interpolation (Adam)")
        group.add_argument(
            "--train-steps", type=int, default=40_000, help="most Adam steps"
        )
        group.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
        group = parser.add_argument_group("label-noise GD at the matched time")
        group.add_argument(
            "--etas",
            default="0.05,0.035,0.025",
            help="step sizes, comma-separated (each runs tau/eta^2 steps)",
        )
        group.add_argument(
            "--sigma",
            type=float,
            default=4.0,
            help="label noise: flow constant c = sigma^2/(2n), tau = t1/c",
        )
        group.add_argument(
            "--sgd-seeds", type=int, default=1, help="noise seeds per step size"
        )
        group = parser.add_argument_group("matrix-free path")
        group.add_argument(
            "--matrix-free",
            default="auto",
            choices=("auto", "yes", "no"),
            help="never form the n x D Jacobian (auto: when it would not fit)",
        )
        group.add_argument(
            "--dtype",
            default="float64",
            choices=("float64", "float32"),
            help="precision of the model, data and flow (float32 for accelerators: "
            "tolerances are raised to rtol, atol 1e-6, stationarity and max|F| 1e-5)",
        )
        # No --polish: it measures generalisation mid-flow (at --t1); the flattest
        # point of a real model is measured with minimise_sharpness in Python.
        add_flow_options(parser, polish=False)
        parser.set_defaults(t1=1.0)

    def build(self, args: argparse.Namespace) -> RealDataProblem:
        check_seed(args.seed)
        positive_sizes(
            n_train=args.n_train,
            n_test=args.n_test,
            width=args.width,
            depth=args.depth,
            train_steps=args.train_steps,
            sgd_seeds=args.sgd_seeds,
        )
        if args.dataset not in DATASETS:
            raise InputError(
                f"--dataset {args.dataset!r} is not a dataset: choose one of "
                f"{', '.join(sorted(DATASETS))}."
            )
        if not math.isfinite(args.t1):
            raise InputError(
                "--t1 must be finite here: the label-noise runs are matched to it."
            )
        if not (args.lr > 0 and math.isfinite(args.lr)):
            raise InputError(f"--lr must be a positive number, got {args.lr}.")
        if not (args.sigma > 0 and math.isfinite(args.sigma)):
            raise InputError(f"--sigma must be a positive number, got {args.sigma}.")
        etas = _etas(args.etas)
        constraint_tolerance = 1e-13
        if args.dtype == "float32":
            for name in ("rtol", "atol", "stationarity"):
                setattr(args, name, max(getattr(args, name), _FLOAT32[name]))
            constraint_tolerance = _FLOAT32["constraint"]
        flow = flow_options(args)
        retraction = mf.GaussNewtonRetraction(atol=constraint_tolerance, rtol=1e-14)
        if args.dtype == "float32":
            retraction = mf.GaussNewtonRetraction(atol=constraint_tolerance, rtol=1e-6)
            flow.update(
                initial_retraction=retraction,
                retraction=mf.ChordRetraction(atol=constraint_tolerance, rtol=1e-6),
            )
        data = load_dataset(args.dataset, args.n_train, args.n_test, args.seed)
        features = data.X_train.shape[1]
        D = num_parameters(features, args.width, args.depth)
        if D < args.n_train:
            raise InputError(
                f"The MLP has D = {D} parameters for n = {args.n_train} training "
                "examples: it cannot interpolate them (the zero-loss set is "
                "generically empty).",
                fix="Use a larger --width or --depth, or a smaller --n-train.",
            )
        tau = args.t1 * 2 * args.n_train / args.sigma**2
        steps = sum(round(tau / eta**2) for eta in etas) * args.sgd_seeds
        if steps > 50_000_000:
            raise InputError(
                f"The label-noise runs would take {steps:,} steps (tau = 2 n t1 / "
                f"sigma^2 = {tau:.4g}, tau/eta^2 steps per eta).",
                fix="Use a smaller --t1, larger --etas or a larger --sigma.",
            )
        model = eqx.nn.MLP(
            features,
            "scalar",
            args.width,
            args.depth,
            activation=_ACTIVATIONS[args.activation],
            key=jax.random.PRNGKey(args.seed),
        )
        settings = dict(
            dataset=args.dataset,
            n_train=args.n_train,
            n_test=args.n_test,
            width=args.width,
            depth=args.depth,
            activation=args.activation,
            seed=args.seed,
            parameters=D,
            solver=args.solver,
            dtype=args.dtype,
        )
        return RealDataProblem(
            data=data,
            model=cast(model, jnp.dtype(args.dtype)),
            etas=etas,
            sigma=args.sigma,
            sgd_seeds=args.sgd_seeds,
            train_steps=args.train_steps,
            learning_rate=args.lr,
            matrix_free={"auto": None, "yes": True, "no": False}[args.matrix_free],
            dtype=args.dtype,
            retraction=retraction,
            flow=flow,
            settings=settings,
        )

    def run(self, problem: RealDataProblem, *, progress: bool) -> RealDataResult:
        data = problem.data
        trained, steps, loss, seconds = train_to_interpolation(
            problem.model,
            data.X_train,
            data.y_train,
            learning_rate=problem.learning_rate,
            max_steps=problem.train_steps,
            target=_INTERPOLATION_LOSS[problem.dtype],
        )
        manifold = mf.ZeroLossManifold(
            trained, data.X_train, data.y_train, matrix_free=problem.matrix_free
        )
        retracted = problem.retraction(
            manifold, mf.CholeskyProjector(), manifold.initial_point()
        )
        if not (math.isfinite(loss) and bool(retracted.converged)):
            raise InputError(
                f"Adam did not reach interpolation: training loss {loss:.3e} after "
                f"{steps} steps, and Gauss-Newton from there reached max|F| = "
                f"{float(retracted.residual):.3e}, not 0. A width of "
                f"{problem.settings['width']} cannot fit these {data.y_train.size} "
                "examples in that budget.",
                fix="Use a larger --width or --depth, more --train-steps, or "
                "another --lr.",
            )
        theta0 = np.asarray(retracted.theta)
        t1 = problem.flow["t1"]
        times = np.asarray(_REPORT_FRACTIONS) * t1
        solution = mf.solve_flow(
            manifold,
            theta0,
            saveat=list(times[1:]),
            throw=False,
            # Redrawn every step: a step of a large model can take a minute.
            progress_meter=progress_meter(progress, refresh_steps=1),
            **problem.flow,
        )
        # After Ctrl-C (in the solve, or in a phase after it) the command stops: no
        # Lanczos (lambda_max), no label-noise GD; what was measured is written.
        interrupted = solution.result_name == "interrupted"
        simulator = LabelNoiseGD(sigma=problem.sigma)
        constant = float(simulator.flow_constant(manifold))
        try:
            if interrupted:
                raise KeyboardInterrupt
            points, times, runs = self._after_the_flow(
                problem, manifold, theta0, solution, constant, progress
            )
            skipped = []
        except KeyboardInterrupt:
            interrupted = True
            skipped = ["lambda_max (Lanczos)", "label-noise GD"]
            measure = Measure(manifold, data, theta0, lanczos=False)
            thetas = [theta0, *np.asarray(solution.ys)[: len(solution.ts)]]
            times = [0.0, *np.asarray(solution.ts)]
            if len(thetas) == 1:  # no report time reached: the point it stopped at
                thetas.append(np.asarray(solution.theta_final))
                times.append(float(solution.t_final))
            points, times, runs = [measure(t) for t in thetas], np.asarray(times), []
        return RealDataResult(
            manifold=manifold,
            theta_interpolant=theta0,
            training=dict(steps=steps, loss=loss, seconds=seconds),
            solution=solution,
            times=times,
            points=points,
            sgd=runs,
            constant=constant,
            skipped=skipped,
            interrupted=interrupted,
        )

    def _after_the_flow(self, problem, manifold, theta0, solution, constant, progress):
        """The measurements along the flow (with lambda_max) and the label-noise GD
        runs matched to it: `(points, times, runs)`."""
        measure = Measure(manifold, problem.data, theta0)
        points = [measure(theta0)]
        for theta in np.asarray(solution.ys)[: len(solution.ts)]:
            points.append(measure(theta))
        times = np.concatenate([[0.0], np.asarray(solution.ts)])
        simulator = LabelNoiseGD(sigma=problem.sigma)
        t_reached = float(solution.t_final)
        tau = t_reached / constant
        runs = []
        limit = 2 / points[0].lambda_max  # GD's stability limit at the interpolant
        for eta in problem.etas:
            k = max(1, round(tau / eta**2))
            if not eta < limit:  # it would diverge: not run, and the check says so
                runs.append(
                    dict(
                        eta=eta,
                        steps=k,
                        tau=k * eta**2,
                        points=[],
                        retracted=0,
                        diverged=0,
                        unstable=True,
                    )
                )
                continue
            sim = simulate(
                manifold,
                jnp.asarray(theta0),
                simulator,
                eta=eta,
                num_steps=k,
                seeds=problem.sgd_seeds,
                progress=progress,
            )
            finals = np.asarray(sim.final)
            run_points, ok = [], []
            for final, diverged in zip(finals, np.asarray(sim.diverged)):
                if diverged:
                    ok.append(False)
                    continue
                back = problem.retraction(
                    manifold, mf.CholeskyProjector(), jnp.asarray(final)
                )
                ok.append(bool(back.converged))
                if back.converged:
                    run_points.append(measure(np.asarray(back.theta)))
            runs.append(
                dict(
                    eta=eta,
                    steps=k,
                    tau=k * eta**2,
                    points=run_points,
                    retracted=int(sum(ok)),
                    diverged=int(np.sum(np.asarray(sim.diverged))),
                    unstable=False,
                )
            )
        return points, times, runs

    def checks(self, problem: RealDataProblem, result: RealDataResult) -> Report:
        solution = result.solution
        R = np.asarray(solution.sharpness)
        rises = np.diff(R)
        # R decreases along its own gradient flow; steps may wiggle by rounding.
        largest_rise = float(np.max(rises / np.abs(R[:-1]), initial=-np.inf))
        diverged = sum(run["diverged"] for run in result.sgd)
        unstable = [run["eta"] for run in result.sgd if run["unstable"]]
        unretracted = sum(
            problem.sgd_seeds - run["retracted"] - run["diverged"]
            for run in result.sgd
            if not run["unstable"]
        )
        limit = 2 / result.points[0].lambda_max
        flow_end, start = result.points[-1], result.points[0]
        sgd_end = result.sgd[-1]["points"] if result.sgd else []
        checks = (
            check_ending(
                solution,
                {
                    "t1_reached": "the flow runs to --t1 (the flattest interpolant "
                    "may be far); the label-noise runs are matched to it",
                    "stationary": "the flow reached a stationary point",
                },
            ),
            Check.compare(
                "on_manifold",
                "largest max|F| along the flow (the interpolation constraint; "
                f"{problem.dtype})",
                float(np.nanmax(solution.constraint_violation)),
                upper=_HELD[problem.dtype],
            ),
            Check.compare(
                "sharpness_decreases",
                "largest relative rise of R between accepted steps (a gradient flow "
                "of R: none beyond rounding)",
                largest_rise,
                upper=1e-10 if problem.dtype == "float64" else 1e-4,
            ),
            Check.compare(
                "sgd_stable",
                f"step sizes at or above GD's stability limit 2/lambda_max = "
                f"{limit:.3g} at the interpolant (not run: they diverge)",
                len(unstable),
                upper=0,
                note=f"--etas below {limit:.3g} (unstable: "
                + ", ".join(f"{e:g}" for e in unstable)
                + ")"
                if unstable
                else "",
            ),
            Check.compare(
                "sgd_no_divergence",
                "label-noise GD runs that diverged (a non-finite value)",
                diverged,
                upper=0,
            ),
            Check.compare(
                "sgd_retraction",
                "label-noise GD end points that do not retract onto Gamma",
                unretracted,
                upper=0,
            ),
            Check.compare(
                "test_error_flow_change",
                "test error at the flow's end minus at the interpolant (a "
                "measurement of Open Question 1, not a prediction)",
                flow_end.test_error - start.test_error,
            ),
            Check.compare(
                "test_error_sgd_change",
                "test error of label-noise GD (smallest eta, mean over seeds) "
                "minus at the interpolant (a measurement)",
                float(np.mean([p.test_error for p in sgd_end])) - start.test_error
                if sgd_end
                else math.nan,
                condition=bool(sgd_end),
            ),
        )
        return Report(checks, {})

    def summarise(
        self, problem: RealDataProblem, result: RealDataResult, report: Report
    ) -> Outcome:
        solution = result.solution
        start, end = result.points[0], result.points[-1]
        sgd_points = result.sgd[-1]["points"] if result.sgd else []

        def mean(values):
            return float(np.mean(values)) if values else math.nan

        test_sgd = mean([p.test_error for p in sgd_points])
        summary = dict(
            problem.settings,
            task=problem.data.task,
            dataset_description=problem.data.description,
            matrix_free=bool(result.manifold.matrix_free),
            train_steps=result.training["steps"],
            train_loss=result.training["loss"],
            train_seconds=result.training["seconds"],
            result=solution.result_name,
            num_steps=solution.num_steps,
            t_final=float(solution.t_final),
            solve_seconds=float(solution.wall_seconds),
            R_initial=start.sharpness,
            R_final=end.sharpness,
            grad_norm_final=end.gradient_norm,
            constraint_violation_max=float(np.nanmax(solution.constraint_violation)),
            test_error_interpolant=start.test_error,
            test_error_flow=end.test_error,
            test_error_sgd=test_sgd,
            test_error_change_flow=end.test_error - start.test_error,
            test_error_change_sgd=test_sgd - start.test_error,
            lambda_max_interpolant=start.lambda_max,
            lambda_max_flow=end.lambda_max,
            flow_constant=result.constant,
            skipped_after_interrupt=result.skipped,
            report_times=[float(t) for t in result.times],
            along_flow=[dataclasses.asdict(p) for p in result.points],
            sgd=[
                dict(
                    eta=run["eta"],
                    steps=run["steps"],
                    tau=run["tau"],
                    diverged=run["diverged"],
                    retracted=run["retracted"],
                    unstable=run["unstable"],
                    points=[dataclasses.asdict(p) for p in run["points"]],
                )
                for run in result.sgd
            ],
        )
        arrays = dict(
            step_ts=solution.step_ts,
            sharpness=solution.sharpness,
            gradient_norm=solution.gradient_norm,
            constraint_violation=solution.constraint_violation,
            report_times=result.times,
            theta_interpolant=result.theta_interpolant,
            theta_final=np.asarray(solution.theta_final),
        )
        s = problem.settings
        rows = [
            "",
            "point                     test error      R        lambda_max  "
            "|theta|   distance",
        ]
        rows.append(point_row("interpolant (Adam + GN)", start))
        rows.append(point_row(f"flow at t={float(solution.t_final):.4g}", end))
        for run in result.sgd:
            for p in run["points"][:1]:
                rows.append(point_row(f"label-noise GD eta={run['eta']:g}", p))
        headline = (
            f"real-data: {s['dataset']} n_train={s['n_train']} n_test={s['n_test']} "
            f"MLP width={s['width']} depth={s['depth']} {s['activation']} "
            f"(D={s['parameters']}, "
            f"{'matrix-free' if result.manifold.matrix_free else 'dense'}) "
            f"seed={s['seed']}\n"
            f"Adam: {result.training['steps']} steps to loss "
            f"{result.training['loss']:.2e} ({result.training['seconds']:.1f} s)\n"
            f"flow: {result_text(solution).rstrip('.')}: t={solution.t_final:.6g}, "
            f"{solution.num_steps} steps ({solution.num_rejected_steps} rejected), "
            f"solve {solution.wall_seconds:.2f} s; R {start.sharpness:.6g} -> "
            f"{end.sharpness:.6g}"
            + (
                f"\ninterrupted: skipped {' and '.join(result.skipped)}"
                if result.skipped
                else ""
            )
            + "\n".join(rows)
        )
        figure_data = dict(
            times=result.times,
            points=result.points,
            step_ts=solution.step_ts,
            sharpness=solution.sharpness,
            gradient_norm=solution.gradient_norm,
            sgd=result.sgd,
            t_final=float(solution.t_final),
            task=problem.data.task,
        )
        return Outcome(
            report=report,
            summary=summary,
            arrays=arrays,
            headline=headline,
            finished=bool(report["ending"].passed),
            interrupted=result.interrupted,
            figure_data=figure_data,
        )

    def plot(self, outcome: Outcome, figure) -> None:
        plot_real_data(outcome.figure_data, figure)
