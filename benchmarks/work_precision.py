"""Work-precision of every way to integrate the sharpness flow, in the transient.

The harness is `manifoldflow.work_precision` (also `manifoldflow bench`); this script runs it
on the benchmark's problems and writes benchmarks/results/work_precision.json (a flat
list `rows`, the references per problem and an analysis per target error) and
work_precision.png.

    python benchmarks/work_precision.py [--quick] [--problems small,deep-linear,large]
"""

import argparse
import json
import pathlib

import jax


jax.config.update("jax_enable_x64", True)
from manifoldflow import work_precision as harness


HERE = pathlib.Path(__file__).parent
from _common import machine, RESULTS, write_json


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--problems", default="small,deep-linear,large")
    parser.add_argument(
        "--reanalyse",
        action="store_true",
        help="recompute the analysis and the figure from the rows already written",
    )
    args = parser.parse_args()
    if args.reanalyse:
        old = json.loads((RESULTS / "work_precision.json").read_text())
        results = [
            dict(p, rows=[r for r in old["rows"] if r["problem"] == p["problem"]])
            for p in old["problems"]
        ]
        machine_info = old["machine"]
    else:
        results = []
        for key in args.problems.split(","):
            problem = harness.PROBLEMS[key]()
            plan = harness.Plan.for_problem(problem, quick=args.quick)
            results.append(
                harness.run_problem(problem, plan, log=lambda s: print(s, flush=True))
            )
        machine_info = machine()
    payload = dict(
        machine=machine_info,
        problems=[
            dict(
                problem=r["problem"], reference=r["reference"], refused=r.get("refused")
            )
            for r in results
        ],
        analysis=[harness.analyse(r) for r in results],
        rows=[row for r in results for row in r["rows"]],
    )
    path = write_json("work_precision", payload)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure()
    FigureCanvasAgg(figure)
    harness.plot_work_precision(results, figure)
    figure.savefig(RESULTS / "work_precision.png", dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
