"""Token embedding and LM head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deltaserve.layers.weights import make_param
from deltaserve.ops import gemv


class VocabEmbedding(nn.Module):
    """`weight [vocab, hidden]`; lookup of token ids."""

    def __init__(self, vocab_size: int, hidden_size: int, *, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.weight = make_param((vocab_size, hidden_size), dtype, device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, H]
        return F.embedding(input_ids, self.weight)


class LMHead(nn.Module):
    """`logits = h Wᵀ` in fp32 accumulation; may share its weight with the embedding (tied)."""

    def __init__(self, vocab_size: int, hidden_size: int, *, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.vocab_size = vocab_size
        self.weight = make_param((vocab_size, hidden_size), dtype, device)

    def tie_to(self, embedding: VocabEmbedding) -> None:
        self.weight = embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N, V] fp32
        return gemv.linear(hidden, self.weight).float()
