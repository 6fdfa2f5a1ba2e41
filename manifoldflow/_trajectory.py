"""The accepted steps of a solve, gathered on the host window by window."""

import numpy as np

from ._solution import FlowSolution


class Trajectory:
    """Times, diagnostics and (all, or only the requested) states of accepted steps.

    Host-side and mutable: it lives only inside [`manifoldflow.solve_flow`][].
    """

    def __init__(self, t0, theta, diagnostics, *, keep_all: bool):
        self.keep_all = keep_all
        self.ts = [np.asarray([t0], dtype=float)]
        self.diagnostics = [
            np.asarray(
                [
                    [
                        float(diagnostics.sharpness),
                        float(diagnostics.gradient_norm),
                        float(diagnostics.constraint_violation),
                    ]
                ]
            )
        ]
        self.ys = [np.asarray(theta)[None]] if keep_all else []
        self.saved_index: list[int] = []
        self.saved_ys: list[np.ndarray] = []
        self.size = 1
        self.history_start = 0
        self.last_theta = np.asarray(theta)

    def add(self, records) -> None:
        """Append the filled rows of a window's `StepRecords` (sliced in NumPy: slicing
        the device arrays by a changing count would compile a program per count)."""
        count = int(records.count)
        if count == 0:
            return
        self.ts.append(np.asarray(records.ts)[:count])
        columns = (
            records.sharpness,
            records.gradient_norm,
            records.constraint_violation,
        )
        self.diagnostics.append(np.stack([np.asarray(c)[:count] for c in columns], 1))
        ys = np.asarray(records.ys)[:count]
        if self.keep_all:
            self.ys.append(ys)
        self.last_theta = ys[-1].copy()
        self.size += count

    def mark_saved(self) -> None:
        """The last accepted point is an output time."""
        self.saved_index.append(self.size - 1)
        self.saved_ys.append(self.last_theta)

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """`(gradient_norm, sharpness)` since the last `reset_history()`."""
        diagnostics = np.concatenate(self.diagnostics)[self.history_start :]
        return diagnostics[:, 1], diagnostics[:, 0]

    def reset_history(self) -> None:
        self.history_start = self.size

    @property
    def last(self) -> np.ndarray:
        """`(sharpness, gradient_norm, constraint_violation)` of the last point."""
        return self.diagnostics[-1][-1]

    def solution(self, *, state, result, save_every, targets, **fields) -> FlowSolution:
        step_ts = np.concatenate(self.ts)
        diagnostics = np.concatenate(self.diagnostics)
        if targets is None:
            ys = np.concatenate(self.ys)
            saved_index = np.arange(step_ts.size)
            if save_every > 1:
                keep = np.zeros(step_ts.size, bool)
                keep[::save_every] = True
                keep[-1] = True
                ys, saved_index = ys[keep], saved_index[keep]
        else:
            saved_index = np.asarray(self.saved_index, dtype=int)
            ys = np.asarray(self.saved_ys).reshape(
                len(saved_index), self.last_theta.size
            )
        return FlowSolution(
            ts=step_ts[saved_index],
            ys=ys,
            step_ts=step_ts,
            sharpness=diagnostics[:, 0],
            gradient_norm=diagnostics[:, 1],
            constraint_violation=diagnostics[:, 2],
            saved_index=saved_index,
            theta_final=state.y,
            t_final=float(step_ts[-1]),
            num_steps=int(state.num_accepted),
            num_rejected_steps=int(state.num_rejected),
            result=result,
            **fields,
        )
