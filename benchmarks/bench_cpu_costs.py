"""Cost model inputs for this CPU: target forward time vs tokens per forward, the draft lm_head
in fp32 vs bf16, and one T > 0 token draw (torch.multinomial vs `sampling.draw`, inverse CDF). Each measurement is the mean of 5 runs after warm-up; ratios, not absolute times,
are the signal on a shared machine.

  .venv/bin/python benchmarks/bench_cpu_costs.py
"""

from __future__ import annotations

import time

import torch

from hass_sglang.kv_cache import new_cache, truncate
from hass_sglang.masks import causal_mask
from hass_sglang.sampling import draw
from hass_sglang.target import load_target


def timed(fn, reps: int = 5) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1000


def main() -> None:
    torch.set_num_threads(2)
    w = torch.randn(49152, 576)
    print("| draft lm_head rows | fp32 ms | bf16 ms |\n|---|---|---|")
    for n in (1, 10, 60):
        x = torch.randn(n, 576)
        f32 = timed(lambda: torch.nn.functional.linear(x, w))
        wb, xb = w.bfloat16(), x.bfloat16()
        b16 = timed(lambda: torch.nn.functional.linear(xb, wb))
        print(f"| {n} | {f32:.1f} | {b16:.1f} |")
    # Every T > 0 verification (SpecInfer's bonus token) and every sampled token draws once.
    probs = torch.softmax(torch.randn(1, 49152) * 3, -1)
    multi = timed(lambda: torch.multinomial(probs, 1), reps=50)
    inv = timed(lambda: draw(probs), reps=50)
    print(f"\n| one draw, 49152 tokens | torch.multinomial ms | sampling.draw ms |\n|---|---|---|\n"
          f"| 1 row | {multi:.2f} | {inv:.2f} ({multi / inv:.1f}x faster) |")
    print("\n| tokens per target forward (400 cached) | fp32 ms | bf16 ms |\n|---|---|---|")
    rows = {}
    for dtype in (torch.float32, torch.bfloat16):
        target = load_target(dtype=dtype)
        cache = new_cache()
        target.hidden(torch.randint(0, 1000, (1, 400)), torch.arange(400)[None], cache)
        for n in (1, 5, 10, 30, 60):
            ids, pos, mask = torch.randint(0, 1000, (1, n)), torch.arange(400, 400 + n)[None], causal_mask(n, 400, dtype)

            def step():
                target.logits(target.hidden(ids, pos, cache, mask))
                truncate(cache, 400)

            rows.setdefault(n, []).append(timed(step))
    for n, (a, b) in rows.items():
        print(f"| {n} | {a:.1f} ({a / rows[1][0]:.2f}x) | {b:.1f} ({b / rows[1][1]:.2f}x) |")


if __name__ == "__main__":
    main()
