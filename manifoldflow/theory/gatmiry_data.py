"""The fixed arrays of a two-layer manifold and the features at a point, on the
host, as the checks of [`manifoldflow.theory.gatmiry`][] use them, with the
a-posteriori bounds they share (inequality (15), Lemma 4.6)."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..models.activations import AbstractActivation
from ..models.two_layer import TwoLayerManifold


EPS = np.finfo(np.float64).eps
TINY = np.finfo(float).tiny


class TwoLayerData(eqx.Module):
    """The manifold's fixed arrays, once, as NumPy arrays on the host."""

    activation: AbstractActivation
    a: np.ndarray
    y: np.ndarray
    weights: np.ndarray
    norms2: np.ndarray  # |x_i|^2
    lambda_min: float  # of the data Gram matrix X X^T
    lambda_max: float

    def __init__(self, manifold: TwoLayerManifold):
        self.activation = manifold.activation
        self.a = np.asarray(manifold.a)
        self.y = np.asarray(manifold.y)
        self.weights = np.asarray(manifold.weights)
        gram = np.asarray(manifold.data_gram)
        self.norms2 = np.diag(gram)
        spectrum = np.linalg.eigvalsh(gram)
        self.lambda_min, self.lambda_max = float(spectrum[0]), float(spectrum[-1])


class FeaturePoint(eqx.Module):
    r"""The feature matrix $Z = \Theta X^\top$ at reduced coordinates $u$, the
    activation's derivatives there and the constraint residual $|F|$."""

    features: np.ndarray  # (m, n)
    d1: np.ndarray
    d2: np.ndarray
    d3: np.ndarray
    residual: np.ndarray  # (n,)

    def __init__(self, manifold: TwoLayerManifold, u):
        arrays = _point_arrays(manifold, jnp.asarray(u))  # one compiled call
        self.features, self.d1, self.d2, self.d3, self.residual = (
            np.asarray(x) for x in arrays
        )


@eqx.filter_jit
def _derivatives_jit(activation, z):
    return (
        activation.derivative(z),
        activation.second_derivative(z),
        activation.third_derivative(z),
    )


def derivatives(activation, z) -> tuple[np.ndarray, ...]:
    """The first three derivatives of the activation at `z`, as NumPy arrays, in one
    compiled call (eager calls would each be traced)."""
    return tuple(np.asarray(x) for x in _derivatives_jit(activation, np.asarray(z)))


@eqx.filter_jit
def sharpness_at(manifold, u):
    """$R$ at reduced coordinates `u`, compiled."""
    return manifold.linearise(u).sharpness


@eqx.filter_jit
def _point_arrays(manifold: TwoLayerManifold, u):
    act = manifold.activation
    Z = manifold.features(u)
    derivatives = (act.derivative(Z), act.second_derivative(Z), act.third_derivative(Z))
    return (Z, *derivatives, jnp.abs(manifold.constraint(u)))


def kkt_slack(data: TwoLayerData, point: FeaturePoint, delta: float) -> np.ndarray:
    r"""$\varepsilon_{ji} = \delta / (2 w_i \|x_i\|^2 \sqrt{\lambda_{\min}}\,|a_j|\,
    \phi'(z_{ji}))$, the bound on $|a_j\phi''(z_{ji}) - \mu_i|$ (inequality (15))."""
    return delta / (
        2
        * data.weights[None, :]
        * data.norms2[None, :]
        * np.sqrt(data.lambda_min)
        * np.abs(data.a)[:, None]
        * np.maximum(point.d1, TINY)
    )


def optimum_distance_bounds(
    data: TwoLayerData, point: FeaturePoint, z_star: np.ndarray, delta: float
) -> np.ndarray:
    r"""Per data point $i$, the bound on $\max_j |z_{ji} - z^*_i|$ from the $\delta$
    reached (Lemma 4.6 a posteriori): $2\max_j\varepsilon_{ji} / (|a|\rho_2)$ with the
    local $\rho_2 = \min\phi'''(Z)$, plus the constraint residual's share
    $|F_i| / (m |a| \phi'(z^*_i))$, plus rounding."""
    Z = point.features
    m = Z.shape[0]
    a0 = float(data.a[0])
    rho2_local = float(np.min(point.d3))
    derivative_star = derivatives(data.activation, z_star)[0]
    residual_term = point.residual / (m * abs(a0) * derivative_star)
    return (
        2 * np.max(kkt_slack(data, point, delta), axis=0) / (abs(a0) * rho2_local)
        + residual_term
        + 64 * EPS * np.maximum(np.abs(z_star), np.max(np.abs(Z), axis=0))
    )


def lemma_4_6_a_priori_bound(data: TwoLayerData, delta: float) -> float | None:
    r"""Lemma 4.6 as stated, $n\delta / (2\rho_1\rho_2\sqrt{\lambda_{\min}})$ (i.e.
    $\delta / (w\rho_1\rho_2\sqrt{\lambda_{\min}})$ with $w = 2/n$); `None` outside its
    setting (Assumption 3.1, unit rows, equal weights $w_i$, $a = 1$)."""
    rho1, rho2 = data.activation.rho()
    a, w = data.a, data.weights
    if np.ptp(a) > 0 or a[0] != 1 or not rho1 > 0:
        return None
    if not np.allclose(data.norms2, 1) or np.ptp(w) != 0:
        return None
    return float(delta / (w[0] * rho1 * rho2 * np.sqrt(data.lambda_min)))


def unequal_a_reason(data: TwoLayerData) -> str:
    """Why Theorem 3.3's closed form does not apply to unequal weights `a`."""
    return (
        "Theorem 3.3's closed form needs equal second-layer weights a_j "
        f"(here they range over [{np.min(data.a):g}, {np.max(data.a):g}])"
    )
