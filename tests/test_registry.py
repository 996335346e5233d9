"""Plugin discovery: built-ins through entry points, a third-party plugin, clear errors."""

import pytest

from hashbench.errors import HashbenchError
from hashbench.hookspecs import hookimpl
from hashbench.registry import AUTOLOAD_ENV, Registry
from hashbench_methods.lsh import LSH

from .plugin_fixture import install_throwaway_plugin


def test_builtins_are_registered_through_entry_points():
    reg = Registry.load()
    assert {"lsh", "itq"} <= set(reg.methods)
    assert {"synthetic", "market1501", "dukemtmc"} <= set(reg.datasets)
    assert {"mobilenetv2", "resnet50"} <= set(reg.backbones)
    for table in (reg.methods, reg.datasets, reg.backbones):
        for klass in table.values():
            assert klass.description and "\n" not in klass.description


def test_unknown_names_list_the_valid_ones():
    reg = Registry.load()
    with pytest.raises(
        HashbenchError, match=r"--methods: unknown method 'nope'; valid: (.*, )?itq, (.*, )?lsh\b"
    ):
        reg.method("nope")
    with pytest.raises(HashbenchError, match=r"--dataset: unknown dataset 'x'; valid: .*market1501"):
        reg.dataset("x")


def test_third_party_entry_point_plugin_is_discovered(tmp_path, monkeypatch):
    install_throwaway_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry.load()
    assert reg.method("throwaway").__module__ == "throwaway_hashbench_plugin"
    # the switch that turns third-party autoload off keeps the built-ins only
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    reg = Registry.load()
    assert "throwaway" not in reg.methods and "lsh" in reg.methods


def test_duplicate_names_are_rejected():
    class Other(LSH):
        pass

    class Plugin:
        @hookimpl
        def hashbench_register_methods(self):
            return [Other]

    with pytest.raises(HashbenchError, match="registered twice"):
        Registry.load(extra_plugins=(Plugin(),))


def test_hooks_that_match_no_spec_are_rejected():
    class Typo:
        @hookimpl
        def hashbench_register_method(self):  # missing "s"
            return []

    with pytest.raises(Exception, match="unknown hook"):
        Registry.load(extra_plugins=(Typo(),))
