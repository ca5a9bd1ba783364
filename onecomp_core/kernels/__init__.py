"""Plugin-facing kernels: integer grids and their result type, bit packing, packed inference layers,
1-bit sign products and the scaled-sign layer with its trainable twin, and the error-feedback
choice between two levels per weight (``two_level``).

The second (and last) core module a plugin may import, beside
:mod:`onecomp_core.contract`: the code two or more methods share, so no
plugin copies another's packing or grid arithmetic.
"""

from .binary import (
    ScaledSignLinear,
    band_rows,
    scaled_signs,
    sign_bands,
    sign_bits,
    sign_matmul,
)
from .binary_twin import ScaledSignsTwin, SignParts, ste_sign
from .grid import (
    dequantize_codes,
    gptq_effective_bits,
    grid_params,
    group_index,
    max_code,
    num_groups,
    quantize_codes,
    round_scale,
)
from .grid_result import GridResult
from .packed_linear import PackedIntLinear
from .packing import pack_dim0, pack_dim1, packed_length, unpack_dim0, unpack_dim1
from .signs import pack_signs, packed_size, unpack_signs
from .two_level import feedback_codes, inverse_factor

__all__ = [
    "GridResult",
    "PackedIntLinear",
    "ScaledSignLinear",
    "ScaledSignsTwin",
    "SignParts",
    "band_rows",
    "dequantize_codes",
    "feedback_codes",
    "gptq_effective_bits",
    "grid_params",
    "inverse_factor",
    "group_index",
    "max_code",
    "num_groups",
    "pack_dim0",
    "pack_dim1",
    "pack_signs",
    "packed_length",
    "packed_size",
    "quantize_codes",
    "round_scale",
    "scaled_signs",
    "sign_bands",
    "sign_bits",
    "sign_matmul",
    "ste_sign",
    "unpack_dim0",
    "unpack_dim1",
    "unpack_signs",
]
