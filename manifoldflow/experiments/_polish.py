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


def polish_end(
    manifold,
    solution: mf.FlowSolution,
    args: argparse.Namespace,
    projector: mf.AbstractProjector = mf.CholeskyProjector(),
) -> mf.MinimiseSolution | None:
    """The trust region from the flow's end, to `--stationarity`, with the flow's
    projector; `None` without `--polish` or after Ctrl-C (nothing more is run)."""
    if not getattr(args, "polish", False) or solution.result_name == "interrupted":
        return None
    return mf.minimise_sharpness(
        manifold,
        np.asarray(solution.theta_final),
        projector=projector,
        gradient_tolerance=args.stationarity,
        throw=False,
    )


def polish_flow(
    manifold,
    solution: mf.FlowSolution,
    args: argparse.Namespace,
    projector: mf.AbstractProjector = mf.CholeskyProjector(),
) -> PolishedFlow | mf.FlowSolution:
    """The flow's solution, with its polish (`polish_end`) when there is one."""
    polished = polish_end(manifold, solution, args, projector)
    return solution if polished is None else PolishedFlow(solution, polished)


def split(result) -> tuple[mf.FlowSolution, mf.MinimiseSolution | None]:
    """`(flow solution, polish or None)` of what `polish_flow` returned."""
    if isinstance(result, PolishedFlow):
        return result.flow, result.polish
    return result, None


def renamed(check: Check, prefix: str = "polish_") -> Check:
    """The same check under the name `prefix + name` (for the polished point)."""
    return eqx.tree_at(lambda c: c.name, check, prefix + check.name)


def polish_checks(polish, flow, tolerance: float) -> list[Check]:
    """What every polish must show: stationary to `tolerance`, on the manifold, and
    no sharper than the flow's end (up to $R$'s rounding). `polish` and `flow` are a
    `MinimiseSolution` and its `FlowSolution`, or lists of them (one per start: the
    worst start is reported)."""
    polishes = list(polish) if isinstance(polish, (list, tuple)) else [polish]
    flows = list(flow) if isinstance(flow, (list, tuple)) else [flow]
    excess = []
    for p, f in zip(polishes, flows, strict=True):
        R_flow = float(f.sharpness[-1])
        rounding = 64 * np.finfo(float).eps * max(1.0, abs(R_flow))
        excess.append((float(p.sharpness) - R_flow) / rounding)
    endings = sorted({p.result_name for p in polishes})
    every = "" if len(polishes) == 1 else ", worst start"
    return [
        Check.compare(
            "polish_stationary",
            "|P_T grad R| at the polished point, within --stationarity (the "
            "optimiser's ending: " + ", ".join(endings) + every + ")",
            max(float(p.gradient_norm) for p in polishes),
            upper=tolerance,
        ),
        Check.compare(
            "polish_constraint",
            "max |F| at the polished point (it stays on the manifold" + every + ")",
            max(float(p.constraint_violation) for p in polishes),
            upper=1e-12,
        ),
        Check.compare(
            "polish_not_sharper",
            "(R at the polished point - R at the flow's end) / R's rounding "
            "(64 eps max(1, R)): polishing never ends sharper" + every,
            max(excess),
            upper=1.0,
        ),
    ]


def polish_summary(
    polish: mf.MinimiseSolution, flow: mf.FlowSolution | None = None
) -> dict:
    """Flat summary entries of the polish, `polish_*` (the distance from the flow's
    end when `flow` is given)."""
    verdict = polish.verdict
    summary = dict(
        polish_result=polish.result_name,
        polish_R=polish.sharpness,
        polish_grad_norm=polish.gradient_norm,
        polish_constraint_violation=polish.constraint_violation,
        polish_steps=int(polish.num_steps),
        polish_hessian_products=polish.hessian_products,
        polish_seconds=polish.wall_seconds,
        polish_verdict=None if verdict is None else verdict.kind,
        polish_verdict_message=None if verdict is None else verdict.message,
    )
    if flow is not None:
        summary["polish_distance_from_flow_end"] = float(
            np.linalg.norm(np.asarray(polish.theta) - np.asarray(flow.theta_final))
        )
    return summary


def polish_headline(polish: mf.MinimiseSolution) -> str:
    verdict = "" if polish.verdict is None else f"; {polish.verdict.message}"
    return (
        f"polish: {polish.result_name} after {polish.num_steps} trust-region steps "
        f"({polish.hessian_products} Hessian products, {polish.wall_seconds:.2f} s): "
        f"R = {polish.sharpness:.12g}, |P_T grad R| = {polish.gradient_norm:.2e}"
        f"{verdict}"
    )


POLISH_ENDING = (
    "--polish: the flow picks the basin and may stop at --t1; the polished point is "
    "checked for stationarity (polish_stationary) and against the theory (polish_*)"
)


def accept_t1(endings: dict[str, str], polishing: bool) -> dict[str, str]:
    """A flow's accepted endings, with `t1_reached` added when it is polished."""
    return dict(endings, t1_reached=POLISH_ENDING) if polishing else endings


def excused(checks: list[Check], reason: str) -> list[Check]:
    """Failing checks made not applicable for `reason` (the flow stopped at --t1 and
    the polished point carries the claim); the others as they are."""
    return [
        Check.not_applicable(c.name, c.claim, reason, measured=c.measured)
        if c.applicable and not c.passed
        else c
        for c in checks
    ]
