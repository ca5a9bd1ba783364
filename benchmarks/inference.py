"""Packed inference speed and memory (issue 14, item 5): a 4-bit g128 model against fp32.

Builds the synthetic Llama of ``synthetic_model.py`` in memory (hidden 1024,
intermediate 2816, 16 heads, 8 blocks, vocab 4096, fp32; seeded,
outlier-structured weights), times on the same machine in one process:

- ``forward_s``: one forward of 256 tokens (batch 1, no cache), the minimum
  of ``--repeats`` after a warm-up;
- ``generate_s``: greedy generation of 64 new tokens after a 16-token
  prompt (KV cache on), the minimum of ``--repeats``;

first for the fp32 model, then for the same model with every block Linear
quantized by RTN 4-bit g128 (symmetric; GPTQ's layout and inference layer)
on the fast path (torch's int4 CPU kernel for decoding, a transient bf16
weight for the prompt), and once on the exact path (fp16 dequantized weight
per call, the path before issue 14). ``weight_bytes`` counts every parameter
and buffer once, plus what packed layers hold beside their buffers (kernel
weights, per-block scales) after the runs; ``logits_rel_diff`` is the fast
path's relative logits difference to the exact path. One JSON line per
thread count goes to ``benchmarks/results/inference.jsonl``.

    flock -w 900 /tmp/onecomp-cpu.lock python benchmarks/inference.py --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic_model  # noqa: E402
from common import RESULTS  # noqa: E402

SIZES = dict(
    hidden_size=1024,
    intermediate_size=2816,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=4096,
    tie_word_embeddings=False,
)
BLOCKS = 8
FORWARD_TOKENS, PROMPT_TOKENS, NEW_TOKENS = 256, 16, 64


def build_model(blocks: int = BLOCKS, seed: int = 0) -> nn.Module:
    """The synthetic Llama, drawn tensor by tensor as ``synthetic_model`` writes it."""
    from transformers import LlamaForCausalLM

    config = synthetic_model.llama_config(blocks, SIZES)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(synthetic_model.draw(name, tuple(param.shape), seed))
    return model.eval()


def quantize_rtn(model: nn.Module) -> nn.Module:
    """Every block Linear as RTN 4-bit g128 packed layers (the lm_head stays fp32)."""
    from onecomp_core.contract import LayerJob
    from onecomp_core.rtn import RTN
    from onecomp_core.storage import packed_model

    method = RTN(wbits=4, groupsize=128)
    results = {
        name: method.quantize(LayerJob(name, module))
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name != "lm_head"
    }
    return packed_model(model, method, results).eval()


def weight_bytes(model: nn.Module) -> int:
    """Parameters and buffers (each storage once) plus what packed layers derive and keep."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = (tensor.data_ptr(), tensor.numel())
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total + sum(m.derived_bytes() for m in model.modules() if hasattr(m, "derived_bytes"))


def best_of(repeats: int, run) -> float:
    run()  # warm-up (builds kernel weights, allocator pools)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.inference_mode()
def measure(model: nn.Module, repeats: int, tokens: torch.Tensor) -> dict:
    prompt = tokens[:, :PROMPT_TOKENS]
    forward = best_of(repeats, lambda: model(tokens, use_cache=False))
    generate = best_of(
        repeats,
        lambda: model.generate(
            prompt,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0,
        ),
    )
    return {"forward_s": round(forward, 4), "generate_s": round(generate, 4)}


def run(threads: int, repeats: int) -> dict:
    from onecomp_core.kernels.packed_linear import set_fast_path

    torch.set_num_threads(threads)
    tokens = torch.randint(
        0, SIZES["vocab_size"], (1, FORWARD_TOKENS), generator=torch.Generator().manual_seed(0)
    )
    model = build_model()
    fp32 = measure(model, repeats, tokens)
    fp32_bytes = weight_bytes(model)
    packed = quantize_rtn(model)
    del model
    set_fast_path(packed, True)  # fp32 activations, products in bf16
    fast = measure(packed, repeats, tokens)
    with torch.inference_mode():
        fast_logits = packed(tokens, use_cache=False).logits.float()
        set_fast_path(packed, False)
        exact_forward = best_of(1, lambda: packed(tokens, use_cache=False))
        exact_logits = packed(tokens, use_cache=False).logits.float()
        set_fast_path(packed, True)
    packed_bytes = weight_bytes(packed)
    return {
        "benchmark": "inference",
        "model": f"synthetic llama h1024 i2816 16 heads {BLOCKS} blocks vocab 4096",
        "quantized": "rtn 4-bit g128 sym (block linears)",
        "threads": threads,
        "fp32_forward_s": fp32["forward_s"],
        "packed_forward_s": fast["forward_s"],
        "packed_exact_forward_s": round(exact_forward, 4),
        "forward_speedup": round(fp32["forward_s"] / fast["forward_s"], 3),
        "fp32_generate_s": fp32["generate_s"],
        "packed_generate_s": fast["generate_s"],
        "generate_speedup": round(fp32["generate_s"] / fast["generate_s"], 3),
        "fp32_weight_mb": round(fp32_bytes / 1e6, 1),
        "packed_weight_mb": round(packed_bytes / 1e6, 1),
        "weight_ratio": round(packed_bytes / fp32_bytes, 3),
        "logits_rel_diff": float(
            f"{((fast_logits - exact_logits).norm() / exact_logits.norm()).item():.3g}"
        ),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "inference.jsonl"))
    args = p.parse_args(argv)
    for threads in args.threads:
        record = run(threads, args.repeats)
        line = json.dumps(record)
        print(line)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
