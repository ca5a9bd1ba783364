"""Load onecomp's GPTQ outputs in the real consumer and compare logits (run WITHOUT onecomp).

Run in a venv holding transformers + optimum + gptqmodel (``.ci/gptqmodel_compat.sh``
makes one): each case folder written by ``make_gptq_cases.py`` is loaded twice,
with ``AutoModelForCausalLM.from_pretrained`` (transformers' GPTQ path: optimum,
reading ``modules_in_block_to_quantize``) and with ``GPTQModel.load`` (gptqmodel's
own loader, reading ``dynamic`` as vLLM does), both through gptqmodel's torch
backend. Every layer's dense weight (for a quantized layer, the kernel's
forward on the identity matrix: each output is one weight, exact) must equal
onecomp's bit for bit. Logits: from_pretrained computes in float32, and its
logits must equal onecomp's exactly; gptqmodel's torch kernel takes only
float16/bfloat16, so ``GPTQModel.load`` runs in float16 and its logits may
differ from onecomp's float32 ones by at most twice what onecomp's own float16
forward does (the fp16 rounding bound). transformers' GPTQ config has one bit
width and group size for all layers, so the mixed-bits case must fail there
loudly (never load other weights) and load in ``GPTQModel.load``.

    python tests/compat/check_gptqmodel.py CASES_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

#: cases whose settings transformers' GPTQ config cannot express (per-layer bits)
NOT_FOR_TRANSFORMERS = {"mixed"}
#: loader → cases it may refuse loudly (an exception) instead of loading them exactly:
#: GPTQModel's own loader refuses asymmetric grids in the v1 layout ("sym=False …
#: format=GPTQ is only supported if produced by gptqmodel >= 0.9.0"), and onecomp labels
#: RTN's gptq_v2 layout ``onecomp`` (GPTQModel's loader misread it, silently), which a
#: consumer without onecomp must refuse; neither may ever load other weights
MAY_REFUSE = {"from_pretrained": {"rtn"}, "GPTQModel.load": {"asym", "rtn"}}


def hf_model(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, GPTQConfig

    return AutoModelForCausalLM.from_pretrained(
        str(folder), quantization_config=GPTQConfig(bits=4, backend="torch"), device_map="cpu"
    )


def gptqmodel_model(folder: Path) -> torch.nn.Module:
    from gptqmodel import BACKEND, GPTQModel

    loaded = GPTQModel.load(str(folder), backend=BACKEND.TORCH, device="cpu", dtype=torch.float16)
    return loaded.model


def weight_mismatches(model: torch.nn.Module, name: str, reference: dict) -> list[str]:
    """The layers whose dense fp16 weight differs from onecomp's (names, empty when none)."""
    found = []
    for key, expected in reference.items():
        case, _, layer = key.partition(":")
        if case != name or not layer.startswith("model."):
            continue
        module = model.get_submodule(layer)
        if hasattr(module, "qweight"):  # the kernel's own product with the identity: exact
            assert module.bias is None, f"{layer}: the identity trick needs a layer without bias"
            dtype = model.get_input_embeddings().weight.dtype
            with torch.no_grad():
                weight = module(torch.eye(module.in_features, dtype=dtype)).t()
        else:
            weight = module.weight
        if not torch.equal(weight.detach().half(), expected):
            found.append(layer)
    return found


def check_case(cases: Path, name: str) -> int:
    """Load one case both ways and print one line each; 0 when every check holds."""
    reference = load_file(str(cases / "reference.safetensors"))
    ids, exact = reference["input_ids"], reference[name]
    bound = 2 * (reference[f"{name}:fp16"] - exact).abs().max().item()
    failed = 0
    for loader, load, limit in (
        ("from_pretrained", hf_model, 0.0),
        ("GPTQModel.load", gptqmodel_model, bound),
    ):
        if loader == "from_pretrained" and name in NOT_FOR_TRANSFORMERS:
            try:
                load(cases / name)
            except Exception as exc:  # the loud refusal this case expects
                print(f"RESULT {name} {loader}: refused ({type(exc).__name__})", flush=True)
            else:
                print(f"RESULT {name} {loader}: loaded settings it cannot express", flush=True)
                failed += 1
            continue
        try:
            model = load(cases / name)
        except Exception as exc:
            refused = name in MAY_REFUSE.get(loader, set())
            print(
                f"RESULT {name} {loader}: refused ({type(exc).__name__}: {str(exc)[:120]})"
                f"{'' if refused else '  FAILED'}",
                flush=True,
            )
            failed += not refused
            continue
        with torch.no_grad():
            diff = (model(input_ids=ids).logits.float() - exact).abs().max().item()
        wrong = weight_mismatches(model, name, reference)
        ok = diff <= limit and not wrong
        print(
            f"RESULT {name} {loader}: max |logit diff| {diff:.3g} (allowed {limit:.3g}), "
            f"weights {'bit-exact' if not wrong else 'DIFFER in ' + ', '.join(wrong)}"
            f"{'' if ok else '  FAILED'}",
            flush=True,
        )
        failed += not ok
    return 1 if failed else 0


def main(cases: Path) -> int:
    """Each case in its own process: a consumer that aborts (it did) fails only that case."""
    import importlib.util
    import subprocess

    assert importlib.util.find_spec("onecomp_core") is None, "run this without onecomp installed"
    keys = load_file(str(cases / "reference.safetensors"))
    names = [n for n in keys if n != "input_ids" and ":" not in n]
    failed = []
    for name in names:
        run = subprocess.run(
            [sys.executable, __file__, str(cases), name], capture_output=True, text=True
        )
        lines = [line[7:] for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        print("\n".join(lines) or f"{name}: no result", flush=True)
        if run.returncode != 0:
            failed.append(name)
            print(f"  {name} failed (exit {run.returncode}):\n" + run.stderr[-3000:])
    print(f"gptqmodel compatibility: {len(names) - len(failed)} of {len(names)} cases equal")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 3:
        sys.exit(check_case(Path(sys.argv[1]), sys.argv[2]))
    sys.exit(main(Path(sys.argv[1])))
