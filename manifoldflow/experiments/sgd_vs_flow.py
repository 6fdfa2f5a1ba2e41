r"""`manifoldflow sgd-vs-flow`: label-noise GD/SGD beside its limiting flow (Li, Wang,
Arora 2022; Theorem 1.1 of Gatmiry et al. 2024): from the same $\theta_0 \in \Gamma$,
the simulator's point after $\tau/\eta^2$ steps, retracted onto $\Gamma$, approaches
the flow's $\theta(\tau)$ as $\eta$ halves."""

import argparse
import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import manifoldflow as mf

from .._errors import InputError
from ..models import initialise_on_manifold, two_layer_data, TwoLayerManifold
from ..sgd import LabelNoiseGD, LabelNoiseSGD, simulate
from ..theory import Check, check_ending, Report
from ..theory.gatmiry import optimum_point
from ._options import check_seed, positive_sizes
from .base import AbstractExperiment, Outcome


_SIMULATORS = ("label-noise-gd", "label-noise-sgd")


@dataclasses.dataclass(frozen=True)
class EtaRun:
    """Label-noise SGD at one step size: the simulation, which seeds were retracted
    onto the manifold, their distances to the flow's point at tau (by flow-constant
    factor), the distance of their mean, the flow constant that fits their mean best,
    their sharpness and distance to the optimum, and sample paths."""

    result: Any  # a manifoldflow.sgd.SimulationResult
    converged: np.ndarray
    gaps: dict[float, np.ndarray]
    mean_gap: float
    fitted_constant: float
    sharpness: np.ndarray
    optimum_distances: np.ndarray | None
    sharpness_paths: np.ndarray


@dataclasses.dataclass(frozen=True)
class SGDComparison:
    """The flows (by constant factor), the flow with c saved densely on
    [tau/4, 4 tau] (for fitting the constant), the SGD runs (by step size), the
    constant c and the optimum (if in closed form)."""

    flows: dict[float, Any]
    path: Any
    runs: list[EtaRun]
    constant: float
    optimum: np.ndarray | None


_FIT_FACTORS = np.geomspace(0.25, 4.0, 257)
"""The times (in units of tau) where the flow with c is saved to fit the constant:
c_fit = c s / tau for the s whose theta(s) is nearest the seeds' mean."""

CONSTANT_TOLERANCE = 0.1
"""How far the fitted constant may be from c at the smallest eta (relative): the
bias is O(eta) and the seed mean's noise O(sqrt(eta / seeds)); a constant off by
25% fails."""


def _fitted_time(path, point: np.ndarray) -> float:
    """The time s in [tau/4, 4 tau] where the saved flow is nearest `point`: the
    nearest saved time, refined by a parabola in log s through it and its
    neighbours."""
    ts, ys = np.asarray(path.ts), np.asarray(path.ys)
    distances = np.linalg.norm(ys - point, axis=1)
    j = int(np.argmin(distances))
    if j == 0 or j == ts.size - 1:
        return float(ts[j])
    x = np.log(ts[j - 1 : j + 2])
    a, b, _ = np.polyfit(x - x[1], distances[j - 1 : j + 2] ** 2, 2)
    shift = -b / (2 * a) if a > 0 else 0.0
    return float(np.exp(x[1] + np.clip(shift, x[0] - x[1], x[2] - x[1])))


class SGDProblem(eqx.Module):
    """The manifold, the start, the simulator and the sweep."""

    manifold: Any
    theta0: Any
    simulator: Any
    etas: list[float]
    seeds: int
    tau: float
    settings: dict


def _etas(text: str) -> list[float]:
    try:
        etas = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--etas {text!r}: give comma-separated step sizes.") from None
    if not all(0 < e < float("inf") for e in etas):
        raise InputError(f"--etas needs finite values > 0, got {text!r}.")
    distinct = sorted(set(etas), reverse=True)
    if len(distinct) < 2:
        raise InputError(
            f"--etas {text!r} has {len(distinct)} distinct value: the distances are "
            "compared across step sizes, so give at least two different ones, e.g. "
            "--etas 0.04,0.02,0.01."
        )
    if len(distinct) < len(etas):
        raise InputError(f"--etas {text!r} repeats a value: give each step size once.")
    return distinct


class SGDVersusFlowExperiment(AbstractExperiment):
    """`manifoldflow sgd-vs-flow` (see the module docstring)."""

    name = "sgd-vs-flow"
    help = "label-noise GD/SGD against its limiting flow as the step size halves"
    description = (
        "Run label-noise GD (Gatmiry et al.) or SGD (Li, Wang, Arora) on the two-layer "
        "net from a point of the zero-loss manifold for tau/eta^2 steps per seed, for "
        "each eta, retract, and measure the distance to the limiting flow's theta(tau) "
        "solved with the simulator's constant c (and with 2c and c/2 for contrast)."
    )
    example_arguments = ("--etas", "0.04,0.02,0.01", "--seeds", "8")
    figure_name = "sgd_vs_flow.png"
    headline_keys = ("fitted_exponent", "mean_distance_exponent", "R_flow_tau")
    """What a sweep records: how the distance to the flow scales with eta, and R
    at the flow's theta(tau) (the default keys are of a solve to stationarity)."""
    figure_size = (11.0, 4.0)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--m", type=int, default=4, help="neurons")
        parser.add_argument("--d", type=int, default=6, help="input dimension")
        parser.add_argument("--n", type=int, default=3, help="data points")
        parser.add_argument("--seed", type=int, default=0, help="data and start seed")
        parser.add_argument(
            "--simulator",
            default="label-noise-gd",
            choices=_SIMULATORS,
            help="full-batch Gaussian label noise (c = sigma^2/(2n)) or single-sample "
            "+-sigma label noise (c = sigma^2/8)",
        )
        parser.add_argument(
            "--sigma", type=float, default=1.0, help="label-noise scale (sigma, delta)"
        )
        parser.add_argument(
            "--etas",
            default="0.04,0.02,0.01,0.005,0.0025",
            help="comma-separated step sizes",
        )
        parser.add_argument("--seeds", type=int, default=16, help="seeds per step size")
        parser.add_argument("--tau", type=float, default=1.0, help="flow time tau")

    def build(self, args: argparse.Namespace) -> SGDProblem:

        positive_sizes(m=args.m, d=args.d, n=args.n, seeds=args.seeds)
        check_seed(args.seed)
        if args.n > args.d:
            raise InputError(f"--n {args.n} > --d {args.d}: lower --n or raise --d.")
        if not (0 < args.tau < float("inf")):
            raise InputError(f"--tau must be finite and > 0, got {args.tau}.")
        etas = _etas(args.etas)
        steps = sum(round(args.tau / eta**2) for eta in etas) * args.seeds
        if steps > 10**10:
            raise InputError(
                f"{steps:.2e} steps in all (tau/eta^2 per eta and seed): raise the "
                "smallest --etas, lower --tau or --seeds."
            )
        if args.simulator == "label-noise-gd":
            simulator = LabelNoiseGD(sigma=args.sigma)
        else:
            simulator = LabelNoiseSGD(delta=args.sigma)
        X, y = two_layer_data(args.n, args.d, args.seed)
        net = initialise_on_manifold(jax.random.PRNGKey(args.seed), X, y, args.m)
        manifold = TwoLayerManifold(net, X, y)
        settings = dict(
            m=args.m,
            d=args.d,
            n=args.n,
            seed=args.seed,
            simulator=args.simulator,
            sigma=args.sigma,
        )
        theta0 = jnp.asarray(manifold.initial_point())
        return SGDProblem(
            manifold, theta0, simulator, etas, args.seeds, args.tau, settings
        )

    def run(self, problem: SGDProblem, *, progress: bool) -> SGDComparison:

        manifold, theta0, tau = problem.manifold, problem.theta0, problem.tau
        c = problem.simulator.flow_constant(manifold)
        flows = {
            factor: mf.solve_flow(
                manifold, theta0, constant=factor * c, saveat=[tau], stationarity=0.0
            )
            for factor in (1.0, 0.5, 2.0)
        }
        path = mf.solve_flow(
            manifold,
            theta0,
            constant=c,
            saveat=list(tau * _FIT_FACTORS),
            stationarity=0.0,
            throw=False,
        )
        if any(f.result_name == "interrupted" for f in (*flows.values(), path)):
            # Ctrl-C in a solve (which returns what it had): a comparison of partial
            # flows would mean nothing, so the command stops here.
            raise KeyboardInterrupt
        retract = jax.jit(
            jax.vmap(
                lambda t: mf.GaussNewtonRetraction()(
                    manifold, mf.CholeskyProjector(), t
                )
            )
        )
        sharpness = jax.jit(jax.vmap(jax.vmap(manifold.sharpness)))
        final_sharpness = jax.jit(jax.vmap(manifold.sharpness))
        optimum = optimum_point(manifold)
        runs = []
        for eta in problem.etas:
            result = simulate(
                manifold,
                theta0,
                problem.simulator,
                eta=eta,
                num_steps=round(tau / eta**2),
                seeds=problem.seeds,
                progress=progress,
            )
            finite = ~result.diverged
            retracted = retract(jnp.asarray(np.where(finite[:, None], result.final, 0)))
            points = np.asarray(retracted.theta)
            converged = np.asarray(retracted.converged) & finite
            # A diverged or unretracted seed has no distance (NaN), not a number.
            gaps = {
                factor: np.where(
                    converged,
                    np.linalg.norm(points - np.asarray(flow.ys[-1]), axis=1),
                    np.nan,
                )
                for factor, flow in flows.items()
            }
            mean = np.mean(points[converged], axis=0) if converged.any() else None
            shown = result.thetas[: min(4, problem.seeds)]
            runs.append(
                EtaRun(
                    result=result,
                    converged=converged,
                    gaps=gaps,
                    mean_gap=np.nan
                    if mean is None
                    else float(np.linalg.norm(mean - np.asarray(flows[1.0].ys[-1]))),
                    fitted_constant=np.nan
                    if mean is None
                    else c * _fitted_time(path, mean) / tau,
                    sharpness=np.where(
                        converged,
                        np.asarray(final_sharpness(jnp.asarray(points))),
                        np.nan,
                    ),
                    optimum_distances=None
                    if optimum is None
                    else np.where(
                        converged, np.linalg.norm(points - optimum, axis=1), np.nan
                    ),
                    sharpness_paths=np.asarray(sharpness(jnp.asarray(shown))),
                )
            )
        return SGDComparison(
            flows=flows, path=path, runs=runs, constant=c, optimum=optimum
        )

    def checks(self, problem: SGDProblem, result: SGDComparison) -> Report:
        runs = result.runs
        diverged = sum(int(r.result.diverged.sum()) for r in runs)
        unretracted = sum(int((~r.converged).sum()) for r in runs) - diverged
        means = np.asarray([np.nanmean(r.gaps[1.0]) for r in runs])
        ratios = means[1:] / means[:-1]
        slope = float(np.polyfit(np.log(problem.etas), np.log(means), 1)[0])
        contrast = min(np.nanmean(runs[-1].gaps[f]) for f in (0.5, 2.0))
        fitted = runs[-1].fitted_constant / result.constant
        mean_gaps = np.asarray([r.mean_gap for r in runs])
        mean_slope = float(np.polyfit(np.log(problem.etas), np.log(mean_gaps), 1)[0])
        checks = (
            check_ending(
                [*result.flows.values(), result.path],
                {
                    "t1_reached": "the flows are compared with SGD at tau (and the "
                    "dense one on [tau/4, 4 tau]), so they are solved up to a time, "
                    "not to stationarity"
                },
            ),
            Check.compare(
                "no_divergence",
                "no seed diverged (a non-finite value) at any step size",
                diverged,
                upper=0,
            ),
            Check.compare(
                "retraction",
                "every simulated end point retracts onto Gamma",
                unretracted,
                upper=0,
            ),
            Check.compare(
                "distance_decreases",
                "the mean distance to the flow's theta(tau) decreases at every "
                "halving: largest ratio d(eta_next)/d(eta)",
                float(np.max(ratios)),
                upper=1.0,
                condition=bool(np.all(ratios < 1)),
            ),
            Check.compare(
                "fitted_exponent",
                "slope of log distance vs log eta: > 0 (between 0.5, O(sqrt eta) "
                "fluctuations, and 1, O(eta) bias, expected)",
                slope,
                lower=0.0,
                condition=slope > 0,
            ),
            Check.compare(
                "constant_c",
                "at the smallest eta the flow with c is closer than the flows with "
                "2c and c/2: ratio of distances",
                float(means[-1] / contrast),
                upper=1.0,
                condition=bool(means[-1] < contrast),
            ),
            Check.compare(
                "fitted_constant",
                "the flow constant whose theta(c' tau) is nearest the seeds' mean at "
                "the smallest eta, relative to c (a constant off by 25% fails)",
                fitted,
                prediction=1.0,
                lower=1 - CONSTANT_TOLERANCE,
                upper=1 + CONSTANT_TOLERANCE,
                note="fitted c'/c by eta: "
                + ", ".join(f"{r.fitted_constant / result.constant:.3f}" for r in runs),
            ),
        )
        return Report(
            checks,
            dict(
                fitted_exponent=slope,
                mean_distance_exponent=mean_slope,
                fitted_constant=runs[-1].fitted_constant,
            ),
        )

    def summarise(
        self, problem: SGDProblem, result: SGDComparison, report: Report
    ) -> Outcome:
        runs, flows, optimum = result.runs, result.flows, result.optimum
        gaps = [r.gaps[1.0] for r in runs]
        flow = flows[1.0]
        summary = dict(
            experiment=self.name,
            **problem.settings,
            loss="mean squared: L = (1/n) sum_i (f_i - y_i)^2; R = Tr Hess L on Gamma",
            etas=problem.etas,
            steps=[r.result.num_steps for r in runs],
            seeds=problem.seeds,
            tau=problem.tau,
            flow_constant=result.constant,
            distances_mean=[float(np.nanmean(g)) for g in gaps],
            distances_std=[float(np.nanstd(g)) for g in gaps],
            distances_mean_half_constant=[float(np.nanmean(r.gaps[0.5])) for r in runs],
            distances_mean_double_constant=[
                float(np.nanmean(r.gaps[2.0])) for r in runs
            ],
            fitted_exponent=report.figures["fitted_exponent"],
            seed_mean_distances=[r.mean_gap for r in runs],
            mean_distance_exponent=report.figures["mean_distance_exponent"],
            fitted_constants=[r.fitted_constant for r in runs],
            diverged=[int(r.result.diverged.sum()) for r in runs],
            simulation_seconds=[r.result.wall_seconds for r in runs],
            R_flow_tau=float(flow.sharpness[-1]),
            R_mean=[float(np.nanmean(r.sharpness)) for r in runs],
            optimum_distance_flow=None
            if optimum is None
            else float(np.linalg.norm(np.asarray(flow.ys[-1]) - optimum)),
            optimum_distances_mean=None
            if optimum is None
            else [float(np.nanmean(r.optimum_distances)) for r in runs],
            theta0=np.asarray(problem.theta0),
            theta_flow_tau=np.asarray(flow.ys[-1]),
        )
        headline = (
            f"{problem.settings['simulator']} (sigma = {problem.settings['sigma']:g}) "
            f"vs the flow with c = {result.constant:.6g} at tau = {problem.tau:g}, "
            f"{problem.seeds} seeds\n"
            + "distances to the flow's theta(tau): mean over seeds (with c, c/2, 2c), "
            "of the seeds' mean; the best-fitting constant c'\n"
            + "\n".join(
                f"  eta = {eta:<8g} {r.result.num_steps:>9d} steps: "
                f"{np.nanmean(r.gaps[1.0]):.2e} "
                f"({np.nanmean(r.gaps[0.5]):.2e} c/2, "
                f"{np.nanmean(r.gaps[2.0]):.2e} 2c), mean {r.mean_gap:.2e}; "
                f"c'/c = {r.fitted_constant / result.constant:.3f}"
                for eta, r in zip(problem.etas, runs)
            )
        )
        if optimum is not None:
            headline += (
                f"\ndistance to the Theorem 3.3 optimum at tau: flow "
                f"{summary['optimum_distance_flow']:.3e}, SGD (retracted, mean) "
                + ", ".join(f"{d:.3e}" for d in summary["optimum_distances_mean"])
            )
        finest = runs[-1]
        figure_data = dict(
            etas=np.asarray(problem.etas),
            means=np.asarray(summary["distances_mean"]),
            stds=np.asarray(summary["distances_std"]),
            half=np.asarray(summary["distances_mean_half_constant"]),
            double=np.asarray(summary["distances_mean_double_constant"]),
            seed_mean=np.asarray(summary["seed_mean_distances"]),
            flow_ts=np.asarray(flow.step_ts),
            flow_R=np.asarray(flow.sharpness),
            sgd_tau=finest.result.tau,
            sgd_R=finest.sharpness_paths,
            eta=problem.etas[-1],
        )
        arrays = dict(
            etas=np.asarray(problem.etas),
            distances=np.stack(gaps),
            flow_ts=np.asarray(flow.step_ts),
            flow_sharpness=np.asarray(flow.sharpness),
        )
        return Outcome(
            report=report,
            summary=summary,
            arrays=arrays,
            headline=headline,
            finished=bool(report["ending"].passed),
            figure_data=figure_data,
        )

    def plot(self, outcome: Outcome, figure) -> None:
        from matplotlib.ticker import NullFormatter

        data = outcome.figure_data
        left, right = figure.subplots(1, 2)
        figure.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.9, wspace=0.3)
        etas = data["etas"]
        left.errorbar(etas, data["means"], yerr=data["stds"], fmt="o-", label="c")
        left.loglog(etas, data["half"], "s--", label="c/2")
        left.loglog(etas, data["double"], "^--", label="2c")
        left.loglog(etas, data["seed_mean"], "d-", label="c, the seeds' mean")
        left.set(
            xlabel="eta",
            ylabel="|theta_SGD(tau/eta^2) - theta_flow(tau)|",
            title="distance to the flow (mean over seeds)",
        )
        left.xaxis.set_minor_formatter(NullFormatter())
        left.set_xticks(etas, [f"{eta:g}" for eta in etas])
        left.legend()
        for path in data["sgd_R"]:
            right.plot(data["sgd_tau"], path, lw=0.6, alpha=0.7)
        right.plot(data["flow_ts"], data["flow_R"], "k-", lw=2, label="flow")
        right.set(
            xlabel="tau = eta^2 k",
            ylabel="R = Tr Hess L",
            title=f"sharpness along SGD paths (eta = {data['eta']:g})",
        )
        right.legend()
