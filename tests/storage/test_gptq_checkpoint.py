"""A standard GPTQ checkpoint written by another tool loads, evaluates and inspects in onecomp.

The folder is written here by an independent writer of the public GPTQ
layout (what transformers/optimum and GPTQModel save): ``qweight`` packed
along the inputs, ``qzeros`` (stored as zero − 1, "gptq" v1) along the
outputs, fp16 ``scales`` (groups, out), ``g_idx`` with an act-order
permutation, a ``dynamic`` override (GPTQModel's convention) giving the MLP
8 bits per row, and ``modules_in_block_to_quantize`` leaving ``o_proj`` dense.
The expected model is stories260K with each layer's weight replaced by the
dequantized one, computed here from the codes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from onecomp_core import calculate_perplexity, list_quantizers, load_quantized_model
from onecomp_core.cli import main

ASSETS = Path(__file__).resolve().parents[3] / "shared" / "assets"
STORIES = ASSETS / "stories260K"
TEXT = ASSETS / "text" / "tinystories-valid-excerpt.txt"
ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
QUANTIZATION_CONFIG = {
    "quant_method": "gptq",
    "bits": 4,
    "group_size": 32,
    "desc_act": True,
    "sym": True,
    "checkpoint_format": "gptq",
    "damp_percent": 0.01,
    "true_sequential": True,
    "static_groups": False,
    "lm_head": False,
    "dynamic": {r"+:.*\.mlp\..*": {"bits": 8, "group_size": -1}, r"-:.*o_proj": {}},
    "modules_in_block_to_quantize": [list(ATTENTION), list(MLP)],
    "meta": {"quantizer": ["an-independent-writer:0.1"]},
}

pytestmark = [
    pytest.mark.skipif(not STORIES.is_dir(), reason="needs the shared stories260K"),
    pytest.mark.skipif("gptq" not in list_quantizers(), reason="needs onecomp-gptq"),
]


# -- the independent writer ------------------------------------------------------------------
def _pack(values: np.ndarray, bits: int) -> torch.Tensor:
    """(n, m) codes < 2**bits → (n·bits/32, m) int32 words, low bits first along dim 0."""
    per_word = 32 // bits
    n, m = values.shape
    assert n % per_word == 0, "the public layout needs whole words"
    words = np.zeros((n // per_word, m), dtype=np.uint64)
    for i in range(n):
        words[i // per_word] |= values[i].astype(np.uint64) << np.uint64(bits * (i % per_word))
    return torch.from_numpy(words.astype(np.uint32).view(np.int32))


def _gptq_layer(weight_shape, bits, group_size, rng):
    """Random codes, scales, sym zero points and an act-order g_idx; the tensors and W."""
    out_features, in_features = weight_shape
    size = in_features if group_size == -1 else group_size
    groups = -(-in_features // size)
    g_idx = np.repeat(np.arange(groups), size)[:in_features]
    g_idx = g_idx[rng.permutation(in_features)]  # act-order: any column in any group
    codes = rng.integers(0, 2**bits, size=(in_features, out_features))
    scales = torch.from_numpy(rng.uniform(0.002, 0.02, (groups, out_features))).half()
    zeros = np.full((groups, out_features), 2 ** (bits - 1))
    stored_zeros = (zeros - 1) & (2**bits - 1)  # v1 ("gptq") stores zero − 1
    tensors = {
        "qweight": _pack(codes, bits),
        "qzeros": _pack(stored_zeros.T, bits).T.contiguous(),
        "scales": scales,
        "g_idx": torch.from_numpy(g_idx.astype(np.int32)),
    }
    weight = scales.float()[g_idx] * torch.from_numpy(codes - zeros[g_idx]).float()  # (in, out)
    return tensors, weight.t().half().float().contiguous()


@pytest.fixture(scope="module")
def gptq_folder(tmp_path_factory):
    """(folder, the expected dense model) for a GPTQ checkpoint of stories260K."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for index in range(model.config.num_hidden_layers):
        for part in (*ATTENTION, *MLP):
            name = f"model.layers.{index}.{part}"
            linear = model.get_submodule(name)
            bits, group = (8, -1) if part in MLP else (4, 32)
            tensors, weight = _gptq_layer(linear.weight.shape, bits, group, rng)
            del state[f"{name}.weight"]
            state.update({f"{name}.{k}": v for k, v in tensors.items()})
            linear.weight.data = weight
    folder = tmp_path_factory.mktemp("foreign") / "stories-gptq"
    folder.mkdir()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((STORIES / "config.json").read_text())
    config["quantization_config"] = QUANTIZATION_CONFIG
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        if (STORIES / name).is_file():
            shutil.copy(STORIES / name, folder / name)
    return folder, model


# -- reading it ------------------------------------------------------------------------------
IDS = torch.tensor([[1, 100, 200, 300, 400, 17, 9, 3, 250, 511]])


def test_load_quantized_model_reads_a_standard_gptq_folder(gptq_folder):
    folder, expected = gptq_folder
    model, tokenizer = load_quantized_model(folder)
    assert tokenizer is not None
    q, down, o = (
        model.get_submodule(f"model.layers.0.{p}")
        for p in ("self_attn.q_proj", "mlp.down_proj", "self_attn.o_proj")
    )
    assert (q.bits, q.scales.shape[0], down.bits, down.scales.shape[0]) == (4, 2, 8, 1)
    assert isinstance(o, torch.nn.Linear)  # left dense by modules_in_block_to_quantize
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, expected(IDS).logits)


def test_inspect_maps_the_config_to_the_layer_table(gptq_folder, capsys):
    folder, _ = gptq_folder
    capsys.readouterr()
    assert main(["inspect", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "gptq"
    bits = {row["layer"].split(".", 3)[3]: row["bits"] for row in report["layers"]}
    assert bits == {**dict.fromkeys(ATTENTION, 4), **dict.fromkeys(MLP, 8)}
    assert len(report["layers"]) == 5 * 6


def test_eval_gives_the_perplexity_of_the_dense_equivalent(gptq_folder, capsys):
    folder, expected = gptq_folder
    from transformers import AutoTokenizer

    args = ["--seqlen", "64", "--max-tokens", "512"]
    capsys.readouterr()
    assert (
        main(["eval", str(folder), "--ppl", str(TEXT), *args, "--json", "--dtype", "float32"]) == 0
    )
    ppl = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ppl"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    reference = calculate_perplexity(expected, tokenizer, TEXT, seqlen=64, max_tokens=512)
    assert ppl == pytest.approx(reference.ppl, rel=1e-5)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"checkpoint_format": "marlin"}, "checkpoint_format 'marlin' is not readable"),
        ({"bits": 5}, "bits 5 is not readable; expected one of 2, 3, 4, 8"),
        ({"dynamic": {r".*down_proj": {"bits": 1}}}, "dynamic['.*down_proj']: bits 1"),
    ],
)
def test_unreadable_gptq_settings_fail_in_one_line(gptq_folder, tmp_path, capsys, setting, message):
    folder, _ = gptq_folder
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config["quantization_config"].update(setting)
    (copy / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["inspect", str(copy)]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
