import json
import os
import subprocess
import sys

import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow import cli
from manifoldflow.experiments import EXPERIMENTS
from manifoldflow.models import CubicLinear


QUIET = ["--no-progress"]
SMALL = ["--m", "4", "--d", "6", "--n", "3", *QUIET]


# The runs with --polish: the flow stops at --t1, the polish goes on to stationarity.
# (Their runs without it: test_two_layer_command_writes_results, test_sparse.py,
# test_matrix_sensing.py; deep-linear's polish: test_deep_linear_trace_flow_...)
POLISH = {
    "two-layer": ["--t1", "0.5", "--polish"],
    "sparse-recovery": ["--t1", "1", "--polish"],
    "matrix-sensing": ["--t1", "0.5", "--polish"],
}


# real-data's one run is in test_real_data.py, with its numbers checked.
@pytest.mark.parametrize("name", sorted(set(EXPERIMENTS) - {"real-data"}))
def test_every_experiment_runs_at_a_tiny_size_and_writes_its_files(name, tmp_path):
    experiment = EXPERIMENTS[name]
    polish = POLISH.get(name, [])
    code = cli.main(
        [name, *experiment.example_arguments, *polish, *QUIET, "--out", str(tmp_path)]
    )
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["checks_passed"] is True
    if polish:
        checks = {c["name"]: c for c in summary["checks"]}
        assert checks["polish_stationary"]["result"] == "PASS"
        assert summary.get("polish_result") == "stationary" or all(
            run["polish_result"] == "stationary" for run in summary["runs"]
        )
    assert summary["checks"] and all("bound_text" in c for c in summary["checks"])
    if name != "bench":  # what a sweep records of the run: its headline scalars
        absent = [
            key
            for key in experiment.headline_keys
            if not isinstance(summary.get(key), (int, float))
        ]
        assert not absent, f"{name}: headline keys not numbers in its summary: {absent}"
    assert (tmp_path / "trajectory.npz").stat().st_size > 0
    assert (tmp_path / experiment.figure_name).stat().st_size > 10_000


def test_two_layer_command_writes_results(tmp_path, capsys):
    code = cli.main(["two-layer", *SMALL, "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["checks_passed"] is True and summary["result"] == "stationary"
    for key in [
        "m", "d", "n", "activation", "X", "y", "theta0", "theta_final", "t_final",
        "num_steps", "wall_seconds", "R_initial", "R_final", "R_star",
        "grad_norm_final", "constraint_violation_max", "optimum_distance",
        "rank_one_ratio", "linear_rate", "checks", "flow_constant",
    ]:  # fmt: skip
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
    z_star = np.asarray(CubicLinear().inverse(y / 4))
    assert np.max(np.abs(theta @ X.T - z_star)) <= 1e-8
    with np.load(tmp_path / "trajectory.npz") as f:
        assert f["gradient_norm"].shape == f["step_ts"].shape
        assert f["feature_singular_values"].shape[1] == 3


def test_large_arrays_go_to_an_npz_beside_the_summary(tmp_path):
    code = cli.main(
        [
            "two-layer",
            "--m",
            "20",
            "--d",
            "60",
            "--n",
            "4",
            *QUIET,
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["theta_final"] == {"in": "summary.npz", "shape": [20, 60]}
    with np.load(tmp_path / "summary.npz") as f:
        assert f["theta_final"].shape == (20, 60)
    assert np.asarray(summary["X"]).shape == (4, 60)  # 240 numbers: small


def test_two_layer_command_with_data_file_and_generic_path(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3, 5))
    y = np.array([1.0, -0.7, 1.3])
    np.savez(tmp_path / "data.npz", X=X, y=y)
    code = cli.main(
        ["two-layer", "--m", "3", "--data", str(tmp_path / "data.npz"), "--path",
         "generic", "--activation", "cube-beta", "--beta", "0.5", *QUIET,
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert code == 0 and summary["checks_passed"]
    assert (summary["n"], summary["d"]) == (3, 5)


def _bad_data(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((3, 5))
    y = np.array([1.0, -0.7, 1.3])
    nan = X.copy()
    nan[1, 2] = np.nan
    dependent = X.copy()
    dependent[2] = X[0] + 2 * X[1]
    cases = {
        "nan": (dict(X=nan, y=y), "non-finite"),
        "duplicated": (dict(X=X[[0, 1, 0]], y=y[[0, 1, 0]]), "linearly dependent"),
        "conflicting": (dict(X=X[[0, 1, 0]], y=y), "empty"),
        "dependent": (dict(X=dependent, y=y), "linearly dependent"),
        "lengths": (dict(X=X, y=y[:2]), r"y must have shape \(n,\) = \(3,\)"),
        "missing-array": (dict(X=X), "no array named y"),
    }
    paths = {}
    for name, (arrays, message) in cases.items():
        paths[name] = (tmp_path / f"{name}.npz", message)
        np.savez(paths[name][0], **arrays)
    (tmp_path / "text.npz").write_text("not an archive")
    paths["not-npz"] = (tmp_path / "text.npz", "not a NumPy .npz")
    paths["missing-file"] = (tmp_path / "absent.npz", "no such file")
    (tmp_path / "data.csv").write_text("x1,x2,y\n0.5,1.0,2.0\n")
    paths["csv"] = (tmp_path / "data.csv", r"text file \(CSV\?\).*numpy.loadtxt")
    return paths


def test_bad_data_files_give_exit_2_with_a_message(tmp_path, capsys):
    for name, (path, message) in _bad_data(tmp_path).items():
        code = cli.main(["two-layer", "--m", "3", "--data", str(path), *QUIET])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.startswith("manifoldflow two-layer: error: "), name
        assert len(err.strip().splitlines()) == 1, name
        assert __import__("re").search(message, err), (name, err)


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--m", "0"], "--m 0"),
        (["--n", "-1"], "--n -1"),
        (["--n", "8", "--d", "4"], "needs n <= d"),
        (["--a", "1,2"], "--a has 2 values but --m is 32"),
        (["--a", "x"], "one number or 32"),
        (["--activation", "cube-beta", "--beta", "0"], "--beta must be positive"),
        (["--rtol", "0"], "--rtol must be a positive number"),
        (["--max-steps", "0"], "--max-steps must be at least 1"),
        (["--init-scale", "-1"], "--init-scale must be >= 0"),
    ],
)
def test_bad_options_give_exit_2_with_a_message(arguments, message, capsys):
    assert cli.main(["two-layer", *arguments, *QUIET]) == 2
    assert message in capsys.readouterr().err


def test_an_unwritable_out_folder_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out in ("/proc/manifoldflow-test", blocker / "sub", blocker):
        assert cli.main(["two-layer", *SMALL, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and len(err.strip().splitlines()) == 1, err


def test_bad_input_leaves_no_empty_out_folder(tmp_path, capsys):
    out = tmp_path / "results"
    assert cli.main(["two-layer", "--m", "0", *QUIET, "--out", str(out)]) == 2
    assert not out.exists()


def test_unknown_options_point_at_the_subcommand_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["two-layer", "--bogus", "3", *QUIET])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --bogus 3" in err
    assert "see manifoldflow two-layer --help" in err


@pytest.mark.parametrize(
    "etas,words", [("0.04,0.04", "1 distinct value"), ("0.04,0.02,0.04", "repeats")]
)
def test_sgd_vs_flow_needs_distinct_step_sizes(etas, words, capsys):
    assert cli.main(["sgd-vs-flow", "--etas", etas, *QUIET]) == 2
    assert words in capsys.readouterr().err


def test_unknown_choice_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["two-layer", "--solver", "rk4", *QUIET])
    assert exit_info.value.code == 2
    assert "invalid choice: 'rk4'" in capsys.readouterr().err


def test_command_line_process_cache_and_clean_errors(tmp_path):
    env = dict(os.environ, MANIFOLDFLOW_CACHE_DIR=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "manifoldflow.cli", "two-layer", "--no-progress"]
    ok = subprocess.run(
        [*command, "--m", "3", "--d", "4", "--n", "2", "--activation", "cube",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ALL CHECKS PASSED" in ok.stdout
    assert any((tmp_path / "cache").iterdir())
    bad = subprocess.run(
        [*command, "--data", str(tmp_path / "absent.npz")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and "no such file" in bad.stderr
    debug = subprocess.run(
        [*command, "--data", str(tmp_path / "absent.npz"), "--debug"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert "Traceback" in debug.stderr and "InputError" in debug.stderr
    assert debug.returncode == 2  # --debug shows the traceback, keeps the exit code
    # A reader that has gone (e.g. `| head`) ends nothing with a traceback.
    gone = subprocess.Popen(
        [*command, "--m", "3", "--d", "4", "--n", "2", "--activation", "cube",
         "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    gone.stdout.close()
    assert gone.wait(timeout=600) == 0
    assert "Traceback" not in gone.stderr.read().decode()
    # The compilation cache folder is private; one that cannot be used is a warning.
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    unusable = subprocess.run(
        [*command, "--data", str(tmp_path / "absent.npz")],
        capture_output=True, text=True, timeout=600,
        env=dict(env, MANIFOLDFLOW_CACHE_DIR="/dev/null/cache"),
    )  # fmt: skip
    assert unusable.returncode == 2 and "Traceback" not in unusable.stderr
    warnings = [line for line in unusable.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "no compilation cache" in warnings[0]


def test_a_shared_cache_folder_is_not_used(tmp_path):
    from manifoldflow._jax_config import private_folder

    assert private_folder(tmp_path / "new" / "cache") is None
    assert (tmp_path / "new" / "cache").stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert "others can write" in private_folder(shared)
    (tmp_path / "file").write_text("")
    assert private_folder(tmp_path / "file") is not None


def test_import_brings_in_no_plotting_or_solver_packages():
    """`import manifoldflow` stays light: matplotlib, scipy and cvxpy are imported by
    the commands that use them."""
    code = (
        "import sys, manifoldflow; "
        "print(sorted(m for m in ('matplotlib', 'scipy', 'cvxpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_sgd_vs_flow_reports_the_distance_to_the_optimum(tmp_path):
    code = cli.main(
        ["sgd-vs-flow", "--etas", "0.04,0.02", "--seeds", "2", "--tau", "0.25"]
        + [*QUIET, "--out", str(tmp_path)]
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code in (0, 1)
    flow = summary["optimum_distance_flow"]
    assert flow > 0 and len(summary["optimum_distances_mean"]) == 2
    # Triangle inequality per seed: |d(SGD, opt) - d(flow, opt)| <= d(SGD, flow).
    for sgd, gap in zip(summary["optimum_distances_mean"], summary["distances_mean"]):
        assert abs(sgd - flow) <= gap * (1 + 1e-9)
    assert all(np.isfinite(summary["R_mean"]))


DEEP_SMALL = ["deep-linear", "--depth", "3", "--n", "20", "--d", "3", *QUIET]


def test_deep_linear_command_summary(tmp_path):
    code = cli.main([*DEEP_SMALL, "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["checks_passed"] is True and summary["converged"]
    for key in [
        "depth", "n", "d", "X", "y", "p", "weights_final", "a", "Lambda",
        "lambda_min", "S_final", "S_lower", "S_upper_balanced", "S_corollary2",
        "eta_crit", "balancedness_drift", "rank_one_ratios", "converged",
    ]:  # fmt: skip
        assert key in summary, key
    weights = [np.asarray(W) for W in summary["weights_final"]]
    assert [W.shape for W in weights] == [(3, 3), (3, 3), (1, 3)]
    X, y, p = (np.asarray(summary[k]) for k in ("X", "y", "p"))
    w_prod = np.linalg.multi_dot(weights[::-1]).T @ p
    # The summary's weights are a minimiser: w_prod is the least-squares solution.
    np.testing.assert_allclose(w_prod, np.linalg.lstsq(X, y, rcond=None)[0], atol=1e-7)
    assert summary["S_lower"] <= summary["S_final"] <= summary["S_corollary2"]


def test_deep_linear_diverging_descent_is_not_converged(tmp_path):
    code = cli.main(
        [*DEEP_SMALL, "--lr", "2.0", "--steps", "500", "--out", str(tmp_path)]
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 1 and summary["converged"] is False
    assert summary["checks_passed"] is False


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--depth", "0"], "--depth 0"),
        (["--init", "residual", "--width", "2"], "must equal --d"),
        (["--lr", "-1"], "--lr must be finite and > 0"),
        (["--scale", "-0.1"], "--scale must be finite and >= 0"),
        (["--zero-layer", "9"], "--zero-layer 9 must be a layer in 1..3"),
        (["--steps", "100"], "--steps is for gradient descent"),
    ],
)
def test_deep_linear_bad_options(arguments, message, capsys):
    assert cli.main([*DEEP_SMALL, *arguments]) == 2
    assert message in capsys.readouterr().err


def test_deep_linear_trace_flow_on_the_minimisers(tmp_path):
    code = cli.main([*DEEP_SMALL, "--trace-flow", "--polish", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["trace_flow_result"] == "stationary"
    # The trace flow and the polish end at the flattest rank-one minimiser, whose
    # trace is recomputed here from the data (Sigma = X^T X / n, w* = X^+ y).
    X, y = np.asarray(summary["X"]), np.asarray(summary["y"])
    Sigma, w = X.T @ X / len(y), np.linalg.lstsq(X, y, rcond=None)[0]
    a, L = w @ Sigma @ w / (w @ w), 3
    flattest = (
        2 * L * (w @ w) ** (1 - 1 / L) * (np.trace(Sigma) * a ** (L - 1)) ** (1 / L)
    )
    assert summary["trace_final"] == pytest.approx(flattest, rel=1e-9)
    assert summary["polish_R"] == pytest.approx(flattest, rel=1e-9)
    assert summary["polish_grad_norm"] <= 1e-10
    assert summary["trace_final"] <= summary["trace_initial"]
    assert summary["S_trace_flow"] >= summary["S_lower"] * (1 - 1e-9)
    # The flow stays on the minimisers: w_prod is still the least-squares solution.
    weights = [np.asarray(W) for W in summary["weights_trace_flow"]]
    X, y, p = (np.asarray(summary[k]) for k in ("X", "y", "p"))
    w_prod = np.linalg.multi_dot(weights[::-1]).T @ p
    np.testing.assert_allclose(w_prod, np.linalg.lstsq(X, y, rcond=None)[0], atol=1e-11)


def test_deep_linear_rank_deficient_data_names_the_assumption(tmp_path):
    args = ["deep-linear", "--depth", "3", "--n", "2", "--d", "3", "--trace-flow"]
    code = cli.main([*args, *QUIET, "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0
    assert "full-rank data covariance" in summary["assumption_failed"]
    assert summary["S_lower"] is None and "trace_final" not in summary
    checks = {c["name"]: c for c in summary["checks"]}
    assert checks["theorem_1_lower_bound"]["applicable"] is False
    assert "rank 2 < d = 3" in checks["theorem_1_lower_bound"]["note"]


def test_deep_linear_depth_one(tmp_path):
    code = cli.main(["deep-linear", "--depth", "1", *QUIET, "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["converged"] and summary["checks_passed"] is True


def test_deep_linear_saddle_is_not_a_minimiser(tmp_path):
    """From W = 0 gradient flow stays at the saddle: not converged, no bound checks
    failed on a non-minimiser."""
    code = cli.main([*DEEP_SMALL, "--scale", "0", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 1 and summary["converged"] is False
    assert "not a minimiser" in summary["how_it_ended"]
    checks = {c["name"]: c for c in summary["checks"]}
    # The ending row says the run is not accepted; no bound is checked against it.
    assert checks["ending"]["passed"] is False and "saddle" in checks["ending"]["note"]
    assert all(
        c["passed"] is not False for c in checks.values() if c is not checks["ending"]
    )


def test_deep_linear_corollary_2_needs_a_small_initialisation(tmp_path):
    code = cli.main([*DEEP_SMALL, "--scale", "1.5", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    checks = {c["name"]: c for c in summary["checks"]}
    assert code == 0 and checks["corollary_2_upper_bound"]["applicable"] is False
    assert "small initialisation" in checks["corollary_2_upper_bound"]["note"]
    assert summary["S_final_converged"] is True


@pytest.mark.parametrize(
    "argv,words",
    [
        (["bench", "--tolerances", "abc"], "comma-separated numbers"),
        (["bench", "--problems", "foo"], "unknown foo"),
        (["bench", "--solvers", "rk4"], "unknown rk4"),
        (["sparse-recovery", "--k", "100"], "at most d non-zeros"),
        (["sparse-recovery", "--n", "60"], "rank at most d"),
        (["bench", "--steps", "20"], "multiple of 16"),
        (["bench", "--seed", "-1"], "--seed must be"),
        (["matrix-sensing", "--n", "40"], "rank at most d^2"),
    ],
)
def test_bench_and_sparse_recovery_name_bad_options(argv, words, tmp_path, capsys):
    code = cli.main([*argv, *QUIET, "--out", str(tmp_path)])
    assert code == 2
    assert words in capsys.readouterr().err


def test_library_errors_carry_their_parameter_and_the_command_says_its_own_fix():
    """The command line rewrites no English: it replaces the fix of an error whose
    `parameter` it knows by its own options."""
    from manifoldflow.experiments._options import command_line_error

    from .helpers import two_layer_problem

    manifold = two_layer_problem(m=4, n=3, d=5, seed=2)[-1]
    far = 100.0 * np.asarray(manifold.initial_point())
    with pytest.raises(mf.InputError) as caught:
        mf.solve_flow(
            manifold, far, initial_retraction=mf.GaussNewtonRetraction(max_steps=2)
        )
    error = caught.value
    assert error.parameter == "initial_retraction"
    assert "ran out of steps" in error.problem and "max_steps" in error.fix
    said = str(command_line_error(error))
    assert said.startswith(error.problem) and "--init-scale" in said
    assert "max_steps" not in said
