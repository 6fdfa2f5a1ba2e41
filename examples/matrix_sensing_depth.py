"""Does depth bias the sharpness flow of matrix sensing towards low rank? Depth 2
against depth 3 over several cases (sizes and seeds), with too few measurements for
the minimum-nuclear-norm interpolant to be the truth.

For each case and depth: how the solve ended, the product's singular values beyond
the truth's rank (relative to the largest), its distance to the truth M, and its
nuclear norm over the convex minimum (cvxpy, the `convex` extra).

    python examples/matrix_sensing_depth.py [--quick] [--out DIR]

Writes matrix_sensing_depth.json to --out (default examples/results).
"""

import argparse
import json
import pathlib
import time

import jax


jax.config.update("jax_enable_x64", True)
import numpy as np
from manifoldflow.experiments import (
    DeepMatrixSensingExperiment,
    MatrixSensingExperiment,
)


RESULTS = pathlib.Path(__file__).parent / "results"
CASES = [(6, 1, n, seed) for n in (16, 20) for seed in range(4)] + [
    (8, 2, n, seed) for n in (40, 44) for seed in range(4)
]


def run(d, rank, n, seed, depth):
    experiment = (
        MatrixSensingExperiment() if depth == 2 else DeepMatrixSensingExperiment()
    )
    parser = argparse.ArgumentParser()
    experiment.add_arguments(parser)
    argv = ["--d", str(d), "--rank", str(rank), "--n", str(n), "--seed", str(seed)]
    if depth != 2:
        argv += ["--depth", str(depth)]
    problem = experiment.build(parser.parse_args(argv))
    result = experiment.run(problem, progress=False)
    singular = np.linalg.svd(result.W, compute_uv=False)
    nuclear = float(singular.sum())
    return dict(
        ending=result.solution.result_name,
        gradient_norm=float(result.solution.gradient_norm[-1]),
        tail_singular_values=(singular[rank:] / singular[0]).tolist(),
        distance_to_truth=float(
            np.linalg.norm(result.W - problem.M) / np.linalg.norm(problem.M)
        ),
        nuclear_over_minimum=None
        if result.optimum is None
        else nuclear / result.optimum - 1,
    )


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="one case only")
    args = parser.parse_args(argv)
    rows = []
    start = time.perf_counter()
    for d, rank, n, seed in CASES[4:5] if args.quick else CASES:
        row = dict(d=d, rank=rank, n=n, seed=seed)
        for depth in (2, 3):
            row[f"depth_{depth}"] = run(d, rank, n, seed, depth)
        rows.append(row)
        two, three = row["depth_2"], row["depth_3"]
        print(
            f"d={d} rank={rank} n={n} seed={seed}: largest tail sv "
            f"{two['tail_singular_values'][0]:.2e} (depth 2, {two['ending']}) vs "
            f"{three['tail_singular_values'][0]:.2e} (depth 3, {three['ending']}); "
            f"|W - M|/|M| {two['distance_to_truth']:.2e} vs "
            f"{three['distance_to_truth']:.2e}",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matrix_sensing_depth.json").write_text(
        json.dumps(dict(rows=rows, wall_seconds=time.perf_counter() - start), indent=1)
    )


if __name__ == "__main__":
    main()
