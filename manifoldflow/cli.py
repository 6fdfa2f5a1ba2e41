"""`manifoldflow <experiment>`: run an experiment of the registry, check the theory,
write the results. Bad input: a one-line message and exit code 2."""

import argparse
import json
import os
import pathlib
import sys
import textwrap
import time
import traceback
from typing import Any

import manifoldflow

from . import sweeps
from ._errors import InputError
from ._jax_config import configure_jax
from .experiments import EXPERIMENTS
from .experiments._output import write_outcome


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (and exit code 2), pointing to `--help`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except `None` (the help text says what omitting means)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _parser(experiments) -> tuple[argparse.ArgumentParser, dict]:
    """The top-level parser and one subparser per experiment (by name)."""
    parser = _Parser(
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
        description=sweeps.__doc__.split("\n\n")[0].replace("`", ""),
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    sweeps.add_arguments(sweep)
    subparsers["sweep"] = sweep
    for experiment in experiments.values():
        p = sub.add_parser(
            experiment.name,
            help=experiment.help,
            description=experiment.description,
            formatter_class=_Formatter,
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
RUN_FILE = "run.json"
# Options of the output group: not part of what a run computes.
_OUTPUT_OPTIONS = ("out", "json", "no_progress", "no_cache", "debug", "resume")


def run_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The experiment's options of a parsed command (JSON-ready), without the
    output group's."""
    options = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in _OUTPUT_OPTIONS + ("help",):
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


def _resumed(subparser, args, argv) -> argparse.Namespace:
    """The arguments of the run in `args.resume`, with this command's output
    options; `InputError` if it is not a run of this experiment."""
    folder = args.resume
    record = folder / RUN_FILE
    if not record.is_file():
        raise InputError(
            f"--resume {folder}: no {RUN_FILE} there, so it is not the output folder "
            "of a manifoldflow run."
        )
    try:
        saved = json.loads(record.read_text())
        experiment, options = saved["experiment"], saved["options"]
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"--resume {folder}: {RUN_FILE} is unreadable ({error})."
        ) from None
    name = subparser.prog.split()[-1]
    if experiment != name:
        raise InputError(
            f"--resume {folder} holds a run of {experiment}, not {name}: continue it "
            f"with manifoldflow {experiment} --resume {folder}."
        )
    given = {
        token.split("=")[0][2:].replace("-", "_")
        for token in argv
        if token.startswith("--")
    } - set(_OUTPUT_OPTIONS)
    if given:
        listed = ", ".join(f"--{g.replace('_', '-')}" for g in sorted(given))
        raise InputError(
            f"--resume takes the options the run was started with ({RUN_FILE}): "
            f"remove {listed}, or start a new run with another --out."
        )
    if not (folder / CHECKPOINT).is_file():
        done = (folder / "summary.json").is_file()
        raise InputError(
            f"--resume {folder}: "
            + (
                "the run there finished (its summary.json is written): nothing to "
                "resume."
                if done
                else f"no {CHECKPOINT} there (the run was stopped before its first "
                "checkpoint): start it again."
            )
        )
    flags = [
        f"--{k.replace('_', '-')}"
        for k in ("json", "no_progress", "no_cache", "debug")
        if getattr(args, k)
    ]
    resumed = subparser.parse_args(argv_of(subparser, options) + flags)
    resumed.out, resumed.resume = folder, folder
    return resumed


def _writable_folder(out: pathlib.Path) -> bool:
    """Create `out` (a folder) and check that files can be written there, before any
    work; `InputError` otherwise. Whether it was created here."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder.")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".manifoldflow-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise InputError(
            f"--out {out} cannot be written ({error.strerror or error}): choose a "
            "folder you can write to."
        ) from None
    return created


def _record_run(out: pathlib.Path, experiment: str, options: dict) -> None:
    """`run.json`: what `--resume` and the sweeps read back."""
    record = dict(
        experiment=experiment, options=options, manifoldflow=manifoldflow.__version__
    )
    (out / RUN_FILE).write_text(json.dumps(record, default=str))


def _fitted(text: str, width: int = 100) -> str:
    """`text` with every line longer than `width` wrapped, its continuation lines
    indented two more spaces than it."""
    lines = []
    for line in text.splitlines():
        indent = " " * (len(line) - len(line.lstrip()))
        lines.append(
            textwrap.fill(
                line,
                width=width,
                subsequent_indent=indent + "  ",
                break_on_hyphens=False,
                break_long_words=False,
            )
            if len(line) > width
            else line
        )
    return "\n".join(lines)


def _print(text: str, file) -> bool:
    """Print; `False` if the reader has gone (e.g. piped into `head`)."""
    try:
        print(text, file=file, flush=True)
    except BrokenPipeError:
        # Point the stream at /dev/null, so that Python's flush at exit is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, file.fileno())
        return False
    return True


def main(argv=None) -> int:
    """Run one command; its exit code (0: all checks passed, 1: a check failed or the
    solve did not finish, 2: bad input, 130: interrupted). The wall times it reports
    count from the import of manifoldflow (`wall_seconds` in the summary: up to the
    results; the printed one: up to the files written)."""
    parser, subparsers = _parser(EXPERIMENTS)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        subparsers[args.experiment].error(
            f"unrecognized arguments: {' '.join(unknown)}"
        )
    if args.experiment == "sweep":
        return sweeps.command(args)
    configure_jax(cache=not args.no_cache)
    experiment = EXPERIMENTS[args.experiment]
    subparser = subparsers[args.experiment]
    created = False
    try:
        if getattr(args, "resume", None) is not None:
            given = argv if argv is not None else sys.argv[1:]
            args = _resumed(subparser, args, list(given)[1:])
        created = not args.out.exists()
        problem = prepare(subparser, experiment, args)
        result = experiment.run(problem, progress=not args.no_progress)
    except InputError as error:
        if created and args.out.is_dir():  # nothing was computed: leave no folder
            (args.out / RUN_FILE).unlink(missing_ok=True)
            if not any(args.out.iterdir()):
                args.out.rmdir()
        if args.debug:
            traceback.print_exc()
        _print(f"manifoldflow {experiment.name}: error: {error}", sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Outside the flow's solve (which returns what it computed): before it, or in
        # a phase that has nothing to write yet.
        if args.debug:
            traceback.print_exc()
        _print(
            f"manifoldflow {experiment.name}: interrupted before its results were "
            "computed; nothing more is written"
            + (
                f" (the checkpoint in {args.out} continues it: --resume {args.out})"
                if getattr(args, "checkpoint", None) is not None
                and args.checkpoint.exists()
                else ""
            )
            + ".",
            sys.stderr,
        )
        return 130
    try:
        return finish(experiment, args, problem, result)[0]
    except KeyboardInterrupt:
        _print(
            f"manifoldflow {experiment.name}: interrupted while writing its results "
            f"into {args.out}: they may be incomplete.",
            sys.stderr,
        )
        return 130


def prepare(subparser, experiment, args) -> Any:
    """The output folder (checked), `run.json`, and the experiment's problem, for
    parsed arguments; `InputError` for bad input."""
    _writable_folder(args.out)
    args.checkpoint = None
    if experiment.checkpoints:
        args.checkpoint = args.out / CHECKPOINT
        if getattr(args, "resume", None) is None and args.checkpoint.exists():
            raise InputError(
                f"--out {args.out} holds the checkpoint of an unfinished run: "
                f"continue it with --resume {args.out}, or delete "
                f"{args.checkpoint} to start again."
            )
    _record_run(args.out, experiment.name, run_options(subparser, args))
    return experiment.build(args)


def finish(experiment, args, problem, result, quiet=False) -> tuple[int, dict]:
    """Check, summarise and write a computed run; print its table (unless `quiet`).
    `(exit code, summary)`."""
    report = experiment.checks(problem, result)
    outcome = experiment.summarise(problem, result, report)
    passed = outcome.finished and report.passed
    summary = dict(outcome.summary, checks=[c.to_dict() for c in report.checks])

    def elapsed() -> float:
        return time.perf_counter() - manifoldflow._IMPORT_STARTED

    # Up to the results; the text below also counts writing the files.
    summary.update(checks_passed=passed, wall_seconds=elapsed())
    files = write_outcome(args.out, experiment, outcome, summary)
    if args.checkpoint is not None and not outcome.interrupted:
        args.checkpoint.unlink(missing_ok=True)  # the run is complete
    code = 130 if outcome.interrupted else 0 if passed else 1
    if quiet:
        return code, summary
    if passed:
        verdict = "ALL CHECKS PASSED"
    elif not outcome.finished and report.passed:
        verdict = "NOT FINISHED (see above; the applicable checks passed)"
    else:
        verdict = "SOME CHECKS FAILED"
    text = (
        f"{_fitted(outcome.headline)}\n\n{report.table()}\n\n{verdict} "
        f"({elapsed():.2f} s in all); wrote\n"
        + "\n".join(f"  {args.out / f}" for f in files)
    )
    if _print(text, sys.stderr if args.json else sys.stdout) and args.json:
        _print((args.out / "summary.json").read_text(), sys.stdout)
    return code, summary


if __name__ == "__main__":
    sys.exit(main())
