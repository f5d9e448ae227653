"""The streaming block-FP8 GEMV at 1 to 16 activation rows against the small-M MMA kernel and bf16 cuBLAS,
same process, CUDA graphs of 8 calls on 8 weight copies (µs per call).

    python scripts/fp8_gemv_rows.py OUT.json [rows] [ab] [HEAD_GEMV.py]

"rows": at M=2, W8A16 and W8A8 (the layers' entry point, ``block_fp8_linear``): the small-M MMA
kernel (``CONFIG["gemv_m_max"] = 0``; swap-AB until 2026-11-29) and the GEMV with each config of
``CONFIGS``. "ab": the GEMV's kernel from another file (``HEAD_GEMV.py``, e.g. ``git show
HEAD:deltaserve/ops/fp8/gemv.py``) against this tree's at M = 1, each with its own configs, same inputs,
interleaved rounds.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys

import torch
from fp8_gemv_probe import SHAPES, _measure, _weights, layer_calls, print_best, rel

from deltaserve.bench.common import device_record, time_cuda_graph
from deltaserve.ops.fp8 import gemv, kernels, reference

MS = (2,)  # the kernel keeps one accumulator per row, two at most (1-16 rows: git history)
CONFIGS = [  # (BN, BK, warps, stages)
    (1, 2048, 4, 3), (2, 2048, 4, 3), (4, 2048, 4, 3), (2, 1024, 4, 3), (4, 1024, 4, 3), (2, 2048, 8, 3),
    (4, 2048, 8, 3), (1, 1024, 2, 3), (2, 512, 2, 3), (8, 1024, 8, 3),
]  # fmt: skip
GEMV_KEYS = ("gemv", "gemv_w8a8", "gemv_rows", "gemv_rows_w8a8")


def rows_section() -> list[dict]:
    rows: list[dict] = []
    with kernels.config_restored() as saved:
        for base, fns, ref in layer_calls(MS):
            kernels.CONFIG.update(saved, gemv_m_max=0)
            _measure(rows, dict(base, cfg=None), "small-M", fns, ref)
            for cfg in CONFIGS:
                kernels.CONFIG.update(saved, gemv_m_max=16, **{key: ((0, cfg),) for key in GEMV_KEYS})
                _measure(rows, dict(base, cfg=cfg), "gemv", fns, ref)
    return rows


# the one-row configs at the session's start (3021200), for "ab" with that commit's gemv.py
HEAD_GEMV_TIERS = ((8192, (4, 2048, 4, 3)), (4096, (4, 2048, 8, 3)), (0, (2, 2048, 8, 3)))
HEAD_GEMV_W8A8 = (2, 2048, 4, 3)


def ab_section(head_path: str) -> list[dict]:
    """The other file's GEMV kernel against this tree's on the same activations, 2 interleaved rounds:
    M=1 with each side's default configs (bf16 row for W8A16, `fake_quant`'s fp32 row for W8A8)."""
    spec = importlib.util.spec_from_file_location("gemv_head", head_path)
    head = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(head)
    rows: list[dict] = []
    for n, k in SHAPES:
        ws = _weights(n, k)
        x1 = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        head_w8a16 = next(cfg for min_n, cfg in HEAD_GEMV_TIERS if n >= min_n)
        cases = [("w8a16", x1, (head_w8a16, kernels.gemv_config(n, "gemv")))]
        cases += [("w8a8", kernels.fake_quant(x1), (HEAD_GEMV_W8A8,) * 2)]
        for mode, xin, (head_cfg, cfg) in cases:
            m = xin.shape[0]
            bf16 = time_cuda_graph([(lambda w=w, x=xin: x.to(torch.bfloat16) @ w.T) for w, _, _ in ws]) * 1e3
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            ref = reference.block_fp8_linear(xin, ws[0][1], ws[0][2], None)
            times: dict[str, list[float]] = {"head": [], "tree": []}
            for _ in range(2):
                for name, mod, use in (("head", head, head_cfg), ("tree", gemv, cfg)):
                    fns = [
                        (lambda q=q, s=s, mod=mod, xin=xin, out=out, cfg=use: mod.gemv(
                            xin, None, q, s, None, None, out, mode=0, block_k=128, config=cfg, plain_bn=128))
                        for _, q, s in ws
                    ]  # fmt: skip
                    try:
                        assert rel(fns[0](), ref) < 1e-2
                        times[name].append(time_cuda_graph(fns) * 1e3)
                    except Exception as exc:  # noqa: BLE001 - e.g. a head kernel without multi-row support
                        print(f"{name} M={m} {cfg}: {type(exc).__name__}: {exc}"[:200], flush=True)
                        times[name].append(float("nan"))
            r = dict(
                N=n,
                K=k,
                M=m,
                mode=mode,
                cfg=cfg,
                head_cfg=head_cfg,
                bf16_us=bf16,
                **{f"{a}_us": b for a, b in times.items()},
            )
            r.update(head_med=statistics.median(times["head"]), tree_med=statistics.median(times["tree"]))
            rows.append(r)
            print(json.dumps(r), flush=True)
    return rows


def main() -> None:
    out = sys.argv[1]
    args = sys.argv[2:]
    head = next((a for a in args if a.endswith(".py")), None)
    sections = {a for a in args if not a.endswith(".py")} or {"rows"}
    res: dict = dict(device=device_record(), ab=[], rows=[])
    if "ab" in sections and head:
        res["ab"] = ab_section(head)
        json.dump(res, open(out, "w"), indent=1)
    if "rows" in sections:
        res["rows"] = rows_section()
        json.dump(res, open(out, "w"), indent=1)
    for r in res["ab"]:
        print(
            f"AB M={r['M']} N={r['N']} K={r['K']} {r['mode']:5s} {r['head_cfg']} / {r['cfg']}: head {r['head_med']:.2f} us, "
            f"tree {r['tree_med']:.2f} us, bf16 {r['bf16_us']:.2f}"
        )
    print_best(res["rows"])
    bad = [r for r in res["rows"] if "error" in r or r.get("err", 0) >= 2e-2]
    print(
        f"{len(bad)} rows failed or over 2e-2",
        [(r["M"], r["cfg"], r.get("error", r.get("err"))) for r in bad][:8],
    )


if __name__ == "__main__":
    main()
