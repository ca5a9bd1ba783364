"""The plugin registry: lazy discovery, isolation of broken plugins, clear errors."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys

import pluggy
import pytest

from onecomp_core import registry
from onecomp_core.contract import ConfigError, hookimpl
from onecomp_core.rtn import RTN
from onecomp_core.testing import registered_plugin

pytestmark = pytest.mark.usefixtures("fresh_registry")

BUILTIN_SOURCES = ["local-file", "string-list", "hf-dataset", "hub", "self-generated"]


def report() -> dict[str, registry.PluginInfo]:
    return {info.name: info for info in registry.plugin_report()}


# -- lazy loading ----------------------------------------------------------------------
def test_importing_onecomp_core_loads_no_plugin_and_listing_loads_no_transformers():
    code = (
        "import sys, onecomp_core\n"
        "from onecomp_core import registry\n"
        "assert registry._pm is None\n"
        "assert 'onecomp_core.builtin' not in sys.modules\n"
        "assert 'transformers' not in sys.modules\n"
        "assert 'rtn' in registry.list_methods()\n"
        "assert registry._pm is not None\n"
        "assert registry.sources() and registry.formats()\n"
        "assert 'transformers' not in sys.modules and 'datasets' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_manager_is_created_on_first_use_and_kept():
    assert registry._pm is None
    registry.get_method("rtn")
    pm = registry._pm
    assert pm is not None
    registry.list_methods()
    assert registry._pm is pm
    registry.reset()
    assert registry._pm is None


# -- the built-in plugin -----------------------------------------------------------------
def test_rtn_sources_and_the_hf_format_are_the_builtin_plugin():
    assert "rtn" in registry.list_methods()
    assert registry.get_method("rtn") is RTN
    info = report()["builtin"]
    assert (info.distribution, info.status) == ("onecomp-core", "ok")
    assert info.methods == ["rtn"]
    assert info.sources == BUILTIN_SOURCES
    assert info.formats == ["hf", "gguf"]


def test_create_method_passes_parameters_and_validates_them():
    assert registry.create_method("rtn", wbits=3, groupsize=32).wbits == 3
    with pytest.raises(ConfigError, match="wbits=9"):
        registry.create_method("rtn", wbits=9)


def test_create_method_names_unknown_parameters_and_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['bits'\].*allowed:.*wbits"):
        registry.create_method("rtn", bits=4)


def test_internal_parameters_are_neither_listed_nor_settable():
    assert "name" not in RTN.parameters() and "target_layer_types" not in RTN.parameters()
    with pytest.raises(ConfigError) as err:
        registry.create_method("rtn", target_layer_types=[])
    allowed = str(err.value).split("allowed:")[1]
    assert "target_layer_types" not in allowed and "name" not in allowed.split(", ")


# -- unknown methods -------------------------------------------------------------------
def test_unknown_method_lists_installed_methods():
    with pytest.raises(registry.UnknownMethodError) as err:
        registry.get_method("gptq2")
    message = str(err.value)
    assert "'gptq2'" in message and "rtn" in message
    assert "install the plugin that provides it" in message


def test_unknown_first_party_method_says_which_package_to_install(monkeypatch):
    monkeypatch.setitem(registry.KNOWN_PACKAGES, "gptq2", "onecomp-gptq2")
    with pytest.raises(registry.UnknownMethodError, match=r"pip install onecomp-gptq2"):
        registry.get_method("gptq2")


def test_missing_dbf_points_to_onecomp_dbf():
    if md.entry_points(group="onecomp", name="dbf"):
        pytest.skip("onecomp-dbf is installed")
    with pytest.raises(registry.UnknownMethodError, match=r"pip install onecomp-dbf"):
        registry.get_method("dbf")


def test_unknown_format_lists_installed_formats():
    with pytest.raises(registry.UnknownMethodError, match=r"unknown format 'gguf2'.*hf"):
        registry.get_format("gguf2")


# -- autoload switch and in-process plugins --------------------------------------------
def test_disable_autoload_keeps_only_the_builtin_plugin(
    monkeypatch, fake_plugin, on_sys_path, plugin_source
):
    on_sys_path(
        fake_plugin(
            "onecomp-extra-fixture", "extra", "extra_plugin", plugin_source("provides:extra")
        )
    )
    assert "extra" in registry.list_methods()
    monkeypatch.setenv("ONECOMP_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry.reset()
    assert registry.list_methods() == ["rtn"]
    assert list(report()) == ["builtin"]
    assert sorted(registry.formats()) == ["gguf", "hf"]


class Tiny(RTN):
    method = "tiny_rtn"


def claims_tiny(dataset) -> bool:
    return isinstance(dataset, str) and dataset.startswith("tiny:")


def load_tiny(dataset, config, tokenizer, model):
    return [dataset[5:]]


def save_tiny(artifact, out) -> None:
    raise NotImplementedError


class InProcess:
    @hookimpl
    def onecomp_register(self, register):
        register.add_method(Tiny)
        register.add_calibration_source("tiny", claims_tiny, load_tiny)
        register.add_format("tiny", save_tiny)


def test_registered_plugin_adds_a_method_source_and_format_for_the_block_only():
    with registered_plugin(InProcess(), name="in-process-test") as name:
        assert name == "in-process-test"
        assert registry.get_method("tiny_rtn") is Tiny
        assert registry.source_for("tiny:text") == ("tiny", load_tiny)
        assert registry.get_format("tiny") is save_tiny
        info = report()["in-process-test"]
        assert (info.methods, info.sources, info.formats) == (["tiny_rtn"], ["tiny"], ["tiny"])
    assert "tiny_rtn" not in registry.list_methods()
    assert "tiny" not in registry.formats()
    assert "in-process-test" not in report()
    assert registry.source_for("tiny:text")[0] == "hub"


# -- isolation of broken plugins -------------------------------------------------------
def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_work(
    fake_plugin, on_sys_path, plugin_source
):
    on_sys_path(
        fake_plugin(
            "onecomp-broken-fixture", "broken", "broken_plugin", plugin_source("raises_at_import")
        )
    )
    assert "rtn" in registry.list_methods()
    info = report()["broken"]
    assert (info.status, info.distribution) == ("failed", "onecomp-broken-fixture")
    assert info.error == "RuntimeError: broken on purpose"
    assert report()["builtin"].status == "ok"


def test_a_plugin_whose_hook_raises_is_reported(fake_plugin, on_sys_path, plugin_source):
    on_sys_path(
        fake_plugin("onecomp-hook-fixture", "hooky", "hooky_plugin", plugin_source("hook_raises"))
    )
    assert "rtn" in registry.list_methods()
    info = report()["hooky"]
    assert info.status == "failed" and "hook exploded" in info.error


def test_a_plugin_registering_a_non_method_is_reported(fake_plugin, on_sys_path, plugin_source):
    on_sys_path(
        fake_plugin("onecomp-dict-fixture", "dicty", "dicty_plugin", plugin_source("not_a_method"))
    )
    assert "rtn" in registry.list_methods()
    assert "expected a Method subclass" in report()["dicty"].error


def test_a_misspelled_hook_fails_that_plugin_only(fake_plugin, on_sys_path, plugin_source):
    on_sys_path(
        fake_plugin("onecomp-typo-fixture", "typo", "typo_plugin", plugin_source("misspelled_hook"))
    )
    assert "rtn" in registry.list_methods()
    info = report()["typo"]
    assert info.status == "failed"
    assert "unknown hook 'onecomp_registr'" in info.error


def test_a_plugin_of_the_first_api_is_told_how_to_migrate(fake_plugin, on_sys_path, plugin_source):
    on_sys_path(
        fake_plugin("onecomp-old-fixture", "old", "old_plugin", plugin_source("first_plugin_api"))
    )
    info = report()["old"]
    assert info.status == "failed"
    assert "onecomp_register(register)" in info.error
    assert "rtn" in registry.list_methods()


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("raises_at_import", RuntimeError),
        ("hook_raises", RuntimeError),
        ("misspelled_hook", pluggy.PluginValidationError),
    ],
    ids=["import", "hook", "misspelled"],
)
def test_strict_mode_reraises(monkeypatch, fake_plugin, on_sys_path, plugin_source, source, error):
    on_sys_path(
        fake_plugin("onecomp-strict-fixture", "strict", "strict_plugin", plugin_source(source))
    )
    only_fixtures(monkeypatch)
    monkeypatch.setenv("ONECOMP_STRICT_PLUGINS", "1")
    with pytest.raises(error):
        registry.list_methods()


def test_strict_mode_accepts_working_plugins(monkeypatch, fake_plugin, on_sys_path, plugin_source):
    on_sys_path(
        fake_plugin("onecomp-fine-fixture", "fine", "fine_plugin", plugin_source("provides:fine"))
    )
    only_fixtures(monkeypatch)
    monkeypatch.setenv("ONECOMP_STRICT_PLUGINS", "1")
    assert registry.list_methods() == ["fine", "rtn"]


def only_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the environment's real plugins, so strict mode sees only the test's fixture."""
    every = md.entry_points

    def fixtures_only(**kwargs):
        return [ep for ep in every(**kwargs) if ep.dist and ep.dist.name.endswith("-fixture")]

    monkeypatch.setattr(registry.md, "entry_points", fixtures_only)


# -- duplicates ------------------------------------------------------------------------
def test_a_duplicate_method_is_an_error_naming_both_distributions(
    fake_plugin, on_sys_path, plugin_source
):
    on_sys_path(
        fake_plugin("onecomp-dup-fixture", "rtn_clone", "dup_plugin", plugin_source("provides:rtn"))
    )
    with pytest.raises(registry.PluginError, match="method 'rtn'") as err:
        registry.get_method("rtn")
    assert "onecomp-core" in str(err.value) and "onecomp-dup-fixture" in str(err.value)


def test_a_duplicate_format_is_an_error_naming_both_distributions(
    fake_plugin, on_sys_path, plugin_source
):
    on_sys_path(fake_plugin("onecomp-hf-fixture", "hf2", "hf_plugin", plugin_source("format:hf")))
    with pytest.raises(registry.PluginError, match="format 'hf'") as err:
        registry.get_format("hf")
    assert "onecomp-core" in str(err.value) and "onecomp-hf-fixture" in str(err.value)


def test_one_entry_name_in_two_distributions_hides_neither(fake_plugin, on_sys_path, plugin_source):
    fake_plugin("onecomp-left-fixture", "twin", "left_plugin", plugin_source("provides:twin"))
    on_sys_path(
        fake_plugin("onecomp-right-fixture", "twin", "right_plugin", plugin_source("provides:twin"))
    )
    with pytest.raises(registry.PluginError) as err:
        registry.list_methods()
    assert "onecomp-left-fixture" in str(err.value) and "onecomp-right-fixture" in str(err.value)


def test_no_fixture_plugin_leaks_into_the_environment():
    names = {ep.dist.name for ep in md.entry_points(group="onecomp") if ep.dist}
    assert not any(name.endswith("-fixture") for name in names)
    assert report()["builtin"].status == "ok"
