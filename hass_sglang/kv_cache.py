"""KV-cache bookkeeping on transformers' DynamicCache: keep only what was accepted.

After a tree verification the cache holds prefix + all N tree nodes; only the accepted path
may stay, in path order, so that position p of the cache is token p of the sequence again.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def new_cache() -> DynamicCache:
    return DynamicCache()


def cache_length(cache: DynamicCache) -> int:
    return cache.get_seq_length()


def keep_entries(cache: DynamicCache, prefix_len: int, kept_tail: torch.Tensor) -> None:
    """Keep entries [0, prefix_len) plus entries prefix_len + kept_tail (in that order), in place."""
    index = torch.cat((torch.arange(prefix_len), prefix_len + kept_tail.cpu())).to(torch.long)
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        idx = index.to(layer.keys.device)
        layer.keys = layer.keys.index_select(-2, idx)
        layer.values = layer.values.index_select(-2, idx)


def truncate(cache: DynamicCache, length: int) -> None:
    """Drop every entry at index >= length, in place."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        layer.keys = layer.keys[..., :length, :]
        layer.values = layer.values[..., :length, :]
