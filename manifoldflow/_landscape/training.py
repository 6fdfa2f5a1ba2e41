r"""Training dynamics on a loss, for models off any zero-loss manifold: gradient flow
$\dot W = -\nabla L(W)$ (diffrax, PID control, stopped by an event at convergence) and
gradient descent $W \leftarrow W - \eta\nabla L(W)$, both recording the parameters.

The loss is `loss(params) -> scalar` for a pytree of floating-point arrays; pass the
same function object (or an `equinox.Module`) each time to compile once.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from .._errors import InputError
from .flatten import checked_parameters, flat_gradient


class TrainingPath(eqx.Module):
    r"""Recorded training: parameters at `times` and the loss there.

    **Fields:**

    - `times`: flow times $t$ (gradient flow) or step counts $k$ (gradient descent) of
      the records, increasing, the start first and the end last.
    - `params`: the parameters at `times`, a pytree whose leaves have a leading axis of
      length `len(times)`.
    - `loss`, `gradient_norm`: $L$ and $\|\nabla L\|$ at `times`.
    - `step_loss`: gradient descent only, the loss before every step and after the
      last (for oscillation tests); `None` for gradient flow.
    - `final`: the last parameters.
    - `num_steps`: solver steps (gradient flow, accepted) or gradient steps taken.
    - `converged`: gradient flow: the event $\|\nabla L\| \le$ `gtol` fired;
      gradient descent: not decided here (see the caller's test).
    - `diverged`: a non-finite value appeared (gradient descent stops there).
    - `message`: how it ended.
    """

    times: np.ndarray
    params: PyTree
    loss: np.ndarray
    gradient_norm: np.ndarray
    step_loss: np.ndarray | None
    final: PyTree
    num_steps: int
    converged: bool
    diverged: bool
    message: str


def _check_precision(flat, tolerance: float) -> None:
    if flat.dtype != jnp.float64 and tolerance < 1e-6:
        raise InputError(
            f"The parameters are {flat.dtype}, too coarse for tolerances below 1e-6 "
            f"(here {tolerance:g}). Enable float64 first: "
            'jax.config.update("jax_enable_x64", True).'
        )
    if flat.dtype != jnp.float64 and tolerance >= 1.0:
        import warnings

        warnings.warn(
            f"Training in {flat.dtype}: enable float64 for the library's precision.",
            stacklevel=3,
        )


@eqx.filter_jit
def loss_and_gradient_norm(loss, params):
    """`(loss(params), |grad loss(params)|)`, the gradient flattened over the pytree."""
    value, grad = jax.value_and_grad(loss)(params)
    return value, jnp.linalg.norm(jfu.ravel_pytree(grad)[0])


@eqx.filter_jit
def _flow_window(loss, params, t0, t1, gtol, rtol, atol, max_steps):
    flat, gradient = flat_gradient(loss, params)
    unravel = jfu.ravel_pytree(params)[1]

    def field(t, y, args):
        return -gradient(y)

    def stationary(t, y, args, **kwargs):
        return jnp.linalg.norm(field(t, y, args)) <= gtol

    grid = t0 + (t1 - t0) * jnp.linspace(1 / 8, 1, 8)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        t0,
        t1,
        None,
        flat,
        saveat=diffrax.SaveAt(ts=grid, t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=diffrax.Event(stationary),
        max_steps=max_steps,
        throw=False,
    )
    ys = jax.vmap(unravel)(solution.ys)
    return solution.ts, ys, solution.result, solution.stats["num_accepted_steps"]


def gradient_flow(
    loss,
    params: PyTree,
    *,
    gtol: float = 1e-10,
    t1: float = math.inf,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    first_window: float = 1.0,
    max_steps: int = 1_000_000,
) -> TrainingPath:
    r"""Gradient flow on `loss` from `params` until $\|\nabla L\| \le$ `gtol` (a
    diffrax event), `t1`, or `max_steps` accepted steps.

    Runs `Tsit5` with a PID controller in windows $[t_i, t_{i+1}]$ whose length doubles
    from `first_window` (8 records per window, so records are spaced geometrically in
    time: long plateaus near saddles cost few records); compiled once.
    """
    for name, value in (("gtol", gtol), ("rtol", rtol), ("atol", atol)):
        if not value > 0:
            raise InputError(f"{name} must be > 0, got {value}.")
    if not first_window > 0 or not t1 > 0:
        raise InputError(f"first_window and t1 must be > 0, got {first_window}, {t1}.")
    params, flat = checked_parameters(params)
    _check_precision(flat, min(rtol, atol, gtol))
    dtype = flat.dtype
    value, norm = loss_and_gradient_norm(loss, params)
    times, records = [0.0], [params]
    losses, norms = [float(value)], [float(norm)]
    if not (math.isfinite(float(value)) and math.isfinite(float(norm))):
        raise InputError(
            f"The loss or its gradient is not finite at the start: {value}."
        )
    t, width, steps = 0.0, float(first_window), 0
    converged = float(norm) <= gtol
    message = "stationary at the start" if converged else ""
    window_steps = min(100_000, int(max_steps))
    while not converged and t < t1 and steps < max_steps:
        end = min(t + width, t1)
        ts, ys, result, accepted = _flow_window(
            loss,
            params,
            jnp.asarray(t, dtype),
            jnp.asarray(end, dtype),
            jnp.asarray(gtol, dtype),
            jnp.asarray(rtol, dtype),
            jnp.asarray(atol, dtype),
            window_steps,
        )
        steps += int(accepted)
        ts = np.asarray(ts)
        keep = np.isfinite(ts[:-1])  # saved grid times reached before an event
        keep = np.append(keep, True)
        if not np.isfinite(ts[-1]):
            keep[-1] = False
        for i in np.flatnonzero(keep):
            point = jax.tree_util.tree_map(lambda leaf: leaf[i], ys)
            if times and ts[i] <= times[-1]:
                continue
            value, norm = loss_and_gradient_norm(loss, point)
            times.append(float(ts[i]))
            records.append(point)
            losses.append(float(value))
            norms.append(float(norm))
        params = records[-1]
        t = times[-1]
        if result == diffrax.RESULTS.event_occurred:
            converged, message = True, f"stationary: |grad L| <= {gtol:g}"
        elif result != diffrax.RESULTS.successful:
            message = f"the solve failed: {diffrax.RESULTS[result]}"
            break
        elif not np.isfinite(losses[-1]):
            message = "the loss became non-finite"
            break
        width *= 2
    if not message:
        message = "t1 reached" if t >= t1 else f"max_steps = {max_steps} reached"
    stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *records)
    return TrainingPath(
        times=np.asarray(times),
        params=stacked,
        loss=np.asarray(losses),
        gradient_norm=np.asarray(norms),
        step_loss=None,
        final=records[-1],
        num_steps=steps,
        converged=converged,
        diverged=not np.all(np.isfinite(losses)),
        message=message,
    )


@eqx.filter_jit
def _descent_chunk(loss, params, lr, every, size):
    def record(params, _):
        def step(params, _):
            value, grad = jax.value_and_grad(loss)(params)
            new = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grad)
            return new, value

        params, values = lax.scan(step, params, None, length=every)
        return params, (params, values)

    return lax.scan(record, params, None, length=size)


def gradient_descent(
    loss,
    params: PyTree,
    *,
    lr: float,
    num_steps: int,
    record_every: int | None = None,
    chunk_records: int = 64,
) -> TrainingPath:
    r"""`num_steps` steps of $W \leftarrow W - \text{lr}\,\nabla L(W)$, recording the
    parameters every `record_every` steps (default: about 200 records) and the loss
    at every step, in compiled chunks; stops early when a value becomes non-finite
    (`diverged`). Whether it converged is for the caller to test on `step_loss`."""
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"The learning rate must be finite and > 0, got {lr}.")
    if int(num_steps) != num_steps or num_steps < 1:
        raise InputError(f"num_steps must be an integer >= 1, got {num_steps}.")
    num_steps = int(num_steps)
    every = record_every or max(1, num_steps // 200)
    if every < 1 or num_steps % every:
        raise InputError(
            f"record_every = {every} must be >= 1 and divide num_steps = {num_steps}."
        )
    params, flat = checked_parameters(params)
    _check_precision(flat, 1.0)
    lr_array = jnp.asarray(lr, flat.dtype)
    times, records, step_loss = [0], [params], []
    diverged = False
    size = min(chunk_records, num_steps // every)
    done = 0
    while done < num_steps:
        count = min(size, (num_steps - done) // every)
        final, (chunk, values) = _descent_chunk(loss, params, lr_array, every, size)
        values = np.asarray(values).reshape(-1)[: count * every]
        step_loss.append(values)
        for r in range(count):
            times.append(done + (r + 1) * every)
            records.append(jax.tree_util.tree_map(lambda leaf: leaf[r], chunk))
        done += count * every
        params = records[-1]
        # The last chunk may run past num_steps: only the kept steps count.
        finite = all(
            bool(np.all(np.isfinite(leaf)))
            for leaf in jax.tree_util.tree_leaves(params)
        ) and bool(np.all(np.isfinite(values)))
        if not finite:
            diverged = True
            break
    final_loss, final_norm = loss_and_gradient_norm(loss, params)
    step_loss.append(np.asarray([float(final_loss)]))
    norms_and_losses = [loss_and_gradient_norm(loss, p) for p in records]
    stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *records)
    return TrainingPath(
        times=np.asarray(times),
        params=stacked,
        loss=np.asarray([float(v) for v, _ in norms_and_losses]),
        gradient_norm=np.asarray([float(g) for _, g in norms_and_losses]),
        step_loss=np.concatenate(step_loss),
        final=params,
        num_steps=done,
        converged=False,
        diverged=diverged or not math.isfinite(float(final_loss)),
        message="diverged (a non-finite value)" if diverged else f"{done} steps",
    )


def descent_converged(
    path: TrainingPath, minimum: float, *, rtol: float = 1e-6, tail: float = 0.1
) -> tuple[bool, str]:
    r"""The explicit convergence test of a gradient-descent path: over the last `tail`
    of the steps, $L - L_{\min}$ stays below `rtol` times its initial value (so an
    oscillation that neither diverges nor settles is *not* converged).

    **Returns** `(converged, message)`.
    """
    if path.step_loss is None:
        raise InputError("descent_converged tests a gradient-descent path.")
    if path.diverged:
        return False, "diverged (a non-finite value)"
    excess = path.step_loss - minimum
    last = excess[-max(1, int(excess.size * tail)) :]
    tolerance = max(1e-14, rtol * excess[0])
    worst = float(np.max(last))
    if worst <= tolerance:
        return True, f"converged: L - L_min <= {tolerance:.1e} over the last {tail:.0%}"
    return False, (
        f"not converged: L - L_min up to {worst:.3e} over the last {tail:.0%} of the "
        f"steps (tolerance {tolerance:.1e})"
    )
