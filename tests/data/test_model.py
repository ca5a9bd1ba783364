"""ModelConfig: loading decoders and encoders, devices, dtypes, and one-line errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from onecomp_core.data import model as model_config
from onecomp_core.data.model import ModelConfig
from onecomp_core.testing import tiny_model


def test_loads_the_real_model_for_quantization(stories_path: Path) -> None:
    config = ModelConfig(path=stories_path, dtype="float32", device="cpu")
    model = config.load_model()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert model.config.use_cache is False
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert config.source == str(stories_path)


def test_default_dtype_is_float16_and_torch_dtypes_are_accepted(stories_path: Path) -> None:
    assert ModelConfig(path=stories_path).load_model().dtype == torch.float16
    model = ModelConfig(path=stories_path, dtype=torch.bfloat16).load_model()
    assert model.dtype == torch.bfloat16


def test_model_id_may_name_a_local_folder(stories_path: Path) -> None:
    config = ModelConfig(model_id=str(stories_path), dtype="fp32")
    assert config.source == str(stories_path)
    assert config.load_model().config.hidden_size == 64


def test_tokenizer_gets_a_pad_token(stories_path: Path) -> None:
    tokenizer = ModelConfig(path=stories_path).load_tokenizer()
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert tokenizer("Hi").input_ids[0] == tokenizer.bos_token_id


def test_encoders_load_through_automodel(tmp_path: Path) -> None:
    tiny_model("bert").save_pretrained(tmp_path / "bert")
    tiny_model("llama").save_pretrained(tmp_path / "llama")
    assert type(ModelConfig(path=tmp_path / "bert").load_model()).__name__ == "BertModel"
    assert type(ModelConfig(path=tmp_path / "llama").load_model()).__name__ == "LlamaForCausalLM"


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ModelConfig(model_id="x", device="cuda:1").resolve_device() == torch.device("cuda:1")
    assert ModelConfig(model_id="x", device="cpu").resolve_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ModelConfig(model_id="x").resolve_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ModelConfig(model_id="x").resolve_device() == torch.device("cuda:0")


@pytest.mark.parametrize("kwargs", [{}, {"model_id": "a/b", "path": "c"}])
def test_exactly_one_source(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="exactly one of model_id"):
        ModelConfig(**kwargs)


def test_all_bad_fields_in_one_error() -> None:
    with pytest.raises(ValueError) as err:
        ModelConfig(model_id="a/b", dtype="int3", device="gpu")
    assert "dtype='int3'" in str(err.value) and "device='gpu'" in str(err.value)


@pytest.mark.parametrize("kwargs", [{"path": "/no/such/model"}, {"model_id": "./no/such/model"}])
def test_missing_folder_is_named(kwargs: dict) -> None:
    with pytest.raises(FileNotFoundError, match="no/such/model"):
        ModelConfig(**kwargs).load_model()


def test_unreachable_hub_is_one_quick_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_config, "hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        ModelConfig(model_id="no-such-org/no-such-model").load_model()
    message = str(err.value)
    assert "\n" not in message
    assert "could not be reached" in message and "path=" in message
    assert "no-such-org/no-such-model" in message
    assert time.perf_counter() - start < 10


def test_offline_mode_means_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_config.hub_reachable() is False
