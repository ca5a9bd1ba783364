"""1-bit sign matrices at inference: packed signs times activations, and the scaled-sign layer.

Shared by the 1-bit methods (OneBit, CQ, ARB, QBB, MDBF): a sign matrix S
(rows × cols, ±1) is kept packed 8 per byte (:mod:`.signs`) and only ever
unpacked a band of rows at a time, so a forward never holds more than
``SIGN_CHUNK_ELEMENTS`` unpacked signs besides its activations.

:class:`ScaledSignLinear` is the common inference layer of the two-level
family, y = r ⊙ (S (c ⊙ x)) + μ·(1ᵀx) + bias with optional column scales c
and row offsets μ: OneBit (r = a, c = b), CQ / ARB (r = α, μ), ARB-RC (r, c).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .signs import pack_signs, packed_size, unpack_signs

#: unpacked signs per band in :func:`sign_matmul` (a multiple of 8 rows is taken)
SIGN_CHUNK_ELEMENTS = 1 << 22


def sign_bits(
    rows: int,
    cols: int,
    *,
    sign_matrices: int = 1,
    row_vectors: int = 0,
    col_vectors: int = 0,
    scale_bits: int = 16,
) -> float:
    """Bits per weight of ``sign_matrices`` rows × cols sign matrices plus fp scale vectors.

    E.g. OneBit: 1 + 16(p + m)/(pm) = ``sign_bits(p, m, row_vectors=1, col_vectors=1)``.
    """
    stored = sign_matrices * rows * cols + scale_bits * (row_vectors * rows + col_vectors * cols)
    return stored / (rows * cols)


def band_rows(cols: int, chunk_elements: int = SIGN_CHUNK_ELEMENTS) -> int:
    """Rows per band: a multiple of 8 (each band starts on a byte), at least 8."""
    return max(8, (chunk_elements // max(cols, 1)) // 8 * 8)


def sign_bands(
    packed: torch.Tensor,
    rows: int,
    cols: int,
    dtype: torch.dtype,
    chunk_elements: int = SIGN_CHUNK_ELEMENTS,
) -> list[tuple[int, torch.Tensor]]:
    """(first row, ±1 band) pairs covering the packed rows × cols matrix, band by band.

    A band of 8k rows starts at bit 8k·cols, a whole byte, so it is
    unpacked from its own bytes without touching the rest.
    """
    if packed.numel() != packed_size(rows, cols):
        raise ValueError(
            f"packed signs hold {packed.numel()} bytes, a {rows}x{cols} matrix needs "
            f"{packed_size(rows, cols)}"
        )
    step = band_rows(cols, chunk_elements)
    bands = []
    for start in range(0, rows, step):
        n = min(step, rows - start)
        first = start * cols // 8
        band = packed[first : first + packed_size(n, cols)]
        bands.append((start, unpack_signs(band, n, cols, dtype)))
    return bands


def sign_matmul(
    x: torch.Tensor,
    packed: torch.Tensor,
    rows: int,
    cols: int,
    chunk_elements: int = SIGN_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """x @ Sᵀ for the packed rows × cols sign matrix S (x: (..., cols) → (..., rows)).

    Computed in x's dtype, one band of rows of S at a time (no dense S).
    """
    if x.shape[-1] != cols:
        raise ValueError(f"input has {x.shape[-1]} features, the sign matrix {cols} columns")
    out = x.new_empty(*x.shape[:-1], rows)
    for start, band in sign_bands(packed.to(x.device), rows, cols, x.dtype, chunk_elements):
        out[..., start : start + band.shape[0]] = x @ band.t()
    return out


def scaled_signs(
    signs: torch.Tensor,
    row: torch.Tensor | None = None,
    col: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """The dense diag(row)·S·diag(col) (+ offset per row), fp32 (S given as ±1)."""
    w = signs.float()
    if row is not None:
        w = row.float().reshape(-1, 1) * w
    if col is not None:
        w = w * col.float().reshape(1, -1)
    if offset is not None:
        w = w + offset.float().reshape(-1, 1)
    return w


class ScaledSignLinear(nn.Module):
    """y = row ⊙ (S (col ⊙ x)) + offset·(1ᵀx) + bias, S packed (1 bit per sign).

    Buffers: ``signs`` (uint8, packed out × in, :func:`pack_signs` layout),
    ``row_scale`` (out) fp16, and when enabled ``col_scale`` (in), ``row_offset``
    (out) and ``bias`` (out), all fp16. ``cache_signs`` keeps the unpacked
    signs in the compute dtype (faster, costs one element per sign).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        col_scale: bool = False,
        row_offset: bool = False,
        bias: bool = False,
        cache_signs: bool = False,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.cache_signs = (
            in_features,
            out_features,
            cache_signs,
        )
        self.register_buffer(
            "signs", torch.full((packed_size(out_features, in_features),), 255, dtype=torch.uint8)
        )
        self.register_buffer("row_scale", torch.ones(out_features, dtype=torch.float16))
        for label, wanted, size in (
            ("col_scale", col_scale, in_features),
            ("row_offset", row_offset, out_features),
            ("bias", bias, out_features),
        ):
            value = torch.zeros(size, dtype=torch.float16) if wanted else None
            self.register_buffer(label, value)
        if self.col_scale is not None:
            self.col_scale.fill_(1)
        self._cached: torch.Tensor | None = None

    @classmethod
    def from_parts(
        cls,
        signs: torch.Tensor,
        row_scale: torch.Tensor,
        col_scale: torch.Tensor | None = None,
        row_offset: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        *,
        shape: tuple[int, int] | None = None,
        cache_signs: bool = False,
    ) -> ScaledSignLinear:
        """From ±1 signs (out × in) or packed uint8 signs (then ``shape`` = (out, in))."""
        if signs.dtype == torch.uint8:
            if shape is None:
                raise ValueError("packed signs need shape=(out_features, in_features)")
            out_features, in_features = shape
            packed = signs.reshape(-1)
        else:
            out_features, in_features = signs.shape
            packed = pack_signs(signs)
        layer = cls(
            in_features,
            out_features,
            col_scale=col_scale is not None,
            row_offset=row_offset is not None,
            bias=bias is not None,
            cache_signs=cache_signs,
        )
        layer.signs.copy_(packed)
        for label, value in (
            ("row_scale", row_scale),
            ("col_scale", col_scale),
            ("row_offset", row_offset),
            ("bias", bias),
        ):
            if value is not None:
                getattr(layer, label).copy_(value.detach().reshape(-1).to(torch.float16))
        return layer

    @classmethod
    def from_row(cls, row: dict[str, Any], **options: Any) -> ScaledSignLinear:
        """The empty layer a saved row describes (in/out_features, bias, col_scale, row_offset)."""
        return cls(
            row["in_features"],
            row["out_features"],
            col_scale=bool(row.get("col_scale", False)),
            row_offset=bool(row.get("row_offset", False)),
            bias=bool(row.get("bias", False)),
            **options,
        )

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cached = None  # new signs: forget the unpacked copy
        super()._load_from_state_dict(*args, **kwargs)

    def state_problems(self) -> list[str]:
        """What is wrong with the loaded tensors beyond shape and dtype (empty when sound).

        The bits padding the last byte are always +1; anything else means the
        bytes were packed for another shape than the saved table says.
        """
        pad = (-self.out_features * self.in_features) % 8
        last = int(self.signs[-1]) if self.signs.numel() else 255
        if pad and last & ((1 << pad) - 1) != (1 << pad) - 1:
            return ["signs: padding bits are not +1 (packed for another shape)"]
        return []

    def sign_matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """S (out × in) as ±1 in ``dtype``."""
        return unpack_signs(self.signs, self.out_features, self.in_features, dtype)

    def dequantize(self) -> torch.Tensor:
        """The dense (out, in) weight in fp32 (without the bias)."""
        return scaled_signs(self.sign_matrix(), self.row_scale, self.col_scale, self.row_offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.col_scale is None else x * self.col_scale.to(x.dtype)
        if self.cache_signs:
            cached = self._cached
            if cached is None or cached.dtype != x.dtype or cached.device != x.device:
                cached = self._cached = self.sign_matrix(x.dtype).to(x.device)
            y = h @ cached.t()
        else:
            y = sign_matmul(h, self.signs, self.out_features, self.in_features)
        y = y * self.row_scale.to(x.dtype)
        if self.row_offset is not None:
            y = y + x.sum(dim=-1, keepdim=True) * self.row_offset.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"col_scale={self.col_scale is not None}, row_offset={self.row_offset is not None}, "
            f"bias={self.bias is not None}"
        )
