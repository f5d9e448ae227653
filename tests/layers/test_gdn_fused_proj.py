"""GDN `in_proj_qkvz` + `in_proj_ba` as one GEMM: one storage, HF parameter names, strict loading,
and a two-GEMM fallback whenever the pair is not (or no longer) fused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deltaserve.layers.gdn import GatedDeltaNet
from deltaserve.layers.linear import ReplicatedLinear, fuse_weights, weights_fused
from deltaserve.models.registry import load_model
from deltaserve.ops.fp8 import FP8_DTYPE
from deltaserve.testing import SPECS
from deltaserve.testing.harness import StaticRunner


def _gdn(dtype: torch.dtype = torch.float32) -> GatedDeltaNet:
    return GatedDeltaNet(0, 32, 2, 4, 8, 8, 4, 1e-6, interleaved_checkpoint=True, dtype=dtype, device="cpu")


def _two_gemms(gdn: GatedDeltaNet, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    mixed, z = gdn.in_proj_qkvz.split(gdn.in_proj_qkvz(x))
    b, a = gdn.in_proj_ba.split(gdn.in_proj_ba(x))
    return mixed, z, b, a


def _owns_storage(p: torch.Tensor) -> bool:
    return p.untyped_storage().nbytes() == p.numel() * p.element_size()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_are_views_of_one_storage_and_one_gemm_gives_both(dtype: torch.dtype) -> None:
    gdn = _gdn(dtype)
    qkvz, ba = gdn.in_proj_qkvz.weight, gdn.in_proj_ba.weight
    merged = gdn._in_proj_weight
    assert merged is not None and weights_fused(merged, (gdn.in_proj_qkvz, gdn.in_proj_ba))
    assert merged.shape == (qkvz.shape[0] + ba.shape[0], 32)
    assert qkvz.untyped_storage().data_ptr() == ba.untyped_storage().data_ptr() == merged.data_ptr()
    assert isinstance(qkvz, nn.Parameter) and {n for n, _ in gdn.named_parameters()} >= {
        "in_proj_qkvz.weight",
        "in_proj_ba.weight",
    }
    with torch.no_grad():  # a loader writes through the parameter: the fused GEMM sees it
        qkvz.weight_loader(qkvz, torch.randn(qkvz.shape).to(dtype))
        ba.weight_loader(ba, torch.randn(ba.shape).to(dtype))
    x = torch.randn(5, 32).to(dtype)
    fused = gdn._in_proj(x)
    ref = _two_gemms(gdn, x)
    assert [t.shape for t in fused] == [t.shape for t in ref] == [(5, 64), (5, 32), (5, 4), (5, 4)]
    for got, want in zip(fused, ref):
        torch.testing.assert_close(got, want, rtol=1e-6 if dtype == torch.float32 else 1e-2, atol=1e-5)


def test_replaced_weight_falls_back_to_two_gemms_and_refuse_frees_the_old_storage() -> None:
    gdn = _gdn()
    x = torch.randn(3, 32)
    new = torch.randn(gdn.in_proj_ba.weight.shape)
    gdn.in_proj_ba.weight = nn.Parameter(new.clone(), requires_grad=False)  # no longer a view
    assert not weights_fused(gdn._in_proj_weight, (gdn.in_proj_qkvz, gdn.in_proj_ba))
    torch.testing.assert_close(gdn._in_proj(x)[2], x @ new[:4].T)  # b from the new weight
    gdn.fuse_projections()
    assert weights_fused(gdn._in_proj_weight, (gdn.in_proj_qkvz, gdn.in_proj_ba))
    torch.testing.assert_close(gdn._in_proj(x)[2], x @ new[:4].T)


def test_ineligible_pair_is_unfused_with_own_storage() -> None:
    a = ReplicatedLinear(8, 4)
    b = ReplicatedLinear(8, 2)
    merged = fuse_weights([a, b])
    assert merged is not None and not _owns_storage(b.weight)
    a.weight = nn.Parameter(torch.zeros(4, 8, dtype=torch.bfloat16), requires_grad=False)  # dtype differs
    assert fuse_weights([a, b]) is None
    assert _owns_storage(a.weight) and _owns_storage(b.weight)  # the old merged storage is released
    biased = ReplicatedLinear(8, 2, bias=True)
    assert fuse_weights([ReplicatedLinear(8, 4), biased]) is None


def test_to_keeps_the_pair_fused_and_a_deepcopy_stays_correct() -> None:
    gdn = _gdn()
    with torch.no_grad():
        for p in gdn.parameters():
            p.normal_()
    x = torch.randn(2, 32).to(torch.bfloat16)
    half = gdn.to(torch.bfloat16)  # _apply gives each parameter new storage; the pair is fused again
    assert weights_fused(half._in_proj_weight, (half.in_proj_qkvz, half.in_proj_ba))
    assert half._in_proj_weight.dtype == torch.bfloat16
    want = _two_gemms(half, x)
    for got, ref in zip(half._in_proj(x), want):
        torch.testing.assert_close(got, ref, rtol=1e-2, atol=1e-2)
    clone = copy.deepcopy(half)
    for got, ref in zip(clone._in_proj(x), want):  # fused or not, the values are right
        torch.testing.assert_close(got, ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", ["qwen3-next-a", "qwen3.5-dense-a"])
def test_loaded_model_is_fused_and_strict_loading_is_unchanged(tiny_checkpoint, name: str) -> None:
    model = load_model(tiny_checkpoint(name))
    gdns = [m for m in model.modules() if isinstance(m, GatedDeltaNet)]
    assert gdns
    for gdn in gdns:
        assert weights_fused(gdn._in_proj_weight, (gdn.in_proj_qkvz, gdn.in_proj_ba))
    # the merged storage is not a parameter or buffer: nothing new for the loader to account for
    names = {n for n, _ in model.named_parameters()}
    assert not any("_in_proj_weight" in n for n in names) and any(
        n.endswith("in_proj_ba.weight") for n in names
    )
    # loading again through the model's own load_weights (the plugins' path) keeps the fusion
    before = [gdn._in_proj_weight.data_ptr() for gdn in gdns]
    loaded = model.load_weights((n, p.detach().clone()) for n, p in model.named_parameters())
    assert loaded == names
    assert [gdn._in_proj_weight.data_ptr() for gdn in gdns] == before
    # one fused forward equals the two-GEMM forward (token-exact parity with HF is tests/models)
    runner = StaticRunner(model)
    fused_logits = runner.step([(0, [3, 5, 7, 9])])[0]
    for gdn in gdns:
        gdn._in_proj_weight = None  # forces the two-GEMM path
    plain_logits = StaticRunner(model).step([(0, [3, 5, 7, 9])])[0]
    torch.testing.assert_close(fused_logits, plain_logits, rtol=1e-5, atol=1e-5)


def test_fp8_model_keeps_two_gemms_and_no_dead_storage(tiny_checkpoint) -> None:
    model = load_model(tiny_checkpoint(SPECS["qwen3-next-a"].replace(quantize_fp8=True)))
    gdn = next(m for m in model.modules() if isinstance(m, GatedDeltaNet))
    assert gdn.in_proj_qkvz.weight.dtype == FP8_DTYPE and gdn.in_proj_ba.weight.dtype == torch.float32
    assert gdn._in_proj_weight is None
    assert _owns_storage(gdn.in_proj_ba.weight)  # the bf16/fp32 qkvz rows it shared are freed


@pytest.mark.gpu
def test_cuda_fused_projection_matches_two_gemms() -> None:
    gdn = GatedDeltaNet(
        0, 2048, 16, 32, 128, 128, 4, 1e-6, interleaved_checkpoint=True, dtype=torch.bfloat16, device="cuda"
    )
    with torch.no_grad():
        for p in gdn.parameters():
            p.normal_(std=0.02)
    assert weights_fused(gdn._in_proj_weight, (gdn.in_proj_qkvz, gdn.in_proj_ba))
    for t in (1, 7, 64):
        x = torch.randn(t, 2048, dtype=torch.bfloat16, device="cuda")
        for got, want in zip(gdn._in_proj(x), _two_gemms(gdn, x)):
            torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1e-3)
