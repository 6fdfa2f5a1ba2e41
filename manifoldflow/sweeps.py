r"""Sweeps: many runs of one experiment from a TOML file (`manifoldflow sweep FILE.toml
--out DIR`), and [`manifoldflow.sweeps.load`][] to read their results back.

The file:

```toml
experiment = "two-layer"

[fixed]          # options as on the command line (init-scale or init_scale)
n = 8
d = 16

[grid]           # lists: every combination is a run
m = [4, 8, 16, 32]
seed = [0, 1, 2, 3]

[[runs]]         # optional: further runs, each its own options (with [fixed])
m = 64
seed = 0
```

Runs that differ only in their seed (the experiment's `batch_options`) have problems
of one shape: they go together through the batched solve
([`manifoldflow.solve_flows`][]) in one process. Groups of runs are spread over the
workers of a Dask distributed cluster (a `LocalCluster` of one worker process per
core, or `--scheduler tcp://HOST:PORT`); without `dask` and `distributed` installed
(`pip install "manifoldflow[sweep]"`), the groups run one after another in this
process.

Each run writes its usual folder `DIR/runs/<id>/` (`<id>`: a hash of the experiment
and its options). `DIR/runs.jsonl` gets one JSON object per finished run: `id`,
`experiment`, `options`, `status` (`"finished"` or `"failed"`), `exit_code`,
`result`, `checks_passed`, the experiment's headline scalars, `path`, and `error`
for a failed one. Running the same sweep again skips the runs already there with the
same options (a failed one is retried with `--retry-failed`). `DIR/sweep.png` plots
the first headline scalar against each grid axis.

`runs.jsonl` is a journal (`manifoldflow._journal`): each record one appended line,
synced to disk; a torn last line is cut off before anything is appended, and lines
that are not run records are skipped with a `JournalWarning`. A lock on the folder
keeps a second sweep out while one runs (`--wait` to queue behind it). Runs are
counted before they are built: more than 1,000 need `--yes` or
`max_runs = N` in the file. Ctrl-C stops the workers: one line, exit code 130.
"""

import os
import pathlib

from ._errors import InputError
from ._journal import JournalWarning as JournalWarning, read as read_journal


RUNS_FILE = "runs.jsonl"
"""The journal of a sweep's finished runs, in its `--out` folder."""


def load(out: str | os.PathLike, as_frame: bool | None = None):
    """The records of the sweep in `out` (`runs.jsonl`; the last record of each run).
    Lines that are not run records (a torn last line, a stray line) are skipped,
    each with a `manifoldflow.sweeps.JournalWarning`.

    `as_frame`: `True` a pandas DataFrame (options as columns `option.<name>`),
    `False` a list of dicts; `None` (default) a DataFrame when pandas is installed,
    else the list.
    """
    path = pathlib.Path(out) / RUNS_FILE
    if not path.is_file():
        raise InputError(f"{out}: no {RUNS_FILE} there (not the --out of a sweep).")
    records = list(read_journal(path).values())
    if as_frame is False:
        return records
    try:
        import pandas
    except ImportError:
        if as_frame:
            raise InputError(
                "as_frame=True needs pandas: pip install pandas."
            ) from None
        return records
    rows = [
        {
            **{k: v for k, v in r.items() if k != "options"},
            **{f"option.{k}": v for k, v in r["options"].items()},
        }
        for r in records
    ]
    return pandas.DataFrame(rows)
