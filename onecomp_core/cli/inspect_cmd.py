"""``onecomp inspect DIR``: per-layer method, bits and bytes of a saved model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors import safe_open

from ..storage.hf_folder import read_quantized_config
from ..storage.reading import check_tensor_file, pickle_message, pickle_only
from ..table import format_table

_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show what a saved model holds, layer by layer")
    p.add_argument("folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def tensor_sizes(folder: Path) -> dict[str, tuple[int, int]]:
    """(elements, bytes) of every saved tensor, read from the safetensors headers only."""
    sizes = {}
    for path in sorted(folder.glob("*.safetensors")):
        check_tensor_file(path)
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                count = 1
                for dim in sl.get_shape():
                    count *= dim
                sizes[key] = (count, count * _BYTES.get(sl.get_dtype(), 4))
    return sizes


def build_report(folder: Path) -> dict:
    config, qc = read_quantized_config(folder)
    sizes = tensor_sizes(folder)
    if not sizes:
        pickled = pickle_only(folder)
        if pickled is not None:
            raise ValueError(pickle_message(pickled))
        raise FileNotFoundError(f"{folder} holds no safetensors weights")
    rows, quantized_params, quantized_bytes = [], 0, 0
    for name, row in qc["layers"].items():
        params = row["in_features"] * row["out_features"]
        nbytes = sum(b for k, (_, b) in sizes.items() if k.startswith(name + "."))
        rows.append(
            {
                "layer": name,
                "method": row["method"],
                "params": params,
                "bytes": nbytes,
                "bits_on_disk": round(8 * nbytes / params, 4),
                **{k: row[k] for k in ("bits", "effective_bits", "binary_bits", "k") if k in row},
            }
        )
        quantized_params += params
        quantized_bytes += nbytes
    total_bytes = sum(b for _, b in sizes.values())
    prefixes = tuple(n + "." for n in qc["layers"])
    other_elements = sum(c for k, (c, _) in sizes.items() if not k.startswith(prefixes))
    fp16_bytes = 2 * (quantized_params + other_elements)
    return {
        "method": qc.get("method", qc["quant_method"]),
        "layers": rows,
        "quantized_params": quantized_params,
        "average_bits": round(8 * quantized_bytes / max(quantized_params, 1), 4),
        "total_bytes": total_bytes,
        "fp16_reference_bytes": fp16_bytes,
        "compression_ratio": round(fp16_bytes / max(total_bytes, 1), 3),
        "other_tensor_bytes": total_bytes - quantized_bytes,
    }


def run(args: argparse.Namespace) -> int:
    report = build_report(Path(args.folder))
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(format_table(report["layers"]))
    print(
        f"\nmethod {report['method']}: {report['quantized_params']} quantized weights at "
        f"{report['average_bits']} bits on average (metadata included); "
        f"{report['total_bytes']} bytes on disk vs {report['fp16_reference_bytes']} for the "
        f"same model in fp16 (x{report['compression_ratio']} smaller)"
    )
    return 0
