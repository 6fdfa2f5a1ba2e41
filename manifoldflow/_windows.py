"""The host side of a windowed solve, shared by `solve_flow` and `solve_flows`.

Both run the loop of `flow_solve` in jitted windows of a few steps. Between two
windows the host takes the new step records ([`StepRecords`][]) and accepted states
([`KeptStates`][]) off the device, picks the size of the next window
([`next_attempts`][]), and redraws the progress display ([`HostProgress`][]). The
display lives here, on the host, and not in the compiled loop: a host callback inside
a program keeps it out of JAX's persistent compilation cache, so that every run would
compile it again.
"""

import math

import diffrax
import numpy as np

from ._results import RESULTS
from ._solution import FlowSolution


ENDINGS = (RESULTS.stationary, RESULTS.t1_reached, RESULTS.interrupted)
"""The results of a solve that ended as asked (not a failure, not a budget)."""

WINDOW_SECONDS = 2.0
"""A window's target wall time (see [`next_attempts`][])."""


def first_attempts(window: int) -> int:
    """The number of attempted steps in the first window: at most 4, so that the
    first answer (and Ctrl-C) comes within seconds however slow a step is."""
    return min(4, window)


def next_attempts(attempts: int, elapsed: float, window: int) -> int:
    """The next window's number of attempted steps: doubled (up to `window`) while a
    window takes under `WINDOW_SECONDS`, halved when one takes over four times that,
    so that Ctrl-C, the progress display and checkpoints act every few seconds even
    when one step of a large model takes a minute. Window sizes change no number:
    the loop carries its whole state."""
    if elapsed < WINDOW_SECONDS:
        return min(2 * attempts, window)
    if elapsed > 4 * WINDOW_SECONDS:
        return max(1, attempts // 2)
    return attempts


class KeptStates:
    """The accepted states kept for `ys` without `saveat`: those whose index is a
    multiple of `stride` (from `save_every`), the stride doubling whenever more than
    `limit` would be kept, so that at most `limit` states (evenly spaced in steps)
    plus the last are kept, however many steps the solve takes."""

    def __init__(self, first: np.ndarray, stride: int, limit: int):
        self.stride, self.limit = stride, max(limit, 1)
        self.index = np.zeros(1, int)
        self.states = first[None]
        self.seen = 1

    def add(self, ys: np.ndarray) -> None:
        """Append the next accepted states (indices `seen`, `seen + 1`, ...)."""
        index = np.arange(self.seen, self.seen + ys.shape[0])
        keep = index % self.stride == 0
        self.index = np.concatenate([self.index, index[keep]])
        self.states = np.concatenate([self.states, ys[keep]])
        self.seen += ys.shape[0]
        while self.index.size > self.limit:
            self.stride *= 2
            keep = self.index % self.stride == 0
            self.index, self.states = self.index[keep], self.states[keep]

    def snapshot(self) -> dict[str, np.ndarray]:
        """What `restore` needs to continue from here."""
        return dict(
            kept_index=self.index,
            kept_states=self.states,
            kept_stride=np.asarray(self.stride),
            kept_seen=np.asarray(self.seen),
        )

    def restore(self, saved: dict[str, np.ndarray]) -> None:
        self.index, self.states = saved["kept_index"], saved["kept_states"]
        self.stride, self.seen = int(saved["kept_stride"]), int(saved["kept_seen"])

    def result(self, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(indices, states)`, with the last accepted state."""
        if self.index[-1] == self.seen - 1:
            return self.index, self.states
        return (
            np.append(self.index, self.seen - 1),
            np.concatenate([self.states, last[None]]),
        )


class StepRecords:
    """The step records taken off the device after each window: `sharpness`,
    `gradient_norm`, `constraint_violation` at `step_ts`, for every accepted point."""

    names = ("step_ts", "sharpness", "gradient_norm", "constraint_violation")

    def __init__(self):
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, state, rows: int) -> None:
        """The first `rows` rows of the step records of `state` (a `FlowState`)."""
        records = state.records
        self.append(tuple(np.asarray(getattr(records, n)) for n in self.names), rows)

    def append(self, records: tuple[np.ndarray, ...], rows: int) -> None:
        """The first `rows` rows of `records` (in the order of `names`)."""
        if rows > 0:
            self.parts.append(tuple(r[:rows] for r in records))

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            name: np.concatenate([part[k] for part in self.parts])
            for k, name in enumerate(self.names)
        }

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.parts = [tuple(arrays[name] for name in self.names)]


def host_solution(
    state, retracted, records: StepRecords, kept: KeptStates | None, **fields
) -> FlowSolution:
    """The solution of one solve (one member of a batch) from its final loop state
    (a `FlowState`, of device or NumPy arrays: what it needs of one, `y`, `saves`,
    `noise_floor`, `num_rejected`, `result`), in NumPy, trimmed to the steps taken,
    with no JAX operation (each would stage a program, or at least cost a dispatch:
    a batch builds one solution per member). `theta_final`, `result` and
    `retraction` stay where they are (on the device for a single solve). `ys`: the
    states `kept` kept; without it, those at the output times; without output
    times, the first and the last. `fields`: the rest of the `FlowSolution`
    (`constant`, `stationarity`, ...)."""
    arrays = records.arrays()
    step_ts = arrays["step_ts"]
    last = np.asarray(state.y)
    if kept is not None:
        saved_index, ys = kept.result(last)
    elif state.saves.save_times.shape[0] > 0:
        count = int(state.saves.save_count)
        saved_index = np.asarray(state.saves.saved_index)[:count]
        ys = np.asarray(state.saves.saved_ys)[:count]
    else:
        saved_index = np.asarray([0, step_ts.size - 1])
        ys = np.stack([np.asarray(retracted.theta), last])
    k = int(state.noise_floor.num_tightened)
    return FlowSolution(
        ts=step_ts[saved_index],
        ys=ys,
        step_ts=step_ts,
        sharpness=arrays["sharpness"],
        gradient_norm=arrays["gradient_norm"],
        constraint_violation=arrays["constraint_violation"],
        saved_index=saved_index,
        theta_final=state.y,
        t_final=float(step_ts[-1]),
        num_steps=step_ts.size - 1,
        num_rejected_steps=int(state.num_rejected),
        result=state.result,
        tightened=np.asarray(state.noise_floor.tightened)[:k],
        num_tightened=k,
        retraction=retracted,
        **fields,
    )


def padded_times(targets: list[float] | None) -> list[float]:
    """Output times padded with `inf` to a power of two (at least 8), so that a new
    number of output times rarely compiles a new program."""
    if not targets:
        return []
    size = max(8, 1 << (len(targets) - 1).bit_length())
    return targets + [math.inf] * (size - len(targets))


_BAR_FORMAT = "{percentage:.2f}%|{bar}| [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class HostProgress:
    """A diffrax progress meter drawn from the host between windows.

    `diffrax.TqdmProgressMeter` and `diffrax.TextProgressMeter` are drawn as diffrax
    draws them (a tqdm bar in percent; a line per `minimum_increase`);
    `diffrax.NoProgressMeter` draws nothing. Any other meter has its own `init`,
    `step` and `close` called here, outside any compiled program."""

    def __init__(self, meter: diffrax.AbstractProgressMeter):
        self.meter, self.bar, self.state, self.shown = meter, None, None, 0.0
        self.closed = isinstance(meter, diffrax.NoProgressMeter)
        if self.closed:
            return
        if isinstance(meter, diffrax.TqdmProgressMeter):
            import tqdm

            self.bar = tqdm.tqdm(total=100, unit="%", bar_format=_BAR_FORMAT)
        elif isinstance(meter, diffrax.TextProgressMeter):
            print("0.00%")
        else:
            self.state = meter.init()

    def update(self, progress: float) -> None:
        """Show `progress`, in [0, 1]."""
        if self.closed:
            return
        meter = self.meter
        if self.bar is not None:
            self.bar.n = round(100 * progress, 2)
            self.bar.refresh()
        elif isinstance(meter, diffrax.TextProgressMeter):
            if progress - self.shown > meter.minimum_increase or progress == 1:
                print(f"{100 * progress:.2f}%")
        else:
            self.state = meter.step(self.state, progress)
        self.shown = max(self.shown, progress)

    def close(self, finished: bool = True) -> None:
        """Close the display (at 100% if `finished`); a second call does nothing."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            if finished:
                self.bar.n = 100.0
            self.bar.close()
        elif isinstance(self.meter, diffrax.TextProgressMeter):
            if finished and self.shown != 1:
                print("100.00%")
        else:
            self.meter.close(self.state)
