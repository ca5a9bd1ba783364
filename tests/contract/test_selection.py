"""Layer selection: which Linears a quantizer touches, rule by rule and in priority order.

Order: type → include names (exact) ∪ include keywords (substring) → exclude
names → exclude keywords → ``num_layers`` cap; ``re:`` entries are regular
expressions (full match for names, search for keywords).
"""

from __future__ import annotations

import logging

import pytest
from torch import nn

from onecomp_core.contract.selection import SelectionRules, select_layers
from onecomp_core.engine.walk import choose_layers
from onecomp_core.rtn import RTN
from onecomp_core.testing import tiny_model

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def block(i: int, *names: str) -> list[str]:
    """Full names of layers of decoder block ``i``, in model order."""
    names = names or ATTN + MLP
    return [f"model.layers.{i}.{'self_attn' if n in ATTN else 'mlp'}.{n}" for n in names]


EVERY_BLOCK_LINEAR = block(0) + block(1)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_model("llama")


def selected(model: nn.Module, **rules) -> list[str]:
    return list(choose_layers(model, RTN(**rules)))


# -- defaults and types ----------------------------------------------------------------
def test_default_is_every_linear_but_lm_head_in_model_order(model):
    assert selected(model) == EVERY_BLOCK_LINEAR


def test_selection_maps_each_name_to_its_module(model):
    chosen = choose_layers(model, RTN(num_layers=2))
    assert chosen[block(0, "q_proj")[0]] is model.model.layers[0].self_attn.q_proj


def test_target_layer_types_decide_first(model):
    assert selected(model, target_layer_types=(nn.Embedding,)) == ["model.embed_tokens"]


def test_no_module_of_the_target_types_is_an_error(model):
    with pytest.raises(ValueError, match="no module of the target types.*Conv2d"):
        selected(model, target_layer_types=(nn.Conv2d,))


def test_lm_head_is_selected_once_no_longer_excluded(model):
    assert selected(model, exclude_layer_names=[]) == EVERY_BLOCK_LINEAR + ["lm_head"]


# -- include rules ---------------------------------------------------------------------
def test_include_names_match_exactly(model):
    assert selected(model, include_layer_names=block(1, "o_proj")) == block(1, "o_proj")


def test_an_include_name_that_is_no_layer_is_an_error_showing_real_names(model):
    with pytest.raises(ValueError, match=r"no target layer is named \['layers.0.q_proj'\]"):
        selected(model, include_layer_names=["layers.0.q_proj"])


def test_include_keywords_match_substrings(model):
    assert selected(model, include_layer_keywords=["k_proj"]) == block(0, "k_proj") + block(
        1, "k_proj"
    )


def test_include_names_and_keywords_are_a_union_kept_in_model_order(model):
    got = selected(
        model, include_layer_names=block(1, "down_proj"), include_layer_keywords=["q_proj"]
    )
    assert got == block(0, "q_proj") + block(1, "q_proj", "down_proj")


def test_include_rules_that_match_nothing_are_an_error(model):
    with pytest.raises(ValueError, match="no layer is left after the include rules"):
        selected(model, include_layer_keywords=["nonexistent"])


# -- exclude rules and their priority over include ------------------------------------
def test_exclude_names_remove_exact_matches(model):
    got = selected(model, exclude_layer_names=["lm_head", *block(0, "down_proj")])
    assert got == [n for n in EVERY_BLOCK_LINEAR if n != block(0, "down_proj")[0]]


def test_exclude_keywords_remove_substring_matches(model):
    assert selected(model, exclude_layer_keywords=["mlp"]) == block(0, *ATTN) + block(1, *ATTN)


def test_exclude_keywords_win_over_include_keywords(model):
    got = selected(model, include_layer_keywords=["proj"], exclude_layer_keywords=["layers.1."])
    assert got == block(0)


def test_exclude_names_win_over_include_keywords(model):
    got = selected(model, include_layer_keywords=["v_proj"], exclude_layer_names=block(0, "v_proj"))
    assert got == block(1, "v_proj")


def test_a_layer_included_by_name_and_excluded_is_an_error(model):
    with pytest.raises(ValueError, match="'model.layers.0.mlp.up_proj' is included by name"):
        selected(model, include_layer_names=block(0, "up_proj"), exclude_layer_keywords=["mlp"])


def test_including_lm_head_needs_it_removed_from_the_default_excludes(model):
    with pytest.raises(ValueError, match=r"exclude_layer_names=\[\] to quantize lm_head"):
        selected(model, include_layer_names=["lm_head"])
    assert selected(model, include_layer_names=["lm_head"], exclude_layer_names=[]) == ["lm_head"]


def test_excluding_everything_is_an_error(model):
    with pytest.raises(ValueError, match="no layer is left after the exclude rules"):
        selected(model, exclude_layer_keywords=["layers"])


# -- regular expressions ---------------------------------------------------------------
def test_re_in_names_must_match_the_whole_name(model):
    assert selected(model, include_layer_names=[r"re:model\.layers\.1\..*"]) == block(1)
    with pytest.raises(ValueError, match="no layer is left after the include rules"):
        selected(model, include_layer_names=["re:q_proj"])  # a full match is required


def test_re_in_keywords_searches_anywhere_in_the_name(model):
    got = selected(model, include_layer_keywords=[r"re:\.(q|k)_proj$"])
    assert got == block(0, "q_proj", "k_proj") + block(1, "q_proj", "k_proj")


def test_re_in_exclude_lists(model):
    assert selected(model, exclude_layer_keywords=[r"re:^model\.layers\.0\."]) == block(1)
    got = selected(model, exclude_layer_names=["lm_head", r"re:model\.layers\.\d+\.mlp\..*"])
    assert got == block(0, *ATTN) + block(1, *ATTN)


def test_a_layer_matched_only_by_a_re_include_name_may_be_excluded(model):
    got = selected(model, include_layer_names=[r"re:.*\.mlp\..*"], exclude_layer_keywords=["down"])
    assert got == block(0, "gate_proj", "up_proj") + block(1, "gate_proj", "up_proj")


# -- num_layers ------------------------------------------------------------------------
def test_num_layers_keeps_the_first_in_model_order(model):
    assert selected(model, num_layers=3) == block(0, "q_proj", "k_proj", "v_proj")


def test_num_layers_applies_after_the_exclude_rules(model):
    got = selected(model, exclude_layer_keywords=["self_attn"], num_layers=4)
    assert got == block(0, *MLP) + block(1, "gate_proj")


def test_num_layers_larger_than_the_selection_cannot_be_met(model):
    with pytest.raises(ValueError, match="num_layers=3 cannot be met: .* only 2 layer"):
        selected(model, include_layer_keywords=["o_proj"], num_layers=3)


# -- validation and logging ------------------------------------------------------------
def test_invalid_rules_are_reported_together():
    problems = RTN(
        include_layer_names="q_proj", exclude_layer_keywords=["re:(unclosed"], num_layers=0
    ).problems()
    assert len(problems) == 3
    assert "num_layers=0: expected an integer >= 1 or null" in problems
    assert "include_layer_names='q_proj': expected a list of strings" in problems
    assert any("'re:(unclosed' is not a valid regular expression" in p for p in problems)


def test_setup_validates_before_selecting(model):
    with pytest.raises(ValueError, match="include_layer_keywords='mlp'"):
        choose_layers(model, RTN(include_layer_keywords="mlp"))


def test_the_selection_is_logged_at_debug_level(model, caplog):
    with caplog.at_level(logging.DEBUG, logger="onecomp_core.contract.selection"):
        select_layers(model, SelectionRules((nn.Linear,), include_layer_keywords=["o_proj"]))
    assert "selected 2 layer(s)" in caplog.text
    assert "'lm_head'" not in caplog.text and "model.layers.1.self_attn.o_proj" in caplog.text
