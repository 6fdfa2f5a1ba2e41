"""Writing an experiment's outcome: `summary.json` (+ `summary.npz` for arrays of more
than `LARGE` numbers, under the same keys), `trajectory.npz`, the figure; and the
text the command prints."""

import json
import math
import pathlib
from typing import Any

import numpy as np

from .base import AbstractExperiment, Outcome


LARGE = 1000


def _json_value(value: Any) -> Any:
    """JSON-ready: NumPy scalars to Python, non-finite floats to `None`."""
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_value(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def split_summary(
    summary: dict[str, Any], keep: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """`(for summary.json, for summary.npz)`: numeric arrays of more than `LARGE`
    numbers leave the JSON, which says where they went and their shape, except the
    keys in `keep` (an experiment's inputs that belong in the JSON whatever their
    size)."""
    small, large = {}, {}
    for key, value in summary.items():
        if isinstance(value, (list, tuple, np.ndarray)) and key not in keep:
            try:
                array = np.asarray(value)
            except ValueError:  # ragged, e.g. matrices of different shapes
                array = np.asarray([], dtype=object)
            if array.dtype != object and np.issubdtype(array.dtype, np.number):
                if array.size > LARGE:
                    large[key] = array
                    small[key] = {"in": "summary.npz", "shape": list(array.shape)}
                    continue
        small[key] = _json_value(value)
    return small, large


def _plain_log_labels(figure) -> None:
    """Matplotlib's default labels of log axes (mathtext) as plain text."""
    from matplotlib.ticker import LogFormatter, LogFormatterSciNotation

    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if type(axis.get_major_formatter()) is LogFormatterSciNotation:
                axis.set_major_formatter(LogFormatter())
            if type(axis.get_minor_formatter()) is LogFormatterSciNotation:
                axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))


def write_outcome(
    out: pathlib.Path, experiment: AbstractExperiment, outcome: Outcome, summary: dict
) -> list[str]:
    """Write every file of an outcome into `out`; the file names written."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    small, large = split_summary(summary, experiment.json_keys)
    (out / "summary.json").write_text(json.dumps(small, allow_nan=False))
    files = ["summary.json"]
    # Uncompressed: float64 data hardly compress (8.2 against 10 MB for a large
    # two-layer run), and compressing took 0.4 s of a 5 s command.
    if large:
        np.savez(out / "summary.npz", **large)
        files.append("summary.npz")
    np.savez(out / "trajectory.npz", **outcome.arrays)
    files.append("trajectory.npz")
    # A fixed layout, without pyplot: `tight_layout` alone costs about a second.
    # Titles at a fixed height (no axis is labelled on top): placing them
    # automatically measures every tick label, 0.6 s of a 0.9 s savefig.
    # Log axes labelled 1e-08 rather than in mathtext: its first use builds a
    # parser, a quarter of a second of every command.
    with matplotlib.rc_context({"axes.titley": 1.0}):
        figure = Figure(figsize=experiment.figure_size)
        FigureCanvasAgg(figure)
        experiment.plot(outcome, figure)
        _plain_log_labels(figure)
        figure.savefig(out / experiment.figure_name, dpi=100)
    files.append(experiment.figure_name)
    return files
