"""Wall time to reach |P_T grad R| <= 1e-8 for the two-layer flow: manifoldflow vs the
hand-written baseline (NumPy closed form + scipy.integrate.solve_ivp DOP853,
rtol=1e-11, atol=1e-13; `scipy_baseline.py`), from the same theta0.

Reports (medians over `--repeats` runs):
- solve time in-process, compilation excluded (manifoldflow's second solve);
- the whole `manifoldflow two-layer` command as the console script runs it (imports,
  compilation, report, files), against the whole SciPy script process: in its own
  process with cold (empty) and with warm caches (`MANIFOLDFLOW_SERVER=0`), and
  through a resident server (warm caches): the first command the server runs (it
  loads the programs) and the commands after it;
- in a fresh Python session with warm caches: the first `solve_flow`, and a second
  one with a new rtol and constant (which must compile nothing).

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
sys.path.insert(0, str(HERE))
from _common import machine, RESULTS, two_layer_data, write_json  # noqa: E402


SESSION = """
import json, sys, time
import jax
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
mf.solve_flow(manifold, stationarity=1e-8, rtol=3e-10, constant=0.5, throw=False)
print(json.dumps(dict(first=first, second=time.perf_counter() - start)))
"""


def run(cmd, env=None):
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode not in (0, 1):
        raise RuntimeError(f"{cmd} failed:\n{out.stdout}\n{out.stderr}")
    return wall, out.stdout


def _wait_for_server(launcher, env, timeout=120.0):
    deadline = time.perf_counter() + timeout
    while "commands served" not in run([*launcher, "server", "status"], env)[1]:
        if time.perf_counter() > deadline:
            raise RuntimeError("no manifoldflow server came up")
        time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stationarity", type=float, default=1e-8)
    args = parser.parse_args()
    problems = [(32, 128, 32), (256, 1024, 128)]
    if args.quick:
        problems = problems[:1]
    rows = []
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mf-bench-"))
    # The servers' sockets: a short path (a socket's is limited to about 100 bytes).
    runtime = pathlib.Path(tempfile.mkdtemp(prefix="mf", dir="/tmp"))
    for m, d, n in problems:
        X, y, net = two_layer_data(m, d, n, seed=0)
        data = tmp / f"data_{m}_{d}_{n}.npz"
        np.savez(data, X=X, y=y, a=np.asarray(net.a), theta0=np.asarray(net.theta))
        row = dict(m=m, d=d, n=n, D=m * d, stationarity=args.stationarity)

        # SciPy baseline: whole process, repeated.
        scipy_runs = []
        for _ in range(args.repeats):
            wall, out = run(
                [
                    sys.executable,
                    str(HERE / "scipy_baseline.py"),
                    str(data),
                    "--stationarity",
                    str(args.stationarity),
                ]
            )
            res = json.loads(out.strip().splitlines()[-1])
            res["process_seconds"] = wall
            scipy_runs.append(res)
        row["scipy"] = scipy_runs[-1]
        row["scipy_solve_s"] = float(
            np.median([r["solve_seconds"] for r in scipy_runs])
        )
        row["scipy_process_s"] = float(
            np.median([r["process_seconds"] for r in scipy_runs])
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

        # The whole command as the console script runs it (the launcher), cold then
        # warm caches; in its own process, and through a resident server.
        cache = tmp / f"cache_{m}_{d}_{n}"
        env = dict(
            os.environ,
            MANIFOLDFLOW_CACHE_DIR=str(cache),
            MANIFOLDFLOW_SERVER="0",
            XDG_RUNTIME_DIR=str(runtime),
        )
        launcher = [sys.executable, "-m", "_manifoldflow_launcher"]
        cmd = [
            *launcher,
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
            "--no-progress",
            "--json",
            "--out",
            str(tmp / f"out_{m}_{d}_{n}"),
        ]
        cold = []
        for k in range(args.repeats):  # each with an empty compilation cache
            fresh = dict(env, MANIFOLDFLOW_CACHE_DIR=str(tmp / f"cold_{m}_{k}"))
            wall, out = run(cmd, fresh)
            cold.append(wall)
        summary = json.loads(out)
        theta0 = summary["theta0"]
        if isinstance(theta0, dict):  # a large array: in summary.npz
            with np.load(tmp / f"out_{m}_{d}_{n}" / "summary.npz") as f:
                theta0 = f["theta0"]
        assert np.allclose(np.asarray(theta0), np.asarray(net.theta), atol=1e-13)
        run(cmd, env)  # fill the warm cache
        warm = [run(cmd, env)[0] for _ in range(args.repeats)]
        session = [
            json.loads(run([sys.executable, "-c", SESSION, str(data)], env)[1])
            for _ in range(args.repeats)
        ]
        # Through a server: the first command starts one (after its own run), the
        # next loads the programs into it, the ones after find them loaded.
        served = dict(env, MANIFOLDFLOW_SERVER="1")
        server_first, server_repeat = [], []
        for _ in range(args.repeats):
            run(cmd, served)
            _wait_for_server(launcher, served)
            server_first.append(run(cmd, served)[0])
            server_repeat.extend(run(cmd, served)[0] for _ in range(args.repeats))
            status = run([*launcher, "server", "stop"], served)[1]
            assert f"{1 + args.repeats} commands served" in status, status
        row["cli_cold_process_s"] = float(np.median(cold))
        row["cli_warm_process_s"] = float(np.median(warm))
        row["cli_server_first_s"] = float(np.median(server_first))
        row["cli_server_repeat_s"] = float(np.median(server_repeat))
        row["session_first_solve_s"] = float(np.median([r["first"] for r in session]))
        row["session_second_solve_s"] = float(np.median([r["second"] for r in session]))
        row["cli_checks_passed"] = summary["checks_passed"]
        row["cli_solve_seconds_reported"] = summary["solve_seconds"]

        row["solve_ratio_manifoldflow_over_scipy"] = (
            row["manifoldflow_solve_s"] / row["scipy_solve_s"]
        )
        scipy_process = row["scipy_process_s"]
        row["process_ratio_cold"] = row["cli_cold_process_s"] / scipy_process
        row["process_ratio_warm"] = row["cli_warm_process_s"] / scipy_process
        row["process_ratio_server_first"] = row["cli_server_first_s"] / scipy_process
        row["process_ratio_server_repeat"] = row["cli_server_repeat_s"] / scipy_process
        print(
            json.dumps({k: v for k, v in row.items() if k != "scipy"}, indent=1),
            flush=True,
        )
        rows.append(row)

    name = "time_to_stationarity_quick" if args.quick else "time_to_stationarity"
    path = write_json(name, dict(machine=machine(), rows=rows))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4))
    keys = [
        ("scipy_solve_s", "SciPy solve"),
        ("manifoldflow_solve_s", "mf solve"),
        ("scipy_process_s", "SciPy process"),
        ("cli_cold_process_s", "mf process cold"),
        ("cli_warm_process_s", "mf process warm"),
        ("cli_server_first_s", "mf via server\n(1st, warm)"),
        ("cli_server_repeat_s", "mf via server\n(repeat)"),
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
