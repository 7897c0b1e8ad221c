"""The CPU backend's paged attention, one layer, side by side: the fp32 einsum over KV gathered with
advanced indexing (the backend before issue 18), the fused path of 2026-12-02 (`index_select` + one
`scaled_dot_product_attention` with `enable_gqa`) and the path it uses now (the same SDPA call with
the query heads of each KV head folded into query rows, `attention.attend`). All in the pool's
dtype. SmolLM2-135M's heads (9 query, 3 KV, dim 64), random pool slots, context lengths 200-700.

  .venv/bin/python benchmarks/bench_cpu_attention.py [--threads 1 2]

Prints a Markdown table: ms per layer call and the ratios, for a decode batch of 64 (the corpus
regeneration), a decode of one request, and a 4-token tree verify of one request.
"""

from __future__ import annotations

import argparse
import time

import torch

from hass_sglang.bench.calibrate import cpu_features
from hass_sglang.serving.cpu import attention as A

H, HKV, D = 9, 3, 64


def _timed(fn, reps=20):
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def _attend_enable_gqa(q, keys, vals, visible, scaling, logit_cap):
    """`attention.attend` of 2026-12-02: SDPA with `enable_gqa` (one query row per decode)."""
    dtype = keys.dtype
    out = torch.nn.functional.scaled_dot_product_attention(
        q.to(dtype).transpose(1, 2), keys.transpose(1, 2), vals.to(dtype).transpose(1, 2),
        attn_mask=visible[:, None], scale=scaling, enable_gqa=q.shape[2] != keys.shape[2])
    return out.transpose(1, 2)


def _both(fn):
    """(ms with the enable_gqa attend, ms with the current one), timed back to back."""
    current = A.attend
    try:
        A.attend = _attend_enable_gqa
        gqa = _timed(fn)
    finally:
        A.attend = current
    return gqa, _timed(fn)


def _before_decode(q, kb, vb, r2t, rpi, seq):
    locs, valid = A.request_locs(r2t, rpi, seq)
    keys, vals = kb[locs].float(), vb[locs].float()
    return A.masked_attention(q[:, None], keys, vals, valid[:, None, :], 0.125, 0.0)[:, 0]


def _now_decode(q, kb, vb, r2t, rpi, seq):
    o = torch.empty_like(q)
    A.decode_attention(q, kb, vb, 1.0, 1.0, o, None, None, None, None, r2t, rpi, seq, 0.125, 0.0, False, None, None,
                       None)
    return o


def _before_verify(q, kb, vb, r2t, rpi, seq, ext, tree):
    locs, valid = A.request_locs(r2t, rpi, seq)
    keys, vals = kb[locs].float(), vb[locs].float()
    visible = A.extend_visibility(seq, ext, int(ext.max()), locs.shape[1], tree, True) & valid[:, None, :]
    return A.masked_attention(q[None], keys, vals, visible, 0.125, 0.0)


def _now_verify(q, kb, vb, r2t, rpi, seq, ext, tree):
    o = torch.empty_like(q)
    A.extend_attention(q, None, None, o, kb, vb, 1.0, 1.0, r2t, rpi, seq, ext, torch.zeros(1, dtype=torch.long),
                       int(ext.max()), 0.125, 0.0, False, None, None, None, tree, True)
    return o


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    torch.manual_seed(0)
    pool = 70000
    print(f"CPU: {cpu_features()}; torch {torch.__version__}\n")
    print("| case | dtype | threads | before ms | enable_gqa ms | now ms | before / now | enable_gqa / now |\n"
          "|---|---|---|---|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float32):
        kb, vb = torch.randn(pool, HKV, D).to(dtype), torch.randn(pool, HKV, D).to(dtype)
        for threads in args.threads:
            torch.set_num_threads(threads)
            for case, bs in (("decode, batch 64", 64), ("decode, batch 1", 1), ("verify 4 tokens, batch 1", 1)):
                seq = torch.randint(200, 700, (bs,))
                r2t = torch.zeros(bs, 1024, dtype=torch.int32)
                slots = torch.randperm(pool)
                for i in range(bs):
                    r2t[i, : seq[i]] = slots[i * 700: i * 700 + int(seq[i])].int()
                rpi = torch.arange(bs)
                if case.startswith("verify"):
                    ext = torch.tensor([4])
                    tree = torch.tril(torch.ones(4, 4, dtype=torch.bool)).reshape(-1)
                    q = torch.randn(4, H, D).to(dtype)
                    before = _timed(lambda: _before_verify(q, kb, vb, r2t, rpi, seq, ext, tree))
                    gqa, now = _both(lambda: _now_verify(q, kb, vb, r2t, rpi, seq, ext, tree))
                else:
                    q = torch.randn(bs, H, D).to(dtype)
                    before = _timed(lambda: _before_decode(q, kb, vb, r2t, rpi, seq))
                    gqa, now = _both(lambda: _now_decode(q, kb, vb, r2t, rpi, seq))
                print(f"| {case} | {str(dtype)[6:]} | {threads} | {before:.3f} | {gqa:.3f} | {now:.3f} | "
                      f"{before / now:.2f}x | {gqa / now:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
