"""estimate_wbits_from_vram: real parameter counts from the config, exact arithmetic."""

from __future__ import annotations

import pytest
from torch import nn

from onecomp_autobit.vram import GIB, estimate_wbits_from_vram


@pytest.fixture
def llama_folder(tmp_path):
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        tie_word_embeddings=False,
    )
    config.save_pretrained(tmp_path)
    return tmp_path


def counts():
    per_block = 64 * 64 * 2 + 32 * 64 * 2 + 256 * 64 * 3
    quantizable = 2 * per_block
    other = 1000 * 64 * 2 + 2 * 2 * 64 + 64  # embeddings + lm_head, 2 norms per block, final norm
    return quantizable, other


def test_counts_and_arithmetic(llama_folder):
    quantizable, other = counts()
    bits = 3.0
    groups = (
        quantizable / 64
    )  # group size 128 > 64 inputs for attention... computed per layer below
    groups = (64 * 64 * 2 + 32 * 64 * 2 + 256 * 64 * 2) / 64 + 256 * 64 / 128
    groups *= 2
    need = (quantizable * bits + groups * (16 + bits) + 16 * other) / 8  # bytes
    result = estimate_wbits_from_vram(str(llama_folder), total_vram_gb=need / GIB, ratio=1.0)
    assert result.breakdown["quantizable_params"] == quantizable
    assert result.breakdown["other_params"] == other
    assert result.breakdown["quantized_layers"] == 14
    assert result.target_bitwidth == pytest.approx(bits)
    assert result.effective_bits == pytest.approx(
        (quantizable * bits + groups * (16 + bits)) / quantizable
    )
    half = estimate_wbits_from_vram(str(llama_folder), total_vram_gb=need / GIB / 0.5, ratio=0.5)
    assert half.target_bitwidth == pytest.approx(bits)


def test_tied_embeddings_count_once(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True,
    ).save_pretrained(tmp_path)  # fmt: skip
    result = estimate_wbits_from_vram(str(tmp_path), total_vram_gb=1.0)
    assert result.breakdown["other_params"] == counts()[1] - 1000 * 64


def test_too_small_names_the_memory_needed(llama_folder):
    with pytest.raises(ValueError, match=r"even at 2 bits.*total_vram_gb >= "):
        estimate_wbits_from_vram(str(llama_folder), total_vram_gb=1e-4, min_bits=2.0)


def test_capped_when_everything_fits(llama_folder):
    result = estimate_wbits_from_vram(str(llama_folder), total_vram_gb=80, max_bits=8.0)
    assert result.target_bitwidth == 8.0 and result.breakdown["capped"]


def test_meta_model_holds_no_storage(llama_folder):
    from onecomp_autobit.vram import meta_model

    model = meta_model(str(llama_folder))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert any(isinstance(m, nn.Linear) for m in model.modules())
