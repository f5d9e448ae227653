"""A small Qwen-style byte-level BPE tokenizer, trained deterministically on a built-in text.

Ids: 0..255 are the 256 byte symbols (id == byte value), then the learned merges in merge order,
then the special tokens. The model vocab may be larger than the tokenizer (padded rows), like the
official releases. Training is our own greedy BPE in Python (ties broken by the pair itself), so the
files are identical across processes and machines; `tokenizers` only encodes.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path

# (content, special) in id order after the merges. Qwen marks <think>/<tool_call> as non-special
# added tokens (they survive skip_special_tokens).
SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<think>", False),
    ("</think>", False),
)
DEFAULT_NUM_MERGES = 200

# The Qwen2 pre-tokenisation regex (words, single digits, punctuation runs, newlines, spaces).
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set content = message['content'] %}"
    "{%- else %}{%- set ns = namespace(text='') %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{%- set ns.text = ns.text + part['text'] %}"
    "{%- elif part['type'] == 'image' %}"
    "{%- set ns.text = ns.text + '<|vision_start|><|image_pad|><|vision_end|>' %}"
    "{%- elif part['type'] == 'video' %}"
    "{%- set ns.text = ns.text + '<|vision_start|><|video_pad|><|vision_end|>' %}"
    "{%- endif %}{%- endfor %}{%- set content = ns.text %}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' and message.get('reasoning_content') %}"
    "{{- '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' }}{%- endif %}"
    "{{- content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)

_TRAINING_TEXT = """\
The small model reads a prompt, one token after another, and writes the next token at the end.
Every layer keeps a state: attention layers keep keys and values for each position, while the
linear layers fold the whole history into one matrix per head and update it with a decay and a
delta rule. Three linear layers are followed by one full attention layer, and the pattern repeats.
When a batch mixes new prompts with requests that are already decoding, the engine flattens all
tokens into one sequence and records where each request starts and ends.

Tests compare the outputs with a reference: the same weights, the same prompt, the same tokens.
If the numbers differ by more than a tiny tolerance, something in the kernel or the loader is wrong.
A good test fails for a reason that can be named: a missing tensor, a wrong shape, a swapped head.
Weights are random but seeded, so every run writes the same files and reads the same values.

def greedy(logits):
    best = 0
    for index, value in enumerate(logits):
        if value > logits[best]:
            best = index
    return best

for step in range(32):
    token = greedy(model(tokens))
    tokens.append(token)
    print(step, token, "done" if token == eos else "next")

Numbers: 0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024 2048 4096 3.14159 2.71828 1e-6.
Punctuation and symbols: ( ) [ ] { } < > = + - * / % & | ^ ~ ! ? , . ; : ' " # @ $ _ \\ `
Questions and answers: What is the capital of France? Paris is the capital of France.
How many layers does the model have? It has four layers, and the last one uses attention.
Please write a short story about a robot who learns to paint the sea at night.
The robot mixed blue and grey, watched the waves, and painted slowly until the morning came.
"""


@functools.lru_cache(maxsize=1)
def _byte_symbols() -> tuple[str, ...]:
    """The byte-level alphabet: symbol for byte b at index b (printable bytes map to themselves)."""
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return tuple(symbols[b] for b in range(256))


def _pre_tokenize(text: str) -> list[str]:
    """Split like the tokenizer does, then map each piece's bytes to byte symbols."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    split = pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False)
    sym = _byte_symbols()
    text = normalizers.NFC().normalize_str(text)
    return ["".join(sym[b] for b in piece.encode("utf-8")) for piece, _ in split.pre_tokenize_str(text)]


@functools.lru_cache(maxsize=4)
def train_merges(num_merges: int = DEFAULT_NUM_MERGES) -> tuple[tuple[str, str], ...]:
    """Greedy BPE merges over the built-in text: most frequent pair first, ties by the pair itself."""
    words: dict[tuple[str, ...], int] = Counter(tuple(w) for w in _pre_tokenize(_TRAINING_TEXT))
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, freq in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        new_words: dict[tuple[str, ...], int] = {}
        for word, freq in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            key = tuple(out)
            new_words[key] = new_words.get(key, 0) + freq
        words = new_words
    return tuple(merges)


def tokenizer_size(model_vocab_size: int) -> int:
    """Number of tokenizer ids for a model vocab (bytes + merges + specials <= model vocab)."""
    return 256 + _num_merges(model_vocab_size) + len(SPECIAL_TOKENS)


def _num_merges(model_vocab_size: int) -> int:
    room = model_vocab_size - 256 - len(SPECIAL_TOKENS)
    if room < 0:
        raise ValueError(
            f"vocab_size: {model_vocab_size} is smaller than the 256 byte tokens + "
            f"{len(SPECIAL_TOKENS)} special tokens of the test tokenizer"
        )
    return min(DEFAULT_NUM_MERGES, room)


def special_token_ids(model_vocab_size: int) -> dict[str, int]:
    """Id of each special token for a model of this vocab size."""
    first = 256 + _num_merges(model_vocab_size)
    return {content: first + i for i, (content, _) in enumerate(SPECIAL_TOKENS)}


def byte_level_bpe(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    pretokenize_regex: str,
    added_tokens: list[tuple[str, bool]],
):
    """A Qwen-style byte-level BPE `tokenizers.Tokenizer`: NFC, regex split, byte-level mapping, and
    `added_tokens` as (content, special) appended after the base vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=list(merges),
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pretokenize_regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_tokens([AddedToken(c, special=sp, normalized=False) for c, sp in added_tokens])
    return tok


def build_tokenizer(model_vocab_size: int):
    """The `tokenizers.Tokenizer` for a model vocab size (deterministic)."""
    merges = train_merges(DEFAULT_NUM_MERGES)[: _num_merges(model_vocab_size)]
    vocab = {s: i for i, s in enumerate(_byte_symbols())}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    if len(vocab) != 256 + len(merges):
        raise AssertionError("BPE merges produced a duplicate token")  # cannot happen for greedy BPE
    return byte_level_bpe(vocab, merges, PRETOKENIZE_REGEX, list(SPECIAL_TOKENS))


def write_tokenizer_config(
    out_dir: Path, added_tokens: list[tuple[int, str, bool]], chat_template: str
) -> None:
    """Write a Qwen2Tokenizer-style `tokenizer_config.json`; `added_tokens` are (id, content, special)."""
    added = {
        str(i): {
            "content": c,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": sp,
        }
        for i, c, sp in added_tokens
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [c for _, c, sp in added_tokens if sp and c != "<|endoftext|>"],
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (Path(out_dir) / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_tokenizer(out_dir: Path, model_vocab_size: int) -> dict[str, int]:
    """Write tokenizer.json, tokenizer_config.json, vocab.json and merges.txt; return special ids."""
    out_dir = Path(out_dir)
    tok = build_tokenizer(model_vocab_size)
    tok.save(str(out_dir / "tokenizer.json"))
    tok.model.save(str(out_dir))  # vocab.json + merges.txt, as the releases also ship them
    ids = special_token_ids(model_vocab_size)
    write_tokenizer_config(out_dir, [(ids[c], c, sp) for c, sp in SPECIAL_TOKENS], CHAT_TEMPLATE)
    return ids
