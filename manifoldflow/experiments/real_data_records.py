"""The records of `manifoldflow real-data`: its problem, the measurements at one
parameter vector (`Point`, taken by `Measure`), its result and its figure."""

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import manifoldflow as mf

from ..models.datasets import Dataset
from .interpolation import TrainingLoss


def num_parameters(features: int, width: int, depth: int) -> int:
    """Parameters of `eqx.nn.MLP(features, "scalar", width, depth)`."""
    return features * width + width + (depth - 1) * (width * width + width) + width + 1


@dataclasses.dataclass(frozen=True)
class RealDataProblem:
    data: Dataset
    model: Any
    etas: list[float]
    sigma: float
    sgd_seeds: int
    train_steps: int
    learning_rate: float
    matrix_free: bool | None
    dtype: str
    retraction: Any  # the retraction of the interpolant and of the SGD end points
    flow: dict
    settings: dict


@dataclasses.dataclass(frozen=True)
class Point:
    """Measurements at one parameter vector."""

    test_error: float
    sharpness: float
    gradient_norm: float
    norm: float
    lambda_max: float
    lambda_max_error: float
    distance: float
    constraint: float


@dataclasses.dataclass(frozen=True)
class RealDataResult:
    manifold: Any
    theta_interpolant: np.ndarray
    training: dict
    solution: Any
    times: np.ndarray
    points: list[Point]  # at `times`
    sgd: list[dict]  # one per eta: eta, steps, tau, points (per seed), diverged
    constant: float
    skipped: list[str]  # phases not run after Ctrl-C
    interrupted: bool  # Ctrl-C in the solve or after it


def point_row(label: str, p: Point) -> str:
    return (
        f"{label:<25} {p.test_error:<14.4g} {p.sharpness:<8.4g} "
        f"{p.lambda_max:<11.4g} {p.norm:<9.4g} {p.distance:.4g}"
    )


class Measure:
    """The measurements of `Point` at a parameter vector on the manifold."""

    def __init__(self, manifold, data: Dataset, theta0: np.ndarray, lanczos=True):
        self.manifold = manifold
        self.lanczos = lanczos  # False: lambda_max is not computed (NaN)
        self.data = data
        self.theta0 = theta0
        self.flow = mf.SharpnessFlow(manifold)
        # In the manifold's precision (float32 data for float32 parameters).
        self.X_test = jnp.asarray(data.X_test, manifold.X.dtype)
        self.loss = TrainingLoss(manifold.X, manifold.y)

    def __call__(self, theta: np.ndarray) -> Point:
        theta_j = jnp.asarray(theta)
        R, g, F, predictions = _evaluate(self.flow, theta_j, self.X_test)
        model = self.manifold.to_parameters(theta_j)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        value = error = math.nan
        if self.lanczos:
            eigen = mf.hessian_max_eigenvalue(
                eqx.Partial(self.loss, static=static), params, rtol=1e-6
            )
            value, error = float(eigen.value), float(eigen.error)
        return Point(
            test_error=self.data.test_error(np.asarray(predictions)),
            sharpness=float(R),
            gradient_norm=float(g),
            norm=float(np.linalg.norm(theta)),
            lambda_max=value,
            lambda_max_error=error,
            distance=float(np.linalg.norm(theta - self.theta0)),
            constraint=float(F),
        )


@eqx.filter_jit
def _evaluate(flow, theta, X_test):
    evaluation = flow.evaluate(theta)
    F = jnp.max(jnp.abs(flow.manifold.constraint(theta)))
    predictions = jax.vmap(flow.manifold.to_parameters(theta))(X_test)
    return evaluation.sharpness, evaluation.gradient_norm, F, predictions


def plot_real_data(data: dict, figure) -> None:
    """The figure of a real-data run: test error, R and the stationarity along the
    flow, with label-noise GD's end points."""
    axes = figure.subplots(1, 3)
    figure.subplots_adjust(left=0.06, right=0.985, bottom=0.14, top=0.9, wspace=0.3)
    times = data["times"]
    error_name = "test error" if data["task"] == "binary" else "test MSE"
    axes[0].plot(times, [p.test_error for p in data["points"]], "o-", label="flow")
    axes[1].semilogy(data["step_ts"], data["sharpness"], ".-", label="flow")
    axes[2].semilogy(data["step_ts"], data["gradient_norm"], ".-")
    markers = "sD^v<>"
    for i, run in enumerate(data["sgd"]):
        label = f"label-noise GD, eta={run['eta']:g}"
        for j, p in enumerate(run["points"]):
            kwargs = dict(marker=markers[i % 6], ls="none", alpha=0.8)
            axes[0].plot(
                data["t_final"], p.test_error, label=None if j else label, **kwargs
            )
            axes[1].plot(
                data["t_final"], p.sharpness, label=None if j else label, **kwargs
            )
    axes[0].set(
        xlabel="flow time t",
        ylabel=error_name,
        title=f"{error_name} along the flow",
    )
    axes[1].set(xlabel="flow time t", ylabel="R = Tr Hessian", title="sharpness")
    axes[2].set(xlabel="flow time t", ylabel="|P_T grad R|", title="stationarity")
    for ax in axes[:2]:
        ax.legend(fontsize=7)
