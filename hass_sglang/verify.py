"""Tree verification as pure tensor functions.

Greedy (temperature 0): a node is correct when its token is the target's argmax at its parent;
the accepted path is the deepest node whose ancestors are all correct, and the bonus token is
the target's argmax at that node. Sibling tokens are distinct, so that node is unique; the
emitted tokens are exactly what greedy vanilla decoding would produce.
"""

from __future__ import annotations

import torch

from hass_sglang.tree import DraftTree


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
