"""AutoBit reaches other methods only through the registry: no module imports another plugin,
and of the core only the contract and the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import onecomp_autobit

FORBIDDEN = ("onecomp_gptq", "onecomp_dbf")
CORE_ALLOWED = {"onecomp_core.contract", "onecomp_core.registry"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            names.update(a.value for a in node.args if isinstance(a, ast.Constant))
    return names


def test_no_module_imports_another_plugin():
    files = sorted(Path(onecomp_autobit.__file__).parent.rglob("*.py"))
    assert len(files) >= 10
    for path in files:
        imported = imported_modules(path)
        bad = [m for m in imported if m.split(".")[0] in FORBIDDEN]
        assert not bad, f"{path.name} imports {bad}"
        core = {m for m in imported if m.startswith("onecomp_core")} - {"onecomp_core"}
        assert core <= CORE_ALLOWED, f"{path.name} imports {core - CORE_ALLOWED}"


def test_the_checker_sees_imports(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("import onecomp_gptq.quantizer\nfrom onecomp_dbf import DBF\n")
    assert {"onecomp_gptq.quantizer", "onecomp_dbf"} <= imported_modules(sample)
