"""Numeric options enter compiled code as arrays: new values compile nothing."""

import collections

import diffrax
import jax.monitoring
import manifoldflow as mf

from .helpers import two_layer_problem


_EVENTS = collections.Counter()
_RECORDING = [False]


def _listener(event, duration, **kwargs):
    del duration, kwargs
    if _RECORDING[0]:
        _EVENTS[event] += 1


jax.monitoring.register_event_duration_secs_listener(_listener)


def _traces_and_compiles(solves) -> tuple[int, int]:
    _EVENTS.clear()
    _RECORDING[0] = True
    try:
        for solve in solves:
            solve()
    finally:
        _RECORDING[0] = False
    traces = sum(n for e, n in _EVENTS.items() if e.endswith("jaxpr_trace_duration"))
    compiles = sum(
        n for e, n in _EVENTS.items() if e.endswith("backend_compile_duration")
    )
    return traces, compiles


def test_new_tolerances_constants_and_times_compile_nothing():
    manifold = two_layer_problem(m=4, n=3, d=5, seed=2)[-1]
    heun = dict(solver=diffrax.Heun(), stepsize_controller=diffrax.ConstantStepSize())
    # First solves: the adaptive path, output times, the constant-step path.
    mf.solve_flow(manifold, stationarity=1e-9)
    mf.solve_flow(manifold, saveat=[0.1, 0.2], stationarity=0.0)
    mf.solve_flow(manifold, dt0=0.01, t1=0.05, **heun)
    repeats = [
        lambda: mf.solve_flow(
            manifold,
            stepsize_controller=diffrax.PIDController(rtol=1e-9, atol=1e-11),
            stationarity=1e-8,
        ),
        lambda: mf.solve_flow(manifold, constant=0.25, t1=2.0, throw=False),
        lambda: mf.solve_flow(manifold, saveat=[0.3, 0.5, 0.7], stationarity=0.0),
        lambda: mf.solve_flow(manifold, dt0=0.02, t1=0.1, **heun),
    ]
    traces, compiles = _traces_and_compiles(repeats)
    assert (traces, compiles) == (0, 0)


_COUNTING_COMMAND = """
import collections, json, sys
import jax.monitoring
events = collections.Counter()
jax.monitoring.register_event_listener(lambda event, **kwargs: events.update([event]))
from manifoldflow.cli import main
code = main(sys.argv[1:])
print(json.dumps(dict(code=code, requests=events[
    "/jax/compilation_cache/compile_requests_use_cache"],
    hits=events["/jax/compilation_cache/cache_hits"],
    misses=events["/jax/compilation_cache/cache_misses"])))
"""


def test_second_identical_command_compiles_nothing(tmp_path):
    """Every program of a command, its progress bar shown, is in JAX's persistent
    cache after one run: the second identical run compiles nothing (a host callback
    inside a program, e.g. an in-graph progress meter, would keep it out of the
    cache and compile it on every run)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, MANIFOLDFLOW_CACHE_DIR=str(tmp_path / "cache"))
    command = [sys.executable, "-c", _COUNTING_COMMAND, "two-layer", "--m", "4"]
    command += ["--d", "6", "--n", "3", "--out", str(tmp_path / "out")]
    runs = []
    for _ in range(2):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "%|" in done.stderr  # the progress bar was drawn
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["code"] == second["code"] == 0
    assert first["misses"] >= 3
    assert second["requests"] >= first["requests"]
    assert second["misses"] == 0 and second["hits"] == second["requests"]
