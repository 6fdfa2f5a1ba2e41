"""A sweep of small two-layer problems, `manifoldflow sweep` against a shell loop of
the same commands.

4 widths (m = 4, 8, 16, 32) x `--seeds` seeds at d = 16, n = 8: 4 groups of runs of
one shape, each solved as one batch. Timed as a user waits (whole commands, a fresh
compilation cache in a private folder for each variant, so that the first command
of each compiles):
- `manifoldflow sweep` with a local Dask cluster of 1 and of 2 worker processes;
- the shell loop: `--loop` of the 4 x seeds commands (`manifoldflow two-layer ...
  --out DIR`, one process each, chosen evenly over the widths and seeds), whose
  median time per command is multiplied by the number of runs (the whole loop takes
  about half an hour on this machine).

    python benchmarks/sweep.py [--seeds 64] [--loop 8]

Writes benchmarks/results/sweep.json and .png.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import machine, RESULTS, write_json


WIDTHS = (4, 8, 16, 32)


def timed(argv, cache):
    env = dict(os.environ, MANIFOLDFLOW_CACHE_DIR=cache)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--loop", type=int, default=8)
    args = parser.parse_args()
    runs = len(WIDTHS) * args.seeds
    work = tempfile.mkdtemp(prefix="manifoldflow-sweep-bench-")
    toml = os.path.join(work, "sweep.toml")
    with open(toml, "w") as file:
        file.write(
            'experiment = "two-layer"\n[fixed]\nd = 16\nn = 8\n[grid]\n'
            f"m = {list(WIDTHS)}\nseed = {list(range(args.seeds))}\n"
        )
    command = [sys.executable, "-m", "manifoldflow.cli"]
    sweeps = {}
    for workers in (1, 2):
        out = os.path.join(work, f"sweep-{workers}")
        sweeps[workers] = timed(
            command + ["sweep", toml, "--out", out, "--workers", str(workers)],
            os.path.join(work, f"cache-sweep-{workers}"),
        )
        with open(os.path.join(out, "runs.jsonl")) as file:
            records = [json.loads(line) for line in file]
        assert len(records) == runs and all(r["checks_passed"] for r in records)
        assert all(r["batched"] for r in records)
    loop = []
    cache = os.path.join(work, "cache-loop")
    for k in range(args.loop):
        m, seed = WIDTHS[k % len(WIDTHS)], (k * 7) % args.seeds
        out = os.path.join(work, f"loop-{k}")
        loop.append(
            timed(
                command
                + ["two-layer", "--m", str(m), "--d", "16", "--n", "8"]
                + ["--seed", str(seed), "--out", out, "--no-progress"],
                cache,
            )
        )
    per_command = float(np.median(loop))
    row = dict(
        machine=machine(),
        runs=runs,
        widths=list(WIDTHS),
        seeds=args.seeds,
        sweep_1_worker_s=sweeps[1],
        sweep_2_workers_s=sweeps[2],
        speedup_1_to_2_workers=sweeps[1] / sweeps[2],
        loop_commands_timed=args.loop,
        loop_per_command_s=loop,
        loop_per_command_median_s=per_command,
        loop_projected_s=per_command * runs,
        speedup_vs_loop_1_worker=per_command * runs / sweeps[1],
        speedup_vs_loop_2_workers=per_command * runs / sweeps[2],
    )
    write_json("sweep", row)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.8))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    names = [
        "sweep\n1 worker",
        "sweep\n2 workers",
        f"shell loop\n({args.loop} timed, x{runs // args.loop})",
    ]
    values = [sweeps[1], sweeps[2], per_command * runs]
    ax.bar(names, values, color=["C0", "C0", "C2"])
    for x, v in enumerate(values):
        ax.text(x, v, f"{v:.0f} s", ha="center", va="bottom")
    ax.set(
        ylabel="wall seconds",
        title=f"{runs} two-layer runs (m in {list(WIDTHS)}, d=16, n=8)",
    )
    figure.tight_layout()
    figure.savefig(RESULTS / "sweep.png", dpi=100)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in row.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
