"""The records of `manifoldflow deep-linear`: its problem, what its run computed
(the descent path and the optional trace flow), and its figure."""

import dataclasses
from typing import Any

import equinox as eqx
import numpy as np

from ..models.deep_linear import DeepLinearRisk


@dataclasses.dataclass(frozen=True)
class TraceFlowRun:
    """The trace flow on the minimisers from the point descent reached."""

    solution: Any  # a manifoldflow.FlowSolution
    weights: list
    S: Any  # an EigenEstimate of lambda_max at its end


@dataclasses.dataclass(frozen=True)
class DeepLinearRun:
    """What `run` computed: the descent path, lambda_max along it, whether it
    converged (and how it ended), the data constants, the balancedness drift and the
    optional trace flow."""

    path: Any  # a TrainingPath
    sharpness: np.ndarray
    final: Any  # an EigenEstimate, None after divergence
    trace_flow: TraceFlowRun | None
    converged: bool
    how: str
    constants: Any  # marion_chizat.DataConstants
    drift: float
    polish: Any = None  # a MinimiseSolution on the minimisers (--polish)


class DeepLinearProblem(eqx.Module):
    net: Any
    loss: DeepLinearRisk
    X: np.ndarray
    y: np.ndarray
    lr: float | None
    steps: int
    init: str
    trace_flow: bool
    settings: dict
    polish: bool = False


def plot_deep_linear(data: dict, figure) -> None:
    """The figure of a deep-linear run."""
    axes = figure.subplots(1, 4)
    figure.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.9, wspace=0.35)
    t = data["times"]
    x = t if data["gradient_flow"] else t
    label = "t" if data["gradient_flow"] else "step"
    gap = data["risk"] - data["R_min"]
    axes[0].semilogy(x, np.where(gap > 0, gap, np.nan))
    axes[0].set(xlabel=label, ylabel="L(W) - L_min", title="excess risk (the loss)")
    finite = np.isfinite(data["sharpness"])
    axes[1].plot(x[finite], data["sharpness"][finite], "o-", ms=3, label="S(W)")
    if data["S_lower"] is not None:
        axes[1].axhline(data["S_lower"], color="k", ls="--", label="lower bound")
        axes[1].axhline(data["S_balanced"], color="g", ls=":", label="balanced min.")
    if data["S_corollary2"] is not None:
        axes[1].axhline(data["S_corollary2"], color="r", ls="--", label="Cor. 2")
    if data["lr"]:
        axes[1].axhline(2 / data["lr"], color="m", ls="-.", label="2/lr")
    axes[1].set(
        xlabel=label, ylabel="S = lambda_max(Hess L)", title="sharpness of the loss"
    )
    axes[1].legend(fontsize=7)
    norms = data["layer_norms"]  # (records, layers)
    for k in range(norms.shape[1]):
        # Label at most 8 layers: the first ones and the last.
        shown = norms.shape[1] <= 8 or k < 6 or k == norms.shape[1] - 1
        axes[2].plot(x, norms[:, k], lw=0.8, label=f"W_{k + 1}" if shown else None)
    axes[2].legend(fontsize=7, ncol=2)
    axes[2].set(xlabel=label, ylabel="|W_k|_2", title="layer norms")
    drift = data["balancedness_drift"]
    axes[3].semilogy(x[1:], np.maximum(drift[1:], 1e-18))
    axes[3].set(
        xlabel=label, ylabel="max_k |A_k - A_k(0)|_F (rel.)", title="balancedness"
    )
    if data["gradient_flow"]:
        for ax in axes:
            ax.set_xscale("symlog", linthresh=1.0)
