r"""`--polish`: after the flow, minimise $R$ on the manifold from the flow's end
([`manifoldflow.minimise_sharpness`][], the trust region) and report both."""

import argparse

import equinox as eqx
import numpy as np

import manifoldflow as mf

from ..theory import Check


class PolishedFlow(eqx.Module):
    """A flow solution and the polish from its end."""

    flow: mf.FlowSolution
    polish: mf.MinimiseSolution


def polish_flow(
    manifold, solution: mf.FlowSolution, args: argparse.Namespace
) -> PolishedFlow | mf.FlowSolution:
    """The flow's solution, with its polish when `--polish` was given."""
    if not getattr(args, "polish", False):
        return solution
    polished = mf.minimise_sharpness(
        manifold,
        np.asarray(solution.theta_final),
        gradient_tolerance=args.stationarity,
        throw=False,
    )
    return PolishedFlow(solution, polished)


def split(result) -> tuple[mf.FlowSolution, mf.MinimiseSolution | None]:
    """`(flow solution, polish or None)` of what `polish_flow` returned."""
    if isinstance(result, PolishedFlow):
        return result.flow, result.polish
    return result, None


def renamed(check: Check, prefix: str = "polish_") -> Check:
    """The same check under the name `prefix + name` (for the polished point)."""
    return eqx.tree_at(lambda c: c.name, check, prefix + check.name)


def polish_checks(
    polish: mf.MinimiseSolution, flow: mf.FlowSolution, tolerance: float
) -> list[Check]:
    """What every polish must show: stationary to `tolerance`, on the manifold, and
    no sharper than the flow's end (up to $R$'s rounding)."""
    R_flow = float(flow.sharpness[-1])
    rounding = 64 * np.finfo(float).eps * max(1.0, abs(R_flow))
    return [
        Check.compare(
            "polish_stationary",
            "|P_T grad R| at the polished point, within --stationarity (the "
            "optimiser's ending: " + polish.result_name + ")",
            polish.gradient_norm,
            upper=tolerance,
        ),
        Check.compare(
            "polish_constraint",
            "max |F| at the polished point (it stays on the manifold)",
            polish.constraint_violation,
            upper=1e-12,
        ),
        Check.compare(
            "polish_not_sharper",
            "R at the polished point minus R at the flow's end (<= R's rounding: "
            "polishing never ends sharper)",
            polish.sharpness - R_flow,
            upper=rounding,
        ),
    ]


def polish_summary(polish: mf.MinimiseSolution, flow: mf.FlowSolution) -> dict:
    """Flat summary entries of the polish, `polish_*`."""
    verdict = polish.verdict
    return dict(
        polish_result=polish.result_name,
        polish_R=polish.sharpness,
        polish_grad_norm=polish.gradient_norm,
        polish_constraint_violation=polish.constraint_violation,
        polish_steps=int(polish.num_steps),
        polish_hessian_products=polish.hessian_products,
        polish_seconds=polish.wall_seconds,
        polish_distance_from_flow_end=float(
            np.linalg.norm(np.asarray(polish.theta) - np.asarray(flow.theta_final))
        ),
        polish_verdict=None if verdict is None else verdict.kind,
        polish_verdict_message=None if verdict is None else verdict.message,
    )


def polish_headline(polish: mf.MinimiseSolution) -> str:
    verdict = "" if polish.verdict is None else f"; {polish.verdict.message}"
    return (
        f"polish: {polish.result_name} after {polish.num_steps} trust-region steps "
        f"({polish.hessian_products} Hessian products, {polish.wall_seconds:.2f} s): "
        f"R = {polish.sharpness:.12g}, |P_T grad R| = {polish.gradient_norm:.2e}"
        f"{verdict}"
    )
