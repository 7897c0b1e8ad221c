"""Registers the CPU ops as `torch.ops.sgl_kernel.<name>` with torch.library (namespace fragment).

Schemas use the argument names SGLang passes as keywords (e.g. `retrive_index` for
verify_tree_greedy_cpu, kernels/ops/speculative/spec_tree.py:510). Mutated arguments are
annotated `(a!)`. Registration is idempotent per process and never overrides an op that a real
`sgl_kernel` build already registered.
"""

from __future__ import annotations

import torch

from hass_sglang.serving.cpu import attention, ops

NAMESPACE = "sgl_kernel"


def _assign_req_to_token_pool(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len):
    rows, cols, values = ops.req_to_token_writes(req_pool_indices, start_offset, end_offset, out_cache_loc)
    req_to_token[rows, cols] = values.to(req_to_token.dtype)


def _assign_extend_cache_locs(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len):
    locs = ops.extend_cache_locs(req_pool_indices, req_to_token, start_offset, end_offset)
    out_cache_loc[: locs.numel()] = locs.to(out_cache_loc.dtype)


def _assign_draft_cache_locs_contiguous(req_pool_indices, req_to_token, seq_lens, out_cache_loc, pool_len, topk, num_cols):
    locs = ops.draft_cache_locs_contiguous(req_pool_indices, req_to_token, seq_lens, topk, num_cols)
    out_cache_loc[: locs.numel()] = locs.to(out_cache_loc.dtype)


def _build_draft_decode_metadata(req_to_token, req_pool_indices, seq_lens, topk, num_steps, pool_len):
    return ops.draft_decode_req_to_token(req_to_token, req_pool_indices, seq_lens, topk, num_steps, pool_len)


def _fill_bonus_tokens(accept_tokens, accept_lens, bonus_tokens, accept_stride):
    bonus_tokens.copy_(ops.bonus_tokens(accept_tokens, accept_lens, accept_stride).to(bonus_tokens.dtype))


def _fill_accept_out_cache_loc(accept_index, out_cache_loc, accept_out_cache_loc):
    vals = ops.accept_out_cache_loc(accept_index, out_cache_loc)
    accept_out_cache_loc[: vals.numel()] = vals.to(accept_out_cache_loc.dtype)


def _copy_all_layer_kv_cache(data_ptrs, strides, tgt_loc, src_loc):
    ops.copy_kv_rows(data_ptrs, strides, tgt_loc, src_loc)


def _build_tree_kernel_efficient(parent_list, selected_index, verified_seq_len, tree_mask, positions, retrieve_index,
                                 retrieve_next_token, retrieve_next_sibling, topk, depth, draft_token_num,
                                 tree_mask_mode):
    where, values, pos, ridx, first, sibling = ops.build_tree(
        parent_list, selected_index, verified_seq_len, topk, depth, draft_token_num, int(tree_mask_mode),
        tree_mask.numel())
    tree_mask.view(-1)[where] = values.to(tree_mask.dtype)
    positions.view(-1).copy_(pos.reshape(-1).to(positions.dtype))
    retrieve_index.copy_(ridx.to(retrieve_index.dtype))
    retrieve_next_token.copy_(first.to(retrieve_next_token.dtype))
    retrieve_next_sibling.copy_(sibling.to(retrieve_next_sibling.dtype))


def _verify_tree_greedy(predicts, accept_index, accept_token_num, candidates, retrive_index, retrive_next_token,
                        retrive_next_sibling, target_predict):
    accept, count = ops.verify_tree_greedy(candidates, retrive_index, retrive_next_token, retrive_next_sibling,
                                      target_predict, accept_index.shape[1])
    accept_index.copy_(torch.where(accept >= 0, accept, accept_index.long()).to(accept_index.dtype))
    accept_token_num.copy_(count.to(accept_token_num.dtype))
    pos = accept[accept >= 0]
    predicts.view(-1)[pos] = target_predict.reshape(-1)[pos].to(predicts.dtype)


SCHEMAS = {
    "assign_req_to_token_pool_cpu": (
        "(Tensor req_pool_indices, Tensor(a!) req_to_token, Tensor start_offset, Tensor end_offset, "
        "Tensor out_cache_loc, int pool_len) -> ()", _assign_req_to_token_pool),
    "assign_extend_cache_locs_cpu": (
        "(Tensor req_pool_indices, Tensor req_to_token, Tensor start_offset, Tensor end_offset, "
        "Tensor(a!) out_cache_loc, int pool_len) -> ()", _assign_extend_cache_locs),
    "assign_draft_cache_locs_contiguous_cpu": (
        "(Tensor req_pool_indices, Tensor req_to_token, Tensor seq_lens, Tensor(a!) out_cache_loc, "
        "int pool_len, int topk, int num_cols) -> ()", _assign_draft_cache_locs_contiguous),
    "build_draft_decode_metadata_cpu": (
        "(Tensor req_to_token, Tensor req_pool_indices, Tensor seq_lens, int topk, int num_steps, "
        "int pool_len) -> Tensor", _build_draft_decode_metadata),
    "fill_bonus_tokens_cpu": (
        "(Tensor accept_tokens, Tensor accept_lens, Tensor(a!) bonus_tokens, int accept_stride) -> ()",
        _fill_bonus_tokens),
    "fill_accept_out_cache_loc_cpu": (
        "(Tensor accept_index, Tensor out_cache_loc, Tensor(a!) accept_out_cache_loc) -> ()",
        _fill_accept_out_cache_loc),
    "copy_all_layer_kv_cache_cpu": (
        "(Tensor data_ptrs, Tensor strides, Tensor tgt_loc, Tensor src_loc) -> ()", _copy_all_layer_kv_cache),
    "build_tree_kernel_efficient_cpu": (
        "(Tensor parent_list, Tensor selected_index, Tensor verified_seq_len, Tensor(a!) tree_mask, "
        "Tensor(b!) positions, Tensor(c!) retrieve_index, Tensor(d!) retrieve_next_token, "
        "Tensor(e!) retrieve_next_sibling, int topk, int depth, int draft_token_num, int tree_mask_mode) -> ()",
        _build_tree_kernel_efficient),
    "verify_tree_greedy_cpu": (
        "(Tensor(a!) predicts, Tensor(b!) accept_index, Tensor(c!) accept_token_num, Tensor candidates, "
        "Tensor retrive_index, Tensor retrive_next_token, Tensor retrive_next_sibling, Tensor target_predict) -> ()",
        _verify_tree_greedy),
    "decode_attention_cpu": (
        "(Tensor query, Tensor(a!) k_cache, Tensor(b!) v_cache, float k_scale, float v_scale, Tensor(c!) output, "
        "Tensor? key, Tensor? value, Tensor loc, Tensor attn_logits, Tensor req_to_token, Tensor req_pool_indices, "
        "Tensor seq_lens, float sm_scale, float logit_cap, bool is_cross_attention, int sliding_window_size, "
        "Tensor? encoder_lens, Tensor? sinks) -> ()", attention.decode_attention),
    "extend_attention_cpu": (
        "(Tensor q_extend, Tensor? k_extend, Tensor? v_extend, Tensor(a!) o_extend, Tensor k_buffer, "
        "Tensor v_buffer, float k_scale, float v_scale, Tensor req_to_token, Tensor req_pool_indices, "
        "Tensor seq_lens, Tensor extend_seq_lens, Tensor extend_start_loc, int? max_len_extend, float sm_scale, "
        "float logit_cap, bool is_cross_attention, int sliding_window_size, Tensor? encoder_lens, Tensor? sinks, "
        "Tensor? tree_mask, bool is_causal) -> ()", attention.extend_attention),
}

_LIBS: list = []


def missing_ops() -> list[str]:
    return [name for name in SCHEMAS if not hasattr(torch.ops.sgl_kernel, name)]


def register_ops() -> list[str]:
    """Define and implement every op not yet present; returns the names it registered."""
    todo = missing_ops()
    if not todo:
        return []
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    for name in todo:
        schema, fn = SCHEMAS[name]
        lib.define(name + schema)
        lib.impl(name, fn, "CompositeExplicitAutograd")
    _LIBS.append(lib)  # keep the registrations alive
    return todo
