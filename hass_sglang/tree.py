"""EAGLE-2 dynamic draft trees as pure tensor functions.

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
