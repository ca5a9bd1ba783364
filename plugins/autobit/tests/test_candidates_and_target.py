"""Candidates through the registry, default group sizes, and the raw → effective target."""

from __future__ import annotations

import pytest
import torch

from onecomp_autobit.candidates import (
    build_candidates,
    default_bits,
    default_grouping,
    default_groupsize,
    default_specs,
    labels,
    nominal_bits,
    per_row_twin,
    shaped_statistics,
)
from onecomp_autobit.target import (
    average_bits_at,
    effective_target,
    nominal_for_effective,
    raw_for_effective,
)
from onecomp_core.contract import Needs
from onecomp_core.kernels import gptq_effective_bits
from onecomp_core.registry import create_method, methods


def test_default_groupsize_is_the_largest_that_divides_every_layer():
    assert default_groupsize([4096, 11008]) == 128
    assert default_groupsize([64, 192]) == 64
    assert default_groupsize([32, 96]) == 32
    assert default_groupsize([64, 172]) == -1  # stories260K's down_proj: per row
    specs, size = default_specs([4096])
    assert size == 128
    assert [(s["wbits"], s["groupsize"]) for s in specs] == [
        (b, g) for g in (128, -1) for b in (2, 3, 4, 8)
    ]  # without a target
    assert {s["method"] for s in specs} == {"gptq"}


def test_default_candidates_bracket_the_target_grouped_and_per_row():
    # the 3-bit-g32 budget on stories260K: 3/4/5 bit, g32 (a group of the 64-wide layers,
    # ragged on the 172-wide down_proj) and per row; no 2-bit candidate (see the README)
    specs, size = default_specs([64, 172], 3.59375)
    assert size == 32
    assert [(s["wbits"], s["groupsize"]) for s in specs] == [
        (3, 32), (4, 32), (5, 32), (3, -1), (4, -1), (5, -1)
    ]  # fmt: skip
    assert default_bits(2.5625) == (2, 3, 4)
    assert default_bits(1.0) == (2, 3, 4) and default_bits(7.5) == (7, 8)
    assert default_grouping([4096, 11008]) == 128
    assert default_grouping([64]) == 32 and default_grouping([48]) == -1
    assert default_specs([48], 3.0)[0] == [
        {"method": "gptq", "wbits": b, "groupsize": -1} for b in (3, 4, 5)
    ]


def test_candidates_are_copies_and_the_callers_list_is_untouched():
    given = create_method("rtn", wbits=3, groupsize=32)
    specs = [{"method": "rtn", "wbits": 2, "groupsize": 32}, given]
    before = [dict(specs[0]), given]
    built = build_candidates(specs)
    assert specs == before and specs[0] == {"method": "rtn", "wbits": 2, "groupsize": 32}
    assert built[1] is not given and built[1] == given
    assert specs[1] is given and given.groupsize == 32
    assert labels(built) == ["rtn-2b-g32", "rtn-3b-g32"]
    assert nominal_bits(built[0]) == 2
    twin = per_row_twin(built[1])
    assert (twin.groupsize, built[1].groupsize, labels([twin])) == (-1, 32, ["rtn-3b-row"])


def test_bad_candidates_are_reported_together():
    with pytest.raises(ValueError) as info:
        build_candidates(
            [{"wbits": 2}, {"method": "no_such_method"}, {"method": "rtn", "wbits": 99}]
        )
    text = str(info.value)
    assert "quantizers[0]" in text and "'method' key" in text
    assert "quantizers[1]" in text and "no_such_method" in text
    assert "quantizers[2]" in text and "wbits=99" in text


def test_raw_target_equals_uniform_gptq_like_effective_bits():
    candidates = build_candidates(
        [{"method": "rtn", "wbits": b, "groupsize": 32} for b in (2, 3, 4, 8)]
    )
    shapes = [(64, 64), (32, 64), (172, 64), (64, 172)]
    bits = [
        [gptq_effective_bits(int(nominal_bits(c)), 32, m) for c in candidates] for _, m in shapes
    ]
    params = [n * m for n, m in shapes]
    uniform3 = sum(p * row[1] for p, row in zip(params, bits, strict=True)) / sum(params)
    assert effective_target(3.0, candidates, bits, params) == pytest.approx(uniform3)
    assert effective_target(3.0, candidates, bits, params) == pytest.approx(3 + 19 / 32)
    # in-between raw targets interpolate the metadata: 2.5 bits cost 2.5 + 18.5/32
    assert effective_target(2.5, candidates, bits, params) == pytest.approx(2.5 + 18.5 / 32)
    assert raw_for_effective(3 + 19 / 32, candidates, bits, params) == pytest.approx(3.0)


@pytest.mark.skipif("dbf" not in methods(), reason="onecomp-dbf not installed")
def test_nominal_bits_for_an_effective_target_pay_for_the_metadata():
    """DBF's sign-matrix bits whose total (its fp16 vectors included) is the target, found
    through DBF's own bits_for: AutoBit copies no formula of another method."""
    dbf = create_method("dbf")
    shapes = {"a": (64, 64), "b": (172, 64)}
    binary = nominal_for_effective(dbf, 2.0, shapes)
    assert 0 < binary < 2.0 - 16 * (64 + 64) / (64 * 64) + 0.1
    assert average_bits_at(dbf, binary, shapes) <= 2.0
    assert average_bits_at(dbf, binary + 0.05, shapes) > 2.0 - 0.05
    assert nominal_for_effective(dbf, 0.01, shapes) == 0.0  # the vectors alone cost more


def test_statistics_are_shaped_for_each_candidate():
    full = torch.eye(4) * 3
    rtn = create_method("rtn")
    assert rtn.needs().inputs == "none"
    assert shaped_statistics(rtn, full) is None

    class DiagNeeds(type(rtn)):
        def needs(self):
            return Needs(inputs="diag")

    diag = DiagNeeds()
    assert torch.equal(shaped_statistics(diag, full), torch.full((4,), 3.0))
    assert torch.equal(shaped_statistics(diag, torch.ones(4)), torch.ones(4))
