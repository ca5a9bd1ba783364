"""Zero-shot multiple-choice accuracy, scored by log-likelihood as lm-eval scores it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .scoring import model_device, token_logprobs


@dataclass
class AccuracyResult:
    """Zero-shot multiple-choice accuracy; ``accuracy_norm`` scores per character."""

    accuracy: float
    accuracy_norm: float
    correct: int
    correct_norm: int
    total: int


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
