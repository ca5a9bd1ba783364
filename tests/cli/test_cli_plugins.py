"""``onecomp plugins`` and ``onecomp --version``, run as a user would, in a subprocess.

The broken plugins live in a temporary folder put on PYTHONPATH: a module and
a ``*.dist-info`` with an ``onecomp`` entry point, so importlib.metadata sees
an installed distribution while the real environment stays untouched.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def onecomp(*args: str, path: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ONECOMP_")}
    environ.update(env)
    if path is not None:
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(path), environ.get("PYTHONPATH")])
        )
    return subprocess.run(
        [sys.executable, "-m", "onecomp_core.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )


def listing(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    assert proc.returncode == 0, proc.stderr
    return {row["name"]: row for row in json.loads(proc.stdout)}


@pytest.fixture
def broken_site(fake_plugin, plugin_source) -> Path:
    """One folder holding three broken plugins: import error, raising hook, misspelled hook."""
    fake_plugin(
        "onecomp_broken_fixture", "broken", "broken_plugin", plugin_source("raises_at_import")
    )
    fake_plugin("onecomp-hook-fixture", "hooky", "hooky_plugin", plugin_source("hook_raises"))
    return fake_plugin(
        "onecomp-typo-fixture", "typo", "typo_plugin", plugin_source("misspelled_hook")
    )


def test_plugins_json_lists_the_builtin_plugin_with_what_it_provides():
    rows = listing(onecomp("plugins", "--json"))
    assert rows["builtin"] == {
        "name": "builtin",
        "distribution": "onecomp-core",
        "version": md.version("onecomp-core"),
        "status": "ok",
        "error": None,
        "methods": ["rtn"],
        "sources": ["local-file", "string-list", "hf-dataset", "hub", "self-generated"],
        "formats": ["hf", "gguf"],
    }
    if md.entry_points(group="onecomp", name="ternary"):  # the example plugin, when installed
        assert rows["ternary"]["status"] == "ok"
        assert rows["ternary"]["distribution"] == "onecomp-example-plugin"
        assert rows["ternary"]["sources"] == ["csv"] and rows["ternary"]["formats"] == ["npz"]


def test_the_table_has_a_column_per_kind():
    proc = onecomp("plugins", ONECOMP_DISABLE_PLUGIN_AUTOLOAD="1")
    assert proc.returncode == 0, proc.stderr
    header, rule, builtin = proc.stdout.splitlines()[:3]
    assert set(rule.replace(" ", "")) == {"-"}
    assert header.split() == [
        "plugin",
        "distribution",
        "version",
        "status",
        "methods",
        "sources",
        "formats",
    ]
    assert builtin.startswith("builtin") and "rtn" in builtin
    assert "local-file, string-list, hf-dataset, hub, self-generated" in builtin
    assert builtin.endswith("hf, gguf")


def test_broken_plugins_are_shown_failed_and_the_command_still_succeeds(broken_site):
    rows = listing(onecomp("plugins", "--json", path=broken_site))
    assert rows["builtin"]["status"] == "ok"
    assert rows["broken"]["status"] == "failed"
    assert rows["broken"]["distribution"] == "onecomp_broken_fixture"
    assert rows["broken"]["error"] == "RuntimeError: broken on purpose"
    assert rows["hooky"]["status"] == "failed" and "hook exploded" in rows["hooky"]["error"]
    assert rows["typo"]["status"] == "failed"
    assert "unknown hook 'onecomp_registr'" in rows["typo"]["error"]


def test_the_table_shows_the_error_of_a_failed_plugin(broken_site):
    proc = onecomp("plugins", path=broken_site)
    assert proc.returncode == 0, proc.stderr
    assert "broken: RuntimeError: broken on purpose" in proc.stdout


def test_strict_mode_makes_a_broken_plugin_fatal(fake_plugin, plugin_source):
    site = fake_plugin(
        "onecomp_broken_fixture", "broken", "broken_plugin", plugin_source("raises_at_import")
    )
    others_ok = all(
        row["status"] == "ok"
        for name, row in listing(onecomp("plugins", "--json", path=site)).items()
        if name != "broken"
    )
    proc = onecomp("plugins", "--json", path=site, ONECOMP_STRICT_PLUGINS="1")
    assert proc.returncode != 0
    assert proc.stdout == ""
    if others_ok:  # otherwise another broken plugin of the environment may raise first
        assert "RuntimeError: broken on purpose" in proc.stderr


def test_a_duplicate_method_fails_with_one_line_naming_both_distributions(
    fake_plugin, plugin_source
):
    site = fake_plugin("onecomp-dup-fixture", "rtn", "dup_plugin", plugin_source("provides:rtn"))
    proc = onecomp("plugins", "--json", path=site)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "onecomp-core" in proc.stderr and "onecomp-dup-fixture" in proc.stderr


def test_version_is_the_installed_distribution_version():
    proc = onecomp("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"onecomp {md.version('onecomp-core')}"


@pytest.mark.skipif(shutil.which("onecomp") is None, reason="console script not on PATH")
def test_the_console_script_is_the_same_command():
    proc = subprocess.run(["onecomp", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == f"onecomp {md.version('onecomp-core')}"


def test_export_reaches_a_format_through_its_entry_point(fake_plugin, plugin_source, tmp_path):
    from torch import nn

    from onecomp_core.contract import LayerJob
    from onecomp_core.rtn import RTN
    from onecomp_core.storage import build_artifact, save_quantized_model
    from onecomp_core.testing import tiny_model

    model, method = tiny_model("llama"), RTN(wbits=4)
    name = "model.layers.0.mlp.down_proj"
    results = {name: method.quantize(LayerJob(name, model.get_submodule(name)))}
    assert isinstance(model.get_submodule(name), nn.Linear)
    saved = save_quantized_model(
        build_artifact(model, method, results, None, {}), tmp_path / "saved"
    )
    site = fake_plugin("onecomp-rows-fixture", "rows", "rows_plugin", plugin_source("format:rows"))
    proc = onecomp("export", str(saved), "--format", "rows", str(tmp_path / "out"), path=site)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "out" / "rows.json").read_text())
    assert list(rows) == [name] and rows[name]["method"] == "rtn"
    formats = listing(onecomp("plugins", "--json", path=site))["rows"]["formats"]
    assert formats == ["rows"]
