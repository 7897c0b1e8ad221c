"""Reference speculative decoder (batch 1): EAGLE-2 dynamic draft trees with a HASS/EAGLE or MTP head.

The project's ground truth for acceptance length and for losslessness; plain PyTorch over the
transformers target. One cycle:

1. grow a draft tree from the root (the last emitted token) with the head (`tree.py`);
2. one target forward over the tree with a tree attention mask (`masks.py`);
3. verify (`verify.py`: greedy at T = 0; specinfer / rrs / hsd at T > 0, each with the tree it
   needs to be exact, see docs/verification.md), keep only the accepted path in the target KV
   cache (`kv_cache.py`);
4. feed the accepted tokens with their real target features to the head (draft extend).

Positions follow SGLang's EAGLE convention: the head's pair (token x_{t+1}, feature f_t) sits at
position t, a tree node at depth d below a root at position P sits at target position P + d.
"""

from __future__ import annotations

import time

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from hass_sglang.errors import CheckpointMismatchError, InvalidRequestError
from hass_sglang.generate import GenerationResult, check_request, stop_ids, truncate_output
from hass_sglang.heads import DraftHead, draft_logits
from hass_sglang.kv_cache import cache_length, keep_entries, new_cache, truncate
from hass_sglang.masks import additive, causal_mask, tree_mask
from hass_sglang.sampling import SamplingParams, sample_token, target_probs
from hass_sglang.target import Target
from hass_sglang.tree import DraftTree, ancestor_matrix, best_candidates, expand_candidates, select_tree
from hass_sglang.verify import verify_greedy, verify_hsd_multidraft, verify_rrs, verify_specinfer

VERIFY_METHODS = ("specinfer", "rrs", "hsd")


class TreeConfig(BaseModel):
    """Draft tree shape, in SGLang's terms (HASS paper defaults: depth 6, 60 tokens, top-k 10).

    num_steps = --speculative-num-steps (tree depth), topk = --speculative-eagle-topk,
    num_draft_tokens = --speculative-num-draft-tokens (tokens verified per cycle, root included).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_steps: int = 6
    topk: int = 10
    num_draft_tokens: int = 60

    @model_validator(mode="after")
    def _check(self) -> "TreeConfig":
        if self.num_steps < 1 or self.topk < 1:
            raise ValueError(f"num_steps and topk must be >= 1, got {self.num_steps}, {self.topk}")
        most = 1 + self.topk + (self.num_steps - 1) * self.topk * self.topk
        if not (2 <= self.num_draft_tokens <= most):
            raise ValueError(
                f"num_draft_tokens must be in [2, {most}] for num_steps={self.num_steps}, "
                f"topk={self.topk}; got {self.num_draft_tokens}"
            )
        return self

    @classmethod
    def chain(cls, depth: int) -> "TreeConfig":
        return cls(num_steps=depth, topk=1, num_draft_tokens=depth + 1)


class SpeculativeDecoder:
    def __init__(
        self,
        target: Target,
        head: DraftHead,
        tree: TreeConfig | None = None,
        draft_dtype: torch.dtype | None = torch.bfloat16,
    ):
        """draft_dtype: the head's compute dtype (None = the target's); the head is moved to it in
        place. The draft only proposes tokens, so its precision never affects the output; bf16
        makes the full-vocabulary draft lm_head ~5x cheaper than fp32 on AVX-512 CPUs."""
        if head.hidden_size != target.config.hidden_size:
            raise CheckpointMismatchError(
                f"draft hidden size {head.hidden_size} != target hidden size {target.config.hidden_size}"
            )
        if head.config.vocab_size != target.config.vocab_size:
            raise CheckpointMismatchError(
                f"draft vocab size {head.config.vocab_size} != target vocab size {target.config.vocab_size}"
            )
        self.target = target
        self.draft_dtype = draft_dtype or target.dtype
        self.head = head.to(device=target.device, dtype=self.draft_dtype).eval().requires_grad_(False)
        self.tree_config = tree or TreeConfig()
        # [V_draft, H] rows of the target lm_head, in the draft's dtype (a copy when that differs).
        self.lm_weight = self.head.draft_lm_head_weight(target.lm_head.weight).to(self.draft_dtype)
        self.tcache = new_cache()
        self.dcache = new_cache()

    # ---- draft side -------------------------------------------------------------------------
    def _draft_forward(self, tokens: torch.Tensor, prev: torch.Tensor, positions: torch.Tensor, mask) -> torch.Tensor:
        embeds = self.target.embed_tokens(tokens.to(self.target.device)).to(self.draft_dtype)[None]
        return self.head(embeds, prev.to(self.draft_dtype)[None], positions[None], self.dcache, mask)[0]

    def _draft_logprobs(self, features: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(draft_logits(features, self.lm_weight), dim=-1)

    def _draft_extend(self, next_tokens: list[int], features: torch.Tensor, start: int) -> torch.Tensor:
        """Append real pairs (x_{t+1}, f_t) for t = start.. ; returns the last predicted feature [H]."""
        assert cache_length(self.dcache) == start
        n = len(next_tokens)
        mask = causal_mask(n, start, self.draft_dtype, self.target.device)
        pos = torch.arange(start, start + n, device=self.target.device)
        out = self._draft_forward(torch.tensor(next_tokens), features, pos, mask)
        return out[-1]

    def _frontier_forward(self, tokens, prev, anc, base: int, pos: int):
        """Draft forward for frontier nodes: pairs (node token, parent feature) at one position; each
        node sees the committed prefix, the cached tree entries of its ancestors (`anc`), and itself.
        Returns (features [F, H], the nodes' rows over entries including themselves)."""
        dev, f = self.target.device, tokens.numel()
        allowed = torch.cat((anc, torch.eye(f, dtype=torch.bool, device=dev)), dim=1)
        prefix = torch.ones(f, base, dtype=torch.bool, device=dev)
        mask = additive(torch.cat((prefix, allowed), dim=1), self.draft_dtype)
        feats = self._draft_forward(tokens, prev, torch.full((f,), pos, device=dev), mask)
        return feats, allowed

    def _grow_tree(self, root_token: int, root_feature: torch.Tensor, root_pos: int) -> DraftTree:
        """EAGLE-2 dynamic tree: top-k children, top-k expansion per depth, best candidates overall."""
        cfg, dev = self.tree_config, self.target.device
        base = cache_length(self.dcache)
        # Depth 1: children of the root, from the feature predicted for the root's position.
        tok, scores, _ = expand_candidates(torch.zeros(1, device=dev), self._draft_logprobs(root_feature)[None], cfg.topk)
        cand_tokens = [self.head.to_target_ids(tok)]
        cand_parents = [torch.full_like(tok, -1)]
        cand_scores = [scores]
        n_cand = tok.numel()
        frontier = torch.arange(n_cand, device=dev)  # global candidate ids being expanded
        frontier_prev = root_feature.expand(n_cand, -1)  # features their pairs are built from
        frontier_anc = torch.zeros(n_cand, 0, dtype=torch.bool, device=dev)  # ancestors among cached entries
        all_tokens, all_scores = cand_tokens[0], scores
        for depth in range(1, cfg.num_steps):
            feats, allowed = self._frontier_forward(
                all_tokens[frontier], frontier_prev, frontier_anc, base, root_pos + depth - 1
            )
            tok, scores, owner = expand_candidates(all_scores[frontier], self._draft_logprobs(feats), cfg.topk)
            cand_tokens.append(self.head.to_target_ids(tok))
            cand_parents.append(frontier[owner])
            cand_scores.append(scores)
            all_tokens = torch.cat((all_tokens, cand_tokens[-1]))
            all_scores = torch.cat((all_scores, scores))
            pick = best_candidates(scores, cfg.topk)
            frontier = n_cand + pick
            frontier_prev = feats[owner[pick]]
            frontier_anc = allowed[owner[pick]]
            n_cand += tok.numel()
        truncate(self.dcache, base)
        return select_tree(
            root_token,
            torch.cat(cand_tokens),
            torch.cat(cand_parents),
            torch.cat(cand_scores),
            cfg.num_draft_tokens - 1,
        )

    def _draft_probs(self, features: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
        """[F, H] features -> [F, V] draft distribution over the target vocabulary (same logit processing
        as the target's)."""
        probs = target_probs(draft_logits(features, self.lm_weight), sampling)
        if self.head.hot_token_ids is None:
            return probs
        full = probs.new_zeros(probs.shape[0], self.target.config.vocab_size)
        full[:, self.head.hot_token_ids.to(full.device)] = probs
        return full

    def _grow_sampled_tree(
        self, root_token: int, root_feature: torch.Tensor, root_pos: int, sampling: SamplingParams, mode: str, generator
    ) -> tuple[DraftTree, torch.Tensor, torch.Tensor | None]:
        """Trees whose children are *sampled* from the draft, as the exact sampling verifiers need.

        mode "wor" (for rrs): every expanded node draws its children without replacement from q
        (Gumbel top-k, kept in draw order); how many children a node gets is fixed from the ranks
        of already-drawn nodes before its children are drawn, and no drawn node is ever dropped.
        The root gets `topk` children; each later depth spends an equal share of the remaining
        budget on the best-scoring nodes of the previous depth, `topk` children each.
        mode "chains" (for hsd): K = (num_draft_tokens - 1) // num_steps independent chains of
        depth num_steps, each token drawn from q at its own prefix.

        Returns (tree, q [N, V] draft distribution at every expanded node, chain node ids [K, D] or None).
        """
        cfg, dev = self.tree_config, self.target.device
        depth_max, k, budget = cfg.num_steps, cfg.topk, cfg.num_draft_tokens - 1
        base = cache_length(self.dcache)
        toks, parents, scores = [root_token], [-1], [0.0]
        q_of = {0: self._draft_probs(root_feature[None], sampling)[0]}
        feat_of = {0: root_feature}
        entries: list[int] = []  # tree nodes whose draft pairs sit in the cache, in cache order
        if mode == "chains":
            n_chains = max(1, budget // depth_max)
            plan = [(0, 1)] * n_chains
        else:
            plan = [(0, min(k, budget))]
        per_depth = (budget - plan[0][1]) // max(depth_max - 1, 1) if mode == "wor" else 0
        chains = []
        for depth in range(1, depth_max + 1):
            new_nodes = []
            for node, count in plan:
                q = q_of[node]
                count = min(count, int((q > 0).sum()))
                if mode == "wor":
                    gumbel = -torch.log(-torch.log(torch.rand(q.shape, generator=generator, device=q.device).clamp(min=1e-20)))
                    picks = (q.log() + gumbel).topk(count).indices
                else:
                    picks = torch.multinomial(q, count, generator=generator)
                for t in picks.tolist():
                    toks.append(t)
                    parents.append(node)
                    scores.append(scores[node] + float(q[t].log()))
                    new_nodes.append(len(toks) - 1)
            if mode == "chains":
                chains.append(new_nodes)
            if depth == depth_max or not new_nodes:
                break
            if mode == "chains":
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
                [[self._is_ancestor(e, n, parents) for e in entries] for n in expand], dtype=torch.bool, device=dev
            ).reshape(len(expand), len(entries))
            prev = torch.stack([feat_of[parents[n]] for n in expand])
            feats, _ = self._frontier_forward(torch.tensor([toks[n] for n in expand], device=dev), prev, anc, base, root_pos + depth - 1)
            entries.extend(expand)
            probs = self._draft_probs(feats, sampling)
            for i, n in enumerate(expand):
                feat_of[n], q_of[n] = feats[i], probs[i]
        truncate(self.dcache, base)
        parents_t = torch.tensor(parents)
        anc = ancestor_matrix(parents_t)
        tree = DraftTree(tokens=torch.tensor(toks), parents=parents_t, depths=anc.sum(1) - 1, ancestors=anc)
        q_nodes = torch.zeros(len(toks), self.target.config.vocab_size)
        for n, q in q_of.items():
            q_nodes[n] = q.float().cpu()
        chain_ids = None
        if mode == "chains":  # chains[d][c] = node of chain c at depth d+1 (one draw per chain per depth)
            chain_ids = torch.tensor(chains).T.contiguous()
        return tree, q_nodes, chain_ids

    @staticmethod
    def _is_ancestor(a: int, node: int, parents: list[int]) -> bool:
        while node >= 0:
            if node == a:
                return True
            node = parents[node]
        return False

    # ---- target side ------------------------------------------------------------------------
    def _tree_forward(self, tree: DraftTree, root_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One target forward over the tree: (features [N, H], fp32 logits [N, V])."""
        dev = self.target.device
        ids = tree.tokens.to(dev)[None]
        pos = (root_pos + tree.depths.to(dev))[None]
        mask = tree_mask(tree.ancestors.to(dev), root_pos, self.target.dtype)
        hidden = self.target.hidden(ids, pos, self.tcache, mask)[0]
        return hidden, self.target.logits(hidden)

    def _cycle(self, root_token, root_feature, root_pos, sampling, method, generator):
        """Draft, verify, commit. Returns (new tokens, accepted-path features)."""
        if sampling.greedy:
            tree = self._grow_tree(root_token, root_feature, root_pos)
            t = time.perf_counter()
            hidden, logits = self._tree_forward(tree, root_pos)
            path, token = verify_greedy(tree, logits.argmax(dim=-1).cpu())
        elif method == "specinfer":
            tree = self._grow_tree(root_token, root_feature, root_pos)
            t = time.perf_counter()
            hidden, logits = self._tree_forward(tree, root_pos)
            p = target_probs(logits, sampling).cpu()
            last, tok = verify_specinfer(tree.parents, tree.tokens[None], p[None], generator)
            path, token = tree.ancestors[int(last)].nonzero().flatten(), int(tok)
        else:
            mode = "wor" if method == "rrs" else "chains"
            tree, q, chains = self._grow_sampled_tree(root_token, root_feature, root_pos, sampling, mode, generator)
            t = time.perf_counter()
            hidden, logits = self._tree_forward(tree, root_pos)
            p = target_probs(logits, sampling).cpu()
            if method == "rrs":
                last, tok = verify_rrs(tree.parents, tree.tokens[None], p[None], q[None], generator)
                last = int(last)
            else:
                along = torch.cat((torch.zeros(chains.shape[0], 1, dtype=torch.long), chains), dim=1)  # root + chain
                anchor, tau, tok = verify_hsd_multidraft(
                    tree.tokens[chains][None], p[along][None], q[along[:, :-1]][None], generator
                )
                last = int(along[int(anchor), int(tau)])
            path, token = tree.ancestors[last].nonzero().flatten(), int(tok)
        keep_entries(self.tcache, root_pos, path)
        self._verify_s += time.perf_counter() - t
        return tree.tokens[path[1:]].tolist() + [token], hidden[path.to(hidden.device)]

    @torch.no_grad()
    def generate(
        self,
        prompt_ids,
        max_new_tokens: int,
        sampling: SamplingParams | None = None,
        verify: str = "specinfer",
        generator: torch.Generator | None = None,
        ignore_eos: bool = False,
    ) -> GenerationResult:
        """Decode with speculation. T = 0 verifies greedily (bit-identical to vanilla greedy); T > 0
        uses `verify` in VERIFY_METHODS, each lossless with the tree it builds (docs/verification.md)."""
        sampling = sampling or SamplingParams()
        if verify not in VERIFY_METHODS:
            raise InvalidRequestError(f"unknown verification method {verify!r}; expected one of {VERIFY_METHODS}")
        ids = check_request(prompt_ids, max_new_tokens, self.target.max_context)
        eos = stop_ids(self.target, ignore_eos)
        dev = self.target.device
        self.tcache, self.dcache = new_cache(), new_cache()
        self._verify_s = 0.0
        t0 = time.perf_counter()
        hidden = self.target.hidden(torch.tensor([ids], device=dev), torch.arange(len(ids), device=dev)[None], self.tcache)[0]
        out = [int(sample_token(self.target.logits(hidden[-1]), sampling, generator))]
        result = GenerationResult(tokens=out, target_forwards=1, seconds=0.0)
        finished = out[0] in eos or max_new_tokens == 1
        if not finished:
            root_feature = self._draft_extend(ids[1:] + out, hidden, 0)
        root_pos = len(ids)
        while not finished:
            new, path_features = self._cycle(out[-1], root_feature, root_pos, sampling, verify, generator)
            out.extend(new)
            result.target_forwards += 1
            result.accept_lengths.append(len(new))
            out[:], finished = truncate_output(out, max_new_tokens, eos)
            if finished:
                break
            root_feature = self._draft_extend(new, path_features, root_pos)
            root_pos += len(new)
        result.seconds = time.perf_counter() - t0
        result.verify_seconds = self._verify_s
        result.draft_seconds = result.seconds - result.verify_seconds
        return result
