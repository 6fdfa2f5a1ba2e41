r"""[`manifoldflow.sgd.simulate`][]: many seeds of a simulator for millions of steps,
in compiled chunks with bounded memory, recording a thinned trajectory."""

import math
import time
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Bool, Float, Int

from .._errors import InputError
from .._manifold import AbstractManifold
from ._simulators import AbstractSimulator


_DEFAULT_RECORDS = 1000


class SimulationResult(eqx.Module):
    r"""The recorded trajectory of every seed (NumPy arrays).

    **Fields:**

    - `steps`: the step counts $k$ recorded, shape `(r,)` (0 first, `num_steps` last).
    - `tau`: the flow times $\tau = \eta^2 k$ of those steps.
    - `thetas`: $\theta$ at those steps, shape `(seeds, r, D)`.
    - `loss`: $L = \frac1n\sum_i F_i^2$ there, shape `(seeds, r)`.
    - `final`: $\theta$ after the last step, shape `(seeds, D)`.
    - `diverged`: per seed, whether a non-finite value appeared (its records are NaN
      from then on: a diverged seed has no final point).
    - `diverged_step`: the first recorded step at which a seed was non-finite (-1 if it
      never was).
    - `eta`, `num_steps`, `flow_constant` (`None` where undefined), `wall_seconds`.
    """

    steps: Int[np.ndarray, " r"]
    tau: Float[np.ndarray, " r"]
    thetas: Float[np.ndarray, "seeds r D"]
    loss: Float[np.ndarray, "seeds r"]
    final: Float[np.ndarray, "seeds D"]
    diverged: Bool[np.ndarray, " seeds"]
    diverged_step: Int[np.ndarray, " seeds"]
    eta: float
    num_steps: int
    flow_constant: float | None
    wall_seconds: float


def _loss(manifold, theta):
    return jnp.mean(manifold.constraint(theta) ** 2)


@eqx.filter_jit
def _chunk(simulator, manifold, thetas, keys, eta, first_step, num_steps, every, size):
    """`size` records, each after `every` steps (none past `num_steps`), for all
    seeds. Step `k` of seed `s` uses `fold_in(keys[s], k)`: the same randomness
    whatever the chunking."""

    def one_seed(theta, key):
        def record(theta, r):
            def step(j, theta):
                k = first_step + r * every + j
                new = simulator.step(manifold, theta, eta, jax.random.fold_in(key, k))
                return jnp.where(k < num_steps, new, theta)

            theta = lax.fori_loop(0, every, step, theta)
            return theta, (theta, _loss(manifold, theta))

        return lax.scan(record, theta, jnp.arange(size))

    return jax.vmap(one_seed)(thetas, keys)


def simulate(
    manifold: AbstractManifold,
    theta0: Float[ArrayLike, " D"],
    simulator: AbstractSimulator,
    *,
    eta: float,
    num_steps: int,
    seeds: int | Int[ArrayLike, " seeds"] | Sequence[int] = 16,
    record_every: int | None = None,
    chunk_records: int = 64,
    max_record_bytes: int = 2**30,
    progress: bool = False,
) -> SimulationResult:
    r"""Run `simulator` from `theta0` for `num_steps` steps of size `eta`, once per
    seed, all seeds at once (`vmap`), in compiled chunks.

    ```python
    from manifoldflow.sgd import LabelNoiseGD, simulate

    simulator = LabelNoiseGD(sigma=1.0)
    result = simulate(manifold, theta0, simulator, eta=0.01, num_steps=10_000)
    flow = mf.solve_flow(manifold, theta0, constant=simulator.flow_constant(manifold),
                         saveat=[result.tau[-1]], stationarity=0.0)
    ```

    **Arguments:**

    - `manifold`, `theta0`: the residuals $F$ and the start (on $\Gamma$ or not).
    - `simulator`: e.g. [`manifoldflow.sgd.LabelNoiseGD`][].
    - `eta`: the step size, > 0.
    - `num_steps`: the number of steps $k$, >= 1.
    - `seeds`: a number of seeds (0, 1, ...) or the seeds themselves.
    - `record_every`: steps between records (default: about 1000 records).
    - `chunk_records`: records per compiled call (progress and Ctrl-C act between).
    - `max_record_bytes`: refuse to record more than this (raise `record_every`).
    - `progress`: a tqdm bar over the steps.

    **Returns:** a [`manifoldflow.sgd.SimulationResult`][].

    **Raises:** `manifoldflow.InputError` for a bad `eta`, `num_steps`, seeds, a
    `theta0` of the wrong shape, or records that would not fit in `max_record_bytes`.
    """
    eta, num_steps, seed_list, every = _check(
        manifold, theta0, eta, num_steps, seeds, record_every
    )
    dimension = manifold.dimension
    num_records = math.ceil(num_steps / every)
    needed = len(seed_list) * (num_records + 1) * (dimension + 1) * 8
    if needed > max_record_bytes:
        raise InputError(
            f"Recording {num_records + 1} points of dimension {dimension} for "
            f"{len(seed_list)} seeds needs {needed / 2**30:.2f} GiB, more than "
            f"max_record_bytes = {max_record_bytes / 2**30:.2f} GiB: raise "
            f"record_every to at least {math.ceil(every * needed / max_record_bytes)} "
            "or use fewer seeds."
        )
    theta0 = jnp.asarray(theta0)
    dtype = theta0.dtype
    thetas = jnp.broadcast_to(theta0, (len(seed_list), dimension))
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seed_list))
    size = min(chunk_records, num_records)
    eta_array = jnp.asarray(eta, dtype)
    loss0 = np.asarray(jax.vmap(lambda t: _loss(manifold, t))(thetas))
    records_theta = [np.asarray(thetas)[:, None]]
    records_loss = [loss0[:, None]]
    bar = _bar(progress, num_steps)
    start = time.perf_counter()
    try:
        done = 0
        while done < num_records:
            thetas, (chunk_thetas, chunk_loss) = _chunk(
                simulator,
                manifold,
                thetas,
                keys,
                eta_array,
                jnp.asarray(done * every),
                jnp.asarray(num_steps),
                every,
                size,
            )
            keep = min(size, num_records - done)
            records_theta.append(np.asarray(chunk_thetas)[:, :keep])
            records_loss.append(np.asarray(chunk_loss)[:, :keep])
            done += keep
            if bar is not None:
                bar.update(min(done * every, num_steps) - bar.n)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    steps = np.minimum(np.arange(num_records + 1) * every, num_steps)
    all_thetas = np.concatenate(records_theta, axis=1)
    finite = np.all(np.isfinite(all_thetas), axis=2)
    diverged = ~np.all(finite, axis=1)
    first_bad = np.where(diverged, np.argmin(finite, axis=1), -1)
    diverged_step = np.where(diverged, steps[first_bad], -1)
    return SimulationResult(
        steps=steps,
        tau=eta**2 * steps.astype(np.float64),
        thetas=all_thetas,
        loss=np.concatenate(records_loss, axis=1),
        final=np.asarray(thetas),
        diverged=diverged,
        diverged_step=diverged_step,
        eta=eta,
        num_steps=num_steps,
        flow_constant=_constant(simulator, manifold),
        wall_seconds=wall,
    )


def _constant(simulator, manifold):
    try:
        return simulator.flow_constant(manifold)
    except InputError:
        return None


def _check(manifold, theta0, eta, num_steps, seeds, record_every):
    try:
        eta = float(eta)
    except (TypeError, ValueError):
        raise InputError(f"eta must be a number, got {eta!r}.") from None
    if not (math.isfinite(eta) and eta > 0):
        raise InputError(f"eta must be finite and > 0, got {eta}.")
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise InputError(f"num_steps must be an integer >= 1, got {num_steps!r}.")
    num_steps = int(num_steps)
    if np.ndim(seeds) == 0:
        if int(seeds) != seeds or seeds < 1:
            raise InputError(f"seeds must be a count >= 1 or a list, got {seeds!r}.")
        seed_list = list(range(int(seeds)))
    else:
        seed_list = [int(s) for s in np.asarray(seeds).reshape(-1)]
        if not seed_list:
            raise InputError("seeds is empty.")
    shape = np.shape(theta0)
    if shape != (manifold.dimension,):
        raise InputError(
            f"theta0 has shape {shape}; the manifold's coordinates have shape "
            f"({manifold.dimension},)."
        )
    if record_every is None:
        record_every = max(1, math.ceil(num_steps / _DEFAULT_RECORDS))
    if int(record_every) != record_every or record_every < 1:
        raise InputError(f"record_every must be an integer >= 1, got {record_every}.")
    return eta, num_steps, seed_list, int(record_every)


def _bar(progress: bool, total: int):
    if not progress:
        return None
    import tqdm

    return tqdm.tqdm(total=total, unit="step", unit_scale=True)
