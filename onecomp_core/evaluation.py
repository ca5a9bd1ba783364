"""How good a (quantized) model is: perplexity, multiple-choice accuracy, lm-eval.

The perplexity protocol is the project's yardstick (../shared/benchmarks.md):
tokenize the whole text once (BOS first), cut it into non-overlapping windows
of ``seqlen`` tokens (the last, partial window included), and take exp of the
mean next-token NLL over every predicted token. The NLL is computed from the
logits in float32, so any module that returns logits works, including models
whose layers were replaced by compressed inference layers.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PerplexityResult:
    """exp(nll) over ``tokens`` predicted tokens in ``windows`` windows."""

    ppl: float
    tokens: int
    nll: float
    windows: int


@dataclass
class AccuracyResult:
    """Zero-shot multiple-choice accuracy; ``accuracy_norm`` scores per character."""

    accuracy: float
    accuracy_norm: float
    correct: int
    correct_norm: int
    total: int


def read_text(text_or_path: str | os.PathLike[str]) -> str:
    """The text itself, or the contents of the file it names."""
    if isinstance(text_or_path, os.PathLike):
        return Path(text_or_path).read_text(encoding="utf-8")
    if "\n" not in text_or_path and len(text_or_path) < 4096 and Path(text_or_path).is_file():
        return Path(text_or_path).read_text(encoding="utf-8")
    return text_or_path


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def token_logprobs(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token t+1 | tokens ≤ t) for every position of a (B, L) batch → (B, L-1), float32."""
    kwargs = {"use_cache": False} if hasattr(model, "config") else {}
    output = model(input_ids=input_ids, **kwargs)
    logits = output.logits if hasattr(output, "logits") else output
    if isinstance(logits, tuple):
        logits = logits[0]
    logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def calculate_perplexity(
    model: nn.Module,
    tokenizer: Any,
    text_or_path: str | os.PathLike[str],
    seqlen: int = 512,
    max_tokens: int | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    show_progress: bool = False,
) -> PerplexityResult:
    """Perplexity of ``model`` on a text by the project protocol (see module docstring).

    ``max_tokens`` keeps only the first tokens of the stream; ``device`` moves
    the model there (default: where it already is).
    """
    if seqlen < 2 or batch_size < 1:
        raise ValueError(f"need seqlen >= 2 and batch_size >= 1, got {seqlen} and {batch_size}")
    ids = tokenizer(read_text(text_or_path), return_tensors="pt", verbose=False).input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise ValueError(
            f"the evaluation text has {ids.numel()} token(s); perplexity needs at least 2"
        )
    if device is not None:
        model.to(device)
    device = model_device(model)
    windows = [ids[start : start + seqlen] for start in range(0, ids.numel(), seqlen)]
    if windows[-1].numel() < 2:  # a lone trailing token predicts nothing
        windows.pop()
    full = [w for w in windows if w.numel() == seqlen]
    batches = [torch.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    batches += [w[None] for w in windows[len(full) :]]

    total_nll, total_tokens = 0.0, 0
    progress = _progress(batches, show_progress, "perplexity")
    with torch.inference_mode():
        for batch in progress:
            logprobs = token_logprobs(model, batch.to(device))
            total_nll -= logprobs.double().sum().item()
            total_tokens += logprobs.numel()
    nll = total_nll / total_tokens
    return PerplexityResult(ppl=math.exp(nll), tokens=total_tokens, nll=nll, windows=len(windows))


def calculate_accuracy(
    model: nn.Module,
    tokenizer: Any,
    jsonl_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    limit: int | None = None,
) -> AccuracyResult:
    """Zero-shot accuracy on a JSONL of ``{context, choices, label}``.

    Each choice is scored by the summed log-likelihood of its tokens after the
    context; the highest score is the prediction (``accuracy_norm`` divides by
    the choice's length in characters, as lm-eval's acc_norm does).
    """
    examples = _read_choices(Path(jsonl_path))[:limit]
    if device is not None:
        model.to(device)
    device = model_device(model)
    correct = correct_norm = 0
    with torch.inference_mode():
        for example in examples:
            scores = [
                _continuation_logprob(model, tokenizer, example["context"], choice, device)
                for choice in example["choices"]
            ]
            normed = [s / max(len(c), 1) for s, c in zip(scores, example["choices"], strict=True)]
            correct += int(max(range(len(scores)), key=scores.__getitem__) == example["label"])
            correct_norm += int(max(range(len(normed)), key=normed.__getitem__) == example["label"])
    total = len(examples)
    return AccuracyResult(
        accuracy=correct / total,
        accuracy_norm=correct_norm / total,
        correct=correct,
        correct_norm=correct_norm,
        total=total,
    )


def calculate_lm_eval(
    model: nn.Module,
    tokenizer: Any,
    tasks: list[str],
    num_fewshot: int = 0,
    batch_size: int = 1,
    limit: int | None = None,
) -> dict[str, Any]:
    """lm-eval-harness results per task (needs the optional ``eval`` extra)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise ImportError(
            "lm-eval tasks need the lm_eval package: pip install onecomp-core[eval]"
        ) from None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    output = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit)
    return output["results"]


def _continuation_logprob(
    model: nn.Module, tokenizer: Any, context: str, choice: str, device: torch.device
) -> float:
    """Summed log p(choice | context); context tokens are the prefix of the joint encoding."""
    context_ids = tokenizer(context, verbose=False).input_ids
    joint_ids = tokenizer(context + choice, verbose=False).input_ids
    start = len(context_ids)
    while start > 1 and joint_ids[:start] != context_ids[:start]:
        start -= 1  # the tokenizer merged across the boundary: score from the divergence
    if start >= len(joint_ids):
        raise ValueError(f"choice {choice!r} adds no tokens to context {context[-40:]!r}")
    logprobs = token_logprobs(model, torch.tensor([joint_ids], device=device))[0]
    return logprobs[start - 1 :].double().sum().item()


def _read_choices(path: Path) -> list[dict[str, Any]]:
    """The examples of a multiple-choice JSONL, checked line by line."""
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        choices, label = row.get("choices"), row.get("label")
        if not (
            isinstance(row.get("context"), str)
            and isinstance(choices, list)
            and len(choices) >= 2
            and all(isinstance(c, str) for c in choices)
            and isinstance(label, int)
            and 0 <= label < len(choices)
        ):
            raise ValueError(
                f"{path}:{number}: expected {{context: str, choices: [str, ...] (2 or more), "
                "label: index into choices}"
            )
        examples.append(row)
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def _progress(items: list[Any], show: bool, desc: str) -> Any:
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch")
