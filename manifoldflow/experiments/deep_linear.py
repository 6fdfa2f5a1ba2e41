r"""`manifoldflow deep-linear`: gradient flow (or descent) on a deep linear network for
regression (Marion & Chizat 2024), with the sharpness of the minimiser reached checked
against the paper's bounds, and balancedness and rank-one structure measured."""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import manifoldflow as mf

from .._errors import InputError
from .._landscape import (
    descent_converged,
    gradient_descent,
    gradient_flow,
    hessian_max_eigenvalue,
)
from .._landscape.training import loss_and_gradient_norm
from ..models.deep_linear import (
    deep_linear_data,
    DeepLinearRisk,
    gaussian_init,
    minimiser_manifold,
    residual_init,
)
from ..theory import Check, check_ending, marion_chizat as mc, Report
from ..theory.marion_chizat import balancedness_drift, data_constants
from ._options import check_seed, positive_sizes, progress_meter
from ._polish import polish_headline, polish_summary
from .base import AbstractExperiment, Outcome
from .deep_linear_records import (
    DeepLinearProblem,
    DeepLinearRun,
    plot_deep_linear,
    TraceFlowRun,
)


# Corollary 2 needs a small initialisation ((A2)); its exact form is not recoverable
# from the paper, whose Figure 1 draws the Corollary 2 line for scales 0.25-0.6; the
# bound is met there up to about 0.45 (examples/deep_linear_sharpness_vs_scale.py).
SMALL_SCALE = 0.4


class DeepLinearExperiment(AbstractExperiment):
    """`manifoldflow deep-linear` (see the module docstring)."""

    name = "deep-linear"
    help = "deep linear network: sharpness of the minimiser vs Marion & Chizat's bounds"
    description = (
        "Train x -> p^T W_L ... W_1 x on the paper's data (n = 50, d = 5, noisy "
        "labels, |w*| = 1) by gradient flow (default) or gradient descent (--lr), from "
        "Gaussian small or residual initialisation; measure the sharpness "
        "lambda_max(Hess R) of the minimiser reached by Lanczos and check it against "
        "the lower bounds of Theorems 1-2 and the upper bound of Corollary 2; check "
        "that gradient flow conserves balancedness (Lemma 1) and Lemma 2's rank-one "
        "bound."
    )
    example_arguments = ("--depth", "3", "--n", "20", "--d", "3")
    figure_name = "deep_linear.png"
    headline_keys = (
        "R_final",
        "R_min",
        "S_final",
        "num_steps",
        "t_final",
        "balancedness_drift",
    )
    """What a sweep records: the risk and the sharpness S reached, against the minimum."""
    figure_size = (15.0, 4.0)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--depth", type=int, default=10, help="L, the matrices")
        parser.add_argument(
            "--width",
            type=int,
            default=None,
            help="hidden widths d_1..d_(L-1) (default: d)",
        )
        parser.add_argument("--n", type=int, default=50, help="data points")
        parser.add_argument("--d", type=int, default=5, help="input dimension")
        parser.add_argument(
            "--noise", type=float, default=1.0, help="label noise before rescaling"
        )
        parser.add_argument(
            "--init",
            default="gaussian",
            choices=("gaussian", "residual"),
            help="Gaussian entries of std --scale (d_L = 1, p = 1), or W_k = I + "
            "s/sqrt(L d) N_k with a random unit p (square matrices, width = d)",
        )
        parser.add_argument(
            "--scale",
            type=float,
            default=None,
            help="Gaussian std (default 0.3) or residual s (default 0.25)",
        )
        parser.add_argument(
            "--zero-layer",
            type=int,
            default=None,
            metavar="K",
            help="Gaussian init: set W_K to zero (where assumption (A1) holds)",
        )
        parser.add_argument(
            "--lr",
            type=float,
            default=None,
            help="gradient descent with this learning rate instead of gradient flow",
        )
        parser.add_argument(
            "--steps",
            type=int,
            default=None,
            help="gradient descent steps (with --lr; default 10000)",
        )
        parser.add_argument("--seed", type=int, default=0, help="data and init seed")
        parser.add_argument(
            "--trace-flow",
            action="store_true",
            help="then run the sharpness (trace) flow on the set of minimisers from "
            "the minimiser reached, and report where it lands",
        )
        parser.add_argument(
            "--polish",
            action="store_true",
            help="then minimise Tr Hess R on the set of minimisers from the minimiser "
            "reached (Riemannian trust region, to |P_T grad| <= 1e-10) and check the "
            "point against the flattest rank-one minimiser (and the trace flow's end, "
            "with --trace-flow)",
        )

    def build(self, args: argparse.Namespace) -> DeepLinearProblem:

        width = args.d if args.width is None else args.width
        positive_sizes(depth=args.depth, width=width, n=args.n, d=args.d)
        check_seed(args.seed)
        if args.lr is not None and not (0 < args.lr < float("inf")):
            raise InputError(f"--lr must be finite and > 0, got {args.lr}.")
        if args.steps is not None and args.lr is None:
            raise InputError("--steps is for gradient descent: give --lr too.")
        steps = 10_000 if args.steps is None else args.steps
        if steps < 1:
            raise InputError(f"--steps must be >= 1, got {steps}.")
        if args.zero_layer is not None and not 1 <= args.zero_layer <= args.depth:
            raise InputError(
                f"--zero-layer {args.zero_layer} must be a layer in 1..{args.depth}."
            )
        if args.width is not None and args.depth == 1:
            raise InputError("--width sets hidden widths: a depth-1 network has none.")
        if not np.isfinite(args.noise) or args.noise < 0:
            raise InputError(f"--noise must be finite and >= 0, got {args.noise}.")
        scale = args.scale
        if scale is None:
            scale = 0.3 if args.init == "gaussian" else 0.25
        if not (np.isfinite(scale) and scale >= 0):
            raise InputError(f"--scale must be finite and >= 0, got {scale}.")
        X, y, _ = deep_linear_data(args.n, args.d, args.seed, noise=args.noise)
        key = jax.random.PRNGKey(args.seed + 1)
        if args.init == "gaussian":
            widths = (args.d, *([width] * (args.depth - 1)), 1)
            net = gaussian_init(key, widths, scale, zero=args.zero_layer)
        else:
            if args.zero_layer is not None:
                raise InputError("--zero-layer is for --init gaussian only.")
            if width != args.d:
                raise InputError(
                    f"--init residual uses square d x d matrices: --width {width} "
                    f"must equal --d {args.d} (or be left out)."
                )
            net = residual_init(key, args.depth, args.d, scale)
        loss = DeepLinearRisk(net.p, jnp.asarray(X), jnp.asarray(y))
        settings = dict(
            depth=args.depth,
            n=args.n,
            d=args.d,
            widths=list(net.widths),
            init=args.init,
            scale=scale,
            zero_layer=args.zero_layer,
            noise=args.noise,
            seed=args.seed,
            method="gradient descent" if args.lr else "gradient flow",
            lr=args.lr,
            steps=steps if args.lr else None,
        )
        settings["trace_flow"] = bool(args.trace_flow)
        settings["polish"] = bool(args.polish)
        return DeepLinearProblem(
            net,
            loss,
            X,
            y,
            args.lr,
            steps,
            args.init,
            args.trace_flow,
            settings,
            args.polish,
        )

    def run(self, problem: DeepLinearProblem, *, progress: bool) -> DeepLinearRun:

        net, loss = problem.net, problem.loss
        constants = data_constants(problem.X, problem.y)
        if problem.lr is None:
            # Relative to the initial gradient: at large weights the rounding floor of
            # |grad R| grows with them.
            start = _gradient_norm(loss, net.weights)
            path = gradient_flow(loss, net.weights, gtol=1e-8 * max(1.0, start))
        else:
            path = gradient_descent(
                loss, net.weights, lr=problem.lr, num_steps=problem.steps
            )
        records = len(path.times)
        sharpness = np.full(records, np.nan)
        every = max(1, records // 60)
        for i in list(range(0, records, every)) + [records - 1]:
            point = [W[i] for W in path.params]
            if all(np.all(np.isfinite(W)) for W in point):
                sharpness[i] = hessian_max_eigenvalue(loss, point, rtol=1e-8).value
        final = None
        if not path.diverged:
            final = hessian_max_eigenvalue(loss, list(path.final), rtol=1e-10)
        converged, how = self._converged(problem, path, constants)
        flow = polish = None
        if problem.trace_flow and converged and constants.full_rank:
            flow = self._trace_flow(problem, path.final, progress)
        interrupted = flow is not None and flow.solution.result_name == "interrupted"
        if problem.polish and converged and constants.full_rank and not interrupted:
            manifold = minimiser_manifold(
                path.final, problem.net.p, problem.X, problem.y
            )
            polish = mf.minimise_sharpness(manifold, throw=False)
        return DeepLinearRun(
            path=path,
            sharpness=sharpness,
            final=final,
            trace_flow=flow,
            converged=converged,
            how=how,
            constants=constants,
            drift=float(np.max(balancedness_drift(path.params))),
            polish=polish,
        )

    def _trace_flow(self, problem, start, progress) -> TraceFlowRun:

        net = problem.net
        manifold = minimiser_manifold(start, net.p, problem.X, problem.y)
        solution = mf.solve_flow(
            manifold,
            progress_meter=progress_meter(progress),
            throw=False,
            max_steps=50_000,
        )
        weights = [np.asarray(W) for W in manifold.to_parameters(solution.theta_final)]
        S = hessian_max_eigenvalue(problem.loss, weights, rtol=1e-12)
        return TraceFlowRun(solution=solution, weights=weights, S=S)

    def _converged(self, problem, path, constants) -> tuple[bool, str]:
        """Converged only at a minimiser: gradient descent by the explicit test of
        `descent_converged`; gradient flow when it stopped at a small gradient AND
        R - R_min is below 1e-6 of its initial value (not at a saddle such as W = 0)."""

        if path.diverged:
            return False, "diverged (a non-finite value)"
        if problem.lr is not None:
            return descent_converged(path, constants.R_min)
        excess = path.loss - constants.R_min
        tolerance = max(1e-14, 1e-6 * excess[0])
        if not path.converged:
            return False, path.message.replace(
                "Try increasing `max_steps`.",
                "(1,000,000 steps): the flow is too slow or stiff from this start.",
            )
        if excess[-1] > tolerance:
            return False, (
                "stalled at a critical point that is not a minimiser: |grad R| is "
                f"small but R - R_min = {excess[-1]:.3e} (a saddle, e.g. W = 0 from "
                "a zero or tiny initialisation)"
            )
        return True, path.message

    def checks(self, problem: DeepLinearProblem, result: DeepLinearRun) -> Report:

        c = result.constants
        net = problem.net
        depth = net.depth
        path = result.path
        converged = result.converged
        drift = result.drift
        final_weights = [np.asarray(W) for W in path.final]
        final = result.final
        p = np.asarray(net.p)
        training = "gradient flow" if problem.lr is None else "gradient descent"
        checks = [
            Check.compare(
                "ending",
                f"how the {training} on R ended: "
                + ("at a minimiser" if converged else "NOT at a minimiser")
                + "; runs not ending at a minimiser",
                0 if converged else 1,
                upper=0,
                note=f"{result.how}; only a minimiser is accepted: the theorems "
                "compare the sharpness of the minimiser reached",
            ),
            mc.lemma_1_balancedness(drift, gradient_flow=problem.lr is None),
        ]
        small = (
            problem.init == "gaussian" and net.widths[-1] == 1 and float(p[0]) == 1.0
        )
        scale = problem.settings["scale"]
        if not (small and problem.lr is None):
            corollary = (
                "needs gradient flow from Gaussian small initialisation with d_L = 1, "
                "p = 1"
            )
        elif scale > SMALL_SCALE:
            corollary = (
                f"needs a small initialisation ((A2): epsilon = O(1/L), exact form not "
                f"recoverable); applied up to scale {SMALL_SCALE}, the range of the "
                f"paper's Figure 1 where its Corollary 2 line is drawn; here {scale:g}"
            )
        else:
            corollary = ""
        if final is not None and converged and not final.converged:
            checks.append(
                Check.not_applicable(
                    "sharpness",
                    "lambda_max(Hess R) at the minimiser reached, by Lanczos",
                    f"Lanczos did not converge in {final.iterations} iterations "
                    f"(residual {final.error:.2e})",
                )
            )
        elif final is not None and converged:
            S, error = final.value, final.error
            checks += [
                mc.theorem_1_lower_bound(c, p, depth, S, error),
                mc.theorem_2_layer_bound(c, final_weights, S, error),
                mc.corollary_2_upper_bound(c, depth, S, error, applicable=corollary),
                mc.lemma_2_rank_one(
                    (final_weights, [np.asarray(W) for W in net.weights]),
                    applicable=""
                    if net.widths[-1] == 1 and problem.lr is None and depth >= 2
                    else "derived for gradient flow with d_L = 1 and depth >= 2",
                ),
                mc.edge_of_stability(S, problem.lr, converged),
            ]
        flow = result.trace_flow
        if flow is not None:
            solution = flow.solution
            checks += [
                check_ending(
                    solution,
                    {
                        "stationary": "|P_T grad Tr Hess R| reached 1e-10: the "
                        "flattest minimiser the trace flow leads to"
                    },
                    name="trace_flow_ending",
                    what="the trace flow on the minimisers",
                ),
                Check.compare(
                    "trace_flow_stationary",
                    "the trace flow on the minimisers reached |P_T grad Tr Hess R| <= "
                    "1e-10",
                    float(solution.gradient_norm[-1]),
                    upper=1e-10,
                ),
                Check.compare(
                    "trace_flow_decreases_trace",
                    "Tr Hess R at the trace flow's end <= at its start",
                    float(solution.sharpness[-1]),
                    upper=float(solution.sharpness[0]),
                ),
                mc.theorem_1_lower_bound(c, p, depth, flow.S.value, flow.S.error),
                mc.flattest_trace_check(
                    c,
                    p,
                    depth,
                    float(solution.sharpness[-1]),
                    name="trace_flow_at_flattest",
                    what="the trace flow's end",
                ),
            ]
        if problem.polish:
            checks += mc.polish_checks(
                c,
                p,
                depth,
                result.polish,
                None if flow is None else float(flow.solution.sharpness[-1]),
            )
        return Report(
            tuple(checks),
            {},
        )

    def summarise(self, problem, result, report: Report) -> Outcome:

        c = result.constants
        net, path, final = problem.net, result.path, result.final
        depth = net.depth
        p = np.asarray(net.p)
        converged, how = result.converged, result.how
        weights_final = [np.asarray(W) for W in path.final]
        S_final = None if final is None else final.value
        full_rank = c.full_rank
        S_lower = mc.uniform_lower_bound(c, p, depth) if full_rank else None
        small = (
            problem.init == "gaussian"
            and net.widths[-1] == 1
            and full_rank
            and problem.lr is None
        )
        layer_norms = np.stack([mc.spectral_norms(W) for W in path.params], axis=1)
        summary = dict(
            experiment=self.name,
            **problem.settings,
            risk="R(W) = (1/n) |y - X w_prod|^2 (no 1/2), w_prod = W_1^T ... W_L^T p",
            X=problem.X,
            y=problem.y,
            p=p,
            w_star=c.w_star,
            weights_initial=[np.asarray(W) for W in net.weights],
            weights_final=weights_final,
            a=c.a,
            Lambda=c.Lambda,
            lambda_min=c.lambda_min,
            R_min=c.R_min,
            R_final=float(path.loss[-1]),
            S_final=S_final,
            S_final_error=None if final is None else final.error,
            S_final_converged=None if final is None else bool(final.converged),
            epsilon_initial=mc.lemma_2_epsilon([np.asarray(W) for W in net.weights]),
            S_lower=S_lower,
            S_layer_bound=mc.layer_lower_bound(c, weights_final)
            if converged and full_rank
            else None,
            S_upper_balanced=mc.balanced_sharpness(c, p, depth) if full_rank else None,
            S_corollary2=mc.corollary_2_bound(c, depth) if small else None,
            eta_crit=mc.critical_learning_rate(c, p, depth) if full_rank else None,
            assumption_failed=mc.full_rank_note(c) or None,
            balancedness_drift=result.drift,
            rank_one_ratios=mc.rank_one_ratios(weights_final),
            alignments=mc.alignments(weights_final),
            layer_norms_final=layer_norms[-1],
            converged=bool(converged),
            how_it_ended=how,
            t_final=float(path.times[-1]),
            num_steps=path.num_steps,
            diverged=bool(path.diverged),
        )
        flow = result.trace_flow
        if flow is not None:
            solution = flow.solution
            summary.update(
                trace_flow_result=solution.result_name,
                trace_flow_t_final=solution.t_final,
                trace_flow_steps=solution.num_steps,
                trace_initial=float(solution.sharpness[0]),
                trace_final=float(solution.sharpness[-1]),
                S_trace_flow=flow.S.value,
                weights_trace_flow=flow.weights,
                rank_one_ratios_trace_flow=mc.rank_one_ratios(flow.weights),
                layer_norms_trace_flow=[
                    float(mc.spectral_norms(W)) for W in flow.weights
                ],
                balancedness_trace_flow_start=mc.balancedness_size(weights_final),
                balancedness_trace_flow_end=mc.balancedness_size(flow.weights),
            )
        if full_rank:
            summary["trace_flattest"] = mc.flattest_trace(c, p, depth)
        if result.polish is not None:
            summary.update(polish_summary(result.polish))
        headline = (
            f"{problem.settings['method']} on a depth-{depth} linear network "
            f"(widths {list(net.widths)}, {problem.init} init, scale "
            f"{problem.settings['scale']:g}): {how}\n"
            f"R: {path.loss[0]:.6g} -> {path.loss[-1]:.12g} (R_min = {c.R_min:.12g}); "
            + (
                "sharpness S = lambda_max(Hess R) = "
                f"{S_final:.10g} (+- {final.error:.1e})"
                if final is not None
                else "no sharpness: diverged"
            )
            + (
                f"\nbounds: S_min >= {S_lower:.6g}, balanced minimiser "
                f"{summary['S_upper_balanced']:.6g}"
                + (f", Corollary 2 {summary['S_corollary2']:.6g}" if small else "")
                + f"; eta_crit ~ {summary['eta_crit']:.4g}"
                if full_rank
                else f"\nno bounds: {mc.full_rank_note(c)}"
            )
        )
        if problem.trace_flow and flow is None:
            headline += (
                "\nno trace flow: the minimisers' equations are dependent"
                if not full_rank
                else "\nno trace flow: training did not reach a minimiser"
            )
        if flow is not None:
            headline += (
                "\ntrace flow on the minimisers: Tr Hess R "
                f"{summary['trace_initial']:.8g}"
                f" -> {summary['trace_final']:.8g} ({summary['trace_flow_result']}, "
                f"t = {summary['trace_flow_t_final']:.4g}), S -> "
                f"{summary['S_trace_flow']:.8g}"
            )
        if "trace_flattest" in summary and (flow is not None or problem.polish):
            headline += (
                "\nflattest rank-one minimiser (derived): Tr Hess R = "
                f"{summary['trace_flattest']:.12g}"
            )
        if result.polish is not None:
            headline += "\n" + polish_headline(result.polish)
        arrays = dict(
            times=path.times,
            risk=path.loss,
            gradient_norm=path.gradient_norm,
            sharpness=result.sharpness,
            layer_norms=layer_norms,
            balancedness_drift=mc.balancedness_drift(path.params),
        )
        figure_data = dict(
            arrays,
            R_min=c.R_min,
            S_lower=S_lower,
            S_balanced=summary["S_upper_balanced"],
            S_corollary2=summary["S_corollary2"],
            gradient_flow=problem.lr is None,
            lr=problem.lr,
        )
        return Outcome(
            report=report,
            summary=summary,
            arrays=arrays,
            headline=headline,
            finished=bool(converged),
            figure_data=figure_data,
        )

    def plot(self, outcome: Outcome, figure) -> None:
        plot_deep_linear(outcome.figure_data, figure)


def _gradient_norm(loss, weights) -> float:

    return float(loss_and_gradient_norm(loss, list(weights))[1])
