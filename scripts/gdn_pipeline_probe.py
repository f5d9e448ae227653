"""GDN prefill launch-plan probe (device machine): the pipelined prefill (prep of chunk segment i on
the caller's stream while a high-priority side stream scans segment i - 1) against the one-pass plan,
and tf32 tensor-core products in the (I + A)^-1 kernel, beside fla 0.6.0 in the same process.
Accuracy against the fp32 reference on plain and ill-conditioned inputs.

Times are device wall times: the host first queues a ~5 ms GPU sleep, so every launch of the call is
queued before the GPU reaches it (a kernel-time sum would double-count the overlapped kernels).
Host-timed medians (`bench.common.time_cuda`, what `python -m deltaserve.bench.ops gdn` prints) are
listed beside them.

python scripts/gdn_pipeline_probe.py OUT.json
"""

from __future__ import annotations

import sys
import traceback

import torch
from gdn_profile import reference_errors, single_sequence_case, write_results

from deltaserve.bench import op_gdn
from deltaserve.bench.common import device_record, kernel_medians_us, time_cuda, time_cuda_queued
from deltaserve.ops.gdn import prefill

SEG = {"segment_chunks": 128, "first_segment": 16}
TF32 = {"inverse_precision": "tf32", "diag_precision": "tf32"}
VARIANTS = [
    ("one pass", {}),
    ("inverse tf32", TF32),
    ("inverse tf32 off-diagonal", {"inverse_precision": "tf32"}),
    ("inverse tf32 diagonal", {"diag_precision": "tf32"}),
    ("segments 128 first 16", SEG),
    ("segments 128 first 16, tf32", {**SEG, **TF32}),
    ("segments 64 first 16, tf32", {**SEG, "segment_chunks": 64, **TF32}),
    ("segments 128 first 16, tf32 off-diagonal", {**SEG, "inverse_precision": "tf32"}),
]
ACCURACY = {"one pass", "inverse tf32", "inverse tf32 off-diagonal", "inverse tf32 diagonal"}
SHAPES = [
    ("hk16/hv32 1x32768", 16, 32, [32768]),
    ("hk2/hv8 1x32768", 2, 8, [32768]),
    ("hk16/hv64 1x32768", 16, 64, [32768]),
    ("hk16/hv32 1x4096", 16, 32, [4096]),
    ("hk16/hv32 8x2048", 16, 32, [2048] * 8),
]


def _case(hk: int, hv: int, lens: list[int]):
    if len(lens) == 1:
        return single_sequence_case(lens[0], hk, hv, seed=0)
    t = sum(lens)
    x = op_gdn.make_inputs(t, hk, hv, seed=0)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    pool = torch.zeros(len(lens) + 1, hv, 128, 128, device="cuda")
    sl = torch.arange(1, len(lens) + 1, device="cuda", dtype=torch.int32)
    hi = torch.zeros(len(lens), dtype=torch.bool, device="cuda")
    return x, cu, pool, sl, hi


def _ours(x, cu, pool, sl, hi, cfg: dict | None, impl=None):
    """A call of ``impl`` (default ``prefill.gdn_prefill``; another module's for A/B runs) on the case."""
    impl = impl or prefill.gdn_prefill
    return lambda: impl(
        x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], cu_seqlens=cu, state=pool,
        state_slots=sl, has_initial_state=hi, _config=cfg,
    )  # fmt: skip


def _fla(x, cu):
    fla_chunk, _, _ = op_gdn._fla()
    if fla_chunk is None:
        return None
    q, k, v = (x[n].contiguous().unsqueeze(0) for n in ("q", "k", "v"))
    a, b = x["a"].contiguous().unsqueeze(0), x["b"].contiguous().unsqueeze(0)
    cu64 = cu.long()
    cu_cpu = cu64.cpu()  # as op_gdn: no host sync inside fla's varlen set-up
    return lambda: fla_chunk(
        q, k, v, g=a, beta=b, A_log=x["A_log"], dt_bias=x["dt_bias"], use_gate_in_kernel=True,
        use_beta_sigmoid_in_kernel=True, use_qk_l2norm_in_kernel=True, output_final_state=True,
        cu_seqlens=cu64, cu_seqlens_cpu=cu_cpu,
    )  # fmt: skip


def main() -> None:
    res: dict = {"device": device_record(), "accuracy": [], "rows": []}
    print(res["device"], flush=True)
    for name, cfg in VARIANTS:
        if name not in ACCURACY:
            continue
        for hard in (False, True):
            try:
                x, cu, pool, sl, hi = single_sequence_case(4096, 16, 32, hard)
                o = _ours(x, cu, pool, sl, hi, cfg)()
                acc = {"variant": name, "hard": hard, **reference_errors(x, cu, o, pool)}
            except Exception:
                acc = {"variant": name, "hard": hard, "error": traceback.format_exc()[-800:]}
            print("accuracy", acc, flush=True)
            res["accuracy"].append(acc)
    for label, hk, hv, lens in SHAPES:
        x, cu, pool, sl, hi = _case(hk, hv, lens)
        try:
            fla = _fla(x, cu)
            if fla is not None:
                row = {"shape": label, "variant": "fla 0.6.0", "queued_ms": time_cuda_queued(fla)}
                row["host_timed_ms"] = time_cuda(fla, rep=10)
                print(row, flush=True)
                res["rows"].append(row)
        except Exception:
            traceback.print_exc()
        for name, cfg in VARIANTS:
            try:
                fn = _ours(x, cu, pool, sl, hi, cfg)
                row = {"shape": label, "variant": name, "queued_ms": time_cuda_queued(fn)}
                row["host_timed_ms"] = time_cuda(fn, rep=10)
                if "segment_chunks" not in cfg:  # kernel sums only mean wall time without overlap
                    row["kernel_ms"] = {k: v / 1e3 for k, v in kernel_medians_us(fn).items()}
            except Exception:
                row = {"shape": label, "variant": name, "error": traceback.format_exc()[-800:]}
            print(row, flush=True)
            res["rows"].append(row)
    write_results(res, sys.argv[1])


if __name__ == "__main__":
    main()
