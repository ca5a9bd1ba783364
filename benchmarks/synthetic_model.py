"""The synthetic real-size Llama of benchmarks.md's real-size protocol, written as shards.

Quality needs a trained model; memory, time and scaling only need the shapes.
``build`` writes a Hugging Face folder with TinyLlama's layer shapes (or any
``LlamaConfig`` sizes given), every 2-D weight drawn like the synthetic layer
(0.02·N(0,1) ⊙ exp(0.3·N(0,1)) per row ⊙ exp(0.5·N(0,1)) per column), norms
at one, saved as fp32 safetensors shards split the way ``save_pretrained``
splits them (a new shard when the next tensor would pass the limit) with a
``model.safetensors.index.json``, and the stories260K tokenizer.

The model is never held whole: tensors are drawn one shard at a time. Each
tensor has its own generator, seeded from the run seed and the tensor's name,
so the first blocks of the 8-block model are the 2-block model's blocks.
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

#: TinyLlama's layer shapes (the real-size protocol)
TINYLLAMA = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
    tie_word_embeddings=False,
)
#: Llama-2-7B's layer shapes (the protocol's GPU variant)
LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    tie_word_embeddings=False,
)
#: stories260K-sized layers: for the benchmark's own tests
TINY = dict(
    hidden_size=64,
    intermediate_size=172,
    num_attention_heads=8,
    num_key_value_heads=4,
    vocab_size=512,
    tie_word_embeddings=False,
)
SHAPES = {"tinyllama": TINYLLAMA, "llama2-7b": LLAMA2_7B, "tiny": TINY}
#: shard limit: several shards even at 2 blocks, as a streamed loader meets them
MAX_SHARD_BYTES = 500 * 1000 * 1000
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
_DONE = "onecomp-synthetic.json"


def llama_config(blocks: int, sizes: dict):
    """The LlamaConfig of the synthetic model: ``sizes`` at ``blocks`` blocks, fp32."""
    from transformers import LlamaConfig

    return LlamaConfig(**sizes, num_hidden_layers=blocks, dtype="float32")


def parameter_shapes(config) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter in state-dict order, from a skeleton on the meta device."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    return [(name, tuple(p.shape)) for name, p in skeleton.named_parameters()]


def draw(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The protocol's tensor for ``name``: outlier-structured 2-D weights, ones for norms."""
    if len(shape) != 2:
        return torch.ones(shape)
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    rows, cols = shape
    w = torch.randn(rows, cols, generator=g).mul_(0.02)
    w.mul_(torch.exp(0.3 * torch.randn(rows, 1, generator=g)))
    w.mul_(torch.exp(0.5 * torch.randn(1, cols, generator=g)))
    return w


def shard_plan(
    shapes: list[tuple[str, tuple[int, ...]]], max_bytes: int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Split the tensors in order into shards: a new one when the next would pass the limit."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 4 * _numel(shape)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _shard_tensors(
    shard: list[tuple[str, tuple[int, ...]]], seed: int
) -> Iterator[tuple[str, torch.Tensor]]:
    for name, shape in shard:
        yield name, draw(name, shape, seed)


def build(
    folder: str | Path,
    blocks: int,
    sizes: dict = TINYLLAMA,
    seed: int = 0,
    tokenizer: str | Path | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write the synthetic model to ``folder`` (built beside it, renamed into place at the end)."""
    folder = Path(folder)
    config = llama_config(blocks, sizes)
    shapes = parameter_shapes(config)
    plan = shard_plan(shapes, max_shard_bytes)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config.save_pretrained(tmp)
    weight_map = {}
    for i, shard in enumerate(plan, start=1):
        file = f"model-{i:05d}-of-{len(plan):05d}.safetensors"
        # one shard in memory at a time
        save_file(dict(_shard_tensors(shard, seed)), tmp / file, metadata={"format": "pt"})
        weight_map |= {name: file for name, _ in shard}
    total = sum(4 * _numel(shape) for _, shape in shapes)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if tokenizer is not None:
        if not (Path(tokenizer) / "tokenizer.json").is_file():
            raise FileNotFoundError(f"tokenizer {tokenizer}: no tokenizer.json there")
        for name in TOKENIZER_FILES:
            if (Path(tokenizer) / name).is_file():
                shutil.copy(Path(tokenizer) / name, tmp / name)
    recipe = {"blocks": blocks, "sizes": sizes, "seed": seed, "max_shard_bytes": max_shard_bytes}
    (tmp / _DONE).write_text(json.dumps(recipe | {"weight_bytes": total}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def cached(
    root: str | Path,
    blocks: int,
    shape: str = "tinyllama",
    seed: int = 0,
    tokenizer: str | Path | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """The model under ``root`` for this recipe, built only when no complete copy is there."""
    sizes = SHAPES[shape]
    folder = Path(root) / f"{shape}-{blocks}b-seed{seed}"
    recipe = {"blocks": blocks, "sizes": sizes, "seed": seed, "max_shard_bytes": max_shard_bytes}
    done = folder / _DONE
    if done.is_file():
        stored = json.loads(done.read_text())
        if {k: stored.get(k) for k in recipe} == recipe:
            return folder
    return build(folder, blocks, sizes, seed, tokenizer, max_shard_bytes)


def weight_bytes(folder: str | Path) -> int:
    """Bytes of the model's weights as the checkpoint's index states them."""
    index = Path(folder) / "model.safetensors.index.json"
    if index.is_file():
        return int(json.loads(index.read_text())["metadata"]["total_size"])
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
