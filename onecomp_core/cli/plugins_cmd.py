"""``onecomp plugins``: what is installed, whether it loaded, and what each plugin provides."""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..registry import plugin_report
from ..table import format_table

COLUMNS = ("distribution", "version", "status", "methods", "sources", "formats")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plugins", help="list installed plugins: their methods, calibration sources and formats"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def _cell(value: object) -> str:
    return ", ".join(value) if isinstance(value, list) else str(value)


def run(args: argparse.Namespace) -> int:
    # a PluginError (two distributions provide one method) is reported by cli.main, exit code 2
    infos = plugin_report()
    if args.json:
        print(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return 0
    rows = [{"plugin": i.name} | {c: _cell(getattr(i, c)) for c in COLUMNS} for i in infos]
    print(format_table(rows))
    for i in infos:
        if i.error:
            print(f"\n{i.name}: {i.error}")
    return 0
