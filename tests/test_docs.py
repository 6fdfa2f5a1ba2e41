"""Every Python block of the README and of docs/ runs: the blocks of one file in
order, in one namespace (as a reader would paste them). A block that is only
illustrative is preceded by a line `<!-- not run: why -->` and is skipped. The docs'
command-line pages must name every option of their command."""

import os
import pathlib
import re
import subprocess
import sys

import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
_BLOCK = re.compile(r"(<!-- not run: [^>]*-->\s*\n)?```python\n(.*?)```", re.S)


def python_blocks(path: pathlib.Path) -> list[tuple[int, str, bool]]:
    """`(line, code, runs)` for each Python block of a Markdown file."""
    text = path.read_text()
    return [
        (text[: match.start(2)].count("\n") + 1, match[2], match[1] is None)
        for match in _BLOCK.finditer(text)
    ]


_RUNNER = """
import pathlib, sys, warnings
sys.path.insert(0, {tests!r})
from test_docs import python_blocks
failures = []
for page in {pages!r}:
    path = pathlib.Path(page)
    namespace = {{"__name__": "docs_" + path.stem}}
    for line, code, runs in python_blocks(path):
        if not runs:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # e.g. a spent budget
            try:
                exec(compile(code, f"{{path.name}}:{{line}}", "exec"), namespace)
            except Exception as error:
                kind = type(error).__name__
                failures.append(f"{{page}}:{{line}}: {{kind}}: {{error}}")
                break  # the page's later blocks depend on this one
sys.exit("\\n".join(failures) or None)
"""


_PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p)]


def test_the_docs_have_code():
    assert len(_PAGES_WITH_CODE) >= 6


@pytest.mark.parametrize(
    "page", _PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_python_block_runs(page, tmp_path):
    """A page's blocks in order, in one namespace, in a process of its own (as a
    reader would run them, and so that what they compile does not stay in the test
    process; the pages run in parallel under pytest-xdist). A failing block is
    reported by page and line."""
    code = _RUNNER.format(tests=str(ROOT / "tests"), pages=[str(page)])
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,  # anything a block writes stays out of the checkout
        capture_output=True,
        text=True,
        env=dict(os.environ, MPLBACKEND="Agg"),
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-4000:]


def test_skipped_blocks_say_why():
    for path in PAGES:
        for match in re.finditer(r"<!-- not run:\s*([^>]*)-->", path.read_text()):
            assert match[1].strip(), f"{path}: a skipped block must say why"


def test_every_command_page_names_every_option():
    from manifoldflow.commands.options import parsers
    from manifoldflow.experiments import EXPERIMENTS

    _, subparsers = parsers(EXPERIMENTS)
    pages = (ROOT / "docs" / "cli").glob("*.md")
    text = {p.stem: p.read_text() for p in pages}
    for name in EXPERIMENTS:
        page = name if name in text else name.removeprefix("deep-")
        assert page in text, f"no page docs/cli/{name}.md"
        assert f"<!-- options: {page} -->" in text[page] or name != page
