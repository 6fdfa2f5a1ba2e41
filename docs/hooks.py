"""Build-time hooks of the documentation site: each command's options are taken from
its own parser, so the pages follow the code."""

import os
import re


def _options(match: re.Match) -> str:
    from manifoldflow.commands.options import parsers
    from manifoldflow.experiments import EXPERIMENTS

    os.environ["COLUMNS"] = "78"
    _, subparsers = parsers(EXPERIMENTS)
    return "```text\n" + subparsers[match[1]].format_help() + "```"


def on_page_markdown(markdown, page, config, files):
    return re.sub(r"<!-- options: ([\w-]+) -->", _options, markdown)
