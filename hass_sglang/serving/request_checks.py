"""Request checks SGLang's OpenAI server does not make, on HASS servers: an unknown `model` name,
and sampling parameters speculative decoding would not honour exactly.

SGLang 0.5.23 answers a chat or completion request whatever its `model` field says, so a client
pointed at the wrong deployment (e.g. behind a router) gets a confident answer from the wrong
model. OpenAI and vLLM answer 404 `model_not_found`; we answer SGLang's 400 error (its
`_validate_request` contract) naming the served names. Accepted: the served model name, "default"
(the name SGLang's own docs and clients use), `<served>:<adapter>` (LoRA syntax) and empty.
Installed by the plugin as AROUND hooks on `_validate_request` (hook registry) in every SGLang
process of a host with this package, but only servers launched with `--speculative-algorithm HASS`
(the raw flag SGLang keeps in the tokenizer manager's ServerArgs) check: a plugin must not change
plain SGLang servers. HASS_ACCEPT_ANY_MODEL_NAME=1 keeps SGLang's permissive behaviour there too.

Sampling parameters (every endpoint: OpenAI chat/completions and native /generate, through an
AROUND hook on the tokenizer manager's `_create_tokenized_object`, after SGLang's own
`SamplingParams.verify`): HASS is lossless, so a request whose sampling SGLang's speculative
verification would change gets a 400 naming the parameter instead of a silently different answer.
SGLang 0.5.23's `eagle_utils.eagle_sample` (GPU and, through our hook, CPU) applies temperature,
top-k, top-p, logit_bias and grammar masks exactly; it applies the three penalties once per verify
step to every draft position alike (tokens accepted earlier in the same tree are not penalised: not
the distribution of plain decoding), never applies min_p, and draws its coins from the global
generator, not the request's seed. HASS_ALLOW_APPROXIMATE_SAMPLING=1 accepts them (SGLang's EAGLE
behaviour). docs/serving.md has the table.

Prompt token ids (every server, same hook): an id outside [0, vocab_size) reaches SGLang 0.5.23's
embedding lookup and kills the scheduler with every request in it (found by
tests/test_serving_fuzz.py); it gets a 400 naming the id and its position instead. An empty prompt
inside a batch (`"prompt": ["", "Y"]`; SGLang refuses only a lone empty one) reaches the scheduler
as a 0-token extend and kills it the same way (on HASS servers always, on plain ones with `n` > 1;
found by the same fuzzer): it gets SGLang's own "Prompt cannot be empty" 400.

Error bodies: FastAPI's RequestValidationError text (what SGLang 0.5.23 puts in its 400 bodies for
the OpenAI routes) carries the endpoint's source location, `File "<server path>", line N, in ...`.
SGLang's `ErrorResponse` is replaced (hook registry, REPLACE with a subclass: isinstance holds) in
the two modules that build client-facing errors by one that keeps the problem and drops server
paths and traceback lines (`public_message`); the server log keeps the detail. This applies to
every server on a host with the plugin: it changes no behaviour, only what the message reveals.
"""

from __future__ import annotations

import math
import os
import re

from hass_sglang.serving.plan import is_hass

CHAT_TARGET = "sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._validate_request"
COMPLETION_TARGET = "sglang.srt.entrypoints.openai.serving_completions.OpenAIServingCompletion._validate_request"
TOKENIZE_TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._create_tokenized_object"
ALWAYS_ACCEPTED = ("default",)


# a traceback header, or a `File "...", line N` frame with the source line under it
_TRACE_LINE = re.compile(r'^\s*(Traceback \(most recent call last\):|File "[^"]*", line \d+.*(\n\s{4,}\S.*)?)$',
                         re.MULTILINE)
_FILE_REF = re.compile(r'File "[^"]*", line \d+(, in \S+)?')
_PY_PATH = re.compile(r'(?:[A-Za-z]:)?(?:[/\\][\w.@+-]+)+\.py\b')


def public_message(message: str) -> str:
    """What a client may see of an error message: no traceback lines, no server file paths (pure)."""
    if not isinstance(message, str):
        return message
    cleaned = _PY_PATH.sub("<server file>", _FILE_REF.sub("", _TRACE_LINE.sub("", message)))
    return re.sub(r"\n\s*\n+", "\n", cleaned).strip() or "invalid request"


ERROR_RESPONSE_TARGETS = ("sglang.srt.entrypoints.http_server.ErrorResponse",
                          "sglang.srt.entrypoints.openai.serving_base.ErrorResponse")


def public_error_response_class():
    """SGLang's ErrorResponse, with `public_message` applied to the message it is built with."""
    from pydantic import field_validator
    from sglang.srt.entrypoints.openai.protocol import ErrorResponse

    class PublicErrorResponse(ErrorResponse):
        @field_validator("message", mode="before")
        @classmethod
        def _public(cls, v):
            return public_message(v)

    PublicErrorResponse.__name__ = PublicErrorResponse.__qualname__ = "ErrorResponse"
    return PublicErrorResponse


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


# SGLang's normalised "no top-k" (top_k -1 or 0 in a request becomes 1 << 30).
_TOP_K_OFF = 1 << 30


def sampling_error(sp, joint_top_k_top_p: bool = True) -> str | None:
    """None when HASS applies `sp` (SGLang's normalised SamplingParams) exactly, else why not (pure).
    `joint_top_k_top_p`: verification cuts top_p on the full distribution as plain SGLang does (the
    project's CPU hook); SGLang's own GPU verification renormalises over the top-k tokens first."""
    greedy = sp.top_k == 1  # SGLang's normalised greedy (temperature 0 -> top_k 1)
    if sp.min_p and sp.min_p > 0:
        return ("min_p is not supported with HASS speculative decoding: SGLang's speculative "
                "verification does not apply it (remove min_p, or use a server without speculation)")
    for name, neutral in (("frequency_penalty", 0.0), ("presence_penalty", 0.0), ("repetition_penalty", 1.0)):
        if getattr(sp, name) != neutral:
            return (f"{name} is not supported with HASS speculative decoding: SGLang applies penalties to "
                    "every draft token of a step alike, which changes the output distribution")
    if sp.sampling_seed is not None and not greedy:
        return ("seed is not supported with HASS speculative decoding at temperature > 0: speculative "
                "verification does not draw from the request's generator")
    if not joint_top_k_top_p and not greedy and 1 < sp.top_k < _TOP_K_OFF and sp.top_p < 1.0:
        return ("top_k together with top_p is not supported with HASS speculative decoding on this server: "
                "SGLang's speculative verification applies top_p after renormalising over the top_k tokens, "
                "plain decoding applies it to the full distribution (set only one of top_k and top_p)")
    bias = sp.logit_bias or {}
    if any(not math.isfinite(float(v)) for v in bias.values()):
        return "logit_bias values must be finite numbers"
    return None


def checks_sampling(server_args) -> bool:
    return is_hass(getattr(server_args, "speculative_algorithm", None)) and \
        os.environ.get("HASS_ALLOW_APPROXIMATE_SAMPLING") != "1"


def token_ids_error(input_ids, vocab_size: int) -> str | None:
    """None when every prompt token id indexes the embedding, else which one does not (pure)."""
    if input_ids is None or len(input_ids) == 0 or not vocab_size:
        return None
    lo, hi = min(input_ids), max(input_ids)
    if lo >= 0 and hi < vocab_size:
        return None
    bad = lo if lo < 0 else hi
    return (f"prompt token id {bad} at position {list(input_ids).index(bad)} is outside the vocabulary "
            f"[0, {vocab_size})")


def empty_prompt_error(input_ids, input_embeds=None) -> str | None:
    """None unless the prompt has no token at all (pure)."""
    if input_ids is None or len(input_ids) > 0 or input_embeds is not None:
        return None
    return "Prompt cannot be empty (every prompt of a batch needs at least one token)"


def rid_error(rid, prompt=None, chat: bool = False) -> str | None:
    """None when `rid` fits the request: a string (or none) for one prompt, a list of strings of the
    batch's length for a batch (pure). SGLang 0.5.23 answers 500 ("unhashable type: 'list'") to a
    list for a single prompt (found by fuzzing)."""
    if rid is None or isinstance(rid, str):
        return None
    if not isinstance(rid, list) or not all(isinstance(r, str) for r in rid):
        return "rid must be a string, or a list of strings for a batch of prompts"
    batch = None
    if not chat and isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        batch = len(prompt)
    if batch is None:
        return "rid must be a string for a single prompt (a list of rids needs a batch of prompts)"
    if len(rid) != batch:
        return f"rid lists {len(rid)} ids for a batch of {batch} prompts"
    return None


def around_create_tokenized_object(original, self, *args, **kwargs):
    tokenized = original(self, *args, **kwargs)
    # Every server: an id outside the embedding, or no token at all, kills SGLang 0.5.23's scheduler
    # (IndexError / a 0-token forward) and with it every request; refusing them changes no valid request.
    input_ids = getattr(tokenized, "input_ids", None)
    message = empty_prompt_error(input_ids, getattr(tokenized, "input_embeds", None)) or \
        token_ids_error(input_ids, getattr(getattr(self, "model_config", None), "vocab_size", 0))
    if message:
        raise ValueError(message)
    sp = getattr(tokenized, "sampling_params", None)
    if sp is not None and checks_sampling(self.server_args):
        from hass_sglang.serving.cpu import project_verifies_on_cpu

        message = sampling_error(sp, joint_top_k_top_p=project_verifies_on_cpu())
        if message:
            raise ValueError(message)  # SGLang answers 400 with the message, as for its own verify()
    return tokenized


def around_validate_request(original, self, request, *args, **kwargs):
    message = original(self, request, *args, **kwargs)
    if message:
        return message
    # Every server: a malformed rid is a 500 in SGLang itself; refusing it changes no valid request.
    message = rid_error(getattr(request, "rid", None), getattr(request, "prompt", None),
                        chat=hasattr(request, "messages"))
    if message or not checks_model_names(self.tokenizer_manager.server_args):
        return message
    return unknown_model_error(getattr(request, "model", None), self.tokenizer_manager.served_model_name)


def register_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for target in (CHAT_TARGET, COMPLETION_TARGET):
        HookRegistry.register(target, around_validate_request, HookType.AROUND)
    HookRegistry.register(TOKENIZE_TARGET, around_create_tokenized_object, HookType.AROUND)
    public = public_error_response_class()
    for target in ERROR_RESPONSE_TARGETS:
        HookRegistry.register(target, public, HookType.REPLACE)
