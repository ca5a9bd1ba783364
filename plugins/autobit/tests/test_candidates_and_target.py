"""Candidates through the registry, default group sizes, and the raw → effective target."""

from __future__ import annotations

import pytest

from onecomp_autobit.candidates import (
    build_candidates,
    default_groupsize,
    default_specs,
    labels,
    raw_bits,
)
from onecomp_autobit.target import (
    dbf_binary_target,
    dbf_vector_overhead,
    effective_target,
    raw_for_effective,
)
from onecomp_core.grid import gptq_effective_bits
from onecomp_core.plugins import create_quantizer


def test_default_groupsize_is_the_largest_that_divides_every_layer():
    assert default_groupsize([4096, 11008]) == 128
    assert default_groupsize([64, 192]) == 64
    assert default_groupsize([32, 96]) == 32
    assert default_groupsize([64, 172]) == -1  # stories260K's down_proj: per row
    specs, size = default_specs([4096])
    assert size == 128
    assert [s["wbits"] for s in specs] == [2, 3, 4, 8]
    assert {s["method"] for s in specs} == {"gptq"}


def test_candidates_are_copies_and_the_callers_list_is_untouched():
    given = create_quantizer("rtn", wbits=3, groupsize=32)
    given.module_to_name["sentinel"] = "x"
    specs = [{"method": "rtn", "wbits": 2, "groupsize": 32}, given]
    before = [dict(specs[0]), given]
    built = build_candidates(specs)
    assert specs == before and specs[0] == {"method": "rtn", "wbits": 2, "groupsize": 32}
    assert built[1] is not given and built[1].module_to_name == {}
    assert given.module_to_name == {"sentinel": "x"}
    assert labels(built) == ["rtn-2b-g32", "rtn-3b-g32"]
    assert raw_bits(built[0]) == 2


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
    bits = [[gptq_effective_bits(int(raw_bits(c)), 32, m) for c in candidates] for _, m in shapes]
    params = [n * m for n, m in shapes]
    uniform3 = sum(p * row[1] for p, row in zip(params, bits, strict=True)) / sum(params)
    assert effective_target(3.0, candidates, bits, params) == pytest.approx(uniform3)
    assert effective_target(3.0, candidates, bits, params) == pytest.approx(3 + 19 / 32)
    # in-between raw targets interpolate the metadata: 2.5 bits cost 2.5 + 18.5/32
    assert effective_target(2.5, candidates, bits, params) == pytest.approx(2.5 + 18.5 / 32)
    assert raw_for_effective(3 + 19 / 32, candidates, bits, params) == pytest.approx(3.0)


def test_dbf_binary_target_pays_for_the_vectors():
    shapes = [(64, 64), (172, 64)]
    binary = dbf_binary_target(2.0, shapes)
    total = sum(n * m * (binary + dbf_vector_overhead(n, m, binary)) for n, m in shapes) / sum(
        n * m for n, m in shapes
    )
    assert total == pytest.approx(2.0)
    assert binary < 2.0 - 16 * (64 + 64) / (64 * 64) + 0.1
