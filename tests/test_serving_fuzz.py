"""Fuzzing a live HASS server (SmolLM2 target, shipped HASS draft, CPU, loopback) from its own
OpenAPI schema: schemathesis draws request bodies for POST /v1/chat/completions and
/v1/completions (valid and schema-violating ones), hypothesis runs them with a fixed seed.

Property: no 5xx, the server stays up, and the same T=0 answer before and after the run.
Bounded: the generated lengths are capped (max_tokens and friends), 100 examples per endpoint,
no shrinking (a failure prints the body that caused it).
"""

import json
import urllib.error
import urllib.request

import pytest

from hass_sglang.drafts import SHIPPED_DIR
from hass_sglang.serving.server import ServerSpec, running_server

pytestmark = pytest.mark.slow

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
EXAMPLES = 100
# Generation-length fields and their cap (a drawn max_tokens of 10**6 would keep a CPU busy for hours).
CAPS = {"max_tokens": 8, "max_completion_tokens": 8, "min_tokens": 4, "n": 2, "best_of": 2, "top_logprobs": 3,
        "logprobs": 3}
PROBE = {"model": "default", "messages": [{"role": "user", "content": "Name a primary color."}],
         "max_tokens": 12, "temperature": 0}


def _bounded(body):
    """The body with every generation-length number capped and max_tokens always set."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    for key, cap in CAPS.items():
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            body[key] = cap
    if not isinstance(body.get("max_tokens"), int) or isinstance(body.get("max_tokens"), bool):
        body["max_tokens"] = CAPS["max_tokens"]
    return body


def _post(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_fuzzed_requests_never_get_a_5xx_and_the_server_answers_the_same_afterwards(target, tmp_path):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings

    spec = ServerSpec(model=str(target.path), draft=str(SHIPPED_DIR / "smollm2-135m-hass-eagle"), device="cpu")
    seen = {path: {} for path in ENDPOINTS}
    with running_server(spec, log_path=tmp_path / "server.log") as url:
        before = _post(url, "/v1/chat/completions", PROBE)
        assert before[0] == 200, before
        schema = schemathesis.openapi.from_url(url + "/openapi.json")
        for path in ENDPOINTS:
            operation = schema[path]["POST"]

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def fuzz(case):
                body = _bounded(case.body)
                try:
                    status, text = _post(url, path, body)
                except OSError as exc:  # connection refused/reset: the server went down
                    pytest.fail(f"{path}: no answer ({exc}) to {json.dumps(body)[:2000]}; log: {tmp_path}")
                seen[path][status] = seen[path].get(status, 0) + 1
                assert status < 500, f"{path}: HTTP {status} {text[:500]} for {json.dumps(body)[:2000]}"

            fuzz()
        after = _post(url, "/v1/chat/completions", PROBE)
    print("statuses:", seen)
    for path in ENDPOINTS:
        assert sum(seen[path].values()) >= EXAMPLES // 2, seen  # the run was not vacuous
        assert seen[path].get(200) and any(400 <= s < 500 for s in seen[path]), seen  # both kinds were drawn
    assert after[0] == 200
    assert json.loads(after[1])["choices"][0]["message"]["content"] == \
        json.loads(before[1])["choices"][0]["message"]["content"]
