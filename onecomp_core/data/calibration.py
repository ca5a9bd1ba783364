"""Calibration data: which token windows the method's statistics are computed on.

``CalibrationConfig`` says where the text comes from and how to cut it;
``build_calibration`` asks the registry which calibration source reads the
``dataset`` (the built-in ones are in :mod:`.sources`; plugins add more),
lets it load documents (or ready token windows), and cuts them into an
(N, max_length) token tensor with a content hash (recorded in saved configs
and checkpoint fingerprints).

Strategies (the benchmarks rely on these exactly):

* ``concat_chunk`` (default): tokenize the whole text once (a .txt file as one
  string; several documents joined with "\\n\\n"), with the tokenizer's default
  special tokens (BOS), then take the first N non-overlapping windows;
* ``drop_head``: the first ``max_length`` tokens of each document long enough
  (shorter ones are skipped), in document order;
* ``drop_rand``: one window at a seeded random offset in each long document.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .. import registry
from ..contract import Config, param

STRATEGIES = ("concat_chunk", "drop_head", "drop_rand")
#: how many documents are tokenized at a time by the drop_* strategies
_DOC_CHUNK = 1000


@dataclass
class CalibrationConfig(Config):
    """Where calibration text comes from and how it becomes token windows.

    ``dataset`` is anything a registered calibration source claims: None
    (text the model samples itself), a local .txt/.jsonl/.json/.parquet
    file, a list of strings, a ``datasets.Dataset``, a hub name or alias
    ("wikitext2", "c4"), or what a plugin's source reads.
    """

    dataset: Any = param(None, doc="where the calibration text comes from")
    text_key: str = param("text", str, doc="column holding the text")
    max_length: int = param(512, int, ge=2, doc="tokens per window")
    num_calibration_samples: int = param(128, int, ge=1, doc="number of windows")
    strategy: str = param("concat_chunk", choices=STRATEGIES, doc="how windows are cut")
    seed: int = param(0, int, doc="seed of drop_rand and of self-generated text")
    batch_size: int = param(8, int, ge=1, doc="windows per forward pass")

    def __post_init__(self) -> None:
        self.validate()

    def more_problems(self) -> list[str]:
        """An empty text key, and a dataset no installed source reads (named before any work)."""
        problems = []
        if self.text_key == "":
            problems.append("text_key='': expected a non-empty string")
        try:
            registry.source_for(self.dataset)
        except ValueError as err:
            problems.append(str(err))
        return problems


@dataclass
class CalibrationData:
    """Token windows (N, L) ready for the engine, with their content hash."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    sha256: str
    source: str

    @property
    def num_samples(self) -> int:
        return self.input_ids.shape[0]


def build_calibration(
    config: CalibrationConfig, tokenizer: Any, model: torch.nn.Module | None = None
) -> CalibrationData:
    """The calibration windows that ``config`` describes (``model``: for sources that sample it)."""
    name, load = registry.source_for(config.dataset)
    loaded = load(config.dataset, config, tokenizer, model)
    if isinstance(loaded, torch.Tensor):
        input_ids = _as_windows(loaded, name)
    else:
        input_ids = cut_windows(list(loaded), tokenizer, config)
    return CalibrationData(
        input_ids=input_ids,
        attention_mask=None,
        sha256=token_hash(input_ids),
        source=_describe(name, config.dataset),
    )


def batches(
    data: CalibrationData, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(input_ids, attention_mask) chunks of at most ``batch_size`` sequences."""
    for start in range(0, data.num_samples, batch_size):
        mask = data.attention_mask
        yield (
            data.input_ids[start : start + batch_size],
            None if mask is None else mask[start : start + batch_size],
        )


def token_hash(input_ids: torch.Tensor) -> str:
    """sha256 of the shape and the int64 token values: equal exactly when the windows are."""
    tokens = input_ids.detach().to("cpu", torch.int64).contiguous()
    digest = hashlib.sha256(str(tuple(tokens.shape)).encode())
    digest.update(tokens.numpy().tobytes())
    return digest.hexdigest()


def _as_windows(tokens: torch.Tensor, source: str) -> torch.Tensor:
    """A source's ready windows, checked: (N, L) integer token ids."""
    if tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(
            f"calibration source {source!r} returned a {tokens.dtype} tensor of shape "
            f"{tuple(tokens.shape)}; expected (N, L) integer token ids"
        )
    return tokens.to(torch.long)


def _describe(source: str, dataset: Any) -> str:
    """Where the windows came from: the dataset itself when it is a name or a path."""
    if isinstance(dataset, str | os.PathLike):
        return str(dataset)
    size = f", {len(dataset)} documents" if hasattr(dataset, "__len__") else ""
    return f"{source} source{size}"


def cut_windows(documents: list[str], tokenizer: Any, config: CalibrationConfig) -> torch.Tensor:
    """(N, L) windows from the documents by the configured strategy."""
    n, length = config.num_calibration_samples, config.max_length
    if config.strategy == "concat_chunk":
        text = documents[0] if len(documents) == 1 else "\n\n".join(documents)
        ids = leading_ids(tokenizer, text, n * length)
        fit = len(ids) // length
        if fit < n:
            raise ValueError(
                f"the calibration text has {len(ids)} tokens: {fit} windows of {length} fit, "
                f"{n} requested; lower num_calibration_samples or max_length, or add text"
            )
        return torch.tensor(ids[: n * length], dtype=torch.long).view(n, length)

    rng = random.Random(config.seed)
    windows: list[list[int]] = []
    for ids in _encoded_documents(documents, tokenizer):
        if len(ids) < length:
            continue
        start = 0 if config.strategy == "drop_head" else rng.randint(0, len(ids) - length)
        windows.append(ids[start : start + length])
        if len(windows) == n:
            return torch.tensor(windows, dtype=torch.long)
    raise ValueError(
        f"only {len(windows)} documents have at least {length} tokens, {n} requested "
        f"(strategy {config.strategy}); lower num_calibration_samples or max_length, "
        "or use strategy concat_chunk"
    )


#: tokens past the ones used that a prefix must also yield (its cut cannot reach them)
_MARGIN = 256


def leading_ids(tokenizer: Any, text: str, count: int) -> list[int]:
    """At least the first ``count`` token ids of ``text`` (all of them when it has fewer),
    the ids whole-text tokenization gives, from as short a prefix as does.

    Tokenizing a whole corpus for 8192 tokens held ~200 MB of the tokenizer's
    buffers and Python ints, about a fifth of a real-size GPTQ run's peak
    (wikitext2-valid: 682k tokens). A prefix cut at a line end is tokenized
    instead; its first ``count`` ids are used only if it yields ``count`` +
    :data:`_MARGIN` ids and a prefix twice as long agrees on them (so the cut
    did not change them), else the prefix doubles, up to the whole text.
    """
    size = max(4096, 4 * (count + _MARGIN))
    ids = _prefix_ids(tokenizer, text, size) if size < len(text) else []
    while size < len(text):
        longer = _prefix_ids(tokenizer, text, 2 * size)  # the next try's prefix, made once
        if len(ids) >= count + _MARGIN and longer[:count] == ids[:count]:
            return ids[:count]
        ids, size = longer, 2 * size
    return _encode(tokenizer, [text])[0]


def _prefix_ids(tokenizer: Any, text: str, size: int) -> list[int]:
    """The ids of ``text`` up to the last line end within its first ``size`` characters."""
    cut = text.rfind("\n", 0, size)
    return _encode(tokenizer, [text[: cut if cut > 0 else size]])[0]


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids with the tokenizer's default special tokens (BOS)."""
    return tokenizer(texts, verbose=False)["input_ids"]


def _encoded_documents(documents: list[str], tokenizer: Any) -> Iterable[list[int]]:
    """Non-empty documents tokenized in chunks, so a long corpus stops early."""
    documents = [doc for doc in documents if doc.strip()]
    for start in range(0, len(documents), _DOC_CHUNK):
        yield from _encode(tokenizer, documents[start : start + _DOC_CHUNK])
