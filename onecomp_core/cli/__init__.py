"""The ``onecomp`` command: one module per command, wired together here.

A user mistake (bad value, missing file, unknown method) ends with one line
on stderr and exit code 2, never a traceback; set ``ONECOMP_DEBUG=1`` to see it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from ..engine.launch import PeerLost, error_source
from ..registry import PluginError

#: command name → module in this package that defines ``add_parser`` and ``run``
COMMANDS = {
    "plugins": "plugins_cmd",
    "quantize": "quantize_cmd",
    "eval": "eval_cmd",
    "inspect": "inspect_cmd",
    "export": "export_cmd",
}

USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    KeyError,
    PluginError,
)


def _version() -> str:
    try:
        return version("onecomp-core")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onecomp",
        description="Compress language models after training (post-training quantization).",
    )
    parser.add_argument("--version", action="version", version=f"onecomp {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(f".{module_name}", __name__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as exc:
        if os.environ.get("ONECOMP_DEBUG"):
            raise
        message = str(exc).strip().replace("\n", " ")
        where = error_source()
        if where is not None:
            print(f"onecomp {args.command}: error{where}: {message}", file=sys.stderr)
        return 2
    except PeerLost as exc:
        if os.environ.get("ONECOMP_DEBUG"):
            raise
        print(f"onecomp {args.command}: stopped{error_source() or ''}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("onecomp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
