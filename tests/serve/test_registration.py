"""onecomp's registration with transformers: installed by ``import onecomp_core``, in either order."""

from __future__ import annotations

import sys

from onecomp_core.import_hook import after_import


def test_after_import_runs_once_right_after_the_module_runs(tmp_path, monkeypatch):
    (tmp_path / "probe_after_import.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    after_import("probe_after_import", lambda: seen.append(sys.modules["probe_after_import"].VALUE))
    assert seen == []  # not imported yet: nothing ran, nothing imported
    assert "probe_after_import" not in sys.modules
    import probe_after_import  # noqa: F401

    assert seen == [41]
    after_import("probe_after_import", lambda: seen.append("now"))  # already imported: at once
    assert seen == [41, "now"]
    del sys.modules["probe_after_import"]


def test_onecomp_is_in_transformers_registry():
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING,
        AUTO_QUANTIZER_MAPPING,
    )

    import onecomp_core  # noqa: F401
    from onecomp_core.hf import OnecompConfig, OnecompQuantizer, register

    register()  # idempotent
    assert AUTO_QUANTIZER_MAPPING["onecomp"] is OnecompQuantizer
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["onecomp"] is OnecompConfig
