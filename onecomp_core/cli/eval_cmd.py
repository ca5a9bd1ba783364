"""``onecomp eval MODEL_OR_DIR --ppl TEXT``: perplexity of a saved or original model."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

from ..data.model import check_context
from ..storage.gptq_checkpoint import is_standard_gptq
from ..storage.reading import read_json_object
from .options import (
    add_context_option,
    add_model_options,
    model_config,
    quiet_requested,
    resolve_dtype,
    silence_progress,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity of a quantized folder or an original model")
    p.add_argument("model", help="onecomp output folder, model folder or hub id")
    p.add_argument("--ppl", required=True, metavar="TEXT_PATH", help="evaluation text file")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--json", action="store_true", help="last line: a JSON object")
    add_context_option(p)
    add_model_options(p)
    p.set_defaults(run=run)


def _saved_by_onecomp(model: str) -> bool:
    """Whether ``model`` is a folder onecomp's loader reads: its own, or a standard GPTQ one."""
    config = Path(model) / "config.json"
    if not config.is_file():
        return False
    qc = read_json_object(config).get("quantization_config")
    return isinstance(qc, dict) and ("layers" in qc or is_standard_gptq(qc))


def context_of(model: str, dtype: str, device: str) -> int | None:
    """The model's trained context (from its config only; a damaged weight file fails here)."""
    from ..data.model import context_length

    if _saved_by_onecomp(model):
        config = read_json_object(Path(model) / "config.json")
        return context_length(SimpleNamespace(**config))
    return model_config(model, dtype, device).facts().context


def load_any(model: str, dtype: str, device: str, compute: str | None = None):
    """A onecomp folder (or a standard GPTQ one) through the registry, anything else through
    transformers.

    The model is loaded on ``device``; ``compute`` (default ``device``) picks the dtype.
    """
    from ..storage.hf_folder import load_quantized_model

    dtype = resolve_dtype(dtype, compute or device)
    if _saved_by_onecomp(model):
        return load_quantized_model(Path(model), device_map=device, dtype=dtype)
    mc = model_config(model, dtype, device)
    return mc.load_model(), mc.load_tokenizer()


def run(args: argparse.Namespace) -> int:
    from ..evaluation import calculate_perplexity

    if quiet_requested(False):
        silence_progress()
    if not Path(args.ppl).is_file():
        raise FileNotFoundError(f"--ppl {args.ppl}: no such file")
    if args.seqlen < 2:
        raise ValueError(f"--seqlen {args.seqlen}: expected at least 2")
    from ..data.model import resolve_device

    context = context_of(args.model, args.dtype, args.device)
    check_context(args.seqlen, context, "--seqlen", args.allow_longer_context)
    device = resolve_device(args.device)  # the blocks go there one at a time (streamed)
    model, tokenizer = load_any(args.model, args.dtype, "cpu", compute=str(device))
    for module in model.modules():
        if hasattr(module, "cache_weight"):
            module.cache_weight = True  # unpack once: evaluation runs many windows
    if tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer files; cannot tokenize {args.ppl}")
    start = time.perf_counter()
    result = calculate_perplexity(
        model,
        tokenizer,
        Path(args.ppl),
        seqlen=args.seqlen,
        max_tokens=args.max_tokens,
        device=device,
    )
    seconds = time.perf_counter() - start
    if result.tokens < args.seqlen - 1:
        raise ValueError(
            f"{args.ppl} holds only {result.tokens + 1} tokens, shorter than one "
            f"window of --seqlen {args.seqlen}; use a longer text or a smaller "
            "--seqlen"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "ppl": result.ppl,
                    "tokens": result.tokens,
                    "seqlen": args.seqlen,
                    "seconds": round(seconds, 3),
                    "model": args.model,
                    "text": args.ppl,
                }
            )
        )
    else:
        print(f"perplexity {result.ppl:.4f} over {result.tokens} tokens ({seconds:.1f} s)")
    return 0
