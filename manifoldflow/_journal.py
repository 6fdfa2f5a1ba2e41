"""The journal of a sweep, `runs.jsonl`: one JSON object per finished run, each
appended as one line, flushed and synced to disk before the next run is counted as
recorded; and the lock that keeps a second sweep out of a folder while one runs.

A crash mid-write leaves at most a torn last line: it is cut back to the last
newline before anything is appended (its run is run again). Lines that are not run
records (not JSON, not an object, or without the record's fields) are skipped with a
warning naming the line, by the sweep and by `manifoldflow.sweeps.load` alike.
"""

import fcntl
import json
import os
import pathlib
import time
import warnings

from ._errors import InputError


STATUSES = ("finished", "failed")
LOCK_FILE = ".sweep.lock"


class JournalWarning(UserWarning):
    """A line of a sweep's `runs.jsonl` that is not a run record was skipped, or a
    torn last line was cut off."""


def _problem(record) -> str | None:
    """Why `record` (a parsed line) is not a run record, or `None`."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    missing = [k for k in ("id", "experiment", "options", "status") if k not in record]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(record["id"], str) or not record["id"]:
        return f"its id {record['id']!r} is not a run id"
    if not isinstance(record["experiment"], str):
        return f"its experiment {record['experiment']!r} is not a name"
    if not isinstance(record["options"], dict):
        return "its options are not an object"
    if record["status"] not in STATUSES:
        return f"its status {record['status']!r} is not one of {', '.join(STATUSES)}"
    return None


def read(path: pathlib.Path) -> dict[str, dict]:
    """The last record of each run in the journal at `path` (none if it does not
    exist), skipping, with a `JournalWarning`, every line that is not a record."""
    records: dict[str, dict] = {}
    if not path.exists():
        return records
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop() if lines else b""  # after the last newline: b"" if whole
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            problem = "not JSON"
        else:
            problem = _problem(record)
        if problem is not None:
            warnings.warn(
                f"{path}, line {number}: skipped, not a run record ({problem}).",
                JournalWarning,
                stacklevel=3,
            )
            continue
        records[record["id"]] = record
    if torn.strip():
        warnings.warn(
            f"{path}, line {len(lines) + 1}: skipped, cut short (a write that did not "
            "finish); its run is not recorded.",
            JournalWarning,
            stacklevel=3,
        )
    return records


def repair(path: pathlib.Path) -> int:
    """Cut a torn last line (bytes after the last newline) off the journal at
    `path`; the number of bytes cut."""
    if not path.exists():
        return 0
    with open(path, "rb+") as file:
        data = file.read()
        keep = data.rfind(b"\n") + 1
        if keep == len(data):
            return 0
        file.truncate(keep)
        file.flush()
        os.fsync(file.fileno())
    return len(data) - keep


class Journal:
    """Appends run records to `path`, each one line, flushed and synced; the torn
    last line of an earlier crash is cut off first. A context manager."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.repaired = repair(path)
        self._file = open(path, "a")

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FolderLock:
    """An exclusive lock (flock) on a sweep's folder, held while the sweep runs: a
    second sweep into the folder is refused at once (`wait=False`) or waits for the
    first (`on_wait(holder)` is called first, to say so). The lock file names its
    holder (process id, host, start time); the operating system releases the lock
    when the holder ends, however it ends. The lock file is never deleted while a
    sweep may hold or wait for it."""

    def __init__(self, folder: pathlib.Path, wait: bool = False, on_wait=None):
        self.path = folder / LOCK_FILE
        while True:
            self._file = open(self.path, "a+")
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder()
                if not wait:
                    self._file.close()
                    raise InputError(
                        f"Another sweep is running into {folder} ({holder}): two "
                        "sweeps into one folder would run and record the same runs "
                        "twice.",
                        fix="Wait for it to end (or pass --wait to start when it "
                        "does), or choose another --out.",
                        parameter="out",
                    ) from None
                if on_wait is not None:
                    on_wait(holder)
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            # The file locked must still be the folder's lock file (not one its
            # holder removed, with the folder, before letting go).
            try:
                same = os.fstat(self._file.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                self._file.close()
                raise InputError(
                    f"{folder} was removed while this sweep waited for it.",
                    fix="Run the sweep again.",
                    parameter="out",
                ) from None
            if same:
                break
            self._file.close()
        self._file.seek(0)
        self._file.truncate()
        self._file.write(
            f"pid {os.getpid()} on {os.uname().nodename}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
        self._file.flush()

    def _holder(self) -> str:
        self._file.seek(0)
        return self._file.read().strip() or "another process"

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
