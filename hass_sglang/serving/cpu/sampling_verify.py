"""T > 0 tree verification inside SGLang on CPU with the project's SpecInfer (`verify.verify_specinfer`).

SGLang 0.5.23 verifies greedily on CPU whatever the temperature (`_verify_uses_greedy`,
speculative/eagle_utils.py:485) because its sampling verifier is CUDA-only. Two AROUND hooks
through SGLang's hook registry (`sglang.srt.plugins.hook_registry`) replace that on CPU hosts:

- around `eagle_utils.eagle_sample`: for batches that are not all greedy, keeps the verify logits
  and sampling parameters in a context variable for the duration of the call;
- around `eagle_utils.verify_tree_greedy_func` (the CPU branch's verifier): when such a context is
  set, runs `verify_specinfer` on the target's temperature-scaled probabilities instead of the
  greedy walk and fills SGLang's (predicts, accept_index, accept_token_num) outputs.

Greedy rows (top_k == 1) of a mixed batch get a point-mass target distribution, for which SpecInfer
reduces to greedy verification. The logits arrive with SGLang's penalties, logit_bias and grammar
mask already applied in place (`eagle_sample`): masked tokens are -inf and verification runs over
the allowed set, exactly; a tree node with no allowed token (past a draft token the grammar
rejects, or after the grammar finished) gets SGLang's greedy answer, the point mass on argmax. A
request whose logits hold NaN or +inf ends alone with an error (FINISH_ABORT), never the scheduler; any
other fault inside the hook ends the batch's requests the same way. Temperature, top-k and top-p are applied as in every other decoder
of the project (`hass_sglang.sampling.target_probs`); min-p and penalties are not. Random numbers
come from torch's global generator, not SGLang's per-request seeds.
EAGLE drafts in SGLang keep no draft probabilities, so SpecInfer (point-mass drafts) is the rule.
"""

from __future__ import annotations

import contextvars
import logging

import torch

from hass_sglang.sampling import SamplingParams
from hass_sglang.sampling import target_probs
from hass_sglang.verify import verify_specinfer

logger = logging.getLogger(__name__)

_VERIFY_CTX: contextvars.ContextVar = contextvars.ContextVar("hass_cpu_verify", default=None)
SAMPLE_TARGET = "sglang.srt.speculative.eagle_utils.eagle_sample"
VERIFY_TARGET = "sglang.srt.speculative.eagle_utils.verify_tree_greedy_func"
calls = {"specinfer": 0}


def parents_from_links(next_token: torch.Tensor, next_sibling: torch.Tensor) -> torch.Tensor:
    """[bs, n] parent of each node (-1 for the root and unlinked nodes) from SGLang's first-child /
    next-sibling lists, via pointer jumping (no per-node loop)."""
    bs, n = next_token.shape
    rows = torch.arange(bs)[:, None]
    first_of = torch.full((bs, n), -1, dtype=torch.long)  # parent of each list head
    heads = next_token.long()
    has = heads >= 0
    first_of[rows.expand(bs, n)[has], heads[has]] = torch.arange(n).expand(bs, n)[has]
    parent = first_of.clone()
    nxt = next_sibling.long()
    for _ in range(max(1, n.bit_length())):  # propagate each head's parent along its list
        valid = (nxt >= 0) & (parent >= 0)
        tgt = nxt.clamp(min=0)
        upd = torch.full_like(parent, -1)
        upd[rows.expand(bs, n)[valid], tgt[valid]] = parent[valid]
        parent = torch.where(parent >= 0, parent, upd)
        nxt = torch.where(nxt >= 0, nxt.gather(1, nxt.clamp(min=0)), -1)
    return parent


# The smallest top_p a float32 tensor holds: SGLang keeps request values in float32, so a valid
# top_p like 1e-300 arrives as 0.0 (plain SGLang then keeps the top token; so does this).
MIN_TOP_P = torch.finfo(torch.float32).tiny


def request_probs(logits: torch.Tensor, temperatures: torch.Tensor, top_ks: torch.Tensor | None = None,
                  top_ps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[int, str]]:
    """[bs, n, V] per-request sampling distributions (temperature, top-k, top-p through
    `hass_sglang.sampling.target_probs`, the one definition every decoder uses); rows with
    top_k == 1 (SGLang's greedy) or temperature 0 get the one-hot argmax. Also {row: why} for
    requests whose settings give no distribution (e.g. a temperature that overflows float32):
    those rows get the argmax too and the caller ends those requests."""
    bs = logits.shape[0]
    out = torch.empty(logits.shape, dtype=torch.float32)
    invalid: dict[int, str] = {}
    for b in range(bs):  # requests, not tokens: the batch is small on CPU
        temp = float(temperatures.reshape(-1)[b])
        k = int(top_ks.reshape(-1)[b]) if top_ks is not None else 0
        if k == 1 or temp <= 0:
            out[b] = torch.nn.functional.one_hot(logits[b].argmax(-1), logits.shape[-1]).float()
            continue
        try:
            sp = SamplingParams(temperature=temp, top_k=0 if k >= logits.shape[-1] or k < 0 else k,
                                top_p=max(float(top_ps.reshape(-1)[b]), MIN_TOP_P) if top_ps is not None else 1.0)
        except ValueError as exc:
            invalid[b] = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)  # pydantic's, one line
            out[b] = torch.nn.functional.one_hot(logits[b].argmax(-1), logits.shape[-1]).float()
            continue
        out[b] = target_probs(logits[b], sp)
    return out, invalid


def usable_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[bs, n, V] verify logits -> (logits every row of which gives a distribution, [bs] requests
    with NaN / +inf logits, [bs, n] nodes with no allowed token). Broken requests get zeros (any
    distribution: they are aborted), fully masked nodes zeros (their probabilities are then
    replaced by SGLang's greedy point mass on argmax = token 0)."""
    top = logits.amax(-1)  # one pass: NaN / +inf where a node holds one, -inf where nothing is allowed
    broken = (torch.isnan(top) | torch.isposinf(top)).any(1)
    masked = torch.isneginf(top) & ~broken[:, None]
    fix = broken[:, None, None] | masked[..., None]
    return (torch.where(fix, torch.zeros((), dtype=logits.dtype), logits) if fix.any() else logits), broken, masked


def abort_requests(reqs, rows, message: str, status: int = 500) -> None:
    """End the requests at batch rows `rows` with `message`; the rest of the batch goes on."""
    from http import HTTPStatus

    from sglang.srt.managers.schedule_batch import FINISH_ABORT

    for i in rows:
        req = reqs[i] if reqs is not None and i < len(reqs) else None
        logger.error("hass_sglang: aborting request %s: %s", getattr(req, "rid", i), message)
        if req is not None and getattr(req, "to_finish", None) is None:
            req.to_finish = FINISH_ABORT(message, status_code=HTTPStatus(status),
                                         err_type="BadRequestError" if status == 400 else "InternalServerError")


def specinfer_accept(candidates, parents, probs, generator=None):
    """Per request: SpecInfer over its tree -> (deepest accepted node [bs], emitted token [bs])."""
    deepest, emitted = [], []
    for b in range(candidates.shape[0]):  # requests (batch is small on CPU); the walk is vectorised
        par = parents[b].clone()
        par[0] = 0
        d, t = verify_specinfer(par.clamp(min=0), candidates[b : b + 1].long(), probs[b : b + 1], generator)
        deepest.append(d)
        emitted.append(t)
    return torch.cat(deepest), torch.cat(emitted)


def path_to(parents: torch.Tensor, node: torch.Tensor, max_depth: int) -> torch.Tensor:
    """[bs, max_depth] nodes root..node (root first), -1 padded."""
    cur = node.clone()
    cols = []
    for _ in range(max_depth):  # tree depth
        cols.append(cur.clone())
        cur = torch.where(cur > 0, parents.gather(1, cur.clamp(min=0)[:, None])[:, 0], -1)
    stack = torch.stack(cols, 1)  # node, parent, ..., root, -1...
    depth = (stack >= 0).sum(1)
    idx = (depth[:, None] - 1 - torch.arange(max_depth)).clamp(min=0)
    return torch.where(torch.arange(max_depth)[None, :] < depth[:, None], stack.gather(1, idx), -1)


def around_eagle_sample(original, verify_input, batch, logits_output, *args, **kwargs):
    info = batch.sampling_info
    if batch.forward_mode.is_idle() or info is None or info.is_all_greedy:
        return original(verify_input, batch, logits_output, *args, **kwargs)
    token = _VERIFY_CTX.set({"logits": logits_output.next_token_logits, "info": info,
                             "n": verify_input.draft_token_num, "reqs": batch.reqs})
    try:
        return original(verify_input, batch, logits_output, *args, **kwargs)
    finally:
        _VERIFY_CTX.reset(token)


def around_verify(original, *args, **kwargs):
    ctx = _VERIFY_CTX.get()
    if ctx is None:
        return original(*args, **kwargs)
    try:
        return _verify_sampled(ctx, kwargs)
    except Exception:  # a fault in this hook costs the batch's requests, never the scheduler
        logger.exception("hass_sglang: T>0 verification failed; aborting the batch's requests")
        abort_requests(ctx.get("reqs"), range(kwargs["candidates"].shape[0]),
                       "internal error in T>0 tree verification (hass_sglang); see the server log")
        return original(*args, **kwargs)  # SGLang's greedy verify fills the outputs of the aborted batch


def _verify_sampled(ctx, kwargs):
    predicts, accept_index, accept_token_num = kwargs["predicts"], kwargs["accept_index"], kwargs["accept_token_num"]
    candidates = kwargs["candidates"]
    bs, n = candidates.shape
    info = ctx["info"]
    logits, broken, masked = usable_logits(ctx["logits"].reshape(bs, n, -1))
    if broken.any():
        abort_requests(ctx.get("reqs"), torch.nonzero(broken).flatten().tolist(),
                       "the target model produced NaN or infinite logits for this request")
    probs, invalid = request_probs(logits, info.temperatures, getattr(info, "top_ks", None),
                                   getattr(info, "top_ps", None))
    for row, why in invalid.items():
        abort_requests(ctx.get("reqs"), [row], f"sampling parameters unusable for verification: {why}", 400)
    probs[masked] = torch.nn.functional.one_hot(torch.zeros((), dtype=torch.long), probs.shape[-1]).float()
    parents = parents_from_links(kwargs["retrieve_next_token"], kwargs["retrieve_next_sibling"])
    deepest, emitted = specinfer_accept(candidates, parents, probs)
    width = accept_index.shape[1]
    path = path_to(parents, deepest, width)
    ridx = kwargs["retrieve_index"].long()
    acc = torch.where(path >= 0, ridx.gather(1, path.clamp(min=0)), -1)
    count = (path >= 0).sum(1) - 1
    accept_index.copy_(acc.to(accept_index.dtype))
    accept_token_num.copy_(count.to(accept_token_num.dtype))
    # predicts at an accepted position = the next committed token (child's draft token / emitted).
    nxt_tok = torch.where(path[:, 1:] >= 0, candidates.gather(1, path[:, 1:].clamp(min=0)), -1)
    last = torch.arange(width)[None, :] == count[:, None]
    tokens = torch.where(last, emitted[:, None], torch.cat([nxt_tok, nxt_tok[:, :1]], 1))
    valid = acc >= 0
    predicts.view(-1)[acc[valid]] = tokens[valid].to(predicts.dtype)
    calls["specinfer"] += 1
    if calls["specinfer"] == 1:
        logger.info("hass_sglang: T>0 tree verification by hass_sglang.verify.verify_specinfer (CPU)")
    return predicts, accept_index, accept_token_num


def register_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(SAMPLE_TARGET, around_eagle_sample, HookType.AROUND)
    HookRegistry.register(VERIFY_TARGET, around_verify, HookType.AROUND)
