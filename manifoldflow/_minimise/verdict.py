r"""What a point of $\Gamma$ is, from the spectrum of the Riemannian Hessian on the
tangent space: a strict local minimiser, a saddle, flat in $k$ directions, not
stationary, or (from the optimiser's trend) a minimum at infinity."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._geometry import Geometry
from .lanczos import tangent_lanczos, TangentSpectrum


KINDS = (
    "strict_minimiser",
    "saddle",
    "flat",
    "not_stationary",
    "minimum_at_infinity",
    "undetermined",
)


class Verdict(eqx.Module):
    r"""What the end point of [`manifoldflow.minimise_sharpness`][] is.

    **Fields:**

    - `kind`: `"strict_minimiser"` (stationary, smallest tangent eigenvalue of
      $\operatorname{Hess} R$ resolved above the curvature tolerance),
      `"saddle"` (stationary with a tangent direction of negative curvature: some
      Rayleigh quotient is below $-$tolerance, which proves it),
      `"flat"` (stationary, no negative curvature, `flat_directions` eigenvalues
      within $\pm$tolerance: a non-isolated minimiser, or a degenerate one),
      `"not_stationary"` ($\|P_T\nabla R\|$ above the gradient tolerance: never
      called stationary), `"minimum_at_infinity"` (the optimiser's trend test
      fired), `"undetermined"` (Lanczos did not resolve the smallest eigenvalue).
    - `smallest_eigenvalues`: the Ritz values found (ascending), with
      `eigenvalue_errors` (their residuals: an eigenvalue lies within each).
    - `largest_eigenvalue`: the largest Ritz value (the scale of the tolerance).
    - `curvature_tolerance`: the absolute threshold used, relative tolerance times
      the largest magnitude of a Ritz value.
    - `negative_directions`, `flat_directions`: counts of resolved eigenvalues
      below $-$tolerance and within $\pm$tolerance (lower bounds: deflated Lanczos
      stops at `max_directions`).
    - `hessian_products`: products spent on the verdict.
    - `message`: one sentence for a reader.
    """

    kind: str
    smallest_eigenvalues: np.ndarray
    eigenvalue_errors: np.ndarray
    largest_eigenvalue: float
    curvature_tolerance: float
    negative_directions: int
    flat_directions: int
    hessian_products: int
    message: str


@eqx.filter_jit
def _spectrum(geometry: Geometry, theta, key, locked, iterations: int):
    evaluation = geometry.evaluate(theta)
    hessian = geometry.hessian_operator(theta, evaluation)
    return tangent_lanczos(
        hessian,
        lambda v: geometry.project(evaluation, v),
        key,
        theta.shape[0],
        iterations,
        locked,
    )


def tangent_spectrum(
    geometry: Geometry,
    theta,
    *,
    iterations: int = 60,
    relative_tolerance: float = 1e-8,
    max_directions: int = 32,
    seed: int = 0,
) -> tuple[TangentSpectrum, np.ndarray, np.ndarray, float, float, int]:
    r"""The low end of the tangent spectrum of $\operatorname{Hess} R(\theta)$ by
    deflated Lanczos: a run of `iterations` products (at most the tangent
    dimension), then, while it finds resolved eigenvalues at or below the
    tolerance, further runs orthogonal to their vectors (so repeated eigenvalues
    are counted), up to `max_directions` of them.

    **Returns:** `(first run, Ritz values, their errors, largest value, absolute
    tolerance, products)`: the values of the first run and those the deflated runs
    added, ascending. The tolerance is `relative_tolerance` times the largest
    magnitude of the first run's values.
    """
    manifold = geometry.manifold
    dimension = max(1, manifold.dimension - manifold.num_constraints)
    theta = jnp.asarray(theta)
    key = jax.random.PRNGKey(seed)
    locked = np.zeros((0, theta.shape[0]))
    values, errors = [], []
    first, scale, largest, tolerance, products = None, 0.0, 0.0, 0.0, 0
    while True:
        k = min(iterations, dimension - locked.shape[0])
        if k < 1:
            break
        spectrum = _spectrum(
            geometry,
            theta,
            jax.random.fold_in(key, len(locked)),
            jnp.asarray(locked),
            k,
        )
        products += k
        ritz = np.asarray(spectrum.values)
        residuals = np.asarray(spectrum.residuals)
        vectors = np.asarray(spectrum.vectors)
        if first is None:
            first = spectrum
            scale = float(np.max(np.abs(ritz)))
            largest = float(ritz[-1])
            tolerance = relative_tolerance * scale
            values += [float(v) for v in ritz]
            errors += [float(e) for e in residuals]
        low = (ritz <= tolerance) & (residuals <= max(tolerance, 1e-300))
        if not np.any(low) or locked.shape[0] >= max_directions:
            break
        if locked.shape[0]:  # later runs: the values found beyond the first run
            values += [float(v) for v in ritz[low]]
            errors += [float(e) for e in residuals[low]]
        new = vectors[low][: max_directions - locked.shape[0]]
        locked = np.concatenate([locked, new]) if locked.size else new
        if k + locked.shape[0] - new.shape[0] >= dimension:
            break  # the first run already saw the whole tangent space
    order = np.argsort(values)
    return (
        first,
        np.asarray(values)[order],
        np.asarray(errors)[order],
        largest,
        tolerance,
        products,
    )


def classify_point(
    geometry: Geometry,
    theta,
    *,
    gradient_tolerance: float = 1e-10,
    iterations: int = 60,
    curvature_tolerance: float = 1e-8,
    max_directions: int = 32,
    seed: int = 0,
    at_infinity: bool = False,
) -> Verdict:
    r"""What the point `theta` of $\Gamma$ is: a [`manifoldflow.Verdict`][] from
    $\|P_T\nabla R\|$ and the low end of the tangent spectrum of
    $\operatorname{Hess} R$ (deflated Lanczos, matrix-free).

    **Arguments:**

    - `geometry`: a [`manifoldflow.Geometry`][].
    - `theta`: coordinates of a point on $\Gamma$ (e.g. a flow's end,
      `solution.ys[-1]`).
    - `gradient_tolerance`: above it the point is `"not_stationary"`.
    - `iterations`: Lanczos products per run (at most the tangent dimension $D -
      n$; with that many every eigenvalue is found, with its multiplicity).
    - `curvature_tolerance`: eigenvalues within $\pm$ this times the largest Ritz
      value's magnitude count as flat.
    - `max_directions`: the most flat or negative directions counted.
    - `seed`: of the random Lanczos starts.
    - `at_infinity`: the optimiser's minimum-at-infinity test fired (the verdict
      then says so, whatever the spectrum).
    """
    theta = jnp.asarray(theta)
    gradient_norm = float(np.asarray(_gradient_norm(geometry, theta)))
    return classify(
        geometry,
        theta,
        gradient_norm,
        gradient_tolerance,
        at_infinity,
        iterations=iterations,
        relative_tolerance=curvature_tolerance,
        max_directions=max_directions,
        seed=seed,
    )


@eqx.filter_jit
def _gradient_norm(geometry: Geometry, theta):
    return geometry.evaluate(theta).gradient_norm


def classify(
    geometry: Geometry,
    theta,
    gradient_norm: float,
    gradient_tolerance: float,
    at_infinity: bool,
    *,
    iterations: int = 60,
    relative_tolerance: float = 1e-8,
    max_directions: int = 32,
    seed: int = 0,
) -> Verdict:
    """The [`manifoldflow.Verdict`][] at `theta` (see its fields)."""
    first, values, errors, scale, tolerance, products = tangent_spectrum(
        geometry,
        theta,
        iterations=iterations,
        relative_tolerance=relative_tolerance,
        max_directions=max_directions,
        seed=seed,
    )
    resolved = errors <= tolerance
    negative = int(np.sum(values < -tolerance))
    flat = int(np.sum((np.abs(values) <= tolerance) & resolved))
    smallest, error = float(values[0]), float(errors[0])
    stationary = gradient_norm <= gradient_tolerance
    if at_infinity:
        kind = "minimum_at_infinity"
        message = (
            "R kept falling while |theta| grew: the infimum is likely approached at "
            "infinity (no finite flattest point in reach)."
        )
    elif not stationary:
        kind = "not_stationary"
        message = (
            f"|P_T grad R| = {gradient_norm:.3e} is above the tolerance "
            f"{gradient_tolerance:.1e}: not a stationary point."
        )
    elif smallest < -tolerance:
        kind = "saddle"
        message = (
            f"a saddle: the tangent Hessian has {negative} direction(s) of negative "
            f"curvature (smallest eigenvalue {smallest:.3e})."
        )
    elif flat:
        kind = "flat"
        message = (
            f"stationary and flat in {flat}"
            f"{'+' if flat >= max_directions else ''} direction(s): eigenvalues "
            f"within +-{tolerance:.1e} (a non-isolated or degenerate minimiser); "
            "the others are positive."
        )
    elif smallest - error > tolerance:
        kind = "strict_minimiser"
        message = (
            "a strict local minimiser: the smallest tangent eigenvalue is "
            f"{smallest:.6e} (+-{error:.1e}) > 0."
        )
    else:
        kind = "undetermined"
        message = (
            f"the smallest tangent eigenvalue was not resolved ({smallest:.3e} +- "
            f"{error:.1e}) in {iterations} Lanczos products: pass more "
            "verdict_iterations."
        )
    del first
    return Verdict(
        kind=kind,
        smallest_eigenvalues=values,
        eigenvalue_errors=errors,
        largest_eigenvalue=scale,
        curvature_tolerance=tolerance,
        negative_directions=negative,
        flat_directions=flat,
        hessian_products=products,
        message=message,
    )
