"""Multi-process quantization: torchrun with 2 gloo ranks writes what one process writes.

The process tests launch real ``torchrun`` process groups (gloo, one thread
per rank) on stories260K and compare every saved tensor with a one-process
run (one thread) bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onecomp_core.contract import LayerJob
from onecomp_core.engine.distributed import assign_layers, shard_range
from onecomp_core.engine.shared_solves import row_slices, rows_of
from onecomp_core.registry import create_method

ASSETS = Path(__file__).resolve().parents[3] / "shared" / "assets"
STORIES = str(ASSETS / "stories260K")
CALIB = str(ASSETS / "text" / "wikitext2-valid.tokens.txt")
#: 8 windows of 64 tokens in batches of 2: 4 batches, 2 per rank
DATA = ["--calibration", CALIB, "--num-samples", "8", "--max-length", "64", "--batch-size", "2"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


# -- the pieces, without processes ------------------------------------------------------------
def test_shards_are_contiguous_and_cover_every_batch_once():
    for count in (2, 5, 16):
        for world in (1, 2, 3):
            if count < world:
                continue
            parts = [list(shard_range(count, world, r)) for r in range(world)]
            assert sum(parts, []) == list(range(count))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_layers_go_to_ranks_longest_job_first():
    costs = {"q": 8.0, "k": 5.0, "v": 5.0, "o": 2.0}
    assert assign_layers(costs, 2) == {"q": 0, "k": 1, "v": 1, "o": 0}
    assert assign_layers(costs, 1) == dict.fromkeys(costs, 0)
    assert list(assign_layers(costs, 3)) == list(costs)  # the group's order is kept


def test_a_layer_is_cut_into_one_slice_of_rows_per_rank_at_row_blocks():
    job = LayerJob("m.q", torch.nn.Linear(8, 200, bias=False))
    gptq = create_method("gptq", wbits=4)
    cuts = row_slices(gptq, job, 2)
    assert cuts == [slice(0, 128), slice(128, 200)]  # 4 blocks of 64 rows: 2 and 2
    five = row_slices(gptq, job, 5)  # more ranks than blocks: one gets none
    assert sum(c.stop - c.start for c in five) == 200 and any(c.start == c.stop for c in five)
    assert row_slices(create_method("rtn", wbits=4), job, 2) is None  # whole layers


def test_gptq_rows_solved_apart_and_joined_are_the_whole_layer_bit_for_bit():
    """The contract's promise (row_block/join_rows), with act-order, asymmetric grids and the
    clipping search (GPTQ's defaults), on a layer with outlier inputs."""
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(128, 150, bias=False)
    x = torch.randn(256, 128, generator=gen) * torch.exp(torch.randn(128, generator=gen))
    job = LayerJob("m.q", layer, hessian=2 * x.t() @ x / 256)
    gptq = create_method("gptq", wbits=4, groupsize=64, q_grid=20)
    whole = gptq.quantize(job)
    for cut in (row_slices(gptq, job, 3),):
        joined = gptq.join_rows([gptq.quantize(rows_of(job, rows)) for rows in cut])
        for key in ("codes", "scales", "zeros", "g_idx"):
            assert torch.equal(getattr(joined, key), getattr(whole, key)), key


@pytest.mark.parametrize("qep", [False, True])
def test_a_window_added_slice_by_slice_is_the_sum_added_batch_by_batch(qep):
    """The distributed sum adds a window of batches into one row slice at a time: the same
    bits as whole-share adds in batch order, and each batch's tokens counted once."""
    from onecomp_core.engine import shared_statistics
    from onecomp_core.engine.qep import PairedStatistics
    from onecomp_core.engine.shared_statistics import _add_window
    from onecomp_core.engine.statistics import InputStatistics

    g = torch.Generator().manual_seed(0)
    n, rows = 200, slice(64, 200)
    inputs = [torch.randn(2, 7, n, generator=g) for _ in range(5)]
    if qep:
        calls = [(x + 0.1 * torch.randn(x.shape, generator=g), x, None) for x in inputs]
    else:
        calls = [(x, None) for x in inputs]

    def fresh():
        cpu = torch.device("cpu")
        if qep:
            return PairedStatistics(n, torch.float32, cpu)
        return InputStatistics(n, "full", torch.float32, cpu)

    batch_major, slice_major = fresh(), fresh()
    for args in calls:
        batch_major.add(*args, rows=rows)
    slices = shared_statistics.SLICE_ROWS
    shared_statistics.SLICE_ROWS = 64  # three slices of the share, the last one short
    try:
        _add_window(slice_major, calls, rows)
    finally:
        shared_statistics.SLICE_ROWS = slices
    assert slice_major.tokens == batch_major.tokens == 5 * 14
    for a, b in zip(batch_major.accumulators(), slice_major.accumulators(), strict=True):
        assert torch.equal(a, b) and bool(a[rows].abs().sum() > 0)


# -- real process groups ------------------------------------------------------------------------
def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def _assert_same_output(a: Path, b: Path, same_config: bool = True) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    if not same_config:
        return
    qa = json.loads((a / "config.json").read_text())["quantization_config"]
    qb = json.loads((b / "config.json").read_text())["quantization_config"]
    assert qa == qb


#: the CLI with the test plugin (hessian_rtn) registered
ONE_PROCESS = """
import sys
from onecomp_core.cli import main
from onecomp_core.testing import HessianRTNPlugin, registered_plugin
with registered_plugin(HessianRTNPlugin()):
    sys.exit(main(sys.argv[1:]))
"""


def _one_process(out: Path, *args: str) -> None:
    """The reference: one process, one thread (as each rank has), in a process of its own:
    SciPy's OpenBLAS (DBF's eigh) reads its thread count from the environment at load
    time, and its eigenvectors' bits depend on it."""
    command = [sys.executable, "-c", ONE_PROCESS, "quantize", STORIES, *args, *DATA]
    run = subprocess.run(
        [*command, "--out", str(out), "--quiet"], env=_env(), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "ONECOMP_QUIET": "1"}


DRIVER = """
import sys
import torch
import torch.distributed as dist
from onecomp_core.data.calibration import CalibrationConfig
from onecomp_core.data.model import ModelConfig
from onecomp_core.registry import create_method
from onecomp_core.testing import HessianRTNPlugin, registered_plugin
from onecomp_core.seed_api import Runner

torch.set_num_threads(1)
dist.init_process_group("gloo")
stories, calib, out = sys.argv[1:4]
cases = {
    "gptq": ("gptq", {"wbits": 4, "groupsize": 32}, False),
    "gptq_qep": ("gptq", {"wbits": 3}, True),
    "dbf": ("dbf", {"iters": 2, "finetune_steps": 4, "distill_steps": 2}, False),
}
for name, (method, params, qep) in cases.items():
    runner = Runner(
        ModelConfig(path=stories, dtype="float32", device="cpu"),
        create_method(method, **params),
        CalibrationConfig(dataset=calib, max_length=64, num_calibration_samples=8, batch_size=2),
        show_progress=False,
        qep=qep,
    )
    path = runner.quantize_to(f"{out}/{name}")  # streamed; rank 0 writes
    # every rank returns once the output is there (rank 0 distils DBF alone at the end)
    assert (path / "model.safetensors.index.json").is_file(), (dist.get_rank(), name)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_ranks_write_what_one_process_writes(tmp_path):
    """GPTQ (its rows split over the ranks), GPTQ with QEP, and DBF with block fine-tuning
    (every rank's batches) and distillation (rank 0), streamed, in one torchrun group."""
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER))
    run = subprocess.run(
        [*TORCHRUN, str(driver), STORIES, CALIB, str(tmp_path / "ranks")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    _one_process(tmp_path / "gptq", "--method", "gptq", "--set", "wbits=4", "--set", "groupsize=32")
    _one_process(tmp_path / "gptq_qep", "--method", "gptq", "--set", "wbits=3", "--qep")
    _one_process(
        tmp_path / "dbf", "--method", "dbf", "--set", "iters=2", "--set", "finetune_steps=4",
        "--set", "distill_steps=2",
    )  # fmt: skip
    for name in ("gptq", "gptq_qep", "dbf"):
        _assert_same_output(tmp_path / "ranks" / name, tmp_path / name)


FAILING = """
import os
import sys
from dataclasses import dataclass
from typing import ClassVar

import torch.distributed as dist

from onecomp_core.cli import main
from onecomp_core.contract import hookimpl
from onecomp_core.testing import HessianRTN, registered_plugin


@dataclass
class FailsOnRank1(HessianRTN):
    method: ClassVar[str] = "fails_on_rank1"

    def quantize_layer(self, job):
        failing = os.environ.get("FAIL") == "1" and dist.is_initialized()
        if failing and dist.get_rank() == 1 and ".layers.2." in job.name:
            raise ValueError(f"layer {job.name}: broken on purpose")
        return super().quantize_layer(job)


class Plugin:
    @hookimpl
    def onecomp_register(self, register):
        register.add_method(FailsOnRank1)


with registered_plugin(Plugin()):
    sys.exit(main(["quantize", *sys.argv[1:]]))
"""


@pytest.mark.slow
def test_an_error_on_one_rank_ends_the_run_with_one_line_and_the_rerun_resumes(tmp_path):
    """Rank 1 fails in block 2: one line from it, one from rank 0, no hang; run again, the
    run resumes after the 2 blocks the checkpoint holds and writes what one process writes."""
    script = tmp_path / "failing.py"
    script.write_text(textwrap.dedent(FAILING))
    out, checkpoint = tmp_path / "q", tmp_path / "progress"
    args = [STORIES, "--method", "fails_on_rank1", *DATA, "--quiet", "--out", str(out)]
    args += ["--checkpoint-dir", str(checkpoint)]
    run = subprocess.run(
        [*TORCHRUN, str(script), *args],
        env={**_env(), "FAIL": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0 and not out.exists()
    lines = [line for line in run.stderr.splitlines() if line.startswith("onecomp quantize")]
    errors = [x for x in lines if x.startswith("onecomp quantize: error")]  # in any order
    assert len(errors) == 1, run.stderr[-2000:]
    assert errors[0].startswith("onecomp quantize: error (rank 1 of 2): layer model.layers.2.")
    assert errors[0].endswith("broken on purpose")
    others = [line for line in lines if line not in errors]
    assert all("stopped (rank 0 of 2): another rank failed first" in x for x in others)
    assert "Traceback" not in "\n".join(
        line for line in run.stderr.splitlines() if line.startswith("[rank")
    )
    resumed = subprocess.run(
        [*TORCHRUN, str(script), *args], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("resuming after block 2 of 5") == 1  # rank 0 says it
    # the same solve, under its own name
    _one_process(tmp_path / "one", "--method", "hessian_rtn", "--no-checkpoint")
    _assert_same_output(out, tmp_path / "one", same_config=False)
