"""DBF's block fine-tuning on one block with real layer shapes: seconds and peak memory.

Builds one Llama decoder block with TinyLlama's shapes (the real-size protocol's
model; random weights), gives every Linear a DBF 1.5 result with random signs
(the fit is not what is measured), and runs the engine's own
:func:`~onecomp_core.engine.finetune.finetune_block` for ``--steps`` Adam steps
on 32 batches of 256 tokens (the protocol's calibration; 8 batches a step).
``--per-batch`` builds each twin's Ŵ once per batch, as before
``TrainableLayer.begin_step`` existed. One JSON line: seconds, peak RSS of the
process above the block with its inputs and fp outputs (twins, latents, Adam
state and graphs), and the settings.

    python benchmarks/dbf_finetune_speed.py --steps 3
    python benchmarks/dbf_finetune_speed.py --steps 3 --per-batch
    python benchmarks/dbf_finetune_speed.py --steps 3 --sign-lr 0      # signs fixed
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale_report  # noqa: E402
from common import RESULTS, emit, peak_rss_above, reset_peak_rss  # noqa: E402

from onecomp_core.contract import BlockView, FineTune  # noqa: E402
from onecomp_core.engine.finetune import finetune_block  # noqa: E402
from onecomp_core.kernels import pack_signs  # noqa: E402
from onecomp_dbf import DBF  # noqa: E402
from onecomp_dbf.factors import middle_dim  # noqa: E402
from onecomp_dbf.result import DBFResult  # noqa: E402
from onecomp_dbf.trainable import TrainableDBF  # noqa: E402


class _PerBatch(TrainableDBF):
    """The twin before the step hooks: with trainable signs, Ŵ built (with its graph) in
    every batch's forward (with fixed signs it now runs through the factors instead)."""

    def begin_step(self) -> None:
        pass

    def end_step(self) -> None:
        pass


def _block(seed: int) -> tuple[nn.Module, dict, list[torch.Tensor], list[dict]]:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    block = LlamaDecoderLayer(config, 0).float().eval()
    layers = {f"b.{n}": m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    inputs = [torch.randn(1, 256, 2048) for _ in range(32)]
    rope = LlamaRotaryEmbedding(config)
    embeddings = rope(inputs[0], torch.arange(256)[None])
    return block, layers, inputs, [{"position_embeddings": embeddings} for _ in inputs]


def _random_result(linear: nn.Linear) -> DBFResult:
    n, m = linear.weight.shape
    k = middle_dim(n, m, 1.5)
    return DBFResult(
        dbf_Da=(torch.rand(n) + 0.5).half(),
        dbf_A=pack_signs(torch.randn(n, k).sign()),
        dbf_mid=(torch.rand(k) * 0.01).half(),
        dbf_B=pack_signs(torch.randn(k, m).sign()),
        dbf_Db=(torch.rand(m) + 0.5).half(),
        target_bits=1.5,
        out_features=n,
        in_features=m,
        mid_features=k,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sign-lr", type=float, default=0.02, help="DBF finetune_sign_lr")
    parser.add_argument("--per-batch", action="store_true", help="Ŵ once per batch (before)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default=str(RESULTS / "dbf_finetune_speed.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    block, layers, inputs, kwargs = _block(seed=0)
    with torch.no_grad():
        fp_outputs = [block(x, **kw) for x, kw in zip(inputs, kwargs, strict=True)]
    fp_outputs = [y[0] if isinstance(y, tuple) else y for y in fp_outputs]
    results = {name: _random_result(linear) for name, linear in layers.items()}
    method = DBF(target_bits=1.5, finetune_steps=args.steps, finetune_sign_lr=args.sign_lr)
    if args.per_batch:
        sign_lr = args.sign_lr

        def per_batch_twin(result, linear):
            return _PerBatch(result, linear.bias, torch.device("cpu"), sign_lr > 0, sign_lr)

        method.trainable_layer = per_batch_twin
    view = BlockView(
        0, "b", block, torch.device("cpu"), inputs, kwargs, layers, results, fp_outputs
    )
    rss = reset_peak_rss()  # the block, its inputs and fp outputs are already there
    start = time.perf_counter()
    _, losses = finetune_block(method, view, FineTune(args.steps, 1e-2, seed=0))
    seconds = time.perf_counter() - start
    emit(
        {
            "benchmark": "dbf_finetune_speed",
            "label": args.label,
            "shape": "tinyllama block (2048, 5632, 32 heads, 4 kv)",
            "weights_mb": round(sum(m.weight.numel() for m in layers.values()) * 4 / 1e6, 1),
            "mode": "per batch" if args.per_batch else "per step",
            "steps": args.steps,
            "batches_per_step": 8,
            "sign_lr": args.sign_lr,
            "threads": args.threads,
            "seconds": round(seconds, 1),
            "seconds_per_step": round(seconds / args.steps, 2),
            "peak_above_inputs_mb": round(peak_rss_above(rss) / 1e6),
            "loss_before_after": [
                round(losses.get("before", float("nan")), 5),
                round(losses.get("after", float("nan")), 5),
            ],
            "command": "python benchmarks/dbf_finetune_speed.py "
            + " ".join(a for a in sys.argv[1:] if not a.startswith("--out")),
            "commit": scale_report.git_commit(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
