import torch

from hass_sglang.tree import DraftTree, ancestor_matrix, chain_tree
from hass_sglang.verify import verify_greedy


def make_tree(tokens, parents):
    parents = torch.tensor(parents)
    anc = ancestor_matrix(parents)
    return DraftTree(torch.tensor(tokens), parents, anc.sum(1) - 1, anc)


def verify_by_walk(tree, argmax):
    """Loop reference: follow the child whose token is the target's argmax."""
    node, path = 0, [0]
    while True:
        nxt = [c for c in range(tree.size) if int(tree.parents[c]) == node and int(tree.tokens[c]) == int(argmax[node])]
        if not nxt:
            return path, int(argmax[node])
        node = nxt[0]
        path.append(node)


def test_chain_full_accept_and_bonus():
    tree = chain_tree(5, torch.tensor([6, 7, 8]))
    path, bonus = verify_greedy(tree, torch.tensor([6, 7, 8, 9]))
    assert path.tolist() == [0, 1, 2, 3] and bonus == 9


def test_chain_rejects_at_first_mismatch_and_ignores_later_matches():
    tree = chain_tree(5, torch.tensor([6, 7, 8]))
    path, bonus = verify_greedy(tree, torch.tensor([6, 1, 8, 9]))
    assert path.tolist() == [0, 1] and bonus == 1


def test_tree_follows_the_matching_branch():
    #        0(r)
    #      /   |   \
    #    1:a  2:b  3:c
    #    |     |
    #   4:d   5:e
    tree = make_tree([0, 10, 11, 12, 13, 14], [-1, 0, 0, 0, 1, 2])
    path, bonus = verify_greedy(tree, torch.tensor([11, 0, 14, 0, 0, 42]))
    assert path.tolist() == [0, 2, 5] and bonus == 42
    path, bonus = verify_greedy(tree, torch.tensor([99, 0, 0, 0, 0, 0]))
    assert path.tolist() == [0] and bonus == 99


def test_matches_loop_reference_on_random_trees():
    gen = torch.Generator().manual_seed(0)
    for trial in range(300):
        n = int(torch.randint(2, 25, (1,), generator=gen))
        parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
        # distinct sibling tokens from a small vocab so that matches are frequent
        tokens = [0] * n
        for i in range(1, n):
            used = {tokens[j] for j in range(1, i) if parents[j] == parents[i]}
            tokens[i] = min(set(range(12)) - used)
        tree = make_tree(tokens, parents)
        argmax = torch.randint(0, 4, (n,), generator=gen)
        path, bonus = verify_greedy(tree, argmax)
        want_path, want_bonus = verify_by_walk(tree, argmax)
        assert path.tolist() == want_path and bonus == want_bonus, trial
