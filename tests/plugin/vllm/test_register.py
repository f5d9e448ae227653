"""`register()` (the `vllm.general_plugins` entry point) against a stand-in `vllm.ModelRegistry`."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from deltaserve.plugin import vllm as plugin

ARCHS = {
    "Qwen3NextForCausalLM",
    "Qwen3_5ForCausalLM",
    "Qwen3_5MoeForCausalLM",
    "Qwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForConditionalGeneration",
}


class _Registry:
    def __init__(self) -> None:
        self.models: dict[str, object] = {"Qwen3NextForCausalLM": "vllm-builtin"}
        self.calls = 0

    def register_model(self, arch: str, cls: object) -> None:
        self.calls += 1
        self.models[arch] = cls


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> _Registry:
    reg = _Registry()
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(ModelRegistry=reg))
    monkeypatch.delenv(plugin.DISABLE_ENV, raising=False)
    return reg


def test_register_is_lazy_overriding_and_reentrant(registry: _Registry) -> None:
    plugin.register()
    plugin.register()
    assert set(registry.models) == ARCHS
    for arch in ARCHS:
        assert registry.models[arch] == f"deltaserve.plugin.vllm.models:{arch}"  # string: imported lazily
    assert registry.calls == 2 * len(ARCHS)
    assert "deltaserve.plugin.vllm.models" not in sys.modules  # nothing imported at registration


@pytest.mark.parametrize("value", ["1", "true", "ON"])
def test_disable_variable_turns_registration_off(registry: _Registry, monkeypatch, value: str) -> None:
    monkeypatch.setenv(plugin.DISABLE_ENV, value)
    plugin.register()
    assert registry.calls == 0 and registry.models == {"Qwen3NextForCausalLM": "vllm-builtin"}


@pytest.mark.parametrize("value", ["0", "", "false"])
def test_disable_variable_off_values(registry: _Registry, monkeypatch, value: str) -> None:
    monkeypatch.setenv(plugin.DISABLE_ENV, value)
    plugin.register()
    assert registry.calls == len(ARCHS)


def test_bad_disable_value_names_the_variable(registry: _Registry, monkeypatch) -> None:
    monkeypatch.setenv(plugin.DISABLE_ENV, "maybe")
    with pytest.raises(ValueError, match=plugin.DISABLE_ENV):
        plugin.register()


def test_importing_deltaserve_and_the_plugin_does_not_import_vllm() -> None:
    code = "import sys, deltaserve, deltaserve.plugin.vllm; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
