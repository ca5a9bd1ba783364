"""One quantized layer as GGUF blocks: lossless where our grid is a GGUF type, else re-quantized.

GGUF's legacy types hold blocks of 32 consecutive inputs of one row with
an fp16 scale ``d``: Q4_0 ``w = d·(q − 8)``, Q4_1 ``w = d·q + m``, Q8_0
``w = d·q`` (q int8). Our grid is ``w = s·(q − z)`` with fp16 ``s`` per
(row, group). When every aligned run of 32 inputs lies in one group (group
sizes that are multiples of 32, per-row grids, act-order whose groups
happen to align), the mapping is exact:

- symmetric (``z = 2^(b−1)``), b ≤ 4 → Q4_0 with ``d = s``, ``q = code − z + 8``;
- symmetric, 5 ≤ b ≤ 8 → Q8_0 with ``d = s``, ``q = code − z``;
- asymmetric, b ≤ 4 → Q4_1 with ``d = s``, ``m = −s·z`` stored in fp16: exact
  only where ``s·z`` is fp16-representable (the error is measured and reported);
- asymmetric, b ≥ 5 → Q8_0 with ``q = code − z`` when it fits in int8.

Anything else is re-quantized from our dequantized weight by gguf's own
quantizer (the measured error is reported); a row length that is not a
multiple of 32 has no quantized GGUF type and is written as F16 (equal to
our fp16 dequantized weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 32


@dataclass
class Encoded:
    """A layer's GGUF tensor: ``data`` (rows, bytes per row) uint8 or (rows, cols) float,
    its GGML type name, and how it relates to our weight (``exact``, max abs error, note)."""

    data: np.ndarray
    qtype: str
    exact: bool
    max_error: float
    note: str


def encode_grid(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor, bits: int
) -> Encoded | None:
    """The lossless (or Q4_1) encoding of (out, in) codes with (groups, out) scales/zeros, or None.

    None: the grid does not map (groups not aligned to 32-input blocks, rows
    not a multiple of 32, asymmetric codes too far from their zero for int8).
    """
    out_features, in_features = codes.shape
    if in_features % BLOCK:
        return None
    runs = g_idx.long().view(-1, BLOCK)
    if not bool((runs == runs[:, :1]).all()):
        return None
    group = runs[:, 0]  # (blocks,)
    d = scales.t()[:, group].to(torch.float16)  # (out, blocks)
    z = zeros.t()[:, group].to(torch.int64)
    c = codes.to(torch.int64).view(out_features, -1, BLOCK)  # (out, blocks, 32)
    mid = 1 << (bits - 1)
    if bool((z == mid).all()):
        if bits <= 4:
            return Encoded(_q4(d, c - mid + 8), "Q4_0", True, 0.0, "lossless")
        return Encoded(_q8(d, c - mid), "Q8_0", True, 0.0, "lossless")
    q = c - z.unsqueeze(-1)
    if bits <= 4:
        exact_m = -(d.float() * z.float())  # exact in fp32 (fp16 times a 4-bit integer)
        m = exact_m.to(torch.float16)
        error = float((m.float() - exact_m).abs().max()) if m.numel() else 0.0
        note = "lossless" if error == 0 else "m = −s·z rounded to fp16"
        return Encoded(_q4_1(d, m, c), "Q4_1", error == 0, error, note)
    if int(q.abs().max()) <= 127:
        return Encoded(_q8(d, q), "Q8_0", True, 0.0, "lossless")
    return None


def _nibbles(q: torch.Tensor) -> np.ndarray:
    """(out, blocks, 32) codes 0..15 → (out, blocks, 16) bytes: low nibble j, high nibble j + 16."""
    q = q.to(torch.uint8)
    return (q[..., :16] | (q[..., 16:] << 4)).numpy()


def _half_bytes(x: torch.Tensor) -> np.ndarray:
    """(out, blocks) fp16 → (out, blocks, 2) bytes (little-endian)."""
    return x.contiguous().numpy().view(np.uint8).reshape(*x.shape, 2)


def _rows(parts: list[np.ndarray]) -> np.ndarray:
    block = np.concatenate(parts, axis=-1)  # (out, blocks, bytes per block)
    return np.ascontiguousarray(block.reshape(block.shape[0], -1))


def _q4(d: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    return _rows([_half_bytes(d), _nibbles(q)])


def _q4_1(d: torch.Tensor, m: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    return _rows([_half_bytes(d), _half_bytes(m), _nibbles(q)])


def _q8(d: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    return _rows([_half_bytes(d), q.to(torch.int8).numpy().view(np.uint8)])


def requantize(weight: torch.Tensor, qtype: str) -> Encoded:
    """gguf's own quantizer on our dequantized (out, in) weight; the error is measured."""
    import gguf

    w = weight.float().numpy()
    kind = gguf.GGMLQuantizationType[qtype]
    data = gguf.quants.quantize(w, kind)
    back = gguf.quants.dequantize(data, kind)
    error = float(np.abs(back - w).max())
    rel = float(np.linalg.norm(back - w) / max(np.linalg.norm(w), 1e-30))
    return Encoded(data, qtype, False, error, f"re-quantized: relative weight error {rel:.2e}")


def nearest_type(bits: int, sym: bool) -> str:
    """The GGUF type a re-quantized layer of ``bits`` takes: Q4_0/Q4_1 up to 4 bits, else Q8_0."""
    if bits <= 4:
        return "Q4_0" if sym else "Q4_1"
    return "Q8_0"
