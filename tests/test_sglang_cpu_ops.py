"""The CPU `sgl_kernel.*_cpu` ops against direct loop references on random inputs.

The references transcribe the per-request semantics of SGLang 0.5.23's GPU kernels (the triton
versions next to each CPU call site); the ops under test are called through `torch.ops.sgl_kernel`
with the argument order SGLang uses, so schema and semantics are both checked.
"""

import ctypes
from enum import IntEnum

import pytest
import torch

from hass_sglang.serving.cpu import ops
from hass_sglang.serving.cpu.registry import SCHEMAS, register_ops

register_ops()
K = torch.ops.sgl_kernel


@pytest.fixture
def g():
    return torch.Generator().manual_seed(0)


def _pool(g, rows=6, width=64):
    return torch.randint(0, 10_000, (rows, width), generator=g, dtype=torch.int32)


def test_every_op_is_registered():
    assert all(hasattr(K, name) for name in SCHEMAS)


def test_assign_req_to_token_pool(g):
    r2t = _pool(g)
    rpi = torch.tensor([4, 1, 3])
    start = torch.tensor([2, 0, 7])
    end = torch.tensor([5, 4, 9])
    out = torch.randint(0, 10_000, (9,), generator=g)
    ref = r2t.clone()
    k = 0
    for i in range(3):
        for c in range(int(start[i]), int(end[i])):
            ref[rpi[i], c] = out[k]
            k += 1
    K.assign_req_to_token_pool_cpu(rpi, r2t, start, end, out, r2t.shape[1])
    assert torch.equal(r2t, ref)


def test_assign_extend_cache_locs(g):
    r2t = _pool(g)
    rpi = torch.tensor([2, 5])
    start = torch.tensor([3, 10])
    end = torch.tensor([6, 12])
    ref = [int(r2t[rpi[i], c]) for i in range(2) for c in range(int(start[i]), int(end[i]))]
    out = torch.full((8,), -7, dtype=torch.int64)
    K.assign_extend_cache_locs_cpu(rpi, r2t, start, end, out, r2t.shape[1])
    assert out[:5].tolist() == ref and out[5:].tolist() == [-7] * 3


def test_assign_draft_cache_locs_contiguous(g):
    r2t = _pool(g)
    rpi, seq = torch.tensor([1, 0, 4]), torch.tensor([5, 9, 2])
    topk, cols = 3, 4
    ref = [int(r2t[rpi[i], seq[i] + c]) for i in range(3) for c in range(topk * cols)]
    out = torch.zeros(3 * topk * cols, dtype=torch.int64)
    K.assign_draft_cache_locs_contiguous_cpu(rpi, r2t, seq, out, r2t.shape[1], topk, cols)
    assert out.tolist() == ref


def test_build_draft_decode_metadata(g):
    r2t = _pool(g)
    rpi, seq = torch.tensor([3, 1]), torch.tensor([7, 12])
    topk, steps = 3, 4
    got = K.build_draft_decode_metadata_cpu(r2t, rpi, seq, topk, steps, r2t.shape[1])
    for b in range(2):
        for k in range(topk):
            row = got[b * topk + k]
            s = int(seq[b])
            assert torch.equal(row[:s], r2t[rpi[b], :s])
            for st in range(steps):
                assert row[s + st] == r2t[rpi[b], s + k * steps + st]


def test_fill_bonus_tokens(g):
    stride = 5
    acc = torch.randint(0, 100, (4 * stride,), generator=g)
    lens = torch.tensor([1, 5, 3, 2], dtype=torch.int32)
    out = torch.zeros(4, dtype=torch.int64)
    K.fill_bonus_tokens_cpu(acc, lens, out, stride)
    assert out.tolist() == [int(acc[i * stride + lens[i] - 1]) for i in range(4)]


def test_fill_accept_out_cache_loc(g):
    idx = torch.tensor([0, 3, -1, -1, 4, 6, 7, -1], dtype=torch.int32)
    loc = torch.randint(0, 1000, (8,), generator=g)
    out = torch.full((8,), -1, dtype=torch.int64)
    K.fill_accept_out_cache_loc_cpu(idx, loc, out)
    ref = [int(loc[i]) for i in idx.tolist() if i != -1]
    assert out[: len(ref)].tolist() == ref


def test_copy_all_layer_kv_cache(g):
    bufs = [torch.randn(20, 3, 4, generator=g) for _ in range(3)]
    ref = [b.clone() for b in bufs]
    tgt, src = torch.tensor([5, 9, 1]), torch.tensor([2, 2, 17])
    for b in ref:
        for t, s in zip(tgt.tolist(), src.tolist()):
            b[t] = b[s].clone()
    ptrs = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64).view(torch.int64)
    strides = torch.tensor([b.stride(0) * b.element_size() for b in bufs])
    K.copy_all_layer_kv_cache_cpu(ptrs, strides, tgt, src)
    assert all(torch.equal(a, b) for a, b in zip(bufs, ref))
    assert ctypes.sizeof(ctypes.c_void_p) == 8


# ------------------------------------------------------------------ tree build / greedy verify


def _random_tree(g, bs, topk, depth, n):
    """EAGLE-like draft output: parent_list [bs, topk*(depth-1)+1] and selected indices."""
    plen = topk * (depth - 1) + 1
    parent_list = torch.zeros(bs, plen, dtype=torch.int64)
    selected = torch.zeros(bs, n - 1, dtype=torch.int64)
    for b in range(bs):
        pool = torch.randperm(topk + topk * topk * (depth - 1), generator=g)[: n - 1]
        selected[b] = pool.sort().values
        parent_list[b, 1:] = torch.randint(0, topk * topk * depth, (plen - 1,), generator=g)
        # make a few parents real selected tokens so trees have depth
        parent_list[b, 1 : min(plen, n)] = selected[b, : min(plen, n) - 1]
    return parent_list, selected


def _ref_build_tree(parent_list, sel, seq_lens, topk, depth, n, mode, numel):
    bs = seq_lens.numel()
    mask = torch.ones(numel, dtype=torch.bool)
    pos = torch.zeros(bs * n, dtype=torch.int64)
    ridx = torch.full((bs, n), -1, dtype=torch.int64)
    nxt = torch.full((bs, n), -1, dtype=torch.int64)
    sib = torch.full((bs, n), -1, dtype=torch.int64)
    prefix = 0
    for b in range(bs):
        s = int(seq_lens[b])
        tree0 = n * n * b + prefix * n
        pos[b * n] = s
        for i in range(n - 1, 0, -1):
            ridx[b, i] = b * n + i
            ptb = int(sel[b, i - 1]) // topk
            ppos, found = 0, ptb == 0
            if not found:
                ptok = int(parent_list[b, ptb])
                for pp in range(n - 1):
                    if int(sel[b, pp]) == ptok:
                        ppos, found = pp + 1, True
                        break
            if found:
                if nxt[b, ppos] != -1:
                    sib[b, i] = nxt[b, ppos]
                nxt[b, ppos] = i
        ridx[b, 0] = b * n
        for x in range(n):
            t = tree0 + (s + n) * x + s + 1 if mode == 0 else n * n * b + n * x + 1
            mask[t - 1] = True
            mask[t : t + n - 1] = False
            if x > 0:
                cur, p = x - 1, 0
                for _ in range(depth):
                    p += 1
                    mask[t + cur] = True
                    ptb = int(sel[b, cur]) // topk
                    if ptb == 0:
                        break
                    ptok = int(parent_list[b, ptb])
                    hits = [cp for cp in range(n - 1) if int(sel[b, cp]) == ptok]
                    if not hits:
                        break
                    cur = hits[0]
                pos[b * n + x] = p + s
        prefix += s
    return mask, pos, ridx, nxt, sib


class _TreeMaskMode(IntEnum):  # SGLang passes an IntEnum (kernels/ops/speculative/spec_tree.py:46)
    FULL_MASK = 0
    QLEN_ONLY = 1


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("seed", range(4))
def test_build_tree_kernel_efficient(mode, seed):
    g = torch.Generator().manual_seed(seed)
    bs, topk, depth, n = 3, 3, 4, 8
    parent_list, sel = _random_tree(g, bs, topk, depth, n)
    seq_lens = torch.tensor([5, 11, 3])
    numel = n * n * bs + (int(seq_lens.sum()) * n if mode == 0 else 0)
    ref = _ref_build_tree(parent_list, sel, seq_lens, topk, depth, n, mode, numel)
    mask = torch.ones(numel, dtype=torch.bool)
    pos = torch.empty(bs * n, dtype=torch.int64)
    buf = torch.full((3, bs, n), -1, dtype=torch.int64)
    K.build_tree_kernel_efficient_cpu(parent_list, sel, seq_lens, mask, pos, buf[0], buf[1], buf[2], topk, depth, n,
                                      _TreeMaskMode(mode))
    assert torch.equal(mask, ref[0])
    assert torch.equal(pos, ref[1])
    assert torch.equal(buf[0], ref[2]) and torch.equal(buf[1], ref[3]) and torch.equal(buf[2], ref[4])


def _ref_verify(candidates, ridx, nxt, sib, target, num_spec):
    bs, n = candidates.shape
    predicts = torch.zeros(bs * n, dtype=torch.int64)
    accept = torch.full((bs, num_spec), -1, dtype=torch.int64)
    count = torch.zeros(bs, dtype=torch.int64)
    tflat = target.reshape(-1)
    for b in range(bs):
        last = int(ridx[b, 0])
        accept[b, 0] = last
        cur, acc = 0, 0
        for _j in range(1, num_spec):
            cur = int(nxt[b, cur])
            hit = False
            while cur != -1:
                if int(candidates[b, cur]) == int(tflat[last]):
                    predicts[last] = tflat[last]
                    acc += 1
                    accept[b, acc] = ridx[b, cur]
                    last = int(ridx[b, cur])
                    hit = True
                    break
                cur = int(sib[b, cur])
            if not hit:
                break
        count[b] = acc
        predicts[last] = tflat[last]
    return predicts, accept, count


@pytest.mark.parametrize("seed", range(6))
def test_verify_tree_greedy(seed):
    g = torch.Generator().manual_seed(seed)
    bs, topk, depth, n, vocab = 4, 2, 4, 7, 3  # tiny vocab: many matches, deep accepts
    parent_list, sel = _random_tree(g, bs, topk, depth, n)
    seq_lens = torch.tensor([4, 6, 2, 9])
    buf = torch.full((3, bs, n), -1, dtype=torch.int64)
    K.build_tree_kernel_efficient_cpu(parent_list, sel, seq_lens, torch.ones(bs * n * n, dtype=torch.bool),
                                      torch.empty(bs * n, dtype=torch.int64), buf[0], buf[1], buf[2], topk, depth, n, 1)
    candidates = torch.randint(0, vocab, (bs, n), generator=g)
    target = torch.randint(0, vocab, (bs, n), generator=g)
    num_spec = depth + 1
    ref = _ref_verify(candidates, buf[0], buf[1], buf[2], target, num_spec)
    predicts = torch.zeros(bs * n, dtype=torch.int64)
    accept = torch.full((bs, num_spec), -1, dtype=torch.int64)
    count = torch.zeros(bs, dtype=torch.int64)
    K.verify_tree_greedy_cpu(predicts=predicts, accept_index=accept, accept_token_num=count, candidates=candidates,
                             retrive_index=buf[0], retrive_next_token=buf[1], retrive_next_sibling=buf[2],
                             target_predict=target)
    assert torch.equal(accept, ref[1]) and torch.equal(count, ref[2]) and torch.equal(predicts, ref[0])
    assert int(count.sum()) > 0  # the case exercises acceptance


def test_tree_links_follow_sibling_order():
    parent = torch.tensor([[-1, 0, 0, 1, 0, 1, -1]])
    first, sib = ops.tree_links(parent)
    assert first.tolist() == [[1, 3, -1, -1, -1, -1, -1]]
    assert sib.tolist() == [[-1, 2, 4, 5, -1, -1, -1]]


# ------------------------------------------------------------------ attention


def _ref_attn(q, keys, vals, scaling, cap=0.0):
    """q [H, D], keys/vals [L, Hkv, D] -> [H, D] (float64 loop over heads)."""
    h, hkv = q.shape[0], keys.shape[1]
    out = torch.zeros(h, vals.shape[-1], dtype=torch.float64)
    for i in range(h):
        kv = i // (h // hkv)
        s = (keys[:, kv].double() @ q[i].double()) * scaling
        if cap:
            s = cap * torch.tanh(s / cap)
        out[i] = torch.softmax(s, 0) @ vals[:, kv].double()
    return out


# The dtypes servers run: fp32 (exact to rounding) and bf16 (the GPU dtype and the CPU default on
# bf16 hosts: pool, q and output in bf16, so compared at bf16 precision), and logit soft-capping
# (the einsum path).
ATTN_CASES = [(torch.float32, 0.0, 1e-5), (torch.bfloat16, 0.0, 3e-2), (torch.float32, 2.0, 1e-5)]


def _kv_setup(g, seq_lens, hkv=2, d=8, pool=200):
    kb = torch.randn(pool, hkv, d, generator=g)
    vb = torch.randn(pool, hkv, d, generator=g)
    r2t = torch.randperm(pool, generator=g)[: 4 * 40].view(4, 40).int()
    return kb, vb, r2t


@pytest.mark.parametrize("dtype,cap,tol", ATTN_CASES)
def test_decode_attention(g, dtype, cap, tol):
    seq = torch.tensor([5, 17, 1])
    kb, vb, r2t = _kv_setup(g, seq)
    kb, vb = kb.to(dtype), vb.to(dtype)
    rpi = torch.tensor([2, 0, 3])
    h, d = 6, 8
    q = torch.randn(3, h, d, generator=g).to(dtype)
    knew, vnew = torch.randn(3, 2, d, generator=g).to(dtype), torch.randn(3, 2, d, generator=g).to(dtype)
    loc = torch.stack([r2t[rpi[i], seq[i] - 1] for i in range(3)]).long()
    o = torch.empty(3, h, d, dtype=dtype)
    K.decode_attention_cpu(q, kb, vb, 1.0, 1.0, o, knew, vnew, loc, torch.zeros(1), r2t, rpi, seq, 0.3, cap, False, 0,
                           None, None)
    for i in range(3):
        assert torch.equal(kb[loc[i]], knew[i])
        idx = r2t[rpi[i], : seq[i]].long()
        torch.testing.assert_close(o[i].double(), _ref_attn(q[i], kb[idx], vb[idx], 0.3, cap), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_decode_attention_over_an_mla_latent_pool(g, dtype, tol):
    """DeepSeek's MLA decode: every query head reads one latent KV head, values are the latent's
    first dims (a view of the key pool, as SGLang passes it): the folded GQA layout with g = H."""
    seq = torch.tensor([7, 2])
    kb, _, r2t = _kv_setup(g, seq, hkv=1, d=12)
    kb = kb.to(dtype)
    vb = kb[..., :8]
    rpi = torch.tensor([1, 2])
    q = torch.randn(2, 5, 12, generator=g).to(dtype)
    o = torch.empty(2, 5, 8, dtype=dtype)
    K.decode_attention_cpu(q, kb, vb, 1.0, 1.0, o, None, None, None, torch.zeros(1), r2t, rpi, seq, 0.3, 0.0, False,
                           0, None, None)
    for i in range(2):
        idx = r2t[rpi[i], : seq[i]].long()
        torch.testing.assert_close(o[i].double(), _ref_attn(q[i], kb[idx], vb[idx], 0.3), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype,cap,tol", ATTN_CASES)
@pytest.mark.parametrize("tree", [False, True])
def test_extend_attention(g, tree, dtype, cap, tol):
    ext = torch.tensor([3, 3]) if tree else torch.tensor([4, 1])
    seq = torch.tensor([9, 5]) if tree else torch.tensor([4, 12])
    kb, vb, r2t = _kv_setup(g, seq)
    kb, vb = kb.to(dtype), vb.to(dtype)
    rpi = torch.tensor([1, 3])
    h, d, T = 4, 8, int(ext.sum())
    starts = torch.cumsum(ext, 0) - ext
    q = torch.randn(T, h, d, generator=g).to(dtype)
    knew = torch.stack([kb[r2t[rpi[b], seq[b] - ext[b] + t]] for b in range(2) for t in range(int(ext[b]))])
    vnew = torch.stack([vb[r2t[rpi[b], seq[b] - ext[b] + t]] for b in range(2) for t in range(int(ext[b]))])
    tm = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool).repeat(2, 1, 1)  # node 2 skips node 1
    o = torch.empty(T, h, d, dtype=dtype)
    K.extend_attention_cpu(q, knew, vnew, o, kb, vb, 1.0, 1.0, r2t, rpi, seq, ext, starts, int(ext.max()), 0.25, cap,
                           False, 0, None, None, tm.reshape(-1) if tree else None, True)
    from hass_sglang.serving.cpu import attention as A

    assert A._last_layout[0][1].dense is tree  # equal extends in row order take the slice path
    for b in range(2):
        prefix = int(seq[b] - ext[b])
        for t in range(int(ext[b])):
            cols = list(range(prefix)) + [prefix + c for c in range(int(ext[b])) if (tm[b, t, c] if tree else c <= t)]
            idx = r2t[rpi[b], cols].long()
            row = int(starts[b]) + t
            torch.testing.assert_close(o[row].double(), _ref_attn(q[row], kb[idx], vb[idx], 0.25, cap), atol=tol, rtol=tol)


def test_extend_layout_is_reused_within_a_pass_and_never_across_different_inputs(g):
    """The per-pass layout cache: same inputs (new tensor objects, as SGLang passes per layer) hit;
    a different tree in tensors of the same shape (the next verify) recomputes."""
    from hass_sglang.serving.cpu import attention as A

    seq, ext, starts = torch.tensor([9]), torch.tensor([3]), torch.tensor([0])
    chain = torch.tril(torch.ones(3, 3, dtype=torch.bool)).reshape(-1)
    fork = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool).reshape(-1)
    first = A.cached_extend_layout(seq, ext, starts, chain, True)
    assert A.cached_extend_layout(seq.clone(), ext.clone(), starts.clone(), chain.clone(), True) is first
    chain[:] = fork  # in place: a stale cache keyed on identity would miss this
    other = A.cached_extend_layout(seq, ext, starts, chain, True)
    assert other is not first and torch.equal(other.visible, A.extend_layout(seq, ext, starts, fork, True).visible)
    assert not torch.equal(other.visible, first.visible)


# ------------------------------------------------------------------ T>0 verification hook


def _built_tree(seed, bs=3, topk=2, depth=4, n=7):
    g = torch.Generator().manual_seed(seed)
    parent_list, sel = _random_tree(g, bs, topk, depth, n)
    buf = torch.full((3, bs, n), -1, dtype=torch.int64)
    K.build_tree_kernel_efficient_cpu(parent_list, sel, torch.full((bs,), 5), torch.ones(bs * n * n, dtype=torch.bool),
                                      torch.empty(bs * n, dtype=torch.int64), buf[0], buf[1], buf[2], topk, depth, n, 1)
    return g, parent_list, sel, buf


@pytest.mark.parametrize("seed", range(4))
def test_parents_from_links_inverts_the_tree_build(seed):
    from hass_sglang.serving.cpu.sampling_verify import parents_from_links

    _, parent_list, sel, buf = _built_tree(seed)
    want = ops.tree_parents(parent_list, sel, 2)
    got = parents_from_links(buf[1], buf[2])
    assert torch.equal(got[:, 1:], want[:, 1:]) and (got[:, 0] == -1).all()


@pytest.mark.parametrize("seed", range(4))
def test_specinfer_hook_with_point_mass_target_equals_greedy_verify(seed):
    """Greedy rows (one-hot target) through the SpecInfer hook give exactly the greedy op's outputs."""
    from hass_sglang.serving.cpu import sampling_verify as sv

    g, _, _, buf = _built_tree(seed)
    bs, n, vocab = 3, 7, 3
    candidates = torch.randint(0, vocab, (bs, n), generator=g)
    logits = torch.randn(bs * n, vocab, generator=g)

    class Info:
        temperatures = torch.ones(bs, 1)
        top_ks = torch.ones(bs, dtype=torch.int32)

    def outs():
        return dict(predicts=torch.zeros(bs * n, dtype=torch.int32), accept_index=torch.full((bs, 5), -1, dtype=torch.int32),
                    accept_token_num=torch.zeros(bs, dtype=torch.int32))

    common = dict(candidates=candidates, retrieve_index=buf[0], retrieve_next_token=buf[1], retrieve_next_sibling=buf[2])
    ref = outs()
    K.verify_tree_greedy_cpu(ref["predicts"], ref["accept_index"], ref["accept_token_num"], candidates, buf[0], buf[1],
                             buf[2], logits.argmax(-1).view(bs, n))
    got = outs()
    token = sv._VERIFY_CTX.set({"logits": logits, "info": Info(), "n": n})
    try:
        sv.around_verify(None, **got, **common, target_predict=None)
    finally:
        sv._VERIFY_CTX.reset(token)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_hook_target_probs_apply_each_requests_temperature_top_k_top_p():
    """The hook's per-request distribution is the project's one definition (sampling.target_probs);
    SGLang's greedy rows (top_k == 1) and its 'no top-k' sentinel (1 << 30) are mapped."""
    from hass_sglang.sampling import SamplingParams, target_probs as ref_probs
    from hass_sglang.serving.cpu.sampling_verify import request_probs

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 50, generator=g)
    temps = torch.tensor([[0.7], [1.0], [1.3], [1.0]])
    top_ks = torch.tensor([1 << 30, 3, 1 << 30, 1], dtype=torch.int32)
    top_ps = torch.tensor([1.0, 1.0, 0.6, 1.0])
    got, invalid = request_probs(logits, temps, top_ks, top_ps)
    assert invalid == {}
    assert torch.allclose(got[0], ref_probs(logits[0], SamplingParams(temperature=0.7)))
    assert torch.allclose(got[1], ref_probs(logits[1], SamplingParams(temperature=1.0, top_k=3)))
    assert ((got[1] > 0).sum(-1) == 3).all()
    assert torch.allclose(got[2], ref_probs(logits[2], SamplingParams(temperature=1.3, top_p=0.6)))
    assert torch.equal(got[3].argmax(-1), logits[3].argmax(-1)) and torch.equal(got[3].sum(-1), torch.ones(5))
    assert ((got[3] == 1) | (got[3] == 0)).all()
    # Values SGLang accepts that float32 turns into edge cases (found by tests/test_serving_fuzz.py):
    # top_p 1e-266 arrives as 0.0 -> the top token alone (as plain SGLang); a temperature that
    # overflows to inf gives no distribution -> that request is named, the batch goes on.
    got, invalid = request_probs(logits[:2], torch.tensor([[1.0], [1e300]]).float(), None,
                                 torch.tensor([1e-266, 1.0]).float())
    assert torch.equal(got[0], torch.nn.functional.one_hot(logits[0].argmax(-1), 50).float())
    assert list(invalid) == [1] and "temperature must be a finite number" in invalid[1]


@pytest.mark.parametrize("top_k,top_p", [(3, 0.5), (8, 0.3), (1 << 30, 0.7), (5, 1.0), (2, 0.05), (20, 0.9)])
def test_hook_distribution_is_plain_sglangs_sampler_filter(top_k, top_p):
    """With top_k and top_p together, plain SGLang keeps a token when it is in the top-k AND the
    mass ranked above it (on the full distribution) is at most top_p; HASS's CPU verification must
    sample from exactly that set, renormalised. Compared with SGLang's own pytorch sampler."""
    from sglang.srt.layers.sampler import top_k_top_p_min_p_sampling_from_probs_torch as sglang_filter

    from hass_sglang.serving.cpu.sampling_verify import request_probs

    g = torch.Generator().manual_seed(top_k % 97)
    logits = torch.randn(6, 300, generator=g) * 2.5
    probs = torch.softmax(logits, -1)
    rows = logits.shape[0]
    _, kept, ids, _ = sglang_filter(probs.clone(), torch.full((rows,), top_k), torch.full((rows,), top_p),
                                    torch.zeros(rows), False, None, None, return_filtered_probs=True)
    want = torch.zeros_like(probs).scatter(-1, ids.long(), kept)
    want = want / want.sum(-1, keepdim=True)
    got, invalid = request_probs(logits.view(1, rows, -1), torch.tensor([[1.0]]),
                                 torch.tensor([top_k], dtype=torch.int32), torch.tensor([top_p]))
    assert invalid == {}
    assert torch.equal(got[0] > 0, want > 0), "a different set of tokens is kept"
    assert torch.allclose(got[0], want, atol=1e-6)


def test_top_p_is_measured_before_top_k_renormalisation():
    """The case where the definitions part: top-3 hold 0.6 of the mass; with top_p 0.5 plain SGLang
    keeps all three (0.45 ranks above the 3rd), renormalising first would cut the 3rd (0.45/0.6 > 0.5)."""
    from hass_sglang.sampling import SamplingParams, target_probs

    logits = torch.log(torch.tensor([0.3, 0.15, 0.15, 0.1, 0.1, 0.1, 0.1]))
    p = target_probs(logits, SamplingParams(temperature=1.0, top_k=3, top_p=0.5))
    assert torch.allclose(p, torch.tensor([0.5, 0.25, 0.25, 0, 0, 0, 0]))


def test_specinfer_hook_verifies_masked_logits_and_aborts_only_a_broken_request():
    """Grammar masks (-inf, whole rows masked past a rejected token) are verified over the allowed
    set; a request with NaN logits is ended with FINISH_ABORT and the others of the batch go on."""
    from hass_sglang.serving.cpu import sampling_verify as sv

    g, _, _, buf = _built_tree(1, bs=4)
    bs, n, vocab = 4, 7, 5
    candidates = torch.randint(0, vocab, (bs, n), generator=g)
    logits = torch.randn(bs * n, vocab, generator=g).view(bs, n, vocab)
    logits[0, :, 1:] = float("-inf")  # request 0: only token 0 allowed anywhere
    logits[1, 3] = float("-inf")  # request 1: one node with no allowed token
    logits[2, 2, 4] = float("nan")  # request 2: broken

    class Info:  # request 3: a temperature float32 cannot hold (inf): no distribution
        temperatures = torch.tensor([[1.0], [1.0], [1.0], [1e300]]).float()
        top_ks = torch.full((bs,), 1 << 30, dtype=torch.int32)

    class Req:
        def __init__(self, rid):
            self.rid, self.to_finish = rid, None

    reqs = [Req(i) for i in range(bs)]
    got = dict(predicts=torch.zeros(bs * n, dtype=torch.int32), accept_index=torch.full((bs, 5), -1, dtype=torch.int32),
               accept_token_num=torch.zeros(bs, dtype=torch.int32))
    common = dict(candidates=candidates, retrieve_index=buf[0], retrieve_next_token=buf[1], retrieve_next_sibling=buf[2])
    token = sv._VERIFY_CTX.set({"logits": logits.view(bs * n, vocab), "info": Info(), "n": n, "reqs": reqs})
    try:
        sv.around_verify(None, **got, **common, target_predict=None)
    finally:
        sv._VERIFY_CTX.reset(token)
    assert reqs[0].to_finish is None and reqs[1].to_finish is None
    assert type(reqs[2].to_finish).__name__ == "FINISH_ABORT" and "NaN" in reqs[2].to_finish.message
    assert type(reqs[3].to_finish).__name__ == "FINISH_ABORT" and "temperature" in reqs[3].to_finish.message
    # request 0 can only ever emit token 0: every committed token of its accepted path is 0
    path = got["accept_index"][0][got["accept_index"][0] >= 0]
    assert (got["predicts"][path.long()] == 0).all()


def test_a_fault_in_the_specinfer_hook_aborts_the_batch_and_spares_the_scheduler(monkeypatch):
    """Whatever goes wrong inside the T>0 hook ends the batch's requests with an error and lets
    SGLang's own (greedy) verify fill the outputs; the exception does not reach the scheduler loop."""
    from hass_sglang.serving.cpu import sampling_verify as sv

    g, _, _, buf = _built_tree(2)
    bs, n, vocab = 3, 7, 5
    candidates = torch.randint(0, vocab, (bs, n), generator=g)
    logits = torch.randn(bs * n, vocab, generator=g)

    class Info:
        temperatures = torch.ones(bs, 1)
        top_ks = torch.full((bs,), 1 << 30, dtype=torch.int32)

    class Req:
        def __init__(self, rid):
            self.rid, self.to_finish = rid, None

    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    def greedy(**kw):
        K.verify_tree_greedy_cpu(kw["predicts"], kw["accept_index"], kw["accept_token_num"], kw["candidates"],
                                 kw["retrieve_index"], kw["retrieve_next_token"], kw["retrieve_next_sibling"],
                                 kw["target_predict"])
        return kw["predicts"], kw["accept_index"], kw["accept_token_num"]

    monkeypatch.setattr(sv, "specinfer_accept", boom)
    reqs = [Req(i) for i in range(bs)]
    got = dict(predicts=torch.zeros(bs * n, dtype=torch.int32), accept_index=torch.full((bs, 5), -1, dtype=torch.int32),
               accept_token_num=torch.zeros(bs, dtype=torch.int32))
    common = dict(candidates=candidates, retrieve_index=buf[0], retrieve_next_token=buf[1], retrieve_next_sibling=buf[2],
                  target_predict=logits.argmax(-1).view(bs, n))
    token = sv._VERIFY_CTX.set({"logits": logits, "info": Info(), "n": n, "reqs": reqs})
    try:
        out = sv.around_verify(greedy, **got, **common)
    finally:
        sv._VERIFY_CTX.reset(token)
    ref = greedy(predicts=torch.zeros(bs * n, dtype=torch.int32), accept_index=torch.full((bs, 5), -1, dtype=torch.int32),
                 accept_token_num=torch.zeros(bs, dtype=torch.int32), **common)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    assert all(type(r.to_finish).__name__ == "FINISH_ABORT" and "internal error" in r.to_finish.message for r in reqs)
