"""Vectorised torch implementations of the `sgl_kernel.*_cpu` bookkeeping ops SGLang's speculative
path calls on CPU (SGLang 0.5.23 call sites are cited per function).

Each op is split in two: a pure function that computes the result from its inputs (unit tested
against a loop reference in tests/test_sglang_cpu_ops.py) and, in `registry.py`, a thin wrapper
with the exact signature SGLang calls that writes the result into the caller's mutable buffers.
No Python loop runs over tokens or requests; the only loops are over tree depth (<= spec steps)
or over KV layers.
"""

from __future__ import annotations

import ctypes

import torch

FULL_MASK = 0  # sglang TreeMaskMode.FULL_MASK; any other mode uses the [bs, n, n] (QLEN_ONLY) layout


# ---------------------------------------------------------------------------------------------
# req_to_token / out_cache_loc bookkeeping
# ---------------------------------------------------------------------------------------------


def _ragged(start: torch.Tensor, end: torch.Tensor):
    """(row, col, flat) for every (request, offset in [start, end)) pair, in request order."""
    lens = (end - start).long()
    rows = torch.repeat_interleave(torch.arange(lens.numel(), device=lens.device), lens)
    first = torch.cumsum(lens, 0) - lens
    cols = torch.arange(rows.numel(), device=lens.device) - first[rows] + start.long()[rows]
    return rows, cols


def req_to_token_writes(req_pool_indices, start_offset, end_offset, out_cache_loc):
    """assign_req_to_token_pool_cpu (mem_cache/allocation.py:746): request i's slots
    [start_i, end_i) of its req_to_token row get the next (end_i - start_i) out_cache_loc values.
    Returns (pool rows, columns, values) to write."""
    rows, cols = _ragged(start_offset, end_offset)
    values = out_cache_loc[: rows.numel()]
    return req_pool_indices.long()[rows], cols, values


def extend_cache_locs(req_pool_indices, req_to_token, start_offset, end_offset):
    """assign_extend_cache_locs_cpu (kernels/ops/speculative/cache_locs.py:740,763): request i's
    req_to_token entries [start_i, end_i), concatenated in request order."""
    rows, cols = _ragged(start_offset, end_offset)
    return req_to_token[req_pool_indices.long()[rows], cols]


def draft_cache_locs_contiguous(req_pool_indices, req_to_token, seq_lens, topk, num_cols):
    """assign_draft_cache_locs_contiguous_cpu (cache_locs.py:99): request i's `topk * num_cols`
    req_to_token entries from seq_lens_i on, as a [bs * topk * num_cols] vector."""
    width = topk * num_cols
    cols = seq_lens.long()[:, None] + torch.arange(width, device=seq_lens.device)
    return req_to_token[req_pool_indices.long()[:, None], cols].reshape(-1)


def draft_decode_req_to_token(req_to_token, req_pool_indices, seq_lens, topk, num_steps, pool_len):
    """build_draft_decode_metadata_cpu (layers/attention/intel_amx_backend.py:462): one
    req_to_token row per draft candidate (request b, branch k): the request's committed prefix,
    then at seq_len + s the slot of the branch's step s, which the contiguous draft layout
    ([bs, topk, num_steps], speculative/eagle_utils.py:57) keeps at seq_len + k * num_steps + s."""
    bs = seq_lens.numel()
    rows = req_to_token[req_pool_indices.long()][:, :pool_len]
    out = rows.repeat_interleave(topk, dim=0).clone()
    seq = seq_lens.long().repeat_interleave(topk)
    branch = torch.arange(topk, device=seq.device).repeat(bs)
    steps = torch.arange(num_steps, device=seq.device)
    dst = seq[:, None] + steps
    src = dst + (branch * num_steps)[:, None]
    out.scatter_(1, dst, out.gather(1, src))
    return out


def bonus_tokens(accept_tokens, accept_lens, accept_stride):
    """fill_bonus_tokens_cpu (kernels/ops/speculative/eagle.py:40): the last accepted token of each
    request, accept_tokens[i * stride + accept_lens[i] - 1]."""
    idx = torch.arange(accept_lens.numel(), device=accept_lens.device) * accept_stride + accept_lens.long() - 1
    return accept_tokens.reshape(-1)[idx]


def accept_out_cache_loc(accept_index, out_cache_loc):
    """fill_accept_out_cache_loc_cpu (eagle.py:80): out_cache_loc at the accepted (!= -1) entries
    of accept_index, packed in order. Returns the packed values (len = number accepted)."""
    flat = accept_index.reshape(-1)
    return out_cache_loc[flat[flat != -1].long()]


def copy_kv_rows(data_ptrs, strides, tgt_loc, src_loc):
    """copy_all_layer_kv_cache_cpu (kernels/ops/kvcache/cache_move.py:191): for every KV buffer
    (address data_ptrs[i], row size strides[i] bytes) copy row src_loc[j] to row tgt_loc[j].
    Loops over buffers (layers), never over rows."""
    if tgt_loc.numel() == 0:
        return
    nrows = int(torch.maximum(tgt_loc.max(), src_loc.max())) + 1
    tgt, src = tgt_loc.long(), src_loc.long()
    for ptr, stride in zip(data_ptrs.tolist(), strides.tolist()):
        raw = (ctypes.c_uint8 * (nrows * int(stride))).from_address(int(ptr))
        rows = torch.frombuffer(raw, dtype=torch.uint8).view(nrows, int(stride))
        rows[tgt] = rows[src]


# ---------------------------------------------------------------------------------------------
# EAGLE tree
# ---------------------------------------------------------------------------------------------


def tree_parents(parent_list, selected_index, topk):
    """Parent node of every tree node (node 0 = the verified token, node i = selected_index[i-1]).

    0 for the root's children, p + 1 when the parent is node p + 1, -1 when the parent is not
    among the selected tokens (the kernel then leaves the node unlinked). Shape [bs, n]."""
    bs, m = selected_index.shape
    sel = selected_index.long()
    parent_tb = sel // topk
    parent_tok = parent_list.long().gather(1, parent_tb.clamp(min=0))
    match = sel[:, None, :] == parent_tok[:, :, None]  # [bs, child, candidate parent]
    found = match.any(-1)
    pos = match.int().argmax(-1) + 1
    parent = torch.where(parent_tb == 0, 0, torch.where(found, pos, -1))
    root = torch.full((bs, 1), -1, dtype=parent.dtype, device=parent.device)
    return torch.cat([root, parent], 1)


def tree_links(parent):
    """(first child, next sibling) per node from parents [bs, n]: children of a node are linked in
    ascending index order (what the kernel's reverse loop produces); -1 = none."""
    bs, n = parent.shape
    idx = torch.arange(n, device=parent.device)
    is_child = parent[:, None, :] == idx[None, :, None]  # [bs, node, child]
    is_child &= idx[None, None, :] > 0
    first = torch.where(is_child.any(-1), is_child.int().argmax(-1), -1)
    same = (parent[:, :, None] == parent[:, None, :]) & (parent[:, :, None] >= 0)
    later = same & (idx[None, None, :] > idx[None, :, None]) & (idx[None, :, None] > 0)
    sibling = torch.where(later.any(-1), later.int().argmax(-1), -1)
    return first, sibling


def tree_paths(parent, depth):
    """Ancestor mask [bs, n, n] (node x sees node c, root excluded) and path lengths [bs, n],
    following parents at most `depth` times as the kernel does."""
    bs, n = parent.shape
    cur = torch.arange(n, device=parent.device).expand(bs, n).clone()
    seen = torch.zeros(bs, n, n, dtype=torch.bool, device=parent.device)
    length = torch.zeros(bs, n, dtype=torch.long, device=parent.device)
    for _ in range(depth):  # tree depth, not tokens
        active = cur > 0
        seen |= torch.nn.functional.one_hot(cur.clamp(min=0), n).bool() & active[..., None]
        length += active.long()
        nxt = parent.gather(1, cur.clamp(min=0))
        cur = torch.where(active & (nxt > 0), nxt, 0)
    return seen, length


def build_tree(parent_list, selected_index, seq_lens, topk, depth, num_draft_tokens, tree_mask_mode, mask_numel):
    """build_tree_kernel_efficient_cpu (kernels/ops/speculative/spec_tree.py:412), as pure values:
    (mask positions to set, mask values, positions, retrieve_index, next_token, next_sibling)."""
    bs = seq_lens.numel()
    n = num_draft_tokens
    dev = seq_lens.device
    parent = tree_parents(parent_list, selected_index[:, : n - 1], topk)
    first, sibling = tree_links(parent)
    seen, length = tree_paths(parent, depth)
    seen[:, :, 0] = True  # every row sees the verified token
    seq = seq_lens.long()
    positions = seq[:, None] + length
    retrieve_index = (torch.arange(bs, device=dev)[:, None] * n + torch.arange(n, device=dev)).to(torch.long)
    x = torch.arange(n, device=dev)
    if tree_mask_mode == FULL_MASK:
        prefix = torch.cumsum(seq, 0) - seq
        row0 = n * n * torch.arange(bs, device=dev) + prefix * n
        start = row0[:, None] + (seq[:, None] + n) * x + seq[:, None]  # [bs, n] column of node 0
    else:
        start = n * n * torch.arange(bs, device=dev)[:, None] + n * x
    where = (start[:, :, None] + x).reshape(-1)
    return where, seen.reshape(-1), positions, retrieve_index, first, sibling


def _list_ranks(sibling, steps):
    """Pointer jumping over sibling lists: (distance to the list's end, the list's last node)."""
    nxt = sibling.long()
    dist = (nxt != -1).long()
    tail = torch.where(nxt != -1, nxt, torch.arange(nxt.shape[1], device=nxt.device))
    for _ in range(steps):  # log2(n) rounds
        valid = nxt != -1
        safe = nxt.clamp(min=0)
        dist = dist + torch.where(valid, dist.gather(1, safe), 0)
        tail = torch.where(valid, tail.gather(1, safe), tail)
        nxt = torch.where(valid, nxt.gather(1, safe), -1)
    return dist, tail


def verify_tree_greedy(candidates, retrieve_index, next_token, next_sibling, target_predict, num_spec):
    """verify_tree_greedy_cpu (spec_tree.py:510) as pure values: walk the tree from the root, at each
    level take the first child (in sibling-list order) whose draft token equals the target's
    prediction at the last accepted node.

    Returns (accept_index [bs, num_spec] with -1 past the accepted ones, accept_token_num [bs]).
    The kernel's `predicts` output is target_predict at every accepted retrieve index."""
    bs, n = candidates.shape
    dev = candidates.device
    rows = torch.arange(bs, device=dev)
    steps = max(1, int(n - 1).bit_length())
    dist, tail = _list_ranks(next_sibling, steps)
    target = target_predict.reshape(-1)
    ridx = retrieve_index.long()
    accept = torch.full((bs, num_spec), -1, dtype=torch.long, device=dev)
    accept[:, 0] = ridx[:, 0]
    node = torch.zeros(bs, dtype=torch.long, device=dev)
    last = ridx[:, 0]
    count = torch.zeros(bs, dtype=torch.long, device=dev)
    alive = torch.ones(bs, dtype=torch.bool, device=dev)
    for j in range(1, num_spec):  # tree depth, not tokens
        head = next_token.long()[rows, node]
        has = alive & (head != -1)
        safe_head = head.clamp(min=0)
        in_list = (tail == tail[rows, safe_head][:, None]) & (dist <= dist[rows, safe_head][:, None])
        tok = target[last]
        match = in_list & (candidates == tok[:, None]) & has[:, None]
        hit = match.any(1)
        choice = torch.where(match, dist, -1).argmax(1)
        accept[:, j] = torch.where(hit, ridx[rows, choice], -1)
        last = torch.where(hit, ridx[rows, choice], last)
        node = torch.where(hit, choice, node)
        count += hit.long()
        alive &= hit
    return accept, count
