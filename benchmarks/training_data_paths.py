"""Training data through transformers here vs through an SGLang server, side by side on one host.

Self-distilled answers (`hass regenerate`: batched transformers `generate` vs `--endpoint` with
`--concurrency` requests in flight, SGLang's continuous batching) and target features (`hass
features`: transformers vs `--engine sglang`), same conversations, same dtype (bf16), in one run.
The transformers paths run first, before the server starts (an idle SGLang scheduler keeps a core
busy). Prints answer tokens/s, feature tokens/s and the ratios.

  .venv/bin/python benchmarks/training_data_paths.py --conversations 32 --max-new-tokens 96
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from hass_sglang.eval_sets import shared_data_dir
from hass_sglang.serving.server import ServerSpec, running_server
from hass_sglang.target import EMBEDDED_TARGET, TargetParts, load_target
from hass_sglang.train.data import convert
from hass_sglang.train.features import FeatureConfig, SGLangHiddenStates, extract_features
from hass_sglang.train.regenerate import Endpoint, RegenerateConfig, regenerate


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16, help="transformers generate batch")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight at the SGLang server")
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()
    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="hass-data-paths-"))
    data = root / "gsm8k.json"
    convert(str(shared_data_dir() / "gsm8k" / "train.jsonl"), "gsm8k", data, limit=a.conversations)
    dtype = getattr(torch, a.dtype)
    target = load_target(EMBEDDED_TARGET, dtype=dtype)
    base = dict(data=[str(data)], max_new_tokens=a.max_new_tokens, batch_size=a.batch_size)
    feats = dict(data=str(root / "hf.json"), target=EMBEDDED_TARGET, max_length=512, storage_dtype="bfloat16")
    rows = {}
    rep, s = timed(lambda: regenerate(target, RegenerateConfig(**base), root / "hf.json", progress=False))
    rows["regenerate transformers"] = (rep.new_tokens, s)
    m, s = timed(lambda: extract_features(target, FeatureConfig(**feats), root / "f-hf", progress=False))
    rows["features transformers"] = (m["tokens"], s)
    spec = ServerSpec(model=str(target.path), device="cpu", dtype=a.dtype,
                      extra=("--enable-return-hidden-states", "--disable-radix-cache"))
    with running_server(spec, root / "server.log") as url:
        endpoint = Endpoint(url, target.tokenizer, concurrency=a.concurrency)
        rep, s = timed(lambda: regenerate(endpoint, RegenerateConfig(**base, engine="endpoint"), root / "sgl.json",
                                          progress=False))
        rows["regenerate sglang endpoint"] = (rep.new_tokens, s)
        remote = SGLangHiddenStates(url, TargetParts.of(target), target.tokenizer, concurrency=a.concurrency)
        m, s = timed(lambda: extract_features(remote, FeatureConfig(**feats, engine="sglang"), root / "f-sgl",
                                              progress=False))
        rows["features sglang"] = (m["tokens"], s)
    print(f"\n{a.conversations} conversations, {a.dtype}, max_new_tokens {a.max_new_tokens}, "
          f"transformers batch {a.batch_size}, SGLang concurrency {a.concurrency}")
    print(f"| path | tokens | seconds | tokens/s |\n|---|---:|---:|---:|")
    for name, (tokens, secs) in rows.items():
        print(f"| {name} | {tokens} | {secs:.1f} | {tokens / secs:.1f} |")
    for what in ("regenerate", "features"):
        hf = [v for k, v in rows.items() if k.startswith(what) and "transformers" in k][0]
        sg = [v for k, v in rows.items() if k.startswith(what) and "sglang" in k][0]
        print(f"{what}: SGLang / transformers tokens/s = {(sg[0] / sg[1]) / (hf[0] / hf[1]):.2f}x")


if __name__ == "__main__":
    main()
