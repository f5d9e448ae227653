"""SGLang's own registry, with SGLANG_EXTERNAL_MODEL_PACKAGE set, resolves every served
architecture to our classes; our package imports strictly (SGLang would only log a failure)."""

from __future__ import annotations

import os

from deltaserve.models.registry import SUPPORTED_ARCHITECTURES
from deltaserve.plugin.sglang import doctor


def test_env_points_at_our_package(sglang_runtime) -> None:
    assert os.environ["SGLANG_EXTERNAL_MODEL_PACKAGE"] == doctor.PACKAGE


def test_strict_import_and_resolution(sglang_runtime) -> None:
    from sglang.srt.models.registry import import_model_classes

    classes = import_model_classes(doctor.PACKAGE, strict=True)
    assert sorted(classes) == sorted(SUPPORTED_ARCHITECTURES)
    rows = doctor.resolve_all()
    assert [r.architecture for r in rows] == list(SUPPORTED_ARCHITECTURES)
    bad = [r for r in rows if not r.ours]
    assert not bad, bad
    for r in rows:
        assert (
            r.resolved
            == f"{doctor.PACKAGE}.{'qwen3_next' if 'Next' in r.architecture else 'qwen3_5'}.{r.architecture}"
        )


def test_ours_win_over_builtins_after_defaults_load(sglang_runtime) -> None:
    """SGLang imports its built-in models lazily; merging them must not displace ours."""
    from sglang.srt.models.registry import ModelRegistry

    ModelRegistry.get_supported_archs()  # forces the built-in import
    for arch in SUPPORTED_ARCHITECTURES:
        cls, _ = ModelRegistry.resolve_model_cls([arch])
        assert cls.__module__.startswith(doctor.PACKAGE + "."), (arch, cls.__module__)


def test_doctor_main_reports_ok(sglang_runtime, capsys) -> None:
    assert doctor.main() == 0
    out = capsys.readouterr().out
    for arch in SUPPORTED_ARCHITECTURES:
        assert f"ok  {arch}" in out
