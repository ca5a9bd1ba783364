"""Calibration: the benchmark protocol, every source type, the strategies, and the errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch

from onecomp_core import registry
from onecomp_core.contract import hookimpl
from onecomp_core.data import calibration, sources
from onecomp_core.data.calibration import (
    CalibrationConfig,
    batches,
    build_calibration,
    token_hash,
)
from onecomp_core.data.model import ModelConfig
from onecomp_core.testing import registered_plugin, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

#: sha256 of the 128×256 benchmark calibration windows (pins the protocol)
WIKITEXT_128x256 = "acd8d7eab14ec2f0d374962ce2140c0736f076585b2af9f8d505f6a39981274e"

DOCS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
    "Tom had a red ball. He threw the ball to his dog, and the dog ran after it.",
    "The sun was hot, so the children went to the lake to swim and eat ice cream.",
]


@pytest.fixture(scope="module")
def tokenizer(stories_path: Path) -> Any:
    return ModelConfig(path=stories_path).load_tokenizer()


@pytest.fixture(scope="module")
def stories(stories_path: Path) -> torch.nn.Module:
    return ModelConfig(path=stories_path, dtype="float32").load_model()


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, verbose=False).input_ids


def windows(ids: list[int], n: int, length: int) -> torch.Tensor:
    return torch.tensor(ids[: n * length]).view(n, length)


def test_benchmark_protocol_is_tokenize_once_and_slice(assets: Path, tokenizer: Any) -> None:
    path = assets / "text" / "wikitext2-valid.tokens.txt"
    data = build_calibration(CalibrationConfig(dataset=str(path), max_length=256), tokenizer)
    expected = windows(encode(tokenizer, path.read_text()), 128, 256)
    assert data.input_ids.dtype == torch.long
    assert torch.equal(data.input_ids, expected)
    assert data.input_ids[0, 0] == tokenizer.bos_token_id
    assert data.attention_mask is None
    assert data.sha256 == token_hash(expected) == WIKITEXT_128x256
    assert data.source == str(path)


def test_hash_tells_windows_apart() -> None:
    ids = torch.arange(8)
    assert token_hash(ids.view(2, 4)) == token_hash(ids.view(2, 4).clone())
    assert token_hash(ids.view(2, 4)) != token_hash(ids.view(4, 2))
    assert token_hash(ids.view(2, 4)) != token_hash(ids.flip(0).view(2, 4))


def write_source(kind: str, folder: Path, docs: list[str]) -> Any:
    """The documents as a source of the given kind."""
    if kind == "jsonl":
        path = folder / "docs.jsonl"
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        return str(path)
    if kind == "json":
        path = folder / "docs.json"
        path.write_text(json.dumps([{"text": d} for d in docs]))
        return path
    if kind == "parquet":
        path = folder / "docs.parquet"
        datasets.Dataset.from_dict({"text": docs}).to_parquet(str(path))
        return str(path)
    if kind == "list":
        return list(docs)
    return datasets.Dataset.from_dict({"text": docs, "id": list(range(len(docs)))})


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "list", "dataset"])
def test_documents_are_joined_with_blank_lines(kind: str, tmp_path: Path, tokenizer: Any) -> None:
    source = write_source(kind, tmp_path, DOCS)
    config = CalibrationConfig(dataset=source, max_length=16, num_calibration_samples=3)
    data = build_calibration(config, tokenizer)
    assert torch.equal(data.input_ids, windows(encode(tokenizer, "\n\n".join(DOCS)), 3, 16))


def test_a_text_file_is_one_string(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(DOCS) + "\n")
    config = CalibrationConfig(dataset=path, max_length=16, num_calibration_samples=3)
    expected = windows(encode(tokenizer, path.read_text()), 3, 16)
    assert torch.equal(build_calibration(config, tokenizer).input_ids, expected)


def test_text_key_selects_the_column(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": d, "n": 1}) + "\n" for d in DOCS))
    config = CalibrationConfig(
        dataset=str(path), text_key="body", max_length=8, num_calibration_samples=2
    )
    expected = windows(encode(tokenizer, "\n\n".join(DOCS)), 2, 8)
    assert torch.equal(build_calibration(config, tokenizer).input_ids, expected)
    with pytest.raises(ValueError, match="no column 'text'.*body"):
        build_calibration(CalibrationConfig(dataset=str(path), max_length=8), tokenizer)


def test_drop_head_takes_the_start_of_each_long_document(tokenizer: Any) -> None:
    docs = ["Short.", *DOCS]
    config = CalibrationConfig(
        dataset=docs, strategy="drop_head", max_length=12, num_calibration_samples=3
    )
    expected = torch.tensor([encode(tokenizer, d)[:12] for d in DOCS])
    assert torch.equal(build_calibration(config, tokenizer).input_ids, expected)


def test_drop_strategies_read_a_text_file_line_by_line(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "docs.txt"
    path.write_text("Hi.\n\n" + "\n".join(DOCS) + "\n")
    config = CalibrationConfig(
        dataset=str(path), strategy="drop_head", max_length=12, num_calibration_samples=3
    )
    expected = torch.tensor([encode(tokenizer, d)[:12] for d in DOCS])
    assert torch.equal(build_calibration(config, tokenizer).input_ids, expected)


def test_drop_rand_is_seeded_and_cuts_real_windows(tokenizer: Any) -> None:
    def build(seed: int) -> torch.Tensor:
        config = CalibrationConfig(
            dataset=DOCS, strategy="drop_rand", max_length=8, num_calibration_samples=3, seed=seed
        )
        return build_calibration(config, tokenizer).input_ids

    first = build(0)
    assert torch.equal(first, build(0))
    assert not torch.equal(first, build(1))
    for row, doc in zip(first.tolist(), DOCS, strict=True):
        ids = encode(tokenizer, doc)
        assert any(ids[i : i + 8] == row for i in range(len(ids) - 7))


def test_too_little_text_says_how_many_windows_fit(tokenizer: Any) -> None:
    total = len(encode(tokenizer, "\n\n".join(DOCS)))
    config = CalibrationConfig(dataset=DOCS, max_length=16, num_calibration_samples=100)
    with pytest.raises(ValueError, match=f"has {total} tokens: {total // 16} windows of 16 fit"):
        build_calibration(config, tokenizer)
    config = CalibrationConfig(dataset=DOCS, strategy="drop_head", max_length=20)
    with pytest.raises(ValueError, match="only 3 documents have at least 20 tokens, 128 requested"):
        build_calibration(config, tokenizer)


@pytest.mark.parametrize("name,content", [("empty.txt", ""), ("blank.jsonl", "\n\n")])
def test_empty_file(tmp_path: Path, tokenizer: Any, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=f"calibration file {path} is empty"):
        build_calibration(CalibrationConfig(dataset=str(path)), tokenizer)


def test_all_bad_fields_in_one_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        CalibrationConfig(
            dataset=str(tmp_path / "missing.txt"),
            max_length=0,
            num_calibration_samples=-1,
            strategy="random",
            batch_size=0,
        )
    message = str(err.value)
    for part in ("max_length=0", "num_calibration_samples=-1", "batch_size=0", "strategy='random'"):
        assert part in message
    assert "dataset file not found" in message
    config = CalibrationConfig()
    config.strategy = "drop_tail"
    with pytest.raises(ValueError, match="strategy='drop_tail'"):
        config.validate()


def test_hub_name_offline_names_the_local_option(
    monkeypatch: pytest.MonkeyPatch, tokenizer: Any
) -> None:
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)
    with pytest.raises(ValueError) as err:
        build_calibration(CalibrationConfig(dataset="wikitext2"), tokenizer)
    assert "\n" not in str(err.value)
    assert "'wikitext2'" in str(err.value) and "--calibration PATH" in str(err.value)


def test_no_dataset_needs_a_causal_lm(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="--calibration PATH"):
        build_calibration(CalibrationConfig(), tokenizer)
    with pytest.raises(ValueError, match="causal LM"):
        build_calibration(CalibrationConfig(), tokenizer, tiny_model("bert"))


def test_self_generated_calibration_is_seeded(
    tokenizer: Any, stories: torch.nn.Module, caplog: pytest.LogCaptureFixture
) -> None:
    def build(seed: int, batch_size: int = 8) -> torch.Tensor:
        config = CalibrationConfig(
            max_length=24, num_calibration_samples=20, seed=seed, batch_size=batch_size
        )
        return build_calibration(config, tokenizer, stories).input_ids

    rng = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="onecomp_core.data.sources"):
        first = build(0)
    assert "sampling 20 sequences of 24 tokens" in caplog.text
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
    assert first.shape == (20, 24)
    assert (first[:, 0] == tokenizer.bos_token_id).all()
    assert len({tuple(row) for row in first.tolist()}) == 20
    assert torch.equal(first, build(0, batch_size=1))
    assert not torch.equal(first, build(1))


def test_self_generated_text_is_in_the_model_domain(
    tokenizer: Any, stories: torch.nn.Module
) -> None:
    config = CalibrationConfig(max_length=64, num_calibration_samples=4)
    text = tokenizer.decode(build_calibration(config, tokenizer, stories).input_ids[0])
    # stories260K writes TinyStories: common English words, not random tokens
    assert sum(word in text.split() for word in ("the", "a", "was", "to", "and", ".")) >= 2


def test_batches_cover_the_data_in_order() -> None:
    ids = torch.arange(40).view(10, 4)
    data = calibration.CalibrationData(ids, None, token_hash(ids), "test")
    chunks = list(batches(data, 4))
    assert [c[0].shape[0] for c in chunks] == [4, 4, 2]
    assert all(mask is None for _, mask in chunks)
    assert torch.equal(torch.cat([c[0] for c in chunks]), ids)
    masked = calibration.CalibrationData(ids, torch.ones_like(ids), "", "test")
    assert [m.shape for _, m in batches(masked, 6)] == [(6, 4), (4, 4)]


# -- sources: found through the registry ------------------------------------------------------
def test_each_builtin_source_claims_its_kind_of_dataset(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "hi"}\n')
    found = {
        "none": None,
        "path": path,
        "file name": str(path),
        "strings": DOCS,
        "dataset": datasets.Dataset.from_dict({"text": DOCS}),
        "hub name": "wikitext2",
    }
    assert {kind: registry.source_for(d)[0] for kind, d in found.items()} == {
        "none": "self-generated",
        "path": "local-file",
        "file name": "local-file",
        "strings": "string-list",
        "dataset": "hf-dataset",
        "hub name": "hub",
    }


@pytest.mark.parametrize(
    "dataset,problem",
    [
        (123, "no calibration source reads dataset=123 (installed sources: "),
        ([], "dataset list must be a non-empty list of strings"),
        (["ok", 5], "dataset list must be a non-empty list of strings"),
        (Path("/no/such/docs.txt"), "dataset file not found: /no/such/docs.txt"),
        (Path("data.xlsx"), "dataset file 'data.xlsx' must end in .txt, .jsonl, .json, .parquet"),
        (
            str(Path(__file__).resolve().parents[2] / "pyproject.toml"),
            "pyproject.toml' must end in .txt",
        ),
    ],
)
def test_a_dataset_no_source_reads_is_one_clear_problem(dataset: Any, problem: str) -> None:
    with pytest.raises(ValueError) as err:
        CalibrationConfig(dataset=dataset, max_length=0)
    assert problem in str(err.value) and "max_length=0" in str(err.value)


class Shouting:
    """A third-party source of documents, and one of ready windows, claiming what builtins would."""

    @hookimpl
    def onecomp_register(self, register) -> None:
        register.add_calibration_source(
            "shouting", lambda d: isinstance(d, list) and d[:1] == ["LOUD"], self.documents
        )
        register.add_calibration_source(
            "windows", lambda d: isinstance(d, str) and d.startswith("ids:"), self.windows
        )

    @staticmethod
    def documents(dataset, config, tokenizer, model):
        return [doc.upper() for doc in DOCS]

    @staticmethod
    def windows(dataset, config, tokenizer, model):
        dtype = torch.float32 if dataset == "ids:float" else torch.int32
        return torch.arange(12, dtype=dtype).view(3, 4)


def test_a_plugin_source_is_asked_first_and_its_documents_are_cut(tokenizer: Any) -> None:
    with registered_plugin(Shouting(), name="shouting-test"):
        config = CalibrationConfig(dataset=["LOUD", 5], max_length=8, num_calibration_samples=2)
        data = build_calibration(config, tokenizer)
    loud = "\n\n".join(doc.upper() for doc in DOCS)
    assert torch.equal(data.input_ids, windows(encode(tokenizer, loud), 2, 8))
    assert data.source == "shouting source, 2 documents"


def test_a_source_may_return_ready_windows(tokenizer: Any) -> None:
    with registered_plugin(Shouting(), name="shouting-test"):
        data = build_calibration(CalibrationConfig(dataset="ids:12"), tokenizer)
        assert data.input_ids.dtype == torch.long
        assert torch.equal(data.input_ids, torch.arange(12).view(3, 4))
        assert data.sha256 == token_hash(torch.arange(12).view(3, 4))
        with pytest.raises(ValueError, match="source 'windows' returned a torch.float32 tensor"):
            build_calibration(CalibrationConfig(dataset="ids:float"), tokenizer)


def test_leading_ids_are_the_whole_texts_first_ids_from_a_prefix(tokenizer, stories_path):
    """concat_chunk tokenizes only a prefix (the whole corpus held ~200 MB): the first ids
    must be those of the whole text, with or without line ends, and a short text gives all."""
    text = (Path(stories_path).parents[0] / "text" / "wikitext2-valid.tokens.txt").read_text()
    text = text[:200_000]
    whole = calibration._encode(tokenizer, [text])[0]
    for count in (1, 8192, 30_000):
        ids = calibration.leading_ids(tokenizer, text, count)
        assert len(ids) == count and ids == whole[:count]
    flat = text.replace("\n", " ")  # no line end to cut at
    assert (
        calibration.leading_ids(tokenizer, flat, 5000)
        == (calibration._encode(tokenizer, [flat])[0][:5000])
    )
    assert calibration.leading_ids(tokenizer, text, 10**7) == whole  # too short: every id


def test_a_text_file_for_concat_chunk_is_the_document_datasets_reads(tmp_path):
    """Read without importing datasets (85 MB resident): the same one document, newlines
    translated as datasets' text builder translates them, and bad UTF-8 is one clear error."""
    path = tmp_path / "calib.txt"
    path.write_bytes("Line one\r\nline two\rthree\n\n  Grüße, 東京\n".encode())
    config = CalibrationConfig(dataset=str(path), strategy="concat_chunk")
    ours = sources.load_file(str(path), config, None, None)
    rows = datasets.load_dataset("text", data_files=str(path), split="train", sample_by="document")
    assert ours == list(rows["text"]) and len(ours) == 1
    path.write_bytes(b"ok \xff\xfe not utf-8")
    with pytest.raises(ValueError, match="cannot read calibration file"):
        sources.load_file(str(path), config, None, None)
