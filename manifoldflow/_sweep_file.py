"""A sweep's TOML file, read and checked (`plan`): the experiment, `max_runs`,
`[fixed]`, `[grid]` and `[[runs]]`, every value checked against the experiment's
own options with the line it is on, and the runs counted without being built
(`Plan`)."""

import argparse
import itertools
import math
import pathlib
import re
import tomllib
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import InputError


_TOP_LEVEL = ("experiment", "max_runs", "fixed", "grid", "runs")


def _line_of(text: str, section: str | None, key: str) -> int | None:
    """The line (1-based) where `key` is set in `section` (`None`: top level)."""
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"^\[\[?\s*([\w.-]+)\s*\]\]?", stripped)
        if header:
            current = header.group(1)
            if section is None and current == key:
                return number
            continue
        if current == section and re.match(
            rf"^[\"']?{re.escape(key)}[\"']?\s*=", stripped
        ):
            return number
    return None


def _where(path, text, section, key) -> str:
    line = _line_of(text, section, key)
    return f"{path}" + (f", line {line}" if line else "")


class Plan:
    """A sweep's runs, counted without building them: `experiment`, `count`, and
    `runs()`, which yields each run's options (option destinations to values, the
    experiment's defaults included) one at a time."""

    def __init__(self, experiment, defaults, fixed, axes, explicit, max_runs, where):
        self.experiment = experiment
        self.defaults, self.fixed, self.axes = defaults, fixed, axes
        self.explicit, self.max_runs, self.where = explicit, max_runs, where
        self.grid_count = math.prod(len(v) for v in axes.values()) if axes else 0
        if not axes and not explicit:
            self.grid_count = 1  # [fixed] alone: one run
        self.count = self.grid_count + len(explicit)

    def describe(self) -> str:
        """How the count comes about, e.g. `grid m 4 x seed 1000 = 4,000 + 1 [[runs]]`."""
        parts = []
        if self.axes:
            sizes = " x ".join(f"{k.replace('_', '-')} {len(v)}" for k, v in self.axes.items())
            parts.append(f"grid {sizes} = {self.grid_count:,}")
        if self.explicit:
            parts.append(f"{len(self.explicit)} [[runs]]")
        return " + ".join(parts) or "[fixed] alone"

    def runs(self):
        def full(run):
            options = {**self.defaults, **run}
            return {
                k: str(v) if isinstance(v, pathlib.Path) else v
                for k, v in options.items()
            }

        if self.axes or not self.explicit:
            for combination in itertools.product(*self.axes.values()):
                yield full({**self.fixed, **dict(zip(self.axes, combination))})
        for run in self.explicit:
            yield full({**self.fixed, **run})


def read_plan(
    path: pathlib.Path,
    experiments: Sequence[str],
    options_of: Callable[[str], dict[str, argparse.Action]],
) -> Plan:
    """The sweep of the file at `path`, every option checked against the
    experiment's options (`InputError` otherwise), its runs counted but not built.
    `experiments`: the names a sweep may run; `options_of(name)`: that command's
    options (destination to argparse action)."""

    if path.is_dir():
        raise InputError(
            f"{path} is a folder, not a sweep file.",
            fix="Give the path of its TOML file, e.g. sweep.toml.",
        )
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path} cannot be read ({error}).") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path} is not valid TOML: {error}.") from None
    for key in data:
        if key not in _TOP_LEVEL:
            raise InputError(
                f"{_where(path, text, None, key)}: unknown key {key!r}; a sweep has "
                'experiment = "...", max_runs = N, [fixed], [grid] and [[runs]].'
            )
    name = data.get("experiment")
    if not isinstance(name, str) or name not in experiments:
        choices = ", ".join(experiments)
        raise InputError(
            f"{_where(path, text, None, 'experiment')}: experiment = {name!r} is not "
            f"one of {choices}."
        )
    max_runs = data.get("max_runs")
    if max_runs is not None and (
        isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1
    ):
        raise InputError(
            f"{_where(path, text, None, 'max_runs')}: max_runs = {max_runs!r} must be "
            "an integer of at least 1 (the most runs this sweep may have)."
        )
    actions = options_of(name)

    def option(section, key, value, label):
        dest = key.replace("-", "_")
        if dest not in actions:
            known = ", ".join(sorted(a.replace("_", "-") for a in actions))
            raise InputError(
                f"{_where(path, text, section, key)}: unknown option {key!r} of {name} "
                f"(its options: {known})."
            )
        # The location only when there is an error: finding a line reads the file.
        return dest, _converted(
            actions[dest], value, lambda: f"{_where(path, text, section, key)}: {label}"
        )

    for section in ("fixed", "grid"):
        if not isinstance(data.get(section, {}), dict):
            raise InputError(f"{path}: [{section}] must be a table of options.")
    fixed = dict(
        option("fixed", k, v, f"{k} = {v!r}") for k, v in data.get("fixed", {}).items()
    )
    explicit = data.get("runs", [])
    if "grid" in data and not data["grid"] and not explicit:
        raise InputError(
            f"{_where(path, text, None, 'grid')}: [grid] is empty: it makes no runs.",
            fix="Give it at least one option with a list of values, e.g. seed = [0, 1],"
            " or remove [grid] for one run of [fixed].",
        )
    axes = {}
    for key, values in data.get("grid", {}).items():
        if not isinstance(values, list):
            raise InputError(
                f"{_where(path, text, 'grid', key)}: grid {key} = {values!r} must be a "
                f"list, e.g. {key} = [{values!r}]."
            )
        if not values:
            raise InputError(
                f"{_where(path, text, 'grid', key)}: grid {key} is empty: give at "
                "least one value (or remove it)."
            )
        converted = [
            option("grid", key, v, f"grid {key} value {v!r}")[1] for v in values
        ]
        axes[key.replace("-", "_")] = converted
    if not isinstance(explicit, list) or not all(isinstance(r, dict) for r in explicit):
        raise InputError(f"{path}: runs must be [[runs]] tables of options.")
    explicit = [
        dict(option("runs", k, v, f"{k} = {v!r}") for k, v in run.items())
        for run in explicit
    ]
    defaults = {dest: action.default for dest, action in actions.items()}
    return Plan(
        name, defaults, fixed, axes, explicit, max_runs, _where(path, text, None, "max_runs")
    )


def _converted(action: argparse.Action, value: Any, where) -> Any:
    """`value` as the option's own type would read it; `InputError` otherwise
    (`where()`: where the value is, for the message)."""
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise InputError(f"{where()} must be true or false.")
        return value
    if isinstance(value, (dict, list)):
        raise InputError(f"{where()}: one value expected, got a {type(value).__name__}.")
    kind = action.type or str
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InputError(f"{where()} is not an integer.")
    if kind is float and (
        isinstance(value, bool) or not isinstance(value, (int, float))
    ):
        raise InputError(f"{where()} is not a number.")
    try:
        converted = kind(value) if kind is not str else str(value)
    except (TypeError, ValueError) as error:
        raise InputError(f"{where()}: {error}.") from None
    if action.choices is not None and converted not in action.choices:
        raise InputError(
            f"{where()} is not one of {', '.join(map(str, action.choices))}."
        )
    return converted
