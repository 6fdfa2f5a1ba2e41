"""The experiment interface: what the command line runs, one subcommand per experiment.

An experiment declares its options, builds its problem from them (all validation
here, before any heavy work: bad input raises `manifoldflow.InputError` with a message
in the words of the command line), runs it, checks the theory against the result,
summarises it and plots it. The command line does everything common once: the output
folder, `summary.json` (+ `summary.npz` for large arrays), `trajectory.npz`, the
figure, the table "prediction vs measured", the exit code.
"""

import abc
import argparse
from typing import Any, ClassVar, TYPE_CHECKING

import equinox as eqx

from ..theory import Report


if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn
    from matplotlib.figure import Figure


class Outcome(eqx.Module):
    """What an experiment produced, ready to be written and shown.

    **Fields:**

    - `report`: the [`manifoldflow.theory.Report`][] of its checks.
    - `summary`: named results for `summary.json`: numbers, strings, booleans, lists and
      arrays (arrays of more than ~1,000 numbers go to `summary.npz` instead).
    - `arrays`: per-step histories for `trajectory.npz`.
    - `headline`: lines printed above the table (what ran, how it ended, R).
    - `finished`: whether the computation ended as it should (e.g. stationary); the
      exit code is 0 only if it did and every applicable check passed.
    - `interrupted`: Ctrl-C ended it (exit code 130; the files are still written).
    - `figure_data`: whatever `plot` needs.
    """

    report: Report
    summary: dict[str, Any]
    arrays: dict[str, Any]
    headline: str
    finished: bool
    interrupted: bool = False
    figure_data: Any = None


class AbstractExperiment(eqx.Module):
    """One experiment of the command line (`manifoldflow <name>`).

    Subclasses set the class attributes `name`, `help` (one line for the list of
    subcommands), `description` (for `--help`), `example_arguments` (a tiny problem
    that runs in seconds: the test suite runs every experiment with them) and
    `figure_name` (`<name>.png`, with underscores), and implement
    `add_arguments`, `build`, `run`, `checks`, `summarise` and `plot`. Every option
    needs a help text; defaults are shown by `--help`.
    """

    name: eqx.AbstractClassVar[str]
    help: eqx.AbstractClassVar[str]
    description: eqx.AbstractClassVar[str]
    example_arguments: eqx.AbstractClassVar[tuple[str, ...]]
    figure_name: eqx.AbstractClassVar[str]
    json_keys: ClassVar[tuple[str, ...]] = ()
    """Summary keys kept in `summary.json` however large (others over ~1,000 numbers
    go to `summary.npz`)."""
    figure_size: ClassVar[tuple[float, float]] = (15.0, 4.0)
    batch_options: ClassVar[tuple[str, ...]] = ("seed",)
    """Options that change a problem's numbers but not its shapes: runs of a sweep
    that differ only in these are given to `run_batch` together."""
    headline_keys: ClassVar[tuple[str, ...]] = (
        "R_final",
        "num_steps",
        "t_final",
        "grad_norm_final",
    )
    """Summary scalars that a sweep records for each run (those present)."""
    checkpoints: ClassVar[bool] = False
    """Whether its one long solve writes a checkpoint (`args.checkpoint`, a path set
    by the command line) that `--resume` continues."""

    @abc.abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the experiment's options (each with `help`)."""

    @abc.abstractmethod
    def build(self, args: argparse.Namespace) -> Any:
        """Validate the options and build the problem; raise `InputError` for bad
        input. Cheap: no solve here."""

    @abc.abstractmethod
    def run(self, problem: Any, *, progress: bool) -> Any:
        """Do the computation (e.g. `solve_flow`) and return its raw result."""

    def run_batch(self, problems: list[Any]) -> list[Any] | None:
        """The results of `run` for several problems of one shape, computed together
        (e.g. by `manifoldflow.solve_flows`); `None` if this experiment does not
        batch them (the sweep then runs them one at a time)."""
        return None

    @abc.abstractmethod
    def checks(self, problem: Any, result: Any) -> Report:
        """Check the theory's predictions against the result."""

    @abc.abstractmethod
    def summarise(self, problem: Any, result: Any, report: Report) -> Outcome:
        """Everything to write and print."""

    @abc.abstractmethod
    def plot(self, outcome: Outcome, figure: "Figure") -> None:
        """Draw the outcome on `figure` (a fixed-size Matplotlib figure)."""
