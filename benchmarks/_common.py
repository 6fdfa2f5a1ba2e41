"""Shared helpers of the benchmark scripts (not part of the library)."""

import json
import pathlib
import platform
import time

import jax
import numpy as np


RESULTS = pathlib.Path(__file__).parent / "results"


def seconds(fn, repeats):
    """Wall times of `repeats` calls of `fn()`, each until its result is ready."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return runs


def median_seconds(fn, repeats=3) -> float:
    """The median wall time of `repeats` calls of `fn()` (results made ready)."""
    return float(np.median(seconds(fn, repeats)))


def time_call(fn, *args, repeats=7):
    """(compile + first-run seconds, median, minimum run seconds) of a jitted call."""
    first = seconds(lambda: fn(*args), 1)[0]
    runs = seconds(lambda: fn(*args), repeats)
    return first, float(np.median(runs)), float(np.min(runs))


def machine():
    return dict(
        platform=platform.platform(),
        processor=platform.processor(),
        python=platform.python_version(),
        jax=jax.__version__,
        devices=[str(d) for d in jax.devices()],
    )


def write_json(name, payload):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1))
    return path


def two_layer_data(m, d, n, seed=0):
    """The command's default data (`manifoldflow.models.two_layer_data`) and a point
    of the manifold from the library's initialisation (what `manifoldflow two-layer`
    uses)."""
    from manifoldflow.models import initialise_on_manifold, two_layer_data as data

    X, y = data(n, d, seed)
    net = initialise_on_manifold(jax.random.PRNGKey(seed), X, y, m)
    return X, y, net
