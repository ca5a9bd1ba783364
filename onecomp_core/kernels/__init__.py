"""Plugin-facing kernels: integer grids and their result type, the GPTQ solve, bit packing,
packed inference layers, seeded orthogonal transforms, 1-bit sign products (packed, and
int8 ones that backpropagate, :mod:`.fixed_signs`) and the scaled-sign layer with its
trainable twin, the streamed model-level distillation of any method's trainable twins
(:mod:`.distill`), and the error-feedback choice between two levels per weight
(:mod:`.two_level`).

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
from .distill import Distiller, end_kl, kl_sum
from .fixed_signs import fixed_sign_matmul, int8_signs
from .gptq_solve import (
    dequantize,
    gptq_quantize,
    prepare_hessian,
    rtn_quantize,
)
from .gptq_spec import GPTQOutput, GridSpec
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
from .grid_search import fit_grid
from .on_disk import OnDisk, OnDiskStack
from .orthogonal import (
    OrthogonalTransform,
    hadamard_transform,
    kronecker_factors,
    orthogonal_transform,
)
from .packed_linear import PackedIntLinear
from .packing import pack_dim0, pack_dim1, packed_length, unpack_dim0, unpack_dim1
from .pieces import backward_in_pieces, batch_rows, run_in_pieces, sequence_pieces
from .signs import pack_signs, packed_size, unpack_signs
from .training import move_optimizer_state, small_problem_threads, swapped_in
from .two_level import feedback_codes, inverse_factor

__all__ = [
    "OnDisk",
    "OnDiskStack",
    "backward_in_pieces",
    "batch_rows",
    "run_in_pieces",
    "sequence_pieces",
    "move_optimizer_state",
    "small_problem_threads",
    "swapped_in",
    "GPTQOutput",
    "Distiller",
    "GridResult",
    "GridSpec",
    "OrthogonalTransform",
    "PackedIntLinear",
    "dequantize",
    "ScaledSignLinear",
    "ScaledSignsTwin",
    "SignParts",
    "band_rows",
    "dequantize_codes",
    "end_kl",
    "fit_grid",
    "fixed_sign_matmul",
    "feedback_codes",
    "gptq_effective_bits",
    "gptq_quantize",
    "grid_params",
    "inverse_factor",
    "kl_sum",
    "int8_signs",
    "group_index",
    "hadamard_transform",
    "kronecker_factors",
    "max_code",
    "num_groups",
    "orthogonal_transform",
    "pack_dim0",
    "pack_dim1",
    "pack_signs",
    "prepare_hessian",
    "packed_length",
    "packed_size",
    "quantize_codes",
    "round_scale",
    "rtn_quantize",
    "scaled_signs",
    "sign_bands",
    "sign_bits",
    "sign_matmul",
    "ste_sign",
    "unpack_dim0",
    "unpack_dim1",
    "unpack_signs",
]
