"""A catalogue of bad input to the Python API: each case must raise
`manifoldflow.InputError` whose message matches its pattern (naming the value and
the fix), never another exception, a wrong answer or a hang.

Run as a script (`python tests/bad_inputs.py`), as a user's program runs: without
the test suite's run-time type checks, which would otherwise answer first for
arguments of the wrong type. Prints one JSON line per case."""

import json
import math
import pathlib
import sys
import tempfile

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)

import manifoldflow as mf  # noqa: E402
import manifoldflow.sweeps  # noqa: E402


def _mlp(activation=jnp.tanh, seed=0):
    return eqx.nn.MLP(2, "scalar", 4, 1, activation=activation, key=jax.random.PRNGKey(seed))


X = jax.random.normal(jax.random.PRNGKey(1), (3, 2))
Y = jnp.array([0.1, -0.2, 0.3])
M = mf.ZeroLossManifold(_mlp(), X, Y)
D = M.dimension
THETA = np.asarray(M.initial_point())
TMP = pathlib.Path(tempfile.mkdtemp(prefix="manifoldflow-bad-inputs-"))
PID = diffrax.PIDController


def solve(**kwargs):
    return mf.solve_flow(M, **kwargs)


def flow(**kwargs):
    return mf.flow_solve(M, **kwargs)


def batch(theta0, **kwargs):
    return mf.solve_flows(M, theta0, **kwargs)


def nan_model():
    # Finite parameters, but the model is NaN at every example: log of a negative.
    model = _mlp(activation=lambda z: jnp.log(z - 100.0))
    return mf.solve_flow(mf.ZeroLossManifold(model, X, Y))


def dependent_constraints():
    X2 = jnp.concatenate([X, X[:1]])
    return mf.solve_flow(mf.ZeroLossManifold(_mlp(), X2, jnp.append(Y, Y[0])))


def mismatched_pytree():
    return mf.solve_flow(M, _mlp(activation=jnp.tanh, seed=0).layers[0])


CASES = [
    # solve_flow: the start
    ("solve_flow theta0 of the wrong length", lambda: solve(theta0=np.zeros(D + 1)), r"expected shape \(%d,\)" % D),
    ("solve_flow theta0 2-D", lambda: solve(theta0=np.zeros((2, D))), r"theta0 has shape \(2, %d\)" % D),
    ("solve_flow theta0 NaN", lambda: solve(theta0=np.full(D, np.nan)), "theta0 contains non-finite values"),
    ("solve_flow theta0 inf", lambda: solve(theta0=np.where(np.arange(D) == 0, np.inf, THETA)), "theta0 contains non-finite values"),
    ("solve_flow theta0 a pytree of another structure", mismatched_pytree, "Linear whose structure differs"),
    ("solve_flow theta0 a string", lambda: solve(theta0="start"), "str whose structure differs"),
    # solve_flow: solver and tolerances
    ("solve_flow solver a string", lambda: solve(solver="dopri8"), "solver must be a diffrax"),
    ("solve_flow controller a string", lambda: solve(stepsize_controller="pid"), "stepsize_controller must be"),
    ("solve_flow rtol = atol = 0", lambda: solve(stepsize_controller=PID(rtol=0, atol=0)), "rtol = atol = 0"),
    ("solve_flow negative rtol", lambda: solve(stepsize_controller=PID(rtol=-1e-8, atol=1e-10)), "rtol must be >= 0"),
    ("solve_flow negative atol", lambda: solve(stepsize_controller=PID(rtol=1e-8, atol=-1.0)), "atol must be >= 0"),
    ("solve_flow NaN rtol", lambda: solve(stepsize_controller=PID(rtol=math.nan, atol=1e-10)), "rtol must be >= 0"),
    ("solve_flow negative stationarity", lambda: solve(stationarity=-1.0), "stationarity must be >= 0"),
    ("solve_flow NaN stationarity", lambda: solve(stationarity=math.nan), "stationarity must be >= 0"),
    # solve_flow: counts
    ("solve_flow max_steps 0", lambda: solve(max_steps=0), "max_steps must be at least 1"),
    ("solve_flow max_steps -5", lambda: solve(max_steps=-5), "max_steps must be at least 1"),
    ("solve_flow max_steps 10.5", lambda: solve(max_steps=10.5), "max_steps must be an integer"),
    ("solve_flow max_steps True", lambda: solve(max_steps=True), "max_steps must be an integer"),
    ("solve_flow max_steps '100'", lambda: solve(max_steps="100"), "max_steps must be an integer"),
    ("solve_flow window 0", lambda: solve(window=0), "window must be at least 1"),
    ("solve_flow window 2.5", lambda: solve(window=2.5), "window must be an integer"),
    ("solve_flow save_every 0", lambda: solve(save_every=0), "save_every must be at least 1"),
    ("solve_flow save_every 1.5", lambda: solve(save_every=1.5), "save_every must be an integer"),
    ("solve_flow max_states 1", lambda: solve(max_states=1), "max_states must be an integer of at least 2"),
    ("solve_flow max_states 3.5", lambda: solve(max_states=3.5), "max_states must be an integer"),
    ("solve_flow retract_every 0", lambda: solve(retract_every=0), "retract_every must be at least 1"),
    ("solve_flow retract_every 1.5", lambda: solve(retract_every=1.5), "retract_every must be an integer"),
    # solve_flow: times
    ("solve_flow t1 = t0", lambda: solve(t0=1.0, t1=1.0), "must be greater than t0"),
    ("solve_flow backwards", lambda: solve(t0=1.0, t1=0.5), "must be greater than t0"),
    ("solve_flow t0 NaN", lambda: solve(t0=math.nan, t1=1.0), "t0 = nan"),
    ("solve_flow dt0 0", lambda: solve(t1=1.0, dt0=0.0), "dt0 must be positive"),
    ("solve_flow dt0 negative", lambda: solve(t1=1.0, dt0=-0.1), "dt0 must be positive"),
    ("solve_flow saveat empty", lambda: solve(saveat=[]), "saveat must be a non-empty"),
    ("solve_flow saveat decreasing", lambda: solve(saveat=[0.2, 0.1]), "strictly increasing"),
    ("solve_flow saveat NaN", lambda: solve(saveat=[math.nan]), "finite times"),
    ("solve_flow saveat before t0", lambda: solve(t0=1.0, saveat=[0.5, 2.0]), "strictly increasing and >= t0"),
    ("solve_flow saveat after t1", lambda: solve(t1=1.0, saveat=[0.5, 5.0]), "after t1"),
    # solve_flow: the constant
    ("solve_flow constant -1", lambda: solve(constant=-1.0), "constant must be positive"),
    ("solve_flow constant 0", lambda: solve(constant=0.0), "constant must be positive"),
    ("solve_flow constant inf", lambda: solve(constant=math.inf), "constant must be positive"),
    ("solve_flow constant NaN", lambda: solve(constant=math.nan), "constant must be positive"),
    # solve_flow: checkpoints
    ("solve_flow checkpoint a folder", lambda: solve(checkpoint=TMP), "is a folder"),
    ("solve_flow checkpoint in a missing folder", lambda: solve(checkpoint=TMP / "no" / "x.mfck"), "does not exist"),
    ("solve_flow checkpoint in /proc", lambda: solve(checkpoint="/proc/x.mfck"), "cannot be written"),
    ("solve_flow checkpoint not a checkpoint", lambda: (TMP / "junk.mfck").write_bytes(b"junk") and solve(checkpoint=TMP / "junk.mfck"), "truncated or corrupt"),
    # solve_flow: the model at the start
    ("solve_flow a model that is NaN at theta0", nan_model, "gradients at the data are not finite"),
    ("solve_flow dependent constraints (a repeated example)", dependent_constraints, "numerically singular"),
    # flow_solve: checked when traced, for concrete values
    ("flow_solve backwards", lambda: flow(t0=1.0, t1=0.5), "must be greater than t0"),
    ("flow_solve max_steps 0", lambda: flow(max_steps=0), "max_steps must be at least 1"),
    ("flow_solve max_steps 10.5", lambda: flow(max_steps=10.5), "max_steps must be an integer"),
    ("flow_solve constant -1", lambda: flow(constant=-1.0), "constant must be positive"),
    ("flow_solve theta0 NaN", lambda: flow(theta0=jnp.full(D, jnp.nan)), "theta0 contains non-finite values"),
    ("flow_solve theta0 of the wrong length", lambda: flow(theta0=jnp.zeros(D - 1)), "expected shape"),
    ("flow_solve retract_every 0", lambda: flow(retract_every=0), "retract_every must be at least 1"),
    # solve_flows
    ("solve_flows starts of two lengths", lambda: batch([THETA, THETA[:-1]]), r"theta0\[1\] has shape"),
    ("solve_flows starts 3-D", lambda: batch(np.zeros((2, 2, D))), "theta0 has shape"),
    ("solve_flows starts (2, D+1)", lambda: batch(np.zeros((2, D + 1))), "expected shape"),
    ("solve_flows nothing to batch", lambda: batch(THETA), "Nothing to batch"),
    ("solve_flows sizes disagree", lambda: batch(np.stack([THETA] * 3), constant=[1.0, 2.0]), "batch sizes disagree"),
    ("solve_flows a negative constant", lambda: batch(np.stack([THETA] * 2), constant=[1.0, -1.0]), "constant must be positive"),
    ("solve_flows constant 2-D", lambda: batch(np.stack([THETA] * 2), constant=[[1.0]]), "constant has shape"),
    ("solve_flows a NaN member", lambda: batch(np.stack([THETA, np.full(D, np.nan)])), "theta0 of member 1 contains non-finite"),
    ("solve_flows max_steps 0", lambda: batch(np.stack([THETA] * 2), max_steps=0), "max_steps must be at least 1"),
    ("solve_flows retract_every 0", lambda: batch(np.stack([THETA] * 2), retract_every=0), "retract_every must be at least 1"),
    ("solve_flows backwards", lambda: batch(np.stack([THETA] * 2), t0=1.0, t1=0.0), "must be greater than t0"),
    # ZeroLossManifold
    ("ZeroLossManifold X with NaN", lambda: mf.ZeroLossManifold(_mlp(), X.at[0, 0].set(jnp.nan), Y), "X contains 1 non-finite value"),
    ("ZeroLossManifold y with inf", lambda: mf.ZeroLossManifold(_mlp(), X, Y.at[1].set(jnp.inf)), "y contains 1 non-finite value"),
    ("ZeroLossManifold y of another length", lambda: mf.ZeroLossManifold(_mlp(), X, Y[:2]), r"but y has shape \(2,\)"),
    ("ZeroLossManifold X of the wrong width", lambda: mf.ZeroLossManifold(_mlp(), jax.random.normal(jax.random.PRNGKey(2), (3, 5)), Y), "fails on one example"),
    ("ZeroLossManifold X 1-D", lambda: mf.ZeroLossManifold(_mlp(), jax.random.normal(jax.random.PRNGKey(3), (3,)), Y), "X is 1-D"),
    ("ZeroLossManifold a vector-valued model", lambda: mf.ZeroLossManifold(eqx.nn.MLP(2, 2, 4, 1, key=jax.random.PRNGKey(0)), X, Y), "to a\\s+scalar"),
    ("ZeroLossManifold n > D", lambda: mf.ZeroLossManifold(eqx.nn.Linear(2, "scalar", key=jax.random.PRNGKey(0)), jax.random.normal(jax.random.PRNGKey(2), (5, 2)), jnp.arange(5.0)), "n = 5 data points"),
    ("ZeroLossManifold chunk_size 0", lambda: mf.ZeroLossManifold(_mlp(), X, Y, chunk_size=0), "chunk_size must be an integer"),
    ("ZeroLossManifold chunk_size 1.5", lambda: mf.ZeroLossManifold(_mlp(), X, Y, chunk_size=1.5), "chunk_size must be an integer"),
    # minimise_sharpness
    ("minimise_sharpness theta0 NaN", lambda: mf.minimise_sharpness(M, np.full(D, np.nan)), "theta0 contains non-finite values"),
    ("minimise_sharpness a negative tolerance", lambda: mf.minimise_sharpness(M, gradient_tolerance=-1.0), "gradient_tolerance must be a positive"),
    ("minimise_sharpness max_steps 0", lambda: mf.minimise_sharpness(M, max_steps=0), "max_steps must be an integer >= 1"),
    ("minimise_sharpness max_steps 2.5", lambda: mf.minimise_sharpness(M, max_steps=2.5), "max_steps must be an integer >= 1"),
    ("minimise_sharpness solver a string", lambda: mf.minimise_sharpness(M, solver="rtr"), "solver must be a Riemannian minimiser"),
    ("minimise_sharpness manifold a model", lambda: mf.minimise_sharpness(_mlp()), "manifold must be a manifoldflow manifold"),
    ("MinimumAtInfinity window 0", lambda: mf.MinimumAtInfinity(window=0), "window must be an"),
    # sweeps.load
    ("sweeps.load of a folder without a sweep", lambda: mf.sweeps.load(TMP), "not the --out of a sweep"),
]


def main() -> int:
    for name, case, pattern in CASES:
        try:
            case()
        except mf.InputError as error:
            outcome = dict(name=name, type="InputError", message=str(error))
        except BaseException as error:  # recorded: the test says which case
            outcome = dict(name=name, type=type(error).__name__, message=str(error)[:500])
        else:
            outcome = dict(name=name, type=None, message="")
        outcome["pattern"] = pattern
        print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
