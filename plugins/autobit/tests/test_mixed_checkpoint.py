"""A checkpoint mixing two methods (GPTQ + DBF) saves, loads back without AutoBit, and agrees."""

from __future__ import annotations

import json

import pytest
import torch

from onecomp_core import create_method, list_quantizers, load_quantized_model
from onecomp_core.cli import main


@pytest.mark.skipif(
    not {"gptq", "dbf"} <= set(list_quantizers()), reason="needs onecomp-gptq and onecomp-dbf"
)
def test_gptq_and_dbf_layers_in_one_checkpoint(make_runner, tmp_path):
    specs = [
        {"method": "dbf", "target_bits": 1.5, "iters": 3, "finetune_steps": 2},
        {"method": "gptq", "wbits": 4, "groupsize": 32},
    ]
    quantizer = create_method(
        "autobit", quantizers=specs, target_bit=3.3, target_bit_is_effective=True, num_layers=14
    )
    runner = make_runner(quantizer, samples=4, length=32)
    results = runner.run()
    methods = {r.method for r in results.values()}
    assert methods == {"gptq", "dbf"}
    out = runner.save_quantized_model(tmp_path / "mixed")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["method"] == "autobit" and qc["quant_method"] == "onecomp"
    assert {row["method"] for row in qc["layers"].values()} == {"gptq", "dbf"}
    for name, row in qc["layers"].items():
        assert row["method"] == results[name].method
        if row["method"] == "gptq":  # 32 does not divide down_proj's 172: ragged or per row
            assert row["groupsize"] == (-1 if name in quantizer.plan.per_row else 32)
    loaded, _ = load_quantized_model(out, device_map="cpu")
    ids = torch.tensor([[1, 100, 200, 300, 400, 17, 9]])
    with torch.no_grad():
        expected = runner.create_quantized_model()(ids).logits
        assert torch.equal(loaded(ids).logits, expected)


def test_cli_quantize_with_candidates_as_json(stories_path, calib_path, tmp_path):
    out = tmp_path / "cli"
    candidates = (
        '[{"method":"rtn","wbits":2,"groupsize":32},{"method":"rtn","wbits":4,"groupsize":32}]'
    )
    args = [
        "quantize", str(stories_path), "--method", "autobit",
        "--set", "target_bit=3.0", "--set", f"quantizers={candidates}",
        "--calibration", str(calib_path), "--num-samples", "4", "--max-length", "32",
        "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert [c["label"] for c in qc["candidates"]] == ["rtn-2b-g32", "rtn-4b-g32"]
    assert {row["bits"] for row in qc["layers"].values()} == {2, 4}
    # raw 3 bits = uniform 3-bit g32 as given (a ragged last group on down_proj's 172 inputs)
    assert qc["achieved_bits"] <= qc["effective_target"] == pytest.approx(3 + 19 / 32)
    for name, row in qc["layers"].items():
        assert row["groupsize"] == qc["assignment"][name]["groupsize"]
        assert row["groupsize"] in ((-1, 32) if "down_proj" in name else (32,))
