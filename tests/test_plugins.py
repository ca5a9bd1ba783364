"""The plugin registry: lazy discovery, isolation of broken plugins, clear errors."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys

import pluggy
import pytest

from onecomp_core import create_quantizer, get_quantizer, hookimpl, list_quantizers, plugins
from onecomp_core.rtn import RTN
from onecomp_core.testing import registered_plugin

pytestmark = pytest.mark.usefixtures("fresh_registry")


def report() -> dict[str, plugins.PluginInfo]:
    return {info.name: info for info in plugins.plugin_report()}


# -- lazy loading ----------------------------------------------------------------------
def test_importing_onecomp_core_loads_no_plugin_and_no_transformers():
    code = (
        "import sys, onecomp_core\n"
        "from onecomp_core import plugins\n"
        "assert plugins._pm is None\n"
        "assert 'onecomp_core.rtn.plugin' not in sys.modules\n"
        "assert 'transformers' not in sys.modules\n"
        "assert 'rtn' in onecomp_core.list_quantizers()\n"
        "assert plugins._pm is not None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_manager_is_created_on_first_use_and_kept():
    assert plugins._pm is None
    get_quantizer("rtn")
    pm = plugins._pm
    assert pm is not None
    list_quantizers()
    assert plugins._pm is pm
    plugins.reset()
    assert plugins._pm is None


# -- the built-in method ---------------------------------------------------------------
def test_rtn_is_a_default_plugin_of_the_core():
    assert "rtn" in list_quantizers()
    assert get_quantizer("rtn") is RTN
    assert report()["rtn"].distribution == "onecomp-core"
    assert report()["rtn"].methods == ["rtn"]


def test_create_quantizer_passes_parameters_and_validates_them():
    assert create_quantizer("rtn", wbits=3, groupsize=32).wbits == 3
    with pytest.raises(ValueError, match="wbits=9"):
        create_quantizer("rtn", wbits=9)


def test_create_quantizer_names_unknown_parameters_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['bits'\].*allowed:.*wbits"):
        create_quantizer("rtn", bits=4)


# -- unknown methods -------------------------------------------------------------------
def test_unknown_method_lists_installed_methods():
    with pytest.raises(plugins.UnknownMethodError) as err:
        get_quantizer("gptq2")
    message = str(err.value)
    assert "'gptq2'" in message and "rtn" in message
    assert "install the plugin that provides it" in message


def test_unknown_first_party_method_says_which_package_to_install(monkeypatch):
    monkeypatch.setitem(plugins.KNOWN_PACKAGES, "gptq2", "onecomp-gptq2")
    with pytest.raises(plugins.UnknownMethodError, match=r"pip install onecomp-gptq2"):
        get_quantizer("gptq2")


def test_missing_dbf_points_to_onecomp_dbf():
    if md.entry_points(group="onecomp", name="dbf"):
        pytest.skip("onecomp-dbf is installed")
    with pytest.raises(plugins.UnknownMethodError, match=r"pip install onecomp-dbf"):
        get_quantizer("dbf")


# -- autoload switch and in-process plugins --------------------------------------------
def test_disable_autoload_keeps_only_the_builtin_methods(
    monkeypatch, fake_plugin, on_sys_path, plugin_source
):
    on_sys_path(
        fake_plugin(
            "onecomp-extra-fixture", "extra", "extra_plugin", plugin_source("provides:extra")
        )
    )
    assert "extra" in list_quantizers()
    monkeypatch.setenv("ONECOMP_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins.reset()
    assert list_quantizers() == ["rtn"]
    assert "extra" not in report()


def test_registered_plugin_adds_a_method_for_the_block_only():
    class InProcess:
        @hookimpl
        def onecomp_quantizers(self):
            return [Tiny]

    class Tiny(RTN):
        method = "tiny_rtn"

    with registered_plugin(InProcess(), name="in-process-test") as name:
        assert name == "in-process-test"
        assert get_quantizer("tiny_rtn") is Tiny
        assert report()["in-process-test"].methods == ["tiny_rtn"]
    assert "tiny_rtn" not in list_quantizers()
    assert "in-process-test" not in report()


# -- isolation of broken plugins -------------------------------------------------------
def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_work(
    fake_plugin, on_sys_path, plugin_source
):
    on_sys_path(
        fake_plugin(
            "onecomp-broken-fixture", "broken", "broken_plugin", plugin_source("raises_at_import")
        )
    )
    assert "rtn" in list_quantizers()
    info = report()["broken"]
    assert (info.status, info.distribution) == ("failed", "onecomp-broken-fixture")
    assert info.error == "RuntimeError: broken on purpose"
    assert report()["rtn"].status == "ok"


def test_a_plugin_whose_hook_raises_is_reported(fake_plugin, on_sys_path, plugin_source):
    on_sys_path(
        fake_plugin("onecomp-hook-fixture", "hooky", "hooky_plugin", plugin_source("hook_raises"))
    )
    assert "rtn" in list_quantizers()
    info = report()["hooky"]
    assert info.status == "failed" and "hook exploded" in info.error


def test_a_plugin_returning_a_non_quantizer_is_reported(fake_plugin, on_sys_path, plugin_source):
    on_sys_path(
        fake_plugin(
            "onecomp-dict-fixture", "dicty", "dicty_plugin", plugin_source("not_a_quantizer")
        )
    )
    assert "rtn" in list_quantizers()
    assert "not a Quantizer subclass" in report()["dicty"].error


def test_a_misspelled_hook_fails_that_plugin_only(fake_plugin, on_sys_path, plugin_source):
    on_sys_path(
        fake_plugin("onecomp-typo-fixture", "typo", "typo_plugin", plugin_source("misspelled_hook"))
    )
    assert "rtn" in list_quantizers()
    info = report()["typo"]
    assert info.status == "failed"
    assert "unknown hook 'onecomp_quantizer'" in info.error


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
        list_quantizers()


def test_strict_mode_accepts_working_plugins(monkeypatch, fake_plugin, on_sys_path, plugin_source):
    on_sys_path(
        fake_plugin("onecomp-fine-fixture", "fine", "fine_plugin", plugin_source("provides:fine"))
    )
    only_fixtures(monkeypatch)
    monkeypatch.setenv("ONECOMP_STRICT_PLUGINS", "1")
    assert list_quantizers() == ["fine", "rtn"]


def only_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the environment's real plugins, so strict mode sees only the test's fixture."""
    every = md.entry_points

    def fixtures_only(**kwargs):
        return [ep for ep in every(**kwargs) if ep.dist and ep.dist.name.endswith("-fixture")]

    monkeypatch.setattr(plugins.md, "entry_points", fixtures_only)


# -- duplicates ------------------------------------------------------------------------
def test_a_duplicate_method_is_an_error_naming_both_distributions(
    fake_plugin, on_sys_path, plugin_source
):
    on_sys_path(
        fake_plugin("onecomp-dup-fixture", "rtn_clone", "dup_plugin", plugin_source("provides:rtn"))
    )
    with pytest.raises(plugins.PluginError, match="'rtn'") as err:
        get_quantizer("rtn")
    assert "onecomp-core" in str(err.value) and "onecomp-dup-fixture" in str(err.value)


def test_a_duplicate_entry_name_is_an_error_naming_both_distributions(
    fake_plugin, on_sys_path, plugin_source
):
    on_sys_path(
        fake_plugin(
            "onecomp-same-name-fixture", "rtn", "same_plugin", plugin_source("provides:rtn")
        )
    )
    with pytest.raises(plugins.PluginError) as err:
        list_quantizers()
    assert "onecomp-core" in str(err.value) and "onecomp-same-name-fixture" in str(err.value)


def test_no_fixture_plugin_leaks_into_the_environment():
    names = {ep.dist.name for ep in md.entry_points(group="onecomp") if ep.dist}
    assert not any(name.endswith("-fixture") for name in names)
    assert report()["rtn"].status == "ok"
