"""Every Python block of the README and of docs/ runs: the blocks of one file in
order, in one namespace (as a reader would paste them). A block that is only
illustrative is preceded by a line `<!-- not run: why -->` and is skipped. The docs'
command-line pages must name every option of their command."""

import pathlib
import re
import warnings

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


@pytest.mark.parametrize(
    "path",
    [p for p in PAGES if python_blocks(p)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_python_block_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a block writes stays out of the checkout
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for line, code, runs in python_blocks(path):
        if not runs:
            continue
        with warnings.catch_warnings():
            # A block may show a warning (e.g. a spent step budget) on purpose.
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(
                    f"The Python block at {path.relative_to(ROOT)}:{line} failed: "
                    f"{type(error).__name__}: {error}"
                ) from error


def test_skipped_blocks_say_why():
    for path in PAGES:
        for match in re.finditer(r"<!-- not run:\s*([^>]*)-->", path.read_text()):
            assert match[1].strip(), f"{path}: a skipped block must say why"


def test_every_command_page_names_every_option():
    from manifoldflow.cli import _parser
    from manifoldflow.experiments import EXPERIMENTS

    _, subparsers = _parser(EXPERIMENTS)
    pages = (ROOT / "docs" / "cli").glob("*.md")
    text = {p.stem: p.read_text() for p in pages}
    for name in EXPERIMENTS:
        page = name if name in text else name.removeprefix("deep-")
        assert page in text, f"no page docs/cli/{name}.md"
        assert f"<!-- options: {page} -->" in text[page] or name != page
