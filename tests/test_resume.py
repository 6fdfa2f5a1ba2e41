"""Checkpoints: a solve killed with SIGKILL and resumed ends bit for bit as the
uninterrupted one; a truncated checkpoint or one of another solve is refused."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow import cli

from .helpers import two_layer_problem


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = ["--m", "6", "--d", "12", "--n", "6", "--stationarity", "1e-11"]
# The same command, each window of the solve slowed by 0.3 s (timing only: the
# numbers are those of the plain command), so that it is surely killed mid-solve.
SLOWED = textwrap.dedent(
    """
    import sys, time
    import manifoldflow._solve as solve
    run = solve._run
    def slow(*args):
        time.sleep(0.3)
        return run(*args)
    slow.lower = run.lower  # the checkpoint's key lowers the same program
    solve._run = slow
    from manifoldflow import cli
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def _command(args):
    return subprocess.run(
        [sys.executable, "-m", "manifoldflow.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_killed_run_resumes_to_the_same_bits(tmp_path, capsys):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    common = ["--no-progress"]
    # The reference, in this process (the same program: the same bits).
    assert cli.main(["two-layer", *OPTIONS, *common, "--out", str(whole)]) == 0
    assert not (whole / cli.CHECKPOINT).exists()  # removed once the run is complete

    process = subprocess.Popen(
        [sys.executable, "-c", SLOWED, "two-layer", *OPTIONS, *common]
        + ["--out", str(killed)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = killed / cli.CHECKPOINT
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.4)  # one or two windows more
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert checkpoint.exists() and not (killed / "summary.json").exists()

    # A fresh command on that folder does not silently overwrite the checkpoint.
    capsys.readouterr()
    assert cli.main(["two-layer", *OPTIONS, *common, "--out", str(killed)]) == 2
    assert "--resume" in capsys.readouterr().err

    resumed = _command(["two-layer", "--resume", str(killed), *common])
    assert resumed.returncode == 0, resumed.stderr
    steps = json.loads((whole / "summary.json").read_text())["num_steps"]
    assert steps > 20  # the kill came mid-solve, after the first windows
    with (
        np.load(whole / "trajectory.npz") as a,
        np.load(killed / "trajectory.npz") as b,
    ):
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    first = json.loads((whole / "summary.json").read_text())
    second = json.loads((killed / "summary.json").read_text())
    for key in ("theta_final", "R_final", "t_final", "num_rejected_steps"):
        assert first[key] == second[key], key


def test_resume_refuses_another_experiment_and_other_options(tmp_path, capsys):
    run = tmp_path / "run"
    (run).mkdir()
    (run / cli.RUN_FILE).write_text(
        json.dumps(dict(experiment="matrix-sensing", options={}, manifoldflow="0"))
    )
    assert cli.main(["two-layer", "--resume", str(run)]) == 2
    assert "holds a run of matrix-sensing" in capsys.readouterr().err
    assert (
        cli.main(["matrix-sensing", "--resume", str(run), "--d", "4"])
        == 2
    )
    assert "remove --d" in capsys.readouterr().err
    assert cli.main(["two-layer", "--resume", str(tmp_path)]) == 2
    assert "not the output folder" in capsys.readouterr().err


def test_a_truncated_or_foreign_checkpoint_is_refused(tmp_path):
    *_, manifold = two_layer_problem(m=4, n=3, d=6)
    path = tmp_path / "solve.mfck"
    whole = mf.solve_flow(manifold, checkpoint=path, stationarity=1e-11)
    # Whole and of this solve: the finished solve comes back from it.
    again = mf.solve_flow(manifold, checkpoint=path, stationarity=1e-11)
    np.testing.assert_array_equal(again.sharpness, whole.sharpness)
    with pytest.raises(mf.InputError, match="the options differ"):
        mf.solve_flow(manifold, checkpoint=path, stationarity=1e-10)
    other = two_layer_problem(m=4, n=3, d=6, seed=1)[-1]
    with pytest.raises(mf.InputError, match="the manifold .* differ"):
        mf.solve_flow(other, checkpoint=path, stationarity=1e-11)
    data = path.read_bytes()
    for broken in (data[: len(data) // 2], data[:-1] + bytes([data[-1] ^ 1]), b"x"):
        path.write_bytes(broken)
        with pytest.raises(mf.InputError, match="truncated or corrupt"):
            mf.solve_flow(manifold, checkpoint=path, stationarity=1e-11)
