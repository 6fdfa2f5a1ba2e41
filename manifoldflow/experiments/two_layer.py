r"""`manifoldflow two-layer`: the flow of Gatmiry, Li, Reddi, Jegelka (ICML 2024) for
$f_\theta(x) = \sum_j a_j\phi(\theta_j^\top x)$, checked against Theorems 3.3 and 3.5."""

import argparse
import math
import pathlib
from typing import Any

import equinox as eqx
import jax
import numpy as np

import manifoldflow as mf

from .._errors import InputError
from .._manifold import check_data
from ..models import (
    activation_from_name,
    initialise_on_manifold,
    two_layer_data,
    TwoLayerManifold,
    TwoLayerNet,
)
from ..theory import Check, check_ending, gatmiry, Report
from ._options import (
    add_flow_options,
    check_seed,
    command_line_error,
    flow_options,
    load_arrays,
    positive_sizes,
    progress_meter,
    result_text,
)
from ._polish import (
    polish_checks,
    polish_flow,
    polish_headline,
    polish_summary,
    renamed,
    split,
)
from .base import AbstractExperiment, Outcome


_EPS = float(np.finfo(np.float64).eps)


class TwoLayerProblem(eqx.Module):
    """The validated problem: data, network, both manifolds, solve options."""

    X: np.ndarray
    y: np.ndarray
    net: Any
    structured: Any
    manifold: Any
    options: dict
    settings: dict
    args: argparse.Namespace


def _data(args) -> tuple[np.ndarray, np.ndarray]:

    if args.data is not None:
        arrays = load_arrays(args.data, ("X", "y"))
        X, y = arrays["X"], arrays["y"]
        if X.ndim != 2 or 0 in X.shape:
            raise InputError(
                f"--data: X must have shape (n, d) with n, d >= 1, got {X.shape}."
            )
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise InputError(
                f"--data: y must have shape (n,) = ({X.shape[0]},) to match X of shape "
                f"{X.shape}, got {y.shape}."
            )
    else:
        positive_sizes(d=args.d, n=args.n)
        if args.n > args.d:
            raise InputError(
                f"--n {args.n} > --d {args.d}: n points in dimension d < n are linearly "
                "dependent (Assumption 3.2 needs n <= d). Lower --n or raise --d."
            )
        X, y = two_layer_data(args.n, args.d, args.seed)
    try:  # finite; identical inputs with different labels: empty manifold
        check_data(X, y)
    except InputError as error:
        source = f"--data {args.data}" if args.data is not None else "the data"
        raise InputError(f"{source}: {error}") from None
    _check_independent_rows(X)
    return X, y


def _check_independent_rows(X: np.ndarray) -> None:
    n, d = X.shape
    if n > d:
        raise InputError(
            f"X has n = {n} rows in dimension d = {d}: they are linearly dependent "
            "(Assumption 3.2 needs n <= d linearly independent inputs)."
        )
    gram = X @ X.T
    if not np.all(np.isfinite(gram)):
        raise InputError(
            f"X X^T overflows (|X| up to {np.max(np.abs(X)):.1e}): rescale X."
        )
    eigenvalues = np.linalg.eigvalsh(gram)
    if eigenvalues[0] > 1e3 * _EPS * eigenvalues[-1]:
        return
    rows, first, counts = np.unique(X, axis=0, return_index=True, return_counts=True)
    duplicated = [int(i) for i, c in zip(first, counts) if c > 1]
    detail = (
        f"row {duplicated[0]} appears {int(counts[counts > 1][0])} times"
        if duplicated
        else f"rank {np.linalg.matrix_rank(X)} < n = {n}"
    )
    raise InputError(
        f"The rows of X are linearly dependent ({detail}): Assumption 3.2 (Theorem "
        "3.3) needs linearly independent inputs, and J J^T is singular. Remove the "
        "duplicated or dependent rows."
    )


def _second_layer(text: str | None, m: int) -> np.ndarray:
    if text is None:
        return np.ones(m)
    try:
        values = np.asarray([float(v) for v in text.split(",")])
    except ValueError:
        raise InputError(
            f"--a {text!r}: give one number or {m} comma-separated numbers."
        ) from None
    if values.size not in (1, m):
        raise InputError(
            f"--a has {values.size} values but --m is {m}: give one value or m "
            "comma-separated values."
        )
    if not np.all(np.isfinite(values)) or np.any(values == 0):
        raise InputError(f"--a must be finite and non-zero, got {text!r}.")
    return np.broadcast_to(values, (m,)).copy()


def _network(args, X, y, a):

    if args.activation == "cube-beta" and not (0 < args.beta < math.inf):
        raise InputError(f"--beta must be positive for cube-beta, got {args.beta}.")
    if not (args.init_scale >= 0 and math.isfinite(args.init_scale)):
        raise InputError(f"--init-scale must be >= 0, got {args.init_scale}.")
    activation = activation_from_name(args.activation, args.beta)
    m, d = a.size, X.shape[1]
    if np.all(a > 0):
        return initialise_on_manifold(
            args.seed, X, y, m, a=a, activation=activation, init_scale=args.init_scale
        )
    key = jax.random.PRNGKey(args.seed)
    theta = args.init_scale * np.asarray(jax.random.normal(key, (m, d))) / np.sqrt(d)
    return TwoLayerNet(theta, a, activation)


class TwoLayerExperiment(AbstractExperiment):
    """`manifoldflow two-layer` (see the module docstring)."""

    name = "two-layer"
    figure_name = "two_layer.png"
    help = "two-layer net f(x) = sum_j a_j phi(theta_j^T x) (Gatmiry et al. 2024)"
    description = (
        "Solve d theta/dt = -P_T grad Tr Hess L for the two-layer net of Gatmiry et "
        "al. (2024) from a random point of the zero-loss manifold until |P_T grad R| "
        "<= EPS, then check Theorem 3.3 (optimum, minimum sharpness, rank-one "
        "features), Lemma 4.6 and Theorem 3.5 (linear rate) against the numbers."
    )
    example_arguments = ("--m", "4", "--d", "6", "--n", "3")
    checkpoints = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--m", type=int, default=32, help="neurons")
        parser.add_argument("--d", type=int, default=64, help="input dimension")
        parser.add_argument("--n", type=int, default=16, help="data points")
        parser.add_argument("--seed", type=int, default=0, help="random seed")
        parser.add_argument(
            "--data",
            type=pathlib.Path,
            default=None,
            metavar="FILE.npz",
            help="data from an .npz with arrays X (n, d) and y (n,) (omitted: random "
            "data of --n points in dimension --d)",
        )
        parser.add_argument(
            "--a",
            default=None,
            help="fixed second-layer weights: one value, or m comma-separated "
            "(omitted: all 1, as in the paper)",
        )
        parser.add_argument(
            "--activation",
            default="cubic-linear",
            choices=["cubic-linear", "cube", "cube-beta"],
            help="phi: z + z^3/3, z^3, or z^3 + beta z",
        )
        parser.add_argument("--beta", type=float, default=1.0, help="beta of cube-beta")
        parser.add_argument(
            "--init-scale",
            type=float,
            default=1.0,
            help="spread of the random initial point (0: start at the optimum)",
        )
        parser.add_argument(
            "--path",
            default="structured",
            choices=["structured", "generic"],
            help="closed-form span-reduced manifold, or generic autodiff on theta",
        )
        add_flow_options(parser)

    def build(self, args: argparse.Namespace) -> TwoLayerProblem:

        options = dict(flow_options(args), checkpoint=getattr(args, "checkpoint", None))
        positive_sizes(m=args.m)
        check_seed(args.seed)
        X, y = _data(args)
        a = _second_layer(args.a, args.m)
        net = _network(args, X, y, a)
        if (
            args.activation == "cube"
            and np.min(np.abs(np.asarray(net.theta) @ X.T)) < 1e-8
        ):
            raise InputError(
                "cube activation: the initial point has theta_j^T x_i = 0, where "
                "phi'(0) = 0 makes the Jacobian singular; change --seed or --init-scale."
            )
        structured = TwoLayerManifold(net, X, y)
        manifold = structured
        if args.path == "generic":
            manifold = mf.ZeroLossManifold(net, X, y, filter_spec=net.filter_spec())
        settings = dict(
            m=args.m,
            d=X.shape[1],
            n=X.shape[0],
            activation=args.activation,
            beta=args.beta if args.activation == "cube-beta" else None,
            a=a,
            seed=args.seed,
            path=args.path,
            solver=args.solver,
            projector=args.projector,
            rtol=args.rtol,
            atol=args.atol,
            stationarity=args.stationarity,
        )
        settings["polish"] = bool(args.polish)
        return TwoLayerProblem(X, y, net, structured, manifold, options, settings, args)

    def run(self, problem: TwoLayerProblem, *, progress: bool):

        try:
            solution = mf.solve_flow(
                problem.manifold,
                **problem.options,
                progress_meter=progress_meter(progress),
                throw=False,
            )
        except InputError as error:
            raise command_line_error(error) from None
        return polish_flow(
            problem.manifold, solution, problem.args, problem.options["projector"]
        )

    def run_batch(self, problems: list[TwoLayerProblem]):
        """Problems of one shape and the same solve options, as one
        `manifoldflow.solve_flows`; `None` otherwise (and when polishing)."""
        if any(p.settings["polish"] for p in problems):
            return None
        options = [
            {k: v for k, v in p.options.items() if k != "checkpoint"} for p in problems
        ]
        if any(repr(o) != repr(options[0]) for o in options):
            return None
        try:
            solutions = mf.solve_flows(
                [p.manifold for p in problems], throw=False, **options[0]
            )
        except InputError:
            return None  # another shape or structure: one at a time
        return list(solutions)

    def checks(self, problem: TwoLayerProblem, result) -> Report:
        flow, polish = split(result)
        report = gatmiry.two_layer_checks(
            problem.structured,
            flow,
            constraint_tolerance=_constraint_tolerance(problem, flow),
        )
        if polish is None:
            ending = check_ending(flow, {"stationary": _STATIONARY})
            return Report((ending, *report.checks), report.figures)
        # Polishing: the flow only picks the basin, so it may end at --t1; the
        # polished point is what must be stationary.
        ending = check_ending(
            flow, {"stationary": _STATIONARY, "t1_reached": _POLISHED}
        )
        checks = [
            Check.not_applicable(c.name, c.claim, _POLISHED, measured=c.measured)
            if c.name == "stationarity" and not c.passed
            else c
            for c in report.checks
        ]
        polished = _polish_checks(problem, flow, polish)
        return Report((ending, *checks, *polished), report.figures)

    def summarise(self, problem: TwoLayerProblem, result, report: Report) -> Outcome:
        flow, polish = split(result)
        outcome = _summarise(problem, flow, report)
        if polish is None:
            return outcome
        return eqx.tree_at(
            lambda o: (o.summary, o.headline),
            outcome,
            (
                dict(outcome.summary, **polish_summary(polish, flow)),
                outcome.headline + "\n" + polish_headline(polish),
            ),
        )

    def plot(self, outcome: Outcome, figure) -> None:
        _plot(outcome.figure_data, figure)


_STATIONARY = (
    "|P_T grad R| reached the stationarity threshold: the end point is the flow's "
    "limit, where the theorems' statements about stationary points apply"
)


_POLISHED = (
    "--polish: the flow picks the basin and the polished point is checked for "
    "stationarity (polish_stationary) and against Theorem 3.3 (polish_*)"
)


def _polish_checks(problem: TwoLayerProblem, flow, polish) -> list:
    """The polish's own checks, and Theorem 3.3 at the polished point (with the
    Lemma 4.6 bound from the gradient norm it reached)."""
    structured = problem.structured
    u = _reduced(problem, polish.theta)
    delta = float(polish.gradient_norm)
    return [
        *polish_checks(polish, flow, problem.args.stationarity),
        renamed(gatmiry.theorem_3_3_optimum(structured, u, delta)),
        renamed(gatmiry.theorem_3_3_minimum_sharpness(structured, u, delta)),
    ]


def _reduced(problem: TwoLayerProblem, theta) -> np.ndarray:
    """The structured manifold's coordinates of a point of either path."""
    if problem.manifold is problem.structured:
        return np.asarray(theta)
    net = problem.manifold.to_parameters(theta)
    return np.asarray(problem.structured.coordinates(net.theta))


def _constraint_tolerance(problem: TwoLayerProblem, solution) -> float:
    """The per-step retraction's tolerance, plus the rounding of evaluating
    $F_i = \\sum_j a_j\\phi(z_{ji}) - y_i$ again (m + 1 terms: at most
    $(m+1)\\epsilon \\sum |\\text{terms}|$)."""

    retraction = mf.ChordRetraction()
    scale = max(1.0, float(np.max(np.abs(problem.y))))
    structured = problem.structured
    a = np.asarray(structured.a)
    Z = _full_theta(problem, solution.theta_final) @ problem.X.T
    values = np.asarray(_activation_values(structured.activation, Z))
    terms = np.abs(a[:, None] * values).sum(0) + np.abs(problem.y)
    rounding = (a.size + 1) * _EPS * float(np.max(terms))
    return max(retraction.atol, retraction.rtol * scale) + rounding


@eqx.filter_jit
def _activation_values(activation, Z):
    return activation(Z)


def _full_theta(problem: TwoLayerProblem, theta) -> np.ndarray:
    """Theta (m, d) from the coordinates of either path, in NumPy."""
    structured = problem.structured
    theta = np.asarray(theta).reshape(problem.settings["m"], -1)
    if problem.manifold is not structured:
        return theta
    return np.asarray(structured.theta_perp) + theta @ np.asarray(structured.basis).T


def _summarise(problem: TwoLayerProblem, solution, report: Report) -> Outcome:
    figures = report.figures
    stride = max(1, len(solution.ts) // 400)
    index = np.unique(
        np.r_[np.arange(0, len(solution.ts), stride), len(solution.ts) - 1]
    )
    features = np.stack(
        [_full_theta(problem, solution.ys[i]) @ problem.X.T for i in index]
    )
    singular_values = np.linalg.svd(features, compute_uv=False)
    theta0 = _full_theta(problem, solution.ys[0])
    theta_final = _full_theta(problem, solution.theta_final)
    summary = dict(
        experiment="two-layer",
        **problem.settings,
        loss="mean squared: L = (1/n) sum_i (f_i - y_i)^2",
        flow_constant=solution.constant,
        **{**solution.summary(), **figures},
        X=problem.X,
        y=problem.y,
        theta0=theta0,
        theta_final=theta_final,
    )
    arrays = dict(
        step_ts=solution.step_ts,
        sharpness=solution.sharpness,
        gradient_norm=solution.gradient_norm,
        constraint_violation=solution.constraint_violation,
        feature_ts=solution.ts[index],
        feature_singular_values=singular_values,
        features=features,
    )
    s = problem.settings
    R_star = figures["R_star"]
    headline = (
        f"two-layer: m={s['m']} d={s['d']} n={s['n']} activation={s['activation']} "
        f"path={s['path']} solver={s['solver']}\n"
        f"{result_text(solution).rstrip('.')}: "
        f"t={solution.t_final:.6g}, {solution.num_steps} steps "
        f"({solution.num_rejected_steps} rejected), solve {solution.wall_seconds:.2f} s\n"
        f"R: {summary['R_initial']:.12g} -> {figures['R_final']:.12g}"
        + (f" (R* = {R_star:.12g})" if R_star is not None else "")
    )
    figure_data = dict(arrays, R_star=R_star)
    return Outcome(
        report=report,
        summary=summary,
        arrays=arrays,
        headline=headline,
        finished=bool(report["ending"].passed),
        interrupted=solution.result_name == "interrupted",
        figure_data=figure_data,
    )


def _plot(data: dict, figure) -> None:
    axes = figure.subplots(1, 3, sharex=True)
    figure.subplots_adjust(left=0.06, right=0.985, bottom=0.14, top=0.9, wspace=0.28)
    ts = data["step_ts"]
    axes[0].semilogy(ts, data["gradient_norm"], ".-")
    axes[0].set(xlabel="t", ylabel="|P_T grad R|", title="stationarity")
    R, R_star = data["sharpness"], data["R_star"]
    if R_star is None:
        axes[1].plot(ts, R, ".-")
        axes[1].set(xlabel="t", ylabel="R", title="sharpness (no closed-form R*)")
    else:
        # Only the positive part is on a log axis: once R - R* reaches the rounding of
        # R it is noise of either sign, drawn as the dashed line.
        gap = R - R_star
        rounding = 64 * _EPS * abs(R_star)
        positive = gap > 0
        axes[1].semilogy(ts[positive], gap[positive], ".-")
        axes[1].axhline(rounding, color="grey", ls="--", lw=1, label="rounding of R")
        axes[1].set_ylim(bottom=0.5 * min(rounding, np.min(gap[positive], initial=1.0)))
        axes[1].legend(loc="upper right")
        axes[1].set(xlabel="t", ylabel="R - R*", title="sharpness gap")
    values = data["feature_singular_values"][:, :8]
    for k in range(values.shape[1]):
        positive = values[:, k] > 0
        axes[2].semilogy(
            data["feature_ts"][positive], values[positive, k], ".-", label=f"s_{k + 1}"
        )
    axes[2].legend(fontsize=7, ncol=2, title="k-th largest", title_fontsize=7)
    axes[2].set(
        xlabel="t",
        ylabel="singular values of Theta X^T",
        title=f"feature-matrix singular values (top {values.shape[1]})",
    )
