"""Every script of examples/ runs at its --quick size and writes its results."""

import importlib.util
import json
import pathlib

import pytest


EXAMPLES = sorted(
    (pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.py")
)


def _load(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_at_its_quick_size(path, tmp_path):
    _load(path).main(["--quick", "--out", str(tmp_path)])
    written = {p.suffix for p in tmp_path.iterdir()}
    assert ".json" in written, f"{path.name} wrote {sorted(written)}"
    for result in tmp_path.glob("*.json"):
        assert json.loads(result.read_text())
    for figure in tmp_path.glob("*.png"):
        assert figure.stat().st_size > 10_000
