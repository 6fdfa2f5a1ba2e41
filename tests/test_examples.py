"""Every script of examples/ runs at its --quick size and writes its results."""

import json
import os
import pathlib
import subprocess
import sys

import pytest


EXAMPLES = sorted(
    (pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.py")
)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_at_its_quick_size(path, tmp_path):
    """Each in a process of its own, as a user runs it."""
    env = dict(os.environ, MPLBACKEND="Agg")
    done = subprocess.run(
        [sys.executable, str(path), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    written = {p.suffix for p in tmp_path.iterdir()}
    assert ".json" in written, f"{path.name} wrote {sorted(written)}"
    for result in tmp_path.glob("*.json"):
        assert json.loads(result.read_text())
    for figure in tmp_path.glob("*.png"):
        assert figure.stat().st_size > 10_000
