"""A small OpenAI-compatible chat-completions server on loopback, standing in for a judge.

It speaks the protocol vLLM / SGLang / llama.cpp / Ollama speak (``POST /v1/chat/completions``
with image data URLs, ``logprobs`` + ``top_logprobs`` answers; ``GET /v1/models``) and
answers what the test configures: digit probabilities, text, HTTP failures, delays,
missing log-probabilities. Every request is recorded (JSON body, prompt text, decoded
images) so tests can check what the client sent.

    with FakeJudgeServer(default=Answer(digits={"4": 0.5, "5": 0.5})) as server:
        client = JudgeClient(server.url, "fake-judge")
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from PIL import Image


@dataclass
class Answer:
    """What the fake server answers to one request."""

    digits: dict[str, float] | None = None
    """Probabilities of the first token's candidates (any tokens; listed as top_logprobs)."""
    text: str | None = None
    """The generated text; default: the most probable candidate of ``digits``."""
    status: int = 200
    body: bytes | None = None
    """A raw body to send instead of the JSON answer."""
    delay: float = 0.0
    logprobs: bool = True
    """False: answer without log-probabilities (a server that ignores the request)."""
    alternatives: bool = True
    """False: give the chosen token's log-probability but no top_logprobs list."""
    blank_first_token: bool = False
    """Emit a whitespace token before the rating (some chat templates do)."""
    legacy: bool = False
    """Use the completions-style ``logprobs`` object instead of the chat one."""
    retry_after: str | None = None


@dataclass
class ReceivedRequest:
    path: str
    body: dict
    headers: dict
    text: str = ""
    images: list = field(default_factory=list)
    """PIL images decoded from the data URLs, in the order sent."""
    image_mimes: list = field(default_factory=list)


Rule = tuple[Callable[[ReceivedRequest], bool] | str, "Answer | Callable[[ReceivedRequest], Answer]"]


class FakeJudgeServer:
    """A loopback chat-completions server with configurable answers.

    Answers are chosen in this order: the next scripted answer (``script``, consumed one
    per request), the first matching rule (a substring of the prompt text, or a predicate
    on the request), else ``default``. An answer may be a callable of the request.
    """

    def __init__(self, default: Answer | Callable[[ReceivedRequest], Answer] | None = None,
                 models: tuple[str, ...] = ("fake-judge",)):
        self.default = default if default is not None else Answer(digits={"5": 1.0})
        self.rules: list[Rule] = []
        self.script: deque = deque()
        self.models = list(models)
        self.requests: list[ReceivedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeJudgeServer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-judge", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeJudgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_rule(self, match, answer) -> None:
        self.rules.append((match, answer))

    def chat_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # ------------------------------------------------------------------------------------
    def _choose(self, request: ReceivedRequest) -> Answer:
        with self._lock:
            answer = self.script.popleft() if self.script else None
        if answer is None:
            for match, candidate in self.rules:
                hit = match in request.text if isinstance(match, str) else match(request)
                if hit:
                    answer = candidate
                    break
            else:
                answer = self.default
        return answer(request) if callable(answer) else answer

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/v1/models"):
                    data = [{"id": name, "object": "model"} for name in fake.models]
                    self._send(200, json.dumps({"object": "list", "data": data}).encode())
                else:
                    self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self._send(400, b'{"error": {"message": "body is not JSON"}}')
                    return
                request = ReceivedRequest(self.path, body, dict(self.headers))
                _decode_messages(body, request)
                with fake._lock:
                    fake.requests.append(request)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                # The request stops counting as in flight before its answer is sent: a client
                # that starts its next request on receiving this one must not overlap it.
                try:
                    status, payload, headers = self._answer(body, request)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1
                self._send(status, payload, headers)

            def _answer(self, body, request):
                if not self.path.rstrip("/").endswith("/v1/chat/completions"):
                    return 404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode(), None
                if body.get("model") not in fake.models:
                    message = f"The model `{body.get('model')}` does not exist."
                    return 404, json.dumps({"error": {"message": message}}).encode(), None
                answer = fake._choose(request)
                if answer.delay:
                    time.sleep(answer.delay)
                headers = {"Retry-After": answer.retry_after} if answer.retry_after else None
                if answer.body is not None:
                    return answer.status, answer.body, headers
                if answer.status != 200:
                    error = {"error": {"message": f"fake failure {answer.status}", "code": answer.status}}
                    return answer.status, json.dumps(error).encode(), headers
                return 200, json.dumps(_completion(body, answer)).encode(), headers

        return Handler


def _decode_messages(body: dict, request: ReceivedRequest) -> None:
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            request.text += content
            continue
        for part in content or []:
            if part.get("type") == "text":
                request.text += part.get("text", "")
            elif part.get("type") == "image_url":
                url = part["image_url"]["url"]
                header, data = url.split(",", 1)
                request.image_mimes.append(header[len("data:"):].split(";")[0])
                request.images.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def _completion(body: dict, answer: Answer) -> dict:
    digits = answer.digits or {}
    ranked = sorted(digits.items(), key=lambda item: -item[1])
    text = answer.text if answer.text is not None else (ranked[0][0] if ranked else "")
    wants = bool(body.get("logprobs"))
    top_n = int(body.get("top_logprobs") or 0)
    alternatives = [{"token": token, "logprob": math.log(p) if p > 0 else -9999.0} for token, p in ranked[:top_n]]
    first_token = ranked[0][0] if ranked else text
    logprobs = None
    if wants and answer.logprobs:
        entries = []
        if answer.blank_first_token:
            entries.append({"token": " ", "logprob": -0.01, "top_logprobs": [{"token": " ", "logprob": -0.01}]})
        entries.append({"token": first_token, "logprob": alternatives[0]["logprob"] if alternatives else 0.0,
                        "top_logprobs": alternatives if answer.alternatives else []})
        if answer.legacy:
            logprobs = {"tokens": [e["token"] for e in entries],
                        "token_logprobs": [e["logprob"] for e in entries],
                        "top_logprobs": [{a["token"]: a["logprob"] for a in e["top_logprobs"]} for e in entries]}
        else:
            logprobs = {"content": entries}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": logprobs, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
