"""Products with a fixed ±1 sign matrix that keep the signs as int8, also in the autograd graph.

A trainable twin whose signs do not train still backpropagates through
x·Sᵀ to reach its scale vectors. ``x @ signs.float().t()`` would make autograd
save the fp32 copy of S for the backward pass, so every layer of a block held a
4-byte copy of each sign until the step ended (0.26 GB for one TinyLlama-shape
DBF block at 1.5 bits). :func:`fixed_sign_matmul` saves the int8 signs (one
byte each) and widens them for the product in each direction, one matrix at a
time; :func:`int8_signs` unpacks the 1-bit storage straight into that form.
"""

from __future__ import annotations

import torch

from .signs import unpack_signs


def int8_signs(
    packed: torch.Tensor, rows: int, cols: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Packed signs (:func:`~onecomp_core.kernels.pack_signs` layout) as a (rows, cols) int8 ±1."""
    return unpack_signs(packed.to(device), rows, cols, torch.int8)


class _FixedSignProduct(torch.autograd.Function):
    """y = x·Sᵀ; the gradient reaches x only (S is data, not a parameter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(signs)
        return x @ signs.to(x.dtype).t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (signs,) = ctx.saved_tensors
        return grad @ signs.to(grad.dtype), None


def fixed_sign_matmul(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """x @ Sᵀ for a (rows, cols) ±1 matrix ``signs`` of any dtype (int8 to be small).

    Differentiable in ``x``; the graph holds ``signs`` as given, and the
    widened copy exists only while the product in either direction runs.
    """
    if x.shape[-1] != signs.shape[1]:
        raise ValueError(f"input has {x.shape[-1]} features, the sign matrix {signs.shape[1]}")
    return _FixedSignProduct.apply(x, signs)
