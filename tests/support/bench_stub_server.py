"""A tiny OpenAI-compatible chat server (stdlib) for the benchmark runner's bookkeeping tests.

It stands in for "some endpoint" so that resuming, retries and record fields can be tested in
milliseconds; it says nothing about SGLang (tests/test_bench_e2e.py runs the real servers). Each
answer is `tokens` words; with `verify_ct` set it reports SGLang's `sglext.spec_tokens_details`
the way SGLang 0.5.23 does (a final no-choices chunk when streaming).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubServer:
    def __init__(self, tokens: int = 8, verify_ct: int | None = None, delay_s: float = 0.01):
        self.tokens, self.verify_ct, self.delay_s = tokens, verify_ct, delay_s
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, obj, status=200):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    return self._json({"object": "list", "data": [{"id": "stub", "object": "model", "created": 0,
                                                                   "owned_by": "test"}]})
                self._json({"error": "not found"}, 404)

            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    return self._json({"error": "not found"}, 404)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                time.sleep(stub.delay_s)
                text = " ".join(f"w{i}" for i in range(stub.tokens))
                usage = {"prompt_tokens": 5, "completion_tokens": stub.tokens, "total_tokens": 5 + stub.tokens}
                ext = None
                if stub.verify_ct and body.get("return_spec_tokens_details"):
                    ext = {"spec_tokens_details": {"spec_verify_ct": stub.verify_ct,
                                                   "spec_accept_length": stub.tokens / stub.verify_ct}}
                base = {"id": "x", "created": 0, "model": body["model"]}
                if not body.get("stream"):
                    resp = {**base, "object": "chat.completion", "usage": usage,
                            "choices": [{"index": 0, "finish_reason": "length",
                                         "message": {"role": "assistant", "content": text}}]}
                    if ext:
                        resp["sglext"] = ext
                    return self._json(resp)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                chunk = {**base, "object": "chat.completion.chunk"}
                events = [{**chunk, "choices": [{"index": 0, "delta": {"content": w + " "}, "finish_reason": None}]}
                          for w in text.split()]
                events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
                if ext:
                    events.append({**chunk, "choices": [], "sglext": ext})
                events.append({**chunk, "choices": [], "usage": usage})
                try:
                    for ev in events:
                        self.wfile.write(f"data: {json.dumps(ev)}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (a load test stopping mid-stream)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests if "messages" in r]
