"""Every method's output loads in ``AutoModelForCausalLM.from_pretrained`` once onecomp is imported.

Each case quantizes the real stories260K model through the CLI (tiny
calibration) and loads the folder twice: with onecomp's own loader and with
transformers' ``from_pretrained`` (through onecomp's registration); the
logits must be identical. A transformers *without* onecomp (a subprocess
that never imports it) must refuse each folder with an error that says why,
never load it with random weights. A folder that is standard GPTQ keeps the
``gptq`` label: transformers loads it through optimum/GPTQModel (the
compatibility job of ``.ci/run``), and without them says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onecomp_core import list_quantizers, load_quantized_model
from onecomp_core.cli import main
from onecomp_core.storage.quant_method import GUARD_FIELD

ASSETS = Path(__file__).resolve().parents[3] / "shared" / "assets"
STORIES = ASSETS / "stories260K"
TEXT = ASSETS / "text" / "wikitext2-valid.tokens.txt"
CALIBRATION = ["--calibration", str(TEXT), "--num-samples", "4", "--max-length", "32"]
DBF = {"method": "dbf", "target_bits": 1.5, "iters": 3, "finetune_steps": 0, "distill_steps": 0}
CASES = {
    "rtn": ["--method", "rtn", "--set", "wbits=4", "--set", "groupsize=32"],
    "gptq": ["--method", "gptq", "--set", "wbits=4", "--set", "groupsize=32"],
    "gptq-mixed-excluded": [
        "--method", "gptq", "--set", "wbits=4", "--set", "groupsize=32",
        "--set", "mlp_wbits=8", "--set", 'exclude_layer_keywords=["o_proj"]',
    ],
    "dbf": ["--method", "dbf", "--set", "iters=3", "--set", "finetune_steps=0",
            "--set", "distill_steps=0"],
    "autobit-mixed": [
        "--method", "autobit", "--set", "assignment_strategy=manual",
        "--set", "quantizers=" + json.dumps([
            {"method": "gptq", "wbits": 4, "groupsize": 32, "include_layer_keywords": ["self_attn"]},
            DBF,
        ]),
    ],
}  # fmt: skip
NEEDS = {"gptq": {"gptq"}, "gptq-mixed-excluded": {"gptq"}, "dbf": {"dbf"}}
NEEDS["autobit-mixed"] = {"autobit", "gptq", "dbf"}

pytestmark = pytest.mark.skipif(not STORIES.is_dir(), reason="needs the shared stories260K")


class Outputs(dict):
    """Case → its folder, quantized on first use (once per module); missing plugins skip."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root, self.installed = root, set(list_quantizers())

    def get_case(self, case: str) -> Path:
        if case not in self:
            if not NEEDS.get(case, set()) <= self.installed:
                pytest.skip(f"{case} needs the plugins {sorted(NEEDS[case])}")
            out = self.root / case
            args = ["quantize", str(STORIES), *CASES[case], *CALIBRATION, "--out", str(out)]
            assert main([*args, "--quiet"]) == 0
            self[case] = out
        return self[case]

    def all(self) -> dict[str, Path]:
        for case in CASES:
            if NEEDS.get(case, set()) <= self.installed:
                self.get_case(case)
        return dict(self)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Outputs:
    return Outputs(tmp_path_factory.mktemp("outputs"))


def _quant_method(folder: Path) -> str:
    return json.loads((folder / "config.json").read_text())["quantization_config"]["quant_method"]


IDS = torch.tensor([[1, 100, 200, 300, 400, 17, 9, 3, 250, 511]])


@pytest.mark.parametrize("case", list(CASES))
def test_from_pretrained_gives_the_logits_of_onecomps_loader(outputs, case):
    from transformers import AutoModelForCausalLM

    folder = outputs.get_case(case)
    if _quant_method(folder) == "gptq":
        pytest.skip("standard GPTQ: transformers loads it through optimum/GPTQModel (.ci/run)")
    ours, _ = load_quantized_model(folder)
    theirs = AutoModelForCausalLM.from_pretrained(folder)
    rows = json.loads((folder / "config.json").read_text())["quantization_config"]["layers"]
    for name in rows:  # every table row is its method's packed module, not a random Linear
        assert type(theirs.get_submodule(name)) is type(ours.get_submodule(name)), name
        assert not isinstance(theirs.get_submodule(name), torch.nn.Linear), name
    assert theirs.dtype == ours.dtype == torch.float16  # stories260K is fp32: saved in fp16
    with torch.no_grad():
        assert torch.equal(theirs(IDS).logits, ours(IDS).logits)


def test_every_onecomp_label_carries_the_guard_and_gptq_stays_standard(outputs):
    for case, folder in outputs.all().items():
        config = json.loads((folder / "config.json").read_text())
        if config["quantization_config"]["quant_method"] == "onecomp":
            assert "quantized by onecomp" in config[GUARD_FIELD], case
        else:
            assert config["quantization_config"]["quant_method"] == "gptq", case
            assert GUARD_FIELD not in config, case
    assert _quant_method(outputs.get_case("rtn")) == "onecomp"
    assert _quant_method(outputs.get_case("dbf")) == "onecomp"


_WITHOUT_ONECOMP = """
import json, sys
import transformers
transformers.logging.set_verbosity_error()
from transformers import AutoModelForCausalLM
found = {}
for folder in sys.argv[1:]:
    try:
        AutoModelForCausalLM.from_pretrained(folder)
        found[folder] = ["loaded", ""]
    except Exception as exc:
        found[folder] = [type(exc).__name__, str(exc)]
assert "onecomp_core" not in sys.modules
print(json.dumps(found))
"""


def test_transformers_without_onecomp_refuses_every_folder(outputs):
    folders = [str(f) for f in outputs.all().values()]
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ONECOMP, *folders],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for case, folder in outputs.all().items():
        kind, message = found[str(folder)]
        if _quant_method(folder) == "onecomp":
            assert kind == "ValueError", (case, kind, message)
            assert "quantized by onecomp" in message and "import onecomp_core" in message, case
        else:  # standard GPTQ: transformers' GPTQ path, which names what it needs
            assert kind == "loaded" or ("optimum" in message or "gptqmodel" in message), case
