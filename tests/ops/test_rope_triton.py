"""Triton rope kernels vs the reference: GPU tests (``-m gpu``) and a tiny TRITON_INTERPRET=1 CPU run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch


def _tol(dtype: torch.dtype) -> dict:
    return dict(rtol=1.6e-2, atol=1.6e-2) if dtype != torch.float32 else dict(rtol=2e-5, atol=2e-5)


def check_apply_rotary(device, t, h, d, rd, dtype, seed=0):
    from deltaserve.ops.rope import kernels, reference

    torch.manual_seed(seed)
    x = torch.randn(t, h, 2 * d, dtype=dtype, device=device)[:, :, :d]  # strided view
    pos = torch.randint(0, 1 << 17, (t,), device=device)
    cos, sin = reference.rope_cos_sin(pos, rd, 1e7)
    torch.testing.assert_close(
        kernels.apply_rotary(x, cos, sin), reference.apply_rotary(x, cos, sin), **_tol(dtype)
    )


def check_qk_norm_rope(device, t, hq, hk, d, rd, dtype, seed=0, cache=True, block_size=16, mrope=False):
    from deltaserve.ops.rope import kernels, reference

    torch.manual_seed(seed)
    qg = torch.randn(t, hq, 2 * d, dtype=dtype, device=device)  # q and gate per head, as q_proj gives
    q = qg[:, :, :d]
    k = torch.randn(t, hk, d, dtype=dtype, device=device) * 3
    v = torch.randn(t, hk, d, dtype=dtype, device=device)
    qw = torch.randn(d, dtype=dtype, device=device) * 0.2
    kw = torch.randn(d, dtype=dtype, device=device) * 0.2
    if mrope:
        pos = torch.randint(0, 5000, (3, t), device=device)
        cos, sin = reference.rope_cos_sin(pos, rd, 1e7, mrope_section=[11, 11, 10], mrope_interleaved=True)
    else:
        cos, sin = reference.rope_cos_sin(torch.randint(0, 70000, (t,), device=device), rd, 1e7)
    kw_args = {}
    caches = None
    if cache:
        nb = (t + block_size - 1) // block_size + 3
        # a layer view of a bigger pool [L, nb, bs, Hkv, D]; NaN where nothing may be written
        k_pool = torch.full((2, nb, block_size, hk, d), float("nan"), dtype=dtype, device=device)
        v_pool = k_pool.clone()
        slot = torch.randperm(nb * block_size, device=device)[:t]
        slot[::5] = -1  # padding tokens
        caches = (k_pool, v_pool, slot)
        kw_args = dict(v=v, k_cache=k_pool[1], v_cache=v_pool[1], slot_mapping=slot)
    qo, ko = kernels.qk_norm_rope(q, k, qw, kw, cos, sin, 1e-6, **kw_args)
    rq, rk = reference.qk_norm_rope(q, k, qw, kw, cos, sin, 1e-6)
    torch.testing.assert_close(qo, rq, **_tol(dtype))
    torch.testing.assert_close(ko, rk, **_tol(dtype))
    if caches is not None:
        k_pool, v_pool, slot = caches
        assert k_pool[0].isnan().all() and v_pool[0].isnan().all()
        kf = k_pool[1].reshape(-1, hk, d)
        vf = v_pool[1].reshape(-1, hk, d)
        used = slot >= 0
        assert torch.equal(kf[slot[used]], ko[used])
        assert torch.equal(vf[slot[used]], v[used])
        untouched = torch.ones(kf.shape[0], dtype=torch.bool, device=device)
        untouched[slot[used]] = False
        assert kf[untouched].isnan().all() and vf[untouched].isnan().all()


def run_small(device: str) -> None:
    check_apply_rotary(device, 5, 3, 32, 16, torch.float32)
    check_apply_rotary(device, 3, 2, 24, 24, torch.float32)
    check_qk_norm_rope(device, 7, 4, 2, 64, 16, torch.float32)
    check_qk_norm_rope(device, 4, 3, 1, 40, 8, torch.float32, cache=False)


def test_triton_interpret_cpu():
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("t", [1, 63, 65, 1000])
def test_qk_norm_rope_gpu(t, dtype):
    check_qk_norm_rope("cuda", t, 16, 2, 256, 64, dtype)  # Qwen3-Next
    check_qk_norm_rope("cuda", t, 8, 1, 256, 64, dtype, block_size=64, mrope=True)  # Qwen3.5, mRoPE
    check_qk_norm_rope("cuda", t, 12, 3, 128, 32, dtype, cache=False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_apply_rotary_gpu(dtype):
    check_apply_rotary("cuda", 77, 16, 256, 64, dtype)
    check_apply_rotary("cuda", 5, 3, 128, 128, dtype)


if __name__ == "__main__":
    run_small("cuda" if torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET") else "cpu")
    print("ok")
