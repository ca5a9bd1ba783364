"""An example calibration source: the documents of a .csv file, one per row of its text column.

``is_csv`` claims any dataset path ending in ``.csv``; ``read_csv`` returns
the documents, which onecomp cuts into token windows with the configured
strategy (a source may instead return ready (N, L) token windows as a tensor).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def is_csv(dataset: Any) -> bool:
    """Whether ``dataset`` names a .csv file; one that does not exist is reported at once."""
    if not (isinstance(dataset, str | Path) and Path(dataset).suffix.lower() == ".csv"):
        return False
    if not Path(dataset).expanduser().is_file():
        raise ValueError(f"dataset file not found: {dataset}")
    return True


def read_csv(dataset: str | Path, config: Any, tokenizer: Any, model: Any) -> list[str]:
    """The non-empty cells of the column ``config.text_key`` ("text" by default)."""
    column = getattr(config, "text_key", None) or "text"
    with open(Path(dataset).expanduser(), newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if column not in (reader.fieldnames or []):
            found = ", ".join(reader.fieldnames or []) or "none"
            raise ValueError(f"{dataset}: no {column!r} column (columns: {found})")
        documents = [row[column] for row in reader if (row[column] or "").strip()]
    if not documents:
        raise ValueError(f"{dataset}: the {column!r} column holds no text")
    return documents
