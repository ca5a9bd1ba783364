"""GPTQ's parameters: validation, per-layer overrides, and the saved config."""

from __future__ import annotations

import pytest
from onecomp_core.contract import ConfigError

from onecomp_gptq import GPTQ, GPTQConfig

#: the ``quantization_config`` keys GPTQ checkpoints have always had, in their order
SAVED_KEYS = [
    "bits",
    "group_size",
    "desc_act",
    "sym",
    "checkpoint_format",
    "static_groups",
    "true_sequential",
    "damp_percent",
    "mse",
    "q_grid",
    "q_norm",
    "clip_candidates",
    "blocksize",
    "mlp_wbits",
    "mlp_groupsize",
    "module_wbits",
]


def test_every_bad_parameter_in_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        GPTQ(
            wbits=9,
            groupsize=0,
            sym="yes",
            percdamp=0,
            blocksize=0,
            q_grid=0,
            q_norm=-1,
            mlp_wbits=0,
            mlp_groupsize=-2,
            module_wbits={"model.layers.0.mlp.down_proj": 12},
            checkpoint_format="awq",
            clip_candidates=-1,
        ).validate()
    message = str(info.value)
    for expected in (
        "wbits=9",
        "groupsize=0",
        "sym='yes'",
        "percdamp=0",
        "blocksize=0",
        "q_grid=0",
        "q_norm=-1",
        "mlp_wbits=0",
        "mlp_groupsize=-2",
        "module_wbits['model.layers.0.mlp.down_proj']=12",
        "checkpoint_format='awq'",
        "clip_candidates=-1",
    ):
        assert expected in message


def test_module_wbits_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="module_wbits=\\[8\\]: expected a mapping"):
        GPTQ(module_wbits=[8]).validate()


def test_the_defaults_are_the_best_measured_settings() -> None:
    # issue 16 ("best by default"): act-order, asymmetric grid and the clipping search won
    # the sweep in the README on every grid; the rest are the seed system's defaults
    q = GPTQ()
    q.validate()
    assert isinstance(q, GPTQConfig)
    assert (q.wbits, q.groupsize, q.sym, q.actorder, q.mse) == (4, -1, False, True, True)
    assert (q.percdamp, q.blocksize, q.q_grid, q.q_norm) == (0.01, 128, 100, 2.4)
    assert (q.clip_candidates, q.static_groups, q.true_sequential) == (5, False, True)
    assert (q.mlp_wbits, q.mlp_groupsize, q.module_wbits) == (None, None, {})
    assert q.checkpoint_format == "gptq" and q.name == "GPTQ"


def test_override_priority_exact_name_then_mlp_then_default() -> None:
    q = GPTQ(wbits=4, groupsize=128, mlp_wbits=3, mlp_groupsize=32)
    q.module_wbits = {"model.layers.1.mlp.down_proj": 8, "model.layers.1.self_attn.q_proj": 2}
    assert q.layer_bits("model.layers.1.mlp.down_proj") == 8
    assert q.layer_bits("model.layers.1.mlp.up_proj") == 3
    assert q.layer_bits("model.layers.1.self_attn.q_proj") == 2
    assert q.layer_bits("model.layers.1.self_attn.k_proj") == 4
    assert q.layer_groupsize("model.layers.1.mlp.up_proj") == 32
    assert q.layer_groupsize("model.layers.1.self_attn.k_proj") == 128


def test_quant_config_has_gptq_keys_and_round_trips() -> None:
    q = GPTQ(wbits=3, groupsize=32, actorder=True, sym=False, checkpoint_format="gptq_v2")
    cfg = q.to_dict()
    assert list(cfg) == [*SAVED_KEYS, "config_version"]
    assert {k: cfg[k] for k in ("bits", "group_size", "desc_act", "sym")} == {
        "bits": 3,
        "group_size": 32,
        "desc_act": True,
        "sym": False,
    }
    assert cfg["checkpoint_format"] == "gptq_v2" and cfg["damp_percent"] == 0.01
    back = GPTQ.from_dict({**cfg, "quant_method": "gptq"})
    assert back == q and back.actorder and not back.sym


def test_a_damping_transformers_refuses_is_saved_clamped_and_read_back_true() -> None:
    import transformers

    q = GPTQ(wbits=4, percdamp=2.0)
    cfg = q.to_dict()
    assert (cfg["damp_percent"], cfg["onecomp_damp_percent"]) == (0.99, 2.0)
    transformers.GPTQConfig.from_dict(cfg)  # refuses damp_percent=2.0 ("between 0 and 1")
    assert GPTQ.from_dict(cfg) == q
    assert "onecomp_damp_percent" not in GPTQ(percdamp=0.5).to_dict()


def test_the_saved_config_never_aliases_the_live_mapping() -> None:
    q = GPTQ(module_wbits={"a": 8})
    q.to_dict()["module_wbits"]["a"] = 2
    assert q.module_wbits == {"a": 8}


def test_clipping_candidates_are_the_proxy_then_range_factors_down_to_0_6() -> None:
    assert GPTQ(mse=False).row_shrinks() == []
    assert GPTQ(mse=True, clip_candidates=0).row_shrinks() == []
    assert GPTQ(mse=True, clip_candidates=1).row_shrinks() == [0.0, 1.0]
    assert GPTQ(mse=True).row_shrinks() == pytest.approx([0.0, 1.0, 0.9, 0.8, 0.7, 0.6])


def test_legacy_v1_asymmetric_grids_keep_zero_points_at_least_one() -> None:
    assert GPTQ(sym=False).grid_spec(3).min_zero == 1
    assert GPTQ(sym=False, checkpoint_format="gptq_v2").grid_spec(3).min_zero == 0
    assert GPTQ(mse=True, q_grid=50).grid_spec(4).clip_grid == 50
    assert GPTQ(mse=False, q_grid=50).grid_spec(4).clip_grid == 0
