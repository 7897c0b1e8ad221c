"""`hass doctor`: does HASS serve on this host? The first thing to run on a new machine (and on a GPU).

In a few minutes, one server at a time, on the embedded target (SmolLM2-135M-Instruct) in the
dtype GPUs serve (bf16; `--dtype` to change) with the shipped drafts:

1. the SGLang contract (`serving/contract.py`): every SGLang symbol the plugin touches;
2. plain SGLang, HASS with the shipped EAGLE-2-shaped HASS draft, and HASS with the shipped Llama
   MTP (NextN) draft (`serving/server.py`; on a GPU with SGLang's defaults, CUDA graphs included);
3. per server: `/server_info` (the resolved algorithm, tree and dtype), T=0 chat answers to two
   questions of each eval set, SGLang's accept length, tokens/s; on a GPU, which processes hold a
   CUDA context (`nvidia-smi`: only SGLang's schedulers should);
4. one summary table, and a verdict: exit 0 when every check passed.

T=0 answers are compared with plain SGLang's: in bf16 some part at near-ties (the verify forward
runs other shapes than a decode step, so its logits round differently). Plain SGLang's answers come
with their top-2 logprobs per token; an answer that parts from plain's is explained when, at the
first token where it does, it took plain's best alternative and that was within NEAR_TIE_NATS of
plain's token. Every other difference fails the verdict; the table says how many were which.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from hass_sglang.bench.client import Endpoint, RequestSettings, chat_once, make_client

# Shipped drafts the doctor serves (hass_sglang/drafts); "plain" is SGLang without speculation.
METHODS = {"plain": None, "hass": "smollm2-135m-hass-eagle", "mtp": "smollm2-135m-mtp"}
# bf16 keeps 8 mantissa bits: logits of 10-20 round by ~0.05, and 30 layers add their own rounding.
NEAR_TIE_NATS = 0.25
MIN_ACCEPT_LENGTH = 1.05  # a trained draft must be accepted at all


@dataclass
class ServerCheck:
    method: str
    draft: str | None
    server_info: dict = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    # plain only: per answer, per token (token text, logprob, [(top-2 token text, logprob), ...])
    logprobs: list[list] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    verify_ct: int = 0
    cuda_processes: list[str] | None = None  # process titles holding a CUDA context (GPU hosts)
    error: str | None = None

    @property
    def accept_length(self) -> float | None:
        return self.tokens / self.verify_ct if self.verify_ct else None

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


@dataclass(frozen=True)
class Parting:
    """Where a T=0 answer first leaves plain SGLang's: plain's token index, the logprob gap there
    between plain's token and its best alternative, and whether the answer took that alternative."""
    token: int
    gap: float
    took_runner_up: bool

    @property
    def near_tie(self) -> bool:
        return self.took_runner_up and self.gap <= NEAR_TIE_NATS


_END_TOKEN = re.compile(r"<[|\uff5c].*[|\uff5c]>|</s>|<eos>|<end_of_turn>")  # <|im_end|>, DeepSeek's <｜...｜>


def _unseen(token: str) -> bool:
    """A token the answer text does not show: the end of turn / EOS, however SGLang displays it."""
    return token == "" or _END_TOKEN.fullmatch(token) is not None


def parting(plain_logprobs: list, text: str) -> Parting | None:
    """None when `text` is plain's answer (pure); else where it leaves plain's tokens: the first token
    `text` does not continue with (or where `text` ends while plain's token is visible)."""
    prefix = ""
    for i, (token, logprob, top) in enumerate(plain_logprobs):
        if (_unseen(token) and text == prefix) or (not _unseen(token) and text.startswith(prefix + token)):
            prefix += "" if _unseen(token) else token
            continue
        alternatives = [(t, lp) for t, lp in top if t != token]
        if not alternatives:
            return Parting(i, float("inf"), False)
        runner_up, runner_up_logprob = alternatives[0]
        took = text == prefix if _unseen(runner_up) else text.startswith(prefix + runner_up)
        return Parting(i, abs(logprob - runner_up_logprob), took)
    return None if text == prefix else Parting(len(plain_logprobs), float("inf"), False)


def cuda_processes() -> list[str] | None:
    """Titles of the processes holding a CUDA context (`nvidia-smi`), None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    titles = []
    for pid in (line.strip() for line in out.splitlines() if line.strip()):
        try:
            titles.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
        except OSError:
            titles.append(f"pid {pid} (not visible)")
    return titles


async def _answers(url: str, questions: list[str], max_tokens: int, top_logprobs: int | None = None) -> list:
    settings = RequestSettings(max_tokens=max_tokens, stream=False, timeout_s=600, retries=0)
    async with make_client(Endpoint("doctor", url), settings) as client:
        await chat_once(client, [{"role": "user", "content": "Hi"}], 0.0, settings)  # warm-up
        return [await chat_once(client, [{"role": "user", "content": q}], 0.0, settings, top_logprobs)
                for q in questions]


def check_server(method: str, spec, questions: list[str], max_tokens: int, log: Path, timeout_s: float,
                 gpu: bool) -> ServerCheck:
    import asyncio

    from hass_sglang.serving.server import running_server

    result = ServerCheck(method, spec.draft)
    try:
        with running_server(spec, log_path=log, timeout_s=timeout_s) as url:
            info = _get_json(url + "/server_info")
            keys = ("speculative_algorithm", "speculative_num_steps", "speculative_eagle_topk",
                    "speculative_num_draft_tokens", "dtype", "device", "disable_cuda_graph")
            result.server_info = {k: info.get(k) for k in keys}
            t0 = time.perf_counter()
            # Plain's answers carry their logprobs: the same request twice is not the same forward
            # (the second reuses the prompt's cached KV), and in bf16 may part at a near-tie itself.
            answers = asyncio.run(_answers(url, questions, max_tokens, 2 if spec.draft is None else None))
            result.seconds = time.perf_counter() - t0
            result.texts = [a.text for a in answers]
            result.tokens = sum(a.output_tokens for a in answers)
            result.verify_ct = sum(a.verify_ct or 0 for a in answers)
            result.logprobs = [a.logprobs or [] for a in answers]
            if gpu:
                result.cuda_processes = cuda_processes()
    except Exception as exc:  # one failed server is a finding, not the end of the report
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def partings(check: ServerCheck, plain: ServerCheck) -> dict[int, Parting | None]:
    """Per differing T=0 answer, where it leaves plain's (gap inf when plain's logprobs do not spell its text)."""
    out = {}
    for i, (text, plain_text) in enumerate(zip(check.texts, plain.texts)):
        if text != plain_text:
            logprobs = plain.logprobs[i] if i < len(plain.logprobs) else []
            shown = "".join(t for t, _, _ in logprobs if not _unseen(t))
            out[i] = parting(logprobs, text) if shown == plain_text else Parting(0, float("inf"), False)
    return out


def verdicts(checks: dict[str, ServerCheck], contract_problems: list[str]) -> list[str]:
    """What failed, one line each (empty: everything passed)."""
    bad = [f"contract: {p}" for p in contract_problems]
    plain = checks.get("plain")
    for name, c in checks.items():
        if c.error:
            bad.append(f"{name}: {c.error}")
            continue
        if c.draft is None:
            continue
        if c.server_info.get("speculative_algorithm") != "EAGLE":
            bad.append(f"{name}: /server_info says speculative_algorithm "
                       f"{c.server_info.get('speculative_algorithm')!r}, expected EAGLE (HASS resolved)")
        if not c.accept_length or c.accept_length < MIN_ACCEPT_LENGTH:
            bad.append(f"{name}: accept length {c.accept_length} (drafts hardly accepted)")
        if plain and not plain.error and c.texts:
            for i, p in partings(c, plain).items():
                if p is not None and not p.near_tie:
                    bad.append(f"{name}: T=0 answer {i} parts from plain SGLang's at token {p.token}, not at a "
                               f"near-tie (plain's top two {p.gap:.3f} nats apart, runner-up taken: "
                               f"{p.took_runner_up}; limit {NEAR_TIE_NATS})")
        if c.cuda_processes and not all("scheduler" in t for t in c.cuda_processes):
            bad.append(f"{name}: CUDA contexts outside the schedulers: {c.cuda_processes}")
    return bad


def summary_table(checks: dict[str, ServerCheck]) -> str:
    plain = checks.get("plain")
    lines = ["| server | algorithm | tree | dtype | T=0 = plain | accept length | tok/s | CUDA contexts |",
             "|---|---|---|---|---|---|---|---|"]
    for name, c in checks.items():
        i = c.server_info
        tree = "-" if not i.get("speculative_num_steps") else \
            f"{i['speculative_num_steps']}/{i['speculative_eagle_topk']}/{i['speculative_num_draft_tokens']}"
        same = "-"
        if c.draft is not None and plain and not plain.error:
            ties = sum(p is not None and p.near_tie for p in partings(c, plain).values())
            same = f"{sum(a == b for a, b in zip(c.texts, plain.texts))}/{len(c.texts)}" + \
                (f" (+{ties} at near-ties)" if ties else "")
        acc = f"{c.accept_length:.2f}" if c.accept_length else "-"
        cuda = "-" if c.cuda_processes is None else str(len(c.cuda_processes))
        if c.error:
            lines.append(f"| {name} | failed: {c.error[:80]} | | | | | | |")
            continue
        lines.append(f"| {name} | {i.get('speculative_algorithm') or 'none'} | {tree} | {i.get('dtype')} | {same} | "
                     f"{acc} | {c.tok_s:.1f} | {cuda} |")
    return "\n".join(lines)


def run_doctor(model: str, per_set: int = 2, max_tokens: int = 32, dtype: str = "bfloat16",
               device: str | None = None, log_dir: Path | None = None, timeout_s: float = 900,
               methods: tuple[str, ...] = tuple(METHODS)) -> tuple[dict[str, ServerCheck], list[str]]:
    """Run every check; returns (per-server results, failures)."""
    import tempfile

    import torch

    from hass_sglang.drafts import SHIPPED_DIR
    from hass_sglang.eval_sets import EVAL_SETS, load_questions
    from hass_sglang.serving.contract import check_contract
    from hass_sglang.serving.server import ServerSpec

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="hass-doctor-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    problems = check_contract()
    questions = [q.turns[0] for s in EVAL_SETS for q in load_questions(s, limit=per_set)]
    checks = {}
    for name in methods:
        draft = METHODS[name]
        spec = ServerSpec(model=model, draft=None if draft is None else str(SHIPPED_DIR / draft), device=device,
                          dtype=dtype).with_port()
        print(f"[doctor] {name}: {' '.join(spec.argv()[1:])}", flush=True)
        checks[name] = check_server(name, spec, questions, max_tokens, log_dir / f"{name}.log", timeout_s,
                                    gpu=device.startswith("cuda"))
    return checks, verdicts(checks, problems)


def write_report(path: Path, checks: dict[str, ServerCheck], failures: list[str]) -> None:
    from hass_sglang.io import write_json_atomic

    write_json_atomic(path, {"failures": failures, "servers": {
        n: {**c.__dict__, "accept_length": c.accept_length, "tok_s": c.tok_s} for n, c in checks.items()}}, indent=1)


def env_summary() -> str:
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {gpu}"
