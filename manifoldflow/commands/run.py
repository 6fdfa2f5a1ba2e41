"""The life of one run of an experiment on the command line: its output folder
(checked before any work), `run.json` (what `--resume` and the sweeps read back),
the problem built, the result checked, summarised and written."""

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import textwrap
import time
from typing import Any

import manifoldflow

from .._errors import InputError
from ..experiments._output import write_outcome
from .options import argv_of, CHECKPOINT, OUTPUT_OPTIONS, run_options


RUN_FILE = "run.json"
"""The record of a run's experiment and options, in its output folder."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run, prepared: its arguments (with `checkpoint`, the path of its
    checkpoint or `None`, as the experiment's `build` reads it), its output folder,
    whether that folder was created for it, and its problem."""

    args: argparse.Namespace
    out: pathlib.Path
    checkpoint: pathlib.Path | None
    created: bool
    problem: Any


def resumed(subparser, args, argv) -> argparse.Namespace:
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
    } - set(OUTPUT_OPTIONS)
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


def writable_folder(out: pathlib.Path) -> bool:
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


def record_run(out: pathlib.Path, experiment: str, options: dict) -> None:
    """`run.json`: what `--resume` and the sweeps read back."""
    record = dict(
        experiment=experiment, options=options, manifoldflow=manifoldflow.__version__
    )
    (out / RUN_FILE).write_text(json.dumps(record, default=str))


def fitted(text: str, width: int = 100) -> str:
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


def print_text(text: str, file) -> bool:
    """Print; `False` if the reader has gone (e.g. piped into `head`)."""
    try:
        print(text, file=file, flush=True)
    except BrokenPipeError:
        # Point the stream at /dev/null, so that Python's flush at exit is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, file.fileno())
        return False
    return True


def prepare(subparser, experiment, args) -> Run:
    """The output folder (checked), `run.json`, and the experiment's problem, for
    parsed arguments (left as they are); `InputError` for bad input."""
    created = writable_folder(args.out)
    checkpoint = None
    if experiment.checkpoints:
        checkpoint = args.out / CHECKPOINT
        if getattr(args, "resume", None) is None and checkpoint.exists():
            raise InputError(
                f"--out {args.out} holds the checkpoint of an unfinished run: "
                f"continue it with --resume {args.out}, or delete "
                f"{checkpoint} to start again."
            )
    record_run(args.out, experiment.name, run_options(subparser, args))
    args = argparse.Namespace(**dict(vars(args), checkpoint=checkpoint))
    return Run(args, args.out, checkpoint, created, experiment.build(args))


def finish(experiment, run: Run, result, quiet=False) -> tuple[int, dict]:
    """Check, summarise and write a computed run; print its table (unless `quiet`).
    `(exit code, summary)`."""
    args, problem = run.args, run.problem
    report = experiment.checks(problem, result)
    outcome = experiment.summarise(problem, result, report)
    passed = outcome.finished and report.passed
    summary = dict(outcome.summary, checks=[c.to_dict() for c in report.checks])

    def elapsed() -> float:
        return time.perf_counter() - manifoldflow._IMPORT_STARTED

    # Up to the results; the text below also counts writing the files.
    summary.update(checks_passed=passed, wall_seconds=elapsed())
    files = write_outcome(run.out, experiment, outcome, summary)
    if run.checkpoint is not None and not outcome.interrupted:
        run.checkpoint.unlink(missing_ok=True)  # the run is complete
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
        f"{fitted(outcome.headline)}\n\n{report.table()}\n\n{verdict} "
        f"({elapsed():.2f} s in all); wrote\n"
        + "\n".join(f"  {run.out / f}" for f in files)
    )
    if print_text(text, sys.stderr if args.json else sys.stdout) and args.json:
        print_text((run.out / "summary.json").read_text(), sys.stdout)
    return code, summary
