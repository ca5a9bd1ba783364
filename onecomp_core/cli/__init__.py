"""The ``onecomp`` command: one module per command, wired together here.

This module is the one error path of the command. A user mistake (bad
value, missing or damaged file, unwritable output, unknown method) ends
with exactly one line on stderr, on a line of its own (progress bars are
closed first), and exit code 2, never a traceback; ``ONECOMP_DEBUG=1``
shows the traceback instead. Output cut short by a closed pipe
(``onecomp plugins --json | head -1``) ends quietly with the shell's
status for SIGPIPE, 141.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from safetensors import SafetensorError

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

#: errors that are the user's to fix: reported in one line, exit code 2. OSError covers
#: missing, unreadable and unwritable paths (its message names the path).
USER_ERRORS = (ValueError, OSError, KeyError, PluginError, SafetensorError)

#: exit status of a command whose output pipe was closed (128 + SIGPIPE), as shells report it
BROKEN_PIPE = 141


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to read more, no usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _close_progress_bars()
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    try:
        return version("onecomp-core")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    debug = os.environ.get("ONECOMP_DEBUG", "") not in ("", "0")
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE
    except USER_ERRORS as exc:
        if debug:
            raise
        where = error_source()
        if where is not None:
            report(f"onecomp {args.command}: error{where}: {message_of(exc)}")
        return 2
    except PeerLost as exc:
        if debug:
            raise
        report(f"onecomp {args.command}: stopped{error_source() or ''}: {exc}")
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        report("onecomp: interrupted")
        return 130


def message_of(exc: BaseException) -> str:
    """The one-line text of an error (a KeyError's text is its quoted key: say what it is)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, KeyError):
        text = f"missing key {text!r}"
    text = " ".join(text.split())
    return text or type(exc).__name__


def report(line: str) -> None:
    """Write ``line`` to stderr on a line of its own, after any progress bar is closed."""
    _close_progress_bars()
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        _silence_stdout()
    print(line, file=sys.stderr, flush=True)


def _close_progress_bars() -> None:
    """Close every live tqdm bar, so its line ends before a message is written."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error
            pass


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
