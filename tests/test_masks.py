import torch

from hass_sglang.masks import causal_mask, tree_mask
from hass_sglang.tree import ancestor_matrix


def test_causal_mask_with_offset():
    m = causal_mask(3, 2, torch.float32)[0, 0]
    allowed = m == 0
    assert allowed.tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]
    assert torch.isneginf(m[~allowed]).all()  # blocked logits are -inf, never 0


def test_tree_mask_sees_prefix_and_ancestors_only():
    parents = torch.tensor([-1, 0, 0, 1])
    m = tree_mask(ancestor_matrix(parents), past_len=2, dtype=torch.float32)[0, 0]
    assert (m == 0).tolist() == [
        [True, True, True, False, False, False],
        [True, True, True, True, False, False],
        [True, True, True, False, True, False],
        [True, True, True, True, False, True],
    ]


def test_tree_mask_equals_causal_mask_for_a_chain():
    parents = torch.arange(-1, 4)
    assert torch.equal(tree_mask(ancestor_matrix(parents), 3, torch.float32), causal_mask(5, 3, torch.float32))
