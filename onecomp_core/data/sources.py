"""The built-in calibration sources, registered in :mod:`onecomp_core.builtin` like any plugin's.

Each source is a pair: ``claims(dataset)`` says whether it reads that
``dataset`` value, and ``load(dataset, config, tokenizer, model)`` returns
documents (cut into windows by the configured strategy) or ready (N, L)
token windows. A ``claims`` that recognises a dataset but finds it unusable
(a list holding a number, a file that does not exist) raises ValueError with
one line saying why, so ``CalibrationConfig`` reports it before any long
work. Heavy libraries (``datasets``) are imported inside ``load`` only.

For local files "document" means a line of a .txt file (the whole file for
``concat_chunk``) or a row of a .jsonl/.json/.parquet file. With no dataset
at all, a causal LM calibrates on sequences it samples itself from BOS
(seeded), so quantization works offline.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from .model import hub_reachable

logger = logging.getLogger(__name__)

#: local file suffix → datasets builder
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
#: short hub names → load_dataset arguments
HUB_ALIASES: dict[str, dict[str, Any]] = {
    "wikitext2": dict(path="wikitext", name="wikitext-2-raw-v1", split="train"),
    "c4": dict(
        path="allenai/c4",
        data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
        split="validation",
    ),
}
#: self-generated sequences are sampled this many at a time (fixed: independent of batch_size)
_GENERATE_CHUNK = 16


# -- local files ----------------------------------------------------------------------------
def _named_file(dataset: Any) -> Path | None:
    """The path when ``dataset`` means a local file: a path object, or a string with a
    calibration suffix or naming something that exists (other strings are hub names)."""
    if isinstance(dataset, os.PathLike) or (isinstance(dataset, str) and dataset):
        path = Path(dataset).expanduser()
        if isinstance(dataset, os.PathLike) or path.suffix in BUILDERS or path.exists():
            return path
    return None


def claims_file(dataset: Any) -> bool:
    path = _named_file(dataset)
    if path is None:
        return False
    if path.suffix not in BUILDERS:
        raise ValueError(f"dataset file {str(dataset)!r} must end in {', '.join(BUILDERS)}")
    if not path.is_file():
        raise ValueError(f"dataset file not found: {dataset}")
    return True


def load_file(dataset: Any, config: Any, tokenizer: Any, model: Any) -> list[str]:
    """A local file through the ``datasets`` builders; a .txt is one document for concat_chunk.

    That one document is the file read as ``datasets``' text builder reads it
    (UTF-8, universal newlines, ``f.read()``), without importing ``datasets``:
    its import (pyarrow, pandas) stays resident, 85 MB of a real-size run's peak.
    """
    path = Path(dataset).expanduser()
    builder = BUILDERS[path.suffix]
    if path.stat().st_size == 0 or (builder != "parquet" and not path.read_bytes().strip()):
        raise ValueError(f"calibration file {path} is empty")
    if builder == "text" and config.strategy == "concat_chunk":
        try:
            return [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError as err:
            raise ValueError(f"cannot read calibration file {path}: {err}") from None
    import datasets

    kwargs: dict[str, Any] = {}
    if builder == "text":
        kwargs["sample_by"] = "document" if config.strategy == "concat_chunk" else "line"
    try:
        rows = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # datasets raises many types for unreadable files
        raise ValueError(f"cannot read calibration file {path}: {err}") from None
    documents = _column(rows, "text" if builder == "text" else config.text_key)
    if not "".join(documents).strip():
        raise ValueError(f"calibration file {path} is empty")
    return documents


# -- in-memory text -------------------------------------------------------------------------
def claims_strings(dataset: Any) -> bool:
    if not isinstance(dataset, list):
        return False
    if not dataset or not all(isinstance(text, str) for text in dataset):
        raise ValueError("dataset list must be a non-empty list of strings")
    return True


def load_strings(dataset: list[str], config: Any, tokenizer: Any, model: Any) -> list[str]:
    return list(dataset)


def claims_hf_dataset(dataset: Any) -> bool:
    """A ``datasets.Dataset`` (told by its module, so ``datasets`` need not be imported)."""
    return type(dataset).__module__.startswith("datasets.") and hasattr(dataset, "column_names")


def load_hf_dataset(dataset: Any, config: Any, tokenizer: Any, model: Any) -> list[str]:
    return _column(dataset, config.text_key)


# -- the Hugging Face Hub -------------------------------------------------------------------
def claims_hub(dataset: Any) -> bool:
    return isinstance(dataset, str) and bool(dataset) and _named_file(dataset) is None


def load_hub(dataset: str, config: Any, tokenizer: Any, model: Any) -> list[str]:
    """A hub dataset by alias or id; offline, one line naming the local-file option."""
    import datasets

    offline = os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes")
    message = (
        f"calibration dataset {dataset!r} needs the Hugging Face Hub, which could not be "
        "reached; pass a local file instead (--calibration PATH, e.g. a .txt, .jsonl or .parquet)"
    )
    if not offline and not hub_reachable():
        raise ValueError(message)
    kwargs = HUB_ALIASES.get(dataset, dict(path=dataset, split="train"))
    try:
        rows = datasets.load_dataset(**kwargs)
    except ConnectionError:
        raise ValueError(message) from None
    return _column(rows, config.text_key)


def _column(rows: Any, key: str) -> list[str]:
    if key not in rows.column_names:
        raise ValueError(
            f"calibration data has no column {key!r} (columns: {', '.join(rows.column_names)}); "
            "set text_key"
        )
    return [text or "" for text in rows[key]]


# -- no dataset: text the model writes itself ---------------------------------------------------
def claims_nothing(dataset: Any) -> bool:
    return dataset is None


def generate(dataset: None, config: Any, tokenizer: Any, model: Any) -> torch.Tensor:
    """(N, L) sequences sampled from the model from BOS, seeded and independent of batch_size."""
    can_generate = getattr(model, "can_generate", None)
    if model is None or not callable(can_generate) or not can_generate():
        raise ValueError(
            "no calibration dataset given; pass one (--calibration PATH: a .txt, .jsonl or "
            ".parquet file) — only a causal LM can calibrate on text it generates itself"
        )
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = tokenizer.eos_token_id
    n, length = config.num_calibration_samples, config.max_length
    logger.warning(
        "no calibration dataset given: sampling %d sequences of %d tokens from the model "
        "itself (seed %d); pass a dataset for calibration on real text",
        n,
        length,
        config.seed,
    )
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    sequences = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        for start in range(0, n, _GENERATE_CHUNK):
            rows = min(_GENERATE_CHUNK, n - start)
            prompt = torch.full((rows, 1), bos, dtype=torch.long, device=device)
            out = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=length - 1,
                min_new_tokens=length - 1,
                pad_token_id=pad,
                use_cache=True,
            )
            sequences.append(out[:, :length].cpu())
    return torch.cat(sequences)


#: name → (claims, load), in the order the built-in plugin registers them
BUILTIN_SOURCES = {
    "local-file": (claims_file, load_file),
    "string-list": (claims_strings, load_strings),
    "hf-dataset": (claims_hf_dataset, load_hf_dataset),
    "hub": (claims_hub, load_hub),
    "self-generated": (claims_nothing, generate),
}
