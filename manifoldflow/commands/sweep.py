"""`manifoldflow sweep FILE.toml --out DIR`: many runs of one experiment, grouped
into batched solves, spread over the workers of a Dask cluster, each finished run
one record appended to `DIR/runs.jsonl` (the file format, the grouping and the
journal: see [`manifoldflow.sweeps`][])."""

import argparse
import hashlib
import json
import math
import os
import pathlib
import signal
import sys
import time
import traceback
import warnings

from .. import _journal
from .._errors import InputError
from .._jax_config import configure_jax
from .._journal import (
    FolderLock,
    Journal,
    JournalWarning,
    read as read_journal,
    repair as repair_journal,
)
from .._sweep_file import Plan, read_plan
from ..experiments import EXPERIMENTS
from ..sweeps import RUNS_FILE
from .options import argv_of, CHECKPOINT, CONFIRM_ABOVE, experiment_options, parsers
from .run import finish, prepare, print_text, writable_folder


def plan(path: pathlib.Path) -> Plan:
    """The sweep of the TOML file at `path` (see the module's docstring), every
    option checked against the experiment's command-line options."""
    _, subparsers = parsers(EXPERIMENTS)
    return read_plan(
        path,
        [n for n in EXPERIMENTS if n != "bench"],
        lambda name: experiment_options(subparsers[name]),
    )


def run_id(experiment: str, options: dict) -> str:
    """A run's identity: a hash of its experiment and options."""
    canonical = json.dumps([experiment, options], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------
# Running groups of runs (in a worker process or here).


def run_group(
    experiment_name: str, runs: list[tuple[str, dict]], out: str, cache: bool
) -> list[dict]:
    """Run `runs` (`(id, options)`) of one experiment into `out/runs/<id>/`, those
    that build problems of one shape as one batched solve; their records."""
    configure_jax(cache=cache)
    experiment = EXPERIMENTS[experiment_name]
    _, subparsers = parsers(EXPERIMENTS)
    subparser = subparsers[experiment_name]
    records, prepared = [], []
    for identity, options in runs:
        folder = pathlib.Path(out) / "runs" / identity
        start = time.perf_counter()
        try:
            argv = argv_of(subparser, options) + ["--out", str(folder)]
            args = subparser.parse_args(argv + ["--no-progress"])
            # A new attempt: whatever an earlier one left is replaced.
            (folder / CHECKPOINT).unlink(missing_ok=True)
            run = prepare(subparser, experiment, args)
            prepared.append((identity, options, folder, run, start))
        except Exception as error:  # this run fails; the others go on
            records.append(_failed(experiment_name, identity, options, folder, error))
    results = None
    if len(prepared) > 1:
        start = time.perf_counter()
        try:
            results = experiment.run_batch([p[3].problem for p in prepared])
        except Exception:
            results = None  # one at a time below: each failure is then its own
        share = (time.perf_counter() - start) / len(prepared)
    for k, (identity, options, folder, run, start) in enumerate(prepared):
        try:
            if results is None:
                begun = time.perf_counter()
                result = experiment.run(run.problem, progress=False)
                seconds = time.perf_counter() - begun
            else:
                result, seconds = results[k], share
            code, summary = finish(experiment, run, result, quiet=True)
        except Exception as error:
            records.append(_failed(experiment_name, identity, options, folder, error))
            continue
        if code == 130:
            # Ctrl-C reached this run (its solve returned what it had): the sweep
            # stops with the group's earlier records, and this run is not recorded,
            # so that the next sweep runs it.
            raise _Interrupted(records)
        record = dict(
            id=identity,
            experiment=experiment_name,
            options=options,
            status="finished",
            exit_code=code,
            result=summary.get("result"),
            checks_passed=bool(summary.get("checks_passed")),
            batched=results is not None,
            solve_seconds=seconds,
        )
        for key in experiment.headline_keys:
            if key in summary and key not in record:
                record[key] = summary[key]
        record["path"] = str(folder)
        records.append(_json_ready(record))
    # The next group has another shape: release this one's compiled programs, each a
    # few hundred memory mappings, so that a long-lived worker never reaches the
    # kernel's limit on them (vm.max_map_count, 65,530 by default).
    import jax

    jax.clear_caches()
    return records


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C during a group run in this process: the records of its runs that
    finished before it."""

    def __init__(self, records: list[dict]):
        super().__init__()
        self.records = records


def _failed(experiment, identity, options, folder, error) -> dict:
    if isinstance(error, SystemExit):
        message = "bad options (see the run's command line)"
    elif isinstance(error, InputError):
        message = str(error)
    else:
        message = "".join(traceback.format_exception_only(error)).strip()
    return _json_ready(
        dict(
            id=identity,
            experiment=experiment,
            options=options,
            status="failed",
            exit_code=2 if isinstance(error, InputError) else 1,
            result=None,
            checks_passed=False,
            error=message,
            path=str(folder),
        )
    )


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# ---------------------------------------------------------------------------------
# The command.


def _groups(experiment, runs: list[tuple[str, dict]], size: int) -> list[list]:
    """Runs that differ only in the experiment's `batch_options`, in groups of at
    most `size`."""
    by_key: dict[str, list] = {}
    for identity, options in runs:
        key = json.dumps(
            {k: v for k, v in options.items() if k not in experiment.batch_options},
            sort_keys=True,
            default=str,
        )
        by_key.setdefault(key, []).append((identity, options))
    groups = []
    for members in by_key.values():
        for start in range(0, len(members), size):
            groups.append(members[start : start + size])
    return groups


def _client(args):
    """A Dask client, or `None` (with the reason) when dask is not installed."""
    try:
        import dask  # noqa: F401
        from distributed import Client, LocalCluster
    except ImportError:
        if args.scheduler is not None:
            raise InputError(
                "--scheduler needs dask and distributed: pip install "
                '"manifoldflow[sweep]".'
            ) from None
        return None, (
            "this process, one group at a time (dask and distributed are not "
            'installed: pip install "manifoldflow[sweep]" for one worker process '
            "per core)"
        )
    if args.scheduler is not None:
        try:
            return Client(
                args.scheduler, timeout="5s"
            ), f"Dask scheduler {args.scheduler}"
        except (OSError, TimeoutError, ValueError) as error:
            raise InputError(
                f"--scheduler {args.scheduler}: cannot reach a Dask scheduler there "
                f"within 5 s ({type(error).__name__}: {error}). Start one (dask "
                "scheduler) or omit --scheduler for a local cluster."
            ) from None
    workers = args.workers or os.cpu_count() or 1
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=40,
    )
    return Client(cluster), f"a local Dask cluster of {workers} worker processes"


def _estimate(previous: dict[str, dict], experiment: str, runs: int, workers: int):
    """A rough wall time of `runs` runs: at the median solve time of the runs of
    `experiment` already recorded, else at one second a run."""
    seconds = sorted(
        r["solve_seconds"]
        for r in previous.values()
        if r["experiment"] == experiment
        and isinstance(r.get("solve_seconds"), (int, float))
    )
    each, basis = 1.0, "at 1 s a run, the least a small run takes"
    if seconds:
        each = seconds[len(seconds) // 2]
        basis = f"at the {each:.2g} s a run of the {len(seconds)} already recorded took"
    total = runs * each / max(1, workers)
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if total >= size:
            return f"about {total / size:.1f} {unit} on {workers} worker(s), {basis}"
    return f"about {total:.0f} s on {workers} worker(s), {basis}"


def _read_journal(path: pathlib.Path) -> tuple[dict[str, dict], list[str]]:
    """The journal's records and the warnings reading it gave (as lines)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", JournalWarning)
        records = read_journal(path)
    return records, [str(w.message) for w in caught]


def _ignoring_interrupts(function, *args, **kwargs):
    """`function(*args, **kwargs)` with SIGINT ignored, so that the processes it
    starts (Dask's workers) inherit that and Ctrl-C reaches this process alone,
    which then stops them."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return function(*args, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)


def command(args: argparse.Namespace) -> int:
    """`manifoldflow sweep`: its exit code (0: every run finished and passed its
    checks, 1: some did not, 2: bad input, 130: interrupted)."""
    try:
        return _command(args)
    except KeyboardInterrupt:
        print_text(
            "sweep interrupted: the runs finished so far are recorded in "
            f"{args.out / RUNS_FILE}; run the same sweep again to go on.",
            sys.stderr,
        )
        return 130


def _command(args: argparse.Namespace) -> int:
    lock = None
    try:
        if args.workers is not None and args.workers < 1:
            raise InputError(f"--workers must be at least 1, got {args.workers}.")
        sweep = plan(args.file)
        limit = sweep.max_runs
        if limit is not None and sweep.count > limit:
            raise InputError(
                f"{args.file}: this sweep has {sweep.count:,} runs ({sweep.describe()}),"
                f" more than its max_runs = {limit:,} ({sweep.where}).",
                fix="Raise max_runs, or make the grid smaller.",
            )
        if limit is None and sweep.count > CONFIRM_ABOVE and not args.yes:
            previous, _ = _read_journal(args.out / RUNS_FILE)
            workers = args.workers or os.cpu_count() or 1
            raise InputError(
                f"{args.file}: this sweep has {sweep.count:,} runs "
                f"({sweep.describe()}): "
                f"{_estimate(previous, sweep.experiment, sweep.count, workers)}.",
                fix=f"Pass --yes, or set max_runs = {sweep.count} in the file, to run "
                "it; or make the grid smaller.",
            )
        created = not args.out.exists()
        writable_folder(args.out)
        lock = FolderLock(
            args.out,
            wait=args.wait,
            on_wait=lambda holder: print_text(
                f"sweep: waiting for the sweep running into {args.out} ({holder})",
                sys.stderr,
            ),
        )
    except InputError as error:
        print_text(f"manifoldflow sweep: error: {error}", sys.stderr)
        return 2
    with lock:
        code = _locked(args, sweep)
        if code == 2 and created:
            # Nothing ran (e.g. no scheduler there): leave no folder. Removed while
            # locked: a sweep waiting for the lock then finds it gone, and says so.
            if not any(p.name != _journal.LOCK_FILE for p in args.out.iterdir()):
                (args.out / _journal.LOCK_FILE).unlink(missing_ok=True)
                args.out.rmdir()
    return code


def _locked(args, sweep: Plan) -> int:
    """The sweep, with its folder locked."""
    experiment_name = sweep.experiment
    experiment = EXPERIMENTS[experiment_name]
    runs_file = args.out / RUNS_FILE
    cut = repair_journal(runs_file)
    previous, notes = _read_journal(runs_file)
    if cut:
        notes.append(
            f"{runs_file}: its last line was cut short ({cut} bytes, a write that did "
            "not finish): removed; its run is run again."
        )
    for note in notes:
        print_text(f"manifoldflow sweep: warning: {note}", sys.stderr)
    if sweep.count > CONFIRM_ABOVE:
        print_text(
            f"sweep: building the {sweep.count:,} runs ({sweep.describe()})", sys.stderr
        )
    planned = {run_id(experiment_name, o): o for o in sweep.runs()}
    todo, skipped = [], 0
    for identity, opts in planned.items():
        old = previous.get(identity)
        if old is not None and (old["status"] == "finished" or not args.retry_failed):
            skipped += 1
            continue
        todo.append((identity, opts))
    failed_before = sum(
        1 for i in planned if previous.get(i, {}).get("status") == "failed"
    )
    client, how = None, "this process"
    if todo:
        try:
            client, how = _ignoring_interrupts(_client, args)
        except InputError as error:
            print_text(f"manifoldflow sweep: error: {error}", sys.stderr)
            return 2
    lines = [f"sweep: {len(planned):,} runs of {experiment_name}"]
    if skipped:
        lines.append(
            f"  {skipped} already in {runs_file} with the same options: skipped"
            + (
                f" ({failed_before} of them failed: --retry-failed runs them again)"
                if failed_before and not args.retry_failed
                else ""
            )
        )
    workers = 1 if client is None else max(1, len(client.scheduler_info()["workers"]))
    groups = _groups(
        experiment, todo, max(1, math.ceil(len(todo) / workers)) if todo else 1
    )
    lines.append(f"  {len(todo)} to run in {len(groups)} groups on {how}")
    print_text("\n".join(lines), sys.stderr)
    start = time.perf_counter()
    done = failed = 0
    cache = not args.no_cache

    def report(running: int) -> None:
        print_text(
            f"  [{time.perf_counter() - start:7.1f} s] {done} of {len(todo)} done, "
            f"{running} running, {failed} failed",
            sys.stderr,
        )

    with Journal(runs_file) as journal:

        def take(records):
            nonlocal done, failed
            for record in records:
                journal.append(record)
                done += 1
                failed += record["status"] == "failed"

        try:
            if client is None:
                for group in groups:
                    report(len(group))
                    try:
                        take(run_group(experiment_name, group, str(args.out), cache))
                    except _Interrupted as stop:
                        take(stop.records)
                        raise
            else:
                from distributed import as_completed

                futures = {
                    client.submit(
                        run_group,
                        experiment_name,
                        g,
                        str(args.out.resolve()),
                        cache,
                        pure=False,
                    ): len(g)
                    for g in groups
                }
                running = len(todo)
                report(running)
                for future in as_completed(futures):
                    running -= futures[future]
                    try:
                        take(future.result())
                    except Exception as error:  # a worker died: its runs failed
                        group = groups[list(futures).index(future)]
                        take(
                            [
                                _failed(
                                    experiment_name, i, o, args.out / "runs" / i, error
                                )
                                for i, o in group
                            ]
                        )
                    report(running)
        finally:
            if client is not None:
                _ignoring_interrupts(_close, client)
    records = list(_read_journal(runs_file)[0].values())
    records = [r for r in records if r["id"] in planned]
    figure = _plot(args.out, experiment, records, planned)
    passed = sum(1 for r in records if r.get("checks_passed"))
    print_text(
        f"sweep: {len(records)} of {len(planned)} runs recorded, {passed} passed every "
        f"check, {sum(r['status'] == 'failed' for r in records)} failed "
        f"({time.perf_counter() - start:.1f} s); wrote\n  {runs_file}"
        + (f"\n  {figure}" if figure else ""),
        sys.stderr,
    )
    return 0 if passed == len(planned) else 1


def _close(client) -> None:
    """Close a Dask client and, for a local cluster, its workers, quietly."""
    import logging

    cluster = client.cluster  # a local one: its workers end with it
    quiet = [logging.getLogger(n) for n in ("distributed", "tornado", "asyncio")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        client.close()
        if cluster is not None:
            cluster.close()
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def _plot(out: pathlib.Path, experiment, records, planned) -> pathlib.Path | None:
    """`sweep.png`: the first headline scalar against each option that varies."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    finished = [r for r in records if r["status"] == "finished"]
    scalars = [
        k
        for k in experiment.headline_keys
        if finished and all(isinstance(r.get(k), (int, float)) for r in finished)
    ]
    varying = [
        k
        for k in next(iter(planned.values()))
        if len({json.dumps(o[k], default=str) for o in planned.values()}) > 1
    ]
    if not scalars or not varying:
        return None
    scalar = scalars[0]
    figure = Figure(figsize=(4.5 * len(varying), 3.6))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(varying), squeeze=False)[0]
    for ax, key in zip(axes, varying):
        values = [r["options"][key] for r in finished]
        numeric = all(isinstance(v, (int, float)) for v in values)
        x = values if numeric else [str(v) for v in values]
        y = [r[scalar] for r in finished]
        ax.plot(x, y, "o", alpha=0.4, label="runs")
        if numeric:
            levels = sorted(set(values))
            medians = [
                float(np.median([b for a, b in zip(values, y) if a == v]))
                for v in levels
            ]
            ax.plot(levels, medians, "-", color="C1", label="median")
            ax.legend(fontsize=8)
        ax.set(
            xlabel=key.replace("_", "-"), ylabel=scalar, title=f"{scalar} against {key}"
        )
        if numeric and min(values) > 0 and max(values) / min(values) >= 8:
            ax.set_xscale("log", base=2)
    figure.tight_layout()
    path = out / "sweep.png"
    figure.savefig(path, dpi=100)
    return path
