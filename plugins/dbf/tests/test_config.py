"""DBF's parameters: seed names and defaults, validation, saved keys, what they mean per layer."""

import pytest

from onecomp_core.contract import ConfigError, GradientMoments
from onecomp_core.registry import create_method
from onecomp_dbf import DBF, FitSettings

#: the ``quantization_config`` keys the seed system saved for DBF
SEED_KEYS = {
    "target_bits",
    "iters",
    "reg",
    "use_balancing",
    "balance_iters",
    "balance_alpha",
    "balance_mode",
    "use_adaptive_rho",
    "mlp_target_bits",
    "module_target_bits",
    "weighting",
    "clamp_k",
    "seed",
    "finetune_steps",
    "finetune_lr",
    "finetune_sign_lr",
    "sign_state_mb",
    "hessian_admm",
    "hessian_damp",
    "distill_steps",
    "distill_blocks",
    "distill_data",
    "distill_lr",
    "distill_sign_lr",
}


def test_registered_under_dbf_with_seed_defaults():
    q = create_method("dbf")
    assert isinstance(q, DBF)
    assert (q.target_bits, q.reg, q.balance_iters, q.balance_alpha, q.balance_mode) == (
        1.5,
        0.03,
        40,
        1.0,
        "l1",
    )
    assert q.mlp_target_bits is None and q.module_target_bits is None
    assert q.weighting == "activation" and q.clamp_k is False
    # model-level distillation is part of fine-tuning: off in the layer-wise mode unless asked
    assert q.distill_steps is None and q.resolved_distill_steps() == 400
    assert DBF(finetune_steps=0).resolved_distill_steps() == 0
    assert DBF(finetune_steps=0, distill_steps=7).resolved_distill_steps() == 7
    assert DBF(distill_steps=0).resolved_distill_steps() == 0


def test_needs_follow_the_parameters():
    needs = DBF().needs()
    assert needs.inputs == "full"  # the full H refits the vectors
    assert needs.fp_stream and needs.model_pass and needs.moments is None
    assert DBF(flag_hessian=False).needs().inputs == "diag"  # the fit itself needs only diag(H)
    assert DBF(weighting="none").needs().inputs == "none"
    layer_wise = DBF(finetune_steps=0).needs()
    assert not layer_wise.fp_stream and not layer_wise.model_pass
    assert DBF(finetune_steps=0, distill_steps=3).needs().model_pass
    moments = DBF(weighting="activation_gradient").needs().moments
    assert isinstance(moments, GradientMoments)


def test_validation_lists_every_problem():
    with pytest.raises(ConfigError) as err:
        DBF(
            target_bits=0,
            iters=0,
            reg=-1,
            balance_iters=0,
            balance_alpha=0,
            balance_mode="l3",
            use_balancing=True,
            mlp_target_bits=0.5,
            module_target_bits={"x": 0.2, 3: 2.0},
            weighting="hessian",
            finetune_steps=-1,
            finetune_lr=0,
            finetune_sign_lr=-1,
            hessian_damp=2,
            hessian_admm="yes",
            distill_steps=-1,
            distill_lr=0,
            distill_sign_lr=-1,
        ).validate()
    text = str(err.value)
    for name in (
        "target_bits=0",
        "iters=0",
        "reg=-1",
        "balance_iters=0",
        "balance_alpha=0",
        "balance_mode='l3'",
        "mlp_target_bits=0.5",
        "module_target_bits['x']=0.2",
        "module_target_bits key 3",
        "weighting='hessian'",
        "finetune_steps=-1",
        "finetune_lr=0",
        "finetune_sign_lr=-1",
        "hessian_damp=2",
        "hessian_admm='yes'",
        "distill_steps=-1",
        "distill_lr=0",
        "distill_sign_lr=-1",
    ):
        assert name in text, name
    DBF(use_balancing=False, balance_mode="bad").validate()  # ignored when off
    with pytest.raises(ConfigError, match="module_target_bits\\['y'\\]=None"):
        DBF(module_target_bits={"y": None}).validate()


def test_layer_bits_priority():
    q = DBF(mlp_target_bits=2.0, module_target_bits={"model.layers.0.mlp.up_proj": 3.0})
    assert q.layer_bits("model.layers.0.mlp.up_proj") == 3.0
    assert q.layer_bits("model.layers.0.mlp.down_proj") == 2.0
    assert q.layer_bits("model.layers.0.self_attn.q_proj") == 1.5
    assert DBF().layer_bits("model.layers.0.mlp.gate_proj") == 1.5


def test_saved_keys_are_the_seeds_and_round_trip():
    q = DBF(target_bits=2.0, iters=8, module_target_bits={"a.mlp": 3.0}, distill_steps=5)
    saved = q.to_dict()
    assert set(saved) == SEED_KEYS | {"config_version"}
    again = DBF.from_dict(saved)
    assert again == q and again.to_dict() == saved


def test_fit_settings_per_layer_are_the_parameters_with_a_layer_seed():
    q = DBF(iters=7, reg=0.5, use_balancing=True, balance_mode="l2", seed=3)
    a, b = q.fit_settings("model.layers.0.mlp.up_proj"), q.fit_settings("lm_head")
    assert isinstance(a, FitSettings)
    assert (a.iters, a.reg, a.use_balancing, a.balance_mode) == (7, 0.5, True, "l2")
    assert a.seed != b.seed and a.seed == q.fit_settings("model.layers.0.mlp.up_proj").seed
    assert a.seed != DBF(seed=4).fit_settings("model.layers.0.mlp.up_proj").seed
