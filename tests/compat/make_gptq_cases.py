"""Write onecomp's GPTQ outputs of a tiny Llama and their reference logits (run with onecomp).

The consumer check (``check_gptqmodel.py``, run in a venv with gptqmodel and
without onecomp) loads each folder and compares it with ``reference.safetensors``
written here from ``onecomp_core.load_quantized_model``: per case the logits in
float32 (``CASE``) and float16 (``CASE:fp16``), and the dense fp16 weight of
every Linear in the blocks (``CASE:LAYER``; a quantized layer's dequantized
weight). The model is built in code with widths that are multiples of the
group size, so every layer is one a GPTQ kernel takes.

    python tests/compat/make_gptq_cases.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ASSETS = Path(__file__).resolve().parents[3] / "shared" / "assets"
TOKENIZER = ASSETS / "stories260K"
CALIBRATION = ASSETS / "text" / "wikitext2-valid.tokens.txt"

#: GPTQ's plain grid, spelled out: the defaults (act-order, asymmetric, clipping search)
#: would make every case asymmetric, which GPTQModel's own loader refuses in the v1 layout
PLAIN = {"sym": True, "actorder": False}
#: case name → (method, parameters); each is one claim of item 2 of issue 14
CASES = {
    "gptq4": ("gptq", {**PLAIN, "wbits": 4, "groupsize": 32}),
    # damping 2.0 is outside transformers' damp_percent range: saved clamped, loads
    "gptq8": ("gptq", {**PLAIN, "wbits": 8, "groupsize": 32, "percdamp": 2.0}),
    "gptq3": ("gptq", {**PLAIN, "wbits": 3, "groupsize": 32}),
    "actorder": ("gptq", {**PLAIN, "wbits": 4, "groupsize": 32, "actorder": True}),
    "asym": ("gptq", {**PLAIN, "wbits": 4, "groupsize": 32, "sym": False}),
    "mixed": ("gptq", {**PLAIN, "wbits": 4, "groupsize": 32, "mlp_wbits": 8, "mlp_groupsize": 64}),
    # the same layer left out of every block: block-relative modules_in_block_to_quantize
    "excluded": (
        "gptq",
        {**PLAIN, "wbits": 4, "groupsize": 32, "exclude_layer_keywords": ["o_proj"]},
    ),
    # one layer of one block left out: full names
    "excluded_one": (
        "gptq",
        {
            **PLAIN,
            "wbits": 4,
            "groupsize": 32,
            "exclude_layer_names": ["lm_head", "model.layers.0.mlp.up_proj"],
        },
    ),
    # RTN in GPTQ's layout with raw zero points (gptq_v2): labelled onecomp, refused here
    "rtn": ("rtn", {"wbits": 4, "groupsize": 32}),
}
#: the input every consumer runs
INPUT_IDS = torch.arange(1, 49).unsqueeze(0)


def tiny_llama_folder(out: Path) -> Path:
    """A random Llama (hidden 64, intermediate 128: multiples of every group size used)."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=128,
    )
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    folder = out / "base"
    model.save_pretrained(str(folder))
    tf.AutoTokenizer.from_pretrained(str(TOKENIZER)).save_pretrained(str(folder))
    return folder


def quantize(base: Path, method: str, params: dict, out: Path) -> Path:
    from onecomp_core import CalibrationConfig, ModelConfig, Runner, create_method

    calibration = CalibrationConfig(
        dataset=str(CALIBRATION), max_length=64, num_calibration_samples=8, batch_size=8
    )
    model_config = ModelConfig(path=str(base), dtype="float32", device="cpu")
    runner = Runner(
        model_config,
        create_method(method, **params),
        calibration,
        show_progress=False,
        save_dtype="float32",  # unquantized tensors as computed: from_pretrained in fp32 is exact
    )
    runner.run()
    return runner.save_quantized_model(out)


def main(out: Path) -> None:
    import transformers

    from onecomp_core import load_quantized_model

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    base = tiny_llama_folder(out)
    reference = {"input_ids": INPUT_IDS.contiguous()}
    for name, (method, params) in CASES.items():
        folder = quantize(base, method, params, out / name)
        qc = json.loads((folder / "config.json").read_text())["quantization_config"]
        print(f"{name}: quant_method={qc['quant_method']}", file=sys.stderr)
        model, _ = load_quantized_model(folder)
        with torch.no_grad():
            reference[name] = model(input_ids=INPUT_IDS).logits.float().contiguous()
            for layer, module in model.model.layers.named_modules(prefix="model.layers"):
                if hasattr(module, "dequantize"):
                    reference[f"{name}:{layer}"] = module.dequantize()
                elif isinstance(module, torch.nn.Linear):
                    reference[f"{name}:{layer}"] = module.weight.detach().half().contiguous()
            half = model.half()(input_ids=INPUT_IDS).logits.float()
            reference[f"{name}:fp16"] = half.contiguous()
    save_file(reference, str(out / "reference.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
