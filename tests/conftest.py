"""Shared fixtures of the root test suite."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from onecomp_core import registry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    """Plugin registry state forgotten before and after the test."""
    registry.reset()
    yield
    registry.reset()


@pytest.fixture
def fake_plugin(tmp_path: Path) -> Callable[..., Path]:
    """Write a plugin that is "installed" only for whoever puts the returned folder on sys.path.

    The folder holds ``<module>.py`` with ``source`` and a
    ``<distribution>-0.1.dist-info`` whose entry_points.txt declares
    ``<entry> = <module>`` in the ``onecomp`` group, so importlib.metadata finds
    it without touching the environment. Several plugins may share one folder.
    """

    def make(distribution: str, entry: str, module: str, source: str) -> Path:
        root = tmp_path / "site"
        # the folder name carries the name with "_" (as wheels write it): importlib.metadata
        # splits it at the first "-" to tell distributions apart
        info = root / f"{distribution.replace('-', '_')}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n"
        )
        (info / "entry_points.txt").write_text(f"[onecomp]\n{entry} = {module}\n")
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        return root

    return make


#: sources of plugin modules broken in the ways a third-party plugin can be broken
PLUGIN_SOURCES = {
    "raises_at_import": "raise RuntimeError('broken on purpose')\n",
    "hook_raises": """
from onecomp_core.contract import hookimpl

@hookimpl
def onecomp_register(register):
    raise RuntimeError("hook exploded")
""",
    "misspelled_hook": """
from onecomp_core.contract import hookimpl

@hookimpl
def onecomp_registr(register):
    pass
""",
    "first_plugin_api": """
from onecomp_core.contract import hookimpl

@hookimpl
def onecomp_quantizers():
    return []
""",
    "not_a_method": """
from onecomp_core.contract import hookimpl

@hookimpl
def onecomp_register(register):
    register.add_method(dict)
""",
}

_PROVIDES = """
from dataclasses import dataclass
from typing import ClassVar

from onecomp_core.contract import Method, hookimpl


@dataclass
class Clone(Method):
    method: ClassVar[str] = "{method}"


@hookimpl
def onecomp_register(register):
    register.add_method(Clone)
"""

_FORMAT = """
import json
from pathlib import Path

from onecomp_core.contract import hookimpl


def save(artifact, out):
    out = Path(out)
    out.mkdir(parents=True)
    (out / "rows.json").write_text(json.dumps(artifact.rows))


@hookimpl
def onecomp_register(register):
    register.add_format("{format}", save)
"""


@pytest.fixture
def plugin_source() -> Callable[[str], str]:
    """Source of a plugin module: a kind of PLUGIN_SOURCES, "provides:<method>" for a working
    plugin whose do-nothing Method is registered as ``<method>``, or "format:<name>" for one
    whose format ``<name>`` writes the artifact's per-layer rows to ``OUT/rows.json``."""

    def source(kind: str) -> str:
        if kind.startswith("provides:"):
            return _PROVIDES.format(method=kind.split(":", 1)[1])
        if kind.startswith("format:"):
            return _FORMAT.format(format=kind.split(":", 1)[1])
        return PLUGIN_SOURCES[kind]

    return source


@pytest.fixture
def on_sys_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_registry: None
) -> Iterator[Callable[[Path], None]]:
    """Put a fake plugin folder on sys.path for this test; its modules are forgotten afterwards."""

    def add(folder: Path) -> None:
        monkeypatch.syspath_prepend(str(folder))
        registry.reset()

    yield add
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture(scope="session")
def assets() -> Path:
    """The shared real assets (stories260K and texts), next to the checkout."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "assets"


@pytest.fixture(scope="session")
def stories_path(assets: Path) -> Path:
    """The stories260K model folder (a real trained Llama, fp32, 1 MB)."""
    return assets / "stories260K"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: on the shared 2-core machine, more threads mostly wait on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
