"""``onecomp export DIR --format gguf OUT.gguf``, read back with gguf's own reader and dequantizer.

A tiny Llama (hidden 64, intermediate 128, stories260K's tokenizer) is
quantized by RTN, saved as a onecomp folder and exported through the real
CLI. Lossless cases must give back exactly ``s·(q − z)`` (computed in fp32)
and so our fp16 dequantized weights after fp16 rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from onecomp_core.cli import main
from onecomp_core.contract import LayerJob
from onecomp_core.rtn import RTN
from onecomp_core.storage import apply_results, build_artifact, save_quantized_model
from onecomp_core.storage.hf_folder import load_quantized_model

gguf = pytest.importorskip("gguf")

STORIES = Path(__file__).resolve().parents[3] / "shared" / "assets" / "stories260K"


def tiny_llama() -> nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=128,
    )
    return tf.LlamaForCausalLM(config).eval()


def export(tmp_path: Path, method: RTN, tag: str) -> tuple[Path, dict, nn.Module, str]:
    from transformers import AutoTokenizer

    model = tiny_llama()
    results = {
        name: method.quantize(LayerJob(name, module))
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name != "lm_head"
    }
    apply_results(model, results)
    tokenizer = AutoTokenizer.from_pretrained(str(STORIES))
    artifact = build_artifact(model, method, results, tokenizer, {"calibration_hash": None})
    folder = save_quantized_model(artifact, tmp_path / tag)
    out = tmp_path / f"{tag}.gguf"
    assert main(["export", str(folder), "--format", "gguf", str(out)]) == 0
    reader = gguf.GGUFReader(str(out))
    loaded, _ = load_quantized_model(folder)
    return out, {t.name: t for t in reader.tensors}, loaded, reader


def back(tensor) -> np.ndarray:
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type)


def exact_weight(layer) -> np.ndarray:
    """s·(q − z) in fp32: exact for fp16 scales and small integers."""
    g = layer.g_idx.long()
    w = layer.scales.float()[g].t() * (layer.codes().float() - layer.zeros().float()[g].t())
    return w.numpy()


@pytest.mark.parametrize(
    "settings, qtype",
    [
        (dict(wbits=4, groupsize=32), "Q4_0"),
        (dict(wbits=4, groupsize=128), "Q4_0"),  # groups of 128 share a scale over 4 blocks
        (dict(wbits=8, groupsize=-1), "Q8_0"),
    ],
)
def test_symmetric_grids_round_trip_exactly(tmp_path, capsys, settings, qtype):
    _, tensors, model, _ = export(tmp_path, RTN(**settings), qtype)
    block = model.model.layers[0]
    for gguf_name, layer in [
        ("blk.0.ffn_gate.weight", block.mlp.gate_proj),
        ("blk.0.ffn_down.weight", block.mlp.down_proj),
        ("blk.0.attn_v.weight", block.self_attn.v_proj),
    ]:
        tensor = tensors[gguf_name]
        assert tensor.tensor_type.name == qtype
        w = back(tensor)
        assert np.array_equal(w, exact_weight(layer))
        ours = layer.dequantize().numpy()
        assert np.array_equal(w.astype(np.float16), ours)
    assert "gguf:" not in capsys.readouterr().err  # nothing lossy to report


def test_asymmetric_4bit_is_q4_1_with_the_minimum_rounded_to_fp16(tmp_path, capsys):
    _, tensors, model, _ = export(tmp_path, RTN(wbits=4, groupsize=32, sym=False), "q41")
    layer = model.model.layers[0].mlp.up_proj
    tensor = tensors["blk.0.ffn_up.weight"]
    assert tensor.tensor_type.name == "Q4_1"
    g = layer.g_idx.long()
    s = layer.scales.float()[g].t()
    m = (-(s * layer.zeros().float()[g].t())).half().float()  # Q4_1 keeps m = −s·z in fp16
    assert np.array_equal(back(tensor), (s * layer.codes().float() + m).numpy())
    diff = np.abs(back(tensor) - exact_weight(layer)).max()
    err = capsys.readouterr().err
    assert "model.layers.0.mlp.up_proj" in err and "Q4_1" in err
    # the error is at most half an fp16 step of m, and it is what the report says
    assert diff <= float((s * 15).max()) * 2**-11
    assert f"{diff:.3g}" in err or diff == 0


def test_q_and_k_rows_follow_llama_cpp_rotary_order(tmp_path):
    _, tensors, model, _ = export(tmp_path, RTN(wbits=4, groupsize=32), "perm")
    attn = model.model.layers[0].self_attn
    for name, layer, heads in [("attn_q", attn.q_proj, 4), ("attn_k", attn.k_proj, 2)]:
        ours = exact_weight(layer)
        rows = ours.shape[0]
        order = np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)
        assert np.array_equal(back(tensors[f"blk.0.{name}.weight"]), ours[order])


def test_metadata_and_unquantized_tensors(tmp_path):
    _, tensors, model, reader = export(tmp_path, RTN(wbits=4, groupsize=32), "meta")

    def field(key):
        f = reader.fields[key]
        return f.contents()

    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == 1
    assert field("llama.embedding_length") == 64
    assert field("llama.attention.head_count_kv") == 2
    assert field("general.file_type") == 2  # mostly Q4_0
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == 512 and tokens[1] == "<s>"
    emb = model.model.embed_tokens.weight.detach().numpy()
    assert np.array_equal(back(tensors["token_embd.weight"]).reshape(emb.shape), emb)
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"


def test_unaligned_groups_are_requantized_with_the_measured_error(tmp_path, capsys):
    _, tensors, _, _ = export(tmp_path, RTN(wbits=4, groupsize=16), "g16")
    assert tensors["blk.0.ffn_up.weight"].tensor_type.name == "Q4_0"
    err = capsys.readouterr().err
    assert "re-quantized: relative weight error" in err
