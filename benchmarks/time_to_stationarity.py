"""Wall time to reach |P_T grad R| <= 1e-8 for the two-layer flow: manifoldflow vs the
hand-written baseline (NumPy closed form + scipy.integrate.solve_ivp DOP853,
rtol=1e-11, atol=1e-13; `scipy_baseline.py`), from the same theta0; the baseline is
itself timed against a second SciPy script of the same mathematics written
independently of it (`scipy_independent.py`), and the ratios are quoted against the
faster of the two.

Reports (medians over `--repeats` runs):
- `python -c "import manifoldflow"` (and which heavy modules it imports: none of
  matplotlib, scipy, cvxpy may be among them);
- solve time in-process, compilation excluded (manifoldflow's second solve);
- the whole `manifoldflow two-layer` command as its console script runs it (imports,
  compilation, report, files), with its progress bar shown (as a user runs it) and
  with `--no-progress`, against the whole SciPy script process, cold (an empty
  compilation cache) and warm (JAX's compilation cache filled); after each command,
  no process of it may be left;
- in a fresh Python session with a warm compilation cache: the first `solve_flow`,
  and a second one with a new rtol and constant (which must compile nothing).

    python benchmarks/time_to_stationarity.py [--quick]

Writes benchmarks/results/time_to_stationarity.json and .png.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import jax


jax.config.update("jax_enable_x64", True)
import manifoldflow as mf
import numpy as np
from manifoldflow.models import TwoLayerManifold
from manifoldflow.theory import gatmiry


HERE = pathlib.Path(__file__).parent
from _common import machine, RESULTS, two_layer_data, write_json


SESSION = """
import json, sys, time
import diffrax, jax
from manifoldflow._jax_config import configure_jax
configure_jax(cache=True)
import numpy as np, manifoldflow as mf
from manifoldflow.models import TwoLayerManifold, TwoLayerNet
with np.load(sys.argv[1]) as f:
    X, y, a, theta0 = f["X"], f["y"], f["a"], f["theta0"]
manifold = TwoLayerManifold(TwoLayerNet(theta0, a), X, y)
start = time.perf_counter()
mf.solve_flow(manifold, stationarity=1e-8)
first = time.perf_counter() - start
start = time.perf_counter()
pid = diffrax.PIDController(rtol=3e-10, atol=1e-12)
mf.solve_flow(manifold, stationarity=1e-8, stepsize_controller=pid, constant=0.5,
              throw=False)
print(json.dumps(dict(first=first, second=time.perf_counter() - start)))
"""


def run(cmd, env=None):
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode not in (0, 1):
        raise RuntimeError(f"{cmd} failed:\n{out.stdout}\n{out.stderr}")
    return wall, out.stdout


IMPORT = """
import sys, time
start = time.perf_counter()
import manifoldflow
seconds = time.perf_counter() - start
heavy = sorted(m for m in ("matplotlib", "scipy", "cvxpy") if m in sys.modules)
print(seconds, ",".join(heavy))
"""


def _leftover_processes(marker: str) -> list[str]:
    """Command lines of running processes that mention `marker`."""
    found = []
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in line and str(os.getpid()) != proc.name:
            found.append(line)
    return found


def time_import(repeats):
    """Median seconds of `import manifoldflow` in a fresh interpreter, the whole
    interpreter process, and the heavy modules the import brought in."""
    inner, outer, heavy = [], [], set()
    for _ in range(repeats):
        wall, out = run([sys.executable, "-c", IMPORT])
        seconds, modules = out.split()[0], (out.split() + [""])[1]
        inner.append(float(seconds))
        outer.append(wall)
        heavy.update(filter(None, modules.split(",")))
    return dict(
        import_s=float(np.median(inner)),
        import_process_s=float(np.median(outer)),
        import_heavy_modules=sorted(heavy),
    )


def _script_runs(script, data, args) -> list[dict]:
    """`args.repeats` runs of a SciPy script on `data`: its JSON line, with the
    wall time of its whole process."""
    runs = []
    for _ in range(args.repeats):
        wall, out = run(
            [
                sys.executable,
                str(HERE / script),
                str(data),
                "--stationarity",
                str(args.stationarity),
            ]
        )
        result = json.loads(out.strip().splitlines()[-1])
        result["process_seconds"] = wall
        runs.append(result)
    return runs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stationarity", type=float, default=1e-8)
    args = parser.parse_args()
    problems = [(32, 128, 32), (256, 1024, 128)]
    if args.quick:
        problems = problems[:1]
    rows = []
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mf-bench-"))
    imported = time_import(args.repeats)
    print(json.dumps(imported), flush=True)
    for m, d, n in problems:
        X, y, net = two_layer_data(m, d, n, seed=0)
        data = tmp / f"data_{m}_{d}_{n}.npz"
        np.savez(data, X=X, y=y, a=np.asarray(net.a), theta0=np.asarray(net.theta))
        row = dict(m=m, d=d, n=n, D=m * d, stationarity=args.stationarity)

        # The SciPy baseline and the second, independently written script: whole
        # processes, repeated.
        for key, script in (
            ("scipy", "scipy_baseline.py"),
            ("independent", "scipy_independent.py"),
        ):
            runs = _script_runs(script, data, args)
            row[key] = runs[-1]
            row[f"{key}_solve_s"] = float(np.median([r["solve_seconds"] for r in runs]))
            row[f"{key}_process_s"] = float(
                np.median([r["process_seconds"] for r in runs])
            )
        row["baseline_process_s"] = min(
            row["scipy_process_s"], row["independent_process_s"]
        )

        # manifoldflow in-process: first solve (with compilation), then compiled solves.
        manifold = TwoLayerManifold(net, X, y)
        solves = [
            mf.solve_flow(manifold, stationarity=args.stationarity)
            for _ in range(1 + args.repeats)
        ]
        sol = solves[-1]
        row["manifoldflow_first_solve_s"] = solves[0].wall_seconds
        row["manifoldflow_solve_s"] = float(
            np.median([s.wall_seconds for s in solves[1:]])
        )
        row["manifoldflow_num_steps"] = sol.num_steps
        row["manifoldflow_grad_norm_final"] = float(sol.gradient_norm[-1])
        row["manifoldflow_R_final"] = float(sol.sharpness[-1])
        row["manifoldflow_constraint_violation_max"] = float(
            np.max(sol.constraint_violation)
        )
        row["R_star"] = gatmiry.minimum_sharpness(manifold)

        # The whole command as the console script runs it, cold then warm cache.
        cache = tmp / f"cache_{m}_{d}_{n}"
        env = dict(os.environ, MANIFOLDFLOW_CACHE_DIR=str(cache))
        console = pathlib.Path(sys.executable).parent / "manifoldflow"
        cmd = [
            str(console),
            "two-layer",
            "--m",
            str(m),
            "--d",
            str(d),
            "--n",
            str(n),
            "--seed",
            "0",
            "--stationarity",
            str(args.stationarity),
            "--json",
            "--out",
            str(tmp / f"out_{m}_{d}_{n}"),
        ]
        quiet = cmd + ["--no-progress"]
        cold, cold_quiet = [], []
        for k in range(args.repeats):  # each with an empty compilation cache
            fresh = dict(env, MANIFOLDFLOW_CACHE_DIR=str(tmp / f"cold_{m}_{k}"))
            wall, out = run(cmd, fresh)
            cold.append(wall)
            fresh = dict(env, MANIFOLDFLOW_CACHE_DIR=str(tmp / f"coldq_{m}_{k}"))
            cold_quiet.append(run(quiet, fresh)[0])
        summary = json.loads(out)
        theta0 = summary["theta0"]
        if isinstance(theta0, dict):  # a large array: in summary.npz
            with np.load(tmp / f"out_{m}_{d}_{n}" / "summary.npz") as f:
                theta0 = f["theta0"]
        assert np.allclose(np.asarray(theta0), np.asarray(net.theta), atol=1e-13)
        run(cmd, env)  # fill the warm cache
        run(quiet, env)
        warm, warm_quiet = [], []
        for _ in range(args.repeats):
            warm.append(run(cmd, env)[0])
            warm_quiet.append(run(quiet, env)[0])
        session = [
            json.loads(run([sys.executable, "-c", SESSION, str(data)], env)[1])
            for _ in range(args.repeats)
        ]
        leftover = _leftover_processes(str(tmp))
        assert not leftover, f"processes left after the commands: {leftover}"
        row["cli_leftover_processes"] = len(leftover)
        row["cli_cold_process_s"] = float(np.median(cold))
        row["cli_warm_process_s"] = float(np.median(warm))
        row["cli_cold_no_progress_s"] = float(np.median(cold_quiet))
        row["cli_warm_no_progress_s"] = float(np.median(warm_quiet))
        row["session_first_solve_s"] = float(np.median([r["first"] for r in session]))
        row["session_second_solve_s"] = float(np.median([r["second"] for r in session]))
        row["cli_checks_passed"] = summary["checks_passed"]
        row["cli_solve_seconds_reported"] = summary["solve_seconds"]

        row["solve_ratio_manifoldflow_over_scipy"] = (
            row["manifoldflow_solve_s"] / row["scipy_solve_s"]
        )
        baseline = row["baseline_process_s"]
        row["process_ratio_cold"] = row["cli_cold_process_s"] / baseline
        row["process_ratio_warm"] = row["cli_warm_process_s"] / baseline
        row["independent_over_scipy"] = (
            row["independent_process_s"] / row["scipy_process_s"]
        )
        print(
            json.dumps(
                {k: v for k, v in row.items() if k not in ("scipy", "independent")},
                indent=1,
            ),
            flush=True,
        )
        rows.append(row)

    name = "time_to_stationarity_quick" if args.quick else "time_to_stationarity"
    path = write_json(name, dict(machine=machine(), **imported, rows=rows))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4))
    keys = [
        ("scipy_solve_s", "SciPy solve"),
        ("manifoldflow_solve_s", "mf solve"),
        ("scipy_process_s", "SciPy process"),
        ("independent_process_s", "SciPy process\n(independent)"),
        ("cli_cold_process_s", "mf process cold"),
        ("cli_warm_process_s", "mf process warm"),
        ("cli_warm_no_progress_s", "mf warm\n--no-progress"),
        ("session_first_solve_s", "mf 1st solve\n(session)"),
    ]
    width = 0.8 / len(rows)
    for k, row in enumerate(rows):
        ax.bar(
            np.arange(len(keys)) + k * width,
            [row[key] for key, _ in keys],
            width,
            label=f"m={row['m']} d={row['d']} n={row['n']}",
        )
    ax.set_xticks(
        np.arange(len(keys)) + width * (len(rows) - 1) / 2, [label for _, label in keys]
    )
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"time to |P_T grad R| <= {args.stationarity:g}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    print("wrote", path)


if __name__ == "__main__":
    main()
