"""``onecomp plugins``: what is installed, whether it loaded, and what each plugin provides."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ..registry import PluginError, plugin_report

COLUMNS = ("name", "distribution", "version", "status", "methods", "sources", "formats")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plugins", help="list installed plugins: their methods, calibration sources and formats"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def _cell(value: object) -> str:
    return ", ".join(value) if isinstance(value, list) else str(value)


def run(args: argparse.Namespace) -> int:
    try:
        infos = plugin_report()
    except PluginError as exc:  # e.g. two distributions provide one method: the user must choose
        print(f"onecomp plugins: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return 0
    rows = [("plugin", *COLUMNS[1:])]
    rows += [tuple(_cell(getattr(i, c)) for c in COLUMNS) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for i in infos:
        if i.error:
            print(f"\n{i.name}: {i.error}")
    return 0
