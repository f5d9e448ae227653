"""`python -m deltaserve.bench.offline --fp8` on a tiny random config (CPU smoke run)."""

from __future__ import annotations

import pytest

from deltaserve.bench import offline


def test_fp8_run_serves_the_quantised_model(tmp_path) -> None:
    out = tmp_path / "r.json"
    r = offline.main(
        ["--model", "tiny:qwen3-next-a", "--device", "cpu", "--batch", "1", "--fp8", "--input-len", "6",
         "--output-len", "3", "--json", str(out)]
    )  # fmt: skip
    assert r["fp8"] is True and out.exists()
    run = r["runs"]["1"]
    assert "hf" not in run  # transformers would run bf16 weights: no baseline
    assert run["deltaserve"]["output_tok_s"] > 0 and run["deltaserve"]["tpot_ms"]["p50"] > 0


def test_fp8_refuses_a_checkpoint_dir(tmp_path) -> None:
    with pytest.raises(SystemExit):
        offline.main(["--model", str(tmp_path), "--fp8"])
