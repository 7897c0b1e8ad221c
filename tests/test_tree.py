import torch

from hass_sglang.tree import ancestor_matrix, best_candidates, chain_tree, expand_candidates, select_tree


def ancestors_by_loop(parents):
    n = len(parents)
    anc = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            anc[i, j] = True
            j = int(parents[j])
    return anc


def random_parents(n, gen):
    return torch.tensor([-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)])


def test_ancestor_matrix_matches_loop_on_random_trees():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 5, 17, 61):
        parents = random_parents(n, gen)
        assert torch.equal(ancestor_matrix(parents), ancestors_by_loop(parents))


def test_expand_candidates_scores_are_cumulative_and_owned():
    frontier_scores = torch.tensor([-0.5, -1.0])
    logp = torch.log_softmax(torch.tensor([[3.0, 1.0, 0.0, 2.0], [0.0, 0.0, 5.0, 1.0]]), -1)
    tok, sc, owner = expand_candidates(frontier_scores, logp, 2)
    assert tok.tolist() == [0, 3, 2, 3]
    assert owner.tolist() == [0, 0, 1, 1]
    assert torch.allclose(sc, frontier_scores[owner] + logp[owner, tok])


def test_best_candidates_prefers_lower_index_on_ties_and_returns_index_order():
    scores = torch.tensor([-1.0, -0.5, -1.0, -0.1, -1.0])
    assert best_candidates(scores, 3).tolist() == [0, 1, 3]


def test_select_tree_keeps_best_nodes_closed_under_ancestors():
    gen = torch.Generator().manual_seed(1)
    # depth-1: 3 candidates (parents -1), depth-2: 3 children of each
    lp1 = torch.log_softmax(torch.randn(3, generator=gen), -1)
    lp2 = torch.log_softmax(torch.randn(3, 3, generator=gen), -1)
    tokens = torch.arange(12)
    parents = torch.tensor([-1, -1, -1, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    scores = torch.cat((lp1, (lp1[:, None] + lp2).reshape(-1)))
    for budget in range(1, 13):
        tree = select_tree(99, tokens, parents, scores, budget)
        assert tree.size == budget + 1 and tree.tokens[0] == 99
        kept = tree.tokens[1:]
        # exactly the `budget` best candidates
        assert set(kept.tolist()) == set(torch.topk(scores, budget).indices.tolist())
        # parents precede children and point at the right candidate
        for i in range(1, tree.size):
            p = int(tree.parents[i])
            assert 0 <= p < i
            cand = int(tree.tokens[i])
            want_parent = int(parents[cand])
            assert (p == 0) if want_parent < 0 else int(tree.tokens[p]) == want_parent
        assert tree.depths.tolist() == (tree.ancestors.sum(1) - 1).tolist()


def test_chain_tree_is_a_line():
    tree = chain_tree(7, torch.tensor([1, 2, 3]))
    assert tree.tokens.tolist() == [7, 1, 2, 3]
    assert tree.parents.tolist() == [-1, 0, 1, 2]
    assert tree.depths.tolist() == [0, 1, 2, 3]
    assert torch.equal(tree.ancestors, torch.tril(torch.ones(4, 4, dtype=torch.bool)))
