"""Reference speculative decoder (batch 1): EAGLE-2 dynamic draft trees with a HASS/EAGLE or MTP head.

The project's ground truth for acceptance length and for losslessness; plain PyTorch over the
transformers target. One cycle is propose -> verify -> commit:

1. propose: a proposer grows a draft tree from the root, the last emitted token (`proposers.py`);
2. verify: one target forward over the tree with a tree attention mask (`masks.py`), then the
   method's acceptance rule (`verify.py`: greedy at T = 0; specinfer / rrs / hsd at T > 0, each
   with the tree it needs to be exact, see docs/verification.md);
3. commit: keep only the accepted path in the target KV cache (`kv_cache.py`) and feed the
   accepted tokens with their real target features to the draft (draft extend).

`METHODS` pairs each verification rule with the proposer it is exact for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from hass_sglang.errors import CheckpointMismatchError, InvalidRequestError
from hass_sglang.heads import DraftHead
from hass_sglang.kv_cache import keep_entries, new_cache
from hass_sglang.masks import tree_mask
from hass_sglang.proposers import (
    Drafter,
    Proposal,
    Proposer,
    Root,
    propose_sampled_chains,
    propose_sampled_tree,
    propose_top_k_tree,
)
from hass_sglang.sampling import SamplingParams, sample_token, target_probs
from hass_sglang.target import Target
from hass_sglang.tree import PAPER_TREE, TreeShape
from hass_sglang.vanilla import GenerationResult, check_request, stop_ids, truncate_output
from hass_sglang.verify import verify_greedy, verify_hsd_multidraft, verify_rrs, verify_specinfer

# An acceptance rule: (proposal, target fp32 logits [N, V] over its tree, sampling, generator)
# -> (accepted path: node ids root..last [L], the token the target emits after it).
Acceptor = Callable[[Proposal, torch.Tensor, SamplingParams, "torch.Generator | None"], tuple[torch.Tensor, int]]


def accept_greedy(proposal: Proposal, logits, sampling, generator) -> tuple[torch.Tensor, int]:
    return verify_greedy(proposal.tree, logits.argmax(dim=-1).cpu())


def accept_specinfer(proposal: Proposal, logits, sampling, generator) -> tuple[torch.Tensor, int]:
    tree = proposal.tree
    p = target_probs(logits, sampling).cpu()
    last, tok = verify_specinfer(tree.parents, tree.tokens[None], p[None], generator)
    return tree.ancestors[int(last)].nonzero().flatten(), int(tok)


def accept_rrs(proposal: Proposal, logits, sampling, generator) -> tuple[torch.Tensor, int]:
    tree = proposal.tree
    p = target_probs(logits, sampling).cpu()
    last, tok = verify_rrs(tree.parents, tree.tokens[None], p[None], proposal.draft_probs[None], generator)
    return tree.ancestors[int(last)].nonzero().flatten(), int(tok)


def accept_hsd(proposal: Proposal, logits, sampling, generator) -> tuple[torch.Tensor, int]:
    tree, chains, q = proposal.tree, proposal.chains, proposal.draft_probs
    p = target_probs(logits, sampling).cpu()
    along = torch.cat((torch.zeros(chains.shape[0], 1, dtype=torch.long), chains), dim=1)  # root + chain
    anchor, tau, tok = verify_hsd_multidraft(tree.tokens[chains][None], p[along][None], q[along[:, :-1]][None], generator)
    last = int(along[int(anchor), int(tau)])
    return tree.ancestors[last].nonzero().flatten(), int(tok)


@dataclass(frozen=True)
class Method:
    propose: Proposer
    accept: Acceptor


# Each verification rule with the proposer whose trees it is exact for (docs/verification.md).
METHODS: dict[str, Method] = {
    "greedy": Method(propose_top_k_tree, accept_greedy),  # T = 0: bit-identical to vanilla greedy
    "specinfer": Method(propose_top_k_tree, accept_specinfer),
    "rrs": Method(propose_sampled_tree, accept_rrs),
    "hsd": Method(propose_sampled_chains, accept_hsd),
}
VERIFY_METHODS = ("specinfer", "rrs", "hsd")  # the choices at T > 0


class SpeculativeDecoder:
    def __init__(
        self,
        target: Target,
        head: DraftHead,
        tree: TreeShape | None = None,
        draft_dtype: torch.dtype | None = torch.bfloat16,
        proposer: Proposer | None = None,
    ):
        """draft_dtype: the head's compute dtype (None = the target's). proposer: replaces every
        method's own proposer (a test's oracle, say)."""
        if head.hidden_size != target.config.hidden_size:
            raise CheckpointMismatchError(
                f"draft hidden size {head.hidden_size} != target hidden size {target.config.hidden_size}"
            )
        if head.config.vocab_size != target.config.vocab_size:
            raise CheckpointMismatchError(
                f"draft vocab size {head.config.vocab_size} != target vocab size {target.config.vocab_size}"
            )
        self.target = target
        self.tree = (tree or PAPER_TREE).check_fits()
        self.drafter = Drafter(target, head, draft_dtype or target.dtype)
        self.proposer = proposer

    @property
    def head(self) -> DraftHead:
        return self.drafter.head

    def _tree_forward(self, proposal: Proposal, cache, root_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One target forward over the tree: (features [N, H], fp32 logits [N, V])."""
        tree, dev = proposal.tree, self.target.device
        ids = tree.tokens.to(dev)[None]
        pos = (root_pos + tree.depths.to(dev))[None]
        mask = tree_mask(tree.ancestors.to(dev), root_pos, self.target.dtype)
        hidden = self.target.hidden(ids, pos, cache, mask)[0]
        return hidden, self.target.logits(hidden)

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
        method = METHODS["greedy" if sampling.greedy else verify]
        propose = self.proposer or method.propose
        ids = check_request(prompt_ids, max_new_tokens, self.target.max_context)
        eos = stop_ids(self.target, ignore_eos)
        dev = self.target.device
        cache = new_cache()
        self.drafter.reset()
        verify_s = 0.0
        t0 = time.perf_counter()
        hidden = self.target.hidden(torch.tensor([ids], device=dev), torch.arange(len(ids), device=dev)[None], cache)[0]
        out = [int(sample_token(self.target.logits(hidden[-1]), sampling, generator))]
        result = GenerationResult(tokens=out, target_forwards=1, seconds=0.0)
        finished = out[0] in eos or max_new_tokens == 1
        if not finished:
            root = Root(out[-1], self.drafter.extend(ids[1:] + out, hidden, 0), len(ids))
        while not finished:
            proposal = propose(self.drafter, root, self.tree, sampling, generator)
            t_verify = time.perf_counter()
            hidden, logits = self._tree_forward(proposal, cache, root.position)
            path, token = method.accept(proposal, logits, sampling, generator)
            keep_entries(cache, root.position, path)  # commit: only the accepted path stays
            verify_s += time.perf_counter() - t_verify
            new = proposal.tree.tokens[path[1:]].tolist() + [token]
            out.extend(new)
            result.target_forwards += 1
            result.accept_lengths.append(len(new))
            out[:], finished = truncate_output(out, max_new_tokens, eos)
            if finished:
                break
            root = Root(out[-1], self.drafter.extend(new, hidden[path.to(hidden.device)], root.position),
                        root.position + len(new))
        result.seconds = time.perf_counter() - t0
        result.verify_seconds = verify_s
        result.draft_seconds = result.seconds - result.verify_seconds
        return result
