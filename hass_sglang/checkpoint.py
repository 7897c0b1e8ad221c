"""Draft checkpoints: the folders SGLang 0.5.23 loads, and the HASS reference release format.

Formats (config.json + model.safetensors [+ hot_token_map.pt]):

- EAGLE/HASS head, SGLang naming: architectures ["LlamaForCausalLMEagle"], one layer, untied
  (SGLang crashes on tied EAGLE drafts), weights `fc.weight`, `fc.bias`, `layers.0.*` without
  `layers.0.input_layernorm` (SGLang prefixes them with `model.`). Embedding and lm_head are the
  target's and are not stored by us; public SGLang-format releases (lmsys/sglang-EAGLE-*) that
  carry `embed_tokens.weight` / `lm_head.weight` / rotary caches load too: SGLang's loader skips
  or replaces them (models/llama_eagle.py, llama.py load_weights), we shape-check and drop them.
- MTP head, NextN naming: architectures ["LlamaForCausalLMNextN"], num_hidden_layers = the
  target's L, weights under `model.layers.{L}.`: enorm, hnorm, eh_proj, the decoder layer and
  `shared_head.norm` (DeepSeek's layout; embed_tokens / shared_head.head are shared from the target).
- HASS reference release (HArmonizedSS/HASS-*, EAGLE-2 code base): config.json saying
  LlamaForCausalLM with one layer, pytorch_model.bin or *.safetensors with the EAGLE names above,
  optionally `embed_tokens.weight` (dropped on import: SGLang uses the target's).

A reduced draft vocabulary is stored as `hot_token_map.pt` (a list of target ids, the file format
of SGLang's --speculative-token-map) and its size as top-level `hot_vocab_size` (SGLang's field).

Drafts are written in the target's dtype (its config's `dtype`) unless told otherwise: SGLang
resolves `--dtype auto` per config (an fp32 config becomes fp16 on GPUs, configs/model_config.py
_get_and_verify_dtype), so a draft saved in another dtype than its target would run in another
dtype, and its first forward would fail on the target's hidden states.

Loading validates everything against the target before any weight is used: hidden size, vocab,
layer shapes, missing / unexpected / mis-shaped keys, tied embeddings. Nothing loads half-way.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hass_sglang.errors import CheckpointMismatchError, ModelNotFoundError
from hass_sglang.heads import DraftHead, EagleHead, MTPHead, draft_config_from_target, is_deepseek
from hass_sglang.io import atomic_dir

FORMAT_VERSION = 1
EAGLE_ARCH = "LlamaForCausalLMEagle"
MTP_ARCH = "LlamaForCausalLMNextN"  # ours, registered with SGLang (serving/models/llama_nextn.py)
DEEPSEEK_MTP_ARCH = "DeepseekV3ForCausalLMNextN"  # SGLang's own (models/deepseek_nextn.py)
MTP_ARCHS = {"llama": MTP_ARCH, "deepseek_v3": DEEPSEEK_MTP_ARCH}  # by the target's model_type
REFERENCE_ARCH = "LlamaForCausalLM"
HOT_TOKEN_FILE = "hot_token_map.pt"
WEIGHTS_FILE = "model.safetensors"
# Config fields that must equal the target's for the head's layer to fit.
_SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size")
# Tensors SGLang takes from the target instead (EAGLE layouts); accepted (shape-checked) and dropped.
_SHARED_WITH_TARGET = ("embed_tokens.weight", "lm_head.weight")
# Buffers some releases carry and SGLang's Llama loader skips (models/llama.py load_weights).
_SKIPPED_BY_SGLANG = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


def config_dtype(config) -> torch.dtype | None:
    """The dtype a config (transformers config or config.json dict) declares, if any."""
    get = config.get if isinstance(config, dict) else (lambda k: getattr(config, k, None))
    value = get("dtype") or get("torch_dtype")
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None


def mtp_arch(target_config) -> str:
    """The architecture name of an MTP draft for this target."""
    return MTP_ARCHS.get(getattr(target_config, "model_type", "llama"), MTP_ARCH)


def _mtp_prefix(num_target_layers: int) -> str:
    return f"model.layers.{num_target_layers}."


_FUSED_EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
_EXPERT_KEY = re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def _split_experts(layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers keeps a MoE layer's experts fused ([E, 2I, H] gate|up, [E, H, I] down); DeepSeek's
    checkpoints (R1's `model.layers.61.*` included) name them per expert, which SGLang reads."""
    if _FUSED_EXPERTS[0] not in layer:
        return layer
    out = {k: v for k, v in layer.items() if k not in _FUSED_EXPERTS}
    gate_up, down = layer[_FUSED_EXPERTS[0]], layer[_FUSED_EXPERTS[1]]
    inter = gate_up.shape[1] // 2
    for e in range(gate_up.shape[0]):
        out[f"mlp.experts.{e}.gate_proj.weight"] = gate_up[e, :inter].contiguous()
        out[f"mlp.experts.{e}.up_proj.weight"] = gate_up[e, inter:].contiguous()
        out[f"mlp.experts.{e}.down_proj.weight"] = down[e].contiguous()
    return out


def _fuse_experts(layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `_split_experts` (fused names pass through, as SGLang accepts both)."""
    per_expert = {m.groups(): v for k, v in layer.items() if (m := _EXPERT_KEY.match(k))}
    if not per_expert:
        return layer
    out = {k: v for k, v in layer.items() if not _EXPERT_KEY.match(k)}
    n = 1 + max(int(e) for e, _ in per_expert)
    try:
        out[_FUSED_EXPERTS[0]] = torch.stack([torch.cat((per_expert[str(e), "gate_proj"], per_expert[str(e), "up_proj"]))
                                              for e in range(n)])
        out[_FUSED_EXPERTS[1]] = torch.stack([per_expert[str(e), "down_proj"] for e in range(n)])
    except KeyError as exc:
        e, name = exc.args[0]
        raise CheckpointMismatchError(f"MoE layer: missing weights ['mlp.experts.{e}.{name}.weight']") from exc
    return out


def head_state_to_files(head: DraftHead, num_target_layers: int) -> dict[str, torch.Tensor]:
    """The head's weights under the names SGLang expects for its type."""
    sd = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    if head.head_type == "eagle":
        return sd
    prefix = _mtp_prefix(num_target_layers)
    layer = _split_experts({k[len("layers.0."):]: v for k, v in sd.items() if k.startswith("layers.0.")})
    out = {prefix + k: v for k, v in layer.items()}
    for k, v in sd.items():
        if k == "shared_head_norm.weight":
            out[prefix + "shared_head.norm.weight"] = v
        elif not k.startswith("layers.0."):
            out[prefix + k] = v
    return out


def files_to_head_state(weights: dict[str, torch.Tensor], head_type: str, num_target_layers: int) -> dict[str, torch.Tensor]:
    if head_type == "eagle":
        return dict(weights)
    prefix = _mtp_prefix(num_target_layers)
    out, layer = {}, {}
    for k, v in weights.items():
        if not k.startswith(prefix):
            out[k] = v  # reported as unexpected by the key check
            continue
        rest = k[len(prefix) :]
        if rest in ("enorm.weight", "hnorm.weight", "eh_proj.weight"):
            out[rest] = v
        elif rest == "shared_head.norm.weight":
            out["shared_head_norm.weight"] = v
        else:
            layer[rest] = v
    out.update({"layers.0." + k: v for k, v in _fuse_experts(layer).items()})
    return out


def _draft_config_dict(head: DraftHead, target_config, metadata: dict | None, dtype: torch.dtype) -> dict:
    # A DeepSeek MTP draft carries the target's whole config: SGLang builds the NextN layer (MLA,
    # MoE, yarn RoPE) from it, with num_hidden_layers naming the MTP layer's index.
    cfg = target_config.to_dict() if head.head_type == "mtp" and is_deepseek(target_config) else head.config.to_dict()
    cfg["tie_word_embeddings"] = False
    cfg["dtype"] = cfg["torch_dtype"] = str(dtype).removeprefix("torch.")  # both spellings: any reader
    if head.head_type == "eagle":
        cfg["architectures"] = [EAGLE_ARCH]
        cfg["num_hidden_layers"] = 1
    else:
        cfg["architectures"] = [mtp_arch(target_config)]
        cfg["num_hidden_layers"] = int(target_config.num_hidden_layers)
        cfg["num_nextn_predict_layers"] = 1
    if head.hot_token_ids is not None:
        # SGLang's EAGLE draft sizes its lm_head (and CUDA-graph buffers) from this field.
        cfg["hot_vocab_size"] = int(head.hot_token_ids.numel())
    cfg["hass"] = {
        "format_version": FORMAT_VERSION,
        "head_type": head.head_type,
        "hot_vocab_size": None if head.hot_token_ids is None else int(head.hot_token_ids.numel()),
        **(metadata or {}),
    }
    for k in ("_attn_implementation", "_attn_implementation_autoset", "transformers_version"):
        cfg.pop(k, None)
    return cfg


def save_draft(head: DraftHead, out_dir: str | Path, target_config, metadata: dict | None = None,
               dtype: torch.dtype | None = None) -> Path:
    """Write a draft folder SGLang can load, in `dtype` (default: the target's); atomic."""
    out_dir = Path(out_dir)
    dtype = dtype or config_dtype(target_config) or torch.float32
    weights = {k: v.to(dtype) if v.is_floating_point() else v
               for k, v in head_state_to_files(head, int(target_config.num_hidden_layers)).items()}
    config = _draft_config_dict(head, target_config, metadata, dtype)
    with atomic_dir(out_dir) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if head.hot_token_ids is not None:
            torch.save(head.hot_token_ids.cpu().tolist(), tmp / HOT_TOKEN_FILE)
    return out_dir


def _read_weights(folder: Path, meta: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of the folder; with `meta`, tensors on the meta device built from the
    safetensors headers alone (shapes and dtypes, no data read): enough to check a draft."""
    from safetensors import safe_open

    st = sorted(folder.glob("*.safetensors"))
    if st:
        weights: dict[str, torch.Tensor] = {}
        for f in st:
            if not meta:
                weights.update(load_file(str(f)))
                continue
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    sl = fh.get_slice(k)
                    weights[k] = torch.empty(sl.get_shape(), dtype=_SAFETENSORS_DTYPES.get(sl.get_dtype(), torch.float32),
                                             device="meta")
        return weights
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:  # reference releases: small, and a pickle has no header to read instead
        weights = {}
        for f in bins:
            weights.update(torch.load(f, map_location="meta" if meta else "cpu", weights_only=True))
        return weights
    raise ModelNotFoundError(f"no weights in {folder}: expected *.safetensors or pytorch_model.bin")


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "F8_E4M3": torch.float8_e4m3fn}


def detect_format(config: dict) -> str:
    """'eagle' | 'mtp' | 'reference' from a draft config.json."""
    arch = (config.get("architectures") or [None])[0]
    if arch == EAGLE_ARCH:
        return "eagle"
    if arch in MTP_ARCHS.values():
        return "mtp"
    if arch == REFERENCE_ARCH and config.get("num_hidden_layers") == 1:
        return "reference"
    raise CheckpointMismatchError(
        f"unrecognised draft architecture {arch!r} (num_hidden_layers={config.get('num_hidden_layers')}); "
        f"expected {EAGLE_ARCH}, one of {sorted(MTP_ARCHS.values())}, or a one-layer {REFERENCE_ARCH} "
        "(HASS reference release)"
    )


def _check_config(config: dict, target_config, folder: Path, fmt: str) -> None:
    problems = []
    for f in _SHAPE_FIELDS:
        want, got = getattr(target_config, f, None), config.get(f)
        if got is not None and want is not None and int(got) != int(want):
            problems.append(f"{f}: draft {got} != target {want}")
    if fmt != "reference" and config.get("tie_word_embeddings", False):
        problems.append("tie_word_embeddings is true (SGLang's EAGLE loader requires untied drafts)")
    arch = (config.get("architectures") or [None])[0]
    if fmt == "mtp" and arch != mtp_arch(target_config):
        problems.append(f"architecture {arch} does not fit a {getattr(target_config, 'model_type', '?')} target "
                        f"(expected {mtp_arch(target_config)})")
    if fmt == "eagle" and is_deepseek(target_config):
        problems.append("an EAGLE head does not fit a DeepSeek target (its draft is an MTP layer)")
    if fmt == "mtp" and int(config.get("num_hidden_layers", -1)) != int(target_config.num_hidden_layers):
        problems.append(
            f"num_hidden_layers {config.get('num_hidden_layers')} != target's {target_config.num_hidden_layers} "
            "(the NextN layer index)"
        )
    if problems:
        raise CheckpointMismatchError(f"draft {folder} does not fit the target: " + "; ".join(problems))


def _check_weights(head: DraftHead, state: dict[str, torch.Tensor], folder: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in set(state) & set(expected) if tuple(state[k].shape) != expected[k]
    )
    problems = []
    if missing:
        problems.append(f"missing weights {missing}")
    if unexpected:
        problems.append(f"unexpected weights {unexpected}")
    if misshaped:
        problems.append(f"wrong shapes {misshaped}")
    if problems:
        raise CheckpointMismatchError(f"draft {folder} does not fit the target: " + "; ".join(problems))


@dataclass(frozen=True)
class DraftInfo:
    """What a draft folder is, as checked against a target (no weights read)."""

    folder: Path
    format: str  # eagle | mtp | reference
    head_type: str  # eagle | mtp
    config: dict
    hot_token_ids: torch.Tensor | None
    num_parameters: int


def _prepare(folder: Path, target_config, meta: bool):
    """(head, its state from the folder, info); the full check: config, keys, shapes."""
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"draft folder {folder} has no config.json")
    config = json.loads((folder / "config.json").read_text())
    fmt = detect_format(config)
    head_type = "mtp" if fmt == "mtp" else "eagle"
    _check_config(config, target_config, folder, fmt)
    weights = _read_weights(folder, meta=meta)
    prefix = _mtp_prefix(int(target_config.num_hidden_layers)) if fmt == "mtp" else ""
    _drop_shared_tensors(weights, config, target_config, folder, prefix)
    hot = None
    if (folder / HOT_TOKEN_FILE).is_file():
        hot = torch.tensor(torch.load(folder / HOT_TOKEN_FILE, weights_only=True), dtype=torch.long)
    cls = MTPHead if head_type == "mtp" else EagleHead
    try:
        if meta:
            with torch.device("meta"):
                head = cls(draft_config_from_target(target_config), hot)
        else:
            head = cls(draft_config_from_target(target_config), hot)
    except ValueError as exc:
        raise CheckpointMismatchError(f"draft {folder}: {exc}") from exc
    state = files_to_head_state(weights, head_type, int(target_config.num_hidden_layers))
    _check_weights(head, state, folder)
    info = DraftInfo(folder, fmt, head_type, config, hot, sum(v.numel() for v in state.values()))
    return head, state, info


def inspect_draft(folder: str | Path, target_config) -> DraftInfo:
    """Check a draft folder against a target from its config and safetensors headers alone (a
    DeepSeek-R1 MTP layer is ~14 GB: the launch check never loads it); mismatches named."""
    return _prepare(Path(folder), target_config, meta=True)[2]


def load_draft(folder: str | Path, target_config) -> DraftHead:
    """Load and validate a draft folder (SGLang EAGLE / NextN format or HASS reference release)."""
    head, state, _ = _prepare(Path(folder), target_config, meta=False)
    head.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return head


def _drop_shared_tensors(weights: dict, config: dict, target_config, folder: Path, prefix: str = "") -> None:
    """Tensors a draft layout may carry that SGLang replaces with the target's or skips: check the
    shape of the embedding / lm_head copies (a wrong one means another target), then drop them.
    EAGLE layouts: `embed_tokens.weight`, `lm_head.weight`; NextN layouts (DeepSeek's MTP layer,
    e.g. R1's `model.layers.61.*`): `<prefix>embed_tokens.weight`, `<prefix>shared_head.head.weight`."""
    names = _SHARED_WITH_TARGET if not prefix else (prefix + "embed_tokens.weight", prefix + "shared_head.head.weight")
    for k in names:
        if k in weights:
            rows = int(target_config.vocab_size)
            if not k.endswith("embed_tokens.weight") and config.get("hot_vocab_size"):
                rows = int(config["hot_vocab_size"])
            want = (rows, int(target_config.hidden_size))
            if tuple(weights[k].shape) != want:
                raise CheckpointMismatchError(
                    f"draft {folder} does not fit the target: {k} {tuple(weights[k].shape)} != {want}"
                )
            del weights[k]
    for k in [k for k in weights if k.endswith(_SKIPPED_BY_SGLANG)]:
        del weights[k]


def load_target_mtp_layer(target_path: str | Path, target_config) -> MTPHead:
    """The target's own MTP layer (`model.layers.<N>.*` of a DeepSeek checkpoint, e.g. R1's layer 61)
    as a head: `hass train --init-from target` continues it with HASS (the seed-002 recipe). Only
    those tensors are read (safetensors headers first), never the rest of the model."""
    from safetensors import safe_open

    folder = Path(target_path)
    prefix = _mtp_prefix(int(target_config.num_hidden_layers))
    weights: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                if k.startswith(prefix):
                    weights[k] = fh.get_tensor(k)
    if not weights:
        raise CheckpointMismatchError(
            f"target {folder} has no MTP layer ({prefix}* in its safetensors; num_nextn_predict_layers="
            f"{getattr(target_config, 'num_nextn_predict_layers', None)}): --init-from target needs one")
    _drop_shared_tensors(weights, {}, target_config, folder, prefix)
    head = MTPHead(draft_config_from_target(target_config))
    state = files_to_head_state(weights, "mtp", int(target_config.num_hidden_layers))
    _check_weights(head, state, folder)
    head.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return head


def import_reference(src: str | Path, out_dir: str | Path, target_config) -> Path:
    """Convert a HASS reference release folder into the SGLang EAGLE format."""
    src = Path(src)
    config = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
    if detect_format(config) != "reference":
        raise CheckpointMismatchError(f"{src} is not a HASS reference release (one-layer {REFERENCE_ARCH})")
    head = load_draft(src, target_config)
    return save_draft(head, out_dir, target_config, metadata={"imported_from": str(src)})


def convert_draft(src: str | Path, out_dir: str | Path, target_config, full_vocabulary: bool = False) -> Path:
    """`hass convert`: a HASS reference release into SGLang's EAGLE format (in the target's dtype),
    or (full_vocabulary) an SGLang draft into a copy without its reduced vocabulary, in its own
    dtype (what SGLang 0.5.23 can serve with --tp-size > 1)."""
    src = Path(src)
    if not (src / "config.json").is_file():
        raise ModelNotFoundError(f"draft folder {src} has no config.json")
    config = json.loads((src / "config.json").read_text())
    if detect_format(config) == "reference":
        return import_reference(src, out_dir, target_config)  # references have the full vocabulary
    if not full_vocabulary:
        raise CheckpointMismatchError(f"{src} is already an SGLang draft; nothing to convert "
                                      "(--full-vocabulary writes a copy without its reduced vocabulary)")
    head = load_draft(src, target_config)
    head.hot_token_ids = None
    own = ("format_version", "head_type", "hot_vocab_size")  # written anew by save_draft
    metadata = {k: v for k, v in read_draft_metadata(src).items() if k not in own}
    return save_draft(head, out_dir, target_config, metadata={**metadata, "converted_from": str(src)},
                      dtype=config_dtype(config))


def read_draft_metadata(folder: str | Path) -> dict:
    config = json.loads((Path(folder) / "config.json").read_text())
    return dict(config.get("hass") or {})


def draft_fingerprint(folder: str | Path) -> str:
    """Config text + names and sizes of the weight files: a retrained draft gets a new one (keys of
    calibrations and evaluation journals)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.name == "config.json":
            h.update(p.read_bytes())
        elif p.suffix in (".safetensors", ".bin", ".pt"):
            h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]
