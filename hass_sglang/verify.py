"""Tree verification as pure tensor functions (docs/verification.md has the math).

Every function verifies B independent trees of one shape (shared `parents`; tokens and
distributions per tree) and returns, per tree, the deepest accepted node and the token emitted
after it (bonus or resampled). The accepted path is that node's ancestors (`tree.ancestors`).

- greedy: a node is correct when its token is the target's argmax at its parent.
- specinfer: recursive rejection over siblings with point-mass drafts (q = 1): what SGLang's
  `tree_speculative_sampling_target_only` does. Exact for any deterministic choice of children
  (top-k included).
- rrs: recursive rejection sampling with the draft's own probabilities; exact when each node's
  children were drawn *without replacement* from the draft distribution q at that node, in
  sibling order, and the number of children was fixed before drawing them.
- hsd: Hierarchical Speculative Decoding (Zhou et al., arXiv 2601.05724, Alg. 2 with the capped
  prefix ratio of Eq. 19/20) on chains; multi-draft (Alg. 3) on a trie of K i.i.d. drafts,
  passing the residual to the next draft that shares the accepted prefix. Exact when the drafts
  are sampled from q (i.i.d. across drafts).

Distributions are [B, N, V] probabilities: `p[:, i]` is the target's next-token distribution
after node i, `q[:, i]` the draft distribution node i's children were sampled from.
"""

from __future__ import annotations

import torch

from hass_sglang.sampling import draw
from hass_sglang.tree import DraftTree

_EPS = 1e-12


def verify_greedy(tree: DraftTree, target_argmax: torch.Tensor) -> tuple[torch.Tensor, int]:
    """target_argmax [N] (target's greedy token after each node) -> (accepted path [L] node ids incl. root, bonus token)."""
    parent_pred = target_argmax[tree.parents.clamp(min=0)]
    correct = tree.tokens == parent_pred
    correct[0] = True  # the root was emitted already
    ok = ~(tree.ancestors & ~correct[None, :]).any(dim=1)
    depth = torch.where(ok, tree.depths, torch.full_like(tree.depths, -1))
    deepest = int(depth.argmax())
    path = tree.ancestors[deepest].nonzero().flatten()  # topological order = root first
    return path, int(target_argmax[deepest])


def child_table(parents: torch.Tensor) -> torch.Tensor:
    """[N] parents -> [N, C] children of each node in index order, padded with -1."""
    n = parents.numel()
    counts = torch.bincount(parents[1:].clamp(min=0), minlength=n) if n > 1 else torch.zeros(1, dtype=torch.long)
    width = max(int(counts.max()), 1)
    table = torch.full((n, width), -1, dtype=torch.long)
    slot = torch.zeros(n, dtype=torch.long)
    for child in range(1, n):  # tree construction, not per-token work
        par = int(parents[child])
        table[par, slot[par]] = child
        slot[par] += 1
    return table


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum(-1, keepdim=True).clamp(min=_EPS)


def _residual(res: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """A residual distribution (p - q)+, or `fallback` (p itself) on rows where it has no mass: in
    exact arithmetic such a row means p = q, whose tokens are always accepted; only rounding
    (p summing a few ulps under q) rejects one, and then there would be nothing to draw from."""
    return torch.where(res.sum(-1, keepdim=True) > 0, res, fallback)


def _walk_state(parents: torch.Tensor, tokens: torch.Tensor):
    """Start of a root-to-leaf walk over B trees: (child table, row ids, current node = root,
    emitted token = unset, still walking)."""
    b, dev = tokens.shape[0], tokens.device
    return (
        child_table(parents).to(dev),
        torch.arange(b, device=dev),
        torch.zeros(b, dtype=torch.long, device=dev),
        torch.full((b,), -1, dtype=torch.long, device=dev),
        torch.ones(b, dtype=torch.bool, device=dev),
    )


def verify_specinfer(
    parents: torch.Tensor,  # [N]
    tokens: torch.Tensor,  # [B, N]
    p: torch.Tensor,  # [B, N, V]
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-mass drafts: sibling j is accepted with p(t_j) / (1 - sum_{i<j} p(t_i)); the bonus comes
    from p with the rejected siblings removed. Returns (deepest accepted node [B], emitted token [B])."""
    table, rows, cur, out, active = _walk_state(parents, tokens)
    while bool(active.any()):
        ch = table[cur]  # [B, C]
        valid = ch >= 0
        tok = tokens.gather(1, ch.clamp(min=0)).masked_fill(~valid, 0)
        pr = p[rows, cur]  # [B, V]
        pt = pr.gather(1, tok).masked_fill(~valid, 0.0)
        removed = torch.zeros_like(pr).scatter_add(1, tok, valid.to(pr.dtype)) > 0
        rest = pr.masked_fill(removed, 0.0)  # p outside the siblings: where a miss emits from
        # The mass still in play at sibling j: siblings j.. plus the rest, summed from the other end.
        # (1 - sum_{i<j} p(t_i)) is the same in exact arithmetic, but where the siblings hold all of
        # p's mass its rounding could reject every one and leave a residual with nothing to draw.
        left = (pt.flip(1).cumsum(1).flip(1) + rest.sum(1, keepdim=True)).clamp(min=_EPS)
        accept = valid & (torch.rand(pt.shape, generator=generator, device=pt.device) * left < pt)
        first = accept.int().argmax(1)
        hit = accept.any(1) & active
        miss = active & ~hit
        if bool(miss.any()):  # every sibling rejected: emit from p without the sibling tokens
            out[miss] = draw(rest[miss], generator)
        cur = torch.where(hit, ch[rows, first], cur)
        active = hit
    return cur, out


def verify_rrs(
    parents: torch.Tensor,  # [N]
    tokens: torch.Tensor,  # [B, N]
    p: torch.Tensor,  # [B, N, V]
    q: torch.Tensor,  # [B, N, V]
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recursive rejection sampling for children drawn without replacement from q (in sibling order):
    accept t_j with min(1, p_j(t_j) / q_j(t_j)); on rejection p_{j+1} = norm((p_j - q_j)+) and
    q_{j+1} = q_j without t_j, renormalised; after the last sibling emit from p_{m+1}."""
    table, rows, cur, out, active = _walk_state(parents, tokens)
    while bool(active.any()):
        ch = table[cur]
        pj, qj = p[rows, cur].clone(), q[rows, cur].clone()
        nxt = cur.clone()
        undecided = active.clone()
        for j in range(ch.shape[1]):
            cj = ch[:, j]
            live = undecided & (cj >= 0)
            if not bool(live.any()):
                break
            t = tokens[rows, cj.clamp(min=0)]
            pt, qt = pj[rows, t], qj[rows, t]
            ratio = torch.where(qt > 0, pt / qt.clamp(min=_EPS), torch.ones_like(pt))
            acc = live & (torch.rand(rows.numel(), generator=generator, device=pt.device) < ratio)
            nxt = torch.where(acc, cj, nxt)
            undecided = undecided & ~acc
            rej = live & ~acc
            pj = torch.where(rej[:, None], _normalise(_residual((pj - qj).clamp(min=0), pj)), pj)
            qj = torch.where(rej[:, None], _normalise(qj.scatter(1, t[:, None], 0.0)), qj)
        if bool(undecided.any()):
            out[undecided] = draw(pj[undecided], generator)
        cur = nxt
        active = active & ~undecided
    return cur, out


def hsd_chain_terms(
    ratios: torch.Tensor,  # [B, G] p(x_t | X_{<t}) / q(x_t | X_{<t}) for t = 1..G
    p: torch.Tensor,  # [B, G + 1, V] target distribution after each prefix X_{1:t}, t = 0..G
    q: torch.Tensor,  # [B, G, V] draft distribution after X_{1:t}, t = 0..G-1
) -> tuple[torch.Tensor, torch.Tensor]:
    """HSD's acceptance probabilities h [B, G+1] and capped prefix ratios c [B, G+1] (Alg. 2).

    R_t = prod_{i<=t} ratio_i, M_t = max(1, max_{i<=t} R_i), c_t = R_t / M_t (the capped prefix
    ratio of Eq. 19 divided by the prefix's draft probability). For t < G:
    h_t = sum (c_t p_t - q_t)+ / sum (q_t - c_t p_t)+  (the capped branch divergences), and
    h_G = min(1, R_G / M_{G-1}). The residual at t is P*_res(t) = norm((c_t p_t - q_t)+).
    """
    b, g = ratios.shape
    ones = ratios.new_ones(b, 1)
    r = torch.cat((ones, ratios.cumprod(dim=1)), dim=1)  # R_0..R_G
    m = torch.cummax(r.clamp(min=1.0), dim=1).values
    c = r / m
    d = c[:, :g, None] * p[:, :g] - q
    pos, neg = d.clamp(min=0).sum(-1), (-d).clamp(min=0).sum(-1)
    h_inner = torch.where(neg > _EPS, (pos / neg.clamp(min=_EPS)).clamp(max=1.0), torch.ones_like(pos))
    h_last = (r[:, g] / m[:, g - 1]).clamp(max=1.0)
    h = torch.cat((h_inner, h_last[:, None]), dim=1)
    h[:, 0] = 1.0  # the empty prefix is always accepted
    return h, c


def _hsd_scan(h: torch.Tensor, lo: torch.Tensor, generator) -> torch.Tensor:
    """Backward scan: the deepest t >= lo whose uniform falls under h_t (t = lo always passes)."""
    b, n = h.shape
    t = torch.arange(n, device=h.device)[None]
    u = torch.rand(h.shape, generator=generator, device=h.device, dtype=h.dtype)
    ok = ((u <= h) & (t >= lo[:, None])) | (t == lo[:, None])
    return (ok * t).max(dim=1).values


def verify_hsd_chain(
    tokens: torch.Tensor,  # [B, G] draft tokens x_1..x_G sampled from q
    p: torch.Tensor,  # [B, G + 1, V]
    q: torch.Tensor,  # [B, G, V]
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """HSD on one draft sequence. Returns (accepted length tau [B], emitted token [B]): the bonus
    from p_G when tau = G, else a draw from P*_res(tau)."""
    p, q = p.double(), q.double()
    lo = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    tau, emitted, _ = _hsd_verify_chain(tokens, p, q, lo, generator)
    return tau, emitted


def _hsd_verify_chain(tokens, p, q, lo, generator):
    """HSD over positions lo..G of each chain (positions < lo count as accepted, ratio 1)."""
    b, g = tokens.shape
    t = torch.arange(1, g + 1, device=tokens.device)[None]
    pt = p[:, :g].gather(2, tokens[..., None]).squeeze(-1)
    qt = q.gather(2, tokens[..., None]).squeeze(-1)
    ratios = torch.where(qt > 0, pt / qt.clamp(min=_EPS), torch.zeros_like(pt))
    ratios = torch.where(t <= lo[:, None], torch.ones_like(ratios), ratios)
    h, c = hsd_chain_terms(ratios, p, q)
    tau = _hsd_scan(h, lo, generator)
    rows = torch.arange(b, device=tokens.device)
    full = tau == g
    emitted = torch.empty(b, dtype=torch.long, device=tokens.device)
    if bool(full.any()):
        emitted[full] = draw(p[rows[full], g], generator)
    part = ~full
    if bool(part.any()):
        tp = tau[part]
        res = (c[rows[part], tp, None] * p[rows[part], tp] - q[rows[part], tp]).clamp(min=0)
        emitted[part] = draw(_residual(res, p[rows[part], tp]), generator)
    return tau, emitted, (h, c)


def verify_hsd_multidraft(
    tokens: torch.Tensor,  # [B, K, G] K draft sequences, i.i.d. from q
    p: torch.Tensor,  # [B, K, G + 1, V] target distributions along each draft
    q: torch.Tensor,  # [B, K, G, V] draft distributions along each draft
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSD with K drafts (Alg. 3): verify draft 1 with HSD; if it stops at tau < G with residual
    P*_res, that residual becomes the target at position tau for the next draft sharing the accepted
    prefix X_{1:tau}, whose suffix is verified with HSD in turn; drafts that do not share the prefix
    are skipped; after the last draft emit from the current residual.

    Returns (draft index [B] whose first tau tokens were accepted, tau [B], emitted token [B]).
    """
    p, q = p.double(), q.double()
    b, k, g = tokens.shape
    rows = torch.arange(b, device=tokens.device)
    tau = torch.zeros(b, dtype=torch.long, device=tokens.device)
    anchor = torch.zeros(b, dtype=torch.long, device=tokens.device)
    first = p[:, 0, 0].clone()  # target distribution at the current accepted prefix
    done = torch.zeros(b, dtype=torch.bool, device=tokens.device)
    emitted = torch.full((b,), -1, dtype=torch.long, device=tokens.device)
    pos = torch.arange(g, device=tokens.device)[None]
    for d in range(k):
        same = (tokens[:, d] == tokens[rows, anchor]) | (pos >= tau[:, None])
        live = ~done & same.all(dim=1)
        if not bool(live.any()):
            continue
        idx = rows[live]
        pd = p[idx, d].clone()
        pd[torch.arange(idx.numel()), tau[idx]] = first[idx]
        t_new, tok, (h, c) = _hsd_verify_chain(tokens[idx, d], pd, q[idx, d], tau[idx], generator)
        full = t_new == g
        done[idx[full]] = True
        emitted[idx[full]] = tok[full]
        anchor[idx] = d
        tau[idx] = t_new
        part = ~full
        if bool(part.any()):
            r = torch.arange(idx.numel(), device=tokens.device)[part]
            tp = t_new[part]
            res = (c[r, tp, None] * pd[r, tp] - q[idx[part], d, tp]).clamp(min=0)
            first[idx[part]] = _normalise(_residual(res, pd[r, tp]))
    rest = ~done
    if bool(rest.any()):
        emitted[rest] = draw(first[rest], generator)
    return anchor, tau, emitted
