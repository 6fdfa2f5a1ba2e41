"""The program cache: traced programs written once, loaded (not traced) in a new
process, with the same results; anything that cannot be keyed is traced as usual."""

import json
import os
import subprocess
import sys
import textwrap

import diffrax
import equinox as eqx
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow import _programs

from .helpers import two_layer_problem


_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import manifoldflow as mf
    from manifoldflow import _programs
    from manifoldflow.models import two_layer_data, initialise_on_manifold
    from manifoldflow.models import TwoLayerManifold

    exported = []
    export = _programs._export
    def counting_export(directory, key, function, *args):
        exported.append(function.__qualname__)
        return export(directory, key, function, *args)
    _programs._export = counting_export

    mf.enable_caches(sys.argv[1])
    X, y = two_layer_data(3, 5, 1)
    net = initialise_on_manifold(jax.random.PRNGKey(1), X, y, 4)
    solution = mf.solve_flow(TwoLayerManifold(net, X, y), stationarity=1e-9)
    print(json.dumps({
        "exported": exported,
        "theta": [float(v).hex() for v in solution.theta_final],
        "steps": int(solution.num_steps),
    }))
    """
)


def _run(directory) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(directory)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_instead_of_tracing(tmp_path):
    first, second = _run(tmp_path), _run(tmp_path)
    # The first process exported the step loop and its initialisation ...
    assert {"Integrator.initialise", "Integrator.window"} <= set(first["exported"])
    programs = sorted((tmp_path / "programs").glob("*.program"))
    assert len(programs) == len(first["exported"])
    # ... the second traced none of them and reached the same point bit for bit.
    assert second["exported"] == []
    assert second["theta"] == first["theta"]
    assert second["steps"] == first["steps"] > 0


@pytest.fixture
def program_directory(tmp_path):
    _programs.set_program_directory(tmp_path)
    try:
        yield tmp_path
    finally:
        _programs.set_program_directory(None)


def _solve(manifold, **options):
    return mf.solve_flow(manifold, stationarity=1e-9, **options)


# QR's LAPACK calls have no cross-version guarantee, which `jax.export` checks.
@pytest.mark.parametrize("projector", [mf.CholeskyProjector(), mf.QRProjector()])
def test_same_results_with_and_without_the_cache(program_directory, projector):
    manifold = two_layer_problem(m=4, n=3, d=5, seed=3)[-1]
    cached = _solve(manifold, projector=projector)
    assert len(list(program_directory.glob("*.program"))) >= 3
    _programs._loaded.clear()  # as in a new process: read the files back
    loaded = _solve(manifold, projector=projector)
    _programs.set_program_directory(None)
    traced = _solve(manifold, projector=projector)
    for solution in (loaded, traced):
        np.testing.assert_array_equal(solution.ts, cached.ts)
        np.testing.assert_array_equal(solution.ys, cached.ys)
        assert solution.result == cached.result == mf.RESULTS.stationary


def test_keys_follow_shapes_options_and_sources(program_directory, tmp_path):
    small = two_layer_problem(m=4, n=3, d=5, seed=3)[-1]
    large = two_layer_problem(m=5, n=3, d=5, seed=3)[-1]
    _solve(small)
    count = len(list(program_directory.glob("*.program")))
    _solve(small)
    assert len(list(program_directory.glob("*.program"))) == count
    _solve(large)  # new shapes: new programs
    after_shapes = len(list(program_directory.glob("*.program")))
    assert after_shapes > count
    _solve(small, solver=diffrax.Tsit5())  # new options: new programs
    assert len(list(program_directory.glob("*.program"))) > after_shapes

    # A user's module is keyed by its source: an edit gives a new key.
    module = tmp_path / "user_model_for_keys.py"
    module.write_text("def scale(x):\n    return 2 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import user_model_for_keys

        def key():
            return _programs._key(_solve, (user_model_for_keys.scale,), (jnp.zeros(3),))

        before = key()
        assert before is not None and key() == before
        module.write_text("def scale(x):\n    return 3 * x\n")
        os.utime(module, ns=(0, 10**18))
        assert key() != before
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("user_model_for_keys", None)


class _Scaled(eqx.Module):
    function: object = eqx.field(static=True)

    def __call__(self, x):
        return self.function(x)


def _double(x):
    return 2 * x


@_programs.persistent_jit
def _apply(model, x):
    return model(x)


def test_what_cannot_be_keyed_or_read_is_traced(program_directory):
    x = jnp.arange(3.0)
    # A lambda does not pickle: traced as usual, nothing written.
    assert _programs._key(_apply, (_Scaled(lambda v: 2 * v),), (x,)) is None
    np.testing.assert_array_equal(_apply(_Scaled(lambda v: 2 * v), x), 2 * x)
    assert list(program_directory.glob("*.program")) == []
    # A module-level function does: written, then a damaged file is ignored.
    np.testing.assert_array_equal(_apply(_Scaled(_double), x), 2 * x)
    (path,) = program_directory.glob("*.program")
    path.write_bytes(b"not a program")
    _programs._loaded.clear()
    np.testing.assert_array_equal(_apply(_Scaled(_double), x), 2 * x)
