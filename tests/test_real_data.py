"""Real datasets and the `real-data` command: the split and its standardisation, the
command's numbers against an independent NumPy forward pass, and its bad input."""

import json
import sys

import numpy as np
import pytest
from manifoldflow import cli, InputError
from manifoldflow.experiments import EXPERIMENTS
from manifoldflow.models import DATASETS, load_dataset


QUIET = ["--no-progress"]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_split_and_standardisation(name):
    data = load_dataset(name, 40, 30, seed=3)
    assert data.X_train.shape[0] == 40 and data.X_test.shape[0] == 30
    assert data.X_train.shape[1] == data.X_test.shape[1]
    # Standardised with the training set's statistics: mean 0, and standard
    # deviation 1 for every feature that is not constant there.
    np.testing.assert_allclose(data.X_train.mean(axis=0), 0, atol=1e-12)
    std = data.X_train.std(axis=0)
    assert np.all((np.abs(std - 1) < 1e-12) | (std == 0))
    if data.task == "binary":
        assert set(np.unique(data.y_train)) <= {-1.0, 1.0}
        assert len(np.unique(data.y_train)) == 2  # both classes drawn
        assert data.test_error(data.y_test) == 0
        assert data.test_error(-data.y_test) == 1
    else:
        np.testing.assert_allclose(
            [data.y_train.mean(), data.y_train.std()], [0, 1], atol=1e-12
        )
        assert data.test_error(data.y_test) == 0
    # Train and test are disjoint draws: no test row equals a training row.
    matches = (data.X_test[:, None, :] == data.X_train[None, :, :]).all(axis=2)
    assert not matches.any()
    again = load_dataset(name, 40, 30, seed=3)
    np.testing.assert_array_equal(again.X_train, data.X_train)
    other = load_dataset(name, 40, 30, seed=4)
    assert not np.array_equal(other.y_train, data.y_train) or not np.array_equal(
        other.X_train, data.X_train
    )


def test_dataset_bad_input(monkeypatch):
    with pytest.raises(InputError, match="breast_cancer, diabetes, digits"):
        load_dataset("mnist", 10, 10)
    with pytest.raises(InputError, match="569 examples, fewer than"):
        load_dataset("breast_cancer", 500, 100)
    with pytest.raises(InputError, match="n_test must be an integer >= 1"):
        load_dataset("digits", 10, 0)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(InputError, match=r'pip install -e "\.\[data\]"'):
        load_dataset("digits", 10, 10)


def _forward(theta, X, width, depth):
    """The MLP of equinox (tanh, scalar output) from its flat parameters, in NumPy:
    layers in order, each weight (out, in) then bias."""
    sizes = [X.shape[1]] + [width] * depth
    offset, h = 0, X
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        W = theta[offset : offset + fan_in * fan_out].reshape(fan_out, fan_in)
        offset += fan_in * fan_out
        b = theta[offset : offset + fan_out]
        offset += fan_out
        h = np.tanh(h @ W.T + b)
    w = theta[offset : offset + width]
    b = theta[offset + width]
    assert offset + width + 1 == theta.size
    return h @ w + b


def test_real_data_numbers_against_numpy(tmp_path):
    experiment = EXPERIMENTS["real-data"]
    args = list(experiment.example_arguments)
    code = cli.main(["real-data", *args, *QUIET, "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["checks_passed"] is True
    for key in EXPERIMENTS["real-data"].headline_keys:  # what a sweep records
        assert isinstance(summary.get(key), (int, float)), key
    assert summary["constraint_violation_max"] <= 1e-10  # the name of every command
    assert (tmp_path / experiment.figure_name).stat().st_size > 10_000
    options = dict(zip(args[::2], args[1::2]))
    n, width = int(options["--n-train"]), int(options["--width"])
    data = load_dataset("digits", n, int(options["--n-test"]), seed=0)
    with np.load(tmp_path / "trajectory.npz") as f:
        start, end = f["theta_interpolant"], f["theta_final"]
        R = f["sharpness"]
    # Both points interpolate the training data (an independent forward pass).
    for theta in (start, end):
        assert (
            np.abs(_forward(theta, data.X_train, width, 2) - data.y_train).max() < 1e-10
        )
    # The reported test errors are those of these parameters.
    for theta, key in ((start, "test_error_interpolant"), (end, "test_error_flow")):
        predictions = _forward(theta, data.X_test, width, 2)
        assert summary[key] == np.mean(np.sign(predictions) != data.y_test)
    assert summary["test_error_change_flow"] == (
        summary["test_error_flow"] - summary["test_error_interpolant"]
    )
    # The flow lowers R, and moved.
    assert R[-1] < 0.9 * R[0]
    assert np.linalg.norm(end - start) > 1e-3
    # Label-noise GD: c = sigma^2 / (2 n), k = tau / eta^2 with tau = t1 / c.
    sigma = float(options["--sigma"])
    assert summary["flow_constant"] == pytest.approx(sigma**2 / (2 * n), rel=1e-15)
    tau = summary["t_final"] / summary["flow_constant"]
    for run in summary["sgd"]:
        assert run["steps"] == max(1, round(tau / run["eta"] ** 2))
        assert run["retracted"] == 1 and len(run["points"]) == 1
    etas = sorted(float(e) for e in options["--etas"].split(","))
    assert sorted(run["eta"] for run in summary["sgd"]) == etas
    # Lanczos: lambda_max is at most the trace R (a PSD Gauss-Newton part dominates
    # on the manifold, where the Hessian is (2/n) J^T J) and positive.
    for point in summary["along_flow"]:
        assert 0 < point["lambda_max"] <= point["sharpness"] * (1 + 1e-6)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--dataset", "mnist"], "not a dataset: choose one of breast_cancer"),
        (["--n-train", "1700", "--n-test", "200"], "1797 examples, fewer than"),
        (["--n-train", "300", "--width", "3", "--depth", "1"], "D = 199 parameters"),
        (
            ["--n-train", "64", "--width", "1", "--depth", "1", "--train-steps", "1"],
            "Adam did not reach interpolation: training loss",
        ),
        (["--etas", "0.1,-1"], "--etas must be positive"),
        (["--t1", "1e6", "--etas", "1e-4"], "would take"),
    ],
)
def test_real_data_bad_input(arguments, message, tmp_path, capsys):
    code = cli.main(["real-data", *arguments, *QUIET, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_real_data_without_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    code = cli.main(["real-data", *QUIET, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install -e ".[data]"' in err


def test_float32_flow_follows_the_float64_one():
    """float32 parameters make the whole flow float32 (data included); with float32
    tolerances it holds max|F| near float32 rounding and follows the float64 flow to
    float32 accuracy."""
    import diffrax
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import manifoldflow as mf

    data = load_dataset("digits", 16, 10, seed=1)
    model = eqx.nn.MLP(
        64, "scalar", 8, 1, activation=jnp.tanh, key=jax.random.PRNGKey(1)
    )
    cast = lambda tree, dtype: jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree
    )
    ends = {}
    for dtype in (jnp.float64, jnp.float32):
        manifold = mf.ZeroLossManifold(cast(model, dtype), data.X_train, data.y_train)
        assert manifold.X.dtype == manifold.initial_point().dtype == dtype
        options = {}
        if dtype == jnp.float32:
            options = dict(
                stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6),
                stationarity=1e-5,
                retraction=mf.ChordRetraction(atol=1e-5, rtol=1e-6),
                initial_retraction=mf.GaussNewtonRetraction(atol=1e-5, rtol=1e-6),
            )
        solution = mf.solve_flow(manifold, t1=0.05, **options)
        assert solution.result == mf.RESULTS.t1_reached
        assert solution.theta_final.dtype == dtype
        ends[dtype] = (solution.theta_final, np.nanmax(solution.constraint_violation))
    assert ends[jnp.float64][1] <= 1e-12
    assert ends[jnp.float32][1] <= 1e-5  # float32: max|F| within the retraction's
    gap = np.abs(ends[jnp.float32][0] - ends[jnp.float64][0]).max()
    scale = np.abs(ends[jnp.float64][0]).max()
    assert gap <= 1e-3 * scale, gap  # float32 accuracy (1e-7) times conditioning
