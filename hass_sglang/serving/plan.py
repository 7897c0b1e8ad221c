"""What `--speculative-algorithm HASS` means for one launch: a plan SGLang's EAGLE path can run.

HASS (arXiv 2408.15766) changes how a draft is *trained*, not how it is *served*: at inference a
HASS draft is an EAGLE-2 head (or an MTP/NextN head) driven by EAGLE-2's dynamic tree, which is
exactly SGLang's EAGLE worker. So the plan rewrites HASS to SGLang's EAGLE algorithm (NEXTN is an
alias of EAGLE in SGLang 0.5.23) with the paper's tree defaults, and makes sure the draft folder
is one SGLang loads and that it fits the target - before anything is served.

This module does not import SGLang: it is the part of the plugin that can be reasoned about (and
tested) on its own; `serving.plugin` feeds it SGLang's resolved arguments and declares the result.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict

from hass_sglang.errors import CheckpointMismatchError, HassError, ModelNotFoundError
from hass_sglang.io import drafts_cache_dir
from hass_sglang.tree import MTP_TREE, PAPER_TREE, TreeShape

HASS_ALGORITHM = "HASS"
# SGLang's algorithm for both head kinds: EAGLE-2 heads and NextN/MTP heads share its worker.
SGLANG_ALGORITHM = "EAGLE"
# Targets whose MTP layer ships inside the target checkpoint and that SGLang 0.5.23 both points
# the draft at by itself (arg_groups/speculative_hook.py:1120) and loads with its own
# DeepseekV3ForCausalLMNextN (configs/model_config.py:1032): they skip our checks. (DeepSeek V4
# is left out: SGLang requires top-k 1 there, deepseek_v4_hook.py:149.)
SGLANG_BUILTIN_MTP_TARGETS = frozenset({"DeepseekV3ForCausalLM", "DeepseekV32ForCausalLM"})


def is_hass(algorithm: object) -> bool:
    return isinstance(algorithm, str) and algorithm.strip().upper() == HASS_ALGORITHM


class LaunchRequest(BaseModel):
    """The launch flags the plan depends on (None = not passed by the user)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_path: str
    draft_path: str | None = None
    num_steps: int | None = None
    eagle_topk: int | None = None
    num_draft_tokens: int | None = None
    token_map: str | None = None
    dtype: str = "auto"  # --dtype, as given
    tp_size: int = 1  # --tp-size


class LaunchPlan(BaseModel):
    """ServerArgs fields to declare (SGLang names) plus what was decided, for logs and tests.
    A field left None is not declared: SGLang decides it (its tree defaults for MTP heads)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    head_kind: Literal["eagle", "mtp"]
    draft_format: Literal["eagle", "mtp", "reference", "sglang-mtp"]
    speculative_algorithm: Literal["EAGLE"] = SGLANG_ALGORITHM
    speculative_draft_model_path: str | None
    speculative_num_steps: int | None = None
    speculative_eagle_topk: int | None = None
    speculative_num_draft_tokens: int | None = None
    speculative_token_map: str | None = None
    dtype: str | None = None  # declared when --dtype auto would give target and draft different dtypes
    converted_from: str | None = None

    def server_args_fields(self) -> dict:
        fields = {"speculative_algorithm": self.speculative_algorithm}
        for name in ("speculative_num_steps", "speculative_eagle_topk", "speculative_num_draft_tokens",
                     "speculative_draft_model_path", "speculative_token_map", "dtype"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        return fields


def tree_fields(req: LaunchRequest, head_kind: str) -> dict:
    """The tree to declare: HASS's paper tree for the flags the user left out of an EAGLE head's
    launch (a user's flag always wins). MTP heads are served with SGLang's own defaults
    (speculative_hook._auto_choose_speculative_params: a 3-step chain for DeepSeek), unless the user
    gives tree flags: those are completed from that chain. DeepSeek's trtllm_mla backend (SM100)
    rejects top-k > 1, and a 60-token tree through a 671B MoE is mostly rejected work."""
    given = (req.num_steps, req.eagle_topk, req.num_draft_tokens)
    if head_kind == "mtp" and given == (None, None, None):
        return {}
    tree = TreeShape.from_flags(*given, PAPER_TREE if head_kind == "eagle" else MTP_TREE)
    return {"speculative_num_steps": tree.num_steps, "speculative_eagle_topk": tree.topk,
            "speculative_num_draft_tokens": tree.num_draft_tokens}


def _fingerprint(folder: Path, target_config) -> str:
    """Key of a converted draft: the source files (name, size, mtime) and the target's shape."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    for k in ("hidden_size", "vocab_size", "num_hidden_layers", "intermediate_size"):
        h.update(f"{k}={getattr(target_config, k, None)};".encode())
    return h.hexdigest()[:16]


def convert_reference_cached(draft: Path, target_path: str, target_config) -> Path:
    """HASS reference release -> SGLang EAGLE folder in the draft cache (once per source)."""
    from hass_sglang.checkpoint import import_reference

    out = drafts_cache_dir() / f"{draft.name}-{_fingerprint(draft, target_config)}"
    if (out / "config.json").is_file():
        return out
    try:
        return import_reference(draft, out, target_config)
    except OSError as exc:
        raise HassError(
            f"could not write the converted draft to {out} ({exc}); convert it yourself and pass the "
            f"result: hass convert {draft} <out-folder> --target {target_path}"
        ) from exc


def _sglang_ready(config: dict) -> bool:
    """Our own exports need `hot_vocab_size` at top level when they carry a reduced vocabulary
    (SGLang sizes the draft lm_head and its CUDA-graph buffers from it)."""
    hot = (config.get("hass") or {}).get("hot_vocab_size")
    return hot is None or config.get("hot_vocab_size") == hot


def check_tensor_parallel_vocabulary(token_map: str | None, tp_size: int, draft) -> None:
    """SGLang 0.5.23 cannot serve a reduced draft vocabulary with tensor parallelism: the EAGLE
    worker (speculative/eagle_worker_v2.py, init_lm_head) slices the target's lm_head with the
    *global* hot-token ids, `head.data[hot_token_id]`, while under TP that weight is this rank's
    vocabulary-parallel shard (layers/vocab_parallel_embedding.py): ids beyond the shard fail, the
    others pick rows of other tokens (tests/test_sglang_plugin.py shows it with SGLang's shard layout)."""
    if token_map is not None and tp_size > 1:
        raise HassError(
            f"draft {draft} uses a reduced draft vocabulary ({token_map}), which SGLang 0.5.23 cannot "
            f"serve with --tp-size {tp_size}: its EAGLE worker indexes the rank's vocabulary-parallel lm_head "
            "shard with global token ids. Serve it with --tp-size 1, or write a full-vocabulary copy of the "
            f"draft and serve that: hass convert {draft} <out-folder> --full-vocabulary"
        )


def plan_launch(req: LaunchRequest, resolve_dtype: Callable[[object], str] | None = None) -> LaunchPlan:
    """Validate the draft against the target and decide the SGLang arguments; raise on mismatch.

    resolve_dtype(config) -> dtype name: how SGLang resolves `req.dtype` for a model config
    (the plugin passes SGLang's own rule); with `--dtype auto` target and draft may resolve to
    different dtypes (an fp32 config becomes fp16), which the plan then aligns on the target's."""
    from hass_sglang.checkpoint import HOT_TOKEN_FILE, detect_format, inspect_draft, load_draft, save_draft
    from hass_sglang.drafts import resolve_draft
    from hass_sglang.target import load_target_config

    target_config = load_target_config(req.target_path)
    target_arch = (getattr(target_config, "architectures", None) or [""])[0]

    if req.draft_path is None:
        if target_arch in SGLANG_BUILTIN_MTP_TARGETS:
            # SGLang points the draft at the target checkpoint itself and loads its NextN layer.
            return LaunchPlan(head_kind="mtp", draft_format="sglang-mtp", speculative_draft_model_path=None,
                              **tree_fields(req, "mtp"))
        raise HassError(
            "--speculative-algorithm HASS needs --speculative-draft-model-path (a HASS/EAGLE-2 head, an MTP "
            f"head, or a HASS reference release); target architecture {target_arch!r} has no built-in MTP layer"
        )

    choice = resolve_draft(req.draft_path)  # a folder, a shipped draft name or a hub id (downloaded)
    if choice.kind != "folder" or not (choice.path / "config.json").is_file():
        raise ModelNotFoundError(
            f"draft {req.draft_path!r} is not a folder with config.json, a shipped draft or a hub id "
            "(HASS drafts are checked against the target before serving)"
        )
    draft = choice.path
    config = json.loads((draft / "config.json").read_text())
    draft_arch = (config.get("architectures") or [""])[0]
    if target_arch in SGLANG_BUILTIN_MTP_TARGETS and draft_arch in SGLANG_BUILTIN_MTP_TARGETS:
        # a whole DeepSeek checkpoint as the draft: SGLang loads its NextN layer itself
        return LaunchPlan(head_kind="mtp", draft_format="sglang-mtp", speculative_draft_model_path=str(draft),
                          **tree_fields(req, "mtp"))

    fmt = detect_format(config)  # raises CheckpointMismatchError for anything else
    converted_from = None
    if fmt == "reference":
        converted_from, draft = str(draft), convert_reference_cached(draft, req.target_path, target_config)
    elif not _sglang_ready(config):
        out = drafts_cache_dir() / f"{draft.name}-{_fingerprint(draft, target_config)}"
        if not (out / "config.json").is_file():
            save_draft(load_draft(draft, target_config), out, target_config, metadata={"normalised_from": str(draft)})
        converted_from, draft = str(draft), out
    info = inspect_draft(draft, target_config)  # the full check (config, keys, shapes), no weights read

    token_map = req.token_map
    if info.hot_token_ids is not None:
        if token_map is not None:
            raise CheckpointMismatchError(
                f"draft {draft} has its own reduced vocabulary ({HOT_TOKEN_FILE}); drop --speculative-token-map"
            )
        token_map = str(draft / HOT_TOKEN_FILE)
    check_tensor_parallel_vocabulary(token_map, req.tp_size, draft)
    head_kind = "mtp" if fmt == "mtp" else "eagle"
    dtype = None
    if resolve_dtype is not None and req.dtype == "auto":
        draft_config = json.loads((draft / "config.json").read_text())
        target_dtype, draft_dtype = resolve_dtype(target_config), resolve_dtype(draft_config)
        if target_dtype != draft_dtype:
            dtype = target_dtype  # one --dtype for both models, the target's
    return LaunchPlan(
        head_kind=head_kind, draft_format=fmt, speculative_draft_model_path=str(draft),
        speculative_token_map=token_map, dtype=dtype, converted_from=converted_from, **tree_fields(req, head_kind),
    )

