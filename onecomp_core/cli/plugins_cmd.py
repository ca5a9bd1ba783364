"""``onecomp plugins``: what is installed, and whether it loaded."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list installed quantization plugins")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..plugins import PluginError, plugin_report

    try:
        infos = plugin_report()
    except PluginError as exc:  # e.g. two distributions provide one method: the user must choose
        print(f"onecomp plugins: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return 0
    rows = [("plugin", "distribution", "version", "status", "methods")]
    rows += [(i.name, i.distribution, i.version, i.status, ", ".join(i.methods)) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for i in infos:
        if i.error:
            print(f"\n{i.name}: {i.error}")
    return 0
