import json
import os
import subprocess
import sys

import numpy as np
import pytest
from manifoldflow import cli


SMALL = ["--m", "4", "--d", "6", "--n", "3", "--no-progress", "--no-cache"]


def test_two_layer_command_writes_results(tmp_path, capsys):
    code = cli.main(["two-layer", *SMALL, "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["checks_passed"] is True
    for key in [
        "m",
        "d",
        "n",
        "activation",
        "X",
        "y",
        "theta0",
        "theta_final",
        "t_final",
        "num_steps",
        "wall_seconds",
        "R_initial",
        "R_final",
        "R_star",
        "grad_norm_final",
        "constraint_violation_max",
        "optimum_distance",
        "rank_one_ratio",
        "linear_rate",
        "checks",
    ]:
        assert key in summary, key
    assert np.asarray(summary["theta_final"]).shape == (4, 6)
    assert np.asarray(summary["X"]).shape == (3, 6)
    assert summary["grad_norm_final"] <= 1e-10
    assert summary["constraint_violation_max"] <= 1e-12
    assert abs(summary["R_final"] - summary["R_star"]) <= 1e-9 * summary["R_star"]
    assert summary["rank_one_ratio"] <= 1e-8
    assert summary["linear_rate"] > 0
    theta = np.asarray(summary["theta_final"])
    X, y = np.asarray(summary["X"]), np.asarray(summary["y"])
    from manifoldflow.models import CubicLinear

    z_star = np.asarray(CubicLinear().inverse(y / 4))
    assert np.max(np.abs(theta @ X.T - z_star)) <= 1e-8
    with np.load(tmp_path / "trajectory.npz") as f:
        assert f["gradient_norm"].shape == f["step_ts"].shape
        assert f["feature_singular_values"].shape[1] == 3
    assert (tmp_path / "convergence.png").stat().st_size > 10_000


def test_two_layer_command_with_data_file_and_generic_path(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3, 5))
    y = np.array([1.0, -0.7, 1.3])
    np.savez(tmp_path / "data.npz", X=X, y=y)
    code = cli.main(
        [
            "two-layer",
            "--m",
            "3",
            "--data",
            str(tmp_path / "data.npz"),
            "--path",
            "generic",
            "--activation",
            "cube-beta",
            "--beta",
            "0.5",
            "--no-progress",
            "--no-cache",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert code == 0 and summary["checks_passed"]
    assert (summary["n"], summary["d"]) == (3, 5)
    bad = X.copy()
    bad[0, 0] = np.inf
    np.savez(tmp_path / "bad.npz", X=bad, y=y)
    with pytest.raises(ValueError, match="non-finite"):
        cli.main(
            [
                "two-layer",
                "--m",
                "3",
                "--data",
                str(tmp_path / "bad.npz"),
                "--no-progress",
                "--no-cache",
                "--out",
                str(tmp_path / "bad"),
            ]
        )


def test_command_line_process_and_compilation_cache(tmp_path):
    env = dict(os.environ, MANIFOLDFLOW_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "manifoldflow.cli",
            "two-layer",
            "--m",
            "3",
            "--d",
            "4",
            "--n",
            "2",
            "--activation",
            "cube",
            "--no-progress",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALL CHECKS PASSED" in result.stdout
    assert any((tmp_path / "cache").iterdir())
