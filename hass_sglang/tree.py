"""Draft trees: their shape (`TreeShape`, SGLang's three tree flags) and EAGLE-2 dynamic trees as
pure tensor functions.

A draft round grows candidates depth by depth: the root's top-k children, then at every further
depth the top-k children of each of the top-k highest-scoring nodes of the previous depth
(score = cumulative draft log-probability along the path, EAGLE-2 Sec. 4). The verified tree is
the `num_nodes` best candidates by score. Scores never increase along a path, and ties go to the
earlier candidate, so the selection is closed under ancestors.

Node 0 of a DraftTree is the root: the last emitted token, whose target feature is not known yet.
Nodes are in topological order (parents before children).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hass_sglang.errors import ConfigError

SGLANG_TREE_FLAGS = ("--speculative-num-steps", "--speculative-eagle-topk", "--speculative-num-draft-tokens")


@dataclass(frozen=True)
class TreeShape:
    """Draft tree shape, in SGLang's terms, for every decoder and server of the project.

    num_steps = --speculative-num-steps (tree depth), topk = --speculative-eagle-topk,
    num_draft_tokens = --speculative-num-draft-tokens (tokens verified per cycle, root included).
    Any values >= 1 form a shape (what SGLang accepts); `check_fits` is the stricter rule of the
    reference decoder (2 <= num_draft_tokens <= what the tree holds).
    """

    num_steps: int
    topk: int
    num_draft_tokens: int

    def __post_init__(self):
        for flag, value in zip(SGLANG_TREE_FLAGS, (self.num_steps, self.topk, self.num_draft_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{flag} ({flag[14:].replace('-', '_')}) must be >= 1, got {value!r}")

    @property
    def capacity(self) -> int:
        """Most tokens the tree holds: the root, topk children, then topk x topk per further step."""
        return 1 + self.topk + (self.num_steps - 1) * self.topk * self.topk

    def check_fits(self) -> "TreeShape":
        if not (2 <= self.num_draft_tokens <= self.capacity):
            raise ConfigError(
                f"num_draft_tokens must be in [2, {self.capacity}] for num_steps={self.num_steps}, "
                f"topk={self.topk}; got {self.num_draft_tokens}"
            )
        return self

    @classmethod
    def chain(cls, depth: int) -> "TreeShape":
        return cls(num_steps=depth, topk=1, num_draft_tokens=depth + 1)

    @classmethod
    def parse(cls, text: str) -> "TreeShape":
        """'STEPS TOPK DRAFT_TOKENS' (spaces or commas): '3 1 4', '6,10,60'."""
        parts = str(text).replace(",", " ").split()
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ConfigError(f"bad tree {text!r}: expected 'STEPS TOPK DRAFT_TOKENS', e.g. '3 2 6'")
        return cls(*(int(p) for p in parts))

    @classmethod
    def from_flags(cls, num_steps: int | None, topk: int | None, num_draft_tokens: int | None,
                   defaults: "TreeShape | None" = None) -> "TreeShape":
        """A user's flags over `defaults` (the paper's tree); a flag given always wins.

        SGLang's rule is kept for the tokens left out: with top-k 1 the tree is a chain of
        num_steps + 1 tokens, otherwise the default, never more than the tree holds."""
        defaults = defaults or PAPER_TREE
        steps = defaults.num_steps if num_steps is None else num_steps
        k = defaults.topk if topk is None else topk
        if num_draft_tokens is not None:
            return cls(steps, k, num_draft_tokens)
        probe = cls(steps, k, 1)  # validates steps and k before the capacity uses them
        tokens = steps + 1 if k == 1 else min(defaults.num_draft_tokens, probe.capacity)
        return cls(steps, k, tokens)

    def sglang_flags(self) -> tuple[str, ...]:
        values = (self.num_steps, self.topk, self.num_draft_tokens)
        return tuple(x for flag, v in zip(SGLANG_TREE_FLAGS, values) for x in (flag, str(v)))

    @property
    def spec(self) -> str:
        """'STEPS TOPK DRAFT_TOKENS', what `parse` reads and the `--tree` flags take."""
        return f"{self.num_steps} {self.topk} {self.num_draft_tokens}"

    def __str__(self) -> str:
        return f"num_steps={self.num_steps} topk={self.topk} num_draft_tokens={self.num_draft_tokens}"


# HASS paper, section 4 (the EAGLE-2 setting it evaluates with): depth 6, top-k 10, 60 tokens.
PAPER_TREE = TreeShape(6, 10, 60)
# On 2 CPU cores verifying 60 tokens per step costs far more than it can save. A 3-step chain (4
# tokens per verify) was the fastest of the fp32 sweep in docs/sglang-cpu.md (0.80x plain vs 0.67x
# for 3 x top-2 x 6 at T=0, same run): the default of fp32 CPU servers (every test server).
CPU_TREE = TreeShape(3, 1, 4)
# In bf16 an 8-token verify costs little more than a 1-token step (AMX, or AVX-512 BF16 with the
# folded attention), so a wider tree pays. At 8 verified tokens, top-4 from 3 steps covers more of
# the target's mass than top-2 from 4 steps for one draft step less: with the shipped HASS head, 12
# prompts x 64 tokens on an AMD EPYC, accept length 2.05 vs 1.94 at T=0 and 1.51 vs 1.44 at T=1;
# paired with plain (`hass calibrate`) 1.22x vs 1.20x at T=0 (docs/sglang-cpu.md). In fp32 wide
# trees lost (4 2 8: 0.73x vs 1.04x for 3 1 4).
CPU_BF16_TREE = TreeShape(3, 4, 8)
# What `hass calibrate` tries on CPUs: chains and narrow trees (a 60-token paper tree never pays on 2 cores).
CPU_CANDIDATES = (TreeShape(2, 1, 3), CPU_TREE, TreeShape(3, 2, 6), TreeShape(4, 1, 5), TreeShape(4, 2, 8),
                  TreeShape(2, 4, 8), CPU_BF16_TREE, TreeShape(5, 2, 10))


def cpu_default_tree(dtype: str | None) -> TreeShape:
    """The tree of a CPU server that was given none and has no calibration: by its dtype."""
    return CPU_BF16_TREE if dtype in ("bfloat16", "bf16") else CPU_TREE


# SGLang 0.5.23's own default for MTP (NextN) drafts of DeepSeek targets
# (speculative_hook._auto_choose_speculative_params): a 3-step chain. Partial tree flags for an
# MTP head are completed from it.
MTP_TREE = TreeShape(3, 1, 4)


@dataclass(frozen=True)
class DraftTree:
    tokens: torch.Tensor  # [N] long, target token ids; tokens[0] = root
    parents: torch.Tensor  # [N] long, parents[0] = -1, parents[i] < i
    depths: torch.Tensor  # [N] long, depths[0] = 0
    ancestors: torch.Tensor  # [N, N] bool, ancestors[i, j] = j is i or an ancestor of i

    @property
    def size(self) -> int:
        return int(self.tokens.numel())


def ancestor_matrix(parents: torch.Tensor) -> torch.Tensor:
    """[N] parent indices (-1 for roots, parents[i] < i) -> [N, N] bool ancestor-or-self matrix.

    One vectorised step per tree level: walk every node's pointer up at once.
    """
    n = parents.numel()
    anc = torch.eye(n, dtype=torch.bool, device=parents.device)
    rows = torch.arange(n, device=parents.device)
    cur = parents.clone()
    while bool((cur >= 0).any()):
        live = cur >= 0
        anc[rows[live], cur[live]] = True
        cur = torch.where(live, parents[cur.clamp(min=0)], torch.full_like(cur, -1))
    return anc


def expand_candidates(
    frontier_scores: torch.Tensor, child_logprobs: torch.Tensor, topk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Children of every frontier node: its top-k draft tokens, scored by cumulative log-prob.

    frontier_scores [F], child_logprobs [F, V] -> (tokens [F*k], scores [F*k], frontier_index [F*k]).
    """
    lp, tok = child_logprobs.topk(topk, dim=-1)
    scores = frontier_scores[:, None] + lp
    owner = torch.arange(frontier_scores.numel(), device=scores.device).repeat_interleave(topk)
    return tok.reshape(-1), scores.reshape(-1), owner


def best_candidates(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best scores, ties resolved towards the lower index, returned in index order."""
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return order.sort().values


def select_tree(
    root_token: int,
    cand_tokens: torch.Tensor,  # [M] target ids
    cand_parents: torch.Tensor,  # [M] candidate index of the parent, -1 = root; parents precede children
    cand_scores: torch.Tensor,  # [M] cumulative log-probs
    num_nodes: int,  # draft nodes to keep (the tree has num_nodes + 1 nodes with the root)
) -> DraftTree:
    kept = best_candidates(cand_scores, num_nodes)
    new_index = torch.full((cand_tokens.numel(),), -1, dtype=torch.long, device=cand_tokens.device)
    new_index[kept] = torch.arange(1, kept.numel() + 1, device=cand_tokens.device)
    par = cand_parents[kept]
    par = torch.where(par >= 0, new_index[par.clamp(min=0)], torch.zeros_like(par))
    if bool((par < 0).any()):
        raise AssertionError("tree selection is not closed under ancestors")
    parents = torch.cat((torch.tensor([-1], device=par.device), par))
    tokens = torch.cat((torch.tensor([root_token], device=cand_tokens.device), cand_tokens[kept]))
    anc = ancestor_matrix(parents)
    return DraftTree(tokens=tokens, parents=parents, depths=anc.sum(1) - 1, ancestors=anc)


def chain_tree(root_token: int, tokens: torch.Tensor) -> DraftTree:
    """A linear draft (top-1 at every depth) as a tree."""
    n = tokens.numel()
    parents = torch.arange(-1, n, dtype=torch.long)
    anc = ancestor_matrix(parents)
    return DraftTree(
        tokens=torch.cat((torch.tensor([root_token]), tokens.cpu())),
        parents=parents,
        depths=torch.arange(n + 1),
        ancestors=anc,
    )
