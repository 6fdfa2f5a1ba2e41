"""`manifoldflow <experiment>`: run an experiment of the registry, check the theory,
write the results. Bad input: a one-line message and exit code 2."""

import sys
import traceback

from .._errors import InputError
from .._jax_config import configure_jax
from ..experiments import EXPERIMENTS
from . import sweep
from .options import CHECKPOINT, parsers
from .run import finish, prepare, print_text, resumed, RUN_FILE


def main(argv=None) -> int:
    """Run one command; its exit code (0: all checks passed, 1: a check failed or the
    solve did not finish, 2: bad input, 130: interrupted). The wall times it reports
    count from the import of manifoldflow (`wall_seconds` in the summary: up to the
    results; the printed one: up to the files written)."""
    parser, subparsers = parsers(EXPERIMENTS)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        subparsers[args.experiment].error(
            f"unrecognized arguments: {' '.join(unknown)}"
        )
    if args.experiment == "sweep":
        return sweep.command(args)
    configure_jax(cache=not args.no_cache)
    experiment = EXPERIMENTS[args.experiment]
    subparser = subparsers[args.experiment]
    created = False
    try:
        if getattr(args, "resume", None) is not None:
            given = argv if argv is not None else sys.argv[1:]
            args = resumed(subparser, args, list(given)[1:])
        created = not args.out.exists()
        run = prepare(subparser, experiment, args)
        result = experiment.run(run.problem, progress=not args.no_progress)
    except InputError as error:
        if created and args.out.is_dir():  # nothing was computed: leave no folder
            (args.out / RUN_FILE).unlink(missing_ok=True)
            if not any(args.out.iterdir()):
                args.out.rmdir()
        if args.debug:
            traceback.print_exc()
        print_text(f"manifoldflow {experiment.name}: error: {error}", sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Outside the flow's solve (which returns what it computed): before it, or in
        # a phase that has nothing to write yet.
        if args.debug:
            traceback.print_exc()
        checkpoint = args.out / CHECKPOINT
        print_text(
            f"manifoldflow {experiment.name}: interrupted before its results were "
            "computed; nothing more is written"
            + (
                f" (the checkpoint in {args.out} continues it: --resume {args.out})"
                if experiment.checkpoints and checkpoint.exists()
                else ""
            )
            + ".",
            sys.stderr,
        )
        return 130
    try:
        return finish(experiment, run, result)[0]
    except KeyboardInterrupt:
        print_text(
            f"manifoldflow {experiment.name}: interrupted while writing its results "
            f"into {args.out}: they may be incomplete.",
            sys.stderr,
        )
        return 130
