"""The CPU backend's paged attention, one layer, side by side: the fp32 einsum over KV gathered with
advanced indexing (the backend before issue 18) vs the fused path it uses now (`index_select` +
one `scaled_dot_product_attention` in the pool's dtype, GQA heads shared). SmolLM2-135M's heads
(9 query, 3 KV, dim 64), random pool slots, context lengths 200-700.

  .venv/bin/python benchmarks/bench_cpu_attention.py [--threads 1 2]

Prints a Markdown table: ms per layer call and the ratio, for a decode batch of 64 (the corpus
regeneration), a decode of one request, and a 4-token tree verify of one request.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from hass_sglang.serving.cpu import attention as A

H, HKV, D = 9, 3, 64


def _timed(fn, reps=20):
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


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
    print(f"CPU: {platform.processor() or platform.machine()}; torch {torch.__version__}\n")
    print("| case | dtype | threads | before ms | now ms | before / now |\n|---|---|---|---|---|---|")
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
                    now = _timed(lambda: _now_verify(q, kb, vb, r2t, rpi, seq, ext, tree))
                else:
                    q = torch.randn(bs, H, D).to(dtype)
                    before = _timed(lambda: _before_decode(q, kb, vb, r2t, rpi, seq))
                    now = _timed(lambda: _now_decode(q, kb, vb, r2t, rpi, seq))
                print(f"| {case} | {str(dtype)[6:]} | {threads} | {before:.3f} | {now:.3f} | {before / now:.2f}x |",
                      flush=True)


if __name__ == "__main__":
    main()
