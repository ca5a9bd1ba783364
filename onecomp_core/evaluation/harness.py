"""The bridge to lm-eval-harness tasks (the optional ``eval`` extra)."""

from __future__ import annotations

from typing import Any

from torch import nn


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
