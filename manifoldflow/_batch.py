r"""`solve_flows`: many flows at once, as one program laid out over every device.

The members of a batch share one compiled loop: `jax.vmap` of the loop of
`flow_solve` (each member takes its own adaptive steps and ends on its own
condition), its batch axis laid out over the devices with `jax.sharding` (a `Mesh` of
the devices, `NamedSharding`), so that XLA gives each device its own slice of the
members. (Not `jax.shard_map`: inside it arrays carry their sharding in their type,
and lineax's linear solves refuse a right-hand side whose type differs from the
operator's.) Like `solve_flow`, it runs in jitted windows: after each, the host takes
the members' new step records and kept states, so that device memory holds one
window whatever the number of steps; Ctrl-C between windows returns what was
computed.
"""

import math
import time
import types
from collections.abc import Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import ArrayLike, Float, PyTree

from ._errors import InputError
from ._loop import FlowState, Integrator
from ._manifold import AbstractManifold
from ._noise_floor import AbstractNoiseFloorPolicy, TightenTolerances
from ._projection import AbstractProjector, CholeskyProjector
from ._results import result_name, RESULTS
from ._retraction import AbstractRetraction, ChordRetraction, GaussNewtonRetraction
from ._setup import build_integrator
from ._solution import FlowSolution, FlowSolutions
from ._stop import AbstractStopCondition, ConditionStop
from ._validate import (
    check_concrete_numbers,
    check_integer,
    check_rank,
    coordinates,
    NOT_FINITE,
    on_device,
    validated,
)
from ._windows import (
    ENDINGS,
    first_attempts,
    host_solution,
    KeptStates,
    next_attempts,
    padded_times,
    StepRecords,
)


_AXIS = "batch"


def solve_flows(
    manifold: AbstractManifold | Sequence[AbstractManifold],
    theta0: Float[ArrayLike, "batch D"] | Sequence[PyTree] | None = None,
    *,
    constant: float | Sequence[float] | Float[ArrayLike, " batch"] = 1.0,
    solver: diffrax.AbstractSolver = diffrax.Dopri8(),
    projector: AbstractProjector = CholeskyProjector(),
    retraction: AbstractRetraction = ChordRetraction(),
    initial_retraction: AbstractRetraction = GaussNewtonRetraction(),
    t0: float = 0.0,
    t1: float = math.inf,
    dt0: float | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController = diffrax.PIDController(
        rtol=1e-10, atol=1e-12
    ),
    stationarity: float = 1e-10,
    stop: Sequence[AbstractStopCondition] | None = None,
    saveat: Sequence[float] | None = None,
    noise_floor: AbstractNoiseFloorPolicy = TightenTolerances(),
    max_steps: int = 100_000,
    retract_every: int = 1,
    window: int | None = None,
    max_states: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = False,
    throw: bool = False,
) -> FlowSolutions:
    r"""Solve a batch of sharpness flows at once: from many starting points, on many
    data sets of one shape, or with many constants $c$, as one compiled program (the
    loop of [`manifoldflow.flow_solve`][] under `jax.vmap`), laid out over `devices`.

    Each member takes its own adaptive steps and ends on its own condition, exactly as
    its own [`manifoldflow.solve_flow`][] would (to rounding: batched matrix products
    may round differently from single ones).

    **Arguments** (the others as in [`manifoldflow.solve_flow`][]):

    - `manifold`: one manifold shared by every member, or a sequence of manifolds of
      one structure (the same model and data shapes, e.g. one problem for each seed),
      one per member.
    - `theta0`: starting coordinates, shape `(batch, D)` (or a sequence of
      coordinate vectors or of models); one vector of shape `(D,)` is shared by every
      member; `None`: each member's `manifold.initial_point()`.
    - `constant`: $c$, one number or one per member.
    - `window`: attempted steps per jitted window (default: as many as keep the
      window's states of all members within 256 MiB, between 4 and 128).
    - `max_states`: without `saveat`, the most states kept in each member's `ys`
      (evenly spaced in steps, as in `solve_flow`); default: as many as fit in 1 GiB
      for the whole batch, at most 1024 and at least 2 (the first and the last).
      The diagnostics keep every step.
    - `devices`: the devices to lay the batch over (default `jax.devices()`: every
      device, of every process under `jax.distributed`); the batch is padded to a
      multiple of their number.
    - `progress`: show one progress bar for the whole batch (members finished).
    - `throw`: raise `RuntimeError` if some member failed (any ending but
      `stationary`, `t1_reached`, `interrupted` and `max_steps_reached`), with the
      count of each ending, as `solve_flow(throw=True)` does for one flow. By
      default every member comes back with its own `result` (`solutions.results`,
      `solutions.counts()`, `solutions[i].message`): one failed member costs the
      others nothing.

    **Returns:** a [`manifoldflow.FlowSolutions`][]: `solutions[i]` is the i-th
    member's [`manifoldflow.FlowSolution`][] (NumPy, trimmed to its steps).

    **Raises:** [`manifoldflow.InputError`][] for bad input, as `solve_flow`, naming
    the member where it concerns one; a member whose initial retraction fails ends
    with `initial_retraction_failed` instead.

    ```python
    starts = manifold.initial_point() + 0.1 * jax.random.normal(key, (64, D))
    solutions = mf.solve_flows(manifold, starts)
    solutions.results.count("stationary"), solutions[3].sharpness[-1]
    ```
    """
    start = time.perf_counter()
    manifolds, stacked = _manifolds(manifold)
    first = manifolds[0] if manifolds else manifold
    size = _batch_size(manifolds, theta0, constant)
    starts = _starts(manifolds, first, stacked, theta0, size)
    _, targets, t1 = validated(
        first,
        starts[0],
        solver=solver,
        stepsize_controller=stepsize_controller,
        retractions=(retraction, initial_retraction),
        stationarity=stationarity,
        max_steps=max_steps,
        window=window,
        save_every=1,
        max_states=max_states,
        saveat=saveat,
        t0=t0,
        t1=t1,
        dt0=dt0,
    )
    check_integer("retract_every", retract_every, 1)
    if not np.all(np.isfinite(np.asarray(starts))):
        bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(starts)), axis=1))
        raise InputError(
            f"theta0 of member {int(bad[0])} contains non-finite values (NaN or inf).",
            parameter="theta0",
        )
    dtype = starts.dtype
    constants = _constants(constant, size, dtype)
    dimension = first.dimension
    devices = list(jax.devices() if devices is None else devices)
    if window is None:
        per_step = 8 * dimension * size
        window = int(min(128, max(4, 2**28 // per_step)))
    if max_states is None:
        max_states = int(min(1024, max(2, 2**30 // (8 * dimension * size))))
    keep_states = targets is None and max_states > 2

    padded_size = -(-size // len(devices)) * len(devices)
    pad = lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], padded_size - size, 0)])
    integrator = build_integrator(
        first if stacked is None else jax.tree.map(pad, stacked),
        dtype,
        solver=solver,
        projector=projector,
        retraction=retraction,
        initial_retraction=initial_retraction,
        constant=1.0,
        stepsize_controller=stepsize_controller,
        stationarity=stationarity,
        stop=stop,
        noise_floor=noise_floor,
        max_steps=max_steps,
        retract_every=retract_every,
        records=window + 1,
    )
    _check_ranks(integrator, stacked, first, starts)
    integrator = eqx.tree_at(lambda i: i.flow.constant, integrator, pad(constants))
    batched = _batched_mask(integrator, stacked is not None)
    mesh = Mesh(np.asarray(devices), (_AXIS,))
    sharding = NamedSharding(mesh, PartitionSpec(_AXIS))
    starts = jax.device_put(pad(starts), sharding)
    integrator = _laid_out(integrator, batched, mesh)
    replicated = (
        on_device(t0, dtype),
        on_device(t1, dtype),
        None if dt0 is None else on_device(dt0, dtype),
        on_device(padded_times(targets), dtype),
    )
    retracted, states = _init(integrator, batched, starts, replicated, mesh)
    books = [_Book(keep_states, max_states) for _ in range(size)]
    if keep_states:
        y0 = _host(states.y)
        for i, book in enumerate(books):
            book.kept = KeptStates(y0[i], 1, max_states - 1)
    states = _windows(
        integrator, batched, states, window, keep_states, books, mesh, progress
    )
    seconds = time.perf_counter() - start
    states, retracted = _host((states, retracted))
    constants = np.asarray(constants)
    members = tuple(
        _member(
            books[i],
            states,
            retracted,
            i,
            constant=float(constants[i]),
            stationarity=float(stationarity),
            wall_seconds=seconds,
            manifold=manifolds[i] if manifolds else first,
        )
        for i in range(size)
    )
    solutions = FlowSolutions(members, seconds, len(devices))
    if throw:
        accepted = {result_name(r) for r in ENDINGS + (RESULTS.max_steps_reached,)}
        failed = {
            name: count
            for name, count in solutions.counts().items()
            if name not in accepted
        }
        if failed:
            raise RuntimeError(
                f"solve_flows: {sum(failed.values())} of {size} members failed "
                f"({', '.join(f'{k}: {v}' for k, v in failed.items())}). With "
                "throw=False (the default) every member is returned: see "
                "solutions.results, and solutions[i].message for each."
            )
    return solutions


class _Book:
    """One member's records on the host: its diagnostics at every accepted step, and
    its kept states (evenly spaced in steps, at most `max_states`)."""

    def __init__(self, keep_states: bool, max_states: int):
        self.records = StepRecords()
        self.keep_states, self.max_states = keep_states, max_states
        self.kept: KeptStates | None = None


def _take(books, states: FlowState, rows, ys, counts) -> None:
    """Move the members' new step records (and accepted states) to their books."""
    fields = _host([getattr(states.records, name) for name in StepRecords.names])
    rows = _host(rows)
    if ys is not None:
        ys, counts = _host((ys, counts))
    for i, book in enumerate(books):
        book.records.append(tuple(f[i] for f in fields), int(rows[i]))
        if ys is not None and book.kept is not None and counts[i] > 0:
            book.kept.add(ys[i, : int(counts[i])])


def _windows(integrator, batched, states, window, keep_states, books, mesh, progress):
    size = len(books)
    bar = None
    if progress:
        import tqdm

        bar = tqdm.tqdm(total=size, unit="flow", desc="flows finished")
    attempts = first_attempts(window)
    try:
        while True:  # at least once: the first window takes the initial points
            start = time.perf_counter()
            new, rows, ys, counts = _window(
                integrator,
                batched,
                states,
                on_device(attempts),
                window if keep_states else 0,
                mesh,
            )
            new, rows, ys, counts = jax.block_until_ready((new, rows, ys, counts))
            _take(books, new, rows, ys if keep_states else None, counts)
            states = new
            running = _running(states, size)
            if bar is not None:
                bar.n = int(size - running.sum())
                bar.refresh()
            if not running.any():
                break
            attempts = next_attempts(attempts, time.perf_counter() - start, window)
    except KeyboardInterrupt:
        if not books[0].records.parts:  # in the first window: the initial points
            _take(books, states, np.ones(size, dtype=int), None, None)
        interrupted = jax.vmap(
            lambda r: RESULTS.where(r == RESULTS.successful, RESULTS.interrupted, r)
        )(states.result)
        states = eqx.tree_at(lambda s: s.result, states, interrupted)
    finally:
        if bar is not None:
            bar.close()
    return states


def _host(tree):
    """NumPy copies of the arrays of `tree`: of every member, also of those on other
    processes' devices (under `jax.distributed`: gathered to every process)."""

    def copy(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(copy, tree)


def _running(states: FlowState, size: int) -> np.ndarray:
    values = _host(states.result._value)[:size]
    return values == int(RESULTS.successful._value)


def _member(book: _Book, states, retracted, i, **fields) -> FlowSolution:
    """Member `i`'s solution, from the batch's final states on the host: only what
    the solution needs of them is sliced (a batch builds one per member)."""
    take = lambda tree: jax.tree.map(lambda x: x[i], tree)
    state = types.SimpleNamespace(
        y=states.y[i],
        saves=take(states.saves),
        noise_floor=take(states.noise_floor),
        num_rejected=states.num_rejected[i],
        result=take(states.result),
    )
    return host_solution(state, take(retracted), book.records, book.kept, **fields)


# ---------------------------------------------------------------------------------
# Batching the input.


def _manifolds(manifold):
    """`(list of manifolds or [], their stacked arrays or None)`."""
    if isinstance(manifold, AbstractManifold):
        return [], None
    if not isinstance(manifold, Sequence) or not manifold:
        raise InputError(
            f"manifold must be a manifold or a non-empty sequence of manifolds of one "
            f"structure, got {type(manifold).__name__}.",
            parameter="manifold",
        )
    manifolds = list(manifold)
    for i, m in enumerate(manifolds):
        if not isinstance(m, AbstractManifold):
            raise InputError(
                f"manifold[{i}] is a {type(m).__name__}, not a manifold.",
                parameter="manifold",
            )
    arrays, static = eqx.partition(manifolds[0], eqx.is_array)
    structure = jax.tree.structure(arrays)
    shapes = [(x.shape, x.dtype) for x in jax.tree.leaves(arrays)]
    parts = []
    for i, m in enumerate(manifolds):
        a, s = eqx.partition(m, eqx.is_array)
        if jax.tree.structure(a) != structure or jax.tree.structure(
            s
        ) != jax.tree.structure(static):
            raise InputError(
                f"manifold[{i}] differs in structure from manifold[0] (another model, "
                "manifold type or activation): only manifolds of one structure batch "
                "together.",
                fix="Solve the others in another batch (or with solve_flow).",
                parameter="manifold",
            )
        mine = [(x.shape, x.dtype) for x in jax.tree.leaves(a)]
        if mine != shapes:
            diff = next(k for k, (u, v) in enumerate(zip(mine, shapes)) if u != v)
            raise InputError(
                f"manifold[{i}] has an array of shape {mine[diff][0]} where "
                f"manifold[0] has {shapes[diff][0]}: only data and models of one "
                "shape batch together.",
                parameter="manifold",
            )
        parts.append(a)
    stacked_arrays = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
    return manifolds, eqx.combine(stacked_arrays, static)


def _batch_size(manifolds, theta0, constant) -> int:
    sizes = {}
    if manifolds:
        sizes["manifold"] = len(manifolds)
    if theta0 is not None:
        if isinstance(theta0, (np.ndarray, jax.Array)):
            if theta0.ndim == 2:
                sizes["theta0"] = theta0.shape[0]
            elif theta0.ndim != 1:
                raise InputError(
                    f"theta0 has shape {theta0.shape}: give (batch, D) starts, one "
                    "(D,) start for every member, or a sequence of starts.",
                    parameter="theta0",
                )
        elif isinstance(theta0, Sequence):
            sizes["theta0"] = len(theta0)
    c = (
        np.asarray(constant, dtype=float)
        if not isinstance(constant, jax.Array)
        else constant
    )
    if c.ndim == 1:
        sizes["constant"] = c.shape[0]
    elif c.ndim > 1:
        raise InputError(
            f"constant has shape {c.shape}: give one number or one per member.",
            parameter="constant",
        )
    if not sizes:
        raise InputError(
            "Nothing to batch: give starts of shape (batch, D), a sequence of "
            "manifolds or one constant per member.",
            fix="For one flow use manifoldflow.solve_flow.",
            parameter="theta0",
        )
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise InputError(
            f"The batch sizes disagree ({listed}): give each batched argument one "
            "entry per member.",
            parameter=next(iter(sizes)),
        )
    size = next(iter(sizes.values()))
    if size < 1:
        raise InputError("The batch is empty.", parameter=next(iter(sizes)))
    return size


def _starts(manifolds, first, stacked, theta0, size):
    """The starts as a `(size, D)` array."""
    if theta0 is None:
        if stacked is None:
            point = first.initial_point()
            return jnp.broadcast_to(point, (size,) + point.shape)
        return jnp.stack([m.initial_point() for m in manifolds])
    if isinstance(theta0, (np.ndarray, jax.Array)):
        starts = jnp.asarray(theta0)
    else:
        members = manifolds or [first] * size
        points = [jnp.asarray(coordinates(m, t)) for m, t in zip(members, theta0)]
        for i, point in enumerate(points):
            if point.shape != (first.dimension,):
                raise InputError(
                    f"theta0[{i}] has shape {tuple(point.shape)}, the manifold has "
                    f"{first.dimension} coordinates: every start must have shape "
                    f"({first.dimension},) (or be a pytree of the model's structure).",
                    parameter="theta0",
                )
        starts = jnp.stack(points)
    dtype = jnp.promote_types(starts.dtype, first.initial_point().dtype)
    starts = starts.astype(dtype)
    if starts.ndim == 1:
        starts = jnp.broadcast_to(starts, (size,) + starts.shape)
    if starts.shape[1:] != (first.dimension,):
        raise InputError(
            f"theta0 has shape {tuple(starts.shape)}, the manifold has "
            f"{first.dimension} coordinates: expected shape ({size}, "
            f"{first.dimension}).",
            parameter="theta0",
        )
    return starts


def _constants(constant, size, dtype) -> jax.Array:
    check_concrete_numbers(t0=None, t1=None, constant=np.asarray(constant))
    return jnp.broadcast_to(jnp.asarray(constant, dtype), (size,))


def _laid_out(integrator, batched, mesh):
    """The integrator's arrays on the mesh: those of each member split along the
    batch axis, the others on every device."""
    dynamic, static = eqx.partition(integrator, eqx.is_array)
    per_member, common = eqx.partition(dynamic, batched)
    split = NamedSharding(mesh, PartitionSpec(_AXIS))
    whole = NamedSharding(mesh, PartitionSpec())
    per_member = jax.tree.map(lambda x: jax.device_put(x, split), per_member)
    common = jax.tree.map(lambda x: jax.device_put(x, whole), common)
    return eqx.combine(per_member, common, static)


def _check_ranks(integrator, stacked, first, starts) -> None:
    """`solve_flow`'s check of the Gram matrix at each member's start."""
    bounds = [s.max_condition for s in integrator.stops if isinstance(s, ConditionStop)]
    if not bounds:
        return
    if stacked is None:
        grams = _grams(first, starts)
    else:
        grams = _member_grams(stacked, starts)
    grams = np.asarray(grams)
    finite = np.all(np.isfinite(grams.reshape(grams.shape[0], -1)), axis=1)
    if not np.all(finite):
        i = int(np.flatnonzero(~finite)[0])
        raise InputError(f"member {i}: {NOT_FINITE}", parameter="theta0")
    eigenvalues = np.linalg.eigvalsh(grams)
    bad = np.flatnonzero(~(eigenvalues[:, 0] * min(bounds) > eigenvalues[:, -1]))
    if bad.size:
        i = int(bad[0])
        member = first if stacked is None else _member_manifold(stacked, i)
        try:
            check_rank(member, integrator.stops, starts[i])
        except InputError as error:
            raise InputError(
                f"member {i} (of {bad.size} such): {error}", parameter="theta0"
            ) from None


@eqx.filter_jit
def _grams(manifold, starts):
    return jax.vmap(lambda theta: manifold.linearise(theta).gram)(starts)


@eqx.filter_jit
def _member_grams(stacked, starts):
    arrays, static = eqx.partition(stacked, eqx.is_array)
    return jax.vmap(lambda a, theta: eqx.combine(a, static).linearise(theta).gram)(
        arrays, starts
    )


def _member_manifold(stacked, i):
    arrays, static = eqx.partition(stacked, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda x: x[i], arrays), static)


def _batched_mask(integrator: Integrator, manifold_batched: bool) -> PyTree[bool]:
    """Which arrays of the integrator have a batch axis: the constant, and the
    manifold's (both references to it) when one manifold per member was given."""
    arrays = eqx.filter(integrator, eqx.is_array)
    ids = {id(integrator.flow.constant)}
    if manifold_batched:
        ids |= {id(x) for x in jax.tree.leaves(integrator.flow.manifold)}
    return jax.tree.map(lambda x: id(x) in ids, arrays)


# ---------------------------------------------------------------------------------
# The compiled programs.


def _sharded(function, integrator, batched, members, shared, mesh):
    """`function(integrator, member, shared)` for each member, under `jax.vmap`, with
    the batch axis of the input and the output split over `mesh`: XLA partitions the
    loop so that each device steps its own members."""
    dynamic, static = eqx.partition(integrator, eqx.is_array)
    per_member, common = eqx.partition(dynamic, batched)

    def one(per_member, member):
        integ = eqx.combine(per_member, common, static)
        return function(integ, member, shared)

    out = jax.vmap(one)(per_member, members)
    sharding = NamedSharding(mesh, PartitionSpec(_AXIS))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), out)


@eqx.filter_jit
def _init(integrator, batched, starts, shared, mesh):
    def init(integ, theta0, shared):
        return integ.init(theta0, *shared)

    return _sharded(init, integrator, batched, starts, shared, mesh)


@eqx.filter_jit
def _window(integrator, batched, states, attempts, window: int, mesh):
    def run(integ, state, attempts):
        return integ.run_window(state, attempts, window)

    return _sharded(run, integrator, batched, states, attempts, mesh)
