"""Block fine-tuning and the whole path through the real Runner: quantize → save → load."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from onecomp_core.blockwise import BlockContext
from onecomp_core.calibration import CalibrationConfig
from onecomp_core.model_config import ModelConfig
from onecomp_core.runner import Runner
from onecomp_core.serialization import load_quantized_model
from onecomp_dbf import DBF, DoubleBinaryLinear
from onecomp_dbf.finetune import finetune_block

STORIES = Path(__file__).resolve().parents[4] / "shared" / "assets" / "stories260K"
CALIB = STORIES.parent / "text" / "wikitext2-valid.tokens.txt"


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(16, 40)
        self.down = nn.Linear(40, 16)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return x + scale * self.down(torch.relu(self.up(x)))


def test_finetune_lowers_block_error_and_updates_results_in_place():
    torch.manual_seed(0)
    block = _Block()
    inputs = [torch.randn(4, 32, 16) for _ in range(6)]
    kwargs = [{"scale": 0.5} for _ in inputs]
    with torch.no_grad():
        fp_outputs = [block(x, **kw) for x, kw in zip(inputs, kwargs, strict=True)]
    q = DBF(target_bits=1.0, iters=10, finetune_steps=60)
    layers = {"b.up": block.up, "b.down": block.down}
    q.setup(nn.ModuleDict({"b": block}))
    for name, module in layers.items():
        hdiag = 2 * torch.cat(inputs).reshape(-1, 16).pow(2).mean(0) if name == "b.up" else None
        result = q.quantize(module, name, hessian=hdiag)
        module.weight.data = result.compute_dequantized_weight().float()
    old = {n: r.dbf_Da.clone() for n, r in q.results.items()}

    def block_error() -> float:
        with torch.no_grad():
            return sum(
                (block(x, **kw) - y).pow(2).sum().item()
                for x, kw, y in zip(inputs, kwargs, fp_outputs, strict=True)
            )

    before = block_error()
    context = _context(block, inputs, kwargs, layers, q, fp_outputs)
    losses = finetune_block(context, steps=60, lr=1e-2, seed=0)
    assert losses["after"] < losses["before"]
    assert block_error() < 0.9 * before
    for name, module in layers.items():
        result = q.results[name]  # the quantizer's own dict saw the in-place update
        assert result.finetuned and not torch.equal(result.dbf_Da, old[name])
        assert torch.equal(module.weight.data, result.compute_dequantized_weight().float())
        assert module.weight.requires_grad and type(module) is nn.Linear
    assert block.up is layers["b.up"]


def _context(block, inputs, kwargs, layers, q, fp_outputs) -> BlockContext:
    """Block 0 as the Runner hands it over: the quantized stream equals the fp inputs here."""
    return BlockContext(
        index=0,
        name="b",
        block=block,
        device=torch.device("cpu"),
        inputs=inputs,
        kwargs=kwargs,
        layers=layers,
        results=dict(q.results),
        fp_inputs=inputs,
        fp_outputs=fp_outputs,
    )


def test_sign_training_flips_signs_and_repacks_them():
    """With finetune_sign_lr > 0 the straight-through latents may flip signs; results agree."""
    torch.manual_seed(1)
    block = _Block()
    inputs = [torch.randn(4, 32, 16) for _ in range(6)]
    kwargs = [{"scale": 1.0} for _ in inputs]
    with torch.no_grad():
        fp_outputs = [block(x, **kw) for x, kw in zip(inputs, kwargs, strict=True)]
    q = DBF(target_bits=1.0, iters=5, finetune_steps=40, flag_hessian=False)
    layers = {"b.up": block.up, "b.down": block.down}
    q.setup(nn.ModuleDict({"b": block}))
    for name, module in layers.items():
        module.weight.data = q.quantize(module, name).compute_dequantized_weight().float()
    old = {n: r.signs() for n, r in q.results.items()}
    context = _context(block, inputs, kwargs, layers, q, fp_outputs)
    losses = finetune_block(context, steps=40, lr=1e-2, seed=0, sign_lr=0.05)
    assert losses["after"] < losses["before"]
    flipped = 0
    for name, module in layers.items():
        result = q.results[name]
        s_a, s_b = result.signs()
        assert set(s_a.unique().tolist()) <= {-1.0, 1.0}
        flipped += int((s_a != old[name][0]).sum() + (s_b != old[name][1]).sum())
        assert torch.equal(module.weight.data, result.compute_dequantized_weight().float())
    assert flipped > 0
    assert block.up is layers["b.up"]


def test_runner_save_load_logits_equal(tmp_path):
    quantizer = DBF(iters=8, finetune_steps=3, distill_steps=3)
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=32, num_calibration_samples=4, batch_size=2
    )
    config = ModelConfig(path=STORIES, dtype="float32", device="cpu")
    runner = Runner(config, quantizer, calibration, show_progress=False)
    results = runner.run()
    assert len(results) == 35 and all(r.is_dbf_quantized for r in results.values())
    assert all(r.finetuned for r in results.values())
    ids = torch.tensor([[1, 403, 407, 261, 378, 418, 260, 296, 324, 262]])
    with torch.no_grad():
        fake = runner.model(input_ids=ids).logits
    runner.save_quantized_model(tmp_path / "q")
    model, _ = load_quantized_model(tmp_path / "q", device_map="cpu")
    layer = model.get_submodule("model.layers.2.mlp.down_proj")
    assert isinstance(layer, DoubleBinaryLinear)
    assert layer.mid_features == results["model.layers.2.mlp.down_proj"].mid_features
    with torch.no_grad():
        loaded = model(input_ids=ids).logits
    # the fake-quantized model holds fp16-rounded dense weights, the packed one the exact factors
    torch.testing.assert_close(loaded, fake, rtol=1e-3, atol=3e-2)
    with torch.no_grad():
        packed_in_memory = runner.create_quantized_model()(input_ids=ids).logits
    assert torch.equal(loaded, packed_in_memory)
