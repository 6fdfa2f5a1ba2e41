"""A long, stiff flow on a real model: Dopri8 against Kvaerno5 with the matrix-free
Newton--Krylov root finder (`manifoldflow.newton_krylov`, what `solve_flow` gives an
implicit solver by default), and against Kvaerno5 with diffrax's default dense LU.

The problem: a bias-free tanh MLP 64-16-1 (D = 1,040) fitted to 64 digits by Adam
and put on its zero-loss manifold. Far into its flow the tangent Hessian of R spans
~1e-1 to ~2e2, so Dopri8 is held at its stability limit (h ~ 0.024, about 30% of its
steps rejected) whatever the tolerance, while the implicit solver's step grows with
the flow's own time scale.

Rows: Dopri8, Kvaerno5 (Newton--Krylov), and the recipe for long flows, Dopri8 to
t1/10 then Kvaerno5 (at rtol 1e-6, and tighter: at the accuracy Dopri8 reaches for
free at its stability limit), each from t = 0 to t1, with the error of its end
point against Dopri8 at rtol 1e-10; and one time unit from t = 20 of Kvaerno5 with
diffrax's dense LU, with Newton--Krylov and with Dopri8.

Reported for each solver: the whole `solve_flow` call (the first one, compile
included) and its compile share (a solve to a tiny t1 first), steps and rejected
steps, the step size along the path, R at the end, |P_T grad R| at the end
recomputed independently (autodiff of the constraint + NumPy lstsq), and the
constraint violation. Writes `results/stiff_flow.json` and `results/stiff_flow.png`.

    python benchmarks/stiff_flow.py            # t = 0 -> 1000 (Dopri8 ~10 min)
    python benchmarks/stiff_flow.py --quick    # t = 0 -> 30, and a short dense-LU row
"""

import argparse
import time

import diffrax
import jax
import lineax as lx
import numpy as np


jax.config.update("jax_enable_x64", True)

import manifoldflow as mf
from _common import machine, RESULTS, write_json
from flattest import digits_mlp, independent_check


def _solve(manifold, theta0, solver, t0, t1, tolerance):
    controller = diffrax.PIDController(rtol=tolerance, atol=tolerance * 1e-2)
    return mf.solve_flow(
        manifold,
        theta0,
        solver=solver,
        t0=t0,
        t1=t1,
        stepsize_controller=controller,
        max_steps=200_000,
        save_every=1_000,
        throw=False,
    )


def run(name, manifold, theta0, solver, t0, t1, tolerance):
    start = time.perf_counter()
    _solve(manifold, theta0, solver, t0, t0 + 1e-3, tolerance)
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    solution = _solve(manifold, theta0, solver, t0, t1, tolerance)
    seconds = time.perf_counter() - start
    theta = np.asarray(solution.theta_final)
    check = independent_check(manifold, theta)
    step_ts = np.asarray(solution.step_ts)
    row = dict(
        solver=name,
        t0=t0,
        t1=float(solution.t_final),
        tolerance=tolerance,
        result=solution.result_name,
        steps=int(solution.num_steps),
        rejected=int(solution.num_rejected_steps),
        tiny_solve_seconds=compile_seconds,
        seconds=seconds,
        first_call_seconds=compile_seconds + seconds,
        R=float(solution.sharpness[-1]),
        gradient_norm=float(solution.gradient_norm[-1]),
        R_independent=check["R_independent"],
        gradient_norm_independent=check["gradient_norm_independent"],
        constraint_violation_max=float(np.max(solution.constraint_violation)),
        step_ts=step_ts[1:].tolist(),
        step_sizes=np.diff(step_ts).tolist(),
    )
    print(
        f"{name:>22} [{t0:g}, {row['t1']:g}] {seconds:8.1f} s ({compile_seconds:.1f} s "
        f"tiny solve) steps={row['steps']} rejected={row['rejected']} "
        f"R={row['R']:.10f} |g|={row['gradient_norm']:.3e} "
        f"(independent {row['gradient_norm_independent']:.3e}) "
        f"|F|max={row['constraint_violation_max']:.1e} {row['result']}",
        flush=True,
    )
    return row, theta


def run_switched(manifold, theta0, switch, t1, tolerance):
    """The recipe for a long flow: Dopri8 while the flow is not stiff, then Kvaerno5
    (Newton--Krylov) from `switch` on; one row, both calls timed."""
    early, theta_early = run(
        "Dopri8 leg", manifold, theta0, diffrax.Dopri8(), 0.0, switch, tolerance
    )
    late, theta = run(
        "Kvaerno5 NK leg", manifold, theta_early, diffrax.Kvaerno5(), switch, t1,
        tolerance,
    )
    row = dict(late)
    row["solver"] = f"Dopri8 to t={switch:g}, then Kvaerno5 Newton-Krylov"
    if tolerance != 1e-6:
        row["solver"] += f" (rtol {tolerance:g})"
    row["t0"] = 0.0
    for key in ("steps", "rejected", "tiny_solve_seconds", "seconds",
                "first_call_seconds"):
        row[key] = early[key] + late[key]
    row["constraint_violation_max"] = max(
        early["constraint_violation_max"], late["constraint_violation_max"]
    )
    row["step_ts"] = early["step_ts"] + late["step_ts"]
    row["step_sizes"] = early["step_sizes"] + late["step_sizes"]
    return row, theta


def plot(payload, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    rows_t1 = payload["rows"][0]["t1"]
    whole = [r for r in payload["rows"] if r["t0"] == 0.0 and r["t1"] == rows_t1]
    # The switched rows under the others (they repeat each of them in part).
    for row in sorted(whole, key=lambda r: ", then" not in r["solver"], reverse=False):
        switched = ", then" in row["solver"]
        left.loglog(
            row["step_ts"],
            row["step_sizes"],
            "o" if switched else ".",
            ms=4 if switched else 2,
            alpha=0.25 if switched else 1.0,
            label=row["solver"].replace("Newton-Krylov", "NK"),
        )
    left.set_xlabel("t")
    left.set_ylabel("accepted step size h")
    left.set_title("step size along the flow (digits MLP, D=1040)", fontsize=9)
    left.legend(markerscale=3)
    rows = payload["rows"]
    def label(row):
        name = row["solver"].replace("Newton-Krylov", "NK").replace(" (rtol", "\n(rtol")
        name = name.replace(" ", "\n", 1).replace(", then ", ",\nthen\n")
        return f"{name}\n[{row['t0']:g}, {row['t1']:g}]"

    labels = [label(r) for r in rows]
    bars = right.bar(labels, [r["first_call_seconds"] for r in rows])
    for bar, row in zip(bars, rows):
        right.annotate(
            f"{row['steps']} steps\nR={row['R']:.8g}"
            + (
                f"\nerr {row['error_vs_reference']:.0e}"
                if "error_vs_reference" in row
                else ""
            ),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    right.set_yscale("log")
    right.set_ylabel("whole solve_flow call, first call (s)")
    right.set_title(
        f"rtol {payload['tolerance']:g} unless marked; err: distance from Dopri8 at "
        "rtol 1e-10 (lower is better)",
        fontsize=9,
    )
    right.tick_params(axis="x", labelsize=7)
    right.margins(y=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--t1", type=float, default=None)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--name", default="stiff_flow")
    parser.add_argument(
        "--switched-tolerances",
        default="1e-6,1e-8",
        help="rtols of the Dopri8-then-Kvaerno5 rows (a tighter one: at the accuracy "
        "Dopri8 reaches at its stability limit)",
    )
    parser.add_argument(
        "--reference-tolerance", type=float, default=1e-10,
        help="rtol of the Dopri8 reference that every row's error is measured against",
    )
    args = parser.parse_args()
    t1 = args.t1 if args.t1 is not None else (30.0 if args.quick else 1000.0)
    manifold, theta0, _ = digits_mlp(16, 64)
    implicit = diffrax.Kvaerno5()  # solve_flow gives it mf.newton_krylov()
    rows = []
    kv, theta_kv = run(
        "Kvaerno5 Newton-Krylov", manifold, theta0, implicit, 0.0, t1, args.tolerance
    )
    dopri, theta_dopri = run(
        "Dopri8", manifold, theta0, diffrax.Dopri8(), 0.0, t1, args.tolerance
    )
    switch = t1 / 10
    switched_rows = [
        run_switched(manifold, theta0, switch, t1, float(tolerance))
        for tolerance in args.switched_tolerances.split(",")
    ]
    switched, theta_switched = switched_rows[0]
    reference, theta_reference = run(
        "Dopri8 reference", manifold, theta0, diffrax.Dopri8(), 0.0, t1,
        args.reference_tolerance,
    )
    for row, theta in ((kv, theta_kv), (dopri, theta_dopri), *switched_rows):
        row["error_vs_reference"] = float(np.max(np.abs(theta - theta_reference)))
        row["R_relative_error_vs_reference"] = abs(row["R"] - reference["R"]) / abs(
            reference["R"]
        )
        print(
            f"{row['solver']}: |theta - reference|max = {row['error_vs_reference']:.2e}, "
            f"R relative error {row['R_relative_error_vs_reference']:.2e}"
        )
    rows += [kv, dopri, *(row for row, _ in switched_rows)]
    # The dense-LU default of diffrax, for a short window from the implicit run's
    # point at t = 20, over one time unit (its per-step cost is the point).
    start_t = min(20.0, t1 / 2)
    early = _solve(manifold, theta0, implicit, 0.0, start_t, args.tolerance)
    # An explicit lx.LU() keeps solve_flow from swapping in Newton-Krylov.
    dense = diffrax.Kvaerno5(
        root_finder=diffrax.with_stepsize_controller_tols(diffrax.VeryChord)(
            linear_solver=lx.LU()
        )
    )
    for name, solver in (
        ("Kvaerno5 dense LU", dense),
        ("Kvaerno5 Newton-Krylov", implicit),
        ("Dopri8", diffrax.Dopri8()),
    ):
        row, _ = run(
            name,
            manifold,
            np.asarray(early.theta_final),
            solver,
            start_t,
            start_t + 1.0,
            args.tolerance,
        )
        rows.append(row)
    agreement = float(np.max(np.abs(theta_kv - theta_dopri)))
    payload = dict(
        machine=machine(),
        problem="digits MLP 64-16-1 tanh, n=64",
        D=int(theta0.shape[0]),
        tolerance=args.tolerance,
        atol=args.tolerance * 1e-2,
        max_abs_difference_of_end_points=agreement,
        relative_R_difference=abs(kv["R"] - dopri["R"]) / abs(dopri["R"]),
        speedup_first_call=dopri["first_call_seconds"] / kv["first_call_seconds"],
        speedup_first_call_switched=dopri["first_call_seconds"]
        / switched["first_call_seconds"],
        reference={k: v for k, v in reference.items() if k not in ("step_ts", "step_sizes")},
        rows=rows,
    )
    print(
        f"end points differ by {agreement:.2e}; R by "
        f"{payload['relative_R_difference']:.2e} relative; Kvaerno5-NK "
        f"{payload['speedup_first_call']:.1f}x faster, Dopri8-then-Kvaerno5 "
        f"{payload['speedup_first_call_switched']:.1f}x (first calls)"
    )
    write_json(args.name, payload)
    plot(payload, RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    main()
