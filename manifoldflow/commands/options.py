"""The command line's parsers and option tables: one subparser per experiment of
the registry (its own options, then the output group), and `sweep`'s. Everything
that reads argparse's actions (`run_options`, `argv_of`, `experiment_options`) is
here, in one place."""

import argparse
import pathlib


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (and exit code 2), pointing to `--help`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except `None` (the help text says what omitting means)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parsers(experiments) -> tuple[argparse.ArgumentParser, dict]:
    """The top-level parser and one subparser per experiment (by name)."""
    parser = Parser(
        prog="manifoldflow",
        allow_abbrev=False,
        description="Solve the Riemannian sharpness flow on a zero-loss manifold to "
        "high precision and check the theory's predictions.",
    )
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    subparsers = {}
    sweep = sub.add_parser(
        "sweep",
        help="many runs of one experiment from a TOML file (grid, batches, Dask)",
        description=SWEEP_DESCRIPTION,
        formatter_class=Formatter,
        allow_abbrev=False,
    )
    add_sweep_arguments(sweep)
    subparsers["sweep"] = sweep
    for experiment in experiments.values():
        p = sub.add_parser(
            experiment.name,
            help=experiment.help,
            description=experiment.description,
            formatter_class=Formatter,
            allow_abbrev=False,
        )
        subparsers[experiment.name] = p
        experiment.add_arguments(p)
        common = p.add_argument_group("output")
        common.add_argument(
            "--out",
            type=pathlib.Path,
            default=pathlib.Path("manifoldflow-out"),
            help="folder for summary.json (+ summary.npz), trajectory.npz, the figure",
        )
        common.add_argument(
            "--json", action="store_true", help="print summary.json to stdout"
        )
        common.add_argument(
            "--no-progress", action="store_true", help="no progress bar"
        )
        common.add_argument(
            "--no-cache",
            action="store_true",
            help="keep no compiled programs across runs (JAX's compilation cache, "
            "in ~/.cache/manifoldflow/jax or $MANIFOLDFLOW_CACHE_DIR)",
        )
        common.add_argument(
            "--debug", action="store_true", help="show tracebacks of input errors"
        )
        if experiment.checkpoints:
            common.add_argument(
                "--resume",
                type=pathlib.Path,
                default=None,
                metavar="DIR",
                help="continue the run in DIR (killed or interrupted) from its "
                f"checkpoint ({CHECKPOINT}, written after every window of the "
                "solve), with the options it was started with",
            )
    return parser, subparsers


CHECKPOINT = "checkpoint.mfck"
"""A run's checkpoint file, in its output folder."""

OUTPUT_OPTIONS = ("out", "json", "no_progress", "no_cache", "debug", "resume")
"""The options of the output group: not part of what a run computes."""

SWEEP_DESCRIPTION = (
    "Sweeps: many runs of one experiment from a TOML file (grid, batches, Dask), "
    "their records in DIR/runs.jsonl (manifoldflow.sweeps.load reads them back)."
)

CONFIRM_ABOVE = 1_000
"""A sweep of more runs than this runs only with `--yes` or `max_runs` in its file."""


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `manifoldflow sweep`."""
    parser.add_argument(
        "file", type=pathlib.Path, metavar="FILE.toml", help="the sweep"
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("manifoldflow-sweep"),
        help="folder for runs/<id>/, runs.jsonl and sweep.png",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="tcp://HOST:PORT",
        help="the address of a running Dask scheduler (omitted: a LocalCluster of "
        "--workers processes, if dask and distributed are installed)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes of the local cluster (omitted: one per core)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the runs that failed in an earlier sweep into --out",
    )
    parser.add_argument(
        "--yes",
        action="store_true",
        help=f"run a sweep of more than {CONFIRM_ABOVE:,} runs (otherwise refused, "
        "with its count and an estimate of its time; max_runs = N in the file does "
        "the same)",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="if another sweep is running into --out, wait for it to end (otherwise "
        "refused at once)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="keep no compiled programs across processes (JAX's compilation cache)",
    )


def run_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The experiment's options of a parsed command (JSON-ready), without the
    output group's."""
    options = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in OUTPUT_OPTIONS + ("help",):
            continue
        value = getattr(args, action.dest)
        options[action.dest] = str(value) if isinstance(value, pathlib.Path) else value
    return options


def argv_of(parser: argparse.ArgumentParser, options: dict) -> list[str]:
    """The command-line arguments that give `options` (as from `run_options`)."""
    argv = []
    for action in parser._actions:
        if action.dest not in options or not action.option_strings:
            continue
        value = options[action.dest]
        if isinstance(action, argparse._StoreTrueAction):
            argv += [action.option_strings[0]] if value else []
        elif value is not None:
            argv += [action.option_strings[0], str(value)]
    return argv


def experiment_options(
    subparser: argparse.ArgumentParser,
) -> dict[str, argparse.Action]:
    """An experiment's options (by destination), without the output group's."""
    return {
        a.dest: a
        for a in subparser._actions
        if a.option_strings and a.dest not in OUTPUT_OPTIONS + ("help",)
    }
