"""`manifoldflow <experiment>`: run an experiment of the registry, check the theory,
write the results. Bad input: a one-line message and exit code 2."""

import argparse
import atexit
import os
import pathlib
import sys
import time

import manifoldflow


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
        allow_abbrev=False,  # the launcher reads --no-server and --no-cache whole
        epilog="`manifoldflow server status` lists the resident servers that keep "
        "manifoldflow loaded between commands, `manifoldflow server stop` stops them "
        "(see --no-server in an experiment's --help).",
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
            help="keep no compiled or traced programs across runs (they are kept in "
            "~/.cache/manifoldflow/jax or $MANIFOLDFLOW_CACHE_DIR)",
        )
        common.add_argument(
            "--no-server",
            action="store_true",
            help="run in this process and start no resident server (a server keeps "
            "manifoldflow loaded between commands, so that the next one starts fast; "
            "it exits after 10 idle minutes; `manifoldflow server stop` stops it)",
        )
        common.add_argument(
            "--debug", action="store_true", help="show tracebacks of input errors"
        )
    return parser


def main(argv=None, *, started: float | None = None) -> int:
    """Run one command; its exit code (0: all checks passed, 1: a check failed or the
    solve did not finish, 2: bad input, 130: interrupted). `started`: when the
    command began, as `time.time()` (default: when manifoldflow was imported), for
    the wall times it reports (`wall_seconds` in the summary: up to the results;
    the printed one: up to the files written)."""
    from ._errors import InputError
    from ._jax_config import configure_jax
    from .experiments import EXPERIMENTS
    from .experiments._output import write_outcome

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
        if started is None:
            return time.perf_counter() - manifoldflow._IMPORT_STARTED
        return time.time() - started

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


def run(argv=None, *, started: float | None = None, then=None, exit=sys.exit) -> None:
    """A command in this process: [`main`][manifoldflow.cli.main], then `then()`
    (if given; a failure there is reported, not raised), then `exit(code)`. The
    console command passes [`fast_exit`][manifoldflow.cli.fast_exit]."""
    code = exit_code(main, argv, started=started)
    if then is not None:
        try:
            then()
        except Exception as error:  # the command itself is done
            print(f"manifoldflow: started no server ({error})", file=sys.stderr)
    exit(code)


def exit_code(main, argv, **kwargs) -> int:
    """`main(argv, **kwargs)`, with `SystemExit` (`--help`, usage errors) turned into
    its exit code."""
    try:
        return main(argv, **kwargs)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1


def fast_exit(code: int) -> None:
    """Flush, run the `atexit` handlers, and end the process without tearing the
    interpreter down: everything is written and closed when a command returns, and
    the teardown (JAX's runtime and several hundred modules) takes about half a
    second. Under a profiler or tracer, a normal exit (they write at exit)."""
    from _manifoldflow_launcher import flush_streams

    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    flush_streams()
    atexit._run_exitfuncs()
    flush_streams()
    os._exit(code)


if __name__ == "__main__":
    run()
