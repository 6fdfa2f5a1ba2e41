"""`solve_flows`: a batch of flows as one program, each member as its own solve."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import manifoldflow as mf
import numpy as np
import pytest
from manifoldflow.theory import gatmiry

from .helpers import two_layer_problem


EPS = 1e-11  # stationarity of these solves


def _starts(manifold, size, spread=0.05, seed=1):
    u0 = manifold.initial_point()
    noise = jax.random.normal(jax.random.PRNGKey(seed), (size, u0.size))
    return np.asarray(u0 + spread * noise)


def _end_point_bound(manifold, constant=1.0):
    """Two solves that stop at |P_T grad R| <= eps are within eps / r of the
    stationary point each (r: the linear rate of Theorem 3.5): 2 eps / r apart."""
    return 2 * EPS / gatmiry.asymptotic_rate(manifold, constant)


def test_members_end_where_their_own_solves_end():
    *_, manifold = two_layer_problem(m=4, n=3, d=6)
    starts = _starts(manifold, 3)
    solutions = mf.solve_flows(manifold, starts, stationarity=EPS)
    assert len(solutions) == 3 and solutions.devices == len(jax.devices())
    bound = _end_point_bound(manifold)
    for start, member in zip(starts, solutions):
        single = mf.solve_flow(manifold, start, stationarity=EPS)
        assert member.result_name == single.result_name == "stationary"
        assert np.max(np.abs(member.theta_final - single.theta_final)) <= bound
        # A member is trimmed to its own steps, like a solve_flow solution.
        assert member.step_ts.shape == (member.num_steps + 1,)
        assert np.all(np.diff(member.step_ts) > 0)
        assert member.gradient_norm[-1] <= EPS
        assert member.ys.shape[1] == manifold.dimension
        np.testing.assert_array_equal(member.ys[-1], member.theta_final)
    assert solutions.results == ["stationary"] * 3
    assert solutions.theta_final.shape == (3, manifold.dimension)
    np.testing.assert_array_equal(solutions.num_steps, [s.num_steps for s in solutions])


def test_a_batch_of_data_sets_and_constants():
    """One manifold per member (another seed's data) and one constant per member:
    member i is the flow of manifold i with constant c_i."""
    manifolds = [two_layer_problem(m=4, n=3, d=6, seed=s)[-1] for s in (0, 1)]
    constants = [1.0, 0.5]
    solutions = mf.solve_flows(
        manifolds, constant=constants, stationarity=EPS, saveat=[0.5, 1.0, 2.0]
    )
    for manifold, c, member in zip(manifolds, constants, solutions):
        single = mf.solve_flow(
            manifold, constant=c, stationarity=EPS, saveat=[0.5, 1.0, 2.0]
        )
        assert member.result_name == single.result_name == "t1_reached"
        np.testing.assert_array_equal(member.ts, [0.5, 1.0, 2.0])
        # Both step exactly to the output times: they differ by rounding only.
        np.testing.assert_allclose(member.ys, single.ys, rtol=0, atol=1e-9)
        assert member.constant == c


def test_members_end_on_their_own_conditions():
    """A member that is already stationary takes no step; the others go on."""
    *_, manifold = two_layer_problem(m=4, n=3, d=6)
    at_rest = mf.solve_flow(manifold, stationarity=EPS).theta_final
    starts = np.stack([at_rest, _starts(manifold, 1)[0]])
    solutions = mf.solve_flows(manifold, starts, stationarity=1e-9, max_steps=10)
    assert solutions.num_steps[0] == 0 and solutions[0].result_name == "stationary"
    assert solutions[1].result_name == "max_steps_reached"
    assert solutions[1].num_steps + solutions[1].num_rejected_steps == 10


def test_kept_states_are_bounded():
    *_, manifold = two_layer_problem(m=4, n=3, d=6)
    solutions = mf.solve_flows(
        manifold, _starts(manifold, 2), max_states=5, stationarity=EPS
    )
    for member in solutions:
        assert member.num_steps > 5
        assert 2 <= member.ys.shape[0] <= 5
        np.testing.assert_array_equal(member.ts, member.step_ts[member.saved_index])
        np.testing.assert_array_equal(member.ys[-1], member.theta_final)


@pytest.mark.parametrize(
    "call, text",
    [
        (lambda m: mf.solve_flows(m), "Nothing to batch"),
        (
            lambda m: mf.solve_flows(m, _starts(m, 3), constant=[1.0, 2.0]),
            "batch sizes disagree (theta0: 3, constant: 2)",
        ),
        (
            lambda m: mf.solve_flows(m, np.zeros((2, m.dimension + 1))),
            "coordinates: expected shape (2, ",
        ),
        (
            lambda m: mf.solve_flows(
                [m, two_layer_problem(m=4, n=2, d=6)[-1]], stationarity=EPS
            ),
            "manifold[1] has an array of shape",
        ),
        (lambda m: mf.solve_flows(m, constant=[1.0, -1.0]), "must be positive"),
    ],
)
def test_bad_batches_are_refused(call, text):
    *_, manifold = two_layer_problem(m=4, n=3, d=6)
    with pytest.raises(mf.InputError) as error:
        call(manifold)
    assert text in str(error.value)


_FORCED = textwrap.dedent(
    """
    import json, sys, time
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import manifoldflow as mf
    from tests.helpers import two_layer_problem
    from tests.test_batch import _starts
    *_, manifold = two_layer_problem(m=4, n=3, d=6)
    starts = _starts(manifold, 6)
    everywhere = mf.solve_flows(manifold, starts, stationarity=1e-11)
    one = mf.solve_flows(
        manifold, starts, stationarity=1e-11, devices=jax.devices()[:1]
    )
    print(json.dumps(dict(
        devices=len(jax.devices()),
        used=everywhere.devices,
        results=everywhere.results,
        difference=float(np.max(np.abs(everywhere.theta_final - one.theta_final))),
        same_steps=bool(np.all(everywhere.num_steps == one.num_steps)),
    )))
    """
)


def test_the_batch_is_split_over_forced_host_devices():
    """Four CPU devices (`--xla_force_host_platform_device_count=4`, in a process of
    its own): 6 members padded to 8, two per device, end as on one device."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", _FORCED],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == report["used"] == 4
    assert report["results"] == ["stationary"] * 6
    *_, manifold = two_layer_problem(m=4, n=3, d=6)
    assert report["difference"] <= _end_point_bound(manifold)


_DISTRIBUTED = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    process, port = int(sys.argv[1]), sys.argv[2]
    jax.distributed.initialize(
        f"127.0.0.1:{port}", num_processes=2, process_id=process,
        initialization_timeout=120,
    )
    import manifoldflow as mf
    from tests.helpers import two_layer_problem
    from tests.test_batch import _starts
    *_, manifold = two_layer_problem(m=4, n=3, d=6)
    solutions = mf.solve_flows(manifold, _starts(manifold, 6), stationarity=1e-11)
    print(json.dumps(dict(
        process=jax.process_index(),
        devices=len(jax.devices()),
        local=len(jax.local_devices()),
        used=solutions.devices,
        results=solutions.results,
        theta=solutions.theta_final.tolist(),
    )))
    jax.distributed.shutdown()
    """
)


def test_two_processes_under_jax_distributed():
    """JAX's own multi-process runtime on CPU (two local processes, one device each,
    collectives over gloo): the batch is laid out over both processes' devices, and
    each process gets every member's solution, as one process would."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _DISTRIBUTED, str(i), port],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for p, (out, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    *_, manifold = two_layer_problem(m=4, n=3, d=6)
    alone = mf.solve_flows(manifold, _starts(manifold, 6), stationarity=EPS)
    for i, report in enumerate(reports):
        assert report["process"] == i and report["local"] == 1
        assert report["devices"] == report["used"] == 2
        assert report["results"] == ["stationary"] * 6
        assert np.max(np.abs(np.asarray(report["theta"]) - alone.theta_final)) <= (
            _end_point_bound(manifold)
        )


def test_a_failed_member_raises_only_when_asked():
    """One member whose start cannot be retracted fails on its own: by default it
    comes back with its result next to the others; with throw=True the batch
    raises, naming the count of each failed ending."""
    *_, manifold = two_layer_problem(m=3, n=2, d=4, seed=0)
    theta = np.asarray(manifold.initial_point())
    starts = np.stack([theta, theta + 50.0])  # the second: far off the manifold
    one_step = mf.GaussNewtonRetraction(max_steps=1)
    options = dict(initial_retraction=one_step, t1=0.1, stationarity=0.0)
    solutions = mf.solve_flows(manifold, starts, **options)
    assert solutions[0].result_name == "t1_reached"
    assert solutions[1].result_name == "initial_retraction_failed"
    with pytest.raises(RuntimeError, match="1 of 2 members failed"):
        mf.solve_flows(manifold, starts, throw=True, **options)
