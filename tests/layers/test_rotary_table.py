"""The cached cos/sin table: one gather per forward gives `rope_cos_sin`'s values (plain and mRoPE)."""

from __future__ import annotations

import pytest
import torch

from deltaserve.layers.rotary import RotaryEmbedding
from deltaserve.ops.rope import rope_cos_sin, rope_cos_sin_lookup, rope_cos_sin_table, rope_table_columns

# fp32 rounding of cos/sin in [-1, 1]: two ulps at 1.0 (the table is computed by the same ops, so it
# is bit-identical wherever the elementwise kernels are; this bound only allows for their tails)
ATOL = 2.4e-7


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=0.0, atol=ATOL)


@pytest.mark.parametrize("rd,theta,max_pos", [(64, 1e7, 262144), (16, 1e4, 8192), (8, 1e6, 100)])
def test_lookup_matches_rope_cos_sin(rd: int, theta: float, max_pos: int) -> None:
    table = rope_cos_sin_table(max_pos, rd, theta)
    assert table.shape == (max_pos, 2 * rd) and table.dtype == torch.float32
    g = torch.Generator().manual_seed(0)
    pos = torch.cat([torch.tensor([0, 1, max_pos - 1]), torch.randint(0, max_pos, (200,), generator=g)])
    cos, sin = rope_cos_sin_lookup(table, pos)
    ref_cos, ref_sin = rope_cos_sin(pos, rd, theta)
    assert cos.shape == (pos.numel(), rd) and cos.stride(-1) == 1
    _close(cos, ref_cos)
    _close(sin, ref_sin)
    cos32, _ = rope_cos_sin_lookup(table, pos.to(torch.int32))  # int32 positions (host layouts)
    assert torch.equal(cos32, cos)


@pytest.mark.parametrize(
    "interleaved,section", [(True, [11, 11, 10]), (False, [16, 8, 8]), (True, [3, 3, 2])]
)
def test_mrope_lookup_matches_rope_cos_sin(interleaved: bool, section: list[int]) -> None:
    rd = 2 * sum(section) if not interleaved else 64
    table = rope_cos_sin_table(5000, rd, 1e7)
    cols = rope_table_columns(rd, section, interleaved)
    g = torch.Generator().manual_seed(1)
    pos3 = torch.randint(0, 5000, (3, 41), generator=g)  # distinct t/h/w positions
    cos, sin = rope_cos_sin_lookup(table, pos3, mrope_columns=cols)
    ref_cos, ref_sin = rope_cos_sin(pos3, rd, 1e7, mrope_section=section, mrope_interleaved=interleaved)
    _close(cos, ref_cos)
    _close(sin, ref_sin)
    # text-only: [T] positions with an mRoPE config are plain RoPE (all axes equal), one gather
    pos = pos3[0]
    cos1, sin1 = rope_cos_sin_lookup(table, pos)
    ref1 = rope_cos_sin(pos, rd, 1e7, mrope_section=section, mrope_interleaved=interleaved)
    _close(cos1, ref1[0])
    _close(sin1, ref1[1])
    cos3, _ = rope_cos_sin_lookup(table, pos.expand(3, -1), mrope_columns=cols)
    _close(cos3, cos1)


def test_lookup_errors() -> None:
    table = rope_cos_sin_table(16, 8, 1e4)
    with pytest.raises(ValueError, match="positions must be an integer"):
        rope_cos_sin_lookup(table, torch.arange(3).float())
    with pytest.raises(ValueError, match="mrope_columns"):
        rope_cos_sin_lookup(table, torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="mrope_columns must be"):
        rope_cos_sin_lookup(table, torch.zeros(3, 4, dtype=torch.int64), mrope_columns=torch.zeros(8).long())
    with pytest.raises(ValueError, match="table must be"):
        rope_cos_sin_lookup(table[:, :6], torch.arange(3))
    with pytest.raises(IndexError):
        rope_cos_sin_lookup(table, torch.tensor([16]))  # past max_positions
    with pytest.raises(ValueError, match="max_positions"):
        rope_cos_sin_table(0, 8, 1e4)
    with pytest.raises(ValueError, match="rotary_dim"):
        rope_cos_sin_table(4, 7, 1e4)


def test_rotary_module_table_is_a_buffer_not_a_weight() -> None:
    rot = RotaryEmbedding(16, 1e6, max_positions=64, mrope_section=(3, 3, 2), mrope_interleaved=True)
    assert not list(rot.parameters()) and not rot.state_dict()  # nothing for the loader to account
    assert rot.cos_sin_cache.shape == (64, 32)
    pos3 = torch.randint(0, 64, (3, 5))
    cos, sin = rot(pos3)
    ref = rope_cos_sin(pos3, 16, 1e6, mrope_section=[3, 3, 2], mrope_interleaved=True)
    _close(cos, ref[0])
    _close(sin, ref[1])
    plain = RotaryEmbedding(16, 1e6, max_positions=64)
    with pytest.raises(ValueError, match="without mrope_section"):
        plain(pos3)


@pytest.mark.gpu
def test_cuda_table_matches_and_is_graph_capturable() -> None:
    dev = torch.device("cuda")
    rot = RotaryEmbedding(64, 1e7, max_positions=262144, device=dev)
    pos = torch.randint(0, 262144, (256,), device=dev)
    cos, sin = rot(pos)
    ref_cos, ref_sin = rope_cos_sin(pos, 64, 1e7)
    _close(cos, ref_cos)  # same ops on the same device: expected bit-identical
    _close(sin, ref_sin)
    static = torch.zeros(8, dtype=torch.int64, device=dev)
    rot(static)  # warm-up outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_cos, _ = rot(static)
    static.copy_(pos[:8])
    graph.replay()
    torch.cuda.synchronize()
    _close(out_cos, ref_cos[:8])
