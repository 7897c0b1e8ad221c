"""Reference speculative decoder (batch 1): EAGLE-2 dynamic draft trees with a HASS/EAGLE or MTP head.

The project's ground truth for acceptance length and for losslessness; plain PyTorch over the
transformers target. One cycle:

1. grow a draft tree from the root (the last emitted token) with the head (`tree.py`);
2. one target forward over the tree with a tree attention mask (`masks.py`);
3. verify (`verify.py`), keep only the accepted path in the target KV cache (`kv_cache.py`);
4. feed the accepted tokens with their real target features to the head (draft extend).

Positions follow SGLang's EAGLE convention: the head's pair (token x_{t+1}, feature f_t) sits at
position t, a tree node at depth d below a root at position P sits at target position P + d.
"""

from __future__ import annotations

import time

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from hass_sglang.errors import CheckpointMismatchError, InvalidRequestError
from hass_sglang.generate import GenerationResult, check_request, truncate_output
from hass_sglang.heads import DraftHead, draft_logits
from hass_sglang.kv_cache import cache_length, keep_entries, new_cache, truncate
from hass_sglang.masks import additive, causal_mask, tree_mask
from hass_sglang.sampling import SamplingParams
from hass_sglang.target import Target
from hass_sglang.tree import DraftTree, best_candidates, expand_candidates, select_tree
from hass_sglang.verify import verify_greedy


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
        """draft_dtype: the head's compute dtype (None = the target's). The draft only proposes
        tokens, so its precision never affects the output; bf16 makes the full-vocabulary draft
        lm_head ~5x cheaper than fp32 on AVX-512 CPUs."""
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

    def _grow_tree(self, root_token: int, root_feature: torch.Tensor, root_pos: int) -> DraftTree:
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
            # Pairs (node token, parent feature) at position root_pos + depth - 1; each node sees the
            # committed prefix, the cached entries of its ancestors, and itself.
            allowed = torch.cat((frontier_anc, torch.eye(frontier.numel(), dtype=torch.bool, device=dev)), dim=1)
            prefix = torch.ones(frontier.numel(), base, dtype=torch.bool, device=dev)
            mask = additive(torch.cat((prefix, allowed), dim=1), self.draft_dtype)
            pos = torch.full((frontier.numel(),), root_pos + depth - 1, device=dev)
            feats = self._draft_forward(all_tokens[frontier], frontier_prev, pos, mask)
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

    # ---- target side ------------------------------------------------------------------------
    def _verify(self, tree: DraftTree, root_pos: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        dev = self.target.device
        ids = tree.tokens.to(dev)[None]
        pos = (root_pos + tree.depths.to(dev))[None]
        mask = tree_mask(tree.ancestors.to(dev), root_pos, self.target.dtype)
        hidden = self.target.hidden(ids, pos, self.tcache, mask)[0]
        argmax = self.target.logits(hidden).argmax(dim=-1).cpu()
        path, bonus = verify_greedy(tree, argmax)
        keep_entries(self.tcache, root_pos, path)
        return path, bonus, hidden[path.to(dev)]

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int, sampling: SamplingParams | None = None) -> GenerationResult:
        sampling = sampling or SamplingParams()
        if not sampling.greedy:
            raise InvalidRequestError(
                "the reference decoder verifies greedily; temperature > 0 needs a sampling verifier"
            )
        ids = check_request(prompt_ids, max_new_tokens, self.target.max_context)
        eos = self.target.eos_token_ids
        dev = self.target.device
        self.tcache, self.dcache = new_cache(), new_cache()
        t0 = time.perf_counter()
        hidden = self.target.hidden(torch.tensor([ids], device=dev), torch.arange(len(ids), device=dev)[None], self.tcache)[0]
        out = [int(self.target.logits(hidden[-1]).argmax())]
        result = GenerationResult(tokens=out, target_forwards=1, seconds=0.0)
        draft_s = verify_s = 0.0
        finished = out[0] in eos or max_new_tokens == 1
        if not finished:
            t = time.perf_counter()
            root_feature = self._draft_extend(ids[1:] + out, hidden, 0)
            draft_s += time.perf_counter() - t
        root_pos = len(ids)
        while not finished:
            t = time.perf_counter()
            tree = self._grow_tree(out[-1], root_feature, root_pos)
            t2 = time.perf_counter()
            path, bonus, path_features = self._verify(tree, root_pos)
            t3 = time.perf_counter()
            draft_s += t2 - t
            verify_s += t3 - t2
            new = tree.tokens[path[1:]].tolist() + [bonus]
            out.extend(new)
            result.target_forwards += 1
            result.accept_lengths.append(len(new))
            out[:], finished = truncate_output(out, max_new_tokens, eos)
            if finished:
                break
            root_feature = self._draft_extend(new, path_features, root_pos)
            root_pos += len(new)
            draft_s += time.perf_counter() - t3
        result.seconds = time.perf_counter() - t0
        result.draft_seconds, result.verify_seconds = draft_s, verify_s
        return result
