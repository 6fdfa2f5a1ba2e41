"""Nothing silently wrong, nothing lost: every bad input a clear error (the API's
catalogue in `bad_inputs.py`, the command line's here), a sweep's journal that
survives a torn line, stray lines, a second sweep and kill -9, and a checkpointed
solve killed at random points that resumes to the same bits."""

import json
import pathlib
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow import cli, sweeps


ROOT = pathlib.Path(__file__).resolve().parents[1]
QUIET = ["--no-progress"]


def test_every_bad_api_input_is_an_input_error():
    # In a process of its own, as a user's program runs (without the suite's
    # run-time type checks, which would answer first for arguments of wrong types).
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "bad_inputs.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(outcomes) >= 80
    wrong = [
        f"{o['name']}: {o['type']}: {o['message'][:300]}"
        for o in outcomes
        if o["type"] != "InputError" or not re.search(o["pattern"], o["message"])
    ]
    assert not wrong, "\n".join(wrong)


def _toml(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


SWEEP_HEAD = 'experiment = "two-layer"\n[fixed]\nd = 6\nn = 3\n'

# (arguments, words of the message); {tmp} is a fresh folder. Exit code 2 and one
# line (argparse's usage errors: its usage line and the error).
CLI_CASES = [
    (["two-layer", "--m", "0"], "--m 0"),
    (["two-layer", "--m", "2.5"], "invalid int value"),
    (["two-layer", "--n", "-1"], "--n -1"),
    (["two-layer", "--d", "0"], "--d"),
    (["two-layer", "--n", "8", "--d", "4"], "needs n <= d"),
    (["two-layer", "--rtol", "0"], "--rtol must be a positive number"),
    (["two-layer", "--rtol", "abc"], "invalid"),
    (["two-layer", "--atol", "-1"], "--atol"),
    (["two-layer", "--max-steps", "0"], "--max-steps must be at least 1"),
    (["two-layer", "--max-steps", "10.5"], "invalid int value"),
    (["two-layer", "--stationarity", "-1"], "--stationarity"),
    (["two-layer", "--t1", "-1"], "--t1"),
    (["two-layer", "--t1", "nan"], "--t1"),
    (["two-layer", "--init-scale", "-1"], "--init-scale must be >= 0"),
    (["two-layer", "--a", "x"], "one number or"),
    (["two-layer", "--a", "1,2"], "--a has 2 values"),
    (["two-layer", "--activation", "cube-beta", "--beta", "0"], "--beta must be positive"),
    (["two-layer", "--activation", "relu"], "invalid choice"),
    (["two-layer", "--solver", "rk4"], "invalid choice"),
    (["two-layer", "--projector", "lu"], "invalid choice"),
    (["two-layer", "--data", "{tmp}/missing.npz"], "missing.npz"),
    (["two-layer", "--out", "/proc/manifoldflow-test"], "--out"),
    (["two-layer", "--resume", "{tmp}/nothing-here"], "nothing-here"),
    (["two-layer", "--bogus", "3"], "unrecognized arguments"),
    (["deep-linear", "--depth", "0"], "--depth 0"),
    (["deep-linear", "--lr", "-1"], "--lr must be finite and > 0"),
    (["deep-linear", "--scale", "-0.1"], "--scale must be finite and >= 0"),
    (["deep-linear", "--zero-layer", "99"], "--zero-layer 99"),
    (["matrix-sensing", "--n", "40"], "rank at most d^2"),
    (["matrix-sensing", "--rank", "0"], "--rank"),
    (["sparse-recovery", "--k", "100"], "at most d non-zeros"),
    (["sparse-recovery", "--starts", "0"], "--starts"),
    (["real-data", "--width", "0"], "--width"),
    (["real-data", "--etas", "abc"], "--etas must be comma-separated numbers"),
    (["real-data", "--etas", "-0.1"], "--etas must be positive"),
    (["real-data", "--dataset", "nope"], "is not a dataset"),
    (["real-data", "--n-train", "0"], "--n-train"),
    (["sgd-vs-flow", "--etas", "0.04,0.04"], "1 distinct value"),
    (["sgd-vs-flow", "--seeds", "0"], "--seeds"),
    (["bench", "--tolerances", "abc"], "comma-separated numbers"),
    (["bench", "--solvers", "rk4"], "unknown rk4"),
    (["bench", "--steps", "20"], "multiple of 16"),
    (["sweep", "{tmp}"], "is a folder, not a sweep file"),
    (["sweep", "{tmp}/missing.toml"], "no such file"),
    (["sweep", "@experiment = \n"], "is not valid TOML"),
    (["sweep", '@experiment = "two-layer"\n[grid]\n'], "[grid] is empty"),
    (["sweep", '@experiment = "two-layer"\n[grid]\nm = []\n'], "grid m is empty"),
    (["sweep", '@experiment = "two-layer"\n[grid]\nm = [4, 8.5]\n'], "is not an integer"),
    (["sweep", '@experiment = "two-layer"\n[fixed]\nmm = 3\n'], "unknown option 'mm'"),
    (["sweep", '@experiment = "bench"\n'], "is not one of"),
    (["sweep", '@experiment = 3\n'], "is not one of"),
    (["sweep", '@experiment = "two-layer"\nmax_runs = 0\n'], "max_runs = 0 must be"),
    (["sweep", '@experiment = "two-layer"\nmax_runs = 2\n[grid]\nm = [4, 5, 6]\n'], "3 runs"),
    (["sweep", '@experiment = "two-layer"\n[grid]\nm = [4, 5]\nseed = ' + str(list(range(600))) + "\n"], "1,200 runs"),
    (["sweep", '@experiment = "two-layer"\n[grids]\nm = [4]\n'], "unknown key 'grids'"),
    (["sweep", '@experiment = "two-layer"\n', "--workers", "0"], "--workers must be at least 1"),
]


@pytest.mark.parametrize("arguments, words", CLI_CASES, ids=lambda v: str(v)[:60])
def test_every_bad_command_line_is_exit_2_and_one_message(
    arguments, words, tmp_path, capsys
):
    argv = []
    for a in arguments:
        if a.startswith("@"):  # a sweep file of this text
            a = _toml(tmp_path, a[1:])
        argv.append(a.replace("{tmp}", str(tmp_path)))
    if argv[0] != "sweep" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    if argv[0] == "sweep":
        argv += ["--out", str(tmp_path / "sweep-out")]
    try:
        code = cli.main(argv + ([] if argv[0] == "sweep" else QUIET))
    except SystemExit as exit_:  # argparse: its usage and the error
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert words in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 or (len(lines) >= 2 and lines[0].startswith("usage:")), err
    assert not (tmp_path / "sweep-out").exists()


def test_flow_solve_checks_traced_input_in_the_program():
    from .helpers import two_layer_problem

    manifold = two_layer_problem(m=4, n=3, d=6)[-2]
    solve = jax.jit(
        lambda t1, c: mf.flow_solve(manifold, t0=1.0, t1=t1, constant=c, max_steps=50)
    )
    backwards = solve(jnp.asarray(0.5), jnp.asarray(1.0))
    negative = solve(jnp.asarray(2.0), jnp.asarray(-1.0))
    fine = solve(jnp.asarray(1.2), jnp.asarray(1.0))
    for bad in (backwards, negative):
        assert bad.result_name == "invalid_input"
        assert int(bad.num_steps) == 0
    assert fine.result_name in ("t1_reached", "stationary")
    assert int(fine.num_steps) > 0


# ---------------------------------------------------------------------------------
# The sweep's journal.

SWEEP = SWEEP_HEAD + "stationarity = 1e-11\n[grid]\nm = [4]\nseed = [0, 1, 2]\n"


def _records(out):
    return [json.loads(line) for line in (out / sweeps.RUNS_FILE).read_text().splitlines()]


def _sweep(file, out, *extra):
    return cli.main(["sweep", file, "--out", str(out), *extra])


def test_a_torn_and_stray_lines_lose_and_double_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # one process: fast
    file, out = _toml(tmp_path, SWEEP), tmp_path / "out"
    assert _sweep(file, out) == 0
    whole = _records(out)
    assert len(whole) == 3
    journal = out / sweeps.RUNS_FILE
    lines = journal.read_text().splitlines(keepends=True)
    # Stray lines (not run records) and a torn last line: a crash mid-write.
    stray = ['{"id": 5}\n', "[1, 2]\n", "not json\n", '{"id": "x", "status": "odd"}\n']
    torn = lines[-1][: len(lines[-1]) // 2]
    journal.write_text("".join(lines[:2] + stray) + torn)
    with pytest.warns(sweeps.JournalWarning) as caught:
        loaded = sweeps.load(out, as_frame=False)
    assert len(loaded) == 2 and len(caught) == 5  # four stray lines and the torn one
    capsys.readouterr()
    assert _sweep(file, out) == 0  # the torn run is run again, the rest skipped
    err = capsys.readouterr().err
    assert "cut short" in err and err.count("not a run record") == 4
    assert "2 already in" in err and "1 to run" in err
    with pytest.warns(sweeps.JournalWarning):
        records = sweeps.load(out, as_frame=False)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in whole)
    # Every line is whole again (the fragment was cut off, not appended onto).
    raw = journal.read_text()
    assert raw.endswith("\n") and torn not in raw.splitlines()
    again = {r["id"]: r for r in records}
    for record in whole:
        assert again[record["id"]]["R_final"] == pytest.approx(record["R_final"], rel=1e-9)


def test_a_second_sweep_is_refused_at_once_or_waits(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)
    out = tmp_path / "out"
    out.mkdir()
    # Another process holds the folder's lock for a few seconds, as a sweep does.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, sys, time; from manifoldflow._journal import FolderLock; "
            "lock = FolderLock(pathlib.Path(sys.argv[1])); print('held', flush=True); "
            "time.sleep(8)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    watchdog = threading.Timer(120, holder.kill)
    watchdog.start()
    try:
        assert holder.stdout.readline().strip() == "held"
        file = _toml(tmp_path, SWEEP)
        assert _sweep(file, out) == 2
        assert holder.poll() is None  # refused at once: the holder still holds it
        err = capsys.readouterr().err
        assert "Another sweep is running into" in err and f"pid {holder.pid}" in err
        assert not (out / sweeps.RUNS_FILE).exists()
        # With --wait it says so, starts when the other ends, and runs everything.
        assert _sweep(file, out, "--wait") == 0
        err = capsys.readouterr().err
        assert "waiting for the sweep running into" in err
        assert holder.poll() is not None  # it started after the holder ended
    finally:
        watchdog.cancel()
        holder.kill()
        holder.wait()
    ids = [r["id"] for r in _records(out)]
    assert len(ids) == len(set(ids)) == 3


SLOW_SWEEP = textwrap.dedent(
    """
    import sys, time
    import manifoldflow.commands.sweep as sweep
    group = sweep.run_group
    def slow(*args):
        time.sleep(0.2)
        return group(*args)
    sweep.run_group = slow
    sys.modules["distributed"] = None
    from manifoldflow import cli
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def test_a_sweep_killed_at_random_points_records_every_run_once(tmp_path):
    # Each run its own group (m differs): a kill lands between or inside records.
    text = SWEEP_HEAD + "stationarity = 1e-11\n[grid]\nm = [4, 5, 6]\n"
    file, out = _toml(tmp_path, text), tmp_path / "out"
    argv = [sys.executable, "-c", SLOW_SWEEP, "sweep", file, "--out", str(out)]
    rng = random.Random(0)
    # The suite's private compilation cache (MANIFOLDFLOW_CACHE_DIR): later tries
    # start fast, so the kills land among the runs.
    journal = out / sweeps.RUNS_FILE
    for attempt in range(2):
        before = len(journal.read_bytes()) if journal.exists() else 0
        process = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120  # until this try has recorded something
        while process.poll() is None and time.monotonic() < deadline:
            if journal.exists() and len(journal.read_bytes()) > before:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = _records(out)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 3  # every run recorded, once
    assert sorted(r["options"]["m"] for r in records) == [4, 5, 6]
    assert all(r["status"] == "finished" and r["checks_passed"] for r in records)


def test_a_huge_grid_is_counted_at_once_and_refused_without_yes(tmp_path, capsys):
    from manifoldflow.commands.sweep import plan


    # 10^6 runs over six axes: counted (a product), not built.
    axes = {
        "m": list(range(4, 14)),
        "seed": list(range(10)),
        "d": list(range(6, 16)),
        "n": list(range(1, 11)),
        "init-scale": [0.1 * k for k in range(1, 11)],
        "stationarity": [10.0**-k for k in range(6, 16)],
    }
    grid = "\n".join(f"{k} = {v}" for k, v in axes.items())
    file = _toml(tmp_path, f'experiment = "two-layer"\n[grid]\n{grid}\n')
    start = time.perf_counter()
    assert plan(pathlib.Path(file)).count == 10**6
    assert time.perf_counter() - start < 3.0  # building them would take minutes
    assert _sweep(file, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "1,000,000 runs" in err and "--yes" in err and "max_runs" in err
    assert "about" in err  # the estimated time
    assert not (tmp_path / "out").exists()
    # One long axis: every value checked, quickly (no per-value search of the file).
    seeds = list(range(200_000))
    long_axis = _toml(tmp_path, f'experiment = "two-layer"\n[grid]\nseed = {seeds}\n', "long.toml")
    start = time.perf_counter()
    assert plan(pathlib.Path(long_axis)).count == 200_000
    assert time.perf_counter() - start < 15.0  # a search per value: ~1,000 s


# ---------------------------------------------------------------------------------
# A checkpointed solve, killed at random points.

SOLVE = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from manifoldflow._jax_config import configure_jax
    configure_jax(cache=True)  # the suite's private cache: later tries start fast
    import manifoldflow as mf
    import manifoldflow._solve as solve
    sys.path.insert(0, sys.argv[3])
    from tests.helpers import two_layer_problem
    run = solve._run
    def slow(*args):  # timing only: each window 0.15 s longer
        time.sleep(0.15)
        return run(*args)
    slow.lower = run.lower  # the checkpoint's key lowers the same program
    if sys.argv[2] == "slow":
        solve._run = slow
    manifold = two_layer_problem(m=6, n=5, d=10)[-2]
    solution = mf.solve_flow(manifold, stationarity=1e-12, window=4,
                             checkpoint=sys.argv[1] + ".mfck")
    np.savez(sys.argv[1], sharpness=solution.sharpness, theta=solution.theta_final,
             steps=solution.num_steps)
    """
)


def test_a_checkpointed_solve_killed_at_random_points_ends_on_the_same_bits(tmp_path):
    def command(name, mode):
        return [sys.executable, "-c", SOLVE, str(tmp_path / name), mode, str(ROOT)]

    reference = subprocess.run(command("whole", "fast"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr
    checkpoint = tmp_path / "killed.mfck"
    rng = random.Random(1)
    kills = 0
    for _ in range(4):
        before = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        process = subprocess.Popen(
            command("killed", "slow"), cwd=ROOT, stderr=subprocess.DEVNULL
        )
        # Once this process has written a checkpoint, kill it at a random point:
        # mid-window, mid-write or between the two.
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if checkpoint.exists() and checkpoint.stat().st_mtime_ns != before:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if (tmp_path / "killed.npz").exists():
            break  # it finished first
        kills += 1
        assert checkpoint.exists()
    assert kills >= 2
    resumed = subprocess.run(command("killed", "fast"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    with np.load(tmp_path / "whole.npz") as a, np.load(tmp_path / "killed.npz") as b:
        assert int(a["steps"]) > 40  # long enough to be killed mid-solve
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("where", ["solve", "label-noise GD"])
def test_real_data_after_ctrl_c_skips_its_remaining_phases(where, tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from manifoldflow import _solve
    from manifoldflow.experiments import EXPERIMENTS, real_data

    run, calls = _solve._run, []

    def interrupt_on_second_window(*args):
        calls.append(run(*args))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return calls[-1]

    interrupt_on_second_window.lower = run.lower

    def never(*args, **kwargs):
        raise AssertionError("a phase ran after Ctrl-C")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "solve":
        monkeypatch.setattr(_solve, "_run", interrupt_on_second_window)
        monkeypatch.setattr(real_data, "simulate", never)
        monkeypatch.setattr(mf, "hessian_max_eigenvalue", never)
    else:  # the flow is whole; Ctrl-C in the first label-noise run
        monkeypatch.setattr(real_data, "simulate", interrupt)
    args = list(EXPERIMENTS["real-data"].example_arguments)
    code = cli.main(["real-data", *args, *QUIET, "--out", str(tmp_path)])
    assert code == 130
    summary = json.loads((tmp_path / "summary.json").read_text())
    expected = "interrupted" if where == "solve" else "t1_reached"
    assert summary["result"] == expected
    assert summary["skipped_after_interrupt"] == ["lambda_max (Lanczos)", "label-noise GD"]
    assert summary["sgd"] == [] and len(summary["along_flow"]) >= 2


def test_ctrl_c_stops_a_sweep_on_dask_with_one_line(tmp_path):
    pytest.importorskip("distributed")
    text = SWEEP_HEAD + "stationarity = 1e-11\n[grid]\nm = [4, 5, 6, 7, 8, 9]\n"
    file, out = _toml(tmp_path, text), tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "manifoldflow.cli", "sweep", file, "--out", str(out)]
        + ["--workers", "2"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(180, process.kill)  # a hang fails, it does not stall
    watchdog.start()
    lines = []
    for line in process.stderr:  # until the workers are running
        lines.append(line)
        if " running, " in line:
            break
    process.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, rest = process.communicate(timeout=60)
    watchdog.cancel()
    err = "".join(lines) + rest
    assert process.returncode == 130, err
    assert time.monotonic() - start < 30
    assert "Traceback" not in err, err
    # After the progress lines, one line: the interruption.
    assert rest.strip().splitlines()[-1].startswith("sweep interrupted"), err
    assert len([l for l in rest.strip().splitlines() if not l.startswith("  [")]) == 1, err


def test_ctrl_c_stops_a_sweep_in_one_process_and_records_no_interrupted_run(
    tmp_path, monkeypatch, capsys
):
    # Without Dask the runs go in this process, and Ctrl-C reaches a run's solve,
    # which returns what it had: that run is not recorded as finished.
    from manifoldflow import _solve

    monkeypatch.setitem(sys.modules, "distributed", None)
    run, starts = _solve._run, []

    def interrupt_in_the_second_run(integrator, state, *args):
        # In the first window of the second solve (Ctrl-C before any record of it).
        starts.append(int(state.num_accepted) == 0)
        if sum(starts) == 2:
            raise KeyboardInterrupt
        return run(integrator, state, *args)

    interrupt_in_the_second_run.lower = run.lower
    monkeypatch.setattr(_solve, "_run", interrupt_in_the_second_run)
    text = SWEEP_HEAD + "stationarity = 1e-11\n[grid]\nm = [4, 5, 6]\n"
    file, out = _toml(tmp_path, text), tmp_path / "out"
    assert _sweep(file, out) == 130
    err = capsys.readouterr().err
    assert "sweep interrupted" in err and "Traceback" not in err
    records = _records(out)
    assert len(records) == 1  # the run before; not the interrupted one
    assert records[0]["status"] == "finished" and records[0]["result"] == "stationary"
    monkeypatch.setattr(_solve, "_run", run)
    assert _sweep(file, out) == 0  # the rest, run once each
    assert sorted(r["options"]["m"] for r in _records(out)) == [4, 5, 6]


def test_ctrl_c_in_the_first_window_returns_the_initial_point(monkeypatch):
    from manifoldflow import _batch, _solve

    from .helpers import two_layer_problem

    manifold = two_layer_problem(m=4, n=3, d=6)[-2]

    def interrupt(*args):
        raise KeyboardInterrupt

    interrupt.lower = _solve._run.lower
    monkeypatch.setattr(_solve, "_run", interrupt)
    single = mf.solve_flow(manifold)
    assert single.result_name == "interrupted" and single.num_steps == 0
    assert single.sharpness.shape == (1,) and np.isfinite(single.sharpness[0])
    monkeypatch.setattr(_batch, "_window", interrupt)
    theta = np.asarray(manifold.initial_point())
    many = mf.solve_flows(manifold, np.stack([theta, theta]))
    assert many.results == ["interrupted", "interrupted"]
    assert all(s.num_steps == 0 and s.sharpness.shape == (1,) for s in many)
