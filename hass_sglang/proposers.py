"""Draft side of the reference decoder: the draft head over its own KV cache, and the proposers.

A proposer grows the tokens one verify cycle checks, from the root (the last emitted token, at
target position P, with the feature the draft predicted for it):

    propose_top_k_tree     EAGLE-2 dynamic tree: top-k children, top-k expansion per depth, the
                           best candidates overall (greedy and SpecInfer verification)
    propose_sampled_tree   children *sampled* from the draft without replacement (RRS)
    propose_sampled_chains K independent chains sampled from the draft (HSD)

Each is a plain function `(drafter, root, shape, sampling, generator) -> Proposal`; the decoder
takes any callable of that signature (`SpeculativeDecoder(..., proposer=...)`), which is how tests
feed it an oracle. Positions follow SGLang's EAGLE convention: the head's pair (token x_{t+1},
feature f_t) sits at position t; a tree node at depth d below a root at P sits at P + d.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hass_sglang.heads import DraftHead, draft_logits
from hass_sglang.kv_cache import cache_length, new_cache, truncate
from hass_sglang.masks import additive, causal_mask
from hass_sglang.sampling import SamplingParams, target_probs
from hass_sglang.target import Target
from hass_sglang.tree import DraftTree, TreeShape, ancestor_matrix, best_candidates, expand_candidates, select_tree


@dataclass(frozen=True)
class Root:
    token: int  # the last emitted token (node 0 of the tree)
    feature: torch.Tensor  # [H] the draft's predicted feature at its position
    position: int  # its target position P


@dataclass(frozen=True)
class Proposal:
    tree: DraftTree
    draft_probs: torch.Tensor | None = None  # [N, V] draft distribution at every expanded node (sampled trees)
    chains: torch.Tensor | None = None  # [K, D] node ids of K chains, depth 1..D (sampled chains)


class Drafter:
    """A draft head with its KV cache, the target's embedding and the lm_head rows it scores."""

    def __init__(self, target: Target, head: DraftHead, dtype: torch.dtype):
        """dtype: the head's compute dtype; the head is moved to it in place. The draft only proposes
        tokens, so its precision never affects the output; bf16 makes the full-vocabulary draft
        lm_head ~5x cheaper than fp32 on AVX-512 CPUs."""
        self.target, self.dtype = target, dtype
        self.head = head.to(device=target.device, dtype=dtype).eval().requires_grad_(False)
        # [V_draft, H] rows of the target lm_head, in the draft's dtype (a copy when that differs).
        self.lm_weight = self.head.draft_lm_head_weight(target.lm_head.weight).to(dtype)
        self.cache = new_cache()

    @property
    def device(self) -> torch.device:
        return self.target.device

    def reset(self) -> None:
        self.cache = new_cache()

    def forward(self, tokens: torch.Tensor, prev: torch.Tensor, positions: torch.Tensor, mask) -> torch.Tensor:
        embeds = self.target.embed_tokens(tokens.to(self.device)).to(self.dtype)[None]
        return self.head(embeds, prev.to(self.dtype)[None], positions[None], self.cache, mask)[0]

    def extend(self, next_tokens: list[int], features: torch.Tensor, start: int) -> torch.Tensor:
        """Append real pairs (x_{t+1}, f_t) for t = start.. ; returns the last predicted feature [H]."""
        assert cache_length(self.cache) == start
        n = len(next_tokens)
        mask = causal_mask(n, start, self.dtype, self.device)
        pos = torch.arange(start, start + n, device=self.device)
        return self.forward(torch.tensor(next_tokens), features, pos, mask)[-1]

    def frontier_forward(self, tokens, prev, anc, base: int, pos: int):
        """Draft forward for frontier nodes: pairs (node token, parent feature) at one position; each
        node sees the committed prefix, the cached tree entries of its ancestors (`anc`), and itself.
        Returns (features [F, H], the nodes' rows over entries including themselves)."""
        f = tokens.numel()
        allowed = torch.cat((anc, torch.eye(f, dtype=torch.bool, device=self.device)), dim=1)
        prefix = torch.ones(f, base, dtype=torch.bool, device=self.device)
        mask = additive(torch.cat((prefix, allowed), dim=1), self.dtype)
        feats = self.forward(tokens, prev, torch.full((f,), pos, device=self.device), mask)
        return feats, allowed

    def logprobs(self, features: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(draft_logits(features, self.lm_weight), dim=-1)

    def probs(self, features: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
        """[F, H] features -> [F, V] draft distribution over the target vocabulary (the same logit
        processing as the target's)."""
        probs = target_probs(draft_logits(features, self.lm_weight), sampling)
        if self.head.hot_token_ids is None:
            return probs
        full = probs.new_zeros(probs.shape[0], self.target.config.vocab_size)
        full[:, self.head.hot_token_ids.to(full.device)] = probs
        return full


Proposer = Callable[[Drafter, Root, TreeShape, SamplingParams, "torch.Generator | None"], Proposal]


def propose_top_k_tree(drafter: Drafter, root: Root, shape: TreeShape, sampling: SamplingParams | None = None,
                       generator: torch.Generator | None = None) -> Proposal:
    """EAGLE-2 dynamic tree (EAGLE-2 Sec. 4): depth 1 = the root's top-k children; every further
    depth expands the top-k best-scoring nodes of the previous one; the tree keeps the
    num_draft_tokens - 1 best candidates overall."""
    dev, head = drafter.device, drafter.head
    base = cache_length(drafter.cache)
    tok, scores, _ = expand_candidates(torch.zeros(1, device=dev), drafter.logprobs(root.feature)[None], shape.topk)
    cand_tokens = [head.to_target_ids(tok)]
    cand_parents = [torch.full_like(tok, -1)]
    cand_scores = [scores]
    n_cand = tok.numel()
    frontier = torch.arange(n_cand, device=dev)  # global candidate ids being expanded
    frontier_prev = root.feature.expand(n_cand, -1)  # features their pairs are built from
    frontier_anc = torch.zeros(n_cand, 0, dtype=torch.bool, device=dev)  # ancestors among cached entries
    all_tokens, all_scores = cand_tokens[0], scores
    for depth in range(1, shape.num_steps):
        feats, allowed = drafter.frontier_forward(
            all_tokens[frontier], frontier_prev, frontier_anc, base, root.position + depth - 1
        )
        tok, scores, owner = expand_candidates(all_scores[frontier], drafter.logprobs(feats), shape.topk)
        cand_tokens.append(head.to_target_ids(tok))
        cand_parents.append(frontier[owner])
        cand_scores.append(scores)
        all_tokens = torch.cat((all_tokens, cand_tokens[-1]))
        all_scores = torch.cat((all_scores, scores))
        pick = best_candidates(scores, shape.topk)
        frontier = n_cand + pick
        frontier_prev = feats[owner[pick]]
        frontier_anc = allowed[owner[pick]]
        n_cand += tok.numel()
    truncate(drafter.cache, base)
    tree = select_tree(root.token, torch.cat(cand_tokens), torch.cat(cand_parents), torch.cat(cand_scores),
                       shape.num_draft_tokens - 1)
    return Proposal(tree)


def propose_sampled_tree(drafter: Drafter, root: Root, shape: TreeShape, sampling: SamplingParams,
                         generator: torch.Generator | None = None) -> Proposal:
    """A tree whose children are drawn without replacement from the draft (what RRS needs).

    Every expanded node draws its children from q (Gumbel top-k, kept in draw order); how many
    children a node gets is fixed from the ranks of already-drawn nodes before its children are
    drawn, and no drawn node is ever dropped. The root gets `topk` children; each later depth
    spends an equal share of the remaining budget on the best-scoring nodes of the previous depth,
    `topk` children each."""
    return _sampled(drafter, root, shape, sampling, generator, chains=False)


def propose_sampled_chains(drafter: Drafter, root: Root, shape: TreeShape, sampling: SamplingParams,
                           generator: torch.Generator | None = None) -> Proposal:
    """K = (num_draft_tokens - 1) // num_steps independent chains of depth num_steps, each token
    drawn from the draft at its own prefix (what HSD needs)."""
    return _sampled(drafter, root, shape, sampling, generator, chains=True)


def _is_ancestor(a: int, node: int, parents: list[int]) -> bool:
    while node >= 0:
        if node == a:
            return True
        node = parents[node]
    return False


def _sampled(drafter: Drafter, root: Root, shape: TreeShape, sampling: SamplingParams, generator, chains: bool):
    dev = drafter.device
    depth_max, k, budget = shape.num_steps, shape.topk, shape.num_draft_tokens - 1
    base = cache_length(drafter.cache)
    toks, parents, scores = [root.token], [-1], [0.0]
    q_of = {0: drafter.probs(root.feature[None], sampling)[0]}
    feat_of = {0: root.feature}
    entries: list[int] = []  # tree nodes whose draft pairs sit in the cache, in cache order
    plan = [(0, 1)] * max(1, budget // depth_max) if chains else [(0, min(k, budget))]
    per_depth = 0 if chains else (budget - plan[0][1]) // max(depth_max - 1, 1)
    drawn_by_depth = []
    for depth in range(1, depth_max + 1):
        new_nodes = []
        for node, count in plan:
            q = q_of[node]
            count = min(count, int((q > 0).sum()))
            if chains:
                picks = torch.multinomial(q, count, generator=generator)
            else:
                gumbel = -torch.log(-torch.log(torch.rand(q.shape, generator=generator, device=q.device).clamp(min=1e-20)))
                picks = (q.log() + gumbel).topk(count).indices
            for t in picks.tolist():
                toks.append(t)
                parents.append(node)
                scores.append(scores[node] + float(q[t].log()))
                new_nodes.append(len(toks) - 1)
        if chains:
            drawn_by_depth.append(new_nodes)
        if depth == depth_max or not new_nodes:
            break
        if chains:
            expand = new_nodes
            plan = [(n, 1) for n in new_nodes]
        else:
            ranked = sorted(new_nodes, key=lambda n: -scores[n])
            n_expand = min(len(ranked), -(-per_depth // k)) if per_depth > 0 else 0
            expand = ranked[:n_expand]
            plan = [(n, min(k, per_depth - i * k)) for i, n in enumerate(expand)]
        if not expand:
            break
        anc = torch.tensor(
            [[_is_ancestor(e, n, parents) for e in entries] for n in expand], dtype=torch.bool, device=dev
        ).reshape(len(expand), len(entries))
        prev = torch.stack([feat_of[parents[n]] for n in expand])
        feats, _ = drafter.frontier_forward(torch.tensor([toks[n] for n in expand], device=dev), prev, anc, base,
                                            root.position + depth - 1)
        entries.extend(expand)
        probs = drafter.probs(feats, sampling)
        for i, n in enumerate(expand):
            feat_of[n], q_of[n] = feats[i], probs[i]
    truncate(drafter.cache, base)
    parents_t = torch.tensor(parents)
    anc = ancestor_matrix(parents_t)
    tree = DraftTree(tokens=torch.tensor(toks), parents=parents_t, depths=anc.sum(1) - 1, ancestors=anc)
    q_nodes = torch.zeros(len(toks), drafter.target.config.vocab_size)
    for n, q in q_of.items():
        q_nodes[n] = q.float().cpu()
    # drawn_by_depth[d][c] = node of chain c at depth d+1 (one draw per chain per depth)
    chain_ids = torch.tensor(drawn_by_depth).T.contiguous() if chains else None
    return Proposal(tree, q_nodes, chain_ids)
