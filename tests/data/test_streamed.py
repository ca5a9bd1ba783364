"""The streamed model: a meta skeleton whose submodules are read from safetensors on demand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onecomp_core.data.adapters import linearize_conv1d
from onecomp_core.data.model import ModelConfig
from onecomp_core.data.streamed import NotStreamable, open_streamed, resolve_keys
from onecomp_core.testing import tiny_model

STORIES = Path(__file__).resolve().parents[3] / "shared" / "assets" / "stories260K"


def _saved(tmp_path: Path, kind: str, **save: object) -> Path:
    folder = tmp_path / kind
    tiny_model(kind).save_pretrained(folder, **save)
    return folder


def _loaded(folder: Path) -> torch.nn.Module:
    model = ModelConfig(path=str(folder), dtype="float32", device="cpu").load_model()
    linearize_conv1d(model)
    return model


@pytest.mark.parametrize("kind", ["llama", "qwen3", "gpt2"])
def test_every_tensor_is_what_transformers_loads(tmp_path, kind):
    folder = _saved(tmp_path, kind)
    streamed = open_streamed(folder, torch.float32)
    assert all(p.device.type == "meta" for p in streamed.model.parameters())
    streamed.materialize("", "cpu")
    ours, theirs = streamed.model.state_dict(), _loaded(folder).state_dict()
    assert ours.keys() == theirs.keys()
    for key, tensor in theirs.items():
        assert torch.equal(ours[key], tensor), key  # GPT-2's Conv1D weights come transposed


def test_a_block_is_read_alone_and_released_to_meta(tmp_path):
    streamed = open_streamed(_saved(tmp_path, "llama"), torch.float16)
    block = streamed.materialize("model.layers.1", "cpu")
    real = {n for n, p in streamed.model.named_parameters() if p.device.type != "meta"}
    assert real == {f"model.layers.1.{n}" for n, _ in block.named_parameters()}
    assert all(p.dtype == torch.float16 for p in block.parameters())  # the run's dtype
    streamed.release("model.layers.1")
    assert all(p.device.type == "meta" for p in streamed.model.parameters())
    assert streamed.model.model.rotary_emb.inv_freq.device.type == "cpu"  # computed, kept


def test_tied_head_reads_the_embedding_key():
    streamed = open_streamed(STORIES, torch.float32)
    assert streamed.keys["lm_head.weight"] == "model.embed_tokens.weight"
    head = streamed.materialize("lm_head", "cpu")
    assert torch.equal(head.weight, _loaded(STORIES).lm_head.weight)


def test_sharded_checkpoint_is_read_through_its_index(tmp_path):
    folder = _saved(tmp_path, "llama", max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    streamed = open_streamed(folder, torch.float32)
    assert len(set(streamed.files.values())) > 1
    streamed.materialize("", "cpu")
    theirs = _loaded(folder).state_dict()
    assert all(torch.equal(streamed.model.state_dict()[k], t) for k, t in theirs.items())


def test_keys_with_or_without_the_base_model_prefix():
    model = open_streamed(STORIES, torch.float32).model
    names = [n for n, _ in model.named_parameters()]
    stripped = {n.removeprefix("model."): "x.safetensors" for n in names}
    keys = resolve_keys(model, stripped, set())
    assert keys["model.layers.0.mlp.up_proj.weight"] == "layers.0.mlp.up_proj.weight"
    with pytest.raises(NotStreamable, match="model.norm.weight"):
        resolve_keys(model, {k: v for k, v in stripped.items() if k != "norm.weight"}, set())


def test_a_pickle_checkpoint_is_not_streamable(tmp_path):
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(NotStreamable, match="only safetensors"):
        open_streamed(tmp_path, torch.float32)


def test_outside_reads_only_what_runs_before_the_blocks(tmp_path):
    folder = _saved(tmp_path, "llama")
    streamed = open_streamed(folder, torch.float32)
    seen = {}

    def stop(module, args, kwargs):
        seen["embed"] = streamed.model.model.embed_tokens.weight.device.type
        seen["head"] = streamed.model.lm_head.weight.device.type
        raise StopIteration

    handle = streamed.model.model.layers[0].register_forward_pre_hook(stop, with_kwargs=True)
    with streamed.outside("model.layers", "cpu"), pytest.raises(StopIteration):
        streamed.model(input_ids=torch.tensor([[1, 2, 3]]))
    handle.remove()
    assert seen == {"embed": "cpu", "head": "meta"}
    assert streamed.model.model.embed_tokens.weight.device.type == "meta"
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 2


def test_a_walk_leaves_skipped_layers_unread_and_unfilled(tmp_path):
    """What a caller swaps out (a trainable twin) is neither read from disk nor given its
    result: the rest of the block is read, and filled without those layers."""
    from onecomp_core.engine.model_walk import Walk

    streamed = open_streamed(_saved(tmp_path, "llama"), torch.float32)
    filled = []
    walk = Walk(streamed.model, "cpu", streamed, fill=lambda *args: filled.append(args[2]))
    skip = {"model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"}
    with walk.block(1, skip=skip) as block:
        meta = {n for n, p in block.named_parameters(prefix="model.layers.1") if p.is_meta}
        assert meta == {f"{n}.weight" for n in skip}
        assert not block.mlp.up_proj.weight.is_meta
    assert filled == [skip]
    assert all(p.device.type == "meta" for p in streamed.model.model.layers[1].parameters())
