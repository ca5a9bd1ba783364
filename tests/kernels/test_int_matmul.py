"""The fast bf16 path of packed layers: torch's int4/int8 kernels and the transient bf16 weight.

Each case is checked against the exact path (fp16 dequantized weight, one
fp32 product): the fast path may differ by bf16 rounding only.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from onecomp_core.kernels import PackedIntLinear, group_index
from onecomp_core.kernels.int_matmul import DENSE_FROM_ROWS, block_layout


def layer(out_f, in_f, bits, groupsize, sym=True, act_order=False, seed=0) -> PackedIntLinear:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (out_f, in_f), generator=g)
    groups = 1 if groupsize == -1 else -(-in_f // groupsize)
    scales = (torch.rand(out_f, groups, generator=g) * 0.01 + 0.001).half()
    if sym:
        zeros = torch.full((out_f, groups), 1 << (bits - 1))
    else:
        zeros = torch.randint(0, 1 << bits, (out_f, groups), generator=g)
    g_idx = group_index(in_f, groupsize)
    if act_order:
        g_idx = g_idx[torch.randperm(in_f, generator=g)]
    bias = torch.randn(out_f, generator=g)
    module = PackedIntLinear.from_codes(codes, scales, zeros, g_idx, bits, bias)
    module.use_kernel = True  # fp32 inputs on the fast path too
    return module


def exact(module: PackedIntLinear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, module.dequantize().float(), module.bias.float())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_block_layouts():
    assert block_layout(group_index(256, 128)).block == 256 // 2
    per_row = block_layout(group_index(512, -1))
    assert per_row.block == 256 and per_row.perm is None and per_row.group.tolist() == [0, 0]
    shuffled = group_index(256, 64)[torch.randperm(256, generator=torch.Generator().manual_seed(1))]
    act = block_layout(shuffled)
    assert act.perm is not None and act.block == 64
    assert torch.equal(shuffled[act.perm].view(-1, 64)[:, 0], act.group)
    assert block_layout(group_index(172, 32)) is None  # 172 is no multiple of a kernel block
    assert block_layout(group_index(256, 16)) is None  # groups smaller than the kernel's


CASES = [
    dict(bits=4, groupsize=32),
    dict(bits=4, groupsize=128, sym=False),
    dict(bits=4, groupsize=64, act_order=True),
    dict(bits=4, groupsize=-1),
    dict(bits=8, groupsize=-1),
    dict(bits=8, groupsize=-1, sym=False),
    dict(bits=8, groupsize=64),  # no int8 kernel for groups: the bf16 weight serves
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("rows", [1, 5, DENSE_FROM_ROWS + 3])
def test_fast_path_equals_the_exact_path_within_bf16_rounding(case, rows):
    module = layer(48, 256, **case)
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows))
    fast = module.fast_path(x)
    assert fast is not None
    y = module(x)
    assert y.dtype == torch.float32 and y.shape == (rows, 48)
    assert rel(y, exact(module, x)) < 1e-2  # bf16: ~2⁻⁹ per operand
    kernel = fast._kernel
    takes_kernel = case["bits"] == 4 or case["groupsize"] == -1
    if rows < DENSE_FROM_ROWS and takes_kernel:
        assert kernel and kernel[0] == f"int{case['bits']}"
    else:
        assert not kernel  # many rows, or no kernel: the transient bf16 weight


def test_the_kernel_weight_holds_the_codes_exactly():
    """With scales of one and bf16-exact inputs, the int4 kernel returns exact integer sums.

    The output is bf16, exact for integers up to 256 in magnitude: 16 inputs of ±1 keep
    every sum within 16 × 8 (seeded; unbounded random inputs made this test flaky).
    """
    module = layer(32, 128, 4, 32)
    module.scales.fill_(1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 128)
    for row in x:
        row[torch.randperm(128, generator=g)[:16]] = (
            torch.randint(0, 2, (16,), generator=g) * 2.0 - 1
        )
    fast = module.fast_path(x)
    assert fast._kernel_ready()
    y = fast._kernel_product(x.bfloat16()).float()
    codes = module.codes().float() - 8
    assert torch.equal(y, x @ codes.t())


def test_by_default_only_bf16_inputs_take_the_fast_path():
    module = layer(48, 256, 4, 32)
    module.use_kernel = None
    x = torch.randn(3, 256)
    assert module.fast_path(x) is None
    assert torch.equal(module(x), exact(module, x))
    assert module.fast_path(x.bfloat16()) is not None
    y = module(x.bfloat16())
    assert y.dtype == torch.bfloat16 and rel(y.float(), exact(module, x)) < 1e-2


def test_exact_path_stays_available():
    module = layer(48, 256, 4, 32)
    x = torch.randn(3, 256)
    module.use_kernel = False
    assert module.fast_path(x) is None
    assert torch.equal(module(x), exact(module, x))


def test_cached_weight_is_fp16_and_exact():
    module = layer(48, 256, 4, 32)
    module.cache_weight = True
    x = torch.randn(3, 256)
    assert torch.equal(module(x), exact(module, x))
    assert module._cached.dtype == torch.float16


def test_shapes_the_kernels_cannot_take_compute_exactly():
    module = layer(48, 172, 4, 32)  # stories260K's down_proj width
    x = torch.randn(2, 172)
    assert module.fast_path(x) is None
    assert torch.equal(module(x), exact(module, x))


def test_new_tensors_replace_the_kernel_weight():
    a, b = layer(48, 256, 4, 32, seed=1), layer(48, 256, 4, 32, seed=2)
    x = torch.randn(1, 256)
    a(x)
    a.load_state_dict(b.state_dict())
    assert rel(a(x), exact(b, x)) < 1e-2


def test_inputs_that_need_gradients_take_the_differentiable_bf16_weight():
    module = layer(48, 256, 4, 32)
    x = torch.randn(2, 256, requires_grad=True)
    module(x).sum().backward()
    assert module.fast_path(x)._kernel is None  # no kernel was built or used
    assert x.grad is not None and x.grad.shape == x.shape
