"""Exactness of the sampling verifiers on small synthetic target/draft models.

Target p and draft q are random next-token tables over every prefix (vocab 5, depth <= 3). For
each verifier, 200k independent draft trees are built the way that verifier requires and
verified in one batched call; the emitted prefix (accepted tokens + the emitted token) is
completed to a fixed length with exact draws from p, so a lossless verifier yields exactly p's
joint distribution over sequences. A chi-square test against that exact joint (and against the
first-token marginal) must pass; planted 1% biases must fail the same test.
"""

import pytest
import torch

from hass_sglang.verify import verify_hsd_chain, verify_hsd_multidraft, verify_rrs, verify_specinfer

V = 5
SAMPLES = 200_000
P_MIN = 1e-4  # a correct verifier fails with this probability per test; a 1% bias fails at ~1e-20


class PrefixModel:
    """Next-token distributions for every prefix of length <= max_len, as a gatherable table."""

    def __init__(self, seed: int, max_len: int, sharpness: float = 1.5):
        gen = torch.Generator().manual_seed(seed)
        self.offsets = [sum(V**i for i in range(k)) for k in range(max_len + 2)]
        n = self.offsets[max_len + 1]
        self.table = torch.softmax(sharpness * torch.randn(n, V, generator=gen, dtype=torch.float64), -1)

    def prefix_id(self, prefix: torch.Tensor) -> torch.Tensor:
        """prefix [B, k] -> [B] row ids."""
        k = prefix.shape[1]
        ident = torch.zeros(prefix.shape[0], dtype=torch.long)
        for i in range(k):
            ident = ident * V + prefix[:, i]
        return self.offsets[k] + ident

    def dist(self, prefix: torch.Tensor) -> torch.Tensor:
        return self.table[self.prefix_id(prefix)]


P_MODEL = PrefixModel(seed=0, max_len=3)
Q_MODEL = PrefixModel(seed=1, max_len=3, sharpness=1.0)


def exact_joint(length: int) -> torch.Tensor:
    """p over all V**length sequences, in lexicographic order."""
    seqs = torch.cartesian_prod(*[torch.arange(V)] * length).reshape(-1, length)
    prob = torch.ones(seqs.shape[0], dtype=torch.float64)
    for i in range(length):
        prob = prob * P_MODEL.dist(seqs[:, :i]).gather(1, seqs[:, i : i + 1]).squeeze(1)
    return prob


def complete(prefixes: list[torch.Tensor], lengths: torch.Tensor, length: int, gen) -> torch.Tensor:
    """Pad each emitted prefix (row i valid up to lengths[i]) to `length` with exact draws from p."""
    seq = torch.zeros(len(lengths), length, dtype=torch.long)
    for i in range(length):
        have = lengths > i
        if i < prefixes.shape[1]:
            seq[have, i] = prefixes[have, i]
        need = ~have
        if bool(need.any()):
            seq[need, i] = torch.multinomial(P_MODEL.dist(seq[need, :i]).float(), 1, generator=gen).squeeze(1)
    return seq


def chi_square_pvalue(observed: torch.Tensor, expected_prob: torch.Tensor) -> float:
    n = observed.sum()
    expected = expected_prob * n
    small = expected < 5  # pool sparse cells so the chi-square approximation holds
    obs = torch.cat((observed[~small], observed[small].sum().reshape(1)))
    exp = torch.cat((expected[~small], expected[small].sum().reshape(1)))
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = ((obs - exp) ** 2 / exp).sum()
    df = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64), stat / 2.0))


def assert_exact(seqs: torch.Tensor, length: int, expect_pass: bool = True):
    idx = torch.zeros(seqs.shape[0], dtype=torch.long)
    for i in range(length):
        idx = idx * V + seqs[:, i]
    joint = torch.bincount(idx, minlength=V**length).double()
    first = torch.bincount(seqs[:, 0], minlength=V).double()
    p_joint = chi_square_pvalue(joint, exact_joint(length))
    p_first = chi_square_pvalue(first, P_MODEL.dist(torch.zeros(1, 0, dtype=torch.long))[0])
    if expect_pass:
        assert p_joint > P_MIN and p_first > P_MIN, (p_joint, p_first)
    else:
        assert min(p_joint, p_first) < 1e-8, (p_joint, p_first)


# ---- tree builders --------------------------------------------------------------------------
# A fixed shape: root -> 3 children -> (2, 1, 0) children -> the first grandchild has 1 child.
PARENTS = torch.tensor([-1, 0, 0, 0, 1, 1, 2, 4])
DEPTH = 3


def node_prefixes(tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per node: [B, depth] tokens on the path below the root."""
    out = []
    for i in range(PARENTS.numel()):
        path = []
        j = i
        while j > 0:
            path.append(j)
            j = int(PARENTS[j])
        path.reverse()
        out.append(tokens[:, path] if path else tokens[:, :0])
    return out


def build_tree(gen, mode: str):
    """Tokens [B, N] for PARENTS: 'topk' = deterministic top-k of q (point masses),
    'without_replacement' = children drawn without replacement from q, in sibling order."""
    n = PARENTS.numel()
    tokens = torch.zeros(SAMPLES, n, dtype=torch.long)
    for i in range(n):
        kids = (PARENTS == i).nonzero().flatten().tolist()
        if not kids:
            continue
        q = Q_MODEL.dist(node_prefixes(tokens)[i])
        if mode == "topk":
            picks = q.topk(len(kids), dim=1).indices
        else:  # Gumbel top-k = sequential sampling without replacement, in draw order
            g = -torch.log(-torch.log(torch.rand(q.shape, generator=gen, dtype=torch.float64)))
            picks = (q.log() + g).topk(len(kids), dim=1).indices
        for slot, kid in enumerate(kids):
            tokens[:, kid] = picks[:, slot]
    prefixes = node_prefixes(tokens)
    p = torch.stack([P_MODEL.dist(x) for x in prefixes], dim=1)
    q = torch.stack([Q_MODEL.dist(x) for x in prefixes], dim=1)
    return tokens, p, q


def emitted_sequences(tokens, last, emitted):
    depth = torch.tensor([len(node_prefixes(tokens[:1])[i][0]) for i in range(PARENTS.numel())])
    prefixes = node_prefixes(tokens)
    width = DEPTH + 1
    seq = torch.zeros(SAMPLES, width, dtype=torch.long)
    lengths = depth[last] + 1
    for i in range(PARENTS.numel()):
        rows = last == i
        d = int(depth[i])
        seq[rows, :d] = prefixes[i][rows]
        seq[rows, d] = emitted[rows]
    return seq, lengths


def run_tree_verifier(name, gen, bias=0.0):
    mode = "topk" if name == "specinfer" else "without_replacement"
    tokens, p, q = build_tree(gen, mode)
    if name == "specinfer":
        last, emitted = verify_specinfer(PARENTS, tokens, p, gen)
    else:
        last, emitted = verify_rrs(PARENTS, tokens, p, q, gen)
    if bias:
        flip = torch.rand(SAMPLES, generator=gen) < bias
        last = torch.where(flip, torch.zeros_like(last), last)
        emitted = torch.where(flip, torch.zeros_like(emitted), emitted)
    seq, lengths = emitted_sequences(tokens, last, emitted)
    return complete(seq, lengths, DEPTH + 1, gen)


@pytest.mark.parametrize("name", ["specinfer", "rrs"])
def test_tree_verifiers_are_exact(name):
    gen = torch.Generator().manual_seed(10)
    assert_exact(run_tree_verifier(name, gen), DEPTH + 1)


@pytest.fixture
def uniforms_near_one(monkeypatch):
    """Every torch.rand of the walk returns float32's largest uniform, 1 - 2**-24."""
    def near_one(*shape, dtype=None, **kw):
        return torch.full(shape[0] if isinstance(shape[0], tuple) else shape, 1 - 2**-24, dtype=dtype)

    monkeypatch.setattr(torch, "rand", near_one)


def test_specinfer_accepts_the_last_sibling_when_the_siblings_hold_all_the_mass(uniforms_near_one):
    """float32 softmax pairs where 1 - p(t_1) rounds above p(t_2): with `1 - cumsum` as the mass
    left, a uniform near 1 rejected both siblings and the bonus draw had nothing to draw from (a
    scheduler exception on a CPU server, e.g. with top-p keeping only tree tokens). The mass left is
    now summed from the siblings' side, so the last sibling holding mass is always accepted."""
    pairs = torch.softmax(torch.randn(1000, 2, generator=torch.Generator().manual_seed(0)), -1)
    pair = pairs[int(torch.nonzero(1.0 - pairs[:, 0] > pairs[:, 1])[0])]  # rounding against us
    p = torch.zeros(1, 3, 4)
    p[0, 0, :2] = pair
    p[0, 1:, 2] = 1.0
    last, emitted = verify_specinfer(torch.tensor([0, 0, 0]), torch.tensor([[5, 0, 1]]), p)
    assert last.tolist() == [2] and emitted.tolist() == [2]  # sibling 2 (token 1), then node 2's p


def test_rrs_rejecting_by_rounding_where_p_equals_q_still_emits_a_token(uniforms_near_one):
    """p a few ulps under q everywhere (float sums): a uniform near 1 rejects the child although p = q,
    and (p - q)+ has no mass; the walk emits from p instead of failing."""
    q = torch.zeros(1, 2, 4)
    q[0, 0] = torch.tensor([0.25, 0.25, 0.25, 0.25])
    q[0, 1, 3] = 1.0
    p = q * (1 - 1e-6)
    last, emitted = verify_rrs(torch.tensor([0, 0]), torch.tensor([[9, 2]]), p, q)
    assert last.tolist() == [0] and 0 <= int(emitted) < 4


@pytest.mark.parametrize("name", ["specinfer", "rrs"])
def test_planted_one_percent_bias_is_detected(name):
    gen = torch.Generator().manual_seed(11)
    assert_exact(run_tree_verifier(name, gen, bias=0.01), DEPTH + 1, expect_pass=False)


def test_rrs_on_topk_children_is_not_exact():
    """rrs with deterministic top-k children (EAGLE-1/2's T>0 practice) breaks the distribution."""
    gen = torch.Generator().manual_seed(12)
    tokens, p, q = build_tree(gen, "topk")
    last, emitted = verify_rrs(PARENTS, tokens, p, q, gen)
    seq, lengths = emitted_sequences(tokens, last, emitted)
    assert_exact(complete(seq, lengths, DEPTH + 1, gen), DEPTH + 1, expect_pass=False)


# ---- HSD ------------------------------------------------------------------------------------
def sample_chains(gen, k: int, g: int):
    """K i.i.d. draft sequences of length g from q, with p and q along each."""
    tokens = torch.zeros(SAMPLES, k, g, dtype=torch.long)
    for d in range(k):
        for t in range(g):
            qd = Q_MODEL.dist(tokens[:, d, :t])
            tokens[:, d, t] = torch.multinomial(qd.float(), 1, generator=gen).squeeze(1)
    p = torch.stack([torch.stack([P_MODEL.dist(tokens[:, d, :t]) for t in range(g + 1)], 1) for d in range(k)], 1)
    q = torch.stack([torch.stack([Q_MODEL.dist(tokens[:, d, :t]) for t in range(g)], 1) for d in range(k)], 1)
    return tokens, p, q


def hsd_sequences(tokens, tau, emitted, anchor, g):
    rows = torch.arange(SAMPLES)
    seq = torch.zeros(SAMPLES, g + 1, dtype=torch.long)
    seq[:, :g] = tokens[rows, anchor]
    pos = torch.arange(g + 1)[None]
    seq = torch.where(pos == tau[:, None], emitted[:, None], seq)
    return complete(seq, tau + 1, g + 1, torch.Generator().manual_seed(99))


@pytest.mark.parametrize("g", [1, 2, 3])
def test_hsd_chain_is_exact(g):
    gen = torch.Generator().manual_seed(20 + g)
    tokens, p, q = sample_chains(gen, 1, g)
    tau, emitted = verify_hsd_chain(tokens[:, 0], p[:, 0], q[:, 0], gen)
    assert_exact(hsd_sequences(tokens, tau, emitted, torch.zeros_like(tau), g), g + 1)


@pytest.mark.parametrize("k, g", [(2, 2), (3, 3)])
def test_hsd_multidraft_is_exact(k, g):
    gen = torch.Generator().manual_seed(30 + k)
    tokens, p, q = sample_chains(gen, k, g)
    anchor, tau, emitted = verify_hsd_multidraft(tokens, p, q, gen)
    assert_exact(hsd_sequences(tokens, tau, emitted, anchor, g), g + 1)


def test_hsd_without_the_final_cap_is_biased():
    """The uncapped full-draft acceptance min(1, R_G) (the released code's) is not lossless."""
    import hass_sglang.verify as v

    gen = torch.Generator().manual_seed(40)
    g = 3
    tokens, p, q = sample_chains(gen, 1, g)
    orig = v.hsd_chain_terms

    def uncapped(ratios, p_, q_):
        h, c = orig(ratios, p_, q_)
        h[:, -1] = ratios.cumprod(1)[:, -1].clamp(max=1.0)
        return h, c

    v.hsd_chain_terms = uncapped
    try:
        tau, emitted = verify_hsd_chain(tokens[:, 0], p[:, 0], q[:, 0], gen)
    finally:
        v.hsd_chain_terms = orig
    assert_exact(hsd_sequences(tokens, tau, emitted, torch.zeros_like(tau), g), g + 1, expect_pass=False)
