"""benchmarks/scale.py keeps working: its model builder, its memory sampler, one real run.

The real-size benchmark takes tens of minutes, so nothing else would notice
it rotting; these run it on a stories260K-sized model (real shards on disk, a
real ``onecomp quantize`` subprocess) in a few seconds.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import process_tree  # noqa: E402
import scale  # noqa: E402
import scale_report  # noqa: E402
import synthetic_model  # noqa: E402
from common import STORIES  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny synthetic model, 2 blocks, cut into 100 kB shards."""
    root = tmp_path_factory.mktemp("models")
    return synthetic_model.cached(root, 2, "tiny", tokenizer=STORIES, max_shard_bytes=100_000)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            out |= {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return out


def test_builder_writes_sharded_model_that_transformers_loads(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    index = json.loads((tiny / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and all((tiny / s).is_file() for s in shards)
    tensors = _tensors(tiny)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in tensors.values())
    assert synthetic_model.weight_bytes(tiny) == index["metadata"]["total_size"]
    for name, shard in index["weight_map"].items():
        with safe_open(tiny / shard, "pt") as f:
            assert name in f.keys()  # noqa: SIM118
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert model.config.num_hidden_layers == 2 and not model.config.tie_word_embeddings
    state = model.state_dict()
    for name, tensor in tensors.items():
        assert tensor.dtype == torch.float32 and torch.equal(state[name], tensor), name
    assert torch.equal(tensors["model.norm.weight"], torch.ones(64))
    assert AutoTokenizer.from_pretrained(tiny)("Once upon a time").input_ids


def test_builder_draws_the_protocol_weights_per_tensor(tiny: Path, tmp_path: Path) -> None:
    tensors = _tensors(tiny)
    down = tensors["model.layers.1.mlp.down_proj.weight"]
    assert torch.equal(
        down, synthetic_model.draw("model.layers.1.mlp.down_proj.weight", (64, 172), 0)
    )
    # outliers by row and by column: log of the row / column norms spread like 0.3 and 0.5
    assert 0.15 < down.norm(dim=1).log().std() < 0.5
    assert 0.3 < down.norm(dim=0).log().std() < 0.8
    assert abs(down.std() / down.abs().mean() - 1.25) > 0.1  # not a plain Gaussian
    # each tensor has its own seed: a deeper model starts with the same blocks
    deeper = _tensors(synthetic_model.build(tmp_path / "b3", 3, synthetic_model.TINY))
    assert torch.equal(
        deeper["model.layers.1.self_attn.q_proj.weight"],
        tensors["model.layers.1.self_attn.q_proj.weight"],
    )
    other = synthetic_model.draw("model.layers.1.mlp.down_proj.weight", (64, 172), 1)
    assert not torch.equal(down, other)


def test_shard_plan_starts_a_new_shard_before_passing_the_limit() -> None:
    shapes = [("a", (10, 10)), ("b", (10, 10)), ("c", (30, 10)), ("d", (1,))]
    plan = synthetic_model.shard_plan(shapes, max_bytes=1000)
    assert [[n for n, _ in s] for s in plan] == [["a", "b"], ["c"], ["d"]]


def test_sampler_sees_the_memory_of_grandchildren(tmp_path: Path) -> None:
    # a child that starts a grandchild holding 300 MB, then allocates 100 MB itself
    child = textwrap.dedent(
        """
        import subprocess, sys, time
        hold = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.0)"
        g = subprocess.Popen([sys.executable, "-c", hold])
        time.sleep(0.5)
        a = bytearray(100 * 2**20); a[::4096] = b'y' * len(a[::4096])
        g.wait()
        """
    )
    run = process_tree.run_tree([sys.executable, "-c", child], log_dir=tmp_path)
    assert run.returncode == 0 and not run.timed_out
    assert run.peak_processes == 2
    assert 400 < run.peak_tree_rss_mb < 600, run
    # the kernel's figure is the largest single process, at least the 300 MB grandchild (Linux
    # keeps a forked child's high-water mark across exec, so a large parent raises it)
    assert run.maxrss_largest_mb > 300, run


def test_sampler_stops_a_run_at_its_timeout(tmp_path: Path) -> None:
    run = process_tree.run_tree([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert run.timed_out and run.returncode is None and run.wall_s < 5


def test_timing_fields_use_engine_timings_when_present() -> None:
    layers = [{"time_s": 1.0}, {"time_s": 2.0}]
    plain = scale_report.timing_fields({"layers": layers, "wall_time_s": 20.0}, 25.0)
    assert plain["solve_s"] == 3.0 and plain["forward_s"] == "n/a" and plain["ratio_wall"] == "n/a"
    timed = scale_report.timing_fields(
        {"layers": layers, "wall_time_s": 20.0, "timings": {"solve_s": 4.0, "one_forward_s": 1.0}},
        25.0,
    )
    assert (timed["solve_s"], timed["ratio_wall"], timed["ratio_engine"]) == (4.0, 5.0, 4.0)
    # a forward timed apart gives the ratio for engines without timings
    apart = scale_report.reference_fields(plain | {"status": "ok", "wall_s": 25.0}, 2.0)
    assert (apart["ratio_wall_ref"], apart["ratio_engine_ref"]) == (5.0, 4.0)


def test_device_fields_take_the_median_of_the_blocks_after_the_first() -> None:
    layers = [
        {"layer": "model.layers.0.mlp.down_proj", "time_s": 1.0},
        {"layer": "model.layers.1.mlp.down_proj", "time_s": 3.0},
        {"layer": "model.layers.1.self_attn.q_proj", "time_s": 0.5},
    ]
    summary = {"layers": layers, "block_s": [9.0, 2.0, 4.0, 3.0], "cuda_peak_allocated_mb": 10.5}
    fields = scale_report.device_fields(summary)
    assert fields["block_s_steady"] == 3.0  # not the first block (loading and calibration)
    assert fields["solve_s_per_layer"] == {"down_proj": 2.0, "q_proj": 0.5}
    assert fields["cuda_peak_allocated_mb"] == 10.5
    assert scale_report.device_fields({"block_s": [5.0]})["block_s_steady"] == "n/a"


def test_scale_runs_the_real_cli_and_records_a_line(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "scale.jsonl"
    args = ["--shape", "tiny", "--blocks", "2", "--methods", "gptq", "--num-samples", "4"]
    args += ["--max-length", "32", "--models", str(tiny.parent), "--out", str(out)]
    args += ["--max-shard-mb", "0.1", "--timeout", "120"]
    assert scale.main(args) == 0  # in this process; the quantize run is a real subprocess
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["status"] == "ok" and record["layers"] == 14 and record["blocks"] == 2
    assert record["peak_tree_mb"] > 100 and record["maxrss_mb"] > 100
    assert record["model_mb"] == round(synthetic_model.weight_bytes(tiny) / 1e6, 1)
    assert record["solve_s"] > 0 and record["engine_s"] < record["wall_s"]
    # the engine's own timings are read: item 3's ratio comes from the same run
    assert record["solve_source"] == "timings" and record["one_forward_s"] > 0
    assert record["ratio_wall"] >= record["ratio_engine"] > 1
    # seconds per block from the CLI's summary: one per block, adding up to at most the engine
    assert len(record["block_s"]) == 2 and 0 < sum(record["block_s"]) <= record["engine_s"]
    assert set(record["solve_s_per_layer"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert "cuda_peak_allocated_mb" not in record  # no GPU ran: no GPU figure
    assert record["code"] == str(BENCH.parent)  # this checkout's code ran, not a venv's
    assert record["commit"] and record["command"].startswith("python benchmarks/scale.py")
    # the model was reused from the cache, not rebuilt
    assert len(list(tiny.parent.iterdir())) == 1


def test_distributed_mode_refuses_clearly_without_the_distributed_engine(capsys) -> None:
    if scale_report.distributed_missing() is None:
        pytest.skip("the distributed engine is there")
    assert scale.main(["--distributed", "2", "--out", ""]) == 2
    assert "no distributed engine" in capsys.readouterr().err


def test_output_comparison_is_bit_exact(tiny: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    same = scale_report.tensors_equal(tiny, copy)
    assert same["identical"] and same["tensors"] == len(_tensors(tiny))
    shard = sorted(copy.glob("*.safetensors"))[-1]
    tensors = load_file(shard)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = torch.nextafter(tensors[name].view(-1)[0], torch.tensor(9.0))
    save_file(tensors, shard)
    assert scale_report.tensors_equal(tiny, copy)["differ"] == [name]
