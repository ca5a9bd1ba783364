"""A rotation folded into the weights keeps the model's function; saved, it loads the same."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from onecomp_core.data.model import ModelConfig
from onecomp_core.rtn import RTN
from onecomp_core.seed_api import Runner
from onecomp_core.storage.hf_folder import load_quantized_model
from onecomp_core.testing import tiny_model
from onecomp_core.transforms.rotation import check_rotation, rotate_model


def _tensors(folder) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_rotated_model_computes_the_same_logits(kind: str) -> None:
    model = tiny_model(kind).eval()
    with torch.no_grad():  # trained-looking norm scales, so folding them matters
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.3 * torch.randn_like(param))
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    before = _logits(model, ids)
    embed_before = model.get_input_embeddings().weight.clone()
    spec = rotate_model(model, seed=5)
    after = _logits(model, ids)
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
    assert not torch.allclose(model.get_input_embeddings().weight, embed_before)
    assert len(spec["online"]) == model.config.num_hidden_layers
    # without the online rotation before down_proj the function is lost
    model.model.layers[0].mlp.down_proj._forward_pre_hooks.clear()
    assert not torch.allclose(_logits(model, ids), before, atol=1e-3)


def test_stories_rotated_in_fp32_keeps_its_logits(stories_path) -> None:
    model = ModelConfig(path=str(stories_path), dtype="float32", device="cpu").load_model()
    ids = torch.randint(
        0, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0)
    )
    before = _logits(model, ids)
    rotate_model(model)
    assert model.lm_head.weight is not model.model.embed_tokens.weight  # untied: head has the norm
    assert torch.allclose(_logits(model, ids), before, atol=1e-4 * before.abs().max())


def test_saved_rotated_model_loads_to_the_same_logits(stories_path, tmp_path) -> None:
    runner = Runner(
        model_config=ModelConfig(path=str(stories_path), dtype="float32", device="cpu"),
        quantizer=RTN(wbits=4),
        rotation="hadamard",
        rotation_seed=3,
        show_progress=False,
        save_dtype="float32",  # the unquantized tensors as computed: logits comparable exactly
    )
    runner.run()
    out = runner.save_quantized_model(tmp_path / "rotated")
    saved = json.loads((out / "config.json").read_text())
    assert saved["quantization_config"]["rotation"]["seed"] == 3
    assert saved["tie_word_embeddings"] is False
    loaded, _ = load_quantized_model(out)
    ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(1))
    expected = _logits(runner.create_quantized_model(), ids)
    got = _logits(loaded, ids)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got, _logits(runner.model, ids), atol=1e-3 * expected.abs().max())


def test_rotation_values() -> None:
    assert check_rotation(None) is None and check_rotation("none") is None
    assert check_rotation("hadamard") == "hadamard"
    with pytest.raises(
        ValueError, match="--rotate 'quarot': expected one of hadamard, learned, none"
    ):
        check_rotation("quarot")
    with pytest.raises(ValueError, match="model type 'gpt2' is not supported"):
        rotate_model(tiny_model("gpt2"))


def test_streamed_rotation_saves_what_the_whole_model_path_saves(stories_path, tmp_path) -> None:
    def runner() -> Runner:
        config = ModelConfig(path=str(stories_path), dtype="float32", device="cpu")
        return Runner(
            model_config=config,
            quantizer=RTN(wbits=4),
            rotation="hadamard",
            show_progress=False,
            save_dtype="float32",
        )

    streamed = runner()
    streamed.quantize_to(tmp_path / "streamed")
    assert next(streamed.model.parameters()).is_meta  # it really streamed
    whole = runner()
    whole.run()
    whole.save_quantized_model(tmp_path / "whole")
    a, b = _tensors(tmp_path / "streamed"), _tensors(tmp_path / "whole")
    assert a.keys() == b.keys() and "lm_head.weight" in a
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
    configs = [
        json.loads((tmp_path / n / "config.json").read_text()) for n in ("streamed", "whole")
    ]
    assert (
        configs[0]["quantization_config"]["rotation"]
        == configs[1]["quantization_config"]["rotation"]
    )
    ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(2))
    loaded = load_quantized_model(tmp_path / "streamed")[0]
    assert torch.allclose(
        _logits(loaded, ids), _logits(whole.create_quantized_model(), ids), atol=1e-4
    )
