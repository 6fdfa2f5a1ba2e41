"""The command's launcher and its resident server: the key that decides which
server may run a command, the opt-outs, and a command run through a server giving
what it gives in its own process."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import _manifoldflow_launcher as launcher
import pytest


def test_key_follows_the_environment_that_matters(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.delenv("UNRELATED_SETTING", raising=False)
    key = launcher.server_key()
    assert launcher.server_key() == key
    monkeypatch.setenv("UNRELATED_SETTING", "1")
    assert launcher.server_key() == key
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert launcher.server_key() != key
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    assert launcher.server_key() != key


def test_opt_outs(monkeypatch, tmp_path):
    monkeypatch.setenv("MANIFOLDFLOW_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MANIFOLDFLOW_SERVER", "1")
    assert launcher.server_enabled(["two-layer"])
    assert not launcher.server_enabled(["two-layer", "--no-server"])
    assert not launcher.server_enabled(["two-layer", "--no-cache"])
    for off in ("0", "off", "no"):
        monkeypatch.setenv("MANIFOLDFLOW_SERVER", off)
        assert not launcher.server_enabled(["two-layer"])


def test_a_shared_folder_gets_no_server(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "manifoldflow").mkdir(mode=0o700)
    assert launcher.server_directory() == tmp_path / "manifoldflow"
    (tmp_path / "manifoldflow").chmod(0o770)
    assert launcher.server_directory() is None
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert launcher.server_directory() == tmp_path / f"manifoldflow-{os.getuid()}"


def _short_folder() -> pathlib.Path:
    """A new private folder with a short path (a socket's is limited to about 100
    bytes; $TMPDIR may be long)."""
    return pathlib.Path(tempfile.mkdtemp(prefix="mf", dir="/tmp"))


def _command(*arguments, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "_manifoldflow_launcher", *arguments],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )  # fmt: skip


def _status(env, cwd) -> str:
    return _command("server", "status", env=env, cwd=cwd).stdout


@pytest.mark.skipif(os.name != "posix", reason="servers need Unix sockets")
def test_a_command_through_the_server_is_the_command(tmp_path):
    runtime = _short_folder()
    env = dict(
        os.environ,
        MANIFOLDFLOW_SERVER="1",
        MANIFOLDFLOW_CACHE_DIR=str(tmp_path / "cache"),
        MANIFOLDFLOW_SERVER_IDLE="300",
        XDG_RUNTIME_DIR=str(runtime),
    )
    small = ("two-layer", "--m", "3", "--d", "4", "--n", "2", "--activation", "cube")
    quiet = ("--no-progress", "--json")
    try:
        # In this process (no server yet), which then starts one.
        first = _command(*small, *quiet, "--out", "first", env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        deadline = time.time() + 300
        while "commands served" not in _status(env, tmp_path):
            assert time.time() < deadline, "no server came up"
            time.sleep(0.5)
        assert "0 commands served" in _status(env, tmp_path)
        # Through the server: relative paths from the command's folder, the same
        # results, output on the same streams, the exit code.
        second = _command(*small, *quiet, "--out", "second", env=env, cwd=tmp_path)
        assert second.returncode == 0, second.stderr
        assert "1 commands served" in _status(env, tmp_path)
        assert "ALL CHECKS PASSED" in second.stderr
        printed = json.loads(second.stdout)
        files = [
            json.loads((tmp_path / name / "summary.json").read_text())
            for name in ("first", "second")
        ]
        assert printed == files[1]
        timing = ("wall_seconds", "solve_seconds")
        for key in files[0]:
            if key not in timing:
                assert files[1][key] == files[0][key], key
        assert (tmp_path / "second" / "convergence.png").stat().st_size > 0
        # Bad input: a message and exit code 2, no traceback; the server stays.
        bad = _command(*small, "--data", "absent.npz", env=env, cwd=tmp_path)
        assert bad.returncode == 2
        assert "no such file" in bad.stderr and "Traceback" not in bad.stderr
        assert "2 commands served" in _status(env, tmp_path)
        # --no-server runs here, leaving the server idle.
        here = _command(*small, *quiet, "--no-server", "--out", "third", env=env,
                        cwd=tmp_path)  # fmt: skip
        assert here.returncode == 0, here.stderr
        assert "2 commands served" in _status(env, tmp_path)
    finally:
        stopped = _command("server", "stop", env=env, cwd=tmp_path)
    assert "stopped" in stopped.stdout
    deadline = time.time() + 60
    while list((runtime / "manifoldflow").glob("*.sock")):
        assert time.time() < deadline, "the server did not stop"
        time.sleep(0.2)
    assert "no manifoldflow server is running" in _status(env, tmp_path)
    shutil.rmtree(runtime)


@pytest.mark.skipif(os.name != "posix", reason="servers need Unix sockets")
def test_a_server_that_would_load_other_files_refuses(tmp_path):
    runtime = _short_folder()
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), JAX_PLATFORMS="cpu")
    key = "0" * 24  # not what this environment gives
    done = subprocess.run(
        [sys.executable, "-P", "-m", "_manifoldflow_launcher", "--serve", key],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    marker = runtime / "manifoldflow" / f"{key}.unserved"
    assert "other files" in marker.read_text()
    assert not list((runtime / "manifoldflow").glob("*.sock"))
    shutil.rmtree(runtime)
