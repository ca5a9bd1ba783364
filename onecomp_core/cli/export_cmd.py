"""``onecomp export DIR --format NAME OUT``: write a saved model in another registered format."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..registry import get_format
from ..storage.destination import check_destination


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a quantized folder in another format")
    p.add_argument("folder", help="a folder saved by `onecomp quantize`")
    p.add_argument(
        "--format",
        required=True,
        metavar="NAME",
        help="a registered format (see `onecomp plugins`), e.g. hf or gguf (OUT is then a .gguf file)",
    )
    p.add_argument("out", help="where the exported model is written (a folder, or a file for gguf)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..storage.hf_folder import load_artifact

    save = get_format(args.format)  # unknown formats and existing outputs fail before loading
    if Path(args.folder).resolve() == Path(args.out).resolve():
        raise ValueError(f"export: the output {args.out} is the input folder; choose another path")
    out = check_destination(args.out, args.overwrite, option="OUT")
    save(load_artifact(args.folder, device_map="cpu"), out)
    print(f"exported {args.folder} as {args.format} to {out}", file=sys.stderr)
    return 0
