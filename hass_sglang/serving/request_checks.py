"""Request checks SGLang's OpenAI server does not make: an unknown `model` name, on HASS servers.

SGLang 0.5.23 answers a chat or completion request whatever its `model` field says, so a client
pointed at the wrong deployment (e.g. behind a router) gets a confident answer from the wrong
model. OpenAI and vLLM answer 404 `model_not_found`; we answer SGLang's 400 error (its
`_validate_request` contract) naming the served names. Accepted: the served model name, "default"
(the name SGLang's own docs and clients use), `<served>:<adapter>` (LoRA syntax) and empty.
Installed by the plugin as AROUND hooks on `_validate_request` (hook registry) in every SGLang
process of a host with this package, but only servers launched with `--speculative-algorithm HASS`
(the raw flag SGLang keeps in the tokenizer manager's ServerArgs) check: a plugin must not change
plain SGLang servers. HASS_ACCEPT_ANY_MODEL_NAME=1 keeps SGLang's permissive behaviour there too.
"""

from __future__ import annotations

import os

from hass_sglang.serving.plan import is_hass

CHAT_TARGET = "sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._validate_request"
COMPLETION_TARGET = "sglang.srt.entrypoints.openai.serving_completions.OpenAIServingCompletion._validate_request"
ALWAYS_ACCEPTED = ("default",)


def unknown_model_error(requested: str | None, served: str) -> str | None:
    """None when `requested` names the served model, else the error message (pure)."""
    if not requested or requested == served or requested in ALWAYS_ACCEPTED:
        return None
    if requested.startswith(f"{served}:") or requested.split(":", 1)[0] in ALWAYS_ACCEPTED:
        return None  # LoRA adapter syntax; SGLang validates the adapter itself
    return (f"The model '{requested}' does not exist on this server (model_not_found); "
            f"served: '{served}' (or 'default')")


def checks_model_names(server_args) -> bool:
    """Whether this server refuses unknown model names: HASS servers, unless opted out."""
    requested = getattr(server_args, "speculative_algorithm", None)  # the raw flag, never rewritten
    return is_hass(requested) and os.environ.get("HASS_ACCEPT_ANY_MODEL_NAME") != "1"


def around_validate_request(original, self, request, *args, **kwargs):
    message = original(self, request, *args, **kwargs)
    if message or not checks_model_names(self.tokenizer_manager.server_args):
        return message
    return unknown_model_error(getattr(request, "model", None), self.tokenizer_manager.served_model_name)


def register_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for target in (CHAT_TARGET, COMPLETION_TARGET):
        HookRegistry.register(target, around_validate_request, HookType.AROUND)
