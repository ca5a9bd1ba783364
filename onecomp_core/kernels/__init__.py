"""Plugin-facing kernels: integer grids and their result type, bit packing, packed inference layers,
seeded orthogonal transforms.

The second (and last) core module a plugin may import, beside
:mod:`onecomp_core.contract`: the code two or more methods share, so no
plugin copies another's packing or grid arithmetic.
"""

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
from .orthogonal import (
    OrthogonalTransform,
    hadamard_transform,
    kronecker_factors,
    orthogonal_transform,
)
from .packed_linear import PackedIntLinear
from .packing import pack_dim0, pack_dim1, packed_length, unpack_dim0, unpack_dim1
from .signs import pack_signs, packed_size, unpack_signs

__all__ = [
    "GridResult",
    "OrthogonalTransform",
    "PackedIntLinear",
    "dequantize_codes",
    "gptq_effective_bits",
    "grid_params",
    "group_index",
    "hadamard_transform",
    "kronecker_factors",
    "max_code",
    "num_groups",
    "orthogonal_transform",
    "pack_dim0",
    "pack_dim1",
    "pack_signs",
    "packed_length",
    "packed_size",
    "quantize_codes",
    "round_scale",
    "unpack_dim0",
    "unpack_dim1",
    "unpack_signs",
]
