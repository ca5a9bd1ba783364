"""Evaluation: the perplexity protocol on the real model, accuracy by log-likelihood, lm-eval."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from onecomp_core.data.model import ModelConfig
from onecomp_core.evaluation import calculate_accuracy, calculate_lm_eval, calculate_perplexity

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = "Once upon a time, there was a little girl named Lily. She liked to play in the park."


@pytest.fixture(scope="module")
def tokenizer(stories_path: Path) -> Any:
    return ModelConfig(path=stories_path).load_tokenizer()


@pytest.fixture(scope="module")
def model(stories_path: Path) -> nn.Module:
    return ModelConfig(path=stories_path, dtype="float32").load_model()


def test_tinystories_reference_perplexity(assets: Path, model: nn.Module, tokenizer: Any) -> None:
    path = assets / "text" / "tinystories-valid-excerpt.txt"
    result = calculate_perplexity(model, tokenizer, path, batch_size=8)
    assert result.ppl == pytest.approx(5.538, abs=5e-4)
    assert (result.tokens, result.windows) == (15506, 31)  # 15537 tokens: 30×511 + 176
    assert result.ppl == pytest.approx(math.exp(result.nll))


def test_wikitext_reference_perplexity(assets: Path, model: nn.Module, tokenizer: Any) -> None:
    path = str(assets / "text" / "wikitext2-test.raw")
    result = calculate_perplexity(model, tokenizer, path, max_tokens=20480, batch_size=8)
    assert result.ppl == pytest.approx(123.87, abs=0.01)
    assert (result.tokens, result.windows) == (40 * 511, 40)


def labels_nll(model: nn.Module, ids: list[int], seqlen: int) -> tuple[float, int]:
    """Mean NLL the independent way: the model's own loss on each window."""
    total, count = 0.0, 0
    for start in range(0, len(ids), seqlen):
        window = torch.tensor([ids[start : start + seqlen]])
        if window.shape[1] < 2:
            continue
        with torch.no_grad():
            loss = model(input_ids=window, labels=window).loss.item()
        total += loss * (window.shape[1] - 1)
        count += window.shape[1] - 1
    return total / count, count


@pytest.mark.parametrize("seqlen", [8, 7])
def test_windows_include_the_partial_tail(model: nn.Module, tokenizer: Any, seqlen: int) -> None:
    ids = tokenizer(SHORT).input_ids
    nll, count = labels_nll(model, ids, seqlen)
    result = calculate_perplexity(model, tokenizer, SHORT, seqlen=seqlen, batch_size=3)
    assert result.tokens == count
    assert result.windows == math.ceil(len(ids) / seqlen) - (len(ids) % seqlen == 1)
    assert result.nll == pytest.approx(nll, rel=1e-5)


def test_max_tokens_truncates_the_stream_first(model: nn.Module, tokenizer: Any) -> None:
    ids = tokenizer(SHORT).input_ids[:10]
    nll, _ = labels_nll(model, ids, 4)
    result = calculate_perplexity(model, tokenizer, SHORT, seqlen=4, max_tokens=10)
    assert (result.tokens, result.windows) == (3 + 3 + 1, 3)
    assert result.nll == pytest.approx(nll, rel=1e-5)


def test_text_or_path(tmp_path: Path, model: nn.Module, tokenizer: Any) -> None:
    path = tmp_path / "story.txt"
    path.write_text(SHORT)
    from_text = calculate_perplexity(model, tokenizer, SHORT, seqlen=16)
    assert calculate_perplexity(model, tokenizer, path, seqlen=16) == from_text
    assert calculate_perplexity(model, tokenizer, str(path), seqlen=16, device="cpu") == from_text


class LogitsOnly(nn.Module):
    """A causal LM that is no Hugging Face model: input_ids in, raw (half precision) logits out."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=input_ids).logits.to(torch.bfloat16)


def test_any_module_returning_logits(model: nn.Module, tokenizer: Any) -> None:
    reference = calculate_perplexity(model, tokenizer, SHORT, seqlen=16)
    result = calculate_perplexity(LogitsOnly(model), tokenizer, SHORT, seqlen=16)
    assert result.tokens == reference.tokens
    assert result.ppl == pytest.approx(reference.ppl, rel=0.02)


@pytest.mark.parametrize("kwargs", [{"text_or_path": ""}, {"text_or_path": SHORT, "max_tokens": 1}])
def test_text_shorter_than_two_tokens(model: nn.Module, tokenizer: Any, kwargs: dict) -> None:
    with pytest.raises(ValueError, match="perplexity needs at least 2"):
        calculate_perplexity(model, tokenizer, **kwargs)


def sequence_logprob(model: nn.Module, ids: list[int]) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = logits[:-1].log_softmax(-1)
    return logprobs.gather(-1, torch.tensor(ids[1:])[:, None]).sum().item()


EXAMPLES = [
    ("Once upon a time, there was a little", [" girl", " of the", " refrigerator battery"]),
    ("Lily went to the park to play with her", [" friends", " quantum", " was the"]),
    ("The dog was very happy and wagged its", [" tail", " government", " she"]),
]


def write_examples(path: Path, labels: list[int]) -> Path:
    rows = [
        {"context": c, "choices": ch, "label": lab}
        for (c, ch), lab in zip(EXAMPLES, labels, strict=True)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_accuracy_picks_the_most_likely_choice(
    tmp_path: Path, model: nn.Module, tokenizer: Any
) -> None:
    # the predictions by log p(context + choice) − log p(context), computed independently
    predicted = []
    for context, choices in EXAMPLES:
        base = sequence_logprob(model, tokenizer(context).input_ids)
        scores = [sequence_logprob(model, tokenizer(context + c).input_ids) - base for c in choices]
        predicted.append(max(range(len(scores)), key=scores.__getitem__))
    assert predicted == [0, 0, 0]  # the real model knows its stories

    result = calculate_accuracy(model, tokenizer, write_examples(tmp_path / "a.jsonl", predicted))
    assert (result.correct, result.total, result.accuracy) == (3, 3, 1.0)
    wrong = [(p + 1) % 3 for p in predicted]
    result = calculate_accuracy(model, tokenizer, write_examples(tmp_path / "b.jsonl", wrong))
    assert (result.correct, result.accuracy) == (0, 0.0)
    limited = calculate_accuracy(model, tokenizer, tmp_path / "a.jsonl", limit=2)
    assert limited.total == 2


@pytest.mark.parametrize(
    "line,problem",
    [
        ("{not json", "not valid JSON"),
        ('{"context": "a", "choices": ["b"], "label": 0}', "2 or more"),
        ('{"context": "a", "choices": ["b", "c"], "label": 2}', "label"),
    ],
)
def test_bad_choice_files_name_the_line(
    tmp_path: Path, model: nn.Module, tokenizer: Any, line: str, problem: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"context": "a", "choices": [" b", " c"], "label": 1}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{problem}"):
        calculate_accuracy(model, tokenizer, path)


def test_lm_eval_missing_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, model: nn.Module, tokenizer: Any
) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install onecomp-core\[eval\]"):
        calculate_lm_eval(model, tokenizer, ["hellaswag"])
