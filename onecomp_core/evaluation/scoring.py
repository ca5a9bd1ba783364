"""Log-probabilities of tokens under a model: what every evaluation is computed from.

The NLL is computed from the logits in float32, so any module that returns
logits works, including models whose layers were replaced by compressed
inference layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    return next_token_logprobs(logits, input_ids)


def next_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token t+1 | tokens ≤ t) from (B, L, V) logits → (B, L-1), float32."""
    logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
