"""`manifoldflow <experiment>`: run an experiment of the registry, check the theory,
write the results. Bad input: a one-line message and exit code 2."""

import argparse
import pathlib
import sys
import time

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


def _parser(experiments) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="manifoldflow",
        allow_abbrev=False,
        description="Solve the Riemannian sharpness flow on a zero-loss manifold to "
        "high precision and check the theory's predictions.",
    )
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for experiment in experiments.values():
        p = sub.add_parser(
            experiment.name,
            help=experiment.help,
            description=experiment.description,
            formatter_class=_Formatter,
            allow_abbrev=False,
        )
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
    return parser


def main(argv=None) -> int:
    """Run one command; its exit code (0: all checks passed, 1: a check failed or the
    solve did not finish, 2: bad input, 130: interrupted). The wall times it reports
    count from the import of manifoldflow (`wall_seconds` in the summary: up to the
    results; the printed one: up to the files written)."""
    args = _parser(EXPERIMENTS).parse_args(argv)
    configure_jax(cache=not args.no_cache)
    experiment = EXPERIMENTS[args.experiment]
    try:
        if args.out.exists() and not args.out.is_dir():
            raise InputError(f"--out {args.out} is a file, not a folder.")
        problem = experiment.build(args)
        result = experiment.run(problem, progress=not args.no_progress)
    except InputError as error:
        if args.debug:
            raise
        print(f"manifoldflow {experiment.name}: error: {error}", file=sys.stderr)
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
        f"{outcome.headline}\n\n{report.table()}\n\n{verdict}; wrote "
        f"{', '.join(str(args.out / f) for f in files)} "
        f"({elapsed():.2f} s in all)"
    )
    print(text, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print((args.out / "summary.json").read_text())
    if outcome.interrupted:
        return 130
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
