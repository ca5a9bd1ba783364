"""Everything onecomp writes and reads back: models, results, and the one atomic-write helper.

- :mod:`.atomic` — write under a temporary name, rename into place;
- :mod:`.results_io` — layer results as safetensors + JSON;
- :mod:`.packed` — the write-back of dense weights, and packed models from results;
- :mod:`.artifact` — a run as an Artifact, saved through a registered format;
- :mod:`.hf_folder` — the built-in "hf" format: save and load Hugging Face folders;
- :mod:`.verify` — the strict load: every saved tensor checked against its module;
- :mod:`.reading` — JSON and safetensors read back, a damaged file named in one line;
- :mod:`.destination` — output folders checked before any long work (name, writable, space).
"""

from .artifact import (
    build_artifact,
    quantization_config,
    save_dequantized_model,
    save_quantized_model,
)
from .atomic import atomic_file, atomic_folder, check_free, write_json
from .hf_folder import load_artifact, load_quantized_model, read_quantized_config
from .packed import apply_results, layer_table, packed_model
from .results_io import load_results, save_results

__all__ = [
    "apply_results",
    "atomic_file",
    "atomic_folder",
    "build_artifact",
    "check_free",
    "layer_table",
    "load_artifact",
    "load_quantized_model",
    "load_results",
    "packed_model",
    "quantization_config",
    "read_quantized_config",
    "save_dequantized_model",
    "save_quantized_model",
    "save_results",
    "write_json",
]
