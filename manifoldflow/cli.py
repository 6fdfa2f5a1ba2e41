"""`manifoldflow <experiment>`: run an experiment of the registry, check the theory,
write the results. Bad input: a one-line message and exit code 2."""

import argparse
import os
import pathlib
import sys
import textwrap
import time
import traceback

import manifoldflow

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
    return parser, subparsers


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
    configure_jax(cache=not args.no_cache)
    experiment = EXPERIMENTS[args.experiment]
    created = False
    try:
        created = _writable_folder(args.out)
        problem = experiment.build(args)
        result = experiment.run(problem, progress=not args.no_progress)
    except InputError as error:
        if created and not any(args.out.iterdir()):
            args.out.rmdir()  # nothing was written: leave no empty folder behind
        if args.debug:
            traceback.print_exc()
        _print(f"manifoldflow {experiment.name}: error: {error}", sys.stderr)
        return 2
    report = experiment.checks(problem, result)
    outcome = experiment.summarise(problem, result, report)
    passed = outcome.finished and report.passed
    summary = dict(outcome.summary, checks=[c.to_dict() for c in report.checks])

    def elapsed() -> float:
        return time.perf_counter() - manifoldflow._IMPORT_STARTED

    # Up to the results; the text below also counts writing the files.
    summary.update(checks_passed=passed, wall_seconds=elapsed())
    files = write_outcome(args.out, experiment, outcome, summary)
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
    if outcome.interrupted:
        return 130
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
