"""Tree and dtype chosen by measurement on this host (`hass calibrate`), used by `hass serve`.

What pays on a CPU depends on the host (AMX makes a bf16 verify of 8 tokens cost about one decode
step; without it fp32 is faster and trees cost more) and on the draft's acceptance. So instead of
a cost model, the candidates are served and timed: a plain SGLang server beside a HASS server with
each candidate tree in turn, every chat prompt to both (batch 1, T=0, after a warm-up, each request from an empty prefix cache), so each
tree's speedup is a ratio measured in pairs under the same load. The fastest HASS setting is stored under a key naming the host (CPU model, its
bf16 features, cores, OpenMP threads), the target, the draft (its config and weight files) and the
dtype, in `~/.cache/hass_sglang/calibration.json` (`$HASS_CALIBRATION`); `hass serve` on the same
host, target, draft and dtype serves with that tree.
"""

from __future__ import annotations

import json
import os
import platform
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from hass_sglang.checkpoint import draft_fingerprint
from hass_sglang.errors import HassError
from hass_sglang.io import cache_dir, read_json, write_json_atomic
from hass_sglang.tree import CPU_CANDIDATES as CPU_CANDIDATE_TREES
from hass_sglang.tree import TreeShape, cpu_default_tree

CPU_CANDIDATES = tuple(t.spec for t in CPU_CANDIDATE_TREES)


def cpu_serve_settings(model: str, draft: str | None, dtype: str | None, tree: str | None):
    """dtype and tree of a CPU server (`hass serve`): as given, else this host's calibration for this
    target, draft, dtype and thread count, else bf16 on hosts with bf16 units / fp32 and the CPU
    default tree of that dtype (`tree.cpu_default_tree`).
    Returns (dtype, TreeShape or None, a line saying where the tree came from, or None)."""
    dtype = dtype or default_cpu_dtype()
    if tree or draft is None:
        return dtype, TreeShape.parse(tree) if tree else None, None
    from hass_sglang.serving.server import cpu_threads

    cal = load_calibration(model, draft, dtype, cpu_threads())
    if cal is None:
        tree = cpu_default_tree(dtype)
        return dtype, tree, (f"tree {tree.spec} (the CPU default in {dtype}; `hass calibrate` measures the best "
                             "on this host)")
    return dtype, TreeShape.parse(cal.tree), (f"tree {cal.tree} (calibrated on this host {cal.measured_at}: "
                                             f"{cal.speedup:.2f}x plain over {cal.prompts} prompts)")


def calibration_path() -> Path:
    return Path(os.environ.get("HASS_CALIBRATION") or cache_dir() / "calibration.json")


def cpu_features() -> dict:
    """CPU model and the flags that decide bf16 speed, from /proc/cpuinfo (Linux; empty elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"cpu": model, "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags}


def default_cpu_dtype(features: dict | None = None) -> str:
    """bf16 where the host computes bf16 dot products in hardware (AMX tiles or AVX-512 BF16), fp32
    elsewhere (emulated bf16 is slower than fp32). Measured side by side (docs/sglang-cpu.md): on an
    AMD EPYC with AVX-512 BF16 and no AMX, plain SGLang at batch 1 ran 1.9x faster in bf16 than in fp32."""
    f = features or cpu_features()
    return "bfloat16" if f["amx_bf16"] or f["avx512_bf16"] else "float32"


def host_key(target: str | Path, draft: str | Path, dtype: str, threads: int) -> str:
    f = cpu_features()
    return json.dumps({**f, "cores": os.cpu_count(), "threads": threads, "dtype": dtype,
                       "target": Path(target).name, "draft": f"{Path(draft).name}@{draft_fingerprint(draft)}"},
                      sort_keys=True)


@dataclass(frozen=True)
class Calibration:
    tree: str  # "steps topk draft_tokens"
    dtype: str
    threads: int
    hass_tok_s: float
    plain_tok_s: float
    accept_length: float | None
    prompts: int
    max_tokens: int
    measured_at: str
    cpu: str

    @property
    def speedup(self) -> float:
        return self.hass_tok_s / self.plain_tok_s


def load_calibration(target, draft, dtype: str, threads: int, path: Path | None = None) -> Calibration | None:
    path = path or calibration_path()
    if not path.exists():
        return None
    entry = read_json(path).get(host_key(target, draft, dtype, threads))
    return Calibration(**entry) if entry else None


def save_calibration(target, draft, cal: Calibration, path: Path | None = None) -> Path:
    path = path or calibration_path()
    table = read_json(path) if path.exists() else {}
    table[host_key(target, draft, cal.dtype, cal.threads)] = asdict(cal)
    return write_json_atomic(path, table, indent=1)


def _generate(url: str, ids: list[int], max_tokens: int, temperature: float) -> dict:
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": max_tokens, "temperature": temperature}}
    req = urllib.request.Request(url + "/generate", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=900) as r:
        return json.load(r)


def _timed(url: str, ids: list[int], max_tokens: int, temperature: float, acc: list) -> None:
    """One timed request from an empty prefix cache, added to `acc` = [tokens, seconds, verify
    forwards, texts, cached prompt tokens]. Without the flush a prompt sent before (the same prompts
    at the next temperature, the plain server's pass for the next tree) skips its prefill, so a
    server that saw the prompts before is timed on less work than one that did not."""
    from hass_sglang.bench.client import Endpoint, flush_prefix_cache

    if not flush_prefix_cache(Endpoint("timed", url)):
        raise HassError(f"{url}/flush_cache failed: a timed request would reuse an earlier prompt's prefill")
    t = time.perf_counter()
    out = _generate(url, ids, max_tokens, temperature)
    acc[1] += time.perf_counter() - t
    meta = out["meta_info"]
    acc[0] += meta["completion_tokens"]
    acc[2] += meta.get("spec_verify_ct", 0) or 0
    acc[3].append(out["text"])
    acc[4] += meta.get("cached_tokens", 0) or 0


def _spec(model, draft, tree, dtype):
    from hass_sglang.serving.server import ServerSpec

    return ServerSpec(model=model, draft=draft, device="cpu", tree=TreeShape.parse(tree) if draft else None, dtype=dtype)


def _row(server, temp, threads, dtype, toks, secs, verify, texts, cached=0) -> dict:
    return {"server": server, "temperature": temp, "threads": threads, "dtype": dtype, "tok_s": round(toks / secs, 2),
            "tokens": toks, "seconds": round(secs, 1), "accept_length": round(toks / verify, 3) if verify else None,
            "cached_tokens": cached, "texts": texts}


def measure_server(model: str, draft: str | None, tree: str | None, prompts: list[list[int]], max_tokens: int,
                   temperatures=(0.0,), threads: int = 1, dtype: str = "float32", log_path=None) -> list[dict]:
    """One CPU server (plain when draft is None), every prompt at every temperature, batch 1, after a
    warm-up request: a row per temperature with tok/s, SGLang's accept length and the texts."""
    from hass_sglang.serving.server import running_server

    os.environ["OMP_NUM_THREADS"] = str(threads)  # ServerSpec.env keeps a value that is set
    rows = []
    with running_server(_spec(model, draft, tree, dtype), log_path=log_path) as url:
        _generate(url, prompts[0], 4, 0.0)  # warm-up: one-time costs stay out of the timing
        for temp in temperatures:
            acc = [0, 0.0, 0, [], 0]
            for ids in prompts:
                _timed(url, ids, max_tokens, temp, acc)
            rows.append(_row("plain" if draft is None else f"hass {tree}", temp, threads, dtype, *acc))
    return rows


def measure_pairs(model: str, candidates: list[tuple[str, str, str]], prompts: list[list[int]], max_tokens: int,
                  temperatures=(0.0,), threads: int = 1, dtype: str = "float32", report=print,
                  on_pass=None) -> list[dict]:
    """Speculative servers, each measured beside a plain server of the same model, dtype and threads.

    A plain server runs throughout; each candidate (row name, draft, tree) runs beside it in turn,
    and every prompt at every temperature goes to both, one after the other (the order alternating),
    so both see the same machine load: on a noisy shared host the paired ratio is stable where tok/s
    measured minutes apart is not (the plain server measured 30.1 and 23.8 tok/s in two pairs of
    one `cpu_tok_s.py` run, docs/sglang-cpu.md). Rows: the plain server over all pairs per temperature,
    then one per candidate and temperature with its paired `plain_tok_s`; `report` gets each
    candidate row as a JSON line when it is measured. `on_pass(name, temperature, row)` (optional)
    is called before each pass with row None and after it with the row (e.g. to read the servers'
    HASS_PHASE_TIMING totals around the pass)."""
    from hass_sglang.serving.server import running_server

    if not prompts:
        raise HassError("measure_pairs: no prompts")
    if not candidates:
        raise HassError("measure_pairs: no speculative servers to measure")
    for _, _, tree in candidates:
        TreeShape.parse(tree)  # a bad tree fails before any server starts
    os.environ["OMP_NUM_THREADS"] = str(threads)  # ServerSpec.env keeps a value that is set
    rows, plain_all = [], {t: [0, 0.0, 0, [], 0] for t in temperatures}
    with running_server(_spec(model, None, None, dtype)) as plain_url:
        _generate(plain_url, prompts[0], 4, 0.0)  # warm-up: one-time costs stay out of the timing
        for name, draft, tree in candidates:
            with running_server(_spec(model, draft, tree, dtype)) as url:
                _generate(url, prompts[0], 4, 0.0)
                for temp in temperatures:
                    got = {"plain": [0, 0.0, 0, [], 0], "hass": [0, 0.0, 0, [], 0]}
                    if on_pass is not None:
                        on_pass(name, temp, None)
                    for i, ids in enumerate(prompts):
                        pair = [("plain", plain_url), ("hass", url)]
                        for who, u in (pair if i % 2 == 0 else pair[::-1]):
                            _timed(u, ids, max_tokens, temp, got[who])
                    row = _row(name, temp, threads, dtype, *got["hass"])
                    row["plain_tok_s"] = round(got["plain"][0] / got["plain"][1], 2)
                    total = plain_all[temp]
                    for k in (0, 1, 4):
                        total[k] += got["plain"][k]
                    total[3] = total[3] or got["plain"][3]  # the plain texts of the first pass
                    if on_pass is not None:
                        on_pass(name, temp, row)
                    report(json.dumps({k: v for k, v in row.items() if k != "texts"}))
                    rows.append(row)
    plain_rows = [_row("plain", t, threads, dtype, a[0], a[1], 0, a[3], a[4]) for t, a in plain_all.items()]
    return plain_rows + rows


def calibrate(model: str, draft: str, prompts: list[list[int]], trees=CPU_CANDIDATES, dtype: str | None = None,
              threads: int = 1, max_tokens: int = 48, report=print) -> tuple[Calibration, list[dict]]:
    """Pick the tree with the highest speedup over plain decoding, each measured in pairs at T=0
    (`measure_pairs`). Rows: the plain server over all pairs, then one per tree with its paired
    `plain_tok_s`."""
    if not prompts:
        raise HassError("calibrate: no prompts")
    if not trees:
        raise HassError("calibrate: no candidate trees")
    dtype = dtype or default_cpu_dtype()
    rows = measure_pairs(model, [(f"hass {tree}", draft, tree) for tree in trees], prompts, max_tokens, (0.0,),
                         threads, dtype, report)
    best = best_tree_row(rows[1:])
    cal = Calibration(tree=best["server"].removeprefix("hass "), dtype=dtype, threads=threads,
                      hass_tok_s=best["tok_s"], plain_tok_s=best["plain_tok_s"], accept_length=best["accept_length"],
                      prompts=len(prompts), max_tokens=max_tokens, measured_at=time.strftime("%Y-%m-%d %H:%M"),
                      cpu=cpu_features()["cpu"])
    return cal, rows


def add_server_bench_args(ap, trees: list[str]) -> None:
    """Options shared by the CPU server benchmarks (benchmarks/cpu_code_ab.py, cpu_cycle_phases.py)."""
    ap.add_argument("--draft", default="smollm2-135m-hass-eagle", help="a shipped draft name or a folder")
    ap.add_argument("--trees", nargs="+", default=trees, help="'steps topk draft_tokens' per HASS server")
    ap.add_argument("--per-set", type=int, default=2, help="questions per eval set (batch 1)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")


def server_bench_inputs(args) -> tuple[str, str, list[list[int]]]:
    """(target folder, draft folder, chat prompt ids) named by `add_server_bench_args` options."""
    from hass_sglang.drafts import resolve_draft
    from hass_sglang.eval_sets import EVAL_SETS
    from hass_sglang.evaluate import eval_prompts
    from hass_sglang.target import load_target

    target = load_target()
    draft = str(resolve_draft(args.draft).folder(target.config))
    return str(target.path), draft, [ids for _, _, ids in eval_prompts(target, EVAL_SETS, args.per_set)]


def best_tree_row(rows: list[dict]) -> dict:
    """The tree row with the highest speedup over its paired plain tok/s (not the highest tok/s: the
    trees were measured minutes apart, each beside the plain server)."""
    return max(rows, key=lambda r: r["tok_s"] / r["plain_tok_s"])


def speed_table(rows: list[dict]) -> str:
    """Markdown: tok/s, speedup over the plain server of the same dtype, threads and temperature (the
    row's paired `plain_tok_s` where `calibrate` measured one), and
    the cost of one speculative cycle in plain decode steps (accept length / speedup: a cycle commits
    accept-length tokens in the time plain decoding commits accept-length / cost)."""
    plain = {(r["temperature"], r["threads"], r["dtype"]): r["tok_s"] for r in rows if r["server"] == "plain"}
    lines = ["| server | dtype | T | threads | tok/s | speedup vs plain | accept length | cycle cost (plain steps) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r.get("plain_tok_s") or plain.get((r["temperature"], r["threads"], r["dtype"]))
        speed = f"{r['tok_s'] / base:.2f}x" if base else "-"
        cost = f"{cycle_cost(r['accept_length'], r['tok_s'], base):.2f}" if base and r["accept_length"] else "-"
        lines.append(f"| {r['server']} | {r['dtype']} | {r['temperature']:g} | {r['threads']} | {r['tok_s']:.2f} | "
                     f"{speed} | {r['accept_length'] or '-'} | {cost} |")
    return "\n".join(lines)


def cycle_cost(accept_length: float, hass_tok_s: float, plain_tok_s: float) -> float:
    """Time of one draft + verify cycle in units of one plain decode step."""
    return accept_length * plain_tok_s / hass_tok_s
