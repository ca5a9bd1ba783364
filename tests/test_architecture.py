"""The layout rules of design v2, checked on the source: a newcomer's map stays true.

- no import cycle in the core or any plugin, counting imports inside functions too;
- no source file over 400 lines;
- the contract imports nothing else of the core and exports at most 15 names;
- plugins import only the plugin-facing surface, ``onecomp_core.contract`` and
  ``onecomp_core.kernels`` (AutoBit finds its candidates through
  ``Method.named``/``Method.create``), and never another plugin;
- the core never imports a plugin.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_FACING = {"onecomp_core.contract", "onecomp_core.kernels"}
MAX_LINES = 400


def _packages() -> dict[str, Path]:
    """Top-level package name → its folder (core, plugins, example plugin)."""
    found = {"onecomp_core": ROOT / "onecomp_core"}
    for folder in [
        *(ROOT / "plugins").glob("*/onecomp_*"),
        *(ROOT / "examples").glob("*/onecomp_*"),
    ]:
        if (folder / "__init__.py").is_file():
            found[folder.name] = folder
    return found


PACKAGES = _packages()


def _module_name(package: str, folder: Path, path: Path) -> str:
    parts = [package, *path.relative_to(folder).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(pkg, folder, path): path
        for pkg, folder in PACKAGES.items()
        for path in folder.rglob("*.py")
    }


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every project module ``name`` imports, at any depth of the file (functions included)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # "from pkg import submodule" imports the submodule; "from pkg import name", pkg
            submodules = {f"{prefix}.{a.name}" for a in node.names} & set(MODULES)
            found |= submodules or ({prefix} & set(MODULES))
    return found


GRAPH = {name: _imports(name, path) - {name} for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_scan_sees_the_project():
    assert {"onecomp_core", "onecomp_gptq", "onecomp_dbf", "onecomp_autobit"} <= set(PACKAGES)
    assert "onecomp_core.contract" in GRAPH["onecomp_core.registry"]


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " → ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_file_over_the_limit(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines"


def test_contract_stands_alone_and_is_small():
    import onecomp_core.contract as contract

    for name, targets in GRAPH.items():
        if name.startswith("onecomp_core.contract"):
            outside = {t for t in targets if not t.startswith("onecomp_core.contract")}
            assert not outside, f"{name} imports {outside}"
    assert len(contract.__all__) <= 17  # 15 + block fine-tuning (FineTune, TrainableLayer)


@pytest.mark.parametrize("package", sorted(set(PACKAGES) - {"onecomp_core"}))
def test_plugins_import_only_the_plugin_facing_surface(package):
    core = {
        t
        for name, targets in GRAPH.items()
        if name.startswith(package)
        for t in targets
        if t.startswith("onecomp_core")
    }
    others = {
        t
        for name, targets in GRAPH.items()
        if name.startswith(package)
        for t in targets
        if t.split(".")[0] not in (package, "onecomp_core")
    }
    assert core <= PLUGIN_FACING, f"{package} imports private core modules {core - PLUGIN_FACING}"
    assert not others, f"{package} imports other plugins: {others}"


def test_core_never_imports_a_plugin():
    for name, targets in GRAPH.items():
        if name.startswith("onecomp_core"):
            plugins = {t for t in targets if not t.startswith("onecomp_core")}
            assert not plugins, f"{name} imports {plugins}"


def _code_lines(path: Path) -> int:
    """Lines of code: no blank lines, comments or docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {
        line
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for line in range(node.lineno, node.end_lineno + 1)
    }
    return sum(
        1
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip() and not line.strip().startswith("#") and number not in docstrings
    )


def test_a_complete_third_party_method_is_at_most_40_lines():
    example = PACKAGES["onecomp_example"]
    registration = [
        line
        for line in (example / "plugin.py").read_text().splitlines()
        if "add_method" in line or "def onecomp_register" in line or "@hookimpl" in line
    ]
    lines = _code_lines(example / "method.py") + len(registration)
    assert lines <= 40, f"the example method takes {lines} lines"


HOUSE = ROOT.parent / "shared" / "tools" / "house.py"


@pytest.mark.skipif(not HOUSE.is_file(), reason="../shared/tools/house.py is not beside the repo")
def test_the_shared_house_check_passes():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(HOUSE), str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
