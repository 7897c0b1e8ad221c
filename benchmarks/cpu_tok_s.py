"""Decode speed of SGLang on CPU: plain vs HASS (EAGLE path + hass_sglang CPU backend).

    PYTHONPATH=. python benchmarks/cpu_tok_s.py --draft <draft dir or 'random'> [--prompts 3 --max-tokens 64]

One server at a time (fp32, --max-total-tokens 16384, small tree `serve.CPU_TREE`); T=0 chat
requests from eagle_eval mt_bench; reports completion tokens / wall seconds per server and the
speculative accept length from SGLang's meta_info.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request

from hass_sglang.eval_sets import load_questions
from hass_sglang.sglang_cpu.serve import CPU_TREE, cpu_server


def _generate(url, text, max_tokens):
    body = {"text": text, "sampling_params": {"max_new_tokens": max_tokens, "temperature": 0}}
    req = urllib.request.Request(url + "/generate", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=900) as r:
        return json.load(r)


def run(model, draft, prompts, max_tokens, tree=CPU_TREE):
    with cpu_server(model, draft, tree=tree) as url:
        _generate(url, "Hello", 4)  # warm-up (first-call compilation)
        toks, secs, verify, outs = 0, 0.0, 0, []
        for p in prompts:
            t = time.perf_counter()
            out = _generate(url, p, max_tokens)
            secs += time.perf_counter() - t
            meta = out["meta_info"]
            toks += meta["completion_tokens"]
            verify += meta.get("spec_verify_ct", 0) or 0
            outs.append(out["text"])
    return {"tok_s": round(toks / secs, 2), "tokens": toks, "seconds": round(secs, 1),
            "accept_length": round(toks / verify, 3) if verify else None}, outs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--draft", default="random")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--tree", default=None, help="'steps topk draft_tokens', e.g. '4 4 16' (default: serve.CPU_TREE)")
    ap.add_argument("--skip-plain", action="store_true")
    a = ap.parse_args()
    from hass_sglang.target import load_target

    target = load_target()
    model = a.model or str(target.path)
    draft = a.draft
    if draft == "random":
        from hass_sglang.checkpoint import save_draft
        from hass_sglang.heads import build_head

        draft = str(save_draft(build_head("eagle", target.config, seed=0), tempfile.mkdtemp() + "/eagle", target.config))
    prompts = [q.turns[0] for q in load_questions("mt_bench", limit=a.prompts)]
    tree = CPU_TREE
    if a.tree:
        steps, topk, tokens = a.tree.split()
        tree = ("--speculative-num-steps", steps, "--speculative-eagle-topk", topk,
                "--speculative-num-draft-tokens", tokens)
    plain, ref = (None, None) if a.skip_plain else run(model, None, prompts, a.max_tokens)
    hass, got = run(model, draft, prompts, a.max_tokens, tree)
    print(json.dumps({"plain": plain, "hass": hass, "same_text": None if ref is None else ref == got,
                      "draft": a.draft, "tree": tree}))


if __name__ == "__main__":
    main()
