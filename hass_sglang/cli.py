"""`hass` command line: one subcommand per pipeline step.

  hass serve         `python -m sglang.launch_server --speculative-algorithm HASS` on the embedded
                     default (or any target/draft); `--ask` answers one chat request and stops (main job)
  hass bench         serving benchmarks against SGLang / OpenAI endpoints (= python -m hass_sglang.bench)
  hass generate      reference decoder: vanilla vs speculative decoding on the eval sets (tokens/s, tau)
  hass check-draft   validate a draft folder against a target
  hass convert       HASS reference release -> SGLang EAGLE draft folder
  hass data          chat data (local JSON/JSONL or hub dataset) -> ShareGPT JSON
  hass regenerate    self-distillation: the target rewrites the answers (ShareGPT JSON -> ShareGPT JSON)
  hass features      ShareGPT JSON -> target features (sharded safetensors + manifest, resumable)
  hass train         EAGLE-2 / HASS training of an EAGLE or MTP head on features (resumable)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hass_sglang.errors import HassError

# Trained drafts shipped inside the package (filled by the training pipeline); newest first.
SHIPPED_DRAFTS_DIR = Path(__file__).resolve().parent / "drafts"
DEFAULT_DRAFT_NAMES = ("smollm2-135m-hass-eagle",)
DTYPES = ("float32", "bfloat16")


def default_draft() -> Path | None:
    for name in DEFAULT_DRAFT_NAMES:
        if (SHIPPED_DRAFTS_DIR / name / "config.json").is_file():
            return SHIPPED_DRAFTS_DIR / name
    return None


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def init_distributed() -> None:
    """Under torchrun (WORLD_SIZE > 1) join the process group: gloo, the CPU backend."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")


def load_head(draft: str, head_type: str, target):
    from hass_sglang.checkpoint import load_draft
    from hass_sglang.heads import build_head

    if draft == "random":
        print(f"[hass] draft: randomly initialised {head_type} head (expect tau ~1.0)", file=sys.stderr)
        return build_head(head_type, target.config, seed=0)
    path = default_draft() if draft == "auto" else Path(draft)
    if path is None:
        print(
            "[hass] no trained draft is shipped yet: using a randomly initialised EAGLE head (tau ~1.0); "
            "pass --draft <folder> for a trained one",
            file=sys.stderr,
        )
        return build_head(head_type, target.config, seed=0)
    print(f"[hass] draft: {path}", file=sys.stderr)
    return load_draft(path, target.config)


def add_eval_args(p: argparse.ArgumentParser, per_set: int, max_new_tokens: int) -> None:
    """Target, draft and eval-set options shared by `hass generate` and the benchmark scripts."""
    from hass_sglang.eval_sets import EVAL_SETS
    from hass_sglang.target import EMBEDDED_TARGET

    p.add_argument("--target", default=EMBEDDED_TARGET, help="embedded alias, HF folder, .gguf file or hub id")
    p.add_argument("--draft", default="auto", help="draft folder, 'auto' (shipped default) or 'random'")
    p.add_argument("--head", choices=("eagle", "mtp"), default="eagle", help="head type for --draft random")
    p.add_argument("--sets", nargs="+", default=list(EVAL_SETS), choices=EVAL_SETS)
    p.add_argument("--per-set", type=int, default=per_set, help="questions per eval set")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="target dtype (drafts run in bf16)")
    p.add_argument("--threads", type=int, default=2)


def cmd_generate(args) -> int:
    import torch

    from hass_sglang.evaluate import eval_prompts, format_table, run_side_by_side, summarize
    from hass_sglang.speculative import SpeculativeDecoder, TreeConfig
    from hass_sglang.target import load_target

    torch.set_num_threads(args.threads)
    target = load_target(args.target, dtype=torch_dtype(args.dtype))
    head = load_head(args.draft, args.head, target)
    tree = TreeConfig(num_steps=args.num_steps, topk=args.topk, num_draft_tokens=args.num_draft_tokens)
    decoder = SpeculativeDecoder(target, head, tree)
    if args.prompt is not None:
        prompts = [("prompt", "0", target.chat_prompt_ids(args.prompt))]
    else:
        prompts = eval_prompts(target, args.sets, args.per_set)
    runs = run_side_by_side(target, {"hass": decoder}, prompts, args.max_new_tokens)
    if args.prompt is not None:
        print(target.tokenizer.decode(runs[0].results["hass"].tokens, skip_special_tokens=True))
    print(f"\ntarget {target.path.name} ({args.dtype}), tree {tree}, {args.max_new_tokens} new tokens\n")
    print(format_table(summarize(runs)))
    return 0


def serve_argv(model: str, draft: str | None, host: str, port: int, tree: tuple[str, ...] | None, cpu: bool,
               extra: list[str]) -> list[str]:
    """The `python -m sglang.launch_server` command line `hass serve` runs (pure)."""
    from hass_sglang.sglang_cpu.serve import CPU_TREE, cpu_server_argv

    if cpu:  # fp32, small KV reservation, the CPU tree unless given (docs/sglang-cpu.md)
        argv = cpu_server_argv(model, port, draft, tree=tree or CPU_TREE, extra=tuple(extra))
        return [a if a != "127.0.0.1" else host for a in argv]
    argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", model, "--host", host, "--port", str(port)]
    if draft is not None:
        argv += ["--speculative-algorithm", "HASS", "--speculative-draft-model-path", draft, *(tree or ())]
    return argv + extra


def cmd_serve(args) -> int:
    import shlex
    import tempfile
    import time

    import torch

    from hass_sglang.bench.launch import parse_tree
    from hass_sglang.sglang_cpu.serve import cpu_server_env, free_port, running_server
    from hass_sglang.target import resolve_target

    model = str(resolve_target(args.target))
    draft = None if args.vanilla else (args.draft or (str(default_draft()) if default_draft() else None))
    if draft is None and not args.vanilla:
        raise HassError("no draft: pass --draft <folder> (or --vanilla to serve without speculation)")
    tree = parse_tree(args.tree)  # validated 'STEPS TOPK DRAFT_TOKENS' -> SGLang flags
    cpu = not torch.cuda.is_available()
    port = args.port or free_port()
    extra = args.sglang_args[1:] if args.sglang_args[:1] == ["--"] else args.sglang_args
    argv = serve_argv(model, draft, args.host, port, tree, cpu, extra)
    env = cpu_server_env() if cpu else dict(os.environ)
    print("+", " ".join(f"{k}={env[k]}" for k in ("SGLANG_USE_CPU_ENGINE", "OMP_NUM_THREADS") if cpu and k in env),
          shlex.join(argv), flush=True)
    if args.ask is None:  # a plain server in the foreground
        os.execvpe(argv[0], argv, env)
    import openai

    url = f"http://{args.host}:{port}"
    log = args.log or os.path.join(tempfile.gettempdir(), f"hass-serve-{port}.log")
    print(f"server log: {log}", flush=True)
    with running_server(argv, url, env, log_path=log, timeout_s=args.timeout):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=args.timeout)
        # The first request pays one-time costs (kernel selection, graph warm-up): keep them out of tok/s.
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        start = time.perf_counter()
        reply = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": args.ask}], max_tokens=args.max_tokens,
            temperature=args.temperature, extra_body={"return_spec_tokens_details": True})
        seconds = time.perf_counter() - start
    print(f"\nuser: {args.ask}\nassistant: {reply.choices[0].message.content}\n")
    tokens = reply.usage.completion_tokens
    spec = ((reply.model_extra or {}).get("sglext") or {}).get("spec_tokens_details") or {}
    line = f"{tokens} tokens in {seconds:.2f} s ({tokens / seconds:.1f} tok/s, one request after a warm-up)"
    if spec.get("spec_verify_ct"):
        line += f"; accept length {spec['spec_accept_length']:.2f} over {spec['spec_verify_ct']} verify steps"
    print(line)
    return 0


def cmd_check_draft(args) -> int:
    from hass_sglang.checkpoint import load_draft, read_draft_metadata
    from hass_sglang.target import load_target

    target = load_target(args.target)
    head = load_draft(args.draft, target.config)
    n = sum(p.numel() for p in head.parameters())
    hot = "full" if head.hot_token_ids is None else str(head.hot_token_ids.numel())
    print(f"ok: {head.head_type} head, {n / 1e6:.1f}M parameters, draft vocabulary {hot}, fits {target.path}")
    meta = read_draft_metadata(args.draft)
    if meta:
        print(f"metadata: {meta}")
    return 0


def cmd_convert(args) -> int:
    from hass_sglang.checkpoint import import_reference
    from hass_sglang.target import load_target

    target = load_target(args.target)
    out = import_reference(args.src, args.out, target.config)
    print(f"wrote {out}")
    return 0


def cmd_data(args) -> int:
    from hass_sglang.data import convert

    report = convert(args.source, args.preset, args.out, args.limit, args.split, args.subset)
    skipped = ", ".join(f"{n} {why}" for why, n in report.skipped.most_common()) or "none"
    print(f"wrote {args.out}: {report.kept} conversations; skipped: {skipped}"
          + ("; source file truncated, complete records kept" if report.truncated_source else ""))
    return 0


def cmd_regenerate(args) -> int:
    import torch

    from hass_sglang.regenerate import regenerate
    from hass_sglang.target import load_target

    torch.set_num_threads(args.threads)
    target = load_target(args.target, dtype=torch_dtype(args.target_dtype))
    r = regenerate(target, args.data, args.out, args.max_new_tokens, args.batch_size, args.max_prompt_tokens,
                   args.temperature, args.seed, args.limit, args.max_conversations)
    skipped = ", ".join(f"{n} {why}" for why, n in r.skipped.most_common()) or "none"
    print(f"wrote {args.out}: {r.kept} conversations, {r.new_tokens} answer tokens "
          f"({r.hit_max_new_tokens} answers cut at --max-new-tokens); skipped: {skipped}")
    return 0


def cmd_features(args) -> int:
    import torch

    init_distributed()
    from hass_sglang.features import FeatureConfig, extract_features
    from hass_sglang.target import load_target

    torch.set_num_threads(args.threads)
    cfg = FeatureConfig(
        data=args.data, target=args.target, max_length=args.max_length, shard_size=args.shard_size,
        batch_tokens=args.batch_tokens, extra_layers=tuple(args.extra_layers), dtype=args.dtype,
        teacher_topk=args.teacher_topk,
    )
    target = load_target(args.target, dtype=torch_dtype(args.target_dtype))
    m = extract_features(target, cfg, args.out)
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(f"{args.out}: {m['samples']} samples, {m['tokens']} tokens ({m['loss_tokens']} in the loss), "
          f"{m['truncated']} truncated, skipped {m['skipped'] or 'none'}")
    return 0


def cmd_train(args) -> int:
    import torch

    from hass_sglang.target import load_target
    from hass_sglang.trainer import TrainConfig, train

    torch.set_num_threads(args.threads)
    init_distributed()
    cfg = TrainConfig(
        features=args.features, out=args.out, head=args.head, objective=args.objective, align_steps=args.align_steps,
        topk=args.topk, topk_weight=args.topk_weight, init_from=args.init_from, epochs=args.epochs, lr=args.lr,
        draft_vocab=args.draft_vocab, val_prompts=args.val_prompts,
        batch_size=args.batch_size, seed=args.seed, warmup_steps=args.warmup_steps,
    )
    export = train(cfg, load_target(args.target))
    print(f"draft written to {export}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from hass_sglang.target import EMBEDDED_TARGET

    p = argparse.ArgumentParser(prog="hass", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    sv = sub.add_parser("serve", help="python -m sglang.launch_server --speculative-algorithm HASS on the embedded default")
    sv.add_argument("--target", default=EMBEDDED_TARGET, help="target model (default: the embedded SmolLM2)")
    sv.add_argument("--draft", help="draft folder (default: the shipped HASS draft)")
    sv.add_argument("--vanilla", action="store_true", help="serve without speculation")
    sv.add_argument("--tree", help="'steps topk draft_tokens' (default: the CPU tree on CPU hosts, HASS's 6 10 60 on GPU)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=0, help="default: a free port")
    sv.add_argument("--ask", help="send this chat message, print the answer, tok/s and accept length, then stop")
    sv.add_argument("--max-tokens", type=int, default=128)
    sv.add_argument("--temperature", type=float, default=0.0)
    sv.add_argument("--timeout", type=float, default=600, help="seconds to wait for the server / the answer")
    sv.add_argument("--log", help="server log file with --ask (default: a file in the temp folder)")
    sv.add_argument("sglang_args", nargs=argparse.REMAINDER, help="after --: extra launch_server flags")
    sv.set_defaults(func=cmd_serve)

    sub.add_parser("bench", help="serving benchmarks: run | report | compare (see `hass bench --help`)", add_help=False)

    g = sub.add_parser("generate", help="vanilla vs speculative decoding: tokens/s and tau")
    add_eval_args(g, per_set=1, max_new_tokens=96)
    g.add_argument("--prompt", help="one user message instead of the eval sets")
    g.add_argument("--num-steps", type=int, default=6, help="draft tree depth")
    g.add_argument("--topk", type=int, default=10, help="draft tree branching")
    g.add_argument("--num-draft-tokens", type=int, default=60, help="tokens verified per cycle (root included)")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("check-draft", help="validate a draft folder against a target")
    c.add_argument("draft")
    c.add_argument("--target", default=EMBEDDED_TARGET)
    c.set_defaults(func=cmd_check_draft)

    v = sub.add_parser("convert", help="HASS reference release folder -> SGLang EAGLE draft folder")
    v.add_argument("src")
    v.add_argument("out")
    v.add_argument("--target", default=EMBEDDED_TARGET)
    v.set_defaults(func=cmd_convert)
    from hass_sglang.data import PRESETS

    d = sub.add_parser("data", help="chat data -> ShareGPT JSON")
    d.add_argument("--source", required=True, help="local .json/.jsonl file or hub dataset id")
    d.add_argument("--preset", required=True, choices=PRESETS)
    d.add_argument("--out", required=True)
    d.add_argument("--limit", type=int, help="keep at most this many conversations")
    d.add_argument("--split", default="train")
    d.add_argument("--subset")
    d.set_defaults(func=cmd_data)

    r = sub.add_parser("regenerate", help="self-distillation: the target rewrites the answers (resumable)")
    r.add_argument("--data", required=True, nargs="+", help="ShareGPT JSON file(s) from `hass data`")
    r.add_argument("--out", required=True, help="output ShareGPT JSON (parts kept in <out>.parts/ until done)")
    r.add_argument("--target", default=EMBEDDED_TARGET)
    r.add_argument("--limit", type=int, help="at most this many conversations per input file")
    r.add_argument("--max-conversations", type=int,
                   help="keep only this many (shortest prompts first); may change between runs of one --out")
    r.add_argument("--max-new-tokens", type=int, default=256)
    r.add_argument("--max-prompt-tokens", type=int, default=512, help="skip (and count) longer prompts")
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (what T=0 decoding emits)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--target-dtype", choices=DTYPES, default="bfloat16")
    r.add_argument("--threads", type=int, default=2)
    r.set_defaults(func=cmd_regenerate)

    f = sub.add_parser("features", help="ShareGPT JSON -> target features (resumable)")
    f.add_argument("--data", required=True, help="ShareGPT JSON from `hass data`")
    f.add_argument("--out", required=True, help="output folder (re-run the same command to resume)")
    f.add_argument("--target", default=EMBEDDED_TARGET)
    f.add_argument("--max-length", type=int, default=512)
    f.add_argument("--shard-size", type=int, default=64, help="conversations per shard")
    f.add_argument("--batch-tokens", type=int, default=4096)
    f.add_argument("--extra-layers", type=int, nargs="*", default=[], help="hidden_states indices to store too")
    f.add_argument("--dtype", choices=DTYPES, default="float32", help="storage dtype of the features")
    f.add_argument("--target-dtype", choices=DTYPES, default="float32")
    f.add_argument("--teacher-topk", type=int, default=10, help="target top-K stored per position (HASS K)")
    f.add_argument("--threads", type=int, default=2)
    f.set_defaults(func=cmd_features)

    t = sub.add_parser("train", help="train a draft head on features (re-run to resume)")
    t.add_argument("--features", required=True)
    t.add_argument("--out", required=True, help="run folder: checkpoint.pt, train_config.json, draft/")
    t.add_argument("--target", default=EMBEDDED_TARGET)
    t.add_argument("--head", choices=("eagle", "mtp"), default="eagle")
    t.add_argument("--objective", choices=("eagle2", "hass"), default="hass")
    t.add_argument("--align-steps", type=int, default=3, help="HASS aligning steps")
    t.add_argument("--topk", type=int, default=10, help="HASS top-K distillation K")
    t.add_argument("--topk-weight", type=float, default=1.0, help="HASS top-K distillation weight w")
    t.add_argument("--init-from", help="existing draft folder to continue from")
    t.add_argument("--val-prompts", type=int, default=0, help="validation tau on this many eval prompts per epoch")
    t.add_argument("--draft-vocab", type=int, help="reduced draft vocabulary: this many most frequent target tokens")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser: run | report | compare
        from hass_sglang.bench.__main__ import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (HassError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
