"""Every SGLang symbol the plugin touches, in one place, checked against the installed SGLang.

The plugin relies on SGLang's extension points and on a few facts about them (a step name, a
constant, the names of ServerArgs fields, the layer classes the Llama MTP draft is built from).
An SGLang upgrade that renames, removes or re-signs any of them must fail CI loudly, here, rather
than at some later launch. `python -m hass_sglang.serving.contract` prints the problems (exit 1).

Paths are `module:qualified.name` (pkgutil.resolve_name syntax). `params` are the leading
parameter names a callable must accept, in order; `contains` / `equals` check a value;
`source_order` pins a behaviour the plugin mirrors or refuses (snippets found in order in the source).
"""

from __future__ import annotations

import inspect
import pkgutil
import sys
from typing import Any

from pydantic import BaseModel, ConfigDict

from hass_sglang.serving.phase_timing import PHASES
from hass_sglang.serving.plugin import SPECULATIVE_FIELDS

PINNED_SGLANG = "0.5.23"


class Symbol(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    why: str
    params: tuple[str, ...] | None = None
    equals: Any = None
    contains: str | None = None
    fields: tuple[str, ...] | None = None  # msgspec Struct fields that must exist (ServerArgs)
    source_order: tuple[str, ...] | None = None  # snippets the source must hold, in this order


# the fields the plan reads and declares; one list, shared with the plugin
_PLAN_FIELDS = ("model_path", "dtype", "tp_size", *SPECULATIVE_FIELDS)

SYMBOLS: tuple[Symbol, ...] = (
    # Plugin loading (every process SGLang starts calls load_plugins).
    Symbol(path="sglang.srt.plugins:GENERAL_PLUGINS_GROUP", equals="sglang.srt.plugins",
           why="entry-point group our pyproject.toml registers `register` under"),
    Symbol(path="sglang.srt.plugins:load_plugins", params=(), why="loads and runs the entry point"),
    # Argument resolution.
    Symbol(path="sglang.srt.arg_groups.resolution_hooks:register_resolution_hook", params=("name",),
           why="wraps the speculative resolution step"),
    Symbol(path="sglang.srt.arg_groups.resolution_hooks:_OVERRIDABLE_HOOKS", contains="handle_speculative_decoding",
           why="register_resolution_hook only accepts whitelisted step names"),
    Symbol(path="sglang.srt.arg_groups.speculative_hook:handle_speculative_decoding", params=("server_args",),
           why="the built-in step our hook runs after declaring EAGLE"),
    Symbol(path="sglang.srt.arg_groups.overrides:declare_resolution", params=("server_args", "source"),
           why="declares the HASS plan without touching the raw input"),
    Symbol(path="sglang.srt.arg_groups.overrides:resolving_view", params=("server_args",),
           why="reads the arguments as resolved so far"),
    Symbol(path="sglang.srt.arg_groups.overrides:resolution_result", params=("server_args", "field"),
           why="how SGLang (and our tests) read a resolved field"),
    Symbol(path="sglang.srt.server_args:ServerArgs", fields=_PLAN_FIELDS, why="fields the plan reads and declares"),
    Symbol(path="sglang.srt.configs.model_config:_get_and_verify_dtype", params=("config", "dtype"),
           why="how ModelConfig resolves --dtype (auto: an fp32 config becomes fp16) for target and draft"),
    Symbol(path="sglang.srt.configs.model_config:ModelConfig.from_server_args",
           params=("server_args", "model_path", "model_revision", "is_draft_model"),
           why="target and draft ModelConfigs share server_args.dtype (the plan aligns their dtypes)"),
    Symbol(path="sglang.srt.speculative.eagle_worker_v2:EagleDraftWorker.init_lm_head",
           why="slices the target lm_head by global hot ids (why a token map is refused with --tp-size > 1)"),
    Symbol(path="sglang.srt.models.registry:import_model_classes", params=("package_name", "strict"),
           why="importing the registry module imports every SGLang model: the plugin registers after it"),
    Symbol(path="sglang.srt.server_args:ServerArgs.resolve_once", params=("self",), why="runs the resolution pipeline"),
    Symbol(path="sglang.srt.server_args:prepare_server_args", params=("argv",), why="CLI -> ServerArgs (launcher)"),
    Symbol(path="sglang.srt.runtime_context:publish", params=("server_args",),
           why="the scheduler projects resolution results (not raw input) into config bags"),
    Symbol(path="sglang.srt.runtime_context:get_spec", params=(),
           why="runtime code reads the resolved algorithm from this bag, so declaring EAGLE reaches it"),
    Symbol(path="sglang.srt.speculative.spec_info:SpeculativeAlgorithm.EAGLE",
           why="the algorithm HASS resolves to (NEXTN is its alias)"),
    Symbol(path="sglang.srt.speculative.spec_info:SpeculativeAlgorithm.from_string", params=("name",),
           why="how SGLang turns the resolved string into its algorithm"),
    Symbol(path="sglang.srt.speculative.spec_utils:load_token_map", params=("token_map_path",),
           why="reads hot_token_map.pt (a list of target ids) for --speculative-token-map"),
    # Model registry and the Llama MTP draft's building blocks.
    Symbol(path="sglang.srt.models.registry:ModelRegistry.register", params=("package_name", "overwrite", "strict"),
           why="registers hass_sglang.serving.models (LlamaForCausalLMNextN)"),
    Symbol(path="sglang.srt.models.registry:ModelRegistry.resolve_model_cls", params=("architectures",),
           why="how SGLang finds the draft class by architecture name"),
    Symbol(path="sglang.srt.models.llama:LlamaForCausalLM.forward",
           params=("self", "input_ids", "positions", "forward_batch", "input_embeds"),
           why="inherited forward: self.model(...) then the logits processor"),
    Symbol(path="sglang.srt.models.llama:LlamaForCausalLM.get_embed_and_head", params=("self",),
           why="inherited; the EAGLE worker reads the target's embed/head"),
    Symbol(path="sglang.srt.models.llama:LlamaForCausalLM.set_embed_and_head", params=("self", "embed", "head"),
           why="inherited; the EAGLE worker shares the target's embed and (hot-sliced) head"),
    Symbol(path="sglang.srt.models.llama:LlamaDecoderLayer",
           params=("config", "layer_id", "start_layer", "quant_config", "prefix"), why="the MTP decoder layer"),
    Symbol(path="sglang.srt.models.llama:LlamaDecoderLayer.forward",
           params=("self", "positions", "hidden_states", "forward_batch"), why="called by LlamaModelNextN"),
    Symbol(path="sglang.srt.layers.layer_boundary:layer_stack", why="layers are built inside a layer stack"),
    Symbol(path="sglang.srt.layers.layer_boundary.residual.batch:start", params=("forward_batch",),
           why="opens the residual stream"),
    Symbol(path="sglang.srt.layers.layer_boundary.residual.batch:final_norm",
           params=("hidden_states", "forward_batch", "layernorm"), why="shared_head.norm closes the stack"),
    Symbol(path="sglang.srt.layers.layernorm:RMSNorm", why="enorm / hnorm / shared_head.norm"),
    Symbol(path="sglang.srt.layers.logits_processor:LogitsProcessor", params=("config",), why="draft logits"),
    Symbol(path="sglang.srt.layers.vocab_parallel_embedding:ParallelLMHead",
           params=("num_embeddings", "embedding_dim"), why="draft lm_head (hot_vocab_size rows)"),
    Symbol(path="sglang.srt.layers.vocab_parallel_embedding:VocabParallelEmbedding",
           params=("num_embeddings", "embedding_dim"), why="placeholder for the target's embedding"),
    Symbol(path="sglang.srt.layers.quantization.base_config:QuantizationConfig", why="constructor type"),
    Symbol(path="sglang.srt.model_executor.forward_batch_info:ForwardBatch", why="forward argument"),
    Symbol(path="sglang.srt.model_executor.forward_batch_info:PPProxyTensors", why="forward argument"),
    Symbol(path="sglang.srt.model_loader.weight_utils:default_weight_loader", params=("param", "loaded_weight"),
           why="loads unfused parameters"),
    Symbol(path="sglang.srt.runtime_context:get_parallel", params=(), why="pp_group of the draft"),
    Symbol(path="sglang.srt.utils:add_prefix", params=("name", "prefix"), why="parameter prefixes"),
    # CPU backend (hass_sglang/serving/cpu): the call sites of the ops it registers, with the
    # parameters whose order/meaning the torch implementations follow, and the AMX switch.
    Symbol(path="sglang.srt.runtime_context:override_platform",
           why="declares has_amx=True on CPU hosts so resolution keeps the intel_amx backend"),
    Symbol(path="sglang.srt.arg_groups.overrides:_attention_backend_platform_fallbacks",
           why="the step that turns intel_amx into torch_native when the platform lacks AMX"),
    Symbol(path="sglang.srt.utils:cpu_has_amx_support", params=(),
           why="layers check real AMX here (torch probe), untouched by the platform override"),
    Symbol(path="sglang.srt.layers.attention.intel_amx_backend:IntelAMXAttnBackend",
           why="calls decode_attention_cpu / extend_attention_cpu"),
    Symbol(path="sglang.srt.layers.attention.intel_amx_backend:IntelAMXMultiStepDraftBackend",
           why="calls build_draft_decode_metadata_cpu"),
    Symbol(path="sglang.kernels.ops.speculative.spec_tree:build_tree_kernel_efficient_func",
           params=("parent_list", "top_scores_index", "seq_lens", "tree_mask", "positions", "retrieve_index",
                   "retrieve_next_token", "retrieve_next_sibling", "topk", "spec_steps", "num_verify_tokens",
                   "tree_mask_mode"), why="calls build_tree_kernel_efficient_cpu with these, in order"),
    Symbol(path="sglang.kernels.ops.speculative.spec_tree:verify_tree_greedy_func",
           params=("predicts", "accept_index", "accept_token_num", "candidates", "retrieve_index",
                   "retrieve_next_token", "retrieve_next_sibling", "target_predict"),
           why="calls verify_tree_greedy_cpu with keywords (retrive_*)"),
    Symbol(path="sglang.kernels.ops.speculative.spec_tree:TreeMaskMode.QLEN_ONLY", equals=1,
           why="tree mask layouts the CPU tree build and extend attention understand"),
    Symbol(path="sglang.kernels.ops.speculative.cache_locs:assign_draft_cache_locs_contiguous_func",
           params=("req_pool_indices", "req_to_token", "seq_lens", "out_cache_loc", "topk", "num_cols"),
           why="calls assign_draft_cache_locs_contiguous_cpu"),
    Symbol(path="sglang.kernels.ops.speculative.cache_locs:assign_extend_cache_locs_func",
           params=("req_pool_indices", "req_to_token", "start_offset", "end_offset"),
           why="calls assign_extend_cache_locs_cpu"),
    Symbol(path="sglang.kernels.ops.speculative.eagle:fill_bonus_tokens_func",
           params=("accept_tokens", "accept_lens", "bonus_tokens", "accept_stride"), why="calls fill_bonus_tokens_cpu"),
    Symbol(path="sglang.kernels.ops.speculative.eagle:fill_accept_out_cache_loc_func",
           params=("accept_index", "out_cache_loc", "accept_out_cache_loc"), why="calls fill_accept_out_cache_loc_cpu"),
    Symbol(path="sglang.kernels.ops.kvcache.cache_move:copy_all_layer_kv_cache_func",
           why="calls copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt_loc, src_loc)"),
    Symbol(path="sglang.srt.mem_cache.allocation:assign_req_to_token_pool_func",
           params=("req_pool_indices", "req_to_token", "start_offset", "end_offset", "out_cache_loc"),
           why="calls assign_req_to_token_pool_cpu"),
    Symbol(path="sglang.srt.plugins.hook_registry:HookRegistry.register", params=("target", "hook", "hook_type"),
           why="installs the T>0 verification hooks (serving/cpu/sampling_verify.py)"),
    Symbol(path="sglang.srt.plugins.hook_registry:HookType.AROUND", why="both CPU verification hooks wrap"),
    Symbol(path="sglang.srt.speculative.eagle_utils:eagle_sample", params=("verify_input", "batch", "logits_output"),
           why="AROUND hook keeps the verify logits and sampling info for non-greedy batches"),
    Symbol(path="sglang.srt.speculative.eagle_utils:verify_tree_greedy_func",
           why="AROUND hook: the CPU branch's verifier, replaced by SpecInfer at T>0"),
    Symbol(path="sglang.srt.models.deepseek_v2:DeepseekV2ForCausalLM.set_embed_and_head",
           params=("self", "embed", "head"),
           why="calls torch.cuda.synchronize() unconditionally: AROUND hook on CPU hosts (serving/cpu/model_hooks.py)"),
    Symbol(path="sglang.srt.models.deepseek_nextn:DeepseekV3ForCausalLMNextN",
           why="SGLang's DeepSeek MTP draft class: our DeepSeek MTP exports load into it"),
    Symbol(path="sglang.srt.speculative.eagle_utils:_verify_uses_greedy",
           why="why CPU verification is greedy-only in stock SGLang (is_cpu forces it)"),
    Symbol(path="sglang.srt.entrypoints.openai.serving_chat:OpenAIServingChat._validate_request",
           params=("self", "request"), why="AROUND hook: unknown model names -> 400 (serving/request_checks.py)"),
    Symbol(path="sglang.srt.entrypoints.openai.serving_completions:OpenAIServingCompletion._validate_request",
           params=("self", "request"), why="AROUND hook: unknown model names -> 400 (serving/request_checks.py)"),
    Symbol(path="sglang.srt.managers.tokenizer_manager:TokenizerManager.__init__", params=("self", "server_args"),
           why="request checks read the raw --speculative-algorithm from tokenizer_manager.server_args"),
    Symbol(path="sglang.srt.entrypoints.openai.serving_base:OpenAIServingBase.handle_request",
           why="turns a _validate_request message into a 400 error response"),
    Symbol(path="sglang.srt.managers.tokenizer_manager:TokenizerManager._create_tokenized_object",
           params=("self", "obj", "input_text", "input_ids"),
           why="AROUND hook: sampling parameters HASS would not honour and prompt ids outside the vocabulary -> 400 "
               "(serving/request_checks.py)"),
    Symbol(path="sglang.srt.managers.io_struct:TokenizedGenerateReqInput", fields=("input_ids", "sampling_params"),
           why="what that hook reads from the tokenized request"),
    Symbol(path="sglang.srt.sampling.sampling_params:SamplingParams",
           fields=("top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "sampling_seed",
                   "logit_bias"),
           why="the normalised sampling fields request_checks.sampling_error reads"),
    Symbol(path="sglang.srt.managers.schedule_batch:FINISH_ABORT", params=("message", "status_code", "err_type"),
           why="the CPU verification hook ends a request whose logits are NaN with it, not the scheduler"),
    Symbol(path="sglang.srt.entrypoints.http_server:ErrorResponse",
           why="REPLACE hook: client-facing validation errors without server paths (serving/request_checks.py)"),
    Symbol(path="sglang.srt.entrypoints.openai.serving_base:ErrorResponse",
           why="REPLACE hook: create_error_response bodies without server paths (serving/request_checks.py)"),
    Symbol(path="sglang.srt.entrypoints.openai.protocol:ErrorResponse", fields=None,
           why="the class PublicErrorResponse subclasses (its `message` field is scrubbed)"),
    # top_k with top_p: plain SGLang cuts both on one full ranking (sampling.target_probs mirrors it,
    # the CPU hook verifies with it); SGLang's GPU verification renormalises over top-k first, so
    # HASS servers on GPU refuse the combination (request_checks.sampling_error). If SGLang aligns
    # them, these fail and the refusal can go.
    Symbol(path="sglang.srt.layers.sampler:top_k_top_p_min_p_sampling_from_probs_torch",
           source_order=("probs_sum = torch.cumsum(probs_sort", ">= top_ks.view(-1, 1)",
                         "(probs_sum - probs_sort) > top_ps.view(-1, 1)"),
           why="plain SGLang's top-k/top-p rule on CPU, the one sampling.target_probs reproduces"),
    Symbol(path="sglang.srt.layers.sampler:Sampler._sample_from_probs",
           source_order=("top_k_top_p_sampling_from_probs(", 'filter_apply_order="joint"'),
           why="plain SGLang on GPU (flashinfer) uses the same joint top-k/top-p rule"),
    Symbol(path="sglang.srt.speculative.eagle_utils:eagle_sample",
           source_order=("target_probs = top_k_renorm_prob(", "target_probs = top_p_renorm_prob("),
           why="SGLang's GPU verification applies top_p after renormalising over top-k: HASS refuses "
               "top_k with top_p on GPU servers"),
    Symbol(path="sglang.srt.speculative.eagle_utils:per_step_draft_out_cache_loc",
           why="the [bs, topk, num_steps] draft slot layout build_draft_decode_metadata_cpu follows"),
    # The phases HASS_PHASE_TIMING times (serving/phase_timing.py): its labels read these parameters.
    *(Symbol(path=path, params=params, why=f"HASS_PHASE_TIMING times it as {label!r}")
      for label, (path, params) in PHASES.items()),
)


def _leading_params(obj) -> list[str]:
    return list(inspect.signature(obj).parameters)


def check_symbol(sym: Symbol) -> str | None:
    """None if the installed SGLang provides `sym` as described, else the problem."""
    try:
        obj = pkgutil.resolve_name(sym.path)
    except (ImportError, AttributeError, ValueError) as exc:
        return f"{sym.path}: missing ({type(exc).__name__}: {exc}) - needed because {sym.why}"
    if sym.params is not None:
        try:
            got = _leading_params(obj)
        except (TypeError, ValueError) as exc:
            return f"{sym.path}: no inspectable signature ({exc})"
        if got[: len(sym.params)] != list(sym.params):
            return f"{sym.path}: parameters {got} do not start with {list(sym.params)} - {sym.why}"
    if sym.equals is not None and obj != sym.equals:
        return f"{sym.path}: is {obj!r}, expected {sym.equals!r}"
    if sym.contains is not None and sym.contains not in obj:
        return f"{sym.path}: does not contain {sym.contains!r} - {sym.why}"
    if sym.source_order is not None:
        try:
            source, at = inspect.getsource(obj), 0
        except (OSError, TypeError) as exc:
            return f"{sym.path}: no source to check ({exc})"
        for snippet in sym.source_order:
            found = source.find(snippet, at)
            if found < 0:
                return f"{sym.path}: {snippet!r} not found (in order) in its source - {sym.why}"
            at = found + len(snippet)
    if sym.fields is not None:
        have = set(getattr(obj, "__struct_fields__", ()))
        missing = [f for f in sym.fields if f not in have]
        if missing:
            return f"{sym.path}: fields {missing} missing - {sym.why}"
    return None


def check_contract(symbols: tuple[Symbol, ...] = SYMBOLS) -> list[str]:
    """Problems with the installed SGLang (empty when the plugin's assumptions hold)."""
    from importlib.metadata import PackageNotFoundError, version

    problems = []
    try:
        installed = version("sglang")
        if installed != PINNED_SGLANG:
            problems.append(f"sglang {installed} is installed; the plugin is verified against {PINNED_SGLANG}")
    except PackageNotFoundError:
        return ["sglang is not installed"]
    problems += [p for p in (check_symbol(s) for s in symbols) if p is not None]
    return problems


def main() -> int:
    problems = check_contract()
    for p in problems:
        print(f"contract: {p}", file=sys.stderr)
    print(f"{len(SYMBOLS)} SGLang symbols checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
