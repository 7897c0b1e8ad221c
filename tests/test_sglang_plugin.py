"""`--speculative-algorithm HASS` against the real, unmodified SGLang 0.5.23 with our entry point installed.

Resolution runs SGLang's own `prepare_server_args` + `ServerArgs.resolve_once` after SGLang's own
`load_plugins()`, in this process and in spawned children (how SGLang starts its scheduler). The
target is the embedded SmolLM2-135M-Instruct HF folder; drafts are tiny heads built here. Nothing is
served: model weights are never loaded by SGLang.
"""

import json
import multiprocessing as mp
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from hass_sglang.checkpoint import EAGLE_ARCH, MTP_ARCH, save_draft
from hass_sglang.errors import CheckpointMismatchError, HassError
from hass_sglang.heads import build_head
from hass_sglang.serving.plan import LaunchRequest, plan_launch
from hass_sglang.tree import PAPER_TREE, TreeShape

pytest.importorskip("sglang")

HOT = torch.tensor([0, 5, 17, 49151])


@pytest.fixture(scope="module")
def target_dir(target):
    return str(target.path)


@pytest.fixture(scope="module")
def drafts(tmp_path_factory, target):
    """eagle / mtp / eagle_hot in our format, and `reference`: a HASS reference release (bin)."""
    root = tmp_path_factory.mktemp("drafts")
    cfg = target.config
    out = {
        "eagle": save_draft(build_head("eagle", cfg, seed=0), root / "eagle", cfg),
        "mtp": save_draft(build_head("mtp", cfg, seed=0), root / "mtp", cfg),
        "eagle_hot": save_draft(build_head("eagle", cfg, hot_token_ids=HOT, seed=0), root / "eagle_hot", cfg),
    }
    ref = root / "HASS-ref"
    ref.mkdir()
    ref_cfg = cfg.to_dict()
    ref_cfg.update(architectures=["LlamaForCausalLM"], num_hidden_layers=1, bias=True)
    (ref / "config.json").write_text(json.dumps(ref_cfg))
    sd = dict(build_head("eagle", cfg, seed=1).state_dict())
    sd["embed_tokens.weight"] = target.embed_tokens.weight.detach().clone()
    torch.save(sd, ref / "pytorch_model.bin")
    out["reference"] = ref
    return {k: str(v) for k, v in out.items()}


@pytest.fixture(autouse=True)
def draft_cache(tmp_path, monkeypatch):
    """Converted drafts go to a per-test cache (HASS_CACHE is read at call time, children inherit it)."""
    monkeypatch.setenv("HASS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "drafts"


def argv(target_dir, draft=None, algo="HASS", *extra):
    a = ["--model-path", target_dir, "--speculative-algorithm", algo, "--device", "cpu"]
    if draft is not None:
        a += ["--speculative-draft-model-path", draft]
    return a + list(extra)


def resolve(args):
    from hass_sglang.serving.plugin import resolve_launch_flags

    return resolve_launch_flags(args)


def _child_resolve(args, queue):
    from hass_sglang.serving.plugin import resolve_launch_flags

    queue.put(resolve_launch_flags(args))


def _child_receives_resolved_args(server_args, queue):
    """What a spawned scheduler sees: pickled, already-resolved ServerArgs, plugins loaded again."""
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.models.registry import ModelRegistry
    from sglang.srt.plugins import load_plugins

    from hass_sglang.serving.plugin import resolved_speculative_args

    from sglang.srt.runtime_context import get_spec, publish
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    load_plugins()
    out = resolved_speculative_args(server_args)
    # The scheduler publishes the record; its workers read the algorithm from the config bag.
    publish(server_args, role="scheduler")
    out["published_algorithm"] = get_spec().speculative_algorithm
    out["published_is_eagle"] = SpeculativeAlgorithm.from_string(get_spec().speculative_algorithm).is_eagle()
    draft = ModelConfig(out["speculative_draft_model_path"], is_draft_model=True)
    cls, arch = ModelRegistry.resolve_model_cls(draft.hf_config.architectures)
    out.update(draft_class=f"{cls.__module__}.{cls.__qualname__}", draft_arch=arch,
               nextn_layers=draft.num_nextn_predict_layers)
    queue.put(out)


def run_spawned(fn, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(*args, queue))
    proc.start()
    try:
        return queue.get(timeout=500)
    finally:
        proc.join(timeout=60)
        assert proc.exitcode == 0


HASS_TREE = {"speculative_num_steps": 6, "speculative_eagle_topk": 10, "speculative_num_draft_tokens": 60}


@pytest.mark.parametrize("spelling", ["HASS", "hass"])
def test_hass_resolves_to_sglang_eagle_with_paper_defaults(target_dir, drafts, spelling):
    got = resolve(argv(target_dir, drafts["eagle"], spelling))
    assert got["speculative_algorithm"] == "EAGLE"
    assert got["requested_algorithm"] == spelling  # SGLang's raw record keeps what was asked for
    assert got["speculative_draft_model_path"] == drafts["eagle"]
    assert {k: got[k] for k in HASS_TREE} == HASS_TREE
    assert got["speculative_token_map"] is None


def test_user_tree_flags_win(target_dir, drafts):
    got = resolve(argv(target_dir, drafts["eagle"], "HASS", "--speculative-num-steps", "3",
                       "--speculative-eagle-topk", "4", "--speculative-num-draft-tokens", "8"))
    assert (got["speculative_num_steps"], got["speculative_eagle_topk"], got["speculative_num_draft_tokens"]) == (3, 4, 8)
    # Only some flags given: the rest are HASS defaults; top-k 1 makes a chain (SGLang's rule).
    got = resolve(argv(target_dir, drafts["eagle"], "HASS", "--speculative-eagle-topk", "1"))
    assert (got["speculative_num_steps"], got["speculative_eagle_topk"], got["speculative_num_draft_tokens"]) == (6, 1, 7)


def test_other_algorithms_are_untouched(target_dir, drafts):
    got = resolve(argv(target_dir, drafts["eagle"], "EAGLE"))
    assert got["speculative_algorithm"] == "EAGLE" and got["requested_algorithm"] == "EAGLE"
    # SGLang's own Llama defaults, not HASS's: the plugin only acts on HASS.
    assert (got["speculative_num_steps"], got["speculative_eagle_topk"], got["speculative_num_draft_tokens"]) == (5, 4, 8)


def test_reduced_vocabulary_draft_passes_its_token_map(target_dir, drafts):
    got = resolve(argv(target_dir, drafts["eagle_hot"]))
    assert got["speculative_token_map"] == f"{drafts['eagle_hot']}/hot_token_map.pt"
    assert torch.load(got["speculative_token_map"], weights_only=True) == HOT.tolist()
    assert json.loads(open(f"{drafts['eagle_hot']}/config.json").read())["hot_vocab_size"] == len(HOT)


def test_reference_release_is_converted_into_the_cache(target_dir, drafts, draft_cache):
    got = resolve(argv(target_dir, drafts["reference"]))
    converted = got["speculative_draft_model_path"]
    assert converted.startswith(str(draft_cache)) and got["speculative_algorithm"] == "EAGLE"
    cfg = json.loads(open(f"{converted}/config.json").read())
    assert cfg["architectures"] == [EAGLE_ARCH] and cfg["tie_word_embeddings"] is False
    assert "embed_tokens.weight" not in load_file(f"{converted}/model.safetensors")
    # Second launch reuses the conversion.
    assert resolve(argv(target_dir, drafts["reference"]))["speculative_draft_model_path"] == converted


def test_spawned_child_resolves_hass_like_the_launcher(target_dir, drafts):
    """The scheduler is a spawned process: the entry point (not a launcher monkeypatch) must act there."""
    got = run_spawned(_child_resolve, argv(target_dir, drafts["eagle"], "hass"))
    assert got["speculative_algorithm"] == "EAGLE" and got["requested_algorithm"] == "hass"
    assert {k: got[k] for k in HASS_TREE} == HASS_TREE


SGLANG_LLAMA_TREE = (5, 4, 8)  # SGLang 0.5.23's own default for Llama targets (_auto_choose_speculative_params)


def _tree(got):
    return got["speculative_num_steps"], got["speculative_eagle_topk"], got["speculative_num_draft_tokens"]


def test_mtp_heads_keep_sglangs_own_tree_unless_flags_are_given(target_dir, drafts):
    """The paper's 6/10/60 is an EAGLE-2 setting; MTP drafts get what SGLang picks for them."""
    got = resolve(argv(target_dir, drafts["mtp"]))
    assert got["speculative_algorithm"] == "EAGLE" and _tree(got) == SGLANG_LLAMA_TREE
    assert _tree(resolve(argv(target_dir, drafts["mtp"], "HASS", "--speculative-num-steps", "2"))) == (2, 1, 3)
    assert _tree(resolve(argv(target_dir, drafts["mtp"], "HASS", "--speculative-num-steps", "4",
                              "--speculative-eagle-topk", "2", "--speculative-num-draft-tokens", "6"))) == (4, 2, 6)


@pytest.mark.parametrize("kind,arch,cls", [
    ("eagle", EAGLE_ARCH, "sglang.srt.models.llama_eagle.LlamaForCausalLMEagle"),
    ("mtp", MTP_ARCH, "hass_sglang.serving.models.llama_nextn.LlamaForCausalLMNextN"),
])
def test_scheduler_child_gets_eagle_args_and_the_right_draft_class(target_dir, drafts, kind, arch, cls):
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args

    load_plugins()
    server_args = prepare_server_args(argv(target_dir, drafts[kind]))
    server_args.resolve_once()
    # Where SGLang records the request it keeps HASS; its resolved view says EAGLE.
    assert server_args.speculative_algorithm == "HASS" and "--speculative-algorithm HASS" in server_args.launch_command
    assert server_args.resolved_dict()["speculative_algorithm"] == "EAGLE"
    got = run_spawned(_child_receives_resolved_args, server_args)
    assert got["speculative_algorithm"] == "EAGLE" and got["requested_algorithm"] == "HASS"
    assert got["published_algorithm"] == "EAGLE" and got["published_is_eagle"] is True
    assert (got["draft_arch"], got["draft_class"]) == (arch, cls)
    if kind == "mtp":
        assert got["nextn_layers"] == 1  # SGLang sizes the draft KV pool to one layer


# --- refusals: each mismatch named, before anything is served -----------------------------------


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _edit_weights(folder, drop=(), add=None):
    w = load_file(str(folder / "model.safetensors"))
    for k in drop:
        del w[k]
    w.update(add or {})
    save_file(w, str(folder / "model.safetensors"))


@pytest.mark.parametrize("case,match", [
    ("hidden_size", r"hidden_size: draft 64 != target 576"),
    ("vocab", r"vocab_size: draft 1000 != target 49152"),
    ("missing_weight", r"missing weights \['layers.0.mlp.down_proj.weight'\]"),
    ("unexpected_weight", r"unexpected weights \['layers.0.extra.weight'\]"),
    ("tied", r"tie_word_embeddings is true"),
    ("missing_fc_bias", r"missing weights \['fc.bias'\]"),
    ("mtp_layer_index", r"num_hidden_layers 12 != target's 30"),
])
def test_mismatched_drafts_are_refused_with_the_mismatch_named(tmp_path, target, target_dir, case, match):
    cfg = target.config
    folder = save_draft(build_head("mtp" if case == "mtp_layer_index" else "eagle", cfg, seed=0), tmp_path / case, cfg)
    if case == "hidden_size":
        _edit_config(folder, hidden_size=64)
    elif case == "vocab":
        _edit_config(folder, vocab_size=1000)
    elif case == "missing_weight":
        _edit_weights(folder, drop=["layers.0.mlp.down_proj.weight"])
    elif case == "unexpected_weight":
        _edit_weights(folder, add={"layers.0.extra.weight": torch.zeros(2)})
    elif case == "tied":
        _edit_config(folder, tie_word_embeddings=True)
    elif case == "missing_fc_bias":
        _edit_weights(folder, drop=["fc.bias"])
    elif case == "mtp_layer_index":
        _edit_config(folder, num_hidden_layers=12)
    with pytest.raises(CheckpointMismatchError, match=match):
        plan_launch(LaunchRequest(target_path=target_dir, draft_path=str(folder)))


def test_unusable_requests_are_refused(tmp_path, target_dir):
    with pytest.raises(HassError, match="needs --speculative-draft-model-path"):
        plan_launch(LaunchRequest(target_path=target_dir))
    with pytest.raises(HassError, match=r"draft folder '.*nope' not found \(shipped drafts: "):
        plan_launch(LaunchRequest(target_path=target_dir, draft_path=str(tmp_path / "nope")))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(CheckpointMismatchError, match="unrecognised draft architecture 'Qwen2ForCausalLM'"):
        plan_launch(LaunchRequest(target_path=target_dir, draft_path=str(tmp_path / "other")))
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        LaunchRequest(target_path=target_dir, draft_path=None, num_step=3)


def tree_shape(steps, topk, tokens):
    shape = TreeShape.from_flags(steps, topk, tokens, PAPER_TREE)
    return shape.num_steps, shape.topk, shape.num_draft_tokens


def test_tree_shape_defaults_and_overrides():
    assert tree_shape(None, None, None) == (6, 10, 60)
    assert tree_shape(3, None, None) == (3, 10, 60)
    assert tree_shape(None, 2, None) == (6, 2, 23)  # never more tokens than the tree holds
    assert tree_shape(4, 1, None) == (4, 1, 5)
    assert tree_shape(2, 2, 3) == (2, 2, 3)
    with pytest.raises(HassError, match="must be >= 1"):
        tree_shape(0, None, None)


def test_launch_server_refuses_a_mismatched_draft_and_exits(tmp_path, target, target_dir):
    """`python -m sglang.launch_server ... --speculative-algorithm HASS` stops with the reason, no hang."""
    folder = save_draft(build_head("eagle", target.config, seed=0), tmp_path / "bad", target.config)
    _edit_config(folder, hidden_size=64)
    proc = subprocess.run(
        [sys.executable, "-m", "sglang.launch_server", *argv(target_dir, str(folder))],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "CheckpointMismatchError" in proc.stderr and "hidden_size: draft 64 != target 576" in proc.stderr


# --- the Llama MTP draft class -----------------------------------------------------------------


def test_llama_nextn_maps_every_checkpoint_tensor_to_sglang_parameters(tmp_path, target):
    """Every tensor of our MTP format lands on a parameter of SGLang's layer names (fused q/k/v and
    gate/up with their shard ids); embedding / lm_head copies are skipped (the target's are shared).
    Building the module itself needs SGLang's CPU backend or a GPU (rotary kernels), see docs."""
    from hass_sglang.serving.models.llama_nextn import checkpoint_to_param_name

    L = target.config.num_hidden_layers
    folder = save_draft(build_head("mtp", target.config, seed=0), tmp_path / "mtp", target.config)
    names = list(load_file(str(folder / "model.safetensors")))
    mapped = {n: checkpoint_to_param_name(n, L) for n in names}
    assert {m for m in mapped.values()} == {
        ("model.enorm.weight", None), ("model.hnorm.weight", None), ("model.eh_proj.weight", None),
        ("model.shared_head_norm.weight", None),
        ("model.decoder.input_layernorm.weight", None), ("model.decoder.post_attention_layernorm.weight", None),
        ("model.decoder.self_attn.qkv_proj.weight", "q"), ("model.decoder.self_attn.qkv_proj.weight", "k"),
        ("model.decoder.self_attn.qkv_proj.weight", "v"), ("model.decoder.self_attn.o_proj.weight", None),
        ("model.decoder.mlp.gate_up_proj.weight", 0), ("model.decoder.mlp.gate_up_proj.weight", 1),
        ("model.decoder.mlp.down_proj.weight", None),
    }
    for shared in (f"model.layers.{L}.embed_tokens.weight", f"model.layers.{L}.shared_head.head.weight", "lm_head.weight"):
        assert checkpoint_to_param_name(shared, L) is None


def test_register_is_idempotent_and_cheap_to_import():
    """No SGLang import at import time, no CUDA, and SGLang's model registry (whose import imports
    every SGLang model) left to SGLang: it imports it only where models are built, and the plugin
    registers the Llama MTP class right after that import, not in every process."""
    code = (
        "import sys, hass_sglang.serving.plugin as p; "
        "assert not any(m == 'sglang' or m.startswith('sglang.') for m in sys.modules), 'sglang imported at import'; "
        "p.register(); p.register(); "
        "import torch; assert not torch.cuda.is_initialized(); "
        "from sglang.srt.plugins import load_plugins; load_plugins(); "
        "assert 'sglang.srt.models.registry' not in sys.modules, 'registry imported by the plugin'; "
        "assert not any(m.startswith('hass_sglang.serving.models') for m in sys.modules); "
        "from sglang.srt.models.registry import ModelRegistry; "
        "print(ModelRegistry.resolve_model_cls(['LlamaForCausalLMNextN'])[0].__module__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "hass_sglang.serving.models.llama_nextn"


def test_older_reduced_vocabulary_export_is_normalised_into_the_cache(tmp_path, target, target_dir, draft_cache):
    """Exports written before `hot_vocab_size` was a top-level field get a cached copy SGLang can size."""
    cfg = target.config
    folder = save_draft(build_head("eagle", cfg, hot_token_ids=HOT, seed=0), tmp_path / "old_hot", cfg)
    conf = json.loads((folder / "config.json").read_text())
    del conf["hot_vocab_size"]
    (folder / "config.json").write_text(json.dumps(conf))
    plan = plan_launch(LaunchRequest(target_path=target_dir, draft_path=str(folder)))
    assert plan.converted_from == str(folder) and plan.speculative_draft_model_path.startswith(str(draft_cache))
    assert json.loads(open(f"{plan.speculative_draft_model_path}/config.json").read())["hot_vocab_size"] == len(HOT)
    assert plan.speculative_token_map == f"{plan.speculative_draft_model_path}/hot_token_map.pt"
    with pytest.raises(CheckpointMismatchError, match="drop --speculative-token-map"):
        plan_launch(LaunchRequest(target_path=target_dir, draft_path=str(folder), token_map="/x/map.pt"))


def test_deepseek_target_without_draft_uses_sglangs_nextn_and_its_tree(tmp_path):
    """DeepSeek checkpoints carry their MTP layer: SGLang points the draft at the target and loads its
    own DeepseekV3ForCausalLMNextN, with its own MTP tree (a 3-step chain), not the EAGLE paper tree:
    on SM100 (trtllm_mla) SGLang rejects top-k > 1, and at TP 16 a 60-token verify is mostly waste."""
    folder = tmp_path / "dsv3"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 128, "num_nextn_predict_layers": 1,
    }))
    plan = plan_launch(LaunchRequest(target_path=str(folder)))
    assert (plan.head_kind, plan.draft_format, plan.speculative_draft_model_path) == ("mtp", "sglang-mtp", None)
    assert set(plan.server_args_fields()) == {"speculative_algorithm"}  # SGLang decides the rest
    got = resolve(["--model-path", str(folder), "--speculative-algorithm", "HASS", "--device", "cpu"])
    assert got["speculative_algorithm"] == "EAGLE" and _tree(got) == (3, 1, 4)
    got = resolve(["--model-path", str(folder), "--speculative-algorithm", "HASS", "--device", "cpu",
                   "--speculative-num-steps", "2"])
    assert _tree(got) == (2, 1, 3)


def test_engine_style_server_args_resolve_too(target_dir, drafts):
    """`sglang.Engine(**kwargs)` builds ServerArgs from keywords (after load_plugins) and resolves it."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import ServerArgs

    from hass_sglang.serving.plugin import resolved_speculative_args

    load_plugins()
    server_args = ServerArgs(model_path=target_dir, speculative_algorithm="Hass",
                             speculative_draft_model_path=drafts["eagle"], device="cpu")
    server_args.resolve_once()
    got = resolved_speculative_args(server_args)
    assert got["speculative_algorithm"] == "EAGLE" and got["requested_algorithm"] == "Hass"
    assert {k: got[k] for k in HASS_TREE} == HASS_TREE


def test_unknown_model_names_are_named_in_an_error_and_served_names_pass():
    from hass_sglang.serving.request_checks import unknown_model_error

    served = "/models/SmolLM2-135M-Instruct"
    for ok in (served, "default", "", None, f"{served}:my-lora", "default:my-lora"):
        assert unknown_model_error(ok, served) is None, ok
    msg = unknown_model_error("gpt-4o", served)
    assert "gpt-4o" in msg and served in msg and "does not exist" in msg


def test_only_hass_servers_refuse_unknown_model_names(monkeypatch):
    """The hook is installed in every SGLang process of the host; plain servers keep SGLang's behaviour."""
    from types import SimpleNamespace

    from hass_sglang.serving.request_checks import around_validate_request

    def serving(algorithm):
        manager = SimpleNamespace(server_args=SimpleNamespace(speculative_algorithm=algorithm),
                                  served_model_name="/models/m")
        return SimpleNamespace(tokenizer_manager=manager)

    def valid(self, request):  # SGLang's own check found nothing wrong
        return None

    unknown = SimpleNamespace(model="gpt-4o")
    assert "does not exist" in around_validate_request(valid, serving("hass"), unknown)
    assert around_validate_request(valid, serving(None), unknown) is None
    assert around_validate_request(valid, serving("EAGLE"), unknown) is None
    assert around_validate_request(lambda self, r: "SGLang's own error", serving("HASS"), unknown) == "SGLang's own error"
    monkeypatch.setenv("HASS_ACCEPT_ANY_MODEL_NAME", "1")
    assert around_validate_request(valid, serving("HASS"), unknown) is None


def test_request_check_hooks_target_sglang_methods_that_exist():
    """The hook targets resolve in the installed SGLang (a renamed method would silently skip the check)."""
    import pkgutil

    from hass_sglang.serving.request_checks import CHAT_TARGET, COMPLETION_TARGET

    for target in (CHAT_TARGET, COMPLETION_TARGET):
        owner, attr = target.rsplit(".", 1)
        assert callable(getattr(pkgutil.resolve_name(owner), attr)), target


# --- first contact with a GPU host (issue 14) ------------------------------------------------------


def _model_configs(args):
    """SGLang's own ModelConfigs of target and draft, from resolved ServerArgs (what the scheduler builds)."""
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args

    load_plugins()
    server_args = prepare_server_args(args)
    server_args.resolve_once()
    from sglang.srt.arg_groups.overrides import resolving_view

    draft = resolving_view(server_args).speculative_draft_model_path
    return (ModelConfig.from_server_args(server_args),
            ModelConfig.from_server_args(server_args, model_path=draft, is_draft_model=True))


@pytest.mark.parametrize("name", ["smollm2-135m-hass-eagle", "smollm2-135m-mtp", "exported"])
def test_target_and_draft_get_one_dtype_from_sglangs_own_resolution(target_dir, drafts, name, tmp_path):
    """With --dtype auto (SGLang's default) an fp32 config resolves to fp16 and a bf16 one to bf16
    (model_config._get_and_verify_dtype): the embedded target (fp32) and the shipped drafts (bf16)
    would run in different dtypes, and the draft's first forward would fail on a GPU."""
    from hass_sglang.drafts import SHIPPED_DIR
    from hass_sglang.serving.plugin import sglang_dtype

    folder = drafts["eagle"] if name == "exported" else str(SHIPPED_DIR / name)
    draft_config = json.loads(open(f"{folder}/config.json").read())
    target_config = json.loads(open(f"{target_dir}/config.json").read())
    if name != "exported":  # the mismatch the plan has to fix is real
        assert sglang_dtype(target_config, "auto") != sglang_dtype(draft_config, "auto")
    target, draft = _model_configs(argv(target_dir, folder))
    assert target.dtype == draft.dtype
    # an explicit --dtype applies to both models: nothing to align
    target, draft = _model_configs(argv(target_dir, folder, "HASS", "--dtype", "bfloat16"))
    assert target.dtype == draft.dtype == torch.bfloat16


def test_drafts_are_written_in_the_targets_dtype(tmp_path, target, target_dir):
    from hass_sglang.checkpoint import config_dtype
    from hass_sglang.serving.plugin import sglang_dtype

    bf16_target = target.config.to_dict() | {"dtype": "bfloat16"}
    cfg = type(target.config).from_dict(bf16_target)
    folder = save_draft(build_head("eagle", cfg, seed=0), tmp_path / "d", cfg)
    written = json.loads((folder / "config.json").read_text())
    assert config_dtype(written) == torch.bfloat16
    assert {t.dtype for t in load_file(str(folder / "model.safetensors")).values()} == {torch.bfloat16}
    assert sglang_dtype(written, "auto") == sglang_dtype(bf16_target, "auto") == "bfloat16"


def test_public_sglang_eagle_layout_with_embedding_and_head_is_accepted(tmp_path, target, target_dir):
    """lmsys/sglang-EAGLE-* style: `embed_tokens.weight`, `lm_head.weight` and rotary buffers beside
    the EAGLE layer. SGLang's loader replaces or skips them; we check their shapes and drop them."""
    cfg = target.config
    folder = save_draft(build_head("eagle", cfg, seed=0), tmp_path / "public", cfg)
    v, h = cfg.vocab_size, cfg.hidden_size
    _edit_weights(folder, add={"embed_tokens.weight": torch.zeros(v, h), "lm_head.weight": torch.zeros(v, h),
                               "layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(32)})
    plan = plan_launch(LaunchRequest(target_path=target_dir, draft_path=str(folder)))
    assert plan.speculative_draft_model_path == str(folder) and plan.converted_from is None
    _edit_weights(folder, add={"embed_tokens.weight": torch.zeros(v - 1, h)})  # another target's embedding
    with pytest.raises(CheckpointMismatchError, match=r"embed_tokens.weight \(49151, 576\) != \(49152, 576\)"):
        plan_launch(LaunchRequest(target_path=target_dir, draft_path=str(folder)))


def _hub_cache(root, repo_id, folder):
    """The local layout huggingface_hub reads offline: models--org--name/{refs/main, snapshots/<sha>/...}."""
    import shutil

    repo = root / ("models--" + repo_id.replace("/", "--"))
    sha = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    return repo / "snapshots" / sha


def test_hub_ids_resolve_through_the_hub_cache_offline(tmp_path, target_dir, drafts):
    """Stock SGLang downloads a hub draft; the plan resolves it the same way (huggingface_hub, here
    offline from a local cache) and checks it like any other draft."""
    snapshot = _hub_cache(tmp_path / "hub", "someone/hass-draft", drafts["eagle_hot"])
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "HASS_CACHE": str(tmp_path / "cache")}
    code = ("import json, sys; from hass_sglang.serving.plugin import resolve_launch_flags; "
            "print(json.dumps(resolve_launch_flags(sys.argv[1:])))")
    proc = subprocess.run([sys.executable, "-c", code, *argv(target_dir, "someone/hass-draft")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["speculative_draft_model_path"] == str(snapshot)
    assert got["speculative_token_map"] == str(snapshot / "hot_token_map.pt")
    proc = subprocess.run([sys.executable, "-c", code, *argv(target_dir, "someone/missing-draft")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0 and "could not fetch 'someone/missing-draft' from the hub" in proc.stderr


def test_reduced_vocabulary_under_tensor_parallelism_is_refused_with_the_reason(target, target_dir, drafts, tmp_path):
    """SGLang 0.5.23's EAGLE worker does `head.data[hot_token_id]` on the target's lm_head, which under TP
    is this rank's vocabulary-parallel shard: shown here with SGLang's own shard layout."""
    from sglang.srt.layers.vocab_parallel_embedding import pad_vocab_size, vocab_range_from_global_vocab_size

    from hass_sglang.checkpoint import convert_draft
    from hass_sglang.drafts import SHIPPED_DIR

    hot = torch.tensor(torch.load(SHIPPED_DIR / "smollm2-135m-hass-eagle" / "hot_token_map.pt", weights_only=True))
    vocab, tp = target.config.vocab_size, 2
    full_head = target.lm_head.weight.detach()
    for rank in range(tp):
        lo, hi = vocab_range_from_global_vocab_size(pad_vocab_size(vocab), rank, tp)
        shard = full_head[lo:hi]  # what get_embed_and_head() returns on this rank
        if int(hot.max()) >= shard.shape[0]:
            with pytest.raises(IndexError):
                shard[hot]  # ids past the shard: the CUDA kernel would assert
        inside = hot[hot < shard.shape[0]]
        wrong = inside[(inside < lo) | (inside >= hi)]  # rows of other tokens
        if rank > 0:
            assert wrong.numel() > 0 and not torch.equal(shard[wrong], full_head[wrong])
    with pytest.raises(HassError, match="cannot serve with --tp-size 2.*--full-vocabulary"):
        plan_launch(LaunchRequest(target_path=target_dir, draft_path=drafts["eagle_hot"], tp_size=2))
    plan_launch(LaunchRequest(target_path=target_dir, draft_path=drafts["eagle_hot"], tp_size=1))
    full = convert_draft(drafts["eagle_hot"], tmp_path / "full", target.config, full_vocabulary=True)
    plan = plan_launch(LaunchRequest(target_path=target_dir, draft_path=str(full), tp_size=2))
    assert plan.speculative_token_map is None
    got = resolve(argv(target_dir, drafts["eagle_hot"], "HASS", "--tp-size", "1"))
    assert got["speculative_token_map"]



def test_sampling_parameters_hass_would_change_are_refused_by_name():
    """On SGLang's own normalised SamplingParams: temperature/top-p/top-k/logit_bias/stop pass;
    min_p, the three penalties and a seed at T > 0 are refused, naming the parameter."""
    from sglang.srt.sampling.sampling_params import SamplingParams as SGLangParams

    from hass_sglang.serving.request_checks import sampling_error

    ok = [dict(), dict(temperature=0.7, top_p=0.9, top_k=20), dict(logit_bias={"13": -100.0}), dict(stop=["\\n"]),
          dict(temperature=0.0, sampling_seed=3), dict(frequency_penalty=0.0, repetition_penalty=1.0)]
    for kw in ok:
        assert sampling_error(SGLangParams(**kw)) is None, kw
    bad = {"min_p": dict(min_p=0.05), "frequency_penalty": dict(frequency_penalty=0.3),
           "presence_penalty": dict(presence_penalty=-0.3), "repetition_penalty": dict(repetition_penalty=1.1),
           "seed": dict(temperature=1.0, sampling_seed=3), "logit_bias": dict(logit_bias={"1": float("nan")})}
    for name, kw in bad.items():
        msg = sampling_error(SGLangParams(**kw))
        assert msg and name in msg, (name, msg)
    # top_k with top_p: exact where the project's CPU verification runs (joint, as plain SGLang);
    # SGLang's GPU verification renormalises over top-k before top-p: refused there, each alone not.
    both = SGLangParams(temperature=1.0, top_k=20, top_p=0.9)
    assert sampling_error(both) is None
    msg = sampling_error(both, joint_top_k_top_p=False)
    assert msg and "top_k together with top_p" in msg
    for kw in (dict(temperature=1.0, top_k=20), dict(temperature=1.0, top_p=0.9), dict(temperature=0.0, top_p=0.9),
               dict(temperature=1.0, top_k=-1, top_p=0.9)):
        assert sampling_error(SGLangParams(**kw), joint_top_k_top_p=False) is None, kw


def test_prompt_token_ids_outside_the_vocabulary_are_named():
    """SGLang 0.5.23 lets them reach the embedding (the scheduler dies); the hook refuses them."""
    from array import array

    from hass_sglang.serving.request_checks import token_ids_error

    assert token_ids_error(array("q", [0, 5, 99]), 100) is None
    assert token_ids_error(None, 100) is None and token_ids_error(array("q"), 100) is None
    assert token_ids_error([1, 100, 3], 100) == "prompt token id 100 at position 1 is outside the vocabulary [0, 100)"
    assert token_ids_error(array("q", [4, -7, 200]), 100).startswith("prompt token id -7 at position 1")


def test_an_empty_prompt_is_refused_but_embeddings_and_one_token_pass():
    """SGLang 0.5.23 refuses a lone empty prompt but not one inside a batch (a 0-token forward kills
    the scheduler: tests/test_serving_fuzz.py found it); the hook refuses every empty one."""
    from array import array

    from hass_sglang.serving.request_checks import empty_prompt_error

    assert "Prompt cannot be empty" in empty_prompt_error(array("q"))
    assert empty_prompt_error([]) is not None
    assert empty_prompt_error(array("q", [7])) is None and empty_prompt_error(None) is None
    assert empty_prompt_error(array("q"), input_embeds=[[0.1, 0.2]]) is None  # embeddings are the prompt


def test_client_error_messages_drop_server_paths_and_tracebacks():
    """FastAPI's validation text carries the endpoint's file and line; a traceback its frames."""
    from sglang.srt.entrypoints.openai.protocol import ErrorResponse

    from hass_sglang.serving.request_checks import public_error_response_class, public_message

    validation = ("1 validation error:\n  {'type': 'missing', 'loc': ('body', 'messages'), 'msg': 'Field required'}\n\n"
                  '  File "/srv/venv/lib/python3.11/site-packages/sglang/srt/entrypoints/http_server.py", line 1402, '
                  "in openai_v1_chat_completions\n    POST /v1/chat/completions")
    got = public_message(validation)
    assert "Field required" in got and "messages" in got
    assert "site-packages" not in got and 'File "' not in got and "line 1402" not in got
    trace = 'Traceback (most recent call last):\n  File "/a/b.py", line 3, in f\n    x()\nValueError: bad at /usr/lib/m.py'
    assert public_message(trace) == "ValueError: bad at <server file>"
    assert public_message("top_p must be in (0, 1], got 2.0.") == "top_p must be in (0, 1], got 2.0."
    cls = public_error_response_class()
    body = cls(message=validation, type="Bad Request", code=400)
    assert isinstance(body, ErrorResponse) and body.model_dump()["message"] == got


def test_a_rid_that_does_not_fit_the_request_is_refused():
    """SGLang 0.5.23 answers 500 to a list of rids for one prompt (found by the fuzzing test)."""
    from hass_sglang.serving.request_checks import rid_error

    assert rid_error(None, "hi") is None and rid_error("r1", [1, 2, 3]) is None
    assert rid_error(["a", "b"], ["x", "y"]) is None and rid_error(["a"], [[1, 2]]) is None
    assert "single prompt" in rid_error(["a"], [-1776])
    assert "single prompt" in rid_error(["a"], "hi") and "single prompt" in rid_error(["a"], None, chat=True)
    assert "2 prompts" in rid_error(["a"], ["x", "y"])
    assert "list of strings" in rid_error([[None]], ["x"]) and "list of strings" in rid_error(5, "x")
