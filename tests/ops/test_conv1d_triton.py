"""Triton conv1d kernels vs the reference: GPU tests (``-m gpu``) and a tiny TRITON_INTERPRET=1 CPU run.

Run as a script (``python tests/ops/test_conv1d_triton.py``, with TRITON_INTERPRET=1 on CPU) it runs
the small cases on the default device.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch


def _pool(layout: str, s: int, d: int, w: int, dtype: torch.dtype, device: str):
    """Returns (storage, logical [S, D, W-1] view) for a pool layout."""
    if layout == "sglang":
        store = torch.randn(s, d, w - 1, dtype=dtype, device=device)
        return store, store
    if layout == "vllm":
        store = torch.randn(s, w - 1, d, dtype=dtype, device=device)
        return store, store.transpose(1, 2)
    store = torch.randn(2, s, w - 1, d, dtype=dtype, device=device)  # [L, S, W-1, D]
    return store, store[1].transpose(1, 2)


def _tol(dtype: torch.dtype) -> dict:
    return dict(rtol=2e-2, atol=2e-2) if dtype != torch.float32 else dict(rtol=1e-5, atol=1e-5)


def check_prefill(device, lens, d, w, layout, dtype, seed=0, x_strided=False, cu_dtype=torch.int32):
    from deltaserve.ops.conv1d import kernels, reference

    torch.manual_seed(seed)
    b = len(lens)
    s = b + 3
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=cu_dtype, device=device)
    t = int(cu[-1])
    if x_strided:  # x as a column slice of a wider projection output
        x = torch.randn(t, d + 24, dtype=dtype, device=device)[:, 8 : 8 + d]
    else:
        x = torch.randn(t, d, dtype=dtype, device=device)
    weight = torch.randn(d, w, dtype=dtype, device=device)
    bias = torch.randn(d, dtype=dtype, device=device)
    slots = torch.randperm(s, device=device)[:b].to(torch.int32)
    if b > 2:
        slots[::3] = -1  # padding sequences: no state read or write
    has_init = torch.rand(b, device=device) < 0.6
    store_k, pool_k = _pool(layout, s, d, w, dtype, device)
    store_r = store_k.clone()
    pool_r = _view_like(store_r, layout)
    out_k = kernels.causal_conv1d_prefill(
        x, weight, bias, cu_seqlens=cu, conv_state=pool_k, state_slots=slots, has_initial_state=has_init
    )
    out_r = reference.causal_conv1d_prefill(
        x, weight, bias, cu_seqlens=cu, conv_state=pool_r, state_slots=slots, has_initial_state=has_init
    )
    torch.testing.assert_close(out_k, out_r, **_tol(dtype))
    # written rows are exact copies of inputs/initial state; untouched rows bit-identical
    assert torch.equal(store_k, store_r)


def _view_like(store: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "sglang":
        return store
    if layout == "vllm":
        return store.transpose(1, 2)
    return store[1].transpose(1, 2)


def check_decode(device, bsz, t, d, w, layout, dtype, seed=0):
    from deltaserve.ops.conv1d import kernels, reference

    torch.manual_seed(seed)
    s = bsz + 2
    x = torch.randn(bsz, t, d, dtype=dtype, device=device)
    weight = torch.randn(d, w, dtype=dtype, device=device)
    slots = torch.randperm(s, device=device)[:bsz].to(torch.int64)
    slots[1::4] = -1
    store_k, pool_k = _pool(layout, s, d, w, dtype, device)
    store_r = store_k.clone()
    pool_r = _view_like(store_r, layout)
    if t == 1:
        out_k = kernels.causal_conv1d_decode(x[:, 0], weight, None, conv_state=pool_k, state_slots=slots)
        out_r = reference.causal_conv1d_decode(x[:, 0], weight, None, conv_state=pool_r, state_slots=slots)
    else:
        out_k = kernels.causal_conv1d_decode_multi(x, weight, None, conv_state=pool_k, state_slots=slots)
        out_r = reference.causal_conv1d_decode_multi(x, weight, None, conv_state=pool_r, state_slots=slots)
    torch.testing.assert_close(out_k, out_r, **_tol(dtype))
    assert torch.equal(store_k, store_r)
    pad = slots < 0
    assert torch.all(out_k[pad] == 0)


def check_prefill_poison(device, dtype=torch.bfloat16):
    """Output allocated by the kernel wrapper; poison a strided out-of-place view to check coverage."""
    from deltaserve.ops.conv1d import kernels

    torch.manual_seed(3)
    d, w = 200, 4
    cu = torch.tensor([0, 1, 1, 66, 130], dtype=torch.int32, device=device)
    x = torch.randn(130, d, dtype=dtype, device=device)
    pool = torch.full((5, d, w - 1), float("nan"), dtype=dtype, device=device)
    slots = torch.tensor([0, 1, 2, 3], dtype=torch.int32, device=device)
    out = kernels.causal_conv1d_prefill(
        x,
        torch.randn(d, w, dtype=dtype, device=device),
        None,
        cu_seqlens=cu,
        conv_state=pool,
        state_slots=slots,
        has_initial_state=torch.zeros(4, dtype=torch.bool, device=device),
    )
    assert not out.isnan().any()  # no initial state read although the pool is NaN
    assert not pool[:4].isnan().any() and pool[4].isnan().all()  # slot 4 untouched


SMALL_CASES = [
    ("prefill", dict(lens=[1, 0, 5, 2, 40, 3], d=40, w=4, layout="sglang", dtype=torch.float32)),
    ("prefill", dict(lens=[3, 1, 70], d=24, w=3, layout="vllm", dtype=torch.float32, x_strided=True)),
    ("prefill", dict(lens=[2, 9], d=16, w=2, layout="layer_view", dtype=torch.float32, cu_dtype=torch.int64)),
    ("prefill", dict(lens=[0, 2], d=8, w=4, layout="sglang", dtype=torch.float32)),
    ("prefill", dict(lens=[0, 0, 0], d=8, w=4, layout="vllm", dtype=torch.float32)),  # T == 0
    ("decode", dict(bsz=5, t=1, d=40, w=4, layout="vllm", dtype=torch.float32)),
    ("decode", dict(bsz=4, t=3, d=24, w=3, layout="sglang", dtype=torch.float32)),
    ("decode", dict(bsz=3, t=1, d=16, w=2, layout="layer_view", dtype=torch.float32)),
]


def run_small(device: str) -> None:
    for kind, kw in SMALL_CASES:
        (check_prefill if kind == "prefill" else check_decode)(device, **kw)
    check_prefill_poison(device, torch.float32)


def test_triton_interpret_cpu():
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["sglang", "vllm", "layer_view"])
@pytest.mark.parametrize("w", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prefill_gpu(layout, w, dtype):
    lens = [1, 0, 63, 64, 65, 2, 1000, 3, 0, 129]
    check_prefill("cuda", lens, d=8192 // 8 + 8, w=w, layout=layout, dtype=dtype, x_strided=layout == "vllm")


@pytest.mark.gpu
def test_prefill_gpu_long_and_many():
    check_prefill("cuda", [4099], d=2056, w=4, layout="vllm", dtype=torch.bfloat16)
    check_prefill("cuda", [1] * 300 + [17] * 20, d=520, w=4, layout="sglang", dtype=torch.bfloat16)
    check_prefill("cuda", [0, 0, 0], d=64, w=4, layout="vllm", dtype=torch.bfloat16, cu_dtype=torch.int64)
    check_prefill_poison("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["sglang", "vllm", "layer_view"])
@pytest.mark.parametrize("w", [2, 3, 4])
@pytest.mark.parametrize("t", [1, 4])
def test_decode_gpu(layout, w, t):
    check_decode("cuda", 37, t, 1032, w, layout, torch.bfloat16)
    check_decode("cuda", 3, t, 100, w, layout, torch.float32)


if __name__ == "__main__":
    run_small("cuda" if torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET") else "cpu")
    print("ok")
