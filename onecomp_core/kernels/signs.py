"""Sign matrices as bits: row-major over the whole matrix, 8 per uint8, MSB first.

Bit 1 means +1 and bit 0 means −1; the tail of the last byte is padded with
+1 (bit 1). This is the seed's ``bp1``/``bp3`` format, so checkpoints are
interchangeable with it.
"""

from __future__ import annotations

import torch

_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def packed_size(rows: int, cols: int) -> int:
    """Bytes needed for a rows × cols sign matrix."""
    return -(-rows * cols // 8)


def pack_signs(signs: torch.Tensor) -> torch.Tensor:
    """(r, c) tensor of signs (>= 0 counts as +1) → flat uint8 of length ceil(r·c/8)."""
    bits = (signs.reshape(-1) >= 0).to(torch.uint8)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_ones(pad)])
    weights = _WEIGHTS.to(bits.device)
    return (bits.view(-1, 8) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_signs(
    packed: torch.Tensor, rows: int, cols: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of :func:`pack_signs`: flat uint8 → (rows, cols) of ±1 in ``dtype``."""
    if packed.numel() != packed_size(rows, cols):
        raise ValueError(
            f"packed signs hold {packed.numel()} bytes, a {rows}x{cols} matrix needs "
            f"{packed_size(rows, cols)}"
        )
    weights = _WEIGHTS.to(packed.device)
    bits = (packed.reshape(-1, 1) & weights) != 0
    bits = bits.reshape(-1)[: rows * cols].view(rows, cols)
    ones = torch.ones((), dtype=dtype, device=packed.device)
    return torch.where(bits, ones, -ones)
