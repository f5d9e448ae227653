"""SSM-layout detection from the SGLang version (no sglang needed)."""

from __future__ import annotations

import pytest

from deltaserve.plugin.sglang.version import SGLangVersionError, parse_version, ssm_layout_for


@pytest.mark.parametrize(
    ("version", "layout"),
    [("0.5.9", "kv"), ("0.5.9.post1", "kv"), ("0.5.10", "vk"), ("0.5.10.post1", "vk"), ("0.5.23", "vk")],
)
def test_layout_by_version(version: str, layout: str) -> None:
    assert ssm_layout_for(version) == layout


def test_too_old_and_garbage() -> None:
    with pytest.raises(SGLangVersionError, match="0.5.8"):
        ssm_layout_for("0.5.8.post1")
    with pytest.raises(ValueError, match="text"):
        parse_version("main")


def test_parse_orders_numerically() -> None:
    assert parse_version("0.5.10") > parse_version("0.5.9")
