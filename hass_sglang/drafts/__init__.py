"""The trained SmolLM2-135M-Instruct drafts shipped in this folder, and the one way to name a draft.

Every command that takes a draft (`hass generate --draft`, `hass serve --draft`, `hass bench
--launch NAME=DRAFT`, the scripts in benchmarks/) reads it through `resolve_draft`:

    auto          the shipped default (`DEFAULT_DRAFT`), or a random head when none is shipped
    none          no draft: plain decoding (also `vanilla` or an empty string)
    random        a randomly initialised head (tau ~1: the cost of speculation without its benefit)
    target        the target's own MTP layer (DeepSeek checkpoints carry one: `model.layers.<N>.*`)
    <name>        a shipped draft: one of the folders beside this file (docs/drafts.md)
    <folder>      any draft folder (SGLang EAGLE / NextN layout or a HASS reference release)
    <owner/name>  a hub repository holding one, fetched with huggingface_hub (its cache, so
                  HF_HUB_OFFLINE=1 works once it is there), as stock SGLang fetches drafts
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hass_sglang.errors import ModelNotFoundError
from hass_sglang.io import hub_snapshot, is_hub_id

SHIPPED_DIR = Path(__file__).resolve().parent
DEFAULT_DRAFT = "smollm2-135m-hass-eagle"
NO_DRAFT = ("none", "vanilla", "")
TARGET_DRAFT = "target"
DRAFT_FILES = ["*.json", "*.safetensors", "*.bin", "*.pt"]  # config, weights, hot_token_map.pt


def shipped_drafts() -> list[str]:
    """Names of the drafts shipped in the package."""
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "config.json").is_file())


def default_draft() -> Path | None:
    path = SHIPPED_DIR / DEFAULT_DRAFT
    return path if (path / "config.json").is_file() else None


@dataclass(frozen=True)
class DraftChoice:
    kind: Literal["none", "random", "target", "folder"]
    path: Path | None = None  # the folder, for kind "folder"

    def __str__(self) -> str:
        return str(self.path) if self.kind == "folder" else self.kind

    def folder(self, target_config, head_type: str = "eagle") -> Path | None:
        """A folder SGLang can load (a random head is written once to the draft cache); None for none."""
        if self.kind == TARGET_DRAFT:
            raise ModelNotFoundError("the target's own MTP layer has no draft folder: SGLang loads it from the "
                                     "target (--speculative-algorithm HASS without a draft path)")
        if self.kind != "random":
            return self.path
        from hass_sglang.checkpoint import save_draft
        from hass_sglang.heads import build_head
        from hass_sglang.io import drafts_cache_dir

        out = drafts_cache_dir() / f"random-{head_type}-h{target_config.hidden_size}-v{target_config.vocab_size}"
        if not (out / "config.json").is_file():
            save_draft(build_head(head_type, target_config, seed=0), out, target_config)
        return out

    def load(self, target, head_type: str = "eagle"):
        """The draft head for the reference decoder (None for none), checked against `target`."""
        from hass_sglang.checkpoint import load_draft
        from hass_sglang.heads import build_head

        if self.kind == "none":
            return None
        if self.kind == TARGET_DRAFT:
            from hass_sglang.checkpoint import load_target_mtp_layer

            print(f"[hass] draft: the MTP layer of {target.path}", file=sys.stderr)
            return load_target_mtp_layer(target.path, target.config)
        if self.kind == "random":
            print(f"[hass] draft: randomly initialised {head_type} head (expect tau ~1.0)", file=sys.stderr)
            return build_head(head_type, target.config, seed=0)
        print(f"[hass] draft: {self.path}", file=sys.stderr)
        return load_draft(self.path, target.config)


def resolve_draft(spec: str | Path | None) -> DraftChoice:
    """auto | none | random | target | <shipped name> | <folder> | <hub id> -> DraftChoice (None: auto)."""
    text = "auto" if spec is None else str(spec).strip()
    if text.lower() in NO_DRAFT:
        return DraftChoice("none")
    if text.lower() == "random":
        return DraftChoice("random")
    if text.lower() == TARGET_DRAFT:
        return DraftChoice(TARGET_DRAFT)
    if text.lower() == "auto":
        path = default_draft()
        if path is None:
            print("[hass] no trained draft is shipped: using a randomly initialised head (tau ~1.0); "
                  "pass --draft <folder> for a trained one", file=sys.stderr)
            return DraftChoice("random")
        return DraftChoice("folder", path)
    path = Path(text).expanduser()
    if not path.is_dir() and (SHIPPED_DIR / text / "config.json").is_file():
        path = SHIPPED_DIR / text
    if not path.is_dir() and not path.exists() and is_hub_id(text):
        path = hub_snapshot(text, DRAFT_FILES, ModelNotFoundError)
    if not path.is_dir():
        raise ModelNotFoundError(f"draft folder {text!r} not found (shipped drafts: {shipped_drafts()}; "
                                 "or a hub id, auto, none, random)")
    return DraftChoice("folder", path.resolve())
