"""A checkpoint is keyed by the program itself: no change of model code, lambda,
closure, constant, data, option or library code lets it answer for another solve.
Each change below is refused with a message naming what differs; the same solve,
rebuilt from new but equal objects, continues from it."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import manifoldflow as mf
import numpy as np
import pytest


T1 = 0.05


def _plus(c=1 / 3):
    """The activation z + c z^3, a closure over `c`."""
    return lambda z: z + c * z**3


def _scaled_tanh(z, scale):
    return jnp.tanh(scale * z)


def _net(activation=None, seed=0):
    activation = _plus() if activation is None else activation
    return eqx.nn.MLP(
        3, "scalar", 6, 1, activation=activation, key=jax.random.PRNGKey(seed)
    )


def _data():
    X = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    y = jnp.array([0.1, -0.2, 0.3, 0.05])
    return X, y


def _manifold(model=None, X=None, y=None, **kwargs):
    X0, y0 = _data()
    return mf.ZeroLossManifold(
        _net() if model is None else model,
        X0 if X is None else X,
        y0 if y is None else y,
        **kwargs,
    )


class _Net(eqx.Module):
    """A model with its own `__call__`."""

    w: jax.Array
    v: jax.Array

    def __call__(self, x):
        return jnp.dot(self.v, jnp.tanh(self.w @ x))


def _custom(sign):
    # Two classes of one name and one layout whose code differs by a sign.
    class Net(_Net):
        def __call__(self, x):
            return jnp.dot(self.v, jnp.tanh(sign * (self.w @ x)))

    key = jax.random.PRNGKey(2)
    return Net(jax.random.normal(key, (6, 3)), jnp.ones(6) / 6)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("identity") / "solve.mfck"
    whole = mf.solve_flow(_manifold(), t1=T1, checkpoint=path)
    return path, path.read_bytes(), whole


def _refused(written, tmp_path, manifold, match, **options):
    path, data, _ = written
    copy = tmp_path / path.name
    copy.write_bytes(data)
    with pytest.raises(mf.InputError, match=match):
        mf.solve_flow(manifold, t1=options.pop("t1", T1), checkpoint=copy, **options)
    assert copy.read_bytes() == data  # refused, and left as it was


def test_the_same_solve_rebuilt_continues(written, tmp_path):
    path, data, whole = written
    copy = tmp_path / path.name
    copy.write_bytes(data)
    # New objects: a new model, new data arrays, a new closure of the same code.
    again = mf.solve_flow(_manifold(), t1=T1, checkpoint=copy)
    np.testing.assert_array_equal(again.sharpness, whole.sharpness)
    np.testing.assert_array_equal(again.theta_final, whole.theta_final)


PROGRAM = "the program"


CHANGES = {
    # model code, invisible to the pytree's structure and arrays
    "the activation's code z + z^3/3 -> z - z^3/3, same name": lambda: (
        _manifold(model=_net(activation=_minus())),
        PROGRAM,
        {},
    ),
    "a closure's float 1/3 -> 0.3": lambda: (
        _manifold(model=_net(activation=_plus(0.3))),
        PROGRAM,
        {},
    ),
    "a closure's float to an array of another value": lambda: (
        _manifold(model=_net(activation=_plus(jnp.asarray(0.3)))),
        PROGRAM,
        {},
    ),
    # seen in the model's structure (its repr) too
    "a partial's keyword 1.0 -> 0.8": lambda: (
        _manifold(model=_net(activation=functools.partial(_scaled_tanh, scale=0.8))),
        "the program .* the manifold",
        {},
    ),
    "another model class (a custom eqx.Module)": lambda: (
        _manifold(model=_custom(-1.0)),
        "the program .* the manifold",
        {},
    ),
    # arrays of the model and data
    "one weight": lambda: (
        _manifold(model=eqx.tree_at(lambda m: m.layers[0].bias, _net(), _net().layers[0].bias + 1e-9)),
        "the manifold",
        {},
    ),
    "one input": lambda: (_manifold(X=_data()[0].at[0, 0].add(1e-12)), "the manifold", {}),
    "one label": lambda: (_manifold(y=_data()[1].at[2].set(0.31)), "the manifold", {}),
    "the loss": lambda: (_manifold(loss=mf.HalfMeanSquaredLoss()), "the manifold", {}),
    # options
    "the solver": lambda: (_manifold(), "the options", dict(solver=diffrax.Tsit5())),
    "the constant": lambda: (_manifold(), "the options", dict(constant=2.0)),
    "the tolerance": lambda: (
        _manifold(),
        "the options",
        dict(stepsize_controller=diffrax.PIDController(rtol=1e-7, atol=1e-9)),
    ),
    "the start": lambda: (
        _manifold(),
        "the start",
        dict(theta0=_manifold().initial_point() * (1 + 1e-9)),
    ),
}


def _minus():
    # A closure of the same qualified name as `_plus`'s (so of the same repr in the
    # model's structure), with other code: as an edited script would define it.
    namespace = {}
    exec("def _plus(c=1 / 3):\n    return lambda z: z - c * z**3\n", namespace)
    return namespace["_plus"]()


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_is_refused(written, tmp_path, change):
    manifold, match, options = CHANGES[change]()
    _refused(written, tmp_path, manifold, match, **options)


def test_a_change_of_a_dependency_is_refused(written, tmp_path, monkeypatch):
    # Equinox's code changed in place (the same version number): its linear layer
    # adds 1e-300 to every output.
    call = eqx.nn.Linear.__call__

    def shifted(self, x, *, key=None):
        return call(self, x, key=key) + 1e-300

    monkeypatch.setattr(eqx.nn.Linear, "__call__", shifted)
    _refused(written, tmp_path, _manifold(), PROGRAM)


def test_a_change_of_library_code_is_refused(written, tmp_path, monkeypatch):
    # The library's own code changed in place (no new version number): the flow's
    # vector field scaled by 1 + 1e-3.
    field = mf.SharpnessFlow.__call__

    def scaled(self, t, y, args):
        return (1 + 1e-3) * field(self, t, y, args)

    monkeypatch.setattr(mf.SharpnessFlow, "__call__", scaled)
    _refused(written, tmp_path, _manifold(), PROGRAM)
